"""validate.training.health's stop rules, checkpoint restore errors, and the one-prompt dataset warning (no model needed)."""
import math

import pytest
import torch

from learning_dynamics.theory.errors import CorruptFile
from learning_dynamics.validate.training import health
from learning_dynamics.validate.training.run import _load_state
from learning_dynamics.validate.training import session


def test_divergence_is_a_non_finite_loss_or_gradient():
    assert health.diverged(3, 0.7, 1.0) is None
    assert "loss became nan at step 3" in health.diverged(3, math.nan)
    assert "gradient norm became inf" in health.diverged(3, 0.7, math.inf)


def test_a_frozen_loss_needs_every_one_of_the_last_steps_equal():
    log = [{"step": t, "loss": 0.693147} for t in range(health.FROZEN_STEPS)]
    assert "froze at 0.693147" in health.frozen(log)
    assert health.frozen(log[1:]) is None  # too few steps to tell
    log[3]["loss"] = 0.6931
    assert health.frozen(log) is None


def test_uniform_means_near_log_v_and_much_nearer_than_at_the_start():
    log_v = math.log(49152)
    assert "uniform distribution at step 4" in health.uniform(4, 1e-6, 0.013, log_v)
    assert health.uniform(4, 1e-6, 5e-6, log_v) is None  # started that close: a random model, not a collapse
    assert health.uniform(4, 0.5, 2.0, log_v) is None
    assert "non-finite" in health.uniform(4, math.nan, 2.0, log_v)
    rows = [{"entropy_mean": log_v}, {"entropy_mean": log_v - 2e-6}]
    assert health.entropy_gap(rows, log_v) == pytest.approx(1e-6)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, None])
def test_a_damaged_checkpoint_is_named(tmp_path, content):
    weights = _weights(torch.nn.Linear(2, 2))
    path = tmp_path / "checkpoint.pt"
    torch.save({**weights.state_dict(), "step": 2, "log": [], "pairs": [1, 2]}, path)
    path.write_bytes(content if content is not None else path.read_bytes()[:200])
    with pytest.raises(CorruptFile, match="checkpoint.pt is corrupt .*--fresh"):
        _load_state(path, weights, [1, 2], "cpu")


def _weights(model):
    from learning_dynamics.validate.training.precision import Precision, TrainingWeights
    return TrainingWeights(model, Precision("fp32", "cpu", "fp32", "test"), lr=1e-3, weight_decay=0.0)


def test_a_checkpoint_of_another_model_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": torch.nn.Linear(3, 3).state_dict(), "optimizer": {}, "step": 2, "log": [], "pairs": []},
               path)
    with pytest.raises(CorruptFile, match="cannot restore it"):
        _load_state(path, _weights(torch.nn.Linear(2, 2)), [], "cpu")


def test_a_dataset_with_one_prompt_warns(tmp_path, capsys):
    data = tmp_path / "one.jsonl"
    data.write_text("".join(f'{{"prompt": "same", "chosen": "yes {i}", "rejected": "no {i}"}}\n' for i in range(8)))
    session.examples({"data": str(data), "n_probe": 2, "n_train": None})
    err = capsys.readouterr().err
    assert "warning: all 7 training pairs share one prompt" in err and "P09a" in err
