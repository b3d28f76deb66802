"""``gridtool guest place|create|migrate``: where a guest goes, through the allocator."""

from __future__ import annotations

import re
import time
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gridtool.cli.common.complete import GUESTS, HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.intents import intent_doc, run_intent
from gridtool.cli.common.migration import BANDWIDTH, SHUTDOWN, MigrationProgress, migrator_for
from gridtool.cli.common.output import emit_json, json_option
from gridtool.cli.common.verdicts import (
    fleet_of,
    needs_text,
    no_host_reason,
    print_verdicts,
    verdict_rows,
    why_not,
)
from gridtool.errors import Conflict, NotFound, OperationFailed, UsageError

if TYPE_CHECKING:
    from gridtool.placement.shell import FleetView
    from gridtool.registry.model import GuestRecord


_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@click.command("place")
@click.argument("name", shell_complete=GUESTS)
@click.option("--dry-run", is_flag=True,
              help="Explain only (the only mode: nothing is started or moved).")
@json_option
@pass_app
def place_guest(app: AppContext, name: str, dry_run: bool, as_json: bool) -> None:
    """Explain where a guest would go: every host with its verdict and score.

    A running guest is judged as if it had left its host (shown as 'current'): the
    chosen host is where 'guest migrate --auto' moves it. For a stopped guest, it is
    where it would start. Filters: down, draining, memory, cpu, labels, anti-affinity,
    storage; the highest score (least loaded) wins.

    \b
    Example:
      gridtool guest place web1 --dry-run
    """
    from gridtool.placement.shell import placement_for
    from gridtool.registry.model import ACTIVE_STATES

    fleet = fleet_of(app)
    records = app.registry.find_guest(name)
    active = [r for r in records if r.state in ACTIVE_STATES and r.host in fleet.records]
    rec = active[0] if active else records[0]
    needs = fleet.needs(rec)
    placement, current = placement_for(fleet, rec, needs)
    rows = verdict_rows(placement, current)
    why = "" if placement.host else why_not(rows, current)
    if as_json:
        emit_json(guest={"name": rec.name, "uuid": rec.uuid, "memory_mib": needs.memory_mib,
                         "vcpus": needs.vcpus, "storage": sorted(needs.storage),
                         "anti_affinity": needs.anti_affinity},
                  current=current, chosen=placement.host, reason=why, hosts=rows)
        return
    print_verdicts(f"placing {rec.name} ({needs_text(needs)})", rows)
    if placement.host:
        click.echo(f"{rec.name} would go to {placement.host}", err=True)
    else:
        click.echo(f"no host can take {rec.name}: {why}", err=True)


# --------------------------------------------------------------------------- guest create


def _with_uuid(xml: str, name: str) -> tuple[str, str]:
    """The XML with a ``<uuid>`` (one is added after ``<name>`` when it has none)."""
    new = str(uuidlib.uuid4())
    pattern = re.compile(r"(<name>\s*" + re.escape(name) + r"\s*</name>)")
    if not pattern.search(xml):
        raise UsageError(f"cannot add a <uuid> to the domain XML of {name}: give it one")
    return pattern.sub(lambda m: f"{m.group(1)}<uuid>{new}</uuid>", xml, count=1), new


def _duplicates(app: AppContext, name: str, uuid: str) -> None:
    for g in app.registry.list_guests()[0]:
        if g.uuid == uuid:
            raise Conflict(f"a guest with UUID {uuid} already exists ({g.name} on {g.host})")
        if g.name == name:
            raise Conflict(f"a guest named {name} already exists (on {g.host}, UUID {g.uuid})")
    if app.store.get(app.config.keys.domain(uuid)) is not None:
        raise Conflict(f"the registry already keeps a definition with UUID {uuid}")


def _await_record(app: AppContext, host: str, uuid: str, timeout: float) -> None:
    """Wait (briefly) until the host's agent has recorded the new guest, so that the next
    command finds it."""
    key = app.config.keys.guest(host, uuid)
    deadline = time.monotonic() + min(timeout, 10.0)
    while app.store.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)


