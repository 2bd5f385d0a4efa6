"""Every TRL dataset format the DPO, SFT and GRPO trainers accept, read into probe records.

A probe record is {"prompt": str | messages, "chosen"?: str, "rejected"?: str} (validate.data.probe_texts reads it):
    explicit preference   {"prompt", "chosen", "rejected"}          DPOTrainer
    implicit preference   {"chosen", "rejected"} (full texts or conversations; the prompt is their shared start,
                          TRL's `extract_prompt`)                    DPOTrainer
    prompt-completion     {"prompt", "completion"}                  SFTTrainer (y+ = the completion; no y-)
    language modeling     {"messages"} (or from/value "conversations", TRL's `maybe_convert_to_chatml`): the last
                          assistant message is y+, the messages before it the prompt; {"text"}: the whole text is y+
                          after its first token (what the trainer trains: every token but the first)   SFTTrainer
    prompt-only           {"prompt"}                                GRPOTrainer (no y+, no y-)
Conversational values are TRL's (lists of {"role", "content"}); a chat response is kept as its text. The probe
types a format cannot build are listed with a one-line reason (`skipped`), never made up.
"""
from collections.abc import Mapping

from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.data import data
from learning_dynamics.validate.data.probe_texts import response_fields
# trl loads inside the functions that need them, so importing this module stays light (ldyn --help)

FORMATS = {  # the keys that name a format, in the order TRL's trainers look for them
    "explicit preference": ("prompt", "chosen", "rejected"), "implicit preference": ("chosen", "rejected"),
    "prompt-completion": ("prompt", "completion"), "language modeling (messages)": ("messages",),
    "language modeling (text)": ("text",), "prompt-only": ("prompt",),
}


def detect(row, where: str) -> str:
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: expected a row of TRL data (a dict), got {type(row).__name__}")
    if "conversations" in row:
        return "language modeling (messages)"
    if ("chosen" in row) != ("rejected" in row):
        return data.checked_record(row, where)   # a preference row missing one response: validate.data.data's one line
    if "completion" in row and "label" in row:
        raise UserError(f"{where}: unpaired preference data (prompt, completion, label) has no pairs and no single "
                        "y+ per prompt; give ProbeMonitor preference or prompt-completion rows")
    for name, keys in FORMATS.items():
        if all(k in row for k in keys):
            return name
    raise UserError(f"{where}: not a TRL data format (keys {sorted(row)}); expected one of: " +
                    "; ".join(", ".join(keys) for keys in FORMATS.values()))


def _prompt(value, where: str, allow_empty: bool = False):
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise UserError(f"{where}: \"prompt\" is an empty string")
        return value
    messages = data.check_messages(value, where, "prompt")
    if messages[-1]["role"] != "user":
        raise UserError(f"{where}: \"prompt\" must end with a user message")
    return messages


