"""Figures of `ldyn sim digits`: influence next to eNTK similarity, the AKG check, one negative step."""
import numpy as np

from learning_dynamics.sim.common import style
from learning_dynamics.theory.squeeze import threshold


def plot_influence(summary: dict, path):
    """Measured influence next to eNTK similarity; the diagonal is greyed out in both
    (it is not what the claim is about, and the kernel's diagonal would swamp the colours)."""

    fig, axes = style.figure(style.WIDTH, 3.0, ncols=2)
    panels = [("influence",
               "measured: mean $\\Delta\\log p(a \\mid$ class-$b$ images$)$\nafter one SGD step on class $a$",
               r"$\Delta\log p$ (nats)"),
              ("similarity", "class-averaged eNTK: tr $K(b, a)\\,/\\,V$", r"tr $K / V$")]
    for ax, (key, title, unit) in zip(axes, panels):
        matrix = np.array(summary[key], dtype=float)
        np.fill_diagonal(matrix, np.nan)
        limit = np.nanmax(np.abs(matrix))
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(matrix))), ax.set_yticks(range(len(matrix)))
        ax.set_xlabel("observed class $b$ (held-out images)")
        ax.set_ylabel("learned class $a$")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.85, label=unit)
    fig.suptitle(f"eNTK similarity predicts influence: Spearman {summary['influence_spearman_offdiag']:.2f} "
                 f"over the 90 off-diagonal pairs (diagonal blank)")
    return style.save(fig, path)


def plot_akg(summary: dict, scatter, path):
    """Predicted (-eta A K G) vs actual dlog pi, and the error against eta with a slope-2 reference."""

    predicted, actual = (np.ravel(a) for a in scatter)
    fig, (ax, ax_err) = style.figure(style.WIDTH, 2.9, ncols=2)
    ax.scatter(predicted, actual, s=3, alpha=0.4, color=style.BLUE, lw=0, label="held-out image $\\times$ class")
    span = [min(predicted.min(), actual.min()), max(predicted.max(), actual.max())]
    ax.plot(span, span, color=style.BLACK, lw=0.8, label="actual = predicted")
    ax.set_xlabel(r"predicted $-\eta\,A(x_o)\,K(x_o, x_u)\,G(x_u)$ (nats)")
    ax.set_ylabel(r"actual $\Delta\log\pi(x_o)$ after one SGD step (nats)")
    ax.set_title(f"AKG on every held-out image $\\times$ {np.shape(scatter[0])[-1]} classes\n"
                 f"($\\eta$={summary['akg_eta']:.3g}, Pearson $r$={summary['akg_pearson_r']:.5f})")
    ax.legend(loc="upper left", markerscale=3)
    etas, errors = np.array(summary["akg_etas"]), np.array(summary["akg_errors"])
    ax_err.loglog(etas, errors, "o-", ms=3, color=style.BLUE,
                  label=f"measured (fitted slope {summary['akg_error_slope']:.2f})")
    # drawn a factor 4 above the data: on top of it (slope 2.00) it would be hidden
    ax_err.loglog(etas, 4 * errors[0] * (etas / etas[0]) ** 2, "--", color=style.GREY, lw=1.0,
                  label=r"slope 2 (error $\propto \eta^2$)")
    ax_err.set_xlabel(r"step size $\eta$")
    ax_err.set_ylabel("mean |actual $-$ predicted| (nats)")
    ax_err.set_title("first-order error against the step size")
    ax_err.legend(loc="upper left")
    return style.save(fig, path)


def plot_negative_step(bars, image, path):
    """Before/after bars of one negative step (of size bars["eta"]) on the least confident image's least likely
    class."""

    pi, change, wrong = bars["pi"], bars["change"], bars["wrong"]
    after = pi * np.exp(change)
    fig, (ax_img, ax) = style.figure(style.WIDTH, 2.4, ncols=2, gridspec_kw={"width_ratios": [1, 3.5]})
    ax_img.imshow(image, cmap="gray_r")
    ax_img.set_axis_off()
    ax_img.set_title("held-out image")
    classes = np.arange(len(pi))
    ax.bar(classes - 0.2, pi, width=0.4, color=style.GREY, label="before")
    rose = after > pi
    ax.bar((classes + 0.2)[rose], after[rose], width=0.4, color=style.GREEN, label="after: rose")
    ax.bar((classes + 0.2)[~rose], after[~rose], width=0.4, color=style.VERMILION, label="after: fell")
    ax.annotate("stepped down", (wrong + 0.2, after[wrong]), xytext=(wrong + 0.2, pi[wrong] * 6), ha="center",
                fontsize=7, arrowprops=dict(arrowstyle="->", lw=0.7))
    rise_line = float(np.ravel(threshold(pi[None], np.array([wrong]), sign=-1))[0])
    if rise_line > 0:        # a log axis cannot show a threshold at or below zero
        ax.axhline(rise_line, color=style.BLACK, ls="--", lw=0.8,
                   label=r"theory: rises iff above $\|p\|^2 - p_{\mathrm{wrong}}$")
    ax.set_yscale("log")
    ax.set_ylim(min(pi.min(), after.min()) / 10, 30)     # room above the bars for the legend
    ax.set_xticks(classes)
    ax.set_xlabel(f"class (negative step on class {wrong}, $\\eta$={bars['eta']})")
    ax.set_ylabel(r"$p(\mathrm{class} \mid x)$")
    ax.legend(loc="upper right", ncols=2)
    ax.set_title("lowering an unlikely wrong class squeezes mass into the top class")
    return style.save(fig, path)
