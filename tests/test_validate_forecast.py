"""`ldyn validate forecast` on a tiny random Llama: the per-pair prediction held against an actual tiny step, against
explicit gradient dot products and the algorithm's own loss (float64); CHES against Razin et al.'s formula computed
on separate sequences; AdamW's closed-form first update against torch's; the metrics; the command end to end."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learning_dynamics.validate.measure import first_order
from learning_dynamics.validate.forecast import report
from learning_dynamics.validate.forecast import steps
from learning_dynamics.validate.training.algorithms import hyper_parameters, step_loss
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.forward import make_batch, sequence_logps
from learning_dynamics.validate.ldyn import main
from learning_dynamics.validate.training.model import load_model
from learning_dynamics.validate.presets import PRESETS, settings_for

TEXTS = [("Who wrote Hamlet?", "Shakespeare wrote it.", "Marlowe wrote it, I think."),
         ("What is the capital of France?", "Paris.", "The capital of France is Paris, of course."),
         ("Name a colour.", "Blue, like the sky.", "Blue, like the sea.")]


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random", dtype=torch.float64)
    enc = Encoder(loaded.tokenizer, 96, 48)
    pairs = [{"prompt": enc.prompt_ids(p), "chosen": enc.response_ids(c), "rejected": enc.response_ids(r)}
             for p, c, r in TEXTS]
    return loaded.model, pairs, loaded.tokenizer.pad_token_id


def _forecast(model, pair, pad, algo="dpo", lr=1e-3, weight_decay=0.0):
    s = settings_for("smoke", algo=algo, lr=lr)
    with first_order.exact_math(model):
        return steps.forecast_pair(model, pair, s.algorithm, hyper_parameters(s.algorithm, s), pad, "cpu", lr,
                                   weight_decay), s


@pytest.mark.parametrize("algo", ["dpo", "sft", "ipo", "simpo"])
def test_the_prediction_is_an_actual_tiny_sgd_step_to_first_order(tiny, algo):
    model, pairs, pad = tiny
    record, s = _forecast(model, pairs[0], pad, algo)
    saved = first_order.snapshot(model)
    unit = max(abs(record[f"sgd_dlogp_{k}"]) for k in report.PROBES)
    errors = {}
    with first_order.exact_math(model):
        for nats in (1e-2, 1e-3):            # step sizes by the largest predicted change, as the check sets them
            eta = nats / unit
            actual = steps.verify_pair(model, pairs[0], s, pad, "cpu", eta, saved)
            errors[nats] = {k: abs(actual[f"actual_sgd_dlogp_{k}"] - eta * record[f"sgd_dlogp_{k}"])
                            for k in report.PROBES}
    for k, tolerance in (("chosen", 0.01), ("rejected", 0.01), ("ystar", 0.1)):   # y*: the max, re-read after
        assert errors[1e-3][k] < tolerance * 1e-3, (k, errors)      # nats, against a largest change of 1e-3 nats
        assert errors[1e-2][k] / errors[1e-3][k] > 30, (k, errors)    # O(eta^2): a decade of eta, ~100x


@pytest.mark.parametrize("algo", ["dpo", "sft", "ipo"])
def test_the_factored_jvp_equals_dot_products_of_explicit_gradients(tiny, algo):
    """One gradient and one jvp per pair against three gradients and their dot products (another route).

    The step's direction is the training gradient, which leaves the input embedding of the padding token alone
    (nn.Embedding's padding_idx; SmolLM2 pads with its end of turn, which every prompt holds); the probe's
    sensitivity is the forward pass's, which does not: its gradient is taken without padding_idx.
    """
    model, pairs, pad = tiny
    pair = pairs[1]
    record, s = _forecast(model, pair, pad, algo)
    embedding = model.get_input_embeddings()
    grads = {}
    for key, padding_idx in (("chosen", pad), ("rejected", pad), ("chosen_probe", None), ("rejected_probe", None)):
        model.zero_grad(set_to_none=True)
        embedding.padding_idx = padding_idx
        with first_order.exact_math(model):
            sequence_logps(model, make_batch([(pair["prompt"], pair[key.split("_")[0]])], pad))[0].sum().backward()
        grads[key] = torch.cat([p.grad.flatten() for p in model.parameters()])
    embedding.padding_idx = pad
    model.zero_grad(set_to_none=True)
    direction = -(record["coef_chosen"] * grads["chosen"] + record["coef_rejected"] * grads["rejected"])
    for key in ("chosen", "rejected"):
        expected = float(grads[f"{key}_probe"] @ direction)
        assert record[f"sgd_dlogp_{key}"] == pytest.approx(expected, rel=1e-9)
    if algo == "sft":
        assert record["sgd_dlogp_chosen"] > 0 and record["adamw_dlogp_chosen"] > 0   # SFT never displaces y+
    if algo == "dpo":   # the exact DPO test is a CHES on the whole gradient: <g+, g+> - <g+, g->
        gap = float(grads["chosen_probe"] @ grads["chosen"] - grads["chosen_probe"] @ grads["rejected"])
        assert np.sign(record["sgd_dlogp_chosen"]) == np.sign(gap)


@pytest.mark.parametrize("algo", ["dpo", "sft", "ipo", "simpo"])
def test_the_gradient_from_theorys_coefficients_is_the_algorithms_loss_gradient(tiny, algo):
    model, pairs, pad = tiny
    pair, s = pairs[2], settings_for("smoke", algo=algo)
    batch = steps.pair_batch(model, pair, pad, "cpu")
    model.zero_grad(set_to_none=True)
    with first_order.exact_math(model):
        record, _ = steps.gradient_pass(model, batch, s.algorithm, hyper_parameters(s.algorithm, s))
        ours = torch.cat([p.grad.flatten() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        example = dict(pair, ref_chosen=record["logp_chosen"], ref_rejected=record["logp_rejected"])
        step_loss(s.algorithm, "main", model, [example], s, pad, "cpu")[0].backward()
    theirs = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    # step_loss holds the reference log-probs in float32, which moves sigma(-u) by ~1e-8 relative
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9 * float(theirs.abs().max()))


def _razin_ches(model, pair, pad):
    """CHES as Razin et al.'s code computes it: per sequence (x, y), the last hidden states from the last prompt
    token on, the response's last position dropped, summed; <h+, h-> - ||h+||^2 and the length-normalised form."""
    sums, lengths = {}, {}
    for key in ("chosen", "rejected"):
        ids = torch.tensor([pair["prompt"] + pair[key]])
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0]
        start = len(pair["prompt"]) - 1
        sums[key], lengths[key] = hidden[start:-1].double().sum(0), len(pair[key])
    plus, minus = sums["chosen"], sums["rejected"]
    return (float(plus @ minus - plus @ plus),
            float(plus @ minus / (lengths["chosen"] * lengths["rejected"]) - plus @ plus / lengths["chosen"] ** 2))


