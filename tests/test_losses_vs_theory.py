"""theory.residuals (sympy) equals torch autograd of sim.losses, in float64, to 1e-10."""
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from learning_dynamics.sim import losses as L  # noqa: E402
from learning_dynamics.theory import residuals as R  # noqa: E402

FUNCS = L.LOSS_FUNCTIONS


def test_every_loss_has_one_torch_form():
    assert set(FUNCS) == set(R.LOSSES)


def random_inputs(loss, rng, n=64, per_token=False):
    spec = R.get(loss)
    wrt, others, defaults = spec.wrt, spec.others, spec.defaults
    values = {}
    for name in wrt + others:
        if name.startswith("len_"):
            values[name] = rng.integers(1, 40, n).astype(np.float64) if (loss != "ipo" or per_token) else None
        elif name in ("beta", "gamma", "delta", "lam", "eta"):
            values[name] = float(rng.uniform(0.05, 3.0))
        elif name == "win_prob":
            values[name] = rng.uniform(0, 1, n)
        elif name == "advantages":
            values[name] = rng.standard_normal(n)
        else:                                     # log-probs of whole responses
            values[name] = -rng.uniform(1, 80, n)
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.parametrize("loss, per_token", [(name, False) for name in R.LOSSES] + [("ipo", True)])
def test_coefficients_equal_autograd(loss, per_token):
    """Every loss; IPO in both conventions (summed, and TRL's per-token lengths)."""
    rng = np.random.default_rng(hash((loss, per_token)) % 2 ** 32)
    inputs = random_inputs(loss, rng, per_token=per_token)
    wrt = R.get(loss).wrt
    tensors = {k: (torch.tensor(v, dtype=torch.float64, requires_grad=k in wrt) if isinstance(v, np.ndarray)
                   else v) for k, v in inputs.items()}
    losses, _ = FUNCS[loss](**tensors)
    losses.sum().backward()
    got = R.residual_coefficients(loss, **inputs)
    assert set(got) == set(wrt)
    for name in wrt:
        np.testing.assert_allclose(got[name], tensors[name].grad.numpy(), rtol=1e-10, atol=1e-10)
    # the comparison can fail: a flipped sign is caught
    name = wrt[0]
    assert not np.allclose(-got[name], tensors[name].grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("loss", R.LOSSES)
def test_defaults_mirror_sim_losses(loss):
    params = inspect.signature(FUNCS[loss]).parameters
    spec = R.get(loss)
    wrt, others, defaults = spec.wrt, spec.others, spec.defaults
    assert set(params) == set(wrt) | set(others)
    for name, value in defaults.items():
        assert params[name].default == value, (loss, name)


def test_dpo_coefficient_is_beta_sigma_minus_u():
    out = R.residual_coefficients("dpo", logp_chosen=-10.0, logp_rejected=-12.0, ref_chosen=-11.0,
                                  ref_rejected=-11.0, beta=0.5)
    u = 0.5 * ((-10 + 11) - (-12 + 11))
    sig = 1 / (1 + np.exp(u))
    assert out["logp_chosen"] == pytest.approx(-0.5 * sig) and out["logp_rejected"] == pytest.approx(0.5 * sig)
    big = R.residual_coefficients("dpo", logp_chosen=-1e4, logp_rejected=0.0, ref_chosen=0.0, ref_rejected=0.0)
    assert np.isfinite(big["logp_chosen"]) and big["logp_chosen"] == pytest.approx(-0.1)
    assert R.residual_coefficients("pg", logp=-3.0, advantages=-2.0)["logp"] == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(4))
def test_residual_equals_autograd_through_log_softmax(seed):
    rng = np.random.default_rng(seed)
    V = 50
    z = torch.tensor(rng.standard_normal((3, V)) * 5, dtype=torch.float64, requires_grad=True)
    tokens = rng.integers(0, V, 3)
    coef = rng.standard_normal(3)
    logp = torch.log_softmax(z, -1)[np.arange(3), tokens]
    (torch.tensor(coef) * logp).sum().backward()
    pi = torch.softmax(z, -1).detach().numpy()
    np.testing.assert_allclose(R.residual(pi, tokens, coef), z.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert not np.allclose(R.residual(pi, tokens, -coef), z.grad.numpy())


def test_bad_loss_inputs():
    with pytest.raises(ValueError):
        R.residual_coefficients("nope")
    with pytest.raises(TypeError):
        R.residual_coefficients("sft", logp_chosen=1.0, beta=0.1)
    with pytest.raises(ValueError):
        R.residual_coefficients("ipo", logp_chosen=-1.0, logp_rejected=-2.0, ref_chosen=-1.0,
                                ref_rejected=-1.0, len_chosen=3.0)


def test_pull_only_is_dpo_without_its_negative_gradient():
    """dpo-pull-only pulls y+ with DPO's own coefficient beta sigma(-u) and leaves y- alone (its gradient is 0)."""
    rng = np.random.default_rng(7)
    inputs = random_inputs("dpo", rng)
    dpo = R.residual_coefficients("dpo", **inputs)
    pull = R.residual_coefficients("dpo-pull-only", **inputs)
    np.testing.assert_allclose(pull["logp_chosen"], dpo["logp_chosen"], rtol=1e-12)
    assert set(pull) == {"logp_chosen"} and (dpo["logp_rejected"] > 0).all()
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) if isinstance(v, np.ndarray) else v
               for k, v in inputs.items()}
    losses, _ = L.dpo_pull_only_loss(**tensors)
    losses.sum().backward()
    assert tensors["logp_rejected"].grad is None     # detached: no gradient reaches y- at all
    np.testing.assert_allclose(tensors["logp_chosen"].grad.numpy(), dpo["logp_chosen"], rtol=1e-10)
