"""Real QEMU lab hosts: a libvirtd with the QEMU driver per host, each in its own mount
namespace, listening on its own loopback TCP port, running tiny TCG guests.

* :func:`guest_image` builds (once, cached) the guest: ``vmlinuz`` taken from Debian's
  ``linux-image`` package and an initramfs from ``scripts/build-guest-initramfs`` (busybox,
  an ``/init`` that prints ``GRIDTOOL-READY`` then ``GRIDTOOL-HEARTBEAT <n>`` every 100 ms on
  the serial console, and appends a record every 100 ms to a disk with the serial
  ``gridtool-data``, read by :mod:`gridtool.lab.diskcheck`; the virtio block modules come
  from the same kernel package). It also finds out, by booting it, whether KVM really works.
* :class:`QemuHost` starts one host's ``libvirtd`` (QEMU driver only) and ``virtlogd`` under
  ``unshare -m`` with private bind mounts over ``/etc/libvirt``, ``/run/libvirt``,
  ``/var/lib/libvirt``, ``/var/cache/libvirt`` and ``/var/log/libvirt``; its
  ``hooks/qemu.d/gridtool`` is gridtool's fence hook (``agents/hook.py``) asking this host's
  agent.
* The tests' and benchmarks' test bed of these hosts, and the readers of a guest's serial
  console, are in ``tests/harness/qemu_testbed.py`` (not shipped).
* A fenced guest's shared disk is a *data disk* (:func:`guest_xml` with ``data=True``:
  raw, shareable, uncached, serial ``gridtool-data``) that the guest writes its records
  to: with the lab's iSCSI target (``--storage iscsi``) a LUN (:class:`LunSource`), served
  by the host's initiator (:mod:`gridtool.lab.initiator`) over NBD at one path that every
  host's libvirtd sees (``LAB/luns``: its initiator's directory bound there in the
  daemon's mount namespace, as ``/dev/disk/by-path`` names a LUN on every dom0); else a
  file in a lab-wide ``shared`` directory, which the agents' ``shared_patterns`` include.
  Templates and images stay in the shared directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gridtool.config import Config
from gridtool.lab.hosts import LabHost
from gridtool.lab.procs import LabError, cmdline, file_lock, spawn, stop_pid, wait_for

ROOT = Path(__file__).resolve().parents[2]
INITRAMFS_SCRIPT = ROOT / "scripts" / "build-guest-initramfs"
HOOK_SCRIPT = ROOT / "agents" / "hook.py"
DRIVER_DIR = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver")
DRIVERS = ("libvirt_driver_qemu.so", "libvirt_driver_storage.so")
QEMU = "/usr/bin/qemu-system-x86_64"
READY = "GRIDTOOL-READY"
HEARTBEAT = "GRIDTOOL-HEARTBEAT"
DATA_SERIAL = "gridtool-data"
#: The guest kernel's modules that give it a virtio disk, in load order.
GUEST_MODULES = ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                 "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                 "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                 "kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko")
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"
#: What the namespaced daemon sees at each path -> the host directory's subdirectory.
PRIVATE_DIRS = {"/etc/libvirt": "etc", "/run/libvirt": "run", "/var/lib/libvirt": "lib",
                "/var/cache/libvirt": "cache", "/var/log/libvirt": "log"}

LIBVIRTD_CONF = """\
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "{port}"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "{host_uuid}"
log_outputs = "3:file:{dir}/libvirtd-internal.log"
"""

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
migration_port_min = {mig_min}
migration_port_max = {mig_max}
"""


def default_cache() -> Path:
    """Where the guest image is built once: ``$GRIDTOOL_LAB_CACHE`` or
    /var/cache/gridtool-lab."""
    return Path(os.environ.get("GRIDTOOL_LAB_CACHE", "/var/cache/gridtool-lab"))


def unavailable() -> str | None:
    """Why real QEMU guests cannot run here at all (None: they can)."""
    for binary in (QEMU, "/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/qemu-img",
                   "/usr/bin/unshare", "/bin/busybox"):
        if not Path(binary).exists():
            return f"{binary} is missing (run scripts/setup)"
    if not (DRIVER_DIR / "libvirt_driver_qemu.so").exists():
        return "libvirt's QEMU driver is missing (apt-get install libvirt-daemon-driver-qemu)"
    if os.geteuid() != 0:
        return "the QEMU lab needs root (mount namespaces, libvirtd)"
    return None