def test_ches_matches_razin_et_al_computed_on_separate_sequences(tiny):
    model, pairs, pad = tiny
    for pair in pairs:
        record, _ = _forecast(model, pair, pad)
        ches, ches_ln = _razin_ches(model, pair, pad)
        assert record["ches"] == pytest.approx(ches, rel=1e-6)
        assert record["ches_ln"] == pytest.approx(ches_ln, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_closed_form_first_adamw_update_is_torchs(tiny, weight_decay):
    model, pairs, pad = tiny
    saved = first_order.snapshot(model)
    model.zero_grad(set_to_none=True)
    sequence_logps(model, make_batch([(pairs[0]["prompt"], pairs[0]["chosen"])], pad))[0].sum().backward()
    direction = {k: -v.grad.clone() for k, v in model.named_parameters()}
    expected = steps.adamw_first_update(model, direction, 1e-3, weight_decay)
    with first_order.restoring(model, saved):
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=weight_decay).step()
        for k, v in model.named_parameters():
            torch.testing.assert_close(v.detach() - saved[k], expected[k], rtol=1e-6, atol=1e-12)
    model.zero_grad(set_to_none=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.floats(-1e3, 1e3)), min_size=3, max_size=40))
def test_spearman_is_scipys_with_ties(values):
    from scipy.stats import spearmanr
    a, b = (np.array(v, dtype=float) for v in zip(*values))
    ours, theirs = report.spearman(a, b), spearmanr(a, b).statistic
    assert (np.isnan(ours) and np.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-9)


def test_top_overlap_fall_share_and_the_random_baseline():
    actual = np.arange(20.0) - 10          # pairs 0, 1 fall most
    assert report.top_overlap(actual, actual) == 1.0
    assert report.top_overlap(-actual, actual) == 0.0
    base = report.random_overlap(20)
    assert base["k"] == 2 and base["mean"] == pytest.approx(0.1) and base["ci"][0] == 0.0
    flags = actual < -5
    fall = np.maximum(-actual, 0)
    assert report.fall_share(flags, actual) == pytest.approx(fall[:5].sum() / fall.sum())
    assert np.isnan(report.fall_share(flags, np.abs(actual)))


