"""The probe monitor's tokenization: the trainer's own, so that a probe's log-prob is the quantity the trainer
trains (TRL 1.16's rules, read from its DPO, SFT and GRPO trainers).

- Offline trainers (DPOTrainer, SFTTrainer, and ldyn's own `validate run` rules for nothing else): a completion is
  what follows the prompt in the tokens of prompt + completion together. Conversational data goes through the chat
  template (the prompt with the generation prompt, then prompt + one assistant message: the completion ends with
  everything the template writes after the message, e.g. SmolLM2's `<|im_end|>` and a newline); plain text is
  tokenized as raw text, prompt + completion + eos, with the tokenizer's own special tokens and no chat template
  or system prompt. The prompt ends where the prompt's own tokens and every probe response's diverge (TRL's
  `common_prefix_length`, over chosen and rejected there); sequences are cut to the trainer's `max_length`.
- On-policy trainers (GRPOTrainer, RLOOTrainer): the prompt as the trainer feeds it to generation; a response is
  what the model would generate, its text's tokens then the eos, cut at `max_completion_length`.

`Encoder` (validate.training.encode) is the same interface with ldyn's own rule (always the chat template), used when
no TRL trainer is in reach.
"""
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.training.encode import Encoder, as_id_list
# trl loads inside the functions that need them, so importing this module stays light (ldyn --help)

OFFLINE = ("DPOTrainer", "SFTTrainer")
ON_POLICY = ("GRPOTrainer", "RLOOTrainer")


def _assistant(text: str) -> list:
    return [{"role": "assistant", "content": text}]


class TrainerEncoder:
    """Prompts and responses to ids as `trainer_class` does; `base` (an Encoder) writes generation instructions."""

    def __init__(self, tokenizer, trainer_class: str, args, base: Encoder, chat_template=None):
        self.tokenizer, self.trainer_class, self.base = tokenizer, trainer_class, base
        self.on_policy = trainer_class in ON_POLICY
        self.max_length = getattr(args, "max_completion_length" if self.on_policy else "max_length", None)
        self.truncation = "keep_start" if self.on_policy else getattr(args, "truncation_mode", "keep_start")
        self.template = {"chat_template": chat_template} if chat_template else {}
        self.max_response = base.max_response   # generation length of the samples and rephrases
        self._ends = {}

    @property
    def rule(self) -> str:
        """One line for the report: which tokenization the probes were scored with."""
        how = ("the prompt as it is fed to generation; a response is its text's tokens then the eos"
               if self.on_policy else "a response is what follows the prompt in the tokens of prompt + response")
        cut = f"cut to {self.max_length} tokens ({self.truncation})" if self.max_length else "not cut"
        return (f"{self.trainer_class}'s own: chat template for conversational data, raw text for plain text; "
                f"{how}; {cut}")

    # ------------------------------------------------------------------ the interface of validate.training.encode.Encoder

    def tokenize(self, value, **kwargs) -> list:
        """TRL's `_tokenize`: messages through the chat template, a string through the tokenizer itself."""
        if isinstance(value, list):
            return as_id_list(self.tokenizer.apply_chat_template(value, tokenize=True, return_dict=True,
                                                                  **self.template, **kwargs))
        return as_id_list(self.tokenizer(text=value)["input_ids"])

    def prompt_ids(self, prompt) -> list:
        return self.tokenize(prompt, add_generation_prompt=True) if isinstance(prompt, list) else self.tokenize(prompt)

    def instruction_ids(self, text: str) -> list:
        """An instruction to the model (the rephrase prompt): ldyn's chat-template rule, whatever the data."""
        return self.base.prompt_ids(text)

    def end_ids(self, prompt) -> list:
        """The tokens that end every response to `prompt` (its empty response): what a repeated sample ends with."""
        key = "chat" if isinstance(prompt, list) else "text"
        if key not in self._ends:
            self._ends[key] = self.responses(prompt, {"": ""})[1][""] or self.base.end_ids(prompt)
        return self._ends[key]

    def responses(self, prompt, texts: dict):
        """(prompt ids, {name: response ids}) of the responses `texts` to `prompt`, before any cut."""
        prompt_ids = self.prompt_ids(prompt)
        if self.on_policy:
            eos = [] if self.tokenizer.eos_token_id is None else [int(self.tokenizer.eos_token_id)]
            return prompt_ids, {k: as_id_list(self.tokenizer(v, add_special_tokens=False)["input_ids"]) + eos
                                for k, v in texts.items()}
        from trl.data_utils import common_prefix_length
        full = {k: self._joint(prompt, v) for k, v in texts.items()}
        # TRL's prompt ends where the prompt and the pair's responses diverge; y+ and y- decide it exactly as there
        anchors = [k for k in ("chosen", "rejected") if k in full] or list(full)
        n = min([common_prefix_length(prompt_ids, full[k]) for k in anchors] or [len(prompt_ids)])
        out = {}
        for k, ids in full.items():
            if ids[:n] == prompt_ids[:n]:
                out[k] = ids[n:]
            else:  # a probe text whose first characters merge into the prompt's tokens: its own tokens after it
                out[k] = self._alone(texts[k]) if not isinstance(prompt, list) else ids[common_prefix_length(
                    prompt_ids, ids):]
        return prompt_ids[:n], out

    def _joint(self, prompt, text: str) -> list:
        if isinstance(prompt, list):
            return self.tokenize(prompt + _assistant(text))
        eos = self.tokenizer.eos_token or ""
        return self.tokenize(prompt + text + ("" if text.endswith(eos) else eos))

    def _alone(self, text: str) -> list:
        eos = self.tokenizer.eos_token or ""
        ids = self.tokenizer(text + ("" if text.endswith(eos) else eos), add_special_tokens=False)["input_ids"]
        return as_id_list(ids)

    def fit(self, prompt_ids, tokens: dict, where: str):
        """Cut as the trainer cuts: keep_start keeps the first max_length tokens of prompt + response."""
        if not self.max_length:
            return prompt_ids, tokens
        if self.on_policy:
            return prompt_ids, {k: ids[:self.max_length] for k, ids in tokens.items()}
        longest = max(len(ids) for ids in tokens.values())
        if self.truncation == "keep_end" and len(prompt_ids) + longest > self.max_length:
            raise UserError(f"ProbeMonitor: {where} is longer than the trainer's max_length={self.max_length}, and "
                            "truncation_mode='keep_end' would cut each probe response's prompt differently; raise "
                            "max_length or use truncation_mode='keep_start'")
        room = self.max_length - len(prompt_ids)
        if room < 1:
            raise UserError(f"ProbeMonitor: {where} has {len(prompt_ids)} tokens, which fill the trainer's "
                            f"max_length={self.max_length} (the trainer drops such rows); raise max_length or "
                            "give shorter probe prompts")
        return prompt_ids, {k: ids[:room] for k, ids in tokens.items()}


def trainer_encoder(trainer, tokenizer, base: Encoder):
    """The trainer's tokenization when it is a TRL trainer whose rule is known, else ldyn's own (`base`)."""
    names = [c.__name__ for c in type(trainer).__mro__] if trainer is not None else []
    known = next((n for n in names if n in OFFLINE + ON_POLICY), None)
    if known is None:
        return base
    return TrainerEncoder(tokenizer, known, trainer.args, base, getattr(trainer, "chat_template", None))
