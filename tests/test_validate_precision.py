"""The run's precision: `auto` follows the hardware, bf16 keeps fp32 master weights, and bf16 scoring stays within
0.02 nats per token of float32 scoring on the same checkpoint (the issue's tolerance for tracked log-probs)."""
import copy

import pytest
import torch

from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.training import precision as prec
from learning_dynamics.validate.training.forward import make_batch, score_batch

TOLERANCE = 0.02     # nats per token, mean over the probe sequences


def test_auto_follows_the_cpu_units(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: ("amx_bf16",))
    assert prec.resolve("auto", "cpu").name == "bf16"
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: ())
    auto = prec.resolve("auto", "cpu")
    assert auto.name == "fp32" and "emulated" in auto.hardware
    assert prec.resolve("bf16", "cpu").name == "bf16"          # asked for: honoured, whatever the hardware
    assert prec.resolve("fp32", "cpu").low_precision_weights is False
    with pytest.raises(UserError, match="--precision"):
        prec.resolve("fp16", "cpu")


def test_the_cpu_units_agree_with_the_kernel_flags():
    flags = prec._cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo here")
    for unit in prec.cpu_bf16_units():
        assert unit in flags


def _tiny(seed=0):
    from learning_dynamics.validate.training.model import load_model
    torch.manual_seed(seed)
    return load_model("tiny-random", progress=lambda *a: None)


def _bf16():
    return prec.Precision("bf16", "cpu", "bf16", "test")


def test_master_weights_keep_updates_that_bf16_would_lose():
    model = _tiny().model.train()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    weights = prec.TrainingWeights(model, _bf16(), lr=1e-5, weight_decay=0.0)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # the masters are the fp32 weights themselves, not their bf16 rounding
    for name, value in weights.model_state().items():
        assert value.dtype == torch.float32 and torch.equal(value, original[name]), name
    batch = make_batch([([1, 5, 9, 11], [7, 8, 2]), ([1, 4], [6, 2])], pad_id=2)
    for _ in range(3):
        weights.zero_grad()
        from learning_dynamics.validate.training.forward import sequence_logps
        (-sequence_logps(model, batch)[0].sum()).backward()
        assert weights.grad_norm() > 0
        weights.step()
    moved = {k: (v - original[k]).abs().max().item() for k, v in weights.model_state().items()}
    assert max(moved.values()) > 0
    # AdamW's first steps move each weight by about lr: far below bf16's spacing at 1, so the bf16
    # model alone would have dropped them; the masters hold them and the model holds their rounding
    for p, m in zip(weights.params, weights.masters):
        assert torch.equal(p, m.to(torch.bfloat16))
    named = dict(zip([n for n, _ in model.named_parameters()], weights.masters))
    kept = sum(int(((m != original[n]) & (m.to(torch.bfloat16) == original[n].to(torch.bfloat16))).sum())
               for n, m in named.items())
    assert kept > 0, "no update was below bf16's spacing: the test no longer shows what masters are for"


def test_a_checkpoint_round_trips_in_both_precisions():
    for precision in (_bf16(), prec.Precision("fp32", "cpu", "fp32", "test")):
        model = _tiny().model.train()
        weights = prec.TrainingWeights(model, precision, lr=1e-3, weight_decay=0.0)
        batch = make_batch([([1, 5, 9], [7, 2])], pad_id=2)
        from learning_dynamics.validate.training.forward import sequence_logps
        (-sequence_logps(model, batch)[0].sum()).backward()
        weights.grad_norm()
        weights.step()
        saved = copy.deepcopy(weights.state_dict())
        other = prec.TrainingWeights(_tiny(seed=1).model.train(), precision, lr=1e-3, weight_decay=0.0)
        other.load_state_dict(saved)
        for name, value in other.model_state().items():
            assert torch.equal(value, saved["model"][name]), name
        assert other.optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()


def _mean_token_gap(model_a, model_b, sequences):
    batch = make_batch(sequences, pad_id=2)
    a, b = score_batch(model_a, batch), score_batch(model_b, batch)
    return ((a["logp_sum"] - b["logp_sum"]).abs() / a["n_tokens"].clamp_min(1)).mean().item()


def test_bf16_scoring_tracks_fp32_on_the_tiny_model():
    fp32 = _tiny().model
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    sequences = [(torch.randint(3, 4000, (12,), generator=generator).tolist(),
                  torch.randint(3, 4000, (9,), generator=generator).tolist()) for _ in range(16)]
    gap = _mean_token_gap(fp32, bf16, sequences)
    assert 0 < gap < TOLERANCE


def test_the_readout_of_bf16_weights_is_fp32():
    from learning_dynamics.validate.training.forward import readout
    model = copy.deepcopy(_tiny().model).to(torch.bfloat16)
    hidden = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = readout(model, hidden)
        again = readout(model, hidden)          # the cached fp32 head
    assert logits.dtype == torch.float32 and torch.equal(logits, again)
    exact = hidden.double() @ model.get_output_embeddings().weight.double().T
    assert (logits.double() - exact).abs().max() < 1e-4
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(2)     # a step changed the weights: the cache follows
        assert torch.allclose(readout(model, hidden), 2 * logits, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not prec.cpu_bf16_units(), reason="this CPU has no AMX or AVX512-BF16: bf16 is emulated, "
                    "tens of times slower than fp32, too slow for a SmolLM2 check in the suite")
def test_bf16_scoring_tracks_fp32_on_smollm2():
    from learning_dynamics.validate.training.model import load_model
    loaded = load_model("smollm2", progress=lambda *a: None)
    tok = loaded.tokenizer
    from learning_dynamics.validate.training.encode import Encoder
    encoder = Encoder(tok, 96, 48)
    texts = [("What is the capital of France?", "The capital of France is Paris."),
             ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
             ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
             ("What is 2 + 2?", "2 + 2 equals 4.")]
    sequences = [(encoder.prompt_ids(p), encoder.response_ids(r)) for p, r in texts]
    bf16 = copy.deepcopy(loaded.model).to(torch.bfloat16)
    assert _mean_token_gap(loaded.model, bf16, sequences) < TOLERANCE


def test_the_monitor_scores_a_bf16_copy_and_leaves_the_trainers_weights_alone():
    from learning_dynamics.validate.training.precision import in_precision
    model = _tiny().model
    scored = in_precision(model, _bf16())
    assert scored is not model and next(scored.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    assert in_precision(model, prec.Precision("fp32", "cpu", "fp32", "test")) is model
    with pytest.raises(UserError, match="precision must be one of"):
        from learning_dynamics.validate.monitor.monitor import ProbeMonitor
        ProbeMonitor([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 4, precision="fp16")
