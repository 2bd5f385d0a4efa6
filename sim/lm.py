"""`ldyn sim lm`: SFT and DPO on a tiny transformer, tracked with the paper's probes.

Pipeline (deterministic for a seed, about a minute on 2 idle cores):
1. Pretrain a 2-layer transformer (sim/toy_model.py) on the synthetic QA +
   narrative language of sim/toy_language.py.
2. Finetune copies of it, scoring every probe type of SPEC.md on the probe
   prompts every few steps into the shared tracking table (sim/tracking.py):
     sft           SFT on (x, y+)
     dpo           off-policy DPO on (x, y+, y-), reference = the pretrained model
     onpolicy-dpo  DPO whose y- is a sample of the current policy (refreshed
                   every few steps), y+ the dataset's; reference = pretrained
     extend        SFT on y+ and y- (the "extend" dataset), then DPO from there
                   with that model as reference; only its DPO phase is tracked
3. Evaluate theory.predictions on the curves (evaluate_run, evaluate_comparison)
   plus the position-class claim (squeezing happens after y+ and y- diverge),
   and draw one panel per probe type.

Design choices, and why (each was needed to reach the paper's regime):
- DPO starts from the pretrained model, not an SFT model: SFT on 64 short
  answers memorises them, after which y+ is the argmax everywhere, y* = y+, and
  "y+ falls while y* rises" could not even be expressed. The pretrained model
  prefers other styles, so y+ is fluent but not greedy, as a human-written
  chosen answer is for an LLM (the paper also runs DPO from the base model).
- Plain SGD for finetuning. The AKG decomposition describes a gradient step;
  with Adam every parameter moves at the same speed whatever its gradient, so
  the tokens that receive the squeezed mass at y-'s contexts (mostly "the")
  drift into every context and the update stops looking like a force on
  probabilities. SGD keeps each step proportional to the force.
- DPO's step is larger than SFT's (beta = 0.1 scales DPO's gradient by about
  beta/2), and SFT's step is small enough that its early, shared phase (all
  answers in y+'s style rise) is seen before memorisation takes over.
- y- rambles after a wrong value in narrative-only words (valleys at every
  rejected-only position: the off-policy regime); on-policy y- are samples of
  the model (peaks); "extend" lifts y- out of its valley by SFT first.
"""
import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_torch_save
from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.sim.toy_language import ToyLanguage
from learning_dynamics.sim.common.tracking import TrackingTable, series_from_table, steps_of
from learning_dynamics.sim.toy_language import first_divergence

# The paper's four runs, made by default; this order (then the registry's) fixes each run's random stream.
ALGOS = ("sft", "dpo", "onpolicy-dpo", "extend")
# Runs judged one by one (each with its own probe figure): the control and off-policy DPO; the others are
# judged against DPO by the catalogue's two-run predictions (P14, P15).
JUDGED = (registry.CONTROL, "dpo")
# Every registry algorithm the toy LM trains: one response or one (y+, y-) pair per prompt.
SUPPORTED = ALGOS + tuple(name for name, a in registry.REGISTRY.items()
                          if name not in ALGOS and a.data in ("chosen", "pair", "unpaired"))
# every probe type with a response of its own (y* comes with y+; the real model's repeated sample, P17r, is
# not built here: the toy LM's runs are too short and its answers too short for repetition to mean anything)
PROBE_ORDER = probe_registry.SAID_ONCE
# Position classes of y+ / y-, tracked as extra "probes" (statistics over those positions only):
#   pos:shared          y+'s positions before the first divergence (y- has the same tokens there)
#   pos:diverge         the first divergent position (shared context, different targets)
#   pos:chosen_after    y+'s positions after the divergence (chosen-only contexts)
#   pos:rejected_after  y-'s positions after the divergence (rejected-only contexts)
POSITION_CLASSES = ("pos:shared", "pos:diverge", "pos:chosen_after", "pos:rejected_after")


@dataclass(frozen=True)
class LMConfig:
    pretrain_steps: int = 400
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    corpus_documents: int = 10000
    sft_lr: float = 0.003
    dpo_lr: float = 0.05
    batch: int = 16
    sft_steps: int = 240
    dpo_steps: int = 240
    extend_sft_steps: int = 120   # y+ and y- per prompt: as many SFT examples as the SFT run's 240 steps
    beta: float = 0.1
    eval_every: int = 20
    onpolicy_refresh: int = 8     # steps between fresh samples of the policy for on-policy y-
    max_new_tokens: int = 12


