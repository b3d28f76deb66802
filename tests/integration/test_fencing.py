"""Fencing end to end: real agents racing for one shared-storage guest, intruders, the
self-fence on a partition, and HA restarts by the leader-elected manager."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from gridtool.ha.manager import Manager
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, Intent, Violation, decode, encode
from tests.harness.checker import DoubleRunChecker
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import domain_xml, wait_until

SHARED = "/dev/etherd/e9.1"
VOLUME = "aoe-e9.1"
UUID = "11111111-2222-3333-4444-555555555555"
#: An HA guest beside the pinned ``db`` on its own shared volume.
WEB_UUID = "66666666-7777-8888-9999-000000000000"
WEB_VOLUME = "aoe-e9.2"


def shared_xml(name: str = "db", uuid: str = UUID, disk: str = SHARED) -> str:
    return domain_xml(name, disk=disk, block=True).replace(
        f"<name>{name}</name>", f"<name>{name}</name><uuid>{uuid}</uuid>")


def hosts_with_guest(lab_hosts, names, xml=None, storage=None, **agent_settings):  # type: ignore[no-untyped-def]
    """Hosts that all have the shared guest defined (as Xen/AoE fleets do); ``storage``:
    the storage ids each host's agent declares it reaches (host -> ids)."""
    per_host = {name: {"storage": ids} for name, ids in (storage or {}).items()}
    hosts_with_guests(lab_hosts, names, [xml or shared_xml()], per_host, **agent_settings)


def hosts_with_guests(lab_hosts, names, xmls, per_host=None, **agent_settings):  # type: ignore[no-untyped-def]
    """Hosts that all define every guest of ``xmls``; ``per_host``: settings of single
    hosts' agents (host -> settings), over ``agent_settings``."""
    for name in names:
        lab_hosts.add(name)
        for xml in xmls:
            lab_hosts.conn(name).defineXML(xml)
        lab_hosts.start_agent(name, **{**agent_settings, **(per_host or {}).get(name, {})})


def pinned_db_and_ha_web_on_hv1(lab_hosts, store, cfg, registry, per_host=None):  # type: ignore[no-untyped-def]
    """hv1 and hv2 define the pinned guest ``db`` and the HA guest ``web`` (each on its
    own shared volume); both are started on hv1. ``per_host`` as in hosts_with_guests."""
    xmls = [shared_xml(), shared_xml("web", WEB_UUID, "/dev/etherd/e9.2")]
    hosts_with_guests(lab_hosts, ["hv1", "hv2"], xmls, per_host)
    wait_registered(registry, ["hv1", "hv2"])
    store.put(cfg.keys.guest_settings(WEB_UUID), encode(GuestSettings(WEB_UUID, "web", ha=True)))
    client = IntentClient(store, cfg.keys)
    for uuid, name in ((UUID, "db"), (WEB_UUID, "web")):
        assert client.wait(client.submit("hv1", "start", uuid, name), 30).state == "done"


def resynced(store, cfg, host, old_lease=None):  # type: ignore[no-untyped-def]
    """A condition for wait_until: ``host``'s agent is registered (under a lease other
    than ``old_lease``) and has published its host record again since this condition
    first saw it: registering publishes it, and so does the end of the resync that
    follows at once (which has judged every guest)."""
    from gridtool.registry import model

    seen: list[float] = []

    def done() -> bool:
        item = store.get(cfg.keys.host(host))
        if item is None or item.lease == old_lease:
            return False
        at = model.decode(model.HostRecord, item.key, item.value).reported_at
        seen[:] = seen or [at]
        return at > seen[0]

    return done


def manager_round_since(store, cfg, since):  # type: ignore[no-untyped-def]
    """A condition for wait_until: the leading manager finished a round that began after
    ``since`` (wall clock). Its status heartbeat is written at a round's end: the round
    after the first heartbeat past ``since`` read the registry after it."""
    from gridtool.registry.records import ManagerStatus

    seen: list[float] = []

    def done() -> bool:
        item = store.get(cfg.keys.manager_status)
        beat = decode(ManagerStatus, item.key, item.value).heartbeat if item else 0.0
        if beat > since and not seen:
            seen.append(beat)
        return bool(seen) and beat > seen[0]

    return done


