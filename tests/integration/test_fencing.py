"""Fencing end to end: real agents racing for one shared-storage guest, intruders (paused
or destroyed), the self-fence on a partition timed against the fence's expiry, the fence
hook while etcd is unreachable, a fence re-bound to the agent's lease, clean stops with
and without a watchdog, and HA restarts by the leader-elected manager."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from agents.hook import DEFAULT_TIMEOUT_S as HOOK_TIMEOUT_S
from agents.lease import GUARD_TICK
from gridtool.ha.manager import Manager
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, Intent, Violation, decode, encode
from tests.harness.checker import DoubleRunChecker
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import (
    domain_xml,
    hold_for,
    lease_expiry_bound,
    run_fence_hook,
    wait_until,
)

SHARED = "/dev/etherd/e9.1"
VOLUME = "aoe-e9.1"
UUID = "11111111-2222-3333-4444-555555555555"
#: An HA guest beside the pinned ``db`` on its own shared volume.
WEB_UUID = "66666666-7777-8888-9999-000000000000"
WEB_VOLUME = "aoe-e9.2"


def shared_xml(name: str = "db", uuid: str = UUID, disk: str = SHARED) -> str:
    return domain_xml(name, disk=disk, block=True).replace(
        f"<name>{name}</name>", f"<name>{name}</name><uuid>{uuid}</uuid>")


def hosts_with_guest(lab_hosts, names, xml=None, storage=None, per_host=None,  # type: ignore[no-untyped-def]
                     **agent_settings):
    """Hosts that all have the shared guest defined (as Xen/AoE fleets do); ``storage``:
    the storage ids each host's agent declares it reaches (host -> ids); ``per_host``:
    agent settings of single hosts (host -> settings)."""
    settings = {name: {**(per_host or {}).get(name, {}),
                       **({"storage": storage[name]} if name in (storage or {}) else {})}
                for name in names}
    hosts_with_guests(lab_hosts, names, [xml or shared_xml()], settings, **agent_settings)


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
        # the agent records it running from libvirt's event a moment after the intent is
        # done: a manager started before that saw db shut off on its live host and
        # restarted it in place ("already running"), a new fence token (the partition
        # test's failure in CI)
        wait_until(lambda u=uuid: getattr(registry.guests_of("hv1")[0].get(u), "state", "")
                   == "running", timeout=10, what=f"{name} recorded running on hv1")


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
def running_manager(cfg, store, name="m1", settled=False, **settings):  # type: ignore[no-untyped-def]
    """A manager candidate (period 0.2 s) running on a thread of this process;
    ``settled``: yielded once it leads and has done a full round (a fault injected
    before that times the manager's start-up too: the CI failure of a restart bound)."""
    stop = threading.Event()
    manager = Manager(cfg, store, name, **{"period": 0.2, **settings})
    thread = threading.Thread(target=manager.run, args=(stop,), name=f"manager {name}")
    thread.start()
    try:
        if settled:
            wait_until(lambda: manager.leader_rev and any(r.full for r in list(manager.rounds)),
                       timeout=30, what=f"manager {name} elected and done a full round")
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


#: The fault table in docs/architecture.md: after a host power-off its HA guests run
#: elsewhere within "TTL + ~0.2 s" (the lease runs out at most TTL after the last
#: keepalive, sent before the power-off; then the manager's watch, its intent and the
#: other host's start take ~0.2 s). The slack is for a loaded 2-core machine: etcd's
#: lessor looks for expired leases every 0.5 s, and the manager, two agents, their
#: libvirtds and the suite's other work share two cores (seconds of scheduling delay at
#: load 6-10). Measured here at TTL 3: 2.4-3.2 s after the fault at load 1-4, 2.4-3.5 s
#: at load 5-6 (three CPU burners beside the test). A restart that waits for a second
#: TTL, a manager period of seconds or an intent retry fails.
HA_RESTART_SLACK_S = 2.0
#: The manager fences the lost host first: the lab's fence agent (the testbed configures
#: it for every host, as `lab up` does) runs off, then status, a Python process each:
#: 0.3-0.45 s a run at load 3 (3.8-3.9 s power-off to restart at TTL 3), 1.1 s at load
#: 8-10 (two restarts missed a 1 s allowance at load 10-20 with five other test runs).
POWER_FENCE_S = 2.0


def ha_restart_bound(ttl: float) -> float:
    """Seconds from a power-off (or an agent stop) to the HA guest running elsewhere."""
    return ttl + 0.2 + POWER_FENCE_S + HA_RESTART_SLACK_S


def wait_ha_restart(lab_hosts, cfg, since: float, where: list[str] | None = None,  # type: ignore[no-untyped-def]
                    uuid: str = UUID, ttl: float | None = None) -> list[str]:
    """Wait until the HA guest runs on one host (on ``where`` if given) and return the
    hosts; it must within :func:`ha_restart_bound` of ``ttl`` (default the lease TTL,
    ``ttl=0``: the lease was revoked at ``since``), counted from ``since``, a
    ``time.monotonic()``. The bound's fence allowance is at least the power fence's own
    time as the manager recorded it: the lab's fence agent is two Python processes, and
    their start-up alone took over 4 s under CI's load once (the restart came 7.2+ s
    after the fault at TTL 3), which is no fault of the recovery path timed here."""
    def restarted() -> list[str] | None:
        on = running_on(lab_hosts, uuid)
        return on if (on == where if where is not None else len(on) == 1) else None

    bound = ha_restart_bound(cfg.ttl if ttl is None else ttl)
    on = wait_until(restarted, timeout=max(0.0, since + bound + 30 - time.monotonic()),
                    what=f"the HA restart on {where or 'another host'}")
    took = time.monotonic() - since
    fence = power_fence_seconds(cfg)
    limit = bound - POWER_FENCE_S + max(POWER_FENCE_S, fence)
    print(f"HA restart {took:.2f} s after the fault (power fence {fence:.2f} s, bound "
          f"{limit:.1f} s)")
    assert took <= limit, (
        f"the HA restart on {on} came {took:.2f} s after the fault: over TTL + 0.2 s + "
        f"{max(POWER_FENCE_S, fence):.2f} s fence (measured {fence:.2f} s, at least "
        f"{POWER_FENCE_S:g} s) + {HA_RESTART_SLACK_S:g} s slack = {limit:.1f} s")
    return on  # type: ignore[return-value]


def power_fence_seconds(cfg) -> float:  # type: ignore[no-untyped-def]
    """The longest power fence the manager recorded (lease seen gone -> power confirmed
    off), in seconds; 0.0 when it fenced none by power."""
    from gridtool.fencing.shell import read_host_fences
    from gridtool.registry.etcdstore import EtcdStore

    store = EtcdStore(cfg)
    try:
        records = read_host_fences(store, cfg.keys)[0].values()
    finally:
        store.close()
    return max((r.power_at - r.gone_since for r in records if r.power_at), default=0.0)


def test_race_exactly_one_winner_per_round(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    names = [f"hv{i}" for i in range(1, 6)]
    hosts_with_guest(lab_hosts, names)
    wait_registered(registry, names)
    client = IntentClient(store, cfg.keys)
    rounds = 100  # 500 contested starts (the chaos tier and the unit properties race more)
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
    checker.assert_safe()
    assert len(set(winners)) > 1  # the race is real: different hosts win


def _outcome(client: IntentClient, intent: Intent) -> Intent:
    return client.wait(intent, timeout=30, raise_failed=False)


@pytest.mark.parametrize("policy", ["pause", "destroy"])
def test_guest_started_behind_our_back_is_stopped_as_intruder(lab_hosts, store, cfg, registry,  # type: ignore[no-untyped-def]
                                                              policy):
    """A bare start on hv2 of the guest whose fence hv1 holds: hv2's agent stops it as its
    ``intruder_policy`` says (paused by default, or destroyed) and records the violation;
    hv1 keeps the guest and the fence."""
    import libvirt

    lab_hosts.add("hv1")
    lab_hosts.add("hv2")
    for name in ("hv1", "hv2"):
        lab_hosts.conn(name).defineXML(shared_xml())
    lab_hosts.start_agent("hv1")
    lab_hosts.start_agent("hv2", intruder_policy=policy)
    wait_registered(registry, ["hv1", "hv2"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    # A sysadmin runs a bare `virsh start` on hv2 (the test driver has no hook to stop it).
    intruder = lab_hosts.conn("hv2").lookupByUUIDString(UUID)
    intruder.create()
    key = cfg.keys.violation("hv2", UUID)
    wait_until(lambda: store.get(key), what="violation reported")
    violation = decode(Violation, key, store.get(key).value)
    assert (violation.holder, violation.action, violation.volume) == ("hv1", policy, VOLUME)
    assert f"{policy} it" in violation.message
    stopped = {"pause": libvirt.VIR_DOMAIN_PAUSED, "destroy": libvirt.VIR_DOMAIN_SHUTOFF}
    wait_until(lambda: intruder.state()[0] == stopped[policy],
               what=f"the intruder {policy.removesuffix('e')}ed")
    assert f"event=fence_violation host=hv2 guest=db uuid={UUID} action={policy}" in \
        lab_hosts.agent_log("hv2")
    assert running_on(lab_hosts) == ["hv1"] and fence_holder(store, cfg) == "hv1"


def test_guest_started_without_fence_takes_it_and_reports(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    hosts_with_guest(lab_hosts, ["hv1"])
    # Not before the first resync is done: it adopts what it finds running.
    wait_until(resynced(store, cfg, "hv1"), what="hv1's first resync")
    lab_hosts.conn("hv1").lookupByUUIDString(UUID).create()
    wait_until(lambda: fence_holder(store, cfg) == "hv1", what="fence taken")
    # the agent reports the violation just after taking the fence
    item = wait_until(lambda: store.get(cfg.keys.violation("hv1", UUID)),
                      what="violation reported")
    assert decode(Violation, item.key, item.value).action == "take"


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
    """hv1 cut off etcd destroys its HA guest itself, at least the margin before etcd can
    let the fence go, on the clocks that matter. hv1 decides at its deadline D = (send
    time of the newest acknowledged keepalive) + TTL - margin: its log's self_fence line
    minus the overdue_s it prints. etcd expires the lease no earlier than TTL after the
    last keepalive it received, which was sent no earlier: the fence's delete (seen by a
    watch here) must come at least ``margin`` after D, and the guest must be gone by then.
    The guard must also act promptly (its tick plus a destroy, well inside the margin),
    and D can be no later than the cut + TTL - margin (nothing sent after the cut is
    acknowledged)."""
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
        deleted: list[tuple[float, list[str]]] = []  # (when, where the guest ran then)
        watch = store.watch_prefix(cfg.keys.fence(VOLUME), lambda ev: ev.kind == "delete" and (
            deleted.append((time.time(), running_on(lab_hosts)))))
        try:
            cut = time.time()
            proxy.cut()
            wait_until(lambda: deleted, timeout=lease_expiry_bound(cfg.ttl),
                       what="the fence to expire")
        finally:
            watch.cancel()
    finally:
        proxy.close()
    expired, running_then = deleted[0]
    # (a late self-fence is logged after the expiry: wait for it to say by how much)
    wait_until(lambda: lab_hosts.agent_events("hv1", "self_fenced"), timeout=cfg.ttl,
               what="hv1's self-fence")
    [(decided, line)] = lab_hosts.agent_events("hv1", "self_fence")
    deadline = decided - float(line.rsplit("overdue_s=", 1)[1].split()[0])
    [(destroyed, _)] = lab_hosts.agent_events("hv1", "self_fenced")
    margin = max(1.0, cfg.ttl / 5)  # as documented (not the code's: a change must show)
    resolution = 0.01  # the log's milliseconds and overdue_s's two decimals
    numbers = (f"cut at 0, deadline {deadline - cut:+.3f} s, destroyed {destroyed - cut:+.3f} s, "
               f"fence expired {expired - cut:+.3f} s (TTL {cfg.ttl} s, margin {margin:g} s)")
    print(numbers)
    assert running_then == [], f"the guest still ran when etcd let its fence go: {numbers}"
    assert expired - deadline >= margin - resolution, numbers
    assert destroyed < expired, numbers
    # the guard's tick (0.1 s) and a test-driver destroy (ms) take far less than the
    # margin they are budgeted in; half of it leaves 0.4 s for scheduling on the loaded
    # 2-core machine. A guard needing more is a regression even if this run was safe.
    assert destroyed - deadline <= margin / 2, numbers
    assert deadline <= cut + cfg.ttl - margin + resolution, numbers


def test_a_fence_bound_to_a_lease_the_agent_does_not_keep_is_bound_to_its_own(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """Documented: an HA fence found bound to another lease than the agent's own (a lease
    lost while the guest kept running) is re-put under the current lease by the next
    resync. Here the test moves hv1's fence onto a stray lease of its own (60 s, kept
    alive by nobody); hv1's next resync binds it to hv1's lease again, so that the stray
    lease's end leaves the fence, and the guest, where they are."""
    from gridtool.registry.store import Compare, Put

    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=True)))
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    key = cfg.keys.fence(VOLUME)
    held, own = store.get(key), store.get(cfg.keys.host("hv1")).lease
    assert held is not None and held.lease == own
    stray = store.grant_lease(60)
    try:
        assert store.txn([Compare(key, "mod", held.mod_revision)],
                         [Put(key, held.value, stray)])
        # the next resync comes within resync_interval (2 s); +2 s for a loaded machine
        rebound = wait_until(lambda: (item := store.get(key)) is not None
                             and item.lease == own and item, timeout=cfg.resync_interval + 2,
                             what="hv1's resync to bind the fence to its own lease again")
    finally:
        store.revoke_lease(stray)
    assert rebound.mod_revision > held.mod_revision and rebound.value == held.value
    after = store.get(key)
    assert after is not None and after.lease == own, "the stray lease took the fence along"
    assert running_on(lab_hosts) == ["hv1"]


@pytest.mark.parametrize("registry_timeout", [1.0, 3.0], ids=["store-gives-up", "store-retries"])
def test_the_fence_hook_fails_closed_saying_why_while_etcd_is_unreachable(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, etcd_cluster, tmp_path, registry_timeout):
    """hv2's agent is up, its way to etcd is cut: the libvirt fence hook, run as libvirt
    runs it, must refuse a start there (nobody can tell who holds the fence) within its
    own timeout, and say that the registry is the trouble, not tell the operator to
    start an agent that runs. Whether the agent's store gives up on etcd before the
    hook's deadline (timeout 1 s) or would go on retrying past it (3 s; 5 s by default)."""
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    sock = str(tmp_path / "hv2-hook.sock")
    try:
        lab_hosts.add("hv1")
        lab_hosts.add("hv2")
        for name in ("hv1", "hv2"):
            lab_hosts.conn(name).defineXML(shared_xml())
        lab_hosts.start_agent("hv1")
        lab_hosts.start_agent("hv2", endpoints=(proxy.endpoint,), hook_socket=sock,
                              timeout=registry_timeout)
        wait_registered(registry, ["hv1", "hv2"])
        client = IntentClient(store, cfg.keys)
        assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
        xml = lab_hosts.conn("hv2").lookupByUUIDString(UUID).XMLDesc(0)
        asked = run_fence_hook(sock, xml, "db")  # etcd reachable: the agent knows
        assert asked.returncode == 1 and "fence is held by hv1" in asked.stderr, asked.stderr
        proxy.cut()
        began = time.monotonic()
        refused = run_fence_hook(sock, xml, "db", timeout=HOOK_TIMEOUT_S)
        took = time.monotonic() - began
    finally:
        proxy.close()
    print(f"hook refused in {took:.2f} s: {refused.stderr.strip()}")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("gridtool fence hook: refusing to start db: ")
    assert "registry" in refused.stderr and "unreachable" in refused.stderr, refused.stderr
    assert "start the agent" not in refused.stderr, "hv2's agent runs: wrong advice"
    # its own timeout, plus the interpreter's start-up on a loaded machine (python -I)
    assert took < HOOK_TIMEOUT_S + 3, took
    assert "hook_refused host=hv2 guest=db" in lab_hosts.agent_log("hv2")


@contextlib.contextmanager
def ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry, name="db", uuid=UUID,  # type: ignore[no-untyped-def]
                                 storage=None, per_host=None, manager=None, **agent_settings):
    """The shared guest running on hv1 as an HA guest, hv2 (or every host of ``storage``,
    host -> storage ids it reaches) ready, a manager running (``manager``: its settings)."""
    names = sorted(storage or ("hv1", "hv2"))
    hosts_with_guest(lab_hosts, names, shared_xml(name, uuid), storage, per_host,
                     **agent_settings)
    wait_registered(registry, names)
    store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, name, ha=True)))
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", uuid, name), 30).state == "done"
    # the scenario is a guest the registry knows runs on hv1: the agent writes its record
    # from libvirt's event a moment after the intent is done
    wait_until(lambda: getattr(registry.guests_of("hv1")[0].get(uuid), "state", "") ==
               "running", timeout=10, what=f"{name} recorded running on hv1")
    with running_manager(cfg, store, settled=True, **(manager or {})):
        yield


