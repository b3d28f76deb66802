"""The layout's rules, read from the source with ``ast`` (every import counts, those inside
functions too): no import cycles among the product's modules, and the pure core imports
no etcd, libvirt, network, process or thread module and nothing of gridtool outside it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests.harness import ROOT

#: The pure core: each package's rules plus the modules named here (and their packages'
#: ``__init__``). ``gridtool/__init__.py`` is not in it: its public API functions
#: (``gridtool.report``, ``set_desired``) import the pools shell when they are called.
PURE_MODULES = {
    "gridtool.clock",
    *(f"gridtool.registry.{m}" for m in ("keys", "model", "records", "store", "memstore",
                                         "sync", "identity", "keyindex")),
    "gridtool.domains.storage", "gridtool.domains.xml", "gridtool.domains.xen",
    "gridtool.fencing.etcdversions",
    "gridtool.fencing.migration", "gridtool.fencing.recovery", "gridtool.fencing.power",
    "gridtool.storage.pr", "gridtool.storage.sgcli",
    "gridtool.placement.rebalance", "gridtool.placement.index", "gridtool.ha.kinds",
    "gridtool.ha.pacing",
    "gridtool.cli.common.columns",
    *(f"gridtool.pools.{m}" for m in ("flex", "erlang", "queuesim", "feed")),
    *(f"gridtool.health.{m}" for m in ("ranges", "snapshot", "params", "report", "checks",
                                       "render")),
}
#: Besides the pure core, what a pure module may import from the product.
PURE_MAY_IMPORT = {"gridtool.errors"}
#: Modules whose import means I/O: the registry, libvirt, the network, processes, threads.
FORBIDDEN = {"etcd", "pyetcd", "grpc", "libvirt", "paramiko", "socket", "subprocess",
             "threading"}
#: The known exceptions, each with its reason: module -> the imports it may make anyway.
EXCEPTIONS = {
    # A lock, not I/O: the in-memory store is shared by the simulator's manager, agents
    # and watch callbacks, as the etcd store is by a process's threads.
    "gridtool.registry.memstore": {"threading"},
    # The agent config's default path (a constant); gridtool.config reads files only
    # when its functions are called.
    "gridtool.bootstrap.rules": {"gridtool.config"},
}


def product_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module under gridtool/ and agents/."""
    modules = {}
    for base in ("gridtool", "agents"):
        for path in (root / base).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(the product modules ``name`` imports, the top-level names of what else it imports),
    resolved as ``/work/shared/tools/import-cycles`` does: ``from pkg import mod`` names
    the module ``pkg.mod``, a name that is no module falls back to its nearest module."""
    product: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: None if path.name == "__init__.py" else -1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        for imported in names:
            if imported.split(".")[0] not in ("gridtool", "agents"):
                outside.add(imported.split(".")[0])
                continue
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                product.add(imported)
    return product, outside


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    modules = product_modules()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def pure_set(modules: set[str]) -> set[str]:
    """The pure core among ``modules``: each package's rules, the named modules, and the
    packages (``__init__``) they live in, ``gridtool`` itself aside."""
    pure = {m for m in modules if m.rpartition(".")[2] == "rules"} | PURE_MODULES
    packages = {m.rpartition(".")[0] for m in pure} - {"gridtool"}
    return pure | packages


def test_no_import_cycles(graph: dict[str, tuple[set[str], set[str]]]) -> None:
    sorter = graphlib.TopologicalSorter({m: product for m, (product, _) in graph.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_pure_core_is_what_the_test_names(graph: dict[str, tuple[set[str], set[str]]]
                                              ) -> None:
    pure = pure_set(set(graph))
    assert pure <= set(graph), f"named but missing: {sorted(pure - set(graph))}"
    assert {"gridtool.fencing.rules", "gridtool.ha.rules", "gridtool.placement.rules",
            "gridtool.pools.rules", "gridtool.clone.rules", "gridtool.bootstrap.rules",
            "gridtool.auth.rules"} <= pure
    assert set(EXCEPTIONS) <= pure


def test_the_pure_core_does_no_io_and_imports_no_shell(
        graph: dict[str, tuple[set[str], set[str]]]) -> None:
    pure = pure_set(set(graph))
    offenders = {}
    for name in sorted(pure):
        product, outside = graph[name]
        bad = (product - pure - PURE_MAY_IMPORT) | (outside & FORBIDDEN)
        bad -= EXCEPTIONS.get(name, set())
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}


def test_every_exception_is_still_needed(graph: dict[str, tuple[set[str], set[str]]]) -> None:
    for name, allowed in EXCEPTIONS.items():
        product, outside = graph[name]
        assert allowed <= product | outside, f"{name} no longer imports {allowed}: drop it"
