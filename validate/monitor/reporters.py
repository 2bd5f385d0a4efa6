"""The probe monitor's figures and verdicts where the user already looks: the trainer's `report_to`.

After each evaluation that writes a report, the curves figure and the verdict table go to every reporter the
trainer has that can show them: TensorBoard (an image and a markdown text, `probes/curves` and
`probes/verdicts`, on the trainer's own SummaryWriter, or one in its log folder once the trainer has closed it
at the end of training) and Weights & Biases (a `wandb.Image` and a `wandb.Table`, in the trainer's run). The
scalars (`probes/logps/...`) reach every reporter through the trainer's own log. Main process only.
"""
from pathlib import Path
from learning_dynamics.validate.judge.report import judged_label
from learning_dynamics.validate.judge.report import prediction_table
# matplotlib loads inside the functions that need them, so importing this module stays light (ldyn --help)

CURVES_TAG, VERDICTS_TAG = "probes/curves", "probes/verdicts"
COLUMNS = ("id", "claim", "judged", "verdict", "effect", "ci_low", "ci_high", "why")


def _callbacks(trainer, name: str) -> list:
    handler = getattr(trainer, "callback_handler", None)
    return [cb for cb in getattr(handler, "callbacks", ()) if type(cb).__name__ == name]


REPORTERS = {"TensorBoardCallback": "tensorboard", "WandbCallback": "wandb"}


def reporters(trainer) -> list:
    """The reporters of the trainer's report_to that receive the figure and the verdicts."""
    return [name for callback, name in REPORTERS.items() if _callbacks(trainer, callback)]


def verdict_rows(report: dict) -> list:
    """One row per verdict: COLUMNS, the reason when it is inconclusive (or why it was not judged)."""
    rows = []
    for r in report.get("predictions", []):
        ci = list(r.get("ci") or [None, None])
        why = r.get("inconclusive_reason") or (r.get("detail") if r.get("verdict") == "inconclusive" else "")
        rows.append([r["id"], r["claim"], judged_label(r), r["verdict"], r.get("effect"), ci[0], ci[1], why or ""])
    return rows


def _image(path: Path):
    """An H x W x 3 float array of a PNG."""
    import matplotlib.image
    return matplotlib.image.imread(str(path))[..., :3]


def _to_tensorboard(trainer, args, report: dict, figure, step: int) -> bool:
    sent = False
    for cb in _callbacks(trainer, "TensorBoardCallback"):
        writer, own = cb.tb_writer, False
        if writer is None and getattr(cb, "_SummaryWriter", None) is not None:  # closed at train end: our own
            writer, own = cb._SummaryWriter(log_dir=cb.logging_dir or args.logging_dir), True
        if writer is None:
            continue
        if figure is not None:
            writer.add_image(CURVES_TAG, _image(figure), step, dataformats="HWC")
        writer.add_text(VERDICTS_TAG, prediction_table(report["predictions"]) if report.get("predictions")
                        else "(no verdict for this algorithm)", step)
        writer.close() if own else writer.flush()
        sent = True
    return sent


def _to_wandb(trainer, report: dict, figure, step: int) -> bool:
    sent = False
    for cb in _callbacks(trainer, "WandbCallback"):
        wandb = getattr(cb, "_wandb", None)
        if wandb is None or wandb.run is None:
            continue
        logs = {VERDICTS_TAG: wandb.Table(columns=list(COLUMNS), data=verdict_rows(report))}
        if figure is not None:
            logs[CURVES_TAG] = wandb.Image(str(figure))
        wandb.log({**logs, "train/global_step": step})
        sent = True
    return sent


def publish(trainer, args, out: Path, report: dict, step: int) -> list:
    """Send `out`'s curves figure and `report`'s verdicts to the trainer's reporters; the names of those reached."""
    if trainer is None:
        return []
    figure = next((out / f for f in report.get("figures", []) if f.startswith("curves.") and f.endswith(".png")),
                  None)
    figure = figure if figure is not None and figure.exists() else None
    reached = []
    if _to_tensorboard(trainer, args, report, figure, step):
        reached.append("tensorboard")
    if _to_wandb(trainer, report, figure, step):
        reached.append("wandb")
    return reached
