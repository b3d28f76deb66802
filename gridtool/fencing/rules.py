"""The fencing rule, pure: fence records, acquire/release plans, judgements, the lease clock.

A guest whose disks live on shared storage must never run on two hosts at once. Each
shared volume has a fence key ``<prefix>fences/<volume>`` whose value is a :class:`Fence`
and whose ``mod_revision`` is the fencing token. This module decides; the shell (agent,
manager, libvirt hook) reads etcd, runs the transaction a plan describes and acts on
libvirt. Nothing here does I/O or reads a clock: times are numbers passed in.

Shell contract, in short:

* **acquire**: read every fence key of the guest, build a :class:`Observation` per volume
  with :func:`observe`, call :func:`plan_acquire`, and run ONE etcd transaction: for each
  :class:`FenceStep` compare ``create_revision == 0`` (``Expect.ABSENT``) or
  ``mod_revision == step.mod_revision`` (``Expect.MINE``); on success put every
  ``step.value``, with the holder's lease when ``step.with_lease``. A failed compare means
  the world moved: read again and plan again. Start the guest only after success.
* **release**: :func:`plan_release` gives compare-``mod_revision``-then-delete steps, one
  transaction.
* **self-fence**: keep a :class:`LeaseClock`; when it says ``MUST_SELF_FENCE``, kill
  every HA fenced guest at once, and on every tick after that ask :func:`self_fence_round`
  what to kill or check again, until libvirt confirms each gone; pinned guests run on.
* **starts near the deadline**: an HA guest starts only while :meth:`LeaseClock.may_start`
  says its start (and one keepalive) fits before the deadline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


class FenceError(ValueError):
    """A fence record or a fencing request is malformed; the message names what is wrong."""


class FenceKind(StrEnum):
    """How a fence lives: HA fences die with their holder's lease, pinned ones do not."""

    HA = "ha"
    PINNED = "pinned"


def check_volume(volume: object) -> str:
    """Return ``volume`` if it can be a key segment (non-empty, no '/', blanks, controls)."""
    if not isinstance(volume, str) or not volume:
        raise FenceError(f"volume id must be a non-empty string, got {volume!r}")
    if "/" in volume or any(c.isspace() or ord(c) < 32 for c in volume):
        raise FenceError(f"volume id {volume!r} must not contain '/', blanks or controls")
    return volume


