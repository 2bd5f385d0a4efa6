"""A report says how to make it again: the reproduce command read off the CLI's parser, and fingerprints of code,
data and model. The end-to-end test runs that command and gets the same report, number for number."""
import hashlib
import json
import os
import shlex
import subprocess
import sys

import pytest

from learning_dynamics.validate import provenance
from learning_dynamics.theory.algorithms import ALGORITHMS
from learning_dynamics.validate.cli.commands import check_settings, run_settings
from learning_dynamics.validate.ldyn import build_parser, main
from learning_dynamics.validate.presets import PRESETS, settings_for

# flags of `validate run` that are not settings: where to write and how to behave, not what to compute
# (--format is not a setting but is reproduced: run_command reads it from sim.common.style)
RUN_FLAGS_NOT_SETTINGS = {"help", "out", "preset", "fresh", "quiet", "first_order", "format"}


def changed(key, value):
    """A valid value other than `value` for setting `key`."""
    if key == "algo":
        return next(a for a in ALGORITHMS if a != value)
    if key == "device":
        return "cuda:1" if value == "cpu" else "cpu"
    if key == "data":
        return "/data/my pairs.jsonl"  # a space: the command must quote it (--data is made absolute)
    if key == "model":
        return "my-models/checkpoint-40"
    if key == "precision":
        return "bf16" if value != "bf16" else "fp32"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value * 0.37  # a float whose shortest text has many digits
    return 7 if value is None else value


def flag_dests(command):
    return {a.dest for a in provenance.command_parser(command)._actions if a.option_strings}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_run_flag_reads_back_to_the_same_settings(preset):
    base = PRESETS[preset]
    for key in sorted(flag_dests(("validate", "run")) & set(base)):
        settings = settings_for(preset, **{key: changed(key, base[key])})
        argv = provenance.reproduce_argv(("validate", "run"), settings, base, "out")
        assert argv[argv.index("--preset") + 1] == preset
        assert f"--{key.replace('_', '-')}" in argv, key
        args = build_parser().parse_args(argv[1:])
        assert run_settings(args) == settings, key
    everything = settings_for(preset, **{k: changed(k, base[k]) for k in flag_dests(("validate", "run")) & set(base)})
    args = build_parser().parse_args(shlex.split(provenance.reproduce_command(("validate", "run"), everything,
                                                                             base, "o"))[1:])
    assert run_settings(args) == everything


def test_the_preset_alone_gives_the_shortest_command():
    settings = settings_for("default")
    assert provenance.run_command(settings, "/somewhere/dpo") == \
        "ldyn validate run --preset default --algo dpo --out dpo-repro"


def test_the_figure_format_is_part_of_the_command(monkeypatch):
    from learning_dynamics.sim.common import style
    monkeypatch.setattr(style, "_format", "svg")
    assert "--format svg" in provenance.run_command(settings_for("smoke"), "r")
    assert "--format svg" in provenance.check_command(settings_for("smoke"), "r")


def test_every_run_flag_is_a_setting_so_none_escapes_the_command():
    """A new flag that changes what a run computes must land in its settings, or the reproduce line would drop it."""
    not_settings = flag_dests(("validate", "run")) - set(PRESETS["default"])
    assert not_settings <= RUN_FLAGS_NOT_SETTINGS, not_settings


def test_check_flags_read_back_and_the_required_switch_is_written():
    base = PRESETS["smoke"]
    settings = settings_for("smoke", device="cpu", seed=5, model="tiny-random")
    argv = provenance.reproduce_argv(("validate", "check"), settings, base, "x")
    assert "--first-order" in argv and "--device" in argv  # check's own --device default is cuda
    assert check_settings(build_parser().parse_args(argv[1:])) == settings


def test_a_setting_without_a_flag_is_refused_not_dropped():
    settings = dict(settings_for("default"), n_train=50)
    with pytest.raises(provenance.NotReproducible, match="n_train"):
        provenance.run_command(settings, "run")
    assert provenance.safely(provenance.run_command, settings, "run")["reproduce"] is None


def test_file_hash_is_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 5000)
    assert provenance.sha256_file(path) == hashlib.sha256(b"a" * 5000).hexdigest()
    store = provenance._hash_cache_path()
    cached = json.loads(store.read_text())
    cached[str(path.resolve())]["sha256"] = "from-the-cache"
    store.write_text(json.dumps(cached))
    assert provenance.sha256_file(path) == "from-the-cache"  # not read again
    path.write_bytes(b"b" * 5000)
    os.utime(path, ns=(1, 1))
    assert provenance.sha256_file(path) == hashlib.sha256(b"b" * 5000).hexdigest()


def test_code_fingerprint_names_the_checkout_commit():
    code = provenance.code_fingerprint()
    assert code["version"] == provenance._version("learning-dynamics")
    root = provenance._repo_root()
    if root is None or provenance._git(root, "rev-parse", "HEAD") is None:
        pytest.skip("not imported from a git checkout")
    assert code["commit"] == provenance._git(root, "rev-parse", "HEAD").strip() and code["dirty"] in (True, False)


def test_differing_fingerprints_is_one_line_naming_what_differs():
    a = {"code": {"version": "0.1.0", "commit": "abc1234aaaa", "dirty": False},
         "data": {"sha256": "11" * 32}, "model": {"sha256": "22" * 32}}
    assert provenance.differing_fingerprints({"dpo": a, "sft": json.loads(json.dumps(a))}) is None
    b = dict(a, data={"sha256": "33" * 32})
    line = provenance.differing_fingerprints({"dpo": a, "sft": b, "old": {}})
    assert "\n" not in line and line.startswith("different code") and "different data" in line
    assert "(11111111: dpo; 33333333: sft; unknown: old)" in line and "different model" in line


