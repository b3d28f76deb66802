"""A plain (non-Xen) QEMU TCG machine that boots the lab's Debian kernel with a busybox
initramfs holding virtio_net and aoe.ko and the dom0 storage script
(gridtool/lab/data/dom0-storage.sh): it proves the lab's L2 segment, vblade and the
script the way a dom0 kernel uses them, before (and without) the Xen image.

Its /init runs the script (kernel parameters from :mod:`gridtool.lab.dom0storage`), then
prints ``AOE-READ <first 32 bytes of /dev/etherd/e0.1>``, writes
``GUEST-WROTE <token>`` (``gridtool.token=`` on its command line) to the LUN's second
sector with O_DIRECT, prints ``AOE-WROTE <dd's status>`` and powers off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gridtool.lab import dom0storage, qemu
from gridtool.lab.procs import file_lock

#: The modules the machine loads (paths under lib/modules/RELEASE/), in no special order:
#: busybox modprobe follows modules.dep.
MODULES = ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
           "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
           "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
           "kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko",
           "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
           "kernel/drivers/block/aoe/aoe.ko")
APPLETS = ("sh", "mount", "cat", "echo", "usleep", "sleep", "modprobe", "insmod", "ip", "dd",
           "head", "printf", "mkdir", "poweroff", "sync", "tr")
INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec >/dev/console 2>&1
modprobe virtio_pci
modprobe virtio_net
echo "UPTIME-BEFORE $(cat /proc/uptime)"
gridtool-dom0-storage
echo "GRIDTOOL-STORAGE-EXIT $?"
echo "UPTIME-AFTER $(cat /proc/uptime)"
dev=/dev/etherd/e0.1
echo "AOE-READ $(dd if=$dev bs=512 count=1 iflag=direct 2>/dev/null | head -c 32)"
token=
for word in $(cat /proc/cmdline); do
  case $word in gridtool.token=*) token=${word#*=};; esac
done
printf 'GUEST-WROTE %s' "$token" > /tmp/rec
dd if=/tmp/rec of=$dev bs=512 seek=1 count=1 conv=sync oflag=direct 2>/dev/null
echo "AOE-WROTE $?"
sync
poweroff -f
"""


def initramfs(cache: Path | None = None) -> Path:
    """Build (once per script, modules and init version) the initramfs; its path."""
    cache = cache or qemu.default_cache()
    tree = qemu.kernel_modules(MODULES, cache)
    (release,) = [p.name for p in (tree / "lib/modules").iterdir()]
    digest = hashlib.sha256(INIT.encode() + dom0storage.SCRIPT.read_bytes()
                            + str(tree).encode()).hexdigest()[:12]
    out = cache / f"aoe-initramfs-{digest}.cpio.gz"
    with file_lock(cache / "build.lock"):
        if out.exists():
            return out
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc"):
                (root / d).mkdir()
            shutil.copytree(tree / "lib", root / "lib")
            shutil.copy("/bin/busybox", root / "bin/busybox")
            for applet in APPLETS:
                (root / "bin" / applet).symlink_to("busybox")
            script = root / "bin/gridtool-dom0-storage"
            shutil.copy(dom0storage.SCRIPT, script)
            (root / "init").write_text(INIT)
            os.chmod(root / "init", 0o755)
            subprocess.run(["busybox", "depmod", "-b", str(root), release], check=True)
            tmp_out = out.with_suffix(".tmp")
            subprocess.run(f"cd '{root}' && find . -print | busybox cpio -o -H newc "
                           f"2>/dev/null | gzip -1 > '{tmp_out}'", shell=True, check=True)
            tmp_out.rename(out)
    return out


def boot(kernel_args: list[str], qemu_args: list[str], timeout: float,
         cache: Path | None = None) -> str:
    """Boot the machine to its power-off; its console output (TimeoutExpired after
    ``timeout`` s: the machine is killed)."""
    image = qemu.guest_image(cache)
    argv = [qemu.QEMU, "-machine", "pc", "-accel", image.accel, "-m", "256", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(image.kernel),
            "-initrd", str(initramfs(cache)),
            "-append", " ".join([qemu.KERNEL_CMDLINE, *kernel_args]), *qemu_args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr
