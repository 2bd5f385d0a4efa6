"""Data that cannot fake a verdict: pairs whose chosen equals rejected (as text, or as the token ids a run trains on)
are dropped with a count, all of them refused; a gradient of exactly zero stops a run like a frozen loss; and a
verdict whose interval does not clear the numerical noise of the precision the probes were scored in is
inconclusive with that reason."""
import json

import numpy as np
import pytest

from learning_dynamics.theory import predictions, statistics
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.data import degenerate
from learning_dynamics.validate.training import health

PAIRS = [{"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(5)]


def test_pairs_equal_as_text_are_dropped_with_one_count_and_all_of_them_refused(capsys):
    rows = PAIRS + [dict(p, rejected=p["chosen"]) for p in PAIRS[:2]]
    assert degenerate.keep_distinct(rows, "text.jsonl") == PAIRS
    assert degenerate.keep_distinct(rows, "text.jsonl") == PAIRS   # the second split says nothing new
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ldyn: warning: text.jsonl: dropped 2 of 7 pairs whose chosen equals rejected (as text): they "
                   "have no loss gradient to train on"]
    with pytest.raises(UserError, match="every one of its 2 pairs has chosen equal to rejected"):
        degenerate.keep_distinct(rows[5:], "text.jsonl")


def test_pairs_that_differ_only_past_the_response_cut_are_the_same_pair(capsys):
    from transformers import AutoTokenizer

    from learning_dynamics.validate.training.encode import Encoder
    from learning_dynamics.validate.training.model import tiny_random_llama
    encoder = Encoder(AutoTokenizer.from_pretrained(str(tiny_random_llama())), 96, 16)
    shared = "The river runs past the old stone bridge and on through the quiet morning fields to the sea"
    tail = {"prompt": "Where does it go?", "chosen": shared + ", slowly.", "rejected": shared + ", quickly."}
    assert encoder.response_ids(tail["chosen"]) == encoder.response_ids(tail["rejected"])  # 16 tokens: cut
    assert degenerate.keep_distinct(PAIRS + [tail], "tail.jsonl") == PAIRS + [tail]         # differ as text
    assert degenerate.keep_distinct(PAIRS + [tail], "tail.jsonl", encoder) == PAIRS
    assert "as text or in their first 16 tokens" in capsys.readouterr().err


def test_a_gradient_of_exactly_zero_stops_the_run():
    assert health.diverged(3, 0.693147, 1e-7) is None   # small is not zero: AdamW still has a direction
    assert "loss gradient is exactly zero at step 3" in health.diverged(3, 0.693147, 0.0)


def _falling(drop, tokens, n=12):
    """logps/chosen of n prompts falling by `drop` nats (with a spread), each response `tokens` long."""
    start = -np.linspace(20, 30, n)
    end = start - drop * (1 + 0.1 * np.sin(np.arange(n)))
    return {"logps/chosen": np.stack([start, end]), "n_tokens/chosen": np.full((2, n), float(tokens))}


@pytest.mark.parametrize("drop, precision, verdict", [(1e-8, "float64", "holds"), (1e-8, "float32", "inconclusive"),
                                                      (0.05, "float32", "holds"), (0.05, "bf16", "inconclusive"),
                                                      (0.5, "bf16", "holds")])
def test_a_verdict_below_the_noise_of_its_precision_is_inconclusive(drop, precision, verdict):
    rows = {r["id"]: r for r in predictions.evaluate_run(_falling(drop, 10), "dpo", precision=precision)}
    p09a = rows["P09a"]
    assert p09a["verdict"] == verdict and p09a["effect"] == pytest.approx(drop, rel=0.1)
    if verdict == "inconclusive":
        floor = statistics.noise_floor(10, precision)
        assert p09a["inconclusive_reason"].startswith(f"below the numerical noise of {precision} ({floor:.2g}")
        assert 0 < p09a["ci"][0] < floor   # the bootstrap alone would have said "holds"


def test_the_noise_floor_is_the_formats_epsilon_per_token():
    assert statistics.noise_floor(1, "float32") == np.finfo(np.float32).eps
    assert statistics.noise_floor(40, "float64") == 40 * np.finfo(np.float64).eps
    assert statistics.noise_per_token("bf16") == statistics.noise_per_token("bfloat16") == 2.0 ** -7
    with pytest.raises(UserError, match="unknown precision 'int8'"):
        statistics.noise_per_token("int8")
    held = statistics.Outcome("holds", 0.5, (0.2, 0.8), 12)
    assert statistics.above_noise(held, 0.1) is held
    assert statistics.above_noise(statistics.Outcome("fails", -0.5, (-0.8, -0.05), 12), 0.1).verdict == "inconclusive"


def test_a_run_whose_gradient_is_zero_stops_and_draws_no_verdict(tmp_path, capsys, monkeypatch):
    """A loss that cannot move the model (here: the real loss times zero) stops at its first step."""
    from learning_dynamics.validate.training import algorithms
    from learning_dynamics.validate.ldyn import main
    real = algorithms.step_loss

    def no_gradient(*args, **kwargs):
        loss, metrics, tokens = real(*args, **kwargs)
        return loss * 0.0, metrics, tokens

    monkeypatch.setattr(algorithms, "step_loss", no_gradient)
    code = main(["validate", "run", "--preset", "smoke", "--quiet", "--algo", "dpo", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "loss gradient is exactly zero at step 0" in err[0], err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped"]["step"] == 0 and report["predictions"]
    assert all(r["verdict"] == "inconclusive" and "exactly zero" in r["inconclusive_reason"]
               for r in report["predictions"])
    assert report["fingerprints"]["data"]["sha256"]   # a stopped run's report keeps what it was trained on
