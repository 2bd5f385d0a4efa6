"""The old cpu-preset verdicts beside what the same logs say when each claim is read in its regime (issue 30).

Three columns per verdict of the committed cpu-preset runs (../dpo, ../sft, ../onpolicy-dpo, ../extend):

1. **as first published**: the summary.json the runs were first reported with (an older verdict code, which
   read every claim at the end of the run);
2. **read in the active window**: the same logs through the current code (`ldyn validate report`), which reads a
   claim that needs an active force at the last evaluation where the mean force on the probe pairs was at least
   theory.regime.ACTIVE of its start; these runs did not measure their first step's first-order error;
3. **under the full regime check**: as 2, with the first AdamW step's first-order error these runs did not
   measure taken from the committed first-order check of the same preset (../first-order: the same model, training
   pairs, seed, batch order and learning rate, so the same first step, read on the check's probe set); a claim
   about first-order steps is *not tested* where it passed theory.regime.FIRST_ORDER.

    python reread.py --old OLD_SUMMARY.json [--new ../summary.json] [--check ../first-order/first_order.json]

prints the markdown table (COMMANDS.md in this folder names the exact commands).
"""
import argparse
import json
from pathlib import Path

from learning_dynamics.theory import predictions
from learning_dynamics.theory import regime as regimes

HERE = Path(__file__).resolve().parent


def _key(row) -> tuple:
    return row.get("run"), row["id"], row.get("basis") if row.get("basis") != "equal steps" else "equal exposure"


def _cell(row) -> str:
    if row is None:
        return "-"
    effect = row.get("effect")
    shown = "" if not isinstance(effect, (int, float)) else f" ({effect:+.3g})"
    return f"{row['verdict']}{shown}"


SAME_FIRST_STEP = ("algo", "lr", "preset", "seed", "batch_pairs", "n_train", "model", "data", "beta")


def _full_check(row, runs, check) -> str:
    """The verdict once the first step's measured error gates the claims about first-order steps: only for a run
    whose first step is the check's (same algorithm, settings and batch); another run's first step is unmeasured."""
    prediction = predictions.BY_ID[row["id"]]
    for settings, report_regime in runs:
        if report_regime is None or any(settings.get(k) != check["settings"].get(k) for k in SAME_FIRST_STEP):
            continue
        error = check["trajectory"]["adamw_first_step"]["relative_error"]
        _, reason = regimes.gate(regimes.Regime.from_dict(dict(report_regime, first_step_error=error)),
                                 prediction.regime)
        if reason:
            return "not tested"
    return f"{_cell(row)} (first step not measured)"


def table(old: dict, new: dict, check: dict) -> str:
    error = check["trajectory"]["adamw_first_step"]["relative_error"]
    old_rows = {_key(r): r for r in old["predictions"]}
    run_of = {}
    for run, folder in new["runs"].items():
        report = json.loads((Path(folder) / "report.json").read_text())
        run_of[run] = (report["settings"], report.get("regime"))
    lr = check["settings"]["lr"]
    lines = [f"First AdamW step's first-order error (the committed check, the same preset's lr {lr:g}): "
             f"{error:.1%}; threshold {regimes.FIRST_ORDER:.0%}.", "",
             "| run | claim | basis | as first published | read in the active window | under the full regime check |",
             "|---|---|---|---|---|---|"]
    for row in new["predictions"]:
        if row.get("pooled") or not row.get("primary_control", True):
            continue
        run, key = row["run"], _key(row)
        runs = [run_of[name] for name in run.split(" vs ")]
        lines.append(f"| {run} | {row['id']} | {key[2] or ''} | {_cell(old_rows.get(key))} | {_cell(row)} | "
                     f"{_full_check(row, runs, check)} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", default=str(HERE.parent / "summary.json"))
    parser.add_argument("--check", default=str(HERE.parent / "first-order" / "first_order.json"))
    args = parser.parse_args()
    print(table(*(json.loads(Path(p).read_text()) for p in (args.old, args.new, args.check))), end="")


if __name__ == "__main__":
    main()
