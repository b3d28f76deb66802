"""The lab's etcd cluster: a start that loses a port retries; a failed start leaves nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gridtool.lab.etcd import EtcdCluster
from gridtool.lab.procs import LabError, cmdline


def _taken(port: int) -> socket.socket:
    """Hold ``port`` on loopback, as another process that grabbed it would."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_member_that_lost_its_port_starts_again_on_fresh_ports(tmp_path: Path) -> None:
    cluster = EtcdCluster.create(tmp_path, 1)
    lost = cluster.members[0].peer_port
    with _taken(lost):
        try:
            cluster.start(timeout=20.0)
            member = cluster.members[0]
            assert member.peer_port != lost and member.pid
            assert cluster.healthy()
        finally:
            cluster.stop()
    assert cluster.members[0].pid == 0


def test_a_failed_start_leaves_no_member_running(tmp_path: Path) -> None:
    cluster = EtcdCluster.create(tmp_path, 3)
    with _taken(cluster.members[-1].peer_port), pytest.raises(LabError):
        cluster.start(timeout=10.0, attempts=1)  # etcd0 and etcd1 started, etcd2 did not
    assert all(m.pid == 0 for m in cluster.members)
    assert not [line for line in _etcd_cmdlines() if str(tmp_path) in line]


def _etcd_cmdlines() -> list[str]:
    return [cmdline(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()]
