"""A test bed of simulated hosts for the tests and benchmarks: libvirtd test-driver
hosts started on demand, a held connection to each, and agents as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt

from gridtool.auth.rules import host_user
from gridtool.config import Config
from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS
from gridtool.lab.hosts import LabHost, watchdog_timeout_for
from gridtool.lab.procs import LabError
from gridtool.lab.watchdog import WatchdogEmulator
from tests.harness import ROOT


class LabHosts:
    """Start simulated hosts (libvirtd + a held connection) and their agents.

    Like ``gridtool lab up``, every host gets the lab's power fence agent
    (``fence_gridtool_lab``, on a ``lab.json`` in ``base`` kept up to date here) when its
    agent first starts, unless ``power_fence`` is False (the manager's timed path)."""

    def __init__(self, base: Path, cfg: Config, power_fence: bool = True) -> None:
        self.base = base
        self.cfg = cfg
        self.power_fence = power_fence
        self.fence_agents: set[str] = set()  # hosts given the lab fence agent
        self.hosts: dict[str, LabHost] = {}
        self.conns: dict[str, libvirt.virConnect] = {}
        self.agents: dict[str, subprocess.Popen] = {}
        self.watchdogs: dict[str, WatchdogEmulator] = {}
        self.credentials: dict[tuple[str, bool], str] = {}  # (host, manager) -> password file

    def add(self, name: str, clear: bool = True) -> LabHost:
        host = LabHost(name, str(self.base / name))
        host.start_libvirtd()
        self.hosts[name] = host
        self._save_state()
        conn = wait_until(lambda: _try_open(host.libvirt_uri), 10.0,  # the socket file
                          what=f"libvirtd of {name} accepting")  # exists before listen()
        self.conns[name] = conn
        if clear:
            for dom in conn.listAllDomains(0):
                dom.destroy()
                dom.undefine()
        return host

    @property
    def images_dir(self) -> Path:
        """Golden images and clone overlays of every host (shared storage in production)."""
        return self.base / "images"

    def conn(self, name: str) -> libvirt.virConnect:
        return self.conns[name]

    def start_agent(self, name: str, watchdog: bool = True, as_host: str | None = None,
                    **settings: object) -> subprocess.Popen:
        """Start ``name``'s agent; with ``watchdog``, a killed or hung agent resets the
        simulated host (its running guests are destroyed) as a hardware watchdog would.
        ``as_host``: the agent registers under that name, with that host's credentials
        (a cloned dom0, or a typo in its config), on ``name``'s machine."""
        host = self.hosts[name]
        settings.setdefault("images_dir", str(self.images_dir))  # one lab-wide directory
        cfg = replace(self.cfg, **settings)  # type: ignore[arg-type]
        host.write_agent_conf(self._host_credentials(as_host or name, cfg), watchdog, as_host)
        if watchdog and name not in self.watchdogs:
            self.watchdogs[name] = WatchdogEmulator(
                host.watchdog, watchdog_timeout_for(cfg.ttl), host.libvirt_uri, name,
                on_reset=self._power_loss).start()
        if self.power_fence and name not in self.fence_agents:
            self._set_fence_agent(name)
        proc = host.start_agent()
        self.agents[name] = proc
        self._save_state()
        return proc

    def _save_state(self) -> None:
        """The lab state ``fence_gridtool_lab`` reads (hosts, their libvirtd and agent)."""
        from gridtool.lab.state import state_path, write_file

        self.base.mkdir(parents=True, exist_ok=True)
        write_file(state_path(self.base), json.dumps(
            {"v": 1, "lab_dir": str(self.base), "hosts": [h.to_dict() for h in
                                                          self.hosts.values()]}))

    def _set_fence_agent(self, name: str) -> None:
        from gridtool.lab.lab import FENCE_AGENT
        from gridtool.registry import fenceagents
        from gridtool.registry.etcdstore import EtcdStore

        store = EtcdStore(self.cfg)
        try:
            fenceagents.write(store, self.cfg.keys, name, FENCE_AGENT,
                              {"lab_dir": str(self.base), "plug": name}, by="testbed")
        finally:
            store.close()
        self.fence_agents.add(name)

    def _host_credentials(self, name: str, cfg: Config) -> Config:
        """With authentication on, the agent runs as its own etcd user ``host-<name>``
        (issued once per host and manager setting, from root's password file beside
        the admin's)."""
        if not cfg.user or not cfg.password_file:
            return cfg
        from gridtool.auth.shell import credentials_dir, issue_host_credentials

        key = (name, cfg.manager)
        if key not in self.credentials:
            self.credentials[key] = issue_host_credentials(
                cfg, credentials_dir(cfg, None), name, manager=cfg.manager).password_file
        user = host_user(name, cfg.prefix)
        return replace(cfg, user=user, password=None, password_file=self.credentials[key])

    def _power_loss(self, name: str) -> None:
        """A watchdog reset takes the host's agent down with its guests."""
        proc = self.agents.get(name)
        if proc is not None and proc.poll() is None:
            proc.kill()

    def stop_agent(self, name: str, kill: bool = False) -> None:
        proc = self.agents.pop(name)
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def agent_log(self, name: str) -> str:
        return Path(self.hosts[name].dir, "agent.log").read_text()

    def agent_events(self, name: str, event: str) -> list[tuple[float, str]]:
        """``name``'s agent log lines of ``event=<event>`` with their wall-clock times
        (``time.time()`` scale, millisecond resolution), oldest first."""
        return log_events(self.agent_log(name), event)

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        for dog in self.watchdogs.values():
            dog.stop()
        for conn in self.conns.values():
            with contextlib.suppress(libvirt.libvirtError):  # the daemon may be gone
                conn.close()
        for host in self.hosts.values():
            host.stop_libvirtd()


def credential_env() -> dict[str, str]:
    """This process's ``GRIDTOOL_CONFIG`` (the tests' admin credentials), for a CLI
    subprocess run with a clean environment."""
    return {k: v for k, v in os.environ.items() if k == "GRIDTOOL_CONFIG"}


def _try_open(uri: str) -> libvirt.virConnect | None:
    """A connection (it keeps the test driver's state alive), or None if refused yet."""
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError:
        return None


def wait_until(condition: Callable[[], object], timeout: float = 10.0,
               what: str = "condition") -> object:
    """Poll until ``condition()`` is truthy; raise LabError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


#: After a lease's last keepalive, etcd deletes its keys within the TTL plus its lessor's
#: check period (0.5 s); 2 s more for a loaded 2-core machine (etcd, the agents and the
#: test share two cores). A key that outlives a second TTL fails.
LEASE_EXPIRY_SLACK_S = 0.5 + 2.0


def lease_expiry_bound(ttl: float) -> float:
    """Seconds from a lease's last keepalive (a power-off, a cut) to its keys gone."""
    return ttl + LEASE_EXPIRY_SLACK_S


def hold_for(seconds: float, invariant: Callable[[], object], what: str,
             interval: float = 0.05) -> None:
    """Observe for ``seconds``: ``invariant()`` must stay truthy at every poll, and the
    first poll where it does not fails at once (AssertionError naming ``what``).

    For a claim that something does NOT happen within a window (a reset, a move): the
    window is the claim's, not a wait for a result, which ``wait_until`` is for."""
    deadline = time.monotonic() + seconds
    while True:
        assert invariant(), f"{what}: broken {seconds - (deadline - time.monotonic()):.2f} s " \
            f"into the {seconds:.2f} s window"
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(interval, left))


