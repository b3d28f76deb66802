"""Simulated hypervisor hosts: a real libvirtd (test driver) per host, plus its agent."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from gridtool.config import Config, render
from gridtool.lab.procs import AGENT_MARKER, LabError, spawn, stop_pid, wait_for

LIBVIRTD_CONF = """\
unix_sock_dir = "{run}"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_rw_perms = "0770"
listen_tls = 0
listen_tcp = 0
log_outputs = "3:file:{dir}/libvirtd-internal.log"
host_uuid = "{host_uuid}"
"""


@dataclass
class LabHost:
    """One simulated host: its directory, libvirtd and agent processes."""

    name: str
    dir: str
    libvirtd_pid: int = 0
    agent_pid: int = 0

    @property
    def socket(self) -> Path:
        return Path(self.dir, "run", "libvirt-sock")

    @property
    def libvirt_uri(self) -> str:
        return f"test+unix:///default?socket={self.socket}"

    @property
    def agent_conf(self) -> Path:
        return Path(self.dir, "agent.conf")

    def start_libvirtd(self, timeout: float = 15.0) -> None:
        """Start this host's own libvirtd with only the (built-in) test driver."""
        libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
        if not Path(libvirtd).exists():
            raise LabError("libvirtd is not installed (apt-get install libvirt-daemon)")
        base = Path(self.dir)
        for sub in ("run", "drivers"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        conf = base / "libvirtd.conf"
        conf.write_text(LIBVIRTD_CONF.format(
            run=base / "run", dir=base, host_uuid=uuid.uuid5(uuid.NAMESPACE_DNS, str(base))))
        self.socket.unlink(missing_ok=True)
        proc = spawn([libvirtd, "--config", str(conf), "--pid-file", str(base / "libvirtd.pid")],
                     base / "libvirtd.log", env={"LIBVIRT_DRIVER_DIR": str(base / "drivers")})
        self.libvirtd_pid = proc.pid
        wait_for(self.socket.exists, timeout, f"libvirtd of {self.name}",
                 alive=lambda: proc.poll() is None)

    @property
    def watchdog(self) -> Path:
        return Path(self.dir, "watchdog")

    def write_agent_conf(self, base: Config, watchdog: bool = True,
                         as_host: str | None = None, path: Path | None = None) -> Path:
        """The agent's config (at ``path``, default :attr:`agent_conf`); with
        ``watchdog``, it pets this host's emulated watchdog. ``as_host``: the name its
        agent registers as (default this host's: another name is a cloned dom0 or a
        typo). Returns the file written."""
        from dataclasses import replace

        cfg = replace(base, host=as_host or self.name, libvirt_uri=self.libvirt_uri,
                      machine_id_file=str(self.machine_id()))
        if watchdog:
            cfg = replace(cfg, watchdog=str(self.watchdog), watchdog_kind="emulated",
                          watchdog_timeout=watchdog_timeout_for(base.ttl))
        path = path or self.agent_conf
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(cfg, include_secrets=True))
        path.chmod(0o600)
        return path

    def machine_id(self) -> Path:
        """This simulated machine's identity file (made once, kept with the host's dir):
        the lab's hosts share one real machine, so each needs its own."""
        path = Path(self.dir, "machine-id")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(uuid.uuid4().hex + "\n")
        return path

    def start_agent(self, extra: list[str] | None = None) -> subprocess.Popen:
        proc = spawn([sys.executable, "-m", "agents.main", "--config", str(self.agent_conf),
                      *(extra or [])], Path(self.dir, "agent.log"))
        self.agent_pid = proc.pid
        return proc

    def stop_agent(self) -> None:
        stop_pid(self.agent_pid, AGENT_MARKER)
        self.agent_pid = 0

    def stop_libvirtd(self) -> None:
        stop_pid(self.libvirtd_pid, "libvirtd")
        self.libvirtd_pid = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "libvirt_uri": self.libvirt_uri}

    @classmethod
    def from_dict(cls, data: dict) -> LabHost:
        return cls(data["name"], data["dir"], data.get("libvirtd_pid", 0),
                   data.get("agent_pid", 0))


def watchdog_timeout_for(ttl: int) -> float:
    """A watchdog timeout that healthy keepalives can always pet (80 % of the bound)."""
    from gridtool.fencing.rules import LeaseClock

    return round(LeaseClock.start(ttl, 0.0).max_watchdog_timeout * 0.8, 2)


def sample_domain_xml(host: str, index: int, shared: bool) -> str:
    """A small test-driver guest; ``shared`` gives it an AoE disk (a fenced guest)."""
    name = f"{host}-vm{index}"
    disk = (f"/dev/etherd/e{_host_number(host)}.{index}" if shared
            else f"/var/lib/gridtool-lab/{name}.qcow2")
    kind = "block" if shared else "file"
    attr = "dev" if shared else "file"
    return f"""<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid.uuid5(uuid.NAMESPACE_URL, 'gridtool-lab/' + name)}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='{kind}' device='disk'><source {attr}='{disk}'/><target dev='vda'/></disk>
  </devices>
</domain>"""


def _host_number(host: str) -> int:
    digits = "".join(c for c in host if c.isdigit())
    return int(digits) if digits else 0
