"""``gridtool web serve``: the web view's server (see gridtool.web)."""

from __future__ import annotations

import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.errors import GridtoolError, UsageError
from gridtool.web.listen import DEFAULT_LISTEN

if TYPE_CHECKING:
    from gridtool.web.listen import Tls


def _read(path: str, option: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from None


@click.command("serve")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where to listen (port 0: any free port). An address other than "
                   "loopback needs --tls-cert/--tls-key and --basic-auth-file or --client-ca.")
@click.option("--tls-cert", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (e.g. server.crt of 'registry certs').")
@click.option("--tls-key", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="The certificate's key (e.g. server.key).")
@click.option("--client-ca", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="Require client certificates signed by this CA (e.g. ca.crt).")
@click.option("--basic-auth-file", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="Require HTTP basic auth: one USER:PASSWORD a line (keep it 0600).")
@click.option("--user", metavar="USER",
              help="Read the registry as this etcd user, with --password-file (e.g. the "
                   "read-only gridtool-monitor that 'registry init' creates).")
@click.option("--password-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="That user's etcd password (e.g. CREDENTIALS/gridtool-monitor.password).")
@pass_app
def serve(app: AppContext, listen: str, tls_cert: str | None, tls_key: str | None,
          client_ca: str | None, basic_auth_file: str | None, user: str | None,
          password_file: str | None) -> None:
    """Serve a live, read-only web page of the fleet until Ctrl-C (SIGINT) or SIGTERM.

    One etcd watch feeds every open page over server-sent events: a change shows within a
    second, without a reload; an unreachable registry shows a banner, and the page follows
    again when it is back. Guests are filtered and paged on the server. Prints the URL on
    stdout once it listens. Exit 2 for bad options or files.

    \b
    Examples:
      gridtool web serve                      # http://127.0.0.1:8080/
      gridtool web serve --listen 10.0.0.5:8443 --tls-cert tls/server.crt \\
          --tls-key tls/server.key --basic-auth-file /etc/gridtool/web.users \\
          --user gridtool-monitor --password-file creds/gridtool-monitor.password
    """
    from gridtool.web import listen as rules
    from gridtool.web.listen import Tls, parse_users

    try:
        where = rules.parse_listen(listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if client_ca and not tls_cert:
        raise UsageError("--client-ca needs --tls-cert and --tls-key")
    if bool(user) != bool(password_file):
        raise UsageError("--user and --password-file go together")
    refused = rules.refusal(where, bool(tls_cert), bool(basic_auth_file), bool(client_ca))
    if refused:
        raise UsageError(refused)
    users = None
    if basic_auth_file:
        try:
            users = parse_users(_read(basic_auth_file, "--basic-auth-file"))
        except ValueError as exc:
            raise UsageError(f"--basic-auth-file {basic_auth_file}: {exc}") from None
    if user and password_file:
        password = _read(password_file, "--password-file").strip()
        app._config = replace(app.config, user=user, password=password, password_file=None)
    tls = Tls(tls_cert, tls_key, client_ca) if tls_cert and tls_key else None
    _run(app, _bind(where.host, where.port), tls, users)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--listen {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def _run(app: AppContext, sock: socket.socket, tls: Tls | None,
         users: dict[str, str] | None) -> None:
    from gridtool.registry.mirror import Mirror, guest_pages
    from gridtool.web.feed import Feed

    try:
        from gridtool.web.server import Views, create_app, serve
    except ImportError as exc:  # e.g. the Debian package, which does not vendor them yet
        raise GridtoolError(f"gridtool web serve needs starlette and uvicorn ({exc}): "
                            "pip install 'starlette==1.10.0' 'uvicorn==0.54.0'") from None

    cfg = app.config
    mirror = Mirror(cfg.keys.prefix)
    feed = Feed(app.store, mirror, bounds=guest_pages(cfg.keys))
    views = Views(mirror, cfg.keys, len(cfg.endpoints))

    def start() -> None:
        feed.start()
        views.start()

    def stop() -> None:
        views.stop()
        feed.stop()

    web_app = create_app(mirror, views, start, stop, users)

    def announce(url: str) -> None:
        click.echo(url)
        sys.stdout.flush()

    serve(web_app, sock, tls, announce)
