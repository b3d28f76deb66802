"""The lab's shared storage over iSCSI: a lab-owned ``tgtd`` (Debian's ``tgt``) on loopback.

One target per lab, its LUNs backed by files in the lab dir (``lun-N.img``); each lab host
has its own initiator IQN, and only those (and the CLI's and the managers') pass the
target's ACL. tgtd runs
in the foreground with its own control port (``tgtd -C N``, its socket
``/var/run/tgtd/socket.N``) so it never meets a system tgtd, and it ignores SIGTERM while
it has targets: :func:`stop` deletes them with ``tgtadm`` first, SIGKILLs if that fails,
and removes the control socket files, so nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gridtool.lab.procs import LabError, cmdline, free_port, port_open, spawn, stop_pid, wait_for

#: The naming authority of every lab IQN (a date the lab owns, per RFC 3720 3.2.6.3.1).
IQN_BASE = "iqn.2026-12.lab.gridtool"
TARGET_IQN = f"{IQN_BASE}:storage"
#: The CLI's own initiator (``fence list --storage`` reads keys through it).
CLI_INITIATOR = f"{IQN_BASE}:cli"
#: The managers' initiator: they fence lost hosts at the storage through it.
MANAGER_INITIATOR = f"{IQN_BASE}:manager"
TGT_SOCKET_DIR = Path("/var/run/tgtd")
#: Control ports tried for the lab's tgtd (a system tgtd uses 0).
CONTROL_PORTS = range(10000, 32768)  # tgtd takes 0..32767
TID = 1
#: iSCSI's well-known port (RFC 7143): the segment portal's, on an address of its own.
ISCSI_PORT = 3260
START_TIMEOUT = 10.0
#: A lab LUN's size unless told (a QEMU lab's LUNs are its guests' data disks: smaller).
LUN_MIB = 64


def initiator_iqn(host: str) -> str:
    """Lab host ``host``'s initiator IQN."""
    return f"{IQN_BASE}:{host}"


