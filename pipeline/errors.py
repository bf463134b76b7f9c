"""The two kinds of failure the CLI distinguishes (exit code 2 and 1)."""


class UsageError(Exception):
    """Bad arguments or configuration: the user must change the command (exit 2)."""


class LoadError(Exception):
    """The data or the commit failed: nothing was committed (exit 1)."""
