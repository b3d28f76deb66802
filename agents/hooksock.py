"""The agent's side of the fence hook: a unix socket answering "does this host hold
every fence of this guest?" for ``agents/hook.py``.

A request is one JSON line ``{"op", "sub", "name", "uuid", "xml"}``; the answer one JSON
line ``{"allow": bool, "message": str}``. This module only gathers the facts: the guest's
shared volumes (from its XML under the agent's storage rules), the observed fences and
the incoming migration it expects, if any; the answer is ``gridtool.fencing.rules.may_start``'s.
It decides with the guest claimed (``agents.claims``: after a judgement of the guest in
progress ends, and none starts meanwhile). Fences are read from etcd, except that a
"held" read is reused for :data:`FRESH_S` seconds while the fencer still holds them.

The answer goes out within :data:`ANSWER_WITHIN_S`, before the hook's own timeout: a
registry that does not answer (etcd unreachable, a read retried for the store's whole
timeout) is a refusal that says so, not a silence the hook would report as an agent
that is not running. A decision given up that way changes nothing.

An incoming live migration (``migrate``) is allowed while the fences are still with the
source only when this agent was told to expect it (a ``receive`` intent, submitted by
the migrating client before the source's ``migrate`` intent; it names the source, which
must hold every fence, and lasts one minute for one migration): the source hands the
fences over at switchover. A bare ``virsh migrate`` is refused. Until the fences are
here (or the incoming guest is gone again), the guest is marked busy (the agent does
not judge it) and its ``prepare`` is allowed; a thread follows the arrival, judging it
(``fencing.migration.judge_arrival``) on each of its lifecycle events (:meth:`HookServer.wake`)
and every :data:`ARRIVAL_POLL_S`: paused for the incoming migration it waits; resumed
by libvirt without this host holding every fence, it is paused at once (resumed again if
the source's handover then arrives) or, when the fences are not even with the source,
stopped as an intruder under ``intruder_policy`` and reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agents.claims import GuestClaims
from agents.hook import DEFAULT_TIMEOUT_S, read_line
from agents.lease import HOOK_BUDGET_S
from agents.livemigrate import copy_of
from agents.ports import Domains, FenceView, LeaseView
from gridtool import supervise
from gridtool.domains.devices import parse_local_domain
from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xml import DomainXMLError
from gridtool.errors import RegistryUnavailable
from gridtool.fencing.migration import ArrivalAct, Copy, judge_arrival
from gridtool.fencing.rules import (
    EXPECT_S,
    Expected,
    FenceKind,
    GuestRef,
    IntruderPolicy,
    Observation,
    StartOp,
    incoming_named,
    may_start,
)

log = logging.getLogger("gridtool.agent")

FRESH_S = 2.0  # how long an etcd-confirmed "held" answer is trusted without a read
INCOMING_MAX_S = 900.0  # an incoming migration is given up on after this
CLAIM_WAIT_S = 1.0  # a judgement of the guest in progress must end within this
#: The hook waits DEFAULT_TIMEOUT_S (2 s) for the answer; it is sent 0.5 s before that
#: (the hook's connect and the answer's way back), decided or not.
ANSWER_WITHIN_S = DEFAULT_TIMEOUT_S - 0.5


class _Decision:
    """One hook decision's race against its deadline: it takes effect (``commit``) or is
    given up (``abandon``), never both."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = ""  # "", "committed" or "abandoned"

    def commit(self) -> bool:
        """Before the decision changes anything: False once it was given up."""
        with self._lock:
            self._state = self._state or "committed"
            return self._state == "committed"

    def abandon(self) -> bool:
        """The deadline passed: True when the decision had not taken effect (it never will)."""
        with self._lock:
            self._state = self._state or "abandoned"
            return self._state == "abandoned"


#: An arriving guest is judged on each of its lifecycle events, and at least this often.
ARRIVAL_POLL_S = 0.05

#: The log line of each act on an arriving guest.
_ARRIVAL_EVENTS = {ArrivalAct.PAUSE: "event=incoming_paused",
                   ArrivalAct.DESTROY: "event=incoming_destroyed",
                   ArrivalAct.RESUME: "event=incoming_resumed"}

