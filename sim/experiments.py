"""The registry of `ldyn sim` experiments: each entry adds one subcommand parser."""
PARSERS = []
