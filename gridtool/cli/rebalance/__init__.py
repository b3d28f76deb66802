"""``gridtool rebalance``: even out the fleet's load with planned live migrations."""

from __future__ import annotations

from typing import Any

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.migration import BANDWIDTH, SHUTDOWN, run_moves
from gridtool.cli.common.output import emit_json, json_option, mib, table
from gridtool.cli.common.verdicts import fleet_of
from gridtool.errors import OperationFailed


@click.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Print the plan; move nothing.")
@click.option("--max-moves", default=10, show_default=True, type=click.IntRange(min=0),
              help="At most this many migrations.")
@click.option("--threshold", default=10.0, show_default=True, type=click.FloatRange(min=0),
              metavar="PCT",
              help="Bring every host's memory use within PCT points of the fleet's mean.")
@SHUTDOWN
@BANDWIDTH
@json_option
@pass_app
def rebalance(app: AppContext, dry_run: bool, max_moves: int, threshold: float,
              timeout: float, bandwidth: int | None, as_json: bool) -> None:
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

    fleet = fleet_of(app)
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
                 run_moves(app, fleet, plan.moves, timeout, stop_on_failure=True,
                           bandwidth_mib=bandwidth)]
    if as_json:
        emit_json(dry_run=dry_run, plan=summary, moves=moves)
    failed = [m for m in moves if not dry_run and not m.get("ok")]
    if failed:
        raise OperationFailed(f"rebalance stopped: {failed[0]['guest']}: "
                              f"{failed[0]['message']}")


#: Added to ``gridtool guest``, ``gridtool host`` and the top level by the entry point.