@dataclass
class IscsiTarget:
    """A lab's tgtd: where it listens, what it exports, who may log in."""

    directory: str
    port: int
    luns: int
    size_mb: int
    hosts: list[str]
    control_port: int = 0
    pid: int = 0
    iqn: str = TARGET_IQN
    initiators: dict[str, str] = field(default_factory=dict)
    #: A second portal, "ADDR:PORT" on the lab's L2 segment, for the dom0 kernels ('' none).
    segment_portal: str = ""

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lun_numbers(self) -> list[int]:
        return list(range(1, self.luns + 1))

    def lun_path(self, lun: int) -> Path:
        return Path(self.directory, f"lun-{lun}.img")

    def url(self, lun: int) -> str:
        """The LUN as libiscsi and QEMU name it."""
        return f"iscsi://{self.portal}/{self.iqn}/{lun}"

    def log(self) -> Path:
        return Path(self.directory, "tgtd.log")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "portal": self.portal,
                "urls": [self.url(n) for n in self.lun_numbers()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IscsiTarget:
        names = ("directory", "port", "luns", "size_mb", "hosts", "control_port", "pid",
                 "iqn", "initiators", "segment_portal")
        return cls(**{k: data[k] for k in names if k in data})


def create(directory: Path, hosts: list[str], luns: int = 2,
           size_mb: int = LUN_MIB) -> IscsiTarget:
    """A target description for ``hosts`` (not started), its LUN files under ``directory``."""
    if luns < 1 or size_mb < 1:
        raise LabError("need at least one LUN of at least 1 MiB")
    initiators = {name: initiator_iqn(name) for name in hosts}
    return IscsiTarget(str(directory), free_port(), luns, size_mb, list(hosts),
                       initiators=initiators)


def tgtadm(control_port: int, *args: str) -> list[str]:
    """A ``tgtadm`` command line for the lab's tgtd."""
    return ["tgtadm", "-C", str(control_port), "--lld", "iscsi", *args]


def setup_commands(target: IscsiTarget) -> list[list[str]]:
    """What makes a started tgtd export the lab's LUNs to the lab's initiators."""
    tid = str(TID)
    cmds = [tgtadm(target.control_port, "--mode", "target", "--op", "new", "--tid", tid,
                   "--targetname", target.iqn)]
    cmds += [tgtadm(target.control_port, "--mode", "logicalunit", "--op", "new", "--tid", tid,
                    "--lun", str(lun), "--backing-store", str(target.lun_path(lun)))
             for lun in target.lun_numbers()]
    cmds += [tgtadm(target.control_port, "--mode", "target", "--op", "bind", "--tid", tid,
                    "--initiator-name", iqn)
             for iqn in [*target.initiators.values(), CLI_INITIATOR, MANAGER_INITIATOR]]
    return cmds


def add_portal(target: IscsiTarget, address: str, port: int = ISCSI_PORT) -> IscsiTarget:
    """Make the running tgtd listen on ``address:port`` too (its LUNs, ACL and
    reservations are the same on every portal)."""
    portal = f"{address}:{port}"
    if target.segment_portal != portal:
        _run(tgtadm(target.control_port, "--mode", "portal", "--op", "new",
                    "--param", f"portal={portal}"))
        target.segment_portal = portal
    return target


def stop_commands(control_port: int) -> list[list[str]]:
    """What makes tgtd drop its target (sessions too) and exit."""
    return [tgtadm(control_port, "--mode", "target", "--op", "delete", "--force",
                   "--tid", str(TID)),
            tgtadm(control_port, "--mode", "system", "--op", "delete")]


def socket_files(control_port: int) -> list[Path]:
    """The control socket and its lock file, which tgtd leaves behind when it exits."""
    sock = TGT_SOCKET_DIR / f"socket.{control_port}"
    return [sock, sock.with_name(sock.name + ".lock")]


def start(target: IscsiTarget) -> IscsiTarget:
    """Create the LUN files, start tgtd on a free control port, export the LUNs."""
    tgtd = shutil.which("tgtd")
    if tgtd is None or shutil.which("tgtadm") is None:
        raise LabError("tgtd is not installed (apt-get install tgt)")
    for lun in target.lun_numbers():
        with target.lun_path(lun).open("wb") as fh:
            fh.truncate(target.size_mb << 20)
    TGT_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    for control_port in random.sample(CONTROL_PORTS, 5):
        if any(path.exists() for path in socket_files(control_port)):
            continue  # another tgtd's, or one that was not cleaned: not ours
        if _started(target, tgtd, control_port):
            for argv in setup_commands(target):
                _run(argv)
            return target
    raise LabError(f"tgtd did not start (log in {target.log()})")


def _started(target: IscsiTarget, tgtd: str, control_port: int) -> bool:
    """Start tgtd on ``control_port``; False when it exited at once (another tgtd took
    that control port meanwhile)."""
    proc = spawn([tgtd, "-f", "-C", str(control_port), "--iscsi", f"portal={target.portal}"],
                 target.log())
    target.control_port, target.pid = control_port, proc.pid
    try:
        wait_for(lambda: port_open(target.port), START_TIMEOUT, "tgtd",
                 alive=lambda: proc.poll() is None)
    except LabError:
        if proc.poll() is None:
            raise
        return False
    return True


def stop(target: IscsiTarget) -> bool:
    """Stop the lab's tgtd and remove its control socket; True when one was running."""
    running = alive(target)
    if running:
        for argv in stop_commands(target.control_port):
            with contextlib.suppress(LabError):
                _run(argv)
        # it exits on its own after 'system delete'; SIGTERM, then SIGKILL, if it does not
        with contextlib.suppress(LabError):
            wait_for(lambda: not alive(target), 3.0, "tgtd exit")
        stop_pid(target.pid, _marker(target.control_port), timeout=1.0)
        with contextlib.suppress(ChildProcessError):  # our child when the lab started it
            os.waitpid(target.pid, os.WNOHANG)
    if target.control_port:
        for path in socket_files(target.control_port):
            path.unlink(missing_ok=True)
    return running


def alive(target: IscsiTarget) -> bool:
    return bool(target.pid) and _is_tgtd(target.pid, target.control_port)


def remove_luns(target: IscsiTarget) -> None:
    for lun in target.lun_numbers():
        target.lun_path(lun).unlink(missing_ok=True)


def _marker(control_port: int) -> str:
    return f"-C {control_port} "


def _is_tgtd(pid: int, control_port: int) -> bool:
    line = cmdline(pid)
    return "tgtd" in line and _marker(control_port) in line


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv[:6])}: {exc}") from None
    if done.returncode:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
