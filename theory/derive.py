"""`ldyn theory derive`: print every module's sympy derivations (pretty text or LaTeX).

This is the one theory module that imports sympy on import (through the
derivations it collects); the numeric modules stay light.
"""
import importlib

MODULES = ("softmax", "decomposition", "residuals", "squeeze_derivation", "flow")


def all_derivations():
    out = []
    for name in MODULES:
        out.extend(importlib.import_module(f"learning_dynamics.theory.{name}").derivations())
    return out


def print_derivations(latex: bool = False) -> None:
    # a reader that leaves (`ldyn theory derive | head`) is handled where every command's output is (ldyn.main)
    for derivation in all_derivations():
        print(derivation.render(latex=latex))
        print()
