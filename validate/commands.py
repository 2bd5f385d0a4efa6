"""The `ldyn validate` commands: run, check, report. Heavy imports happen in the handlers."""
import argparse
import sys
from pathlib import Path

from learning_dynamics.sim.io import writable_folder
from learning_dynamics.sim.style import add_format_option
from learning_dynamics.theory.errors import UserError


def add_run(sub) -> None:
    from learning_dynamics.validate.algorithms import ALGORITHMS
    from learning_dynamics.validate.presets import PRESETS
    p = sub.add_parser(
        "run", help="finetune a model with one algorithm, tracking every probe type",
        description="Finetune (SFT, DPO and variants), score the probe set every --eval-every steps, "
                    "then evaluate theory's run-level predictions and write report.json/report.md. "
                    "Re-running the same command on the same --out resumes.",
        epilog="example: ldyn validate run --preset default --algo dpo --out runs/dpo\n"
               "         ldyn validate run --preset smoke --algo sft --out /tmp/smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory (created; an existing one is resumed)")
    add_format_option(p)
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="smoke: tiny random Llama on the CPU in <1 min; default: SmolLM2 on a GPU")
    p.add_argument("--algo", choices=ALGORITHMS, help="training algorithm (default dpo)")
    p.add_argument("--model", help="'smollm2' (default), 'tiny-random', a local HF folder, a .gguf file, or a hub id")
    p.add_argument("--data", help="TRL preference JSONL (prompt/chosen/rejected, plain or chat); "
                                  "default: the built-in chatterbot-corpus pairs")
    p.add_argument("--steps", type=int, help="training steps (after extend's SFT phase)")
    p.add_argument("--device", help="cuda or cpu (preset's default)")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--beta", type=float, help="DPO/IPO beta")
    p.add_argument("--batch-pairs", type=int, help="pairs per step")
    p.add_argument("--eval-every", type=int, help="steps between probe evaluations")
    p.add_argument("--n-probe", type=int, help="probe prompts")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="evaluations between checkpoints (0: at the end only)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --out instead of resuming")
    p.add_argument("--first-order", action="store_true", help="also run the first-order and token-level checks")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def run_settings(args) -> dict:
    """The settings `ldyn validate run` trains with, from its parsed flags (provenance reads them back)."""
    from learning_dynamics.validate.presets import OVERRIDABLE, settings_for
    overrides = {k: getattr(args, k) for k in OVERRIDABLE if getattr(args, k, None) is not None}
    return settings_for(args.preset, **overrides)


def _run(args) -> int:
    from learning_dynamics.validate.run import run
    settings = run_settings(args)
    out = writable_folder(args.out)
    report = run(settings, out, fresh=args.fresh, quiet=args.quiet, first_order=args.first_order)
    if args.first_order:
        from learning_dynamics.validate.check import run_checks
        run_checks(settings, out, quiet=args.quiet, command=("validate", "run"))
        from learning_dynamics.validate.report import write_report
        report = write_report(out)
    _print_verdicts(report, out)
    return 0


def _print_verdicts(report, out) -> None:
    print(f"{report['algo']} on {report['model']} ({report['device']}): report in {out}/report.md")
    for r in report["predictions"]:
        ci = r["ci"] or [None, None]
        lo, hi = ("n/a" if v is None else f"{v:.3g}" for v in ci)
        effect = "n/a" if r["effect"] is None else f"{r['effect']:.3g}"
        print(f"  {r['id']:5s} {r['verdict']:12s} effect {effect} [{lo}, {hi}]  {r['claim']}")


def add_check(sub) -> None:
    p = sub.add_parser(
        "check", help="first-order (eNTK) accuracy and the token-level squeeze, on their own",
        description="One plain SGD step on training pairs: the jvp prediction of every probe's change against "
                    "the actual change over several step sizes (Pearson r, error slope), and the token-level "
                    "rising set after a negative step against theory's threshold.",
        epilog="example: ldyn validate check --first-order --device cuda --out runs/first-order")
    p.add_argument("--first-order", action="store_true", required=True, help="run checks 1 and 2")
    p.add_argument("--out", required=True)
    add_format_option(p)
    p.add_argument("--model", help="as for `run` (default smollm2)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--preset", default="default", help="smoke or default: sizes of the probe set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_check)


def check_settings(args) -> dict:
    """The settings `ldyn validate check` uses, from its parsed flags (provenance reads them back)."""
    from learning_dynamics.validate.presets import settings_for
    return settings_for(args.preset, **{k: getattr(args, k) for k in ("model", "device", "seed")})


def _check(args) -> int:
    from learning_dynamics.validate.check import run_checks
    result = run_checks(check_settings(args), writable_folder(args.out), quiet=args.quiet)
    fo = result["first_order"]
    print(f"first-order check on {fo['model']}: Pearson r {fo['pearson_r']:.4f}, error slope "
          f"{fo['error_slope']:.2f} (theory 2) over eta {fo['etas']}; results in {args.out}")
    ts = result["token_squeeze"]
    print(f"token-level squeeze: argmax rises at {ts['rejected_only']['argmax_rises']:.2f} of rejected-only "
          f"positions; threshold precision {ts['rejected_only']['precision']:.2f}, "
          f"recall {ts['rejected_only']['recall']:.2f}")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="merge run directories (and first-order check directories) into one verdict table",
        description="Rebuild each run's report.json/report.md from its logs, then write summary.md and "
                    "summary.json with every run's verdicts and the two-run comparisons.",
        epilog="example: ldyn validate report runs/dpo runs/onpolicy-dpo runs/extend --out runs")
    p.add_argument("runs", nargs="+", metavar="DIR")
    p.add_argument("--out", help="where summary.md goes (default: the first DIR's parent)")
    add_format_option(p)
    p.set_defaults(func=_report)


def _report(args) -> int:
    from learning_dynamics.validate.report import merge, write_report
    for d in args.runs:
        if not Path(d).is_dir():
            raise UserError(f"no run directory {d}")
        if (Path(d) / "settings.json").exists():
            write_report(d)
    out = writable_folder(args.out or Path(args.runs[0]).resolve().parent)
    merged = merge(args.runs, out)
    if merged.get("warning"):
        print(f"ldyn: warning: {merged['warning']}", file=sys.stderr)
    print(f"{len(merged['predictions'])} verdicts from {len(args.runs)} runs: {out}/summary.md")
    return 0


PARSERS = [add_run, add_check, add_report]
