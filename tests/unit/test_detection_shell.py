"""Faster detection's shells on the in-memory store: the agent's heartbeat writer and the
manager's silence tracking and lease revocation (the rules: test_detection.py)."""

from __future__ import annotations

import logging

import pytest

from agents.heartbeat import Heartbeat
from gridtool.clock import Clock
from gridtool.config import Config
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.fencing.recovery import FencePolicy
from gridtool.ha.manager import Manager
from gridtool.ha.rules import RevokeLease, Snapshot
from gridtool.registry.memstore import MemStore

KEYS = Config().keys
EMPTY = Snapshot(now=0.0, hosts=(), guests=())


class Now:
    """A settable clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_heartbeat_writes_under_the_lease_and_not_without_one() -> None:
    store = MemStore(lambda: 0.0)
    lease = store.grant_lease(10)
    current: list[int | None] = [None]
    beat = Heartbeat(store, KEYS, "hv1", lambda: current[0])
    assert not beat.beat() and store.get(KEYS.heartbeat("hv1")) is None
    current[0] = lease
    assert beat.beat()
    first = store.get(KEYS.heartbeat("hv1"))
    assert first is not None and first.lease == lease
    assert beat.beat()
    assert store.get(KEYS.heartbeat("hv1")).mod_revision > first.mod_revision  # type: ignore[union-attr]
    store.revoke_lease(lease)
    assert store.get(KEYS.heartbeat("hv1")) is None


def test_a_failing_heartbeat_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Down(MemStore):
        def put(self, key: str, value: bytes, lease: int | None = None) -> int:
            raise RegistryUnavailable("etcd unreachable")

    beat = Heartbeat(Down(lambda: 0.0), KEYS, "hv1", lambda: 7)
    with caplog.at_level(logging.WARNING, logger="gridtool.agent"):
        assert not beat.beat() and not beat.beat()
    assert caplog.text.count("event=heartbeat_failed") == 1


def manager(now: Now, suspect_after: float | None = 2.0) -> tuple[Manager, MemStore]:
    store = MemStore(now)
    fencing = FencePolicy.for_ttl(10, suspect_after=suspect_after)
    return Manager(Config(), store, "m1", threaded=False, clock=Clock(now, now),
                   fencing=fencing), store


def test_silence_counts_from_when_the_manager_saw_the_beat_change() -> None:
    now = Now()
    m, store = manager(now)
    store.put(KEYS.heartbeat("hv1"), b"{}")
    assert m._silences({"hv1"}) == {"hv1": 0.0}
    now.t += 1.5
    assert m._silences({"hv1"}) == {"hv1": 1.5}  # unchanged: silent since first seen
    assert m._until_next() == pytest.approx(0.51)  # woken when it becomes suspect
    store.put(KEYS.heartbeat("hv1"), b"{}")
    now.t += 0.5
    m._saw_beat("hv1", 1)  # an old revision (a late watch event) never resets it
    assert m._silences({"hv1"}) == {"hv1": 0.0}  # the new revision, seen now
    assert m._silences(set()) == {} and m._beats == {}  # gone hosts are forgotten


def test_without_suspect_after_heartbeats_are_not_read() -> None:
    now = Now()
    m, store = manager(now, suspect_after=None)
    store.put(KEYS.heartbeat("hv1"), b"{}")
    assert m._silences({"hv1"}) == {} and m._until_next() == m.period


def test_revoke_only_the_fenced_registration_and_an_auth_refusal_is_no_step_down(
        caplog: pytest.LogCaptureFixture) -> None:
    now = Now()
    m, store = manager(now)
    lease = store.grant_lease(10)
    store.put(KEYS.host("hv1"), b"{}", lease)
    registration = store.put(KEYS.machine("hv1"), b"{}")
    assert m._revoke_lease(RevokeLease("u", "a", "hv1", registration + 1), EMPTY)
    assert store.get(KEYS.host("hv1")) is not None  # another registration: left alone

    class Refusing(MemStore):
        def revoke_lease(self, lease: int) -> None:
            raise AuthError("permission denied")

    refusing = Refusing(now)
    m.store = refusing
    lease2 = refusing.grant_lease(10)
    refusing.put(KEYS.host("hv1"), b"{}", lease2)
    reg2 = refusing.put(KEYS.machine("hv1"), b"{}")
    with caplog.at_level(logging.ERROR, logger="gridtool.ha.manager"):
        assert not m._revoke_lease(RevokeLease("u", "a", "hv1", reg2), EMPTY)
    assert "event=host_lease_revoke_refused" in caplog.text
    m.store = store
    assert m._revoke_lease(RevokeLease("u", "a", "hv1", registration), EMPTY)
    assert store.get(KEYS.host("hv1")) is None
