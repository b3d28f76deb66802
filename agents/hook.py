"""gridtool's libvirt fence hook (installed as the daemon's ``hooks/qemu``, or
``hooks/libxl`` on Xen hosts: the same script, libxl calls it with the same operations).

libvirt runs ``hooks/qemu NAME OP SUBOP EXTRA`` with the domain XML on stdin. On
``prepare begin`` (any start), ``restore begin`` and ``migrate begin`` (an incoming
migration) of a guest with a disk on shared storage, this asks the local agent over its
unix socket (``agents.hooksock``) whether this host holds every fence of the guest, and
exits 1 with the reason on stderr otherwise: libvirt then refuses the start with
VIR_ERR_HOOK_SCRIPT_FAILED and that message. An agent that does not answer within
``--timeout`` seconds means a refusal (fail closed). Every other operation is allowed.

It imports only the standard library and gridtool's (light) disk detection, so that it
starts fast and runs with ``python -I`` from the agent's environment. libvirt reads the
hook only when the daemon starts or gets SIGHUP.

Usage: hook.py --socket PATH [--shared GLOB]... [--timeout S] -- NAME OP SUBOP EXTRA
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace

from gridtool.domains.devices import local_disks
from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xml import DomainXMLError

# Never refuse anything else: libxl kills running domains when ``reconnect begin`` (the
# daemon restarting) fails, and stop/release cannot be refused anyway. An incoming
# ``migrate begin`` may print a rewritten XML on stdout (libxl): we print nothing there.
CHECKED = {("prepare", "begin"), ("restore", "begin"), ("migrate", "begin")}
VERB = {"prepare": "start", "restore": "restore", "migrate": "accept the migration of"}
#: How long the hook waits for the agent's answer unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT_S = 2.0


def may_be_fenced(xml: str, patterns: list[str],
                  where: SharedStorageRules | None = None) -> bool:
    """True when some disk may be on shared storage (the agent decides for sure): the
    agent's own detection (:func:`gridtool.domains.devices.local_disks`) with ``patterns``
    (the rest of ``where``: which device names it follows), plus every volume and
    network disk (the hook does not know the shared pools)."""
    try:
        disks, _ = local_disks(xml, replace(where or SharedStorageRules(),
                                            patterns=tuple(patterns)))
    except DomainXMLError:
        return True  # cannot tell: ask the agent
    return any(d.shared or d.kind in ("volume", "network") for d in disks)


def domain_uuid(xml: str) -> str:
    try:
        return (ET.fromstring(xml).findtext("uuid") or "").strip()
    except ET.ParseError:
        return ""


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the first newline (or until the peer closes)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ask(path: str, request: dict, timeout: float) -> dict:
    """One JSON line out, one JSON line back; raises OSError/ValueError on any trouble."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = read_line(sock)
    return json.loads(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridtool-hook")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--shared", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("args", nargs="*")
    opts = parser.parse_args(argv)
    xml = sys.stdin.read()  # always drain it: libvirt writes the XML to our stdin
    name, op, sub = ([*opts.args, "", "", ""])[:3]
    if (op, sub) not in CHECKED or not may_be_fenced(xml, opts.shared):
        return 0
    verb = VERB[op]
    request = {"op": op, "sub": sub, "name": name, "uuid": domain_uuid(xml), "xml": xml}
    try:
        answer = ask(opts.socket, request, opts.timeout)
    except TimeoutError:
        why = f"did not answer within {opts.timeout:g} s"
    except (OSError, ValueError) as exc:
        why = f"cannot be asked ({type(exc).__name__}: {exc})"
    else:
        if answer.get("allow"):
            return 0
        print(f"gridtool fence hook: refusing to {verb} {name}: {answer.get('message')}",
              file=sys.stderr)
        return 1
    print(f"gridtool fence hook: refusing to {verb} {name}: the gridtool agent on "
          f"{opts.socket} {why} (fail closed: start the agent and try again)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
