"""``gridtool lab up --storage iscsi``: the lab's own tgtd, shown by ``lab status`` and
``fence list --storage``, stopped by ``lab down`` with nothing left."""

from __future__ import annotations

import json
from pathlib import Path

from gridtool.config import load
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.initiator import PrSocketLun
from gridtool.lab.procs import cmdline
from gridtool.storage import pr
from gridtool.storage.iscsi import IscsiLun
from tests.integration.test_lab import gridtool


def test_lab_with_iscsi_storage_shows_registrations_and_stops_its_target(
        tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    up = gridtool(lab_dir, "lab", "up", "--hosts", "2", "--guests", "1", "--storage", "iscsi",
                  "--json")
    try:
        assert up.returncode == 0, up.stderr
        target = json.loads(up.stdout)["iscsi"]
        assert target["initiators"] == {"hv1": "iqn.2026-12.lab.gridtool:hv1",
                                        "hv2": "iqn.2026-12.lab.gridtool:hv2"}
        state = json.loads(gridtool(lab_dir, "lab", "status", "--json").stdout)["lab"]
        tgtd = state["iscsi"]
        assert tgtd["alive"] and f"-C {tgtd['control_port']} " in cmdline(tgtd["pid"])
        assert [Path(lab_dir, f"lun-{n}.img").stat().st_size for n in (1, 2)] == [64 << 20] * 2
        shown = gridtool(lab_dir, "lab", "status")
        assert "tgtd (iSCSI target)" in shown.stdout and target["portal"] in shown.stdout
        hosts = {e["host"]: e for e in state["initiators"]}
        assert sorted(hosts) == ["hv1", "hv2"] and all(e["alive"] for e in hosts.values())
        assert "initiator hv2" in shown.stdout
        # the agents register through their initiators, the managers fence as their own IQN
        for name, entry in hosts.items():
            agent = load(str(lab_dir / "hosts" / name / "agent.conf"), env={})
            assert (agent.pr_backend, agent.pr_initiator_dir) == ("initiator", entry["dir"])
            assert agent.pr_fence_initiator == lab_iscsi.MANAGER_INITIATOR
        lab = load(str(lab_dir / "gridtool.conf"), env={})
        assert lab.pr_portals == (f"{lab_iscsi.TARGET_IQN}={target['portal']}",)
        with IscsiLun(target["urls"][1], lab_iscsi.MANAGER_INITIATOR) as manager:
            assert manager.read_keys().keys == ()  # the ACL lets the managers in
        # the host's initiator carries its PR commands (on the session its guests use)
        PrSocketLun(Path(hosts["hv2"]["dir"]), 2).register(pr.host_key("hv2"))

        before = json.loads(gridtool(lab_dir, "fence", "list", "--storage", "--json").stdout)
        assert [(r["lun"], r["registrations"], r["reservation"]) for r in before["luns"]] == [
            (target["urls"][0], [], None),
            (target["urls"][1], [{"key": pr.format_key(pr.host_key("hv2")), "host": "hv2"}],
             None)]

        k1, k2 = pr.host_key("hv1"), pr.host_key("hv2")
        with IscsiLun(target["urls"][0], target["initiators"]["hv1"]) as hv1, \
                IscsiLun(target["urls"][0], target["initiators"]["hv2"]) as hv2:
            hv1.register(k1)
            hv2.register(k2)
            hv2.register(0x1234)  # replaces hv2's own: a key of no known host
            hv1.reserve(k1)
        listed = gridtool(lab_dir, "fence", "list", "--storage", "--json")
        assert listed.returncode == 0, listed.stderr
        first = json.loads(listed.stdout)["luns"][0]
        assert first["registrations"] == [{"key": pr.format_key(k1), "host": "hv1"},
                                          {"key": "0x0000000000001234", "host": None}]
        assert first["reservation"] == {"key": pr.format_key(k1), "host": "hv1", "type": 5,
                                        "type_name": "Write Exclusive, registrants only"}
        text = gridtool(lab_dir, "fence", "list", "--storage")
        assert "holder: Write Exclusive, registrants only" in text.stdout
        assert "0x0000000000001234" in text.stdout

        refused = gridtool(lab_dir, "fence", "list", "--storage", "--initiator",
                           "iqn.2026-12.lab.gridtool:stranger")
        assert refused.returncode == 8 and "cannot log in" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
        misuse = gridtool(lab_dir, "fence", "list", "--lun", target["urls"][0])
        assert misuse.returncode == 2 and "go with --storage" in misuse.stderr
    finally:
        down = gridtool(lab_dir, "lab", "down")
    assert down.returncode == 0, down.stderr
    assert "tgtd" in down.stderr and "initiator hv1, initiator hv2" in down.stderr
    assert not cmdline(tgtd["pid"]) and not any(cmdline(e["pid"]) for e in hosts.values())
    assert not any(p.exists() for p in lab_iscsi.socket_files(tgtd["control_port"]))
