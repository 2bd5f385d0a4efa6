"""One look for every figure of sim/ and validate/: sizes, colours, labels, saving.

A figure made here fits a two-column paper (a panel grid is `WIDTH` wide, one
plot `COLUMN` wide), lays itself out (constrained layout: no empty band under
the title, no empty panel in a grid), names its axes with units, writes the
paper's symbols in mathtext, and gives each algorithm and each probe the same
colour-blind-safe colour in every figure. `save` writes PNG, or PDF/SVG after
`use_format` (the `--format` option of every command that draws).
"""
import re
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_path
from learning_dynamics.theory import algorithms as algorithm_registry
from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.theory.errors import UserError
# matplotlib loads inside the functions that need them, so importing this module stays light (ldyn --help)

COLUMN = 3.4    # inches: one column of a two-column paper
WIDTH = 7.0     # inches: the full text width
FORMATS = ("png", "pdf", "svg")
DPI = 200

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 9, "lines.linewidth": 1.4, "axes.spines.top": False,
    "axes.spines.right": False, "axes.titlepad": 3, "legend.frameon": False, "savefig.dpi": DPI,
    "figure.constrained_layout.h_pad": 0.04, "figure.constrained_layout.w_pad": 0.04,
    "svg.fonttype": "none", "pdf.fonttype": 42,
}

# Okabe & Ito (2008), the colour-blind-safe set, plus Paul Tol's muted colours where eight are not enough.
BLACK, ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
GREY = "#8C8C8C"
WINE, INDIGO, OLIVE, TEAL, SAND, ROSE = "#882255", "#332288", "#999933", "#44AA99", "#DDCC77", "#CC6677"

PALETTE = (BLUE, VERMILION, GREEN, ORANGE, SKY, PURPLE, BLACK, WINE, INDIGO, TEAL, OLIVE, SAND, ROSE, YELLOW,
           "#997700", GREY)


def _with_free_colours(fixed: dict, names) -> dict:
    """`fixed` colours, and for every other name (a later registry entry) the next palette colour not yet taken."""
    free = iter([c for c in PALETTE if c not in fixed.values()] * 4)
    return {**fixed, **{n: next(free) for n in names if n not in fixed}}


# One colour per algorithm, the same in sim and validate (off-policy DPO red as in the paper); an algorithm
# added to the registry (theory.algorithms) takes a free colour and its own label.
ALGORITHM_COLORS = _with_free_colours({
    "sft": GREEN, "dpo": VERMILION, "onpolicy-dpo": BLUE, "extend": PURPLE, "ipo": ORANGE, "simpo": SKY,
    "pg": BLACK, "negative": WINE, "negative-onpolicy": INDIGO, "dpo-shared": ROSE,
}, algorithm_registry.ALGORITHMS)
ALGORITHM_LABELS = {  # the sim's raw-gradient experiments; training algorithms label themselves in the registry
    "negative": "negative gradient", "negative-onpolicy": "on-policy negative gradient",
    "dpo-shared": "DPO, one shared context", **{a.name: a.label for a in algorithm_registry.REGISTRY.values()},
}

# One colour per probe type (a new one in the registry takes a free colour); labels from theory.probes.
PROBE_COLORS = _with_free_colours({
    "chosen": BLUE, "chosen_rephrase": SKY, "chosen_format": TEAL, "rejected": VERMILION,
    "rejected_rephrase": ORANGE, "rejected_format": ROSE, "other_chosen": GREEN, "test_response": OLIVE,
    "irrelevant": GREY, "chosen_shuffled": INDIGO, "random_tokens": "#997700", "initial_sample": WINE,
    "greedy": PURPLE, "entropy": BLACK,
}, probe_registry.NAMES)
# `key` is the tracking table's column
PROBES = {**{f"logps/{p.name}": (p.label, PROBE_COLORS[p.name]) for p in probe_registry.IN_PANEL_ORDER},
          "entropy/chosen": (r"token entropy on $y^+$", PROBE_COLORS["entropy"])}
VERDICT_COLORS = {"holds": GREEN, "fails": VERMILION, "inconclusive": GREY, "not tested": SAND}

