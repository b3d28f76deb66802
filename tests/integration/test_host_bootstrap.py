"""``gridtool host add|remove`` over SSH against a real OpenSSH server started here on a
loopback port, with a throwaway host key and client key.

Everything is installed under a temporary ``--prefix-dir`` (this machine's /opt and /etc
are not touched). This sandbox has no systemd (PID 1 is not systemd), so the unit is
installed and the agent is started directly with nohup, as on any host without systemd.
The agent watches a libvirtd test-driver host and registers in the test's etcd prefix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gridtool.bootstrap import build_wheel, project_root
from gridtool.bootstrapplan import Layout
from gridtool.lab.procs import free_port, port_open, spawn, stop_pid
from gridtool.lab.testbed import credential_env, domain_xml, wait_until

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    dir: Path
    port: int
    client_key: Path
    proc: subprocess.Popen

    @property
    def target(self) -> str:
        return f"root@127.0.0.1:{self.port}"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on a free loopback port: own host key, one authorized client key."""
    if not Path(SSHD).exists():
        pytest.fail("openssh-server is not installed: run scripts/setup")
    base = tmp_path_factory.mktemp("sshd")
    _keygen(base / "host_key")
    _keygen(base / "client_key")
    shutil.copy(base / "client_key.pub", base / "authorized_keys")
    port = free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/host_key\n"
        f"AuthorizedKeysFile {base}/authorized_keys\nPidFile {base}/sshd.pid\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    proc = spawn([SSHD, "-D", "-e", "-f", str(base / "sshd_config")], base / "sshd.log")
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 10, what="sshd")
        assert proc.poll() is None, (base / "sshd.log").read_text()
        yield Sshd(base, port, base / "client_key", proc)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session."""
    return build_wheel(project_root(), tmp_path_factory.mktemp("wheels"))


def agent_pids(config: str) -> list[int]:
    """PIDs of the processes whose command line names ``config`` (our agents only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"gridtool-agent" in b" ".join(argv) and config.encode() in argv:
                    found.append(int(entry.name))
    return found


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The install root; afterwards no agent started from it is left running."""
    where = tmp_path / "root"
    yield where
    config = Layout(str(where)).config
    for pid in agent_pids(config):
        stop_pid(pid, config)


def gridtool(cfg, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """The real CLI as a subprocess, on the test's registry prefix."""
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()",
         "--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
             "GRIDTOOL_LAB_DIR": "/nonexistent", "GRIDTOOL_TTL": str(cfg.ttl),
             "GRIDTOOL_RESYNC_INTERVAL": "2", **credential_env()})


def ssh_args(sshd: Sshd, root: Path, *extra: str, key: Path | None = None) -> list[str]:
    return ["--ssh", sshd.target, "--key", str(key or sshd.client_key),
            "--known-hosts", str(root.parent / "known_hosts"), "--prefix-dir", str(root),
            *extra]


