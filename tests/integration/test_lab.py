"""``gridtool lab up/status/down`` as a user runs them: everything it starts, it stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gridtool.lab.procs import cmdline


def gridtool(lab_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "GRIDTOOL_LAB_DIR": str(lab_dir)})


def test_lab_up_json_then_down_leaves_nothing_running(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    up = gridtool(lab_dir, "lab", "up", "--hosts", "2", "--guests", "3",
                  "--etcd-members", "3", "--json")
    try:
        assert up.returncode == 0, up.stderr
        body = json.loads(up.stdout)
        assert body["lab_dir"] == str(lab_dir) and len(body["etcd_endpoints"]) == 3
        assert [h["name"] for h in body["hosts"]] == ["hv1", "hv2"]
        # Commands find the user's own running lab by themselves (no flags)...
        guests = json.loads(gridtool(lab_dir, "guest", "list", "--json").stdout)["guests"]
        assert len(guests) == 6
        # ... and through the config `lab up` names (what it prints to export).
        assert body["config"] == str(lab_dir / "gridtool.conf")
        listed = gridtool(Path("/nonexistent"), "--config", body["config"], "host", "list",
                          "--json")
        assert len(json.loads(listed.stdout)["hosts"]) == 2, listed.stderr
        for path in (lab_dir, lab_dir / "lab.json", lab_dir / "gridtool.conf"):
            assert path.stat().st_mode & 0o022 == 0 and path.stat().st_uid == os.geteuid()
        status = json.loads(gridtool(lab_dir, "registry", "status", "--json").stdout)
        assert sum(e["leader"] for e in status["endpoints"]) == 1
        state = json.loads(gridtool(lab_dir, "lab", "status", "--json").stdout)["lab"]
        pids = [m["pid"] for m in state["etcd"]["members"]]
        pids += [h[k] for h in state["hosts"] for k in ("agent_pid", "libvirtd_pid")]
        pids.append(state["keeper_pid"])
        assert all(cmdline(p) for p in pids)
    finally:
        down = gridtool(lab_dir, "lab", "down")
    assert down.returncode == 0, down.stderr
    assert "stopped 8 processes" in down.stderr  # 3 etcd, 2 libvirtd, 2 agents, keeper
    assert not any(cmdline(p) for p in pids)
    assert gridtool(lab_dir, "lab", "status").returncode == 3


def fence_lab(lab_dir: Path, *lines: str) -> subprocess.CompletedProcess:
    """Run the lab fence agent as a fence daemon does: key=value lines on its stdin."""
    agent = Path(sys.executable).parent / "fence_gridtool_lab"
    return subprocess.run([str(agent)], input="".join(f"{line}\n" for line in lines),
                          capture_output=True, text=True, timeout=60)


def test_lab_up_gives_every_host_the_lab_fence_agent_which_powers_it_off_and_on(
        tmp_path: Path) -> None:
    """`lab up` configures fence_gridtool_lab for every host; `host fence-agent test` runs
    its monitor and status; its off is `lab power-off` (agent and guests gone, status
    exit 2), its on `lab power-on`; bad input is one line and a distinct exit code."""
    lab_dir = tmp_path / "lab"
    up = gridtool(lab_dir, "lab", "up", "--hosts", "2", "--guests", "1", "--json")
    try:
        assert up.returncode == 0, up.stderr
        shown = json.loads(gridtool(lab_dir, "host", "fence-agent", "show", "--json").stdout)
        assert [(a["host"], a["agent"], a["params"]) for a in shown["fence_agents"]] == [
            (h, "fence_gridtool_lab", {"lab_dir": str(lab_dir), "plug": h})
            for h in ("hv1", "hv2")]
        tested = gridtool(lab_dir, "host", "fence-agent", "test", "hv1")
        assert tested.returncode == 0 and "monitor ok; power on" in tested.stderr, tested.stderr
        base = (f"lab_dir={lab_dir}", "plug=hv1")
        assert fence_lab(lab_dir, *base, "action=list").stdout == "hv1,hv1\nhv2,hv2\n"
        off = fence_lab(lab_dir, *base, "action=off")
        assert off.returncode == 0, off.stderr
        status = fence_lab(lab_dir, *base, "action=status")
        assert (status.returncode, status.stdout) == (2, "Status: OFF\n")
        state = json.loads(gridtool(lab_dir, "lab", "status", "--json").stdout)["lab"]
        assert not next(h for h in state["hosts"] if h["name"] == "hv1")["agent_alive"]
        assert fence_lab(lab_dir, *base, "action=on").returncode == 0
        assert fence_lab(lab_dir, *base, "action=status").returncode == 0
        unknown = fence_lab(lab_dir, f"lab_dir={lab_dir}", "plug=hv9", "action=off")
        assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1, unknown.stderr
        secret = gridtool(lab_dir, "host", "fence-agent", "set", "hv1", "fence_ipmilan",
                          "password=s3cret")
        assert secret.returncode == 2 and "secrets are not stored" in secret.stderr
        assert gridtool(lab_dir, "host", "fence-agent", "remove", "hv2").returncode == 0
        missing = gridtool(lab_dir, "host", "fence-agent", "test", "hv2")
        assert missing.returncode == 3 and "has no fence agent" in missing.stderr
        broken = gridtool(lab_dir, "host", "fence-agent", "set", "hv1", "/bin/false")
        assert broken.returncode == 0, broken.stderr
        failed = gridtool(lab_dir, "host", "fence-agent", "test", "hv1")
        assert failed.returncode == 8 and "monitor failed (exit 1)" in failed.stderr
    finally:
        down = gridtool(lab_dir, "lab", "down")
    assert down.returncode == 0, down.stderr


def test_lab_up_without_power_fence_configures_no_fence_agent(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    up = gridtool(lab_dir, "lab", "up", "--hosts", "1", "--guests", "0", "--no-power-fence")
    try:
        assert up.returncode == 0, up.stderr
        shown = json.loads(gridtool(lab_dir, "host", "fence-agent", "show", "--json").stdout)
        assert shown["fence_agents"] == []
    finally:
        gridtool(lab_dir, "lab", "down")
