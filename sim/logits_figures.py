"""Figures of `ldyn sim logits`: one negative step on a valley vs a peak label, and the
off-policy vs on-policy vs extend curves on the linear head."""
import numpy as np

from learning_dynamics.sim.logits import log_softmax, one_hot
from learning_dynamics.sim.common import style
from learning_dynamics.theory.squeeze import threshold


def squeeze_example(vocab=12):
    """A fixed, peaky 12-label distribution for the bar chart."""
    z = np.array([3.2, 2.6, 1.4, 1.0, 0.6, 0.3, 0.0, -0.4, -0.8, -1.2, -1.8, -2.5])[:vocab]
    return z


def plot_squeeze_bars(path, eta=2.0):

    z = squeeze_example()
    vocab = len(z)
    p = np.exp(log_softmax(z))
    panels = [("an unlikely label", int(p.argmin())), ("the peak", int(p.argmax()))]
    fig, axes = style.figure(style.WIDTH, 2.6, ncols=2)
    labels = np.arange(vocab)
    for ax, (kind, k) in zip(axes, panels):
        new = z - eta * (one_hot(np.array(k), vocab) - p)
        after = np.exp(log_softmax(new))
        rose = after > p
        ax.bar(labels - 0.2, p, width=0.4, color=style.GREY, label="before")
        ax.bar((labels + 0.2)[rose], after[rose], width=0.4, color=style.GREEN, label="after: rose")
        ax.bar((labels + 0.2)[~rose], after[~rose], width=0.4, color=style.VERMILION, label="after: fell")
        thr = float(threshold(p, k, -1))
        if thr > 0:   # a negative threshold (k is the peak) means every other label rises: no line to draw
            ax.axhline(thr, color=style.BLACK, ls="--", lw=0.8,
                       label=r"theory: $i$ rises iff $\pi_i > \|\pi\|^2 - \pi_k$")
        ax.annotate("pushed\ndown", (k + 0.2, after[k]), xytext=(0, 12), textcoords="offset points",
                    ha="center", fontsize=7, arrowprops=dict(arrowstyle="->", lw=0.7))
        ax.set_xticks(labels)
        ax.set_xlabel("label $i$")
        ax.set_title(f"negative step on {kind}, $k={k}$ ($\\pi_k={p[k]:.3f}$, $\\eta={eta:g}$)"
                     + ("" if thr > 0 else f"\n$\\|\\pi\\|^2 - \\pi_k = {thr:.2f} < 0$: every other label rises"))
        ax.set_ylabel(r"probability $\pi_i$")
        ax.legend(loc="upper right")
    top = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:          # one scale for both panels, from zero (a negative threshold is not drawn)
        ax.set_ylim(0, top)
    fig.suptitle("The squeezing effect: pushing down an unlikely label moves mass into the peak;\n"
                 "pushing down the peak spreads it")
    return style.save(fig, path)


def plot_curves(path, curves):
    """Two rows: pure negative gradients (off- vs on-policy), then the DPO family."""

    keys = [("plus", r"$\log\pi(y^+)$"), ("minus", r"$\log\pi(y^-)$"), ("ystar", r"$\log\pi(y^*)$"),
            ("entropy", "entropy")]
    rows = [{"negative": "-", "negative-onpolicy": "--"}, {"dpo": "-", "onpolicy-dpo": "--", "extend": ":"}]
    fig, axes = style.figure(style.WIDTH, 4.4, nrows=2, ncols=4)
    for row, styles in zip(axes, rows):
        for ax, (key, title) in zip(row, keys):
            for name, ls in styles.items():
                if name in curves:
                    series = curves[name][key]
                    ax.plot(series.mean(axis=1) - series[0].mean(), color=style.algorithm_color(name), ls=ls,
                            label=style.algorithm_label(name))
            style.reference_line(ax, 0.0, ls="-", lw=0.5)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(r"$\Delta$ from step 0 (nats)")
    handles, labels = [], []
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.append(handle), labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=3)
    fig.suptitle("Off-policy negatives squeeze ($y^*$ up, entropy down); on-policy ones and extend much less\n"
                 "free logits, mean over runs; $y^+$ at its context, the rest where the negative acts; "
                 "extend: its DPO phase")
    return style.save(fig, path)
