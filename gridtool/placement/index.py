"""The fleet as placement and the HA manager see it, kept per host and updated per
changed key (no I/O: it reads a ``Lister``, the manager's in-memory mirror).

:func:`gridtool.placement.shell.read_fleet` walks every guest record each time: at
100,000 guests that is 1-2 s of a manager's round, even when nothing changed. A
:class:`FleetIndex` keeps, per host prefix ``guests/<host>/``, the decoded records with
the revisions they were decoded at (:class:`HostGuests`: the active ones, the ones on
shared storage), every guest's settings, and each live host's :class:`HostView`. Each
round hands it the keys that changed since the last one (the mirror's journal,
:meth:`gridtool.registry.mirror.Mirror.take_changed`; ``None``: everything, after a
listing): it lists again only the hosts whose guest records changed, decodes only the
records whose revision moved, and rebuilds only the host views whose inputs changed (the
host's record, its guests, their settings, draining, the declared storage ids). A round
then costs what changed plus one step per host, not one per guest.

:meth:`FleetIndex.audit` checks a slice of the hosts per call against a fresh reading
(every record's revision, every guest's settings revision, the host's view rebuilt):
a difference is a bug in the bookkeeping above, repaired and returned (the manager
logs it). Successive calls walk every host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from gridtool.placement.rules import GuestNeeds, HostView
from gridtool.registry.keyindex import KeyIndex, Lister, decoded
from gridtool.registry.keys import Keys
from gridtool.registry.model import ACTIVE_STATES, DecodeError, GuestRecord, HostRecord, decode
from gridtool.registry.records import GuestSettings
from gridtool.registry.store import Item

#: How many calls of :meth:`FleetIndex.audit` check every host once.
AUDIT_ROUNDS = 20


@dataclass(frozen=True)
class HostGuests:
    """The guest records under one host's prefix: ``revisions`` (key -> mod revision) of
    every item, the decoded ``records`` by key (corrupt ones left out), the ``active``
    ones (key, record) sorted by name, then key, the ``fenced`` ones (on shared storage:
    what the manager manages)."""

    revisions: Mapping[str, int] = field(default_factory=dict)
    records: Mapping[str, GuestRecord] = field(default_factory=dict)
    active: tuple[tuple[str, GuestRecord], ...] = ()
    fenced: tuple[GuestRecord, ...] = ()

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(r.uuid for r in self.records.values())

    def named(self) -> frozenset[str]:
        """The hosts its records name (their ``host`` field: the prefix's own host,
        unless a record was written under another's)."""
        return frozenset(r.host for r in self.records.values())


def host_guests(items: Iterable[Item], old: HostGuests | None = None) -> HostGuests:
    """One host's guest ``items`` decoded, reusing ``old``'s record of each item whose
    revision has not moved."""
    before = old or HostGuests()
    revisions, records = {}, {}
    for item in items:
        revisions[item.key] = item.mod_revision
        held = before.records.get(item.key)
        if held is not None and before.revisions.get(item.key) == item.mod_revision:
            records[item.key] = held
            continue
        try:
            records[item.key] = decode(GuestRecord, item.key, item.value)
        except DecodeError:
            continue  # read_fleet skips it too
    active = tuple(sorted(((k, r) for k, r in records.items() if r.state in ACTIVE_STATES),
                          key=lambda kr: (kr[1].name, kr[0])))
    return HostGuests(revisions, records, active,
                      tuple(r for r in records.values() if r.fenced))


def host_of(keys: Keys, key: str) -> str | None:
    """The host a guest record's key is under (None: not a guest record's key)."""
    if not key.startswith(keys.guests):
        return None
    host, sep, _ = key.removeprefix(keys.guests).partition("/")
    return host if sep else None


@dataclass(frozen=True)
class Changes:
    """What a set of changed keys asks the index to read again."""

    hosts: frozenset[str]  # hosts whose guest records changed
    settings: frozenset[str]  # guests (uuids) whose settings changed


def classify(keys: Keys, changed: Iterable[str]) -> Changes:
    """The hosts and guests' settings among ``changed`` (every other key is read whole
    each round: hosts, host settings, fence agents)."""
    hosts, settings = set(), set()
    for key in changed:
        host = host_of(keys, key)
        if host is not None:
            hosts.add(host)
        elif key.startswith(keys.settings):
            settings.add(key.removeprefix(keys.settings))
    return Changes(frozenset(hosts), frozenset(settings))


#: What a host's view is built from, besides its guests and their settings.
Stamp = tuple[HostRecord, bool, frozenset[str]]


class FleetIndex:
    """Guest records per host, settings per guest and host views, kept between rounds
    (see the module's docstring). Not thread-safe: one round at a time."""

    def __init__(self, keys: Keys, needs: Callable[[GuestRecord, GuestSettings | None,
                                                    frozenset[str]], GuestNeeds]) -> None:
        self.keys = keys
        self.needs = needs  # placement's reading of a guest (``shell.guest_needs``)
        self.hosts: dict[str, HostGuests] = {}  # by host, every host prefix with records
        #: every guest's settings by uuid (the key's; read_all: by its field, the same)
        self._settings = KeyIndex(keys.settings, decoded(GuestSettings))
        self._where: dict[str, set[str]] = {}  # uuid -> hosts with a record of it
        #: host prefixes holding a record that names another host (read_fleet counts a
        #: record on the host it names): normally none
        self._foreign: set[str] = set()
        self._views: dict[str, tuple[Stamp, HostView]] = {}
        self._stale_views: set[str] = set()  # hosts whose view must be built again
        self._audit_next = 0  # where the next audit slice starts (an index into the hosts)
        #: what the last views were built from (the audit rebuilds views from the same)
        self._live: dict[str, HostRecord] = {}
        self._draining: frozenset[str] = frozenset()
        self._declared: frozenset[str] = frozenset()

    # -- taking changes ---------------------------------------------------------

    def update(self, lister: Lister, changed: Collection[str] | None) -> None:
        """Read again what ``changed`` names (None: everything)."""
        if changed is None:
            self._reload(lister)
            return
        todo = classify(self.keys, changed)
        for host in todo.hosts:
            self._load_host(host, lister(self.keys.host_guests(host)))
        for uuid in todo.settings:
            self._load_settings(uuid, lister)

    def _reload(self, lister: Lister) -> None:
        per_host: dict[str, list[Item]] = {}
        for item in lister(self.keys.guests):
            host = host_of(self.keys, item.key)
            if host is not None:
                per_host.setdefault(host, []).append(item)
        for host in set(self.hosts) - set(per_host):
            self._load_host(host, [])
        for host, items in per_host.items():
            self._load_host(host, items)
        self._settings.update(lister, None)
        self._stale_views = set(self._views)

    def _load_host(self, host: str, items: list[Item]) -> None:
        old = self.hosts.get(host)
        new = host_guests(items, old)
        for uuid in (old.uuids if old else frozenset()) - new.uuids:
            self._where.get(uuid, set()).discard(host)
            if not self._where.get(uuid):
                self._where.pop(uuid, None)
        for uuid in new.uuids:
            self._where.setdefault(uuid, set()).add(host)
        if new.revisions:
            self.hosts[host] = new
        else:
            self.hosts.pop(host, None)
        named = new.named() - {host}
        if named:
            self._foreign.add(host)
        else:
            self._foreign.discard(host)
        self._stale_views |= {host} | named | (old.named() if old else frozenset())

    def _load_settings(self, uuid: str, lister: Lister) -> None:
        self._settings.update(lister, (self.keys.guest_settings(uuid),))
        for host in self._where.get(uuid, ()):
            self._stale_views |= {r.host for r in self.hosts[host].records.values()
                                  if r.uuid == uuid}

    # -- reading ----------------------------------------------------------------

    @property
    def settings(self) -> dict[str, GuestSettings]:
        """Every guest's settings (corrupt ones left out), by uuid."""
        return self._settings.values

    def views(self, hosts: Iterable[HostRecord], draining: Collection[str],
              declared: frozenset[str]) -> tuple[HostView, ...]:
        """The live ``hosts``' views, sorted by name; built again only where the host's
        record, draining, the declared storage, its guests or their settings changed."""
        self._live = {h.name: h for h in hosts}
        self._draining, self._declared = frozenset(draining), declared
        views = []
        for record in sorted(self._live.values(), key=lambda h: h.name):
            stamp: Stamp = (record, record.name in draining, declared)
            kept = self._views.get(record.name)
            if kept is None or kept[0] != stamp or record.name in self._stale_views:
                kept = stamp, self._build(record, stamp[1], declared)
                self._views[record.name] = kept
            views.append(kept[1])
        live = {h.name for h in views}
        self._views = {h: v for h, v in self._views.items() if h in live}
        self._stale_views = set()
        return tuple(views)

    def _build(self, record: HostRecord, draining: bool, declared: frozenset[str]) -> HostView:
        name = record.name
        on = [kr for host in {name} | self._foreign if host in self.hosts
              for kr in self.hosts[host].active if kr[1].host == name]
        if self._foreign:
            on.sort(key=lambda kr: (kr[1].name, kr[0]))
        return host_view(record, draining, tuple(
            self.needs(g, self.settings.get(g.uuid), declared) for _, g in on))

    def fenced(self) -> tuple[GuestRecord, ...]:
        """Every guest record on shared storage, on any host (live or not), in key order
        as a listing gives them (the manager's view of a guest breaks ties by it)."""
        return tuple(r for host in sorted(self.hosts, key=lambda h: h + "/")
                     for r in self.hosts[host].fenced)

    # -- the audit ----------------------------------------------------------------

    def audit(self, lister: Lister, pending: Callable[[str], bool] = lambda _prefix: False,
              ) -> list[str]:
        """Check the next slice of hosts (the live ones and those with guest records:
        1/``AUDIT_ROUNDS`` of them) against ``lister``: their records' revisions (a
        record is decoded again only when its revision moves), their guests' settings'
        revisions, their views rebuilt from what the last :meth:`views` was given.
        Repairs what differs (the next :meth:`views` rebuilds it); returns those hosts.
        A difference under a prefix with changes not yet taken (``pending(prefix)``: the
        journal's) is no error: the next :meth:`update` reads it."""
        names = sorted(set(self._live) | set(self.hosts))
        if not names:
            return []
        size = math.ceil(len(names) / AUDIT_ROUNDS)
        start = self._audit_next % len(names)
        self._audit_next = start + size
        wrong = []
        for host in names[start:start + size]:
            items = lister(self.keys.host_guests(host))
            held = self.hosts.get(host, HostGuests())
            bad = {i.key: i.mod_revision for i in items} != dict(held.revisions) and \
                not pending(self.keys.host_guests(host))
            for uuid in held.uuids:
                key = self.keys.guest_settings(uuid)
                item = next((i for i in lister(key) if i.key == key), None)
                if (item.mod_revision if item else None) != \
                        self._settings.revisions.get(uuid) and not pending(key):
                    bad = True
                    self._settings.put(uuid, item)
            if bad:
                self._load_host(host, items)
            view = self._views.get(host)
            record = self._live.get(host)
            if record is not None and view is not None and not bad and \
                    host not in self._stale_views and \
                    view[1] != self._build(record, host in self._draining, self._declared):
                bad = True
                self._stale_views.add(host)
            if bad:
                wrong.append(host)
        return wrong


def host_view(h: HostRecord, draining: bool, guests: tuple[GuestNeeds, ...]) -> HostView:
    """A live host as the allocator sees it, with its active ``guests``' needs (sorted by
    name)."""
    return HostView(
        name=h.name, total_memory_mib=max(1, h.memory_mib), free_memory_mib=h.free_memory_mib,
        cpus=max(1, h.cpus), vcpus_allocated=sum(g.vcpus for g in guests), draining=draining,
        labels=frozenset(h.labels), storage=frozenset(h.storage), protected=h.protected,
        guests=guests)
