"""The one exception type for mistakes a user can fix.

Every bad input (unknown plug-in, bad override, invalid Arch, missing data folder,
infeasible budget) raises :class:`NASError` with a single line that says what was
wrong and what is accepted. The CLI prints that line and exits with code 2; library
users catch it like any other exception.
"""

from __future__ import annotations

#: Exit code of the CLI for a user error (bad input), as opposed to 1 for a crash.
USER_ERROR_EXIT_CODE = 2


class NASError(ValueError):
    """A user error: bad input that the user can correct. The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def one_of(values) -> str:
    """Format accepted values for an error message: ``'a', 'b', 'c'``."""
    values = list(values)
    if not values:
        return "(none registered)"
    return ", ".join(repr(v) for v in values)
