"""The Xen lab's dom0 image, built once and cached (``gridtool lab build-xen-image``).

* The root filesystem: ``mmdebstrap`` from Debian 12's packages (:data:`PACKAGES`: the
  kernel with its modules and initramfs, Xen's tools with xenstored and xenconsoled,
  libvirtd with its libxl driver, the storage initiators), then gridtool's own packages
  (``scripts/build-deb``: ``gridtool-common`` + ``gridtool-agent``, so the agent, its
  systemd unit and the fence hook as ``/etc/libvirt/hooks/libxl.d/gridtool`` come from
  the package), then the lab's boot-time configuration (:data:`LAB_FILES`): DHCP on the
  QEMU user network, libvirtd on TCP 16509 without auth (reached through a forwarded
  port), xenconsoled logging each guest's console, and ``gridtool-lab-config``, a oneshot
  unit that runs ``setup.sh`` from the host's *config disk* (an ext4 image labelled
  :data:`CONFIG_LABEL`, written by :mod:`gridtool.lab.xenlab` at each boot: the host's
  name, ``agent.conf``, etcd password, libvirtd's config, root's ssh key), which then
  starts the agent.
  The tree becomes a raw ext4 image (``mkfs.ext4 -d``); each host boots a qcow2 overlay.
* Xen itself: the image's ``/boot/xen-4.17-amd64.gz`` (``xen-hypervisor-4.17-amd64``),
  gunzipped (a 32-bit multiboot ELF QEMU loads with ``-kernel``); the dom0 kernel and
  initrd are copied out of the image's ``/boot`` beside it.
* The PV guests' kernel and initramfs are the QEMU lab's (:func:`gridtool.lab.qemu.guest_image`),
  copied into the image at :data:`GUEST_DIR`.
* The dom0's shared storage (:func:`gridtool.lab.dom0storage.install`): its boot-time
  script and unit that attach the lab segment's AoE and iSCSI LUNs.

Cache key: the package list, gridtool's version, this module's recipe, the storage
script's and a hash of the sources that go into gridtool's .debs (:data:`DEB_SOURCES`: a
changed agent builds a new image by itself, in a directory of its own). Cache dir:
``$GRIDTOOL_LAB_CACHE/xen`` (default ``/var/cache/gridtool-lab/xen``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gridtool.lab import dom0storage
from gridtool.lab.procs import LabError, file_lock
from gridtool.lab.qemu import GuestImage, guest_image

SUITE = "bookworm"
MIRRORS = ("http://deb.debian.org/debian bookworm main",
           "http://deb.debian.org/debian bookworm-updates main",
           "http://deb.debian.org/debian-security bookworm-security main")
#: The dom0's Debian packages (besides gridtool's own).
PACKAGES = ("linux-image-amd64", "initramfs-tools", "xen-hypervisor-4.17-amd64",
            "xen-utils-4.17", "libvirt-daemon-system", "libvirt-daemon-driver-xen",
            "libvirt-clients", "python3-libvirt", "qemu-utils", "python3", "python3-venv",
            "iproute2", "kmod", "udev", "systemd-sysv", "dbus",
            # the lab's commands in a dom0 (xl behind libvirt's back, stopping xenstored)
            "openssh-server",
            # for the storage work (issue 17 item 2): kernel initiators from the dom0
            "open-iscsi", "sg3-utils", "aoetools",
            # libxl's qdisk back end (qcow2 disks of PV guests: gridtool clone's overlays)
            # is QEMU's Xen build, /usr/libexec/xen-qemu-system-i386 (a Recommends of
            # xen-utils-4.17, so not there without it)
            "qemu-system-xen")
ROOT = Path(__file__).resolve().parents[2]
BUILD_DEB = ROOT / "scripts" / "build-deb"
XEN_GZ = "boot/xen-4.17-amd64.gz"
IMAGE_SIZE = "3G"
#: The label of a host's config disk (:func:`make_config_disk`).
CONFIG_LABEL = "gridtool-cfg"
#: Where the PV guests' kernel and initramfs are in the dom0.
GUEST_DIR = "/var/lib/gridtool-lab"
#: The lean block hotplug script installed as ``/etc/xen/scripts/block`` (Debian's is
#: diverted to ``block.debian``): see the script's header.
BLOCK_SCRIPT = Path(__file__).with_name("data") / "xen-block"
BLOCK_PATH = "/etc/xen/scripts/block"
#: The dom0's libvirtd TCP port (forwarded from a loopback port of the lab machine).
LIBVIRTD_PORT = 16509

CONFIG_SCRIPT = """#!/bin/sh
# gridtool lab: this dom0's boot-time setup comes from its config disk (setup.sh, with the
# files beside it), so that the image stays the same for every host and lab
set -e
mkdir -p /run/gridtool-cfg
mount -o ro LABEL=%(label)s /run/gridtool-cfg
cd /run/gridtool-cfg
sh ./setup.sh
cd /
umount /run/gridtool-cfg
"""

CONFIG_UNIT = """[Unit]
Description=gridtool lab: this dom0's name and agent config from its config disk
After=local-fs.target
Before=gridtool-agent.service libvirtd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/gridtool-lab-config

