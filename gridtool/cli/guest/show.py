"""``gridtool guest list|show``: guests (libvirt domains) across the fleet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from gridtool.cli.common.complete import GUESTS, HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import (
    emit_json,
    guest_state,
    json_option,
    mib,
    table,
    warn,
)
from gridtool.registry.model import GUEST_STATES, DecodeError

if TYPE_CHECKING:
    from gridtool.cli.guest.facts import GuestData
    from gridtool.registry.records import GuestSettings


def _views(app: AppContext) -> tuple[list[dict], list]:
    from gridtool.registry.fleet import guest_view

    hosts, host_errors = app.registry.list_hosts()
    live = frozenset(h.name for h in hosts)
    guests, guest_errors = app.registry.list_guests()
    return [guest_view(g, live) for g in guests], host_errors + guest_errors


@click.command("list")
@click.option("--host", "host_name", shell_complete=HOSTS, metavar="HOST",
              help="Only guests on this host.")
@click.option("--state", type=click.Choice(GUEST_STATES), help="Only guests in this state.")
@json_option
@pass_app
def list_guests(app: AppContext, host_name: str | None, state: str | None,
                as_json: bool) -> None:
    """List guests; a guest whose host lost its lease shows as 'unknown'.

    \b
    Example:
      gridtool guest list --state running --json
    """
    views, errors = _views(app)
    views = [v for v in views if (not host_name or v["host"] == host_name)
             and (not state or v["state"] == state)]
    views.sort(key=lambda v: (v["name"], v["host"]))
    if as_json:
        emit_json(guests=views, errors=[{"key": e.key, "error": e.reason} for e in errors])
    else:
        table(None, ["NAME", "HOST", "STATE", "VCPUS", "MEMORY", "SHARED VOLUMES", "UUID"],
              [(v["name"], v["host"], guest_state(v["state"], v["reported_state"]),
                v["vcpus"], mib(v["memory_mib"]),
                ",".join(d["volume"] for d in v["disks"] if d["shared"]) or "-", v["uuid"])
               for v in views])
    for err in errors:
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
    manager says about it (a few range reads); NotFound (exit 3) for an unknown guest."""
    from gridtool.cli.common.fences import read_fence_rows
    from gridtool.cli.guest.facts import GuestData
    from gridtool.clone.templates import clones_of
    from gridtool.registry.fleet import guest_view

    keys = app.config.keys
    hosts, _ = app.registry.list_hosts()
    live = frozenset(h.name for h in hosts)
    records = app.registry.find_guest(name_or_uuid)
    fences, fence_errors = read_fence_rows(app.store, keys)
    clones = {c.uuid: c for c in clones_of(app.store, keys)}
    blocked = _blocked(app)
    errors: list[str] = []
    settings = {r.uuid: _settings(app, r.uuid, errors) for r in records}
    found = []
    for rec in records:
        clone = clones.get(rec.uuid)
        pool = clone.pool if clone and clone.pool and app.store.get(
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
        return settings.read(app.store, app.config.keys, uuid)
    except DecodeError as exc:
        errors.append(str(exc))
        return None


def _blocked(app: AppContext) -> dict[str, str]:
    """The leading manager's ``blocked`` map (guest name or uuid -> why it waits); empty
    when no manager leads or its status does not decode."""
    from gridtool.registry.records import ManagerStatus, decode

    item = app.store.get(app.config.keys.manager_status)
    try:
        return decode(ManagerStatus, item.key, item.value).blocked if item else {}
    except DecodeError:
        return {}
