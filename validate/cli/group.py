"""`ldyn validate ...`: real-model finetuning with probe tracking, checks and reports."""

from learning_dynamics.validate.cli import commands


def register(subparsers) -> None:
    validate = subparsers.add_parser(
        "validate", help="finetune a real LLM (SFT, DPO, ...) and check theory's predictions",
        description="Real-model runs, first-order checks and reports.")
    sub = validate.add_subparsers(dest="validate_command", required=True, metavar="COMMAND")
    for add_parser in commands.PARSERS:
        add_parser(sub)
