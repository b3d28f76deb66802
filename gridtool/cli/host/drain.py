"""``gridtool host drain|undrain``: move every guest off a host, and let it take guests again."""

from __future__ import annotations

from typing import Any

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.migration import BANDWIDTH, SHUTDOWN, run_moves
from gridtool.cli.common.output import emit_json, json_option, outcome, table
from gridtool.cli.common.verdicts import fleet_of
from gridtool.errors import Conflict, NotFound, OperationFailed, UsageError


@click.command("drain")
@click.argument("host_name", shell_complete=HOSTS, metavar="HOST")
@click.option("--dry-run", is_flag=True, help="Show the plan; mark and move nothing.")
@SHUTDOWN
@BANDWIDTH
@json_option
@pass_app
def drain_host(app: AppContext, host_name: str, dry_run: bool, timeout: float,
               bandwidth: int | None, as_json: bool) -> None:
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

    fleet = fleet_of(app)
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
        moves = run_moves(app, fleet, plan.moves, timeout, stop_on_failure=False,
                          bandwidth_mib=bandwidth)
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
@click.argument("host_name", shell_complete=HOSTS, metavar="HOST")
@json_option
@pass_app
def undrain_host(app: AppContext, host_name: str, as_json: bool) -> None:
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
    outcome(as_json, f"{host_name} takes guests again", host=host_name, draining=False)
