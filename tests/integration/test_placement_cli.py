"""``gridtool guest place`` and ``gridtool guest create`` against real agents: verdicts for
every host, a create that lands where placement says, and the error exits (malformed XML
2, duplicate 7, impossible requirements 7) that define nothing anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridtool.registry import hostconf
from tests.harness.checker import DoubleRunChecker
from tests.harness.testbed import domain_xml, wait_until
from tests.harness.testbed import run_cli as gridtool


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("gridtool: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def fleet(lab_hosts, registry):  # type: ignore[no-untyped-def]
    """hv1 and hv2 reach AoE shelf 9, hv3 only shelf 8; every host has 3 GiB."""
    storage = {"hv1": ("aoe-e9.",), "hv2": ("aoe-e9.",), "hv3": ("aoe-e8.",)}
    for name in storage:
        lab_hosts.add(name)
    for name, ids in storage.items():
        lab_hosts.start_agent(name, storage=ids, labels=(f"rack-{name}",))
    wait_until(lambda: len(registry.list_hosts()[0]) == 3, what="3 hosts registered")
    return lab_hosts


def libvirt_names(lab_hosts) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    return {h: {d.name() for d in c.listAllDomains(0)} for h, c in lab_hosts.conns.items()}


def test_place_dry_run_explains_every_host(fleet, store, cfg, registry, capsys):  # type: ignore[no-untyped-def]
    dom = fleet.conn("hv1").defineXML(domain_xml("db", memory_mib=512, disk="/dev/etherd/e9.1",
                                                 block=True))
    dom.create()
    wait_until(lambda: any(g.state == "running" for g in registry.guests_of("hv1")[0].values()),
               what="db running")
    hostconf.set_draining(store, cfg.keys, "hv2", True)

    code, out, _ = gridtool(cfg, capsys, "guest", "place", "db", "--dry-run", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["current"] == "hv1" and doc["chosen"] is None
    assert doc["guest"]["storage"] == ["aoe-e9."] and doc["guest"]["memory_mib"] == 512
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts["hv1"]["verdict"] == "current"
    assert [f["code"] for f in hosts["hv2"]["failures"]] == ["draining"]
    assert [f["code"] for f in hosts["hv3"]["failures"]] == ["storage"]
    assert "aoe-e9." in hosts["hv3"]["failures"][0]["reason"]
    assert "hv2: draining" in doc["reason"] and "hv3: storage" in doc["reason"]

    hostconf.set_draining(store, cfg.keys, "hv2", False)
    code, out, err = gridtool(cfg, capsys, "guest", "place", "db", "--dry-run")
    assert code == 0 and "db would go to hv2" in err
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert rows["hv2"].split()[1] == "chosen" and float(rows["hv2"].split()[2]) > 0
    assert "fails storage" in rows["hv3"] and "cannot reach storage" in rows["hv3"]


def test_create_places_defines_and_starts(fleet, store, cfg, registry, capsys,  # type: ignore[no-untyped-def]
                                          tmp_path: Path):
    # hv1 is busy with a 2 GiB guest; spread puts the new one on the emptier hv2 (hv3
    # cannot reach shelf 9).
    fleet.conn("hv1").defineXML(domain_xml("big", memory_mib=2048)).create()
    wait_until(lambda: registry.get_host("hv1").free_memory_mib <= 1024, what="hv1 busy")
    xml = tmp_path / "web.xml"
    xml.write_text(domain_xml("web", memory_mib=256, disk="/dev/etherd/e9.7", block=True))
    with DoubleRunChecker(lambda: fleet.conns) as checker:
        code, out, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(xml), "--auto",
                                  "--start", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["guest"]["host"] == "hv2" and doc["guest"]["started"]
    verdicts = {h["host"]: h["verdict"] for h in doc["placement"]["hosts"]}
    assert verdicts == {"hv1": "passes", "hv2": "chosen", "hv3": "fails storage"}
    uuid = doc["guest"]["uuid"]
    wait_until(lambda: [(g.host, g.state) for g in registry.find_guest("web")
                        if g.uuid == uuid] == [("hv2", "running")], what="web running on hv2")
    assert store.get(cfg.keys.fence("aoe-e9.7")) is not None  # started with its fence
    checker.assert_safe()

    # --on HOST: defined there (the command returns once the registry shows it), stopped
    other = tmp_path / "api.xml"
    other.write_text(domain_xml("api"))
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(other), "--on", "hv3")
    assert code == 0 and "api" in err and "created on hv3" in err
    assert "api" in libvirt_names(fleet)["hv3"]
    (api,) = registry.find_guest("api")
    assert (api.host, api.state) == ("hv3", "shutoff")


def test_create_errors_define_nothing(fleet, store, cfg, registry, capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    existing = fleet.conn("hv1").defineXML(domain_xml("web"))
    wait_until(lambda: registry.guests_of("hv1")[0], what="web in the registry")
    before = libvirt_names(fleet)

    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='test'><name>broken</name><memory>")
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(bad))
    assert code == 2 and "malformed domain XML" in one_line_error(err)

    unidentified = tmp_path / "lun.xml"
    unidentified.write_text(domain_xml("nolun", disk="/dev/disk/by-path/ip-10.0.0.1:3260-"
                                       "iscsi-iqn.2026-12.lab:t1", block=True))
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(unidentified))
    assert code == 2 and ("shared disk vda ('/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn"
                          ".2026-12.lab:t1'): no '-lun-N' after the iSCSI target name"
                          in one_line_error(err)), err

    dup = tmp_path / "dup.xml"
    dup.write_text(domain_xml("web"))
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(dup))
    assert code == 7 and "a guest named web already exists" in one_line_error(err)
    same_uuid = tmp_path / "uuid.xml"
    same_uuid.write_text(domain_xml("web2").replace(
        "<name>web2</name>", f"<name>web2</name><uuid>{existing.UUIDString()}</uuid>"))
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(same_uuid))
    assert code == 7 and f"UUID {existing.UUIDString()} already exists" in one_line_error(err)

    huge = tmp_path / "huge.xml"
    huge.write_text(domain_xml("huge", memory_mib=8192, disk="/dev/etherd/e9.3", block=True))
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(huge), "--start")
    one_line_error(err)
    assert code == 7 and "no host can take huge" in err
    for host in ("hv1", "hv2"):
        assert f"{host}: memory (needs 8192 MiB" in err
    assert "hv3: memory" in err and "storage (cannot reach storage: aoe-e9.)" in err
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(huge), "--on", "hv2")
    assert code == 7 and "no host can take huge" in one_line_error(err)
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(dup), "--on", "hv9")
    assert code == 7  # the duplicate is found first
    code, _, err = gridtool(cfg, capsys, "guest", "create", "--xml", str(huge), "--on", "hv9")
    assert code == 3 and "unknown host 'hv9'" in one_line_error(err)

    assert libvirt_names(fleet) == before  # nothing was defined anywhere
    assert {g.name for g in registry.list_guests()[0]} == {"web"}
    assert store.list(cfg.keys.all_intents)[0] == []


def test_start_without_on_goes_where_placement_says(fleet, store, cfg, registry, capsys):  # type: ignore[no-untyped-def]
    # db (shelf 9) is defined on every host: hv3 cannot reach shelf 9, hv1 is draining,
    # so only hv2 may start it; with hv2 draining too, nobody may.
    xml = domain_xml("db", memory_mib=512, disk="/dev/etherd/e9.1", block=True)
    for host in ("hv1", "hv2", "hv3"):
        fleet.conn(host).defineXML(xml)
    wait_until(lambda: sum(g.name == "db" for g in registry.list_guests()[0]) == 3,
               what="db on every host")
    for host in ("hv1", "hv2"):
        hostconf.set_draining(store, cfg.keys, host, True)
    code, _, err = gridtool(cfg, capsys, "guest", "start", "db")
    assert code == 7 and "no host can take db" in one_line_error(err)
    assert "hv1: draining" in err and "hv2: draining" in err and "hv3: storage" in err
    assert store.get(cfg.keys.fence("aoe-e9.1")) is None  # nothing was asked to start

    hostconf.set_draining(store, cfg.keys, "hv2", False)
    with DoubleRunChecker(lambda: fleet.conns) as checker:
        code, _, err = gridtool(cfg, capsys, "guest", "start", "db")
    assert code == 0, err
    wait_until(lambda: {(g.host, g.state) for g in registry.find_guest("db")} ==
               {("hv1", "shutoff"), ("hv2", "running"), ("hv3", "shutoff")},
               what="db running on hv2 only")
    checker.assert_safe()
