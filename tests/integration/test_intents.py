"""The agent's intent worker built from its parts alone (real etcd, a Fencer, the guest
claims, libvirt's test driver): how it dispatches and reports each action."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator

import pytest

from agents.claims import GuestClaims
from agents.fencer import Fencer
from agents.intents import HANDLERS, IntentWorker
from agents.lease import HostLease
from agents.libvirt_source import LibvirtSource
from gridtool.config import Config
from gridtool.domains.storage import SharedStorageRules
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, Intent, IntentAction, decode, encode
from tests.harness.testbed import domain_xml


@pytest.fixture
def domains() -> Iterator[LibvirtSource]:
    source = LibvirtSource("test:///default", SharedStorageRules(), lambda *_: None,
                           lambda: None)
    source.connect()
    yield source
    source.close()


@pytest.fixture
def worker(store, cfg: Config, domains: LibvirtSource) -> Iterator[IntentWorker]:  # type: ignore[no-untyped-def]
    lease = HostLease(store, cfg.ttl, "h1", self_fence=lambda: None)
    fencer = Fencer(store, cfg.keys, "h1", lambda: lease.lease)
    worker = IntentWorker(host="h1", store=store, keys=cfg.keys, domains=domains,
                          fencer=fencer, lease=lease, claims=GuestClaims(),
                          images_dir="/nonexistent", on_change=lambda uuid: None,
                          judge=lambda rec: None)
    worker.start()
    yield worker
    worker.stop()


def run(store, cfg: Config, worker: IntentWorker, action: str,  # type: ignore[no-untyped-def]
        params: dict | None = None) -> Intent:
    """Submit one intent for h1, hand it to the worker as its watch would, wait for it."""
    client = IntentClient(store, cfg.keys)
    intent = client.submit("h1", action, str(uuidlib.uuid4()), "g1", params)
    key = cfg.keys.intent("h1", intent.id)
    worker.offer(key, encode(intent))
    return client.wait(intent, 20, raise_failed=False)


def test_every_action_has_a_handler() -> None:
    assert set(HANDLERS) == set(IntentAction)


def test_an_unknown_action_is_reported_as_unknown_and_the_worker_goes_on(  # type: ignore[no-untyped-def]
        store, cfg: Config, worker: IntentWorker) -> None:
    done = run(store, cfg, worker, "frobnicate")
    assert (done.state, done.message) == ("failed", "unknown action 'frobnicate'")
    name = f"g-{uuidlib.uuid4().hex[:8]}"
    defined = run(store, cfg, worker, "define", {"xml": domain_xml(name)})
    assert defined.state == "done" and f"{name} defined on h1" in defined.message
    worker.domains.connection().lookupByName(name).undefine()


def test_an_attribute_error_inside_a_handler_is_that_failure_not_an_unknown_action(  # type: ignore[no-untyped-def]
        store, cfg: Config, worker: IntentWorker, domains: LibvirtSource,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(xml: str):  # type: ignore[no-untyped-def]
        raise AttributeError("'NoneType' object has no attribute 'name'")

    monkeypatch.setattr(domains, "define", broken)
    done = run(store, cfg, worker, "define", {"xml": "<domain/>"})
    assert done.state == "failed"
    assert "unknown action" not in done.message
    assert done.message == ("define failed on h1: AttributeError: 'NoneType' object has no "
                            "attribute 'name'")
    assert run(store, cfg, worker, "frobnicate").state == "failed", "the worker goes on"


def test_an_ha_start_waits_while_the_host_registers_under_a_fresh_lease(  # type: ignore[no-untyped-def]
        store, cfg: Config, worker: IntentWorker, domains: LibvirtSource) -> None:
    """Found by the etcd quorum-loss test: with quorum back, the manager ordered an HA
    restart on a host whose agent had self-fenced and not registered again yet (its host
    record lived on under the lost lease, which the new etcd leader had extended). The
    start failed ("lease is not healthy") and used up one of the guest's restarts (3 an
    hour: a few refusals while the agent sleeps in its registry backoff mark the guest
    error). While the lease is lost the start stays in flight; the catch-up of the resync
    that follows the agent's registration carries it out."""
    uuid = str(uuidlib.uuid4())
    name = f"ha-{uuid[:8]}"
    xml = domain_xml(name, disk="/dev/etherd/e7.1", block=True).replace(
        "</name>", f"</name><uuid>{uuid}</uuid>")
    dom = domains.define(xml)
    store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, name, ha=True)))
    worker.lease.lost.set()  # self-fenced: the agent is about to register anew
    client = IntentClient(store, cfg.keys)
    intent = client.submit("h1", "start", uuid, name)
    key = cfg.keys.intent("h1", intent.id)
    try:
        worker.handle(key)
        waiting = decode(Intent, key, store.get(key).value)
        assert (waiting.state, dom.isActive()) == ("running", False), waiting.message
        worker.lease.grant()  # registered under a fresh lease, then the resync's catch-up
        worker.catch_up()
        done = client.wait(intent, 20, raise_failed=False)
        assert done.state == "done" and dom.isActive(), done.message
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_a_guest_with_a_shared_disk_that_cannot_be_identified_does_not_start(  # type: ignore[no-untyped-def]
        store, cfg: Config, worker: IntentWorker, domains: LibvirtSource) -> None:
    """Fail closed on a host without hooks (the test driver): the agent takes no fence for
    a guest whose iSCSI disk names no LUN it can identify, so it does not start it."""
    name = f"g-{uuidlib.uuid4().hex[:8]}"
    disk = ("<disk type='network' device='disk'><source protocol='iscsi' "
            "name='iqn.2026-12.lab.gridtool:t1/x'><host name='127.0.0.1' port='3260'/>"
            "</source><target dev='sda'/></disk>")
    dom = domains.define(domain_xml(name).replace("<devices>", "<devices>" + disk))
    try:
        rec = domains.guest(dom.UUIDString(), "h1")
        assert rec is not None and rec.fenced and rec.unidentified == (
            "disk sda ('iqn.2026-12.lab.gridtool:t1/x')",)
        client = IntentClient(store, cfg.keys)
        intent = client.submit("h1", "start", dom.UUIDString(), name, None)
        worker.offer(cfg.keys.intent("h1", intent.id), encode(intent))
        done = client.wait(intent, 20, raise_failed=False)
        assert done.state == "failed" and "cannot be identified" in done.message, done
        assert not dom.isActive()
        assert store.list(cfg.keys.fences)[0] == [], "no fence taken"
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
