"""Where ``gridtool web serve`` may listen, and what a non-local address requires (pure)."""

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
