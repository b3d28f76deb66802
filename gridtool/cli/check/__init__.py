"""``gridtool check``: a Nagios/Icinga plugin for cron and monitoring."""

from __future__ import annotations

import json
import sys

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import json_option


@click.command("check")
@click.option("--warn", multiple=True, metavar="KEY=RANGE",
              help="Warning threshold, e.g. report_age=60 or clock_skew=-2:2 (repeatable; "
                   "keys: report_age, clock_skew, intent_age; Nagios range syntax).")
@click.option("--crit", multiple=True, metavar="KEY=RANGE",
              help="Critical threshold, same syntax as --warn.")
@click.option("--ignore", multiple=True, metavar="CODE",
              help="Ignore findings with this code (repeatable), e.g. AGENT_VERSION_SKEW.")
@json_option
@pass_app
def check(app: AppContext, warn: tuple[str, ...], crit: tuple[str, ...],
          ignore: tuple[str, ...], as_json: bool) -> None:
    """Check the fleet: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios plugin rules).

    One status line with perfdata, then one line per finding with its stable code:
    registry endpoints and quorum, lost or stale hosts, guests running on two hosts,
    fenced guests without their fence, orphan fences, stale intents, manager leader,
    agent version skew, clock skew, corrupt records.

    \b
    Example (crontab):
      */5 * * * * root gridtool check --ignore AGENT_VERSION_SKEW || mail -s gridtool root
    """
    from gridtool.errors import GridtoolError
    from gridtool.health.checks import evaluate, unknown_report, unreachable_report
    from gridtool.health.collect import collect
    from gridtool.health.params import build_params
    from gridtool.health.ranges import CheckUsageError
    from gridtool.health.render import render_json, render_text
    from gridtool.health.report import exit_code

    try:
        params = build_params(warn, crit, ignore)
    except CheckUsageError as exc:
        report = unknown_report(str(exc))
    else:
        try:
            snap = collect(app.store, app.config.keys, len(app.config.endpoints))
            report = evaluate(snap, params)
        except GridtoolError as exc:
            report = unreachable_report(str(exc), _endpoint_statuses(app))
        except Exception as exc:  # a plugin must answer UNKNOWN, never a traceback
            report = unknown_report(f"{type(exc).__name__}: {exc}")
    if as_json:
        click.echo(json.dumps(render_json(report), allow_nan=False))
    else:
        click.echo(render_text(report))
    sys.exit(exit_code(report))


def _endpoint_statuses(app: AppContext) -> tuple:
    from gridtool.health.snapshot import EndpointStatus

    try:
        return tuple(EndpointStatus(s.endpoint, s.healthy, s.leader, s.error)
                     for s in app.store.status())
    except Exception:  # the config itself may be what failed
        return ()