[Install]
WantedBy=multi-user.target
"""

#: Files the lab writes into the image (path -> content).
LAB_FILES = {
    "etc/systemd/network/80-lab.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
    "etc/fstab": "/dev/vda / ext4 defaults,noatime 0 1\n",
    "etc/hostname": "dom0\n",
    "etc/machine-id": "",  # each host's overlay gets its own at first boot
    "usr/local/sbin/gridtool-lab-config": CONFIG_SCRIPT % {"label": CONFIG_LABEL},
    "etc/systemd/system/gridtool-lab-config.service": CONFIG_UNIT,
    # every guest's console in /var/log/xen/console/guest-NAME.log (its ready marker)
    "etc/default/xen": "XENCONSOLED_TRACE=guest\n",
    # libvirtd listens on TCP itself (its sockets masked; setup.sh writes its config)
    "etc/default/libvirtd": 'LIBVIRTD_ARGS="--listen"\n',  # and no idle --timeout
    "etc/systemd/journald.conf.d/lab.conf": "[Journal]\nForwardToConsole=no\n",
    # a TCG dom0 on a loaded machine (load 20-25 on 2 cores) took over 4 min to start
    # systemd-networkd and gridtool-lab-config: at systemd's 90 s default both FAILED,
    # leaving the dom0 with no address and no agent (the lab's boot deadline decides)
    "etc/systemd/system.conf.d/lab.conf": "[Manager]\nDefaultTimeoutStartSec=infinity\n",
    # the block hotplug script's lock directory, there before the agent's sandbox starts
    # (its unit makes /run/xen-hotplug writable only if it exists)
    "etc/tmpfiles.d/gridtool-xen-hotplug.conf": "d /run/xen-hotplug 0755 root root -\n",
}
#: Units enabled in the image (the agent itself starts from gridtool-lab-config).
ENABLE = ("systemd-networkd.service", "libvirtd.service", "gridtool-lab-config.service")
MASK = (*(f"libvirtd{kind}.socket" for kind in ("", "-ro", "-admin", "-tcp", "-tls")),
        "libvirt-guests.service")  # a dom0 that stops keeps no guest to resume


@dataclass(frozen=True)
class XenImage:
    """A built dom0 image: Xen, the dom0 kernel and initrd, the root filesystem."""

    xen: Path
    kernel: Path
    initrd: Path
    rootfs: Path


def default_cache() -> Path:
    return Path(os.environ.get("GRIDTOOL_LAB_CACHE", "/var/cache/gridtool-lab")) / "xen"


#: What scripts/build-deb puts into gridtool's packages that can change what runs in a
#: dom0 (their Python code and the packaging files; not the man pages, generated from
#: that code), relative to :data:`ROOT`: globs.
DEB_SOURCES = ("gridtool/**/*.py", "agents/**/*.py", "packaging/deb/*", "scripts/build-deb",
               "scripts/systemd/*")
#: Left out of the key: the lab's own code drives the dom0s from outside and never runs
#: in one (this recipe, xenimage.py, is in the key by itself).
NOT_IN_DOM0 = "gridtool/lab/"


def sources_hash(root: Path = ROOT) -> bytes:
    """A hash of every file :data:`DEB_SOURCES` names but :data:`NOT_IN_DOM0` (path and
    content, sorted)."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in DEB_SOURCES for p in root.glob(pattern) if p.is_file()
                    and not str(p.relative_to(root)).startswith(NOT_IN_DOM0)})
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


def cache_key(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> str:
    """What the image depends on: the packages, gridtool's version, this recipe and the
    sources of gridtool's .debs."""
    from gridtool import __version__

    recipe = Path(__file__).read_bytes() + dom0storage.recipe() + BLOCK_SCRIPT.read_bytes()
    return hashlib.sha256(b"\0".join([" ".join(sorted(packages)).encode(),
                                      __version__.encode(), recipe,
                                      sources_hash(root)])).hexdigest()[:16]


def missing_tools() -> str | None:
    """Why the image cannot be built here (None: it can)."""
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"),
                          ("qemu-img", "qemu-utils"), ("dpkg-deb", "dpkg")):
        if not shutil.which(tool):
            return f"{tool} is missing (apt-get install {package}, or run scripts/setup)"
    if os.geteuid() != 0:
        return "building the Xen dom0 image needs root (chroot)"
    return None


def image(cache: Path | None = None) -> XenImage:
    """The cached image; LabError naming how to build it when there is none."""
    built = _paths(cache or default_cache(), cache_key())
    if not all(p.exists() for p in (built.xen, built.kernel, built.initrd, built.rootfs)):
        raise LabError(f"no Xen dom0 image in {built.rootfs.parent} "
                       "(build it with: gridtool lab build-xen-image)")
    return built


def _paths(cache: Path, key: str) -> XenImage:
    where = cache / key
    return XenImage(where / "xen.elf", where / "vmlinuz", where / "initrd.img",
                    where / "rootfs.raw")


