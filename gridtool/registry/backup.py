"""etcd snapshots: save one (atomically, checked) and restore one into a new data dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gridtool.config import Config
from gridtool.errors import AuthError, Conflict, GridtoolError, UsageError
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.upkeep import Member, SnapshotStatus, parse_status, restore_argv

_ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}


def _etcdctl() -> str:
    found = shutil.which("etcdctl")
    if found is None:
        raise GridtoolError("etcdctl is not installed (apt-get install etcd-client)")
    return found


def _run(argv: list[str], what: str) -> str:
    """etcdctl's output; GridtoolError '``what``: etcdctl's last line' when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, env=_ENV, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        raise GridtoolError(f"{what}: {last[0] if last else 'etcdctl failed'}")
    return done.stdout


def status(path: Path) -> SnapshotStatus:
    """``etcdctl snapshot status`` of ``path``: GridtoolError when it is no snapshot."""
    try:
        return parse_status(_run([_etcdctl(), "snapshot", "status", str(path), "-w", "json"],
                                 f"{path} is not a readable etcd snapshot"))
    except ValueError as exc:
        raise GridtoolError(f"{path}: {exc}") from None


def backup(cfg: Config, credentials: Path, path: Path) -> SnapshotStatus:
    """Save a snapshot as root (etcd lets only root take one), with root's password from
    ``credentials`` (where 'registry init' keeps it); as configured when there is none
    there or authentication is off."""
    from dataclasses import replace

    from gridtool.auth.credfiles import password_path, read_password
    from gridtool.auth.rules import ROOT

    password = read_password(password_path(credentials, ROOT))
    tries = [replace(cfg, user=ROOT, password=password, password_file=None)] if password else []
    for attempt in [*tries, cfg]:
        store = EtcdStore(attempt)
        try:
            return save(store, path)
        except AuthError as exc:
            if attempt is cfg or "not enabled" not in str(exc):
                raise
        finally:
            store.close()
    raise AssertionError("unreachable: the last try returns or raises")


def save(store: EtcdStore, path: Path) -> SnapshotStatus:
    """Write a snapshot of the registry to ``path``: streamed into a temporary file
    beside it, synced, checked with ``snapshot status``, then renamed over ``path`` (a
    reader never sees half a snapshot; a failed backup leaves the old file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as out:
            store.snapshot(out)
            out.flush()
            os.fsync(out.fileno())
        checked = status(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return checked


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(snapshot: Path, member: Member, data_dir: Path) -> SnapshotStatus:
    """Restore ``snapshot`` into ``data_dir`` for ``member``; refused when ``data_dir``
    exists (a restore never overwrites a member's data)."""
    if data_dir.exists():
        raise Conflict(f"{data_dir} exists: restore into a new data dir (a restore never "
                       "overwrites one)")
    checked = status(snapshot)
    _run(restore_argv(_etcdctl(), str(snapshot), member, str(data_dir)),
         f"restoring {snapshot} into {data_dir}")
    return checked
