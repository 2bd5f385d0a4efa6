"""How clean a run's data design is: which probe texts are also training targets.

A probe measures the dynamics only when it is not itself trained on, unless the
claim is about that: y+ and y- of the probe prompt's own pair are trained on by
design, and so is y_{j != i} (another training prompt's y+, probed under x_i:
P12a/P12b are about exactly that). Every other overlap means a verdict partly
measures the data: a probe's y+ that is another pair's y- falls because it is
pushed down directly, an "irrelevant" sentence that is an SFT target rises
because it is trained on.

`measure` counts, per probe type, the probe prompts whose probe text equals
(case- and whitespace-insensitively) the chosen or rejected answer of some
training pair, the probe prompt's own pair excepted for y+ and y-.
"""
from learning_dynamics.theory.probes import PROBE_TYPES
from learning_dynamics.validate.data.probe_texts import normalized

BY_DESIGN = tuple(p.name for p in PROBE_TYPES if p.trained == "other pair")   # trained on under another prompt
OWN_PAIR = {p.name: p.name for p in PROBE_TYPES if p.trained == "own"}        # probe -> its role in its own pair


def measure(probe_set, train_examples) -> dict:
    """{"n_probe_prompts", "n_train_pairs", "by_design", "overlap": {probe: {"any", "as_chosen", "as_rejected"}}}.

    probe_set: validate.data.probes.build_probe_set's list (uses "prompt" and "texts").
    """
    where = {}                                          # text -> set of (prompt key, role)
    for ex in train_examples:
        prompt = normalized(ex["prompt"])
        for role in ("chosen", "rejected"):
            if isinstance(ex.get(role), str):   # prompt/completion data has no y-, prompt-only data neither
                where.setdefault(normalized(ex[role]), set()).add((prompt, role))
    probes = sorted({name for p in probe_set for name in p["texts"]})
    overlap = {name: {"any": 0, "as_chosen": 0, "as_rejected": 0} for name in probes}
    for p in probe_set:
        prompt = normalized(p["prompt"])
        for name, text in p["texts"].items():
            hits = set(where.get(normalized(text), ()))
            if name in OWN_PAIR:
                hits.discard((prompt, OWN_PAIR[name]))
            roles = {role for _, role in hits}
            overlap[name]["any"] += bool(hits)
            overlap[name]["as_chosen"] += "chosen" in roles
            overlap[name]["as_rejected"] += "rejected" in roles
    return {"n_probe_prompts": len(probe_set), "n_train_pairs": len(train_examples),
            "by_design": list(BY_DESIGN), "overlap": overlap}


def overlapping(design: dict, probes) -> dict:
    """{probe: count} for the probes among `probes` that overlap training targets (not by design)."""
    if not design:
        return {}
    counts = design.get("overlap", {})
    return {p: counts[p]["any"] for p in probes
            if p in counts and counts[p]["any"] and p not in design.get("by_design", ())}
