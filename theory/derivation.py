"""A derivation as data: a title and a list of (caption, sympy object) steps.

Each theory module exposes `derivations() -> list[Derivation]`; `theory.derive`
prints them all (pretty text or LaTeX), so what `ldyn theory derive` shows is
exactly the sympy objects the exported numpy functions were generated from.
"""
from dataclasses import dataclass, field
# sympy loads inside the functions that need them, so importing this module stays light (ldyn --help)


@dataclass(frozen=True)
class Derivation:
    title: str
    steps: tuple = field(default_factory=tuple)  # ((caption: str, expr: sympy.Basic | None), ...)

    def render(self, latex: bool = False) -> str:
        import sympy

        lines = [self.title, "=" * len(self.title)]
        for caption, expr in self.steps:
            lines.append(f"  {caption}")
            if expr is None:
                continue
            text = sympy.latex(expr) if latex else sympy.pretty(expr, use_unicode=True)
            lines.extend("      " + row for row in text.splitlines())
        return "\n".join(lines)
