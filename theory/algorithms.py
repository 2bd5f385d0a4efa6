"""The algorithm registry: one definition per training algorithm, read by every layer.

theory/ holds it (torch-free data) so that sim/ and validate/ dispatch through the same
entries: what an algorithm trains on, which loss of `theory.residuals` it minimises (its G
term), whether it needs a frozen reference or samples of the policy, its hyper-parameter
defaults, and which run-level predictions of `theory.predictions` concern it. A layer never
branches on an algorithm's name; it reads these fields.

    data        "chosen"    SFT on y+ only
                "pair"      (y+, y-) of one prompt; y- from `negative`
                "group"     a group {y+, y-, samples} per prompt, rewards ranked within it
                "unpaired"  desirable (y+) and undesirable (y-) examples as separate rows,
                            each with its own label, as KTO reads them
    negative    where y- comes from: "dataset", "policy" (a fresh sample), or None
    warmup      "sft-both": SFT on y+ and y- first, then the main phase with that model
                as the reference ("extend")
    traits      what the predictions select on (see theory.predictions):
                "positive-only"         every response's coefficient pushes it up
                "offpolicy-negative"    a negative gradient on the dataset's (unlikely) y-
                "squeezes"              a negative gradient on unlikely responses somewhere
                "onpolicy-negative"     a negative gradient on the policy's own samples
"""
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

from learning_dynamics.theory import residuals
from learning_dynamics.theory.errors import UserError

DATA_SHAPES = ("chosen", "pair", "group", "unpaired")
TRAITS = ("positive-only", "offpolicy-negative", "squeezes", "onpolicy-negative")


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    label: str                             # a figure's legend entry
    loss: str                              # a loss of theory.residuals: its sympy form and G term
    data: str                              # one of DATA_SHAPES
    negative: Optional[str] = None         # "dataset" | "policy" | None
    requires_reference: bool = False
    requires_samples: bool = False
    warmup: Optional[str] = None           # "sft-both" | None
    # the algorithm whose exact step this one takes without its negative gradient: its counterfactual control
    control_of: Optional[str] = None
    length_normalised: bool = False        # log-probs enter divided by the response length
    # the batch rule: pairs a step needs at least (KTO's reference-KL estimate pairs prompts with other rows)
    min_batch_pairs: int = 1
    # the TRL trainers that train it: (trainer class, its config's loss_type or None for any)
    trl: tuple = ()
    # its TRL config's `beta` is this loss's beta (DPOConfig's); GRPO's `beta` is a KL coefficient, another quantity
    trl_beta: bool = False
    traits: frozenset = frozenset()
    defaults: Mapping = field(default_factory=dict)   # filled from the loss's definition in theory.residuals

    @property
    def hyper_parameters(self) -> tuple:
        return tuple(self.defaults)

    @property
    def steps_on_dataset_alone(self) -> bool:
        """Its step reads only the dataset's responses of a batch (y+, or the pair): no samples of the policy, no
        warm-up phase, no batch-level estimate (KTO's KL) - what a k-step run from theta_0 or a per-pair
        forecast can train (validate.trajectory, validate.forecast)."""
        return not self.requires_samples and not self.warmup and self.data in ("chosen", "pair")


def _register(*algorithms) -> Mapping:
    for a in algorithms:
        assert a.data in DATA_SHAPES and set(a.traits) <= set(TRAITS), a
        assert a.requires_samples == (a.negative == "policy" or a.data == "group"), a
        assert a.loss in residuals.LOSSES and not a.defaults, a
        # hyper-parameter defaults live once, beside the loss's sympy form
        defaults = {k: v for k, v in residuals.loss_defaults(a.loss).items() if v is not None}
        object.__setattr__(a, "defaults", MappingProxyType(defaults))
        object.__setattr__(a, "traits", frozenset(a.traits))
    return MappingProxyType({a.name: a for a in algorithms})


