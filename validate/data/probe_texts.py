"""Text-level probe responses for every probe prompt: no model needed, deterministic for a seed.

`build_probe_texts` gives, per probe prompt, the probes of theory.predictions.PROBES
that are plain text (TEXT_PROBES):
    chosen, rejected       y+ and y- of the probe example
    chosen_format          y+'s format, a different meaning: its function words,
                           punctuation, capitalisation and word count kept, every
                           content word replaced by a content word of other responses
    rejected_format        the same for y-
    other_chosen           another training prompt's y+ (y_{j != i})
    test_response          a held-out (test) prompt's y+
    irrelevant             a fluent sentence from another category file of the corpus,
                           of about y+'s length
    chosen_shuffled        y+'s words in a different order (guaranteed whenever
                           y+ has more than one distinct word; one word: its letters)
The probes that need the model (MODEL_PROBES: rephrases, random tokens, an
initial-model sample, y*) are built elsewhere; REPHRASE_INSTRUCTION and
random_token_ids are the fixed ingredients for two of them.

Each row is a dict: "prompt", "source", one key per text probe, and "meta"
(where other_chosen / test_response / irrelevant came from).
"""
import random
import re

from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.validate.data.data import corpus_pairs, is_fluent, text_key

TEXT_PROBES = probe_registry.TEXT                                              # built here
RESPONSES = tuple(probe_registry.RESPONSES)                                    # what a data row may hold
IRRELEVANT_WORDS = 12   # the irrelevant sentence's length in words when there is no y+ to match
MODEL_PROBES = tuple(p for p in probe_registry.NAMES if p not in TEXT_PROBES)  # validate.data.probes, or y* at scoring

REPHRASE_INSTRUCTION = ("Rephrase the following text with different words but exactly the same meaning. "
                        "Reply with the rephrased text only.\n\nText: {text}")

# Function words kept by the format probes (closed-class English words).
STOPWORDS = frozenset("""
a an the and or but nor so yet for of to in on at by from with without about into onto over under up down out off
as than then that this these those there here where when while what which who whom whose why how if whether because
since until unless although though is am are was were be been being do does did done doing have has had having
will would shall should can could may might must not no yes i me my mine myself you your yours yourself he him his
himself she her hers herself it its itself we us our ours ourselves they them their theirs themselves
all any both each few more most other some such only own same too very just also again ever never always
s t don't i'm it's you're i've i'd i'll that's what's there's isn't aren't wasn't weren't can't won't
didn't doesn't haven't hasn't hadn't wouldn't couldn't shouldn't let's
""".split())

_TOKEN = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*|\d+")


def _is_content(word: str) -> bool:
    return word.isdigit() or word.lower().replace("\u2019", "'") not in STOPWORDS


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new.lower()


def content_word_pool(texts) -> list:
    """Sorted distinct lower-case content words (alphabetic, 3+ letters) of the texts."""
    words = set()
    for text in texts:
        for w in _TOKEN.findall(text):
            if w.isalpha() and len(w) >= 3 and _is_content(w):
                words.add(w.lower())
    return sorted(words)


def format_probe(text: str, pool, rng) -> str:
    """The same format with a different meaning: each content word replaced, all else kept.

    Numbers become other numbers of the same digit count; words become words of
    `pool` not in `text`. Separators (spaces, punctuation) are untouched, so the
    word count is the same. If `text` has no content word, its last word is replaced.
    """
    own = {w.lower() for w in _TOKEN.findall(text)}
    candidates = [w for w in pool if w not in own] or list(pool) or ["thing"]
    matches = list(_TOKEN.finditer(text))
    targets = [m for m in matches if _is_content(m.group())] or matches[-1:]
    target_spans = {m.span() for m in targets}
    out, last = [], 0
    for m in matches:
        out.append(text[last:m.start()])
        word = m.group()
        if m.span() in target_spans:
            if word.isdigit():
                new = word
                while new == word:
                    new = str(rng.randrange(10 ** (len(word) - 1) if len(word) > 1 else 0, 10 ** len(word)))
            else:
                new = _match_case(candidates[rng.randrange(len(candidates))], word)
            word = new
        out.append(word)
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def _permuted(items, rng):
    """A different order of `items` (which has 2+ distinct elements)."""
    for _ in range(32):
        order = list(items)
        rng.shuffle(order)
        if order != list(items):
            return order
    return list(items[1:]) + list(items[:1])      # a rotation differs when 2+ distinct elements


def shuffled_words(text: str, rng) -> str:
    """The words of `text` (split on whitespace) in a different order when there are 2+ distinct words.

    A one-word text has its characters shuffled instead, so that the probe is never y+ itself
    (which would make it a training target).
    """
    words = text.split()
    if len(set(words)) >= 2:
        return " ".join(_permuted(words, rng))
    if len(set(text.strip())) >= 2:
        return "".join(_permuted(list(text.strip()), rng))
    return " ".join(words)


def random_token_ids(tokenizer_vocab_size: int, length: int, rng, exclude=()) -> list:
    """`length` token ids drawn uniformly from [0, vocab_size) minus `exclude` (e.g. special ids).

    rng: a random.Random or a numpy Generator.
    """
    exclude = {int(i) for i in exclude}
    if tokenizer_vocab_size - len({i for i in exclude if 0 <= i < tokenizer_vocab_size}) < 1:
        raise ValueError("no token id is left after the exclusions")
    draw = (lambda: int(rng.integers(tokenizer_vocab_size))) if hasattr(rng, "integers") \
        else (lambda: rng.randrange(tokenizer_vocab_size))
    ids = []
    while len(ids) < length:
        t = draw()
        if t not in exclude:
            ids.append(t)
    return ids