@contextlib.contextmanager
def running_manager(cfg, store, name="m1", **settings):  # type: ignore[no-untyped-def]
    """A manager candidate (period 0.2 s) running on a thread of this process."""
    stop = threading.Event()
    manager = Manager(cfg, store, name, **{"period": 0.2, **settings})
    thread = threading.Thread(target=manager.run, args=(stop,), name=f"manager {name}")
    thread.start()
    try:
        yield manager
    finally:
        stop.set()
        thread.join(10)


def running_on(lab_hosts, uuid=UUID):  # type: ignore[no-untyped-def]
    import libvirt

    found = []
    for name, conn in lab_hosts.conns.items():
        dom = conn.lookupByUUIDString(uuid) if uuid in [
            d.UUIDString() for d in conn.listAllDomains(0)] else None
        if dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
            found.append(name)
    return found


def fence_holder(store, cfg, volume=VOLUME):  # type: ignore[no-untyped-def]
    from gridtool.fencing.rules import Fence

    item = store.get(cfg.keys.fence(volume))
    return Fence.from_json(item.value).holder if item else None


def wait_registered(registry, names):  # type: ignore[no-untyped-def]
    wait_until(lambda: {h.name for h in registry.list_hosts()[0]} >= set(names),
               what="hosts registered")


def test_race_exactly_one_winner_per_round(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    names = [f"hv{i}" for i in range(1, 6)]
    hosts_with_guest(lab_hosts, names)
    wait_registered(registry, names)
    client = IntentClient(store, cfg.keys)
    rounds = 200
    winners = []
    with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        for _ in range(rounds):
            intents = [client.submit(h, "start", UUID, "db") for h in names]
            outcomes = [_outcome(client, i) for i in intents]
            won = [o for o in outcomes if o.state == "done"]
            assert len(won) == 1, [(o.host, o.state, o.message) for o in outcomes]
            winner = won[0].host
            for lost in (o for o in outcomes if o.state == "failed"):
                assert f"held by {winner}" in lost.message
            assert running_on(lab_hosts) == [winner]
            winners.append(winner)
            _outcome(client, client.submit(winner, "destroy", UUID, "db"))
            assert store.get(cfg.keys.fence(VOLUME)) is None
    assert checker.overlaps == [] and checker.samples > 0
    assert len(set(winners)) > 1  # the race is real: different hosts win


def _outcome(client: IntentClient, intent: Intent) -> Intent:
    return client.wait(intent, timeout=30, raise_failed=False)


def test_guest_started_behind_our_back_is_paused_as_intruder(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    # A sysadmin runs a bare `virsh start` on hv2 (the test driver has no hook to stop it).
    lab_hosts.conn("hv2").lookupByUUIDString(UUID).create()
    key = cfg.keys.violation("hv2", UUID)
    wait_until(lambda: store.get(key), what="violation reported")
    violation = decode(Violation, key, store.get(key).value)
    assert (violation.holder, violation.action, violation.volume) == ("hv1", "pause", VOLUME)
    import libvirt

    wait_until(lambda: lab_hosts.conn("hv2").lookupByUUIDString(UUID).state()[0]
               == libvirt.VIR_DOMAIN_PAUSED, what="intruder paused")
    assert fence_holder(store, cfg) == "hv1"


def test_guest_started_without_fence_takes_it_and_reports(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    hosts_with_guest(lab_hosts, ["hv1"])
    # Not before the first resync is done: it adopts what it finds running.
    wait_until(resynced(store, cfg, "hv1"), what="hv1's first resync")
    lab_hosts.conn("hv1").lookupByUUIDString(UUID).create()
    wait_until(lambda: fence_holder(store, cfg) == "hv1", what="fence taken")
    item = store.get(cfg.keys.violation("hv1", UUID))
    assert item is not None and decode(Violation, item.key, item.value).action == "take"


def test_a_guest_gone_during_a_slow_registry_read_is_not_judged_an_intruder(lab_hosts, store,  # type: ignore[no-untyped-def]
                                                                            cfg):
    """Found by test_partition_leaves_the_pinned_guest_running_where_it_is: the agent's
    judgement read the guest from libvirt (running), then waited seconds on the cut-off
    registry; meanwhile the self-fence destroyed the guest, and the fence read that came
    back after the heal (held by the host that had restarted it) made the agent "pause" a
    guest no longer running and report a violation that never was. Here the agent runs in
    this process and its fence read destroys the guest first, as the self-fence did."""
    from dataclasses import replace

    from agents.agent import Agent
    from gridtool.fencing.rules import Fence, FenceKind
    from gridtool.registry.etcdstore import EtcdStore

    host = lab_hosts.add("hv1")
    dom = lab_hosts.conn("hv1").defineXML(shared_xml())
    dom.create()
    fence = Fence(VOLUME, "hv2", UUID, "db", FenceKind.HA, time.time())
    store.put(cfg.keys.fence(VOLUME), fence.to_json().encode())
    agent_cfg = replace(cfg, host="hv1", libvirt_uri=host.libvirt_uri)
    agent = Agent(agent_cfg, EtcdStore(agent_cfg))
    agent.libvirt.connect()
    try:
        rec = agent.libvirt.guest(UUID, "hv1")
        assert rec is not None and rec.state == "running"
        read_fences = agent.fencer.observe

        def slow_read(volumes):  # type: ignore[no-untyped-def]
            if dom.isActive():
                dom.destroy()  # the self-fence, while the registry has not answered yet
            return read_fences(volumes)

        agent.fencer.observe = slow_read  # type: ignore[method-assign]
        agent.judge(rec, clean_stop=None)
    finally:
        agent.libvirt.close()
        agent.store.close()
    assert store.get(cfg.keys.violation("hv1", UUID)) is None
    assert fence_holder(store, cfg) == "hv2"


def test_partitioned_host_self_fences_before_its_fence_expires(lab_hosts, store, cfg, registry,  # type: ignore[no-untyped-def]
                                                               etcd_cluster):
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    try:
        lab_hosts.add("hv1")
        lab_hosts.conn("hv1").defineXML(shared_xml())
        store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=True)))
        lab_hosts.start_agent("hv1", endpoints=(proxy.endpoint,))
        wait_registered(registry, ["hv1"])
        client = IntentClient(store, cfg.keys)
        assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
        fence = store.get(cfg.keys.fence(VOLUME))
        assert fence is not None and fence.lease  # HA fence: bound to hv1's lease
        gone = threading.Event()
        watch = store.watch_prefix(cfg.keys.fence(VOLUME),
                                   lambda ev: ev.kind == "delete" and gone.set())
        states_when_gone: list[list[str]] = []
        try:
            proxy.cut()
            wait_until(lambda: gone.is_set() and not states_when_gone.append(
                running_on(lab_hosts)), timeout=cfg.ttl + 5, what="fence to expire")
        finally:
            watch.cancel()
        # The guest was destroyed by hv1 itself before etcd let the fence go.
        assert states_when_gone[0] == []
        assert "event=self_fence" in lab_hosts.agent_log("hv1")
    finally:
        proxy.close()


