"""With CI=true a skipped test fails the run (tests/harness/strict_ci.py), and the suite's
own pytest configuration is strict: skip reasons shown, markers registered, a timeout."""

from __future__ import annotations

import configparser
import re

import pytest

from tests.harness import ROOT
from tests.harness.strict_ci import in_ci

# A real tier as the suite writes one: its fixture skips where the tier cannot run.
REAL_TIER = """
import pytest

@pytest.fixture
def qemu_hosts():
    pytest.skip("QEMU cannot run here: no qemu-system-x86_64")

@pytest.mark.qemu
def test_boots(qemu_hosts):
    pass

def test_pure():
    pass
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``run(ci, *args)``: pytest in a subprocess with the plugin, CI set or unset."""
    pytester.makeini("[pytest]\nmarkers =\n    qemu: real QEMU guests\n")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def run(ci: bool, *args: str) -> pytest.RunResult:
        if ci:
            monkeypatch.setenv("CI", "true")
        else:
            monkeypatch.delenv("CI", raising=False)
        return pytester.runpytest_subprocess("-p", "tests.harness.strict_ci",
                                             "-p", "no:cacheprovider", *args)

    return run


def test_a_skipped_real_tier_fails_the_run_in_ci(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_real=REAL_TIER)
    result = run(True)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*CI=true: 1 skipped test(s) fail this run*",
        "SKIPPED IN CI test_real.py::test_boots: QEMU cannot run here: no qemu-system-x86_64",
    ])


def test_outside_ci_a_skip_is_only_a_skip(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_real=REAL_TIER)
    result = run(False)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert "SKIPPED IN CI" not in result.stdout.str()


def test_a_skipped_module_fails_the_run_in_ci(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_netns="""
        import pytest
        pytest.skip("network namespaces unavailable: not root", allow_module_level=True)
        """, test_other="def test_pure():\n    pass\n")
    result = run(True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED IN CI test_netns.py: network namespaces unavailable*"])


def test_an_allowed_reason_and_an_xfail_do_not_fail_ci(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makeini("[pytest]\nmarkers =\n    qemu: real QEMU guests\n"
                     "ci_allowed_skips =\n    no qemu-system-x86_64\n")
    pytester.makepyfile(test_real=REAL_TIER + """
@pytest.mark.xfail(reason="known", strict=True)
def test_known_bug():
    assert False
""")
    result = run(True)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_a_failure_stays_a_failure_and_deselected_tests_are_no_skips(
        pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_real=REAL_TIER + "\ndef test_broken():\n    assert False\n")
    assert run(True).ret == pytest.ExitCode.TESTS_FAILED
    assert run(True, "-m", "not qemu", "-k", "not broken").ret == pytest.ExitCode.OK


def test_what_counts_as_ci() -> None:
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"}) and in_ci({"CI": " True "})
    assert not in_ci({}) and not in_ci({"CI": ""}) and not in_ci({"CI": "false"})


def test_the_suite_runs_strict(pytestconfig: pytest.Config) -> None:
    """This suite's own configuration: skip reasons reported, markers registered, a
    timeout on every test, the CI plugin loaded, CI=true set by CI's entry point."""
    addopts = pytestconfig.getini("addopts")
    assert "--strict-markers" in addopts
    assert any(re.fullmatch(r"-r\w*s\w*", opt) for opt in addopts), addopts
    assert float(pytestconfig.getini("timeout")) >= 300
    assert pytestconfig.pluginmanager.has_plugin("timeout")
    assert pytestconfig.pluginmanager.has_plugin("strict-ci")
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert re.search(r"^pytest-timeout==[\d.]+$", setup["options.extras_require"]["test"],
                     flags=re.M)
    assert 'export CI="${CI:-true}"' in (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
