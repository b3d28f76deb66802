"""``gridtool host credentials HOST``: (re)issue one host's etcd password."""

from __future__ import annotations

from dataclasses import asdict

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import console, emit_json, json_option


@click.command("credentials")
@click.argument("host_name", shell_complete=HOSTS, metavar="HOST")
@click.option("--credentials-dir", metavar="DIR", help="Where root.password is and the host's "
              "password file is written, 0600 (default: the folder of password_file, else "
              "/etc/gridtool/credentials).")
@click.option("--manager/--no-manager", default=None,
              help="Grant (or take away) the manager role: the host runs a manager "
                   "candidate (default: keep).")
@json_option
@pass_app
def credentials(app: AppContext, host_name: str, credentials_dir: str | None,
                manager: bool | None, as_json: bool) -> None:
    """Issue a new etcd password for HOST's agent (user host-HOST).

    Creates the host's user and role when missing. The password is written to
    DIR/host-HOST.password (mode 0600) and never printed (--json names the file, never the
    password); the old one stops working at
    once: install the file as the agent's password_file and restart the agent. Needs
    root's password in DIR/root.password (written by 'gridtool registry init').

    \b
    Example:
      gridtool host credentials hv3 --credentials-dir /etc/gridtool/credentials
    """
    from gridtool.auth.shell import credentials_dir as cred_dir
    from gridtool.auth.shell import issue_host_credentials

    directory = cred_dir(app.config, credentials_dir)
    result = issue_host_credentials(app.config, directory, host_name, manager)
    if as_json:
        emit_json(host=host_name, **asdict(result))
        return
    console().print(f"{result.user} ({', '.join(result.roles)}): new password in "
                    f"{result.password_file} (0600); install it as password_file on "
                    f"{host_name} and restart its agent", highlight=False)
