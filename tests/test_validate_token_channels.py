"""The per-token channels of a DPO step (validate.measure.token_channels) on a tiny random Llama in float64: the hidden
(body), hidden (input embedding) and readout channels sum to the exact jvp of log pi to rounding, tied or untied;
the tied embedding's change splits into the head's gradient and the input role's, which moves only the rows of
tokens the pair's inputs hold; and the summary names the channel that carries a token's change."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learning_dynamics.validate.measure import first_order, token_channels, token_squeeze
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.model import TINY_CONFIG, load_model


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random", dtype=torch.float64)
    enc = Encoder(loaded.tokenizer, 64, 16)
    torch.manual_seed(2)
    untied = LlamaForCausalLM(LlamaConfig(**dict(TINY_CONFIG, tie_word_embeddings=False),
                                          vocab_size=loaded.model.config.vocab_size)).double()
    pair = {"prompt": enc.prompt_ids("Who wrote Hamlet?"), "chosen": enc.response_ids("Shakespeare wrote it."),
            "rejected": enc.response_ids("Shakespeare did not, Marlowe did.")}
    return {"tied": loaded.model, "untied": untied}, pair, loaded.tokenizer.pad_token_id


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_the_channels_sum_to_the_exact_jvp(tiny, which):
    models, pair, pad = tiny
    model = models[which]
    with first_order.exact_math(model):
        record = token_squeeze.check_pair(model, pair, 0.5, pad, "cpu", channels=True)
    split = record["channels"]
    assert split["sum_gap"] < 1e-9
    names = set(split["channels"])
    assert names == set(token_channels.CHANNELS) | (set(token_channels.READOUT_SOURCES) if which == "tied" else set())
    for token in token_channels.TOKENS:
        total = sum(split["channels"][n][token] for n in token_channels.CHANNELS)
        np.testing.assert_allclose(total, split["exact"][token], rtol=1e-8, atol=1e-12)
        assert all(np.abs(split["channels"][n][token]).max() > 0 for n in token_channels.CHANNELS)
        if which == "tied":
            sources = sum(split["channels"][n][token] for n in token_channels.READOUT_SOURCES)
            np.testing.assert_allclose(sources, split["channels"]["readout"][token], rtol=1e-8, atol=1e-14)
    # the first-order change is the measured one for a small step (0.5 nats of L): same sign almost everywhere
    assert np.mean(np.sign(split["exact"]["rejected"]) == np.sign(split["actual"]["rejected"])) > 0.8


def test_the_tied_embeddings_input_role_moves_only_the_inputs_rows(tiny):
    models, pair, pad = tiny
    model = models["tied"]
    with token_channels.head_gradient(model) as head:
        direction = token_squeeze.dpo_direction(model, pair, pad, "cpu")
    name, same = token_channels.embedding_names(model)
    assert name == same                                   # SmolLM2's layout: one matrix in both roles
    input_role = direction[name] - head["weight"]
    moved = set(torch.nonzero(input_role.abs().sum(1) > 0).ravel().tolist())
    assert moved and moved <= set(pair["prompt"]) | set(pair["chosen"]) | set(pair["rejected"])
    assert (head["weight"].abs().sum(1) > 0).sum() > len(moved)       # the head's gradient moves every row


def test_the_summary_names_the_carrier():
    kinds = [np.array(["shared", "rejected_only", "rejected_only"])]
    channels = {"hidden (body)": np.array([0.1, 0.5, 0.7]), "hidden (input embedding)": np.array([0.0, 0.01, 0.0]),
                "readout": np.array([-0.05, 0.1, -0.1])}
    exact = channels["hidden (body)"] + channels["hidden (input embedding)"] + channels["readout"]
    record = {"channels": {n: {"top": v, "rejected": -v} for n, v in channels.items()},
              "exact": {"top": exact, "rejected": -exact}, "actual": {"top": exact, "rejected": -exact},
              "sum_gap": 0.0}
    out = token_channels.summarise([record], kinds)
    top = out["by_kind"]["rejected_only"]["top"]
    assert out["by_kind"]["rejected_only"]["positions"] == 2 and top["carrier"] == "hidden (body)"
    assert top["channels"]["hidden (body)"]["share"] == pytest.approx(0.6 / exact[1:].mean())
    assert out["by_kind"]["rejected_only"]["rejected"]["carrier"] == "hidden (body)"   # the fall, carried alike
    assert sum(c["share"] for c in top["channels"].values()) == pytest.approx(1.0)