@contextlib.contextmanager
def ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry, name="db", uuid=UUID,  # type: ignore[no-untyped-def]
                                 storage=None, **agent_settings):
    """The shared guest running on hv1 as an HA guest, hv2 (or every host of ``storage``,
    host -> storage ids it reaches) ready, a manager running."""
    names = sorted(storage or ("hv1", "hv2"))
    hosts_with_guest(lab_hosts, names, shared_xml(name, uuid), storage, **agent_settings)
    wait_registered(registry, names)
    store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, name, ha=True)))
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", uuid, name), 30).state == "done"
    with running_manager(cfg, store):
        yield


def test_ha_guest_restarted_elsewhere_after_power_off(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guests
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_until(lambda: running_on(lab_hosts) == ["hv2"], timeout=cfg.ttl + 10,
                   what="HA restart on hv2")
    assert checker.overlaps == []
    assert fence_holder(store, cfg) == "hv2"


@pytest.mark.parametrize("name", ["db", "cache", "dns"])
def test_ha_restart_only_on_a_host_that_reaches_the_storage(lab_hosts, store, cfg, registry,  # type: ignore[no-untyped-def]
                                                             name):
    """hv2 cannot reach AoE shelf 9 (it declares shelf 8): when hv1 dies, its HA guest
    comes back on hv3 or hv4, never on hv2. The hosts are alike, so the allocator's
    tie-break decides: hv4 for db (hv2 without the storage filter), hv3 for cache."""
    uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name))
    storage = {"hv1": ("aoe-e9.",), "hv2": ("aoe-e8.",), "hv3": ("aoe-e9.",),
               "hv4": ("aoe-e9.",)}
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry, name, uuid, storage), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guests
        lab_hosts.conn("hv1").lookupByUUIDString(uuid).destroy()
        where = wait_until(lambda: running_on(lab_hosts, uuid), timeout=cfg.ttl + 10,
                           what="HA restart")
    assert where in (["hv3"], ["hv4"]), f"{name} restarted on {where}"
    assert checker.overlaps == []
    assert fence_holder(store, cfg) == where[0]


