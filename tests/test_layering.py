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
    """The layer a module belongs to: `learning_dynamics.sim.common.io` -> `sim`, `torch.nn` -> `torch`."""
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
    bad.write_text("import numpy\nfrom learning_dynamics.validate.training.run import main\nimport torch.nn as nn\n")
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


# --------------------------------------------------------------------------- the import graph between our modules
LAYERS = ("theory", "sim", "validate")
RANK = {layer: i for i, layer in enumerate(LAYERS)}


def project_modules(root: Path = ROOT) -> dict:
    """{dotted name: file} of every module the package installs (validate/reports/ holds scripts, not modules)."""
    modules = {}
    for layer in LAYERS:
        for f in sorted((root / layer).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if "reports" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([PACKAGE, *parts])] = f
    return modules


def import_edges(modules: dict) -> list:
    """(importer, imported module, name or None, line) for every import between our modules, at any depth:
    a function-level import is an edge like any other. `from pkg import mod` is an edge to the module."""
    edges = []
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                edges += [(name, a.name, None, node.lineno) for a in node.names if a.name.startswith(PACKAGE + ".")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PACKAGE):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    edges.append((name, sub, None, node.lineno) if sub in modules else
                                 (name, node.module, a.name, node.lineno))
    return edges


def import_loops(modules: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each a sorted list."""
    graph = {m: set() for m in modules}
    for src, dst, _, _ in import_edges(modules):
        if dst in graph and dst != src:
            graph[src].add(dst)
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                loops.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return loops


def private_imports(modules: dict) -> list:
    """`from our.module import _name`, `from our.pkg import _module` and `module._name` read across modules."""
    found = []
    for src, dst, name, line in import_edges(modules):
        leaf = name or dst.rsplit(".", 1)[1]
        if leaf.startswith("_") and not leaf.startswith("__") and dst != src:
            found.append(f"{src}:{line} takes {dst}.{leaf}")
    for src, f in modules.items():
        tree = ast.parse(f.read_text(), filename=str(f))
        aliases = {a.asname or a.name: f"{n.module}.{a.name}" for n in ast.walk(tree)
                   if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(PACKAGE) for a in n.names
                   if f"{n.module}.{a.name}" in modules}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{src}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return found


def upward_imports(modules: dict) -> list:
    return [f"{src}:{line} imports {dst}" for src, dst, _, line in import_edges(modules)
            if RANK[_root(dst)] > RANK[_root(src)]]


def test_no_import_loops_between_our_modules():
    assert not import_loops(project_modules()), "import loop(s); move the shared piece down a module"


def test_no_upward_import_at_any_depth():
    """theory <- sim <- validate, for function-level imports too."""
    assert not upward_imports(project_modules())


def test_no_module_takes_another_modules_private_names():
    assert not private_imports(project_modules())


def _write(root: Path, files: dict) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_graph_checks_see_a_loop_an_upward_import_and_a_private_name(tmp_path):
    _write(tmp_path, {
        "theory/a.py": "def f():\n    from learning_dynamics.theory import b\n",    # a loop through a function
        "theory/b.py": "from learning_dynamics.theory.a import f\n",
        "sim/c.py": "from learning_dynamics.theory.b import _hidden\nfrom learning_dynamics.theory import a\n"
                    "a._inner()\n",
        "validate/d.py": "",
        "theory/e.py": "def g():\n    from learning_dynamics.sim.c import x\n",
    })
    modules = project_modules(tmp_path)
    assert import_loops(modules) == [["learning_dynamics.theory.a", "learning_dynamics.theory.b"]]
    assert [u.split(" imports ")[1] for u in upward_imports(modules)] == ["learning_dynamics.sim.c"]
    found = private_imports(modules)
    assert len(found) == 2 and "_hidden" in found[0] and "_inner" in found[1]


def packages(root: Path = ROOT) -> list:
    """Every package the three layers hold, as a dotted name under learning_dynamics (reports are not packages)."""
    return sorted(".".join([PACKAGE, *f.parent.relative_to(root).parts]) for layer in LAYERS
                  for f in (root / layer).rglob("__init__.py") if "reports" not in f.parts)


@pytest.mark.parametrize("layer", [p.split(".", 1)[1] for p in packages()])
def test_each_package_states_its_public_api_and_importing_it_stays_light(layer):
    """Every name in __all__ resolves in the module the package names, none shadows a submodule, and
    `import learning_dynamics.<package>` alone imports no heavy library (layers and rooms alike)."""
    import subprocess
    import sys

    code = (f"import sys, importlib, pkgutil\n"
            f"package = importlib.import_module('learning_dynamics.{layer}')\n"
            f"print(sorted(m for m in ('torch', 'sympy', 'numpy', 'matplotlib', 'transformers') if m in sys.modules))\n"
            f"submodules = {{m.name for m in pkgutil.iter_modules(package.__path__)}}\n"
            f"print(sorted(set(package.__all__) & submodules))\n"
            f"for name in package.__all__:\n"
            f"    module = importlib.import_module(package.__name__ + '.' + package.EXPORTS[name])\n"
            f"    assert getattr(package, name) is getattr(module, name), name\n"
            f"print(len(package.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    heavy, shadowed, n_names = out.stdout.splitlines()
    assert heavy == "[]", f"import learning_dynamics.{layer} pulls in {heavy}"
    assert shadowed == "[]", f"__all__ names that are also submodules: {shadowed}"
    assert int(n_names) > 0


# --------------------------------------------------------------------------- rooms: sim/common and validate's rooms
# sim/common/ holds what sim/ and validate/ share (file writing, JSON I/O, figure style, tracking tables, padded
# batches), so it sits below both: it imports only theory and itself. validate/ takes from sim/ that shared room,
# the torch losses its algorithms train with, and (ldyn only) the sim CLI and the tour.
COMMON = f"{PACKAGE}.sim.common"
VALIDATE_MAY_TAKE_FROM_SIM = {f"{PACKAGE}.sim.losses": "every validate module",
                              f"{PACKAGE}.sim.cli": f"{PACKAGE}.validate.ldyn",
                              f"{PACKAGE}.sim.tour": f"{PACKAGE}.validate.ldyn"}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def room_violations(modules: dict) -> list:
    found = []
    for src, dst, _, line in import_edges(modules):
        if _in(src, COMMON) and _root(dst) == "sim" and not _in(dst, COMMON) and dst != f"{PACKAGE}.sim":
            found.append(f"{src}:{line} imports {dst}: sim/common must not depend on the experiments above it")
        if _root(src) == "validate" and _root(dst) == "sim" and not _in(dst, COMMON):
            allowed = VALIDATE_MAY_TAKE_FROM_SIM.get(dst)
            if allowed is None or allowed not in ("every validate module", src):
                found.append(f"{src}:{line} imports {dst}: validate/ takes sim's shared pieces from sim.common")
    return found


def test_sim_common_sits_below_sim_and_validate():
    assert not room_violations(project_modules())


def test_the_room_check_sees_common_reaching_up_and_validate_reaching_past_common(tmp_path):
    _write(tmp_path, {
        "sim/common/io.py": "from learning_dynamics.sim import lm\n",
        "sim/lm.py": "from learning_dynamics.sim.common.io import x\n",
        "validate/run.py": "from learning_dynamics.sim.lm import y\nfrom learning_dynamics.sim.common import io\n",
    })
    found = room_violations(project_modules(tmp_path))
    assert len(found) == 2 and "sim.common.io" in found[0] and "validate.run" in found[1]


def test_pyproject_lists_every_package_so_the_wheel_holds_it():
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == set(packages()), f"missing: {set(packages()) - listed}, stale: {listed - set(packages())}"


# --------------------------------------------------------------------------- imports at the top of the file
# An import inside a function hides an edge of the graph from a reader; it is kept only where importing at the top
# would make the importer load a heavy library it does not load already (the CLI's start-up time), or for a reason
# named here. Heavy: what `ldyn --help` must not load.
HEAVY = {"torch", "transformers", "trl", "matplotlib", "sympy", "accelerate", "gguf", "scipy", "sklearn", "tqdm",
         "yaml", "huggingface_hub", "tensorboard", "wandb"}
# tests replace these functions on their module (monkeypatch), which a name bound at import time would not see
PATCHED_ON_THEIR_MODULE = {"run_digits", "run_tour", "load_model"}
# issue-29c's branch rewrites these files' contents; their function-level imports move up once both are merged


def _top_level_imports(tree) -> list:
    """Import statements that run when the module is imported (module and class bodies, not function bodies)."""
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)
    visit(tree)
    return found


def _imported(node, modules: dict) -> list:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level or not node.module:
        return []
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]


def heavy_libraries(modules: dict) -> dict:
    """{module: the heavy libraries importing it loads}, through top-level imports of our modules."""
    trees = {m: ast.parse(f.read_text(), filename=str(f)) for m, f in modules.items()}
    direct, below = {}, {}
    for m, tree in trees.items():
        names = [n for node in _top_level_imports(tree) for n in _imported(node, modules)]
        direct[m] = {n.split(".")[0] for n in names} & HEAVY
        below[m] = {n for n in names if n in modules and n != m}
    heavy = {}

    def of(m, seen=()):
        if m not in heavy:
            heavy[m] = set(direct[m]).union(*(of(d, seen + (m,)) for d in below[m] if d not in seen))
        return heavy[m]
    return {m: of(m) for m in modules}


def needless_lazy_imports(modules: dict, root: Path = ROOT) -> list:
    heavy = heavy_libraries(modules)
    found = []
    for m, f in modules.items():
        tree = ast.parse(f.read_text(), filename=str(f))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))):
                ours = [t for t in _imported(node, modules) if t.startswith(PACKAGE + ".")]
                adds = set().union(*(heavy.get(t, set()) for t in ours)) - heavy[m]
                patched = isinstance(node, ast.ImportFrom) and {a.name for a in node.names} & PATCHED_ON_THEIR_MODULE
                if ours and not adds and not patched:
                    found.append(f"{m}:{node.lineno} imports {', '.join(ours)} inside {fn.name}()")
    return found


def test_our_modules_are_imported_at_the_top_unless_that_loads_a_heavy_library():
    assert not needless_lazy_imports(project_modules())


def test_the_lazy_import_check_sees_a_light_import_hidden_in_a_function(tmp_path):
    _write(tmp_path, {
        "sim/light.py": "X = 1\n",
        "sim/heavy.py": "import torch\n",
        "validate/cli.py": "def f():\n    from learning_dynamics.sim.light import X\n"
                           "def g():\n    from learning_dynamics.sim import heavy\n",
    })
    found = needless_lazy_imports(project_modules(tmp_path), tmp_path)
    assert len(found) == 1 and "sim.light inside f()" in found[0]


# --------------------------------------------------------------------------- size: short files, short functions
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def oversized(root: Path = ROOT) -> list:
    """Files over MAX_FILE_LINES lines and functions (methods, nested ones) over MAX_FUNCTION_LINES, from `def`
    to the last line of the body, in the three layers; validate/reports/ holds scripts, not modules."""
    found = []
    for layer in LAYERS:
        for f in sorted((root / layer).rglob("*.py")):
            rel = f.relative_to(root)
            if "reports" in rel.parts:
                continue
            text = f.read_text()
            if len(text.splitlines()) > MAX_FILE_LINES:
                found.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text, filename=str(f))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(f"{rel}:{node.lineno} {node.name}() has {length} lines")
    return found


def test_no_file_over_400_lines_and_no_function_over_60():
    assert not oversized(), "split by meaning: one idea per file, short functions"


def test_the_size_check_sees_a_long_file_and_a_long_function_but_not_a_report_script(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))     # def + 60 lines: 61
    _write(tmp_path, {
        "theory/short.py": "def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1),   # exactly 60: fine
        "sim/long_function.py": "class A:\n    def method(self):\n" + "    " + body.replace("\n    ", "\n        "),
        "validate/long_file.py": "x = 1\n" * (MAX_FILE_LINES + 1),
        "validate/reports/script.py": "x = 1\n" * (MAX_FILE_LINES + 1),
    })
    found = oversized(tmp_path)
    assert len(found) == 2, found
    assert "sim/long_function.py:2 method() has 61 lines" in found[0]
    assert found[1] == f"validate/long_file.py: {MAX_FILE_LINES + 1} lines"
