"""``gridtool host list|show``: the hypervisor hosts in the registry."""

from __future__ import annotations

import time

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import age, emit_json, json_option, mib, table, warn
from gridtool.registry.model import as_dict


def _running_counts(app: AppContext) -> dict[str, int]:
    """Running guests per host, from the raw records (a count needs no full decode;
    records that do not decode are reported by ``guest list``)."""
    import json

    items, _ = app.store.list(app.config.keys.guests)
    counts: dict[str, int] = {}
    for item in items:
        try:
            data = json.loads(item.value)
            if data.get("state") == "running" and isinstance(data.get("host"), str):
                counts[data["host"]] = counts.get(data["host"], 0) + 1
        except (ValueError, AttributeError, RecursionError):
            continue
    return counts


@click.command("list")
@json_option
@pass_app
def list_hosts(app: AppContext, as_json: bool) -> None:
    """List live hosts (a host whose agent died vanishes when its lease expires).

    \b
    Example:
      gridtool host list --json | jq '.hosts[].name'
    """
    from gridtool.registry.hostconf import draining_hosts

    records, errors = app.registry.list_hosts()
    running = _running_counts(app)
    draining = draining_hosts(app.store, app.config.keys)
    records.sort(key=lambda h: h.name)
    if as_json:
        emit_json(hosts=[{**as_dict(h), "running_guests": running.get(h.name, 0),
                          "draining": h.name in draining} for h in records],
                  errors=[{"key": e.key, "error": e.reason} for e in errors])
    else:
        now = time.time()
        table(None, ["NAME", "STATE", "HYPERVISOR", "CPUS", "MEMORY", "FREE", "RUNNING",
                     "LABELS", "AGENT", "REPORTED"],
              [(h.name, "draining" if h.name in draining else "up", h.hypervisor, h.cpus,
                mib(h.memory_mib), mib(h.free_memory_mib), running.get(h.name, 0),
                ",".join(h.labels) or "-", h.agent_version, age(h.reported_at, now))
               for h in records])
    for err in errors:
        warn(str(err))


@click.command("show")
@click.argument("name")
@json_option
@pass_app
def show_host(app: AppContext, name: str, as_json: bool) -> None:
    """Show one host and its guests.

    \b
    Example:
      gridtool host show hv1
    """
    from gridtool.errors import CorruptRecord
    from gridtool.registry.model import DecodeError

    try:
        record = app.registry.get_host(name)
    except DecodeError as exc:
        raise CorruptRecord(str(exc)) from None
    guests, errors = app.registry.guests_of(name)
    if as_json:
        emit_json(host=as_dict(record), guests=[as_dict(g) for g in guests.values()])
        return
    rows = [(k, v) for k, v in as_dict(record).items()]
    rows = [(k, ", ".join(v) if isinstance(v, tuple | list) else v) for k, v in rows]
    table(f"host {name}", ["FIELD", "VALUE"], rows)
    table("guests", ["NAME", "UUID", "STATE", "VCPUS", "MEMORY"],
          [(g.name, g.uuid, g.state, g.vcpus, mib(g.memory_mib))
           for g in sorted(guests.values(), key=lambda g: g.name)])
    for err in errors:
        warn(str(err))
