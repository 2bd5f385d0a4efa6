"""The data design of real-model runs: probe texts that are training targets, and the end-of-turn token."""
import pytest

from learning_dynamics.validate.data import data, design, probe_texts
from learning_dynamics.validate.training import encode

pytest.importorskip("chatterbot_corpus")


def _texts(rows):
    """build_probe_texts rows as the probe set's {"prompt", "texts"} that design.measure reads."""
    return [{"prompt": r["prompt"], "texts": {k: r[k] for k in probe_texts.TEXT_PROBES}} for r in rows]


def test_default_data_has_no_probe_text_that_is_a_training_target():
    dataset = data.default_dataset(seed=0)
    rows = probe_texts.build_probe_texts(dataset["probe"], dataset["train"], dataset["test"],
                                         dataset["irrelevant"], seed=0)
    measured = design.measure(_texts(rows), dataset["train"])
    assert measured["n_probe_prompts"] == 200
    assert {p: c["any"] for p, c in measured["overlap"].items() if c["any"]} == {"other_chosen": 200}
    assert design.overlapping(measured, probe_texts.TEXT_PROBES) == {}


def test_overlap_counts_on_a_crafted_dataset():
    train = [
        {"prompt": "p1", "chosen": "A", "rejected": "B"},
        {"prompt": "p2", "chosen": "B", "rejected": "C"},      # p1's y- is p2's y+
        {"prompt": "p3", "chosen": "D", "rejected": "A"},      # p1's y+ is p3's y-
        {"prompt": "p4", "chosen": "Irrelevant text.", "rejected": "E"},
    ]
    probe_set = [
        {"prompt": "p1", "texts": {"chosen": "A", "rejected": "B", "irrelevant": "irrelevant   TEXT.",
                                   "test_response": "Z", "other_chosen": "D"}},
        {"prompt": "p2", "texts": {"chosen": "B", "rejected": "C", "irrelevant": "Y",
                                   "test_response": "E", "other_chosen": "A"}},
    ]
    measured = design.measure(probe_set, train)
    o = measured["overlap"]
    assert o["chosen"] == {"any": 2, "as_chosen": 0, "as_rejected": 2}       # A as p3's y-, B as p1's y-
    assert o["rejected"] == {"any": 1, "as_chosen": 1, "as_rejected": 0}     # B is p2's y+; C only its own
    assert o["irrelevant"] == {"any": 1, "as_chosen": 1, "as_rejected": 0}   # case and spaces do not hide it
    assert o["test_response"] == {"any": 1, "as_chosen": 0, "as_rejected": 1}
    assert o["other_chosen"]["any"] == 2
    assert design.overlapping(measured, ["chosen", "other_chosen", "irrelevant"]) == {"chosen": 2, "irrelevant": 1}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from learning_dynamics.validate.training.model import tiny_random_llama
    return AutoTokenizer.from_pretrained(str(tiny_random_llama()))


def test_end_of_turn_comes_from_the_chat_template_not_the_eos_list(tokenizer):
    from learning_dynamics.validate.data.probes import end_of_turn_ids, eos_ids
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")] == [2]
    # a transformers version whose eos list starts with <|im_start|> (id 1) must not change it
    tokenizer.eos_token = "<|im_start|>"
    try:
        encode._EOT_CACHE.clear()
        assert eos_ids(tokenizer)[0] == 1
        assert end_of_turn_ids(tokenizer) == [2]
    finally:
        tokenizer.eos_token = "<|im_end|>"
        encode._EOT_CACHE.clear()


def test_the_repeated_sample_is_the_samples_tokens_twice_around_a_newline(tokenizer):
    """Built from ids, not re-tokenised text: log pi(repeated) - log pi(sample) is the second copy's log-prob."""
    from learning_dynamics.validate.data.probes import end_of_turn_ids, repeated_response, separator_ids
    end, sep = end_of_turn_ids(tokenizer), separator_ids(tokenizer)
    assert sep == [198] and tokenizer.decode(sep) == "\n"
    enc = encode.Encoder(tokenizer, 96, 8)
    for text in ("Paris is the capital of France, and it is a big city.", "Yes.", ""):
        sample = enc.response_ids(text)                     # as build_probe_set makes initial_sample's ids
        said = sample[:-1]
        assert sample[-1:] == end and repeated_response(sample, end, sep) == said + [198] + said + [2]
    with pytest.raises(ValueError, match="end of turn"):
        repeated_response([5, 6], end, sep)
