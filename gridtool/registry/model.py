"""Registry records as plain data, and their JSON codec (schema version "v": 1).

Pure: no etcd, no libvirt. Every value in the registry is a JSON object with a
``"v"`` field so that ``etcdctl get --prefix`` shows readable records.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, TypeVar

try:  # several times faster than json's (guest list parses 100,000 records: issue 20)
    from orjson import loads as _loads
except ImportError:  # the libvirt hook runs on the system Python, with the stdlib alone
    from json import loads as _loads  # type: ignore[assignment]

SCHEMA_VERSION = 1

#: Guest states as gridtool names them (libvirt's virDomainState, plus ``unknown``).
GUEST_STATES = (
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
    "pmsuspended", "unknown",
)
#: Guest states in which a guest is on its host's hypervisor: it occupies memory and
#: vCPUs (placement, anti-affinity) and may write its disks (``shutdown`` is not off yet).
ACTIVE_STATES = frozenset({"running", "paused", "blocked", "pmsuspended", "shutdown"})


class DecodeError(ValueError):
    """A registry value is not a valid record; str() is one line naming the key."""

    def __init__(self, key: str, reason: str) -> None:
        printable = key.encode("unicode_escape").decode("ascii")
        super().__init__(f"corrupt registry record {printable}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Disk:
    """One disk of a guest, as read from its domain XML."""

    target: str
    source: str
    kind: str = "file"  # file | block | network | volume
    protocol: str | None = None
    shareable: bool = False
    shared: bool = False
    volume: str | None = None  # stable shared-storage volume id when shared


@dataclass(frozen=True)
class HostRecord:
    """A hypervisor host as its agent reports it; lives under the host's lease."""

    name: str
    libvirt_uri: str
    hypervisor: str
    cpus: int
    memory_mib: int
    free_memory_mib: int
    agent_version: str
    reported_at: float
    labels: tuple[str, ...] = ()
    started_at: float = 0.0
    storage: tuple[str, ...] = ()
    #: A working watchdog protects the host: a hung or dead agent gets it reset before
    #: its lease (and so its HA fences) can expire. False from agents that predate it.
    watchdog: bool = False
    watchdog_timeout: float = 0.0  # that watchdog's timeout in seconds (0: none)
    #: How another party can fence this host when it stops answering ("power",
    #: "storage"): written by fence agents, none of which exists yet (issue 13).
    fencing: tuple[str, ...] = ()

    @property
    def protected(self) -> bool:
        """An HA guest may run here: a hung agent cannot leave it running while it is
        restarted elsewhere (a working watchdog, or the host can be fenced)."""
        return self.watchdog or bool(self.fencing)
    machine_id: str = ""  # the machine the agent runs on ('' from agents before it was kept)
    instance: str = ""  # the agent process (random, new at each start)
    #: Its guests and those running, as libvirt counted them when the agent last wrote
    #: this record (it does after each burst of guest changes): what ``host list``
    #: shows without reading a guest record. None from agents before they were kept.
    guests: int | None = None
    running_guests: int | None = None
    #: Why its hypervisor cannot be trusted to list its guests ('' when it can): on Xen,
    #: a toolstack that does not answer (xenstored stopped, libxl failing).
    unhealthy: str = ""
    #: Where another host's libvirt reaches this one for a live migration ('': the host
    #: of ``libvirt_uri``; the agent's ``migration_address``).
    migration_address: str = ""


@dataclass(frozen=True)
class GuestRecord:
    """A guest (libvirt domain) on one host, as that host's agent last saw it."""

    uuid: str
    name: str
    host: str
    state: str
    vcpus: int
    memory_mib: int
    updated_at: float
    disks: tuple[Disk, ...] = ()
    persistent: bool = True
    autostart: bool = False
    fence_token: int = 0  # revision of the fence key(s) this host holds for the guest
    ready_at: float = 0.0  # when the agent saw the guest's ready marker this run (0: not)
    intruder: bool = False  # this run was judged an intruder: it takes no fence until off

    @property
    def fenced(self) -> bool:
        """True when at least one disk lives on shared storage."""
        return any(d.shared for d in self.disks)

    @property
    def volumes(self) -> tuple[str, ...]:
        """Shared-storage volume ids of this guest, sorted."""
        return tuple(sorted({d.volume for d in self.disks if d.shared and d.volume}))

    @property
    def unidentified(self) -> tuple[str, ...]:
        """Its shared disks with no volume id (their LUN could not be identified)."""
        return tuple(f"disk {d.target} ({d.source!r})" for d in self.disks
                     if d.shared and not d.volume)

    def same_content(self, other: GuestRecord) -> bool:
        """Equal apart from the report timestamp."""
        return replace(self, updated_at=0.0) == replace(other, updated_at=0.0)


