"""``gridtool guest place|create|migrate``, ``gridtool host drain|undrain`` and
``gridtool rebalance``: placement and cold migration with fence handover."""

from __future__ import annotations

import re
import time
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gridtool.cli.context import AppContext, pass_app
from gridtool.cli.output import console, emit_json, json_option, mib, table
from gridtool.errors import Conflict, GridtoolError, NotFound, OperationFailed, UsageError

if TYPE_CHECKING:
    from gridtool.placement.rules import GuestNeeds, HostVerdict, Placement
    from gridtool.placement.shell import FleetView, MigrationResult, Migrator, PhaseEvent
    from gridtool.registry.model import GuestRecord

SHUTDOWN = click.option("--timeout", default=60.0, show_default=True,
                        help="Seconds to wait for a clean shutdown before destroying a guest.")


def _fleet(app: AppContext) -> FleetView:
    from gridtool.placement.shell import read_fleet

    return read_fleet(app.store, app.config.keys)


# --------------------------------------------------------------------------- verdicts


def _needs_text(needs: GuestNeeds) -> str:
    parts = [mib(needs.memory_mib), f"{needs.vcpus} vCPU{'s' if needs.vcpus != 1 else ''}"]
    if needs.storage:
        parts.append("storage " + ",".join(sorted(needs.storage)))
    if needs.anti_affinity:
        parts.append(f"anti-affinity {needs.anti_affinity}")
    return ", ".join(parts)


def _verdict_word(v: HostVerdict, chosen: str | None, current: str | None) -> str:
    if v.host == current:
        return "current"
    if v.host == chosen:
        return "chosen"
    if not v.passed:
        return "fails " + ",".join(v.codes)
    return "passes (overflow)" if v.overflow else "passes"


def _rows(placement: Placement, current: str | None) -> list[dict[str, Any]]:
    """One dict per host: its verdict word, score and failed filters."""
    return [{"host": v.host, "verdict": _verdict_word(v, placement.host, current),
             "passed": v.passed and v.host != current, "score": v.score,
             "overflow": v.overflow,
             "failures": [{"code": f.code, "reason": f.reason} for f in v.failures]}
            for v in placement.verdicts]


def _why_not(rows: Sequence[dict[str, Any]], current: str | None) -> str:
    """Every other host and why it cannot take the guest, on one line."""
    reasons = [f"{r['host']}: " + "; ".join(f"{f['code']} ({f['reason']})"
                                           for f in r["failures"])
               for r in rows if r["host"] != current and r["failures"]]
    return "; ".join(reasons) if reasons else "no live host"


def no_host_reason(name: str, needs: GuestNeeds, placement: Placement,
                   current: str | None = None) -> str:
    """Why no host can take guest ``name``: what it needs and why each host fails."""
    return (f"no host can take {name} ({_needs_text(needs)}): "
            f"{_why_not(_rows(placement, current), current)}")


def _print_verdicts(title: str, rows: Sequence[dict[str, Any]]) -> None:
    table(title, ["HOST", "VERDICT", "SCORE", "WHY NOT"],
          [(r["host"], r["verdict"], "-" if r["score"] is None else f"{r['score']:.3f}",
            "; ".join(f"{f['code']}: {f['reason']}" for f in r["failures"]) or "-")
           for r in rows])


# --------------------------------------------------------------------------- progress


