"""The flags of `ldyn validate run`, `check` and `forecast`, apart from their handlers (validate.cli.commands).

validate.provenance reads a report's reproduce command off these parsers; the handlers run the commands that
write reports, so keeping the flags here, below both, keeps the import graph free of a loop.
"""
import argparse

from learning_dynamics.sim.common.style import add_format_option
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.algorithms import ALGORITHMS
from learning_dynamics.validate.presets import (FORECAST_PAIRS, N_PROBE_PROMPTS, N_SQUEEZE_PAIRS,
                                                PRECISIONS, PRESETS, SWEEP_PAIRS, SWEEP_PROMPTS, TRAJECTORY_ALGOS)


def add_run(sub) -> argparse.ArgumentParser:
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
                   help="smoke: tiny random Llama on the CPU in <1 min; cpu: SmolLM2 on 2 CPU cores, short and "
                        "saturating (outside the regime of the paper's claims); cpu-regime: SmolLM2 on 2 CPU cores in "
                        "that regime (calibrated); default: SmolLM2 on a GPU")
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
    return p


def add_precision_option(parser, what: str = "") -> None:
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto (default): bf16 where the hardware has it (a CPU with AMX or AVX512-BF16: bf16 "
                             "working weights, fp32 master weights; a CUDA GPU: bf16 autocast), else fp32"
                             + (f"; {what}" if what else ""))


def by_preset(sizes: dict) -> str:
    return ", ".join(f"{preset} {value}" for preset, value in sizes.items())


def add_check(sub) -> argparse.ArgumentParser:
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
    p.add_argument("--algo", choices=TRAJECTORY_ALGOS,
                   help="the k-step run's loss: one whose step reads the dataset's pairs alone (default dpo)")
    p.add_argument("--lr", type=arg.LR, help="the k-step run's AdamW learning rate (preset's default)")
    p.add_argument("--batch-pairs", type=arg.POSITIVE_INT, help="the k-step run's pairs per step (preset's default)")
    p.add_argument("--n-probe", type=arg.POSITIVE_INT,
                   help=f"probe prompts, 12 probe responses each (default: {by_preset(N_PROBE_PROMPTS)})")
    p.add_argument("--sweep-prompts", type=arg.POSITIVE_INT,
                   help=f"probe prompts whose responses the eta sweep reads (default: {by_preset(SWEEP_PROMPTS)}; "
                        "at most --n-probe); the AdamW, k-step and P20 parts read them all")
    p.add_argument("--sweep-pairs", type=arg.POSITIVE_INT,
                   help=f"training pairs the coarse eta sweep steps on, each over its own and the next probe prompt's "
                        f"responses (default: {by_preset(SWEEP_PAIRS)}; at most --n-probe)")
    p.add_argument("--squeeze-pairs", type=arg.POSITIVE_INT,
                   help=f"pairs in the token-level check (default: {by_preset(N_SQUEEZE_PAIRS)})")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the eta sweep and the token-level check (float32: faster, with a "
                        "rounding floor under the smallest steps' error)")
    p.add_argument("--k-steps", type=arg.integer_list(1, arg.STEP_MAX, "steps"),
                   help="AdamW steps to predict with the frozen kernel (default 1,5,20,50)")
    p.add_argument("--moving-probes", type=arg.NON_NEGATIVE_INT,
                   help="probe responses the moving-kernel k-step sum covers, one jvp per step (default 12; 0: skip)")
    add_precision_option(p, "the probe texts are sampled in it; every jvp, sweep and the k-step run stay in "
                            "--dtype / float32")
    p.add_argument("--quiet", action="store_true")
    return p


def add_forecast(sub) -> argparse.ArgumentParser:
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
                                                  "default: the built-in chatterbot-corpus pairs")
    p.add_argument("--n-pairs", type=arg.POSITIVE_INT,
                   help=f"forecast the first N pairs (default: all of --data, {FORECAST_PAIRS} built-in ones)")
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
    return p


# the commands whose reports carry a reproduce command: their flags, by name
REPRODUCIBLE = {"run": add_run, "check": add_check, "forecast": add_forecast}


def validate_parser(prog: str = "ldyn") -> argparse.ArgumentParser:
    """`ldyn` with the flags of `validate run|check|forecast` (provenance walks it like the CLI's own parser)."""
    parser = argparse.ArgumentParser(prog=prog)
    validate = parser.add_subparsers(dest="command").add_parser("validate")
    sub = validate.add_subparsers(dest="validate_command")
    for add in REPRODUCIBLE.values():
        add(sub)
    return parser
