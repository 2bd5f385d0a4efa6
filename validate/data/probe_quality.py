"""Which probe texts the initial model wrote are worth reading.

A rephrase stands for "the same meaning in other words" (P13b, and the squeeze index's other probes). SmolLM2's
greedy rephrases are sometimes nothing of the kind: empty (a random model's always are), the same words said
over and over ("Rephrased: Amman, Amman, Amman ..."), or the source itself, token for token or up to case. Such a
probe is kept in the probe set (the run scores it, nothing is invented in its place) but marked unusable, and
the report leaves its prompt out of every verdict that reads it (theory.predictions.evaluate_run).
"""
import difflib
from typing import Optional

from learning_dynamics.validate.data.repetition import WORD, repetition_stats

# the rephrases and their sources
SOURCES = {"chosen_rephrase": "chosen", "rejected_rephrase": "rejected"}
# difflib's similarity of the case-folded texts at or above which a rephrase copies its source
NEAR_COPY = 0.9


def problem(text: str, source: str) -> Optional[str]:
    """Why a rephrase of `source` is not one (None: it is usable)."""
    words = WORD.findall(text)
    if not words:
        return "empty"
    if difflib.SequenceMatcher(None, text.casefold().strip(), source.casefold().strip()).ratio() >= NEAR_COPY:
        return "copies its source"
    if repetition_stats(words)["rep4"] > 0:
        return "repeats itself"
    return None


def unusable(texts: dict) -> dict:
    """{probe: reason} for a probe prompt's texts whose model-written rephrases are not usable."""
    found = {}
    for probe, source in SOURCES.items():
        if probe in texts and source in texts:
            reason = problem(texts[probe], texts[source])
            if reason:
                found[probe] = reason
    return found


def summary(probe_set) -> dict:
    """{probe: {reason: count}} over a probe set (probes.json records)."""
    out = {}
    for record in probe_set:
        for probe, reason in record.get("unusable", {}).items():
            out.setdefault(probe, {}).setdefault(reason, 0)
            out[probe][reason] += 1
    return out