def agent_startup_seconds() -> float:
    """How long an agent process takes here and now to start up to its first registry
    call: the interpreter and the agent's imports, the bulk of an agent restart (a
    config file that does not exist stops it right after them)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agents.main", "--config", "/nonexistent.conf"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    return time.monotonic() - start


def ttl_for_restart(cfg, startup: float) -> int:  # type: ignore[no-untyped-def]
    """The smallest lease TTL (at least the tests' own) whose lab watchdog timeout gives an
    agent restart twice the measured start-up, plus a second for the stop and the
    registry calls: on a loaded machine a restart takes seconds, longer than the watchdog
    timeout of the tests' 3 s TTL (1.2 s), and the host would be reset meanwhile. (Seen
    at load 7-10 on 2 cores: start-up 4.4-11 s, restart to first pet 1.7-4.0 s.)"""
    from gridtool.lab.hosts import watchdog_timeout_for

    ttl = cfg.ttl
    while watchdog_timeout_for(ttl) < 2 * startup + 1:
        ttl += 1
    return ttl


def petted_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime > since and path.read_bytes() != b"V"
    except OSError:
        return False


def test_agent_restart_resumes_its_lease_and_keeps_ha_guests(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    from gridtool.lab.hosts import watchdog_timeout_for

    startup = agent_startup_seconds()
    ttl = ttl_for_restart(cfg, startup)
    timeout = watchdog_timeout_for(ttl)
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry, ttl=ttl):
        fence = store.get(cfg.keys.fence(VOLUME))
        dog = lab_hosts.hosts["hv1"].watchdog
        with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
            stopped = time.time()
            lab_hosts.stop_agent("hv1")  # SIGTERM: a clean stop, as for an upgrade
            assert "event=agent_stop_lease_kept" in lab_hosts.agent_log("hv1")
            held = store.get(cfg.keys.fence(VOLUME))
            assert held is not None and held.lease == fence.lease  # not revoked
            restarted = time.time()
            lab_hosts.start_agent("hv1", ttl=ttl)
            # The first pet must come before the predecessor's last one runs out.
            wait_until(lambda: petted_since(dog, restarted), timeout=timeout,
                       what=f"the restarted agent's first watchdog pet (start-up {startup:.1f} s)")
            first_pet = time.time() - restarted
            wait_until(lambda: "resumed=yes" in lab_hosts.agent_log("hv1"), timeout=timeout,
                       what="the restarted agent to resume its lease")
            resumed = time.time() - restarted
            print(f"agent start-up {startup:.2f} s; ttl {ttl} s, watchdog {timeout} s; restart "
                  f"-> first pet {first_pet:.2f} s, -> lease resumed {resumed:.2f} s")
            # Watch until past the moment the old lease would have expired (an observation
            # window, not a wait for a result): instead nothing moves.
            threading.Event().wait(max(0.0, stopped + ttl + 1 - time.time()))
        assert lab_hosts.watchdogs["hv1"].resets == 0
        assert checker.overlaps == []
        assert running_on(lab_hosts) == ["hv1"]
        after = store.get(cfg.keys.fence(VOLUME))
        assert after is not None and after.mod_revision == fence.mod_revision


def test_restarted_agent_pets_the_watchdog_before_its_first_resync(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                                    registry):
    """A restarted agent's first resync can take long on a loaded host (every guest
    judged, definitions published): it must not hold back the first watchdog pet, or the
    predecessor's last pet runs out and the host is reset although the lease was resumed.
    Here the first resync waits until the test has seen the pet (the agent runs in this
    process, its resync held by an event: no timing involved)."""
    from agents.agent import Agent
    from gridtool.config import load
    from gridtool.lab.hosts import watchdog_timeout_for
    from gridtool.registry.etcdstore import EtcdStore

    ttl = 10  # a 4.5 s watchdog: ample for an in-process agent to resume its lease
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry, ttl=ttl):
        dog = lab_hosts.hosts["hv1"].watchdog
        lab_hosts.stop_agent("hv1")  # SIGTERM: lease kept, watchdog left armed
        assert "event=agent_stop_lease_kept" in lab_hosts.agent_log("hv1")
        restarted = time.time()
        agent_cfg = load(str(lab_hosts.hosts["hv1"].agent_conf), {}, env={})
        agent = Agent(agent_cfg, EtcdStore(agent_cfg))
        release, first_resync = threading.Event(), agent.resync

        def held_resync() -> None:
            release.wait(60)
            first_resync()

        agent.resync = held_resync  # type: ignore[method-assign]
        runner = threading.Thread(target=agent.run, name="agent hv1")
        runner.start()
        try:
            wait_until(lambda: petted_since(dog, restarted),
                       timeout=watchdog_timeout_for(ttl),
                       what="the first watchdog pet while the first resync is held")
            assert lab_hosts.watchdogs["hv1"].resets == 0
            assert running_on(lab_hosts) == ["hv1"]
        finally:
            release.set()
            agent.stop()
            runner.join(30)
        assert not runner.is_alive()


def test_agent_stopped_for_good_resets_host_before_ha_restart(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        lab_hosts.stop_agent("hv1")  # SIGTERM and never started again
        wait_until(lambda: running_on(lab_hosts) == ["hv2"], timeout=cfg.ttl + 10,
                   what="HA restart on hv2 after hv1's watchdog reset")
    assert checker.overlaps == [] and checker.samples > 0
    assert lab_hosts.watchdogs["hv1"].resets == 1
    assert fence_holder(store, cfg) == "hv2"


def test_agent_crash_with_only_pinned_guests_does_not_reset_the_host(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                                      registry):
    from gridtool.lab.hosts import watchdog_timeout_for

    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    wait_until(lambda: any(g.state == "running" for g in registry.list_guests()[0]),
               what="db reported running")
    threading.Event().wait(1.0)  # an observation window of 10 guard ticks
    dog = lab_hosts.hosts["hv1"].watchdog
    assert not dog.exists() or dog.read_bytes() == b"V"  # never armed: nothing to fence
    lab_hosts.stop_agent("hv1", kill=True)
    # An observation window past the watchdog timeout: a pinned guest must survive it.
    threading.Event().wait(2 * watchdog_timeout_for(cfg.ttl))
    assert lab_hosts.watchdogs["hv1"].resets == 0
    assert running_on(lab_hosts) == ["hv1"]


def test_pinned_guest_moves_only_after_confirm_dead(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    import json
    import time

    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    with running_manager(cfg, store) as manager:
        lab_hosts.stop_agent("hv1", kill=True)
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_until(lambda: "hv1" not in {h.name for h in registry.list_hosts()[0]},
                   timeout=cfg.ttl + 5, what="hv1's lease to expire")
        wait_until(lambda: any("confirm-dead" in r for r in manager.blocked.values()),
                   what="manager waiting for confirm-dead")
        assert fence_holder(store, cfg) == "hv1"  # pinned: the fence outlives the lease
        assert running_on(lab_hosts) == []
        store.put(cfg.keys.dead_host("hv1"), json.dumps({"v": 1, "at": time.time()}).encode())
        wait_until(lambda: running_on(lab_hosts) == ["hv2"], timeout=15,
                   what="pinned guest restarted after confirm-dead")
        assert fence_holder(store, cfg) == "hv2"


def test_partition_leaves_the_pinned_guest_running_where_it_is(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                                registry, etcd_cluster):
    """Fault table, host partitioned: hv1 is cut off from etcd past its lease. Its HA guest
    ``web`` is self-fenced and restarted on hv2; its pinned guest ``db`` keeps running on
    hv1 under its lease-less fence, which nobody else may take: the manager waits for
    ``host confirm-dead hv1`` and an operator's start on hv2 is refused. Healed, hv1
    registers again and still holds db's fence with the same token. Both hosts are
    sampled throughout: neither guest ever runs twice."""
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    try:
        pinned_db_and_ha_web_on_hv1(lab_hosts, store, cfg, registry,
                                    {"hv1": {"endpoints": (proxy.endpoint,)}})
        fence = store.get(cfg.keys.fence(VOLUME))
        assert fence is not None and not fence.lease  # pinned: bound to no lease
        lease = store.get(cfg.keys.host("hv1")).lease
        client = IntentClient(store, cfg.keys)
        with running_manager(cfg, store) as manager, \
                DoubleRunChecker(lambda: lab_hosts.conns) as checker:
            proxy.cut()
            wait_until(lambda: running_on(lab_hosts, WEB_UUID) == ["hv2"],
                       timeout=cfg.ttl + 10, what="web self-fenced, then restarted on hv2")
            wait_until(lambda: UUID in manager.blocked or running_on(lab_hosts) != ["hv1"],
                       what="the manager's decision on db")
            assert running_on(lab_hosts) == ["hv1"], "db stays where it runs"
            assert "waiting for `host confirm-dead hv1`" in manager.blocked[UUID]
            refused = client.wait(client.submit("hv2", "start", UUID, "db"), 30,
                                  raise_failed=False)
            assert refused.state == "failed" and "held by hv1" in refused.message
            proxy.heal()
            wait_until(resynced(store, cfg, "hv1", lease), timeout=15,
                       what="hv1 back on etcd, registered anew and resynced")
            wait_until(lambda: UUID not in manager.blocked,
                       what="the manager to see db's host alive again")
        assert running_on(lab_hosts) == ["hv1"] and running_on(lab_hosts, WEB_UUID) == ["hv2"]
        after = store.get(cfg.keys.fence(VOLUME))
        assert fence_holder(store, cfg) == "hv1"
        assert (after.mod_revision, after.lease) == (fence.mod_revision, 0)  # same token
        assert fence_holder(store, cfg, WEB_VOLUME) == "hv2"
        log = lab_hosts.agent_log("hv1")
        assert "event=self_fenced host=hv1 guest=web" in log
        assert "event=self_fenced host=hv1 guest=db" not in log
        assert lab_hosts.watchdogs["hv1"].resets == 0
        assert store.list(cfg.keys.violations)[0] == []
        assert checker.overlaps == [] and not checker.blind, checker.unknown_detail
    finally:
        if "hv1" in lab_hosts.agents:  # while it can still reach etcd to stop cleanly
            lab_hosts.stop_agent("hv1")
        proxy.close()


def test_manager_failover_within_ttl_plus_one_second(store, cfg):  # type: ignore[no-untyped-def]
    import time

    stops = {n: threading.Event() for n in ("m1", "m2")}
    threads = {n: threading.Thread(target=Manager(cfg, store, n, period=0.1).run,
                                   args=(stops[n], n != "m1")) for n in stops}
    threads["m1"].start()
    wait_until(lambda: store.get(cfg.keys.manager_leader), what="m1 elected")
    threads["m2"].start()
    leader = store.get(cfg.keys.manager_leader)
    assert b'"m1"' in leader.value
    # m1 dies without resigning: its lease must expire for m2 to lead.
    stops["m1"].set()
    died = time.monotonic()
    threads["m1"].join(10)
    wait_until(lambda: b'"m2"' in (store.get(cfg.keys.manager_leader) or leader).value,
               timeout=cfg.ttl + 3, what="m2 elected")
    assert time.monotonic() - died <= cfg.ttl + 1.0
    stops["m2"].set()
    threads["m2"].join(10)
