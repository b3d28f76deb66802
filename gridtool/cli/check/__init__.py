"""``gridtool check``: a Nagios/Icinga plugin for cron and monitoring."""

from __future__ import annotations

import json
import sys

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import json_option


@click.command("check")
@click.option("-w", "--warn", multiple=True, metavar="KEY=RANGE",
              help="Warning threshold, e.g. report_age=60 or clock_skew=-2:2 (repeatable; "
                   "keys: report_age, clock_skew, intent_age, db_size (percent of the "
                   "quota), cert_days (e.g. 30: alerts below 30); Nagios range syntax).")
@click.option("-c", "--crit", multiple=True, metavar="KEY=RANGE",
              help="Critical threshold, same syntax as --warn.")
@click.option("--etcd-quota", metavar="SIZE",
              help="etcd's --quota-backend-bytes, which db_size is a percentage of "
                   "(bytes or N[K|M|G]; default 2G, etcd's default).")
@click.option("--ignore", multiple=True, metavar="CODE",
              help="Ignore findings with this code (repeatable), e.g. AGENT_VERSION_SKEW.")
@json_option
@pass_app
def check(app: AppContext, warn: tuple[str, ...], crit: tuple[str, ...],
          etcd_quota: str | None, ignore: tuple[str, ...], as_json: bool) -> None:
    """Check the fleet: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios plugin rules).

    One status line with perfdata, then one line per finding with its stable code:
    registry endpoints and quorum, etcd alarms (NOSPACE), etcd DB size against its quota,
    etcd versions that revoke leases early, lost or stale hosts, guests running on two
    hosts, fenced guests without their fence, fence violations seen, orphan fences, HA
    guests on hosts without watchdog or fencing, stale intents, manager leader, agent
    version skew, clock skew, corrupt records, certificates expiring within 30 days.

    Needs only read access: run it as the read-only monitoring user that 'gridtool
    registry init' creates (gridtool-monitor), no admin password.

    \b
    Example (crontab):
      */5 * * * * root gridtool check --ignore AGENT_VERSION_SKEW || mail -s gridtool root
      gridtool check -w db_size=70 -c db_size=90 --etcd-quota 8G -w cert_days=45:
    """
    from gridtool.errors import GridtoolError
    from gridtool.health.checks import evaluate, unknown_report, unreachable_report
    from gridtool.health.collect import cert_files, collect
    from gridtool.health.params import build_params
    from gridtool.health.ranges import CheckUsageError
    from gridtool.health.render import render_json, render_text
    from gridtool.health.report import exit_code

    try:
        params = build_params(warn, crit, ignore, etcd_quota=etcd_quota)
    except CheckUsageError as exc:
        report = unknown_report(str(exc))
    else:
        try:
            cfg = app.config
            snap = collect(app.store, cfg.keys, len(cfg.endpoints),
                           cert_files(cfg.ca_cert, cfg.cert))
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
