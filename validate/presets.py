"""Run settings: three presets, the checks that turn bad values into one clear line, and `Settings`,
the typed form every run and check reads.

smoke   the tests' preset: a tiny random Llama (real tokenizer and chat template) on
        2 CPU cores, the whole code path in well under a minute.
cpu     the real SmolLM2-135M-Instruct on 2 CPU cores, under 40 minutes a run: 24 steps
        of 4 pairs from 48 (the 24 probe pairs among them), a higher learning rate,
        7 evaluations (steps 0, 1, 2, 4, 8, 16, 24); references are scored only for the pairs it trains on.
        Its DPO run saturates by step 16 and its first step is not first-order: the negative-gradient claims
        are *not tested* there (theory.regime).
cpu-regime  SmolLM2 on 2 CPU cores in the regime of the paper's claims, chosen by a committed calibration:
        96 steps of 4 pairs over all the default data's pairs (each trained at most once), lr 5e-6,
        evaluations at 0, 1, 2, 4, 8, 16, 32, 64, 96.
default one algorithm on SmolLM2-135M-Instruct on one GPU in a few minutes.
"""
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Optional

from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory.arguments import LR_MAX, check_seed
from learning_dynamics.theory.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")   # validate.training.precision resolves "auto" on the machine that runs
# the algorithms the first-order check's k-step run (validate.measure.trajectory) and the forecast can train: each
# record says whether its step reads the dataset's responses alone (Algorithm.steps_on_dataset_alone)
TRAJECTORY_ALGOS = tuple(name for name, a in registry.REGISTRY.items() if a.steps_on_dataset_alone)
# The first-order check's sizes per preset (validate.check.run): cpu reads what default does (the preset's 24 probe
# prompts), which fits 2 CPU cores in under 30 minutes because a prompt's 12 responses go through the body
# together (validate.training.forward's shared-prompt batches; validate/reports/smollm2-135m-instruct-cpu/first-order/
# COMMANDS.md has each part's time).
N_PROBE_PROMPTS = {"smoke": 2, "cpu": 24, "cpu-regime": 24, "default": 24}   # prompts whose probes the jvp covers
SWEEP_PROMPTS = {"smoke": 2, "cpu": 8, "cpu-regime": 8, "default": 8}       # of them, the prompts whose responses the sweep reads
SWEEP_PAIRS = {"smoke": 2, "cpu": 8, "cpu-regime": 8, "default": 8}         # training pairs of the coarse sweep (validate.measure.pair_sweep)
N_SQUEEZE_PAIRS = {"smoke": 3, "cpu": 48, "cpu-regime": 48, "default": 48}
FORECAST_PAIRS = 64        # pairs `ldyn validate forecast` reads of the built-in data when no file is given


def hyper_setting(algorithm, name: str) -> str:
    """The run setting that feeds a loss hyper-parameter: `beta` (--beta) is shared by every
    reference-based loss, the rest are `<algo>_<name>` (e.g. simpo_gamma)."""
    return "beta" if name == "beta" and algorithm.requires_reference else f"{algorithm.name}_{name}"


def _hyper_defaults() -> dict:
    """Every hyper-parameter setting with its default, read from the registry."""
    out = {}
    for algorithm in registry.REGISTRY.values():
        for name, value in algorithm.defaults.items():
            key = hyper_setting(algorithm, name)
            if out.setdefault(key, value) != value:
                raise AssertionError(f"the registry gives {key} two defaults ({out[key]}, {value})")
    return out


COMMON = dict(algo="dpo", data=None, seed=0, **_hyper_defaults(), precision="auto",
              max_prompt_tokens=96, max_response_tokens=48, n_samples=2, weight_decay=0.0)

PRESETS = {
    "smoke": dict(COMMON, model="tiny-random", device="cpu", steps=4, batch_pairs=4, lr=1e-4,
                  eval_every=2, n_train=48, n_probe=6, eval_batch=32, gen_prompts=2, gen_tokens=8,
                  sample_every=2, extend_sft_steps=2, checkpoint_every=1, max_response_tokens=16),
    "cpu": dict(COMMON, model="smollm2", device="cpu", steps=24, batch_pairs=4, lr=5e-5, eval_every=8,
                n_train=48, n_probe=24, eval_batch=32, gen_prompts=8, gen_tokens=24, sample_every=4,
                extend_sft_steps=None, checkpoint_every=1),
    # the cpu preset's budget in the regime the paper's claims are about (validate/reports/smollm2-135m-instruct-cpu/
    # regime/COMMANDS.md: the calibration behind each value): every training pair of the default data at most once,
    # a first AdamW step within 10% of its first-order prediction, DPO's force on the probe pairs above a fifth of
    # its start at mid-run, evaluations at steps 0, 1, 2, 4, 8, 16, 32, 64, 96
    "cpu-regime": dict(COMMON, model="smollm2", device="cpu", steps=96, batch_pairs=4, lr=5e-6, eval_every=32,
                       n_train=None, n_probe=24, eval_batch=32, gen_prompts=8, gen_tokens=24, sample_every=4,
                       extend_sft_steps=None, checkpoint_every=1),
    "default": dict(COMMON, model="smollm2", device="cuda", steps=240, batch_pairs=32, lr=5e-6,
                    eval_every=20, n_train=None, n_probe=200, eval_batch=256, gen_prompts=32,
                    gen_tokens=48, sample_every=8, extend_sft_steps=80, checkpoint_every=4),
}

