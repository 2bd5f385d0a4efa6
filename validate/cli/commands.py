"""The `ldyn validate` commands: run, check, report. Heavy imports happen in the handlers."""
import argparse
import math
import sys
from pathlib import Path

from learning_dynamics.sim.common.io import writable_folder
from learning_dynamics.sim.common.style import add_format_option
from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.probes import SAID_ONCE
from learning_dynamics.validate.cli import flags
from learning_dynamics.validate.presets import N_PROBE_PROMPTS, OVERRIDABLE, TRAJECTORY_ALGOS, settings_for
from learning_dynamics.validate.judge.report import write_report
from learning_dynamics.validate.judge.summary import merge, unique_dirs
from learning_dynamics.validate.forecast.run import forecast
from learning_dynamics.validate.judge import pages
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


def add_run(sub) -> None:
    flags.add_run(sub).set_defaults(func=_run)


def run_settings(args) -> dict:
    """The settings `ldyn validate run` trains with, from its parsed flags (provenance reads them back)."""
    overrides = {k: getattr(args, k) for k in OVERRIDABLE if getattr(args, k, None) is not None}
    return settings_for(args.preset, **overrides)


def _run(args) -> int:
    from learning_dynamics.validate.training.run import run
    settings = run_settings(args)
    out = writable_folder(args.out)
    if args.first_order:
        if not settings.algorithm.steps_on_dataset_alone:  # refused before training, not after it
            raise UserError(f"--first-order trains a short {settings.algo} run of its own, which needs "
                            f"--algo one of {', '.join(TRAJECTORY_ALGOS)}; run `ldyn validate check` separately")
    report = run(settings, out, fresh=args.fresh, quiet=args.quiet, first_order=args.first_order)
    if args.first_order:
        from learning_dynamics.validate.check.run import run_checks
        run_checks(settings, out, quiet=args.quiet, command=("validate", "run"), report_name="first_order.md")
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
    flags.add_check(sub).set_defaults(func=_check)


def _check_sizes(args) -> None:
    """The flags of `check` that bound each other, refused before any work."""
    if args.preset not in N_PROBE_PROMPTS:
        return   # settings_for names the unknown preset
    n_probe = args.n_probe or N_PROBE_PROMPTS[args.preset]
    if args.sweep_prompts is not None and args.sweep_prompts > n_probe:
        raise UserError(f"--sweep-prompts {args.sweep_prompts} is more than the {n_probe} probe prompts "
                        f"(--n-probe); give at most {n_probe}")
    responses = n_probe * len(SAID_ONCE)
    if args.moving_probes is not None and args.moving_probes > responses:
        raise UserError(f"--moving-probes {args.moving_probes} is more than the {responses} probe responses "
                        f"({n_probe} probe prompts, {len(SAID_ONCE)} each); give at most {responses}")
    run = Path(args.out) / "settings.json"
    if run.exists():   # a folder of `validate run` (or the TRL monitor): its report.md is not ours to replace
        raise UserError(f"--out {args.out} holds a run (settings.json); the check writes its own report.md, so "
                        "give it another folder (`ldyn validate run --first-order` adds the check to a run)")


def check_settings(args) -> dict:
    """The settings `ldyn validate check` uses, from its parsed flags (provenance reads them back)."""
    return settings_for(args.preset, **{k: getattr(args, k) for k in ("model", "device", "seed", "algo", "lr",
                                                                       "batch_pairs", "precision")})


