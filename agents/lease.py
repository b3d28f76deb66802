"""The host lease: keepalives on their own thread, tracked by the pure ``LeaseClock``;
a guard thread self-fences (destroys HA fenced guests) when the deadline comes, and
optionally pets a hardware/soft watchdog while it is safe to."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gridtool import supervise
from gridtool.clock import SYSTEM, Clock
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.fencing.rules import LeaseClock, LeaseState
from gridtool.registry.store import Store

log = logging.getLogger("gridtool.agent")

#: How often the guard checks the lease deadline; part of the margin's budget (J).
GUARD_TICK = 0.1


class Watchdog:
    """A host watchdog: the Linux device (``/dev/watchdog``, softdog), or a plain file
    that the lab's emulator watches (``gridtool.lab.watchdog``).

    It is opened by the first pet, not before: opening pets it, and a restarted agent
    must not extend a reset that its predecessor's last pet scheduled until it knows its
    lease (see ``HostLease``). ``close`` writes the magic "V" (a clean stop with nothing
    to fence does not reset the host); ``abandon`` leaves it armed."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._fh: BinaryIO | None = None
        self._opened = False
        self._disarmed = False  # unknown at start: a predecessor may have left it armed
        self._lock = threading.Lock()  # the guard and intent threads both pet

    def pet(self) -> None:
        with self._lock:
            self._pet()

    def _pet(self) -> None:
        if self.path.is_char_device():
            if self._fh is None:
                self._fh = self.path.open("wb", buffering=0)
            self._fh.write(b"\0")
        elif not self._opened:
            self.path.write_bytes(b"\0")  # armed (and petted: the mtime is new)
        else:
            os.utime(self.path)
        self._opened, self._disarmed = True, False

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        """Disarm with the magic "V", also a watchdog a predecessor left armed."""
        if self._disarmed:
            return
        if self._fh is None and self.path.is_char_device():
            self._fh = self.path.open("wb", buffering=0)
        if self._fh is not None:
            self._fh.write(b"V")
            self._fh.close()
            self._fh = None
        elif self.path.exists():
            self.path.write_bytes(b"V")
        self._opened, self._disarmed = False, True

    def abandon(self) -> None:
        """Let go without the magic close: the watchdog resets the host unless a new
        agent pets it in time."""
        if self._fh is not None:
            self._fh.close()  # no "V": the device stays armed
            self._fh = None
        self._opened = False


