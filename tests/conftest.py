"""Shared fixtures: one model cache for the whole session, so the tiny random Llama and the
converted GGUF checkpoint are built once (they need the GGUF tokenizer, ~15 s on 2 cores)."""
import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch gets its share of the cores (set before any test imports torch):
    two workers with two threads each on two cores run slower than two with one."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    saved = os.environ.get("LDYN_CACHE")
    path = os.environ.get("LDYN_TEST_CACHE") or str(tmp_path_factory.mktemp("ldyn-cache"))
    os.environ["LDYN_CACHE"] = path
    yield path
    if saved is None:
        os.environ.pop("LDYN_CACHE", None)
    else:
        os.environ["LDYN_CACHE"] = saved


@pytest.fixture(autouse=True)
def figures_meet_the_style(monkeypatch):
    """Every figure any test draws passes tests/figure_audit.py before it is saved: no empty panel, every
    axis labelled, legends that match the plotted lines, no text past the edge, constrained layout."""
    from figure_audit import check
    from learning_dynamics.sim.common import style

    style.use_format("png")      # `ldyn ... --format pdf` in one test sets it for the process
    save = style.save

    def audited_save(fig, path):
        check(fig)
        return save(fig, path)

    monkeypatch.setattr(style, "save", audited_save)
