"""Prompts and responses to token ids with the model's chat template, truncated and cached.

A response is scored (and trained) as the assistant turn's content plus its end
of turn, exactly the tokens the model would emit; the prompt is everything the
template puts before that (system prompt, user turn, assistant header). The
functions encode one text; `Encoder` adds length limits and a cache, since the
same probe texts are encoded for every run and check.
"""
import json
from collections.abc import Mapping

from learning_dynamics.theory.errors import UserError
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


class Encoder:
    def __init__(self, tokenizer, max_prompt_tokens: int, max_response_tokens: int):
        self.tokenizer = tokenizer
        self.max_prompt = max_prompt_tokens
        self.max_response = max_response_tokens
        self._cache = {}

    def _cached(self, kind, value, make):
        key = (kind, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def prompt_ids(self, prompt) -> list:
        """A string (one user turn) or TRL chat messages; the end is kept: the question and the header."""
        return self._cached("p", prompt, lambda: prompt_ids(self.tokenizer, prompt)[-self.max_prompt:])

    def response_ids(self, text: str) -> list:
        """The response then its end of turn, cut to max_response_tokens with the end of turn kept."""
        def make():
            ids = response_ids(self.tokenizer, text)
            n_end = len(response_ids(self.tokenizer, "")) or 1
            if len(ids) <= self.max_response:
                return ids
            return ids[:self.max_response - n_end] + ids[-n_end:]
        return self._cached("r", text, make)

    # the interface the probe set is built through (validate.monitor.trl_tokens.TrainerEncoder has the trainer's rule)
    rule = "ldyn's own: every prompt through the chat template, a response is its text then the end of turn"

    def instruction_ids(self, text: str) -> list:
        return self.prompt_ids(text)

    def end_ids(self, prompt) -> list:
        """What ends every response (the template's end of turn)."""
        return self.response_ids("")

    def responses(self, prompt, texts: dict):
        """(prompt ids, {name: response ids})."""
        return self.prompt_ids(prompt), {k: self.response_ids(v) for k, v in texts.items()}

    def fit(self, prompt_ids, tokens: dict, where: str):
        return prompt_ids, tokens    # cut already, per prompt and response


_MARK = "\u2063LDYN-RESPONSE\u2063"
_EOT_CACHE = {}


def as_id_list(out) -> list:
    """apply_chat_template / tokenizer output -> list[int] (lists, tensors, dicts, BatchEncoding)."""
    if isinstance(out, Mapping) or (hasattr(out, "keys") and hasattr(out, "__getitem__") and not isinstance(out, list)):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if out and isinstance(out[0], (list, tuple)):
        if len(out) != 1:
            raise ValueError("expected one sequence")
        out = list(out[0])
    return [int(t) for t in out]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt) -> list:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def end_of_turn(tokenizer) -> str:
    """The text the chat template puts after an assistant message (e.g. "<|im_end|>"), or the eos token."""
    key = (id(tokenizer), getattr(tokenizer, "chat_template", None))
    if key not in _EOT_CACHE:
        eot = ""
        if has_chat_template(tokenizer):
            msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
            rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
            if isinstance(rendered, str) and _MARK in rendered:
                eot = rendered.split(_MARK, 1)[1].rstrip()
        _EOT_CACHE[key] = eot or (tokenizer.eos_token or "")
    return _EOT_CACHE[key]


def prompt_ids(tokenizer, prompt) -> list:
    """Token ids of the prompt up to where the response starts (chat template with generation prompt)."""
    if has_chat_template(tokenizer):
        out = tokenizer.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=True)
        return as_id_list(out)
    if not isinstance(prompt, str):
        prompt = "\n".join(m["content"] for m in prompt)
    return as_id_list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def response_ids(tokenizer, response: str) -> list:
    """Token ids of the response followed by the end-of-turn marker (or eos without a chat template)."""
    if has_chat_template(tokenizer):
        return as_id_list(tokenizer(response + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"])
    ids = as_id_list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_example(tokenizer, prompt, response: str, max_length: int):
    """(input_ids, labels_mask): the chat-formatted prompt then the response; the mask is True on response tokens.

    The response (with its end-of-turn token) is truncated to fit max_length;
    a prompt that leaves no room for a response token is a UserError.
    """
    p = prompt_ids(tokenizer, prompt)
    r = response_ids(tokenizer, response)
    room = int(max_length) - len(p)
    if room < 1:
        raise UserError(f"a prompt has {len(p)} tokens with its chat template, leaving no room for a response "
                        f"within max_length={max_length}; raise max_length or shorten the prompt")
    r = r[:room]
    return p + r, [False] * len(p) + [True] * len(r)


def batch_encode(tokenizer, pairs, max_length: int, pad_id=None) -> dict:
    """Encode (prompt, response) pairs, right-padded: input_ids/attention_mask int64, response_mask bool tensors."""
    from learning_dynamics.validate.training.forward import make_batch

    rows = [encode_example(tokenizer, prompt, response, max_length) for prompt, response in pairs]
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    split = [(ids[:mask.index(True)], ids[mask.index(True):]) for ids, mask in rows]  # the response follows the prompt
    batch = make_batch(split, pad_id)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
            "response_mask": batch.response_mask}
