"""The precision of a run's forward and backward passes: float32, or bfloat16 where the hardware has units for it.

    precision = resolve("auto", device)        # bf16 on a CPU with AMX or AVX512-BF16, or a CUDA GPU with bf16
    weights = TrainingWeights(model, precision, lr=5e-5, weight_decay=0.0)   # the model now holds working weights

On a CPU, bf16 means bf16 *working weights* (no autocast: re-casting fp32 weights at every call cost 37% of a
forward) with fp32 *master weights* and fp32 optimizer state, so that an update smaller than bf16's 8-bit
mantissa is not lost; the readout is always taken in fp32 (validate.training.forward.readout: a bf16 logit of 20 is
rounded to steps of 0.125, too coarse for a log-prob). On a CUDA GPU, bf16 is autocast over fp32 weights, as
ldyn's GPU reports were made. Without bf16 units a CPU computes bf16 in software, tens of times slower than
fp32, so `auto` picks fp32 there; `bf16` is still honoured when asked.
"""
import contextlib
from dataclasses import dataclass
from pathlib import Path

from learning_dynamics.theory.errors import UserError
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)

CHOICES = PRECISIONS = ("auto", "fp32", "bf16")


def cpu_bf16_units() -> tuple:
    """The CPU's bf16 matrix/vector units that torch can use: AMX and AVX512-BF16 (empty: bf16 is emulated)."""
    import torch
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    found = []
    for unit, name in probes.items():
        ask = getattr(torch.cpu, name, None)
        if ask is not None:
            if ask():
                found.append(unit)
        elif unit in _cpuinfo_flags():     # an older torch: the kernel's flags
            found.append(unit)
    return tuple(found)


def _cpuinfo_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (recorded in run_info.json and the report)."""
    name: str             # "fp32" | "bf16"
    device_type: str      # "cpu" | "cuda"
    requested: str        # what was asked: "auto", "fp32" or "bf16"
    hardware: str         # the units that decided `auto`

    @property
    def low_precision_weights(self) -> bool:
        """bf16 working weights with fp32 masters (a CPU); a GPU autocasts over fp32 weights instead."""
        return self.name == "bf16" and self.device_type == "cpu"

    @property
    def weights_dtype(self):
        import torch
        return torch.bfloat16 if self.low_precision_weights else torch.float32

    def autocast(self):
        """The context every forward pass of a run runs in."""
        import torch
        if self.name == "bf16" and self.device_type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def as_dict(self) -> dict:
        return {"name": self.name, "requested": self.requested, "device": self.device_type,
                "hardware": self.hardware,
                "weights": "bf16 working weights, fp32 master weights and optimizer state, fp32 readout"
                if self.low_precision_weights else ("fp32 weights under bf16 autocast" if self.name == "bf16"
                                                    else "fp32")}


def resolve(requested: str, device) -> Precision:
    """`auto`: bf16 where the hardware computes it natively (a CPU with AMX or AVX512-BF16, a CUDA GPU that
    supports bf16), else fp32; `fp32` and `bf16` as asked."""
    import torch
    if requested not in CHOICES:
        raise UserError(f"--precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        hardware = torch.cuda.get_device_name(device) + (" (bf16)" if native else " (no bf16)") \
            if torch.cuda.is_available() else "no CUDA GPU"
    else:
        units = cpu_bf16_units()
        native = bool(units)
        hardware = f"{cpu_model_name()}: " + (", ".join(units) if units else "no AMX or AVX512-BF16 (bf16 emulated)")
    name = ("bf16" if native else "fp32") if requested == "auto" else requested
    return Precision(name, device.type, requested, hardware)


class TrainingWeights:
    """AdamW over a model's weights, in the run's precision.

    fp32 (or a GPU's autocast): the optimizer steps the model's own fp32 parameters. bf16 on a CPU: fp32
    master copies of the parameters are taken first, the model is cast to bf16, and every step copies the
    bf16 gradients into the masters, steps them and writes their bf16 rounding back into the model.
    `state_dict()` holds fp32 weights either way, so a checkpoint reads the same in both precisions.
    """

    def __init__(self, model, precision: Precision, lr: float, weight_decay: float):
        import torch
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if precision.low_precision_weights:
            self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
            model.to(precision.weights_dtype)
        else:
            self.masters = None
        self.optimizer = torch.optim.AdamW(self.masters or self.params, lr=lr, weight_decay=weight_decay,
                                           fused=precision.device_type == "cuda")

    def zero_grad(self) -> None:
        for p in self.params + (self.masters or []):
            p.grad = None

    def grad_norm(self) -> float:
        """The total gradient norm (nothing clipped), in fp32; with masters, their gradients are filled first."""
        import torch
        if self.masters is not None:
            for p, m in zip(self.params, self.masters):
                m.grad = None if p.grad is None else p.grad.float()
        grads = [p for p in (self.masters or self.params)]
        return torch.nn.utils.clip_grad_norm_(grads, float("inf")).item()

    def step(self) -> None:
        import torch
        self.optimizer.step()
        if self.masters is not None:
            with torch.no_grad():
                for p, m in zip(self.params, self.masters):
                    p.copy_(m)

    def parameters_fp32(self) -> dict:
        """{name: float32 copy} of the trained parameters now (the masters where there are masters)."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        return {n: t.detach().float().clone() for n, t in zip(names, self.masters or self.params)}

    def model_state(self) -> dict:
        """The model's state dict with fp32 weights (the masters where there are masters)."""
        state = self.model.state_dict()
        if self.masters is None:
            return state
        by_tensor = {id(p): m for p, m in zip(self.params, self.masters)}
        out = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            master = by_tensor.get(id(tensor))
            out[name] = master.detach() if master is not None else state[name].float()
        return out

    def state_dict(self) -> dict:
        return {"model": self.model_state(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore weights and optimizer state (a checkpoint of either precision)."""
        import torch
        self.model.load_state_dict(state["model"])          # copy_ casts to the working dtype
        if self.masters is not None:
            named = dict(self.model.named_parameters())
            by_tensor = {id(p): m for p, m in zip(self.params, self.masters)}
            with torch.no_grad():
                for name, tensor in named.items():
                    if id(tensor) in by_tensor:
                        by_tensor[id(tensor)].copy_(state["model"][name])
        self.optimizer.load_state_dict(state["optimizer"])


def in_precision(model, precision: Precision):
    """The model to score in `precision`: itself, or, for bf16 on a CPU when its weights are fp32 (a trainer's
    model), a bf16 copy, so that the trainer's own weights are never touched."""
    import copy

    if precision is None or not precision.low_precision_weights:
        return model
    if next(model.parameters()).dtype == precision.weights_dtype:
        return model
    return copy.deepcopy(model).to(precision.weights_dtype).eval().requires_grad_(False)
