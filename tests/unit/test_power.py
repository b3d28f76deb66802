"""Power fencing through the fence-agent interface: the pure protocol
(gridtool.fencing.power) and the runner (gridtool.fencing.agentrun) against real agent
processes (small shell scripts speaking the protocol)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridtool.fencing import agentrun
from gridtool.fencing.power import (
    Outcome,
    Power,
    PowerPolicy,
    Run,
    check_outcome,
    off_progress,
    parse_params,
    power_of,
    stdin_text,
)
from gridtool.registry.fenceagents import FenceAgentConf

FAST = PowerPolicy(timeout=2.0, power_wait=3.0, poll=0.05)


# --------------------------------------------------------------------------- pure


def test_params_are_key_value_and_secrets_are_refused() -> None:
    assert parse_params(["ip=10.0.0.1", "lanplus=1", "passwd_file=/etc/x"]) == {
        "ip": "10.0.0.1", "lanplus": "1", "passwd_file": "/etc/x"}
    for bad, why in [("ip", "want key=value"), ("IP=1", "want key=value"),
                     ("password=s3cret", "secrets are not stored"),
                     ("passwd=s3cret", "secrets are not stored"),
                     ("action=off", "set by gridtool"), ("ip=a\nb", "newlines")]:
        with pytest.raises(ValueError, match=why):
            parse_params([bad])


def test_stdin_is_sorted_key_value_lines_then_the_action() -> None:
    text = stdin_text({"plug": "hv1", "ip": "10.0.0.1", "passwd_file": "/x"}, "off", "pw")
    assert text == "ip=10.0.0.1\nplug=hv1\npassword=pw\naction=off\n"
    with pytest.raises(ValueError, match="unknown fence action"):
        stdin_text({}, "explode")


@pytest.mark.parametrize(("code", "power"), [(0, Power.ON), (2, Power.OFF), (1, Power.UNKNOWN),
                                              (None, Power.UNKNOWN)])
def test_status_exit_codes(code: int | None, power: Power) -> None:
    assert power_of(Run("status", code)) is power


def test_off_then_status_until_off_within_power_wait() -> None:
    off = Run("off", 0)
    assert off_progress([off], 0.1, FAST) is None
    assert off_progress([off, Run("status", 0)], 1.0, FAST) is None  # still on: poll again
    done = off_progress([off, Run("status", 0), Run("status", 2)], 1.5, FAST)
    assert done == Outcome(True, "power off confirmed by status after 1.5 s", 1.5)
    late = off_progress([off, Run("status", 0)], 3.0, FAST)
    assert late == Outcome(False, "power still on 3.0 s after off", 3.0)


def test_a_failed_or_hung_off_or_status_fails_the_fence() -> None:
    failed = off_progress([Run("off", 1, stderr="Unable to connect\n")], 0.2, FAST)
    assert failed == Outcome(False, "fence agent off failed (exit 1): Unable to connect", 0.2)
    hung = off_progress([Run("off", None, seconds=2.0)], 2.0, FAST)
    assert hung is not None and not hung.ok and "hung on off" in hung.message
    hung_status = off_progress([Run("off", 0), Run("status", None, seconds=2.0)], 2.1, FAST)
    assert hung_status is not None and "hung on status" in hung_status.message


def test_check_is_monitor_then_status() -> None:
    assert check_outcome(Run("monitor", 0), Run("status", 2)).message == "monitor ok; power off"
    assert not check_outcome(Run("monitor", 1), None).ok
    assert not check_outcome(Run("monitor", 0), Run("status", 1)).ok


# --------------------------------------------------------------------------- runner

#: A fence agent with a power state in a file beside it; it logs its stdin.
AGENT = """#!/bin/sh
here=$(dirname "$0")
cat > "$here/stdin"
action=$(sed -n 's/^action=//p' "$here/stdin")
case "$action" in
  off) echo off > "$here/power" ;;
  on) echo on > "$here/power" ;;
  monitor) ;;
  status) [ "$(cat "$here/power")" = off ] && { echo "Status: OFF"; exit 2; }
          echo "Status: ON" ;;
  *) exit 1 ;;
esac
"""


def agent(tmp_path: Path, script: str = AGENT, **params: str) -> FenceAgentConf:
    path = tmp_path / "fence_test"
    path.write_text(script)
    path.chmod(0o755)
    (tmp_path / "power").write_text("on\n")
    return FenceAgentConf("hv1", str(path), dict(params))


def test_power_off_runs_off_then_status_and_passes_the_password_file_on_stdin(
        tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    outcome = agentrun.power_off(agent(tmp_path, ip="10.0.0.1", passwd_file=str(secret)), FAST)
    assert outcome.ok and outcome.message.startswith("power off confirmed by status")
    stdin = (tmp_path / "stdin").read_text()  # the last run: the status
    assert stdin == "ip=10.0.0.1\npassword=s3cret\naction=status\n"


def test_a_hung_agent_is_killed_with_its_children_and_fails(tmp_path: Path) -> None:
    hang = "#!/bin/sh\n(echo $$ > \"$0.pid\"; exec sleep 600) &\nwait\n"
    outcome = agentrun.power_off(agent(tmp_path, hang), PowerPolicy(timeout=0.5))
    assert not outcome.ok and "hung on off: killed after" in outcome.message
    child = int(Path(tmp_path / "fence_test.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_an_agent_that_never_reports_off_fails_after_power_wait(tmp_path: Path) -> None:
    stuck = AGENT.replace("off) echo off", "off) echo on")
    outcome = agentrun.power_off(agent(tmp_path, stuck), FAST)
    assert not outcome.ok and outcome.message.startswith("power still on")


def test_a_missing_agent_or_password_file_is_a_failed_fence_not_a_crash(tmp_path: Path) -> None:
    missing = agentrun.power_off(FenceAgentConf("hv1", "fence_no_such_agent_here"), FAST)
    assert not missing.ok and "not found" in missing.message
    no_secret = agent(tmp_path, passwd_file=str(tmp_path / "absent"))
    assert not agentrun.power_off(no_secret, FAST).ok
    assert "cannot read passwd_file" in agentrun.check(no_secret, FAST).message


def test_check_runs_monitor_and_status_never_off(tmp_path: Path) -> None:
    conf = agent(tmp_path)
    outcome = agentrun.check(conf, FAST)
    assert outcome.ok and outcome.message == "monitor ok; power on"
    assert (tmp_path / "power").read_text() == "on\n"


def test_a_name_is_found_beside_this_python(tmp_path: Path) -> None:
    assert agentrun.resolve("fence_gridtool_lab").endswith("/fence_gridtool_lab")
