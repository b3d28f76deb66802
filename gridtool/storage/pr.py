"""SCSI-3 persistent reservations (SPC-4), pure: CDBs, parameter lists, replies, sense.

What fence_scsi does on a shared LUN, as bytes: each host REGISTERs its own reservation
key, one holds a Write Exclusive - Registrants Only reservation (type 5), and fencing a
lost host is PREEMPTing its key, after which the target refuses that host's writes with
RESERVATION CONFLICT. The back ends (``gridtool.storage.iscsi``: libiscsi in userspace;
``gridtool.storage.sgpersist``: ``sg_persist`` on a kernel-attached device) send these
bytes and turn a bad status into the errors below; :class:`Reservations` is their port.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, TypeVar

PR_IN = 0x5E
PR_OUT = 0x5F
WRITE_10 = 0x2A
READ_10 = 0x28
READ_CAPACITY_10 = 0x25
#: Bytes of a PR OUT parameter list without transport IDs (SPEC_I_PT, which tgt refuses).
PARAM_LEN = 24
#: PR IN allocation length: room for 1,022 keys, far more than a fleet's hosts.
ALLOC_LEN = 8192


class OutAction(IntEnum):
    """PR OUT service actions (CDB byte 1)."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE = 0x06


class InAction(IntEnum):
    """PR IN service actions (CDB byte 1)."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01


class ResType(IntEnum):
    """Reservation types (CDB byte 2, low nibble)."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WE_REGISTRANTS_ONLY = 5
    EA_REGISTRANTS_ONLY = 6
    WE_ALL_REGISTRANTS = 7
    EA_ALL_REGISTRANTS = 8


#: What gridtool fences with: only registered hosts may write (fence_scsi's choice).
FENCE_TYPE = ResType.WE_REGISTRANTS_ONLY

TYPE_NAMES = {
    ResType.WRITE_EXCLUSIVE: "Write Exclusive",
    ResType.EXCLUSIVE_ACCESS: "Exclusive Access",
    ResType.WE_REGISTRANTS_ONLY: "Write Exclusive, registrants only",
    ResType.EA_REGISTRANTS_ONLY: "Exclusive Access, registrants only",
    ResType.WE_ALL_REGISTRANTS: "Write Exclusive, all registrants",
    ResType.EA_ALL_REGISTRANTS: "Exclusive Access, all registrants",
}


