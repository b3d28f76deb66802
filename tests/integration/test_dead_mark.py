"""The ``confirm-dead`` mark never outlives the host's return: a live host's agent removes
it with every host record it writes (one transaction), and the manager's release of a
dead host's pinned fences commits only while the host is still absent and the mark it
read is still there. Real etcd, real agents on libvirtd test-driver hosts."""

from __future__ import annotations

import json
import time

from gridtool.fencing.recovery import HostFence
from gridtool.ha.manager import Manager
from gridtool.ha.rules import ReleaseFences, decide
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import encode
from tests.harness.testbed import wait_until
from tests.integration.test_fencing import (
    UUID,
    fence_holder,
    hosts_with_guest,
    running_on,
    wait_registered,
)


def _mark(store, cfg, host: str) -> None:  # type: ignore[no-untyped-def]
    store.put(cfg.keys.dead_host(host), json.dumps({"v": 1, "host": host}).encode())


def test_a_stale_mark_is_removed_by_the_live_host(lab_hosts, store, cfg, registry):  # type: ignore[no-untyped-def]
    """A mark left behind while the host runs (its delete at registration failed) is
    gone by the host's next record write: a later partition cannot move pinned guests
    nobody confirmed dead."""
    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    _mark(store, cfg, "hv1")
    # the agent rewrites its host record at least every resync
    wait_until(lambda: store.get(cfg.keys.dead_host("hv1")) is None,
               timeout=3 * cfg.resync_interval + 5, what="the stale mark removed by hv1")
    assert store.get(cfg.keys.host("hv1")) is not None


def test_release_for_a_dead_host_fails_once_the_host_is_back(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """The manager decided to release hv1's pinned fence (hv1 absent, confirmed dead);
    hv1 re-registers before the release runs: the transaction must not commit."""
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    lab_hosts.stop_agent("hv1", kill=True)
    lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
    wait_until(lambda: store.get(cfg.keys.host("hv1")) is None, timeout=cfg.ttl + 10,
               what="hv1's lease to expire")
    _mark(store, cfg, "hv1")
    # hv1 fenced already (as recorded by a leader before this one): the release comes next
    registration = store.get(cfg.keys.machine("hv1")).mod_revision
    store.put(cfg.keys.host_fence("hv1"), encode(HostFence("hv1", time.time(), registration,
                                                           power="off")))
    manager = Manager(cfg, store, "m1", period=0.2)
    manager._campaign()
    assert manager.leader_rev, "the test's manager leads"
    snap, _names = manager.snapshot()
    [release] = [a for a in decide(snap, manager.limits) if isinstance(a, ReleaseFences)]
    assert release.host == "hv1"
    # hv1 is back (its record written) between the snapshot and the release
    store.put(cfg.keys.host("hv1"), registry.store.get(cfg.keys.host("hv2")).value)
    assert manager._act(release, snap) is False
    assert fence_holder(store, cfg) == "hv1"
    # and with the mark withdrawn instead, the release does not commit either
    store.delete(cfg.keys.host("hv1"))
    store.delete(cfg.keys.dead_host("hv1"))
    assert manager._act(release, snap) is False
    assert fence_holder(store, cfg) == "hv1"
    assert running_on(lab_hosts) == []
    manager._resign()
