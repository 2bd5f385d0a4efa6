"""`ldyn sim ...`: numeric experiments (free logits, a digit classifier, a toy LM)."""

from learning_dynamics.sim import experiments


def register(subparsers) -> None:
    sim = subparsers.add_parser(
        "sim", help="numeric experiments: free logits, digits classifier, toy language model",
        description="Each experiment writes PNG figures and a JSON summary to --out.")
    sub = sim.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
    # Each experiment module adds its own parser; see sim/<name>.py::add_parser.
    for add_parser in experiments.PARSERS:
        add_parser(sub)
