"""The statistics behind `ldyn validate check`'s reach of the first-order picture: where a sweep breaks,
each push's share, P20's verdict from the kernel's drift; and the frozen-kernel k-step prediction is the sum
of the per-step jvps (one jvp along theta_k - theta_0)."""
import numpy as np
import pytest
import torch

from learning_dynamics.validate.measure import first_order, trajectory


def _row(nats, error):
    return {"target_nats": nats, "eta": nats * 1e-3, "relative_error": error, "mean_abs_error": error * nats,
            "pearson_r": 1.0, "sign_agreement": 1.0, "mean_abs_actual": nats}


def test_sweep_summary_finds_the_break_and_fits_only_the_eta2_regime():
    etas = np.array([0.01, 0.1, 1.0, 10.0, 100.0])
    errors = [0.001, 0.01, 0.099, 0.6, 3.0]   # relative error ~ eta, so mean abs error ~ eta^2, below 10%
    rows = [dict(_row(e, r), eta=e, mean_abs_error=r * e) for e, r in zip(etas, errors)]
    summary = first_order.summarise_sweep(rows, {"predicted": [], "actual": [], "target_nats": 0.1})
    assert summary["breaks_at"]["target_nats"] == 100.0
    assert summary["last_within_10pct"]["target_nats"] == 1.0 and len(summary["eta2_regime_etas"]) == 3
    assert summary["error_slope"] == pytest.approx(2.0, abs=0.05)
    unbroken = first_order.summarise_sweep(rows[:3], {"predicted": [], "actual": [], "target_nats": 0.1})
    assert unbroken["breaks_at"] is None
    floored = [dict(_row(0.001, 0.05), eta=0.001, mean_abs_error=0.05 * 0.001)] + rows   # a rounding floor
    with_floor = first_order.summarise_sweep(floored, {"predicted": [], "actual": [], "target_nats": 0.1})
    assert with_floor["error_slope"] == pytest.approx(2.0, abs=0.05) and len(with_floor["eta2_regime_etas"]) == 3


def test_agreement_scores_sign_and_error():
    predicted = np.array([1.0, -2.0, 3.0, -0.5])
    good = first_order.agreement(predicted, predicted * 1.01)
    assert good["pearson_r"] == pytest.approx(1.0) and good["sign_agreement"] == 1.0
    assert good["relative_error"] == pytest.approx(0.01 / 1.01)
    flipped = first_order.agreement(predicted, -predicted)
    assert flipped["sign_agreement"] == 0.0 and flipped["pearson_r"] == pytest.approx(-1.0)
    assert flipped["relative_error"] == pytest.approx(2.0)


def test_push_shares():
    shares = first_order.push_shares(np.array([1.0, 1.0, 0.0]), np.array([3.0, -1.0, 2.0]), ["a", "b", "a"])
    assert shares["negative_share"] == pytest.approx([0.75, 0.5, 1.0])
    assert shares["by_probe"]["a"]["negative_share"] == pytest.approx(0.875)
    assert shares["by_probe"]["b"]["same_sign"] == 0.0 and shares["negative_dominates"] == pytest.approx(2 / 3)


def test_p20_holds_for_a_stable_kernel_and_fails_for_a_new_one():
    rng = np.random.default_rng(0)
    k0 = rng.normal(size=(12, 4)) + 3.0
    stable = {0: k0, 5: k0 * 1.3 + 0.01 * rng.normal(size=k0.shape)}   # rescaled: the same kernel
    assert trajectory.kernel_drift(stable)["verdict"] == "holds"
    drifted = {0: k0, 5: rng.normal(size=k0.shape)}
    out = trajectory.kernel_drift(drifted)
    assert out["verdict"] == "fails" and out["ci"][0] <= out["effect"] <= out["ci"][1] < 0.9
    assert out["similarity"][0] == pytest.approx(1.0) and out["norm_ratio"][0] == pytest.approx(1.0)


def test_frozen_kernel_k_step_prediction_is_the_sum_of_per_step_jvps():
    from learning_dynamics.validate.training.model import load_model
    from learning_dynamics.validate.training.encode import Encoder
    loaded = load_model("tiny-random", dtype=torch.float64)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    enc = Encoder(loaded.tokenizer, 64, 16)
    probes = [(enc.prompt_ids("Who wrote Hamlet?"), enc.response_ids("Shakespeare.")),
              (enc.prompt_ids("Hi"), enc.response_ids("Hello there."))]
    torch.manual_seed(0)
    updates = [{k: 1e-3 * torch.randn_like(v) for k, v in model.named_parameters()} for _ in range(3)]
    total = {k: sum(u[k] for u in updates) for k in updates[0]}
    with first_order.exact_math(model):
        per_step = sum(first_order.predicted_per_unit_eta(model, probes, u, pad, "cpu", 2) for u in updates)
        at_once = first_order.predicted_per_unit_eta(model, probes, total, pad, "cpu", 2)
    torch.testing.assert_close(per_step, at_once, rtol=1e-10, atol=1e-12)
    assert at_once.abs().max() > 0


