"""Live migration's fencing decisions, pure: after a failed migration, and for a guest
arriving by one.

libvirt's peer-to-peer migration hands the guest over without asking anyone: the
destination resumes its copy in the Finish phase, and if anything fails after that (the
Finish reply is lost, the Confirm fails) the source resumes its own copy too — libvirt
itself warns that the domain "could in fact be running on the dest". gridtool is the
lock manager libvirt relies on there. Its rule: **a copy runs only on the host that holds
every fence of the guest; any other copy is stopped.** The shell (``agents.livemigrate``
on the source, ``agents.hooksock`` on the destination) observes and acts; the decisions
are here, on plain data:

* :func:`fences_at` — where the guest's fences are, seen from one migration.
* :func:`after_error` — the source's decision once ``migrateToURI3`` raised, taken after
  it paused its own copy (:func:`pause_source_first`) and looked at the destination's.
* :func:`judge_arrival` — the destination's decision about an incoming copy, on every
  lifecycle event of it and every poll while it arrives.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gridtool.fencing.rules import GuestRef, IntruderPolicy, Observation, Observed


class Handover(StrEnum):
    """What became of the source's handover of the fences at switchover."""

    NOT_TRIED = "not-tried"  # the switchover was never reached: the fences never left
    REFUSED = "refused"  # a compare failed (holder or target record changed): nothing written
    DONE = "done"  # committed: the destination holds them
    UNKNOWN = "unknown"  # an etcd or auth error: the transaction may have committed or not


class Copy(StrEnum):
    """One host's copy of the guest, as its libvirt shows it."""

    ABSENT = "absent"  # no such domain, or shut off
    INCOMING = "incoming"  # paused for the incoming migration: it never ran there
    PAUSED = "paused"  # paused after it ran (suspended by an agent or anyone)
    RUNNING = "running"  # running (or any other active state: it may touch the disk)
    UNREACHABLE = "unreachable"  # that host's libvirt could not be asked


class Fences(StrEnum):
    """Where the guest's fences are, from the point of view of one migration."""

    SOURCE = "source"  # the source holds every one
    DEST = "destination"  # the destination holds every one
    NOBODY = "nobody"  # every key is absent
    OTHER = "other"  # a third host, a mix, or an unreadable record
    UNKNOWN = "unknown"  # they could not be read (etcd unreachable)


def fences_at(source: str, target: str, guest: GuestRef,
              observed: Mapping[str, Observation] | None) -> Fences:
    """Where ``guest``'s fences are (``observed`` None: they could not be read)."""
    if observed is None:
        return Fences.UNKNOWN
    if all(observed.get(v) is None for v in guest.volumes):
        return Fences.NOBODY
    holders = _holders(guest, observed)
    if holders == {source}:
        return Fences.SOURCE
    if holders == {target}:
        return Fences.DEST
    return Fences.OTHER


# --------------------------------------------------------------------------- the source


class SourceAct(StrEnum):
    """What the source does with its own copy."""

    RUN = "run"  # it may run: resume it if it was paused for this decision
    PAUSE = "pause"  # it must not run: keep it paused (pause it if it runs)
    DESTROY = "destroy"  # the destination's copy is the live one: this one goes
    NONE = "none"  # there is no copy here


class DestAct(StrEnum):
    """What the source does with the destination's copy (through the destination's
    libvirt), BEFORE anything on the source runs."""

    NONE = "none"
    PAUSE = "pause"  # it must not run, but it may be the live one: keep its memory
    DESTROY = "destroy"  # a failed migration's leftover: it must never run again


class FenceAct(StrEnum):
    """What the source does with the fences, after the destination's copy is dealt with."""

    KEEP = "keep"
    TAKE_BACK = "take-back"  # from the destination, comparing the revision it was seen at
    ACQUIRE = "acquire"  # absent: take them afresh (one transaction, create-revision 0)


class Where(StrEnum):
    """Where the guest is once the decision is carried out."""

    SOURCE = "source"  # running on the source with its fences
    DEST = "destination"  # on the destination with its fences (the migration happened)
    NOWHERE = "nowhere"  # running nowhere: paused (the reason says where), or lost
    UNKNOWN = "unknown"  # a copy could not be checked: paused here, the reason says why


@dataclass(frozen=True)
class Resolution:
    """The source's decision after a failed migration, in the order the shell carries it
    out: ``dest`` first (and checked), then ``fences``, then ``source``. If a step fails,
    the shell stops there with the source's copy paused."""

    source: SourceAct
    dest: DestAct
    fences: FenceAct
    where: Where
    reason: str


