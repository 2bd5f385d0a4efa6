"""The registry of `ldyn sim` experiments: each entry adds one subcommand parser."""
PARSERS = []

from learning_dynamics.sim import digits_cli  # noqa: E402  (imports torch lazily)

PARSERS.append(digits_cli.add_parser)
from learning_dynamics.sim import lm_cli  # noqa: E402  (imports torch lazily)

PARSERS.append(lm_cli.add_parser)
from learning_dynamics.sim import logits_cli  # noqa: E402  (numpy only)

PARSERS.append(logits_cli.add_parser)
