"""The kinds of failure the CLI distinguishes: usage (exit 2), a failed load (exit 1), an interrupt (128 + signal)."""


class UsageError(Exception):
    """Bad arguments or configuration: the user must change the command (exit 2)."""


class LoadError(Exception):
    """The data or the commit failed: nothing was committed (exit 1)."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (what AWS Batch sends a terminated job): a BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)
