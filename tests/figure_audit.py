"""Checks every figure must pass before it is saved (tests/conftest.py applies them to every
`sim.common.style.save` of the test session): no empty axes, every axis labelled, and every legend
naming exactly the labelled lines, patches and collections it stands for."""


def _is_colorbar(ax) -> bool:
    return hasattr(ax, "_colorbar")


def _has_data(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.patches or ax.images)


def _labelled_artists(axes):
    labels = []
    for ax in axes:
        for artist in (*ax.lines, *ax.collections, *ax.patches, *ax.containers):
            label = artist.get_label()
            if label and not label.startswith("_") and label not in labels:
                labels.append(label)
    return labels


def _legend_labels(legend):
    return [t.get_text() for t in legend.get_texts()]


def problems(fig) -> list:
    """Everything wrong with `fig`, one line each (an empty list: it passes)."""
    found = []
    axes = [ax for ax in fig.axes if ax.get_visible()]
    if not axes:
        return ["the figure has no axes"]
    for number, ax in enumerate(axes):
        name = f"axes {number} ({ax.get_title() or 'untitled'!r})"
        if _is_colorbar(ax):
            if not (ax.get_ylabel() or ax.get_xlabel()):
                found.append(f"{name}: colorbar without a label")
            continue
        if not ax.axison:        # an image panel: must show something and say what
            if not (ax.images or ax.texts):
                found.append(f"{name}: hidden axes that show nothing")
            if not ax.get_title():
                found.append(f"{name}: image panel without a title")
            continue
        if not _has_data(ax):
            found.append(f"{name}: empty panel")
        if not ax.get_xlabel():
            found.append(f"{name}: no x-axis label")
        if not ax.get_ylabel():
            found.append(f"{name}: no y-axis label")
        for text in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()):
            if "!=" in text or "+-" in text:
                found.append(f"{name}: raw symbol in {text!r} (use mathtext)")
        legend = ax.get_legend()
        if legend is not None and sorted(_legend_labels(legend)) != sorted(_labelled_artists([ax])):
            found.append(f"{name}: legend {_legend_labels(legend)} does not match the lines "
                         f"{_labelled_artists([ax])}")
    for legend in fig.legends:
        drawn = _labelled_artists(axes)
        if sorted(_legend_labels(legend)) != sorted(drawn):
            found.append(f"figure legend {_legend_labels(legend)} does not match the lines {drawn}")
    found += _clipped_text(fig)
    if fig.get_layout_engine() is None or type(fig.get_layout_engine()).__name__ != "ConstrainedLayoutEngine":
        found.append("not laid out by constrained layout (sim.common.style.figure / grid)")
    return found


def check(fig) -> None:
    found = problems(fig)
    if found:
        raise AssertionError("figure fails the style checks:\n  " + "\n  ".join(found))


def _texts(fig):
    """Titles, axis labels, annotations and legend entries (tick labels outside the view are never drawn)."""
    texts = [fig._suptitle, *fig.texts]
    for legend in fig.legends:
        texts += [*legend.get_texts(), legend.get_title()]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            texts += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def _clipped_text(fig) -> list:
    """Text that runs past the figure's edge (a title too long for the width, a legend outside)."""
    fig.draw_without_rendering()         # runs the layout; no pixels
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    found = []
    for text in _texts(fig):
        extent = text.get_window_extent(renderer)
        if (extent.x0 < box.x0 - 2 or extent.x1 > box.x1 + 2 or extent.y0 < box.y0 - 2
                or extent.y1 > box.y1 + 2):
            found.append(f"text {text.get_text()[:60]!r} runs past the figure's edge")
    return found
