"""Preference data for `validate/`: the default offline dataset, TRL JSONL I/O, and chat encoding.

Default dataset
---------------
Built deterministically from the English YAML files of `chatterbot-corpus`
1.3.3 (PyPI, BSD 3-Clause licence, (c) Gunther Cox and contributors), which a pip install
ships; nothing is downloaded and no answer is typed by hand.

- Pairs: in every conversation each utterance is the prompt of the next one
  (the corpus's own convention: a two-line conversation is one prompt and its
  response; longer ones give their consecutive pairs).
- Cleaning: non-string entries and conversations are skipped, whitespace is
  collapsed, empty responses and responses over `MAX_RESPONSE_CHARS`
  characters are dropped, and (prompt, response) pairs are deduplicated
  case-insensitively (tech_support.yml repeats ten pairs ~100 times).
- chosen = the corpus's response; rejected = the real response to another
  prompt of the same category file (trivia: another trivia answer, a wrong
  answer of the same type), drawn with a seeded RNG from the training
  responses of that file and never equal to any real response of the prompt.
- Splits, by unique prompt (case-insensitive): a seeded shuffle puts `n_test`
  prompts in `test`; every other prompt is in `train` with all its real
  responses (a prompt the corpus answers several ways gives several pairs).
  `probe` holds `n_probe` prompts with one pair each. As in the paper
  (its D_prob is 500 prompts of the training set), the probe prompts are by
  default training prompts (`probe_from="train"`), so "chosen"/"rejected" are
  probes of trained-on responses; `probe_from="heldout"` removes them from
  `train` instead. `test` never shares a prompt with `train` or `probe`.

JSONL (TRL preference format)
-----------------------------
`load_preference_jsonl` reads one object per line with "prompt", "chosen",
"rejected", either plain strings or TRL's conversational form (prompt = list
of {"role", "content"} messages ending with a user turn; chosen/rejected = a
list with one assistant message). Records are returned as
{"prompt": str | list[message], "chosen": str, "rejected": str}: a chat prompt
is kept as its message list (validate.training.encode.encode_example takes either), the responses are
always the assistant's text. "source" is kept when it is a string.
"""
import importlib.util
import json
import random
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_text
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.data.data_file import EXPECTED, read_once
# yaml loads inside the functions that need them, so importing this module stays light (ldyn --help)

CORPUS_PACKAGE = "chatterbot_corpus"
CORPUS_VERSION = "1.3.3"
GET_CORPUS = "pip install chatterbot-corpus==1.3.3"
MAX_RESPONSE_CHARS = 400
N_PROBE = 200
N_TEST = 64
HELD_FRACTION = 0.4   # prompts held apart: their answers are the rejected and irrelevant pools

LICENCE = ("chatterbot-corpus (user-contributed dialog data by Gunther Cox and contributors) is released under "
           "the BSD 3-Clause licence (PyPI classifier: License :: OSI Approved :: BSD License); redistribution of "
           "derived data must keep its copyright notice and licence conditions.")

PROVENANCE = (
    "Source: chatterbot-corpus " + CORPUS_VERSION + " (PyPI package `chatterbot-corpus`, "
    "https://github.com/gunthercox/chatterbot-corpus), all English YAML files, installed with pip and read offline. "
    "Licence: BSD 3-Clause, Copyright (c) Gunther Cox. "
    "Pairs: in each conversation every utterance is the prompt of the next (the corpus's own convention); "
    "whitespace collapsed, empty responses and responses over " + str(MAX_RESPONSE_CHARS) + " characters dropped, "
    "duplicate (prompt, response) pairs removed case-insensitively. "
    "chosen = the corpus's real response; rejected = the real response to a held-apart prompt (never trained on) "
    "of the same category file when there is one (for trivia, another trivia answer: a wrong answer of the same "
    "type), drawn with a seeded RNG and never equal to any training or test answer; each probe pair's rejected "
    "answer is its own. Irrelevant sentences come from other held-apart prompts. "
    "Splits by unique prompt with a seeded shuffle: a held-out test split, the held-apart prompts, a training "
    "split, and a probe set of training prompts (as in Ren & Sutherland's D_prob) with one pair each, whose "
    "chosen answer no other prompt shares."
)


# --------------------------------------------------------------------------- the corpus

