"""The layers import one way: theory <- sim <- validate, and theory stays torch-free."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "learning_dynamics"
FORBIDDEN = {
    "theory": {"sim", "validate", "torch", "transformers"},
    "sim": {"validate"},
}


def _root(module: str) -> str:
    """The layer a module belongs to: `learning_dynamics.sim.io` -> `sim`, `torch.nn` -> `torch`."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else parts[0]


def imported_roots(path: Path) -> set:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(_root(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(_root(node.module))
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
    bad.write_text("import numpy\nfrom learning_dynamics.validate.run import main\nimport torch.nn as nn\n")
    assert imported_roots(bad) >= {"validate", "torch", "numpy"}


def test_importing_theory_stays_light():
    """`import learning_dynamics.theory.<module>` must not pull in torch or sympy (CLI start-up and sim speed)."""
    import subprocess
    import sys

    code = ("import sys, importlib, pkgutil\n"
            "import learning_dynamics.theory as theory\n"
            "for m in pkgutil.iter_modules(theory.__path__):\n"
            "    if m.name not in ('derive',):\n"
            "        importlib.import_module('learning_dynamics.theory.' + m.name)\n"
            "print(sorted(k for k in ('torch', 'sympy') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_installs_beside_configobj_which_owns_a_top_level_validate(tmp_path):
    """configobj 5.0.9 ships a top-level `validate` module; ours lives under learning_dynamics."""
    import subprocess
    import sys

    code = ("import validate, configobj, learning_dynamics.validate.ldyn as ldyn\n"
            "assert hasattr(validate, 'Validator'), validate.__file__\n"
            "configobj.ConfigObj(['a = 1'], configspec=['a = integer']).validate(validate.Validator())\n"
            "print(ldyn.__name__)")
    # Run outside the checkout so that the repository's own folders are not on sys.path.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "learning_dynamics.validate.ldyn"


def test_modules_import_the_layers_by_their_installed_names():
    """A bare `from theory...` works only from the checkout's root and makes a second UserError class."""
    bare = {}
    for layer in ("theory", "sim", "validate"):
        for f in sorted((ROOT / layer).rglob("*.py")):
            names = set()
            for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
            if names & {"theory", "sim", "validate"}:
                bare[str(f.relative_to(ROOT))] = sorted(names & {"theory", "sim", "validate"})
    assert not bare, f"import the layers as learning_dynamics.<layer>: {bare}"
