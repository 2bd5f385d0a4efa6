"""The probe set: for each probe prompt, one response per probe type, as token ids.

Text probes (y+, y-, their same-format-other-meaning variants, y_{j != i}, a test
response, an irrelevant sentence, shuffled y+) come from validate.probe_texts;
this module adds the ones that need the model: rephrases of y+ and y- (the
initial model asked with a fixed instruction, greedy, so they are reproducible),
an on-policy sample of the initial model, that sample said twice (its tokens, a
newline, the same tokens, then the end of turn: built from the ids, so that
log pi(sample_repeated) - log pi(initial_sample) is exactly the log-prob of the
second copy given the first, up to the end of turn), and random tokens. y* needs
no text: it is the per-position argmax under teacher forcing on y+, scored with y+.
"""
import numpy as np

from learning_dynamics.theory.probes import SAID_ONCE
from learning_dynamics.validate.data import probe_quality, probe_texts
from learning_dynamics.validate.training.generate import generate
from learning_dynamics.validate.training.encode import response_ids
from learning_dynamics.sim.common.io import read_json
from learning_dynamics.theory.errors import CorruptFile


def special_ids(tokenizer) -> set:
    return set(tokenizer.all_special_ids)


def end_of_turn_ids(tokenizer) -> list:
    """The chat template's own end of an assistant turn, as token ids (SmolLM2: [2], <|im_end|>).

    Taken from the template (an empty assistant turn, its tail kept), never from the
    tokenizer's eos list, whose order varies with the transformers version.
    """
    ids = response_ids(tokenizer, "")
    if not ids:
        raise ValueError("the tokenizer has neither a chat template end of turn nor an eos token")
    return ids


def eos_ids(tokenizer) -> list:
    """The ids at which generation stops: the template's end of turn, ChatML's <|im_end|> and the eos.

    A set to stop on, not an order: to end a response use end_of_turn_ids.
    """
    ids = {tokenizer.eos_token_id, end_of_turn_ids(tokenizer)[0]}
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


SEPARATOR = "\n"   # between the two copies of the repeated sample: the copy then starts a line, as a response does


def separator_ids(tokenizer) -> list:
    ids = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    if not ids or set(ids) & special_ids(tokenizer):
        raise ValueError(f"the tokenizer has no plain token for the separator {SEPARATOR!r}")
    return [int(t) for t in ids]


def repeated_response(ids, end, separator) -> list:
    """A response said twice: its tokens without the end of turn, the separator, the same tokens, the end."""
    ids, end = list(ids), list(end)
    if ids[len(ids) - len(end):] != end:
        raise ValueError("a probe response must end with the end of turn")
    said = ids[:len(ids) - len(end)]
    return said + list(separator) + said + end


def build_probe_set(model, tokenizer, encoder, probe_examples, train_examples, test_examples, settings,
                    progress=print, irrelevant=None) -> list:
    """A list of {"prompt_id", "prompt", "texts": {probe: str}, "ids": {probe: [int]}, "prompt_ids"}.

    encoder: validate.encode.Encoder (ldyn's tokenization) or validate.trl_tokens.TrainerEncoder (a trainer's).
    irrelevant: the pool of irrelevant sentences (default: the corpus's fluent
    sentences that are not training targets). Only the probe types the data can build are built
    (theory.probes' `needs`: prompt/completion data has no y-, prompt-only data no y+ either).
    """
    seed = settings["seed"]
    if not irrelevant:
        irrelevant = probe_texts.irrelevant_pool(exclude=probe_texts.training_targets(train_examples))
    probes = probe_texts.build_probe_texts(probe_examples, train_examples, test_examples, irrelevant, seed)
    fields = probe_texts.response_fields(probe_examples)
    pad_id, stop, n_new = tokenizer.pad_token_id, eos_ids(tokenizer), settings["max_response_tokens"]
    rephrase_prompts = [encoder.instruction_ids(probe_texts.REPHRASE_INSTRUCTION.format(text=p[key]))
                        for key in fields for p in probes]
    progress(f"generating {len(rephrase_prompts)} rephrases and {len(probes)} initial samples")
    rephrased = generate(model, rephrase_prompts, stop, pad_id, n_new, sample=False,
                         batch_size=settings["eval_batch"])
    prompt_ids = [encoder.prompt_ids(p["prompt"]) for p in probes]
    samples = generate(model, prompt_ids, stop, pad_id, n_new, sample=True, seed=seed + 1,
                       batch_size=settings["eval_batch"])
    rng = np.random.default_rng(seed + 2)
    out = []
    for i, probe in enumerate(probes):
        texts = {k: probe[k] for k in probe_texts.TEXT_PROBES if k in probe}
        for j, key in enumerate(fields):
            texts[f"{key}_rephrase"] = tokenizer.decode(rephrased[j * len(probes) + i], skip_special_tokens=True).strip()
        texts["initial_sample"] = tokenizer.decode(samples[i], skip_special_tokens=True).strip()
        out.append(_probe_record(str(i), probe["prompt"], texts, tokenizer, encoder, rng))
    return out


