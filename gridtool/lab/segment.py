"""The lab's L2 segment: the Ethernet that the dom0 QEMU machines and the storage targets
share (AoE is raw Ethernet, so the dom0 kernels need one wire with ``vblade`` on it).

It lives in a lab-owned network namespace ``gtseg-SUFFIX``:

* a bridge ``gtbr0`` in the namespace;
* a ``vde_switch`` run inside the namespace, with its tap ``gtstap0`` on the bridge. Every
  QEMU machine joins the switch through its unix socket (``-netdev vde,sock=...``): a path,
  so QEMU itself stays in the root namespace (its user network still reaches the lab's
  etcd on loopback) and opens no tap;
* a veth pair: its namespace end on the bridge, its root end ``gtsrSUFFIX`` holding the
  segment's first address, where the lab's ``tgtd`` gets a second portal (one tgtd, so
  the managers on loopback and the dom0 kernels on the segment see the same reservations).
  Nothing is routed or forwarded: only the lab's own processes use it.

``vblade`` binds to the bridge inside the namespace (:mod:`gridtool.lab.aoe`).

Addresses: a /24 of the RFC 2544 range 198.18.0.0/15 that no root-namespace interface
uses, picked under the same lock file as the tests' per-host namespaces. ``.1`` is the
root end (the iSCSI portal), ``.2`` the bridge (probes from the namespace), host ``i`` is
``.(10+i)`` with MAC ``52:54:00:67:00:ii``.
:meth:`Segment.qemu_args` and :meth:`Segment.kernel_arg` are the QEMU and dom0 sides.
:func:`up` and :func:`down` are idempotent; :func:`down` leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gridtool.lab.procs import LabError, cmdline, file_lock, stop_pid, wait_for

#: RFC 2544: addresses for benchmarking, never routed on the internet.
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
#: Held while an address block is picked and assigned (shared with tests/harness/netns.py).
ALLOC_LOCK = Path("/run/gridtool-lab-netns/alloc.lock")
NS_PREFIX = "gtseg-"
BRIDGE = "gtbr0"
TAP = "gtstap0"
PREFIX_LEN = 24
FIRST_HOST = 10
MAX_HOSTS = 200
MAC_PREFIX = "52:54:00:67"
NETDEV_ID = "gtseg"
START_TIMEOUT = 10.0


def ip_binary() -> str:
    found = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else None)
    if found is None:
        raise LabError("the ip command is not installed (apt-get install iproute2)")
    return found


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGV``; LabError with its message when it fails and ``check``."""
    done = subprocess.run([ip_binary(), *argv], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise LabError(f"ip {' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of every address in the root namespace."""
    out = ip("-o", "-4", "addr", "show").stdout
    return [ipaddress.ip_interface(m.group(1)).network  # type: ignore[misc]
            for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", out)]


def free_network(prefix_len: int, used: Sequence[ipaddress.IPv4Network] | None = None,
                 ) -> ipaddress.IPv4Network:
    """A random block of ``BENCH_NET`` of that size overlapping none of ``used`` (default:
    the root namespace's). Call it under :data:`ALLOC_LOCK` until the block is assigned."""
    taken = used_networks() if used is None else used
    size = 2 ** (32 - prefix_len)
    blocks = BENCH_NET.num_addresses // size
    pick = random.SystemRandom()
    for _ in range(1000):
        start = BENCH_NET.network_address + size * pick.randrange(1, blocks - 1)
        net = ipaddress.ip_network(f"{start}/{prefix_len}")
        if not any(net.overlaps(u) for u in taken):
            return net  # type: ignore[return-value]
    raise LabError(f"no free /{prefix_len} left in {BENCH_NET}")


@dataclass
class Segment:
    """One lab's segment: its names, its address block, its switch."""

    directory: str
    suffix: str
    network: str = ""  # "198.18.x.0/24", set by up()
    switch_pid: int = 0

    @property
    def ns(self) -> str:
        return f"{NS_PREFIX}{self.suffix}"

    @property
    def root_if(self) -> str:
        return f"gtsr{self.suffix}"

    @property
    def peer_if(self) -> str:
        return f"gtsn{self.suffix}"

    @property
    def switch_dir(self) -> Path:
        """The vde_switch's control directory (what QEMU's ``sock=`` names)."""
        return Path(self.directory, "vde")

    @property
    def pidfile(self) -> Path:
        return Path(self.directory, "vde_switch.pid")

    def _net(self) -> ipaddress.IPv4Network:
        if not self.network:
            raise LabError("the segment has no address block yet (segment.up first)")
        return ipaddress.ip_network(self.network)  # type: ignore[return-value]

    @property
    def root_addr(self) -> str:
        """The root end's address: the iSCSI portal on the segment."""
        return str(self._net().network_address + 1)

    @property
    def bridge_addr(self) -> str:
        """The bridge's own address, inside the namespace (probes from there: ping a
        dom0, log in as one)."""
        return str(self._net().network_address + 2)

    def host_addr(self, index: int) -> str:
        """Host ``index``'s (0-based) dom0 address on the segment, with its prefix."""
        if not 0 <= index < MAX_HOSTS:
            raise LabError(f"host index {index} out of 0..{MAX_HOSTS - 1}")
        return f"{self._net().network_address + FIRST_HOST + index}/{PREFIX_LEN}"

    @staticmethod
    def host_mac(index: int) -> str:
        return f"{MAC_PREFIX}:{index >> 8:02x}:{index & 0xff:02x}"

    def qemu_args(self, index: int) -> list[str]:
        """What QEMU machine ``index`` needs to be on the segment (a virtio NIC)."""
        return ["-netdev", f"vde,id={NETDEV_ID},sock={self.switch_dir}",
                "-device", f"virtio-net-pci,netdev={NETDEV_ID},mac={self.host_mac(index)},romfile="]

    def kernel_arg(self, index: int) -> str:
        """The dom0 kernel parameter that the storage script reads (its NIC and address)."""
        return f"gridtool.seg={self.host_mac(index)},{self.host_addr(index)}"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the segment's namespace (``ip netns exec`` execs: the PID
        started is ``argv``'s)."""
        return [ip_binary(), "netns", "exec", self.ns, *argv]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(data["directory"], data["suffix"], data.get("network", ""),
                   int(data.get("switch_pid", 0)))


def create(directory: Path) -> Segment:
    """A segment description under ``directory`` (nothing made yet)."""
    return Segment(str(directory), uuid.uuid4().hex[:6])


def unavailable() -> str | None:
    """Why a segment cannot be made here (None: it can)."""
    for tool in ("vde_switch", "ip"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt-get install vde2 iproute2)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (no tun/tap in this kernel)"
    return None


def _exists(*argv: str) -> bool:
    return ip(*argv, check=False).returncode == 0


def up(seg: Segment) -> Segment:
    """Make whatever of the segment is missing: namespace, bridge, veth, switch."""
    reason = unavailable()
    if reason is not None:
        raise LabError(reason)
    Path(seg.directory).mkdir(parents=True, exist_ok=True)
    if not _exists("netns", "exec", seg.ns, "true"):
        ip("netns", "add", seg.ns)
    inside = ("netns", "exec", seg.ns, ip_binary())
    ip(*inside, "link", "set", "lo", "up")
    if not _exists(*inside, "link", "show", BRIDGE):
        ip(*inside, "link", "add", BRIDGE, "type", "bridge")
    ip(*inside, "link", "set", BRIDGE, "up")
    if not _exists("link", "show", seg.root_if):
        with file_lock(ALLOC_LOCK):
            net = ipaddress.ip_network(seg.network) if seg.network else free_network(PREFIX_LEN)
            seg.network = str(net)
            ip("link", "add", seg.root_if, "type", "veth", "peer", "name", seg.peer_if)
            ip("link", "set", seg.peer_if, "netns", seg.ns)
            ip("addr", "add", f"{seg.root_addr}/{PREFIX_LEN}", "dev", seg.root_if)
    ip("link", "set", seg.root_if, "up")
    ip(*inside, "link", "set", seg.peer_if, "master", BRIDGE, "up")
    ip(*inside, "addr", "replace", f"{seg.bridge_addr}/{PREFIX_LEN}", "dev", BRIDGE)
    if not switch_alive(seg):
        _start_switch(seg)
    ip(*inside, "link", "set", TAP, "master", BRIDGE, "up")
    return seg


def _start_switch(seg: Segment) -> None:
    """Start the vde_switch in the namespace (it daemonizes and writes its pidfile; in the
    foreground it would exit at the end of its stdin)."""
    shutil.rmtree(seg.switch_dir, ignore_errors=True)
    seg.pidfile.unlink(missing_ok=True)
    done = subprocess.run(seg.exec_argv(["vde_switch", "--daemon", "--pidfile",
                                         str(seg.pidfile), "--sock", str(seg.switch_dir),
                                         "--tap", TAP]),
                          capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise LabError(f"vde_switch: {done.stderr.strip() or done.returncode}")

    def started() -> bool:
        seg.switch_pid = _pid_from_file(seg.pidfile)
        return switch_alive(seg) and (seg.switch_dir / "ctl").exists()

    wait_for(started, START_TIMEOUT, "vde_switch")


def _pid_from_file(path: Path) -> int:
    """The PID in a pidfile; 0 while it is missing or half written."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def switch_alive(seg: Segment) -> bool:
    return bool(seg.switch_pid) and str(seg.switch_dir) in cmdline(seg.switch_pid)


def down(seg: Segment) -> bool:
    """Stop the switch, delete the veth and the namespace (its bridge and tap go with it),
    remove the switch's sockets; True when anything was there."""
    # the pidfile too: a start that failed before recording the PID still leaves nothing
    found = any([stop_pid(pid, str(seg.switch_dir), timeout=3.0)
                 for pid in {seg.switch_pid, _pid_from_file(seg.pidfile)} if pid])
    if ip("link", "del", seg.root_if, check=False).returncode == 0:  # both ends
        found = True
    if ip("netns", "del", seg.ns, check=False).returncode == 0:
        found = True
    shutil.rmtree(seg.switch_dir, ignore_errors=True)
    seg.pidfile.unlink(missing_ok=True)
    return found
