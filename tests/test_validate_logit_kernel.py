"""The logit eNTK views of P20 (validate.measure.logit_kernel) against a second implementation on a tiny random Llama in
float64: every entry the jvps read off (sketch, token block, A.K.G) equals two backward passes and a dot product;
the A.K.G view is trajectory.kernel_matrix's kernel; and the sketch's cosine between two parameter points estimates
the exact kernel's, computed entry by entry on a few tokens. The two-way bootstrap resamples both axes."""
import numpy as np
import pytest
import torch

from learning_dynamics.validate.measure import first_order, logit_kernel, trajectory
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.model import load_model


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random", dtype=torch.float64)
    enc = Encoder(loaded.tokenizer, 64, 16)
    probes = [(enc.prompt_ids("Who wrote Hamlet?"), enc.response_ids("Shakespeare.")),
              (enc.prompt_ids("Who wrote Hamlet?"), enc.response_ids("Marlowe")),    # shares a prompt: one row
              (enc.prompt_ids("Hi"), enc.response_ids("Hello there."))]
    trains = [(enc.prompt_ids("Name a colour."), enc.response_ids("Blue.")),
              (enc.prompt_ids("2+2?"), enc.response_ids("4"))]
    return loaded.model, loaded.tokenizer.pad_token_id, probes, trains


def _one_hot(rows: int, vocab: int, tokens) -> torch.Tensor:
    out = torch.zeros(rows, vocab, dtype=torch.float64)
    out[torch.arange(rows), torch.as_tensor(tokens)] = 1.0
    return out


def test_every_view_entry_equals_two_backward_passes(tiny):
    model, pad, probes, trains = tiny
    with first_order.exact_math(model):
        views = logit_kernel.KernelViews(model, probes, trains, pad, "cpu", 2, sketch_probe=4)
        views.measure(0)
        values = views.values[0]
        vocab = model.config.vocab_size
        for s, u in ((0, 1), (1, 0), (2, 1)):
            rows, cols = len(probes[s][1]), len(trains[u][1])
            omega = views.omega_probe(s, rows, vocab).reshape(rows, vocab, -1)   # no support: the whole vocabulary
            for b, w_u in enumerate(views.omega_train(u, cols, vocab)):
                for a in (0, 3):
                    expected = logit_kernel.entries_by_reverse_mode(model, probes[s], omega[..., a], trains[u], w_u,
                                                                    pad, "cpu")
                    got = values["K sketch"][s][u].reshape(views.sketch_train, views.sketch_probe)[b, a]
                    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
            top = _one_hot(cols, vocab, views.train_top[u])
            tokens = views.tokens[s]
            for m, k in ((0, 0), (rows - 1, tokens.shape[1] - 1)):
                cell = torch.zeros(rows, vocab, dtype=torch.float64)
                cell[m, tokens[m, k]] = 1.0
                expected = logit_kernel.entries_by_reverse_mode(model, probes[s], cell, trains[u], top, pad, "cpu")
                assert values["K tokens"][s][u].reshape(rows, -1)[m, k] == pytest.approx(expected, rel=1e-9,
                                                                                          abs=1e-12)
        akg = np.array([[cell[0] for cell in row] for row in values["A.K.G"]])
        with logit_kernel.true_jacobian(model):
            reference = trajectory.kernel_matrix(model, probes, trains, pad, "cpu", 2)
    np.testing.assert_allclose(akg, reference, rtol=1e-9)
    assert np.abs(akg).max() > 0 and views.tokens[0].shape[1] == logit_kernel.TOP_TOKENS + logit_kernel.RANDOM_TOKENS


def _exact_kernel(model, probes, trains, support, pad) -> list:
    """K restricted to `support` at every response position, [probe][train] blocks, from rows of J: one backward
    pass per logit, dot products over every parameter."""
    params = list(model.parameters())

    def rows(sequence):
        with logit_kernel.true_jacobian(model):
            logits, _ = logit_kernel._logits_of(model, sequence, pad, "cpu")
            return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(logits[m, token], params,
                                                                                      retain_graph=True)])
                                for m in range(logits.shape[0]) for token in support])

    train_rows = [rows(t) for t in trains]
    return [[(p_rows @ t_rows.T).numpy() for t_rows in train_rows] for p_rows in (rows(p) for p in probes)]


def _sketch_directions(views, probes, trains, vocab, support):
    omega_p = [views.omega_probe(s, len(p[1]), vocab).numpy() for s, p in enumerate(probes)]
    omega_u = [np.stack([w[:, support].reshape(-1).numpy() for w in views.omega_train(u, len(t[1]), vocab)], axis=1)
               for u, t in enumerate(trains)]
    return omega_p, omega_u


