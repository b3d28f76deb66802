"""``gridtool guest list|show``: guests (libvirt domains) across the fleet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from gridtool.cli.common.complete import GUESTS, HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import (
    emit_json,
    guest_state,
    json_option,
    mib,
    stream_json,
    table,
    warn,
)
from gridtool.cli.guest.listing import TABLE_LIMIT, Paging
from gridtool.registry.model import GUEST_STATES, DecodeError, guest_data

if TYPE_CHECKING:
    from gridtool.cli.guest.facts import GuestData
    from gridtool.registry.keys import Keys
    from gridtool.registry.records import GuestSettings
    from gridtool.registry.store import Store


def _live_hosts(store: Store, keys: Keys, host_name: str | None) -> frozenset[str]:
    """The hosts with a record (a live lease): of ``host_name`` alone when given (one
    read), else every host's key (no record decoded)."""
    if host_name:
        return frozenset({host_name} if store.get(keys.host(host_name)) else ())
    return frozenset(i.key.removeprefix(keys.hosts) for i in store.list(keys.hosts)[0])


def _pool_members(store: Store, keys: Keys, pool: str) -> frozenset[str]:
    """The uuids of ``pool``'s members; NotFound (exit 3) for an unknown pool."""
    from gridtool.errors import NotFound

    if store.get(keys.pool(pool)) is None:
        raise NotFound(f"unknown pool {pool!r}")
    prefix = keys.pool_members(pool)
    return frozenset(i.key.removeprefix(prefix) for i in store.list(prefix)[0])


@click.command("list")
@click.option("--host", "host_name", shell_complete=HOSTS, metavar="HOST",
              help="Only guests on this host (reads that host's records alone).")