def build(cache: Path | None = None, rebuild: bool = False,
          log: Path | None = None) -> XenImage:
    """Build the image once under ``cache`` (safe against concurrent builders)."""
    why = missing_tools()
    if why:
        raise LabError(f"cannot build the Xen dom0 image: {why}")
    cache = cache or default_cache()
    built = _paths(cache, cache_key())
    with file_lock(cache / "build.lock"):
        if built.rootfs.exists() and not rebuild:
            return built
        work = built.rootfs.parent
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = log or work / "build.log"
        try:
            _build(cache, work, built, log)
        except BaseException:
            built.rootfs.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work / "tree", ignore_errors=True)
    return built


def _build(cache: Path, work: Path, built: XenImage, log: Path) -> None:
    debs_dir = work / "debs"
    out = _run([str(BUILD_DEB), str(debs_dir)], "building gridtool's .debs (scripts/build-deb)",
               log, env={"LINTIAN": "0"})
    debs = [Path(p) for p in out.split() if Path(p).name.split("_")[0]
            in ("gridtool-common", "gridtool-agent")]
    archives = cache / "apt-archives"  # fetched .debs, kept for the next build
    archives.mkdir(exist_ok=True)
    tree = work / "tree"
    inside = " ".join(f"/tmp/{deb.name}" for deb in debs)
    _run(["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          "--aptopt=APT::Install-Recommends \"false\"",
          f"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives && "
          f"cp {archives}/*.deb \"$1\"/var/cache/apt/archives/ 2>/dev/null || true",
          # gridtool's packages, by apt (with what they depend on), before the cleanup
          f"--customize-hook=cp {' '.join(str(d) for d in debs)} \"$1\"/tmp/",
          f"--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get "
          f"install -y -q {inside} && rm -f \"$1\"/tmp/gridtool*.deb",
          f"--customize-hook=cp \"$1\"/var/cache/apt/archives/*.deb {archives}/ || true",
          SUITE, str(tree), *MIRRORS], "mmdebstrap (the dom0's Debian packages)", log)
    _configure(tree, guest_image())
    built.xen.write_bytes(gzip.decompress((tree / XEN_GZ).read_bytes()))
    for pattern, target in (("vmlinuz-*", built.kernel), ("initrd.img-*", built.initrd)):
        (found,) = sorted((tree / "boot").glob(pattern))
        shutil.copyfile(found, target)
    shutil.rmtree(tree / "var/cache/apt/archives", ignore_errors=True)
    tmp = built.rootfs.with_suffix(".tmp")
    _run(["mkfs.ext4", "-q", "-F", "-L", "dom0", "-d", str(tree), str(tmp), IMAGE_SIZE],
         "making the dom0's ext4 image", log)
    tmp.rename(built.rootfs)


def _configure(tree: Path, guest: GuestImage) -> None:
    """The lab's files, units and the PV guests' kernel and initramfs."""
    for rel, text in LAB_FILES.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tree / "usr/local/sbin/gridtool-lab-config").chmod(0o755)
    (tree / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    for verb, units in (("enable", ENABLE), ("mask", MASK)):
        subprocess.run(["chroot", str(tree), "systemctl", verb, *units], check=True,
                       capture_output=True)
    (tree / "root/.profile").write_text("")  # a quiet root login on hvc0 (debugging)
    subprocess.run(["chroot", str(tree), "passwd", "-d", "root"], check=True,
                   capture_output=True)
    dest = tree / GUEST_DIR.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(guest.kernel, dest / "vmlinuz")
    shutil.copyfile(guest.initramfs, dest / "initramfs.cpio.gz")
    dom0storage.install(tree)
    _install_block_script(tree)


def _install_block_script(tree: Path) -> None:
    """:data:`BLOCK_SCRIPT` as :data:`BLOCK_PATH`, Debian's diverted (dpkg keeps an
    upgrade's copy there too)."""
    subprocess.run(["chroot", str(tree), "dpkg-divert", "--local", "--rename", "--divert",
                    f"{BLOCK_PATH}.debian", "--add", BLOCK_PATH], check=True,
                   capture_output=True)
    target = tree / BLOCK_PATH.lstrip("/")
    shutil.copyfile(BLOCK_SCRIPT, target)
    target.chmod(0o755)


def _run(argv: list[str], what: str, log: Path, env: dict[str, str] | None = None) -> str:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(argv)}\n")
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=fh, text=True,
                              env={**os.environ, **(env or {})}, check=False)
        fh.write(done.stdout)
    if done.returncode != 0:
        raise LabError(f"{what} failed (exit {done.returncode}; log: {log})")
    return done.stdout


def make_config_disk(path: Path, files: dict[str, str]) -> Path:
    """A host's config disk: a small ext4 image labelled :data:`CONFIG_LABEL` holding
    ``files`` (name -> content: hostname, agent.conf, password)."""
    stage = path.with_suffix(".d")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        for name, text in files.items():
            (stage / name).write_text(text)
            (stage / name).chmod(0o600)
        path.unlink(missing_ok=True)
        done = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", CONFIG_LABEL, "-d", str(stage),
                               str(path), "4M"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LabError(f"making the config disk {path}: {done.stderr.strip()}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return path
