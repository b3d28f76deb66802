"""``gridtool registry user add``: least-privilege etcd users besides the admin and the
hosts: the read-only monitor and a pool's outside load reporter."""

from __future__ import annotations

from dataclasses import asdict

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import emit_json, json_option, table
from gridtool.errors import UsageError


@click.group("user")
def user() -> None:
    """Least-privilege etcd users: monitor (read only), pool reporters.

    \b
    Example:
      gridtool registry user add monitor
    """


@user.command("add")
@click.argument("role", type=click.Choice(["monitor", "reporter"]))
@click.option("--pool", metavar="POOL", help="The pool a reporter reports for (required "
              "for reporter).")
@click.option("--rotate", is_flag=True, help="Issue a new password even when its file "
              "exists.")
@click.option("--credentials-dir", metavar="DIR", help="Where the password file and the "
              "client configuration are written, 0600 (default: the folder of "
              "password_file, else /etc/gridtool/credentials).")
@json_option
@pass_app
def add_user(app: AppContext, role: str, pool: str | None, rotate: bool,
             credentials_dir: str | None, as_json: bool) -> None:
    """Create (or repair) a least-privilege etcd user and write its client configuration.

    monitor: gridtool-monitor, read access to every registry key; enough for 'gridtool
    check' and 'gridtool metrics serve' (cron and Prometheus need no admin password).
    'registry init' creates it too.

    reporter --pool POOL: pool-POOL, which may write only POOL's load reports ('pool
    report') and its spec, where its desired size lives ('pool scale'); nothing of
    other pools, hosts, guests or fences.

    The password goes to DIR/USER.password and a configuration naming it to
    DIR/USER.conf (both 0600): use it with --config. Needs root's password file in DIR
    (exit 5 when etcd refuses it); exit 2 for a reporter without --pool.

    \b
    Example:
      gridtool registry user add monitor
      gridtool --config /etc/gridtool/credentials/gridtool-monitor.conf check
      gridtool registry user add reporter --pool workers
      gridtool --config /etc/gridtool/credentials/pool-workers.conf pool report workers \\
          --arrivals 420 --completions 415 --busy-seconds 380
    """
    from gridtool.auth.shell import credentials_dir as cred_dir
    from gridtool.auth.shell import issue_user
    from gridtool.registry.keys import validate_name

    if role == "reporter":
        if not pool:
            raise UsageError("a reporter needs --pool POOL")
        try:
            validate_name("pool", pool)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif pool:
        raise UsageError("--pool is for a reporter only")
    directory = cred_dir(app.config, credentials_dir)
    result, conf = issue_user(app.config, directory, "monitor" if role == "monitor"
                              else "reporter", pool, rotate)
    if as_json:
        emit_json(user=asdict(result), config=str(conf))
        return
    table(None, ["USER", "ROLES", "PASSWORD FILE", "CONFIG", "ACTION"],
          [(result.user, ", ".join(result.roles), result.password_file, str(conf),
            result.action)])
