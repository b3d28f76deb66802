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
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gridtool.auth.credfiles import password_path, read_password
from gridtool.auth.rules import admin_user, host_role, host_user
from gridtool.auth.shell import credentials_dir
from gridtool.bootstrap.rules import Layout
from gridtool.bootstrap.shell import build_wheel, project_root
from gridtool.errors import AuthError
from gridtool.lab.procs import free_port, port_open, spawn, stop_pid
from gridtool.registry.etcdstore import EtcdStore
from tests.harness import ROOT
from tests.harness.debroot import cache_dir
from tests.harness.testbed import (
    CLI_WITHOUT_SOURCE_TREE,
    credential_env,
    domain_xml,
    wait_until,
)
from tools.lock import parse

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


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scripts/build-wheelhouse`` output, once per session (dependency wheels cached
    beside the Debian roots: a warm build asks no index)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    done = subprocess.run([str(ROOT / "scripts" / "build-wheelhouse"), str(out)],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ,
                               "GRIDTOOL_WHEEL_CACHE": str(cache_dir() / "wheelhouse")})
    assert done.returncode == 0, f"build-wheelhouse failed:\n{done.stderr}"
    assert done.stdout.strip() == str(out)
    return out


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


CLI = "from gridtool.cli.main import main; main()"


def gridtool(cfg, *args: str, timeout: float = 120, code: str = CLI,  # type: ignore[no-untyped-def]
             **env: str) -> subprocess.CompletedProcess:
    """The real CLI as a subprocess, on the test's registry prefix (``env``: more
    GRIDTOOL_* settings; ``code``: what ``python -c`` runs)."""
    return subprocess.run(
        [sys.executable, "-c", code,
         "--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
             "GRIDTOOL_LAB_DIR": "/nonexistent", "GRIDTOOL_TTL": str(cfg.ttl),
             "GRIDTOOL_RESYNC_INTERVAL": "2", **credential_env(), **env})


def ssh_args(sshd: Sshd, root: Path, *extra: str, key: Path | None = None) -> list[str]:
    return ["--ssh", sshd.target, "--key", str(key or sshd.client_key),
            "--known-hosts", str(root.parent / "known_hosts"), "--prefix-dir", str(root),
            *extra]


