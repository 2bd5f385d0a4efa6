"""The first-order prediction through the kernel's factors: a jvp that never forms x dW^T densely.

One plain SGD step on one training sequence moves each linear layer's weight by
dW = D^T X, with X [T, in] the layer's inputs at the T training positions and
D [T, out] the negated loss gradients at its outputs. At a probe position with
input x the weight term of the jvp is then x dW^T = (x X^T) D: the layer's feature
kernel between the probe and the training tokens (its share of the eNTK, the K of
A K G) times the training residuals. That costs T (in + out) multiply-adds per
position instead of in * out, so a layer is factored where that is cheaper; the
q/k/v (and gate/up) projections read one input, and so share one kernel x X^T.
Factored layers propagate their tangent by hand: forward AD of a linear layer
whose weight has no tangent still multiplies by a zero tangent, a third matmul.
Everything else (embeddings, norms, attention, the LM head) is ordinary forward AD.

The result is the jvp of first_order.predicted_per_unit_eta (torch.func.jvp on
dense tangents); tests hold the two equal to float64 rounding, only the cost
differs (benchmarks/bench_jvp.py).
"""
import contextlib

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from learning_dynamics.validate.training.forward import decoder_body, functional_response_logits, batches, probe_logps


class Factors:
    """dW = D^T X for each linear layer of the model's body that one backward pass went through."""

    def __init__(self):
        self.layers = {}        # weight name -> (module, X [T, in], D [T, out]); layers fed one input share X

    def factored(self) -> dict:
        """The layers for which (x X^T) D costs less than x dW^T."""
        return {name: (module, x, d) for name, (module, x, d) in self.layers.items()
                if x.shape[0] * (module.in_features + module.out_features) < module.weight.numel()}

    def weight(self, name: str) -> torch.Tensor:
        """The dense dW these factors stand for."""
        _, x, d = self.layers[name]
        return d.T @ x


@contextlib.contextmanager
def capture(model, sign: float = -1.0):
    """Factors of `sign` x the gradient of the one forward/backward pass run inside the block.

    sign -1 (the default) gives the factors of an SGD step's direction, -grad L.
    """
    factors = Factors()
    names = {id(p): name for name, p in model.named_parameters()}
    inputs = {}                 # id of an input tensor -> (the tensor, its rows): one X per shared input
    handles = []

    def record(module, args, output):
        name = names[id(module.weight)]
        if name in factors.layers:
            raise ValueError(f"{name} ran twice inside one capture; capture a single forward/backward pass")
        x = args[0]
        rows = inputs.setdefault(id(x), (x, x.detach().reshape(-1, module.in_features)))[1]
        factors.layers[name] = (module, rows, None)

        def store(grad):
            factors.layers[name] = (module, rows, sign * grad.detach().reshape(-1, module.out_features))
        output.register_hook(store)

    for module in decoder_body(model).modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(record))
    try:
        yield factors
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, (_, _, d) in factors.layers.items() if d is None]
    if missing:
        raise ValueError(f"no gradient reached {missing[0]} inside the capture; run backward in the block")


class _LastKernel:
    """x X^T for the most recent probe input: consecutive layers fed one tensor reuse it."""

    def __init__(self):
        self.key = (None, None)
        self.value = None

    def __call__(self, x, inputs):
        if self.key[0] is not x or self.key[1] is not inputs:
            self.key, self.value = (x, inputs), fwAD.unpack_dual(x).primal @ inputs.T
        return self.value


def _factored_forward(module, inputs, d, kernel):
    def forward(x):
        x_primal, x_tangent = fwAD.unpack_dual(x)
        bias, bias_tangent = fwAD.unpack_dual(module.bias) if module.bias is not None else (None, None)
        y = F.linear(x_primal, module.weight, bias)
        tangent = kernel(x, inputs) @ d
        if x_tangent is not None:
            tangent = tangent.add_(F.linear(x_tangent, module.weight))
        if bias_tangent is not None:
            tangent = tangent.add_(bias_tangent)
        return fwAD.make_dual(y, tangent)
    return forward


@contextlib.contextmanager
def _patched(factored: dict):
    kernel = _LastKernel()
    for module, inputs, d in factored.values():
        module.forward = _factored_forward(module, inputs, d, kernel)
    try:
        yield
    finally:
        for module, _, _ in factored.values():
            del module.forward
        kernel.key, kernel.value = (None, None), None   # frees the last probe batch's activations


@contextlib.contextmanager
def dual_parameters(model, direction, factors: Factors):
    """The model's parameters as dual tensors along `direction` (its factored layers through `factors`):
    any functional forward inside the block (forward.functional_sequence_logps on a batch of one's own) carries
    its jvp along the direction; read it with torch.autograd.forward_ad.unpack_dual(...).tangent."""
    factored = factors.factored()
    with torch.no_grad(), fwAD.dual_level(), _patched(factored):
        yield {k: (v.detach() if k in factored else fwAD.make_dual(v.detach(), direction[k]))
               for k, v in model.named_parameters()}


def predicted_per_unit_eta(model, sequences, direction, factors: Factors, pad_id, device, batch_size):
    """d log pi(probe) / d eta along `direction`, whose linear layers' entries `factors` hold."""
    with dual_parameters(model, direction, factors) as params:
        return fwAD.unpack_dual(probe_logps(model, sequences, pad_id, device, batch_size, params)).tangent


@torch.no_grad()
def logit_jvp(model, sequences, direction, factors: Factors, pad_id, device, batch_size, read) -> None:
    """The jvp of the probes' response logits along `direction` (its linear layers' entries in `factors`).

    Per batch calls read(indices, labels, rows, logits, tangent): `indices` map the batch's sequences to
    `sequences`, `rows` each token's sequence within the batch, logits and tangent are [N, V] (one batch's
    response tokens, never the whole probe set's). The same forward as predicted_per_unit_eta, stopped at the
    logits: validate.measure.logit_kernel reads K = J(probe) J(train)^T off it, apart from A.
    """
    factored = factors.factored()
    with fwAD.dual_level(), _patched(factored):
        params = {k: (v.detach() if k in factored else fwAD.make_dual(v.detach(), direction[k]))
                  for k, v in model.named_parameters()}
        for indices, batch in batches(model, sequences, batch_size, pad_id):
            logits, labels, rows = functional_response_logits(model, params, batch.to(device))
            primal, tangent = fwAD.unpack_dual(logits)
            read(indices, labels, rows, primal, tangent)
