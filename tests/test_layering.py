"""The layers import one way: theory <- sim <- validate, and theory stays torch-free."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "theory": {"sim", "validate", "torch", "transformers"},
    "sim": {"validate"},
}


def imported_roots(path: Path) -> set:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_never_imports_upward(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no modules found in {layer}/"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[layer]) for f in files}
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"{layer}/ imports a forbidden package: {offenders}"


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom validate.run import main\nimport torch.nn as nn\n")
    assert imported_roots(bad) >= {"validate", "torch", "numpy"}


def test_importing_theory_stays_light():
    """`import theory.<module>` must not pull in torch or sympy (CLI start-up and sim speed)."""
    import subprocess
    import sys

    code = ("import sys, importlib, pkgutil, theory\n"
            "for m in pkgutil.iter_modules(theory.__path__):\n"
            "    if m.name not in ('derive',):\n"
            "        importlib.import_module('theory.' + m.name)\n"
            "print(sorted(k for k in ('torch', 'sympy') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