class HostLease:
    """Grant, keep alive and watch one etcd lease for this host.

    Two threads run it (:meth:`start`); each turn of theirs is a public step,
    :meth:`keepalive_step` and :meth:`guard_step`, which the simulator calls on its own
    ``clock`` instead."""

    def __init__(self, store: Store, ttl: int, host: str,
                 self_fence: Callable[[], None], watchdog: Watchdog | None = None,
                 has_ha_guests: Callable[[], bool] = lambda: True,
                 may_pet: Callable[[], bool] = lambda: True, clock: Clock = SYSTEM) -> None:
        self.store = store
        self._clock = clock
        self.ttl = ttl
        self.host = host
        self._self_fence = self_fence
        self._watchdog = watchdog
        self._has_ha_guests = has_ha_guests
        self._may_pet = may_pet
        self.lease: int | None = None
        self.clock: LeaseClock | None = None
        self.lost = threading.Event()
        self._fenced_for: int | None = None
        self._armed_until = 0.0
        self._stop = threading.Event()
        self._threads = [supervise.thread(self._keepalive_loop, "keepalive", logger=log),
                         supervise.thread(self._guard_loop, "lease-guard", logger=log)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def grant(self) -> int:
        """Take a new lease (after start-up or after the old one was lost)."""
        sent = self._clock.monotonic()
        lease = self.store.grant_lease(self.ttl)
        self.clock = LeaseClock.start(self.ttl, sent)
        self.lease = lease
        self.lost.clear()
        return lease

    def resume(self, lease: int) -> bool:
        """Carry on with ``lease`` (a restarted agent's predecessor's) if etcd still has
        it; the clock starts at this keepalive's send time. False when it is gone."""
        sent = self._clock.monotonic()
        remaining = self.store.keepalive(lease)
        if remaining <= 0:
            return False
        self.clock = LeaseClock.start(self.ttl, sent, granted_ttl=remaining)
        self.lease = lease
        self.lost.clear()
        return True

    def healthy(self) -> bool:
        clock = self.clock
        return clock is not None and clock.state(self._clock.monotonic()) is LeaseState.HEALTHY

    @property
    def has_watchdog(self) -> bool:
        return self._watchdog is not None

    def arm(self) -> bool:
        """Get ready to run an HA guest: True when the lease is healthy and the watchdog
        (if configured) was petted just now, so that a crash from this instant on resets
        the host before the fences can vanish (the guard pets it only every tick)."""
        clock, now = self.clock, self._clock.monotonic()
        if clock is None or clock.state(now) is not LeaseState.HEALTHY:
            return False
        if self._watchdog is None:
            return True
        if not clock.watchdog_may_pet(now, self._watchdog.timeout, True):
            return False
        self._armed_until = now + self.ttl  # the guard keeps it armed while the fence is taken
        self._watchdog.pet()
        return True

    def keep(self) -> None:
        """Stop without revoking: the lease runs out by itself unless a restarted agent
        resumes it, and the watchdog stays armed to reset the host before it does."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=2)
        if self._watchdog is not None:
            self._watchdog.abandon()

    def revoke(self) -> None:
        self._stop.set()
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                self.store.revoke_lease(lease)
            except (RegistryUnavailable, AuthError) as exc:
                log.warning("event=lease_revoke_failed host=%s error=%s", self.host, exc)
        if self._watchdog is not None:
            self._watchdog.close()

    def _keepalive_loop(self) -> None:
        while not self._stop.wait(self._until_due()):
            self.keepalive_step()

    def keepalive_step(self) -> None:
        """Send one keepalive if it is due, and track its answer."""
        clock, lease = self.clock, self.lease
        now = self._clock.monotonic()
        if clock is None or lease is None or self.lost.is_set() \
                or not clock.keepalive_due(now):
            return
        self.clock = clock.sent(now)
        try:
            remaining = self.store.keepalive(lease)
        except (RegistryUnavailable, AuthError) as exc:
            log.warning("event=keepalive_failed host=%s error=%s", self.host,
                        " ".join(str(exc).split()))
            return
        if lease != self.lease or self.clock is None:
            return  # a new lease was granted meanwhile
        self.clock = self.clock.acked(now, remaining)
        if remaining <= 0:
            log.warning("event=lease_expired host=%s lease=%x", self.host, lease)
            self.lost.set()

    def _until_due(self) -> float:
        """Sleep until the next keepalive is due (at most 0.25 s, at least 10 ms)."""
        clock = self.clock
        if clock is None:
            return 0.05
        period = clock.interval if clock.state(self._clock.monotonic()) is LeaseState.HEALTHY \
            else clock.retry
        return min(0.25, max(0.01, clock.last_sent + period - self._clock.monotonic()))

    def _guard_loop(self) -> None:
        while not self._stop.wait(GUARD_TICK):
            self.guard_step()

    def guard_step(self) -> None:
        """Self-fence once the lease deadline has come; tend the watchdog."""
        clock, lease = self.clock, self.lease
        if clock is None or lease is None:
            return
        now = self._clock.monotonic()
        if clock.state(now) is LeaseState.MUST_SELF_FENCE and self._fenced_for != lease:
            self._fenced_for = lease
            log.warning("event=self_fence host=%s lease=%x reason=lease_deadline "
                        "overdue_s=%.2f", self.host, lease, now - clock.deadline)
            self._self_fence()
            self.lost.set()
        if self._watchdog is not None and self._may_pet():
            self._tend_watchdog(self._watchdog, clock, now)

    def tend_watchdog(self) -> None:
        """Pet (or disarm) the watchdog now, as the guard's next tick would: called as
        soon as a (re)started agent knows its lease and the fences it holds, so that a
        slow first resync cannot let its predecessor's last pet run out."""
        clock, lease = self.clock, self.lease
        if self._watchdog is None or clock is None or lease is None or not self._may_pet():
            return
        self._tend_watchdog(self._watchdog, clock, self._clock.monotonic())

    def _tend_watchdog(self, watchdog: Watchdog, clock: LeaseClock, now: float) -> None:
        """Armed only while HA guests run here (a dead agent must not reset a host that
        runs only pinned or unfenced guests), petted while the lease clock allows."""
        ha = self._has_ha_guests()
        if not ha and now >= self._armed_until:
            watchdog.close()  # nothing to fence: disarm (a no-op when not open)
        elif clock.watchdog_may_pet(now, watchdog.timeout, ha):
            watchdog.pet()