def corpus_dir() -> Path:
    """The folder of chatterbot-corpus's English YAML files (found without importing the package)."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"chatterbot-corpus is not installed; run: {GET_CORPUS}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    if not path.is_dir() or not any(path.glob("*.yml")):
        raise UserError(f"{path} holds no corpus files; reinstall with: {GET_CORPUS}")
    return path


def _clean(text) -> str:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        return ""
    text = str(text)
    if "```" in text or "\n    " in text:      # code: keep its layout, trim the ends
        return text.strip()
    return " ".join(text.split())


def text_key(text: str) -> str:
    return " ".join(text.casefold().split())


def corpus_pairs(max_response_chars: int = MAX_RESPONSE_CHARS) -> list:
    """Every cleaned, deduplicated (prompt, response) pair: dicts prompt, response, source (file order)."""
    import yaml

    pairs, seen = [], set()
    for path in sorted(corpus_dir().glob("*.yml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: cannot read the corpus file ({type(exc).__name__}); reinstall with: {GET_CORPUS}")
        source = f"chatterbot-corpus/{path.name}"
        for conversation in doc.get("conversations") or []:
            if not isinstance(conversation, list):
                continue
            turns = [_clean(t) for t in conversation]
            for prompt, response in zip(turns, turns[1:]):
                if not prompt or not response or len(response) > max_response_chars:
                    continue
                key = (text_key(prompt), text_key(response))
                if key in seen:
                    continue
                seen.add(key)
                pairs.append({"prompt": prompt, "response": response, "source": source})
    if not pairs:
        raise UserError(f"{corpus_dir()}: no prompt/response pairs found; reinstall with: {GET_CORPUS}")
    return pairs


# --------------------------------------------------------------------------- the default dataset

def _pick_rejected(rng, pool, forbidden):
    """A pool response whose key is not forbidden (pool: list of (key, text))."""
    for _ in range(64):
        key, text = pool[rng.randrange(len(pool))]
        if key not in forbidden:
            return text
    allowed = [text for key, text in pool if key not in forbidden]
    return allowed[rng.randrange(len(allowed))] if allowed else None


def _kind(text: str) -> str:
    """A coarse answer type, so that a rejected trivia answer is of the chosen's type (a year for a year)."""
    return "number" if re.fullmatch(r"[\d.,]+", text.strip(" .")) else "text"


def default_dataset(seed: int = 0, n_probe: int = N_PROBE, n_test: int = N_TEST, probe_from: str = "train",
                    held_fraction: float = HELD_FRACTION) -> dict:
    """The offline preference dataset: dict(train, probe, test, irrelevant, provenance, counts).

    train/probe/test: lists of {"prompt", "chosen", "rejected", "source"}; the
    same seed gives the same data. probe_from: "train" (probe prompts are
    training prompts, the paper's D_prob) or "heldout" (removed from train).

    Clean design: a `held_fraction` of the prompts is held apart and never
    trained on; their answers are the only source of rejected answers (three
    quarters) and of irrelevant sentences (the rest), and any of them that
    equals a training or test answer is dropped. So no rejected answer is ever
    a chosen answer, no irrelevant sentence is a training target, and each
    probe pair gets a rejected answer of its own that no other pair uses; a
    probe prompt's y+ is a text that no other training pair has as a target.
    `irrelevant` is the pool of fluent sentences for the irrelevant probe.
    """
    if probe_from not in ("train", "heldout"):
        raise UserError(f"probe_from must be 'train' or 'heldout', not {probe_from!r}")
    pairs = corpus_pairs()
    by_prompt = {}                                   # prompt key -> list of pairs, corpus order
    for pair in pairs:
        by_prompt.setdefault(text_key(pair["prompt"]), []).append(pair)
    prompts = list(by_prompt)
    n_held = int(round(held_fraction * len(prompts)))
    if n_probe < 1 or n_test < 1 or n_probe + n_test + n_held >= len(prompts):
        raise UserError(f"n_probe={n_probe} and n_test={n_test} must be positive and leave training prompts "
                        f"(the corpus has {len(prompts)} unique prompts, {n_held} of them held apart)")
    rng = random.Random(f"ldyn-default-dataset-{seed}")
    rng.shuffle(prompts)
    test_keys, held_keys, rest = prompts[:n_test], prompts[n_test:n_test + n_held], prompts[n_test + n_held:]
    n_rejected = (3 * n_held) // 4                   # a probe pair needs a rejected answer of its own
    rejected_keys, irrelevant_keys = held_keys[:n_rejected], held_keys[n_rejected:]

    answers = Counter(text_key(p["response"]) for k in rest + test_keys for p in by_prompt[k])
    probe_keys = _probe_keys(by_prompt, rest, answers, n_probe)
    probe_set = set(probe_keys)
    train_keys = rest if probe_from == "train" else [k for k in rest if k not in probe_set]

    rejected_answers = _held_answers(by_prompt, rejected_keys, answers)
    if len(rejected_answers) <= n_probe:
        raise UserError(f"n_probe={n_probe} needs more than the {len(rejected_answers)} held-apart rejected answers")
    probe, train, test = _with_rejected(by_prompt, (probe_keys, train_keys, test_keys), rejected_answers, rng)
    rejected_texts = {text_key(p["response"]) for p in rejected_answers}
    irrelevant = [{"text": p["response"], "source": p["source"]}
                  for p in _held_answers(by_prompt, irrelevant_keys, answers)
                  if is_fluent(p["response"]) and text_key(p["response"]) not in rejected_texts]
    counts = {"corpus_pairs": len(pairs), "unique_prompts": len(prompts), "train": len(train),
              "train_prompts": len(train_keys), "probe": len(probe), "test": len(test),
              "held_apart_prompts": n_held, "rejected_pool": len(rejected_answers), "irrelevant_pool": len(irrelevant)}
    provenance = _provenance(seed, counts, n_held, probe_from)
    return {"train": train, "probe": probe, "test": test, "irrelevant": irrelevant, "provenance": provenance,
            "counts": counts}


