"""validate.data.data and validate.data.probe_texts: the default dataset, TRL JSONL I/O, chat encoding, text probes."""
import json
import random

import pytest

from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory.predictions import PROBES
from learning_dynamics.validate.data import data, probe_texts
from learning_dynamics.validate.training import encode

pytest.importorskip("chatterbot_corpus")


def _norm(text):
    return " ".join(text.casefold().split())


@pytest.fixture(scope="session")
def dataset():
    return data.default_dataset(seed=0)


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's real tokenizer and ChatML template (the tiny test model carries it; built once per session)."""
    from transformers import AutoTokenizer

    from learning_dynamics.validate.training.model import tiny_random_llama
    return AutoTokenizer.from_pretrained(str(tiny_random_llama()))


# --------------------------------------------------------------------------- default dataset

def test_dataset_is_deterministic_and_seeded(dataset):
    again = data.default_dataset(seed=0)
    assert again == dataset
    other = data.default_dataset(seed=1)
    assert [e["prompt"] for e in other["probe"]] != [e["prompt"] for e in dataset["probe"]]


def test_dataset_sizes_and_provenance(dataset):
    assert len(dataset["train"]) >= 600
    assert len(dataset["probe"]) >= 200
    assert 20 <= len(dataset["test"]) <= 200
    assert dataset["counts"]["train"] == len(dataset["train"])
    text = dataset["provenance"]
    for needle in ("chatterbot-corpus", "1.3.3", "BSD", str(len(dataset["train"]))):
        assert needle in text
    assert "\n" not in text


def test_examples_are_well_formed(dataset):
    for split in ("train", "probe", "test"):
        for ex in dataset[split]:
            assert set(ex) == {"prompt", "chosen", "rejected", "source"}
            assert all(isinstance(ex[k], str) and ex[k].strip() for k in ex)
            assert ex["source"].startswith("chatterbot-corpus/") and ex["source"].endswith(".yml")
            assert _norm(ex["chosen"]) != _norm(ex["rejected"])
            assert len(ex["chosen"]) <= data.MAX_RESPONSE_CHARS


def test_splits_are_disjoint_by_prompt(dataset):
    train = {_norm(e["prompt"]) for e in dataset["train"]}
    probe = [_norm(e["prompt"]) for e in dataset["probe"]]
    test = [_norm(e["prompt"]) for e in dataset["test"]]
    assert len(set(probe)) == len(probe) and len(set(test)) == len(test)      # deduplicated
    assert not set(test) & train and not set(test) & set(probe)
    assert set(probe) <= train                  # the paper's D_prob: probes are training prompts
    heldout = data.default_dataset(seed=0, probe_from="heldout")
    assert not {_norm(e["prompt"]) for e in heldout["probe"]} & {_norm(e["prompt"]) for e in heldout["train"]}


def test_rejected_is_never_a_real_answer_of_the_prompt(dataset):
    real = {}
    for pair in data.corpus_pairs():
        real.setdefault(_norm(pair["prompt"]), set()).add(_norm(pair["response"]))
    for split in ("train", "probe", "test"):
        for ex in dataset[split]:
            assert _norm(ex["rejected"]) not in real[_norm(ex["prompt"])]


def test_trivia_rejected_is_another_trivia_answer(dataset):
    trivia_answers = {_norm(p["response"]) for p in data.corpus_pairs() if p["source"].endswith("/trivia.yml")}
    trivia = [e for e in dataset["train"] if e["source"].endswith("/trivia.yml")]
    assert len(trivia) > 100
    for ex in trivia:
        assert _norm(ex["rejected"]) in trivia_answers and _norm(ex["rejected"]) != _norm(ex["chosen"])


def test_clean_design_rejected_and_irrelevant_are_never_training_targets(dataset):
    chosen = {_norm(e["chosen"]) for split in ("train", "test") for e in dataset[split]}
    targets = chosen | {_norm(e["rejected"]) for e in dataset["train"]}
    assert not {_norm(e["rejected"]) for split in ("train", "probe", "test") for e in dataset[split]} & chosen
    assert dataset["irrelevant"] and not {_norm(p["text"]) for p in dataset["irrelevant"]} & targets
    # every probe pair's y- is its own: no other training pair trains on it
    probe_rejected = [_norm(e["rejected"]) for e in dataset["probe"]]
    assert len(set(probe_rejected)) == len(probe_rejected)
    others = [e for e in dataset["train"] if e not in dataset["probe"]]
    assert not set(probe_rejected) & {_norm(e["rejected"]) for e in others}
    # and its y+ is no other pair's target
    counts = {}
    for e in dataset["train"]:
        for k in ("chosen", "rejected"):
            counts[_norm(e[k])] = counts.get(_norm(e[k]), 0) + 1
    assert all(counts[_norm(e["chosen"])] == 1 for e in dataset["probe"])