# The tests' setting: the same pretraining (so its cache is shared), shorter finetuning.
QUICK = LMConfig(sft_steps=100, dpo_steps=120, extend_sft_steps=50, eval_every=24)
PRETRAIN_FIELDS = ("pretrain_steps", "pretrain_batch", "pretrain_lr", "corpus_documents")


# --------------------------------------------------------------------------- data to tensors

def pack(prompts, responses, pad_id):
    """Teacher-forcing batch: inputs [B, T], labels [B, T], response mask [B, T], offsets.

    logits[:, t] (from inputs[:, :t+1]) predicts labels[:, t]; the mask is 1
    exactly on labels that are response tokens; response position l of row b
    sits at column offsets[b] + l.
    """
    from learning_dynamics.sim.common.batches import right_pad, span_mask

    tokens, lengths = right_pad([list(p) + list(r) for p, r in zip(prompts, responses)], pad_id)
    offsets = [len(p) - 1 for p in prompts]
    mask = span_mask(tokens.shape[1] - 1, offsets, lengths - 1).float()
    return tokens[:, :-1], tokens[:, 1:], mask, offsets


def response_logps(model, prompts, responses, pad_id):
    """Summed log pi(response | prompt) per row (differentiable)."""
    from learning_dynamics.sim.losses import masked_logp_sums

    inputs, labels, mask, _ = pack(prompts, responses, pad_id)
    return masked_logp_sums(model(inputs), labels, mask)[0]


def encode_prompt(language, example):
    return [language.bos_id] + language.encode(example.prompt)


def encode_response(language, words):
    return language.encode(words) + [language.eos_id]


# --------------------------------------------------------------------------- pretraining

def pretraining_corpus(language, n_documents: int, seed: int):
    from learning_dynamics.sim.common.batches import right_pad

    rng = np.random.default_rng(seed + 1)
    documents = [language.encode(language.pretraining_document(rng)) for _ in range(n_documents)]
    return right_pad(documents, language.pad_id)[0]


