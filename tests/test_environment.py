"""Tests for the build files: pyproject.toml, environment.yml, the Makefile, .ci/run, README."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _conda_dependencies():
    """The list items under ``dependencies:`` in environment.yml, without PyYAML."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("dependencies:") + 1
    items = []
    for line in lines[start:]:
        if line and not line[0].isspace():
            break
        if line.startswith("  - "):
            items.append(line[4:].split(" #")[0].strip())
    return items


def _pip_dependencies():
    """The list items under ``- pip:`` in environment.yml, without PyYAML."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:") + 1
    items = []
    for line in lines[start:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line.startswith("      - "):
            break
        items.append(stripped[2:].split(" #")[0].strip())
    return items


def _make_targets():
    """Each Makefile target with its prerequisites."""
    targets = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z_][\w.-]*)\s*:(?!=)(.*)$", line)
        if match:
            targets[match.group(1)] = match.group(2).split()
    return targets


def test_environment_yml_and_pyproject_name_the_same_requirements():
    """environment.yml's pip list minus ``-e .`` is exactly pyproject's runtime + dev deps."""
    project = _pyproject()["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    pinned = set(_pip_dependencies()) - {"-e ."}
    assert pinned == declared


def test_environment_yml_pins_python_3_11_exactly():
    """environment.yml asks conda for ``python=3.11``, not a range."""
    pythons = [d for d in _conda_dependencies() if d.startswith("python")]
    assert pythons == ["python=3.11"]


def test_environment_yml_installs_the_project_editable():
    """environment.yml installs vmkit itself with ``-e .`` (repo2docker will not)."""
    assert "-e ." in _pip_dependencies()


def test_makefile_targets_depend_on_the_venv_stamp():
    """``make lab``, ``make test`` and ``make bench`` each depend on the venv stamp."""
    targets = _make_targets()
    for name in ("lab", "test", "bench"):
        assert "$(STAMP)" in targets.get(name, []), name


def test_ci_runs_make_test():
    """.ci/run calls ``make test``, the command the README gives."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines


def test_ci_propagates_pytest_exit_status():
    """.ci/run uses ``set -e`` and ``pipefail`` and never masks a failure with ``|| true``."""
    text = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^set -\w*e\w*", text, re.M)
    assert "pipefail" in text
    assert "|| true" not in text and "|| :" not in text


def test_readme_gives_make_lab_and_make_test():
    """README.md gives the two commands, ``make lab`` and ``make test``."""
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme
    assert "make test" in readme
