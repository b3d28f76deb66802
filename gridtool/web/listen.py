"""Where ``gridtool web serve`` may listen, what a non-local address requires, who may
look (the basic-auth file) and the TLS files (pure)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def local(self) -> bool:
        """Only this machine can connect (a loopback address or ``localhost``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a name may resolve anywhere


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` or ``[IPV6]:PORT``; ValueError (one line) when it is not."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"--listen {text!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
    return Listen(host, int(port))


def refusal(listen: Listen, tls: bool, basic_auth: bool, client_certs: bool) -> str | None:
    """Why the server must not start like this (None: it may). A local address needs
    nothing; any other needs TLS and either basic auth or client certificates."""
    if listen.local:
        return None
    where = f"{listen.host}:{listen.port} is not a loopback address"
    if not tls:
        return f"{where}: give --tls-cert and --tls-key (e.g. from 'gridtool registry certs')"
    if not (basic_auth or client_certs):
        return f"{where}: give --basic-auth-file or --client-ca (who may look)"
    return None


def parse_users(text: str) -> dict[str, str]:
    """A basic-auth file: one ``USER:PASSWORD`` a line (``#`` comments); ValueError."""
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"line {number}: expected USER:PASSWORD")
        users[user] = password
    if not users:
        raise ValueError("no USER:PASSWORD line")
    return users


@dataclass(frozen=True)
class Tls:
    """The server's certificate and key; ``client_ca``: require client certificates
    signed by it."""

    cert: str
    key: str
    client_ca: str | None = None