def _full_conversation(value) -> bool:
    """A chat response that starts before the assistant's turn: it holds its prompt (TRL's implicit prompt)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and \
        value[0].get("role") != "assistant"


def checked_record(row, fmt: str, where: str) -> dict:
    """One row of format `fmt` as a probe record (checked like validate.data.data's preference rows)."""
    row = dict(row)
    if fmt.startswith("language modeling (messages)"):
        turns = row.get("conversations")
        if isinstance(turns, list) and all(isinstance(m, Mapping) for m in turns):
            from trl.data_utils import maybe_convert_to_chatml
            row = maybe_convert_to_chatml({"conversations": [dict(m) for m in turns]})
        elif "conversations" in row:
            row = {"messages": turns}
        messages = data.check_messages(row["messages"], where, "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: \"messages\" must end with an assistant message after a prompt")
        return {"prompt": _prompt(messages[:-1], where), "chosen": messages[-1]["content"]}
    if fmt == "language modeling (text)":
        return {"prompt": "", "chosen": data.response_text(row["text"], where, "text")}
    if fmt == "prompt-only":
        return {"prompt": _prompt(row["prompt"], where)}
    if fmt == "prompt-completion":
        return {"prompt": _prompt(row["prompt"], where), "chosen": data.response_text(row["completion"], where,
                                                                                       "completion")}
    if fmt == "implicit preference" or _full_conversation(row["chosen"]):
        from trl.data_utils import maybe_extract_prompt  # prompt-less, or a prompt column beside full conversations
        for key in ("chosen", "rejected"):
            if not (isinstance(row[key], str) and row[key].strip()) and not isinstance(row[key], list):
                raise UserError(f"{where}: \"{key}\" must be a non-empty string or a list of messages")
        row = maybe_extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
        if not row["prompt"]:
            raise UserError(f"{where}: \"chosen\" and \"rejected\" share no prompt (an implicit-prompt pair must "
                            "start with the same prompt)")
    return data.checked_record(row, where)


def read(rows, source: str):
    """(records, format name) of TRL rows (a list of dicts, a `datasets.Dataset`); the first row names the format."""
    rows = _rows(rows, source)
    fmt = detect(rows[0], f"{source}[0]")
    records = []
    for i, row in enumerate(rows):
        where = f"{source}[{i}]"
        if detect(row, where) != fmt:
            raise UserError(f"{where}: a {detect(row, where)} row among {fmt} rows; give rows of one format")
        records.append(checked_record(row, fmt, where))
    return records, fmt


def _rows(rows, source: str) -> list:
    if isinstance(rows, (str, bytes, Mapping)) or not hasattr(rows, "__iter__"):
        raise UserError(f"{source}: expected a JSONL path or rows of TRL data, got {type(rows).__name__}")
    rows = [dict(r) if isinstance(r, Mapping) else r for r in rows]
    if not rows:
        raise UserError(f"{source}: no examples")
    return rows


def _jsonl_rows(path) -> list:
    import json
    from pathlib import Path
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected JSONL rows in a TRL data format)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({type(exc).__name__})") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not rows:
        raise UserError(f"{path}: no examples (the file is empty)")
    return rows


def load(data, source: str):
    """(rows as given, probe records, format name) of a JSONL path or in-memory TRL rows."""
    from pathlib import Path
    rows = _jsonl_rows(data) if isinstance(data, (str, Path)) else _rows(data, source)
    records, fmt = read(rows, str(data) if isinstance(data, (str, Path)) else source)
    return rows, records, fmt


def trained_records(dataset):
    """The records a trainer's train_dataset trains on, when its text columns are still there (else None)."""
    names = set(getattr(dataset, "column_names", None) or ())
    keys = [k for k in dict.fromkeys(k for ks in FORMATS.values() for k in ks) if k in names]
    if not keys:
        return None
    try:
        return read([{k: r[k] for k in keys} for r in dataset], "the trainer's train_dataset")[0]
    except UserError:
        return None


def skipped(records, fmt: str) -> dict:
    """{probe type: one-line reason} for every probe type the records cannot build."""
    fields = response_fields(records)
    lacking = {p.name: [n for n in p.needs if n not in fields] for p in probe_registry.PROBE_TYPES}
    return {name: f"needs {' and '.join(probe_registry.RESPONSES[n] for n in need)}, which {fmt} data lacks"
            for name, need in lacking.items() if need}


def anchor_unprompted(records, encoder) -> list:
    """Language-modeling text rows have no prompt: the trainer trains every token of the text but the first, so
    the first token (its text) becomes the prompt and the rest y+. A tokenizer that adds a BOS needs nothing."""
    out = []
    for r in records:
        if r["prompt"] != "" or encoder.prompt_ids(""):
            out.append(r)
            continue
        first = encoder.tokenizer.decode(encoder.prompt_ids(r["chosen"])[:1])
        if not first or not r["chosen"].startswith(first) or first == r["chosen"]:
            raise UserError(f"ProbeMonitor: the text {r['chosen'][:40]!r} has no first token to condition the rest "
                            "on; give texts of two tokens or more")
        out.append(dict(r, prompt=first, chosen=r["chosen"][len(first):]))
    return out
