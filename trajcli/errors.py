"""The error family of trajcli: one line saying what failed, one hint, one exit code.

Exit codes: 0 success, 1 bad data or a failed run, 2 bad usage.
"""

from __future__ import annotations


class TrajcliError(Exception):
    """A known failure: printed as one line plus a hint, never with a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class DataError(TrajcliError):
    """The checkpoints (or other inputs) are missing, damaged or inconsistent."""

    exit_code = 1


class UsageError(TrajcliError):
    """The command line asks for something that cannot be done."""

    exit_code = 2


class Terminated(BaseException):
    """Raised by trajcli's SIGTERM handler, so that a terminated command cleans up (finally blocks,
    temp files) and exits 130 as it does for Ctrl-C."""


def raise_terminated(signum, frame) -> None:
    raise Terminated