def test_records_in_memory_and_a_loaded_model_have_fingerprints(tmp_path):
    """What a trainer callback holds (a dataset, a model object) fingerprints like files do."""
    from types import SimpleNamespace

    from transformers import LlamaConfig
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    in_memory = provenance.data_fingerprint(rows)
    assert in_memory["n_pairs"] == 3 and in_memory["sha256"] == provenance.data_fingerprint(path)["sha256"]
    config = LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1)
    hub = provenance.model_fingerprint(SimpleNamespace(config=config))
    assert hub["sha256"] is None and len(hub["config_sha256"]) == 64
    (tmp_path / "ckpt").mkdir()
    config.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"weights")
    config._name_or_path = str(tmp_path / "ckpt")
    local = provenance.model_fingerprint(SimpleNamespace(config=config))
    assert local["weight_files"] == ["model.safetensors"] and local == provenance.model_fingerprint(tmp_path / "ckpt")


# --------------------------------------------------------------------------- end to end

FLAGS = ["--algo", "ipo", "--steps", "3", "--lr", "0.0007", "--beta", "0.2", "--batch-pairs", "3",
         "--eval-every", "1", "--n-probe", "3", "--seed", "7", "--checkpoint-every", "0"]
VOLATILE = ("wall_seconds", "load_seconds", "train_tokens_per_second", "model_source", "run_id")


def comparable(report):
    """Everything but the clock, where the command writes, and the run id (each run has its own)."""
    report = json.loads(json.dumps(report))
    for key in VOLATILE:
        report["run"].pop(key)
    assert len(report.pop("run_id")) == 32
    argv = shlex.split(report.pop("reproduce"))
    return report, argv[:argv.index("--out")]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A smoke run with non-default flags and user data, then its report's reproduce command run in a fresh process."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "user data" / "pairs.jsonl"
    data.parent.mkdir()
    rows = [{"prompt": f"What is {i} times 3?", "chosen": f"It is {3 * i}.", "rejected": f"It is {3 * i + 1}."}
            for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate", "run", "--preset", "smoke", "--quiet", "--data", str(data), *FLAGS,
                 "--out", str(root / "original")]) == 0
    first = json.loads((root / "original" / "report.json").read_text())
    again = root / "elsewhere"
    again.mkdir()
    argv = shlex.split(first["reproduce"])
    assert argv[0] == "ldyn"
    done = subprocess.run([sys.executable, "-m", "learning_dynamics.validate.ldyn", *argv[1:], "--quiet"],
                          cwd=again, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    second = json.loads((again / argv[argv.index("--out") + 1] / "report.json").read_text())
    return root, data, first, second


def test_the_reproduce_command_names_every_changed_setting(reproduced):
    _, data, first, _ = reproduced
    argv = shlex.split(first["reproduce"])
    assert argv[:7] == ["ldyn", "validate", "run", "--preset", "smoke", "--algo", "ipo"]
    for flag, value in zip(FLAGS[::2], FLAGS[1::2]):
        assert argv[argv.index(flag) + 1] == value, flag
    assert argv[argv.index("--data") + 1] == str(data)  # absolute: the command runs from any folder
    assert argv[argv.index("--out") + 1] == "original-repro"
    assert first["reproduce"] in (reproduced[0] / "original" / "report.md").read_text()


def test_the_report_records_data_model_and_code_fingerprints(reproduced):
    _, data, first, _ = reproduced
    prints = first["fingerprints"]
    assert prints["data"] == {"name": "pairs.jsonl", "n_pairs": 20,
                              "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert first["data"] == "pairs.jsonl" and first["settings"]["data"] == "pairs.jsonl"
    assert str(data.parent) not in json.dumps(dict(first, reproduce=None))  # only the command names the path
    assert prints["data"]["sha256"] in (reproduced[0] / "original" / "report.md").read_text()  # in full
    assert prints["model"]["name"] == "tiny-random" and len(prints["model"]["config_sha256"]) == 64
    assert len(prints["model"]["sha256"]) == 64 and prints["model"]["weight_files"]
    assert prints["code"]["version"] and "commit" in prints["code"]
    for library in ("torch", "transformers", "numpy", "scipy", "accelerate", "learning-dynamics"):
        assert first["versions"][library], library


def test_running_the_reproduce_command_gives_the_same_report_number_for_number(reproduced):
    _, _, first, second = reproduced
    (a, command_a), (b, command_b) = comparable(first), comparable(second)
    assert command_a == command_b
    assert a == b  # every verdict, effect, CI, curve summary and fingerprint


def test_merging_runs_with_different_data_warns_in_one_line(reproduced, tmp_path, capsys):
    import shutil
    root = reproduced[0]
    other = tmp_path / "other"
    shutil.copytree(root / "original", other)
    settings = json.loads((other / "settings.json").read_text())
    (other / "settings.json").write_text(json.dumps(dict(settings, algo="sft")))
    info = json.loads((other / "run_info.json").read_text())
    info["fingerprints"]["data"]["sha256"] = "0" * 64
    (other / "run_info.json").write_text(json.dumps(info))
    assert main(["validate", "report", str(root / "original"), str(other), "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ldyn: warning: merging runs made with different data"), err
    assert "00000000" in err[0] and "different code" not in err[0]
    assert json.loads((tmp_path / "summary.json").read_text())["warning"] in err[0]
