"""The `ldyn validate` commands: run, check, report. Heavy imports happen in the handlers."""
import argparse
import math
import sys
from pathlib import Path

from learning_dynamics.sim.io import writable_folder
from learning_dynamics.sim.style import add_format_option
from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory import arguments as arg


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
    p.add_argument("--out", type=arg.path, required=True, help="run directory (created; an existing one is resumed)")
    add_format_option(p)
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="smoke: tiny random Llama on the CPU in <1 min; default: SmolLM2 on a GPU")
    p.add_argument("--algo", choices=ALGORITHMS, help="training algorithm (default dpo)")
    p.add_argument("--model", help="'smollm2' (default), 'tiny-random', a local HF folder, a .gguf file, or a hub id")
    p.add_argument("--data", type=arg.absolute_path, help="TRL preference JSONL (prompt/chosen/rejected, plain or chat); "
                                  "default: the built-in chatterbot-corpus pairs")
    p.add_argument("--steps", type=arg.STEPS, help="training steps (after extend's SFT phase)")
    p.add_argument("--device", help="cuda or cpu (preset's default)")
    p.add_argument("--lr", type=arg.LR, help="AdamW learning rate")
    p.add_argument("--beta", type=arg.BETA, help="DPO/IPO beta")
    p.add_argument("--batch-pairs", type=arg.POSITIVE_INT, help="pairs per step")
    p.add_argument("--eval-every", type=arg.POSITIVE_INT, help="steps between probe evaluations")
    p.add_argument("--n-probe", type=arg.POSITIVE_INT, help="probe prompts")
    p.add_argument("--seed", type=arg.SEED, help="random seed, 0 to 2**32-1 (preset default 0)")
    p.add_argument("--checkpoint-every", type=arg.NON_NEGATIVE_INT, help="evaluations between checkpoints (0: at the end only)")
    add_precision_option(p)
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --out instead of resuming")
    p.add_argument("--first-order", action="store_true", help="also run the first-order and token-level checks")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def add_precision_option(parser, what: str = "") -> None:
    from learning_dynamics.validate.presets import PRECISIONS
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto (default): bf16 where the hardware has it (a CPU with AMX or AVX512-BF16: bf16 "
                             "working weights, fp32 master weights; a CUDA GPU: bf16 autocast), else fp32"
                             + (f"; {what}" if what else ""))


def run_settings(args) -> dict:
    """The settings `ldyn validate run` trains with, from its parsed flags (provenance reads them back)."""
    from learning_dynamics.validate.presets import OVERRIDABLE, settings_for
    overrides = {k: getattr(args, k) for k in OVERRIDABLE if getattr(args, k, None) is not None}
    return settings_for(args.preset, **overrides)


def _run(args) -> int:
    from learning_dynamics.validate.run import run
    settings = run_settings(args)
    out = writable_folder(args.out)
    if args.first_order:
        from learning_dynamics.validate.trajectory import TRAJECTORY_ALGOS
        if settings["algo"] not in TRAJECTORY_ALGOS:  # refused before training, not after it
            raise UserError(f"--first-order trains a short {settings['algo']} run of its own, which needs "
                            f"--algo one of {', '.join(TRAJECTORY_ALGOS)}; run `ldyn validate check` separately")
    report = run(settings, out, fresh=args.fresh, quiet=args.quiet, first_order=args.first_order)
    if args.first_order:
        from learning_dynamics.validate.check import run_checks
        run_checks(settings, out, quiet=args.quiet, command=("validate", "run"), report_name="first_order.md")
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


def _by_preset(sizes: dict) -> str:
    return ", ".join(f"{preset} {value}" for preset, value in sizes.items())


