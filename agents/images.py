"""Golden images and copy-on-write overlays on the host's images directory.

``<images_dir>/templates/<template>/<target>.qcow2``: golden images, written once and made
read-only (0444). ``<images_dir>/clones/<host>/<uuid>-<target>.qcow2``: each clone's qcow2
overlay with the golden image as its backing file. The directory is shared storage
(NFS, a cluster file system) in production and one lab-wide directory in the lab.

Overlays are made through libvirt's storage volume API when an active directory-backed
pool (dir/fs/netfs) has the overlay's directory as its target path, otherwise with
``qemu-img create -b GOLDEN -F qcow2``. Nothing outside ``images_dir`` is ever created or
deleted: every path is checked first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from gridtool.clone.rules import OVERLAY_FORMAT, inside

#: Virtual size of a golden image made for a disk whose source does not exist (the
#: libvirt test driver's guests have no real disks); sparse, so it costs ~200 KiB.
PLACEHOLDER_SIZE = "1G"
QEMU_IMG_TIMEOUT = 3600.0  # converting a large disk takes a while


class ImageError(Exception):
    """An image operation failed; str() is one line."""


def _qemu_img(*args: str) -> str:
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                              timeout=QEMU_IMG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise ImageError("qemu-img is not installed (apt-get install qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"qemu-img {args[0]} took over {QEMU_IMG_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise ImageError(f"qemu-img {args[0]}: " + " ".join(done.stderr.split()))
    return done.stdout


def _check(path: str, images_dir: str, sub: str) -> None:
    if not inside(path, str(Path(images_dir, sub))):
        raise ImageError(f"{path} is not under {Path(images_dir, sub)} (this host's "
                         "images_dir): refusing to touch it")


def template_dir(images_dir: str, template: str) -> Path:
    return Path(images_dir, "templates", template)


def freeze(images_dir: str, golden: str, source: str) -> None:
    """Write golden image ``golden`` once from ``source`` and make it read-only."""
    _check(golden, images_dir, "templates")
    part = f"{golden}.part"
    try:
        if source and os.path.exists(source):
            _qemu_img("convert", "-O", OVERLAY_FORMAT, source, part)
        else:  # the test driver's disks do not exist: an empty image stands in for one
            _qemu_img("create", "-q", "-f", OVERLAY_FORMAT, part, PLACEHOLDER_SIZE)
        os.chmod(part, 0o444)
        os.rename(part, golden)
    except OSError as exc:
        raise ImageError(f"golden image {golden}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


def remove_template(images_dir: str, template: str) -> bool:
    """Delete a template's golden images; False when there were none."""
    path = template_dir(images_dir, template)
    _check(str(path), images_dir, "templates")
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


def create_overlay(conn: libvirt.virConnect, images_dir: str, overlay: str,
                   golden: str) -> str:
    """Create ``overlay`` backed by ``golden``; returns how (``pool NAME`` or
    ``qemu-img``). Refuses an existing overlay; leaves nothing behind on failure."""
    _check(overlay, images_dir, "clones")
    _check(golden, images_dir, "templates")
    if not os.path.exists(golden):
        raise ImageError(f"golden image {golden} is missing")
    if os.path.lexists(overlay):
        raise ImageError(f"overlay {overlay} already exists")
    try:
        os.makedirs(os.path.dirname(overlay), exist_ok=True)
    except OSError as exc:
        raise ImageError(f"overlay directory {os.path.dirname(overlay)}: {exc.strerror}") from None
    pool = _pool_for(conn, os.path.dirname(overlay))
    try:
        if pool is not None:
            pool.createXML(_volume_xml(overlay, golden), 0)
            return f"pool {pool.name()}"
        _qemu_img("create", "-q", "-f", OVERLAY_FORMAT, "-b", golden, "-F", OVERLAY_FORMAT,
                  overlay)
        return "qemu-img"
    except (ImageError, libvirt.libvirtError) as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(overlay)
        raise ImageError(" ".join(str(exc).split())) from None


def delete_overlay(conn: libvirt.virConnect, images_dir: str, overlay: str) -> bool:
    """Delete an overlay (through its pool when one holds it); False if already gone."""
    _check(overlay, images_dir, "clones")
    pool = _pool_for(conn, os.path.dirname(overlay))
    if pool is not None:
        with contextlib.suppress(libvirt.libvirtError):
            pool.storageVolLookupByName(os.path.basename(overlay)).delete(0)
    try:
        os.unlink(overlay)
    except FileNotFoundError:
        return pool is not None
    except OSError as exc:
        raise ImageError(f"overlay {overlay}: {exc.strerror}") from None
    return True


def _pool_for(conn: libvirt.virConnect, directory: str) -> libvirt.virStoragePool | None:
    """An active directory-backed pool whose target path is ``directory`` (never with the
    test driver, whose pools are not real directories)."""
    if conn.getType().lower() == "test":
        return None
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        root = ET.fromstring(pool.XMLDesc(0))
        if root.get("type") in ("dir", "fs", "netfs") and os.path.realpath(
                root.findtext("./target/path") or "/nonexistent") == os.path.realpath(
                directory):
            return pool
    return None


def _volume_xml(overlay: str, golden: str) -> str:
    size = json.loads(_qemu_img("info", "--output=json", golden))["virtual-size"]
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = os.path.basename(overlay)
    ET.SubElement(vol, "capacity", unit="bytes").text = str(size)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=OVERLAY_FORMAT)
    backing = ET.SubElement(vol, "backingStore")
    ET.SubElement(backing, "path").text = golden
    ET.SubElement(backing, "format", type=OVERLAY_FORMAT)
    return ET.tostring(vol, encoding="unicode")


def disk_sources(xml: str) -> list[str]:
    """File sources of a domain's disks (for removing a clone's overlays)."""
    root = ET.fromstring(xml)
    return [s.get("file", "") for s in root.findall("./devices/disk/source") if s.get("file")]
