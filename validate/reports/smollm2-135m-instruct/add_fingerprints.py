"""Give the reports in this folder, made before reports had them, their reproduce command and fingerprints.

Nothing is trained again. Each run's run_info.json gains what a run now records when it ends (the reproduce
command and the code, data and model fingerprints), marked as reconstructed, and its report.json/report.md are
rebuilt from the logs by `validate.judge.report.write_report` (the verdict code that `ldyn validate report` runs). The two
first-order check folders gain the same fields in first_order.json. Run from the repository root:

    python validate/reports/smollm2-135m-instruct/add_fingerprints.py
"""
import json
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_json
from learning_dynamics.validate import provenance
from learning_dynamics.validate.presets import settings_for
from learning_dynamics.validate.judge.report import write_report

HERE = Path(__file__).resolve().parent
RUNS = ("dpo", "sft", "ipo", "simpo", "extend", "onpolicy-dpo", "pg")
# git log and COMMANDS.md: the H100 runs and check ran the code of f971532 (a99c1bf, its child, only added
# these reports); the CPU check ran the factored jvp of 09dd33c (c1adc32, which added it, changed a benchmark only)
H100_CODE = "f971532091bb03e16750430d8f7841968a0b1ba2"
CPU_CHECK_CODE = "09dd33c8d7e3f381ed66734061926c598fbb661d"
CHECKS = {"first-order": ("cuda", H100_CODE), "first-order-cpu": ("cpu", CPU_CHECK_CODE)}


def reconstructed(commit: str) -> dict:
    data, model = provenance.data_fingerprint(None), provenance.model_fingerprint("smollm2")
    return {
        "code": {"project": provenance.PROJECT, "version": "0.1.0", "commit": commit, "dirty": None},
        "data": data, "model": model,
        "reconstructed": (
            "Added afterwards without rerunning, by add_fingerprints.py: code.commit is the commit whose code made "
            "this report (git log, COMMANDS.md), code.dirty is unknown; data.sha256 was recomputed from "
            f"{data['source']} (the built-in dataset, which depends on nothing else); model.sha256 is that of the "
            f"GGUF file of {model['package']}, the version COMMANDS.md names, hashed in a later session, not on "
            "the machine that trained; the reproduce command was derived from settings.json (checks: from COMMANDS.md). Library versions are "
            "those the run recorded (a check recorded none)."),
    }


def main() -> None:
    for name in RUNS:
        run_dir = HERE / name
        settings = json.loads((run_dir / "settings.json").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        info.update(fingerprints=reconstructed(H100_CODE), **provenance.safely(provenance.run_command, settings, run_dir))
        atomic_write_json(run_dir / "run_info.json", info)
        write_report(run_dir)
        print(f"{name}: {info['reproduce']}")
    for name, (device, commit) in CHECKS.items():
        path = HERE / name / "first_order.json"
        result = json.loads(path.read_text())
        settings = settings_for("default", device=device)
        result.update(fingerprints=reconstructed(commit),
                      **provenance.safely(provenance.check_command, settings, HERE / name))
        atomic_write_json(path, result)
        print(f"{name}: {result['reproduce']}")


if __name__ == "__main__":
    main()
