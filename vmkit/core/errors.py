"""The root of the exceptions vmkit raises for a caller's mistakes.

Modelled faults (page faults, VM exits, OOM kills) are never raised: they are
returned and recorded. Only misuse of the library raises, and the message says
how to fix it (STYLE.md, "Data, errors, determinism").
"""


class VmkitError(Exception):
    """A caller's mistake; the message says how to fix it."""


def expect_int(value, name: str, *, minimum: int | None = 0, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in range (bools refused); raise VmkitError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise VmkitError(f"{name} must be an int, not {value!r}")
    if minimum is not None and value < minimum:
        raise VmkitError(f"{name} must be >= {minimum:,}, not {value:,}")
    if maximum is not None and value > maximum:
        raise VmkitError(f"{name} must be <= {maximum:,}, not {value:,}")
    return value
