"""Installing next to real projects: version ranges, tested pins, no unused dependency,
imports that work where POSIX-only modules are missing (Windows)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
#: distribution name -> the module it is imported as
IMPORT_NAMES = {"faiss-cpu": "faiss", "scikit-learn": "sklearn"}
#: dependencies the package needs without importing them itself
USED_INDIRECTLY = {"jsonargparse": "LightningCLI parses the callback's typed settings with it"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_dependencies_are_ranges_not_exact_pins():
    exact = [r for r in _project()["dependencies"] if "==" in r]
    assert not exact, f"exact pins in pyproject.toml (move them to constraints.txt): {exact}"


def test_every_dependency_has_a_tested_pin():
    project = _project()
    names = {_name(r) for r in project["dependencies"]}
    names |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    missing = sorted(names - set(_constraints()))
    assert not missing, f"no pin in constraints.txt for {missing}"


def test_no_declared_dependency_is_unused():
    sources = "\n".join(p.read_text() for p in (ROOT / "lightning_influence").rglob("*.py"))
    unused = []
    for requirement in _project()["dependencies"]:
        name = _name(requirement)
        if name in USED_INDIRECTLY:
            continue
        module = IMPORT_NAMES.get(name, name)
        if not re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", sources, re.MULTILINE):
            unused.append(name)
    assert not unused, f"declared but never imported by the package: {unused}"


def test_install_commands_use_the_constraints():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt" in readme.split("```")[1]
    assert "-c constraints.txt" in ci


def test_import_works_without_posix_only_modules():
    code = (
        "import sys; sys.modules['resource'] = None\n"
        "import torch, lightning_influence as li\n"
        "from lightning_influence.unlearn.report import peak_memory\n"
        "print(peak_memory(torch.device('cpu')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "unavailable" in out.stdout
