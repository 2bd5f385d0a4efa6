"""Before training: which preference pairs will push their own chosen answer down?

For each pair, one step of the algorithm on that pair alone moves log pi(y+),
log pi(y-) and log pi(y*) (y* the per-position argmax under teacher forcing on
y+) by, to first order,

    Delta log pi(probe) = <grad log pi(probe), Delta theta>,

the model's own eNTK between the probe and the pair, times the pair's residual
(the -eta A K G of the force analysis). For a plain SGD step Delta theta =
-eta grad L with grad L = c+ grad log pi(y+) + c- grad log pi(y-), where c = dL/dlog pi
comes from theory.residuals (DPO: c+ = -beta sigma(-u) = -c-). So one backward
pass of c+ log pi(y+) + c- log pi(y-) gives the direction and one jvp along it
gives all three changes: for DPO, Delta log pi(y+) = eta beta sigma(-u) (|g+|^2 - <g+, g->),
and a pair displaces its chosen answer exactly when its y- gradient leans on
its y+ gradient more than y+'s own (Razin et al.'s CHES is the same test on the
last hidden states instead of the whole gradient). The pair's prompt goes
through the body once for y+ and y- (validate.training.forward's shared-prompt rows), and
the jvp goes through the kernel's factors (validate.measure.factored_jvp).

AdamW's first step is not along the gradient: with fresh moments its update is
-lr (g / (|g| + eps) + weight_decay theta), nearly -lr sign(g), so the exact
AdamW predictor is a (dense) jvp along that update. The proxies (CHES, ||G||,
the similarity of y+ and y-) know neither the optimizer nor the step size.

The verification (`verify_pair`) takes the real steps from the same weights,
restored after each: a plain SGD step of the algorithm's own loss
(validate.training.algorithms.step_loss) and the first step of torch.optim.AdamW.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from learning_dynamics.sim.losses import upcast
from learning_dynamics.theory import residuals
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.measure import factored_jvp
from learning_dynamics.validate.training.forward import (takes_4d_masks, decoder_body, functional_sequence_logps, make_batch,
                                                make_shared_prompt_batch, response_logits, token_statistics)
from learning_dynamics.validate.training.algorithms import unigram_f1
from learning_dynamics.validate.training import algorithms as algos
from learning_dynamics.validate.measure.first_order import fused_attention, restoring
from learning_dynamics.validate.measure.first_order import fused_attention
from learning_dynamics.validate.training.session import batch_indices

ADAM_EPS = 1e-8            # torch.optim.AdamW's default eps, which the first update divides by
SGD_TARGET_NATS = 0.3      # the verification's plain SGD step: the largest predicted |change| over all pairs


@dataclass(frozen=True)
class Predictor:
    """One way to forecast a pair's displacement, and what it needs to know.

    column: the per-pair record field it reads; orientation +1 when that field is a predicted change of
    log pi(y+) (negative: falls), -1 when it is a displacement score (larger: falls harder).
    flags: its sign names displacing pairs (predicted change < 0, or a score > 0); else it only ranks.
    optimizer: "sgd" or "adamw" for an exact prediction of that optimizer's step; None for a proxy.
    """
    name: str
    label: str
    column: str
    orientation: float
    flags: bool
    optimizer: str = None

    def predicted_change(self, records) -> np.ndarray:
        """Larger = y+ predicted to rise more (a proxy's score turned around), one value a pair."""
        return self.orientation * np.array([r[self.column] for r in records], dtype=float)

    def displacing(self, records):
        """Boolean per pair, or None for a predictor that only ranks."""
        return self.predicted_change(records) < 0 if self.flags else None


def column(records, key) -> np.ndarray:
    """The values of `key` over the pair records, as floats."""
    return np.array([r[key] for r in records], dtype=float)


PREDICTORS = (
    Predictor("exact_sgd", "exact (eNTK jvp), SGD step", "sgd_dlogp_chosen", 1.0, True, "sgd"),
    Predictor("exact_adamw", "exact (eNTK jvp), first AdamW step", "adamw_dlogp_chosen", 1.0, True, "adamw"),
    Predictor("ches", "CHES (Razin et al.)", "ches", -1.0, True),
    Predictor("ches_ln", "length-normalised CHES", "ches_ln", -1.0, True),
    Predictor("residual_norm", "‖G‖ of the pair", "residual_norm", -1.0, False),
    Predictor("token_overlap", "token overlap of y+ and y- (F1)", "token_f1", -1.0, False),
    Predictor("hidden_cosine", "hidden-state cosine of y+ and y-", "hidden_cosine", -1.0, False),
)
FLAG_PREDICTOR = "exact_sgd"   # the predictor whose flags the summary line and --filter use


def predictor(name: str) -> Predictor:
    return next(p for p in PREDICTORS if p.name == name)


@dataclass
class WithArgmax:
    """A pair's batch (y+ its sequence 0) plus y* as one more sequence: y+'s positions, the argmax labels.

    y* is no sequence a model reads (each argmax token follows y+'s prefix, not y*'s), so it costs no extra
    position: its log-prob is read off the same hidden states as y+'s.
    """
    base: object
    argmax: torch.Tensor

    @property
    def n_sequences(self) -> int:
        return self.base.n_sequences + 1

    def body_inputs(self) -> dict:
        return self.base.body_inputs()

    def pick(self, hidden):
        picked, labels, sequence = self.base.pick(hidden)
        first = sequence == 0
        return (torch.cat([picked, picked[first]]), torch.cat([labels, self.argmax.to(labels.device)]),
                torch.cat([sequence, torch.full_like(sequence[first], self.base.n_sequences)]))


def pair_batch(model, pair, pad_id, device):
    """(prompt, y+) and (prompt, y-) as sequences 0 and 1: one shared-prompt row where the model's attention
    takes one (validate.training.forward), else two rows."""
    sequences = [(pair["prompt"], pair["chosen"]), (pair["prompt"], pair["rejected"])]
    batch = make_shared_prompt_batch([sequences], pad_id) if takes_4d_masks(model) else make_batch(sequences, pad_id)
    return batch.to(device)


def loss_coefficients(algorithm, hyper: dict, logp: tuple, lengths: tuple, reference: tuple) -> tuple:
    """(c+, c-) = dL/dlog pi(y+), dL/dlog pi(y-) of the algorithm's loss (theory.residuals), at these values.

    Inputs as sim.losses.loss_call gives them: lengths only to a length-normalised loss.
    """
    wrt, others = residuals.loss_inputs(algorithm.loss)
    available = {"logp_chosen": logp[0], "logp_rejected": logp[1], "ref_chosen": reference[0],
                 "ref_rejected": reference[1], **hyper}
    if algorithm.length_normalised:
        available.update(len_chosen=lengths[0], len_rejected=lengths[1])
    coefficients = residuals.residual_coefficients(algorithm.loss, **{k: v for k, v in available.items()
                                                                      if k in wrt + others})
    return (float(coefficients.get("logp_chosen", 0.0)), float(coefficients.get("logp_rejected", 0.0)))


def hidden_features(h_chosen: torch.Tensor, h_rejected: torch.Tensor) -> dict:
    """CHES = <h+, h-> - ||h+||^2 over the summed last hidden states at the positions that predict each
    response's tokens (Razin et al., ICLR 2025), its length-normalised form, and the cosine of the sums; fp64."""
    n_c, n_r = h_chosen.shape[0], h_rejected.shape[0]
    plus, minus = h_chosen.double().sum(0), h_rejected.double().sum(0)
    cross, own = float(plus @ minus), float(plus @ plus)
    norms = float(plus.norm() * minus.norm())
    return {"ches": cross - own, "ches_ln": cross / (n_c * n_r) - own / n_c ** 2,
            "hidden_cosine": cross / norms if norms > 0 else 0.0}


def residual_norm(c_plus, c_minus, stats, chosen) -> float:
    """||G||: G = c (pi - e_y) at every response position, ||pi - e_y||^2 = ||pi||^2 - 2 pi_y + 1."""
    per_token = (stats["sqnorm"] - 2 * stats["logp"].exp() + 1).clamp_min(0).double()
    return float(torch.sqrt(c_plus ** 2 * per_token[chosen].sum() + c_minus ** 2 * per_token[~chosen].sum()))


def gradient_pass(model, batch, algorithm, hyper, reference=None) -> tuple:
    """One forward and backward of the pair's loss; (record, y* tokens). The gradient lands in .grad.

    reference: (log pi_ref(y+), log pi_ref(y-)); None: the model is its own reference (step 0 of a run).
    """
    hidden = decoder_body(model)(**batch.body_inputs()).last_hidden_state
    picked, labels, sequence = batch.pick(hidden)
    logits = model.get_output_embeddings()(picked)
    token_logps = -F.cross_entropy(upcast(logits), labels, reduction="none")
    chosen = sequence == 0
    logp = (token_logps[chosen].sum(), token_logps[~chosen].sum())
    lengths = (int(chosen.sum()), int((~chosen).sum()))
    values = (logp[0].item(), logp[1].item())
    c_plus, c_minus = loss_coefficients(algorithm, hyper, values, lengths, values if reference is None else reference)
    (c_plus * logp[0] + c_minus * logp[1]).backward()
    stats = token_statistics(logits.detach(), labels)
    h = picked.detach().float()        # CHES in fp32 (and summed in fp64) whatever the model's precision
    record = {"n_chosen": lengths[0], "n_rejected": lengths[1], "logp_chosen": values[0], "logp_rejected": values[1],
              "logp_ystar": float(stats["argmax_logp"][chosen].sum()), "coef_chosen": c_plus,
              "coef_rejected": c_minus, "residual_norm": residual_norm(c_plus, c_minus, stats, chosen),
              **hidden_features(h[chosen], h[~chosen])}
    return record, stats["argmax"][chosen]


def adamw_first_update(model, direction: dict, lr: float, weight_decay: float, eps: float = ADAM_EPS) -> dict:
    """torch.optim.AdamW's first update from fresh moments: m = (1-b1) g, v = (1-b2) g^2, bias-corrected to g and
    g^2, so Delta theta = -lr (g / (|g| + eps) + weight_decay theta); direction = -g."""
    return {k: lr * (direction[k] / (direction[k].abs() + eps) - weight_decay * v.detach())
            for k, v in model.named_parameters()}


def _jvp_factored(model, probe, direction, factors) -> torch.Tensor:
    with factored_jvp.dual_parameters(model, direction, factors) as params:
        return fwAD.unpack_dual(functional_sequence_logps(model, params, probe)).tangent


def _jvp_dense(model, probe, direction) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        _, tangent = torch.func.jvp(lambda p: functional_sequence_logps(model, p, probe), (params,), (direction,))
    return tangent


def forecast_pair(model, pair, algorithm, hyper, pad_id, device, lr, weight_decay=0.0, reference=None,
                  adamw=True) -> dict:
    """One pair's record: log-probs, loss coefficients, proxies and the exact first-order predictions.

    sgd_dlogp_*: change per unit learning rate of a plain SGD step (nats / eta); adamw_dlogp_*: change of the first
    AdamW step at `lr` (nats). Run inside validate.measure.first_order.exact_math (forward AD needs SDPA's math kernel).
    """
    batch = pair_batch(model, pair, pad_id, device)
    model.zero_grad(set_to_none=True)
    with factored_jvp.capture(model) as factors:
        record, ystar = gradient_pass(model, batch, algorithm, hyper, reference)
    direction = {}
    for k, v in model.named_parameters():   # -grad L, in place: the gradient is not needed again
        direction[k] = v.grad.neg_() if v.grad is not None else torch.zeros_like(v)
    model.zero_grad(set_to_none=True)      # the tensors live on in `direction`
    probe = WithArgmax(batch, ystar)
    sgd = _jvp_factored(model, probe, direction, factors).double().cpu()
    record.update(sgd_dlogp_chosen=float(sgd[0]), sgd_dlogp_rejected=float(sgd[1]), sgd_dlogp_ystar=float(sgd[2]))
    if adamw:
        update = adamw_first_update(model, direction, lr, weight_decay)
        del direction
        moved = _jvp_dense(model, probe, update).double().cpu()
        record.update(adamw_dlogp_chosen=float(moved[0]), adamw_dlogp_rejected=float(moved[1]),
                      adamw_dlogp_ystar=float(moved[2]))
    model.zero_grad(set_to_none=True)
    record["token_f1"] = unigram_f1(list(pair["chosen"]), list(pair["rejected"]))
    return record


def scores(model, batch) -> tuple:
    """(log pi(y+), log pi(y-), log pi(y*)) in the model's precision, y* re-read as the argmax (the project's
    definition of its log-prob: sum over y+'s positions of max log pi); no grad."""
    with torch.no_grad():
        logits, labels, sequence = response_logits(model, batch)
        stats = token_statistics(logits, labels)
    chosen = sequence == 0
    return (float(stats["logp"][chosen].double().sum()), float(stats["logp"][sequence == 1].double().sum()),
            float(stats["argmax_logp"][chosen].double().sum()))


def sgd_eta(records, target_nats: float = SGD_TARGET_NATS) -> float:
    """One eta for every pair: the largest predicted |change| of y+, y- or y* over all pairs is `target_nats`."""
    largest = max(abs(r[f"sgd_dlogp_{k}"]) for r in records for k in ("chosen", "rejected", "ystar"))
    if not largest > 0:
        raise UserError("every pair's predicted change is zero: nothing to verify")
    return target_nats / largest


def verify_pair(model, pair, settings, pad_id, device, eta: float, saved: dict, reference=None) -> dict:
    """The actual changes after one plain SGD step (eta) and after the first AdamW step (settings.lr), each of the
    algorithm's own loss on this pair alone (validate.training.algorithms.step_loss), both from `saved` (restored after).

    One gradient serves both steps: AdamW's first update is a function of it alone.
    """
    batch = pair_batch(model, pair, pad_id, device)
    before = scores(model, batch)
    ref = before[:2] if reference is None else reference
    model.zero_grad(set_to_none=True)
    with fused_attention():
        loss = algos.step_loss(settings.algorithm, "main", model, [dict(pair, ref_chosen=ref[0], ref_rejected=ref[1])],
                               settings, pad_id, device)[0]
        loss.backward()
    after = {}
    with restoring(model, saved):
        with torch.no_grad():
            for v in model.parameters():
                if v.grad is not None:
                    v.add_(v.grad, alpha=-eta)
        after["sgd"] = scores(model, batch)
    with restoring(model, saved):
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        optimizer.step()
        del optimizer
        after["adamw"] = scores(model, batch)
    model.zero_grad(set_to_none=True)
    return {f"actual_{step}_dlogp_{k}": a - b for step, values in after.items()
            for k, a, b in zip(("chosen", "rejected", "ystar"), values, before)}


def train(model, pairs, settings, steps: int, pad_id, device, reference, progress=None) -> list:
    """`steps` AdamW steps of the algorithm over the pairs, in the runs' batches (validate.training.session.batch_indices),
    with each pair's reference log-probs from `reference`; the training log."""
    examples = [dict(p, ref_chosen=r[0], ref_rejected=r[1]) for p, r in zip(pairs, reference)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    log = []
    for t in range(steps):
        indices = batch_indices(t, len(examples), settings.batch_pairs, settings.seed)
        with fused_attention():
            loss, metrics, _ = algos.step_loss(settings.algorithm, "main", model, [examples[i] for i in indices],
                                               settings, pad_id, device)
        if not torch.isfinite(loss):
            raise UserError(f"the training loss became {loss.item()} at step {t}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append({"step": t, **{k: round(float(v), 6) for k, v in metrics.items()}})
        if progress:
            progress(f"training step {t + 1} of {steps}: loss {metrics['loss']:.4f}")
    del optimizer
    model.zero_grad(set_to_none=True)
    return log
