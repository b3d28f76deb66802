"""The guest index (pure): ``guestindex/<term>/<host>/<uuid>`` for a guest's name and
its uuid, so that ``guest show NAME`` reads one guest's keys, not the fleet's.

Written in the same transaction as the guest record it points to (``Registry``), and
checked against that record on every read: an entry left behind (a crash between two
registry versions, a host's credentials forging one) costs a read, never a wrong answer.
"""

from __future__ import annotations

from gridtool.registry.keys import Keys
from gridtool.registry.model import GuestRecord
from gridtool.registry.store import Delete, Put


def entry(keys: Keys, term: str, host: str, uuid: str) -> str:
    return f"{keys.guest_lookup(term)}{host}/{uuid}"


def entries(keys: Keys, rec: GuestRecord) -> set[str]:
    """The entries of a guest record: under its uuid and under its name."""
    return {entry(keys, rec.uuid, rec.host, rec.uuid), entry(keys, rec.name, rec.host, rec.uuid)}


def index_ops(keys: Keys, host: str, uuid: str, before: str | None,
              after: GuestRecord | None) -> list[Put | Delete]:
    """What goes with writing ``after`` (None: deleting) as ``host``'s guest ``uuid``,
    whose name in the registry was ``before`` (None: no record, or one that does not
    decode): the entries it no longer has go, its own are (re)written."""
    old = {entry(keys, uuid, host, uuid)}
    if before is not None:
        old.add(entry(keys, before, host, uuid))
    new = entries(keys, after) if after is not None else set()
    return [Delete(k) for k in sorted(old - new)] + [Put(k, b"") for k in sorted(new)]


def located(keys: Keys, term: str, key: str) -> tuple[str, str] | None:
    """(host, uuid) an entry found under ``term`` points to; None for a key that is not
    one (a longer name's entry, a corrupt key)."""
    host, _, uuid = key.removeprefix(keys.guest_lookup(term)).partition("/")
    return (host, uuid) if host and uuid and "/" not in uuid else None