def _check(args) -> int:
    from learning_dynamics.validate.check.run import run_checks
    _check_sizes(args)
    result = run_checks(check_settings(args), writable_folder(args.out), quiet=args.quiet, n_probe=args.n_probe,
                        squeeze_pairs=args.squeeze_pairs, k_steps=args.k_steps, dtype=args.dtype,
                        moving_probes=args.moving_probes, sweep_prompts=args.sweep_prompts,
                        sweep_pairs=args.sweep_pairs)
    fo = result["first_order"]
    print(f"first-order check on {fo['model']}: results in {args.out}/report.md")
    print(f"  eta sweep over {fo['n_sweep_sequences']} probe responses ({fo['n_sweep_prompts']} probe prompts); "
          f"AdamW, k steps and P20 over {fo['n_probe_sequences']}")
    for kind, s in fo["steps"].items():
        broke = s["breaks_at"]
        print(f"  {kind:8s} step: r {s['pearson_r']:.6f} at {s['headline_target_nats']:g} nats, error slope "
              f"{s['error_slope']:.2f} (theory 2); " + (f"relative error passes 100% at eta {broke['eta']:.3g} "
                                                       f"({broke['target_nats']:g} nats)" if broke else
                                                       "does not break within the grid"))
    t = fo["trajectory"]
    for row in ([t["adamw_first_step"]] if t["adamw_first_step"] else []) + ([t["adamw_mid_step"]] if
                                                                             t["adamw_mid_step"] else []):
        label = "first" if row is t["adamw_first_step"] else f"mid-run ({row['step']})"
        print(f"  AdamW {label} step: r {row['pearson_r']:.4f}, relative error {row['relative_error']:.3g}")
    print("  k-step frozen kernel: " + ", ".join(f"k={r['k']} r {r['pearson_r']:.4f} err {r['relative_error']:.3g}"
                                                 for r in t["k_step"]))
    moving = [r for r in t["k_step"] if r.get("moving_kernel")]
    if moving:
        print(f"  k-step moving kernel ({moving[0]['moving_kernel']['probes']} probes): " + ", ".join(
            f"k={r['k']} r {r['moving_kernel']['moving']['pearson_r']:.4f} linearisation err "
            f"{r['moving_kernel']['linearisation_error']:.3g}, drift {r['moving_kernel']['kernel_drift_error']:.3g}"
            for r in moving))
    _print_later_parts(fo, result["token_squeeze"]["rejected_only"])
    return 0


def _g(x) -> str:
    """A number for the console; None (beyond a grid, or no interval) as '-'."""
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _print_later_parts(fo: dict, ts: dict) -> None:
    """The console lines of P20, the sweep over pairs, the token-level squeeze and its channels."""
    p20 = fo["P20"]
    views = p20.get("views", {})
    print(f"  P20 described ({p20['verdict']}: no threshold is the paper's): logit eNTK sketch cosine "
          f"{p20['effect']:.4f} [{_g(p20['ci'][0])}, {_g(p20['ci'][1])}] at step {p20['steps'][-1]}; " + ", ".join(
              f"{name} {v['similarity'][-1]:.4f}" for name, v in views.items() if name != "K sketch"))
    for kind, s in (fo.get("pair_sweep") or {}).get("summary", {}).items():
        broke = s["breaks_at"]["target_nats"]
        print(f"  {kind:8s} step over {broke['n']} pairs: breaks at a median {_g(broke['median'])} nats "
              f"[{_g(broke['ci'][0])}, {_g(broke['ci'][1])}] ({broke['n_crossed']} break on the grid)")
    if ts["positions"]:
        print(f"  token-level squeeze: argmax rises at {ts['argmax_rises']:.2f} of rejected-only positions; "
              f"threshold precision/recall {ts['precision']:.2f}/{ts['recall']:.2f} over the vocabulary, "
              f"{ts['top']['precision']:.2f}/{ts['top']['recall']:.2f} over the top {ts['top']['tokens_per_position']}")
    top = ((fo.get("token_channels") or {}).get("by_kind", {}).get("rejected_only") or {}).get("top")
    if top:
        print(f"  channels: the top token's first-order rise at rejected-only positions is carried by "
              f"{top['carrier']} ({100 * top['channels'][top['carrier']]['share']:.0f}%); channels sum to the "
              f"exact jvp within {fo['token_channels']['max_sum_gap']:.1e}")


def add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="merge run directories (and first-order check directories) into one verdict table",
        description="Rebuild each run's report.json/report.md and curves figure from its logs (no training; each "
                    "judged against the SFT control among the DIRs that shares its pairs, probes and seed), "
                    "then write summary.md, summary.json and verdicts.png (every verdict as a forest plot) with "
                    "every run's verdicts and the two-run comparisons.",
        epilog="example: ldyn validate report runs/dpo runs/onpolicy-dpo runs/extend --out runs")
    p.add_argument("runs", nargs="+", metavar="DIR", type=arg.path)
    p.add_argument("--out", type=arg.path, help="where summary.md, summary.json and verdicts.png go (default: DIR "
                                                "itself when one DIR is given, else the folder that holds all DIRs)")
    add_format_option(p)
    p.set_defaults(func=_report)


