"""etcd upkeep, as data: the flags every member gridtool configures gets (compaction,
quota), and the etcdctl command lines for snapshots. No I/O here."""

from __future__ import annotations

import json
from dataclasses import dataclass

#: Compact the history older than this, every so often (the manager and agents write
#: often: without compaction the database grows until NOSPACE).
COMPACTION_MODE = "periodic"
COMPACTION_RETENTION = "1h"
#: The backend quota (etcd's default, made explicit): past it etcd raises NOSPACE and
#: refuses writes until compacted and defragmented.
QUOTA_BACKEND_BYTES = 2 * 1024 ** 3


def member_flags() -> list[str]:
    """The upkeep flags of an etcd member (lab and production alike)."""
    return ["--auto-compaction-mode", COMPACTION_MODE,
            "--auto-compaction-retention", COMPACTION_RETENTION,
            "--quota-backend-bytes", str(QUOTA_BACKEND_BYTES)]


def member_env() -> dict[str, str]:
    """The same settings as /etc/default/etcd variables (Debian's etcd-server unit)."""
    return {"ETCD_AUTO_COMPACTION_MODE": COMPACTION_MODE,
            "ETCD_AUTO_COMPACTION_RETENTION": COMPACTION_RETENTION,
            "ETCD_QUOTA_BACKEND_BYTES": str(QUOTA_BACKEND_BYTES)}


@dataclass(frozen=True)
class SnapshotStatus:
    """What ``etcdctl snapshot status`` says of a snapshot file."""

    hash: int
    revision: int
    total_keys: int
    total_size: int


def parse_status(output: str) -> SnapshotStatus:
    """``etcdctl snapshot status -w json`` output; ValueError when it is not that."""
    try:
        data = json.loads(output)
        return SnapshotStatus(int(data["hash"]), int(data["revision"]), int(data["totalKey"]),
                              int(data["totalSize"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unexpected snapshot status {output.strip()[:80]!r}") from exc


@dataclass(frozen=True)
class Member:
    """One member a snapshot is restored for: its name, peer URL, and the cluster."""

    name: str
    peer_url: str
    initial_cluster: str  # name=peer-url,...
    token: str


def restore_argv(etcdctl: str, snapshot: str, member: Member, data_dir: str) -> list[str]:
    """``etcdctl snapshot restore`` of ``snapshot`` into a new ``data_dir`` for ``member``
    (etcd 3.4; etcd >= 3.5 offers the same as ``etcdutl snapshot restore``)."""
    return [etcdctl, "snapshot", "restore", snapshot, "--name", member.name,
            "--data-dir", data_dir, "--initial-cluster", member.initial_cluster,
            "--initial-cluster-token", member.token,
            "--initial-advertise-peer-urls", member.peer_url]
