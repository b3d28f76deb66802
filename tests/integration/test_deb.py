"""The Debian packages (``scripts/build-deb``) installed as a sysadmin installs them: apt in
a clean Debian 12 (a debootstrap chroot: ``tests/harness/debroot.py``) resolves their
dependencies from Debian's archive; then the installed programs run there, the packaged
agent against the session's real etcd (the chroot shares this machine's loopback) and
libvirt's test driver, the packaged fence hook asking it, the packaged CLI reading the
registry. Nothing from this checkout or its venv is on the chroot's paths.

Measured on 2 cores: the build 22 s when idle, 100-165 s at load 7-9 (lintian most of
it); debootstrap 36 s, once per cache. Each root starts as a copy-on-write view of a
cached root that holds the packages' Debian dependencies (``debroot.overlay_root``): at
load 10-17 the installed root took 31 s (175 s when each test unpacked the base and apt
fetched and installed the dependencies), ``host add --deb`` 89 s (251 s, plus 30 s of
teardown deleting the unpacked root, now 5 s), the whole module 318 s (629 s); with a
cold cache (both cached roots made) 720 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridtool import __version__
from gridtool.bootstrap.rules import DEB_PACKAGES, Action, Layout, SshTarget, plan_remove
from gridtool.bootstrap.shell import Remote, run_steps
from gridtool.config import Config, render
from gridtool.lab.procs import free_port, port_open, spawn, stop_pid
from gridtool.registry.fleet import Registry
from tests.harness import ROOT
from tests.harness.debroot import DebianRoot, deb_depends, overlay_root
from tests.harness.testbed import (
    CLI_WITHOUT_SOURCE_TREE,
    credential_env,
    terminate,
    wait_until,
)
from tests.harness.units import verify_unit

# The first test also builds the packages (lintian included) and makes the root (a
# debootstrap on a cold cache): 300 s seen at load 7-9 on 2 cores; 1200 s leaves a factor 4.
pytestmark = pytest.mark.timeout(1200)

VENDOR = ROOT / "packaging" / "deb" / "vendor.txt"
HOOK = "/usr/libexec/gridtool/fence-hook"


def pins() -> dict[str, str]:
    """name -> version of every vendored library (packaging/deb/vendor.txt)."""
    return dict(re.findall(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", VENDOR.read_text()))


SITE_HOOK = "#!/bin/sh\n# the site's own libvirt hook\nexit 0\n"


def site_hook(root: Path) -> Path:
    """A libvirt hook the site already has (``hooks/qemu``): gridtool must keep it."""
    hook = root / "etc/libvirt/hooks/qemu"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(SITE_HOOK)
    hook.chmod(0o755)
    return hook


def guest_xml(source: str) -> str:
    return (f"<domain type='kvm'><name>g1</name><uuid>{uuid.uuid4()}</uuid><devices>"
            f"<disk type='block' device='disk'><source dev='{source}'/>"
            "<target dev='vda'/></disk></devices></domain>")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("debs")
    done = subprocess.run([str(ROOT / "scripts" / "build-deb"), str(out)], capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, f"build-deb (lintian included) failed:\n{done.stderr}"
    return [Path(line) for line in done.stdout.split()]


@pytest.fixture(scope="module")
def installed(debs: list[Path], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[DebianRoot, str]]:
    """A clean Debian 12 root with the three packages installed by apt, and apt's output.
    The root starts with their Debian dependencies (exactly what apt pulls in for their
    Depends, no recommends), cached per dependency list, so apt installs offline here; a
    site's own libvirt hook is there before the packages."""
    with overlay_root(tmp_path_factory.mktemp("debroot"), deb_depends(debs)) as root:
        site_hook(root.path)
        done = root.apt_install(*root.copy_in(debs), update=False)
        assert done.returncode == 0, f"apt-get install failed:\n{done.stdout}\n{done.stderr}"
        yield root, done.stdout + done.stderr