def test_a_chat_pair_round_trips_through_the_filter_format(tmp_path):
    from learning_dynamics.validate.data.data import load_preference_jsonl, write_jsonl
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
             "rejected": [{"role": "assistant", "content": "Go away"}]},
            {"prompt": "Who?", "chosen": "Me.", "rejected": "You.", "source": "x"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_preference_jsonl(tmp_path / "in.jsonl")
    write_jsonl([report.as_trl(r) for r in records], tmp_path / "out.jsonl")
    assert load_preference_jsonl(tmp_path / "out.jsonl") == records
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == rows


def test_the_command_end_to_end_with_verification_training_and_filter(tmp_path, capsys):
    from learning_dynamics.validate.data.data import default_dataset, load_preference_jsonl
    out = tmp_path / "forecast"
    code = main(["validate", "forecast", "--preset", "smoke", "--n-pairs", "6", "--verify", "--train-steps", "2",
                 "--filter", "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "pairs are forecast to lower their chosen answer" in printed
    result = json.loads((out / "forecast.json").read_text())
    assert result["n_pairs"] == 6 and len(result["pairs"]) == 6 and result["summary"] in printed
    assert {j["predictor"] for j in result["verification"]["by_optimizer"]["sgd"]["predictors"]} == \
        {p.name for p in steps.PREDICTORS}
    assert result["across_training"]["steps"] == 2 and len(result["across_training"]["run_change_chosen"]) == 6
    first = result["verification"]["by_optimizer"]["sgd"]["first_order"]["chosen"]
    assert first["relative_error"] < 0.1 and first["pearson_r"] > 0.99     # the SGD step is first-order
    csv_rows = (out / "forecast.csv").read_text().splitlines()
    assert len(csv_rows) == 7 and csv_rows[0].startswith("rank,index,displacing")
    kept = [r for r in result["pairs"] if r["sgd_dlogp_chosen"] >= 0]
    filtered = load_preference_jsonl(out / "filtered.jsonl") if kept else []
    train = default_dataset(seed=0)["train"]
    assert filtered == [train[r["index"]] for r in kept]
    for name in ("forecast_sgd.png", "forecast_adamw.png", "forecast_run.png", "forecast.md"):
        assert (out / name).stat().st_size > 1000, name
    assert result["reproduce"].startswith("ldyn validate forecast") and "--verify" in result["reproduce"]


def test_an_interrupted_forecast_resumes_from_its_finished_pairs(tmp_path, monkeypatch):
    from learning_dynamics.validate.forecast import run as api
    calls = []
    real = steps.forecast_pair

    def stop_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "forecast_pair", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        api.forecast(None, n_pairs=5, preset="smoke", out=tmp_path, quiet=True)
    assert len(json.loads((tmp_path / "forecast.parts.json").read_text())["parts"]["forecast"]) == 3
    calls.clear()
    monkeypatch.setattr(steps, "forecast_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = api.forecast(None, n_pairs=5, preset="smoke", out=tmp_path, quiet=True)
    assert len(calls) == 2 and len(result["pairs"]) == 5
    calls.clear()      # more options on the same folder: the step-0 forecast is reused, the verification runs
    verified = api.forecast(None, n_pairs=5, preset="smoke", out=tmp_path, quiet=True, verify=True)
    assert not calls and [r["sgd_dlogp_chosen"] for r in verified["pairs"]] == \
        [r["sgd_dlogp_chosen"] for r in result["pairs"]]


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/missing.jsonl"], "no such file"),
    (["--data", "{tmp}/one.jsonl"], "at least 2 preference pairs"),
    (["--algo", "pg"], "cannot be forecast"),
    (["--algo", "nope"], "unknown --algo"),
    (["--n-pairs", "1"], "at least 2 preference pairs"),
    (["--n-pairs", "0"], "--n-pairs"),
    (["--train-steps", "-1"], "--train-steps"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "one.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["validate", "forecast", "--preset", "smoke", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_forecast_again_at_a_runs_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["validate", "run", "--preset", "smoke", "--algo", "dpo", "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "forecast"
    code = main(["validate", "forecast", "--preset", "smoke", "--n-pairs", "5", "--from-run", str(run), "--quiet",
                 "--out", str(out)])
    assert code == 0 and f"the run in {run}" in capsys.readouterr().out
    result = json.loads((out / "forecast.json").read_text())
    t = result["across_training"]
    assert t["source"] == str(run) and t["steps"] == PRESETS["smoke"]["steps"] and len(t["train_log"]) == t["steps"]
    assert any(abs(c) > 1e-3 for c in t["run_change_chosen"])        # the checkpoint's weights were loaded
    assert "--from-run" in result["reproduce"]
    code = main(["validate", "forecast", "--preset", "smoke", "--from-run", str(run), "--train-steps", "2", "--out",
                 str(out)])
    assert code == 2 and "not both" in capsys.readouterr().err
    code = main(["validate", "forecast", "--preset", "smoke", "--from-run", str(tmp_path), "--out", str(out)])
    assert code == 2 and "no state/checkpoint.pt" in capsys.readouterr().err