class Status(IntEnum):
    """SCSI status bytes that matter here."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB


# -- errors -------------------------------------------------------------------------------


class PrError(Exception):
    """A PR or I/O command did not succeed; the message says which and why, in one line."""


class ReservationConflict(PrError):
    """The target refused the command for this I_T nexus (status 0x18): it is fenced."""


class UnitAttention(PrError):
    """CHECK CONDITION with UNIT ATTENTION: something changed (e.g. registrations
    preempted); the condition is consumed, the same command may be sent again."""


class Unsupported(PrError):
    """ILLEGAL REQUEST: the LUN refuses this operation (no PR support, a service action
    or type it does not implement, a bad field)."""


class CheckCondition(PrError):
    """CHECK CONDITION whose sense data the back end cannot show (cython-iscsi 1.0 gives
    the status only): a unit attention, gone when the command is sent again, or a
    refusal, which stays."""


@dataclass(frozen=True)
class Sense:
    """The decoded part of sense data that decides what to do."""

    key: int
    asc: int
    ascq: int

    def describe(self) -> str:
        try:
            name = SenseKey(self.key).name.replace("_", " ")
        except ValueError:
            name = f"sense key 0x{self.key:x}"
        text = ASC_NAMES.get((self.asc, self.ascq), "")
        return f"{name} (asc 0x{self.asc:02x}/0x{self.ascq:02x}{': ' + text if text else ''})"


#: The additional sense codes this code can meet on a fenced LUN.
ASC_NAMES = {
    (0x20, 0x00): "invalid command operation code",
    (0x24, 0x00): "invalid field in CDB",
    (0x26, 0x00): "invalid field in parameter list",
    (0x29, 0x00): "power on, reset, or bus device reset occurred",
    (0x2A, 0x03): "reservations preempted",
    (0x2A, 0x04): "reservations released",
    (0x2A, 0x05): "registrations preempted",
}


def decode_sense(data: bytes) -> Sense | None:
    """Fixed (0x70/0x71) or descriptor (0x72/0x73) sense data; None when too short or of
    another format."""
    if len(data) < 4:
        return None
    code = data[0] & 0x7F
    if code in (0x70, 0x71) and len(data) >= 14:
        return Sense(data[2] & 0x0F, data[12], data[13])
    if code in (0x72, 0x73):
        return Sense(data[1] & 0x0F, data[2], data[3])
    return None


def check(what: str, status: int, sense: bytes | None = b"") -> None:
    """Raise the error that ``status`` (and ``sense``: None when the back end cannot read
    it) mean for command ``what``."""
    if status == Status.GOOD:
        return
    if status == Status.RESERVATION_CONFLICT:
        raise ReservationConflict(f"{what}: RESERVATION CONFLICT")
    if status == Status.CHECK_CONDITION and sense is None:
        raise CheckCondition(f"{what}: CHECK CONDITION")
    decoded = decode_sense(sense or b"") if status == Status.CHECK_CONDITION else None
    if decoded is None:
        try:
            name = Status(status).name.replace("_", " ")
        except ValueError:
            name = f"status 0x{status:02x}"
        raise PrError(f"{what}: {name}")
    errors: dict[int, type[PrError]] = {SenseKey.UNIT_ATTENTION: UnitAttention,
                                        SenseKey.ILLEGAL_REQUEST: Unsupported}
    error = errors.get(decoded.key, PrError)
    raise error(f"{what}: CHECK CONDITION, {decoded.describe()}")


T = TypeVar("T")


def once_more_after_attention(what: str, send: Callable[[], T]) -> T:
    """Send a command; after a unit attention (or a CHECK CONDITION that may be one) send
    it once more: a unit attention is reported once per I_T nexus and then consumed. A
    second CHECK CONDITION is the LUN refusing the command: Unsupported."""
    try:
        return send()
    except (UnitAttention, CheckCondition):
        pass
    try:
        return send()
    except CheckCondition:
        raise Unsupported(f"{what}: refused by the LUN (CHECK CONDITION twice: it does not "
                          "support this command, service action or type)") from None


# -- requests -----------------------------------------------------------------------------


def out_cdb(action: OutAction, res_type: int = 0, length: int = PARAM_LEN) -> bytes:
    """PERSISTENT RESERVE OUT (10 bytes); ``res_type`` matters for RESERVE, RELEASE and
    PREEMPT (scope LU, 0)."""
    return struct.pack(">BBB2xIB", PR_OUT, int(action) & 0x1F, int(res_type) & 0x0F,
                       length, 0)


def out_params(key: int, sa_key: int = 0) -> bytes:
    """The 24-byte parameter list: reservation key, service action key, no flags (APTPL,
    ALL_TG_PT and SPEC_I_PT off)."""
    return struct.pack(">QQ8x", _key(key), _key(sa_key))


def in_cdb(action: InAction, alloc: int = ALLOC_LEN) -> bytes:
    """PERSISTENT RESERVE IN (10 bytes)."""
    return struct.pack(">BB5xHB", PR_IN, int(action) & 0x1F, alloc, 0)


def write10_cdb(lba: int, blocks: int) -> bytes:
    """WRITE(10) of ``blocks`` blocks at ``lba`` (what a fenced initiator's writes are)."""
    return struct.pack(">BBIBHB", WRITE_10, 0, lba, 0, blocks, 0)


def read10_cdb(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", READ_10, 0, lba, 0, blocks, 0)


def read_capacity10_cdb() -> bytes:
    return bytes([READ_CAPACITY_10]) + bytes(9)


def parse_capacity10(data: bytes) -> tuple[int, int]:
    """READ CAPACITY(10): (number of blocks, block size)."""
    if len(data) < 8:
        raise PrError(f"READ CAPACITY(10): reply of {len(data)} bytes, not 8")
    last, size = struct.unpack(">II", data[:8])
    return last + 1, size


@dataclass(frozen=True)
class Request:
    """One PR OUT command: its CDB and parameter list."""

    name: str
    cdb: bytes
    data: bytes


def register(key: int, ignore_existing: bool = True) -> Request:
    """Register ``key`` for this I_T nexus; with ``ignore_existing`` (REGISTER AND IGNORE
    EXISTING KEY) whatever key it had is replaced, so it is idempotent."""
    if ignore_existing:
        return Request("REGISTER AND IGNORE EXISTING KEY", out_cdb(OutAction.REGISTER_AND_IGNORE),
                       out_params(0, key))
    return Request("REGISTER", out_cdb(OutAction.REGISTER), out_params(0, key))


def unregister(key: int) -> Request:
    """Remove this I_T nexus's registration of ``key`` (REGISTER with service key 0)."""
    return Request("REGISTER (unregister)", out_cdb(OutAction.REGISTER), out_params(key, 0))


def reserve(key: int, res_type: int = FENCE_TYPE) -> Request:
    return Request("RESERVE", out_cdb(OutAction.RESERVE, res_type), out_params(key))


def release(key: int, res_type: int = FENCE_TYPE) -> Request:
    return Request("RELEASE", out_cdb(OutAction.RELEASE, res_type), out_params(key))


def clear(key: int) -> Request:
    """Remove every registration and the reservation (needs a registered ``key``)."""
    return Request("CLEAR", out_cdb(OutAction.CLEAR), out_params(key))


def preempt(key: int, victim: int, res_type: int = FENCE_TYPE) -> Request:
    """Remove ``victim``'s registrations (and take its reservation if it held it)."""
    if _key(victim) == 0:
        raise ValueError("preempting key 0 would preempt every registrant: refused")
    return Request("PREEMPT", out_cdb(OutAction.PREEMPT, res_type), out_params(key, victim))


# -- replies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """READ KEYS: the PR generation and every registered key (one per I_T nexus)."""

    generation: int
    keys: tuple[int, ...]


@dataclass(frozen=True)
class Reservation:
    """READ RESERVATION: the holder's key and the type; ``key`` None when none is held."""

    generation: int
    key: int | None = None
    type: int = 0
    scope: int = 0

    @property
    def type_name(self) -> str:
        return type_name(self.type) if self.key is not None else "-"


def type_name(res_type: int) -> str:
    try:
        return TYPE_NAMES[ResType(res_type)]
    except ValueError:
        return f"type {res_type}"


def parse_keys(data: bytes) -> Keys:
    """A READ KEYS reply; PrError when it is cut short."""
    generation, length = _header(data, "READ KEYS")
    body = data[8:8 + length]
    if len(body) < length or length % 8:
        raise PrError(f"READ KEYS: reply of {len(data)} bytes announces {length} more")
    return Keys(generation, tuple(struct.unpack(f">{length // 8}Q", body)))


def parse_reservation(data: bytes) -> Reservation:
    """A READ RESERVATION reply; PrError when it is cut short."""
    generation, length = _header(data, "READ RESERVATION")
    if length == 0:
        return Reservation(generation)
    if len(data) < 8 + 16 or length < 16:
        raise PrError(f"READ RESERVATION: reply of {len(data)} bytes announces {length} more")
    key = struct.unpack(">Q", data[8:16])[0]
    return Reservation(generation, key, data[21] & 0x0F, data[21] >> 4)


def _header(data: bytes, what: str) -> tuple[int, int]:
    if len(data) < 8:
        raise PrError(f"{what}: reply of {len(data)} bytes, shorter than its 8-byte header")
    generation, length = struct.unpack(">II", data[:8])
    return generation, length


def _key(key: int) -> int:
    if not 0 <= key < 1 << 64:
        raise ValueError(f"reservation key {key!r} is not 8 bytes")
    return key


# -- host keys ----------------------------------------------------------------------------


def host_key(name: str, cluster: str = "gridtool") -> int:
    """Host ``name``'s reservation key: stable, nonzero, 8 bytes.

    fence_scsi makes its keys from the cluster (a hash of its name, high half) and the node
    (its id, low half); gridtool hosts have names, not ids, so the low half is a hash of the
    name. Another cluster sharing the LUN gets other keys."""
    high = hashlib.sha256(cluster.encode()).digest()[:4]
    low = hashlib.sha256(f"{cluster}\0{name}".encode()).digest()[:4]
    key = int.from_bytes(high + low, "big")
    return key or 1


def key_owners(names: Iterable[str], cluster: str = "gridtool") -> dict[int, str]:
    """Key -> host name for the hosts ``names`` (what ``fence list --storage`` shows)."""
    return {host_key(name, cluster): name for name in names}


def format_key(key: int) -> str:
    return f"0x{key:016x}"


def describe_lun(lun: str, keys: Keys, reservation: Reservation,
                 owners: dict[int, str]) -> dict[str, object]:
    """One LUN's registrations and reservation as ``fence list --storage`` shows them: each
    key with the host it belongs to (None for a key no known host has)."""
    holder = None
    if reservation.key is not None:
        holder = {"key": format_key(reservation.key), "host": owners.get(reservation.key),
                  "type": reservation.type, "type_name": reservation.type_name}
    return {"lun": lun, "generation": keys.generation,
            "registrations": [{"key": format_key(k), "host": owners.get(k)}
                              for k in keys.keys],
            "reservation": holder}


# -- the port -----------------------------------------------------------------------------


class Reservations(Protocol):
    """One initiator's PR commands on one LUN (the I_T nexus is the back end's session)."""

    def register(self, key: int) -> None: ...

    def unregister(self, key: int) -> None: ...

    def reserve(self, key: int, res_type: int = FENCE_TYPE) -> None: ...

    def preempt(self, key: int, victim: int, res_type: int = FENCE_TYPE) -> None: ...

    def read_keys(self) -> Keys: ...

    def read_reservation(self) -> Reservation: ...
