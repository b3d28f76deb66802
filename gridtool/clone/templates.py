"""Template and clone records in the registry, and their reads and writes.

``templates/<name>``: a :class:`Template` (the source guest's XML, its disks and their
golden images, memory, vCPUs). ``clones/<template>/<uuid>``: a :class:`CloneRecord` for
each clone made from it, written before the clone is made and removed after it is gone,
so a template in use cannot be deleted. A clone made for a pool also has
``pools/<pool>/members/<uuid>`` (``{"v":1,"host","name","template","created_at"}``).
A clone's ``settings/<uuid>``, if any, is forgotten with its clone record.
Records go through the typed codec of :mod:`gridtool.registry.records`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from gridtool.errors import Conflict, CorruptRecord, NotFound
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, dump_json
from gridtool.registry.records import decode, encode
from gridtool.registry.store import Compare, Delete, Put, Store

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


@dataclass(frozen=True)
class Template:
    """A frozen guest: its XML and one read-only golden image per disk."""

    name: str
    xml: str  # the source guest's inactive domain XML
    disks: list[str]  # disk targets, in XML order
    images: dict[str, str]  # disk target -> golden image path (shared storage)
    memory_mib: int
    vcpus: int
    images_dir: str  # the images directory of the host that froze it
    source_guest: str  # uuid
    source_name: str
    source_host: str
    created_at: float
    nics: int = 0
    macs: list[str] = field(default_factory=list)  # the source's MACs (never reused)
    ready_marker: str = ""  # clones are ready once this is on their serial console


@dataclass(frozen=True)
class CloneRecord:
    """One clone of a template (made, being made, or being removed)."""

    uuid: str
    name: str
    template: str
    host: str
    created_at: float
    pool: str = ""
    overlays: list[str] = field(default_factory=list)
    warm: str = ""  # its pool member's initial ``warm`` ("booting", "cloning")
    intent: str = ""  # the id of its clone intent (made before it is sent)


def _decoded(cls: type[R], key: str, raw: bytes) -> R:
    try:
        return decode(cls, key, raw)
    except DecodeError as exc:
        raise CorruptRecord(str(exc)) from None


def get_template(store: Store, keys: Keys, name: str) -> Template:
    item = store.get(keys.template(name))
    if item is None:
        raise NotFound(f"unknown template {name!r}")
    return _decoded(Template, item.key, item.value)


def list_templates(store: Store, keys: Keys) -> tuple[list[Template], list[DecodeError]]:
    """Every template (sorted by name) and the records that do not decode."""
    found, errors = [], []
    for item in store.list(keys.templates)[0]:
        try:
            found.append(decode(Template, item.key, item.value))
        except DecodeError as exc:
            errors.append(exc)
    return sorted(found, key=lambda t: t.name), errors


def create_template(store: Store, keys: Keys, template: Template) -> None:
    """Write a new template record; ``Conflict`` when the name is taken."""
    key = keys.template(template.name)
    if not store.txn([Compare(key, "create", 0)], [Put(key, encode(template))]):
        raise Conflict(f"template {template.name!r} already exists")


def delete_template(store: Store, keys: Keys, name: str) -> None:
    store.delete(keys.template(name))


def clones_of(store: Store, keys: Keys, template: str | None = None) -> list[CloneRecord]:
    """Clone records of ``template`` (every template's when None); corrupt ones skipped."""
    prefix = keys.template_clones(template) if template is not None else keys.clones
    found = []
    for item in store.list(prefix)[0]:
        try:
            found.append(decode(CloneRecord, item.key, item.value))
        except DecodeError:
            continue
    return sorted(found, key=lambda c: c.name)


def find_clone(store: Store, keys: Keys, uuid: str) -> CloneRecord | None:
    """The clone record of guest ``uuid``: one read per template, not per clone."""
    for item in store.list(keys.templates)[0]:
        found = store.get(keys.clone(item.key.removeprefix(keys.templates), uuid))
        if found is not None:
            try:
                return decode(CloneRecord, found.key, found.value)
            except DecodeError:
                return None
    return None


def put_clone(store: Store, keys: Keys, clone: CloneRecord) -> None:
    """The clone record, and its pool membership when it belongs to a pool."""
    store.put(keys.clone(clone.template, clone.uuid), encode(clone))
    if clone.pool:
        store.put(keys.pool_member(clone.pool, clone.uuid), member_json(clone))


def forget_clone(store: Store, keys: Keys, template: str, uuid: str, pool: str = "", *,
                 settings: bool = True) -> None:
    """Remove a clone's records in one transaction (idempotent): its clone record, its
    pool membership (``pool``) and its guest settings (``settings/<uuid>``: a warm
    worker's desired state, an operator's HA choice). ``settings=False`` for a host's
    agent, which may read settings but not write them (the caller that asked for the
    removal forgets them when it sees it done)."""
    gone = [keys.clone(template, uuid), *([keys.pool_member(pool, uuid)] if pool else []),
            *([keys.guest_settings(uuid)] if settings else [])]
    store.txn([], [Delete(key) for key in gone])


def member_json(clone: CloneRecord) -> bytes:
    """The pool member value: ``{"v":1,"host","name","template","created_at"}`` (and
    ``"warm"`` with the clone intent's id, ``"intent"``, for one still being made or a
    warm worker)."""
    extra = {"warm": clone.warm, "intent": clone.intent} if clone.warm else {}
    return dump_json({"host": clone.host, "name": clone.name, "template": clone.template,
                      "created_at": clone.created_at, **extra})


def pools_using(store: Store, keys: Keys, template: str) -> list[str]:
    """Pools whose spec names ``template`` (specs that do not parse are ignored)."""
    found = []
    for item in store.list(keys.pools)[0]:
        if not item.key.endswith("/spec"):
            continue
        try:
            spec = json.loads(item.value)
        except ValueError:
            continue
        if isinstance(spec, dict) and spec.get("template") == template:
            found.append(item.key[len(keys.pools):-len("/spec")])
    return sorted(found)
