"""One exception type for everything a user can cause.

The CLI prints its message as one line and exits non-zero; tracebacks only with `--debug`.
"""


class SpecKitError(Exception):
    """A user-facing error: the message names the thing, what was expected and the fix."""


class DiskFull(SpecKitError):
    """A write failed on a full disk: a caller that knows a better way on (training's --resume)
    says its own."""
