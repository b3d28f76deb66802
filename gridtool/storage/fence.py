"""Storage fencing over the :class:`gridtool.storage.pr.Reservations` port, the fence_scsi
model: a host *registers* its key on every LUN its guests use, on the session its guests
write through, and the LUN carries a type-5 reservation (Write Exclusive, registrants
only); fencing a lost host is *preempting* its key from a registered session of the
fencer's own, after which the target refuses the lost host's writes.

The decisions (which volumes are LUNs, which to leave after a migration, where the
fencer reaches a LUN) are pure; :func:`register` and :func:`preempt` run the commands on
a port they are given, so a test can give them a fake one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gridtool.domains.storage import iscsi_lun
from gridtool.storage import pr

#: The name the fencer's key is made from (``host_key``): no host name has a ':', so no
#: host shares the fencer's key.
FENCER_KEY_NAME = ":fencer"
#: Reservation types under which every registrant may write: a host that registered
#: writes, a preempted one does not (types 5-8).
REGISTRANTS_TYPES = frozenset({pr.ResType.WE_REGISTRANTS_ONLY, pr.ResType.EA_REGISTRANTS_ONLY,
                               pr.ResType.WE_ALL_REGISTRANTS, pr.ResType.EA_ALL_REGISTRANTS})


@dataclass(frozen=True)
class Lun:
    """An iSCSI LUN a volume id names (``iscsi-<target>-lun<number>``)."""

    volume: str
    target: str
    number: int


def luns(volumes: Iterable[str]) -> tuple[Lun, ...]:
    """The iSCSI LUNs among ``volumes`` (others, AoE or files, have no PR: not
    storage-fenced), in order, each once."""
    found = {}
    for volume in volumes:
        parsed = iscsi_lun(volume)
        if parsed is not None and volume not in found:
            found[volume] = Lun(volume, *parsed)
    return tuple(found.values())


def to_leave(volumes: Iterable[str], still_held: Collection[str]) -> tuple[Lun, ...]:
    """The LUNs of ``volumes`` (a guest that left this host) whose registration the host
    removes: those whose fence it no longer holds (one fenced guest per LUN: a fence it
    still holds means a guest of its own still uses the LUN)."""
    return tuple(lun for lun in luns(volumes) if lun.volume not in still_held)


def parse_portals(entries: Iterable[str]) -> dict[str, str]:
    """``TARGET-IQN=HOST:PORT`` entries (setting ``pr_portals``) -> {target: portal};
    ValueError naming the first bad one."""
    portals = {}
    for entry in entries:
        target, eq, portal = entry.partition("=")
        host, colon, port = portal.rpartition(":")
        if not eq or not target or not host or not colon or not port.isdecimal():
            raise ValueError(f"{entry!r} is not TARGET-IQN=HOST:PORT")
        portals[target.lower()] = portal
    return portals


def lun_url(lun: Lun, portals: Mapping[str, str]) -> str | None:
    """Where the fencer logs in to reach ``lun`` (None: no portal known for its target)."""
    portal = portals.get(lun.target)
    return f"iscsi://{portal}/{lun.target}/{lun.number}" if portal else None


def register(port: pr.Reservations, key: int) -> bool:
    """Register ``key`` on the port's session (REGISTER AND IGNORE EXISTING KEY: the same
    whatever it had) and make sure the LUN carries a reservation under which registrants
    write (RESERVE type 5 if there is none; one held by another registrant is fine).
    False when the LUN does not support PR (it is then not storage-fenced); PrError when
    it refused."""
    try:
        port.register(key)
        reservation = port.read_reservation()
        if reservation.key is None:
            with contextlib.suppress(pr.ReservationConflict):  # another reserved meanwhile
                port.reserve(key)
            reservation = port.read_reservation()
    except pr.Unsupported:
        return False
    _check_type(reservation)
    return True


def unregister(port: pr.Reservations, key: int) -> bool:
    """Remove ``key``'s registration from the port's session, unless that session holds
    the reservation (False): under a registrants-only type, the holder unregistering
    releases the reservation and leaves the LUN open to every session, the fenced ones
    too, until someone reserves it again."""
    if port.read_reservation().key == key:
        return False
    port.unregister(key)
    return True


def preempt(port: pr.Reservations, own: int, victim: int) -> None:
    """Fence ``victim`` on the port's LUN from a session registered with ``own``: PREEMPT
    its registrations (taking its reservation if it held it), reserve type 5 if no
    reservation is left, and check READ KEYS no longer lists it. A victim not registered
    is already fenced as long as a reservation keeps the unregistered out. pr.Unsupported
    when the LUN has no PR; PrError when anything is refused."""
    port.register(own)
    if victim in port.read_keys().keys:
        port.preempt(own, victim)
    reservation = port.read_reservation()
    if reservation.key is None:
        port.reserve(own)
        reservation = port.read_reservation()
    _check_type(reservation)
    if victim in port.read_keys().keys:
        raise pr.PrError(f"key {pr.format_key(victim)} is still registered after PREEMPT")


def _check_type(reservation: pr.Reservation) -> None:
    if reservation.key is None:
        raise pr.PrError("the LUN carries no reservation after RESERVE")
    if reservation.type not in REGISTRANTS_TYPES:
        raise pr.PrError(f"the LUN is reserved {reservation.type_name} by key "
                         f"{pr.format_key(reservation.key)}: registrants may not write")
