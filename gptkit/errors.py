"""User-facing errors (`GptkitError`, `require`): the one exception type every layer raises for bad input.

Anything a user can cause (a bad flag, a missing file, a prompt that is too long) raises
`GptkitError` with a message that names the problem and the fix. The CLI prints the message and
exits non-zero without a traceback; Python callers can catch it like any other exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class GptkitError(Exception):
    """An error caused by input the user can correct."""


def require(condition: bool, message: str) -> None:
    """Raise `GptkitError(message)` unless `condition` holds."""
    if not condition:
        raise GptkitError(message)


def require_known_fields(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Refuse keys of `data` that are not fields of dataclass `cls`, listing the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    require(not unknown, f"{what}: unknown field(s) {unknown}; known fields are {sorted(known)}")
