"""The decoded items under one prefix, kept between a reader's rounds and updated per
changed key (pure: it reads a ``Lister``, the manager's in-memory mirror).

The manager's round used to decode every fence key, every host's fence agent and every
host's settings each full round (what ``read_all_fences``, ``fenceagents.read_all`` and
``hostconf.draining_hosts`` do: a JSON decode per key, two per host for the agents).
A :class:`KeyIndex` decodes them once and then only the keys the mirror's journal names
(:meth:`gridtool.registry.mirror.Mirror.take_changed`; ``None``: read everything again),
as :class:`gridtool.placement.index.FleetIndex` does for the guests.
:meth:`KeyIndex.audit` compares every key's revision with the one decoded (no decoding):
a difference the journal does not hold is repaired and returned.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Generic, TypeVar

from gridtool.registry.model import DecodeError
from gridtool.registry.records import decode
from gridtool.registry.store import Item

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
R = TypeVar("R", bound="DataclassInstance")

#: The items under a prefix, sorted by key (the mirror's ``list``, without the revision).
Lister = Callable[[str], list[Item]]


class KeyIndex(Generic[T]):
    """``values``: name (the key without ``prefix``) -> ``decode(name, item)`` for every
    item under ``prefix`` whose decode is not None (None: skipped, as the readers skip a
    corrupt record). Not thread-safe: one round at a time."""

    def __init__(self, prefix: str, decode: Callable[[str, Item], T | None]) -> None:
        self.prefix = prefix
        self.decode = decode
        self.values: dict[str, T] = {}
        self.revisions: dict[str, int] = {}  # by name, every item held (decoded or not)

    def update(self, lister: Lister, changed: Collection[str] | None) -> None:
        """Read again the keys under the prefix that ``changed`` names (None: all)."""
        if changed is None:
            self._reload(lister(self.prefix))
            return
        for key in changed:
            if key.startswith(self.prefix):
                self.put(key.removeprefix(self.prefix),
                         next((i for i in lister(key) if i.key == key), None))

    def audit(self, lister: Lister, pending: Callable[[str], bool] = lambda _key: False,
              ) -> list[str]:
        """The names whose revision differs from what is held and whose key has no change
        waiting (``pending(key)``: the journal's); each is read again."""
        items = {i.key.removeprefix(self.prefix): i for i in lister(self.prefix)}
        wrong = sorted(n for n in set(items) | set(self.revisions)
                       if (items[n].mod_revision if n in items else None)
                       != self.revisions.get(n) and not pending(self.prefix + n))
        for name in wrong:
            self.put(name, items.get(name))
        return wrong

    def _reload(self, items: list[Item]) -> None:
        self.values, self.revisions = {}, {}
        for item in items:
            self.put(item.key.removeprefix(self.prefix), item)

    def put(self, name: str, item: Item | None) -> None:
        """Hold ``item`` as ``name``'s (None: ``name`` has no key any more)."""
        self.values.pop(name, None)
        self.revisions.pop(name, None)
        if item is None:
            return
        self.revisions[name] = item.mod_revision
        value = self.decode(name, item)
        if value is not None:
            self.values[name] = value


def decoded(cls: type[R]) -> Callable[[str, Item], R | None]:
    """A :class:`KeyIndex` decoder of ``cls`` records (None for a corrupt one: skipped,
    as the readers, e.g. ``fenceagents.read_all`` and ``hostconf.read_all``, skip it)."""
    def decode_item(_name: str, item: Item) -> R | None:
        try:
            return decode(cls, item.key, item.value)
        except DecodeError:
            return None
    return decode_item
