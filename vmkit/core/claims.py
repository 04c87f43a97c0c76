"""``check``: a notebook's claim, verified each time the notebook runs.

Notebooks state facts in prose and then check them in a cell, so strict nbval
re-verifies the course's content on every run.
"""


def check(claim: bool, text: str) -> str:
    """Return ``"✔ " + text`` when the claim holds; raise AssertionError otherwise."""
    if not claim:
        raise AssertionError(f"claim does not hold: {text}")
    return f"✔ {text}"