#: ``report(uuid, message, action)``: record a fence violation of an arriving guest.
Report = Callable[[str, str, str], None]


@dataclass
class _Arrival:
    """One incoming live migration being followed."""

    guest: GuestRef
    source: str
    began: float
    #: until when a copy not seen yet is "not here yet", not "gone": the expectation's
    #: end (libxl's incoming copy is a shut-off domain until its memory is all there)
    appear_by: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)
    woke_at: float = 0.0  # when the last lifecycle event came (monotonic)
    seen: bool = False  # libvirt has shown the incoming domain
    paused_by_us: bool = False  # resumed before its fences: paused by this arrival
    failing: str = ""  # the last error judging it (logged once)


class HookServer:
    """A daemon thread serving the fence hook on ``path`` for ``host``.

    ``fencer`` gives the fences held and fresh reads; ``claims`` the guest claims shared
    with the agent; ``domains`` the host's libvirt (an incoming guest's state, and where
    it is paused or stopped); ``on_change(uuid)`` asks the agent to look at a guest
    again; ``policy`` is what an arriving intruder gets, ``report`` records its violation;
    ``lease`` the host's lease, whose clock refuses an HA guest's start near the
    self-fence deadline (None: not checked); ``registry_silence()`` how long the registry
    has not answered the agent (``Store.unanswered_for``), which names the registry as
    the trouble when a judgement in progress holds the guest past the claim wait.
    """

    def __init__(self, path: str, *, host: str, rules: SharedStorageRules,
                 fencer: FenceView, claims: GuestClaims, domains: Domains,
                 on_change: Callable[[str], None],
                 answer_within: float = ANSWER_WITHIN_S,
                 policy: IntruderPolicy = IntruderPolicy.PAUSE,
                 report: Report | None = None,
                 lease: LeaseView | None = None,
                 registry_silence: Callable[[], float] = lambda: 0.0) -> None:
        self.path = path
        self.registry_silence = registry_silence
        self.lease = lease
        self.answer_within = answer_within
        self.host = host
        self.rules = rules
        self.fencer = fencer
        self.claims = claims
        self.domains = domains
        self.on_change = on_change
        self.policy = policy
        self.report = report
        self._sock: socket.socket | None = None
        # guest uuid -> (when etcd said "held", what it said)
        self._confirmed: dict[str, tuple[float, dict[str, Observation]]] = {}
        self._arriving: dict[str, _Arrival] = {}  # guest uuid -> its arrival
        self._expected: dict[str, Expected] = {}
        self._lock = threading.Lock()
        self.monotonic: Callable[[], float] = time.monotonic  # (tests move it on)

    def start(self) -> HookServer:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        supervise.start(self._serve, "hooksock", logger=log)
        log.info("event=hook_socket host=%s path=%s", self.host, self.path)
        return self

    def stop(self) -> None:
        """Stop answering (the serving thread ends) and remove the socket."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            Path(self.path).unlink(missing_ok=True)

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            supervise.start(self._handle, "hooksock-request", (conn,), logger=log)

    def _handle(self, conn: socket.socket) -> None:
        request: dict = {}
        with conn:
            conn.settimeout(5.0)
            try:
                request = dict(json.loads(read_line(conn)))
                allow, message = self.answer(str(request.get("op", "")),
                                             str(request.get("uuid", "")),
                                             str(request.get("name", "")),
                                             str(request.get("xml", "")))
            except Exception as exc:
                allow, message = False, f"the agent could not decide ({exc})"
            log.info("event=hook_%s host=%s guest=%s op=%s message=%s",
                     "allowed" if allow else "refused", self.host,
                     request.get("name", "?"), request.get("op", "?"), message)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"allow": allow, "message": message}).encode() + b"\n")

    # -- the facts, and the rule's answer --------------------------------------

    def answer(self, op: str, uuid: str, name: str, xml: str) -> tuple[bool, str]:
        """:meth:`check`'s answer, or a refusal naming the registry once
        :attr:`answer_within` seconds have passed without one."""
        decision = _Decision()
        result: list[tuple[bool, str]] = []
        done = threading.Event()

        def decide() -> None:
            try:
                result.append(self.check(op, uuid, name, xml, decision))
            except RegistryUnavailable as exc:
                result.append((False, self._unreachable(str(exc))))
            except Exception as exc:
                result.append((False, f"the agent could not decide ({exc})"))
            done.set()

        threading.Thread(target=decide, name="hook-decision", daemon=True).start()
        if not done.wait(self.answer_within) and decision.abandon():
            return False, (f"{self.host}'s agent cannot read its fences: the registry (etcd) "
                           f"did not answer within {self.answer_within:g} s (unreachable?); "
                           "nobody can tell who holds them")
        done.wait()  # it took effect just now: its answer comes at once
        return result[0]

    def check(self, op: str, uuid: str, name: str, xml: str,
              decision: _Decision | None = None) -> tuple[bool, str]:
        """(allowed, why) for starting/restoring/receiving guest ``uuid`` here; changes
        nothing when ``decision`` was given up by the time the fences are read."""
        guest = self._guest(op, uuid, name, xml)
        if isinstance(guest, str):
            return False, guest
        if not guest.volumes and not guest.unidentified:
            return True, "not fenced"
        with self.claims.working(guest.uuid, CLAIM_WAIT_S) as claimed:
            if not claimed:
                silent = self.registry_silence()
                if silent > 0:  # that judgement waits on etcd: say so, not "try again"
                    return False, self._unreachable(f"no answer for {silent:.1f} s")
                return False, f"{self.host}'s agent is judging it right now: try again"
            return self._decide(op, guest, decision or _Decision())

    def _guest(self, op: str, uuid: str, name: str, xml: str) -> GuestRef | str:
        """The guest libvirt asks about, from its domain XML, or by ``name`` from the
        expected incoming migrations when libvirt passed none (libxl's ``migrate begin``:
        ``rules.incoming_named``); else why it is refused."""
        if not xml.strip():
            with self._lock:
                return incoming_named(name, op, self._expected, self.monotonic())
        try:
            spec = parse_local_domain(xml, self.rules)
        except DomainXMLError as exc:
            return f"its domain XML cannot be read ({exc})"
        volumes = tuple(sorted({d.volume for d in spec.disks if d.shared and d.volume}))
        if not uuid and (volumes or spec.unidentified):
            return "its domain XML has no UUID"
        return GuestRef(uuid or name or "-", name or uuid or "-", FenceKind.PINNED,
                        volumes,  # kind: not asked
                        intruder=spec.intruder,  # a saved image of a marked copy
                        unidentified=spec.unidentified)

    def _unreachable(self, detail: str) -> str:
        return (f"{self.host}'s agent cannot read its fences: the registry (etcd) is "
                f"unreachable ({detail})")

    def _decide(self, op: str, guest: GuestRef, decision: _Decision) -> tuple[bool, str]:
        now = self.monotonic()
        cached = self._cached(guest, now)
        observed = cached if cached is not None else self.fencer.observe(guest.volumes)
        with self._lock:
            if not decision.commit():
                return False, "given up: the fences were read too late"
            expected = self._expected.get(guest.uuid)
            arrival = self._arriving.get(guest.uuid)
            lease = self.lease
            budget = HOOK_BUDGET_S + (lease.keepalive_rtt if lease is not None else 0.0)
            answer = may_start(self.host, guest, observed, op, expected,
                               arrival.source if arrival is not None else None, now,
                               lease.clock if lease is not None else None, budget)
            source = answer.incoming_from
            if source is not None and op == StartOp.MIGRATE:
                # the expectation is used up: this migration is arriving now
                assert expected is not None
                del self._expected[guest.uuid]
                arrival = self._arriving[guest.uuid] = _Arrival(
                    guest, source, now, appear_by=max(expected.until, now + EXPECT_S))
            else:
                arrival = None
                if answer.allow and source is None and cached is None:
                    self._confirmed[guest.uuid] = (now, dict(observed))
        if arrival is not None:
            self._follow_arrival(arrival)
        return answer.allow, answer.reason

    def _cached(self, guest: GuestRef, now: float) -> dict[str, Observation] | None:
        """The last "held" read of ``guest``'s fences if recent and the fencer still
        holds every one of them, else None (read again)."""
        with self._lock:
            at, observed = self._confirmed.get(guest.uuid, (0.0, {}))
        held = self.fencer.held
        fresh = now - at <= FRESH_S and all(
            v in held and held[v].guest == guest.uuid for v in guest.volumes)
        return observed if fresh and set(observed) >= set(guest.volumes) else None

    # -- incoming live migrations ---------------------------------------------

    def expect(self, uuid: str, source: str, guest: GuestRef | None = None,
               within: float = EXPECT_S) -> None:
        """The ``receive`` intent: accept ONE incoming live migration of ``uuid`` from
        ``source`` within ``within`` seconds (its fences still with ``source``); ``guest``
        as the source's record has it names it when libvirt passes no XML."""
        with self._lock:
            self._expected[uuid] = Expected(source, self.monotonic() + within, guest)

    def wake(self, uuid: str) -> None:
        """A lifecycle event of ``uuid`` (the agent calls this from libvirt's event loop):
        an arriving guest is judged again at once (RESUMED/STARTED with detail MIGRATED
        is libvirt resuming it)."""
        with self._lock:
            arrival = self._arriving.get(uuid)
        if arrival is not None:
            arrival.woke_at = self.monotonic()
            arrival.wake.set()

    def _follow_arrival(self, arrival: _Arrival) -> None:
        """Keep the arriving guest busy (not judged by the agent while its fences are
        still away) and judge it as it arrives, until its fences are here or it is gone
        again; then have the agent judge it at once."""
        self.claims.enter(arrival.guest.uuid, wait=0.0)  # held already: no judgement runs
        supervise.start(self._follow, f"incoming-{arrival.guest.uuid[:8]}", (arrival,),
                        logger=log)

    def _follow(self, arrival: _Arrival) -> None:
        uuid = arrival.guest.uuid
        try:
            while self.monotonic() < arrival.began + INCOMING_MAX_S:
                arrival.wake.wait(ARRIVAL_POLL_S)
                arrival.wake.clear()
                try:
                    if self._arrival_step(arrival):
                        break
                    arrival.failing = ""
                except Exception as exc:  # etcd or libvirt away: judge it at the next try
                    error = " ".join(str(exc).split())
                    if error != arrival.failing:
                        log.warning("event=incoming_check_failed host=%s guest=%s error=%s",
                                    self.host, arrival.guest.name, error)
                    arrival.failing = error
        finally:
            with self._lock:
                self._arriving.pop(uuid, None)
            self.claims.leave(uuid)
            self.on_change(uuid)

    def _arrival_step(self, arrival: _Arrival) -> bool:
        """Judge the arriving guest once and act; True when its arrival is over."""
        guest = arrival.guest
        dom = self.domains.domain(guest.uuid)
        copy = copy_of(dom)
        arrival.seen = arrival.seen or copy is not Copy.ABSENT
        step = judge_arrival(
            self.host, arrival.source, guest, self.fencer.observe(guest.volumes), copy,
            paused_by_us=arrival.paused_by_us, policy=self.policy,
            may_be_gone=arrival.seen or self.monotonic() > arrival.appear_by)
        if step.act in (ArrivalAct.WAIT, ArrivalAct.DONE) or dom is None:
            return step.act is ArrivalAct.DONE
        if step.act is ArrivalAct.RESUME:
            dom.resume()
        elif step.act is ArrivalAct.DESTROY:
            dom.destroy()
        else:
            dom.suspend()
            arrival.paused_by_us = True
        since = (self.monotonic() - arrival.woke_at) * 1000 if arrival.woke_at else -1.0
        log.warning(_ARRIVAL_EVENTS[step.act] + " host=%s guest=%s from=%s "
                    "since_event_ms=%.1f message=%s", self.host, guest.name, arrival.source,
                    since, step.reason)
        if step.violation and self.report is not None:
            self.report(guest.uuid, step.reason, step.act.value)
        return step.act is ArrivalAct.RESUME