def test_the_sketch_is_the_exact_kernel_between_random_directions(tiny):
    """On a few tokens the exact kernel is computable from rows of J: the sketch is omega_p^T K omega_u to
    rounding at both parameter points, and over many draws of the directions its inner product between the two
    points averages to the exact kernels' (unbiased) and its cosine centres on theirs."""
    model, pad, probes, trains = tiny
    probes, trains, support = probes[::2], trains[1:], [300, 2]
    theta0 = first_order.snapshot(model)
    gen = torch.Generator().manual_seed(3)
    theta1 = {k: v + 3.0 * v.std().clamp_min(1e-3) * torch.randn(v.shape, generator=gen, dtype=v.dtype)
              for k, v in theta0.items()}
    exact = {}
    with first_order.exact_math(model):
        views = logit_kernel.KernelViews(model, probes, trains, pad, "cpu", 2, sketch_probe=4, sketch_train=2,
                                         sketch_support=support)
        views.measure(0)
        exact[0] = _exact_kernel(model, probes, trains, support, pad)
        with trajectory.holding(model, theta1):
            views.measure(1)
            exact[1] = _exact_kernel(model, probes, trains, support, pad)
    vocab = model.config.vocab_size
    omega_p, omega_u = _sketch_directions(views, probes, trains, vocab, support)
    for step, blocks in exact.items():
        for s, row in enumerate(blocks):
            for u, k in enumerate(row):
                sketch = views.values[step]["K sketch"][s][u].reshape(views.sketch_train, views.sketch_probe)
                np.testing.assert_allclose(sketch, (omega_p[s].T @ k @ omega_u[u]).T, rtol=1e-8,
                                           atol=1e-10 * np.abs(sketch).max())
    k0, k1 = (np.concatenate([np.concatenate(row, axis=1) for row in exact[t]]) for t in (0, 1))
    inner, cosine = float((k0 * k1).sum()), float((k0 * k1).sum() / np.sqrt((k0 ** 2).sum() * (k1 ** 2).sum()))
    assert cosine < 0.9                                   # the kernel moved, so an estimate can be told apart
    draws = []
    for seed in range(1000):                              # the directions alone: no model pass needed
        other = logit_kernel.KernelViews(model, probes, trains, pad, "cpu", 2, seed=seed, sketch_probe=8,
                                         sketch_train=2, sketch_support=support)
        w_p, w_u = _sketch_directions(other, probes, trains, vocab, support)
        s0, s1 = ([[w_p[s].T @ k @ w_u[u] for u, k in enumerate(row)] for s, row in enumerate(exact[t])]
                  for t in (0, 1))
        draws.append((logit_kernel.cosine_of(*[[[c.ravel() for c in r] for r in m] for m in (s0, s1)]),
                      sum(float((a * b).sum()) for ra, rb in zip(s0, s1) for a, b in zip(ra, rb)) / (8 * 2)))
    cosines, inners = np.array(draws).T
    standard_error = inners.std() / np.sqrt(len(inners))
    assert abs(inners.mean() - inner) < 4 * standard_error < 0.3 * inner   # E<S0, S1> / directions = <K0, K1>
    assert np.median(cosines) == pytest.approx(cosine, abs=0.1)
    assert views.drift()["K sketch"]["similarity"][0] == pytest.approx(1.0)


def test_the_bootstrap_resamples_probes_and_training_sequences():
    rng = np.random.default_rng(0)
    n0 = rng.uniform(1, 2, (12, 4))
    nt = n0 * 3.0                                # the same blocks, rescaled: every resample gives one cosine
    dot = 0.5 * np.sqrt(n0 * nt)
    point, ci = logit_kernel.cosine_with_ci(dot, n0, nt)
    assert point == pytest.approx(0.5) and ci[0] == pytest.approx(0.5) and ci[1] == pytest.approx(0.5)
    dot = np.sqrt(n0 * nt) * np.where(np.arange(4) == 0, 0.9, 0.1)[None, :]   # one training column differs
    _, by_columns = logit_kernel.cosine_with_ci(dot, n0, nt)
    _, rows_only = logit_kernel.cosine_with_ci(dot[:, :1], n0[:, :1], nt[:, :1])
    assert by_columns[1] - by_columns[0] > 0.3                       # resampling columns shows their spread
    assert rows_only[0] == pytest.approx(0.9) and rows_only[1] == pytest.approx(0.9)
    point, ci = logit_kernel.cosine_with_ci(dot[:1, :1], n0[:1, :1], nt[:1, :1])
    assert point == pytest.approx(0.9) and np.isnan(ci[0])           # nothing to resample: no interval