# y-axis label of a tracked quantity, by its key's prefix
UNITS = {
    "logps/": "log-prob. (nats)", "entropy/": "entropy (nats)", "argmax/": "log-prob. (nats)",
    "argmax_per_token/": "top-token log-prob. (nats)", "gen/distinct2": "distinct 2-gram fraction",
    "gen/rep4": "repeated 4-gram fraction",
}

_format = "png"


# the catalogue's plain-text claims, in the figures' mathtext
_MATH = (
    (r"y_\{j != i\}", r"$y_{j\\neq i}$"), (r"\blog pi\(", r"$\\log\\pi$("), (r"\bx_i\b", r"$x_i$"),
    (r"\by\+", r"$y^+$"), (r"\by-(?![A-Za-z])", r"$y^-$"), (r"\by\*", r"$y^*$"), (r"(?<![\\\w])pi\b", r"$\\pi$"),
)


def math_text(text: str) -> str:
    """'log pi(y+) of y_{j != i}' -> '$\\log\\pi$($y^+$) of $y_{j\\neq i}$' (a plain $ is escaped first)."""
    text = text.replace("$", r"\$")
    for pattern, replacement in _MATH:
        text = re.sub(pattern, replacement, text)
    return text


def use_format(fmt: str) -> None:
    """Every later `save` writes this format ("png", "pdf" or "svg")."""
    global _format
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _format = fmt


def current_format() -> str:
    """The format every `save` writes now ("png" unless `use_format` chose another)."""
    return _format


def add_format_option(parser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="png",
                        help="figure file format (default png; pdf and svg are vector)")


def algorithm_color(name: str) -> str:
    return ALGORITHM_COLORS.get(name, GREY)


def algorithm_label(name: str) -> str:
    return ALGORITHM_LABELS.get(name, name)


def probe_label(key: str) -> str:
    return PROBES[key][0] if key in PROBES else key


def probe_color(key: str) -> str:
    return PROBES[key][1] if key in PROBES else GREY


def unit_label(key: str) -> str:
    for prefix, label in UNITS.items():
        if key.startswith(prefix):
            return label
    return key


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams.update(RC)
    return plt


def figure(width: float = COLUMN, height: float = 2.4, **kwargs):
    """One plot (or `plt.subplots` arguments in kwargs), laid out by constrained layout."""
    plt = pyplot()
    return plt.subplots(figsize=(width, height), layout="constrained", **kwargs)


def grid(n_panels: int, max_cols: int = 4, width: float = WIDTH, row_height: float = 1.6):
    """`n_panels` axes in rows of equal width and no empty slot: 14 panels in rows of 4 become 4+4+3+3
    (a short row's panels are wider) instead of a 4x4 grid with two blank cells. Each row is a
    subfigure, so that constrained layout aligns the panels of a row without coupling the rows."""
    plt = pyplot()
    rows = int(np.ceil(n_panels / max_cols))
    per_row = [n_panels // rows + (r < n_panels % rows) for r in range(rows)]
    fig = plt.figure(figsize=(width, row_height * rows), layout="constrained")
    subfigures = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    axes = []
    for subfigure, k in zip(subfigures, per_row):
        axes += list(subfigure.subplots(1, k, squeeze=False)[0])
    return fig, axes


def reference_line(ax, y=0.0, **kwargs):
    """A thin grey horizontal line (start value, zero) that does not stretch the y-axis."""
    style = dict(color=GREY, lw=0.7, ls="--", zorder=0)
    style.update(kwargs)
    return ax.axhline(y, **style)


def save(fig, path) -> Path:
    """Write `fig` atomically in the chosen format (the suffix of `path` follows it) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path).with_suffix(f".{_format}")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=_format, dpi=DPI, metadata=_metadata())
    finally:
        plt.close(fig)
    return path


def _metadata():
    # fixed metadata so that the same data redraws to the same bytes (no creation date in PDF/SVG)
    if _format == "pdf":
        return {"CreationDate": None, "Producer": None}
    if _format == "svg":
        return {"Date": None}
    return {"Software": None}
