"""The self-fence: once the lease is in doubt, every HA guest of this host dies at once,
and stays dead, until libvirt confirms each one gone.

The lease guard (``agents.lease.HostLease``) calls :meth:`SelfFence.step` on every tick
from its deadline on, and after it for as long as a guest is not confirmed gone. What to
kill or check is the pure :func:`gridtool.fencing.rules.self_fence_round`'s decision; this
module carries it out:

1. At once, in the guard's thread and without libvirt: SIGKILL the QEMU process of every
   target that has one (``pid_of``: the pid file libvirt's QEMU driver writes). A stopped
   or hung QEMU dies from SIGKILL; libvirt's destroy would send SIGTERM and wait up to
   10 s first, one guest after the other.
2. In parallel, one thread per guest (at most :data:`MAX_WORKERS` at a time): libvirt's
   destroy of every target still active (for drivers without a pid, such as the test
   driver and Xen, the only kill), then libvirt's word: inactive, or no such domain.
3. On every later tick, again: a target libvirt did not confirm gone (an error, a destroy
   that failed) is killed again; while the lease is in doubt even the confirmed ones are
   checked again (a start in flight at the deadline may bring one up after the first
   pass): their pid files at once, and one listing of libvirt's active domains per tick
   (not a thread and two calls per guest for as long as a partition lasts); every HA
   fence taken meanwhile joins the targets.

The HA fences are forgotten (so the guard may tend, and disarm, the watchdog) only once
every target is confirmed gone: while one refuses to die the watchdog is never petted and
stays the backstop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

import libvirt

from gridtool import supervise
from gridtool.clock import SYSTEM, Clock
from gridtool.fencing.rules import Fate, self_fence_round

log = logging.getLogger("gridtool.agent")

#: At most this many libvirt destroys in flight at once (one thread each); more targets
#: wait for a thread to finish (the next tick starts them). libvirtd serves 5 requests of
#: one client at a time by default (``max_client_requests``): more threads only queue.
MAX_WORKERS = 16


class HAFences(Protocol):
    """What the self-fence needs of the fencer (``agents.fencer.Fencer``)."""

    def ha_names(self) -> dict[str, str]: ...

    def forget_ha(self, guests: Iterable[str] | None = None) -> None: ...


class KillDomains(Protocol):
    """What the self-fence needs of libvirt (``agents.libvirt_source.LibvirtSource``)."""

    def domain(self, uuid: str) -> libvirt.virDomain | None: ...

    def active(self) -> set[str]: ...


class SelfFence:
    """The self-fence of one host's HA guests (thread-safe; see the module's text).

    ``pid_of(name)``: the guest's QEMU process id, or None (then libvirt's destroy alone);
    ``kill``: ``os.kill``; ``destroy_fails`` and ``slow_destroy``: the test-only fault
    points ``self-fence-destroy-fails`` and ``self-fence-slow-destroy``
    (``agents.faults``); ``threaded``: False runs the libvirt part inline (the
    simulator's clock)."""

    def __init__(self, host: str, fencer: HAFences, domains: KillDomains, *,
                 pid_of: Callable[[str], int | None] = lambda _name: None,
                 kill: Callable[[int, int], None] = os.kill, destroy_fails: int = 0,
                 slow_destroy: float = 0.0, threaded: bool = True,
                 clock: Clock = SYSTEM) -> None:
        self.host = host
        self._fencer = fencer
        self._domains = domains
        self._pid_of = pid_of
        self._kill = kill
        self._destroy_fails = destroy_fails
        self._slow_destroy = slow_destroy
        self._threaded = threaded
        self._clock = clock
        self._changed = threading.Condition()  # guards everything below
        self.targets: dict[str, str] = {}  # uuid -> name: every guest this self-fence covers
        self.fates: dict[str, Fate] = {}
        self._busy: set[str] = set()  # a libvirt thread works on it
        self._rechecking = False  # a listing of the active domains is in flight
        self._alive_at: dict[str, float] = {}  # when it was last seen alive (or SIGKILLed)
        self._killed: set[str] = set()  # killed since last confirmed gone: log when it is
        self._signalled: dict[str, int] = {}  # uuid -> the pid SIGKILLed (logged once)
        self._errors: dict[str, str] = {}  # uuid -> the last error logged (logged once)
        self._destroy_failed: Counter[str] = Counter()
        self._began = 0.0
        self._forgotten = False

    # -- what the rest of the agent asks ------------------------------------------

    def covers(self, uuid: str) -> bool:
        """``uuid`` is this self-fence's business (no judgement may take its fence)."""
        with self._changed:
            return uuid in self.targets

    @property
    def pending(self) -> bool:
        """Some target is not confirmed gone."""
        with self._changed:
            return any(self.fates.get(u) is not Fate.GONE for u in self.targets)

    def came_up(self, uuid: str) -> None:
        """A start of ``uuid`` just ended (``HostLease.creating``): if this self-fence
        covers it, a "gone" it saw before the ``create()`` landed is stale: kill and
        confirm it again (meanwhile the guard neither pets nor disarms the watchdog)."""
        with self._changed:
            if uuid in self.targets:
                self.fates[uuid] = Fate.UNKNOWN
                self._alive_at[uuid] = self._clock.monotonic()
                self._forgotten = False

    # -- the guard's tick ----------------------------------------------------------

    def step(self, in_doubt: bool) -> bool:
        """One guard tick (``in_doubt``: the lease is past its deadline and no new one is
        healthy yet). True when every target is confirmed gone."""
        now = self._clock.monotonic()
        with self._changed:
            held = self._fencer.ha_names() if in_doubt else {}
            plan = self_fence_round(self.targets, self.fates, held, in_doubt)
            if not plan.targets:
                return True
            if not self.targets:
                self._began = now
            self.targets = dict(plan.targets)
            if plan.over:
                self._forget_when_gone(True, now)
                self._reset()
                return True
            act = [(u, self.targets[u]) for u in plan.act if u not in self._busy]
        for uuid, name in act:
            self._sigkill(uuid, name)
        with self._changed:
            confirmed = [(u, n) for u, n in act if self.fates.get(u) is Fate.GONE]
        for uuid, name in act:
            if (uuid, name) not in confirmed:
                self._settle_later(uuid, name)
        if confirmed:
            self._recheck_later(confirmed)
        with self._changed:
            gone = all(self.fates.get(u) is Fate.GONE for u in self.targets)
            self._forget_when_gone(gone, self._clock.monotonic())
        return gone

    def finish(self, timeout: float, tick: float = 0.1) -> bool:
        """Kill every HA guest now and wait (at most ``timeout`` seconds, a step every
        ``tick``) until each is confirmed gone: a clean stop with nobody left to do it."""
        deadline = self._clock.monotonic() + timeout
        while not self.step(True):
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(tick, left))
        return True

    def _reset(self) -> None:
        self.targets, self.fates = {}, {}
        self._alive_at.clear()
        self._killed.clear()
        self._signalled.clear()
        self._errors.clear()
        self._destroy_failed.clear()
        self._forgotten = False

    def _forget_when_gone(self, all_gone: bool, now: float) -> None:
        """Every target confirmed gone: stop counting the HA fences (the guard may tend
        the watchdog again); a target seen alive again counts them again."""
        if all_gone and not self._forgotten:
            self._fencer.forget_ha(self.targets)  # (not a new lease's HA fences)
            self._forgotten = True
            log.warning("event=self_fence_done host=%s guests=%d elapsed_s=%.2f", self.host,
                        len(self.targets), now - self._began)
        elif not all_gone:
            self._forgotten = False

    def _sigkill(self, uuid: str, name: str) -> None:
        """SIGKILL the guest's QEMU process, if it has one (no libvirt needed)."""
        pid = self._pid_of(name)
        if pid is None:
            return
        try:
            self._kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # gone meanwhile
        except OSError as exc:
            self._failed(uuid, f"SIGKILL of pid {pid}: {exc.strerror}")
            return
        with self._changed:
            self._alive_at[uuid] = self._clock.monotonic()
            self.fates[uuid] = Fate.ALIVE
            self._killed.add(uuid)
            first = self._signalled.get(uuid) != pid
            self._signalled[uuid] = pid
        if first:
            log.warning("event=self_fence_kill host=%s guest=%s uuid=%s pid=%d signal=SIGKILL",
                        self.host, name, uuid, pid)

    # -- libvirt: destroy and confirm --------------------------------------------------

    def _settle_later(self, uuid: str, name: str) -> None:
        """Destroy and confirm ``uuid`` on its own thread (a slot permitting)."""
        with self._changed:
            if uuid in self._busy or (self._threaded and len(self._busy) >= MAX_WORKERS):
                return
            self._busy.add(uuid)
        began = self._clock.monotonic()
        if self._threaded:
            supervise.start(self._settle, f"self-fence-{uuid[:8]}", (uuid, name, began),
                            logger=log)
        else:
            self._settle(uuid, name, began)

    def _recheck_later(self, guests: list[tuple[str, str]]) -> None:
        """Ask libvirt once (one listing, on its own thread) whether any of ``guests``,
        confirmed gone before, runs again; kill those that do."""
        with self._changed:
            if self._rechecking:
                return
            self._rechecking = True
        if self._threaded:
            supervise.start(self._recheck, "self-fence-recheck", (guests,), logger=log)
        else:
            self._recheck(guests)

    def _recheck(self, guests: list[tuple[str, str]]) -> None:
        back: list[tuple[str, str]] = []
        try:
            active = self._domains.active()
            back = [(u, n) for u, n in guests if u in active]
        except libvirt.libvirtError as exc:
            for uuid, _name in guests:  # cannot tell: pursue them one by one again
                self._failed(uuid, " ".join(str(exc).split()))
            back = guests
        finally:
            with self._changed:
                self._rechecking = False
                now = self._clock.monotonic()
                for uuid, _name in back:
                    if uuid in self.targets:
                        self.fates[uuid] = Fate.UNKNOWN
                        self._alive_at[uuid] = now  # (an older "gone" answer is stale)
        for uuid, name in back:
            self._settle_later(uuid, name)

    def _settle(self, uuid: str, name: str, began: float) -> None:
        fate = Fate.UNKNOWN
        try:
            fate = self._destroy(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                fate = Fate.GONE
            else:
                self._failed(uuid, " ".join(str(exc).split()))
        finally:
            self._record(uuid, name, fate, began)

    def _destroy(self, uuid: str) -> Fate:
        """libvirt's destroy if the domain is active; what libvirt says after it."""
        dom = self._domains.domain(uuid)
        if dom is None or not dom.isActive():
            return Fate.GONE
        with self._changed:
            self._killed.add(uuid)
        try:
            if self._destroy_failed[uuid] < self._destroy_fails:
                self._destroy_failed[uuid] += 1
                raise libvirt.libvirtError(
                    f"test fault point self-fence-destroy-fails: failure "
                    f"{self._destroy_failed[uuid]} of {self._destroy_fails}")
            if self._slow_destroy:  # test-only: libvirt waiting for a QEMU to die
                time.sleep(self._slow_destroy)
            dom.destroy()
        except libvirt.libvirtError:
            if dom.isActive():  # (after a SIGKILL libvirt may say "not running": fine)
                raise
        return Fate.ALIVE if dom.isActive() else Fate.GONE

    def _record(self, uuid: str, name: str, fate: Fate, began: float) -> None:
        """What libvirt said, unless the guest was seen alive after the question began."""
        with self._changed:
            self._busy.discard(uuid)
            if uuid not in self.targets:
                return  # the self-fence ended meanwhile
            if fate is Fate.GONE and self._alive_at.get(uuid, -1.0) > began:
                fate = Fate.UNKNOWN  # killed again since: ask again
            self.fates[uuid] = fate
            confirmed = fate is Fate.GONE and uuid in self._killed
            if confirmed:
                self._killed.discard(uuid)
                self._errors.pop(uuid, None)
            elapsed = self._clock.monotonic() - self._began
            self._changed.notify_all()
        if confirmed:
            log.warning("event=self_fenced host=%s guest=%s uuid=%s elapsed_s=%.2f", self.host,
                        name, uuid, elapsed)

    def _failed(self, uuid: str, error: str) -> None:
        """Log a failure to kill ``uuid`` (each different error once); it is retried."""
        with self._changed:
            if self._errors.get(uuid) == error:
                return
            self._errors[uuid] = error
        log.error("event=self_fence_failed host=%s uuid=%s error=%s", self.host, uuid, error)
