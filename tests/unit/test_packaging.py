"""What the installed package ships (setup.cfg's package discovery, as setuptools reads
it): the product only, never the test harness under tests/harness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from setuptools.config.setupcfg import read_configuration

from tests.harness import ROOT

HARNESS = ROOT / "tests" / "harness"


def shipped_modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Dotted module name -> file, for every module of every package the wheel ships."""
    monkeypatch.chdir(ROOT)  # setuptools resolves ``find:`` from the working directory
    packages = read_configuration(ROOT / "setup.cfg")["options"]["packages"]
    modules = {}
    for package in packages:
        for path in (ROOT / package.replace(".", "/")).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_only_the_product_packages_are_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = shipped_modules(monkeypatch)
    assert {"gridtool", "gridtool.cli.main", "gridtool.lab.lab", "agents.main"} <= set(modules)
    assert {name.split(".")[0] for name in modules} == {"gridtool", "agents"}


def test_no_harness_module_is_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    harness = {path.stem for path in HARNESS.glob("*.py")} - {"__init__"}
    assert {"chaos", "checker", "testbed", "qemu_testbed"} <= harness
    shipped = {name.rsplit(".", 1)[-1] for name in shipped_modules(monkeypatch)}
    assert not harness & shipped


def test_the_product_never_imports_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    offenders = {name: sorted(n for n in imported_names(path) if n.split(".")[0] == "tests")
                 for name, path in shipped_modules(monkeypatch).items()}
    assert {name: found for name, found in offenders.items() if found} == {}
