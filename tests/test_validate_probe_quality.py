"""A model-written rephrase that is empty, repeats itself or copies its source is marked unusable, and the verdicts
that read it leave its prompt out (too few left: inconclusive with the reason)."""
import numpy as np

from learning_dynamics.theory import predictions as P
from learning_dynamics.validate.data import probe_quality


def test_degenerate_rephrases_are_named():
    assert probe_quality.problem("", "Paris") == "empty"
    assert probe_quality.problem("  ", "Paris") == "empty"
    assert probe_quality.problem("The capital is Paris.", "the capital is paris.") == "copies its source"
    assert probe_quality.problem("Rephrased: Amman, Amman, Amman, Amman", "The capital of Jordan is Amman.") == \
        "repeats itself"
    assert probe_quality.problem("France's capital city is Paris.", "The capital of France is Paris.") is None
    texts = {"chosen": "Paris.", "chosen_rephrase": "Paris.", "rejected": "Rome.", "rejected_rephrase": "Rome is."}
    assert probe_quality.unusable(texts) == {"chosen_rephrase": "copies its source"}
    assert probe_quality.summary([{"unusable": {"chosen_rephrase": "empty"}}, {"unusable": {}},
                                  {"unusable": {"chosen_rephrase": "empty"}}]) == {"chosen_rephrase": {"empty": 2}}


def _sft_series(n_prompts, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.array([0.0, 1.0, 0.4])[:, None]          # rises, then falls
    series = {f"logps/{p}": rng.normal(-40, 3, n_prompts) + ramp * 5 + rng.normal(0, 0.1, (3, n_prompts))
              for p in P.PROBES}
    series["entropy/chosen"] = np.full((3, n_prompts), 2.0)
    return series


def test_a_verdict_leaves_out_the_prompts_whose_probe_is_unusable():
    series = _sft_series(12)
    series["logps/chosen_rephrase"][:, :3] = np.nan      # three prompts' rephrases marked unusable
    row = {r["id"]: r for r in P.evaluate_run(series, "sft")}["P13b"]
    assert row["verdict"] == "holds" and row["n"] == 9 and "3 of 12 probe prompts left out" in row["detail"]
    series["logps/chosen_rephrase"][:, :6] = np.nan      # six left: too few for a bootstrap interval
    row = {r["id"]: r for r in P.evaluate_run(series, "sft")}["P13b"]
    assert row["verdict"] == "inconclusive" and "only 6 probe prompts have usable probes" in row["detail"]
    untouched = {r["id"]: r for r in P.evaluate_run(series, "sft")}["P12d"]
    assert untouched["n"] == 12                           # a verdict that reads y+ alone keeps every prompt
    series["logps/chosen_rephrase"][:, :6] = -5.0
    series["logps/chosen_rephrase"][:, 1] = np.nan
    series["gen/rep4"] = np.zeros((series["logps/chosen"].shape[0], 4))   # generations of the first 4 prompts
    row = {r["id"]: r for r in P.evaluate_run(series, "sft")}["P13b"]    # a real run's shapes: no IndexError
    assert row["n"] == 11 and "1 of 12 probe prompts left out" in row["detail"]
