"""Xen lab hosts (``gridtool lab up --hypervisor xen``): each host a QEMU (TCG) machine
running Xen 4.17 with a Debian dom0 (:mod:`gridtool.lab.xenimage`).

* The machine: ``-machine pc -cpu max,-smap,-smep`` (without them the PV dom0 faults
  under TCG), Xen as ``-kernel``, the dom0 kernel and initrd as multiboot modules, the
  dom0's disk a qcow2 overlay of the cached image (kept across power-off/on, as a disk
  is), its config disk (name, ``agent.conf``, etcd password, libvirtd port) and the NICs of
  :func:`netdev_args`. The serial console (Xen's and the dom0's ``hvc0``) goes to
  ``HOSTDIR/console.log``.
* The network: QEMU's user network (slirp). The dom0 reaches the lab's etcd at
  ``10.0.2.2`` (the lab machine's loopback); the lab machine reaches the dom0's libvirtd
  through a forwarded loopback port ``P`` on which the dom0's libvirtd also listens, so
  ``xen+tcp://127.0.0.1:P/system`` is the host's libvirt URI both in its dom0 (the agent)
  and outside (the CLI, tests).
* The agent runs in the dom0, from the ``gridtool-agent`` package, started by
  ``gridtool-lab-config`` at boot: "starting a Xen host's agent" is booting its machine,
  ``lab power-off`` kills that QEMU.
* Guests are PV domUs (:func:`pv_guest_xml`): the QEMU lab's tiny kernel and initramfs,
  its console read with ``xl console`` in the dom0 (:meth:`XenHost.console`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gridtool.config import Config, render
from gridtool.lab import dom0storage, xenimage
from gridtool.lab import segment as lab_segment
from gridtool.lab.hosts import LabHost
from gridtool.lab.procs import LabError, cmdline, kill_now, spawn, stop_pid, wait_for
from gridtool.lab.state import read_state

QEMU = "/usr/bin/qemu-system-x86_64"
QEMU_MARKER = "qemu-system"
#: The lab machine as the dom0 sees it through QEMU's user network.
HOST_FROM_GUEST = "10.0.2.2"
#: The machine's CPU. Not ``max,-smap,-smep`` (which boots too): under TCG ``max`` is an
#: AMD CPU without VME, and Xen hides SYSENTER (SEP) from AMD hosts in long mode, so no
#: CPU model of libvirt's map matches Xen's host features (every model needs SEP) and
#: libvirtd's libxl driver fails to start ("Cannot find suitable CPU model for given
#: data"). Nehalem is Intel (SEP kept), has neither SMAP nor SMEP (the PV dom0 faults at
#: once with them under TCG) and its features are all emulated by TCG.
CPU = "Nehalem"
#: The machine's memory and the dom0's share (the rest is Xen's and the guests').
MACHINE_MIB = 2048
DOM0_MEM = "768M"
XEN_CMDLINE = (f"console=com1 com1=115200,8n1 dom0_mem={DOM0_MEM},max:{DOM0_MEM} "
               "dom0_max_vcpus=1 loglvl=warning guest_loglvl=warning")
DOM0_CMDLINE = "root=/dev/vda rw console=hvc0"
#: The dom0's boot-time setup (run from its config disk by the image's gridtool-lab-config).
SETUP_SCRIPT = """set -e
hostname "$(cat hostname)"
cp hostname /etc/hostname
install -m 600 agent.conf /etc/gridtool/agent.conf
[ ! -f password ] || install -m 600 password /etc/gridtool/password
install -m 644 libvirtd.conf /etc/libvirt/libvirtd.conf
mkdir -p -m 700 /root/.ssh
install -m 600 authorized_keys /root/.ssh/authorized_keys
# the agent's images_dir (templates, clones' overlays): its unit writes there only if it
# exists (ReadWritePaths=-/var/lib/gridtool/images), and the package does not make it
mkdir -p /var/lib/gridtool/images
# under TCG on a loaded machine the agent may take minutes to be ready (seen: 123 s at
# load 18, and its unit's 120 s killed it); the unit's 60 s watchdog stays as packaged
DROPIN=/run/systemd/system/gridtool-agent.service.d
mkdir -p $DROPIN
printf '[Service]\\nTimeoutStartSec=900\\n' > $DROPIN/lab.conf
systemctl daemon-reload
systemctl start --no-block gridtool-agent.service
"""
#: The dom0's libvirtd: TCP on the forwarded port, no auth (the lab machine's loopback
#: only reaches it), no TLS.
LIBVIRTD_CONF = """listen_tls = 0
listen_tcp = 1
tcp_port = "{port}"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""
#: How long a dom0 may take from QEMU's start to its libvirtd answering (TCG, shared CPU):
#: one dom0 reached its login prompt 150 s after Xen started it at load 9 on 2 cores; two
#: at once at load 15-30 had not within 600 s.
BOOT_TIMEOUT = 1500.0


