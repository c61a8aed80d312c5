"""The one exception type for mistakes a user can make.

Every error a user can cause (bad path, malformed dataset, NaN, space mismatch,
corrupt checkpoint, unknown config key) raises :class:`SimagentsError` with a
message that names the file or field and says how to fix it. The CLI prints the
message on one line and exits with status 2.
"""

from __future__ import annotations


class SimagentsError(Exception):
    """A problem with the user's input: the message names the culprit and the fix.

    Example:

    >>> from simagents import SimagentsError, load_dataset
    >>> try:
    ...     load_dataset("no/such/dataset")
    ... except SimagentsError as error:
    ...     print("no/such/dataset" in str(error))
    True
    """


def check_seed(seed: int, where: str) -> None:
    """Refuse a seed numpy's and gymnasium's generators cannot take: they need a whole number, 0 or more."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SimagentsError(f"{where}: seed must be a whole number, 0 or more, got {seed!r}")
