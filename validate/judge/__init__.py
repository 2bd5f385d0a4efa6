"""Judging the measurements: a run's report with its verdicts, seeds pooled, a folder of runs merged
into a summary and a verdict figure, and the docs pages regenerated from committed reports.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "write_report": "report",
    "prediction_table": "report",
    "merge": "summary",
    "pooled_rows": "pooling",
    "plot_verdicts": "verdict_figure",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
