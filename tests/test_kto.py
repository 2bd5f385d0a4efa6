"""KTO, added through the registries: its G term (sympy) against autograd over extreme inputs, TRL's
reference-KL estimate, the free-logit simulation, the toy LM's loss, and the predictions that apply."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from learning_dynamics.sim import losses as L  # noqa: E402
from learning_dynamics.theory import algorithms, residuals  # noqa: E402

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(finite, finite, finite, finite, st.floats(0.0, 1e3), st.floats(1e-4, 1e3))
def test_kto_coefficients_equal_autograd_and_keep_their_signs(lc, lr, rc, rr, kl, beta):
    got = residuals.residual_coefficients("kto", logp_chosen=lc, logp_rejected=lr, ref_chosen=rc,
                                          ref_rejected=rr, kl=kl, beta=beta)
    t = {k: torch.tensor([v], dtype=torch.float64, requires_grad=True) for k, v in (("lc", lc), ("lr", lr))}
    losses, _ = L.kto_loss(t["lc"], t["lr"], torch.tensor([rc], dtype=torch.float64),
                           torch.tensor([rr], dtype=torch.float64), kl, beta=beta)
    losses.sum().backward()
    np.testing.assert_allclose(got["logp_chosen"], t["lc"].grad.numpy(), rtol=1e-6, atol=1e-12 * beta)
    np.testing.assert_allclose(got["logp_rejected"], t["lr"].grad.numpy(), rtol=1e-6, atol=1e-12 * beta)
    # a desirable example is pushed up, an undesirable one down, each by at most beta/4
    assert np.all(got["logp_chosen"] <= 0) and np.all(got["logp_rejected"] >= 0)
    assert np.all(np.abs(got["logp_chosen"]) <= beta / 4 * (1 + 1e-12))


def test_kl_estimate_is_trls_mismatched_mean_clamped_at_zero():
    prompts, completions = ["x0", "x1", "x0", "x1"], ["a0", "a1", "b0", "b1"]
    pairs = L.kto_mismatched(prompts, completions)
    assert pairs == [("x0", "b1"), ("x1", "a0"), ("x0", "a1"), ("x1", "b0")]   # no prompt keeps its own answer
    policy = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    reference = torch.tensor([-2.0, -2.0, -2.0, -2.0])
    kl = L.kto_kl_estimate(policy, reference)
    assert float(kl) == pytest.approx(0.0) and not kl.requires_grad     # mean -0.5 is clamped to 0
    assert float(L.kto_kl_estimate(policy, reference - 1.0)) == pytest.approx(0.5)


def test_registry_entry_and_the_predictions_that_apply():
    from learning_dynamics.theory import predictions

    kto = algorithms.get("kto")
    assert kto.requires_reference and not kto.requires_samples and kto.data == "unpaired"
    assert dict(kto.defaults) == residuals.loss_defaults("kto") == {"beta": 0.1}
    applies = {p.id for p in predictions.CATALOGUE if "kto" in p.applies_to}
    assert applies == {"P09c", "P10"}   # it pushes y- down; DPO's coupled-pair claims are not about it


def test_free_logits_kto_pushes_y_minus_down_and_sharpens():
    from learning_dynamics.sim import logits

    problem = logits.make_problem(np.random.default_rng(0), 200, 20)
    series = logits.run_algorithm("kto", problem, 40, 0.5, 0.5, np.random.default_rng(1))
    summary = logits.summarize_series(series)
    assert summary["dlogp_minus"] < 0 and summary["dlogp_plus"] > 0
    # the negative gradient on y- makes pi peakier (P10's direction) in most runs, as DPO's does here
    assert summary["frac_minus_fell"] == 1.0 and summary["frac_entropy_fell"] > 0.8
    assert np.isfinite(list(summary.values())).all()


def test_toy_lm_trains_kto_through_the_registry():
    from learning_dynamics.sim.lm import QUICK, Finetuner
    from learning_dynamics.sim.toy_language import ToyLanguage
    from learning_dynamics.sim.toy_model import make_model

    language = ToyLanguage(0)
    policy = make_model(language.vocab_size, block_size=40, seed=0)
    reference = make_model(language.vocab_size, block_size=40, seed=0)
    trainer = Finetuner(language, policy, reference, algorithms.get("kto"), QUICK, seed=0, stream=0,
                        progress=lambda it, **_: it)
    batch = np.arange(8)
    before = float(trainer.loss(batch))
    assert 0.0 < before < 2.0              # each row's loss is 1 - sigmoid(.), in (0, 1)
    trainer.run(3)
    assert np.isfinite(float(trainer.loss(batch)))
