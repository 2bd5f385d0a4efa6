"""sim.common.style: the shared figure style (grid without blank cells, formats, one colour per name)."""
import pytest

from learning_dynamics.sim.common import style


@pytest.mark.parametrize("n, max_cols, rows", [(14, 4, [4, 4, 3, 3]), (6, 4, [3, 3]), (8, 4, [4, 4]), (1, 4, [1]),
                                               (5, 3, [3, 2])])
def test_grid_fills_every_row_without_blank_cells(n, max_cols, rows):
    fig, axes = style.grid(n, max_cols=max_cols)
    assert len(axes) == len(fig.get_axes()) == n
    assert [sum(ax.get_figure() is row for ax in axes) for row in fig.subfigs] == rows
    for ax in axes:          # each row's panels fill its whole grid: no blank cell
        spec = ax.get_subplotspec()
        assert spec.get_gridspec().ncols == sum(other.get_figure() is ax.get_figure() for other in axes)
    style.pyplot().close(fig)


def test_claims_read_in_mathtext():
    assert style.math_text("log pi(y+) falls; y_{j != i} rises under x_i; y- and y* too") == (
        r"$\log\pi$($y^+$) falls; $y_{j\neq i}$ rises under $x_i$; $y^-$ and $y^*$ too")
    assert style.math_text("y-shaped, costs $5") == r"y-shaped, costs \$5"


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_save_writes_the_chosen_format_and_the_suffix_follows(tmp_path, fmt, magic):
    style.use_format(fmt)
    try:
        fig, ax = style.figure()
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("step"), ax.set_ylabel("log-prob. (nats)")
        path = style.save(fig, tmp_path / "f.png")
    finally:
        style.use_format("png")
    assert path == tmp_path / f"f.{fmt}" and path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]     # no temp file left behind


def test_same_figure_saves_to_the_same_bytes(tmp_path):
    paths = []
    for name in ("a", "b"):
        fig, ax = style.figure()
        ax.plot([0, 1, 2], [1, 0, 2])
        ax.set_xlabel("step"), ax.set_ylabel("log-prob. (nats)")
        paths.append(style.save(fig, tmp_path / f"{name}.png"))
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_format_option_is_on_every_drawing_command_and_rejects_others(capsys):
    from learning_dynamics.validate.ldyn import build_parser, main

    parser = build_parser()
    for argv in (["tour"], ["sim", "logits"], ["sim", "digits"], ["sim", "lm"], ["validate", "report", "d"],
                 ["validate", "run", "--out", "d"], ["validate", "check", "--first-order", "--out", "d"],
                 ["validate", "forecast", "--out", "d"]):
        assert parser.parse_args(argv + ["--format", "svg"]).format == "svg"
    assert main(["sim", "lm", "--format", "jpg"]) == 2  # main returns argparse's exit code
    assert "--format" in capsys.readouterr().err


def test_every_algorithm_and_probe_has_its_own_colour():
    from learning_dynamics.sim.logits import SIMULATED
    from learning_dynamics.sim.common.probe_plots import PANELS
    from learning_dynamics.theory.algorithms import ALGORITHMS

    names = set(SIMULATED) | set(ALGORITHMS)
    assert names <= set(style.ALGORITHM_COLORS) and names <= set(style.ALGORITHM_LABELS)
    assert len({style.algorithm_color(a) for a in names}) == len(names)
    probes = [key for key, _ in PANELS]
    assert set(probes) <= set(style.PROBES)
    assert len({style.probe_color(k) for k in probes}) == len(probes)
    with pytest.raises(Exception, match="--format"):
        style.use_format("jpg")
