"""`ldyn validate check`: the first-order check on a real model (one SGD step swept over eta, many pairs,
a real AdamW trajectory, the kernel's drift, the token-level squeeze), its markdown and figures.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "run_checks": "run",
    "report_markdown": "report",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
