"""Preference pairs that cannot teach anything: chosen and rejected the same, as text or as trained token ids.

On such a pair DPO's two pushes cancel, so its loss gradient is zero up to round-off, and AdamW rescales that
round-off into steps of full size in a random direction: the model moves, its probes move, and the verdicts look
like results. A pair is degenerate when chosen == rejected as text, or, once an encoder is given, when both
give the same token ids after the chat template and the truncation to max_response_tokens (texts that differ
only past the cut). Such pairs are dropped with one count on stderr; data made only of them is refused.

    rows = keep_distinct(rows, source="pairs.jsonl")                  # before the model loads: text only
    rows = keep_distinct(rows, source="pairs.jsonl", encoder=encoder)  # after: the tokens a run trains on
"""
import sys

from learning_dynamics.theory.errors import UserError

_SAID = set()   # warnings already printed in this process (a run splits its data twice: before and after loading)


def is_degenerate(example: dict, encoder=None) -> bool:
    if "rejected" not in example:   # a completion or a prompt alone (TRL's SFT and GRPO formats): not a pair
        return False
    if example["chosen"] == example["rejected"]:
        return True
    return encoder is not None and encoder.response_ids(example["chosen"]) == encoder.response_ids(example["rejected"])


def keep_distinct(rows: list, source: str, encoder=None) -> list:
    """The rows whose chosen and rejected differ; a count of the others on stderr, UserError if none is left."""
    kept = [row for row in rows if not is_degenerate(row, encoder)]
    dropped = len(rows) - len(kept)
    if not dropped:
        return rows
    how = "as text" if encoder is None else f"as text or in their first {encoder.max_response} tokens"
    if not kept:
        raise UserError(f"{source}: every one of its {len(rows)} pairs has chosen equal to rejected ({how}); "
                        "such pairs have no loss gradient to train on")
    message = (f"ldyn: warning: {source}: dropped {dropped} of {len(rows)} pairs whose chosen equals rejected "
               f"({how}): they have no loss gradient to train on")
    if (source, dropped) not in _SAID:   # the tokenized split drops no more than the text one: said already
        _SAID.add((source, dropped))
        print(message, file=sys.stderr)
    return kept