# settings that do not change what a run computes: a resumed run may differ in them
RESUMABLE_CHANGES = ("checkpoint_every",)

# settings a user may change with a flag; the others come from the preset
OVERRIDABLE = ("model", "data", "algo", "steps", "device", "seed", "lr", "beta", "batch_pairs",
               "eval_every", "n_probe", "checkpoint_every", "precision")


def settings_for(preset: str, **overrides) -> "Settings":
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = dict(PRESETS[preset], preset=preset)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    check(settings)
    return Settings.of(settings)


def _positive_int(settings, key):
    value = settings[key]
    if not isinstance(value, int) or value < 1:
        raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")


def check(settings: dict) -> None:
    check_seed(settings["seed"])
    if settings["algo"] not in registry.REGISTRY:
        raise UserError(f"unknown --algo {settings['algo']!r}; choose one of {', '.join(registry.ALGORITHMS)}")
    for key in ("steps", "batch_pairs", "eval_every", "n_probe", "eval_batch", "gen_tokens"):
        _positive_int(settings, key)
    for key in ("lr", "beta"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= LR_MAX:
            raise UserError(f"--{key} must be a number in (0, {LR_MAX:g}], got {value!r}")
    if settings["device"] not in ("cpu", "cuda") and not str(settings["device"]).startswith("cuda:"):
        raise UserError(f"--device must be cpu or cuda, got {settings['device']!r}")
    algorithm = registry.get(settings["algo"])
    if settings["batch_pairs"] < algorithm.min_batch_pairs:
        raise UserError(f"--algo {algorithm.name} needs --batch-pairs of at least {algorithm.min_batch_pairs} (it "
                        f"trains on {algorithm.data} data: {algorithm.summary})")
    if settings["precision"] not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {settings['precision']!r}")
    if settings["checkpoint_every"] < 0:
        raise UserError("--checkpoint-every must be >= 0 (0: only at the end)")


HYPER_SETTINGS = tuple(_hyper_defaults())   # beta, simpo_beta, simpo_gamma, ...: one per loss hyper-parameter


@dataclass(frozen=True, eq=False)
class Settings(Mapping):
    """What a run or check was asked, typed; read as a Mapping it is settings.json's flat dict.

    The loss hyper-parameters (HYPER_SETTINGS, from the algorithm registry) sit in `hyper`, so that
    an algorithm with a new one needs no new field here.
    """
    preset: str
    algo: str
    model: str
    device: str
    data: Optional[str]
    seed: int
    steps: int
    batch_pairs: int
    lr: float
    eval_every: int
    n_train: Optional[int]
    n_probe: int
    eval_batch: int
    gen_prompts: int
    gen_tokens: int
    sample_every: int
    extend_sft_steps: Optional[int]   # None: one epoch over the training pairs (validate.training.run.warmup_steps)
    checkpoint_every: int
    max_prompt_tokens: int
    max_response_tokens: int
    n_samples: int
    weight_decay: float
    precision: str = "auto"        # "auto" until a run resolves it (validate.training.precision), then "fp32" or "bf16"
    hyper: Mapping = field(default_factory=dict)

    @classmethod
    def of(cls, values) -> "Settings":
        """Settings from a flat mapping (settings.json, a preset with overrides)."""
        if isinstance(values, Settings):
            return values
        values = dict(values)
        hyper = {k: values.pop(k) for k in HYPER_SETTINGS if k in values}
        names = {f.name for f in fields(cls)} - {"hyper"}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(names | set(HYPER_SETTINGS)))}")
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = sorted(names - set(values) - optional)
        if missing:
            raise UserError(f"setting {missing[0]!r} is missing")
        return cls(**values, hyper=MappingProxyType(hyper))

    @property
    def algorithm(self) -> registry.Algorithm:
        return registry.get(self.algo)

    def with_changes(self, **changes) -> "Settings":
        hyper = {k: changes.pop(k) for k in list(changes) if k in HYPER_SETTINGS}
        return replace(self, **changes, hyper=MappingProxyType({**self.hyper, **hyper}))

    def as_dict(self) -> dict:
        return dict(self)

    def __getitem__(self, key):
        if key in self.hyper:
            return self.hyper[key]
        if key == "hyper" or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter([f.name for f in fields(self) if f.name != "hyper"] + list(self.hyper))

    def __len__(self) -> int:
        return len(fields(self)) - 1 + len(self.hyper)