@click.option("--state", type=click.Choice(GUEST_STATES), help="Only guests in this state.")
@click.option("--pool", metavar="POOL", help="Only members of this pool.")
@click.option("--limit", type=click.IntRange(min=0), metavar="N",
              help=f"Show N guests (0: all); default {TABLE_LIMIT} in the table, all with "
                   "--json.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="P", help="Show the P-th run of --limit guests.")
@json_option
@pass_app
def list_guests(app: AppContext, host_name: str | None, state: str | None, pool: str | None,
                limit: int | None, page: int, as_json: bool) -> None:
    """List guests by host, then UUID (the registry's order, read a page at a time); a
    guest whose host lost its lease shows as 'unknown'. The table shows 100 guests and
    says how many more match; --json streams every match (or --limit of them).

    \b
    Example:
      gridtool guest list --state running --json
      gridtool guest list --host hv1
      gridtool guest list --limit 50 --page 3
    """
    from gridtool.registry.fleet import decoded, listed_guest, view_of

    # one host's guests: a few reads (over HTTP); the fleet's: gRPC (etcd serves 100,000
    # records as protobuf for a tenth of the CPU it spends on them as JSON)
    registry = app.reads if host_name else app.registry
    keys = registry.keys
    live = _live_hosts(registry.store, keys, host_name)
    members = _pool_members(registry.store, keys, pool) if pool else None
    limit = (0 if as_json else TABLE_LIMIT) if limit is None else limit

    def keep(view: dict[str, Any]) -> bool:
        return (members is None or view["uuid"] in members) and (not state
                                                                 or view["state"] == state)

    items = registry.guest_items(host_name)
    paging: Paging[Any] = Paging(limit, page)
    if as_json:  # each record's view and its JSON: a plain record is not encoded again
        rows = paging.select(decoded(items, lambda k, v: listed_guest(k, v, live)),
                             lambda row: keep(row[0]))
        stream_json("guests", (raw for _, raw in rows), lambda: {
            "errors": [{"key": e.key, "error": e.reason} for e in paging.errors],
            "matched": paging.matched, "more": paging.more})
    else:
        views = (view_of(data, live) if isinstance(data, dict) else data
                 for data in decoded(items, guest_data))
        table(None, ["NAME", "HOST", "STATE", "VCPUS", "MEMORY", "SHARED VOLUMES", "UUID"],
              [(v["name"], v["host"], guest_state(v["state"], v["reported_state"]),
                v["vcpus"], mib(v["memory_mib"]),
                ",".join(d["volume"] for d in v["disks"] if d["shared"]) or "-", v["uuid"])
               for v in paging.select(views, keep)])
        if (footer := paging.footer()) is not None:
            click.echo(footer, err=True)
    for err in paging.errors:
        warn(str(err))


@click.command("show")
@click.argument("name_or_uuid", shell_complete=GUESTS)
@json_option
@pass_app
def show_guest(app: AppContext, name_or_uuid: str, as_json: bool) -> None:
    """Show a guest by name or UUID, on every host that reports it: its state, HA policy
    and desired state, who holds each of its fences (and the token), its template and
    pool, and why the HA manager waits, if it does.

    \b
    Example:
      gridtool guest show hv1-vm1
      gridtool guest show hv1-vm1 --json | jq '.guests[].fences'
    """
    from gridtool.cli.guest.facts import disk_rows, fence_rows, guest_doc, guest_facts

    found, errors = _gather(app, name_or_uuid)
    if as_json:
        emit_json(guests=[guest_doc(data) for data in found])
    else:
        now = time.time()
        for data in found:
            table(f"guest {data.view['name']} on {data.view['host']}", ["FIELD", "VALUE"],
                  guest_facts(data, now))
            if data.volumes:
                table("fences", ["VOLUME", "HOLDER", "TOKEN", "KIND", "SINCE"],
                      fence_rows(data, now))
            table("disks", ["TARGET", "SOURCE", "TYPE", "SHARED", "VOLUME"], disk_rows(data))
    for err in errors:
        warn(err)
    if len(found) > 1:
        warn(f"guest {name_or_uuid!r} is defined on {len(found)} hosts")


def _gather(app: AppContext, name_or_uuid: str) -> tuple[list[GuestData], list[str]]:
    """Each record of the guest with its settings, fences, template, pool and what the
    manager says about it (reads of this guest's keys, whatever the fleet's size);
    NotFound (exit 3) for an unknown guest."""
    from gridtool.cli.common.fences import read_fence_rows
    from gridtool.cli.guest.facts import GuestData
    from gridtool.clone.templates import find_clone
    from gridtool.registry.fleet import guest_view

    keys = app.config.keys
    records = app.reads.find_guest(name_or_uuid)
    live = frozenset(h for h in {r.host for r in records}
                     if app.reader.get(keys.host(h)) is not None)
    fences, fence_errors = read_fence_rows(app.reader, keys,
                                           [v for r in records for v in r.volumes])
    blocked = _blocked(app)
    errors: list[str] = []
    settings = {r.uuid: _settings(app, r.uuid, errors) for r in records}
    found = []
    for rec in records:
        clone = find_clone(app.reader, keys, rec.uuid)
        pool = clone.pool if clone and clone.pool and app.reader.get(
            keys.pool_member(clone.pool, rec.uuid)) else None
        found.append(GuestData(
            guest_view(rec, live), settings[rec.uuid],
            fences=[f for f in fences if f["volume"] in rec.volumes],
            template=clone.template if clone else None, pool=pool,
            waiting=blocked.get(rec.uuid) or blocked.get(rec.name)))
        errors += [fence_errors[v] for v in rec.volumes if v in fence_errors]
    return found, errors


def _settings(app: AppContext, uuid: str, errors: list[str]) -> GuestSettings | None:
    from gridtool.registry import settings

    try:
        return settings.read(app.reader, app.config.keys, uuid)
    except DecodeError as exc:
        errors.append(str(exc))
        return None


def _blocked(app: AppContext) -> dict[str, str]:
    """The leading manager's ``blocked`` map (guest name or uuid -> why it waits); empty
    when no manager leads or its status does not decode."""
    from gridtool.registry.records import ManagerStatus, decode

    item = app.reader.get(app.config.keys.manager_status)
    try:
        return decode(ManagerStatus, item.key, item.value).blocked if item else {}
    except DecodeError:
        return {}
