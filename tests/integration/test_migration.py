"""Cold migration with real agents: the fence moves with the guest (holder changes, token
grows), a host with 10 guests is drained, and a destination agent killed mid-way leaves
the guest in a safe state. An independent checker watches every host's libvirt: a guest
never runs on two hosts."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import libvirt
import pytest

from gridtool.fencing.rules import Fence
from gridtool.placement.shell import EndState, Migrator
from gridtool.registry import hostconf
from gridtool.registry.records import GuestSettings, encode
from tests.harness.checker import DoubleRunChecker
from tests.harness.testbed import domain_xml, wait_until
from tests.harness.testbed import run_cli as gridtool


def guest_xml(name: str, uuid: str | None = None, disk: str | None = None,
              memory_mib: int = 128) -> str:
    xml = domain_xml(name, memory_mib=memory_mib, disk=disk, block=disk is not None)
    return xml.replace(f"<name>{name}</name>", f"<name>{name}</name><uuid>{uuid}</uuid>") \
        if uuid else xml


def running_on(lab_hosts, uuid: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = []
    for name, conn in lab_hosts.conns.items():
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
            if dom.UUIDString() == uuid:
                found.append(name)
    return found


def defined_on(lab_hosts, uuid: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [name for name, conn in lab_hosts.conns.items()
            if uuid in {d.UUIDString() for d in conn.listAllDomains(0)}]


def fence(store, cfg, volume: str) -> tuple[Fence | None, int, int]:  # type: ignore[no-untyped-def]
    """The fence record of ``volume``, its token (mod_revision) and its lease."""
    item = store.get(cfg.keys.fence(volume))
    if item is None:
        return None, 0, 0
    return Fence.from_json(item.value), item.mod_revision, item.lease


def start_hosts(lab_hosts, registry, names, per_host=None, **settings) -> None:  # type: ignore[no-untyped-def]
    """Start ``names``' agents (``per_host``: settings of single hosts) and wait for them."""
    for name in names:
        lab_hosts.add(name)
    for name in names:
        lab_hosts.start_agent(name, **{**settings, **(per_host or {}).get(name, {})})
    wait_until(lambda: {h.name for h in registry.list_hosts()[0]} >= set(names),
               what="hosts registered")


def run_guest(lab_hosts, registry, host: str, xml: str) -> str:  # type: ignore[no-untyped-def]
    """Define and start a guest behind the agent's back as an operator's virsh would
    (the first resync adopts a fenced one: not a violation), wait for its record."""
    dom = lab_hosts.conn(host).defineXML(xml)
    dom.create()
    uuid = dom.UUIDString()
    wait_until(lambda: any(g.uuid == uuid and g.state == "running"
                           for g in registry.guests_of(host)[0].values()),
               what=f"{dom.name()} running on {host} in the registry")
    return uuid


UUID_DB = "aaaaaaaa-0000-4000-8000-000000000001"
UUID_HA = "aaaaaaaa-0000-4000-8000-000000000002"


def test_cold_migration_moves_the_fence(lab_hosts, store, cfg, registry, capsys):  # type: ignore[no-untyped-def]
    start_hosts(lab_hosts, registry, ["hv1", "hv2"])
    store.put(cfg.keys.guest_settings(UUID_HA), encode(GuestSettings(UUID_HA, "ha", ha=True)))
    client_start = [("db", UUID_DB, "/dev/etherd/e9.1"), ("ha", UUID_HA, "/dev/etherd/e9.2")]
    from gridtool.registry.intents import IntentClient

    client = IntentClient(store, cfg.keys)
    for name, uuid, disk in client_start:
        lab_hosts.conn("hv1").defineXML(guest_xml(name, uuid, disk))
        wait_until(lambda u=uuid: store.get(cfg.keys.domain(u)), what="definition published")
        client.wait(client.submit("hv1", "start", uuid, name), 30)
    _, token_db, _ = fence(store, cfg, "aoe-e9.1")
    _, token_ha, lease_before = fence(store, cfg, "aoe-e9.2")
    hv2_lease = store.get(cfg.keys.host("hv2")).lease
    assert lease_before and lease_before != hv2_lease

    # --live on test-driver hosts: refused in one line, nothing touched
    code, _, err = gridtool(cfg, capsys, "guest", "migrate", "db", "--to", "hv2", "--live")
    assert code == 7 and err.count("\n") == 1 and "test driver cannot live-migrate" in err

    with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        code, out, err = gridtool(cfg, capsys, "guest", "migrate", "db", "--to", "hv2",
                                  "--cold", "--json")
        assert code == 0, err
        doc = json.loads(out)["migration"]
        assert doc["state"] == "moved" and doc["from"] == "hv1" and doc["to"] == "hv2"
        assert [p["phase"] for p in doc["phases"]] == ["define", "stop", "start", "undefine"]
        code, out, err = gridtool(cfg, capsys, "guest", "migrate", "ha", "--auto")
        assert code == 0, err
        assert "moved" in err and "start" in err  # the phases were reported
    checker.assert_safe()
    for uuid in (UUID_DB, UUID_HA):
        assert running_on(lab_hosts, uuid) == ["hv2"]
        assert defined_on(lab_hosts, uuid) == ["hv2"]
    db, new_token_db, db_lease = fence(store, cfg, "aoe-e9.1")
    ha, new_token_ha, ha_lease = fence(store, cfg, "aoe-e9.2")
    assert (db.holder, ha.holder) == ("hv2", "hv2")
    assert new_token_db > token_db and new_token_ha > token_ha
    assert db_lease == 0 and ha_lease == hv2_lease  # pinned: no lease; HA: hv2's lease
    log = lab_hosts.agent_log("hv1")
    assert "event=fence_handed_over host=hv1 to=hv2 guest=db" in log
    wait_until(lambda: {g.host for g in registry.find_guest("db")} == {"hv2"},
               what="hv1's record of db removed")


