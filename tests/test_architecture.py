"""Tests for ARCHITECTURE.md's dependency rules and "nothing runs at import time"."""

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vmkit"

DRAWING = {"matplotlib", "networkx", "ipywidgets", "IPython"}
EMULATION = {"unicorn", "keystone", "capstone"}
HEAVY = DRAWING | EMULATION

# ARCHITECTURE.md, "Dependency rules": the vmkit packages each package may import.
ALLOWED = {
    "core": {"core"},
    "cpu": {"core", "cpu"},
    "memory": {"core", "cpu", "memory"},
    "io": {"core", "cpu", "memory", "io"},
    "containers": {"core", "containers"},
    "swarm": {"core", "containers", "swarm"},
}


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    """Every module under vmkit/, by dotted name, with its file."""
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    return {_module_name(p): p for p in files}


MODULES = _modules()


def _package(name):
    """The vmkit subpackage a dotted name belongs to (``cpu``), or None for ``vmkit`` itself."""
    parts = name.split(".")
    if parts[0] != "vmkit" or len(parts) < 2 or not (PACKAGE / parts[1]).is_dir():
        return None
    return parts[1]


def _imports(name):
    """Every absolute name a module imports, at module level or inside functions."""
    path = MODULES[name]
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def _third_party(name):
    """The top-level names of the non-stdlib, non-vmkit modules a module imports."""
    tops = {imported.split(".")[0] for imported in _imports(name)}
    return tops - set(sys.stdlib_module_names) - {"vmkit"}


def _vmkit_packages(name):
    """The vmkit subpackages a module imports."""
    return {_package(imported) for imported in _imports(name)} - {None}


def _in(package):
    return sorted(name for name in MODULES if _package(name) == package)


MODELS = sorted(name for name in MODULES if _package(name) != "viz")


@pytest.mark.parametrize("name", MODELS)
def test_only_viz_imports_drawing_libraries(name):
    """Only vmkit.viz imports matplotlib, networkx, ipywidgets or IPython."""
    assert _third_party(name) & DRAWING == set()


@pytest.mark.parametrize("name", _in("core"))
def test_core_imports_nothing_else_from_vmkit(name):
    """vmkit.core imports nothing from vmkit but vmkit.core."""
    assert _vmkit_packages(name) <= {"core"}


@pytest.mark.parametrize("name", _in("core"))
def test_core_imports_only_the_standard_library(name):
    """vmkit.core imports no third-party package."""
    assert _third_party(name) == set()


@pytest.mark.parametrize("name", _in("cpu"))
def test_cpu_imports_only_core_cpu_and_the_emulation_tools(name):
    """vmkit.cpu imports vmkit.core, vmkit.cpu, unicorn, keystone and capstone, nothing else."""
    assert _vmkit_packages(name) <= ALLOWED["cpu"]
    assert _third_party(name) <= EMULATION


LATER = [name for package in ("memory", "io", "containers", "swarm") for name in _in(package)]


@pytest.mark.parametrize("name", LATER)
def test_later_chapters_import_only_what_the_rules_allow(name):
    """memory, io, containers and swarm import only the vmkit packages ARCHITECTURE.md allows."""
    assert _vmkit_packages(name) <= ALLOWED[_package(name)]


@pytest.mark.parametrize("name", MODELS)
def test_models_never_import_viz(name):
    """No model module imports vmkit.viz."""
    assert "viz" not in _vmkit_packages(name)


@pytest.mark.parametrize("name", [n for n in MODULES if _package(n) != "swarm"])
def test_nothing_imports_swarm(name):
    """No module outside vmkit.swarm imports vmkit.swarm."""
    assert "swarm" not in _vmkit_packages(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    """Every module under vmkit/ imports without error."""
    assert importlib.import_module(name).__name__ == name


@pytest.fixture(scope="module")
def fresh_import(tmp_path_factory):
    """Import every model module in a fresh interpreter, in an empty directory."""
    cwd = tmp_path_factory.mktemp("fresh_import")
    script = (
        "import importlib, json, sys\n"
        f"for name in {MODELS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout)), sorted(p.name for p in cwd.iterdir())


def test_importing_models_loads_no_emulator_and_no_plotting(fresh_import):
    """Importing the model modules loads neither unicorn, keystone, capstone nor plotting."""
    loaded, _ = fresh_import
    assert loaded & HEAVY == set()


def test_importing_models_creates_no_file(fresh_import):
    """Importing every model module creates no file in the working directory."""
    _, created = fresh_import
    assert created == []
