"""User-facing errors.

Anything a user can cause (a bad flag, a missing file, a prompt that is too long) raises
`GptkitError` with a message that names the problem and the fix. The CLI prints the message and
exits non-zero without a traceback; Python callers can catch it like any other exception.
"""

from __future__ import annotations


class GptkitError(Exception):
    """An error caused by input the user can correct."""


def require(condition: bool, message: str) -> None:
    """Raise `GptkitError(message)` unless `condition` holds."""
    if not condition:
        raise GptkitError(message)
