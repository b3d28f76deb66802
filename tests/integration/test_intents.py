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
from gridtool.registry.records import Intent, IntentAction, encode
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
    fencer = Fencer(store, cfg.keys, "h1", lambda: None)
    lease = HostLease(store, cfg.ttl, "h1", self_fence=lambda: None)
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
