"""What the probe monitor (validate.monitor.monitor) reads off a transformers / TRL trainer: its algorithm, its
processes, and a model to score in ldyn's own precision.

TRL stays an optional extra: trainers and configs are recognised by class name, never imported.
"""
import contextlib
import copy
import inspect
from dataclasses import dataclass

from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory.algorithms import ALGORITHMS, trained_by
from learning_dynamics.validate.measure.scoring import scoring_autocast
# accelerate, torch, transformers
#   load inside the functions that need them, so importing this module stays light (ldyn --help)

# TRL's config classes name their trainer, for a callback used without its trainer in reach.
CONFIG_TRAINERS = {"DPOConfig": "DPOTrainer", "SFTConfig": "SFTTrainer", "GRPOConfig": "GRPOTrainer",
                   "RLOOConfig": "RLOOTrainer", "KTOConfig": "KTOTrainer"}


def infer_algo(trainer_names, args) -> str:
    """The algorithm of a run from its trainer's class names (MRO) and its config's loss_type (each record of
    theory.algorithms names the TRL trainers that train it)."""
    names = list(trainer_names) + [CONFIG_TRAINERS.get(type(args).__name__, "")]
    loss = getattr(args, "loss_type", "sigmoid") if "DPOTrainer" in names else None
    losses = [loss] if isinstance(loss, str) or loss is None else list(loss)
    algorithm = trained_by(names, losses[0]) if len(losses) == 1 else None
    if algorithm is not None:
        return algorithm.name
    if "DPOTrainer" in names:
        raise UserError(f"DPOTrainer with loss_type={losses} has no algorithm in the catalogue; pass "
                        f"ProbeMonitor(..., algo=...) with one of {', '.join(ALGORITHMS)}")
    raise UserError(f"cannot tell the algorithm of a {names[0] or type(args).__name__} run; pass "
                    f"ProbeMonitor(..., algo=...) with one of {', '.join(ALGORITHMS)}")


def find_trainer(callback):
    """The Trainer whose callback handler is calling `callback`.

    transformers hands a callback the model and tokenizer but not the trainer; the monitor needs its class
    (the algorithm), its accelerator (several processes) and its log() (the reporters). The trainer is
    `self` in a frame of the call stack.
    """
    from transformers import Trainer
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and callback in owner.callback_handler.callbacks:
            return owner
        frame = frame.f_back
    return None


@dataclass
class Processes:
    """This process's place in the run; `sharded`: no process holds the whole model (FSDP, ZeRO-3)."""
    rank: int = 0
    world: int = 1
    is_main: bool = True
    kind: str = "NO"
    sharded: bool = False
    accelerator: object = None

    @classmethod
    def of(cls, trainer) -> "Processes":
        from accelerate import PartialState
        state = PartialState()
        accelerator = getattr(trainer, "accelerator", None)
        kind = str(getattr(accelerator, "distributed_type", "NO")).split(".")[-1]
        plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
        zero3 = kind == "DEEPSPEED" and getattr(plugin, "zero_stage", 0) == 3
        return cls(state.process_index, state.num_processes, state.is_main_process, kind,
                   kind == "FSDP" or zero3, accelerator)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model) if self.accelerator is not None and model is not None else model

    def broadcast(self, obj):
        """The main process's `obj` on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list
        return broadcast_object_list([obj], from_process=0)[0]

    def gather(self, items: list) -> list:
        """Every process's `items`, concatenated, on every process."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object
        return gather_object(list(items))

    def full_state_dict(self, wrapped):
        """FSDP / ZeRO-3: every process joins the gather of the full weights; the main process gets them
        (untested here: no GPU machine ran it)."""
        return self.accelerator.get_state_dict(wrapped)


def fsdp_not_applied(args, procs) -> str:
    """A line when the trainer asked for FSDP but accelerate runs another kind (accelerate 1.16 turns FSDP on
    only for GPU-type processes: on CPU processes it runs plain data parallelism), else ''."""
    import os
    asked = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if not asked or procs.kind == "FSDP":
        return ""
    return (f"FSDP was asked for but accelerate runs this as {procs.kind} (accelerate turns FSDP on for GPU "
            "processes only): every process holds the whole model")


@contextlib.contextmanager
def ldyn_precision(module, precision=None):
    """Score and generate as `ldyn validate run` does, whatever mixed precision the trainer trains in.

    accelerate's bf16/fp16 replaces the prepared model's forward by an autocast wrapper (keeping the original
    as `_original_forward`), which `model.generate` goes through; an outer autocast may also be active. Both
    are switched off for the block; then ldyn's own precision applies (validate.training.precision: `precision`'s autocast,
    by default float32, or bf16 autocast on a CUDA GPU that supports it). Weights stored in bf16 stay bf16.
    """
    import torch

    device = next(module.parameters()).device
    patched = module.__dict__.get("forward")
    original = module.__dict__.get("_original_forward")
    if original is not None:
        module.forward = original
    try:
        with torch.autocast(device.type, enabled=False):
            yield scoring_autocast(device) if precision is None else precision.autocast
    finally:
        if original is not None:
            module.forward = patched


def frozen_copy(module):
    """The model as it is now, for mass tracking's reference: eval mode, no gradients, no mixed-precision
    forward wrapper (it is scored in ldyn_precision like the model)."""
    with ldyn_precision(module):
        reference = copy.deepcopy(module)
    for name in ("forward", "_original_forward"):
        reference.__dict__.pop(name, None)
    return reference.eval().requires_grad_(False)
