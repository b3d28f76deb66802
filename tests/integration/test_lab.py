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