def test_spread_cycles_through_probe_types_and_prompts():
    types = ["chosen", "rejected", "random"]
    names = types * 4                                    # 4 prompts, prompt-major as probe_sequences gives them
    picks = trajectory.spread(names, 6)
    assert len(set(picks)) == 6
    assert sorted(names[i] for i in picks) == sorted(types * 2)          # every type before any repeats
    assert len({i // 3 for i in picks}) == 4                              # and from different prompts
    assert trajectory.spread(names, 100) == list(range(12)) and trajectory.spread(names, 0) == []
    strided = names[::max(len(names) // 4, 1)][:4]       # the plain stride this replaced picks one type only
    assert set(strided) == {"chosen"} and len({names[i] for i in trajectory.spread(names, 4)}) == 3


def test_moving_kernel_sum_takes_each_jvp_at_its_own_parameters():
    from learning_dynamics.validate.training.model import load_model
    from learning_dynamics.validate.training.encode import Encoder
    loaded = load_model("tiny-random", dtype=torch.float64)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    enc = Encoder(loaded.tokenizer, 64, 16)
    probes = [(enc.prompt_ids("Who wrote Hamlet?"), enc.response_ids("Shakespeare.")),
              (enc.prompt_ids("Hi"), enc.response_ids("Hello there.")),
              (enc.prompt_ids("2+2?"), enc.response_ids("4"))]
    torch.manual_seed(0)
    updates = [{k: 3e-2 * torch.randn_like(v) for k, v in model.named_parameters()} for _ in range(2)]
    theta0 = first_order.snapshot(model)
    theta1 = {k: theta0[k] + updates[0][k] for k in theta0}
    with first_order.exact_math(model):
        moving = trajectory.MovingKernelSum(model, probes[:2], pad, "cpu", 2)
        moving.add(theta0, updates[0], keep=True)
        moving.add(theta1, updates[1], keep=True)
        for k, v in model.named_parameters():   # add() leaves the model's own weights alone
            assert torch.equal(v, theta0[k])
        at0 = [first_order.predicted_per_unit_eta(model, probes, u, pad, "cpu", 2) for u in updates]
        with trajectory.holding(model, theta1):
            at1 = first_order.predicted_per_unit_eta(model, probes, updates[1], pad, "cpu", 2)
    torch.testing.assert_close(moving.kept[1], at0[0][:2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(moving.kept[2], (at0[0] + at1)[:2], rtol=1e-10, atol=1e-12)
    assert (moving.kept[2] - (at0[0] + at0[1])[:2]).abs().max() > 1e-8   # the kernel moved between the steps
    frozen = (at0[0] + at0[1]).numpy()
    actual = frozen * 1.1
    parts = moving.compare(2, [0, 1], frozen, actual)
    assert parts["probes"] == 2 and parts["frozen"]["relative_error"] == pytest.approx(0.1 / 1.1)
    moved = moving.kept[2].numpy()
    scale = np.abs(actual[:2]).mean()
    assert parts["linearisation_error"] == pytest.approx(np.abs(actual[:2] - moved).mean() / scale)
    assert parts["kernel_drift_error"] == pytest.approx(np.abs(moved - frozen[:2]).mean() / scale)
    assert trajectory.MovingKernelSum(model, [], pad, "cpu", 2).compare(1, [], frozen, actual) is None


def test_every_preset_has_the_checks_sizes():
    from learning_dynamics.validate.check import run as check
    from learning_dynamics.validate.presets import PRESETS
    for sizes in (trajectory.K_STEPS, check.N_PROBE_PROMPTS, check.SWEEP_PROMPTS, check.N_SQUEEZE_PAIRS):
        assert set(sizes) == set(PRESETS)
    assert all(check.SWEEP_PROMPTS[p] <= check.N_PROBE_PROMPTS[p] for p in PRESETS)


def test_the_sweep_reads_the_first_probe_prompts_and_clamps_to_the_set():
    from learning_dynamics.theory.errors import UserError
    from learning_dynamics.validate.check import run as check
    probes = [{"prompt_id": f"p{i}"} for i in range(24)]
    assert check.sweep_probe_set(probes) == probes[:check.SWEEP_PROMPTS["default"]] == probes[:8]
    assert check.sweep_probe_set(probes, preset="cpu") == probes[:check.SWEEP_PROMPTS["cpu"]]
    assert check.sweep_probe_set(probes, 3) == probes[:3] and check.sweep_probe_set(probes[:2], 8) == probes[:2]
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(UserError, match="--sweep-prompts"):
            check.sweep_probe_set(probes, bad)


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "eight"])
def test_a_bad_sweep_prompts_is_one_line_and_exit_2(value, tmp_path, capsys):
    from learning_dynamics.validate.ldyn import main
    out = tmp_path / "out"
    code = main(["validate", "check", "--first-order", "--preset", "smoke", "--device", "cpu",
                 "--sweep-prompts", value, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--sweep-prompts" in err and "Traceback" not in err
    assert not out.exists()   # refused before any work


def test_the_step_loops_buffers_and_kernels_change_no_number():
    """The check's speed-ups: a reused difference buffer, a sweep restoring from one snapshot, and the k-step
    run's training step on SDPA's fused kernels instead of the math kernel the jvps need."""
    from learning_dynamics.validate.training.encode import Encoder
    from learning_dynamics.validate.training.forward import make_batch, sequence_logps
    from learning_dynamics.validate.training.model import load_model
    loaded = load_model("tiny-random", dtype=torch.float64)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    enc = Encoder(loaded.tokenizer, 64, 16)
    theta0 = first_order.snapshot(model)
    torch.manual_seed(1)
    direction = {k: torch.randn_like(v) for k, v in theta0.items()}
    buffer = {k: torch.full_like(v, 7.0) for k, v in theta0.items()}
    with first_order.stepped(model, direction, 1e-3, saved=theta0):
        fresh = trajectory._difference(model, theta0)
        reused = trajectory._difference(model, theta0, out=buffer)
        assert reused is buffer and all(torch.equal(fresh[k], buffer[k]) for k in fresh)
        assert all(torch.allclose(buffer[k], 1e-3 * direction[k]) for k in buffer)
    for k, v in model.named_parameters():       # restored from the caller's snapshot, exactly
        assert torch.equal(v, theta0[k])
    elsewhere = {k: v + 1.0 for k, v in theta0.items()}
    with first_order.stepped(model, direction, 0.0, saved=elsewhere):
        pass
    assert all(torch.equal(v, elsewhere[k]) for k, v in model.named_parameters())   # `saved` is what comes back
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.copy_(theta0[k])
    batch = make_batch([(enc.prompt_ids("Who wrote Hamlet?"), enc.response_ids("Shakespeare."))] * 2, pad)
    with first_order.exact_math(model):
        math = sequence_logps(model, batch)[0]
        with first_order.fused_attention():
            fused = sequence_logps(model, batch)[0]
    torch.testing.assert_close(fused, math, rtol=1e-10, atol=1e-10)


def test_the_k_step_table_by_probe_type_scores_each_type_alone():
    from learning_dynamics.validate.check import run as check
    names = ["chosen", "rejected", "irrelevant"] * 3
    actual = np.array([1.0, -5.0, 0.2, 2.0, -6.0, 0.1, 3.0, -7.0, -0.3])
    predicted = actual * np.array([1, 1, -1, 1, 1, 1, 1, 1, 1]) + 0.01
    by_type = check.by_probe_type({"predicted": predicted.tolist(), "actual": actual.tolist()}, names)
    assert list(by_type) == ["chosen", "rejected", "irrelevant"]
    assert by_type["chosen"]["pearson_r"] == pytest.approx(1.0)
    pick = [2, 5, 8]
    assert by_type["irrelevant"] == first_order.agreement(predicted[pick], actual[pick])
    assert by_type["irrelevant"]["sign_agreement"] == pytest.approx(2 / 3)
    from learning_dynamics.validate.check import report as check_report
    table = check_report._by_probe_type_table({"probe_names": names, "k_step": [
        {"k": 1, "predicted": predicted.tolist(), "actual": actual.tolist()}]})
    assert any(line.startswith("| irrelevant | ") for line in table)


def test_the_pair_sweep_interpolates_each_crossing_and_summarises_over_pairs():
    from learning_dynamics.validate.measure import pair_sweep
    rows = [dict(_row(n, e), eta=n * 2e-4) for n, e in ((1, 0.01), (3, 0.05), (10, 0.4), (30, 2.0))]
    broke = pair_sweep.crossing(rows, 1.0)
    # log-log between (10, 0.4) and (30, 2.0): error ~ nats^1.46, so 100% at 10 * 2.5 ** (1 / 1.46)
    assert broke["interpolated"] and broke["target_nats"] == pytest.approx(10 * 2.5 ** (np.log(3) / np.log(5)))
    assert broke["eta"] == pytest.approx(broke["target_nats"] * 2e-4)
    assert 3 < pair_sweep.crossing(rows, 0.1)["target_nats"] < 10
    assert pair_sweep.crossing(rows, 5.0) is None                          # never on the grid: censored
    assert pair_sweep.crossing(rows, 0.001) == {"target_nats": 1, "eta": 2e-4, "interpolated": False}
    summary = pair_sweep.summarise([10.0, 20.0, None, 40.0, 30.0])
    assert summary["median"] == 30.0 and summary["n"] == 5 and summary["n_crossed"] == 4
    assert summary["ci"][0] <= 30.0 and summary["max"] == np.inf            # the censored pair is beyond the grid
    beyond = pair_sweep.summarise([None, None, 5.0])
    assert beyond["median"] == np.inf and beyond["n_crossed"] == 1
    sets = pair_sweep.pair_probe_sets([{"prompt_id": i} for i in range(3)], 8)
    assert [[p["prompt_id"] for p in s] for s in sets] == [[0, 1], [1, 2], [2, 0]]    # own prompt, then the next