def pretrain(language, config: LMConfig, seed: int, progress):
    """Next-token training on the corpus; returns the model and its final loss."""
    import torch
    import torch.nn.functional as F
    from learning_dynamics.sim.toy_model import make_model

    corpus = pretraining_corpus(language, config.corpus_documents, seed)
    model = make_model(language.vocab_size, block_size=40, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.pretrain_lr,
                                                   total_steps=config.pretrain_steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in progress(range(config.pretrain_steps), desc="pretrain"):
        batch = corpus[torch.randint(len(corpus), (config.pretrain_batch,), generator=generator)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               ignore_index=language.pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model, float(np.mean(losses[-50:]))


def pretrained_model(language, config: LMConfig, seed: int, cache_dir: Path, progress):
    """The pretrained model, from `cache_dir` when an identical pretraining was already run there.

    The key hashes the seed, the pretraining settings, the vocabulary and the
    source of the language, the model and `pretrain`, so a stale checkpoint is
    never reused; a cache hit gives bit-identical weights, so the results (and
    the JSON) do not depend on whether pretraining ran or was loaded.
    """
    import hashlib
    import inspect
    import json

    import torch
    from learning_dynamics.sim import toy_language, toy_model
    from learning_dynamics.sim.toy_model import make_model

    recipe = {"seed": seed, "words": language.words, **{f: getattr(config, f) for f in PRETRAIN_FIELDS},
              "code": [inspect.getsource(m) for m in (toy_language, toy_model)] + [inspect.getsource(pretrain)]}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"pretrained-{key}.pt"
    if path.exists():
        print(f"ldyn sim lm: reusing the pretrained model {path}", file=sys.stderr)
        saved = torch.load(path, weights_only=True)
        model = make_model(language.vocab_size, block_size=40, seed=seed)
        model.load_state_dict(saved["state_dict"])
        return model, float(saved["final_loss"])
    model, final_loss = pretrain(language, config, seed, progress)
    atomic_torch_save({"state_dict": model.state_dict(), "final_loss": final_loss}, path)
    return model, final_loss


# --------------------------------------------------------------------------- the probe set

class ProbeSet:
    """Token ids of every probe response for every probe prompt, and their scoring."""

    def __init__(self, language, initial_samples):

        self.language = language
        examples = language.probe_examples
        self.prompt_ids = [ex.prompt_id for ex in examples]
        self.prompts = [encode_prompt(language, ex) for ex in examples]
        self.responses = {probe: [encode_response(language, ex.probes[probe]) for ex in examples]
                          for probe in PROBE_ORDER if probe != "initial_sample"}
        self.responses["initial_sample"] = [list(s) for s in initial_samples]
        self.divergence = [first_divergence(c, r) for c, r in
                           zip(self.responses["chosen"], self.responses["rejected"])]

    def evaluate(self, model) -> list:
        """Tracking rows (without step) for every probe and position class.

        One forward pass over every (prompt, probe) pair; the position classes
        reuse the logits of the chosen and rejected rows.
        """
        import torch

        n = len(self.prompts)
        responses = [r for probe in PROBE_ORDER for r in self.responses[probe]]
        with torch.no_grad():
            inputs, labels, mask, offsets = pack(self.prompts * len(PROBE_ORDER), responses,
                                                 self.language.pad_id)
            logits = model(inputs)
            rows = []
            for k, probe in enumerate(PROBE_ORDER):
                block = slice(k * n, (k + 1) * n)
                rows += self._rows(probe, *self._stats(logits[block], labels[block], mask[block]))
            for name, (response, spans) in self.position_spans().items():
                block = slice(PROBE_ORDER.index(response) * n, (PROBE_ORDER.index(response) + 1) * n)
                class_mask = torch.zeros_like(mask[block])
                for row, (start, stop) in enumerate(spans):
                    offset = offsets[block.start + row]
                    class_mask[row, offset + start:offset + max(start, stop)] = 1.0
                rows += self._rows(name, *self._stats(logits[block], labels[block], class_mask))
        return rows

    @staticmethod
    def _stats(logits, labels, mask):
        from learning_dynamics.sim.losses import masked_logp_sums, token_stats

        logp_sum, n_tokens = masked_logp_sums(logits, labels, mask)
        return logp_sum, n_tokens, token_stats(logits, mask)

    def _rows(self, probe, logp_sum, n_tokens, stats):
        return [{"prompt_id": pid, "probe": probe, "logp_sum": float(logp_sum[i]),
                 "n_tokens": int(n_tokens[i]), "entropy_mean": float(stats["entropy_mean"][i]),
                 "sqnorm_mean": float(stats["sqnorm_mean"][i]),
                 "argmax_logp_sum": float(stats["argmax_logp_sum"][i])}
                for i, pid in enumerate(self.prompt_ids)]

    def position_spans(self):
        """Class -> (response it lives in, [(start, stop) per prompt]) in response positions."""
        d = self.divergence
        n_chosen = [len(r) for r in self.responses["chosen"]]
        n_rejected = [len(r) for r in self.responses["rejected"]]
        return {
            "pos:shared": ("chosen", [(0, d[i]) for i in range(len(d))]),
            "pos:diverge": ("chosen", [(d[i], d[i] + 1) for i in range(len(d))]),
            "pos:chosen_after": ("chosen", [(d[i] + 1, n_chosen[i]) for i in range(len(d))]),
            "pos:rejected_after": ("rejected", [(d[i] + 1, n_rejected[i]) for i in range(len(d))]),
        }


# --------------------------------------------------------------------------- finetuning

class Finetuner:
    """One finetuning run: a loss, a policy, a frozen reference, a tracking table.

    `algorithm` is an entry of theory.algorithms (what it trains on, its loss, whether
    it needs a reference or samples); `warmup=True` runs its SFT warm-up phase
    instead (y+ and y- as SFT targets). Every run draws its batches and samples
    from its own seeded generators (seeded by `seed` and the run's `stream`
    number), so a run's curves do not depend on which other runs were made.
    """

    def __init__(self, language, policy, reference, algorithm, config: LMConfig, seed: int, stream: int,
                 progress, warmup: bool = False):
        import torch

        self.language, self.policy, self.reference = language, policy, reference
        self.algorithm, self.warmup, self.config, self.progress = algorithm, warmup, config, progress
        self.sft_like = warmup or algorithm.data == "chosen"
        examples = language.train
        self.prompts = [encode_prompt(language, ex) for ex in examples]
        self.chosen = [encode_response(language, ex.chosen) for ex in examples]
        self.rejected = [encode_response(language, ex.rejected) for ex in examples]
        self.rng = np.random.default_rng([seed, stream])
        self.generator = torch.Generator().manual_seed(1000 * seed + stream)
        lr = config.sft_lr if self.sft_like else config.dpo_lr
        self.optimizer = torch.optim.SGD(policy.parameters(), lr=lr)
        if algorithm.requires_reference and not warmup:
            self.reference_chosen = self._reference_logps(self.chosen)
            self.reference_rejected = self._reference_logps(self.rejected)

    def _reference_logps(self, responses):
        import torch

        with torch.no_grad():
            return response_logps(self.reference, self.prompts, responses, self.language.pad_id)

    def _refresh_onpolicy_rejected(self):
        """y- := a fresh sample of the current policy for every training prompt."""
        self.rejected = self.policy.sample(self.prompts, self.language.eos_id, self.language.pad_id,
                                           self.config.max_new_tokens, self.generator)
        self.reference_rejected = self._reference_logps(self.rejected)

    def loss(self, batch):
        import torch
        from learning_dynamics.sim.losses import kto_reference_kl, loss_call, sft_loss

        pad = self.language.pad_id
        prompts = [self.prompts[i] for i in batch]
        chosen = [self.chosen[i] for i in batch]
        rejected = [self.rejected[i] for i in batch]
        if self.sft_like and not self.warmup:
            return sft_loss(response_logps(self.policy, prompts, chosen, pad))[0].mean()
        logps = response_logps(self.policy, prompts + prompts, chosen + rejected, pad)
        if self.warmup:
            return sft_loss(logps)[0].mean()
        n = len(batch)
        inputs = {"logp_chosen": logps[:n], "logp_rejected": logps[n:],
                  "len_chosen": torch.tensor([float(len(r)) for r in chosen]),
                  "len_rejected": torch.tensor([float(len(r)) for r in rejected])}
        if self.algorithm.requires_reference:
            inputs.update(ref_chosen=self.reference_chosen[batch], ref_rejected=self.reference_rejected[batch])
        if self.algorithm.data == "unpaired":   # TRL's KL estimate from the batch's mismatched pairs
            inputs["kl"] = kto_reference_kl(lambda model, ps, rs: response_logps(model, ps, rs, pad), self.policy,
                                            self.reference, prompts + prompts, chosen + rejected)
        hyper = registry.hyper_parameters(self.algorithm.name, kl_beta=self.config.beta)
        return loss_call(self.algorithm, inputs, hyper)[0].mean()

    def run(self, steps, probes=None, table=None):
        """Train for `steps`; with a probe set and table, evaluate at 0, every eval_every, and the end."""
        if table is not None:
            table.append(0, probes.evaluate(self.policy))
        desc = f"{self.algorithm.name} (warm-up)" if self.warmup else self.algorithm.name
        for step in self.progress(range(1, steps + 1), desc=desc):
            if self.algorithm.negative == "policy" and (step - 1) % self.config.onpolicy_refresh == 0:
                self._refresh_onpolicy_rejected()
            batch = self.rng.choice(len(self.prompts), size=self.config.batch, replace=False)
            loss = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if table is not None and (step % self.config.eval_every == 0 or step == steps):
                table.append(step, probes.evaluate(self.policy))
        return self.policy


# --------------------------------------------------------------------------- the experiment

def run_experiment(out: Path, seed: int, algos, config: LMConfig, progress):
    """Pretrain, finetune with each algorithm, return {run: series} and the pretraining summary."""
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    language = ToyLanguage(seed)
    base, pretrain_loss = pretrained_model(language, config, seed, out / "cache", progress)
    samples = base.sample([encode_prompt(language, ex) for ex in language.probe_examples], language.eos_id,
                          language.pad_id, config.max_new_tokens, torch.Generator().manual_seed(seed + 3))
    probes = ProbeSet(language, samples)
    series, steps = {}, {}
    for algo in algos:
        table = TrackingTable(out / "tracking" / algo, fresh=True)
        stream = SUPPORTED.index(algo)
        algorithm = registry.get(algo)
        policy, reference = copy.deepcopy(base), base
        if algorithm.warmup:
            Finetuner(language, policy, base, algorithm, config, seed, 10 + stream, progress,
                      warmup=True).run(config.extend_sft_steps)
            reference = copy.deepcopy(policy)
        trainer = Finetuner(language, policy, reference, algorithm, config, seed, stream, progress)
        trainer.run(config.sft_steps if algorithm.data == "chosen" else config.dpo_steps, probes, table)
        rows = table.read()
        table.write_merged(out / "tracking" / f"{algo}.csv")
        series[algo], steps[algo] = series_from_table(rows), steps_of(rows)
    example = language.probe_examples[0]
    return series, steps, {"pretrain_steps": config.pretrain_steps, "pretrain_final_loss": pretrain_loss,
                           "vocab_size": language.vocab_size, "n_train_prompts": len(language.train),
                           "n_probe_prompts": len(language.probe_examples),
                           "example": {"prompt": " ".join(example.prompt),
                                       **{p: " ".join(example.probes[p]) for p in PROBE_ORDER
                                          if p in example.probes},
                                       "initial_sample": language.decode(samples[0])}}
