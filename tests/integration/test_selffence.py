"""The self-fence of a real agent on libvirt's test driver (issue 12, item 2): a destroy
that fails is retried on later guard ticks until libvirt says the guest is gone; while
the lease is in doubt every tick checks again, so a guest that comes up after the first
pass is killed too; a start whose fence was taken before the deadline is refused by the
lease check right before ``create()``. The agent reaches etcd through a cuttable proxy
and has no watchdog: the self-fence alone must be done before the fences can expire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from gridtool.config import Config
from gridtool.fencing.rules import default_margin
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import LabHosts, lease_expiry_bound, wait_until
from tests.integration.test_fencing import UUID, running_on, shared_xml, wait_registered

UUID2 = "11111111-2222-3333-4444-666666666666"


def ha_guests_on_hv1(lab_hosts: LabHosts, store, cfg: Config, registry,  # type: ignore[no-untyped-def]
                     proxy: CuttableProxy, start: tuple[str, ...] = (UUID, UUID2),
                     **settings: object) -> None:
    """hv1 (no watchdog, etcd through ``proxy``) with two HA guests, ``start`` started."""
    lab_hosts.add("hv1")
    for name, uuid, disk in (("db", UUID, "/dev/etherd/e9.1"), ("db2", UUID2, "/dev/etherd/e9.2")):
        lab_hosts.conn("hv1").defineXML(shared_xml(name, uuid, disk))
        store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, name, ha=True)))
    lab_hosts.start_agent("hv1", watchdog=False, endpoints=(proxy.endpoint,), **settings)
    wait_registered(registry, ["hv1"])
    client = IntentClient(store, cfg.keys)
    for uuid in start:
        name = "db" if uuid == UUID else "db2"
        assert client.wait(client.submit("hv1", "start", uuid, name), 30).state == "done"


@contextmanager
def fence_expiries(store, cfg: Config) -> Iterator[list[float]]:  # type: ignore[no-untyped-def]
    """The times (``time.time()``) at which fence keys are deleted, while in the block."""
    deleted: list[float] = []
    watch = store.watch_prefix(cfg.keys.fences, lambda ev: ev.kind == "delete"
                               and deleted.append(time.time()))
    try:
        yield deleted
    finally:
        watch.cancel()


def deadline_of(lab_hosts: LabHosts) -> float:
    """The self-fence deadline hv1 acted on (its log's self_fence line - overdue_s)."""
    [(decided, line)] = lab_hosts.agent_events("hv1", "self_fence")
    return decided - float(line.rsplit("overdue_s=", 1)[1].split()[0])


def test_a_failing_destroy_is_retried_until_libvirt_says_the_guest_is_gone(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, etcd_cluster) -> None:
    """libvirt's destroy of db fails three times (the test-only fault point): the guard
    tries again on its next ticks, and db is gone before its fence can expire. (The agent
    used to give up at the first error and never try again.)"""
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    try:
        ha_guests_on_hv1(lab_hosts, store, cfg, registry, proxy, start=(UUID,),
                         fault_points=("self-fence-destroy-fails=3",))
        with fence_expiries(store, cfg) as deleted:
            cut = time.time()
            proxy.cut()
            wait_until(lambda: not running_on(lab_hosts, UUID), lease_expiry_bound(cfg.ttl),
                       what="db destroyed")
            gone = time.time()
            wait_until(lambda: deleted, lease_expiry_bound(cfg.ttl), what="db's fence expired")
    finally:
        proxy.close()
    failures = [line for _, line in lab_hosts.agent_events("hv1", "self_fence_failed")]
    assert [f"failure {n} of 3" in line for n, line in enumerate(failures, 1)] == [True] * 3
    [(fenced, _)] = lab_hosts.agent_events("hv1", "self_fenced")
    deadline = deadline_of(lab_hosts)
    numbers = (f"cut at 0, deadline {deadline - cut:+.2f} s, destroyed {fenced - cut:+.2f} s "
               f"(seen {gone - cut:+.2f} s), fence expired {deleted[0] - cut:+.2f} s")
    print(numbers)
    assert gone < deleted[0], numbers
    assert fenced - deadline < default_margin(cfg.ttl), numbers
    wait_until(lambda: lab_hosts.agent_events("hv1", "self_fence_done"), 5,
               what="every HA guest confirmed gone")


def test_a_guest_started_after_the_first_self_fence_pass_is_killed_on_a_later_tick(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, etcd_cluster) -> None:
    """Both HA guests are destroyed at the deadline; then db2 comes up again (as a start
    in flight at the deadline would, through libvirt alone): while the lease is in doubt
    the guard checks again on every tick and kills it within a tick or two, before its
    fence can expire. (The agent used to self-fence once per lease and forget them.)"""
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    try:
        ha_guests_on_hv1(lab_hosts, store, cfg, registry, proxy)
        with fence_expiries(store, cfg) as deleted:
            proxy.cut()
            wait_until(lambda: not running_on(lab_hosts, UUID) and not running_on(
                lab_hosts, UUID2), lease_expiry_bound(cfg.ttl), what="the first pass")
            lab_hosts.conn("hv1").lookupByUUIDString(UUID2).create()
            started = time.time()
            wait_until(lambda: not running_on(lab_hosts, UUID2), default_margin(cfg.ttl),
                       what="db2 killed again by a later tick")
            killed = time.time()
            wait_until(lambda: len(deleted) == 2, lease_expiry_bound(cfg.ttl),
                       what="both fences expired")
    finally:
        proxy.close()
    deadline = deadline_of(lab_hosts)
    numbers = (f"db2 up again at 0, killed {killed - started:+.2f} s, first fence expired "
               f"{min(deleted) - started:+.2f} s, deadline {deadline - started:+.2f} s")
    print(numbers)
    assert killed < min(deleted), numbers
    assert len(lab_hosts.agent_events("hv1", "self_fenced")) == 3, "db, db2, db2 again"


def test_a_start_that_took_its_fence_before_the_deadline_is_refused_right_before_create(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, etcd_cluster) -> None:
    """db2's start takes its HA fence, then waits (the test-only fault point
    delay-before-create) while hv1 is cut off and its deadline passes: the lease check
    right before ``create()`` refuses it, so db2 never runs. Its fence was taken before
    the deadline, so the self-fence counted it among its targets all along."""
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    delay = cfg.ttl  # past the deadline (at most TTL - margin after the cut)
    try:
        ha_guests_on_hv1(lab_hosts, store, cfg, registry, proxy, start=(UUID,),
                         fault_points=(f"delay-before-create={delay}",))
        client = IntentClient(store, cfg.keys)
        client.submit("hv1", "start", UUID2, "db2")
        wait_until(lambda: [e for e in lab_hosts.agent_events("hv1", "fence_acquired")
                            if " guest=db2 " in e[1]], 10, what="db2's fence taken")
        proxy.cut()
        wait_until(lambda: lab_hosts.agent_events("hv1", "start_refused"), delay + 5,
                   what="db2's start refused")
    finally:
        proxy.close()
    [(_, line)] = lab_hosts.agent_events("hv1", "start_refused")
    assert "guest=db2" in line and "self-fence deadline passed" in line, line
    assert not running_on(lab_hosts, UUID2) and not running_on(lab_hosts, UUID)
    assert "starts no HA guest until a keepalive reaches the registry" in line
    [(_, done)] = lab_hosts.agent_events("hv1", "self_fence_done")
    assert "guests=2" in done, "db2, whose fence was held, was a target too"
