"""A package's public names, loaded on first use: each layer's `__init__` names its API without importing it,
so `import learning_dynamics.<layer>` (and `ldyn --help`) stays light while `from learning_dynamics.sim import
read_json` works."""
import importlib


def lazy_exports(package: str, exports: dict):
    """(__getattr__, __dir__) for a package whose public `name` lives in its module `exports[name]`."""
    def getattr_(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def dir_():
        return sorted(exports)

    return getattr_, dir_
