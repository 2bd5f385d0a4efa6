"""The set-up `ldyn validate run` and `ldyn validate check` share: the device, the data split, the
model with its encoder, and the tokenized training pairs.

    device = session.device(settings.device)      # fails at once when CUDA is asked but absent
    examples = session.examples(settings)          # bad data fails before the slow model load
    loaded = session.load(settings, device)        # model, tokenizer, encoder, autocast
    pairs = loaded.tokenize(examples.train)
"""
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.data import data, degenerate
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.precision import resolve
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


def device(name: str):
    import torch
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked but no CUDA GPU is visible; use --device cpu (or --preset smoke)")
    return torch.device(name)


@dataclass(frozen=True)
class Examples:
    """Preference examples ({"prompt", "chosen", "rejected"}) split for a run."""
    train: list
    probe: list                    # the probe prompts' pairs: training pairs too (the paper's D_prob)
    test: list                     # held-out prompts (the test-response probe)
    irrelevant: Optional[list]     # the irrelevant-sentence pool; None: chosen from the corpus later


def examples(settings, n_probe: Optional[int] = None, rows=None, encoder=None) -> Examples:
    """The run's examples: --data split 1 in 10 (at most 50) for test, or the built-in clean pools.

    n_probe: probe pairs to set aside (default settings["n_probe"]; the check needs more for its token step).
    rows: preference records already read and checked (the TRL monitor's probe data), split like --data's.
    encoder: once the model is loaded, pairs whose chosen and rejected are the same token ids are dropped too
    (validate.data.degenerate; without it, those equal as text).
    """
    n_probe = settings["n_probe"] if n_probe is None else n_probe
    irrelevant, own_data = None, rows is None
    if rows is None and settings["data"]:
        rows = data.load_preference_jsonl(settings["data"])
    if rows is not None:
        rows = degenerate.keep_distinct(rows, settings["data"] or "probe data", encoder)
        n_test = max(1, min(len(rows) // 10, 50))
        test, train = rows[:n_test], rows[n_test:]
        if len(train) < 2:
            raise UserError(f"{settings['data']}: need at least 3 preference pairs, found {len(rows)}")
        probe = train[:n_probe]
        if own_data and len(probe) < n_probe:
            raise UserError(f"{n_probe} probe pairs asked (--n-probe, or the check's --squeeze-pairs), but "
                            f"{settings['data']} has {len(train)} training pairs; ask for at most {len(train)}")
    else:  # its probe prompts are training prompts (the paper's D_prob)
        dataset = data.default_dataset(seed=0, n_probe=max(n_probe, 1))
        train, test = degenerate.keep_distinct(dataset["train"], "the built-in pairs", encoder), dataset["test"]
        probe = [e for e in dataset["probe"] if not degenerate.is_degenerate(e, encoder)]
        irrelevant = dataset["irrelevant"]
    if len({str(e["prompt"]) for e in train}) == 1 and len(train) > 1:
        print(f"ldyn: warning: all {len(train)} training pairs share one prompt, so the probes that need "
              "other prompts (other_chosen, test_response: P09a vs P09d) measure the same thing; "
              "use data with several prompts", file=sys.stderr)
    if settings.get("n_train"):  # a subset that still holds every probe pair
        probe_prompts = {str(e["prompt"]) for e in probe}
        rest = [e for e in train if str(e["prompt"]) not in probe_prompts]
        train = probe + rest[:max(settings["n_train"] - len(probe), 0)]
    if own_data and settings.get("batch_pairs", 0) > len(train):
        raise UserError(f"--batch-pairs {settings['batch_pairs']} is more than the {len(train)} training pairs; "
                        f"give at most {len(train)}")
    return Examples(train, probe, test, irrelevant)


def is_evaluation_step(step: int, every: int) -> bool:
    """Every `every` steps, and at the powers of two below `every` too: the preference margin moves fastest
    in the first steps, and two runs compared at matched margin are read between the evaluations around it,
    so the early evaluations keep that interval short (cpu preset: 0, 1, 2, 4, 8, 16, 24)."""
    return step % every == 0 or (0 < step < every and step & (step - 1) == 0)


def batch_indices(step: int, n: int, size: int, seed: int) -> list:
    """The pairs of a training step: epoch-wise seeded shuffles, so a step's batch never depends on where a
    run resumed (the first-order check's k-step run takes the same batches)."""
    import numpy as np
    per_epoch = max(n // size, 1)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * size:(k + 1) * size].tolist()


@dataclass(frozen=True)
class Loaded:
    """A model ready to train or probe: the loaded weights, the tokenizer's encoder, the precision context."""
    model: object
    tokenizer: object
    encoder: object                # validate.training.encode.Encoder with the settings' length limits
    precision: object              # validate.training.precision.Precision: what the run computes in
    info: object                   # validate.training.model.LoadedModel (name, source, parameter count)
    seconds: float

    @property
    def autocast(self) -> Callable:
        """The context of every forward pass: bf16 autocast on a GPU run in bf16, else a no-op."""
        return self.precision.autocast

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def tokenize(self, examples) -> list:
        """Token ids of each pair: {"prompt", "chosen", "rejected"}."""
        return [{"prompt": self.encoder.prompt_ids(e["prompt"]), "chosen": self.encoder.response_ids(e["chosen"]),
                 "rejected": self.encoder.response_ids(e["rejected"])} for e in examples]


def load(settings, device, progress=print, dtype=None, attn_implementation: str = "sdpa") -> Loaded:
    """The model in float32 (or `dtype`): a bf16 run casts it when training starts (validate.training.precision), after
    its probe set is built, so that both precisions build the same probes."""
    from learning_dynamics.validate.training.model import load_model

    started = time.perf_counter()
    precision = resolve(settings.get("precision", "auto"), device)
    info = load_model(settings["model"], device=str(device), dtype=dtype, attn_implementation=attn_implementation,
                      progress=progress)
    encoder = Encoder(info.tokenizer, settings["max_prompt_tokens"], settings["max_response_tokens"])
    return Loaded(info.model, info.tokenizer, encoder, precision, info, time.perf_counter() - started)