def log_events(text: str, event: str) -> list[tuple[float, str]]:
    """Lines of a gridtool log (``%(asctime)s LEVEL event=...``) with ``event=<event>``
    as (wall-clock time, line)."""
    found = []
    for line in text.splitlines():
        if f" event={event} " in f"{line} ":
            stamp = " ".join(line.split()[:2])
            found.append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), line))
    return found


def run_fence_hook(socket: str, xml: str, name: str, op: str = "prepare",
                   timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the libvirt fence hook as a QEMU host's libvirtd does (``python -I
    agents/hook.py --socket S --shared P... -- NAME OP begin -``, the domain XML on its
    stdin, the default shared patterns as ``gridtool lab`` installs them); ``timeout``:
    the hook's own ``--timeout`` (its default when None)."""
    shared = [arg for pattern in DEFAULT_SHARED_PATTERNS for arg in ("--shared", pattern)]
    wait = ["--timeout", str(timeout)] if timeout is not None else []
    return subprocess.run(
        [sys.executable, "-I", str(ROOT / "agents" / "hook.py"), "--socket", socket, *shared,
         *wait, "--", name, op, "begin", "-"],
        input=xml, capture_output=True, text=True, timeout=60)


def domain_xml(name: str, memory_mib: int = 128, disk: str | None = None,
               block: bool = False) -> str:
    """A test-driver domain definition."""
    dev = ""
    if disk:
        kind, attr = ("block", "dev") if block else ("file", "file")
        dev = (f"<disk type='{kind}' device='disk'><source {attr}='{disk}'/>"
               "<target dev='vda'/></disk>")
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>1</vcpu><os><type>hvm</type></os><devices>{dev}</devices></domain>")


def run_cli(cfg: Config, capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run the gridtool CLI in-process against ``cfg``'s registry (a test's ``capsys``
    captures it): (exit code, stdout, stderr)."""
    from gridtool.cli.main import main

    capsys.readouterr()
    code: int | str | None = 0
    try:
        main(["--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return (1 if isinstance(code, str) else code or 0), out, err


#: A past time as the CLI's tables show it, '12s ago (2026-12-02 05:20:15 UTC)' (group 1:
#: the UTC time).
AGO = r"\d+[smhd] ago \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\)"


def show_tables(out: str) -> dict[str, list[list[str]]]:
    """The titled tables of a ``show`` command's output: title -> rows, each row its cells
    (split on runs of 2+ spaces; the header row left out). A title is the line above an
    all-capitals header; ``title: -`` (an empty section) gives no rows."""
    import re

    def is_header(line: str) -> bool:
        return bool(re.fullmatch(r"[A-Z][A-Z ]*", line.strip()))

    lines = [line.rstrip() for line in out.splitlines()] + [""]
    found: dict[str, list[list[str]]] = {}
    rows: list[list[str]] = []
    i = 0
    while i < len(lines) - 1:
        line = lines[i]
        if is_header(lines[i + 1]) and not is_header(line):
            rows = found.setdefault(line.strip(), [])
            i += 2
            continue
        if line.endswith(": -"):
            rows = found.setdefault(line[:-3], [])
        elif line:
            rows.append(re.split(r"\s{2,}", line.strip()))
        i += 1
    return found


def as_fields(rows: list[list[str]]) -> dict[str, str]:
    """A FIELD / VALUE table's rows (from :func:`show_tables`) by field."""
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def terminate(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop ``proc`` as systemd would: SIGTERM, then SIGKILL after ``timeout`` seconds;
    reaped either way (its ``returncode`` says which)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: ``python -c`` code running the gridtool CLI as an installed copy without a source tree
#: runs it: looking for the tree (what building a wheel needs) fails the command.
CLI_WITHOUT_SOURCE_TREE = (
    "import gridtool.bootstrap.shell as s\n"
    "def nope():\n    raise AssertionError('host add looked for the source tree')\n"
    "s.project_root = nope\n"
    "from gridtool.cli.main import main\nmain()\n")
