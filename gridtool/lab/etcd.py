"""Start and stop a real etcd (one member, or a real 3-member cluster) on loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from gridtool.lab.procs import LabError, free_port, port_open, spawn, stop_pid, wait_for
from gridtool.registry.upkeep import Member, member_flags

#: The lab members' Raft timing (etcd's defaults are 100 ms and 1000 ms): a leader that
#: sends no heartbeat for ELECTION_TIMEOUT_MS is replaced by an election.
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500


def _running(proc: subprocess.Popen) -> bool:
    """True while ``proc`` has not exited."""
    return proc.poll() is None


@dataclass
class EtcdMember:
    """One etcd member of a lab cluster."""

    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log: str
    pid: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def argv(self, cluster: str, token: str, state: str = "new",
             tls: TlsFiles | None = None) -> list[str]:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise LabError("etcd is not installed (apt-get install etcd-server)")
        scheme = "https" if tls else "http"
        client = f"{scheme}://127.0.0.1:{self.client_port}"
        peer = f"{scheme}://127.0.0.1:{self.peer_port}"
        return [
            etcd, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", state,
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_TIMEOUT_MS),
            "--logger", "zap", "--log-outputs", "stderr",
            *member_flags(),  # compaction and quota, as in production
            *(tls.etcd_flags() if tls else []),
        ]


@dataclass
class TlsFiles:
    """Certificates from ``gridtool registry certs`` (``gridtool.auth.certs``) in ``directory``:
    client and peer URLs over TLS; with ``client_cert_auth`` clients must show a
    certificate signed by the CA (its CN is then the etcd user)."""

    directory: str
    client_cert_auth: bool = False

    def path(self, name: str) -> str:
        return str(Path(self.directory, name))

    def etcd_flags(self) -> list[str]:
        ca, cert, key = self.path("ca.crt"), self.path("server.crt"), self.path("server.key")
        flags = ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                 "--peer-cert-file", cert, "--peer-key-file", key,
                 "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"]
        return flags + (["--client-cert-auth"] if self.client_cert_auth else [])

    def etcdctl_flags(self) -> list[str]:
        """The server certificate doubles as a client certificate (CN 'etcd', no user)."""
        return ["--cacert", self.path("ca.crt"), "--cert", self.path("server.crt"),
                "--key", self.path("server.key")]


@dataclass
class EtcdCluster:
    """A lab etcd cluster; ``start`` and ``stop`` each member by PID."""

    members: list[EtcdMember]
    token: str
    tls: TlsFiles | None = None

    @classmethod
    def create(cls, directory: Path, size: int = 1, tls: TlsFiles | None = None) -> EtcdCluster:
        members = [
            EtcdMember(f"etcd{i}", free_port(), free_port(), str(directory / f"etcd{i}.data"),
                       str(directory / f"etcd{i}.log"))
            for i in range(size)
        ]
        return cls(members, f"gridtool-lab-{uuid.uuid4().hex[:8]}", tls)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def initial_cluster(self) -> str:
        scheme = "https" if self.tls else "http"
        return ",".join(f"{m.name}={scheme}://127.0.0.1:{m.peer_port}" for m in self.members)

    def start(self, timeout: float = 20.0, attempts: int = 3) -> None:
        """Start every member and wait until the cluster is healthy. A member that lost
        its free port to another process meanwhile (the ports are picked before etcd binds
        them) makes the whole cluster start again on fresh ports; any other failure stops
        the members already started, so a failed start leaves nothing running."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return
            except BaseException:
                self.stop()
                if attempt == attempts or not self._lost_a_port():
                    raise
            for member in self.members:
                shutil.rmtree(member.data_dir, ignore_errors=True)
                Path(member.log).unlink(missing_ok=True)
                member.client_port, member.peer_port = free_port(), free_port()

    def resume(self, timeout: float = 20.0) -> None:
        """Start every member again on its ports with the data it has (no fresh ports, no
        new data dirs: see ``start``); a failed start stops what it started."""
        try:
            self._start_once(timeout)
        except BaseException:
            self.stop()
            raise

    def restore_member(self, member: EtcdMember) -> Member:
        """Who ``member`` is, for ``etcdctl snapshot restore``."""
        scheme = "https" if self.tls else "http"
        return Member(member.name, f"{scheme}://127.0.0.1:{member.peer_port}",
                      self.initial_cluster, self.token)

    def _start_once(self, timeout: float) -> None:
        procs = [self.start_member(m, wait=False) for m in self.members]
        for member, proc in zip(self.members, procs, strict=True):
            wait_for(partial(port_open, member.client_port), timeout,
                     f"etcd member {member.name} on port {member.client_port}",
                     alive=partial(_running, proc))
        wait_for(self.healthy, timeout, "etcd cluster health")

    def _lost_a_port(self) -> bool:
        """Whether a member's log says it could not bind its port."""
        for member in self.members:
            try:
                if "address already in use" in Path(member.log).read_text(errors="replace"):
                    return True
            except OSError:
                continue
        return False

    def start_member(self, member: EtcdMember, wait: bool = True) -> subprocess.Popen:
        """(Re)start one member with its existing data dir."""
        state = "existing" if Path(member.data_dir, "member").exists() else "new"
        tls = {"tls": self.tls} if self.tls else {}  # subclasses may not take it (chaos)
        proc = spawn(member.argv(self.initial_cluster, self.token, state, **tls),
                     Path(member.log))
        member.pid = proc.pid
        if wait:
            wait_for(lambda: port_open(member.client_port), 20.0,
                     f"etcd member {member.name}", alive=lambda: proc.poll() is None)
        return proc

    def stop_member(self, member: EtcdMember, kill: bool = False) -> None:
        stop_pid(member.pid, "etcd", timeout=0.0 if kill else 5.0)
        member.pid = 0

    def healthy(self) -> bool:
        """True when etcdctl reads through every running member.

        With authentication on, etcdctl has no user here: a read refused with "user name
        is empty" or "permission denied" was refused after it went through consensus,
        which is what this checks."""
        etcdctl = shutil.which("etcdctl")
        if etcdctl is None:
            raise LabError("etcdctl is not installed (apt-get install etcd-client)")
        eps = ",".join(m.endpoint for m in self.members if m.pid)
        done = subprocess.run(
            [etcdctl, "--endpoints", eps, "--command-timeout=1s", "endpoint", "health",
             *(self.tls.etcdctl_flags() if self.tls else [])],
            capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if done.returncode == 0:
            return True
        lines = (done.stdout + done.stderr).splitlines()
        return all(any(line.startswith(f"{ep} is healthy") or (
            line.startswith(f"{ep} is unhealthy") and _refused_after_consensus(line))
            for line in lines) for ep in eps.split(","))

    def stop(self) -> None:
        for member in self.members:
            self.stop_member(member)

    def to_dict(self) -> dict:
        return {"token": self.token, "members": [asdict(m) for m in self.members],
                "tls": asdict(self.tls) if self.tls else None}

    @classmethod
    def from_dict(cls, data: dict) -> EtcdCluster:
        tls = TlsFiles(**data["tls"]) if data.get("tls") else None
        return cls([EtcdMember(**m) for m in data["members"]], data["token"], tls)


def _refused_after_consensus(line: str) -> bool:
    return "user name is empty" in line or "permission denied" in line