def _probe_keys(by_prompt: dict, rest: list, answers: Counter, n_probe: int) -> list:
    """Probe prompts: a single real answer that no other prompt shares, so y+ is a target of its own pair only."""
    unique = [k for k in rest if len(by_prompt[k]) == 1 and answers[text_key(by_prompt[k][0]["response"])] == 1]
    if len(unique) < n_probe:
        raise UserError(f"n_probe={n_probe} is more than the {len(unique)} prompts with an answer of their own")
    return unique[:n_probe]


def _with_rejected(by_prompt: dict, keys: tuple, rejected_answers: list, rng) -> tuple:
    """(probe, train, test) pairs from the (probe, train, test) prompt keys: each probe pair takes a rejected
    answer of its own first, then the training pairs (a probe prompt's pair is reused) and the test pairs draw
    from the rest."""
    probe_keys, train_keys, test_keys = keys
    pick = _rejected_picker(rejected_answers)
    reserved = set()
    probe = [_example(by_prompt[k][0], pick(by_prompt[k][0], rng, reserved, take=True)) for k in probe_keys]
    probe_by_key = dict(zip(probe_keys, probe))
    train = []
    for k in train_keys:                             # shuffled order, deterministic
        for pair in by_prompt[k]:
            train.append(probe_by_key[k] if k in probe_by_key else _example(pair, pick(pair, rng, reserved, False)))
    test = [_example(by_prompt[k][0], pick(by_prompt[k][0], rng, reserved, False)) for k in test_keys]
    return probe, train, test


def _held_answers(by_prompt: dict, keys, answers: Counter) -> list:
    """The held-apart prompts' answers, each once, that are no training or test answer."""
    seen, out = set(), []
    for k in keys:
        for p in by_prompt[k]:
            key = text_key(p["response"])
            if key not in answers and key not in seen:
                seen.add(key)
                out.append(p)
    return out


def _rejected_picker(rejected_answers: list):
    """pick(pair, rng, reserved, take): a rejected answer for the pair from the held-apart answers, of the pair's
    category file and kind where one is left, else of its category file, else any."""
    pools = {}                                     # (category file, kind) -> held-apart answers
    for p in rejected_answers:
        pools.setdefault((p["source"], _kind(p["response"])), []).append((text_key(p["response"]), p["response"]))
    by_source, global_pool = {}, []
    for (source, _), pool in sorted(pools.items()):
        by_source.setdefault(source, []).extend(pool)
        global_pool.extend(pool)
    global_pool.sort()

    def pick(pair, pick_rng, reserved, take):
        """A rejected answer for the pair; take=True removes it (a probe pair's own), else avoid `reserved`."""
        for pool in (pools.get((pair["source"], _kind(pair["response"]))), by_source.get(pair["source"]),
                     global_pool):
            allowed = [item for item in pool or () if item[0] not in reserved]
            if allowed:
                key, text = allowed[pick_rng.randrange(len(allowed))]
                if take:
                    reserved.add(key)
                return text
        raise UserError("the held-apart rejected answers ran out; lower n_probe")

    return pick


