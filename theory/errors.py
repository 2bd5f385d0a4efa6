"""The one exception type for bad user input.

Every layer raises `UserError` for input a user can fix (malformed numbers,
wrong paths, impossible parameters). The `ldyn` entry point turns it into one
line on stderr and exit code 2; library callers can catch it like a ValueError.
"""


class UserError(ValueError):
    """Bad input: the message is one line that says what is wrong and how to fix it."""


class CorruptFile(UserError):
    """A file a run wrote and reads back is damaged (truncated, garbled, empty, or not what it should hold)."""

    def __init__(self, path, problem: str, remedy: str = "delete the folder or rerun with --fresh to start over"):
        self.path = path
        super().__init__(f"{path} is corrupt ({problem}); {remedy}")
