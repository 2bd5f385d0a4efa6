"""The registry of `ldyn validate` commands: each entry adds one subcommand parser."""
PARSERS = []
