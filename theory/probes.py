"""The probe registry: every probe type once, read by the toy LM, the real-model probe set,
the tracking table, the plots and the predictions.

A probe type is a response scored under a probe prompt x_i while a model trains on it
(paper-notes 4.3). `source` says who builds it:
    "text"    written from the data before training (sim/toy_language.py for the toy
              LM, validate/probe_texts.py for real data)
    "model"   needs the initial model (its rephrases, its sample) or its vocabulary
              (random tokens): sim/lm.py, validate/probes.py
    "scored"  computed while y+ is scored (y*, the per-position argmax), never written
`other` marks the probes that are neither trained on nor y*: off-policy DPO is predicted
to lower them all (theory.predictions, P09d). `repeats` names the probe whose response a
probe says twice (sample_repeated: the initial sample, a separator, the same tokens again),
so that the difference of the two log-probs is how readily the model repeats what it just
said (P17r); such a probe adds no response of its own, so the toy LM and the first-order
check leave it out (SAID_ONCE). `trained` says which are training targets by
design: "own" (the probe prompt's own pair), "other pair" (trained on under another prompt,
which is what P12a/P12b are about); validate.design flags every other overlap.

The tuple's order is the scoring order of every layer (changing it reorders batches);
`panel` orders the plots. `needs` names the responses the data must hold (TRL's prompt/completion
data has no y-, prompt-only data neither y+ nor y-): a probe whose data lacks them is not built.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ProbeType:
    name: str
    label: str          # a plot panel's title (matplotlib mathtext)
    description: str    # what it is
    source: str         # "text" | "model" | "scored"
    panel: int          # position in the plots (the paper's taxonomy: y+ and its variants, y- and its variants, ...)
    other: bool = True
    trained: Optional[str] = None   # "own" | "other pair" | None: a training target by design
    repeats: Optional[str] = None   # the probe whose tokens it says twice
    needs: tuple = ()               # the responses the data must hold to build it ("chosen" y+, "rejected" y-)


PROBE_TYPES = (
    ProbeType("chosen", r"$y^+$ (chosen)", "y+ (the chosen response)", "text", 0, other=False,
              trained="own", needs=("chosen",)),
    ProbeType("rejected", r"$y^-$ (rejected)", "y- (the rejected response)", "text", 3, other=False,
              trained="own", needs=("rejected",)),
    ProbeType("chosen_rephrase", r"$y^+$ rephrased", "y+ rephrased: same meaning, different words", "model", 1,
              needs=("chosen",)),
    ProbeType("chosen_format", r"$y^+$'s format, new meaning", "y+'s format with a different meaning", "text", 2,
              needs=("chosen",)),
    ProbeType("rejected_rephrase", r"$y^-$ rephrased", "y- rephrased: same meaning, different words", "model", 4,
              needs=("rejected",)),
    ProbeType("rejected_format", r"$y^-$'s format, new meaning", "y-'s format with a different meaning", "text", 5,
              needs=("rejected",)),
    ProbeType("other_chosen", r"$y_{j\neq i}$ (other prompt's $y^+$)", "another training prompt's y+ (y_{j != i})",
              "text", 6, trained="other pair", needs=("chosen",)),
    ProbeType("test_response", "test response", "a held-out prompt's response", "text", 7,
              needs=("chosen",)),
    ProbeType("irrelevant", "fluent irrelevant", "a fluent irrelevant sentence", "text", 8),
    ProbeType("chosen_shuffled", r"$y^+$ words shuffled", "y+ with its words shuffled", "text", 9,
              needs=("chosen",)),
    ProbeType("random_tokens", "random tokens", "random tokens", "model", 10),
    ProbeType("initial_sample", "initial model's sample", "a sample of the initial model (on-policy y)",
              "model", 11),
    ProbeType("greedy", r"$y^*$ (argmax after $y^+$'s prefixes)",
              "y*: per-position argmax under teacher forcing on y+'s prefixes", "scored", 12, other=False,
              needs=("chosen",)),
    ProbeType("sample_repeated", "initial sample said twice",
              "the initial model's sample, a newline, then the same tokens again", "model", 13, other=False,
              repeats="initial_sample"),
)

BY_NAME = {p.name: p for p in PROBE_TYPES}
NAMES = tuple(BY_NAME)
# Probes with a response of their own (scored as sequences); "scored" ones come with y+.
WITH_RESPONSE = tuple(p.name for p in PROBE_TYPES if p.source != "scored")
TEXT = tuple(p.name for p in PROBE_TYPES if p.source == "text")
MODEL = tuple(p.name for p in PROBE_TYPES if p.source == "model")
OTHER = tuple(p.name for p in PROBE_TYPES if p.other)
# The squeeze index's other probes: none of them a training target in any context (y_{j != i} is trained as
# another prompt's y+, so DPO and SFT move it directly, and by different amounts).
OTHER_UNTRAINED = tuple(p.name for p in PROBE_TYPES if p.other and p.trained is None)
SAID_ONCE = tuple(p for p in WITH_RESPONSE if BY_NAME[p].repeats is None)   # each response scored once
IN_PANEL_ORDER = tuple(sorted(PROBE_TYPES, key=lambda p: p.panel))


RESPONSES = {"chosen": "y+ (a chosen response)", "rejected": "y- (a rejected response)"}


def buildable(fields) -> tuple:
    """The probe types data holding the responses `fields` (a subset of RESPONSES) can build."""
    return tuple(p.name for p in PROBE_TYPES if set(p.needs) <= set(fields))


def get(name: str) -> ProbeType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown probe type {name!r}; known: {', '.join(NAMES)}") from None
