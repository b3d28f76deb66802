"""A test bed of simulated hosts for the tests and benchmarks: libvirtd test-driver
hosts started on demand, a held connection to each, and agents as real processes."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import libvirt

from gridtool.config import Config
from gridtool.lab.hosts import LabHost, watchdog_timeout_for
from gridtool.lab.procs import LabError
from gridtool.lab.watchdog import WatchdogEmulator


class LabHosts:
    """Start simulated hosts (libvirtd + a held connection) and their agents."""

    def __init__(self, base: Path, cfg: Config) -> None:
        self.base = base
        self.cfg = cfg
        self.hosts: dict[str, LabHost] = {}
        self.conns: dict[str, libvirt.virConnect] = {}
        self.agents: dict[str, subprocess.Popen] = {}
        self.watchdogs: dict[str, WatchdogEmulator] = {}

    def add(self, name: str, clear: bool = True) -> LabHost:
        host = LabHost(name, str(self.base / name))
        host.start_libvirtd()
        self.hosts[name] = host
        conn = libvirt.open(host.libvirt_uri)  # keeps the test driver's state alive
        self.conns[name] = conn
        if clear:
            for dom in conn.listAllDomains(0):
                dom.destroy()
                dom.undefine()
        return host

    def conn(self, name: str) -> libvirt.virConnect:
        return self.conns[name]

    def start_agent(self, name: str, watchdog: bool = True,
                    **settings: object) -> subprocess.Popen:
        """Start ``name``'s agent; with ``watchdog``, a killed or hung agent resets the
        simulated host (its running guests are destroyed) as a hardware watchdog would."""
        host = self.hosts[name]
        cfg = replace(self.cfg, **settings)  # type: ignore[arg-type]
        host.write_agent_conf(cfg, watchdog)
        if watchdog and name not in self.watchdogs:
            self.watchdogs[name] = WatchdogEmulator(
                host.watchdog, watchdog_timeout_for(cfg.ttl), host.libvirt_uri, name,
                on_reset=self._power_loss).start()
        proc = host.start_agent()
        self.agents[name] = proc
        return proc

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