R = TypeVar("R", HostRecord, GuestRecord)


def as_dict(record: HostRecord | GuestRecord) -> dict[str, Any]:
    """The record as plain JSON-ready data (a fast, shallow ``dataclasses.asdict``)."""
    data = dict(record.__dict__)
    for name, value in data.items():
        if isinstance(value, tuple):
            data[name] = [dict(v.__dict__) if isinstance(v, Disk) else v for v in value]
    return data


def dump_json(body: dict[str, Any]) -> bytes:
    """A record body as the registry's JSON, with its schema version."""
    return json.dumps({"v": SCHEMA_VERSION, **body}, sort_keys=True,
                      separators=(",", ":")).encode()


def load_json(key: str, raw: bytes | str) -> dict[str, Any]:
    """A registry value's JSON object without its ``"v"``; DecodeError naming ``key``."""
    try:
        data = _loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(key, f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise DecodeError(key, "not a JSON object")
    version = data.pop("v", None)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise DecodeError(key, f"unknown schema version {version!r}")
    return data


def encode(record: HostRecord | GuestRecord) -> bytes:
    """Serialise a record to the registry's JSON form."""
    return dump_json(as_dict(record))


def decode(cls: type[R], key: str, raw: bytes | str) -> R:
    """Parse a registry value into ``cls``; raise DecodeError naming ``key``."""
    return _build(cls, key, load_json(key, raw))


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, bool], ...]:
    """(field name, required) for each field of a record class."""
    return tuple((f.name, f.default is MISSING and f.default_factory is MISSING)
                 for f in fields(cls))


def _build(cls: type[R], key: str, data: dict[str, Any]) -> R:
    kwargs = _fields(cls, key, data)
    for name, value in kwargs.items():
        if type(value) is list:  # JSON lists become the records' tuples
            kwargs[name] = tuple(Disk(**d) for d in value) if name == "disks" \
                else tuple(value)
    return cls(**kwargs)


def _fields(cls: type, key: str, data: dict[str, Any]) -> dict[str, Any]:
    """The checked fields of a record as JSON values (disks as dicts with their defaults
    filled in); DecodeError naming ``key``."""
    kwargs: dict[str, Any] = {}
    for name, required in _schema(cls):
        if name in data:
            value = data[name]
            expected = _TYPES.get(name)
            # type() (not isinstance) so that True is not taken for an int
            kwargs[name] = value if expected and type(value) in expected \
                and name != "state" else _coerce(key, name, value)
        elif required:
            raise DecodeError(key, f"missing field {name!r}")
    return kwargs


def guest_data(key: str, raw: bytes | str) -> dict[str, Any]:
    """A guest record as ``as_dict(decode(GuestRecord, key, raw))`` gives it, checked
    the same way but without building the record (what a listing of 100,000 streams).
    A record whose fields and disks all have known names and right types (what agents
    write) is taken as it is; any other goes through the field-by-field check."""
    data = load_json(key, raw)
    disks: Any = data.get("disks")  # a list when the record's shape is plain
    if _plain_guest(tuple(data), tuple(map(type, data.values()))) \
            and data["state"] in GUEST_STATES \
            and all(type(d) is dict and _plain_disk(tuple(d), tuple(map(type, d.values())))
                    for d in disks):
        return {**_GUEST_TEMPLATE, **data,
                "disks": [{**_DISK_DEFAULTS, **d} for d in disks]}
    return {**_GUEST_TEMPLATE, **_fields(GuestRecord, key, data)}


def complete_guest(data: dict[str, Any]) -> bool:
    """``data`` (a guest record's JSON object without its "v") has every field of a guest
    record and of each of its disks, each with a type ``decode`` takes as it is, a known
    state, and nothing else: what agents write (``guest_data`` gives it unchanged but
    for the order of its fields)."""
    disks: Any = data.get("disks")
    return _complete_guest(tuple(data), tuple(map(type, data.values()))) \
        and data["state"] in GUEST_STATES \
        and all(type(d) is dict and _complete_disk(tuple(d), tuple(map(type, d.values())))
                for d in disks)


@functools.lru_cache(maxsize=256)
def _complete_guest(names: tuple[str, ...], types: tuple[type, ...]) -> bool:
    return len(names) == len(_schema(GuestRecord)) and _plain_guest(names, types)