def test_ha_guest_restarted_elsewhere_after_power_off(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        powered_off = time.monotonic()
        lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guests
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_ha_restart(lab_hosts, cfg, powered_off, ["hv2"])
    checker.assert_safe()
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
        powered_off = time.monotonic()
        lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guests
        lab_hosts.conn("hv1").lookupByUUIDString(uuid).destroy()
        where = wait_ha_restart(lab_hosts, cfg, powered_off, uuid=uuid)
    assert where in (["hv3"], ["hv4"]), f"{name} restarted on {where}"
    checker.assert_safe()
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
            # Past the moment the old lease would have expired (+1 s: etcd's lessor checks
            # every 0.5 s), nothing may move: checked all along, failing at the first move.
            def nothing_moved() -> bool:
                held = store.get(cfg.keys.fence(VOLUME))
                return (lab_hosts.watchdogs["hv1"].resets == 0
                        and running_on(lab_hosts) == ["hv1"] and held is not None
                        and held.mod_revision == fence.mod_revision)

            hold_for(max(0.0, stopped + ttl + 1 - time.time()), nothing_moved,
                     "hv1 keeps db and its fence through its agent's restart")
        checker.assert_safe()


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
        # SIGTERM and never started again: the last keepalive was sent before the stop,
        # so the lease runs out within TTL of it, as after a power-off (the watchdog
        # resets hv1 before, at its 1.2 s timeout)
        stopped = time.monotonic()
        lab_hosts.stop_agent("hv1")
        wait_ha_restart(lab_hosts, cfg, stopped, ["hv2"])
    checker.assert_safe()
    assert lab_hosts.watchdogs["hv1"].resets == 1
    assert fence_holder(store, cfg) == "hv2"


def power_fenced(store, cfg, host: str) -> bool:  # type: ignore[no-untyped-def]
    """The manager recorded that ``host``'s fence agent switched it off."""
    from gridtool.fencing.recovery import POWER_OFF
    from gridtool.fencing.shell import read_host_fences

    record = read_host_fences(store, cfg.keys)[0].get(host)
    return record is not None and record.power == POWER_OFF


def test_clean_stop_without_a_watchdog_destroys_ha_guests_then_revokes_its_lease(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """Documented for SIGTERM without a watchdog: nothing would stop the HA guests once the
    lease lapsed, so the agent destroys them first (agent_stop_self_fence), then revokes
    its lease and exits 0. The fence goes with the revoke, not 30 s later with an expiry:
    the manager restarts the guest elsewhere within the restart chain's own time."""
    # hv1 without a watchdog; hv2 with one (the manager restarts HA guests only on a
    # protected host)
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry, ttl=30,
                                      per_host={"hv1": {"watchdog": False}}), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        agent = lab_hosts.agents["hv1"]
        lab_hosts.stop_agent("hv1")  # SIGTERM; returns once the agent has exited
        exited = time.monotonic()
        # The revoke lets the manager fence hv1 at once: the lab's power fence (a STONITH
        # of a host that left cleanly) may SIGKILL the agent in its last ms, after its
        # agent_stop line; anything else is the agent failing.
        if agent.returncode != 0:
            assert agent.returncode == -signal.SIGKILL, agent.returncode
            wait_until(lambda: power_fenced(store, cfg, "hv1"), 15,
                       what="hv1's power fence recorded (it killed the exiting agent)")
        assert store.get(cfg.keys.host("hv1")) is None, "lease not revoked at the stop"
        assert "hv1" not in running_on(lab_hosts)
        [(fence_at, line)] = lab_hosts.agent_events("hv1", "agent_stop_self_fence")
        assert "ha_guests=1 reason=no watchdog configured" in line
        [(destroyed_at, _)] = lab_hosts.agent_events("hv1", "self_fenced")
        [(stop_at, _)] = lab_hosts.agent_events("hv1", "agent_stop")
        assert fence_at <= destroyed_at <= stop_at  # destroyed, then the lease, then exit
        wait_ha_restart(lab_hosts, cfg, exited, ["hv2"], ttl=0)
    checker.assert_safe()
    assert "hv1" not in lab_hosts.watchdogs and fence_holder(store, cfg) == "hv2"


def test_agent_crash_with_only_pinned_guests_does_not_reset_the_host(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                                      registry):
    from gridtool.lab.hosts import watchdog_timeout_for

    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    wait_until(lambda: any(g.state == "running" for g in registry.list_guests()[0]),
               what="db reported running")
    dog = lab_hosts.hosts["hv1"].watchdog
    # The guard tends the watchdog once the first resync has judged every guest; the main
    # loop writes a guest's record only after that resync, so from db's "running" on the
    # guard is at work: 10 of its ticks must leave the watchdog unarmed (nothing to fence).
    hold_for(10 * GUARD_TICK, lambda: not dog.exists() or dog.read_bytes() == b"V",
             "hv1's watchdog never armed while only a pinned guest runs")
    lab_hosts.stop_agent("hv1", kill=True)
    # Past twice the watchdog timeout, a pinned guest must still run, its host not reset.
    hold_for(2 * watchdog_timeout_for(cfg.ttl),
             lambda: lab_hosts.watchdogs["hv1"].resets == 0 and running_on(lab_hosts) == ["hv1"],
             "db keeps running on hv1 after its agent crashed")


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
                   timeout=lease_expiry_bound(cfg.ttl), what="hv1's lease to expire")
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
    sampled throughout: neither guest ever runs twice. No fence agent here (the timed
    path): a power fence would switch hv1 off before web's restart, db with it."""
    lab_hosts.power_fence = False
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


