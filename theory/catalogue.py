"""The catalogue of checkable predictions: one id, one claim, the formula it rests on.

`sim/` and `validate/` evaluate this same catalogue, so a prediction means the
same thing on free logits, a digit classifier, a toy LM and a real LLM.

Three scopes:
- "step": a one-step (or gradient-flow) statement about a softmax; checked
  exactly on free logits and token by token on real models.
- "run": a statement about a whole finetuning run, evaluated on its probe curves
  by `theory.predictions.evaluate_run`.
- "compare": a statement about two runs on the same probe prompts, evaluated by
  `theory.predictions.evaluate_comparison`.

Each run-level and two-run prediction carries its evaluator (theory/evaluators.py);
theory/predictions.py judges runs with them and re-exports every name of this module.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

from learning_dynamics.theory import algorithms
from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory.evaluators import (
    against_control, all_other_probes_fall, dose_response, falls, gains_more_than, mass_into_top_token,
    rejected_falls_more, repeats_itself_against_control, repetition_against_control, rise_then_fall, rises,
    shared_prefix_does_not_squeeze, squeezes_less)

# The probe types and their descriptions come from the probe registry (theory.probes).
PROBES = {p.name: p.description for p in probe_registry.PROBE_TYPES}

# Probes that are neither trained on nor y*: under off-policy DPO they all fall.
OTHER_PROBES = probe_registry.OTHER

# "not tested": the run was not in the regime the claim is about (theory.regime), so it neither holds nor fails
VERDICTS = ("holds", "fails", "inconclusive", "not tested")
# Which algorithms a prediction concerns is read from the registry's traits, never listed by name.
DPO_FAMILY = algorithms.having("offpolicy-negative")   # negative gradients on the dataset's unlikely y-
SQUEEZING = algorithms.having("squeezes")              # negative gradients on unlikely responses anywhere
POSITIVE_ONLY = algorithms.having("positive-only")     # SFT-like: every coefficient pushes its response up


@dataclass(frozen=True)
class Prediction:
    id: str
    claim: str
    formula: str                  # where theory/ states it (function or formula)
    paper_item: str               # paper-notes section 5 item, or "ours"
    scope: str                    # "step" | "run" | "compare"
    levels: tuple                 # where it is evaluated: logits, digits, lm, llm
    applies_to: tuple = ()        # algorithms a run-level prediction is about
    effect_unit: str = ""
    evaluate: Optional[Callable] = field(default=None, compare=False, repr=False)
    # what a run must have been for the claim to be tested on it (theory.regime): "first order" steps, an
    # "active force" on the probe pairs (the claim is read at the last evaluation where it still was)
    regime: frozenset = frozenset({"first order"})
    # the probe types whose series (`logps/<probe>`) decide the verdict: a verdict whose probes are training
    # targets carries a caveat (validate.report), one whose probe the data could not build is inconclusive
    # (validate.report_notes), a prompt whose probe is unusable is left out (theory.predictions). A "scored" probe
    # (y*) comes with the probe it is scored on; a comparison matches margins on the probe pair (y+, y-).
    probes: tuple = ()


# --------------------------------------------------------------------------- the catalogue

# claims about negative gradients: their mechanism needs the force on the probe pairs to be active, and
# first-order steps (theory.regime); the others need first-order steps only (SFT's force never saturates)
SQUEEZE_REGIME = frozenset({"first order", "active force"})

_S = "step"
_PART_UNITS = {"index": "nats per token of squeeze index", "y*": "nats per token of y* gain",
               "others": "nats per token of other probes' fall"}


# the squeeze index reads y* (on y+) and every other probe that is no training target in any context
_SQUEEZE_PROBES = ("chosen",) + probe_registry.OTHER_UNTRAINED
_PART_PROBES = {"index": _SQUEEZE_PROBES, "y*": ("chosen",), "others": probe_registry.OTHER_UNTRAINED}


def _squeeze_comparisons(pid: str, pair: tuple, formula: str, claims: tuple) -> tuple:
    """A two-run squeeze claim judged on the index (pid) and on each part apart (pid + "a": y*'s gain,
    pid + "b": the other probes' fall): claims in that order."""
    return tuple(Prediction(pid + suffix, claim, formula, pid[1:], "compare", ("lm", "llm"), pair, _PART_UNITS[part],
                            squeezes_less(part), regime=SQUEEZE_REGIME, probes=_PART_PROBES[part])
                 for suffix, part, claim in zip(("", "a", "b"), ("index", "y*", "others"), claims))


CATALOGUE = (
    # ---- one step on a softmax (free logits, linear head, token level)
    Prediction("P01", "A negative gradient on label k always lowers pi(k), for every step size.",
               "theory.squeeze.exact_dlogp: pi'_k/pi_k = exp(eta(pi_k - 1))/Z < 1", "1", _S,
               ("logits", "digits", "llm")),
    Prediction("P02", "Under a pure negative gradient on k, y* = argmax_{i != k} pi_i always rises.",
               "theory.squeeze.exact_dlogp: Z < exp(eta pi_{y*})", "2", _S, ("logits", "digits", "llm")),
    Prediction("P03", "First-order law: dlog pi_i = eta (pi_i + pi_k - ||pi||^2) for i != k.",
               "theory.squeeze.first_order_dlogp", "3", _S, ("logits", "digits", "llm")),
    Prediction("P04", "Regime switch: no label falls when pi_k >= ||pi||^2; otherwise only labels "
               "above ||pi||^2 - pi_k rise.", "theory.squeeze.threshold", "4", _S, ("logits", "digits")),
    Prediction("P05", "Peakier distributions squeeze harder: more labels fall.",
               "theory.squeeze.threshold (grows with ||pi||^2)", "5", _S, ("logits", "digits")),
    Prediction("P06", "Smaller pi(k) squeezes harder: more labels fall and the others fall further.",
               "theory.squeeze.threshold = ||pi||^2 - pi_k", "6", _S, ("logits",)),
    Prediction("P06b", "What does NOT follow: y*'s own first-order gain does not grow as pi(k) falls.",
               "theory.squeeze.first_order_dlogp at i = y*", "6", _S, ("logits",)),
    Prediction("P07", "A positive (SFT) step flattens the competitors: the most likely competitor "
               "loses the most.", "theory.squeeze.first_order_dlogp(sign=+1) = eta(||pi||^2 - pi_k - pi_i)",
               "7", _S, ("logits", "digits")),
    Prediction("P08", "DPO on one shared context does not squeeze: every other label shifts by the "
               "same log amount.", "theory.squeeze (shared-context DPO step)", "8", _S, ("logits", "llm")),
    Prediction("P16", "DPO's coefficient beta*sigma(-u) falls as the margin grows; IPO's push on y- "
               "reverses once the margin passes 1/(2 beta).", "theory.residuals.residual_coefficients",
               "16", _S, ("logits",)),
    Prediction("P18", "First-order mass conservation: sum_i pi_i dlog pi_i = O(eta^2).",
               "theory.softmax.apply_A (A v = v - pi.v)", "18", _S, ("logits", "digits", "llm")),
    Prediction("P19", "The AKG prediction -eta A K G matches the measured change; its error shrinks as "
               "O(eta^2).", "theory.decomposition.akg_dlogp", "19", _S, ("logits", "digits", "llm")),
    Prediction("P20", "The eNTK is relatively stable during training.", "theory.decomposition (K fixed)",
               "20", _S, ("digits",)),
    Prediction("X01", "The set of labels that gain under a negative step is a top set (rich get richer).",
               "theory.squeeze.exact_dlogp: pi'_i/pi_i = exp(eta pi_i)/Z increasing in pi_i", "ours", _S,
               ("logits",)),
    Prediction("X02", "As eta -> infinity a negative step gives one-hot on y*.",
               "theory.squeeze.exact_dlogp", "ours", _S, ("logits",)),
    Prediction("X03", "Repeated negative steps (gradient flow) converge to one-hot on the argmax; "
               "once pi_k ~ 0 the flow is the replicator dlog pi_i/dt = pi_i - ||pi||^2.",
               "theory.flow", "ours", _S, ("logits",)),
    Prediction("X04", "DPO on two contexts coupled by a kernel kappa: pi(y+) can fall; theory gives "
               "when.", "theory.squeeze (two-context DPO)", "9", _S, ("logits",)),
    Prediction("X05", "A negative sampled from pi (on-policy) squeezes less than one from the tail.",
               "theory.squeeze.threshold", "14", _S, ("logits",)),

    # ---- whole runs: SFT
    Prediction("P12d", "SFT raises log pi(y+).", "G_SFT = pi - e_y+ (theory.residuals)", "12", "run",
               ("lm", "llm"), POSITIVE_ONLY, "nats", rises("logps/chosen"),
               probes=("chosen",)),
    Prediction("P11", "SFT raises y* too, so y* rising alone is not the squeeze signature.",
               "theory.squeeze.first_order_dlogp(sign=+1)", "11", "run", ("lm", "llm"), POSITIVE_ONLY,
               "nats", rises("logps/greedy"),
               probes=("chosen",)),
    Prediction("P12a", "SFT raises another prompt's answer y_{j != i} under x_i (the hallucination "
               "mechanism).", "theory.decomposition (K between [x_i; y_i] and [x_i; y_j])", "12", "run",
               ("lm", "llm"), POSITIVE_ONLY, "nats", rises("logps/other_chosen"),
               probes=("other_chosen",)),
    Prediction("P12b", "Under SFT, y_{j != i} gains more than a fluent irrelevant response.",
               "theory.decomposition (K similarity)", "12", "run", ("lm", "llm"), POSITIVE_ONLY, "nats",
               gains_more_than("other_chosen", "irrelevant"),
               probes=("other_chosen", "irrelevant")),
    Prediction("P12c", "SFT lowers random-token responses.", "theory.squeeze.first_order_dlogp(sign=+1)",
               "12", "run", ("lm", "llm"), POSITIVE_ONLY, "nats", falls("logps/random_tokens"),
               probes=("random_tokens",)),
    Prediction("P13a", "Under SFT, y- (similar to y+) rises first, then falls.",
               "theory.decomposition (K similarity, then A's flattening)", "13", "run", ("lm", "llm"),
               POSITIVE_ONLY, "nats", rise_then_fall("rejected"),
               probes=("rejected",)),
    Prediction("P13b", "Under SFT, a rephrase of y+ rises first, then falls.",
               "theory.decomposition", "13", "run", ("lm", "llm"), POSITIVE_ONLY, "nats",
               rise_then_fall("chosen_rephrase"),
               probes=("chosen_rephrase",)),

    # ---- whole runs: off-policy negative gradients
    Prediction("P09a", "Off-policy DPO ends with log pi(y+) below its start.",
               "theory.squeeze + two-context coupling (X04)", "9", "run", ("lm", "llm"), DPO_FAMILY,
               "nats", falls("logps/chosen"),
               regime=SQUEEZE_REGIME, probes=("chosen",)),
    Prediction("P09b", "Off-policy DPO lowers both log pi(y+) and log pi(y-), y- faster.",
               "theory.residuals (equal and opposite coefficients, valley of y-)", "9", "run",
               ("lm", "llm"), DPO_FAMILY, "nats", rejected_falls_more,
               regime=SQUEEZE_REGIME, probes=("chosen", "rejected")),
    Prediction("P09c", "Negative gradients on unlikely responses raise y* (the squeeze) more than SFT "
               "on the same pairs does.",
               "theory.squeeze (P02 at rejected-only positions)", "9", "run", ("lm", "llm"),
               SQUEEZING, "nats", against_control("logps/greedy", +1.0, "rise of log pi(y*)"),
               regime=SQUEEZE_REGIME, probes=("chosen",)),
    Prediction("P09d", "Off-policy DPO lowers every other probe response.",
               "theory.squeeze.threshold (labels below ||pi||^2 - pi_k fall)", "9", "run",
               ("lm", "llm"), DPO_FAMILY, "nats", all_other_probes_fall,
               regime=SQUEEZE_REGIME, probes=OTHER_PROBES),
    Prediction("P10", "Negative gradients make the model peakier: the mean token entropy on y+'s "
               "contexts falls more than under SFT on the same pairs.", "theory.flow (replicator sharpening)",
               "10", "run", ("lm", "llm"), SQUEEZING, "nats of entropy",
               against_control("entropy/chosen", -1.0, "fall of the mean token entropy"),
               regime=SQUEEZE_REGIME, probes=("chosen",)),
    Prediction("P17", "Long off-policy DPO raises repetition in greedy generations (the repeated 4-gram "
               "fraction of each generation's first 12 words, against the SFT control).",
               "theory.flow (mass piles onto the argmax)", "17", "run", ("llm",), ("dpo",),
               "repeated 4-gram fraction", repetition_against_control,
               regime=SQUEEZE_REGIME, probes=()),
    Prediction("P17r", "Off-policy DPO raises the model's propensity to repeat its own answer more than SFT on "
               "the same pairs does: the per-token log-prob of re-emitting its initial sample right after it "
               "rises more than under the SFT control.", "theory.flow (mass piles onto the argmax)", "17", "run",
               ("llm",), DPO_FAMILY, "nats per token, minus the control's", repeats_itself_against_control,
               regime=SQUEEZE_REGIME, probes=("initial_sample", "sample_repeated")),
    Prediction("P05r", "Dose-response: prompts whose y- sits in a peakier distribution (lower initial "
               "entropy on y-'s contexts) squeeze harder.", "theory.squeeze.threshold (grows with ||pi||^2)",
               "5", "run", ("llm",), DPO_FAMILY, "Spearman rho",
               dose_response("entropy/rejected", "mean token entropy on y-'s contexts", -1.0),
               regime=SQUEEZE_REGIME, probes=("rejected",) + _SQUEEZE_PROBES),
    Prediction("P06r", "Dose-response: prompts whose y- is less likely (lower initial per-token "
               "log pi(y-)) squeeze harder.", "theory.squeeze.threshold = ||pi||^2 - pi_k", "6", "run",
               ("llm",), DPO_FAMILY, "Spearman rho",
               dose_response("logp_mean/rejected", "per-token log pi(y-)", -1.0),
               regime=SQUEEZE_REGIME, probes=("rejected",) + _SQUEEZE_PROBES),
    Prediction("P08r", "At the positions y+ and y- share, DPO's two pushes cancel: the entropy falls "
               "less there than at y-'s own positions.", "theory.squeeze (shared-context DPO step)", "8",
               "run", ("llm",), ("dpo", "ipo"), "nats of entropy per token", shared_prefix_does_not_squeeze,
               regime=SQUEEZE_REGIME, probes=("chosen", "rejected")),
    Prediction("P18r", "Mass conservation directs the squeeze: a larger share of the probability mass that "
               "moves on y+'s contexts goes into the initial top token than under SFT on the same pairs.",
               "theory.softmax.apply_A (A v = v - pi.v)", "18", "run", ("llm",), DPO_FAMILY,
               "share of moved mass, minus the control's", mass_into_top_token,
               regime=SQUEEZE_REGIME, probes=("chosen",)),

    # ---- two runs on the same probe prompts
    *_squeeze_comparisons("P14", ("dpo", "onpolicy-dpo"), "theory.squeeze.threshold (pi_k >= ||pi||^2: no squeeze)", (
        "On-policy negatives squeeze less than off-policy ones.",
        "On-policy negatives squeeze less: y* gains less than under off-policy ones.",
        "On-policy negatives squeeze less: the other probes fall less than under off-policy ones.")),
    *_squeeze_comparisons("P15", ("dpo", "extend"), "theory.squeeze.threshold (lifting pi(y-) out of the valley)", (
        "SFT on y+ and y- before DPO ('extend') squeezes less during DPO.",
        "After 'extend', DPO squeezes less: y* gains less than under plain DPO.",
        "After 'extend', DPO squeezes less: the other probes fall less than under plain DPO.")),
)


BY_ID = {p.id: p for p in CATALOGUE}

# The primary claims, named before the CPU runs of the verdict-regime issue were made (their COMMANDS.md): what
# those runs are for. A merged report corrects their family for multiplicity (Holm, validate.pooling); every
# other verdict is exploratory.
PRIMARY = ("P09a", "P09c", "P09d", "P10", "P18r")



# property tests (hypothesis, over extreme inputs too) that prove a step-level claim as a theorem
THEOREM_TESTS = {
    "P01": ("tests/test_theory_squeeze.py::test_P01_target_always_falls",),
    "P02": ("tests/test_theory_squeeze.py::test_P02_runner_up_always_rises",),
    "P03": ("tests/test_theory_squeeze.py::test_exact_and_first_order_agree_to_second_order",),
    "P04": ("tests/test_theory_squeeze.py::test_P04_first_order_rising_set_is_the_threshold_set",
            "tests/test_theory_squeeze.py::test_P04_no_squeeze_when_target_is_peaky"),
    "P05": ("tests/test_theory_squeeze.py::test_P05_peakier_squeezes_harder",),
    "P06": ("tests/test_theory_squeeze.py::test_P06_smaller_target_squeezes_harder_but_y_star_gains_less",),
    "P06b": ("tests/test_theory_squeeze.py::test_P06_smaller_target_squeezes_harder_but_y_star_gains_less",
             "tests/test_theory_squeeze.py::test_P06b_paper_numbers"),
    "P08": ("tests/test_theory_squeeze.py::test_P08_shared_context_dpo_does_not_squeeze",),
    "P16": ("tests/test_losses_vs_theory.py::test_dpo_coefficient_is_beta_sigma_minus_u",),
    "P18": ("tests/test_theory_softmax.py::test_mass_conservation_is_second_order",),
    "P19": ("tests/test_theory_decomposition.py::test_first_order_error_is_second_order",),
    "X01": ("tests/test_theory_squeeze.py::test_X01_rising_set_is_a_top_set",),
    "X02": ("tests/test_theory_squeeze.py::test_X02_one_hot_limit",),
    "X03": ("tests/test_theory_flow.py::test_flow_concentrates_on_y_star_within_the_time_bound",
            "tests/test_theory_flow.py::test_replicator_flow_from_near_zero_target_converges_to_argmax"),
    "X04": ("tests/test_theory_squeeze.py::test_X04_two_context_dpo_matches_simulation",),
}
SIMULATION_LEVELS = ("logits", "digits", "lm")


def coverage(prediction: Prediction) -> dict:
    """Where a claim is checked: theorem (property tests), simulation (free logits, digits, toy LM) and
    real model (a real-model verdict: the claim's own llm level, or a run-level variant of the same item,
    e.g. P05 -> P05r)."""
    real = [p.id for p in CATALOGUE if "llm" in p.levels and
            (p.id == prediction.id or (p.id == prediction.id + "r"))]
    if prediction.id.endswith("r") and prediction.id[:-1] in BY_ID:
        real = [prediction.id]
    return {"theorem": list(THEOREM_TESTS.get(prediction.id, ())),
            "simulation": [lvl for lvl in prediction.levels if lvl in SIMULATION_LEVELS],
            "real model": real}


def coverage_table() -> str:
    """Markdown: every prediction of the catalogue and the levels at which it is checked."""
    lines = ["| id | claim | theorem (property test) | simulation | real model |", "|---|---|---|---|---|"]
    for p in CATALOGUE:
        c = coverage(p)
        theorem = "yes (" + ", ".join(t.split("::")[1] for t in c["theorem"]) + ")" if c["theorem"] else "-"
        lines.append(f"| {p.id} | {p.claim} | {theorem} | {', '.join(c['simulation']) or '-'} | "
                     f"{', '.join(c['real model']) or '-'} |")
    return "\n".join(lines)


def get(prediction_id: str) -> Prediction:
    try:
        return BY_ID[prediction_id]
    except KeyError:
        raise UserError(f"unknown prediction id {prediction_id!r}; known: {', '.join(BY_ID)}") from None
