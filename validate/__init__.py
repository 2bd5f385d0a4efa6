"""Real-model finetuning, the first-order check, reports and the TRL probe monitor.

Its rooms follow the pipeline: data (preference data, probe sets) -> training (model, precision, forward passes,
the training loop) -> measure (scores, first-order predictions, kernels, regime) -> judge (reports, summaries, docs
pages); check, forecast and monitor are the three other jobs built on them, and cli/ holds `ldyn validate`'s
parsers. The run settings (presets), a run folder's identity and provenance, and the `ldyn` entry point sit at
the top because every room reads them. `run` shares its module's name, so it is imported from it:
`from learning_dynamics.validate.training.run import run`.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "ProbeMonitor": "monitor.monitor",
    "run_checks": "check.run",
    "write_report": "judge.report",
    "merge": "judge.summary",
    "PRESETS": "presets",
    "Settings": "presets",
    "settings_for": "presets",
    "fingerprints": "provenance",
    "reproduce_command": "provenance",
    "versions": "provenance",
    "build_parser": "ldyn",
    "main": "ldyn",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