def _text(owner: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise FenceError(f"{owner}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _number(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise FenceError(f"{owner}: field {name!r} must be a finite number >= 0, got {value!r}")
    return value


def _kind(owner: str, value: object) -> FenceKind:
    if isinstance(value, str):
        try:
            return FenceKind(value)
        except ValueError:
            pass
    kinds = ", ".join(k.value for k in FenceKind)
    raise FenceError(f"{owner}: field 'kind' must be one of {kinds}, got {value!r}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Fence:
    """The value of one fence key: who holds ``volume`` for which guest, and since when."""

    volume: str
    holder: str
    guest: str
    guest_name: str
    kind: FenceKind
    since: float  # epoch seconds when the holder first took the fence

    def __post_init__(self) -> None:
        owner = "fence record"
        try:
            check_volume(self.volume)
        except FenceError as exc:
            raise FenceError(f"{owner}: field 'volume': {exc}") from None
        for name in ("holder", "guest", "guest_name"):
            _text(owner, name, getattr(self, name))
        object.__setattr__(self, "kind", _kind(owner, self.kind))
        _number(owner, "since", self.since)

    @property
    def with_lease(self) -> bool:
        """True when the key must be put with the holder's lease (HA fences)."""
        return self.kind is FenceKind.HA

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in etcd (schema ``"v": 1``)."""
        return {
            "v": SCHEMA_VERSION,
            "volume": self.volume,
            "holder": self.holder,
            "guest": self.guest,
            "guest_name": self.guest_name,
            "kind": self.kind.value,
            "since": self.since,
        }

    @classmethod
    def from_dict(cls, data: object) -> Fence:
        """Parse a decoded JSON object; raise :class:`FenceError` naming the bad field."""
        if not isinstance(data, Mapping):
            raise FenceError(f"fence record: expected a JSON object, got {type(data).__name__}")
        version = data.get("v")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise FenceError(
                f"fence record: unsupported schema version {version!r} (expected 1)"
            )
        names = ("volume", "holder", "guest", "guest_name", "kind", "since")
        missing = [n for n in names if n not in data]
        if missing:
            raise FenceError(f"fence record: missing field {missing[0]!r}")
        return cls(**{n: data[n] for n in names})

    def to_json(self) -> str:
        """Compact, key-sorted JSON text (what the shell puts)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Fence:
        """Parse the stored text; raise :class:`FenceError` when it is not a fence record."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FenceError(f"fence record: not JSON ({exc.__class__.__name__})") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class Observed:
    """A fence key as read: its record and its ``mod_revision`` (the fencing token)."""

    fence: Fence
    mod_revision: int

    def __post_init__(self) -> None:
        if isinstance(self.mod_revision, bool) or not isinstance(self.mod_revision, int) \
                or self.mod_revision <= 0:
            raise FenceError(f"mod_revision must be a positive int, got {self.mod_revision!r}")


@dataclass(frozen=True)
class Unreadable:
    """A fence key exists but its value is not a valid record: treated as held by nobody
    we know, so it blocks every acquire until an operator repairs it."""

    volume: str
    mod_revision: int
    error: str


#: What the shell saw for one volume: ``None`` when the key is absent.
Observation = Observed | Unreadable | None


def observe(volume: str, raw: str | bytes | None, mod_revision: int = 0) -> Observation:
    """Decode what etcd returned for ``volume``'s fence key (``raw=None``: key absent)."""
    check_volume(volume)
    if raw is None:
        return None
    try:
        fence = Fence.from_json(raw)
    except FenceError as exc:
        return Unreadable(volume, mod_revision, str(exc))
    if fence.volume != volume:
        return Unreadable(volume, mod_revision, f"record names volume {fence.volume!r}")
    try:
        return Observed(fence, mod_revision)
    except FenceError as exc:
        return Unreadable(volume, mod_revision, str(exc))


@dataclass(frozen=True)
class GuestRef:
    """A fenced guest: identity, fence kind and its shared volumes (sorted, unique).

    ``intruder``: this run of the guest was once judged an intruder (the shell marks it;
    see ``gridtool.domains.xml.INTRUDER_NS``). Its memory may be stale against a disk
    that changed since, so until it has been shut off it takes no fence, is never judged
    OK and may not start (a saved image of it carries the mark: restoring it is refused).

    ``unidentified``: its disks on shared storage whose LUN could not be identified (one
    line each, see ``gridtool.domains.storage``): no fence can cover them, so the guest
    takes none and may not start (fail closed).
    """

    uuid: str
    name: str
    kind: FenceKind
    volumes: tuple[str, ...] = field(default=())
    intruder: bool = False
    unidentified: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _text("guest", "uuid", self.uuid)
        _text("guest", "name", self.name)
        object.__setattr__(self, "kind", _kind("guest", self.kind))
        vols = tuple(sorted({check_volume(v) for v in self.volumes}))
        object.__setattr__(self, "volumes", vols)


def _lookup(observed: Mapping[str, Observation], volume: str) -> Observation:
    if volume not in observed:
        raise FenceError(f"no observation for volume {volume!r}: read every fence key first")
    return observed[volume]


def _held(host: str, guest: GuestRef, obs: Observation) -> Observed | None:
    """``obs`` if it is a fence ``host`` holds for ``guest``, else None."""
    if isinstance(obs, Observed) and obs.fence.holder == host and obs.fence.guest == guest.uuid:
        return obs
    return None


def _describe(obs: Observation) -> str:
    if obs is None:
        return "absent"
    if isinstance(obs, Unreadable):
        return f"unreadable at revision {obs.mod_revision} ({obs.error})"
    f = obs.fence
    return f"held by {f.holder} for guest {f.guest_name} ({f.guest})"


# --------------------------------------------------------------------------- acquire/release


class Expect(StrEnum):
    """The compare of one acquire step."""

    ABSENT = "absent"  # create_revision(key) == 0
    MINE = "mine"  # mod_revision(key) == step.mod_revision


@dataclass(frozen=True)
class FenceStep:
    """One volume of an acquire transaction: a compare and the record to put."""

    volume: str
    expect: Expect
    mod_revision: int  # 0 with Expect.ABSENT
    fence: Fence

    @property
    def value(self) -> str:
        """The JSON text to put."""
        return self.fence.to_json()

    @property
    def with_lease(self) -> bool:
        """Put with the holder's lease (HA) or with no lease (pinned)."""
        return self.fence.with_lease


@dataclass(frozen=True)
class AcquirePlan:
    """Take every fence of ``guest`` in ONE transaction, or none (all compares must hold)."""

    guest: str
    holder: str
    steps: tuple[FenceStep, ...]


@dataclass(frozen=True)
class Refusal:
    """The guest must not start here: ``volume`` is held elsewhere (or unreadable)."""

    guest: str
    volume: str
    holder: str | None  # None when the record is unreadable
    reason: str


StepFor = Callable[[str, Observation], "FenceStep | None"]


def plan_acquire(
    host: str, guest: GuestRef, observed: Mapping[str, Observation], now: float
) -> AcquirePlan | Refusal:
    """Plan taking all of ``guest``'s fences for ``host``; refuse on the first foreign one.

    A fence already held by ``host`` for this guest is re-put (compare its mod_revision)
    with the guest's current kind and name, keeping its ``since``; that re-attaches it to
    the host's current lease and yields a fresh fencing token. A fence held by ``host``
    for another guest is a conflict too: two guests must not share a volume.
    """
    _text("acquire", "host", host)
    if guest.intruder:
        return _intruder_refusal(host, guest)

    def step(volume: str, obs: Observation) -> FenceStep | None:
        if obs is None:
            fence = Fence(volume, host, guest.uuid, guest.name, guest.kind, now)
            return FenceStep(volume, Expect.ABSENT, 0, fence)
        return _restep(host, guest, obs, holder=host, since=None)

    return _plan_puts(guest, observed, host, step)


def plan_handover(
    source: str, target: str, guest: GuestRef, observed: Mapping[str, Observation], now: float
) -> AcquirePlan | Refusal:
    """Plan passing every fence of ``guest`` from ``source`` to ``target`` (migration).

    Every fence must be held by ``source`` for the guest; each step compares its
    mod_revision. For HA guests the shell puts with ``target``'s lease (its host record
    names it), so the fence follows the host that now runs the guest.
    """
    _text("handover", "target", target)

    def step(volume: str, obs: Observation) -> FenceStep | None:
        return _restep(source, guest, obs, holder=target, since=now)

    return _plan_puts(guest, observed, target, step)


def _restep(
    host: str, guest: GuestRef, obs: Observation, holder: str, since: float | None
) -> FenceStep | None:
    """Re-put a fence ``host`` holds for ``guest`` (compare its mod_revision), or None."""
    held = _held(host, guest, obs)
    if held is None:
        return None
    changes: dict[str, Any] = {"holder": holder, "kind": guest.kind, "guest_name": guest.name}
    if since is not None:
        changes["since"] = since
    return FenceStep(held.fence.volume, Expect.MINE, held.mod_revision,
                     replace(held.fence, **changes))


def _plan_puts(
    guest: GuestRef, observed: Mapping[str, Observation], holder: str, step: StepFor
) -> AcquirePlan | Refusal:
    if guest.unidentified:
        return Refusal(guest.uuid, guest.volumes[0] if guest.volumes else "", None,
                       _unidentified(guest))
    steps = []
    for volume in guest.volumes:
        obs = _lookup(observed, volume)
        made = step(volume, obs)
        if made is None:
            who = obs.fence.holder if isinstance(obs, Observed) else None
            return Refusal(guest.uuid, volume, who, f"fence {volume} {_describe(obs)}")
        steps.append(made)
    return AcquirePlan(guest.uuid, holder, tuple(steps))


def _unidentified(guest: GuestRef) -> str:
    """Why a guest with an unidentified shared disk gets no fence (fail closed)."""
    return (f"{guest.name} has a disk on shared storage whose LUN cannot be identified, "
            f"so no fence can cover it: {'; '.join(guest.unidentified)}")


def _intruder_refusal(host: str, guest: GuestRef) -> Refusal:
    """No fence for a copy once judged an intruder (see :class:`GuestRef`)."""
    return Refusal(guest.uuid, guest.volumes[0] if guest.volumes else "", None,
                   f"{guest.name} on {host} {_STALE}")


#: What a copy marked an intruder is, and why it gets no fence (ends of sentences).
_MARKED = "was judged an intruder and has not been shut off since"
_STALE = (f"{_MARKED}: its memory may be stale, so it takes no fence; destroy it "
          "(virsh destroy), then start the guest through gridtool")


@dataclass(frozen=True)
class ReleaseStep:
    """Delete ``volume``'s fence key if its mod_revision still equals ``mod_revision``."""

    volume: str
    mod_revision: int


@dataclass(frozen=True)
class ReleasePlan:
    """Release the fences ``holder`` holds for ``guest``; others are left alone."""

    guest: str
    holder: str
    steps: tuple[ReleaseStep, ...]
    skipped: tuple[str, ...]  # volumes not held by holder for this guest: untouched

    @property
    def empty(self) -> bool:
        """Nothing to release: no transaction needed."""
        return not self.steps


def plan_release(host: str, guest: GuestRef, observed: Mapping[str, Observation]) -> ReleasePlan:
    """Plan deleting only the fences ``host`` holds for ``guest`` (compare mod_revision)."""
    steps, skipped = [], []
    for volume in guest.volumes:
        obs = _lookup(observed, volume)
        held = _held(host, guest, obs)
        if held is not None:
            steps.append(ReleaseStep(volume, held.mod_revision))
        else:
            skipped.append(volume)
    return ReleasePlan(guest.uuid, host, tuple(steps), tuple(skipped))


# --------------------------------------------------------------------------- judgements


class Verdict(StrEnum):
    """What an agent concludes about one fenced guest on its host."""

    OK = "ok"  # running, holds every fence
    TAKE = "take"  # running, some fence absent and none foreign: violation, take them
    INTRUDER = "intruder"  # running, another host (or an unreadable record) holds a fence
    RELEASE = "release"  # not running, holds fences it no longer needs
    KEEP = "keep"  # not running, pinned and stopped uncleanly: keep the fences
    NOTHING = "nothing"  # not running, holds no fence


class Act(StrEnum):
    """What the agent does about it."""

    NONE = "none"
    ACQUIRE = "acquire"  # plan_acquire + one transaction; on Refusal judge again
    PAUSE = "pause"  # virDomainSuspend: stops its I/O, keeps its memory for an operator
    DESTROY = "destroy"  # virDomainDestroy
    RELEASE = "release"  # plan_release + one transaction


class IntruderPolicy(StrEnum):
    """What to do with a guest running here while another host holds its fence."""

    PAUSE = "pause"
    DESTROY = "destroy"


@dataclass(frozen=True)
class Judgement:
    """A verdict, the act it calls for, whether it is a violation, and one report line.

    ``mark``: the shell marks this run of the guest an intruder before it pauses it (the
    mark outlives the agent; a marked guest is judged by :func:`judge_running` with
    ``GuestRef.intruder`` set). ``resumed``: a marked guest found running again (someone
    resumed it), to be reported as such."""

    verdict: Verdict
    act: Act
    violation: bool
    report: str
    mark: bool = False
    resumed: bool = False


def judge_running(
    host: str,
    guest: GuestRef,
    observed: Mapping[str, Observation],
    policy: IntruderPolicy = IntruderPolicy.PAUSE,
    paused: bool = False,
) -> Judgement:
    """Judge a fenced guest found running (or ``paused``) on ``host``.

    Another host (or an unreadable record) holds a fence: an intruder, paused (and
    marked) or destroyed per ``policy``. A guest marked an intruder stays one until it
    is shut off, whoever holds its fences now: a fence freed meanwhile is not taken, and
    a marked guest found running (not ``paused``) was resumed behind our back.
    """
    obs = {v: _lookup(observed, v) for v in guest.volumes}
    policy = IntruderPolicy(policy)
    act = Act(policy.value)
    mark = act is Act.PAUSE and not guest.intruder
    resumed = guest.intruder and not paused
    foreign = [v for v, o in obs.items() if o is not None and _held(host, guest, o) is None]
    if foreign:
        v = foreign[0]
        return Judgement(
            Verdict.INTRUDER, act, True,
            f"fence violation: {guest.name} runs on {host} but fence {v} {_describe(obs[v])};"
            f"{' it was resumed;' if resumed else ''} {policy.value} it", mark, resumed,
        )
    if guest.intruder:
        return Judgement(
            Verdict.INTRUDER, act, True,
            f"fence violation: {guest.name} {'was resumed ' if resumed else ''}on {host} but "
            f"{_MARKED}: it never takes a fence; {policy.value} it",
            False, resumed,
        )
    absent = [v for v, o in obs.items() if o is None]
    if absent:
        return Judgement(
            Verdict.TAKE, Act.ACQUIRE, True,
            f"fence violation: {guest.name} runs on {host} without fence "
            f"{', '.join(absent)}; taking it",
        )
    return Judgement(Verdict.OK, Act.NONE, False, f"{guest.name} holds all its fences")


def judge_stopped(
    host: str, guest: GuestRef, observed: Mapping[str, Observation], clean_stop: bool,
    saved: bool = False,
) -> Judgement:
    """Judge a fenced guest NOT running on ``host`` (neither running nor paused).

    HA fences are released at once. A pinned guest's fences are released only after a
    clean stop (shutdown or operator stop); after a crash they stay so that only this
    host (or an operator's ``host confirm-dead``) can bring the guest back. A guest with
    a saved memory image (``saved``: hibernated, judged restorable by
    :mod:`gridtool.fencing.saved`) keeps its fences: they vouch for the image.
    """
    held = [v for v in guest.volumes if _held(host, guest, _lookup(observed, v))]
    if not held:
        return Judgement(Verdict.NOTHING, Act.NONE, False, f"{guest.name} holds no fence here")
    vols = ", ".join(held)
    if saved:
        return Judgement(Verdict.KEEP, Act.NONE, False,
                         f"hibernated {guest.name}: its saved image keeps fence {vols}")
    if guest.kind is FenceKind.HA or clean_stop:
        return Judgement(Verdict.RELEASE, Act.RELEASE, False,
                         f"{guest.name} is not running: release fence {vols}")
    return Judgement(Verdict.KEEP, Act.NONE, False,
                     f"pinned {guest.name} stopped uncleanly: keep fence {vols}")


# --------------------------------------------------------------------------- the hook's rule


class StartOp(StrEnum):
    """What libvirt asks the fence hook about (``hooks/qemu NAME OP begin``)."""

    PREPARE = "prepare"  # any start, and the start of an incoming migration
    RESTORE = "restore"  # a start from a saved image
    MIGRATE = "migrate"  # an incoming live migration begins


#: A ``receive`` intent's acceptance lasts at least this long (an older CLI's, with no
#: ``expect_s``, this long)...
EXPECT_S = 60.0
#: ... and at most this long, whatever the intent asks.
EXPECT_MAX_S = 3600.0


def expect_window(params: Mapping[str, object]) -> float:
    """How long a ``receive`` intent's destination accepts the incoming migration: the
    intent's ``expect_s`` (the migrating CLI sends how long it waits for the source's
    ``migrate`` intent, which may wait behind other intents in the source agent's one
    queue, e.g. a failing guest's HA restarts), within [EXPECT_S, EXPECT_MAX_S]."""
    asked = params.get("expect_s")
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or asked != asked:
        return EXPECT_S
    return min(max(float(asked), EXPECT_S), EXPECT_MAX_S)


@dataclass(frozen=True)
class Expected:
    """A ``receive`` intent told this host to accept ONE incoming live migration of the
    guest from ``source`` until ``until`` (the shell's clock). ``guest``: the guest as
    the source's record has it (name, shared volumes; None when the source had no
    record), which identifies it when libvirt passes no domain XML (:func:`incoming_named`)."""

    source: str
    until: float
    guest: GuestRef | None = None


def incoming_named(name: str, op: StartOp | str, expected: Mapping[str, Expected],
                   now: float) -> GuestRef | str:
    """The guest libvirt asks about by ``name`` alone, with no domain XML (libvirt 9.0's
    libxl driver runs ``migrate begin`` with an empty stdin): the one guest of that name
    whose incoming migration is expected here now, as its source's record has it; else
    why it is refused (one line). Only ``migrate`` is identified this way: any other
    start without XML is refused."""
    what = f"libvirt passed no domain XML for {name or '?'} ({op} begin)"
    if op != StartOp.MIGRATE:
        return f"{what}: its disks cannot be told (fail closed)"
    found = [e for e in expected.values()
             if e.guest is not None and e.guest.name == name and now <= e.until]
    if not found:
        return (f"{what} and no live migration of it is expected here (migrate it "
                f"through gridtool: 'gridtool guest migrate {name or 'NAME'} --live')")
    if len(found) > 1:
        return f"{what} and {len(found)} expected migrations have that name"
    assert found[0].guest is not None
    return found[0].guest


@dataclass(frozen=True)
class StartAnswer:
    """The hook's answer: allowed or not, one line why, and for an incoming migration the
    host it comes from (``op`` MIGRATE: the shell consumes the expectation and treats the
    guest as arriving until its fences are here or it is gone)."""

    allow: bool
    reason: str
    incoming_from: str | None = None


def may_start(
    host: str,
    guest: GuestRef,
    observed: Mapping[str, Observation],
    op: StartOp | str = StartOp.PREPARE,
    expected: Expected | None = None,
    arriving_from: str | None = None,
    now: float = 0.0,
    lease: LeaseClock | None = None,
    budget: float = 0.0,
) -> StartAnswer:
    """The libvirt hook's rule: may ``host`` start (``op``) fenced ``guest`` now?

    Yes when ``host`` holds every fence of ``guest`` (no shared volume: nothing to hold).
    An incoming live migration is allowed while every fence is still with the source:
    its ``migrate`` only when a ``receive`` intent ``expected`` it from that source and
    ``now`` is within its time; the ``prepare``/``restore`` of an accepted migration still
    ``arriving_from`` that source. Everything else is refused, naming the holder, and so
    is any start of a copy marked an intruder (its XML carries the mark only when it is
    a saved image of that copy: a fresh boot starts from the inactive definition), and of
    a guest with a shared disk whose LUN cannot be identified.
    An HA guest (some fence of it is HA: it dies with the holder's lease) is refused too
    while ``host``'s ``lease`` clock (on ``now``'s clock) says a start needing ``budget``
    seconds no longer fits before its self-fence deadline (:meth:`LeaseClock.may_start`).
    """
    if guest.intruder:  # a saved image of a copy once judged an intruder
        return StartAnswer(False, f"this copy of {guest.name} {_STALE}")
    if guest.unidentified:
        return StartAnswer(False, _unidentified(guest))
    if _all_held(host, guest, observed):
        answer = StartAnswer(True, f"{host} holds its fences")
    elif (arriving_from is not None and op in (StartOp.PREPARE, StartOp.RESTORE)
            and _all_held(arriving_from, guest, observed)):
        answer = StartAnswer(True, f"incoming live migration from {arriving_from}",
                             arriving_from)
    elif (expected is not None and op == StartOp.MIGRATE and now <= expected.until
            and _all_held(expected.source, guest, observed)):
        answer = StartAnswer(True, f"incoming live migration from {expected.source}",
                             expected.source)
    else:
        return StartAnswer(False, _start_refusal(host, guest, observed))
    if lease is not None and _ha(guest, observed):
        why = lease.why_not_start(host, now, budget)
        if why:
            return StartAnswer(False, why)
    return answer


def _ha(guest: GuestRef, observed: Mapping[str, Observation]) -> bool:
    """Some fence of ``guest`` is an HA fence (it dies with its holder's lease)."""
    return any(isinstance(o, Observed) and o.fence.guest == guest.uuid
               and o.fence.kind is FenceKind.HA for o in observed.values())


def _all_held(host: str, guest: GuestRef, observed: Mapping[str, Observation]) -> bool:
    return all(_held(host, guest, _lookup(observed, v)) for v in guest.volumes)


def _start_refusal(host: str, guest: GuestRef, observed: Mapping[str, Observation]) -> str:
    """Why ``host`` may not start ``guest``, naming whoever holds its fences."""
    holders: dict[str, str | None] = {}
    for volume in guest.volumes:
        obs = _lookup(observed, volume)
        holders[volume] = (obs.fence.holder if isinstance(obs, Observed)
                           and obs.fence.guest == guest.uuid else None)
    others = sorted({h for h in holders.values() if h and h != host})
    if others:
        return (f"its fence is held by {', '.join(others)} (not by {host}); start it "
                f"through gridtool ('gridtool guest start {guest.name}') or migrate it")
    free = sorted(v for v, h in holders.items() if h is None)
    return (f"{host} does not hold the fence of {', '.join(free)}; start it through "
            f"gridtool ('gridtool guest start {guest.name}')")


# --------------------------------------------------------------------------- lease clock


class LeaseState(StrEnum):
    """The agent's view of its own lease."""

    HEALTHY = "healthy"
    AT_RISK = "at_risk"  # keepalive overdue: retry fast, take no new HA fence
    MUST_SELF_FENCE = "must_self_fence"  # destroy HA fenced guests now; pinned stay


def default_margin(ttl: float) -> float:
    """Self-fence safety margin: ``max(1 s, TTL/5)``.

    The margin must cover the time to act plus clock disagreement (see
    :class:`LeaseClock`): one loop tick (<= 0.5 s) plus a forced destroy (SIGKILL of the
    QEMU process, well under 0.5 s) fits in 1 s, and clock-rate drift (~1e-4 * TTL) is
    negligible. TTL/5 scales the margin for long TTLs, and keeps ``TTL - margin = 0.8 TTL
    = 2.4 keepalive intervals``, so one lost keepalive never triggers a self-fence.
    """
    return max(1.0, ttl / 5)


@dataclass(frozen=True)
class LeaseClock:
    """The agent's lease, tracked on its own monotonic clock (all times are numbers).

    Safety inequality. Let ``s`` be the send time of the newest keepalive (or grant)
    the server acknowledged, on the agent's clock. The server received it after ``s`` and
    renews to at least ``receipt + TTL``; it never expires a lease earlier than TTL after
    the last renewal it applied, and may only expire it later (a leader change extends
    every lease). So the fences cannot vanish before ``E = s + TTL`` (the ``expiry_floor``),
    and nobody can take them before then. The agent self-fences at
    ``deadline = s + TTL - margin`` and needs at most ``J + K`` (loop tick + destroy), with
    clock drift ``rho * TTL`` between agent and etcd leader, so it is done before ``E`` if::

        margin >= J + K + rho * TTL

    An ack moves the floor only to its own ``send + TTL``, so a late ack for an old send
    cannot stretch it. Recovery elsewhere adds more slack (the manager must notice, order
    a restart, and the new host must take the fences) but the proof does not count on it.
    The watchdog backstop (:meth:`watchdog_may_pet`) keeps a hung agent inside the same
    bound.
    """

    ttl: float
    margin: float
    interval: float  # keepalive period, TTL/3 by default
    retry: float  # keepalive period once at risk
    last_sent: float  # send time of the newest keepalive (acked or not)
    acked_sent: float  # send time of the newest acknowledged keepalive
    lost: bool = False  # the server said the lease is gone

    @classmethod
    def start(
        cls,
        ttl: float,
        granted_sent_at: float,
        *,
        granted_ttl: float | None = None,
        margin: float | None = None,
        interval: float | None = None,
    ) -> LeaseClock:
        """The clock after a lease grant sent at ``granted_sent_at`` was answered."""
        margin = default_margin(ttl) if margin is None else margin
        interval = ttl / 3 if interval is None else interval
        if not (ttl > 0 and margin > 0 and interval > 0):
            raise ValueError("lease clock: ttl, margin and interval must be positive")
        if interval >= ttl - margin:
            raise ValueError(
                f"lease clock: keepalive interval {interval} must be shorter than "
                f"ttl - margin = {ttl - margin}, or healthy keepalives trip the self-fence"
            )
        base = cls(ttl, margin, interval, interval / 5, granted_sent_at, granted_sent_at)
        return base.acked(granted_sent_at, granted_ttl)

    @property
    def expiry_floor(self) -> float:
        """Earliest moment the server may expire the lease: ``acked_sent + ttl``."""
        return self.acked_sent + self.ttl

    @property
    def deadline(self) -> float:
        """When the agent must self-fence: ``expiry_floor - margin``."""
        return -math.inf if self.lost else self.expiry_floor - self.margin

    @property
    def max_watchdog_timeout(self) -> float:
        """Longest watchdog timeout that healthy keepalives can keep petting."""
        return self.ttl - self.interval - self.margin / 2

    def sent(self, now: float) -> LeaseClock:
        """Record a keepalive sent at ``now``; the caller keeps ``now`` to ack it."""
        return replace(self, last_sent=max(self.last_sent, now))

    def acked(self, sent_at: float, granted_ttl: float | None = None) -> LeaseClock:
        """Record the reply to the keepalive sent at ``sent_at``.

        ``granted_ttl`` is the TTL in the reply; <= 0 means the lease is gone. A smaller
        TTL than configured shrinks the clock's TTL for good (a renewal replaces the
        server's expiry, so a shorter TTL may pull it in); a larger one is not trusted.
        """
        if sent_at > self.last_sent:
            raise ValueError(f"lease clock: ack for a keepalive never sent (at {sent_at})")
        if granted_ttl is not None and granted_ttl <= 0:
            return self.revoked()
        ttl = self.ttl if granted_ttl is None else min(self.ttl, granted_ttl)
        return replace(self, ttl=ttl, acked_sent=max(self.acked_sent, sent_at))

    def revoked(self) -> LeaseClock:
        """The server reported the lease gone (expired, revoked): self-fence at once."""
        return replace(self, lost=True)

    def state(self, now: float) -> LeaseState:
        """Healthy, at risk (keepalive overdue) or must self-fence (deadline reached)."""
        if now >= self.deadline:
            return LeaseState.MUST_SELF_FENCE
        if now >= self.acked_sent + 1.5 * self.interval:
            return LeaseState.AT_RISK
        return LeaseState.HEALTHY

    def keepalive_due(self, now: float) -> bool:
        """Send a keepalive now? Every ``interval``, every ``retry`` once at risk."""
        healthy = self.state(now) is LeaseState.HEALTHY
        return now - self.last_sent >= (self.interval if healthy else self.retry)

    def may_start(self, now: float, budget: float) -> bool:
        """May an HA guest start now, when its start (and the next keepalive's round
        trip) needs ``budget`` seconds?

        No once the lease is lost or the deadline is nearer than ``budget``: a guest still
        coming up at the deadline would miss the self-fence's first pass and run into the
        margin the kill needs (the guard catches it on a later tick, but only a guest up
        before the deadline is killed with the whole margin to spare), and a guest that no
        keepalive can renew in time is started only to be killed.
        """
        return not self.lost and now + budget < self.deadline

    def why_not_start(self, host: str, now: float, budget: float) -> str:
        """One line why ``host`` may start no HA guest now ('' when
        :meth:`may_start`)."""
        if self.may_start(now, budget):
            return ""
        if self.lost:
            return (f"{host}'s lease is gone (etcd said so): it is self-fencing its HA guests "
                    "and starts none until it has registered again")
        left = self.deadline - now
        when = (f"passed {-left:.1f} s ago" if left <= 0 else
                f"is {left:.1f} s away and a start needs {budget:.1f} s")
        return (f"{host}'s lease is in doubt: its self-fence deadline {when}; it starts no "
                "HA guest until a keepalive reaches the registry (etcd unreachable or slow?)")

    def watchdog_may_pet(self, now: float, timeout: float, ha_running: bool) -> bool:
        """May the host watchdog (timeout ``timeout``) be petted now?

        With no HA fenced guest running there is nothing to fence: always. Otherwise only
        if a reset ``timeout`` from now still lands by ``expiry_floor - margin/2``: a hung
        agent is then reset before the fences can vanish, while a live agent self-fences
        first (at ``expiry_floor - margin``) and goes on petting.
        """
        if not ha_running:
            return True
        return not self.lost and now + timeout <= self.expiry_floor - self.margin / 2


# --------------------------------------------------------------------------- the self-fence


class Fate(StrEnum):
    """What libvirt last said about one guest the self-fence must see dead."""

    UNKNOWN = "unknown"  # not asked yet, or libvirt could not tell (an error)
    ALIVE = "alive"  # active (or its QEMU process alive): kill it
    GONE = "gone"  # libvirt says inactive, or knows no such domain


@dataclass(frozen=True)
class SelfFenceRound:
    """One guard tick of a self-fence: whom it must see dead, whom to kill or check now.

    ``targets``: uuid -> name of every HA guest of this self-fence (it only grows while
    the lease is in doubt); ``act``: the targets to kill if alive and check again now;
    ``all_gone``: libvirt confirmed every target gone (then the HA fences may be
    forgotten: the watchdog need no longer reset the host); ``over``: all gone and the
    lease no longer in doubt, the self-fence ends."""

    targets: Mapping[str, str]
    act: tuple[str, ...]
    all_gone: bool
    over: bool


def self_fence_round(
    targets: Mapping[str, str],
    fates: Mapping[str, Fate],
    held_ha: Mapping[str, str],
    in_doubt: bool,
) -> SelfFenceRound:
    """Decide one tick of the self-fence.

    ``targets`` (uuid -> name) are the HA guests this self-fence already covers, ``fates``
    what libvirt last said of each (missing: not asked yet), ``held_ha`` the HA fences the
    host holds now (uuid -> name), ``in_doubt``: the lease clock is past its deadline (no
    new lease since). While in doubt every HA guest whose fence is held joins the targets
    (one whose start raced the deadline: its fence was taken before, its QEMU came up
    after the first pass) and every target is checked again on every tick, gone or not (a
    start in flight at the deadline may bring one back). Once a new lease is healthy only
    the targets not yet confirmed gone are pursued, until libvirt confirms them gone.
    """
    merged = {**targets, **held_ha} if in_doubt else dict(targets)
    pending = sorted(u for u in merged if fates.get(u) is not Fate.GONE)
    act = tuple(sorted(merged)) if in_doubt else tuple(pending)
    return SelfFenceRound(merged, act, not pending, not pending and not in_doubt)
