"""The root of the exceptions vmkit raises for a caller's mistakes.

Modelled faults (page faults, VM exits, OOM kills) are never raised: they are
returned and recorded. Only misuse of the library raises, and the message says
how to fix it (STYLE.md, "Data, errors, determinism").
"""


class VmkitError(Exception):
    """A caller's mistake; the message says how to fix it."""
