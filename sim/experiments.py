"""The registry of `ldyn sim` experiments: each entry adds one subcommand parser."""
PARSERS = []

from learning_dynamics.sim import digits  # noqa: E402  (imports torch lazily)

PARSERS.append(digits.add_parser)
from learning_dynamics.sim import lm  # noqa: E402  (imports torch lazily)

PARSERS.append(lm.add_parser)
from learning_dynamics.sim import logits  # noqa: E402  (numpy only)

PARSERS.append(logits.add_parser)