@click.command("create")
@click.option("--xml", "xml_file", required=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The libvirt domain XML of the new guest.")
@click.option("--on", "on_host", shell_complete=HOSTS, metavar="HOST",
              help="Define it on HOST (which must pass the placement filters).")
@click.option("--auto", is_flag=True, help="Let placement choose the host (the default).")
@click.option("--start", "start_it", is_flag=True, help="Start it once it is defined.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for each step.")
@json_option
@pass_app
def create_guest(app: AppContext, xml_file: Path, on_host: str | None, auto: bool,
                 start_it: bool, timeout: float, as_json: bool) -> None:
    """Define a new guest on the best host (or --on HOST), optionally start it.

    Refused (exit 7) when a guest with its name or UUID exists anywhere in the registry,
    or when no host passes the placement filters (the error says why for each host);
    nothing is defined anywhere then. Malformed XML exits 2, and so does a disk on
    shared storage whose LUN cannot be identified (no fence could cover it).

    \b
    Example:
      gridtool guest create --xml web3.xml --auto --start
    """
    from dataclasses import replace

    from gridtool.domains.xml import DomainXMLError, parse_domain
    from gridtool.placement.rules import place
    from gridtool.placement.shell import guest_needs
    from gridtool.registry import settings as settings_mod
    from gridtool.registry.model import GuestRecord

    if on_host and auto:
        raise UsageError("give --on HOST or --auto, not both")
    try:
        xml = xml_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {xml_file}: {exc}") from None
    try:
        spec = parse_domain(xml, app.config.shared_rules)
    except DomainXMLError as exc:
        raise UsageError(f"{xml_file}: {exc}") from None
    if spec.unidentified:  # it could never start: a fence cannot cover that disk
        raise UsageError(f"{xml_file}: shared {spec.unidentified[0]}")
    if spec.uuid is None:
        xml, guest_uuid = _with_uuid(xml, spec.name)
    else:
        guest_uuid = spec.uuid.lower()
        if not _UUID_RE.match(guest_uuid):
            raise UsageError(f"{xml_file}: <uuid> {spec.uuid!r} is not a UUID")
    _duplicates(app, spec.name, guest_uuid)
    fleet = fleet_of(app)
    rec = GuestRecord(uuid=guest_uuid, name=spec.name, host="", state="shutoff",
                      vcpus=spec.vcpus, memory_mib=spec.memory_mib, updated_at=time.time(),
                      disks=spec.disks)
    needs = guest_needs(rec, None, fleet.declared)
    hosts = fleet.hosts
    if on_host:
        hosts = tuple(h for h in fleet.hosts if h.name == on_host)
        if not hosts:
            raise NotFound(f"unknown host {on_host!r} (not in the registry: no live agent)")
    placement = place(needs, hosts)
    if placement.host is None:
        raise Conflict(no_host_reason(spec.name, needs, placement))
    rec = replace(rec, host=placement.host)
    intents = [run_intent(app, rec, "define", True, timeout, {"xml": xml}, quiet=as_json)]
    _await_record(app, rec.host, rec.uuid, timeout)
    if start_it:
        settings_mod.update(app.store, app.config.keys, rec.uuid, rec.name,
                            lambda s: replace(s, desired="running", error=""))
        try:
            intents.append(run_intent(app, rec, "start", True, timeout, quiet=as_json))
        except OperationFailed as exc:
            raise OperationFailed(f"{exc} ({spec.name} stays defined on {rec.host}, "
                                  "not running)") from None
    if as_json:
        emit_json(guest={"name": spec.name, "uuid": guest_uuid, "host": rec.host,
                         "started": start_it},
                  intents=[intent_doc(i) for i in intents],
                  placement={"chosen": placement.host, "hosts": verdict_rows(placement, None)})
    else:
        click.echo(f"{spec.name} ({guest_uuid}) created on {rec.host}"
                   + (" and started" if start_it else ""), err=True)


# --------------------------------------------------------------------------- guest migrate


def _target(app: AppContext, fleet: FleetView, rec: GuestRecord, to_host: str | None) -> str:
    """The destination: --to HOST (checked against the filters) or the placement choice."""
    from gridtool.placement.shell import placement_for

    needs = fleet.needs(rec)
    placement, current = placement_for(fleet, rec, needs)
    rows = verdict_rows(placement, current)
    if to_host is None:
        if placement.host is None:
            raise Conflict(no_host_reason(rec.name, needs, placement, current))
        return placement.host
    if to_host not in fleet.records:
        raise NotFound(f"unknown host {to_host!r} (not in the registry: no live agent)")
    if to_host == rec.host:
        raise Conflict(f"{rec.name} is already on {to_host}")
    (row,) = [r for r in rows if r["host"] == to_host]
    if row["failures"]:
        raise Conflict(f"{to_host} cannot take {rec.name}: "
                       + "; ".join(f"{f['code']} ({f['reason']})" for f in row["failures"]))
    return to_host


@click.command("migrate")
@click.argument("name", shell_complete=GUESTS)
@click.option("--to", "to_host", shell_complete=HOSTS, metavar="HOST", help="The destination host.")
@click.option("--auto", is_flag=True, help="Let placement choose the destination.")
@click.option("--live", "mode", flag_value="live",
              help="Live: the guest runs while its memory is sent (both hosts QEMU/KVM).")
@click.option("--paused", "mode", flag_value="paused",
              help="With its memory, the guest suspended while it is sent (both hosts Xen: "
                   "libxl's non-live migration).")
@click.option("--cold", "mode", flag_value="cold",
              help="Stop, hand the fences over, start on the destination. Default: live "
                   "where possible, else paused, else cold.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Also follow the source's final undefine (--no-wait: return once the "
                   "guest runs on the destination).")
@SHUTDOWN
@BANDWIDTH
@json_option
@pass_app
def migrate_guest(app: AppContext, name: str, to_host: str | None, auto: bool,
                  mode: str | None, wait: bool, timeout: float, bandwidth: int | None,
                  as_json: bool) -> None:
    """Move a guest to another host; a fenced guest's fences move with it.

    Live (both hosts QEMU/KVM): the destination is told to expect the guest, the source's
    agent migrates it peer-to-peer and hands every fence to the destination in one
    transaction at the switchover; the bar shows the memory sent. Paused (both hosts Xen:
    libxl cannot live-migrate there): the same, the guest suspended while its memory is
    sent, it resumes on the destination once the fences are there. Cold (the test driver,
    or --cold): define on the destination, stop on the source (whose agent then hands
    every fence to the destination in one transaction), start on the destination (the
    fencing token grows), undefine on the source. A failure leaves the guest running on
    the source with its fence, or stopped with its fences released or handed back, never
    running twice; the command says which and exits 8.

    \b
    Example:
      gridtool guest migrate web1 --to hv2 --live
      gridtool guest migrate pv1 --to hv2 --paused
      gridtool guest migrate web1 --to hv2 --cold
      gridtool guest migrate web1 --auto
    """
    from gridtool.placement.shell import choose_mode, current_record

    if bool(to_host) == auto:
        raise UsageError("say where: --to HOST or --auto")
    fleet = fleet_of(app)
    rec = current_record(app.registry.find_guest(name), fleet.records)
    target = _target(app, fleet, rec, to_host)
    mode = choose_mode(fleet.records[rec.host], fleet.records[target], mode)
    with MigrationProgress() as progress:
        progress.begin(rec.name, rec.host, target)
        result = migrator_for(app, timeout, progress, bandwidth).migrate(
            rec, target, mode, follow_cleanup=wait)
        progress.done(result)
    if as_json:
        emit_json(migration=result.to_dict())
    if not result.ok:
        raise OperationFailed(f"migrating {rec.name} to {target} failed; it is "
                              f"{result.state.value}: {result.message}")