def test_drain_a_host_with_10_guests(lab_hosts, store, cfg, registry, capsys):  # type: ignore[no-untyped-def]
    start_hosts(lab_hosts, registry, ["hv1", "hv2", "hv3"])
    uuids = []
    for i in range(10):  # half on shared storage (fenced), half local
        disk = f"/dev/etherd/e10.{i}" if i % 2 == 0 else None
        uuids.append(run_guest(lab_hosts, registry, "hv1", guest_xml(f"vm{i}", disk=disk)))
    # a transient guest has no definition to move: it stays, with the reason
    lab_hosts.conn("hv1").createXML(guest_xml("scratch"), 0)
    wait_until(lambda: len(registry.guests_of("hv1")[0]) == 11, what="11 guests on hv1")

    code, out, _ = gridtool(cfg, capsys, "host", "drain", "hv1", "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)
    assert len(plan["moves"]) == 10 and plan["stuck"][0]["guest"] == "scratch"
    assert not hostconf.read(store, cfg.keys, "hv1").draining  # a dry run marks nothing

    with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        code, out, err = gridtool(cfg, capsys, "host", "drain", "hv1", "--json")
    checker.assert_safe()
    assert code == 7, err  # one guest is left: exit 7, naming it
    assert "scratch" in err.splitlines()[-1] and "not movable" in err.splitlines()[-1]
    doc = json.loads(out)
    assert doc["draining"] and len(doc["moves"]) == 10
    assert all(m["ok"] and m["state"] == "moved" for m in doc["moves"]), doc["moves"]
    assert {m["to"] for m in doc["moves"]} == {"hv2", "hv3"}  # spread over both
    for uuid in uuids:
        (host,) = running_on(lab_hosts, uuid)
        assert host in ("hv2", "hv3")
    for i in range(0, 10, 2):
        holder = fence(store, cfg, f"aoe-e10.{i}")[0].holder
        assert holder == running_on(lab_hosts, uuids[i])[0]
    assert hostconf.read(store, cfg.keys, "hv1").draining
    # The registry keeps no definition of the local guests once they moved.
    assert all(store.get(cfg.keys.domain(u)) is None for u in uuids[1::2])
    code, _, err = gridtool(cfg, capsys, "host", "undrain", "hv1")
    assert code == 0 and not hostconf.read(store, cfg.keys, "hv1").draining

    # Undrained, the empty hv1 is far below the mean: a rebalance moves guests back.
    code, out, _ = gridtool(cfg, capsys, "rebalance", "--dry-run", "--threshold", "5",
                            "--json")
    planned = json.loads(out)
    assert code == 0 and planned["plan"]["outside_before"] >= 1 and planned["moves"]
    assert {m["to"] for m in planned["moves"]} == {"hv1"}
    with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        code, out, err = gridtool(cfg, capsys, "rebalance", "--threshold", "5",
                                  "--max-moves", "2", "--json")
    assert code == 0, err
    checker.assert_safe()
    moves = json.loads(out)["moves"]
    assert len(moves) == 2 and all(m["ok"] and m["to"] == "hv1" for m in moves)
    for m in moves:
        uuid = next(u for u in uuids if m["uuid"] == u)
        assert running_on(lab_hosts, uuid) == ["hv1"]


@pytest.mark.parametrize("ha", [True, False], ids=["ha", "pinned"])
def test_destination_agent_killed_mid_way_ends_safe(lab_hosts, store, cfg, registry, ha):  # type: ignore[no-untyped-def]
    # hv2 waits 2 s between taking the fence and create(): the kill below lands in that
    # window every time (without it, a fast start could finish before the kill: flaky)
    start_hosts(lab_hosts, registry, ["hv1", "hv2"],
                per_host={"hv2": {"fault_points": ("delay-before-create=2",)}})
    store.put(cfg.keys.guest_settings(UUID_HA), encode(GuestSettings(UUID_HA, "ha", ha=ha)))
    run_guest(lab_hosts, registry, "hv1", guest_xml("ha", UUID_HA, "/dev/etherd/e9.2"))
    wait_until(lambda: fence(store, cfg, "aoe-e9.2")[0], what="fence adopted")
    (rec,) = registry.find_guest("ha")
    killed = []

    def kill_at_start(ev) -> None:  # type: ignore[no-untyped-def]
        # hv2 was handed the fence and was asked to start the guest (it may be starting
        # it right now: seconds > 0 means the intent is submitted): its agent dies now
        if ev.phase == "start" and not ev.finished and ev.seconds > 0 and not killed:
            os.kill(lab_hosts.agents["hv2"].pid, signal.SIGKILL)
            killed.append(ev)

    migrator = Migrator(store, cfg.keys, intent_timeout=20, on_event=kill_at_start)
    with DoubleRunChecker(lambda: lab_hosts.conns, interval=0.01) as checker:
        result = migrator.migrate(rec, "hv2")
    assert killed
    checker.assert_safe()
    assert store.list(cfg.keys.intents("hv2"))[0] == []  # the start was withdrawn
    if ha:
        # hv2 died holding the HA fence: it expired with hv2's lease (hv2's watchdog reset
        # the host first), then hv1 runs the guest again with its fence.
        assert result.state is EndState.ON_SOURCE, result
        assert "rolled back" in result.message
        assert running_on(lab_hosts, UUID_HA) == ["hv1"]
        assert fence(store, cfg, "aoe-e9.2")[0].holder == "hv1"
    else:
        # A pinned fence outlives hv2's lease: hv1 must not start the guest again (hv2 may
        # run it); the result says so. It runs nowhere (hv2's watchdog reset the host).
        assert result.state is EndState.UNKNOWN, result
        assert "held by hv2" in result.message and "confirm-dead hv2" in result.message
        assert running_on(lab_hosts, UUID_HA) == []
        assert fence(store, cfg, "aoe-e9.2")[0].holder == "hv2"


UUID_FRESH = "aaaaaaaa-0000-4000-8000-000000000003"
UUID_OFF = "aaaaaaaa-0000-4000-8000-000000000004"


def test_cold_migration_follows_the_state_the_source_agent_finds(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                                 registry):
    """A record read right after a start can still say ``shutoff`` (seen on Xen under
    TCG: the guest arrived on the destination defined but not started); one read right
    after a stop can still say ``running``. The move follows what the source agent found
    when its ``stop`` ran: ``fresh`` (running, record stale ``shutoff``) runs on hv2 with
    its fence, ``off`` (stopped, record stale ``running``) is only defined there."""
    start_hosts(lab_hosts, registry, ["hv1", "hv2"])
    fresh = run_guest(lab_hosts, registry, "hv1",
                      guest_xml("fresh", UUID_FRESH, "/dev/etherd/e9.3"))
    off = run_guest(lab_hosts, registry, "hv1", guest_xml("off", UUID_OFF))
    lab_hosts.conn("hv1").lookupByUUIDString(off).destroy()
    wait_until(lambda: registry.guests_of("hv1")[0][off].state == "shutoff",
               what="off stopped in the registry")
    _, token, _ = fence(store, cfg, "aoe-e9.3")
    stale = {fresh: "shutoff", off: "running"}
    migrator = Migrator(store, cfg.keys, intent_timeout=30)
    results = {}
    with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        for uuid, state in stale.items():
            rec = registry.guests_of("hv1")[0][uuid]
            results[uuid] = migrator.migrate(dataclasses.replace(rec, state=state), "hv2",
                                             "cold")
    checker.assert_safe()
    assert results[fresh].state is EndState.MOVED, results[fresh]
    assert "fresh runs on hv2" in results[fresh].message, results[fresh]
    assert [p.phase for p in results[fresh].phases] == ["define", "stop", "start",
                                                        "undefine"]
    assert running_on(lab_hosts, fresh) == ["hv2"] and defined_on(lab_hosts, fresh) == ["hv2"]
    moved, new_token, _ = fence(store, cfg, "aoe-e9.3")
    assert moved is not None and moved.holder == "hv2" and new_token > token
    assert results[off].state is EndState.MOVED, results[off]
    assert "off is defined on hv2" in results[off].message, results[off]
    assert "start" not in [p.phase for p in results[off].phases]
    assert running_on(lab_hosts, off) == [] and defined_on(lab_hosts, off) == ["hv2"]