def netdev_args(directory: Path, name: str, index: int) -> dom0storage.HostStorage:
    """HOOK POINT for the lab's L2 segment: host ``index`` (1-based)'s NIC on the
    segment (QEMU arguments) and the dom0 kernel parameters of its storage script
    (:mod:`gridtool.lab.dom0storage`), from the state of the lab in ``directory``
    (nothing when it has no segment)."""
    state = read_state(directory)
    if not state or "segment" not in state:
        return dom0storage.HostStorage([], [])
    return dom0storage.for_host(state, index - 1, name)


def segment_address(directory: Path, index: int) -> str | None:
    """Host ``index`` (1-based)'s dom0 address on the lab's L2 segment (None: no
    segment): where the other dom0s reach its libvirtd and libxl's migration stream."""
    state = read_state(directory)
    if not state or "segment" not in state:
        return None
    return lab_segment.Segment.from_dict(state["segment"]).host_addr(index - 1).split("/")[0]


@dataclass
class XenHost(LabHost):
    """One Xen lab host: a QEMU machine with Xen, its dom0's libvirtd (libxl) reached on
    ``port`` and its agent in the dom0."""

    port: int = 0
    qemu_pid: int = 0
    index: int = 0
    ssh_port: int = 0  # forwarded to the dom0's sshd (root, the lab's key)
    ssh_key: str = ""
    hypervisor: str = "xen"

    @property
    def libvirt_uri(self) -> str:
        return f"xen+tcp://127.0.0.1:{self.port}/system"

    @property
    def console_log(self) -> Path:
        return Path(self.dir, "console.log")

    @property
    def overlay(self) -> Path:
        return Path(self.dir, "dom0.qcow2")

    @property
    def config_disk(self) -> Path:
        return Path(self.dir, "config.img")

    def start_libvirtd(self, timeout: float = 0.0) -> None:
        """Nothing here: the dom0's libvirtd starts when its machine boots (start_agent)."""
        del timeout
        Path(self.dir).mkdir(parents=True, exist_ok=True)

    def write_agent_conf(self, base: Config, watchdog: bool = False,
                         as_host: str | None = None, path: Path | None = None) -> Path:
        """The dom0's ``/etc/gridtool/agent.conf``: the lab's etcd as the dom0 reaches it,
        this host's libvirt URI, the packaged hook's socket, the password file the config
        disk brings (kept beside it here, for the config disk)."""
        from gridtool.bootstrap.rules import DEFAULT_IMAGES_DIR, Layout
        from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS

        del watchdog  # no watchdog device in the dom0 yet
        cfg = replace(base, host=as_host or self.name, libvirt_uri=self.libvirt_uri,
                      endpoints=tuple(_from_guest(e) for e in base.endpoints),
                      hook_socket=Layout().hook_socket,
                      password_file="/etc/gridtool/password" if base.password_file else None,
                      password=None,
                      # the packaged unit's writable images path (ReadWritePaths): a
                      # template's golden images and clones' overlays (gridtool clone)
                      images_dir=DEFAULT_IMAGES_DIR,
                      libvirt_run_dir="/run/libvirt",
                      shared_patterns=(*DEFAULT_SHARED_PATTERNS, f"{POOL_DIR}/*"),
                      migration_address=segment_address(Path(self.dir).parent.parent,
                                                        self.index))
        path = path or self.agent_conf
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(cfg, include_secrets=True))
        path.chmod(0o600)
        secret = Path(self.dir, "password")
        if base.password_file:
            shutil.copyfile(base.password_file, secret)
            secret.chmod(0o600)
        return path

    def start_agent(self, extra: list[str] | None = None) -> subprocess.Popen:
        """Power the machine on: its dom0 boots and starts the agent (wait for it with
        :func:`wait_booted`). The overlay is made on the first boot only."""
        del extra
        image = xenimage.image()
        if not self.overlay.exists():
            done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                                   "-b", str(image.rootfs), str(self.overlay)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise LabError(f"{self.name}: dom0 overlay: {done.stderr.strip()}")
        files = {"setup.sh": SETUP_SCRIPT, "hostname": self.name + "\n",
                 "agent.conf": self.agent_conf.read_text(),
                 "libvirtd.conf": LIBVIRTD_CONF.format(port=self.port),
                 "authorized_keys": Path(self.ssh_key + ".pub").read_text()}
        secret = Path(self.dir, "password")
        if secret.exists():
            files["password"] = secret.read_text()
        xenimage.make_config_disk(self.config_disk, files)
        segment = netdev_args(Path(self.dir).parent.parent, self.name, self.index)
        proc = spawn(machine_argv(image, self, segment.qemu_args, segment.kernel_args),
                     Path(self.dir, "qemu.log"))
        self.qemu_pid = proc.pid
        # Popen returns as the exec begins: /proc/PID/cmdline is empty for some ms more,
        # and running() (wait_booted's liveness check) must not take that for an exit
        wait_for(self.running, 10.0, f"{self.name}'s QEMU", alive=lambda: proc.poll() is None)
        return proc

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until the dom0's libvirtd answers through the forwarded port."""
        wait_for(self.libvirt_answers, timeout, f"dom0 of {self.name} (see {self.console_log})",
                 interval=2.0, alive=self.running)

    def libvirt_answers(self) -> bool:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # refused while booting
        try:
            libvirt.open(self.libvirt_uri).close()
        except libvirt.libvirtError:
            return False
        return True

    def console(self, guest: str, seconds: float = 4.0) -> str:
        """What guest ``guest``'s console prints in ``seconds`` (``xl console`` in the dom0,
        which wants a terminal: ``ssh -tt``); nothing when ssh did not finish in time (a
        TCG dom0 on a loaded machine)."""
        try:
            return self.ssh(f"timeout {seconds:g} xl console {guest}", tty=True).stdout
        except subprocess.TimeoutExpired:
            return ""

    def ssh(self, command: str, timeout: float = 60.0,
            tty: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as root in the dom0 (through its forwarded sshd)."""
        return subprocess.run(
            ["ssh", *(["-tt"] if tty else []), "-i", self.ssh_key, "-p", str(self.ssh_port),
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "-o", "ConnectTimeout=10", "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, check=False)

    def running(self) -> bool:
        return bool(self.qemu_pid) and QEMU_MARKER in cmdline(self.qemu_pid)

    def stop_agent(self) -> None:
        """Pull the plug (the agent dies with its dom0)."""
        kill_now(self.qemu_pid, QEMU_MARKER)
        self.qemu_pid = 0

    def stop_libvirtd(self) -> None:
        stop_pid(self.qemu_pid, QEMU_MARKER)
        self.qemu_pid = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "libvirt_uri": self.libvirt_uri}

    @classmethod
    def from_dict(cls, data: dict) -> XenHost:
        return cls(data["name"], data["dir"], port=data.get("port", 0),
                   qemu_pid=data.get("qemu_pid", 0), index=data.get("index", 0),
                   ssh_port=data.get("ssh_port", 0), ssh_key=data.get("ssh_key", ""))


def _from_guest(endpoint: str) -> str:
    """An etcd endpoint on the lab machine's loopback as the dom0 reaches it."""
    for loopback in ("127.0.0.1", "localhost"):
        endpoint = endpoint.replace(f"//{loopback}:", f"//{HOST_FROM_GUEST}:")
        if endpoint.startswith(f"{loopback}:"):
            endpoint = HOST_FROM_GUEST + endpoint[len(loopback):]
    return endpoint


def multiboot_module(path: Path, args: list[str]) -> str:
    """A multiboot module with its command line, as QEMU's ``-initrd`` list takes it (a
    comma separates modules: one in an argument is doubled)."""
    return " ".join([str(path), *args]).replace(",", ",,")


def machine_argv(image: xenimage.XenImage, host: XenHost, extra: list[str],
                 kernel_args: list[str] | None = None) -> list[str]:
    """The QEMU command line of one Xen host: ``extra`` QEMU arguments (its NICs on the
    segment), ``kernel_args`` added to the dom0 kernel's."""
    dom0 = multiboot_module(image.kernel, [DOM0_CMDLINE, *(kernel_args or [])])
    fwd = (f"tcp:127.0.0.1:{host.port}-:{host.port},"
           f"hostfwd=tcp:127.0.0.1:{host.ssh_port}-:22")
    return [QEMU, "-machine", "pc", "-accel", "tcg", "-cpu", CPU,
            "-m", str(MACHINE_MIB), "-smp", "1", "-nographic", "-nodefaults", "-no-reboot",
            "-name", f"gridtool-xen-{host.name}",
            "-serial", f"file:{host.console_log}",
            "-kernel", str(image.xen), "-append", XEN_CMDLINE,
            "-initrd", f"{dom0},{multiboot_module(image.initrd, [])}",
            "-drive", f"file={host.overlay},if=virtio,format=qcow2,cache=unsafe",
            "-drive", f"file={host.config_disk},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=lab0,hostfwd={fwd}",
            "-device", "virtio-net-pci,netdev=lab0", *extra]


def lab_hosts(directory: Path, names: list[str]) -> list[XenHost]:
    """One Xen host per name, each with its own forwarded port (the image must be built:
    LabError naming ``gridtool lab build-xen-image`` otherwise)."""
    from gridtool.lab.procs import free_port

    if not Path(QEMU).exists():
        raise LabError(f"{QEMU} is missing (run scripts/setup)")
    xenimage.image()
    key = lab_key(directory)
    return [XenHost(n, str(directory / "hosts" / n), port=free_port(), index=i,
                    ssh_port=free_port(), ssh_key=str(key))
            for i, n in enumerate(names, start=1)]


def lab_key(directory: Path) -> Path:
    """The lab's ssh key (made once per lab dir): root's in every dom0."""
    key = directory / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                               "gridtool-lab", "-f", str(key)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise LabError(f"ssh-keygen failed: {done.stderr.strip()}")
    return key


def wait_booted(hosts: list[XenHost], timeout: float = BOOT_TIMEOUT) -> None:
    for host in hosts:
        host.wait_booted(timeout)


def down_hosts(entries: list[dict]) -> list[str]:
    """``lab down`` for Xen hosts: stop their machines (guests and agent die with them)."""
    stopped = []
    for entry in entries:
        if entry.get("hypervisor") == "xen":
            host = XenHost.from_dict(entry)
            if host.running():
                host.stop_libvirtd()
                stopped.append(f"xen {host.name} (qemu)")
    return stopped


def pv_guest_xml(name: str, disk: str, memory_mib: int = 128,
                 guest_uuid: str | None = None) -> str:
    """A PV domU: the lab guest's kernel and initramfs (in the dom0's
    :data:`xenimage.GUEST_DIR`), one disk (never read by the guest: what fencing
    judges) on libxl's ``phy`` backend (blkback, on a loop device for a file; ``qemu``
    is the qdisk backend, a QEMU in the dom0, which gridtool clone's qcow2 overlays use): a file,
    or a block device of the dom0 (``/dev/...``: an AoE or iSCSI LUN); console on hvc0."""
    gid = guest_uuid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"gridtool-lab-xen/{name}"))
    kind, attr = ("block", "dev") if disk.startswith("/dev/") else ("file", "file")
    return f"""<domain type='xen'>
  <name>{name}</name>
  <uuid>{gid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='xenpv'>linux</type>
    <kernel>{xenimage.GUEST_DIR}/vmlinuz</kernel>
    <initrd>{xenimage.GUEST_DIR}/initramfs.cpio.gz</initrd>
    <cmdline>console=hvc0 quiet panic=-1</cmdline>
  </os>
  <devices>
    <disk type='{kind}' device='disk'>
      <driver name='phy' type='raw'/>
      <source {attr}='{disk}'/>
      <target dev='xvda' bus='xen'/>
    </disk>
    <console type='pty'><target type='xen' port='0'/></console>
  </devices>
</domain>"""


