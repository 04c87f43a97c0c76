"""Modules stay short enough to read in one sitting (STYLE.md, after 500 Lines or Less)."""

from pathlib import Path

import pytest

LIMIT = 750  # lines; split a module by concept before it grows past this
MODULES = sorted((Path(__file__).parent.parent / "vmkit").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_module_is_short(path):
    """Every vmkit module has at most LIMIT lines."""
    assert len(path.read_text().splitlines()) <= LIMIT
