"""Finetuning losses in torch, written once and shared by sim/ and validate/.

Every preference loss takes *summed* sequence log-probs (one number per response,
shape [B]) and returns `(losses [B], metrics)`: per-example losses so the caller
picks the reduction, and detached batch means under TRL's metric names
(`logps/chosen`, `rewards/margins`, ...). Their gradients with respect to the
sequence log-probs are the G-term coefficients that `theory.residuals` derives
with sympy; tests/test_losses_vs_theory.py checks one against the other.

Token-level helpers never keep a [batch, length, vocab] softmax: log-probs come
from log-softmax + gather (`selective_log_softmax`), and log||pi||^2 from
logsumexp(2z) - 2 logsumexp(z), one batch row at a time.
"""
import torch
import torch.nn.functional as F
from learning_dynamics.theory.residuals import loss_inputs


# --------------------------------------------------------------------------- tokens

def upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are normalised in float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[..., index] without materialising the full log-softmax.

    Loops over the leading batch rows so the logsumexp temporary is one row at a
    time (the same trade TRL makes); gather first, normalise second.
    """
    rows = []
    for row_logits, row_index in zip(logits, index):
        picked = row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        rows.append(upcast(picked) - torch.logsumexp(upcast(row_logits), dim=-1))
    return torch.stack(rows)


def masked_logp_sums(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
    """Summed log-prob of `labels` under teacher forcing, and the token count.

    `logits[:, t]` predicts `labels[:, t]` (the caller has shifted them); `mask`
    is 1 on response tokens and 0 on prompt and padding.
    """
    safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))
    token_logps = selective_log_softmax(logits, safe_labels)
    mask = mask.to(token_logps.dtype)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def token_stats(logits: torch.Tensor, mask: torch.Tensor) -> dict:
    """Per-sequence means over masked positions of the token entropy and ||pi||^2,
    and the sum of max_v log pi (the log-prob of y*, the per-position argmax).

    One row at a time: the softmax of a row is the only [length, vocab] temporary.
    """
    entropy, sqnorm, argmax_logp = [], [], []
    for row_logits, row_mask in zip(logits, mask):
        z = upcast(row_logits)
        lse = torch.logsumexp(z, dim=-1)
        probs = torch.exp(z - lse.unsqueeze(-1))
        row_entropy = lse - (probs * z).sum(-1)
        del probs
        row_sqnorm = torch.exp(torch.logsumexp(2 * z, dim=-1) - 2 * lse)
        row_argmax = z.max(dim=-1).values - lse
        m = row_mask.to(z.dtype)
        count = m.sum().clamp_min(1)
        entropy.append((row_entropy * m).sum() / count)
        sqnorm.append((row_sqnorm * m).sum() / count)
        argmax_logp.append((row_argmax * m).sum())
    return {
        "entropy_mean": torch.stack(entropy),
        "sqnorm_mean": torch.stack(sqnorm),
        "argmax_logp_sum": torch.stack(argmax_logp),
    }


# --------------------------------------------------------------------------- losses

# theory.residuals' loss name -> its torch form, filled by @implements (tests/test_losses_vs_theory.py checks that
# every loss of theory.residuals has one, and holds each to the sympy form's gradients)
LOSS_FUNCTIONS = {}


def implements(*names):
    """Register a torch loss as the form of theory.residuals' losses `names`."""
    def register(function):
        for name in names:
            LOSS_FUNCTIONS[name] = function
        return function
    return register


def _metrics(losses, logp_chosen, logp_rejected=None, reward_chosen=None, reward_rejected=None):
    with torch.no_grad():
        out = {"loss": losses.mean().item(), "logps/chosen": logp_chosen.mean().item()}
        if logp_rejected is not None:
            out["logps/rejected"] = logp_rejected.mean().item()
        if reward_chosen is not None and reward_rejected is not None:
            margins = reward_chosen - reward_rejected
            out.update({
                "rewards/chosen": reward_chosen.mean().item(),
                "rewards/rejected": reward_rejected.mean().item(),
                "rewards/margins": margins.mean().item(),
                "rewards/accuracies": (margins > 0).float().mean().item(),
            })
    return out


@implements('sft')
def sft_loss(logp_chosen):
    """Negative log-likelihood of the whole response (summed over its tokens)."""
    losses = -logp_chosen
    return losses, _metrics(losses, logp_chosen)


@implements('dpo', 'onpolicy-dpo', 'spin')
def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=0.1):
    """-log sigmoid(beta * (r(y+) - r(y-))) with r = log pi - log pi_ref.

    Also the loss of on-policy DPO (the responses differ, not the loss) and of
    SPIN (pi_ref is the previous iterate, y- its sample).
    """
    reward_chosen = beta * (logp_chosen - ref_chosen)
    reward_rejected = beta * (logp_rejected - ref_rejected)
    losses = -F.logsigmoid(reward_chosen - reward_rejected)
    return losses, _metrics(losses, logp_chosen, logp_rejected, reward_chosen, reward_rejected)


@implements('dpo-pull-only')
def dpo_pull_only_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=0.1):
    """DPO's loss with log pi(y-) detached: the same per-pair coefficient beta sigma(-u) pulls y+ up, nothing
    pushes y- down. The counterfactual control of DPO: it differs from DPO's step in the negative gradient only."""
    return dpo_loss(logp_chosen, logp_rejected.detach(), ref_chosen, ref_rejected, beta)