def add_check(sub) -> None:
    from learning_dynamics.validate import check
    p = sub.add_parser(
        "check", help="how far the first-order (eNTK) picture carries: eta sweep, AdamW update, k steps, P20",
        description="One plain SGD step on a training pair (y+ push, y- push, DPO step), swept over eta until the "
                    "jvp prediction's relative error passes 100%%, and the same on a coarse grid for --sweep-pairs "
                    "pairs (where it breaks: median and interval over pairs); the prediction along AdamW's real "
                    "update (first and mid-run step); k AdamW steps predicted with the frozen step-0 kernel; the "
                    "kernel's drift (P20) on the logit eNTK beside A.K.G, A and G (bootstrap CI over probe and "
                    "training sequences); the token-level rising set after a DPO-shaped step and its per-token "
                    "channels (hidden state vs readout). Writes first_order.json, report.md and figures into --out.",
        epilog="example: ldyn validate check --first-order --device cuda --out runs/first-order\n"
               "         ldyn validate check --first-order --device cpu --n-probe 4 --batch-pairs 2 --out runs/fo-cpu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--first-order", action="store_true", required=True, help="run the checks")
    p.add_argument("--out", type=arg.path, required=True)
    add_format_option(p)
    p.add_argument("--model", help="as for `run` (default smollm2)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--preset", default="default", help="smoke, cpu or default: sizes of the probe set and the k-step run")
    p.add_argument("--seed", type=arg.SEED, default=0, help="random seed, 0 to 2**32-1 (default 0)")
    p.add_argument("--algo", type=_trajectory_algo, help="the k-step run's loss: sft, dpo (default), ipo or simpo")
    p.add_argument("--lr", type=arg.LR, help="the k-step run's AdamW learning rate (preset's default)")
    p.add_argument("--batch-pairs", type=arg.POSITIVE_INT, help="the k-step run's pairs per step (preset's default)")
    p.add_argument("--n-probe", type=arg.POSITIVE_INT,
                   help=f"probe prompts, 12 probe responses each (default: {_by_preset(check.N_PROBE_PROMPTS)})")
    p.add_argument("--sweep-prompts", type=arg.POSITIVE_INT,
                   help=f"probe prompts whose responses the eta sweep reads (default: {_by_preset(check.SWEEP_PROMPTS)}; "
                        "at most --n-probe); the AdamW, k-step and P20 parts read them all")
    p.add_argument("--sweep-pairs", type=arg.POSITIVE_INT,
                   help=f"training pairs the coarse eta sweep steps on, each over its own and the next probe prompt's "
                        f"responses (default: {_by_preset(check.SWEEP_PAIRS)}; at most --n-probe)")
    p.add_argument("--squeeze-pairs", type=arg.POSITIVE_INT,
                   help=f"pairs in the token-level check (default: {_by_preset(check.N_SQUEEZE_PAIRS)})")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the eta sweep and the token-level check (float32: faster, with a "
                        "rounding floor under the smallest steps' error)")
    p.add_argument("--k-steps", type=arg.integer_list(1, arg.STEP_MAX, "steps"),
                   help="AdamW steps to predict with the frozen kernel (default 1,5,20,50)")
    p.add_argument("--moving-probes", type=arg.NON_NEGATIVE_INT,
                   help="probe responses the moving-kernel k-step sum covers, one jvp per step (default 12; 0: skip)")
    add_precision_option(p, "the probe texts are sampled in it; every jvp, sweep and the k-step run stay in --dtype / float32")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_check)


def _trajectory_algo(text: str) -> str:
    """--algo of `check`: a loss its k-step run can train (no samples, no reference, no warm-up phase)."""
    from learning_dynamics.validate.trajectory import TRAJECTORY_ALGOS
    if text not in TRAJECTORY_ALGOS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a loss the check's k-step run can train; choose one of "
                                         f"{', '.join(TRAJECTORY_ALGOS)}")
    return text


def _check_sizes(args) -> None:
    """The flags of `check` that bound each other, refused before any work."""
    from learning_dynamics.validate import check
    if args.preset not in check.N_PROBE_PROMPTS:
        return   # settings_for names the unknown preset
    n_probe = args.n_probe or check.N_PROBE_PROMPTS[args.preset]
    if args.sweep_prompts is not None and args.sweep_prompts > n_probe:
        raise UserError(f"--sweep-prompts {args.sweep_prompts} is more than the {n_probe} probe prompts "
                        f"(--n-probe); give at most {n_probe}")
    from learning_dynamics.theory.probes import SAID_ONCE
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
    from learning_dynamics.validate.presets import settings_for
    return settings_for(args.preset, **{k: getattr(args, k) for k in ("model", "device", "seed", "algo", "lr",
                                                                       "batch_pairs", "precision")})


