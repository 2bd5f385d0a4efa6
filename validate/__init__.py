"""Real-model finetuning, the first-order check, reports and the TRL probe monitor.

`run` and `forecast` share their module's name, so they are imported from it:
`from learning_dynamics.validate.run import run`.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "ProbeMonitor": "monitor",
    "run_checks": "check",
    "write_report": "report",
    "merge": "summary",
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