# --------------------------------------------------------------------------- JSONL

def test_jsonl_round_trip_plain(tmp_path, dataset):
    path = tmp_path / "sub" / "plain.jsonl"
    data.write_jsonl(dataset["probe"][:20], path)
    assert [p.name for p in path.parent.iterdir()] == ["plain.jsonl"]      # no temporary file left
    assert data.load_preference_jsonl(path) == dataset["probe"][:20]


def test_jsonl_round_trip_chat(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
             "chosen": [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "assistant", "content": "Lyon."}]},
            {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}]
    path = tmp_path / "chat.jsonl"
    data.write_jsonl(rows, path)
    got = data.load_preference_jsonl(path)
    assert got[0] == {"prompt": rows[0]["prompt"], "chosen": "Paris.", "rejected": "Lyon."}
    assert got[1] == {"prompt": rows[1]["prompt"], "chosen": "4", "rejected": "5"}


GOOD = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
BAD_LINES = {
    "bad json": "{\"prompt\": \"p\", \"chosen\": ",
    "missing key": json.dumps({"prompt": "p", "chosen": "a"}),
    "empty string": json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}),
    "wrong type": json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}),
    "not an object": json.dumps(["p", "a", "b"]),
    "bad message": json.dumps({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}),
    "two assistant messages": json.dumps({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}] * 2,
                                          "rejected": "b"}),
    "prompt ends with assistant": json.dumps({"prompt": [{"role": "assistant", "content": "x"}],
                                              "chosen": "a", "rejected": "b"}),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_line_is_a_one_line_user_error_naming_the_line(tmp_path, case):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n\n" + BAD_LINES[case] + "\n" + GOOD + "\n")
    with pytest.raises(UserError) as info:
        data.load_preference_jsonl(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}:3:" in message


def test_missing_and_empty_files(tmp_path):
    for path, content in ((tmp_path / "none.jsonl", None), (tmp_path / "empty.jsonl", "\n  \n")):
        if content is not None:
            path.write_text(content)
        with pytest.raises(UserError) as info:
            data.load_preference_jsonl(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- encoding

def test_encode_example_masks_exactly_the_response(tokenizer):
    response = "The capital of France is Paris."
    ids, mask = encode.encode_example(tokenizer, "What is the capital of France?", response, max_length=256)
    assert len(ids) == len(mask) and mask[-1] and not mask[0]
    start = mask.index(True)
    assert all(mask[start:]) and not any(mask[:start])             # one contiguous response block at the end
    prompt_text = tokenizer.decode(ids[:start])
    assert "<|im_start|>user\nWhat is the capital of France?" in prompt_text
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[start:]) == response + "<|im_end|>"
    assert tokenizer.decode(ids[start:], skip_special_tokens=True) == response


def test_encode_example_takes_chat_messages_and_truncates_the_response(tokenizer):
    messages = [{"role": "user", "content": "Say something long."}]
    full, full_mask = encode.encode_example(tokenizer, messages, "word " * 50, max_length=512)
    n_prompt = full_mask.index(True)
    ids, mask = encode.encode_example(tokenizer, messages, "word " * 50, max_length=n_prompt + 5)
    assert len(ids) == n_prompt + 5 and sum(mask) == 5 and ids == full[:n_prompt + 5]
    with pytest.raises(UserError):
        encode.encode_example(tokenizer, messages, "x", max_length=n_prompt)


def test_encode_without_chat_template_falls_back_to_plain_text(tokenizer):
    class Plain:
        chat_template = None
        eos_token, eos_token_id, pad_token_id = tokenizer.eos_token, tokenizer.eos_token_id, None

        def __call__(self, text, add_special_tokens=True):
            return tokenizer(text, add_special_tokens=False)

    ids, mask = encode.encode_example(Plain(), "Hi", "Hello there.", max_length=64)
    start = mask.index(True)
    assert tokenizer.decode(ids[:start]) == "Hi\n"
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[start:-1]) == "Hello there."


