"""Numeric experiments (free logits, a digit classifier, a toy LM) and the file writing and figure style the
layer above shares.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "atomic_path": "common.io",
    "atomic_torch_save": "common.io",
    "atomic_write_json": "common.io",
    "atomic_write_text": "common.io",
    "json_ready": "common.io",
    "read_json": "common.io",
    "writable_folder": "common.io",
    "right_pad": "common.batches",
    "span_mask": "common.batches",
    "upcast": "losses",
    "plot_probe_curves": "common.probe_plots",
    "FORMATS": "common.style",
    "add_format_option": "common.style",
    "algorithm_label": "common.style",
    "current_format": "common.style",
    "save": "common.style",
    "use_format": "common.style",
    "run_tour": "tour",
    "TrackingTable": "common.tracking",
    "prompt_sort_key": "common.tracking",
    "read_chunk": "common.tracking",
    "series_from_table": "common.tracking",
    "steps_of": "common.tracking",
    "run_digits": "digits",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