def test_the_build_makes_three_packages_with_debians_libvirt(debs: list[Path]) -> None:
    names = sorted(p.name for p in debs)
    assert names == sorted([f"gridtool-agent_{__version__}-1_all.deb",
                            f"gridtool-common_{__version__}-1_amd64.deb",
                            f"gridtool_{__version__}-1_all.deb"])
    fields = {p.name.split("_")[0]: subprocess.run(
        ["dpkg-deb", "-f", str(p), "Depends"], capture_output=True, text=True,
        check=True).stdout for p in debs}
    assert "python3-libvirt" in fields["gridtool-agent"]
    assert "gridtool-common (=" in fields["gridtool-agent"]
    assert "gridtool-common (=" in fields["gridtool"]


def test_apt_installs_them_from_debian_without_a_compiler_and_leaves_the_agent_stopped(
        installed: tuple[DebianRoot, str]) -> None:
    root, log = installed
    assert "gridtool-agent: not started: set host, libvirt_uri and endpoints" in log
    status = root.run("dpkg-query", "-W", "-f=${Package} ${Status}\n").stdout
    have = {line.split()[0] for line in status.splitlines() if "install ok installed" in line}
    assert {"gridtool-common", "gridtool-agent", "gridtool", "python3-libvirt"} <= have
    assert not have & {"gcc", "libvirt-dev", "python3-grpcio", "python3-protobuf"}
    conffiles = root.run("dpkg-query", "-W", "-f=${Conffiles}", "gridtool-agent").stdout
    assert "/etc/gridtool/agent.conf" in conffiles
    assert (root.path / "etc/gridtool/agent.conf").stat().st_mode & 0o777 == 0o600
    assert not (root.path / "etc/systemd/system/multi-user.target.wants/"
                "gridtool-agent.service").exists()


def test_the_agent_runs_on_debians_libvirt_and_the_vendored_etcd_client(
        installed: tuple[DebianRoot, str]) -> None:
    root, _ = installed
    done = root.run("gridtool-agent", "--version")
    assert done.returncode == 0, done.stderr
    want = pins()
    assert done.stdout.startswith(f"gridtool-agent {__version__} (python 3.11.")
    for name in ("etcd-sdk-python", "grpcio", "protobuf"):
        assert f"{name} {want[name]}" in done.stdout
    debian_libvirt = root.run("dpkg-query", "-W", "-f=${Version}", "python3-libvirt").stdout
    assert f"libvirt-python {debian_libvirt.split('-')[0]}" in done.stdout
    unconfigured = root.run("gridtool-agent")
    assert (unconfigured.returncode, unconfigured.stderr) == (
        2, "gridtool-agent: setting 'host' is required (config [agent] host, env "
           "GRIDTOOL_HOST, or --host)\n")


def test_the_hook_goes_into_qemu_d_and_the_sites_own_hook_is_kept(
        installed: tuple[DebianRoot, str]) -> None:
    root, _ = installed
    assert (root.path / "etc/libvirt/hooks/qemu").read_text() == SITE_HOOK
    for driver in ("qemu", "libxl"):
        link = root.path / f"etc/libvirt/hooks/{driver}.d/gridtool"
        assert os.readlink(link) == HOOK
    # as libvirt runs it: NAME OP SUBOP EXTRA, the XML on stdin
    refused = root.run("/etc/libvirt/hooks/qemu.d/gridtool", "g1", "prepare", "begin", "-",
                       stdin=guest_xml("/dev/etherd/e1.2"))
    assert refused.returncode == 1 and "fail closed" in refused.stderr


