"""The probe monitor for TRL trainers: `ProbeMonitor` tracks the probes through a user's own run,
tokenizing as the trainer does, writing one run folder and reporting to the trainer's loggers.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "ProbeMonitor": "monitor",
    "find_trainer": "trainers",
    "trainer_encoder": "trl_tokens",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
