"""The host lease: keepalives on their own thread, tracked by the pure ``LeaseClock``;
a guard thread self-fences (``agents.selffence``: kills every HA fenced guest) from the
deadline on, on every tick until each is confirmed gone, and optionally pets a
hardware/soft watchdog while it is safe to (never while a guest is not confirmed gone)."""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from gridtool import supervise
from gridtool.clock import SYSTEM, Clock
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.fencing.rules import LeaseClock, LeaseState
from gridtool.registry.store import Store

log = logging.getLogger("gridtool.agent")

#: How often the guard checks the lease deadline; part of the margin's budget (J).
GUARD_TICK = 0.1
#: Seconds reserved, at the intent's last lease check, for an HA guest's start before the
#: self-fence deadline; the next keepalive's round trip is added
#: (``HostLease.keepalive_rtt``). Not a bound on ``create()``: measured (event
#: guest_created, 8 HA TCG guests started back to back on the 2-core machine at load
#: 6-10) it took 0.9-6.7 s, the fence hook's decision included. Safety does not rest on
#: it: the guest's fence is taken before, so the self-fence counts it from its deadline
#: on, and the guard SIGKILLs its QEMU on the first tick after its pid file appears (the
#: QEMU driver writes it right after the fork, early in ``create()``). The reserve keeps a
#: start that would mostly run after the deadline from beginning at all, and is small
#: enough never to refuse on a healthy lease: at TTL 3 its deadline is 1-2 s away (at
#: TTL 10, 4.7-8 s).
START_BUDGET_S = 0.5
#: The same at the fence hook's check, later in the start (libvirt's spawn of QEMU is left).
HOOK_BUDGET_S = 0.25


#: Linux watchdog ioctls (``<linux/watchdog.h>``): ``_IOWR('W', 6, int)``, ``_IOR('W', 7, int)``.
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
#: Written before closing, it stops the watchdog (unless the kernel is ``nowayout``).
MAGIC_CLOSE = b"V"
#: The legacy ``/dev/watchdog`` (misc 10:130) is the first watchdog, ``watchdog0`` in sysfs.
_LEGACY_DEVICE = (10, 130)

Ioctl = Callable[[int, int, bytearray], object]


class WatchdogKind(StrEnum):
    """What the agent's ``watchdog`` path is; never guessed from the path."""

    DEVICE = "device"  # a Linux watchdog character device (hardware, softdog)
    EMULATED = "emulated"  # a plain file the lab's emulator watches (gridtool.lab.watchdog)


