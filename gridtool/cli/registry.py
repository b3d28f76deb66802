"""``gridtool registry ...``: the etcd cluster behind gridtool."""

from __future__ import annotations

from dataclasses import asdict

import click

from gridtool.cli.context import AppContext, pass_app
from gridtool.cli.output import emit_json, table
from gridtool.errors import RegistryUnavailable


@click.group()
def registry() -> None:
    """The registry (etcd cluster).

    \b
    Example:
      gridtool registry status
    """


@registry.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Each etcd endpoint: healthy, leader, database size, revision.

    Exits 4 when no endpoint answers.

    \b
    Example:
      gridtool registry status --json
    """
    statuses = app.store.status()
    if as_json:
        emit_json(endpoints=[asdict(s) for s in statuses])
    else:
        table(None, ["ENDPOINT", "HEALTHY", "LEADER", "DB SIZE", "REVISION", "VERSION", "ERROR"],
              [(s.endpoint, "yes" if s.healthy else "[red]no[/red]",
                "*" if s.leader else "", f"{s.db_size / 1024:.0f} KiB" if s.healthy else "-",
                s.revision or "-", s.version or "-", s.error or "") for s in statuses])
    if not any(s.healthy for s in statuses):
        raise RegistryUnavailable("no etcd endpoint is healthy")
