"""A training step and an evaluation read a prompt once for all its sequences (validate.training.forward.batches): the
losses, gradients and tracked rows equal those of one row per sequence, in float64 on a tiny random Llama."""
import pytest
import torch

from learning_dynamics.validate.training import algorithms as algos
from learning_dynamics.validate.measure import first_order
from learning_dynamics.validate.training import forward
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.model import load_model
from learning_dynamics.validate.presets import settings_for
from learning_dynamics.validate.measure.scoring import score_rows


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random", dtype=torch.float64)
    return loaded.model, Encoder(loaded.tokenizer, 96, 48), loaded.tokenizer.pad_token_id


def _pairs(enc):
    rows = [("Who wrote Hamlet?", "William Shakespeare.", "A famous painter from Paris, I think."),
            ("Hi", "Hello there!", "Go away."),
            ("Name a colour.", "Blue.", "Blue is a number.")]
    pairs = [{"prompt": enc.prompt_ids(p), "chosen": enc.response_ids(c), "rejected": enc.response_ids(r)}
             for p, c, r in rows]
    for p in pairs:
        p["ref_chosen"], p["ref_rejected"] = -20.0, -30.0
    return pairs


def _loss_and_grads(model, pairs, pad, shared, monkeypatch, algo="dpo"):
    if not shared:   # the one-row path: what a model whose attention takes no 4D mask gets
        monkeypatch.setattr(forward, "takes_4d_masks", lambda m: False)
    model.zero_grad(set_to_none=True)
    # SDPA's math kernel: the fused CPU kernels round float64 attention at ~1e-7 (measured), which would hide
    # a real difference between the two batch kinds behind the kernels' own
    with first_order.exact_math(model):
        settings = settings_for("smoke", algo=algo)
        loss, metrics, n_tokens = algos.step_loss(settings.algorithm, "main", model, pairs, settings, pad, "cpu")
        loss.backward()
    monkeypatch.undo()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, metrics, n_tokens


@pytest.mark.parametrize("algo", ["dpo", "sft", "pg"])
def test_a_training_step_on_shared_prompts_equals_one_row_each(tiny, monkeypatch, algo):
    model, enc, pad = tiny
    pairs = _pairs(enc)
    if algo == "pg":
        for p in pairs:
            p["samples"] = [enc.response_ids("Maybe."), enc.response_ids("I do not know, sorry.")]
    assert forward.takes_4d_masks(model)
    loss_shared, grads_shared, metrics_shared, tokens_shared = _loss_and_grads(model, pairs, pad, True,
                                                                               monkeypatch, algo)
    loss_alone, grads_alone, metrics_alone, tokens_alone = _loss_and_grads(model, pairs, pad, False,
                                                                           monkeypatch, algo)
    torch.testing.assert_close(loss_shared, loss_alone, rtol=1e-10, atol=1e-12)
    for name, grad in grads_alone.items():
        torch.testing.assert_close(grads_shared[name], grad, rtol=1e-8, atol=1e-10 * float(grad.abs().max() + 1))
    assert metrics_shared["logps/chosen"] == pytest.approx(metrics_alone["logps/chosen"], abs=1e-9)
    if algo != "sft":   # a prompt read once for its several responses: fewer tokens through the body
        assert tokens_shared < tokens_alone


def test_evaluation_rows_on_shared_prompts_equal_one_row_each(tiny, monkeypatch):
    model, enc, pad = tiny
    pairs = _pairs(enc)
    sequences = [(str(i), probe, p["prompt"], p[probe]) for i, p in enumerate(pairs) for probe in ("chosen", "rejected")]
    import contextlib
    with torch.no_grad(), first_order.exact_math(model):
        shared = score_rows(model, sequences, pad, "cpu", 4, contextlib.nullcontext)
        monkeypatch.setattr(forward, "takes_4d_masks", lambda m: False)
        alone = score_rows(model, sequences, pad, "cpu", 4, contextlib.nullcontext)
    for a, b in zip(shared, alone):
        assert (a["prompt_id"], a["probe"], a["n_tokens"]) == (b["prompt_id"], b["probe"], b["n_tokens"])
        for key in ("logp_sum", "entropy_mean", "sqnorm_mean", "argmax_logp_sum"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key