def kill_machine(entry: dict) -> bool:
    """``lab power-off`` of a Xen host: SIGKILL its QEMU."""
    with contextlib.suppress(ValueError, TypeError):
        return kill_now(int(entry.get("qemu_pid") or 0), QEMU_MARKER)
    return False


#: The dom0's storage pool of the sample guests' disks (the agents count it as shared).
POOL = "lab"
POOL_DIR = xenimage.GUEST_DIR + "/shared"
DISK_MIB = 8


def ensure_pool(conn: object) -> object:
    """The dom0's :data:`POOL` (a dir pool at :data:`POOL_DIR`), defined and started."""
    import libvirt

    assert isinstance(conn, libvirt.virConnect)
    try:
        pool = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>{POOL}</name><target><path>{POOL_DIR}</path>"
            "</target></pool>")
        pool.build(0)
    if not pool.isActive():
        pool.create(0)
    return pool


def seed_guests(cfg: Config, hosts: list[XenHost], guests: int) -> None:
    """Define ``guests`` PV guests per dom0 (each with a raw disk in its :data:`POOL`) and
    start two in three of them through their agents (so the fence hook lets them)."""
    import libvirt

    from gridtool.errors import GridtoolError
    from gridtool.registry.etcdstore import EtcdStore
    from gridtool.registry.intents import IntentClient

    store = EtcdStore(cfg)
    client = IntentClient(store, cfg.keys)
    try:
        pending = []
        for host in hosts:
            conn = libvirt.open(host.libvirt_uri)
            try:
                pool = ensure_pool(conn)
                for index in range(1, guests + 1):
                    name = f"{host.name}-vm{index}"
                    vol = pool.createXML(  # type: ignore[attr-defined]
                        f"<volume><name>{name}.img</name><capacity unit='MiB'>{DISK_MIB}"
                        "</capacity><target><format type='raw'/></target></volume>", 0)
                    dom = conn.defineXML(pv_guest_xml(name, vol.path()))
                    if index % 3 != 0:
                        pending.append(client.submit(host.name, "start", dom.UUIDString(),
                                                     name))
            finally:
                conn.close()
        for intent in pending:
            client.wait(intent, 120.0)
    except GridtoolError as exc:
        raise LabError(f"starting the sample PV guests: {exc}") from None
    finally:
        store.close()