def _default_summary_folder(runs) -> Path:
    """One run: its own folder (never its parent, which may hold anything); several: the folder holding them all."""
    import os
    paths = [str(Path(d).resolve()) for d in runs]
    return Path(paths[0]) if len(set(paths)) == 1 else Path(os.path.commonpath(paths))


def _report(args) -> int:
    for d in args.runs:
        if not Path(d).is_dir():
            raise UserError(f"no run directory {d}")
    out = writable_folder(args.out if args.out is not None else _default_summary_folder(args.runs))
    merged = merge(args.runs, out)
    if merged.get("warning"):
        print(f"ldyn: warning: {merged['warning']}", file=sys.stderr)
    print(f"{len(merged['predictions'])} verdicts from {len(unique_dirs(args.runs))} runs: {out}/summary.md "
          "(forest plot: verdicts.png)")
    return 0


def add_forecast(sub) -> None:
    flags.add_forecast(sub).set_defaults(func=_forecast)


def _forecast(args) -> int:
    out = writable_folder(args.out)
    result = forecast(args.data, model=args.model, algo=args.algo, n_pairs=args.n_pairs, preset=args.preset,
                      device=args.device, lr=args.lr, beta=args.beta, seed=args.seed, batch_pairs=args.batch_pairs,
                      verify=args.verify, train_steps=args.train_steps, from_run=args.from_run, out=out,
                      filter=args.filter, quiet=args.quiet)
    from learning_dynamics.validate.forecast.report import FLAG_PREDICTOR, num_text, percent_text
    print(f"{result['summary']}.")
    for step, judged in ((result["verification"] or {}).get("by_optimizer") or {}).items():
        print(f"  {step} step: " + ", ".join(f"{j['predictor']} rho {num_text(j['spearman'], 2)} top-10% "
                                             f"{percent_text(j['top_overlap'])}" for j in judged["predictors"]))
    run = result["across_training"]
    if run:
        exact = next(j for j in run["predictors"] if j["predictor"] == FLAG_PREDICTOR)
        print(f"  over {run['steps']} training steps y+ fell for {run['n_fell']} of {result['n_pairs']} pairs; the "
              f"pairs flagged at step 0 hold {percent_text(exact['fall_share'])} of that fall" +
              (f" (the run in {run['source']})" if run.get("source") else ""))
    print(f"  table, figures and report in {out}/forecast.md" +
          (f"; {out}/filtered.jsonl holds the other pairs" if args.filter else ""))
    return 0


def add_pages(sub) -> None:
    p = sub.add_parser(
        "pages", help="regenerate the docs pages that show committed results, from the reports",
        description="Write docs/results-cpu.md, results-gpu-stale.md, results-toy-lm.md and coverage.md from the "
                    "committed reports (summary.json, run_info.json, first_order.json, COMMANDS.md, STALE.md) "
                    "and theory.predictions' catalogue, so that no number on them is typed by hand. --check writes "
                    "nothing and exits 1 when a committed page differs from what the reports give.",
        epilog="example: ldyn validate pages            (in the repository root)\n"
               "         ldyn validate pages --check",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", type=arg.path, default="validate/reports",
                   help="the folder holding the report folders (default validate/reports)")
    p.add_argument("--docs", type=arg.path, default="docs",
                   help="the folder the pages go into, which also holds docs/figures (default docs)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is not up to date")
    p.set_defaults(func=_pages)


def _pages(args) -> int:
    generated = pages.generate(args.reports, args.docs)
    if args.check:
        stale = pages.differing(generated, args.docs)
        if stale:
            print(f"ldyn: {', '.join(str(Path(args.docs) / name) for name in stale)} differ from what the reports "
                  "give; run `ldyn validate pages` and commit the pages", file=sys.stderr)
            return 1
        print(f"{len(generated)} pages in {args.docs} match the reports")
        return 0
    written = pages.write(generated, writable_folder(args.docs))
    print(f"{len(written)} of {len(generated)} pages rewritten in {args.docs}" +
          "".join(f"\n  {path}" for path in written))
    return 0


PARSERS = [add_run, add_check, add_report, add_forecast, add_pages]