@implements('ipo')
def ipo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=0.1,
             len_chosen=None, len_rejected=None):
    """(h - 1/(2 beta))^2, h the log-ratio margin.

    Without lengths: the paper's convention (summed log-probs). With lengths:
    TRL's convention, each log-ratio divided by its response length.
    """
    ratio_chosen = logp_chosen - ref_chosen
    ratio_rejected = logp_rejected - ref_rejected
    if (len_chosen is None) != (len_rejected is None):
        raise ValueError("ipo_loss: give both lengths (per-token IPO) or neither (summed IPO)")
    if len_chosen is not None:
        ratio_chosen = ratio_chosen / len_chosen
        ratio_rejected = ratio_rejected / len_rejected
    losses = (ratio_chosen - ratio_rejected - 1.0 / (2.0 * beta)) ** 2
    return losses, _metrics(losses, logp_chosen, logp_rejected, ratio_chosen, ratio_rejected)


@implements('simpo')
def simpo_loss(logp_chosen, logp_rejected, len_chosen, len_rejected, beta=2.0, gamma=0.5):
    """Reference-free, length-normalised: -log sigmoid(beta (lp+/|y+| - lp-/|y-|) - gamma)."""
    reward_chosen = beta * logp_chosen / len_chosen
    reward_rejected = beta * logp_rejected / len_rejected
    losses = -F.logsigmoid(reward_chosen - reward_rejected - gamma)
    return losses, _metrics(losses, logp_chosen, logp_rejected, reward_chosen, reward_rejected)


@implements('slic')
def slic_loss(logp_chosen, logp_rejected, delta=1.0, lam=0.1):
    """SLiC-HF: hinge on the log-likelihood margin plus an SFT term on y+."""
    losses = torch.clamp(delta - logp_chosen + logp_rejected, min=0) - lam * logp_chosen
    return losses, _metrics(losses, logp_chosen, logp_rejected, logp_chosen, logp_rejected)


@implements('dpop')
def dpop_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=0.1, lam=50.0):
    """DPO-Positive: DPO with a penalty inside the sigmoid when pi(y+) < pi_ref(y+)."""
    reward_chosen = beta * (logp_chosen - ref_chosen)
    reward_rejected = beta * (logp_rejected - ref_rejected)
    penalty = beta * lam * torch.clamp(ref_chosen - logp_chosen, min=0)
    losses = -F.logsigmoid(reward_chosen - reward_rejected - penalty)
    return losses, _metrics(losses, logp_chosen, logp_rejected, reward_chosen, reward_rejected)


@implements('sppo')
def sppo_loss(logp, ref_logp, win_prob, eta=1.0):
    """SPPO: regress the log-ratio of an on-policy sample onto eta (P(win) - 1/2)."""
    losses = (logp - ref_logp - eta * (win_prob - 0.5)) ** 2
    return losses, _metrics(losses, logp)


@implements('pg')
def pg_loss(logp, advantages):
    """Policy gradient with a signed advantage: a negative advantage is a negative gradient."""
    losses = -advantages.detach() * logp
    return losses, _metrics(losses, logp)


@implements('kto')
def kto_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, kl, beta=0.1):
    """KTO on unpaired examples (TRL's loss_type "kto"): 1 - sigmoid(beta (r(y+) - kl)) for each
    desirable example and 1 - sigmoid(beta (kl - r(y-))) for each undesirable one, r = log pi - log pi_ref,
    `kl` the detached estimate of `kto_kl_estimate`. Losses [n_desirable + n_undesirable]."""
    ratio_chosen = logp_chosen - ref_chosen
    ratio_rejected = logp_rejected - ref_rejected
    losses = torch.cat([torch.atleast_1d(1 - torch.sigmoid(beta * (ratio_chosen - kl))),
                        torch.atleast_1d(1 - torch.sigmoid(beta * (kl - ratio_rejected)))])
    metrics = _metrics(losses, logp_chosen, logp_rejected, beta * ratio_chosen, beta * ratio_rejected)
    metrics["kl"] = float(torch.as_tensor(kl, dtype=torch.float64).mean())
    return losses, metrics


def kto_reference_kl(score, policy, reference, prompts, completions):
    """TRL's reference-KL estimate for a batch of unpaired rows, the one way every layer takes it: the policy's and
    the reference's log-probs of the batch's mismatched (prompt, completion) pairs, `score(model, prompts,
    completions) -> [N]`, through kto_kl_estimate (no gradient)."""
    mismatched = kto_mismatched(prompts, completions)
    kl_prompts, kl_completions = [p for p, _ in mismatched], [c for _, c in mismatched]
    with torch.no_grad():
        return kto_kl_estimate(score(policy, kl_prompts, kl_completions), score(reference, kl_prompts, kl_completions))


def kto_mismatched(prompts, completions):
    """TRL's KL pairs: each prompt with the completion one row before it in the batch (cyclically)."""
    return list(zip(prompts, completions[-1:] + completions[:-1]))


def kto_kl_estimate(policy_logps, reference_logps):
    """TRL's reference-KL estimate: mean of log pi - log pi_ref over the mismatched pairs, clamped at 0,
    no gradient (it shifts the rewards; it is not trained)."""
    return (policy_logps - reference_logps).mean().detach().clamp(min=0)


def loss_call(algorithm, available: dict, hyper: dict):
    """(losses, metrics) of a theory.algorithms entry: its loss, called with the inputs that the loss's
    definition in theory.residuals names (lengths only for length-normalised algorithms)."""

    wrt, others = loss_inputs(algorithm.loss)
    kwargs = {k: v for k, v in available.items()
              if k in wrt + others and (algorithm.length_normalised or not k.startswith("len_"))}
    return LOSS_FUNCTIONS[algorithm.loss](**kwargs, **hyper)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantage: rewards standardised within each group (last axis)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)