# --------------------------------------------------------------------------- the guest image


@dataclass(frozen=True)
class GuestImage:
    """The lab guest's kernel and initramfs, and the accelerator that boots it here."""

    kernel: Path
    initramfs: Path
    accel: str  # "kvm" or "tcg"

    @property
    def domain_type(self) -> str:
        return "kvm" if self.accel == "kvm" else "qemu"


def guest_image(cache: Path | None = None) -> GuestImage:
    """Build the guest once under ``cache`` (safe against concurrent builders). The
    initramfs is named after the build script's content: checkouts with other versions of
    the script share the cache without using each other's guest."""
    cache = cache or default_cache()
    with file_lock(cache / "build.lock"):
        kernel, modules = cache / "vmlinuz", cache / "modules"
        if not kernel.exists() or not modules.is_dir():
            _fetch_kernel(cache, kernel, modules)
        digest = hashlib.sha256(INITRAMFS_SCRIPT.read_bytes()).hexdigest()[:12]
        initramfs = cache / f"initramfs-{digest}.cpio.gz"
        if not initramfs.exists():
            _run([str(INITRAMFS_SCRIPT), str(initramfs), str(modules)],
                 "building the guest initramfs")
        probe = cache / "accel.json"
        key = f"{kernel.stat().st_size}-{initramfs.stat().st_mtime_ns}"
        known = json.loads(probe.read_text()) if probe.exists() else {}
        if known.get("key") != key:
            known = {"key": key, "accel": detect_accel(kernel, initramfs)}
            probe.write_text(json.dumps(known))
        return GuestImage(kernel, initramfs, known["accel"])


def _fetch_kernel(cache: Path, kernel: Path, modules: Path) -> None:
    """``apt-get download`` Debian's current kernel package and take ``vmlinuz`` and the
    :data:`GUEST_MODULES` (named by their base name in ``modules``) only."""
    work = cache / "download"
    try:
        deb = _download_kernel(work)
        extract = work / "root"
        extract.mkdir()
        wanted = " ".join(f"'./lib/modules/*/{m}'" for m in GUEST_MODULES)
        tar = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{extract}' "
                             f"--wildcards './boot/vmlinuz-*' {wanted}", shell=True,
                             capture_output=True, text=True, check=False)
        found = sorted(extract.glob("boot/vmlinuz-*"))
        kos = [ko for m in GUEST_MODULES for ko in extract.glob(f"lib/modules/*/{m}")]
        if tar.returncode != 0 or not found or len(kos) != len(GUEST_MODULES):
            raise LabError(f"no vmlinuz or virtio modules in {deb.name}: {tar.stderr.strip()}")
        staged = work / "modules"
        staged.mkdir()
        for ko in kos:
            shutil.copyfile(ko, staged / ko.name)
        shutil.rmtree(modules, ignore_errors=True)
        staged.rename(modules)
        tmp = kernel.with_suffix(".tmp")
        shutil.copyfile(found[0], tmp)
        tmp.rename(kernel)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download_kernel(work: Path) -> Path:
    """``apt-get download`` Debian's current kernel package into ``work`` (emptied first)."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"], "finding the kernel package")
    names = [w for line in out.splitlines() if "Depends:" in line
             for w in line.split() if w.startswith("linux-image-")]
    if not names:
        raise LabError("no linux-image-*-amd64 package known to apt (apt-get update?)")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _run(["apt-get", "download", "-q", names[0]], f"downloading {names[0]}", cwd=work)
    (deb,) = work.glob("*.deb")
    return deb


def kernel_release(kernel: Path) -> str:
    """The release (``uname -r``) of a bzImage, read from its header (the version string
    at offset 0x200 + the 16-bit pointer at 0x20E)."""
    data = kernel.read_bytes()[:0x10000]
    if data[0x202:0x206] != b"HdrS":
        raise LabError(f"{kernel} is not a Linux bzImage")
    start = 0x200 + int.from_bytes(data[0x20E:0x210], "little")
    return data[start:start + 256].split(b" ", 1)[0].decode()


def kernel_modules(modules: tuple[str, ...], cache: Path | None = None) -> Path:
    """A module tree ``lib/modules/RELEASE/...`` holding ``modules`` (paths under
    ``lib/modules/RELEASE/``, e.g. ``kernel/drivers/block/aoe/aoe.ko``) of the guest
    kernel's own package, built once under ``cache``; returns the tree's root."""
    cache = cache or default_cache()
    release = kernel_release(guest_image(cache).kernel)
    digest = hashlib.sha256("\n".join((release, *modules)).encode()).hexdigest()[:12]
    root = cache / f"modtree-{digest}"
    with file_lock(cache / "build.lock"):
        if root.is_dir():
            return root
        work = cache / "download"
        try:
            deb = _download_kernel(work)
            extract = work / "root"
            extract.mkdir()
            wanted = [f"./lib/modules/{release}/{m}" for m in modules]
            done = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{extract}' "
                                  + " ".join(f"'{w}'" for w in wanted), shell=True,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise LabError(f"{deb.name} lacks modules of {release} (a newer kernel than "
                               f"the cached vmlinuz? remove {cache} to rebuild): "
                               f"{done.stderr.strip()[-200:]}")
            extract.rename(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return root


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        raise LabError(f"{what} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


def detect_accel(kernel: Path, initramfs: Path, timeout: float = 8.0) -> str:
    """``kvm`` only if a guest really boots to its ready marker under KVM, else ``tcg``."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    proc = subprocess.Popen(
        [QEMU, "-machine", "pc", "-accel", "kvm", "-m", "128", "-nographic", "-no-reboot",
         "-nodefaults", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initramfs),
         "-append", KERNEL_CMDLINE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)
    assert proc.stdout is not None  # stdout=PIPE
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read() or b""
            seen = (seen + chunk)[-4096:]
            if READY.encode() in seen:
                return "kvm"
            time.sleep(0.05)
        return "tcg"
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- one host