def test_a_pinned_guest_down_on_its_live_host_is_restarted_there(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys):
    """Started by the operator (desired running), pinned db dies behind gridtool's back on
    hv1 (a crash, or an autostart its hook refused): the manager starts it again on hv1,
    never on hv2; stopped by the operator, it stays down."""
    from tests.harness.testbed import run_cli

    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    assert run_cli(cfg, capsys, "guest", "start", "db", "--on", "hv1")[0] == 0
    stop = threading.Event()
    mgr = threading.Thread(target=Manager(cfg, store, "m1", period=0.2).run, args=(stop,))
    mgr.start()
    try:
        with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
            lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
            wait_until(lambda: running_on(lab_hosts) == [], what="db down on hv1")
            wait_until(lambda: running_on(lab_hosts) == ["hv1"], timeout=15,
                       what="db restarted in place on hv1")
            assert fence_holder(store, cfg) == "hv1"
            assert run_cli(cfg, capsys, "guest", "stop", "db")[0] == 0
            wait_until(lambda: running_on(lab_hosts) == [], what="db stopped")
            # several manager rounds (0.2 s each) later it is still down
            wait_until(lambda: store.get(cfg.keys.manager_status) is not None,
                       what="the manager's status")
            first = store.get(cfg.keys.manager_status).mod_revision
            wait_until(lambda: store.get(cfg.keys.manager_status).mod_revision >= first + 10,
                       what="ten manager rounds")
            assert running_on(lab_hosts) == []
        assert checker.overlaps == [] and not checker.blind
    finally:
        stop.set()
        mgr.join(10)


