"""Each prediction's `probes` (theory.predictions.Prediction) names every probe series its evaluator reads: the
caveats, the usable-prompt masks and the not-built marks of validate/ read that field, so a probe read but not
declared would escape all three."""
import dataclasses

import numpy as np
import pytest

from learning_dynamics.theory import predictions as P
from learning_dynamics.theory import probes as probe_registry

from test_predictions import DPO_LIKE, SFT_LIKE, make_series

JUDGED = [p for p in P.CATALOGUE if p.scope in ("run", "compare")]


def full_series(drifts, seed):
    """make_series' probe curves plus every other series an evaluator may read (token counts, entropies, mass,
    generations), so that only a probe left out can change an outcome."""
    series = make_series(drifts, seed=seed)
    shape = series["logps/chosen"].shape
    rng = np.random.default_rng(seed)
    for name in list(P.PROBES) + ["shared_prefix"]:
        series[f"n_tokens/{name}"] = rng.integers(5, 20, shape[1]) * np.ones(shape)
        series[f"entropy/{name}"] = 2.0 + rng.normal(0, 0.1, shape)
        series[f"logp_mean/{name}"] = -3.0 + rng.normal(0, 0.1, shape)
    for key in ("gen/rep4", "gen/rep4_prefix", "gen/distinct2", "sqnorm/chosen", "mass/tv", "mass/top_gain",
                "argmax/chosen"):
        series[key] = rng.random(shape)
    return series


def declared_only(series, prediction):
    """The series with the `logps/` curves of the undeclared probes removed. A "scored" probe (y*) comes with the
    probe it is scored on; a comparison matches the two runs' margins on the probe pair (y+, y-)."""
    keep = set(prediction.probes) | ({"chosen", "rejected"} if prediction.scope == "compare" else set())
    keep |= {p.name for p in probe_registry.PROBE_TYPES if p.source == "scored" and set(p.needs) <= keep}
    return {k: v for k, v in series.items() if not k.startswith("logps/") or k[len("logps/"):] in keep}


def outcome(prediction, series, other):
    if prediction.scope == "compare":
        return prediction.evaluate(series, other, seed=0, basis="matched margin", from_eval=0)
    if getattr(prediction.evaluate, "needs_control", False):
        return prediction.evaluate(series, seed=0, control=other, control_label="SFT")
    return prediction.evaluate(series, seed=0)


def same_outcome_on_declared_probes(prediction) -> bool:
    run, other = full_series(DPO_LIKE, 0), full_series(SFT_LIKE, 5)
    whole = outcome(prediction, run, other)
    try:
        alone = outcome(prediction, declared_only(run, prediction), declared_only(other, prediction))
    except KeyError:
        return False
    return (whole.verdict, whole.detail) == (alone.verdict, alone.detail) and np.allclose(
        [whole.effect, *whole.ci], [alone.effect, *alone.ci], equal_nan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("prediction", JUDGED, ids=[p.id for p in JUDGED])
def test_an_evaluator_reads_only_the_probes_its_prediction_declares(prediction):
    assert set(prediction.probes) <= set(probe_registry.NAMES), prediction.id
    assert same_outcome_on_declared_probes(prediction), (prediction.id, prediction.probes)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("pid, dropped", [("P12b", "irrelevant"), ("P09b", "rejected"), ("P17r", "initial_sample"),
                                          ("P09d", "random_tokens"), ("P14b", "test_response")])
def test_the_check_fails_when_a_read_probe_is_not_declared(pid, dropped):
    prediction = P.BY_ID[pid]
    assert dropped in prediction.probes
    undeclared = dataclasses.replace(prediction, probes=tuple(p for p in prediction.probes if p != dropped))
    assert not same_outcome_on_declared_probes(undeclared)