def ensure_qemu_user() -> None:
    """libvirt's QEMU driver wants a ``libvirt-qemu`` user and group to exist."""
    if subprocess.run(["getent", "group", "libvirt-qemu"], capture_output=True).returncode:
        _run(["groupadd", "-r", "libvirt-qemu"], "creating group libvirt-qemu")
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True).returncode:
        _run(["useradd", "-r", "-g", "libvirt-qemu", "-M", "-d", "/var/lib/libvirt",
              "-s", "/usr/sbin/nologin", "libvirt-qemu"], "creating user libvirt-qemu")


@dataclass(frozen=True)
class LunSource:
    """A LUN as a host's initiator serves it to the host's guests: the NBD export named
    ``TARGET-IQN/N`` (what :mod:`gridtool.domains.storage` maps to the LUN's volume id) on
    the socket at the path every lab host names it by."""

    export: str
    socket: Path


def lun_source(target_iqn: str, lun: int, luns_dir: Path) -> LunSource:
    """LUN ``lun`` of ``target_iqn`` as the lab's guests name it (``luns_dir``: the one
    path at which each host's libvirtd sees its own initiator's sockets)."""
    from gridtool.lab.initiator import nbd_socket

    return LunSource(f"{target_iqn}/{lun}", nbd_socket(luns_dir, lun))


