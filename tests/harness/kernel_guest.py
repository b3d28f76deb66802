"""A plain (non-Xen) QEMU TCG machine that boots the lab's Debian kernel with a busybox
initramfs, as a stand-in for a dom0 kernel on the lab's L2 segment, before (and without)
the Xen image. It holds virtio_net, aoe.ko, the kernel iSCSI initiator (iscsi_tcp, sd_mod,
sg), open-iscsi's ``iscsistart`` (Debian's package: the login tool of its initramfs, no
iscsid) and sg3-utils' ``sg_persist`` with their libraries, and the dom0 storage script
(gridtool/lab/data/dom0-storage.sh).

Its /init runs the script (the kernel parameters of :mod:`gridtool.lab.dom0storage`),
then, by ``gridtool.mode=``:

* ``aoe``: prints ``AOE-READ <first 32 bytes of /dev/etherd/e0.1>``, writes ``GUEST-WROTE
  <token>`` (``gridtool.token=``) to the LUN's second sector with O_DIRECT, prints
  ``AOE-WROTE <dd's status>`` and powers off;
* ``iscsi``: logs in with ``iscsistart`` to ``gridtool.portal=ADDR,PORT,TARGET,IQN``
  (``UPTIME-LOGIN`` before, ``UPTIME-DISK`` once the disk is there), runs the
  ``sg_persist`` command lines of :mod:`gridtool.storage.sgcli` to register
  ``gridtool.key=`` and, unless the LUN is reserved already, reserve (type 5), printing
  ``PR-REGISTER <status>`` and ``PR-RESERVE <status>`` (or ``held``), then writes a record
  ``GTREC <n>`` to the LUN's third sector every 200 ms, printing ``W <n> <dd's status>``,
  until killed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gridtool.lab import dom0storage, qemu
from gridtool.lab.procs import LabError, file_lock
from gridtool.storage import sgcli

#: The modules the machine loads (paths under lib/modules/RELEASE/): busybox modprobe
#: follows the modules.dep that busybox depmod writes at build time.
MODULES = tuple(f"kernel/{m}.ko" for m in (
    "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci", "net/core/failover",
    "drivers/net/net_failover", "drivers/net/virtio_net", "drivers/block/aoe/aoe",
    "drivers/scsi/scsi_common", "drivers/scsi/scsi_mod", "drivers/scsi/scsi_transport_iscsi",
    "drivers/scsi/libiscsi", "drivers/scsi/libiscsi_tcp", "drivers/scsi/iscsi_tcp",
    "drivers/scsi/sd_mod", "drivers/scsi/sg", "block/t10-pi", "lib/crc-t10dif", "lib/crc64",
    "lib/crc64-rocksoft", "crypto/crct10dif_common", "crypto/crct10dif_generic",
    "crypto/crc64_rocksoft_generic", "crypto/crc32c_generic"))
APPLETS = ("sh", "mount", "cat", "echo", "usleep", "sleep", "modprobe", "insmod", "ip", "dd",
           "head", "printf", "mkdir", "poweroff", "sync", "tr", "ls", "grep")
#: Debian packages whose files go in (iscsistart and its library), from the archive.
DEBS = ("open-iscsi", "libopeniscsiusr")
DEV = "$dev"
INIT = f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec >/dev/console 2>&1
arg() {{ for w in $(cat /proc/cmdline); do case $w in "$1="*) echo "${{w#*=}}";; esac; done; }}
modprobe virtio_pci
modprobe virtio_net
echo "UPTIME-BEFORE $(cat /proc/uptime)"
gridtool-dom0-storage
echo "GRIDTOOL-STORAGE-EXIT $?"
echo "UPTIME-AFTER $(cat /proc/uptime)"
if [ "$(arg gridtool.mode)" = iscsi ]; then
  modprobe crc32c_generic  # iSCSI digests ask for crc32c by name; nothing loads it here
  modprobe iscsi_tcp; modprobe sd_mod; modprobe sg
  portal=$(arg gridtool.portal | tr , ' ')
  set -- $portal
  echo "UPTIME-LOGIN $(cat /proc/uptime)"
  iscsistart -i "$4" -t "$3" -g 1 -a "$1" -p "$2"
  echo "ISCSI-LOGIN $?"
  n=0
  while [ -z "$(ls /sys/block | grep sd)" ] && [ $n -lt 100 ]; do usleep 100000; n=$((n+1)); done
  dev=/dev/$(ls /sys/block | grep sd | head -n 1)
  echo "UPTIME-DISK $(cat /proc/uptime)"
  key=$(arg gridtool.key)
  # as fence.register: register, then reserve unless the LUN is reserved already (by this
  # key from an earlier session: a registrant writes under type 5); a unit attention
  # (status 6, once per new nexus) is answered by sending the command once more
  again() {{ "$@"; rc=$?; [ $rc = 6 ] && {{ "$@"; rc=$?; }}; return $rc; }}
  again {" ".join(sgcli.register(DEV, 0)).replace("0x0", "$key")}
  echo "PR-REGISTER $?"
  if again {" ".join(sgcli.read_reservation(DEV))} | grep -q "NO reservation held"; then
    again {" ".join(sgcli.reserve(DEV, 0)).replace("0x0", "$key")}
    echo "PR-RESERVE $?"
  else
    echo "PR-RESERVE held"
  fi
  n=0
  while true; do
    printf 'GTREC %s' $n > /tmp/rec
    dd if=/tmp/rec of=$dev bs=512 seek=2 count=1 conv=sync oflag=direct 2>/dev/null
    echo "W $n $?"
    n=$((n + 1))
    usleep 200000
  done
fi
dev=/dev/etherd/e0.1
echo "AOE-READ $(dd if=$dev bs=512 count=1 iflag=direct 2>/dev/null | head -c 32)"
printf 'GUEST-WROTE %s' "$(arg gridtool.token)" > /tmp/rec
dd if=/tmp/rec of=$dev bs=512 seek=1 count=1 conv=sync oflag=direct 2>/dev/null
echo "AOE-WROTE $?"
sync
poweroff -f
"""


