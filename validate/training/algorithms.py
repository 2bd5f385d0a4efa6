"""One training step's loss for any algorithm of the registry (theory.algorithms), on tokenized pairs.

An example is a dict of token-id lists: "prompt", "chosen", "rejected", and,
once computed, the reference log-probs "ref_chosen", "ref_rejected" (and
"sample"/"samples" with "ref_sample" for algorithms that need samples). The
losses themselves are sim.losses (shared with sim/, tested against theory/);
which one, with which inputs, is read from the registry entry. The "group"
shape (pg) uses a GRPO-style group {y+, y-, samples} per prompt, reward =
unigram F1 against y+, advantages standardised in the group.
"""
from collections import Counter

import torch

from learning_dynamics.sim import losses
from learning_dynamics.theory import algorithms as registry
from learning_dynamics.validate.training.forward import in_order, one_batch, sequence_logps
from learning_dynamics.validate.presets import hyper_setting


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
    """Summed log-probs [N] and token counts [N] of `sequences` in their order, in one differentiable batch
    (the sequences of a prompt after one copy of it: a pair's y+ and y- share the prompt's forward), and the
    number of tokens the body ran over."""
    order, batch = one_batch(model, sequences, pad_id)
    logps, counts = sequence_logps(model, batch.to(device))
    return in_order(logps, order), in_order(counts, order), batch.n_tokens


def _pair_logps(model, examples, pad_id, device, rejected_key="rejected"):
    sequences = [(e["prompt"], e["chosen"]) for e in examples] + [(e["prompt"], e[rejected_key]) for e in examples]
    logps, counts, n_tokens = policy_logps(model, sequences, pad_id, device)
    b = len(examples)
    return logps[:b], logps[b:], counts[:b], counts[b:], n_tokens


def _reference(examples, key, device):
    return torch.tensor([e[key] for e in examples], dtype=torch.float32, device=device)


def hyper_parameters(algorithm, settings) -> dict:
    """The loss's hyper-parameters for a run: --beta for every reference-based loss, `<algo>_<name>`
    settings (presets.HYPER_SETTINGS) for the rest; the registry's defaults underneath."""

    return {h: settings.get(hyper_setting(algorithm, h), v) for h, v in algorithm.defaults.items()}


def step_loss(algorithm: registry.Algorithm, phase: str, model, examples, settings, pad_id, device, reference=None):
    """(mean loss, metrics with TRL names, policy tokens processed) for one batch of `algorithm` (a registry record;
    a name is turned into one where it enters, theory.algorithms.get)."""
    if phase == "sft" or algorithm.data == "chosen":   # the warm-up phase trains on y+ and y- alike
        sequences = [(e["prompt"], e["chosen"]) for e in examples]
        if phase == "sft":
            sequences += [(e["prompt"], e["rejected"]) for e in examples]
        logps, _, n_tokens = policy_logps(model, sequences, pad_id, device)
        per_example, metrics = losses.sft_loss(logps)
        return per_example.mean(), metrics, n_tokens
    return _STEP[algorithm.data](algorithm, model, examples, settings, pad_id, device, reference=reference)


def _pair_step(algorithm, model, examples, settings, pad_id, device, reference=None):
    negative = "sample" if algorithm.negative == "policy" else "rejected"
    lp_c, lp_r, n_c, n_r, n_tokens = _pair_logps(model, examples, pad_id, device, negative)
    available = {"logp_chosen": lp_c, "logp_rejected": lp_r, "len_chosen": n_c, "len_rejected": n_r}
    if algorithm.requires_reference:
        available["ref_chosen"] = _reference(examples, "ref_chosen", device)
        available["ref_rejected"] = _reference(examples, f"ref_{negative}", device)
    per_example, metrics = losses.loss_call(algorithm, available, hyper_parameters(algorithm, settings))
    return per_example.mean(), metrics, n_tokens


def _group_step(algorithm, model, examples, settings, pad_id, device, reference=None):
    groups = [[e["chosen"], e["rejected"]] + list(e["samples"]) for e in examples]
    size = len(groups[0])
    sequences = [(e["prompt"], r) for e, g in zip(examples, groups) for r in g]
    logps, _, n_tokens = policy_logps(model, sequences, pad_id, device)
    rewards = torch.tensor([[unigram_f1(r, e["chosen"]) for r in g] for e, g in zip(examples, groups)],
                           dtype=torch.float32, device=device)
    advantages = losses.group_advantages(rewards)
    per_response, metrics = losses.loss_call(algorithm, {"logp": logps, "advantages": advantages.reshape(-1)},
                                      hyper_parameters(algorithm, settings))
    metrics["rewards/mean"] = rewards.mean().item()
    metrics["advantages/rejected"] = advantages[:, 1].mean().item()
    return per_response.reshape(-1, size).sum(-1).mean(), metrics, n_tokens


def _unpaired_step(algorithm, model, examples, settings, pad_id, device, reference=None):
    """y+ as desirable and y- as undesirable rows; the KL estimate from TRL's mismatched pairs."""
    b = len(examples)
    prompts = [e["prompt"] for e in examples] * 2
    completions = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    logps, counts, n_tokens = policy_logps(model, list(zip(prompts, completions)), pad_id, device)
    kl = losses.kto_reference_kl(lambda m, ps, cs: policy_logps(m, list(zip(ps, cs)), pad_id, device)[0], model,
                                 reference, prompts, completions)
    available = {"logp_chosen": logps[:b], "logp_rejected": logps[b:], "kl": kl,
                 "ref_chosen": _reference(examples, "ref_chosen", device),
                 "ref_rejected": _reference(examples, "ref_rejected", device)}
    per_example, metrics = losses.loss_call(algorithm, available, hyper_parameters(algorithm, settings))
    return per_example.mean(), metrics, n_tokens


# one step function per data shape of the registry, none per algorithm
_STEP = {"pair": _pair_step, "group": _group_step, "unpaired": _unpaired_step}