@functools.lru_cache(maxsize=256)
def _complete_disk(names: tuple[str, ...], types: tuple[type, ...]) -> bool:
    return len(names) == len(_schema(Disk)) and _plain_disk(names, types)


#: JSON keys of a complete guest record with its "v", and of each of its disks.
GUEST_KEYS = len(fields(GuestRecord)) + 1
DISK_KEYS = len(fields(Disk))


@functools.lru_cache(maxsize=256)
def _plain_guest(names: tuple[str, ...], types: tuple[type, ...]) -> bool:
    """A guest record with these fields (names, types of their JSON values) passes the
    field-by-field check unchanged but for its state's value and its disks' contents."""
    return _plain(GuestRecord, _TYPES, names, types) and "disks" in names


@functools.lru_cache(maxsize=256)
def _plain_disk(names: tuple[str, ...], types: tuple[type, ...]) -> bool:
    """A disk with these fields passes ``_disk`` unchanged (but for their order)."""
    return _plain(Disk, _DISK_TYPES, names, types)


def _plain(cls: type, known: dict[str, tuple[type, ...]], names: Iterable[str],
           types: Iterable[type]) -> bool:
    """Every field of ``cls`` required is there; every one there is a field with a
    value of a type ``known`` allows (lists: only ``disks``, checked one by one)."""
    fields_of = dict(_schema(cls))
    given = dict(zip(names, types, strict=True))
    return all(n in given for n, required in fields_of.items() if required) and all(
        n in fields_of and (t in known.get(n, ()) or (n == "disks" and t is list))
        for n, t in given.items())


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "libvirt_uri": (str,), "hypervisor": (str,), "agent_version": (str,),
    "uuid": (str,), "host": (str,), "state": (str,), "machine_id": (str,), "instance": (str,),
    "unhealthy": (str,), "migration_address": (str,),
    "cpus": (int,), "memory_mib": (int,), "free_memory_mib": (int,), "vcpus": (int,),
    "fence_token": (int,),
    "reported_at": (int, float), "started_at": (int, float), "updated_at": (int, float),
    "ready_at": (int, float),
    "persistent": (bool,), "autostart": (bool,), "intruder": (bool,),
    "watchdog": (bool,), "watchdog_timeout": (int, float),
    "guests": (int, type(None)), "running_guests": (int, type(None)),
}


def _coerce(key: str, name: str, value: Any) -> Any:
    if name in ("labels", "storage", "fencing"):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise DecodeError(key, f"field {name!r} must be a list of strings")
        return list(value)
    if name == "disks":
        if not isinstance(value, list):
            raise DecodeError(key, "field 'disks' must be a list")
        return [_disk(key, d) for d in value]
    expected = _TYPES.get(name)
    bad_bool = isinstance(value, bool) and bool not in (expected or ())
    if expected and (not isinstance(value, expected) or bad_bool):
        raise DecodeError(key, f"field {name!r} has the wrong type")
    if name == "state" and value not in GUEST_STATES:
        raise DecodeError(key, f"unknown guest state {value!r}")
    return value


_DISK_TYPES: dict[str, tuple[type, ...]] = {
    "target": (str,), "source": (str,), "kind": (str,), "protocol": (str, type(None)),
    "shareable": (bool,), "shared": (bool,), "volume": (str, type(None)),
}


def _disk(key: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or type(raw.get("target")) is not str \
            or type(raw.get("source")) is not str:
        raise DecodeError(key, "a disk needs string fields 'target' and 'source'")
    known = {}
    for name, value in raw.items():
        expected = _DISK_TYPES.get(name)
        if expected is None:
            continue
        if type(value) not in expected:
            raise DecodeError(key, f"disk field {name!r} has the wrong type")
        known[name] = value
    return {**_DISK_DEFAULTS, **known}


_DISK_DEFAULTS = dict(Disk("", "").__dict__)
#: A guest record's fields in their order, for ``guest_data`` (required ones are always
#: overwritten: a record without one does not decode).
_GUEST_TEMPLATE = {f.name: None if f.default is MISSING else
                   list(f.default) if isinstance(f.default, tuple) else f.default
                   for f in fields(GuestRecord)}


def effective_state(guest: GuestRecord, live_hosts: set[str] | frozenset[str]) -> str:
    """The state to show: ``unknown`` when the guest's host has lost its lease."""
    return guest.state if guest.host in live_hosts else "unknown"


@dataclass
class Listing:
    """Records decoded from a prefix, with the keys that failed to decode."""

    hosts: list[HostRecord] = field(default_factory=list)
    guests: list[GuestRecord] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)