def _probe_record(prompt_id, prompt, texts, tokenizer, encoder, rng) -> dict:
    """One probe prompt's record: its texts' ids in the encoder's tokenization, random tokens and the repeated
    sample built from ids, all cut as the encoder cuts."""
    end = encoder.end_ids(prompt)
    ids, tokens = encoder.responses(prompt, texts)
    basis = tokens.get("chosen") or tokens["initial_sample"]   # random tokens as long as y+ (or the sample)
    tokens["random_tokens"] = [int(t) for t in probe_texts.random_token_ids(
        len(tokenizer), max(len(basis) - len(end), 1), rng, exclude=special_ids(tokenizer))] + end
    texts["random_tokens"] = tokenizer.decode(tokens["random_tokens"])
    for key, value in tokens.items():
        if not value:  # an empty generation still needs an end of turn to be scored
            tokens[key] = list(end)
    tokens["sample_repeated"] = repeated_response(tokens["initial_sample"], end, separator_ids(tokenizer))
    texts["sample_repeated"] = tokenizer.decode(tokens["sample_repeated"][:-len(end)])
    ids, tokens = encoder.fit(ids, tokens, f"probe prompt {prompt_id}")
    record = {"prompt_id": prompt_id, "prompt": prompt, "prompt_ids": ids, "texts": texts, "ids": tokens,
              "unusable": probe_quality.unusable(texts)}
    if "chosen" in tokens and "rejected" in tokens:
        record["aux_ids"] = {"shared_prefix": shared_prefix(tokens["chosen"], tokens["rejected"])}
    return record


def shared_prefix(chosen, rejected) -> list:
    """The tokens y+ and y- share from the start (often none): P08's shared-context positions."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return list(chosen[:n])


def probe_sequences(probe_set) -> list:
    """Flatten to (prompt_id, probe, prompt_ids, response_ids), the unit the checks score."""
    return [(p["prompt_id"], name, p["prompt_ids"], ids) for p in probe_set for name, ids in p["ids"].items()]


def said_once(probe_set) -> tuple:
    """(sequences, names) of a probe set's responses, each once (no repeated sample), prompt-major."""
    flat = [s for s in probe_sequences(probe_set) if s[1] in SAID_ONCE]
    return [(p_ids, r_ids) for _, _, p_ids, r_ids in flat], [name for _, name, _, _ in flat]


def tracked_sequences(probe_set) -> list:
    """probe_sequences plus the auxiliary ones a run tracks (the shared prefix of y+ and y-, maybe empty).

    The rejected-only positions of y- are y- minus its shared prefix: the sums of
    the tracking table are additive over positions.
    """
    return probe_sequences(probe_set) + [(p["prompt_id"], name, p["prompt_ids"], ids) for p in probe_set
                                         for name, ids in p.get("aux_ids", {}).items()]


def read_probe_set(path, vocab: int) -> list:
    """A run's probes.json read back and checked: a damaged one is named (with --fresh as the way out)."""

    probes = read_json(path, expect=list)
    for i, p in enumerate(probes):
        ok = (isinstance(p, dict) and isinstance(p.get("prompt_id"), str) and isinstance(p.get("ids"), dict)
              and _token_list(p.get("prompt_ids"), vocab) and isinstance(p.get("texts"), dict)
              and all(_token_list(ids, vocab) and ids for ids in p["ids"].values()))
        if not ok:
            raise CorruptFile(path, f"probe prompt {i} is not a probe record")
    if not probes:
        raise CorruptFile(path, "no probe prompts")
    return probes


def _token_list(ids, vocab: int) -> bool:
    return isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                         for t in ids)