def test_batch_encode_pads_right(tokenizer):
    torch = pytest.importorskip("torch")
    pairs = [("Hi", "Hello."), ("What is the capital of France?", "Paris is the capital of France.")]
    batch = encode.batch_encode(tokenizer, pairs, max_length=128)
    assert batch["input_ids"].dtype == torch.int64 and batch["attention_mask"].dtype == torch.int64
    assert batch["response_mask"].dtype == torch.bool
    for row, (prompt, response) in enumerate(pairs):
        ids, mask = encode.encode_example(tokenizer, prompt, response, 128)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["response_mask"][row, :n].tolist() == mask
        assert batch["attention_mask"][row].sum().item() == n
        assert not batch["response_mask"][row, n:].any()


# --------------------------------------------------------------------------- probe texts

@pytest.fixture(scope="session")
def probe_rows(dataset):
    pool = probe_texts.irrelevant_pool()
    return probe_texts.build_probe_texts(dataset["probe"], dataset["train"], dataset["test"], pool, seed=0)


def test_probe_texts_cover_the_text_probes(dataset, probe_rows):
    assert set(probe_texts.TEXT_PROBES) | set(probe_texts.MODEL_PROBES) == set(PROBES)
    assert not set(probe_texts.TEXT_PROBES) & set(probe_texts.MODEL_PROBES)
    assert len(probe_rows) == len(dataset["probe"])
    for row, ex in zip(probe_rows, dataset["probe"]):
        assert row["prompt"] == ex["prompt"] and row["chosen"] == ex["chosen"] and row["rejected"] == ex["rejected"]
        for probe in probe_texts.TEXT_PROBES:
            assert isinstance(row[probe], str) and row[probe].strip(), probe


def test_probe_texts_are_deterministic(dataset, probe_rows):
    again = probe_texts.build_probe_texts(dataset["probe"], dataset["train"], dataset["test"],
                                          probe_texts.irrelevant_pool(), seed=0)
    assert again == probe_rows


def test_probe_text_constructions(dataset, probe_rows):
    train_prompts = {_norm(e["prompt"]): e for e in dataset["train"]}
    test_chosen = {e["chosen"] for e in dataset["test"]}
    for row in probe_rows:
        words = row["chosen"].split()
        if len(set(words)) > 1:
            assert sorted(row["chosen_shuffled"].split()) == sorted(words)
            assert row["chosen_shuffled"].split() != words
        else:  # one word: its letters shuffled, never y+ itself
            assert sorted(row["chosen_shuffled"]) == sorted(row["chosen"].strip())
            assert row["chosen_shuffled"] != row["chosen"].strip() or len(set(row["chosen"].strip())) < 2
        for probe, base in (("chosen_format", "chosen"), ("rejected_format", "rejected")):
            assert len(row[probe].split()) == len(row[base].split())
            assert row[probe] != row[base]
        other = row["meta"]["other_prompt"]
        assert _norm(other) != _norm(row["prompt"]) and _norm(other) in train_prompts
        assert row["other_chosen"] != row["chosen"]
        assert row["test_response"] in test_chosen
        assert row["meta"]["irrelevant_source"] != row["source"]


def test_format_probe_keeps_function_words_and_punctuation():
    rng = random.Random(0)
    text = "I think the answer is 1963, but I'm not sure."
    out = probe_texts.format_probe(text, ["apple", "river", "engine"], rng)
    for kept in ("I ", " the ", " is ", ", but I'm not ", "."):
        assert kept in out
    assert "think" not in out and "1963" not in out and len(out.split()) == len(text.split())


def test_random_token_ids_and_rephrase_instruction():
    ids = probe_texts.random_token_ids(50, 200, random.Random(0), exclude=range(0, 10))
    assert len(ids) == 200 and all(10 <= i < 50 for i in ids)
    np = pytest.importorskip("numpy")
    assert probe_texts.random_token_ids(50, 30, np.random.default_rng(0), exclude=[0]) == \
        probe_texts.random_token_ids(50, 30, np.random.default_rng(0), exclude=[0])
    assert "{text}" in probe_texts.REPHRASE_INSTRUCTION
    assert probe_texts.REPHRASE_INSTRUCTION.format(text="Hello.").endswith("Hello.")


def test_probe_texts_accept_chat_prompts_and_tiny_user_data():
    chat = [{"role": "user", "content": "Capital of France?"}]
    train = [{"prompt": chat, "chosen": "Paris is the capital.", "rejected": "Lyon is the capital."},
             {"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    test = [{"prompt": "Colour of the sky?", "chosen": "Blue.", "rejected": "Green."}]
    rows = probe_texts.build_probe_texts(train[:1], train, test, ["A fluent sentence about nothing."], seed=3)
    assert rows[0]["prompt"] == chat and rows[0]["other_chosen"] == "4" and rows[0]["test_response"] == "Blue."
    assert rows[0]["chosen_format"] != rows[0]["chosen"]