def pause_source_first(handover: Handover) -> bool:
    """Must the source pause its own copy (which libvirt resumed when the migration
    failed) before it looks at the destination? Yes once the switchover was reached: the
    destination may have resumed its copy, and the fences may have moved."""
    return handover is not Handover.NOT_TRIED


def after_error(handover: Handover, source: Copy, dest: Copy, fences: Fences,
                names: tuple[str, str] = ("the source", "the destination")) -> Resolution:
    """Decide where the guest runs after ``migrateToURI3`` raised.

    ``source`` is the source's copy after :func:`pause_source_first` was applied (RUNNING
    only when it was not needed, or pausing failed), ``dest`` the destination's copy
    (``Copy.UNREACHABLE`` when its libvirt could not be asked), ``fences`` where the
    fences are (:func:`fences_at`). ``names`` are the two hosts, for the reason.

    The fences decide: the copy of the holder runs; the other copy is destroyed when it is
    a failed migration's leftover, paused when it might be the live one. A destination
    copy that ran with the fences wins over the source's (libvirt resumed that only when
    the migration failed: a few milliseconds before the source paused it again); a
    destination copy that never ran (paused for the incoming migration) loses, and the
    source takes its fences back. When the destination cannot be checked after the
    switchover, or the fences cannot be read, nothing is resumed: paused rather than
    possibly twice.
    """
    src, dst = names
    switched = handover is not Handover.NOT_TRIED
    here = source is not Copy.ABSENT
    if fences is Fences.UNKNOWN and not switched:
        fences = Fences.SOURCE  # never handed over: still the source's (it confirmed them)
    if fences is Fences.DEST:
        return _fences_with_destination(here, dest, src, dst)
    if fences in (Fences.SOURCE, Fences.NOBODY):
        return _fences_with_source(fences, here, dest, switched, src, dst)
    # held by a third host (or a mix), or unreadable after the switchover: neither may run
    dest_act = (DestAct.PAUSE if dest is Copy.RUNNING
                else DestAct.DESTROY if dest is Copy.INCOMING and here else DestAct.NONE)
    why = ("its fences could not be read" if fences is Fences.UNKNOWN
           else f"its fences are held by neither {src} nor {dst} alone")
    return Resolution(SourceAct.PAUSE if here else SourceAct.NONE, dest_act, FenceAct.KEEP,
                      Where.UNKNOWN if fences is Fences.UNKNOWN else Where.NOWHERE,
                      f"{why}: no copy may run" + (f" (paused on {src})" if here else ""))


def _fences_with_destination(here: bool, dest: Copy, src: str, dst: str) -> Resolution:
    if dest in (Copy.RUNNING, Copy.PAUSED):  # the destination's copy ran with them
        return Resolution(SourceAct.DESTROY if here else SourceAct.NONE, DestAct.NONE,
                          FenceAct.KEEP, Where.DEST,
                          f"{dst} holds its fences and its copy ran there: it lives on "
                          f"{dst}" + (f"; the copy on {src} goes" if here else ""))
    if dest is Copy.UNREACHABLE:
        return Resolution(SourceAct.PAUSE if here else SourceAct.NONE, DestAct.NONE,
                          FenceAct.KEEP, Where.UNKNOWN,
                          f"{dst} holds its fences and could not be checked: "
                          + (f"paused on {src}" if here else f"not running on {src}"))
    if not here:  # the destination's copy (never resumed) is the only one left: keep it
        return Resolution(SourceAct.NONE, DestAct.NONE, FenceAct.KEEP,
                          Where.DEST if dest is Copy.INCOMING else Where.NOWHERE,
                          f"gone from {src}; {dst} holds its fences"
                          + (" and a paused copy that never ran" if dest is Copy.INCOMING
                             else " but has no copy"))
    # the destination's copy never ran: the source's (which ran since) is the live one
    return Resolution(SourceAct.RUN,
                      DestAct.DESTROY if dest is Copy.INCOMING else DestAct.NONE,
                      FenceAct.TAKE_BACK, Where.SOURCE,
                      f"{dst}'s copy never ran: the fences come back to {src}")


