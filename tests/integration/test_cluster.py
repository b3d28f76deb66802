"""A real 3-member etcd cluster: clients and watches keep working when a member dies;
agents and the manager through a loss of quorum."""

from __future__ import annotations

import threading
import uuid

import pytest

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.records import GuestSettings, decode
from gridtool.registry.store import Event
from tests.harness.checker import DoubleRunChecker
from tests.harness.testbed import hold_for, wait_until
from tests.integration.test_fencing import (
    VOLUME,
    WEB_UUID,
    WEB_VOLUME,
    fence_holder,
    pinned_db_and_ha_web_on_hv1,
    resynced,
    running_manager,
    running_on,
)


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


def test_quorum_loss_self_fences_ha_guests_keeps_pinned_ones_and_recovers_once(  # type: ignore[no-untyped-def]
        cluster3, lab_hosts):
    """Fault table, etcd quorum lost: two of the three members stop while hv1 runs the
    pinned guest db and the HA guest web. No keepalive succeeds: both agents pass their
    lease deadline, hv1 destroys web itself and leaves db running, and nothing starts
    anywhere (the manager cannot write either). With quorum back the agents register
    under fresh leases, web's fence goes and the manager restarts web exactly once; db
    never stopped and keeps its fence token. Sampled throughout: nothing runs twice."""
    cfg = Config(endpoints=tuple(cluster3.endpoints), prefix=f"/quorum-{uuid.uuid4().hex[:8]}/",
                 ttl=3, timeout=3.0, resync_interval=2.0)
    lab_hosts.cfg = cfg
    store = EtcdStore(cfg)
    stopped = []
    try:
        pinned_db_and_ha_web_on_hv1(lab_hosts, store, cfg, Registry(store, cfg.keys))
        fence = store.get(cfg.keys.fence(VOLUME))
        leases = {h: store.get(cfg.keys.host(h)).lease for h in ("hv1", "hv2")}
        with running_manager(cfg, store) as manager, \
                DoubleRunChecker(lambda: lab_hosts.conns) as checker:
            wait_until(lambda: manager.leader_rev, what="the manager to lead")
            for member in cluster3.members[1:]:
                cluster3.stop_member(member)
                stopped.append(member)
            wait_until(lambda: "event=self_fenced host=hv1 guest=web" in lab_hosts.agent_log("hv1")
                       and "event=self_fence " in lab_hosts.agent_log("hv2"),
                       timeout=cfg.ttl + 5, what="both agents past their lease deadline")
            assert running_on(lab_hosts, WEB_UUID) == [], "web self-fenced, started nowhere"
            assert running_on(lab_hosts) == ["hv1"], "db left running"
            while stopped:
                cluster3.start_member(stopped.pop())
            wait_until(cluster3.healthy, timeout=20, what="quorum back")
            for host, lease in leases.items():
                wait_until(resynced(store, cfg, host, lease), timeout=20,
                           what=f"{host} registered under a fresh lease and resynced")
            where = wait_until(lambda: running_on(lab_hosts, WEB_UUID), timeout=cfg.ttl + 15,
                               what="the manager to restart web")
            wait_until(lambda: fence_holder(store, cfg, WEB_VOLUME) == where[0],
                       what="web's fence with the host it runs on")
        assert len(where) == 1 and running_on(lab_hosts) == ["hv1"]
        item = store.get(cfg.keys.guest_settings(WEB_UUID))
        assert len(decode(GuestSettings, item.key, item.value).attempts) == 1  # once
        after = store.get(cfg.keys.fence(VOLUME))
        assert fence_holder(store, cfg) == "hv1"
        assert (after.mod_revision, after.lease) == (fence.mod_revision, 0)  # same token
        assert "event=self_fenced host=hv1 guest=db" not in lab_hosts.agent_log("hv1")
        assert [dog.resets for dog in lab_hosts.watchdogs.values()] == [0, 0]
        assert checker.overlaps == [] and not checker.blind, checker.unknown_detail
    finally:
        for member in stopped:
            cluster3.start_member(member)
        for name in list(lab_hosts.agents):  # before their records go
            lab_hosts.stop_agent(name)
        store.delete_prefix(cfg.prefix)
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
