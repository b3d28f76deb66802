"""The registry: typed reads and writes of gridtool records over a ``Store``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridtool.errors import NotFound
from gridtool.registry.keys import Keys
from gridtool.registry.model import (
    DecodeError,
    GuestRecord,
    HostRecord,
    Listing,
    as_dict,
    decode,
    effective_state,
    encode,
)
from gridtool.registry.store import Compare, Delete, Put, Store


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

    def write_guests(self, puts: tuple[GuestRecord, ...], deletes: tuple[str, ...],
                     host: str) -> None:
        """Apply a sync plan for ``host`` in one transaction per 100 operations."""
        ops: list[Put | Delete] = [Put(self.keys.guest(g.host, g.uuid), encode(g)) for g in puts]
        ops += [Delete(self.keys.guest(host, uuid)) for uuid in deletes]
        for start in range(0, len(ops), 100):
            self.store.txn([], ops[start:start + 100])

    def put_guest(self, record: GuestRecord) -> None:
        self.store.put(self.keys.guest(record.host, record.uuid), encode(record))

    def delete_guest(self, host: str, uuid: str) -> None:
        self.store.delete(self.keys.guest(host, uuid))

    def listing(self) -> Listing:
        """Every host and guest record, with decode errors collected, not raised."""
        hosts, host_errors = self.list_hosts()
        guests, guest_errors = self.list_guests()
        return Listing(hosts, guests, host_errors + guest_errors)

    def find_guest(self, name_or_uuid: str) -> list[GuestRecord]:
        """Guests whose uuid or name is ``name_or_uuid`` (several if defined twice)."""
        guests, _ = self.list_guests()
        found = [g for g in guests if g.uuid == name_or_uuid.lower()]
        found = found or [g for g in guests if g.name == name_or_uuid]
        if not found:
            raise NotFound(f"unknown guest {name_or_uuid!r}")
        return found

    # -- helpers -------------------------------------------------------------

    def _decode_all(self, cls: type, prefix: str) -> tuple[list, list[DecodeError]]:
        items, _ = self.store.list(prefix)
        records, errors = [], []
        for item in items:
            try:
                records.append(decode(cls, item.key, item.value))
            except DecodeError as exc:
                errors.append(exc)
        return records, errors


def unknown_host(name: str) -> NotFound:
    """The error for a host the registry does not know (exit 3)."""
    return NotFound(f"unknown host {name!r} (not in the registry: no live agent)")


def guest_view(guest: GuestRecord, live_hosts: frozenset[str]) -> dict:
    """A guest as listings show it: the record plus its effective state."""
    return {**as_dict(guest), "state": effective_state(guest, live_hosts),
            "reported_state": guest.state, "fenced": guest.fenced}
