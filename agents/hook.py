"""gridtool's libvirt fence hook (installed as the daemon's ``hooks/qemu``, or
``hooks/libxl`` on Xen hosts: the same script, libxl calls it with the same operations).

libvirt runs ``hooks/qemu NAME OP SUBOP EXTRA`` with the domain XML on stdin. On
``prepare begin`` (any start), ``restore begin`` and ``migrate begin`` (an incoming
migration) of a guest with a disk on shared storage, this asks the local agent over its
unix socket (``agents.hooksock``) whether this host holds every fence of the guest, and
exits 1 with the reason on stderr otherwise: libvirt then refuses the start with
VIR_ERR_HOOK_SCRIPT_FAILED and that message. An agent that does not answer within
``--timeout`` seconds means a refusal (fail closed). Every other operation is allowed.
libvirt 9.0's libxl driver runs ``migrate begin`` with an EMPTY stdin: the hook then
asks with the domain name alone, and the agent identifies the guest as the incoming
migration of that name it was told to expect (``rules.incoming_named``; any other start
without XML is refused).

It imports only the standard library and gridtool's (light) disk detection, so that it
starts fast and runs with ``python -I`` from the agent's environment. libvirt reads the
hook only when the daemon starts or gets SIGHUP.

Usage: hook.py [--config FILE] [--socket PATH] [--shared GLOB]... [--timeout S]
       -- NAME OP SUBOP EXTRA
       hook.py [--config FILE] [--socket PATH] [--shared GLOB]... --self-check

``--config`` reads the agent's own settings (``[agent] hook_socket``, ``[storage]
shared_patterns``) so the packaged hook and the agent never disagree; flags win over it.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import socket
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gridtool.domains.storage import SharedStorageRules

if __name__ == "__main__" and not __package__:
    # Run as a file (libvirt's hook; the package's /usr/lib/gridtool/agents/hook.py): the
    # tree it lies in provides gridtool, whatever Python runs it (-I ignores PYTHONPATH).
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Never refuse anything else: libxl kills running domains when ``reconnect begin`` (the
# daemon restarting) fails, and stop/release cannot be refused anyway. An incoming
# ``migrate begin`` may print a rewritten XML on stdout (libxl): we print nothing there.
CHECKED = {("prepare", "begin"), ("restore", "begin"), ("migrate", "begin")}
VERB = {"prepare": "start", "restore": "restore", "migrate": "accept the migration of"}
#: How long the hook waits for the agent's answer unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT_S = 2.0
#: Where the agent answers unless the config or ``--socket`` says otherwise.
DEFAULT_SOCKET = "/run/gridtool/hook.sock"
#: ``gridtool.domains.storage.DEFAULT_SHARED_PATTERNS`` (used with ``--config``), here so
#: that the operations the hook never checks import nothing of gridtool (a unit test keeps
#: the two equal).
DEFAULT_SHARED = ("/dev/etherd/*", "/dev/disk/by-path/*-iscsi-*")
#: Exit status of ``--self-check`` with an unreadable config.
EXIT_CONFIG = 2


def may_be_fenced(xml: str, patterns: list[str],
                  where: SharedStorageRules | None = None) -> bool:
    """True when some disk may be on shared storage (the agent decides for sure): the
    agent's own detection (:func:`gridtool.domains.devices.local_disks`) with ``patterns``
    (the rest of ``where``: which device names it follows), plus every volume and
    network disk (the hook does not know the shared pools). Imported here: the
    operations the hook never checks (``reconnect begin``: libxl kills running domains
    when it fails) must not depend on gridtool loading."""
    from gridtool.domains.devices import local_disks
    from gridtool.domains.storage import SharedStorageRules
    from gridtool.domains.xml import DomainXMLError

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


def config_settings(path: str) -> tuple[str | None, list[str]]:
    """``[agent] hook_socket`` and ``[storage] shared_patterns`` (comma separated) of the
    agent's INI config: (None, []) for what it leaves unset. OSError/configparser.Error
    on an unreadable file."""
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as fh:
        parser.read_file(fh)
    sock = parser.get("agent", "hook_socket", fallback=None)
    patterns = parser.get("storage", "shared_patterns", fallback="")
    return sock or None, [p.strip() for p in patterns.split(",") if p.strip()]


def judge(name: str, op: str, sub: str, xml: str, sock: str, patterns: list[str],
          timeout: float) -> str | None:
    """None when libvirt may go on, else why the hook refuses (one line)."""
    if (op, sub) not in CHECKED:
        return None
    verb = VERB[op]
    try:  # no XML at all (libxl's migrate begin): the agent identifies it by name
        if xml.strip() and not may_be_fenced(xml, patterns):
            return None
    except ImportError as exc:  # a broken install: fail closed, in one line
        return (f"gridtool fence hook: refusing to {verb} {name}: gridtool's disk "
                f"detection cannot be loaded ({exc})")
    request = {"op": op, "sub": sub, "name": name, "uuid": domain_uuid(xml), "xml": xml}
    try:
        answer = ask(sock, request, timeout)
    except TimeoutError:
        why = f"did not answer within {timeout:g} s"
    except (OSError, ValueError) as exc:
        why = f"cannot be asked ({type(exc).__name__}: {exc})"
    else:
        if answer.get("allow"):
            return None
        return f"gridtool fence hook: refusing to {verb} {name}: {answer.get('message')}"
    return (f"gridtool fence hook: refusing to {verb} {name}: the gridtool agent on "
            f"{sock} {why} (fail closed: start the agent and try again)")


def _sample(source: str) -> str:
    return (f"<domain type='kvm'><name>gridtool-self-check</name><uuid>00000000-0000-0000-"
            f"0000-000000000000</uuid><devices><disk type='block' device='disk'><source "
            f"dev='{source}'/><target dev='vda'/></disk></devices></domain>")


def self_check(sock: str, patterns: list[str], timeout: float) -> int:
    """Judge two sample guests as libvirt would hand them over: a local disk must pass
    without asking, a disk on shared storage must be asked about (refused while the agent
    does not answer). Prints what it found; 0 when the hook works, else 1."""
    shared = next((p.replace("*", "self-check") for p in patterns if "*" in p), "")
    print(f"hook: python {sys.version.split()[0]}, socket {sock}, shared "
          f"{', '.join(patterns) or '-'}")
    faults = []
    if judge("local", "prepare", "begin", _sample("/var/lib/gridtool/local.img"),
             sock, patterns, timeout) is not None:
        faults.append("a guest on a local disk would be refused")
    if not shared:
        faults.append("no shared-storage pattern: no guest would be fenced")
    else:
        xml = _sample(shared)
        if not may_be_fenced(xml, patterns):
            faults.append(f"a guest on {shared} would not be checked")
        verdict = judge("gridtool-self-check", "prepare", "begin", xml, sock, patterns,
                        timeout)
        print(f"shared-disk guest on {shared}: {verdict or 'allowed by the agent'}")
    for fault in faults:
        print(f"hook self-check failed: {fault}", file=sys.stderr)
    if not faults:
        print("hook self-check passed")
    return 1 if faults else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridtool-hook")
    parser.add_argument("--config", help="the agent's config (hook_socket, shared_patterns)")
    parser.add_argument("--socket")
    parser.add_argument("--shared", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--self-check", action="store_true",
                        help="judge two sample guests, say what the hook would do, exit")
    parser.add_argument("args", nargs="*")
    opts = parser.parse_args(argv)
    xml = "" if opts.self_check else sys.stdin.read()  # libvirt writes the XML to stdin
    name, op, sub = ([*opts.args, "", "", ""])[:3]
    conf_sock: str | None = None
    conf_shared: list[str] = []
    if opts.config:
        try:
            conf_sock, conf_shared = config_settings(opts.config)
        except (OSError, configparser.Error) as exc:
            fault = f"config {opts.config}: {exc}".splitlines()[0]
            if opts.self_check:
                print(f"gridtool fence hook: {fault}", file=sys.stderr)
                return EXIT_CONFIG
            # Fail closed for what the hook checks (a start, even of a local disk: the
            # patterns are unknown); never for the rest (libxl kills running domains
            # when ``reconnect begin`` fails).
            if (op, sub) not in CHECKED:
                print(f"gridtool fence hook: {fault} (ignored for {op} {sub})",
                      file=sys.stderr)
                return 0
            print(f"gridtool fence hook: refusing to {VERB[op]} {name}: {fault}",
                  file=sys.stderr)
            return 1
    sock = opts.socket or conf_sock or DEFAULT_SOCKET
    patterns = opts.shared or conf_shared or ([*DEFAULT_SHARED] if opts.config else [])
    if opts.self_check:
        return self_check(sock, patterns, opts.timeout)
    refusal = judge(name, op, sub, xml, sock, patterns, opts.timeout)
    if refusal is None:
        return 0
    print(refusal, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