REGISTRY = _register(
    Algorithm("sft", "-log pi(y+): supervised finetuning on the chosen response", label="SFT", loss="sft",
              data="chosen", traits={"positive-only"}, trl=(("SFTTrainer", None), ("DPOTrainer", "sft"))),
    Algorithm("dpo", "off-policy DPO on the dataset's (y+, y-)", label="off-policy DPO", loss="dpo", data="pair",
              negative="dataset", requires_reference=True, traits={"offpolicy-negative", "squeezes"},
              trl=(("DPOTrainer", "sigmoid"),), trl_beta=True),
    Algorithm("onpolicy-dpo", "DPO whose y- is a fresh sample of the policy; the dataset's y+ ranks above it",
              label="on-policy DPO", loss="dpo", data="pair", negative="policy", requires_reference=True,
              requires_samples=True, traits={"onpolicy-negative"}),
    Algorithm("ipo", "IPO, each log-ratio divided by its response length (TRL's convention)", label="IPO",
              loss="ipo", data="pair", negative="dataset", requires_reference=True, length_normalised=True,
              traits={"offpolicy-negative", "squeezes"}, trl=(("DPOTrainer", "ipo"),), trl_beta=True),
    Algorithm("simpo", "SimPO: reference-free, length-normalised, with a target margin gamma", label="SimPO",
              loss="simpo", data="pair", negative="dataset", length_normalised=True,
              traits={"offpolicy-negative", "squeezes"}),
    Algorithm("extend", "SFT on y+ and y- first, then DPO with that model as the reference",
              label="extend (SFT, then DPO)", loss="dpo", data="pair", negative="dataset", requires_reference=True,
              warmup="sft-both", traits={"offpolicy-negative", "squeezes"}),
    Algorithm("dpo-pull-only", "DPO's step with y-'s term detached: the same per-pair coefficient beta sigma(-u) "
              "pulls y+, the same batches, no push on y- (DPO's counterfactual control)", label="DPO, pull only",
              loss="dpo-pull-only", data="pair", negative="dataset", requires_reference=True, control_of="dpo"),
    Algorithm("onpolicy-dpo-pull-only", "on-policy DPO's step with the sample's term detached (its counterfactual "
              "control)", label="on-policy DPO, pull only", loss="dpo-pull-only", data="pair", negative="policy",
              requires_reference=True, requires_samples=True, control_of="onpolicy-dpo"),
    Algorithm("pg", "policy gradient, GRPO-style: advantages standardised in a group {y+, y-, samples}; "
              "a negative advantage is a negative gradient", label="policy gradient", loss="pg", data="group",
              requires_samples=True, traits={"squeezes"}, trl=(("GRPOTrainer", None), ("RLOOTrainer", None))),
    Algorithm("kto", "KTO: y+ and y- as unpaired desirable and undesirable examples, each against TRL's "
              "estimate of the policy-reference KL (mismatched prompt-completion pairs of the batch)", label="KTO",
              loss="kto", data="unpaired", negative="dataset", requires_reference=True, traits={"squeezes"},
              min_batch_pairs=2, trl=(("KTOTrainer", None),)),
)

# The names, in registry order: the one list every layer's --algo offers (sim.logits runs these among its own
# gradient experiments, in an order of its own: sim.logits.SIMULATED).
ALGORITHMS = tuple(REGISTRY)
# The generic control run: effects that something else than a negative gradient could also cause are judged as
# a difference against SFT on the same pairs (theory.predictions, validate.report), and, first, against the
# algorithm's counterfactual control where it has one (`control_of`: the same step without the negative gradient).
CONTROL = "sft"


def controls(name: str) -> tuple:
    """The control runs of `name`, the one its verdicts are judged against first: its counterfactual control
    (the same step with the negative gradient removed), then SFT on the same pairs. A control has none, and an
    algorithm with a warm-up phase (extend) has none: its curves start from the model its warm-up left."""
    algorithm = get(name)
    if name == CONTROL or algorithm.control_of or algorithm.warmup:
        return ()
    return tuple(a.name for a in REGISTRY.values() if a.control_of == name) + (CONTROL,)


def get(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown algorithm {name!r}; choose one of {', '.join(REGISTRY)}") from None


def trained_by(trainer_names, loss_type=None) -> Optional[Algorithm]:
    """The algorithm a TRL trainer trains (its class names, most derived first; its config's loss_type), or None."""
    for name in trainer_names:
        for algorithm in REGISTRY.values():
            for trainer, loss in algorithm.trl:
                if trainer == name and loss in (None, loss_type):
                    return algorithm
    return None


def having(trait: str) -> tuple:
    """Names of the algorithms with `trait`, in registry order."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; known: {', '.join(TRAITS)}")
    return tuple(a.name for a in REGISTRY.values() if trait in a.traits)


def hyper_parameters(name: str, kl_beta=None, **overrides) -> dict:
    """The algorithm's defaults, with `kl_beta` as beta for a reference-based loss (the KL strength a
    layer shares across DPO-like losses; a reference-free loss keeps its own beta) and `overrides`
    (only names it has; None keeps the default)."""
    algorithm = get(name)
    unknown = set(overrides) - set(algorithm.defaults)
    if unknown:
        raise TypeError(f"{name}: no hyper-parameter {sorted(unknown)}; it has {list(algorithm.defaults)}")
    if kl_beta is not None and algorithm.requires_reference and "beta" in algorithm.defaults:
        overrides = {"beta": kl_beta, **overrides}
    return {**algorithm.defaults, **{k: v for k, v in overrides.items() if v is not None}}
