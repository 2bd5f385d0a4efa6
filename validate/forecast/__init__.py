"""`ldyn validate forecast`: which training pairs will squeeze, predicted from one gradient pass
before training, and checked against the steps that follow.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "forecast": "run",
    "PREDICTORS": "steps",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
