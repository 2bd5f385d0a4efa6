"""Prompts and responses to token ids with the model's chat template, truncated and cached.

A response is scored (and trained) as the assistant turn's content plus its end
of turn, exactly the tokens the model would emit; the prompt is everything the
template puts before that (system prompt, user turn, assistant header). The
encoding itself is validate.data's; this adds length limits and a cache, since
the same probe texts are encoded for every run and check.
"""
import json

from learning_dynamics.validate import data


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
        return self._cached("p", prompt, lambda: data.prompt_ids(self.tokenizer, prompt)[-self.max_prompt:])

    def response_ids(self, text: str) -> list:
        """The response then its end of turn, cut to max_response_tokens with the end of turn kept."""
        def make():
            ids = data.response_ids(self.tokenizer, text)
            n_end = len(data.response_ids(self.tokenizer, "")) or 1
            if len(ids) <= self.max_response:
                return ids
            return ids[:self.max_response - n_end] + ids[-n_end:]
        return self._cached("r", text, make)
