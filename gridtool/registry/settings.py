"""Read and update a guest's operator settings (``settings/<uuid>``) safely."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from gridtool.errors import Conflict
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError
from gridtool.registry.records import GuestSettings, decode, encode
from gridtool.registry.store import Compare, Put, Store

log = logging.getLogger("gridtool.registry.settings")

#: The desired state each operator action leaves (``gridtool guest start/stop/...``): the
#: HA manager brings a managed guest back only while it is desired running.
DESIRED_AFTER = {"start": "running", "restart": "running", "stop": "stopped",
                 "destroy": "stopped", "sleep": "stopped", "wake": "running"}


def read(store: Store, keys: Keys, uuid: str) -> GuestSettings | None:
    item = store.get(keys.guest_settings(uuid))
    return decode(GuestSettings, item.key, item.value) if item else None


def read_all(store: Store, keys: Keys) -> dict[str, GuestSettings]:
    """Every guest's settings by uuid, in one range read (corrupt records logged and
    skipped)."""
    found = {}
    for item in store.list(keys.settings)[0]:
        try:
            s = decode(GuestSettings, item.key, item.value)
        except DecodeError as exc:
            log.warning("event=corrupt_record key=%s error=%s", item.key, exc.reason)
            continue
        found[s.uuid] = s
    return found


def update(store: Store, keys: Keys, uuid: str, name: str,
           change: Callable[[GuestSettings], GuestSettings],
           guard: list[Compare] | None = None) -> GuestSettings:
    """Read-modify-write with a compare on the key's revision; retried on a race."""
    key = keys.guest_settings(uuid)
    for _ in range(10):
        item = store.get(key)
        current = decode(GuestSettings, key, item.value) if item else GuestSettings(uuid, name)
        new = change(replace(current, name=name))
        compare = Compare(key, "mod", item.mod_revision) if item else Compare(key, "create", 0)
        if store.txn([compare, *(guard or [])], [Put(key, encode(new))]):
            return new
    raise Conflict(f"settings of {name} keep changing under us: try again")


def set_desired_after(store: Store, keys: Keys, uuid: str, name: str,
                      action: str) -> GuestSettings:
    """Record the desired state the operator's ``action`` leaves (and clear any error)."""
    desired = DESIRED_AFTER[action]
    return update(store, keys, uuid, name, lambda s: replace(s, desired=desired, error=""))
