"""Tests for vmkit.core.claims: a notebook's claim, checked each time it runs."""

import pytest

from vmkit.core import check


def test_true_claim_returns_ticked_text():
    """check(True, text) returns the text prefixed with a tick mark."""
    result = check(1 + 1 == 2, "une addition")

    assert result == "✔ une addition"


def test_false_claim_raises_naming_it():
    """check(False, text) raises AssertionError whose message quotes the claim."""
    with pytest.raises(AssertionError, match="une affirmation fausse"):
        check(False, "une affirmation fausse")


def test_truthiness_is_enough():
    """Any truthy value counts as a claim that holds; a falsy one does not."""
    assert check([0], "non vide").startswith("✔")
    with pytest.raises(AssertionError):
        check([], "vide")
