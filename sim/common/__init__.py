"""What sim/ and validate/ share, below both: atomic file writing and JSON I/O, the figure style and
formats, the tracking tables runs log to, probe-curve plots and padded batches.

It imports nothing from the rest of sim/ (tests/test_layering.py), so validate/ can use it without
depending on the experiments.

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "atomic_path": "io",
    "atomic_torch_save": "io",
    "atomic_write_json": "io",
    "atomic_write_text": "io",
    "json_ready": "io",
    "read_json": "io",
    "writable_folder": "io",
    "right_pad": "batches",
    "span_mask": "batches",
    "plot_probe_curves": "probe_plots",
    "FORMATS": "style",
    "add_format_option": "style",
    "algorithm_label": "style",
    "current_format": "style",
    "save": "style",
    "use_format": "style",
    "TrackingTable": "tracking",
    "prompt_sort_key": "tracking",
    "read_chunk": "tracking",
    "series_from_table": "tracking",
    "steps_of": "tracking",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
