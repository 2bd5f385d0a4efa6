"""What is measured on a model: the probe scores logged during a run, the first-order (eNTK)
predictions against exact steps, the logit kernel, per-token channels and squeeze, and a run's regime.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "score_rows": "scoring",
    "agreement": "first_order",
    "sweep_pairs": "pair_sweep",
    "run_trajectory": "trajectory",
    "KernelViews": "logit_kernel",
    "measure_run": "regime",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