@dataclass
class QemuHost(LabHost):
    """One real QEMU host: a namespaced libvirtd on ``qemu+tcp://127.0.0.1:PORT/system``.
    With ``initiator_dir`` (its iSCSI initiator's directory) and ``luns_dir``, the daemon
    (and so its QEMUs) sees the first at the second's path."""

    port: int = 0
    shared_dir: str = ""
    hypervisor: str = "qemu"
    luns_dir: str = ""
    initiator_dir: str = ""

    @property
    def libvirt_uri(self) -> str:
        return f"qemu+tcp://127.0.0.1:{self.port}/system"

    @property
    def hook_socket(self) -> Path:
        return Path(self.dir, "agent-hook.sock")

    @property
    def hook_file(self) -> Path:
        """The fence hook in the daemon's ``/etc/libvirt/hooks/qemu.d/`` (as ``host add``
        and the package install it: libvirt >= 6.5 runs every executable there)."""
        return Path(self.dir, "etc", "hooks", "qemu.d", "gridtool")

    @property
    def run_dir(self) -> Path:
        """The daemon's ``/run/libvirt`` as seen from outside its mount namespace (its
        QEMU driver writes each guest's pid to ``qemu/NAME.pid`` there)."""
        return Path(self.dir, "run")

    @property
    def virtlogd_pidfile(self) -> Path:
        return Path(self.dir, "run", "virtlogd.pid")

    def start_libvirtd(self, timeout: float = 20.0) -> None:
        """Write this host's config and hook, then start virtlogd (unless it still runs)
        and libvirtd in a private mount namespace; wait until its TCP port answers."""
        if not self.port:
            raise LabError(f"{self.name}: no TCP port chosen")
        ensure_qemu_user()
        base = Path(self.dir)
        for sub in (*PRIVATE_DIRS.values(), "drivers", "etc/hooks/qemu.d", "etc/qemu"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for driver in DRIVERS:  # the QEMU driver, and storage (pools, volumes) as on real hosts
            link = base / "drivers" / driver
            if not link.exists() and (DRIVER_DIR / driver).exists():
                link.symlink_to(DRIVER_DIR / driver)
        (base / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(
            port=self.port, dir=base, host_uuid=uuid.uuid5(uuid.NAMESPACE_DNS, str(base))))
        mig = 49152 + (self.port % 200) * 64  # own migration ports: daemons share the netns
        (base / "etc" / "qemu.conf").write_text(QEMU_CONF.format(mig_min=mig,
                                                                  mig_max=mig + 63))
        self.write_hook()
        for target in PRIVATE_DIRS:
            Path(target).mkdir(parents=True, exist_ok=True)
        binds = {target: str(base / sub) for target, sub in PRIVATE_DIRS.items()}
        if self.luns_dir and self.initiator_dir:
            for where in (self.luns_dir, self.initiator_dir):
                Path(where).mkdir(parents=True, exist_ok=True)
            binds[self.luns_dir] = self.initiator_dir
        mounts = "\n".join(f"mount --bind '{source}' '{target}'"
                           for target, source in binds.items())
        virtlogd = "" if self.virtlogd_running() else (
            "rm -f /run/libvirt/virtlogd-sock\n"
            "/usr/sbin/virtlogd -d -p /run/libvirt/virtlogd.pid\n")
        script = (f"set -e\n{mounts}\n{virtlogd}"
                  f"exec /usr/sbin/libvirtd --listen --config '{base / 'etc' / 'libvirtd.conf'}'"
                  f" --pid-file '{base / 'run' / 'libvirtd.pid'}'\n")
        proc = spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                     base / "libvirtd.log", env={"LIBVIRT_DRIVER_DIR": str(base / "drivers")})
        self.libvirtd_pid = proc.pid
        from gridtool.lab.procs import port_open

        wait_for(lambda: port_open(self.port), timeout, f"libvirtd of {self.name}",
                 alive=lambda: proc.poll() is None)

    def virtlogd_running(self) -> bool:
        """This host's virtlogd runs (it outlives a libvirtd restart, as under systemd)."""
        try:
            return "virtlogd" in cmdline(int(self.virtlogd_pidfile.read_text().strip() or 0))
        except (OSError, ValueError):
            return False

    def restart_libvirtd(self, timeout: float = 20.0) -> None:
        """Stop this host's libvirtd alone and start it again, as ``systemctl restart
        libvirtd`` does: the guests' QEMU processes and virtlogd run on, and the new
        daemon reconnects to them."""
        stop_pid(self.libvirtd_pid, "libvirtd")
        self.start_libvirtd(timeout)

    def write_hook(self) -> None:
        """Install the fence hook (libvirt reads it at daemon start or SIGHUP only)."""
        patterns = " ".join(f"--shared '{p}'" for p in self.shared_patterns())
        self.hook_file.write_text(
            "#!/bin/sh\n# gridtool fence hook: installed by gridtool lab\n"
            f"exec '{sys.executable}' -I '{HOOK_SCRIPT}' --socket '{self.hook_socket}' "
            f"{patterns} -- \"$@\"\n")
        self.hook_file.chmod(0o755)

    def shared_patterns(self) -> tuple[str, ...]:
        from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS

        return (*DEFAULT_SHARED_PATTERNS, f"{self.shared_dir}/*") if self.shared_dir \
            else DEFAULT_SHARED_PATTERNS

    def write_agent_conf(self, base: Config, watchdog: bool = False,
                         as_host: str | None = None, path: Path | None = None) -> Path:
        """The agent's config: this host's URI, hook socket and the lab's shared dir; with
        ``watchdog`` it pets the emulated watchdog (whoever starts the host runs the emulator,
        which destroys this daemon's guests on expiry), else an agent that stops with HA
        guests self-fences them."""
        cfg = replace(base, shared_patterns=self.shared_patterns(),
                      hook_socket=str(self.hook_socket), libvirt_run_dir=str(self.run_dir))
        return super().write_agent_conf(cfg, watchdog=watchdog, as_host=as_host, path=path)

    def stop_libvirtd(self) -> None:
        """Destroy this host's guests, then stop libvirtd and virtlogd; no qemu is left."""
        if self.libvirtd_pid and "libvirtd" in cmdline(self.libvirtd_pid):
            with contextlib.suppress(Exception):
                destroy_all(self.libvirt_uri)
        stop_pid(self.libvirtd_pid, "libvirtd")
        self.libvirtd_pid = 0
        for pidfile in Path(self.dir, "run", "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                stop_pid(int(pidfile.read_text().strip() or 0), "qemu-system")
        with contextlib.suppress(ValueError, OSError):
            stop_pid(int(self.virtlogd_pidfile.read_text().strip() or 0), "virtlogd")
        self.hook_file.unlink(missing_ok=True)

    def to_dict(self) -> dict:
        return {**asdict(self), "libvirt_uri": self.libvirt_uri}

    @classmethod
    def from_dict(cls, data: dict) -> QemuHost:
        return cls(data["name"], data["dir"], data.get("libvirtd_pid", 0),
                   data.get("agent_pid", 0), data.get("port", 0), data.get("shared_dir", ""),
                   luns_dir=data.get("luns_dir", ""),
                   initiator_dir=data.get("initiator_dir", ""))


def destroy_all(uri: str) -> list[str]:
    """Destroy every running guest of one daemon; their names."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        for dom in doms:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        return [d.name() for d in doms]
    finally:
        conn.close()


# --------------------------------------------------------------------------- gridtool lab


def lab_hosts(directory: Path, names: list[str], iscsi: bool = False) -> list[QemuHost]:
    """``gridtool lab up --hypervisor qemu``: one QEMU host per name, each on its own
    loopback port, all seeing ``<directory>/shared`` (templates, images, and the shared
    disks without ``iscsi``); with ``iscsi`` each sees its own initiator's LUN sockets
    at ``<directory>/luns`` (:func:`luns_dir`)."""
    from gridtool.lab.procs import free_port

    why = unavailable()
    if why:
        raise LabError(f"QEMU lab hosts cannot run here: {why}")
    shared = directory / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    return [QemuHost(n, str(directory / "hosts" / n), port=free_port(), shared_dir=str(shared),
                     luns_dir=str(luns_dir(directory)) if iscsi else "",
                     initiator_dir=str(initiators_dir(directory) / n) if iscsi else "")
            for n in names]


def luns_dir(directory: Path) -> Path:
    """The path at which every host of the lab in ``directory`` sees its LUN sockets."""
    return directory / "luns"


def initiators_dir(directory: Path) -> Path:
    """Where the lab's per-host initiators keep their sockets (one directory per host)."""
    return directory / "initiators"


def seed_guests(cfg: Config, hosts: list[QemuHost], guests: int, directory: Path,
                luns: list[LunSource] | None = None) -> None:
    """Define ``guests`` tiny guests per host (even ones fenced: a data disk on the next of
    ``luns``, else in the shared dir) and start two in three of them through their agents
    (so the fence hook lets them)."""
    import libvirt

    from gridtool.errors import GridtoolError
    from gridtool.registry.etcdstore import EtcdStore
    from gridtool.registry.intents import IntentClient

    image = guest_image()
    free = list(luns or [])
    (directory / "serial").mkdir(parents=True, exist_ok=True)
    store = EtcdStore(cfg)
    client = IntentClient(store, cfg.keys)
    try:
        pending = []
        for host in hosts:
            conn = libvirt.open(host.libvirt_uri)
            try:
                for index in range(1, guests + 1):
                    name = f"{host.name}-vm{index}"
                    fenced = index % 2 == 0  # a data disk: a LUN, or in the shared dir
                    disk: Path | LunSource = (free.pop(0) if fenced and free else Path(
                        host.shared_dir if fenced else Path(host.dir, "disks"),
                        f"{name}.img" if fenced else f"{name}.qcow2"))
                    if isinstance(disk, Path):
                        (make_data_disk if fenced else make_disk)(disk)
                    dom = conn.defineXML(guest_xml(name, image, disk,
                                                   directory / "serial" / f"{name}.log",
                                                   data=fenced))
                    if index % 3 != 0:
                        pending.append(client.submit(host.name, "start", dom.UUIDString(),
                                                     name))
            finally:
                conn.close()
        for intent in pending:
            client.wait(intent, 60.0)
    except GridtoolError as exc:
        raise LabError(f"starting the sample guests: {exc}") from None
    finally:
        store.close()


def down_hosts(entries: list[dict]) -> list[str]:
    """``lab down`` for QEMU hosts: destroy their guests, stop libvirtd and virtlogd,
    remove their hook files; what was stopped."""
    stopped = []
    for entry in entries:
        if entry.get("hypervisor") != "qemu":
            continue
        host = QemuHost.from_dict(entry)
        alive = bool(host.libvirtd_pid) and "libvirtd" in cmdline(host.libvirtd_pid)
        host.stop_libvirtd()
        if alive:
            stopped.append(f"libvirtd {host.name} (qemu)")
    return stopped


# --------------------------------------------------------------------------- guests


def guest_xml(name: str, image: GuestImage, disk: Path | LunSource, serial_log: Path,
              memory_mib: int = 128, guest_uuid: str | None = None, data: bool = False) -> str:
    """A tiny guest: direct kernel boot, one qcow2 disk, serial console appended to a file
    (a clone gets its own file: ``cloneplan`` rewrites the path). With ``data`` the disk is
    a raw shared data disk (:func:`make_data_disk`) the guest writes its records to: no
    QEMU image lock, as on a LUN two hosts see (so a double start is not stopped here).
    A :class:`LunSource` is always a data disk: an NBD network disk."""
    gid = guest_uuid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"gridtool-lab-qemu/{name}"))
    serial = f"""<serial type='file'>
      <source path='{serial_log}' append='on'/>
      <target port='0'/>
    </serial>"""
    return f"""<domain type='{image.domain_type}'>
  <name>{name}</name>
  <uuid>{gid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image.kernel}</kernel>
    <initrd>{image.initramfs}</initrd>
    <cmdline>{KERNEL_CMDLINE}</cmdline>
  </os>
  <devices>
    <emulator>{QEMU}</emulator>
    {_qcow2_disk(disk) if isinstance(disk, Path) and not data else _data_disk(disk)}
    {serial}
    <memballoon model='none'/>
  </devices>
</domain>"""


def _qcow2_disk(disk: Path) -> str:
    return f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>"""


def _data_disk(disk: Path | LunSource) -> str:
    kind, source = ("file", f"<source file='{disk}'/>") if isinstance(disk, Path) else (
        "network", f"""<source protocol='nbd' name='{disk.export}'>
        <host transport='unix' socket='{disk.socket}'/>
      </source>""")
    return f"""<disk type='{kind}' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      {source}
      <target dev='vda' bus='virtio'/>
      <serial>{DATA_SERIAL}</serial>
      <shareable/>
    </disk>"""


#: A data disk's size (a file, or a LUN of the lab's target in a QEMU lab).
DATA_DISK_MIB = 8


def make_data_disk(path: Path, size_mib: int = DATA_DISK_MIB) -> None:
    """An empty raw data disk: 512-byte record slots (8 MiB: 16384 records, 27 minutes
    of a guest writing 10 a second)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size_mib << 20)


def make_disk(path: Path, size: str = "64M") -> None:
    """An empty qcow2 disk (the guest runs from its initramfs; the disk is what is fenced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], f"creating {path}")
