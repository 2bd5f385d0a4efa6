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
    import os
    import sys

    try:
        for derivation in all_derivations():
            print(derivation.render(latex=latex))
            print()
        sys.stdout.flush()
    except BrokenPipeError:
        # `ldyn theory derive | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
