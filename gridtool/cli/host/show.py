"""``gridtool host list|show``: the hypervisor hosts in the registry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import (
    age,
    emit_json,
    json_option,
    mib,
    section,
    table,
    text,
    warn,
)
from gridtool.registry.model import DecodeError, as_dict

if TYPE_CHECKING:
    from gridtool.cli.host.facts import HostData


@click.command("list")
@json_option
@pass_app
def list_hosts(app: AppContext, as_json: bool) -> None:
    """List live hosts (a host whose agent died vanishes when its lease expires). GUESTS
    and RUNNING are the counts its agent last wrote into its record (after each burst
    of guest changes; '-' from an agent that predates them): no guest record is read.

    \b
    Example:
      gridtool host list --json | jq '.hosts[].name'
    """
    from gridtool.registry.hostconf import draining_hosts

    records, errors = app.reads.list_hosts()
    draining = draining_hosts(app.reader, app.config.keys)
    records.sort(key=lambda h: h.name)
    if as_json:
        emit_json(hosts=[{**as_dict(h), "draining": h.name in draining} for h in records],
                  errors=[{"key": e.key, "error": e.reason} for e in errors])
    else:
        now = time.time()
        table(None, ["NAME", "STATE", "HYPERVISOR", "CPUS", "MEMORY", "FREE", "GUESTS",
                     "RUNNING", "LABELS", "AGENT", "REPORTED"],
              [(h.name, "draining" if h.name in draining else "up", h.hypervisor, h.cpus,
                mib(h.memory_mib), mib(h.free_memory_mib), text(h.guests),
                text(h.running_guests), ",".join(h.labels) or "-", h.agent_version,
                age(h.reported_at, now)) for h in records], markup=False)
    for err in errors:
        warn(str(err))


@click.command("show")
@click.argument("name", shell_complete=HOSTS)
@json_option
@pass_app
def show_host(app: AppContext, name: str, as_json: bool) -> None:
    """Show one host: up, draining or lost; its lease (TTL, last keepalive); whether a
    working watchdog or fencing protects its HA guests; its settings ('host set'); the
    fences it holds; its guests (HA, pinned); its agent and resources. A lost host (its
    lease expired) is shown while guest records or fences still name it.

    \b
    Example:
      gridtool host show hv1
      gridtool host show hv1 --json | jq .lease.remaining_ttl
    """
    from gridtool.cli.host.facts import (
        fence_rows,
        guest_rows,
        host_doc,
        host_facts,
        settings_rows,
    )
    from gridtool.registry.hostconf import HostConf

    data, errors = _gather(app, name)
    now = time.time()
    if as_json:
        emit_json(**host_doc(data, now))
    else:
        table(f"host {name}", ["FIELD", "VALUE"], host_facts(data, now))
        table("settings", ["SETTING", "VALUE"],
              settings_rows(data.conf or HostConf(name), data.fence_agent))
        if data.fences:
            table("fences held", ["VOLUME", "GUEST", "TOKEN", "KIND", "SINCE"],
                  fence_rows(data, now))
        section("guests", ["NAME", "STATE", "KIND", "VCPUS", "MEMORY", "UUID"],
                guest_rows(data))
    for err in errors:
        warn(str(err))


def _gather(app: AppContext, name: str) -> tuple[HostData, list[DecodeError]]:
    """Everything ``host show`` tells about ``name`` (a few reads); NotFound (exit 3)
    when neither a record, a guest record nor a fence names it."""
    from gridtool.cli.common.fences import read_fence_rows
    from gridtool.cli.host.facts import HostData
    from gridtool.errors import CorruptRecord
    from gridtool.ha.kinds import guest_kind
    from gridtool.registry import fenceagents, hostconf, settings
    from gridtool.registry.fleet import unknown_host

    keys = app.config.keys
    try:
        found = app.registry.find_host(name)
    except DecodeError as exc:
        raise CorruptRecord(str(exc)) from None
    guests, errors = app.registry.guests_of(name)
    fences = [f for f in read_fence_rows(app.store, keys)[0] if f["holder"] == name]
    if found is None and not guests and not fences:
        raise unknown_host(name)
    record, lease_id = found or (None, 0)
    fence_agent = fenceagents.read(app.store, keys, name)
    if record is not None:  # a fence agent protects it too
        record = fenceagents.with_fencing(record, {name} if fence_agent else set())
    ha = {u for u, s in settings.read_all(app.store, keys).items() if s.ha}
    return HostData(
        name, record, lease_id,
        lease=app.store.lease_info(lease_id) if lease_id else None,
        guests=sorted(guests.values(), key=lambda g: g.name),
        kinds={u: guest_kind(g.fenced, u in ha).value for u, g in guests.items()},
        fences=fences, conf=hostconf.read(app.store, keys, name),
        dead=_dead_mark(app, name, errors), fence_agent=fence_agent), errors


def _dead_mark(app: AppContext, name: str, errors: list[DecodeError]) -> dict | None:
    """The operator's confirm-dead mark of ``name`` (``by``, ``at``), if any."""
    from gridtool.registry.model import load_json

    item = app.store.get(app.config.keys.dead_host(name))
    if item is None:
        return None
    try:
        return load_json(item.key, item.value)
    except DecodeError as exc:
        errors.append(exc)
        return None