def _check(args) -> int:
    from learning_dynamics.validate.check import run_checks
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
    from learning_dynamics.validate.summary import merge, unique_dirs
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
    from learning_dynamics.validate.forecast import DEFAULT_PAIRS
    from learning_dynamics.validate.presets import PRESETS
    p = sub.add_parser(
        "forecast", help="before training: which preference pairs will push their own chosen answer down",
        description="Per pair, the first-order change of log pi(y+), log pi(y-) and log pi(y*) from one step of "
                    "--algo on that pair alone (the model's own eNTK through a jvp; plain SGD and the first AdamW "
                    "step), beside CHES (Razin et al.) and cheap proxies. Writes forecast.csv/.md/.json and figures "
                    "into --out; --verify takes the real steps and scores every predictor against them.",
        epilog="example: ldyn validate forecast --data pairs.jsonl --out forecast --filter\n"
               "         ldyn validate forecast --preset smoke --verify --train-steps 4 --out /tmp/forecast",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=arg.path, required=True, help="output folder (created; the same command resumes)")
    add_format_option(p)
    p.add_argument("--data", type=arg.path, help="TRL preference JSONL (prompt/chosen/rejected, plain or chat); "
                                                  f"default: the built-in chatterbot-corpus pairs")
    p.add_argument("--n-pairs", type=arg.POSITIVE_INT,
                   help=f"forecast the first N pairs (default: all of --data, {DEFAULT_PAIRS} built-in ones)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="model, device, lr and token limits (default cpu: SmolLM2 on the CPU, AdamW lr 5e-5; "
                        "smoke: a tiny random Llama)")
    p.add_argument("--model", help="'smollm2' (default), 'tiny-random', a local HF folder, a .gguf file")
    p.add_argument("--algo", help="the step forecast: dpo (default), sft, ipo or simpo")
    p.add_argument("--device", help="cpu or cuda (preset's default)")
    p.add_argument("--lr", type=arg.LR, help="AdamW learning rate of the forecast's and the run's steps")
    p.add_argument("--beta", type=arg.BETA, help="DPO/IPO beta")
    p.add_argument("--batch-pairs", type=arg.POSITIVE_INT, help="pairs per step of --train-steps")
    p.add_argument("--seed", type=arg.SEED, help="random seed of --train-steps' batches (preset default 0)")
    p.add_argument("--verify", action="store_true",
                   help="take one real SGD step and one first AdamW step per pair and score every predictor")
    p.add_argument("--train-steps", type=arg.NON_NEGATIVE_INT, default=0,
                   help="then train this many AdamW steps over the pairs and forecast again: do the pairs flagged "
                        "at step 0 hold the run's fall of y+?")
    p.add_argument("--from-run", type=arg.path, metavar="RUN_DIR",
                   help="instead of --train-steps, forecast again at the checkpoint of an `ldyn validate run` folder "
                        "(state/checkpoint.pt, same model): do the pairs flagged at step 0 hold that run's fall?")
    p.add_argument("--filter", action="store_true", help="also write filtered.jsonl: the pairs not flagged "
                                                         "displacing, in TRL's format")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_forecast)


def _forecast(args) -> int:
    from learning_dynamics.validate.forecast import forecast
    out = writable_folder(args.out)
    result = forecast(args.data, model=args.model, algo=args.algo, n_pairs=args.n_pairs, preset=args.preset,
                      device=args.device, lr=args.lr, beta=args.beta, seed=args.seed, batch_pairs=args.batch_pairs,
                      verify=args.verify, train_steps=args.train_steps, from_run=args.from_run, out=out,
                      filter=args.filter, quiet=args.quiet)
    from learning_dynamics.validate.forecast_report import FLAG_PREDICTOR, _num, _pct
    print(f"{result['summary']}.")
    for step, judged in ((result["verification"] or {}).get("by_optimizer") or {}).items():
        print(f"  {step} step: " + ", ".join(f"{j['predictor']} rho {_num(j['spearman'], 2)} top-10% "
                                             f"{_pct(j['top_overlap'])}" for j in judged["predictors"]))
    run = result["across_training"]
    if run:
        exact = next(j for j in run["predictors"] if j["predictor"] == FLAG_PREDICTOR)
        print(f"  over {run['steps']} training steps y+ fell for {run['n_fell']} of {result['n_pairs']} pairs; the "
              f"pairs flagged at step 0 hold {_pct(exact['fall_share'])} of that fall" +
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
    from learning_dynamics.validate import pages
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
