"""The lab target's command lines and state, without starting tgtd (the integration tests
in tests/integration/test_iscsi_pr.py and test_lab_iscsi.py start it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridtool.lab import iscsi
from gridtool.lab.procs import LabError


def test_setup_exports_every_lun_to_each_host_the_cli_and_the_managers_only(tmp_path: Path) -> None:
    target = iscsi.create(tmp_path, ["hv1", "hv2"], luns=2)
    target.control_port = 12345
    cmds = iscsi.setup_commands(target)
    assert all(c[:5] == ["tgtadm", "-C", "12345", "--lld", "iscsi"] for c in cmds)
    assert cmds[0][5:] == ["--mode", "target", "--op", "new", "--tid", "1", "--targetname",
                           "iqn.2026-12.lab.gridtool:storage"]
    stores = [c[c.index("--backing-store") + 1] for c in cmds if "--backing-store" in c]
    assert stores == [str(tmp_path / "lun-1.img"), str(tmp_path / "lun-2.img")]
    allowed = [c[-1] for c in cmds if "bind" in c]
    assert allowed == ["iqn.2026-12.lab.gridtool:hv1", "iqn.2026-12.lab.gridtool:hv2",
                       iscsi.CLI_INITIATOR, iscsi.MANAGER_INITIATOR]  # never ALL
    assert [c[5:9] for c in iscsi.stop_commands(12345)] == [
        ["--mode", "target", "--op", "delete"], ["--mode", "system", "--op", "delete"]]
    assert [p.name for p in iscsi.socket_files(12345)] == ["socket.12345", "socket.12345.lock"]


def test_the_state_round_trips_and_names_the_luns_as_libiscsi_and_qemu_do(
        tmp_path: Path) -> None:
    target = iscsi.create(tmp_path, ["hv1"], luns=1)
    target.control_port, target.pid = 12345, 99
    data = target.to_dict()
    assert data["urls"] == [f"iscsi://127.0.0.1:{target.port}/iqn.2026-12.lab.gridtool:storage/1"]
    assert iscsi.IscsiTarget.from_dict(data) == target
    assert iscsi.CONTROL_PORTS.stop == 32768  # tgtd refuses -C above 32767


def test_a_target_without_luns_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="at least one LUN"):
        iscsi.create(tmp_path, ["hv1"], luns=0)
