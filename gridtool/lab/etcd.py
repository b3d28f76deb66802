"""Start and stop a real etcd (one member, or a real 3-member cluster) on loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from gridtool.lab.procs import LabError, free_port, port_open, spawn, stop_pid, wait_for


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

    def argv(self, cluster: str, token: str, state: str = "new") -> list[str]:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise LabError("etcd is not installed (apt-get install etcd-server)")
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", state,
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-outputs", "stderr",
        ]


@dataclass
class EtcdCluster:
    """A lab etcd cluster; ``start`` and ``stop`` each member by PID."""

    members: list[EtcdMember]
    token: str

    @classmethod
    def create(cls, directory: Path, size: int = 1) -> EtcdCluster:
        members = [
            EtcdMember(f"etcd{i}", free_port(), free_port(), str(directory / f"etcd{i}.data"),
                       str(directory / f"etcd{i}.log"))
            for i in range(size)
        ]
        return cls(members, f"gridtool-lab-{uuid.uuid4().hex[:8]}")

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def start(self, timeout: float = 20.0) -> None:
        procs = [self.start_member(m, wait=False) for m in self.members]
        for member, proc in zip(self.members, procs, strict=True):
            wait_for(lambda m=member: port_open(m.client_port), timeout,
                     f"etcd member {member.name} on port {member.client_port}",
                     alive=lambda p=proc: p.poll() is None)
        wait_for(self.healthy, timeout, "etcd cluster health")

    def start_member(self, member: EtcdMember, wait: bool = True) -> subprocess.Popen:
        """(Re)start one member with its existing data dir."""
        state = "existing" if Path(member.data_dir, "member").exists() else "new"
        proc = spawn(member.argv(self.initial_cluster, self.token, state), Path(member.log))
        member.pid = proc.pid
        if wait:
            wait_for(lambda: port_open(member.client_port), 20.0,
                     f"etcd member {member.name}", alive=lambda: proc.poll() is None)
        return proc

    def stop_member(self, member: EtcdMember, kill: bool = False) -> None:
        stop_pid(member.pid, "etcd", timeout=0.0 if kill else 5.0)
        member.pid = 0

    def healthy(self) -> bool:
        """True when etcdctl reads through every running member."""
        etcdctl = shutil.which("etcdctl")
        if etcdctl is None:
            raise LabError("etcdctl is not installed (apt-get install etcd-client)")
        eps = ",".join(m.endpoint for m in self.members if m.pid)
        done = subprocess.run(
            [etcdctl, "--endpoints", eps, "--command-timeout=1s", "endpoint", "health"],
            capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return done.returncode == 0

    def stop(self) -> None:
        for member in self.members:
            self.stop_member(member)

    def to_dict(self) -> dict:
        return {"token": self.token, "members": [asdict(m) for m in self.members]}

    @classmethod
    def from_dict(cls, data: dict) -> EtcdCluster:
        return cls([EtcdMember(**m) for m in data["members"]], data["token"])