class Watchdog:
    """A host watchdog: a Linux watchdog device (``/dev/watchdog``: hardware or softdog),
    or, named as such in the agent's configuration, the file of the lab's emulator.

    Only a character device counts as a device: a missing path or a plain file is a
    *problem* (never created, never written). The device is opened by the first pet, not
    before: opening pets it, and a restarted agent must not extend a reset that its
    predecessor's last pet scheduled until it knows its lease (see ``HostLease``). On
    opening, the timeout is set (``WDIOC_SETTIMEOUT``, whole seconds) and read back
    (``WDIOC_GETTIMEOUT``); the read-back value is the timeout the agent reckons with,
    and one longer than ``limit`` (what the lease allows) is a problem.

    No method raises on a device error (busy: systemd's ``RuntimeWatchdogSec`` holds it;
    not a watchdog; gone): the error becomes :attr:`problem`, logged once, and the next
    pet tries again. While there is a problem the watchdog does not protect the host
    (:attr:`working`). ``close`` writes the magic "V" (a clean stop with nothing to fence
    does not reset the host) to a device this agent opened, or one a predecessor left armed
    (:meth:`inherit`), never to one nobody opened: on a ``nowayout`` kernel that would arm
    it for good. On such a kernel an opened device is never let go: it is petted instead.
    ``abandon`` leaves it armed."""

    def __init__(self, path: str, timeout: float, kind: WatchdogKind | str = WatchdogKind.DEVICE,
                 limit: float = math.inf, on_change: Callable[[], None] = lambda: None,
                 ioctl: Ioctl = fcntl.ioctl, sysfs: Path = Path("/sys")) -> None:
        self.path = Path(path)
        self.kind = WatchdogKind(kind)
        self.timeout = timeout  # the one reckoned with: the device's own once read back
        self.limit = limit
        self._on_change = on_change
        self._ioctl = ioctl
        self._sysfs = sysfs
        self._fd: int | None = None
        self._opened = False
        self._inherited = False  # a predecessor may have left it armed
        self._nowayout = False
        self._lock = threading.Lock()  # the guard and intent threads both pet
        self.problem = ""
        self._set_problem(self._static_problem())

    @property
    def working(self) -> bool:
        """True while nothing is known to keep this watchdog from resetting the host."""
        return not self.problem

    def _static_problem(self) -> str:
        """What is wrong before the device is even opened ("" if nothing)."""
        if self.kind is WatchdogKind.DEVICE and not self.path.exists():
            return f"{self.path} does not exist (load a watchdog driver, e.g. softdog)"
        if self.kind is WatchdogKind.DEVICE and not self.path.is_char_device():
            return f"{self.path} is not a character device"
        if self.timeout > self.limit:
            return (f"watchdog_timeout {self.timeout:g} s exceeds the {self.limit:g} s "
                    "the lease allows")
        return ""

    def _set_problem(self, problem: str) -> None:
        if problem == self.problem:
            return
        if problem:
            log.error("event=watchdog_problem path=%s kind=%s problem=%s", self.path,
                      self.kind, problem)
        else:
            log.info("event=watchdog_ok path=%s kind=%s timeout_s=%g", self.path, self.kind,
                     self.timeout)
        self.problem = problem
        self._on_change()

    def inherit(self) -> None:
        """A predecessor's lease was resumed: it may have left the watchdog armed, so
        :meth:`close` disarms it even if this agent never opened it."""
        self._inherited = True

    def pet(self) -> bool:
        """Pet (opening and arming it if need be): True when it was petted and works."""
        with self._lock:
            return self._guarded(self._pet)

    def close(self) -> None:
        """Disarm with the magic "V": the device this agent opened or inherited."""
        with self._lock:
            self._guarded(self._close)

    def _guarded(self, step: Callable[[], bool]) -> bool:
        """Run ``step``; a device error becomes the problem (and drops the descriptor)."""
        try:
            return step()
        except OSError as exc:
            self._let_go()
            name = errno.errorcode.get(exc.errno or 0, "error")
            self._set_problem(f"{exc.strerror or exc} ({name})")
            return False

    def _pet(self) -> bool:
        static = self._static_problem()
        if static:
            self._set_problem(static)
            return False
        if self.kind is WatchdogKind.EMULATED:
            if not self._opened:
                self.path.write_bytes(b"\0")  # armed (and petted: the mtime is new)
            else:
                os.utime(self.path)
            self._opened = True
            self._set_problem("")
            return True
        if self._fd is None:
            self._open_device()
        assert self._fd is not None
        problem = self._timeout_problem()
        if problem and not self._nowayout:
            self._let_go()  # too slow to protect anything: disarmed, not left to fire
        else:  # (on a nowayout kernel it cannot be stopped: keep it petted all the same)
            os.write(self._fd, b"\0")
            self._opened = True
        self._set_problem(problem)
        return not problem

    def _open_device(self) -> None:
        """Open the device, set its timeout and read it back."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        self._fd = fd
        self._nowayout = self._read_nowayout()
        wanted = array.array("i", [max(1, math.floor(self.timeout))])
        with contextlib.suppress(OSError):  # a driver may refuse the value: read what it has
            self._ioctl(fd, WDIOC_SETTIMEOUT, wanted)  # type: ignore[arg-type]
        got = array.array("i", [0])
        self._ioctl(fd, WDIOC_GETTIMEOUT, got)  # type: ignore[arg-type]
        self.timeout = float(got[0])
        log.info("event=watchdog_open path=%s timeout_s=%d nowayout=%s", self.path, got[0],
                 "yes" if self._nowayout else "no")

    def _timeout_problem(self) -> str:
        if self.timeout > self.limit:
            return (f"the device's timeout is {self.timeout:g} s, over the {self.limit:g} s "
                    "the lease allows")
        return ""

    def _read_nowayout(self) -> bool:
        """The kernel's ``nowayout`` for this device (sysfs); False when it cannot tell."""
        try:
            rdev = self.path.stat().st_rdev
            dev = (os.major(rdev), os.minor(rdev))
            node = (self._sysfs / "class/watchdog/watchdog0" if dev == _LEGACY_DEVICE
                    else self._sysfs / f"dev/char/{dev[0]}:{dev[1]}")
            return (node / "nowayout").read_text().strip() == "1"
        except (OSError, ValueError):
            return False

    def _close(self) -> bool:
        if self.kind is WatchdogKind.EMULATED:
            if self._opened or (self._inherited and self.path.exists()):
                self.path.write_bytes(MAGIC_CLOSE)
            self._opened = self._inherited = False
            return True
        if self._fd is None and self._inherited and not self._static_problem():
            self._open_device()  # a predecessor's armed device: disarm it
        self._inherited = False
        if self._fd is None:
            return True  # never opened: leave it alone (opening would arm it)
        if self._nowayout:
            os.write(self._fd, b"\0")  # it cannot be stopped: keep it petted
            return True
        os.write(self._fd, MAGIC_CLOSE)
        self._drop()
        return True

    def _let_go(self) -> None:
        """After a device error: disarm and close what this agent opened (a device that
        errs cannot be relied on; left armed it would reset a host whose agent lives),
        except on a ``nowayout`` kernel, where closing would leave it armed for good."""
        if self._fd is not None and self._nowayout:
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, MAGIC_CLOSE)
        self._drop()

    def _drop(self) -> None:
        fd, self._fd = self._fd, None
        self._opened = False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def abandon(self) -> None:
        """Let go without the magic close: the watchdog resets the host unless a new
        agent pets it in time."""
        with self._lock:
            self._drop()

    @property
    def armed(self) -> bool:
        """This agent holds the device open: it resets the host unless petted (after a
        ``close`` only on a ``nowayout`` kernel)."""
        return self._fd is not None