def _binaries(root: Path, cache: Path) -> None:
    """iscsistart (from the archive's open-iscsi) and the host's sg_persist, with every
    library they load, into ``root``."""
    debs = cache / "kernel-guest-debs"
    if not (debs / "sbin/iscsistart").exists():
        work = cache / "download-debs"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            done = subprocess.run(["apt-get", "download", "-q", *DEBS], cwd=work,
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                raise LabError(f"apt-get download {' '.join(DEBS)}: {done.stderr.strip()}")
            tree = work / "root"
            for deb in work.glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            shutil.rmtree(debs, ignore_errors=True)
            tree.rename(debs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    sg_persist = shutil.which("sg_persist")
    if sg_persist is None:
        raise LabError("sg_persist is not installed (apt-get install sg3-utils)")
    libdir = root / "lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    (root / "lib64").mkdir(exist_ok=True)
    env = {**os.environ, "LD_LIBRARY_PATH": str(debs / "usr/lib/x86_64-linux-gnu")}
    for binary in (debs / "sbin/iscsistart", Path(sg_persist)):
        shutil.copy(binary, root / "bin" / binary.name)
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env,
                             check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/") or path.startswith(str(debs)):
                target = root / "lib64" if "ld-linux" in path else libdir
                shutil.copy(path, target / Path(path).name)


def initramfs(cache: Path | None = None) -> Path:
    """Build (once per init, script and module set) the initramfs; its path."""
    cache = cache or qemu.default_cache()
    tree = qemu.kernel_modules(MODULES, cache)
    (release,) = [p.name for p in (tree / "lib/modules").iterdir()]
    digest = hashlib.sha256(INIT.encode() + dom0storage.SCRIPT.read_bytes()
                            + str(tree).encode()).hexdigest()[:12]
    out = cache / f"kernel-guest-{digest}.cpio.gz"
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
            _binaries(root, cache)
            shutil.copy(dom0storage.SCRIPT, root / "bin/gridtool-dom0-storage")
            (root / "init").write_text(INIT)
            os.chmod(root / "init", 0o755)
            subprocess.run(["busybox", "depmod", "-b", str(root), release], check=True)
            tmp_out = out.with_suffix(".tmp")
            subprocess.run(f"cd '{root}' && find . -print | busybox cpio -o -H newc "
                           f"2>/dev/null | gzip -1 > '{tmp_out}'", shell=True, check=True)
            tmp_out.rename(out)
    return out


def argv(kernel_args: list[str], qemu_args: list[str], cache: Path | None = None) -> list[str]:
    """The machine's QEMU command line (console on stdout)."""
    image = qemu.guest_image(cache)
    return [qemu.QEMU, "-machine", "pc", "-accel", image.accel, "-m", "256", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(image.kernel),
            "-initrd", str(initramfs(cache)),
            "-append", " ".join([qemu.KERNEL_CMDLINE, *kernel_args]), *qemu_args]


def boot(kernel_args: list[str], qemu_args: list[str], timeout: float,
         cache: Path | None = None) -> str:
    """Boot the machine (``aoe`` mode) to its power-off; its console output
    (TimeoutExpired after ``timeout`` s: the machine is killed)."""
    done = subprocess.run(argv(["gridtool.mode=aoe", *kernel_args], qemu_args, cache),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


class Machine:
    """The machine running in the background (``iscsi`` mode), its console lines
    collected as they come; a context manager that kills it on exit."""

    def __init__(self, kernel_args: list[str], qemu_args: list[str],
                 cache: Path | None = None) -> None:
        self.lines: list[str] = []
        self._proc = subprocess.Popen(argv(["gridtool.mode=iscsi", *kernel_args], qemu_args,
                                           cache), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None  # stdout=PIPE
        for line in self._proc.stdout:
            self.lines.append(line.rstrip())

    def wait_line(self, match: Callable[[str], bool], timeout: float, what: str,
                  after: int = 0) -> str:
        """The first console line from index ``after`` on that ``match`` accepts; LabError
        (with the console's tail) after ``timeout`` s or when the machine exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if match(line):
                    return line
            if self._proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        tail = "\n".join(self.lines[-30:])
        raise LabError(f"{what}: not on the console within {timeout:.0f} s; its tail:\n{tail}")

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=5)
