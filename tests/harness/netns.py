"""Network namespaces for simulated hosts: put a host's AGENT in a namespace of its own,
joined to the root namespace by a veth pair, so a test can cut that host off from etcd
while the host (its libvirtd, its agent process) stays alive.

libvirtd's socket is a filesystem path, and path-bound unix sockets are reachable from
any network namespace, so the agent in the namespace still talks to its libvirtd. etcd
runs in the root namespace and listens on the root-side address of every pair as well
as on loopback; nothing is routed or forwarded, and no other interface is touched.

Addresses come from the RFC 2544 benchmarking range 198.18.0.0/15: one /30 per host,
root side ``.1``, namespace side ``.2``, picked among the blocks no interface of the
root namespace uses (under a lock file, so concurrent runs do not pick the same block).
Names carry a per-run random suffix. Everything created is deleted by ``close()`` (also
at interpreter exit), and ``sweep_stale()`` removes what a killed run left behind.

Two ways to cut a host (``HostNetns.cut``):

* ``"link"``: ``ip netns exec NS ip link set IF down`` inside the namespace. Packets of
  open connections are dropped (calls on them hang until their deadline); a new
  connection fails at once with "network unreachable" (the route is gone).
* ``"carrier"``: the root-side end goes down, so the namespace side loses its carrier
  but keeps its address and route: every packet, old connection or new, is dropped
  silently: a pure blackhole, where even connecting hangs until the deadline.

``heal()`` brings the link back up.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gridtool.lab.procs import LabError, file_lock
from gridtool.lab.segment import ALLOC_LOCK, free_network
from gridtool.lab.segment import ip as _run
from gridtool.lab.state import pid_alive

STATE_DIR = ALLOC_LOCK.parent
LOCK_FILE = ALLOC_LOCK
NS_PREFIX = "gtlab-"
CUT_MODES = ("link", "carrier")


class NetnsUnavailable(LabError):
    """Network namespaces cannot be made here (not root, no ``ip``, no permission)."""


def _ip() -> str:
    found = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else None)
    if found is None:
        raise NetnsUnavailable("the ip command (iproute2) is not installed")
    return found


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can.

    Tries the real thing: adds and deletes a namespace with a random name.
    """
    try:
        ip = _ip()
    except NetnsUnavailable as exc:
        return str(exc)
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{NS_PREFIX}probe-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        return f"ip netns add is not permitted here: {done.stderr.strip()}"
    subprocess.run([ip, "netns", "del", probe], capture_output=True, timeout=20,
                   stdin=subprocess.DEVNULL)
    return None


@dataclass
class HostNetns:
    """One host's namespace and veth pair."""

    host: str
    ns: str
    root_if: str
    ns_if: str
    root_addr: str  # etcd listens here too; the agent connects to it
    ns_addr: str
    cut_mode: str | None = None

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs, it does not fork,
        so the PID of the process started is the PID of ``argv``)."""
        return [_ip(), "netns", "exec", self.ns, *argv]

    def endpoint(self, port: int) -> str:
        """HOST:PORT of an etcd member as seen from inside the namespace."""
        return f"{self.root_addr}:{port}"

    @property
    def is_cut(self) -> bool:
        return self.cut_mode is not None

    def cut(self, mode: str = "link") -> None:
        """Cut this host off from etcd (see the module doc for the two modes)."""
        if mode not in CUT_MODES:
            raise ValueError(f"cut mode must be one of {', '.join(CUT_MODES)}, got {mode!r}")
        if self.cut_mode is not None:
            raise LabError(f"{self.host} is already cut ({self.cut_mode})")
        if mode == "link":
            _run("netns", "exec", self.ns, _ip(), "link", "set", self.ns_if, "down")
        else:
            _run("link", "set", self.root_if, "down")
        self.cut_mode = mode

    def heal(self) -> None:
        """Undo ``cut``: both ends up again."""
        _run("link", "set", self.root_if, "up")
        _run("netns", "exec", self.ns, _ip(), "link", "set", self.ns_if, "up")
        self.cut_mode = None

    def reachable(self, port: int, timeout: float = 0.5) -> bool:
        """True when a TCP connection from inside the namespace to ``root_addr:port``
        succeeds (used to wait for a healed link)."""
        code = (f"import socket; socket.create_connection(('{self.root_addr}', {port}), "
                f"timeout={timeout}).close()")
        done = subprocess.run(self.exec_argv([sys.executable, "-c", code]), capture_output=True,
                              timeout=timeout + 10, stdin=subprocess.DEVNULL)
        return done.returncode == 0


@dataclass
class NetnsSet:
    """The namespaces of one run; ``add`` one per host, ``close`` deletes them all.

    Use as a context manager. ``close`` is also registered to run at interpreter exit,
    so a run that fails or is interrupted still removes what it made.
    """

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: dict[str, HostNetns] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-z]{1,6}", self.suffix):
            raise ValueError(f"suffix must be 1-6 lowercase letters or digits: {self.suffix!r}")
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        sweep_stale()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._save()
        atexit.register(self.close)

    def __enter__(self) -> NetnsSet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def root_addresses(self) -> list[str]:
        return [h.root_addr for h in self.hosts.values()]

    def add(self, host: str) -> HostNetns:
        """Make ``host``'s namespace and veth pair, addressed and up."""
        if self._closed:
            raise LabError("this namespace set is closed")
        index = len(self.hosts)
        ns = f"{NS_PREFIX}{self.suffix}-{index}"
        made = HostNetns(host, ns, f"gtr{self.suffix}{index}", f"gtn{self.suffix}{index}",
                         "", "")
        with self._lock, file_lock(LOCK_FILE):
            net = free_network(30)
            root_addr, ns_addr = (str(a) for a in list(net.hosts())[:2])
            made.root_addr, made.ns_addr = root_addr, ns_addr
            self.hosts[host] = made  # recorded before creation: close() removes halves
            self._save()
            _run("netns", "add", ns)
            _run("link", "add", made.root_if, "type", "veth", "peer", "name", made.ns_if)
            _run("link", "set", made.ns_if, "netns", ns)
            _run("addr", "add", f"{root_addr}/30", "dev", made.root_if)
        _run("link", "set", made.root_if, "up")
        inside = ("netns", "exec", ns, _ip())
        _run(*inside, "addr", "add", f"{ns_addr}/30", "dev", made.ns_if)
        _run(*inside, "link", "set", made.ns_if, "up")
        _run(*inside, "link", "set", "lo", "up")
        return made

    def close(self) -> None:
        """Delete every veth pair and namespace of this set (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _delete(self.hosts.values())
            with contextlib.suppress(OSError):
                self._state_file.unlink()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    @property
    def _state_file(self) -> Path:
        return STATE_DIR / f"{self.suffix}.json"

    def _save(self) -> None:
        body = {"pid": os.getpid(), "hosts": [vars(h) for h in self.hosts.values()]}
        self._state_file.write_text(json.dumps(body))


def _delete(hosts: Iterable[HostNetns]) -> None:
    for h in list(hosts):
        _run("link", "del", h.root_if, check=False)  # deletes both ends of the pair
        _run("netns", "del", h.ns, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces and veths left by runs whose process is gone; return their names."""
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for state in STATE_DIR.glob("*.json"):
        try:
            body = json.loads(state.read_text())
            pid = int(body["pid"])
            hosts = [HostNetns(**h) for h in body["hosts"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid_alive(pid):
            continue
        _delete(hosts)
        removed += [h.ns for h in hosts]
        with contextlib.suppress(OSError):
            state.unlink()
    return removed
