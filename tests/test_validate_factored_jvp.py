"""The factored jvp (validate.measure.factored_jvp) against torch.func.jvp on dense tangents and autograd:
two implementations of one first-order prediction, held equal in float64 on a tiny random Llama."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from learning_dynamics.validate.measure import factored_jvp, first_order
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.model import TINY_CONFIG, load_model

WORDS = "the capital of France is Paris and a famous English playwright wrote Hamlet in London".split()


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random", dtype=torch.float64)
    enc = Encoder(loaded.tokenizer, 96, 48)
    torch.manual_seed(1)
    biased = LlamaForCausalLM(LlamaConfig(**TINY_CONFIG, vocab_size=loaded.model.config.vocab_size,
                                          attention_bias=True, mlp_bias=True)).double()
    return {"plain": loaded.model, "biased": biased}, enc, loaded.tokenizer.pad_token_id


def _probes(enc):
    return [(enc.prompt_ids("Who wrote Hamlet?"), enc.response_ids("Shakespeare.")),
            (enc.prompt_ids("Hi"), enc.response_ids("Hello there, friend, how are you today?")),
            (enc.prompt_ids("What is the capital of France?"), enc.response_ids("Paris")),
            (enc.prompt_ids("Name a colour."), enc.response_ids("Blue, like the sky."))]


def _direction(model, sequence, sign, pad):
    with factored_jvp.capture(model) as factors:
        direction = first_order.sgd_direction(model, sequence, sign, pad, "cpu")
    return direction, factors


@settings(max_examples=12, deadline=None)
@given(which=st.sampled_from(["plain", "biased"]), n_words=st.integers(1, 40), sign=st.sampled_from([-1.0, 1.0]),
       seed=st.integers(0, 2 ** 16), batch=st.sampled_from([1, 3, 4]))
def test_factored_jvp_equals_the_dense_jvp(tiny, which, n_words, sign, seed, batch):
    models, enc, pad = tiny
    model = models[which]
    words = [WORDS[i] for i in torch.randint(len(WORDS), (n_words,), generator=torch.Generator().manual_seed(seed))]
    sequence = (enc.prompt_ids("Tell me something."), enc.response_ids(" ".join(words)))
    direction, factors = _direction(model, sequence, sign, pad)
    probes = _probes(enc)
    with first_order.exact_math(model):  # forward AD needs SDPA's math kernel
        dense = first_order.predicted_per_unit_eta(model, probes, direction, pad, "cpu", batch)
        factored = factored_jvp.predicted_per_unit_eta(model, probes, direction, factors, pad, "cpu", batch)
    assert torch.isfinite(dense).all() and dense.abs().max() > 0
    torch.testing.assert_close(factored, dense, rtol=1e-10, atol=1e-10 * float(dense.abs().max()))


def test_factors_are_the_gradient_and_long_sequences_keep_some_layers_dense(tiny):
    models, enc, pad = tiny
    model = models["biased"]
    short = (enc.prompt_ids("Hi"), enc.response_ids("Hello"))
    long = (enc.prompt_ids("Tell me something."), enc.response_ids(" ".join(WORDS * 3)))
    for sequence in (short, long):
        direction, factors = _direction(model, sequence, 1.0, pad)
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.")]
        assert sorted(factors.layers) == sorted(f"{n}.weight" for n in linear)
        for name in factors.layers:
            torch.testing.assert_close(factors.weight(name), direction[name], rtol=1e-12, atol=1e-14)
    n_tokens = len(long[0]) + len(long[1])
    kept_dense = set(factors.layers) - set(factors.factored())
    assert kept_dense and all(n_tokens * sum(factors.layers[n][0].weight.shape) >= factors.layers[n][0].weight.numel()
                              for n in kept_dense)


def test_capture_refuses_two_forward_passes(tiny):
    models, enc, pad = tiny
    sequence = (enc.prompt_ids("Hi"), enc.response_ids("Hello"))
    with pytest.raises(ValueError, match="ran twice"):
        with factored_jvp.capture(models["plain"]):
            first_order.sgd_direction(models["plain"], sequence, 1.0, pad, "cpu")
            first_order.sgd_direction(models["plain"], sequence, 1.0, pad, "cpu")


def test_probe_scores_and_jvps_come_back_in_the_order_given(tiny):
    """probe_logps fills its batches in order of length; every row still answers its own sequence."""
    from learning_dynamics.validate.training.forward import probe_logps
    models, enc, pad = tiny
    model = models["plain"]
    probes = _probes(enc)
    assert sorted(map(sum, [(len(p), len(r)) for p, r in probes])) != [len(p) + len(r) for p, r in probes]
    direction, _ = _direction(model, probes[0], 1.0, pad)
    with first_order.exact_math(model), torch.no_grad():
        alone = torch.cat([probe_logps(model, [s], pad, "cpu", 1) for s in probes])
        together = probe_logps(model, probes, pad, "cpu", 2)
        jvp_alone = torch.cat([first_order.predicted_per_unit_eta(model, [s], direction, pad, "cpu", 1)
                               for s in probes])
        jvp_together = first_order.predicted_per_unit_eta(model, probes, direction, pad, "cpu", 3)
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jvp_together, jvp_alone, rtol=1e-9, atol=1e-9 * float(jvp_alone.abs().max()))
    assert len(set(alone.tolist())) == len(probes)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), n_prompts=st.integers(1, 4), batch=st.sampled_from([1, 2, 5, 8]),
       which=st.sampled_from(["plain", "biased"]))
def test_shared_prompt_batches_answer_what_one_row_each_does(tiny, seed, n_prompts, batch, which):
    """A prompt's responses packed after one copy of it (4D mask, positions restarting) score, and move under
    a jvp (dense and factored), exactly as each sequence on its own row: groups larger than a batch, single
    sequences, a one-token response, prompts in any order."""
    from learning_dynamics.validate.training import forward
    from learning_dynamics.validate.training.forward import probe_logps
    models, enc, pad = tiny
    model = models[which]
    assert forward.takes_4d_masks(model)   # else both sides below would be one row per sequence
    g = torch.Generator().manual_seed(seed)
    prompts = [enc.prompt_ids(p) for p in ("Who wrote Hamlet?", "Hi", "Name a colour, please.", "Tell me more.")]
    sequences = []
    for k in range(n_prompts):
        for _ in range(int(torch.randint(1, 7, (1,), generator=g))):
            n = int(torch.randint(1, 12, (1,), generator=g))
            sequences.append((prompts[k], enc.response_ids(" ".join(WORDS[int(i)] for i in
                                                                     torch.randint(len(WORDS), (n,), generator=g)))))
    sequences.append((prompts[0], enc.response_ids("Paris")))   # a prompt's sequences need not be adjacent
    sequences = [sequences[int(i)] for i in torch.randperm(len(sequences), generator=g)]
    direction, factors = _direction(model, sequences[0], 1.0, pad)
    with first_order.exact_math(model), torch.no_grad():
        shared = probe_logps(model, sequences, pad, "cpu", batch)
        alone = probe_logps(model, sequences, pad, "cpu", batch, shared_prompts=False)
        jvp_alone = first_order.predicted_per_unit_eta(model, sequences, direction, pad, "cpu", batch,
                                                       shared_prompts=False)
        jvp_shared = first_order.predicted_per_unit_eta(model, sequences, direction, pad, "cpu", batch)
        factored = factored_jvp.predicted_per_unit_eta(model, sequences, direction, factors, pad, "cpu", batch)
    assert torch.isfinite(shared).all() and (shared < 0).all()
    torch.testing.assert_close(shared, alone, rtol=1e-10, atol=1e-10)
    scale = float(jvp_alone.abs().max())
    torch.testing.assert_close(jvp_shared, jvp_alone, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(factored, jvp_alone, rtol=1e-9, atol=1e-9 * scale)


def test_a_shared_prompt_batch_attends_within_its_response_only(tiny):
    """Each response sees the prompt and its own earlier tokens; padding sees itself; positions restart."""
    from learning_dynamics.validate.training.forward import make_shared_prompt_batch
    _, _, pad = tiny
    batch = make_shared_prompt_batch([[([5, 6], [7, 8]), ([5, 6], [9])], [([4], [3])]], pad)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, pad, pad, pad]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    mask = batch.attention_mask[:, 0].int().tolist()
    assert mask[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert mask[1] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    # response tokens 7, 8, 9 and 3, predicted from the prompt's last token or the response's previous one
    assert batch.labels.tolist() == [7, 8, 9, 3] and batch.sequence.tolist() == [0, 0, 1, 2]
    assert batch.source.tolist() == [1, 2, 1, 5] and batch.n_sequences == 3
    with pytest.raises(ValueError, match="different prompts"):
        make_shared_prompt_batch([[([5], [7]), ([6], [7])]], pad)


def test_models_whose_attention_would_misread_the_mask_take_one_row_each(tiny, monkeypatch):
    from learning_dynamics.validate.training import forward
    models, _, _ = tiny
    config = models["plain"].config
    assert forward.takes_4d_masks(models["plain"])
    monkeypatch.setattr(config, "sliding_window", 64, raising=False)
    assert not forward.takes_4d_masks(models["plain"])
    monkeypatch.setattr(config, "sliding_window", None, raising=False)
    monkeypatch.setattr(config, "_attn_implementation", "eager", raising=False)
    assert not forward.takes_4d_masks(models["plain"])