class MigrationProgress:
    """Rich progress on stderr: a spinner for the phase under way and one line per finished
    phase; with ``total``, a bar over several migrations."""

    def __init__(self, total: int | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console(stderr=True)
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        self.progress = Progress(*columns, console=self.console, transient=True)
        self.total = total
        self.task: Any = None
        self.label = ""

    def __enter__(self) -> MigrationProgress:
        if self.console.is_terminal:  # elsewhere: only the finished lines, no live display
            self.progress.start()
        self.task = self.progress.add_task("", total=self.total)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.console.is_terminal:
            self.progress.stop()

    def begin(self, name: str, source: str, target: str) -> None:
        self.label = f"{name} {source} -> {target}"
        self.progress.update(self.task, description=f"migrate {self.label}")
        if self.total is not None:
            self.print(f"[bold]{name}[/bold]: {source} -> {target}")

    def event(self, ev: PhaseEvent) -> None:
        from rich.markup import escape

        if ev.finished:
            mark = "[green]ok[/green]  " if ev.state == "done" else "[red]FAIL[/red]"
            self.print(f"  {mark} {ev.phase:<8} {ev.host:<12} {ev.seconds:6.2f}s  "
                       f"{escape(ev.message)}")
        else:
            self.progress.update(self.task, description=f"migrate {self.label}: {ev.phase} "
                                 f"on {ev.host} ({ev.state}) {escape(ev.message)}".rstrip())

    def done(self, result: MigrationResult | None = None, error: str = "") -> None:
        from rich.markup import escape

        if result is not None:
            style = "green" if result.ok else "red"
            self.print(f"  [{style}]{result.state.value}[/{style}] "
                       f"({result.seconds:.2f}s): {escape(result.message)}")
            for warning in result.warnings:
                self.print(f"  [yellow]warning[/yellow]: {escape(warning)}")
        elif error:
            self.print(f"  [red]refused[/red]: {escape(error)}")
        if self.total is not None:
            self.progress.advance(self.task)

    def print(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


def _migrator(app: AppContext, timeout: float, progress: MigrationProgress | None) -> Migrator:
    from gridtool.placement.shell import Migrator

    return Migrator(app.store, app.config.keys, shutdown_timeout=timeout,
                    on_event=progress.event if progress is not None else None)


def _run_moves(app: AppContext, fleet: FleetView, moves: Sequence[Any], timeout: float,
               stop_on_failure: bool) -> list[dict[str, Any]]:
    """Carry out planned moves one after another with progress; one dict per move."""
    from gridtool.placement.shell import choose_mode

    done: list[dict[str, Any]] = []
    with MigrationProgress(total=len(moves)) as progress:
        migrator = _migrator(app, timeout, progress)
        for move in moves:
            progress.begin(move.guest, move.source, move.target)
            entry: dict[str, Any] = {"guest": move.guest, "from": move.source,
                                     "to": move.target}
            try:
                rec = fleet.record(move.source, move.guest)
                mode = choose_mode(fleet.records[move.source], fleet.records[move.target],
                                   None)
                result = migrator.migrate(rec, move.target, mode)
            except GridtoolError as exc:
                progress.done(error=str(exc))
                entry.update(state="refused", ok=False, message=str(exc))
            else:
                progress.done(result)
                entry.update(result.to_dict())
            done.append(entry)
            if stop_on_failure and not entry["ok"]:
                break
    return done


# --------------------------------------------------------------------------- guest place


@click.command("place")
@click.argument("name")
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

    fleet = _fleet(app)
    records = app.registry.find_guest(name)
    active = [r for r in records if r.state in ACTIVE_STATES and r.host in fleet.records]
    rec = active[0] if active else records[0]
    needs = fleet.needs(rec)
    placement, current = placement_for(fleet, rec, needs)
    rows = _rows(placement, current)
    why = "" if placement.host else _why_not(rows, current)
    if as_json:
        emit_json(guest={"name": rec.name, "uuid": rec.uuid, "memory_mib": needs.memory_mib,
                         "vcpus": needs.vcpus, "storage": sorted(needs.storage),
                         "anti_affinity": needs.anti_affinity},
                  current=current, chosen=placement.host, reason=why, hosts=rows)
        return
    _print_verdicts(f"placing {rec.name} ({_needs_text(needs)})", rows)
    if placement.host:
        click.echo(f"{rec.name} would go to {placement.host}", err=True)
    else:
        click.echo(f"no host can take {rec.name}: {why}", err=True)


# --------------------------------------------------------------------------- guest create


_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


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
@click.option("--on", "on_host", metavar="HOST",
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
    nothing is defined anywhere then. Malformed XML exits 2.

    \b
    Example:
      gridtool guest create --xml web3.xml --auto --start
    """
    from dataclasses import replace

    from gridtool.cli.lifecycle import run_intent
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
    if spec.uuid is None:
        xml, guest_uuid = _with_uuid(xml, spec.name)
    else:
        guest_uuid = spec.uuid.lower()
        if not _UUID_RE.match(guest_uuid):
            raise UsageError(f"{xml_file}: <uuid> {spec.uuid!r} is not a UUID")
    _duplicates(app, spec.name, guest_uuid)
    fleet = _fleet(app)
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
    run_intent(app, rec, "define", True, timeout, {"xml": xml})
    _await_record(app, rec.host, rec.uuid, timeout)
    if start_it:
        settings_mod.update(app.store, app.config.keys, rec.uuid, rec.name,
                            lambda s: replace(s, desired="running", error=""))
        try:
            run_intent(app, rec, "start", True, timeout)
        except OperationFailed as exc:
            raise OperationFailed(f"{exc} ({spec.name} stays defined on {rec.host}, "
                                  "not running)") from None
    if as_json:
        emit_json(guest={"name": spec.name, "uuid": guest_uuid, "host": rec.host,
                         "started": start_it},
                  placement={"chosen": placement.host, "hosts": _rows(placement, None)})
    else:
        click.echo(f"{spec.name} ({guest_uuid}) created on {rec.host}"
                   + (" and started" if start_it else ""), err=True)


# --------------------------------------------------------------------------- guest migrate


def _target(app: AppContext, fleet: FleetView, rec: GuestRecord, to_host: str | None) -> str:
    """The destination: --to HOST (checked against the filters) or the placement choice."""
    from gridtool.placement.shell import placement_for

    needs = fleet.needs(rec)
    placement, current = placement_for(fleet, rec, needs)
    rows = _rows(placement, current)
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
@click.argument("name")
@click.option("--to", "to_host", metavar="HOST", help="The destination host.")
@click.option("--auto", is_flag=True, help="Let placement choose the destination.")
@click.option("--live/--cold", "live", default=None,
              help="Live (both hypervisors must support it) or cold: stop, hand the fences "
                   "over, start on the destination. Default: live where possible, else cold.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Also follow the source's final undefine (--no-wait: return once the "
                   "guest runs on the destination).")
@SHUTDOWN
@json_option
@pass_app
def migrate_guest(app: AppContext, name: str, to_host: str | None, auto: bool,
                  live: bool | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Move a guest to another host; a fenced guest's fences move with it.

    Live (both hosts QEMU/KVM): the destination is told to expect the guest, the source's
    agent migrates it peer-to-peer and hands every fence to the destination in one
    transaction at the switchover; the bar shows the memory sent. Cold (the test driver,
    or --cold): define on the destination, stop on the source (whose agent then hands
    every fence to the destination in one transaction), start on the destination (the
    fencing token grows), undefine on the source. A failure leaves the guest running on
    the source with its fence, or stopped with its fences released or handed back, never
    running twice; the command says which and exits 8.

    \b
    Example:
      gridtool guest migrate web1 --to hv2 --live
      gridtool guest migrate web1 --to hv2 --cold
      gridtool guest migrate web1 --auto
    """
    from gridtool.placement.shell import choose_mode, current_record

    if bool(to_host) == auto:
        raise UsageError("say where: --to HOST or --auto")
    fleet = _fleet(app)
    rec = current_record(app.registry.find_guest(name), fleet.records)
    target = _target(app, fleet, rec, to_host)
    mode = choose_mode(fleet.records[rec.host], fleet.records[target], live)
    with MigrationProgress() as progress:
        progress.begin(rec.name, rec.host, target)
        result = _migrator(app, timeout, progress).migrate(rec, target, mode,
                                                           follow_cleanup=wait)
        progress.done(result)
    if as_json:
        emit_json(migration=result.to_dict())
    if not result.ok:
        raise OperationFailed(f"migrating {rec.name} to {target} failed; it is "
                              f"{result.state.value}: {result.message}")


# --------------------------------------------------------------------------- host drain


@click.command("drain")
@click.argument("host_name", metavar="HOST")
@click.option("--dry-run", is_flag=True, help="Show the plan; mark and move nothing.")
@SHUTDOWN
@json_option
@pass_app
def drain_host(app: AppContext, host_name: str, dry_run: bool, timeout: float,
               as_json: bool) -> None:
    """Mark a host draining (it takes no new guests) and move its active guests away.

    Each guest goes where placement sends it (largest first); guests no host can take
    are listed with the reason. The host stays draining until 'gridtool host undrain'.
    Stopped guests stay defined on it. Exits 7 when guests are left, 8 when a migration
    failed.

    \b
    Example:
      gridtool host drain hv3 --dry-run
      gridtool host drain hv3
    """
    from gridtool.placement.rebalance import drain_plan
    from gridtool.registry import hostconf
    from gridtool.registry.intents import who
    from gridtool.registry.model import ACTIVE_STATES

    fleet = _fleet(app)
    if host_name not in fleet.records:
        raise NotFound(f"unknown host {host_name!r} (not in the registry: no live agent)")
    if not dry_run:
        hostconf.set_draining(app.store, app.config.keys, host_name, True, who(), "drain")
    plan = drain_plan(host_name, fleet.hosts)
    stuck = [{"guest": s.guest, "reason": s.reason if s.reason != "guest is not movable"
              else "not movable: a transient guest has no definition to move"}
             for s in plan.stuck]
    stopped = sorted(g.name for g in fleet.guests
                     if g.host == host_name and g.state not in ACTIVE_STATES)
    if not as_json:
        table(f"drain {host_name}" + (" (dry run)" if dry_run else ""), ["GUEST", "TO"],
              [(m.guest, m.target) for m in plan.moves]
              + [(s["guest"], "stuck: " + s["reason"]) for s in stuck])
    moves: list[dict[str, Any]] = [{"guest": m.guest, "from": m.source, "to": m.target}
                                   for m in plan.moves]
    if not dry_run and plan.moves:
        moves = _run_moves(app, fleet, plan.moves, timeout, stop_on_failure=False)
    failed = [m for m in moves if not dry_run and not m.get("ok")]
    if as_json:
        draining = not dry_run or fleet.host(host_name).draining
        emit_json(host=host_name, draining=draining, dry_run=dry_run, moves=moves,
                  stuck=stuck, stopped_guests=stopped)
    else:
        moved = len(moves) - len(failed)
        click.echo(f"{host_name}: " + (f"{len(moves)} to move" if dry_run else
                                       f"{moved} moved, {len(failed)} failed")
                   + f", {len(stuck)} stuck"
                   + (f", {len(stopped)} stopped guests stay defined" if stopped else "")
                   + ("" if dry_run else "; it stays draining ('gridtool host undrain "
                      f"{host_name}' to take guests again)"), err=True)
    if failed:
        raise OperationFailed(f"{len(failed)} of {len(moves)} migrations off {host_name} "
                              f"failed: " + "; ".join(f"{m['guest']}: {m['message']}"
                                                      for m in failed))
    if stuck and not dry_run:
        raise Conflict(f"{len(stuck)} guests cannot leave {host_name}: "
                       + "; ".join(f"{s['guest']}: {s['reason']}" for s in stuck))


@click.command("undrain")
@click.argument("host_name", metavar="HOST")
@pass_app
def undrain_host(app: AppContext, host_name: str) -> None:
    """Let a drained host take guests again (it does not move guests back).

    \b
    Example:
      gridtool host undrain hv3
    """
    from gridtool.registry import hostconf
    from gridtool.registry.keys import validate_name

    try:
        validate_name("host", host_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    hostconf.set_draining(app.store, app.config.keys, host_name, False)
    click.echo(f"{host_name} takes guests again", err=True)


# --------------------------------------------------------------------------- rebalance


@click.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Print the plan; move nothing.")
@click.option("--max-moves", default=10, show_default=True, type=click.IntRange(min=0),
              help="At most this many migrations.")
@click.option("--threshold", default=10.0, show_default=True, type=click.FloatRange(min=0),
              metavar="PCT",
              help="Bring every host's memory use within PCT points of the fleet's mean.")
@SHUTDOWN
@json_option
@pass_app
def rebalance(app: AppContext, dry_run: bool, max_moves: int, threshold: float,
              timeout: float, as_json: bool) -> None:
    """Even out memory use across hosts by migrating guests (live where both hosts can).

    Plans greedily: each move relieves the host farthest outside mean +- PCT and never
    makes the imbalance worse; targets pass every placement filter. Draining, overflow
    and down hosts take no part. Stops at the first failed migration (exit 8).

    \b
    Example:
      gridtool rebalance --dry-run --threshold 5
      gridtool rebalance --max-moves 3
    """
    from gridtool.placement.rebalance import plan_rebalance

    fleet = _fleet(app)
    plan = plan_rebalance(fleet.hosts, threshold_pct=threshold, max_moves=max_moves)
    summary = {"mean_pct": round(plan.mean_pct, 2), "threshold_pct": threshold,
               "imbalance_before": round(plan.imbalance_before, 2),
               "imbalance_after": round(plan.imbalance_after, 2),
               "outside_before": plan.outside_before, "outside_after": plan.outside_after}
    if not as_json:
        table("rebalance plan" + (" (dry run)" if dry_run else ""),
              ["GUEST", "FROM", "TO", "GAIN"],
              [(m.guest, m.source, m.target, mib(round(m.gain_mib))) for m in plan.moves])
        click.echo(f"mean use {plan.mean_pct:.1f}%; imbalance {plan.imbalance_before:.1f} -> "
                   f"{plan.imbalance_after:.1f} points; hosts outside +-{threshold:g}: "
                   f"{plan.outside_before} -> {plan.outside_after}", err=True)
    moves: list[dict[str, Any]] = [{"guest": m.guest, "from": m.source, "to": m.target,
                                    "gain_mib": round(m.gain_mib, 1)} for m in plan.moves]
    if not dry_run and plan.moves:
        gains = {m["guest"]: m["gain_mib"] for m in moves}
        moves = [{**m, "gain_mib": gains[m["guest"]]} for m in
                 _run_moves(app, fleet, plan.moves, timeout, stop_on_failure=True)]
    if as_json:
        emit_json(dry_run=dry_run, plan=summary, moves=moves)
    failed = [m for m in moves if not dry_run and not m.get("ok")]
    if failed:
        raise OperationFailed(f"rebalance stopped: {failed[0]['guest']}: "
                              f"{failed[0]['message']}")


#: Added to ``gridtool guest``, ``gridtool host`` and the top level by the entry point.
GUEST_COMMANDS = (place_guest, create_guest, migrate_guest)
HOST_COMMANDS = (drain_host, undrain_host)
COMMANDS = (rebalance,)