def one_line(done: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert text in done.stderr, done.stderr


# Building the wheelhouse (cold cache: 170 s at load 16) and a venv of 19 wheels on the
# "host" (110 s at load 13-16) are slow on 2 loaded cores; 1200 s leaves a factor 3.
@pytest.mark.timeout(1200)
def test_add_repair_and_remove(sshd, wheelhouse, cfg, store, registry, lab_hosts, root):  # type: ignore[no-untyped-def]
    """``host add --wheelhouse`` as an admin runs it, from an installed gridtool (looking
    for a source tree fails): the venv gets exactly the locked versions, offline, and the
    agent runs from it, with the host settings given to host add; then repair and remove."""
    lab = lab_hosts.add("hv1")
    add = ["host", "add", "hv1", *ssh_args(sshd, root, "--accept-new-host-key"),
           "--libvirt-uri", lab.libvirt_uri, "--wheelhouse", str(wheelhouse),
           "--timeout", "30"]
    lay = Layout(str(root))

    began = time.monotonic()
    first = gridtool(cfg, *add, "--label", "ssd", "--overflow", code=CLI_WITHOUT_SOURCE_TREE,
                     timeout=600)
    first_s = time.monotonic() - began
    assert first.returncode == 0, first.stderr
    assert "trusted a new host key" in first.stderr and "no systemd" in first.stderr
    assert "(offline, from the wheelhouse)" in first.stderr
    assert registry.get_host("hv1").libvirt_uri == lab.libvirt_uri
    # the settings given to host add reached the installed agent, no agent.conf edit
    wait_until(lambda: registry.get_host("hv1").labels == ("ssd", "overflow"), 10,
               what="hv1's labels from host add --label/--overflow")
    installed = parse(subprocess.run(
        [f"{lay.venv}/bin/python", "-m", "pip", "list", "--format=freeze",
         "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout)
    pins = parse((wheelhouse / "constraints.txt").read_text())
    assert {"grpcio", "protobuf", "etcd-sdk-python", "libvirt-python"} <= set(installed)
    assert {n: v for n, v in installed.items() if n in pins} == {
        n: pins[n] for n in installed if n in pins}
    conf = Path(lay.config).read_text()
    (conf_password,) = [v for k, _, v in (line.partition(" = ") for line in conf.splitlines())
                        if k == "password"]
    assert Path(lay.config).stat().st_mode & 0o777 == 0o600
    assert "user = host-" in conf and "password = " in conf  # its own etcd user
    assert "password" not in first.stderr + first.stdout
    assert Path(lay.unit).exists() and Path(lay.agent).exists()
    (pid,) = agent_pids(lay.config)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == lay.agent.encode()
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

    # A second run changes nothing: same agent, the wheelhouse, one known_hosts line.
    began = time.monotonic()
    again = gridtool(cfg, *add[:-2], "--timeout", "30", code=CLI_WITHOUT_SOURCE_TREE)
    again_s = time.monotonic() - began
    assert again.returncode == 0, again.stderr
    assert "(0 steps changed" in again.stderr and "trusted" not in again.stderr
    assert agent_pids(lay.config) == [pid]
    assert sorted(p.name for p in Path(lay.wheels).iterdir()) == sorted(
        p.name for p in wheelhouse.iterdir())
    assert len((root.parent / "known_hosts").read_text().splitlines()) == 1
    print(f"second (no-op) host add: {again_s:.1f} s")

    # Repair: a loosened config and a dead agent are put right, still one agent.
    Path(lay.config).chmod(0o644)
    os.kill(pid, 9)
    wait_until(lambda: not agent_pids(lay.config), 5, what="agent killed")
    repair = gridtool(cfg, *add, code=CLI_WITHOUT_SOURCE_TREE)
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
    # Its etcd user, role and password file (issued by the first add) are gone too.
    user = host_user("hv1", cfg.prefix)
    assert f"removed user {user}, role {host_role('hv1', cfg.prefix)}" in gone.stderr
    assert not password_path(credentials_dir(cfg, None), user).exists()
    with pytest.raises(AuthError):
        EtcdStore(replace(cfg, user=user, password=conf_password, password_file=None)).get(
            cfg.keys.host("hv1"))


def test_client_cert_auth_without_the_hosts_cert_is_refused(sshd, cfg, root):  # type: ignore[no-untyped-def]
    """With client-certificate auth, only the host's own certificate goes to the host (the
    admin's key would give it admin rights): none for hv2 is a one-line usage error."""
    tls = root.parent / "tls"
    tls.mkdir()
    for name in ("ca.crt", "gridtool-admin.crt", "gridtool-admin.key"):
        (tls / name).write_text("x")
    done = gridtool(cfg, "host", "add", "hv2", *ssh_args(sshd, root, "--accept-new-host-key"),
                    GRIDTOOL_CA_CERT=str(tls / "ca.crt"),
                    GRIDTOOL_CERT=str(tls / "gridtool-admin.crt"),
                    GRIDTOOL_KEY=str(tls / "gridtool-admin.key"))
    one_line(done, 2, f"registry certs --dir {tls} --hosts hv2")
    assert not root.exists() and not (root.parent / "known_hosts").exists()


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


@pytest.mark.timeout(1200)  # as test_add_repair_and_remove: a venv on 2 loaded cores
def test_add_over_tls_with_the_hosts_client_certificate(sshd, wheelhouse, lab_hosts, root):  # type: ignore[no-untyped-def]
    """A TLS etcd requiring client certificates: host add copies the CA and the host's own
    certificate (not the admin's) to /etc/gridtool/tls/, and the agent registers with them."""
    from gridtool.auth.certs import make_certs
    from gridtool.auth.shell import init_registry
    from gridtool.config import Config, render
    from gridtool.lab.etcd import EtcdCluster, TlsFiles

    base, prefix = root.parent, "/tls-add/"
    tls = base / "tls"
    admin, user = admin_user(prefix), host_user("hv3", prefix)
    make_certs(tls, [admin, user])
    cluster = EtcdCluster.create(base, 1, tls=TlsFiles(str(tls), client_cert_auth=True))
    cluster.start()
    try:
        cfg = Config(endpoints=tuple(cluster.endpoints), prefix=prefix, ttl=3, timeout=3.0,
                     ca_cert=str(tls / "ca.crt"), cert=str(tls / f"{admin}.crt"),
                     key=str(tls / f"{admin}.key"))
        init_registry(cfg, base / "credentials", [], [])
        cfg = replace(cfg, user=admin, password_file=str(base / "credentials" /
                                                         f"{admin}.password"))
        (base / "admin.conf").write_text(render(cfg))
        lab = lab_hosts.add("hv3")
        done = gridtool(cfg, "host", "add", "hv3", *ssh_args(sshd, root, "--accept-new-host-key"),
                        "--libvirt-uri", lab.libvirt_uri, "--wheelhouse", str(wheelhouse),
                        "--timeout", "30", timeout=600,
                        GRIDTOOL_CONFIG=str(base / "admin.conf"))
        assert done.returncode == 0, done.stderr
        lay = Layout(str(root))
        installed = Path(lay.tls_dir)
        assert sorted(p.name for p in installed.iterdir()) == ["ca.crt", f"{user}.crt",
                                                                 f"{user}.key"]
        assert (installed / f"{user}.key").stat().st_mode & 0o777 == 0o600
        assert (installed / f"{user}.key").read_bytes() == (tls / f"{user}.key").read_bytes()
        conf = Path(lay.config).read_text()
        assert f"ca_cert = {installed}/ca.crt" in conf and f"key = {installed}/{user}.key" in conf
        assert f"user = {user}" in conf
        print(f"host add over TLS:\n{done.stderr}")
        store = EtcdStore(replace(cfg, password=read_password(Path(str(cfg.password_file)))))
        try:
            assert store.get(cfg.keys.host("hv3")) is not None  # registered over TLS
        finally:
            store.close()
        for pid in agent_pids(lay.config):  # before its etcd goes
            stop_pid(pid, lay.config)
    finally:
        cluster.stop()
