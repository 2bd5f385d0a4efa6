"""The one exception type for bad user input.

Every layer raises `UserError` for input a user can fix (malformed numbers,
wrong paths, impossible parameters). The `ldyn` entry point turns it into one
line on stderr and exit code 2; library callers can catch it like a ValueError.
"""


class UserError(ValueError):
    """Bad input: the message is one line that says what is wrong and how to fix it."""
