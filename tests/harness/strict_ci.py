"""A pytest plugin: with ``CI=true`` a skipped test fails the run.

The real tiers (QEMU guests, network namespaces, etcd, libvirtd) skip where they cannot
run, which on a developer's laptop is what one wants, and in CI hides that the claims
they check were never checked. In CI every skip therefore turns the run's exit status
into 1 (tests failed), unless its reason contains one of the ``ci_allowed_skips`` lines
of the pytest configuration (setup.cfg, each with why it may skip in CI). The skipped
tests are listed at the end of the run. Outside CI the plugin only collects.

Loaded by ``tests/conftest.py``; ``pytest -p tests.harness.strict_ci`` loads it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

CI_VALUES = ("true", "1", "yes")
ALLOW_INI = "ci_allowed_skips"


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """``CI`` is set to a true value (``true``, as CI systems set it; ``1``; ``yes``)."""
    return environ.get("CI", "").strip().lower() in CI_VALUES


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The reason pytest recorded for a skip (``Skipped: `` prefix removed)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class StrictCI:
    """Collects the skips of a session; in CI, fails the session when one is not allowed."""

    def __init__(self, allowed: list[str], ci: bool) -> None:
        self.allowed = [line.strip() for line in allowed if line.strip()]
        self.ci = ci
        self.refused: list[tuple[str, str]] = []  # (node id, reason)

    def _seen(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return  # an xfail is reported as skipped, but it ran
        reason = skip_reason(report)
        if not any(allowed in reason for allowed in self.allowed):
            self.refused.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._seen(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._seen(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.ci and self.refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not (self.ci and self.refused):
            return
        terminalreporter.write_sep(
            "=", f"CI=true: {len(self.refused)} skipped test(s) fail this run", red=True)
        for nodeid, reason in self.refused:
            terminalreporter.write_line(f"SKIPPED IN CI {nodeid}: {reason}")
        terminalreporter.write_line(
            f"a real tier must run in CI; a skip that may stay needs its reason in "
            f"{ALLOW_INI} (setup.cfg), with why")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(ALLOW_INI, "skip reasons (substrings) that do not fail a run with CI=true",
                  type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(StrictCI(config.getini(ALLOW_INI), in_ci()), "strict-ci")
