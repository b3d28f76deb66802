"""The registry: typed reads and writes of gridtool records over a ``Store``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gridtool.errors import AuthError, NotFound
from gridtool.registry.guestindex import entries, index_ops, located
from gridtool.registry.keys import Keys
from gridtool.registry.model import (
    DISK_KEYS,
    GUEST_KEYS,
    GUEST_STATES,
    DecodeError,
    GuestRecord,
    HostRecord,
    Listing,
    as_dict,
    complete_guest,
    decode,
    encode,
    guest_data,
    load_json,
)
from gridtool.registry.store import Compare, Delete, Item, Put, Store, scan

log = logging.getLogger("gridtool.registry")
T = TypeVar("T")

#: Guest records per range read of a listing (about 2.4 MB; two ranges in memory at most:
#: measured at 100,000 guests, etcd serves them in half the CPU it takes for 1,000).
PAGE = 5000
#: What a host record without its guest counts (an older agent) is taken to have.
GUESTS_UNCOUNTED = 50

#: Operations per transaction (etcd refuses more than 128 by default).
TXN_OPS = 100


@dataclass
class Registry:
    """Host and guest records under one key prefix."""

    store: Store
    keys: Keys

    # -- hosts ---------------------------------------------------------------

    def put_host(self, record: HostRecord, lease: int | None,
                 guard: Sequence[Compare] = (), also: Sequence[Put] = ()) -> bool:
        """Write a live host's record and drop its ``confirm-dead`` mark in ONE
        transaction: a host record and a mark never coexist, so a mark whose delete
        failed cannot outlive the host's return (every later write retries it).
        ``guard``: compares the transaction needs (False when one fails: nothing was
        written); ``also``: more puts in it (the registration's machine claim)."""
        return self.store.txn(guard, (Put(self.keys.host(record.name), encode(record), lease),
                                      Delete(self.keys.dead_host(record.name)), *also))

    def list_hosts(self) -> tuple[list[HostRecord], list[DecodeError]]:
        return self._decode_all(HostRecord, self.keys.hosts)

    def get_host(self, name: str) -> HostRecord:
        found = self.find_host(name)
        if found is None:
            raise unknown_host(name)
        return found[0]

    def find_host(self, name: str) -> tuple[HostRecord, int] | None:
        """A live host's record and the lease it lives under; None when it has none."""
        item = self.store.get(self.keys.host(name))
        return None if item is None else (decode(HostRecord, item.key, item.value), item.lease)

    # -- guests --------------------------------------------------------------

    def guests_of(self, host: str) -> tuple[dict[str, GuestRecord], list[DecodeError]]:
        """The registry's records for one host's guests, by uuid."""
        records, errors = self._decode_all(GuestRecord, self.keys.host_guests(host))
        return {g.uuid: g for g in records}, errors

    def list_guests(self) -> tuple[list[GuestRecord], list[DecodeError]]:
        return self._decode_all(GuestRecord, self.keys.guests)

    def guest_items(self, host: str | None = None) -> Iterator[Item]:
        """Every guest record's item (of ``host``), in key order (host, then uuid): read
        a range at a time (``PAGE`` records by the host records' counts), never the
        whole fleet in memory."""
        if host:
            prefix, bounds = self.keys.host_guests(host), []
        else:
            hosts, _ = self.list_hosts()
            prefix = self.keys.guests
            bounds = [self.keys.host_guests(h) for h in page_bounds(
                [(h.name, h.guests) for h in hosts], PAGE)]
        return scan(self.store, prefix, bounds)

    def guest_data(self, host: str | None = None) -> Iterator[dict[str, Any] | DecodeError]:
        """``guest_items`` as plain data (``guest_data``), or the DecodeError of a record
        that does not decode."""
        return decoded(self.guest_items(host), guest_data)

    def write_guests(self, puts: tuple[GuestRecord, ...], deletes: tuple[str, ...],
                     host: str, before: Mapping[str, GuestRecord] | None = None) -> None:
        """Apply a sync plan for ``host``, each guest's record and index entries in one
        transaction (at most ``TXN_OPS`` operations each); ``before``: the host's records
        the plan was made from (None: read them)."""
        if before is None:
            before = self.guests_of(host)[0]
        groups: list[tuple[list[Put | Delete], list[Put | Delete]]] = [
            ([Put(self.keys.guest(g.host, g.uuid), encode(g))],
             self._index_ops(host, g.uuid, before.get(g.uuid), g)) for g in puts]
        groups += [([Delete(self.keys.guest(host, uuid))],
                    self._index_ops(host, uuid, before.get(uuid), None)) for uuid in deletes]
        records: list[Put | Delete] = []
        index: list[Put | Delete] = []
        for rec_ops, entry_ops in groups:
            if records and len(records) + len(index) + len(rec_ops) + len(entry_ops) > TXN_OPS:
                self._write(records, index)
                records, index = [], []
            records += rec_ops
            index += entry_ops
        if records:
            self._write(records, index)

    def put_guest(self, record: GuestRecord) -> None:
        key = self.keys.guest(record.host, record.uuid)
        before = self._decoded(self.store.get(key))
        self._write([Put(key, encode(record))],
                    self._index_ops(record.host, record.uuid, before, record))

    def delete_guest(self, host: str, uuid: str) -> None:
        key = self.keys.guest(host, uuid)
        before = self._decoded(self.store.get(key))
        self._write([Delete(key)], self._index_ops(host, uuid, before, None))

    def forget_guests(self, host: str) -> None:
        """Delete every guest record of ``host`` and their index entries."""
        records, _ = self.guests_of(host)
        self.write_guests((), tuple(sorted(records)), host, records)
        self.store.delete_prefix(self.keys.host_guests(host))  # and those that do not decode

    def index_guests(self, records: Sequence[GuestRecord]) -> None:
        """(Re)write the index entries of ``records`` (an agent's first resync: records
        written before the index existed get theirs)."""
        puts = [Put(k, b"") for rec in records for k in sorted(entries(self.keys, rec))]
        for start in range(0, len(puts), TXN_OPS):
            self.store.txn([], puts[start:start + TXN_OPS])

    def listing(self) -> Listing:
        """Every host and guest record, with decode errors collected, not raised."""
        hosts, host_errors = self.list_hosts()
        guests, guest_errors = self.list_guests()
        return Listing(hosts, guests, host_errors + guest_errors)

    def find_guest(self, name_or_uuid: str) -> list[GuestRecord]:
        """Guests whose uuid or name is ``name_or_uuid`` (several if defined twice), by
        the guest index: the reads of those guests' keys, whatever the fleet's size."""
        uuid = name_or_uuid.lower()
        listed = self._indexed(uuid)
        found = [g for g in listed if g.uuid == uuid]
        if not found:  # a name: the same index entries when it is written in lower case
            named = listed if name_or_uuid == uuid else self._indexed(name_or_uuid)
            found = [g for g in named if g.name == name_or_uuid]
        if not found:
            raise NotFound(f"unknown guest {name_or_uuid!r}")
        return found

    # -- helpers -------------------------------------------------------------

    def _write(self, records: list[Put | Delete], index: list[Put | Delete]) -> None:
        """Guest records with their index entries in one transaction; the records alone
        when etcd refuses the index to this host (a role from before the index, until
        ``registry init`` repairs it): a guest record is never held back for the index."""
        try:
            self.store.txn([], records + index)
        except AuthError:
            if not index:
                raise
            log.warning("event=guest_index_refused count=%d (run 'gridtool registry init' "
                        "to grant hosts the guest index)", len(index))
            self.store.txn([], records)

    def _index_ops(self, host: str, uuid: str, before: GuestRecord | None,
                   after: GuestRecord | None) -> list[Put | Delete]:
        return index_ops(self.keys, host, uuid, before.name if before else None, after)

    def _decoded(self, item: Item | None) -> GuestRecord | None:
        """The guest record in ``item``; None when there is none or it does not decode."""
        try:
            return None if item is None else decode(GuestRecord, item.key, item.value)
        except DecodeError:
            return None

    def _indexed(self, term: str) -> list[GuestRecord]:
        """The records the index lists under ``term`` (entries whose record is gone,
        moved or corrupt are passed over)."""
        items, _ = self.store.list(self.keys.guest_lookup(term))
        found = []
        for item in items:
            where = located(self.keys, term, item.key)
            if where is None:
                continue
            record = self._decoded(self.store.get(self.keys.guest(*where)))
            if record is not None and record.host == where[0]:
                found.append(record)
        return found

    def _decode_all(self, cls: type, prefix: str) -> tuple[list, list[DecodeError]]:
        items, _ = self.store.list(prefix)
        records, errors = [], []
        for item in items:
            try:
                records.append(decode(cls, item.key, item.value))
            except DecodeError as exc:
                errors.append(exc)
        return records, errors


def decoded(items: Iterable[Item], decode_one: Callable[[str, bytes], T],
            ) -> Iterator[T | DecodeError]:
    """``decode_one(key, value)`` of each item, or the DecodeError it raised."""
    for key, value, *_ in items:
        try:
            yield decode_one(key, value)
        except DecodeError as exc:
            yield exc


def page_bounds(hosts: Sequence[tuple[str, int | None]], page: int) -> list[str]:
    """The hosts (sorted names) at which to start a new range read of every guest record,
    about ``page`` records apart by the hosts' counts (None: ``GUESTS_UNCOUNTED``); the
    guests of a host without a record are read with the range they fall in."""
    bounds, size = [], 0
    for name, count in sorted(hosts):
        if size >= page:
            bounds.append(name)
            size = 0
        size += GUESTS_UNCOUNTED if count is None else count
    return bounds


def unknown_host(name: str) -> NotFound:
    """The error for a host the registry does not know (exit 3)."""
    return NotFound(f"unknown host {name!r} (not in the registry: no live agent)")


def guest_view(guest: GuestRecord, live_hosts: frozenset[str]) -> dict:
    """A guest as listings show it: the record plus its effective state."""
    return view_of(as_dict(guest), live_hosts)


def listed_guest(key: str, raw: bytes, live_hosts: frozenset[str],
                 ) -> tuple[dict[str, Any], bytes]:
    """A guest record as ``guest list --json`` writes it: its view (``view_of`` of
    ``guest_data``) and that view as JSON; DecodeError as ``guest_data``. A complete,
    compact record (``complete_guest``: what agents write) of a live host is written as
    its own bytes, less its "v", plus the view's two fields: parsed to check it, never
    encoded again. Its keys are all known and counted (``":`` ends a key and nothing
    else; a string holds ``\\"``), so its one ``"v":1,`` is the schema version's."""
    data = load_json(key, raw)
    at = raw.find(b'"v":1,')
    if complete_guest(data) and data["host"] in live_hosts and at >= 0 \
            and raw.count(b'":') == GUEST_KEYS + DISK_KEYS * len(data["disks"]) \
            and raw.endswith(b"}"):
        fenced = any(d["shared"] for d in data["disks"])
        data["reported_state"], data["fenced"] = data["state"], fenced
        return data, b"".join((raw[:at], raw[at + 6:-1], _VIEW_TAIL[data["state"]],
                               b"true}" if fenced else b"false}"))
    import orjson

    view = view_of(guest_data(key, raw), live_hosts)
    return view, orjson.dumps(view)


#: What a complete record's view adds to it: its state as reported, then "fenced".
_VIEW_TAIL = {s: b',"reported_state":"%s","fenced":' % s.encode() for s in GUEST_STATES}


def view_of(data: dict[str, Any], live_hosts: frozenset[str]) -> dict[str, Any]:
    """``guest_view`` of a guest record's plain data (``guest_data``, ``as_dict``)."""
    return {**data, "state": data["state"] if data["host"] in live_hosts else "unknown",
            "reported_state": data["state"], "fenced": any(d["shared"] for d in data["disks"])}