def _example(pair, rejected):
    return {"prompt": pair["prompt"], "chosen": pair["response"], "rejected": rejected, "source": pair["source"]}


def _provenance(seed: int, counts: dict, n_held: int, probe_from: str) -> str:
    return (PROVENANCE + f" Counts (seed {seed}): {counts['corpus_pairs']} pairs over "
            f"{counts['unique_prompts']} unique prompts; {n_held} prompts held apart (never trained on) give "
            f"{counts['rejected_pool']} rejected answers and {counts['irrelevant_pool']} irrelevant sentences; "
            f"train {counts['train']} pairs ({counts['train_prompts']} prompts), probe {counts['probe']} prompts "
            f"({'training prompts' if probe_from == 'train' else 'held out of training'}), "
            f"test {counts['test']} prompts.")


_FLUENT = re.compile(r"[A-Z][^\n`{}<>|#=_*\\]*[.!?]")


def is_fluent(text: str, min_words: int = 5, max_words: int = 40) -> bool:
    """One line starting with a capital and ending with . ! or ?, min..max words, no code characters."""
    return bool(_FLUENT.fullmatch(text)) and min_words <= len(text.split()) <= max_words


# --------------------------------------------------------------------------- JSONL

ROLES = ("system", "user", "assistant")


def check_messages(value, where, name):
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: \"{name}\" must be a non-empty string or a non-empty list of messages")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise UserError(f"{where}: \"{name}\"[{i}] must be an object with string \"role\" and \"content\"")
        if msg["role"] not in ROLES:
            raise UserError(f"{where}: \"{name}\"[{i}] has role {msg['role']!r}; expected one of {', '.join(ROLES)}")
        if not msg["content"].strip():
            raise UserError(f"{where}: \"{name}\"[{i}] has empty content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def response_text(value, where, name):
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: \"{name}\" is an empty string")
        return value
    messages = check_messages(value, where, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise UserError(f"{where}: \"{name}\" must be a string or a list with exactly one assistant message")
    return messages[0]["content"]


def checked_record(obj, where):
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with \"prompt\", \"chosen\", \"rejected\", got {type(obj).__name__}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
    if missing:
        raise UserError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: \"prompt\" is an empty string")
    else:
        prompt = check_messages(prompt, where, "prompt")
        if prompt[-1]["role"] != "user":
            raise UserError(f"{where}: \"prompt\" must end with a user message")
    record = {"prompt": prompt, "chosen": response_text(obj["chosen"], where, "chosen"),
              "rejected": response_text(obj["rejected"], where, "rejected")}
    if isinstance(obj.get("source"), str):
        record["source"] = obj["source"]
    _check_encodable(record, where)
    return record


def _check_encodable(record: dict, where: str) -> None:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer or file can take."""
    for key, value in record.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(f"{where}: \"{key}\" holds a lone surrogate ({exc.object[exc.start]!a}), which is not "
                            "text; write the character itself or its full surrogate pair") from None


def load_preference_jsonl(path) -> list:
    """Read a TRL preference JSONL file; any malformed line raises UserError naming the file and line.

    The bytes come from validate.data.data_file.read_once (a pipe or FIFO works, read once); a UTF-8 byte order mark
    is skipped, and lines end only at "\\n" (a raw U+2028 or U+0085 is text inside a JSON string).
    """
    try:
        text = read_once(path).raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: invalid JSON ({exc.msg}: column {exc.colno})") from None
        records.append(checked_record(obj, where))
    if not records:
        raise UserError(f"{path}: no examples (the file is empty; {EXPECTED})")
    return records


def preference_records(rows, source: str = "probe data") -> list:
    """In-memory TRL preference rows (a list of dicts, a `datasets.Dataset`) checked like a JSONL file's lines."""
    if isinstance(rows, (str, bytes, Mapping)) or not hasattr(rows, "__iter__"):
        raise UserError(f"{source}: expected a JSONL path or rows with \"prompt\", \"chosen\", \"rejected\", "
                        f"got {type(rows).__name__}")
    records = [checked_record(obj, f"{source}[{i}]") for i, obj in enumerate(rows)]
    if not records:
        raise UserError(f"{source}: no examples")
    return records


def write_jsonl(examples, path) -> None:
    """Write one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))
