"""The Xen lab's lean block hotplug script (gridtool/lab/data/xen-block) run by dash
against a small file-backed stand-in for xenstore's command-line tools (xenstore-ls,
-read, -write: the script's only link to Xen). What it writes for a block device, when it
refuses one, that remove undoes nothing for one. The real script in a real dom0 is the
Xen tier's (every guest start there runs it)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gridtool.lab import xenimage

pytestmark = pytest.mark.skipif(shutil.which("dash") is None, reason="needs dash")

# xenstore-ls [-f] PATH, xenstore-read P..., xenstore-write P V...: over
# a JSON file; xenstore-ls without -f cuts a line at 80 columns as the real one does
# (xenstore_client.c: `"%.*s\\..."` past max_width; -f sets max_width to INT_MAX/2,
# and only a terminal on stdout would set it back to its width)
FAKE = r'''
import json, os, sys
db = os.environ["FAKE_XS"]
tree = json.load(open(db))
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
if tool == "xenstore-write":
    tree.update(zip(args[::2], args[1::2]))
    json.dump(tree, open(db, "w"))
elif tool == "xenstore-read":
    if any(a not in tree for a in args):
        sys.exit(1)
    print("\n".join(tree[a] for a in args))
else:
    full = args[0] == "-f"
    base = args[-1].rstrip("/")
    keys = sorted(k for k in tree if k.startswith(base + "/"))
    if not keys:
        sys.exit(1)
    for k in keys:
        rel = k[len(base) + 1:]
        indent = " " * rel.count("/")
        name = k if full else indent + rel.rsplit("/", 1)[-1]
        value = tree[k]
        if not full and len(name) + len(value) + 8 > 80:
            value = value[:80 - 8 - len(name)] + "\\..."
        print(f'{name} = "{value}"')
'''

BACKEND = "/local/domain/0/backend/vbd"


@pytest.fixture
def xs(tmp_path: Path) -> Path:
    """A bin directory with the fake tools; the store is tmp_path/xs.json."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("xenstore-ls", "xenstore-read", "xenstore-write"):
        path = bin_dir / tool
        path.write_text(f"#!{sys.executable}\n{FAKE}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "xs.json").write_text("{}")
    return tmp_path


def mounted() -> list[str]:
    """The block devices this machine has mounted."""
    with open("/proc/mounts") as fh:
        sources = [line.split()[0] for line in fh]
    return [src for src in sources if src.startswith("/dev/") and os.path.exists(src)
            and stat.S_ISBLK(os.stat(src).st_mode)]


def block_device() -> str:
    """A block device node this machine has not mounted."""
    busy = {os.stat(dev).st_rdev for dev in mounted()}
    for dev in sorted(str(p) for p in Path("/dev").glob("loop[0-9]*")):
        if stat.S_ISBLK(os.stat(dev).st_mode) and os.stat(dev).st_rdev not in busy:
            return dev
    pytest.skip("no unmounted block device node on this machine")


def backend(dom: int, dev: str, mode: str = "w", **extra: str) -> dict[str, str]:
    path = f"{BACKEND}/{dom}/51712"
    return {f"{path}/{k}": v for k, v in
            {"params": dev, "mode": mode, "state": "2", "frontend-id": str(dom),
             **extra}.items()} | {f"/local/domain/{dom}/vm": f"/vm/uuid-{dom}"}


def run(xs: Path, command: str, dom: int,
        tree: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    db = xs / "xs.json"
    db.write_text(json.dumps(tree))
    env = {"PATH": f"{xs / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "FAKE_XS": str(db),
           "XENBUS_PATH": f"{BACKEND}/{dom}/51712", "XEN_HOTPLUG_LOG": str(xs / "log")}
    done = subprocess.run(["dash", str(xenimage.BLOCK_SCRIPT), command], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    return done, json.loads(db.read_text())


def major_minor(dev: str) -> str:
    rdev = os.stat(dev).st_rdev
    return f"{os.major(rdev):x}:{os.minor(rdev):x}"


def test_add_of_a_block_device_writes_its_number_path_and_connected(xs: Path) -> None:
    dev = block_device()
    done, tree = run(xs, "add", 3, backend(3, dev))
    assert done.returncode == 0, done.stderr
    path = f"{BACKEND}/3/51712"
    assert tree[f"{path}/physical-device"] == major_minor(dev)
    assert tree[f"{path}/physical-device-path"] == dev
    assert tree[f"{path}/hotplug-status"] == "connected"


def test_add_of_a_long_by_path_link_writes_the_device_it_names(xs: Path,
                                                               tmp_path: Path) -> None:
    """An iSCSI LUN's by-path name is longer than xenstore-ls prints a value (80 columns:
    the first version read params that way, and the Xen tier's iSCSI guest failed to
    start: "libxenlight failed to create new domain")."""
    dev = block_device()
    link = tmp_path / ("ip-198.19.248.1:3260-iscsi-iqn.2026-12.lab.gridtool:storage-lun-1"
                       "-and-some-more-to-be-sure")
    link.symlink_to(dev)
    done, tree = run(xs, "add", 3, backend(3, str(link)))
    assert done.returncode == 0, (done.stderr, tree)
    assert tree[f"{BACKEND}/3/51712/physical-device"] == major_minor(dev)
    assert tree[f"{BACKEND}/3/51712/physical-device-path"] == dev


def test_add_refuses_a_device_another_guest_writes(xs: Path) -> None:
    dev = block_device()
    other = backend(2, dev, **{"physical-device": major_minor(dev)})
    done, tree = run(xs, "add", 3, other | backend(3, dev, mode="r"))
    assert done.returncode == 1
    path = f"{BACKEND}/3/51712"
    assert tree[f"{path}/hotplug-status"] == "busy"
    assert "already used by domain 2" in tree[f"{path}/hotplug-error"]
    assert f"{path}/physical-device" not in tree


def test_add_allows_the_same_vm_and_a_shared_mode(xs: Path) -> None:
    dev = block_device()
    other = backend(2, dev, **{"physical-device": major_minor(dev)})
    same_vm = other | backend(3, dev) | {"/local/domain/3/vm": "/vm/uuid-2"}
    assert run(xs, "add", 3, same_vm)[0].returncode == 0
    assert run(xs, "add", 3, other | backend(3, dev, mode="w!"))[0].returncode == 0


def test_add_refuses_a_device_the_dom0_has_mounted_for_writing(xs: Path) -> None:
    if not mounted():
        pytest.skip("nothing mounted from a block device here")
    dev = mounted()[0]
    done, tree = run(xs, "add", 3, backend(3, dev))
    assert done.returncode == 1
    assert tree[f"{BACKEND}/3/51712/hotplug-status"] == "busy"
    assert "is mounted in the dom0" in tree[f"{BACKEND}/3/51712/hotplug-error"]


def test_add_twice_and_remove_of_a_block_device_change_nothing(xs: Path) -> None:
    dev = block_device()
    done_tree = backend(3, dev, **{"physical-device": "ff:ff"})
    for command in ("add", "remove"):
        done, tree = run(xs, command, 3, done_tree)
        assert done.returncode == 0, done.stderr
        assert tree == done_tree


def test_add_of_a_missing_path_is_an_error_in_xenstore(xs: Path, tmp_path: Path) -> None:
    done, tree = run(xs, "add", 3, backend(3, str(tmp_path / "nothing")))
    assert done.returncode == 1
    assert tree[f"{BACKEND}/3/51712/hotplug-status"] == "error"
    assert "neither a block device nor a file" in tree[f"{BACKEND}/3/51712/hotplug-error"]