def test_the_packaged_unit_verifies_with_the_agent_where_the_package_put_it(
        installed: tuple[DebianRoot, str], tmp_path: Path) -> None:
    root, _ = installed
    unit = (root.path / "lib/systemd/system/gridtool-agent.service").read_text()
    (exec_start,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    program = exec_start.removeprefix("ExecStart=").split()[0]
    assert program == "/usr/bin/gridtool-agent"
    done = verify_unit(tmp_path / "root", unit, "gridtool-agent.service",
                       {program: root.path / program.lstrip("/")})
    assert done.returncode == 0, done.stderr


def test_the_packaged_hook_checks_itself_and_fails_closed_without_the_agent(
        installed: tuple[DebianRoot, str]) -> None:
    root, _ = installed
    check = root.run(HOOK, "--self-check")
    assert check.returncode == 0, check.stderr
    assert "socket /run/gridtool/hook.sock" in check.stdout
    assert check.stdout.endswith("hook self-check passed\n")
    shared = root.run(HOOK, "g1", "prepare", "begin", "-", stdin=guest_xml("/dev/etherd/e1.2"))
    assert shared.returncode == 1 and "fail closed" in shared.stderr
    local = root.run(HOOK, "g1", "prepare", "begin", "-", stdin=guest_xml("/srv/local.img"))
    assert (local.returncode, local.stderr) == (0, "")
    odd = root.run(HOOK, "--self-check", "prepare", "begin", "-",
                   stdin=guest_xml("/dev/etherd/e1.2"))
    assert odd.returncode == 1, "a guest named --self-check is judged like any other"


def test_the_packaged_agent_registers_answers_the_hook_and_the_cli_reads_it(
        installed: tuple[DebianRoot, str], cfg: Config, registry: Registry,
        tmp_path: Path) -> None:
    root, _ = installed
    host = f"deb-{uuid.uuid4().hex[:8]}"
    (root.path / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root.path / "etc/gridtool/etcd.password").write_text(f"{cfg.password}\n")
    conf = root.path / "etc/gridtool/agent.conf"
    packaged = conf.read_text()
    conf.write_text(render(Config(
        endpoints=cfg.endpoints, prefix=cfg.prefix, user=cfg.user,
        password_file="/etc/gridtool/etcd.password", host=host, libvirt_uri="test:///default",
        ttl=cfg.ttl, hook_socket="/run/gridtool/hook.sock")))
    (root.path / "run/gridtool").mkdir(parents=True, exist_ok=True)
    agent = spawn(["chroot", str(root.path), "gridtool-agent", "--config",
                   "/etc/gridtool/agent.conf"], tmp_path / "agent.log")
    try:
        wait_until(lambda: registry.find_host(host) or agent.poll() is not None, 30,
                   f"{host} in the registry")
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        wait_until(lambda: (root.path / "run/gridtool/hook.sock").exists(), 10, "hook socket")
        check = root.run(HOOK, "--self-check")
        assert check.returncode == 0, check.stderr
        assert "cannot be asked" not in check.stdout, "the agent answers the hook"
        listing = root.run("gridtool", "--config", "/etc/gridtool/agent.conf", "host", "list",
                           "--json")
        assert listing.returncode == 0, listing.stderr
        assert [h["name"] for h in json.loads(listing.stdout)["hosts"]] == [host]
    finally:
        terminate(agent)
        conf.write_text(packaged)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()
    wait_until(lambda: registry.find_host(host) is None, 10, f"{host} gone after SIGTERM")


def test_host_add_installs_the_debs_over_ssh_without_a_source_tree(
        debs: list[Path], cfg: Config, registry: Registry, tmp_path: Path) -> None:
    """``host add --deb`` into a clean Debian 12 whose sshd runs in the chroot (so apt
    and dpkg act on it), with the CLI's source-tree lookup made to fail."""
    dom0 = [*deb_depends(debs), "openssh-server", "libvirt-clients"]
    with overlay_root(tmp_path / "dom0", dom0) as root:
        add_debs_over_ssh(root, debs, cfg, registry, tmp_path)


def add_debs_over_ssh(root: DebianRoot, debs: list[Path], cfg: Config, registry: Registry,
                      tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "client_key")], check=True)
    ssh_dir = root.path / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(tmp_path / "client_key.pub", ssh_dir / "authorized_keys")
    port = free_port()
    (root.path / "etc/ssh/sshd_test_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PidFile /run/sshd-test.pid\nUsePAM no\nPermitRootLogin yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n")
    (root.path / "run/sshd").mkdir(parents=True, exist_ok=True)
    (root.path / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    site = site_hook(root.path)
    # A dom0 has /proc: host add finds its directly started agent there.
    subprocess.run(["mount", "-t", "proc", "proc", str(root.path / "proc")], check=True)
    sshd = spawn(["chroot", str(root.path), "/usr/sbin/sshd", "-D", "-e", "-f",
                  "/etc/ssh/sshd_test_config"], tmp_path / "sshd.log")
    host = f"deb-{uuid.uuid4().hex[:8]}"
    common, agent = sorted(debs, key=lambda p: not p.name.startswith("gridtool-common"))[:2]
    add = ["host", "add", host, "--ssh", f"root@127.0.0.1:{port}", "--key",
           str(tmp_path / "client_key"), "--known-hosts", str(tmp_path / "known_hosts"),
           "--accept-new-host-key", "--libvirt-uri", "test:///default", "--timeout", "60",
           "--deb", str(agent), "--deb", str(common)]
    try:
        wait_until(lambda: port_open(port) or sshd.poll() is not None, 10, "sshd")
        assert sshd.poll() is None, (tmp_path / "sshd.log").read_text()
        first = cli_without_source_tree(cfg, *add)
        assert first.returncode == 0, first.stderr
        assert "no systemd" in first.stderr and "package's own" in first.stderr
        assert registry.get_host(host).libvirt_uri == "test:///default"
        refused = root.run("/etc/libvirt/hooks/qemu.d/gridtool", "g1", "prepare", "begin",
                           "-", stdin=guest_xml("/dev/etherd/e7.1"))
        assert refused.returncode == 1 and "refusing to start g1" in refused.stderr
        assert "fail closed" not in refused.stderr, "the packaged agent answered"
        again = cli_without_source_tree(cfg, *add)
        assert again.returncode == 0, again.stderr
        assert "(0 steps changed" in again.stderr
        print(f"host add --deb:\n{first.stderr}")
        # host remove's steps over the same SSH: stop the agent, purge the packages.
        assert remove_steps(port, tmp_path) == [Action.APPLY] * 3
        gone = root.run("dpkg-query", "-W", "-f=${Status}\n", *DEB_PACKAGES)
        assert "installed" not in gone.stdout and "config-files" not in gone.stdout
        for path in ("usr/lib/gridtool", "etc/gridtool/agent.conf",
                     "etc/libvirt/hooks/qemu.d/gridtool", "usr/bin/gridtool-agent"):
            assert not (root.path / path).exists(), path
        assert site.read_text() == SITE_HOOK, "the site's own hook survives add and remove"
        wait_until(lambda: registry.find_host(host) is None, 10, f"{host} gone")
        assert remove_steps(port, tmp_path) == [Action.OK] * 3
    finally:
        pid_file = root.path / "run/gridtool/agent.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if Path(f"/proc/{pid}/root").resolve() == root.path.resolve():
                stop_pid(pid, "gridtool-agent", timeout=20)
        sshd.terminate()
        sshd.wait(10)




def remove_steps(port: int, tmp_path: Path) -> list[Action]:
    """Run ``host remove``'s plan on the dom0 over SSH, as the CLI does."""
    remote = Remote.connect(SshTarget("root", "127.0.0.1", port), str(tmp_path / "client_key"),
                            tmp_path / "known_hosts", accept_new=False, timeout=10)
    try:
        return [r.action for r in run_steps(remote, plan_remove(Layout(), remote.facts()))]
    finally:
        remote.close()


def cli_without_source_tree(cfg: Config, *args: str) -> subprocess.CompletedProcess[str]:
    """gridtool as a subprocess on the test's registry prefix, where looking for the
    source tree (what ``host add`` without --deb needs) fails."""
    return subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_SOURCE_TREE, "--endpoints", ",".join(cfg.endpoints),
         "--prefix", cfg.prefix, *args], capture_output=True, text=True, timeout=600,
        check=False, env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                          "GRIDTOOL_LAB_DIR": "/nonexistent", "GRIDTOOL_TTL": str(cfg.ttl),
                          **credential_env()})
