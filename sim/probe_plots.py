"""Probe curves in the paper's style: one panel per probe type, log-prob over training.

Shared by `ldyn sim lm` and validate's real-model runs; both pass the `series`
of sim.tracking.series_from_table (key -> [n_evals, n_prompts]). Each panel
shows the mean over prompts and a band of +-1 standard error of that mean, so
a reader sees both the direction and whether it stands out of the prompt noise.
"""
import numpy as np

# Panel order and labels follow the paper's probe taxonomy (paper-notes 4.3).
PANELS = (
    ("logps/chosen", "y+ (chosen)"),
    ("logps/chosen_rephrase", "y+ rephrased"),
    ("logps/chosen_format", "y+ format, other meaning"),
    ("logps/rejected", "y- (rejected)"),
    ("logps/rejected_rephrase", "y- rephrased"),
    ("logps/rejected_format", "y- format, other meaning"),
    ("logps/other_chosen", "y_{j != i} (other prompt's y+)"),
    ("logps/test_response", "test prompt's response"),
    ("logps/irrelevant", "fluent irrelevant"),
    ("logps/chosen_shuffled", "y+ words shuffled"),
    ("logps/random_tokens", "random tokens"),
    ("logps/initial_sample", "sample of the initial model"),
    ("logps/greedy", "y* (argmax on y+'s prefixes)"),
    ("entropy/chosen", "mean token entropy on y+"),
)
LABELS = dict(PANELS)


def _mean_band(curve):
    curve = np.asarray(curve, dtype=np.float64)
    mean = np.nanmean(curve, axis=1)
    n = np.maximum(np.sum(np.isfinite(curve), axis=1), 1)
    sem = np.nanstd(curve, axis=1) / np.sqrt(n)
    return mean, mean - sem, mean + sem


def _grid(n_panels, panel_size=(3.0, 2.3)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, n_panels)
    rows = int(np.ceil(n_panels / cols))
    # fixed spacing instead of tight_layout: laying out 14 panels twice per save is slow
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.55, "wspace": 0.3, "top": 1 - 0.75 / rows})
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _steps(steps, n_evals):
    return np.arange(n_evals) if steps is None else np.asarray(steps)


def plot_probe_curves(series, path, title, steps=None, keys=None):
    """One panel per tracked probe type (those of PANELS present in `series`), saved atomically."""
    from learning_dynamics.sim.io import atomic_savefig

    keys = [k for k in (keys or [k for k, _ in PANELS]) if k in series]
    if not keys:
        raise ValueError("no probe curves to plot: series has none of the known keys")
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        x = _steps(steps, np.asarray(series[key]).shape[0])
        mean, lo, hi = _mean_band(series[key])
        rising = mean[-1] > mean[0]
        color = "tab:green" if rising else "tab:red"
        ax.plot(x, mean, color=color, lw=1.8)
        ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)
        ax.axhline(mean[0], color="0.6", lw=0.8, ls="--")
        ax.set_title(LABELS.get(key, key), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7, labelpad=1)
    fig.suptitle(f"{title}\n(mean over prompts, band = +-1 s.e.; green = ends above its start)", fontsize=10)
    return atomic_savefig(fig, path)


def plot_comparison(series_by_run, path, title, keys, steps_by_run=None, derived=None):
    """Several runs overlaid, one panel per key (probe log-prob, entropy, ...).

    `derived(series, key)` supplies curves for keys that are not stored in a
    series (e.g. a per-token ratio of two stored keys).
    """
    from learning_dynamics.sim.io import atomic_savefig

    fig, axes = _grid(len(keys))
    colors = ("tab:red", "tab:blue", "tab:purple", "tab:green", "tab:orange")
    for ax, key in zip(axes, keys):
        for color, (run, series) in zip(colors, series_by_run.items()):
            curve = series[key] if key in series else (derived(series, key) if derived else None)
            if curve is None:
                continue
            x = _steps((steps_by_run or {}).get(run), np.asarray(curve).shape[0])
            mean, lo, hi = _mean_band(curve)
            ax.plot(x, mean, color=color, lw=1.6, label=run)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        ax.set_title(LABELS.get(key, key), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7, labelpad=1)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}\n(mean over prompts, band = +-1 s.e.)", fontsize=10)
    return atomic_savefig(fig, path)