@pytest.mark.parametrize("seen_by", ["event", "resync"])
def test_a_pinned_guest_destroyed_with_no_desired_state_stays_down(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, seen_by):
    """Pinned db, started by an intent alone (no desired state recorded: the manager reads
    one from its held fence), is destroyed behind gridtool's back on hv1, a clean stop:
    seen by its agent's lifecycle event, or (``resync``) while the agent was down, by the
    restarted agent's resync through libvirt's reason for the shut-off state. The fence
    is deleted before the registry shows db stopped, so no manager round can see "stopped
    beside a held fence" (a crash, restarted in place): db stays down. The agent used to
    write the record first, and a resync took every stop for a crash: in the Xen tier the
    manager restarted guests destroyed that way, and they piled up on one dom0."""
    from gridtool.registry.model import GuestRecord
    from gridtool.registry.model import decode as decode_model

    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    record = cfg.keys.guest("hv1", UUID)
    wait_until(lambda: running_on(lab_hosts) == ["hv1"] and getattr(
        registry.guests_of("hv1")[0].get(UUID), "state", "") == "running",
        what="db recorded running on hv1")
    events: list[str] = []  # db's fence and record changes, in revision order

    def seen(ev) -> None:  # type: ignore[no-untyped-def]
        if ev.key == cfg.keys.fence(VOLUME):
            events.append(f"fence {ev.kind}")
        elif ev.key == record and ev.kind == "put":
            events.append(f"record {decode_model(GuestRecord, record, ev.value).state}")

    watch = store.watch_prefix(cfg.keys.prefix, seen,
                               start_revision=store.get(record).mod_revision + 1)
    stop = threading.Event()
    mgr = threading.Thread(target=Manager(cfg, store, "m1", period=0.2).run, args=(stop,))
    mgr.start()
    try:
        if seen_by == "resync":
            lab_hosts.stop_agent("hv1")
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        if seen_by == "resync":
            lab_hosts.start_agent("hv1")
        wait_until(lambda: "record shutoff" in events, what="db recorded shut off")
        wait_until(lambda: store.get(cfg.keys.manager_status) is not None,
                   what="the manager's status")
        first = store.get(cfg.keys.manager_status).mod_revision
        wait_until(lambda: store.get(cfg.keys.manager_status).mod_revision >= first + 10,
                   what="ten manager rounds")
        assert "fence delete" in events, events
        assert events.index("fence delete") < events.index("record shutoff"), events
        assert running_on(lab_hosts) == [] and fence_holder(store, cfg) is None
    finally:
        watch.cancel()
        stop.set()
        mgr.join(10)


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
    took = time.monotonic() - died
    print(f"manager failover {took:.2f} s after the leader died (TTL {cfg.ttl} s)")
    # The fault table's "≤ TTL + 1 s": etcd's lessor checks expiry every 0.5 s, then m2's
    # next campaign (every 0.1 s here) and its transaction. +1 s for a loaded 2-core
    # machine (measured 0.36-0.49 s over TTL at load 3-5, so the 1 s had 0.5 s left);
    # a failover waiting for a second TTL still fails.
    assert took <= cfg.ttl + 1.0 + 1.0
    stops["m2"].set()
    threads["m2"].join(10)


