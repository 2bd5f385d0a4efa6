"""Training a real model: loading it (GGUF, local folder), the precision it trains in, tokenizing,
the batched forward passes, the algorithms' step losses, and `ldyn validate run`'s training loop.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "load_model": "model",
    "cache_dir": "model",
    "Encoder": "encode",
    "resolve": "precision",
    "sequence_logps": "forward",
    "probe_logps": "forward",
    "step_loss": "algorithms",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
