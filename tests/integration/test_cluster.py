"""A real 3-member etcd cluster: clients and watches keep working when a member dies."""

from __future__ import annotations

import threading

import pytest

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.store import Event
from tests.harness.testbed import hold_for, wait_until


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory):  # type: ignore[no-untyped-def]
    cluster = EtcdCluster.create(tmp_path_factory.mktemp("etcd3"), 3)
    cluster.start()
    yield cluster
    cluster.stop()


def test_store_and_watch_survive_member_loss(cluster3):  # type: ignore[no-untyped-def]
    cfg = Config(endpoints=tuple(cluster3.endpoints), prefix="/failover/", timeout=3.0)
    store = EtcdStore(cfg)
    seen: list[Event] = []
    lock = threading.Lock()

    def collect(ev: Event) -> None:
        with lock:
            seen.append(ev)

    watch = store.watch_prefix("/failover/", collect)
    try:
        store.put("/failover/a", b"1")
        wait_until(lambda: len(seen) == 1, what="first event")
        first = cluster3.members[0]  # the endpoint the store talks to first
        cluster3.stop_member(first, kill=True)
        try:
            for i in range(20):
                store.put(f"/failover/k{i}", b"x")
            assert store.get("/failover/k19").value == b"x"
            wait_until(lambda: {e.key for e in seen} >= {f"/failover/k{i}" for i in range(20)},
                       what="watch to resume on another member and deliver every event")
            statuses = {s.endpoint: s.healthy for s in store.status()}
            assert statuses[first.endpoint] is False and sum(statuses.values()) == 2
        finally:
            cluster3.start_member(first)
        wait_until(lambda: all(s.healthy for s in store.status()), timeout=20,
                   what="member back")
    finally:
        watch.cancel()
        store.delete_prefix("/failover/")
        store.close()


def test_agent_keeps_its_lease_through_member_loss(cluster3, lab_hosts):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from gridtool.registry.fleet import Registry

    cfg = Config(endpoints=tuple(cluster3.endpoints), prefix="/failover-agent/", ttl=3,
                 timeout=3.0)
    lab_hosts.cfg = cfg
    lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1")
    store = EtcdStore(replace(cfg, endpoints=(cluster3.endpoints[2],)))
    registry = Registry(store, cfg.keys)
    try:
        wait_until(lambda: registry.list_hosts()[0], what="host registered")
        lease = store.get(cfg.keys.host("hv1")).lease
        cluster3.stop_member(cluster3.members[0], kill=True)
        try:
            # For three TTLs the host key must stay, on the same lease: the agent's
            # keepalives go to the surviving members.
            def kept() -> bool:
                item = store.get(cfg.keys.host("hv1"))
                return item is not None and item.lease == lease

            hold_for(3 * cfg.ttl, kept, "hv1's host key on its first lease", interval=0.2)
        finally:
            cluster3.start_member(cluster3.members[0])
    finally:
        store.delete_prefix("/failover-agent/")
        store.close()
