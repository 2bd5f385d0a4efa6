"""One training step's loss for each algorithm, on tokenized pairs.

An example is a dict of token-id lists: "prompt", "chosen", "rejected", and,
once computed, the reference log-probs "ref_chosen", "ref_rejected". The
losses themselves are sim.losses (shared with sim/, tested against theory/).

    sft           -log pi(y+)
    dpo           off-policy DPO on the dataset's (y+, y-)
    onpolicy-dpo  DPO whose y- is a sample of the current policy; the dataset's
                  reference answer y+ ranks above it
    ipo           IPO, TRL's per-token convention
    simpo         SimPO (reference-free, length-normalised, margin gamma)
    extend        SFT on y+ and y- first, then DPO with that model as reference
    pg            policy gradient, GRPO-style: a group {y+, y-, samples} per prompt,
                  reward = unigram F1 against y+, advantages standardised in the
                  group; a negative advantage is a negative gradient
"""
from collections import Counter

import torch

from learning_dynamics.sim import losses
from learning_dynamics.validate.forward import make_batch, sequence_logps

ALGORITHMS = ("sft", "dpo", "onpolicy-dpo", "ipo", "simpo", "extend", "pg")
NEEDS_REFERENCE = ("dpo", "onpolicy-dpo", "ipo", "extend")
NEEDS_SAMPLES = ("onpolicy-dpo", "pg")


def unigram_f1(response, reference) -> float:
    """Token-overlap F1 with the reference answer: the reward that ranks samples."""
    if not response or not reference:
        return 0.0
    common = sum((Counter(response) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(response), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def policy_logps(model, sequences, pad_id, device):
    batch = make_batch(sequences, pad_id).to(device)
    logps, counts = sequence_logps(model, batch)
    return logps, counts, batch.n_tokens


def _pair_logps(model, examples, pad_id, device, rejected_key="rejected"):
    sequences = [(e["prompt"], e["chosen"]) for e in examples] + [(e["prompt"], e[rejected_key]) for e in examples]
    logps, counts, n_tokens = policy_logps(model, sequences, pad_id, device)
    b = len(examples)
    return logps[:b], logps[b:], counts[:b], counts[b:], n_tokens


def _reference(examples, key, device):
    return torch.tensor([e[key] for e in examples], dtype=torch.float32, device=device)


def step_loss(algo: str, phase: str, model, examples, settings, pad_id, device):
    """(mean loss, metrics with TRL names, policy tokens processed) for one batch."""
    if algo == "sft" or (algo == "extend" and phase == "sft"):
        sequences = [(e["prompt"], e["chosen"]) for e in examples]
        if algo == "extend":
            sequences += [(e["prompt"], e["rejected"]) for e in examples]
        logps, _, n_tokens = policy_logps(model, sequences, pad_id, device)
        per_example, metrics = losses.sft_loss(logps)
        return per_example.mean(), metrics, n_tokens
    if algo == "pg":
        return _pg_loss(model, examples, pad_id, device)
    rejected_key = "sample" if algo == "onpolicy-dpo" else "rejected"
    lp_c, lp_r, n_c, n_r, n_tokens = _pair_logps(model, examples, pad_id, device, rejected_key)
    beta = settings["beta"]
    if algo == "simpo":
        per_example, metrics = losses.simpo_loss(lp_c, lp_r, n_c, n_r, beta=settings["simpo_beta"],
                                                 gamma=settings["simpo_gamma"])
    else:
        ref_c = _reference(examples, "ref_chosen", device)
        ref_r = _reference(examples, "ref_sample" if algo == "onpolicy-dpo" else "ref_rejected", device)
        if algo == "ipo":
            per_example, metrics = losses.ipo_loss(lp_c, lp_r, ref_c, ref_r, beta=beta, len_chosen=n_c,
                                                   len_rejected=n_r)
        else:
            per_example, metrics = losses.dpo_loss(lp_c, lp_r, ref_c, ref_r, beta=beta)
    return per_example.mean(), metrics, n_tokens


def _pg_loss(model, examples, pad_id, device):
    groups = [[e["chosen"], e["rejected"]] + list(e["samples"]) for e in examples]
    size = len(groups[0])
    sequences = [(e["prompt"], r) for e, g in zip(examples, groups) for r in g]
    logps, _, n_tokens = policy_logps(model, sequences, pad_id, device)
    rewards = torch.tensor([[unigram_f1(r, e["chosen"]) for r in g] for e, g in zip(examples, groups)],
                           dtype=torch.float32, device=device)
    advantages = losses.group_advantages(rewards)
    per_response, metrics = losses.pg_loss(logps, advantages.reshape(-1))
    metrics["rewards/mean"] = rewards.mean().item()
    metrics["advantages/rejected"] = advantages[:, 1].mean().item()
    return per_response.reshape(-1, size).sum(-1).mean(), metrics, n_tokens
