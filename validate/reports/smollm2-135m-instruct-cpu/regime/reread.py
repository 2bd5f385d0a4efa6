"""The old cpu-preset verdicts beside what the same logs say when each claim is read in its regime (issue 30).

Three columns per verdict of the committed cpu-preset runs (../dpo, ../sft, ../onpolicy-dpo, ../extend), each
read from a summary.json that `ldyn validate report` wrote:

1. **as first published** (--old): the summary the runs were first reported with (an older verdict code, which
   read every claim at the end of the run);
2. **read in the active window** (--active): the same logs through the current code with no first-step
   measurement, so a claim that needs an active force is read at the last evaluation where the mean force on the
   probe pairs was at least theory.regime.ACTIVE of its start;
3. **under the full regime check** (--new): as 2, with ../dpo/first_step.json naming the committed first-order
   check whose k-step run took the DPO run's first step (validate.regime); a claim about first-order steps is *not
   tested* where that step's error passed theory.regime.FIRST_ORDER.

    python reread.py --old PUBLISHED.json --active ACTIVE.json [--new ../summary.json]

prints the markdown table (../COMMANDS.md names the exact commands).
"""
import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _key(row) -> tuple:
    basis = row.get("basis")
    return row.get("run"), row["id"], "equal exposure" if basis == "equal steps" else basis


def _cell(row) -> str:
    if row is None:
        return "-"
    effect = row.get("effect")
    shown = f" ({effect:+.3g})" if isinstance(effect, (int, float)) and row["verdict"] != "not tested" else ""
    return f"{row['verdict']}{shown}"


def _by_key(summary: dict) -> dict:
    """Each run's own rows (its first control's where it has several), keyed by run, claim and basis."""
    rows = [r for r in summary["predictions"] if not r.get("pooled") and r.get("primary_control", True)]
    return {_key(r): r for r in rows}


def table(old: dict, active: dict, new: dict) -> str:
    published, window, judged = _by_key(old), _by_key(active), _by_key(new)
    reasons = sorted({r["not_tested"] for r in judged.values() if r["verdict"] == "not tested"})
    lines = [f"Not tested, in the last column: {why}." for why in reasons] + [
        "", "| run | claim | basis | as first published | read in the active window | under the full regime check |",
        "|---|---|---|---|---|---|"]
    for key, row in judged.items():
        lines.append(f"| {key[0]} | {key[1]} | {key[2] or ''} | {_cell(published.get(key))} | "
                     f"{_cell(window.get(key))} | {_cell(row)} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True)
    parser.add_argument("--active", required=True)
    parser.add_argument("--new", default=str(HERE.parent / "summary.json"))
    args = parser.parse_args()
    print(table(*(json.loads(Path(p).read_text()) for p in (args.old, args.active, args.new))), end="")


if __name__ == "__main__":
    main()
