"""A TLS etcd for the tests: certificates from gridtool's own ``registry certs`` code
(``gridtool.auth.certs``), lab members with https client and peer URLs that require
client certificates on both (``gridtool.lab.etcd.TlsFiles``), and gridtool's users with
passwords (``gridtool registry init``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from gridtool.auth.certs import make_certs
from gridtool.auth.credfiles import password_path, read_password
from gridtool.auth.rules import admin_user
from gridtool.auth.shell import init_registry
from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster, TlsFiles

#: The client certificate every client here shows: its CN is no etcd user, so it only
#: opens the TLS connection (client certificates are required); the password is what
#: authenticates.
ANONYMOUS_CN = "no-etcd-user"


@dataclass(frozen=True)
class TlsRegistry:
    """A running TLS etcd with auth on. ``cfg``: the admin over TLS (user, password and
    its file); ``credentials``: the password files (root's among them)."""

    cluster: EtcdCluster
    tls_dir: Path
    credentials: Path
    cfg: Config

    def tls_file(self, name: str) -> str:
        return str(self.tls_dir / name)

    def env(self, **settings: str) -> dict[str, str]:
        """The CLI's environment for the admin over TLS; ``settings`` (e.g.
        ``GRIDTOOL_PASSWORD``) are added or replace."""
        return {"GRIDTOOL_CA_CERT": str(self.cfg.ca_cert), "GRIDTOOL_CERT": str(self.cfg.cert),
                "GRIDTOOL_KEY": str(self.cfg.key), "GRIDTOOL_USER": str(self.cfg.user),
                "GRIDTOOL_PASSWORD_FILE": str(self.cfg.password_file), **settings}


@contextlib.contextmanager
def tls_registry(base: Path, prefix: str, members: int = 1,
                 server_ips: tuple[str, ...] = ("127.0.0.1",),
                 server_dns: tuple[str, ...] = ("localhost",),
                 client_cert_auth: bool = True) -> Iterator[TlsRegistry]:
    """Start ``members`` TLS etcd members under ``base`` (the server certificate names
    ``server_ips`` and ``server_dns``; ``client_cert_auth``: etcd's flag; clients show a
    certificate either way, as etcd 3.4 with a trusted CA wants one), turn auth on for
    ``prefix``; stop them at the end."""
    tls_dir = base / "tls"
    make_certs(tls_dir, [ANONYMOUS_CN], ips=server_ips, dns=server_dns)
    cluster = EtcdCluster.create(base, members, tls=TlsFiles(str(tls_dir), client_cert_auth))
    cluster.start()
    try:
        credentials = base / "credentials"
        tls = Config(endpoints=tuple(cluster.endpoints), prefix=prefix, timeout=3.0, ttl=3,
                     resync_interval=2.0, ca_cert=str(tls_dir / "ca.crt"),
                     cert=str(tls_dir / f"{ANONYMOUS_CN}.crt"),
                     key=str(tls_dir / f"{ANONYMOUS_CN}.key"))
        init_registry(tls, credentials, [], [])
        admin = admin_user(prefix)
        password_file = password_path(credentials, admin)
        yield TlsRegistry(cluster, tls_dir, credentials, replace(
            tls, user=admin, password=read_password(password_file),
            password_file=str(password_file)))
    finally:
        cluster.stop()
