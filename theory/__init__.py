"""The derivations and the fast numpy functions every prediction comes from (imports no torch, no sympy).

The public API below loads on first use (theory.exports): importing the package imports none of it.
"""
from learning_dynamics.theory.exports import lazy_exports

EXPORTS = {
    "UserError": "errors",
    "CorruptFile": "errors",
    "ALGORITHMS": "algorithms",
    "CONTROL": "algorithms",
    "trained_by": "algorithms",
    "LR_MAX": "arguments",
    "check_seed": "arguments",
    "akg_dlogp": "decomposition",
    "all_derivations": "derive",
    "print_derivations": "derive",
    "squeeze_index": "evaluators",
    "flow_rhs": "flow",
    "integrate_flow": "flow",
    "replicator_rhs": "flow",
    "CATALOGUE": "catalogue",
    "evaluate_comparison": "predictions",
    "evaluate_run": "predictions",
    "BY_NAME": "probes",
    "PROBE_TYPES": "probes",
    "SAID_ONCE": "probes",
    "loss_inputs": "residuals",
    "residual": "residuals",
    "residual_coefficients": "residuals",
    "apply_A": "softmax",
    "exact_dlogp": "squeeze",
    "first_order_dlogp": "squeeze",
    "runner_up_gain_first_order": "squeeze",
    "threshold": "squeeze",
    "dpo_shared_context_dlogp": "squeeze_dpo",
    "dpo_two_context": "squeeze_dpo",
    "squeeze_command": "squeeze_report",
    "bootstrap_ci": "statistics",
    "grouped_by": "statistics",
    "holm": "statistics",
    "precision_recall": "statistics",
    "spearman": "statistics",
    "verdict_from_ci": "statistics",
    "verdict_from_p": "statistics",
}

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
