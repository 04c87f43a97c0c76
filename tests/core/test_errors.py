"""vmkit.core.errors: the shared argument checks."""

import pytest

from vmkit.core import VmkitError, expect_int


@pytest.mark.parametrize("value", [1.5, "3", None, True])
def test_expect_int_refuses_non_integers(value):
    """Floats, strings, None and bools are refused with a VmkitError naming the argument."""
    with pytest.raises(VmkitError, match="count must be an int"):
        expect_int(value, "count")


def test_expect_int_checks_the_range():
    """Values outside [minimum, maximum] are refused; values inside come back unchanged."""
    assert expect_int(5, "n", minimum=1, maximum=9) == 5
    with pytest.raises(VmkitError, match=">= 1"):
        expect_int(0, "n", minimum=1)
    with pytest.raises(VmkitError, match="<= 9"):
        expect_int(10, "n", maximum=9)