def _violation(store, cfg, host):  # type: ignore[no-untyped-def]
    item = store.get(cfg.keys.violation(host, UUID))
    return decode(Violation, item.key, item.value) if item is not None else None


def _judged_since(store, cfg, host, since):  # type: ignore[no-untyped-def]
    """The violation ``host``'s agent recorded for the guest after ``since`` (its agent
    judged the guest again), or None yet."""
    violation = _violation(store, cfg, host)
    return violation if violation is not None and violation.at > since else None


def _judged_or_taken(store, cfg, host, since):  # type: ignore[no-untyped-def]
    """(the violation ``host`` recorded after ``since``, the fence's holder) once either
    is there: an agent that adopts a guest silently records no violation."""
    found = (_judged_since(store, cfg, host, since), fence_holder(store, cfg))
    return found if found != (None, None) else None


def _state(lab_hosts, host):  # type: ignore[no-untyped-def]
    return lab_hosts.conn(host).lookupByUUIDString(UUID).state()[0]


def _paused_intruder_with_its_fence_freed(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    """hv1 runs the guest with its fence; a bare start on hv2 is paused as an intruder;
    then the guest stops cleanly on hv1, which frees the fence. hv2 resyncs every
    second. Returns when the fence key is gone (the time it was seen gone)."""
    import libvirt

    hosts_with_guest(lab_hosts, ["hv1", "hv2"], resync_interval=1.0)
    wait_registered(registry, ["hv1", "hv2"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    lab_hosts.conn("hv2").lookupByUUIDString(UUID).create()  # a bare `virsh start`
    wait_until(lambda: _state(lab_hosts, "hv2") == libvirt.VIR_DOMAIN_PAUSED
               and _violation(store, cfg, "hv2"), what="intruder paused and reported")
    assert _violation(store, cfg, "hv2").action == "pause"
    assert client.wait(client.submit("hv1", "stop", UUID, "db"), 30).state == "done"
    wait_until(lambda: fence_holder(store, cfg) != "hv1", what="fence freed on hv1")
    return time.time()


def test_paused_intruder_never_inherits_the_freed_fence(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    """Issue 12 item 3: once judged an intruder, a guest takes no fence until it has been
    shut off, across an agent restart; a resume is paused again and reported; a proper
    start through gridtool after it is shut off works."""
    import libvirt

    freed = _paused_intruder_with_its_fence_freed(lab_hosts, store, cfg, registry)
    judged = wait_until(lambda: _judged_since(store, cfg, "hv2", freed),
                        what="hv2 judged its copy after the fence was freed")
    assert (judged.action, fence_holder(store, cfg)) == ("pause", None), judged
    assert _state(lab_hosts, "hv2") == libvirt.VIR_DOMAIN_PAUSED
    # A restarted agent (its first resync adopts what ran before it) must not forget.
    lab_hosts.stop_agent("hv2")
    restarted = time.time()
    lab_hosts.start_agent("hv2", resync_interval=1.0)
    judged, holder = wait_until(lambda: _judged_or_taken(store, cfg, "hv2", restarted),
                                what="the restarted hv2 judged its copy")
    assert (judged and judged.action, holder) == ("pause", None), (judged, holder)
    assert "event=fence_adopt" not in lab_hosts.agent_log("hv2")
    record = registry.guests_of("hv2")[0][UUID]
    assert (record.state, record.intruder) == ("paused", True)
    # `virsh resume`: paused again at once (the lifecycle event), and reported.
    dom = lab_hosts.conn("hv2").lookupByUUIDString(UUID)
    resumed = time.time()
    dom.resume()
    wait_until(lambda: _state(lab_hosts, "hv2") == libvirt.VIR_DOMAIN_PAUSED
               and _judged_since(store, cfg, "hv2", resumed), what="resumed intruder paused")
    assert fence_holder(store, cfg) is None
    assert "event=intruder_resumed host=hv2" in lab_hosts.agent_log("hv2")
    # A start through gridtool would take the fence for the paused copy: refused.
    client = IntentClient(store, cfg.keys)
    refused = client.wait(client.submit("hv2", "start", UUID, "db"), 30, raise_failed=False)
    assert refused.state == "failed" and "judged an intruder" in refused.message
    assert fence_holder(store, cfg) is None
    # Shut off, the copy is an ordinary guest again: a start through gridtool works.
    dom.destroy()
    wait_until(lambda: not registry.guests_of("hv2")[0][UUID].intruder
               and registry.guests_of("hv2")[0][UUID].state == "shutoff",
               what="hv2's copy shut off")
    assert client.wait(client.submit("hv2", "start", UUID, "db"), 30).state == "done"
    assert fence_holder(store, cfg) == "hv2" and running_on(lab_hosts) == ["hv2"]


def test_intruder_resumed_while_its_agent_was_down_is_destroyed_per_policy(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """The mark lives with the running copy: resumed while hv2's agent was down, with
    the fence free, the copy is not adopted by the restarted agent; with
    intruder_policy=destroy it is destroyed and reported."""
    _paused_intruder_with_its_fence_freed(lab_hosts, store, cfg, registry)
    lab_hosts.stop_agent("hv2")
    lab_hosts.conn("hv2").lookupByUUIDString(UUID).resume()
    restarted = time.time()
    lab_hosts.start_agent("hv2", intruder_policy="destroy")
    judged, holder = wait_until(lambda: _judged_or_taken(store, cfg, "hv2", restarted),
                                what="the restarted hv2 judged its copy")
    assert (judged and judged.action, holder) == ("destroy", None), (judged, holder)
    assert running_on(lab_hosts) == []
    import libvirt

    assert _state(lab_hosts, "hv2") == libvirt.VIR_DOMAIN_SHUTOFF
    log = lab_hosts.agent_log("hv2")
    assert "event=fence_adopt" not in log and "event=intruder_resumed host=hv2" in log


# --------------------------------------------------------------------------- power fencing


def host_fence(store, cfg, host):  # type: ignore[no-untyped-def]
    """The manager's record of its fence of lost ``host`` (None when there is none)."""
    from gridtool.fencing.recovery import HostFence

    item = store.get(cfg.keys.host_fence(host))
    return decode(HostFence, item.key, item.value) if item else None


def manager_status(store, cfg):  # type: ignore[no-untyped-def]
    from gridtool.registry.records import ManagerStatus

    item = store.get(cfg.keys.manager_status)
    return decode(ManagerStatus, item.key, item.value) if item else None


def test_a_dead_agent_without_watchdog_is_power_fenced_before_the_ha_restart(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """hv1's agent dies (SIGKILL) and hv1 has no watchdog: its HA guest runs on and nothing
    on hv1 will stop it. The manager runs hv1's fence agent (the lab's fence_gridtool_lab,
    as `lab up` configures it): off destroys the guest, status confirms; only then is it
    restarted on hv2, and the record and the manager's status say which fence it relied on.
    (Without the fence this is a double run after the timed grace: the simulator's
    negative-hang-without-watchdog.)"""
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry,
                                      per_host={"hv1": {"watchdog": False}}), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        killed = time.monotonic()
        lab_hosts.stop_agent("hv1", kill=True)
        assert running_on(lab_hosts) == ["hv1"]  # the guest outlives its agent
        wait_ha_restart(lab_hosts, cfg, killed, ["hv2"])
        wait_until(lambda: any("fenced by power" in a for a in manager_status(store, cfg).actions),
                   what="the restart noted with its fence")
    checker.assert_safe()
    record = host_fence(store, cfg, "hv1")
    assert record is not None and record.power == "off", record
    assert record.power_message.startswith("power off confirmed by status"), record
    assert record.gone_since <= record.power_at
    assert fence_holder(store, cfg) == "hv2"


FAILING_AGENT = "#!/bin/sh\ncat >/dev/null\necho 'ipmi: connection refused' >&2\nexit 1\n"
HANGING_AGENT = "#!/bin/sh\necho $$ > \"$0.pid\"\nexec sleep 600\n"


@pytest.mark.parametrize("script", [FAILING_AGENT, HANGING_AGENT], ids=["fails", "hangs"])
def test_a_failing_or_hanging_fence_agent_means_no_restart_and_check_critical(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys, tmp_path, script):
    """hv1's fence agent fails (exit 1) or hangs (killed after the 1 s timeout): the
    manager does not recover hv1's HA guest, records the failure, and `gridtool check`
    says CRITICAL HOST_FENCE_FAILED."""
    import os

    from gridtool.fencing.power import PowerPolicy
    from gridtool.registry import fenceagents
    from tests.harness.testbed import run_cli

    agent = tmp_path / "fence_broken"
    agent.write_text(script)
    agent.chmod(0o755)
    policy = PowerPolicy(timeout=1.0, power_wait=2.0, poll=0.2)
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry,
                                      manager={"power_policy": policy}):
        fenceagents.write(store, cfg.keys, "hv1", str(agent), {"ip": "10.0.0.11"})
        lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guests
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_until(lambda: getattr(host_fence(store, cfg, "hv1"), "power", "") == "failed",
                   timeout=lease_expiry_bound(cfg.ttl) + policy.timeout + 3,
                   what="the failed fence recorded")
        hold_for(2.0, lambda: running_on(lab_hosts) == [], "no restart after a failed fence")
        code, out, _ = run_cli(cfg, capsys, "check")
        status = manager_status(store, cfg)
    record = host_fence(store, cfg, "hv1")
    assert code == 2 and "HOST_FENCE_FAILED" in out, out
    assert status is not None and status.fences["hv1"].startswith("FAILED"), status
    if script is FAILING_AGENT:
        assert "exit 1" in record.power_message and "connection refused" in record.power_message
    else:
        assert "hung on off" in record.power_message, record
        pid = int(Path(f"{agent}.pid").read_text())
        with pytest.raises(ProcessLookupError):  # killed with its process group
            os.kill(pid, 0)


def test_timed_path_without_a_fence_agent_waits_ttl_plus_margin(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """No fence agent (`lab up --no-power-fence`) and no storage fencing: the manager
    restarts the HA guest of a powered-off host only TTL + 2 s after it saw the lease gone."""
    from gridtool.fencing.recovery import TIMED_MARGIN

    lab_hosts.power_fence = False
    grace = cfg.ttl + TIMED_MARGIN
    with ha_guest_on_hv1_with_manager(lab_hosts, store, cfg, registry), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        powered_off = time.monotonic()
        lab_hosts.stop_agent("hv1", kill=True)
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_until(lambda: running_on(lab_hosts) == ["hv2"],
                   timeout=ha_restart_bound(cfg.ttl) + grace, what="the timed restart")
        running_at = time.time()
        print(f"timed path: running elsewhere {time.monotonic() - powered_off:.2f} s after "
              "the power-off")
    checker.assert_safe()
    record = host_fence(store, cfg, "hv1")
    assert record is not None and record.power == "" and not record.storage, record
    assert running_at >= record.gone_since + grace, (running_at, record.gone_since)


@pytest.mark.parametrize("leader", ["watching", "elected_after"])
def test_a_host_lost_before_it_reported_its_start_is_fenced_before_the_restart(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, leader):
    """hv1 starts the HA guest (taking its fence) and dies before it reports it running:
    its fence goes with its lease, and its record still says shut off (``watching``) or
    it never wrote one (``elected_after``). The registry's ``holders/`` key, written
    with the fence, still names hv1, so hv1's loss comes first: no restart before the
    timed grace (TTL + 2 s, no fence agent here) from the lease's end, and a host-fence
    record. ``watching``: the manager runs throughout; ``elected_after``: the first
    leader is elected once the fence is gone, so it never saw it (the old manager's
    memory of holders was its own, and lost in such a leader change)."""
    from dataclasses import replace

    from gridtool.fencing.recovery import TIMED_MARGIN

    lab_hosts.power_fence = False
    grace = cfg.ttl + TIMED_MARGIN
    hosts_with_guest(lab_hosts, ["hv1", "hv2"], shared_xml("db", UUID))
    wait_registered(registry, ["hv1", "hv2"])
    store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=True)))
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    wait_until(lambda: fence_holder(store, cfg) == "hv1", what="hv1 holding the fence")
    with DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        lab_hosts.stop_agent("hv1", kill=True)
        # what the registry holds when hv1 died before its report
        if leader == "watching":
            before = registry.guests_of("hv1")[0][UUID]
            registry.put_guest(replace(before, state="shutoff"))
        else:
            registry.delete_guest("hv1", UUID)
            wait_until(lambda: fence_holder(store, cfg) is None, timeout=cfg.ttl + 10,
                       what="hv1's fence gone with its lease")
        with running_manager(cfg, store) as manager:
            wait_until(lambda: "db" in manager.blocked or UUID in manager.blocked,
                       what="the manager waiting on hv1's fence")
            if "hv1" in running_on(lab_hosts):  # its watchdog may have reset it already
                lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()  # powered off
            wait_until(lambda: running_on(lab_hosts) == ["hv2"],
                       timeout=ha_restart_bound(cfg.ttl) + grace, what="the restart")
            running_at = time.time()
    checker.assert_safe()
    record = host_fence(store, cfg, "hv1")
    assert record is not None, "hv1's loss was never noted: restarted without its fence"
    assert running_at >= record.gone_since + grace, (running_at, record.gone_since)
    item = store.get(cfg.keys.holder(UUID))
    assert item is not None and item.value == b"hv2", "the restart's fence names hv2"


def test_the_runner_speaks_the_standard_fence_agent_protocol(tmp_path):  # type: ignore[no-untyped-def]
    """Debian's fence-agents (the library fence_ipmilan and the others are built on):
    fence_dummy with a status file is powered off through the same runner the manager
    uses (off, then status until off), and `host fence-agent test`'s check says on/off."""
    from gridtool.fencing import agentrun
    from gridtool.fencing.power import PowerPolicy
    from gridtool.registry.fenceagents import FenceAgentConf

    if not Path("/usr/sbin/fence_dummy").exists():
        pytest.fail("fence_dummy is not installed: run scripts/setup (fence-agents)")
    status = tmp_path / "dummy.status"
    status.write_text("on")  # fence_dummy compares the file's whole text
    conf = FenceAgentConf("hv1", "fence_dummy", {"type": "file", "status_file": str(status)})
    policy = PowerPolicy(timeout=20.0, power_wait=20.0, poll=0.2)
    assert agentrun.check(conf, policy).message == "monitor ok; power on"
    outcome = agentrun.power_off(conf, policy)
    assert outcome.ok and outcome.message.startswith("power off confirmed by status"), outcome
    assert status.read_text() == "off"
    assert agentrun.check(conf, policy).message == "monitor ok; power off"
    # type=fail never reaches off: the agent waits longer than the 2 s timeout and is killed
    failing = FenceAgentConf("hv1", "fence_dummy", {"type": "fail"})
    refused = agentrun.power_off(failing, PowerPolicy(timeout=2.0, power_wait=3.0))
    assert not refused.ok and "on off" in refused.message, refused
