"""``gridtool guest list|show``: guests (libvirt domains) across the fleet."""

from __future__ import annotations

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import emit_json, json_option, mib, styled_state, table, warn
from gridtool.registry.model import GUEST_STATES


def _views(app: AppContext) -> tuple[list[dict], list]:
    from gridtool.registry.fleet import guest_view

    hosts, host_errors = app.registry.list_hosts()
    live = frozenset(h.name for h in hosts)
    guests, guest_errors = app.registry.list_guests()
    return [guest_view(g, live) for g in guests], host_errors + guest_errors


@click.command("list")
@click.option("--host", "host_name", metavar="HOST", help="Only guests on this host.")
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
              [(v["name"], v["host"], _state_text(v), v["vcpus"], mib(v["memory_mib"]),
                ",".join(d["volume"] for d in v["disks"] if d["shared"]) or "-", v["uuid"])
               for v in views])
    for err in errors:
        warn(str(err))


def _state_text(view: dict) -> str:
    if view["state"] == "unknown" and view["reported_state"] != "unknown":
        return styled_state("unknown") + f" (host lost; last {view['reported_state']})"
    return styled_state(view["state"])


@click.command("show")
@click.argument("name_or_uuid")
@json_option
@pass_app
def show_guest(app: AppContext, name_or_uuid: str, as_json: bool) -> None:
    """Show a guest by name or UUID (every host that reports it).

    \b
    Example:
      gridtool guest show hv1-vm1
    """
    from gridtool.registry.fleet import guest_view

    hosts, _ = app.registry.list_hosts()
    live = frozenset(h.name for h in hosts)
    views = [guest_view(g, live) for g in app.registry.find_guest(name_or_uuid)]
    if as_json:
        emit_json(guests=views)
        return
    for view in views:
        rows = [(k, _field(k, v)) for k, v in view.items() if k != "disks"]
        table(f"guest {view['name']} on {view['host']}", ["FIELD", "VALUE"], rows)
        table("disks", ["TARGET", "SOURCE", "TYPE", "SHARED", "VOLUME"],
              [(d["target"], d["source"], d["kind"], "yes" if d["shared"] else "no",
                d["volume"] or "-") for d in view["disks"]])
    if len(views) > 1:
        warn(f"guest {name_or_uuid!r} is defined on {len(views)} hosts")


def _field(name: str, value: object) -> str:
    if name == "memory_mib" and isinstance(value, int):
        return mib(value)
    if name == "state":
        return styled_state(str(value))
    return str(value)