def _fences_with_source(fences: Fences, here: bool, dest: Copy, switched: bool,
                        src: str, dst: str) -> Resolution:
    take = FenceAct.ACQUIRE if fences is Fences.NOBODY else FenceAct.KEEP
    if not here:  # only the destination's copy is left, and it holds no fence
        return Resolution(SourceAct.NONE,
                          DestAct.PAUSE if dest is Copy.RUNNING else DestAct.NONE,
                          FenceAct.KEEP, Where.NOWHERE,
                          f"gone from {src}; {dst}'s copy holds no fence: it must not run")
    if dest is Copy.UNREACHABLE and switched:
        return Resolution(SourceAct.PAUSE, DestAct.NONE, take, Where.UNKNOWN,
                          f"{dst} could not be checked after the switchover (it may have "
                          f"resumed its copy): paused on {src}")
    if dest in (Copy.RUNNING, Copy.PAUSED, Copy.INCOMING):
        return Resolution(SourceAct.RUN, DestAct.DESTROY, take, Where.SOURCE,
                          f"{dst}'s copy holds no fence: it goes")
    return Resolution(SourceAct.RUN, DestAct.NONE, take, Where.SOURCE,
                      f"{dst} has no copy of it" if dest is Copy.ABSENT
                      else f"{dst} could not be checked, but the switchover was never "
                      "reached")


# --------------------------------------------------------------------------- the destination


class ArrivalAct(StrEnum):
    """What the destination does about an incoming copy."""

    WAIT = "wait"  # still arriving: busy, not judged
    PAUSE = "pause"  # running without its fences: pause it (keep waiting)
    DESTROY = "destroy"  # running without its fences, intruder policy destroy
    RESUME = "resume"  # the fences arrived for a copy paused for lack of them: resume it
    DONE = "done"  # the fences are here, or the copy is gone: the arrival is over


@dataclass(frozen=True)
class ArrivalStep:
    """The act, whether it is a fence violation (to report), and one line why."""

    act: ArrivalAct
    violation: bool
    reason: str


def judge_arrival(host: str, source: str, guest: GuestRef,
                  observed: Mapping[str, Observation], copy: Copy, *,
                  paused_by_us: bool, may_be_gone: bool,
                  policy: IntruderPolicy = IntruderPolicy.PAUSE) -> ArrivalStep:
    """Judge ``guest`` arriving on ``host`` from ``source`` by a live migration.

    ``copy`` is its state here (never ``UNREACHABLE``: the shell skips a poll it cannot
    make), ``paused_by_us`` whether this arrival paused it for lack of fences,
    ``may_be_gone`` whether a missing copy means the migration is over (it was seen, or
    the expectation expired: libvirt adds the domain only after ``migrate begin``).

    Paused for the incoming migration it is legitimately busy. Running (libvirt resumed
    it) without this host holding every fence, it is stopped at once: paused while the
    source still holds them all (the handover may still come: then it is resumed, as
    libvirt meant), else as an intruder under ``policy``. It is never resumed on fences
    that were released rather than handed over: the source may have run since.
    """
    holders = _holders(guest, observed)
    if holders == {host}:
        if copy is Copy.PAUSED and paused_by_us:
            return ArrivalStep(ArrivalAct.RESUME, False,
                               f"its fences arrived from {source}: resume it")
        return ArrivalStep(ArrivalAct.DONE, False, f"{host} holds its fences")
    if copy is Copy.ABSENT:
        return ArrivalStep(ArrivalAct.DONE if may_be_gone else ArrivalAct.WAIT, False,
                           "gone" if may_be_gone else "not here yet")
    if copy is not Copy.RUNNING:
        return ArrivalStep(ArrivalAct.WAIT, False, f"arriving from {source}, paused")
    where = ("held by " + ", ".join(sorted(h for h in holders if h))
             if any(holders) else "absent")
    if holders == {source}:
        return ArrivalStep(ArrivalAct.PAUSE, False,
                           f"{guest.name} was resumed on {host} before {source} handed over "
                           f"its fences: paused until they arrive")
    act = ArrivalAct.DESTROY if IntruderPolicy(policy) is IntruderPolicy.DESTROY \
        else ArrivalAct.PAUSE
    return ArrivalStep(act, True,
                       f"fence violation: {guest.name} was resumed on {host} by a migration "
                       f"from {source} but its fences are {where}; {act.value} it")


def _holders(guest: GuestRef, observed: Mapping[str, Observation]) -> set[str | None]:
    """The holder of each fence of ``guest`` (None: absent, unreadable or another
    guest's)."""
    return {o.fence.holder if isinstance(o, Observed) and o.fence.guest == guest.uuid
            else None for o in (observed.get(v) for v in guest.volumes)}