def irrelevant_pool(min_words: int = 5, max_words: int = 40, exclude=()) -> list:
    """Fluent sentences of the corpus: dicts text, source (chatterbot-corpus/<file>), deterministic order.

    A response qualifies when validate.data.data.is_fluent says so; `exclude` holds
    normalised texts to leave out (a user dataset's training targets).
    """

    seen, pool = set(exclude), []
    for pair in corpus_pairs():
        text = pair["response"]
        if not is_fluent(text, min_words, max_words) or text_key(text) in seen:
            continue
        seen.add(text_key(text))
        pool.append({"text": text, "source": pair["source"]})
    return pool


def normalized(text) -> str:
    """Comparison key of a response or a prompt (a string, or TRL chat messages)."""
    if not isinstance(text, str):
        text = "\n".join(f"{m['role']}: {m['content']}" for m in text)
    return " ".join(text.casefold().split())


def _choose_other(rng, examples, prompt_key, avoid):
    """An example with another prompt whose chosen is not in avoid (random start, then a scan).

    Tiny user datasets may have none: then another prompt with any response, then any example.
    """
    n = len(examples)
    start = rng.randrange(n)
    ordered = [examples[(start + step) % n] for step in range(n)]
    for ok in (lambda ex: normalized(ex["prompt"]) != prompt_key and normalized(ex["chosen"]) not in avoid,
               lambda ex: normalized(ex["prompt"]) != prompt_key,
               lambda ex: True):
        for ex in ordered:
            if ok(ex):
                return ex


def _untrained(make, targets, tries: int = 16) -> str:
    """make() again while it gives a training target (a short year can turn into another trivia answer)."""
    text = make()
    for _ in range(tries):
        if normalized(text) not in targets:
            break
        text = make()
    return text


def training_targets(train_examples) -> set:
    """Normalised texts of every response a training pair trains on (chosen and rejected, those it has)."""
    return {normalized(ex[k]) for ex in train_examples for k in RESPONSES if isinstance(ex.get(k), str)}


def response_fields(examples) -> tuple:
    """The responses every example holds: ("chosen", "rejected") for preference data, ("chosen",) for
    prompt/completion or language-modeling data, () for prompt-only data."""
    return tuple(k for k in RESPONSES if examples and all(isinstance(ex.get(k), str) for ex in examples))


def build_probe_texts(probe_examples, train_examples, test_examples, irrelevant_pool, seed: int = 0) -> list:
    """One dict per probe example: prompt, source, the TEXT_PROBES responses its data can build, and meta.

    irrelevant_pool: strings or dicts with "text" (and optional "source"); an
    irrelevant sentence comes from another source file than the probe's when it can.
    The irrelevant sentence and the test response avoid training targets when they
    can (validate.data.design measures what is left). A probe type that needs a response the
    data lacks (theory.probes' `needs`: y- in prompt/completion data) is left out.
    """
    if not probe_examples:
        raise ValueError("no probe examples")
    if not train_examples or not test_examples or not irrelevant_pool:
        raise ValueError("build_probe_texts needs training examples, test examples and an irrelevant pool")
    fields = response_fields(probe_examples)
    rng = random.Random(f"ldyn-probe-texts-{seed}")
    pool = [{"text": p, "source": ""} if isinstance(p, str) else {"text": p["text"], "source": p.get("source", "")}
            for p in irrelevant_pool]
    words = content_word_pool([ex[k] for k in fields for ex in train_examples if isinstance(ex.get(k), str)])
    targets = training_targets(train_examples)
    pool = [p for p in pool if normalized(p["text"]) not in targets] or pool
    has_chosen = [ex for ex in test_examples if isinstance(ex.get("chosen"), str)]
    untrained_tests = [ex for ex in has_chosen if normalized(ex["chosen"]) not in targets] or has_chosen
    others = [ex for ex in train_examples if isinstance(ex.get("chosen"), str)]
    return [_probe_row(ex, fields, others, untrained_tests, pool, words, targets, rng) for ex in probe_examples]


def _probe_row(ex, fields, others, tests, pool, words, targets, rng) -> dict:
    """The text probes of one probe example (rng draws in a fixed order: the same seed gives the same texts)."""
    key, chosen, rejected = normalized(ex["prompt"]), ex.get("chosen"), ex.get("rejected")
    avoid = {normalized(t) for t in (chosen, rejected) if t is not None}
    row, meta = {"prompt": ex["prompt"], "source": ex.get("source", "")}, {}
    if "chosen" in fields:
        other, test = _choose_other(rng, others, key, avoid), _choose_other(rng, tests, key, avoid)
        row.update(chosen=chosen, other_chosen=other["chosen"], test_response=test["chosen"])
        meta.update(other_prompt=other["prompt"], test_prompt=test["prompt"])
    if "rejected" in fields:
        row["rejected"] = rejected
    source = row["source"]
    n_words = len(chosen.split()) if chosen is not None else IRRELEVANT_WORDS
    candidates = [p for p in pool if normalized(p["text"]) not in avoid and (not source or p["source"] != source)] \
        or [p for p in pool if normalized(p["text"]) not in avoid] or pool
    sample = [candidates[rng.randrange(len(candidates))] for _ in range(min(12, len(candidates)))]
    irrelevant = min(sample, key=lambda p: abs(len(p["text"].split()) - n_words))
    row["irrelevant"] = irrelevant["text"]
    meta["irrelevant_source"] = irrelevant["source"]
    if "chosen" in fields:
        row["chosen_format"] = _untrained(lambda: format_probe(chosen, words, rng), targets)
    if "rejected" in fields:
        row["rejected_format"] = _untrained(lambda: format_probe(rejected, words, rng), targets)
    if "chosen" in fields:
        row["chosen_shuffled"] = shuffled_words(chosen, rng)
    row["meta"] = meta
    return row
