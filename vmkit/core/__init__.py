"""Shared vocabulary of every vmkit model: errors, claims and exercises.

``core`` imports nothing else from vmkit (ARCHITECTURE.md, dependency rules).
"""

from vmkit.core.errors import VmkitError, expect_int
from vmkit.core.claims import check
from vmkit.core.exercise import Exercise, Feedback

__all__ = ["VmkitError", "expect_int", "check", "Exercise", "Feedback"]
