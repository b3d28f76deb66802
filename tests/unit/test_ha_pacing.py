"""What brings the HA manager's round forward, and when a full round audits the fleet
index: the pure rules (``gridtool.ha.pacing``), and the manager following them over the
in-memory store (a failover's burst of fence puts no longer runs a full round, with an
audit slice, per put)."""

from __future__ import annotations

import threading
import time

import pytest

from gridtool.clock import Clock
from gridtool.config import Config
from gridtool.ha.manager import Manager
from gridtool.ha.pacing import AUDIT_EVERY_S, audit_due, wakes_round
from gridtool.registry import fenceagents
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import HostRecord
from tests.unit.test_ha_manager import _lost_hv1

KEYS = Config().keys


@pytest.mark.parametrize(("kind", "key", "wakes"), [
    ("delete", KEYS.host("hv1"), True),  # a lease ended: its guests' recovery starts
    ("delete", KEYS.fence("aoe-e9.2"), True),  # a fence let go: a guest may wait for it
    ("reset", "", True),  # the watch lost its history: the mirror lists again
    ("put", KEYS.fence("aoe-e9.2"), False),  # an agent took a fence (a start)
    ("put", KEYS.host("hv1"), False),  # a host rewrote its record
    ("delete", KEYS.guest("hv1", "u1"), False),
    ("delete", KEYS.intent("hv1", "i1"), False),
])
def test_only_a_host_or_fence_vanishing_wakes_a_round(kind: str, key: str,
                                                       wakes: bool) -> None:
    assert wakes_round(KEYS, kind, key) is wakes


@pytest.mark.parametrize(("idle", "last", "now", "due"), [
    (True, 100.0, 100.5, True),  # an idle round always audits
    (False, None, 100.0, True),  # never audited yet
    (False, 100.0, 100.0 + AUDIT_EVERY_S - 0.01, False),  # busy: not yet
    (False, 100.0, 100.0 + AUDIT_EVERY_S, True),
])
def test_a_busy_round_audits_at_most_once_per_period(idle: bool, last: float | None,
                                                      now: float, due: bool) -> None:
    assert audit_due(idle, last, now) is due


def _leading(store: MemStore, now: list[float]) -> Manager:
    manager = Manager(Config(ttl=10), store, "m1", period=30.0, threaded=False,
                      clock=Clock(lambda: now[0], lambda: now[0]))
    manager.step()  # elected, its mirror watching, one round
    assert manager.leader_rev
    return manager


def test_fence_and_host_puts_do_not_wake_the_round_a_lost_host_does() -> None:
    """The old manager woke at every put under hosts/ and fences/: in a 50-guest failover
    every fence taken ran a full round at once."""
    store = MemStore(lambda: 0.0)
    registry = Registry(store, KEYS)
    registry.put_host(HostRecord("hv2", "test:///", "test", 4, 4096, 4096, "0", 0.0,
                                 watchdog=True), None)
    manager = _leading(store, [1000.0])
    manager._wake.clear()
    store.put(KEYS.fence("aoe-e9.2"), b'{"v": 1}')
    registry.put_host(HostRecord("hv2", "test:///", "test", 4, 4096, 2048, "0", 1.0,
                                 watchdog=True), None)
    assert not manager._wake.is_set()
    store.delete(KEYS.fence("aoe-e9.2"))
    assert manager._wake.is_set()
    manager._wake.clear()
    store.delete(KEYS.host("hv2"))
    assert manager._wake.is_set()


def test_rounds_waiting_on_a_timed_grace_audit_once_per_period() -> None:
    """Every round is full while a lost host's grace runs (not idle); the audit, a
    background check, runs in the first and then once per ``AUDIT_EVERY_S`` (the old
    manager audited in each: 0.1 s of CPU per round at 100,000 guests)."""
    store = MemStore(lambda: 0.0)
    _lost_hv1(store)
    fenceagents.remove(store, KEYS, "hv1")  # the timed path: 12 s of full rounds
    now = [1000.0]
    manager = _leading(store, now)
    audits: list[float] = []
    audit = manager._index.audit
    manager._index.audit = lambda *a: audits.append(now[0]) or audit(*a)  # type: ignore
    for _ in range(10):
        now[0] += 1.0
        manager.step()
    assert [r.full for r in list(manager.rounds)[-10:]] == [True] * 10
    assert audits == [1000.0 + AUDIT_EVERY_S, 1000.0 + 2 * AUDIT_EVERY_S]


def test_a_stop_ends_a_leading_manager_at_once_not_at_its_next_round() -> None:
    """``run`` waited for its next round (up to ``period``) before it saw ``stop``: a
    manager with a 30 s period took up to 30 s to stop and resign its leadership."""
    manager = Manager(Config(ttl=10), MemStore(time.monotonic), "m1", period=30.0,
                      threaded=False)
    stop = threading.Event()
    thread = threading.Thread(target=manager.run, args=(stop,), name="manager m1")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not (manager.leader_rev and manager.rounds) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert manager.leader_rev and manager.rounds, "the manager never led a round"
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "stop waited for the manager's next round"
    finally:
        stop.set()
        manager._wake.set()
        thread.join(35)