def one_line(done: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert text in done.stderr, done.stderr


def test_add_repair_and_remove(sshd, wheel, cfg, store, registry, lab_hosts, root):  # type: ignore[no-untyped-def]
    lab = lab_hosts.add("hv1")
    add = ["host", "add", "hv1", *ssh_args(sshd, root, "--accept-new-host-key"),
           "--libvirt-uri", lab.libvirt_uri, "--wheel", str(wheel), "--timeout", "30"]
    lay = Layout(str(root))

    began = time.monotonic()
    first = gridtool(cfg, *add)
    first_s = time.monotonic() - began
    assert first.returncode == 0, first.stderr
    assert "trusted a new host key" in first.stderr and "no systemd" in first.stderr
    assert registry.get_host("hv1").libvirt_uri == lab.libvirt_uri
    conf = Path(lay.config).read_text()
    assert Path(lay.config).stat().st_mode & 0o777 == 0o600
    assert "user = host-" in conf and "password = " in conf  # its own etcd user
    assert "password" not in first.stderr + first.stdout
    assert Path(lay.unit).exists() and Path(lay.agent).exists()
    (pid,) = agent_pids(lay.config)
    print(f"first host add: {first_s:.1f} s\n{first.stderr}")
    # The fence hook (as libvirt would run it) asks the agent: a shared-disk guest whose
    # fence this host does not hold is refused, a local-disk guest passes.
    shared = domain_xml("db1", disk="/dev/etherd/e9.1", block=True)
    hook = [lay.hook, "db1", "prepare", "begin", "-"]
    refused = subprocess.run(hook, input=shared, capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and "refusing to start db1" in refused.stderr
    assert "fail closed" not in refused.stderr, refused.stderr  # the agent answered
    local = subprocess.run(hook, input=domain_xml("tmp1", disk="/var/tmp/x.img"),
                           capture_output=True, text=True, timeout=10)
    assert local.returncode == 0, local.stderr

    # A second run changes nothing: same agent, one wheel, one known_hosts line.
    began = time.monotonic()
    again = gridtool(cfg, *add[:-2], "--timeout", "30")
    again_s = time.monotonic() - began
    assert again.returncode == 0, again.stderr
    assert "(0 steps changed" in again.stderr and "trusted" not in again.stderr
    assert agent_pids(lay.config) == [pid]
    assert len(list(Path(lay.wheels).iterdir())) == 1
    assert len((root.parent / "known_hosts").read_text().splitlines()) == 1
    print(f"second (no-op) host add: {again_s:.1f} s")

    # Repair: a loosened config and a dead agent are put right, still one agent.
    Path(lay.config).chmod(0o644)
    os.kill(pid, 9)
    wait_until(lambda: not agent_pids(lay.config), 5, what="agent killed")
    repair = gridtool(cfg, *add)
    assert repair.returncode == 0, repair.stderr
    assert "(2 steps changed" in repair.stderr
    assert Path(lay.config).stat().st_mode & 0o777 == 0o600
    (new_pid,) = agent_pids(lay.config)
    assert new_pid != pid

    # A running guest: remove is refused, --force too until the host is drained.
    lab_hosts.conn("hv1").defineXML(domain_xml("web1")).create()
    wait_until(lambda: any(g.state == "running"
                           for g in registry.guests_of("hv1")[0].values()),
               10, what="web1 running in the registry")
    remove = ["host", "remove", "hv1", *ssh_args(sshd, root)]
    one_line(gridtool(cfg, *remove), 7, "host drain hv1")
    one_line(gridtool(cfg, *remove, "--force"), 7, "not draining")
    assert agent_pids(lay.config) == [new_pid]
    drained = gridtool(cfg, "host", "drain", "hv1")
    assert drained.returncode == 7  # web1 has nowhere to go, but the host is draining now
    gone = gridtool(cfg, *remove, "--force")
    assert gone.returncode == 0, gone.stderr
    assert "still run on hv1" in gone.stderr
    assert agent_pids(lay.config) == []
    assert not Path(lay.config).exists() and not Path(lay.unit).exists()
    assert not Path(lay.venv).exists()
    assert store.get(cfg.keys.host("hv1")) is None
    assert store.list(cfg.keys.host_guests("hv1"))[0] == []


def test_unknown_host_key_refused_nothing_installed(sshd, wheel, cfg, store, root):  # type: ignore[no-untyped-def]
    done = gridtool(cfg, "host", "add", "hv2", *ssh_args(sshd, root), "--wheel", str(wheel))
    one_line(done, 5, "not in known_hosts")
    assert not root.exists() and not (root.parent / "known_hosts").exists()


def test_changed_host_key_refused_even_with_accept_new(sshd, wheel, cfg, store, root):  # type: ignore[no-untyped-def]
    other = root.parent / "other_key"
    _keygen(other)
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    (root.parent / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    done = gridtool(cfg, "host", "add", "hv2",
                    *ssh_args(sshd, root, "--accept-new-host-key"), "--wheel", str(wheel))
    one_line(done, 5, "CHANGED")
    assert not root.exists()


def test_wrong_key_is_an_auth_error(sshd, wheel, cfg, store, root):  # type: ignore[no-untyped-def]
    stranger = root.parent / "stranger_key"
    _keygen(stranger)
    done = gridtool(cfg, "host", "add", "hv2",
                    *ssh_args(sshd, root, "--accept-new-host-key", key=stranger),
                    "--wheel", str(wheel))
    one_line(done, 5, "ssh authentication failed")
    assert not root.exists()


def test_unreachable_host(sshd, wheel, cfg, store, root):  # type: ignore[no-untyped-def]
    closed = ["--ssh", f"root@127.0.0.1:{free_port()}", "--known-hosts",
              str(root.parent / "known_hosts"), "--prefix-dir", str(root)]
    done = gridtool(cfg, "host", "add", "hv2", *closed, "--wheel", str(wheel))
    one_line(done, 8, "cannot reach")
    done = gridtool(cfg, "host", "remove", "hv2", *closed)
    one_line(done, 8, "cannot reach")