class HostLease:
    """Grant, keep alive and watch one etcd lease for this host.

    Two threads run it (:meth:`start`); each turn of theirs is a public step,
    :meth:`keepalive_step` and :meth:`guard_step`, which the simulator calls on its own
    ``clock`` instead."""

    def __init__(self, store: Store, ttl: int, host: str,
                 self_fence: Callable[[bool], bool], watchdog: Watchdog | None = None,
                 has_ha_guests: Callable[[], bool] = lambda: True,
                 may_pet: Callable[[], bool] = lambda: True,
                 came_up: Callable[[str], None] = lambda _uuid: None,
                 clock: Clock = SYSTEM) -> None:
        self.store = store
        self._clock = clock
        self.ttl = ttl
        self.host = host
        self._self_fence = self_fence
        self._watchdog = watchdog
        self._has_ha_guests = has_ha_guests
        self._may_pet = may_pet
        self._came_up = came_up
        self._creating: Counter[str] = Counter()  # HA guests whose create() is in flight
        self._creating_lock = threading.Lock()
        self.lease: int | None = None
        self.clock: LeaseClock | None = None
        self.lost = threading.Event()
        self._fenced_for: int | None = None
        self._fencing = False  # some HA guest of a lease in doubt is not confirmed gone
        self._fence_open = False  # a self-fence began and has not been ended yet
        self.keepalive_rtt = 0.0  # the last keepalive's (or grant's) round trip, seconds
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
        self.keepalive_rtt = self._clock.monotonic() - sent
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
        if self._watchdog is not None:
            self._watchdog.inherit()  # the predecessor kept its lease: it left it armed
        return True

    def healthy(self) -> bool:
        clock = self.clock
        return clock is not None and clock.state(self._clock.monotonic()) is LeaseState.HEALTHY

    @property
    def has_watchdog(self) -> bool:
        """A watchdog is configured and, as far as is known, works (see ``Watchdog``)."""
        return self._watchdog is not None and self._watchdog.working

    @property
    def watchdog_problem(self) -> str:
        """Why the configured watchdog does not protect the host ("" when it does, or
        when none is configured)."""
        return self._watchdog.problem if self._watchdog is not None else ""

    @property
    def watchdog_timeout(self) -> float:
        """The working watchdog's timeout in seconds (0: no working watchdog)."""
        return self._watchdog.timeout if self._watchdog is not None and self.has_watchdog \
            else 0.0

    def arm(self) -> bool:
        """Get ready to run an HA guest: True when the lease is healthy and the watchdog
        (if configured) was petted just now, so that a crash from this instant on resets
        the host before the fences can vanish (the guard pets it only every tick). False
        too when a configured watchdog fails (busy, not a watchdog, a timeout longer than
        the lease allows): an HA guest must not start on a host it would not protect."""
        clock, now = self.clock, self._clock.monotonic()
        if clock is None or clock.state(now) is not LeaseState.HEALTHY or self._fencing:
            return False
        if self._watchdog is None:
            return True
        if not clock.watchdog_may_pet(now, self._watchdog.timeout, True) \
                or not self._watchdog.pet():
            return False
        self._armed_until = now + self.ttl  # the guard keeps it armed while the fence is taken
        return True

    def why_not_start(self, budget: float = START_BUDGET_S) -> str:
        """Why no HA guest may start here now ('' when one may): the lease clock's
        answer (:meth:`LeaseClock.may_start`) for a start needing ``budget`` seconds and
        the next keepalive's round trip; checked right before libvirt's ``create()``."""
        clock = self.clock
        if clock is None:
            return f"{self.host} holds no lease"
        if self._fencing:
            return (f"{self.host} is still self-fencing the HA guests of a lease in doubt: "
                    "it starts none until libvirt confirms them gone")
        return clock.why_not_start(self.host, self._clock.monotonic(),
                                   budget + self.keepalive_rtt)

    @contextmanager
    def creating(self, guest: str) -> Iterator[None]:
        """An HA guest's ``create()``, right after its lease clock's last check passed:
        meanwhile the guard counts it as an HA guest running here (the
        watchdog is neither disarmed nor petted past what the lease allows, even once
        the self-fence has confirmed every HA guest dead), and when it ends the
        self-fence is told (``came_up``): a guest it confirmed gone before may run now."""
        with self._creating_lock:
            self._creating[guest] += 1
        try:
            yield
        finally:
            try:
                self._came_up(guest)
            finally:
                with self._creating_lock:
                    self._creating[guest] -= 1
                    if self._creating[guest] <= 0:
                        del self._creating[guest]

    def _ha_running(self) -> bool:
        """HA guests run here, or one's ``create()`` is in flight."""
        with self._creating_lock:
            if self._creating:
                return True
        return self._has_ha_guests()

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
            if self._watchdog.armed:  # nowayout: this agent's exit leaves it running
                log.warning("event=watchdog_nowayout host=%s timeout_s=%g note=the kernel "
                            "cannot stop the watchdog: the host resets unless an agent pets "
                            "it in time", self.host, self._watchdog.timeout)

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
        self.keepalive_rtt = self._clock.monotonic() - now
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
        """Self-fence from the lease deadline on, on every tick while the lease is in
        doubt and after it until every HA guest is confirmed gone; tend the watchdog
        (never while one is not: it stays armed and unpetted, the backstop)."""
        clock, lease = self.clock, self.lease
        if clock is None or lease is None:
            return
        now = self._clock.monotonic()
        in_doubt = clock.state(now) is LeaseState.MUST_SELF_FENCE
        if in_doubt and self._fenced_for != lease:
            self._fenced_for = lease
            log.warning("event=self_fence host=%s lease=%x reason=lease_deadline "
                        "overdue_s=%.2f", self.host, lease, now - clock.deadline)
        if in_doubt or self._fencing or self._fence_open:
            done = self._self_fence(in_doubt)
            self._fencing = not done
            # open until a step out of doubt finds every target gone: it ends it (the
            # self-fence then covers its guests no more: they are the agent's to judge)
            self._fence_open = not (done and not in_doubt)
        if in_doubt and self.lease == lease:  # (not a lease granted meanwhile)
            self.lost.set()
        if self._watchdog is not None and self._may_pet() and not self._fencing:
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
        ha = self._ha_running()
        if not ha and now >= self._armed_until:
            watchdog.close()  # nothing to fence: disarm (a no-op when not open)
        elif clock.watchdog_may_pet(now, watchdog.timeout, ha):
            watchdog.pet()
