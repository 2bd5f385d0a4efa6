"""Preference data and probe sets, the pipeline's first room: the built-in corpus and TRL-format files
read and checked once, degenerate pairs dropped, and the probe texts and token sets every run tracks.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "load_preference_jsonl": "data",
    "write_jsonl": "data",
    "default_dataset": "data",
    "read_once": "data_file",
    "keep_distinct": "degenerate",
    "build_probe_texts": "probe_texts",
    "build_probe_set": "probes",
    "read_probe_set": "probes",
    "repetition_stats": "repetition",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
