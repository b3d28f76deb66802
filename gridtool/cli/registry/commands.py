"""``gridtool registry ...``: the etcd cluster behind gridtool."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import console, emit_json, json_option, table
from gridtool.errors import RegistryUnavailable, UsageError

if TYPE_CHECKING:
    from gridtool.auth.shell import UserResult


@click.command("status")
@json_option
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


def _names(raw: str | None, what: str) -> list[str] | None:
    """A comma-separated list of host names (None when the option was not given)."""
    if raw is None:
        return None
    from gridtool.registry.keys import validate_name

    try:
        return [validate_name("host", n.strip()) for n in raw.split(",") if n.strip()]
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def user_rows(results: list[UserResult]) -> list[tuple[str, str, str, str]]:
    return [(r.user, ", ".join(r.roles), r.password_file, r.action) for r in results]


@click.command("init")
@click.option("--hosts", metavar="H1,H2", help="Hosts to create users for (default: the hosts "
              "in the registry and those that already have a user).")
@click.option("--managers", metavar="H1,H2|all", help="Hosts that run a manager candidate "
              "(manager = yes): they get the manager role too (default: keep the grants).")
@click.option("--credentials-dir", metavar="DIR", help="Where password files are written, "
              "0600 (default: the folder of password_file, else /etc/gridtool/credentials).")
@json_option
@pass_app
def init(app: AppContext, hosts: str | None, managers: str | None,
         credentials_dir: str | None, as_json: bool) -> None:
    """Turn on etcd authentication: root, an admin user, a read-only monitoring user
    (gridtool-monitor: for 'gridtool check' and 'metrics serve'), one user per host.

    Root's password is generated and kept in DIR/root.password; every user's password
    goes to DIR/USER.password (mode 0600) and is never printed. Each host's role may write
    only that host's keys (record, guests, intent outcomes, violations) plus fences/,
    domains/ and clones/; hosts in --managers may also write intents, settings, pools and
    the manager election. Pool reporters ('registry user add reporter') are kept and
    repaired. Running it again repairs what drifted. Exit 5 when etcd refuses root's
    password.

    \b
    Example:
      gridtool registry init --hosts hv1,hv2,hv3 --managers all \\
          --credentials-dir /etc/gridtool/credentials
    """
    from gridtool.auth.shell import credentials_dir as cred_dir
    from gridtool.auth.shell import init_registry

    host_list = _names(hosts, "--hosts")
    manager_list = "all" if managers and managers.strip() == "all" else \
        _names(managers, "--managers")
    directory = cred_dir(app.config, credentials_dir)
    results, enabled_now = init_registry(app.config, directory, host_list, manager_list)
    if as_json:
        emit_json(users=[asdict(r) for r in results], auth_enabled_now=enabled_now,
                  credentials_dir=str(directory))
        return
    table(None, ["USER", "ROLES", "PASSWORD FILE", "ACTION"], user_rows(results))
    console().print("authentication " + ("enabled" if enabled_now else "was already enabled"),
                    highlight=False)


@click.command("certs")
@click.option("--dir", "directory", required=True, metavar="DIR",
              help="Where to write ca.crt, server.crt and USER.crt (keys 0600).")
@click.option("--hosts", metavar="H1,H2", default="",
              help="Hosts to issue client certificates for (CN = the host's etcd user).")
@click.option("--ip", "ips", multiple=True, metavar="ADDR",
              help="IP address of an etcd member for the server certificate "
                   "(repeatable; default 127.0.0.1).")
@click.option("--dns", "dns", multiple=True, metavar="NAME",
              help="DNS name of an etcd member (repeatable; default localhost).")
@json_option
@pass_app
def certs(app: AppContext, directory: str, hosts: str, ips: tuple[str, ...],
          dns: tuple[str, ...], as_json: bool) -> None:
    """Generate a CA, the etcd members' server certificate and client certificates.

    The CA is reused when DIR already has one, so certificates issued later are trusted
    by the same members. Client certificates are issued for the admin user and each host
    (CN = etcd user, for etcd's --client-cert-auth). Start etcd with --cert-file
    server.crt --key-file server.key --trusted-ca-file ca.crt (and the --peer-* ones);
    clients set ca_cert (and cert/key) in [registry].

    \b
    Example:
      gridtool registry certs --dir /etc/gridtool/tls --hosts hv1,hv2 --ip 10.0.0.5
    """
    from pathlib import Path

    from gridtool.auth.certs import make_certs
    from gridtool.auth.rules import admin_user, host_user

    prefix = app.config.prefix
    clients = [admin_user(prefix)] + [host_user(h, prefix) for h in _names(hosts, "--hosts") or []]
    issued = make_certs(Path(directory), clients, ips or ("127.0.0.1",), dns or ("localhost",))
    if as_json:
        emit_json(certificates=[{"name": i.name, "cert": str(i.cert), "key": str(i.key)}
                                for i in issued])
    else:
        table(None, ["NAME", "CERTIFICATE", "KEY (0600)"],
              [(i.name, i.cert, i.key) for i in issued])
