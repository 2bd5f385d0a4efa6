"""The forecast's figures (the project's style, sim.common.style): each predictor against the measured change of
log pi(y+), one panel each, for the plain SGD step and for the first AdamW step; without a verification, each
proxy against the exact prediction; across training, the step-0 forecast against the run's change."""
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common import style
from learning_dynamics.theory.statistics import spearman
from learning_dynamics.validate.forecast.steps import FLAG_PREDICTOR, PREDICTORS, column, predictor

AXIS = {"exact_sgd": "predicted change (nats)", "exact_adamw": "predicted change (nats)",
        "ches": "CHES", "ches_ln": "normalised CHES", "residual_norm": "‖G‖ of the pair",
        "token_overlap": "token F1, y+ vs y-", "hidden_cosine": "hidden-state cosine"}
PER_UNIT_LR = "predicted change per unit lr"


def _x(pred, records, eta) -> tuple:
    """(values, label) of a panel's x-axis: an exact SGD prediction in nats at eta (per unit lr when eta is None),
    the AdamW one in nats, a proxy's own value."""
    values = column(records, pred.column)
    if pred.optimizer == "sgd":
        return (values, PER_UNIT_LR) if eta is None else (values * eta, AXIS[pred.name])
    return values, AXIS[pred.name]


def _panel(ax, x, y, title, xlabel, ylabel, flags_at_zero) -> None:
    ax.scatter(x, y, s=9, color=style.BLUE, alpha=0.75, linewidths=0)
    style.reference_line(ax)
    if flags_at_zero:
        ax.axvline(0.0, color=style.GREY, lw=0.7, ls="--", zorder=0)
    ax.set_title(title)
    ax.set_xlabel(style.math_text(xlabel))
    ax.set_ylabel(style.math_text(ylabel))


def _against(records, actual, ylabel, path, title, panels=PREDICTORS, eta=None):
    fig, axes = style.grid(len(panels), max_cols=4, row_height=2.0)
    fig.suptitle(style.math_text(title))
    for ax, pred in zip(axes, panels):
        rho = spearman(pred.predicted_change(records), actual)
        x, xlabel = _x(pred, records, eta)
        _panel(ax, x, actual, f"{pred.name}: rho {rho:.2f}", xlabel, ylabel, pred.flags)
    return style.save(fig, path)


def draw(result, out) -> list:
    """Every figure the result has data for; their paths."""
    out, records, paths = Path(out), result["pairs"], []
    verified = result.get("verification")
    if verified:
        for step, what in (("sgd", "plain SGD step"), ("adamw", "first AdamW step")):
            actual = column(records, f"actual_{step}_dlogp_chosen")
            paths.append(_against(records, actual, "measured change (nats)", out / f"forecast_{step}.png",
                                  f"Each predictor against the change of log pi(y+) after a {what} on the pair",
                                  eta=verified["sgd_eta"]))
    else:
        exact = predictor(FLAG_PREDICTOR)
        proxies = [p for p in PREDICTORS if p.optimizer is None]
        paths.append(_against(records, column(records, exact.column), PER_UNIT_LR, out / "forecast_proxies.png",
                              "Each proxy against the exact prediction of log pi(y+)'s change (SGD step)",
                              panels=proxies))
    if result.get("across_training"):
        run = result["across_training"]
        panels = [p for p in PREDICTORS if p.name in (FLAG_PREDICTOR, "ches")]
        paths.append(_against(records, np.asarray(run["run_change_chosen"], dtype=float), "change over the run (nats)",
                              out / "forecast_run.png", f"The step-0 forecast against log pi(y+)'s change over "
                              f"{run['steps']} AdamW steps", panels=panels))
    return paths
