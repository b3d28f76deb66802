"""A clean Debian 12 system to install gridtool's packages into: a chroot.

``debootstrap --variant=minbase`` (about 40 s and 200 MiB here) runs once per cache
directory and is kept as a tarball; :func:`make_root` unpacks a fresh copy into its own
tmp dir (a few seconds), so what one test installs never leaks into another. apt inside
the root installs the packages with their declared dependencies from Debian's archive;
the .debs apt fetched are kept beside the tarball for the next run.

:func:`overlay_root` is the fast way for a test that needs some packages in place
first (the Debian dependencies of gridtool's packages, an sshd): such a root is made
once per cache and package list (``roots/<key>``, kept unpacked) and each test gets a
copy-on-write view of it (overlayfs), so it starts in well under a second and leaves
nothing behind but what it wrote.

Cache: ``$GRIDTOOL_TEST_CACHE`` or ``~/.cache/gridtool/test``. Mirror:
``$GRIDTOOL_DEBIAN_MIRROR`` (default Debian's own).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("GRIDTOOL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: How long one command in the root may take (apt fetching from the archive included).
COMMAND_TIMEOUT = 600.0


def cache_dir() -> Path:
    base = os.environ.get("GRIDTOOL_TEST_CACHE") or Path.home() / ".cache/gridtool/test"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT,
         stdin: str | None = None, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                               **(env or {})})


def _checked(argv: Sequence[str]) -> None:
    done = _run(argv)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")


def base_tarball(cache: Path) -> Path:
    """The minbase root as a tarball, made with debootstrap unless the cache has it."""
    tarball = cache / f"debian-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=cache) as tmp:
        root = Path(tmp, "root")
        _checked(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR])
        _checked(["tar", "-C", str(root), "--numeric-owner", "-cf", f"{tmp}/base.tar", "."])
        os.replace(f"{tmp}/base.tar", tarball)
    return tarball


@dataclass
class DebianRoot:
    """An unpacked root; commands run in it with chroot (as root, like dpkg on a host)."""

    path: Path
    archives: Path  # the cache of .debs apt fetched, shared between runs

    def run(self, *argv: str, stdin: str | None = None,
            timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run(["chroot", str(self.path), *argv], timeout=timeout, stdin=stdin,
                    env={"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"})

    def copy_in(self, files: Sequence[Path], where: str = "/tmp") -> list[str]:
        """Copy files into the root; their paths as the root sees them."""
        target = self.path / where.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        seen = []
        for f in files:
            shutil.copy2(f, target / f.name)
            seen.append(f"{where.rstrip('/')}/{f.name}")
        return seen

    def apt_install(self, *packages: str, update: bool = True
                    ) -> subprocess.CompletedProcess[str]:
        """``apt-get update`` (unless not ``update``: the root's package lists as they
        are) then ``apt-get install`` (no recommends), reusing and then refilling the
        shared cache of fetched .debs."""
        mine = self.path / "var/cache/apt/archives"
        for deb in self.archives.glob("*.deb"):
            shutil.copy2(deb, mine / deb.name)
        if update:
            refreshed = self.run("apt-get", "update", "-q")
            if refreshed.returncode != 0:
                return refreshed
        done = self.run("apt-get", "install", "-y", "-q", "--no-install-recommends",
                        *packages)
        for deb in mine.glob("*.deb"):
            if not (self.archives / deb.name).exists():
                shutil.copy2(deb, self.archives / deb.name)
        return done


def make_root(where: Path) -> DebianRoot:
    """A fresh Debian 12 root under ``where`` (which the caller removes)."""
    cache = cache_dir()
    tarball = base_tarball(cache)
    root = where / "root"
    root.mkdir(parents=True)
    _checked(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)])
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    # No package's maintainer script may start a service here: the root shares this
    # machine's network (an sshd would take port 22).
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    archives = cache / "apt-archives"
    archives.mkdir(exist_ok=True)
    return DebianRoot(root, archives)


def deb_depends(debs: Sequence[Path]) -> list[str]:
    """The Debian packages ``debs`` depend on (first alternatives, versions dropped),
    without the ones among ``debs``."""
    ours = {deb.name.split("_")[0] for deb in debs}
    names = set()
    for deb in debs:
        field = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
        for item in filter(None, (i.strip() for i in field.split(","))):
            names.add(item.split("|")[0].split("(")[0].strip())
    return sorted(names - ours)


def _prepared(packages: Sequence[str]) -> Path:
    """The cached root with ``packages`` installed by apt (made once per package list)."""
    cache = cache_dir()
    key = hashlib.sha256(" ".join([SUITE, MIRROR, *sorted(packages)]).encode()).hexdigest()
    tree = cache / "roots" / key[:16]
    if tree.exists():
        return tree
    tree.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="root-", dir=tree.parent) as tmp:
        root = make_root(Path(tmp))
        done = root.apt_install(*packages)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(packages)} failed: "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        root.run("apt-get", "clean")
        with contextlib.suppress(OSError):  # another session made it meanwhile: use that
            os.replace(root.path, tree)
    return tree


@contextlib.contextmanager
def overlay_root(where: Path, packages: Sequence[str]) -> Iterator[DebianRoot]:
    """A Debian 12 root at ``where/root`` with ``packages`` installed: an overlayfs whose
    lower layer is the cached root (:func:`_prepared`), never written. Afterwards
    whatever is mounted under it (a /proc) and the overlay are unmounted and ``where``
    is removed."""
    lower = _prepared(packages)
    root, upper, work = where / "root", where / "upper", where / "work"
    for path in (root, upper, work):
        path.mkdir(parents=True)
    _checked(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={upper},workdir={work}", str(root)])
    try:
        yield DebianRoot(root, cache_dir() / "apt-archives")
    finally:
        for mounted in (root / "proc", root):
            if os.path.ismount(mounted):
                _run(["umount", "-l", str(mounted)])
        if not os.path.ismount(root):
            shutil.rmtree(where, ignore_errors=True)
