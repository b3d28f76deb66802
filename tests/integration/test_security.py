"""etcd authentication and TLS against a real etcd: per-host least privilege, one-line
refusals, credential files 0600, no password in any output, TLS with the generated CA."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtool.auth import shell as security
from gridtool.auth.credfiles import password_path, read_password, write_private
from gridtool.auth.etcdauth import EtcdAuth
from gridtool.auth.rules import (
    Access,
    Permission,
    Step,
    admin_user,
    host_role,
    host_user,
    manager_role,
)
from gridtool.cli.main import cli
from gridtool.config import Config
from gridtool.errors import AuthError
from gridtool.lab.etcd import EtcdCluster, TlsFiles
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.store import Put
from tests.harness.testbed import domain_xml, run_cli, wait_until
from tests.harness.tls import TlsRegistry, tls_registry


@pytest.fixture
def creds(cfg: Config, tmp_path: Path) -> Path:
    """A credentials folder of this test's own, with the session's root password."""
    directory = tmp_path / "credentials"
    root = read_password(security.credentials_dir(cfg, None) / "root.password")
    assert root
    write_private(password_path(directory, "root"), root)
    return directory


def as_user(cfg: Config, creds: Path, user: str) -> EtcdStore:
    return EtcdStore(replace(cfg, user=user, password=read_password(password_path(creds, user)),
                             password_file=None))


def gridtool(cfg: Config, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()", "--endpoints",
         ",".join(cfg.endpoints), "--prefix", cfg.prefix, "--timeout", "2", *args],
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent", **env})


def one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr


def test_host_writes_only_its_own_keys(cfg: Config, store: EtcdStore, creds: Path) -> None:
    keys = cfg.keys
    results, enabled_now = security.init_registry(cfg, creds, ["hv1", "hv2"], ["hv2"])
    assert not enabled_now  # the session etcd has auth on already
    assert {r.user for r in results} >= {host_user("hv1", cfg.prefix), admin_user(cfg.prefix)}
    store.put(keys.manager_leader, b'{"v":1}')
    store.put(keys.host("hv2"), b'{"v":1}')
    hv1 = as_user(cfg, creds, host_user("hv1", cfg.prefix))
    try:
        hv1.put(keys.host("hv1"), b'{"v":1}')
        hv1.txn([], [Put(keys.guest("hv1", "u1"), b"{}"), Put(keys.fence("vol1"), b"{}")])
        hv1.put(keys.intent("hv1", "i1"), b"{}")
        hv1.put(keys.heartbeat("hv1"), b"{}")
        assert hv1.get(keys.host("hv2")) is not None  # reads what an agent reads
        for key in (keys.host("hv2"), keys.guest("hv2", "u1"), keys.violation("hv2", "u1"),
                    keys.intent("hv2", "i1"), keys.guest_settings("u1"),
                    keys.heartbeat("hv2")):
            with pytest.raises(AuthError) as exc:
                hv1.put(key, b"{}")
            message = str(exc.value)
            assert "\n" not in message and "permission denied" in message
            assert host_user("hv1", cfg.prefix) in message
        with pytest.raises(AuthError):
            hv1.txn([], [Put(keys.guest("hv1", "u2"), b"{}"), Put(keys.host("hv2"), b"x")])
        assert hv1.get(keys.guest("hv1", "u2")) is None  # nothing half-written
        with pytest.raises(AuthError):
            hv1.delete(keys.manager_leader)
        assert store.get(keys.manager_leader) is not None
    finally:
        hv1.close()
    hv2 = as_user(cfg, creds, host_user("hv2", cfg.prefix))  # a manager candidate
    try:
        hv2.put(keys.manager_status, b"{}")
        # it may write host records: revoking a fenced suspect's lease needs write
        # access to every key under it (etcd checks each); never another host's guests
        lease = hv2.grant_lease(10)
        hv2.put(keys.host("hv1"), b"{}", lease)
        hv2.revoke_lease(lease)
        with pytest.raises(AuthError):
            hv2.put(keys.guest("hv1", "u1"), b"{}")
    finally:
        hv2.close()


def test_credential_files_are_0600_and_a_second_init_repairs(cfg: Config, creds: Path) -> None:
    security.init_registry(cfg, creds, ["hv1"], [])
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    for path in creds.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    user, role = host_user("hv1", cfg.prefix), host_role("hv1", cfg.prefix)
    extra = Permission.on_prefix(cfg.keys.hosts, Access.READWRITE)
    root = EtcdStore(replace(cfg, user="root", password=read_password(creds / "root.password")))
    try:
        EtcdAuth(root).apply(Step("grant_permission", role, extra))
        EtcdAuth(root).change_password(user, "drifted")
        results, _ = security.init_registry(cfg, creds)
        assert {r.user: r.action for r in results}[user] == "repaired"
        assert extra not in EtcdAuth(root).role_permissions(role)
    finally:
        root.close()
    hv1 = as_user(cfg, creds, user)
    try:
        hv1.put(cfg.keys.host("hv1"), b"{}")
    finally:
        hv1.close()


def test_an_add_retried_after_its_first_try_was_applied_is_done(cfg: Config,
                                                               creds: Path) -> None:
    """etcd hashes a new user's password with bcrypt: under load a UserAdd can time out
    yet be applied, and the retry is answered "already exists" (CI's TLS fixture failed
    so). Re-applying an add step must leave the user and role with the step's password,
    not fail (nor retry until the timeout)."""
    root = EtcdStore(replace(cfg, user="root", password=read_password(creds / "root.password")))
    name = f"retried-{cfg.prefix.strip('/')}"
    auth = EtcdAuth(root)
    try:
        for _ in range(2):  # the second pass is the retry that meets the first
            auth.apply(Step("add_role", name))
            auth.apply(Step("add_user", name), "second-try")
        assert name in auth.users() and name in auth.roles()
        assert auth.check_password(name, "second-try")
    finally:
        with contextlib.suppress(Exception):
            auth.delete_user(name)
        with contextlib.suppress(Exception):
            auth.delete_role(name)
        root.close()


def test_host_credentials_reissues_and_json_has_no_password(cfg: Config, creds: Path) -> None:
    runner = CliRunner()
    base = ["--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix]
    init = runner.invoke(cli, [*base, "registry", "init", "--hosts", "hv1", "--credentials-dir",
                               str(creds), "--json"])
    assert init.exit_code == 0, init.output
    user = host_user("hv1", cfg.prefix)
    old = read_password(password_path(creds, user))
    first = runner.invoke(cli, [*base, "host", "credentials", "hv1", "--credentials-dir",
                                str(creds), "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.output)
    new = read_password(Path(doc["password_file"]))
    assert doc["user"] == user and new and new != old
    assert stat.S_IMODE(Path(doc["password_file"]).stat().st_mode) == 0o600
    secrets = [read_password(p) for p in creds.iterdir()]
    for output in (init.output, first.output):
        assert not any(s and s in output for s in secrets)
    with pytest.raises(AuthError):
        EtcdStore(replace(cfg, user=user, password=old)).get(cfg.keys.host("hv1"))
    as_user(cfg, creds, user).put(cfg.keys.host("hv1"), b"{}")


def test_remove_host_credentials_deletes_user_role_and_file(cfg: Config, creds: Path,
                                                            tmp_path: Path) -> None:
    user, role = host_user("hv1", cfg.prefix), host_role("hv1", cfg.prefix)
    issued = security.issue_host_credentials(cfg, creds, "hv1", manager=True)
    password = read_password(Path(issued.password_file))
    # Without root's password nothing is touched.
    assert security.remove_host_credentials(cfg, tmp_path / "empty", "hv1") is None
    removed = security.remove_host_credentials(cfg, creds, "hv1")
    assert removed == [f"user {user}", f"role {role}", issued.password_file]
    assert not Path(issued.password_file).exists()
    root = EtcdStore(replace(cfg, user="root", password=read_password(creds / "root.password")))
    try:
        auth = EtcdAuth(root)
        assert user not in auth.users() and role not in auth.roles()
        assert manager_role(cfg.prefix) in auth.roles()  # shared by the other candidates
        assert not auth.check_password(user, str(password))
    finally:
        root.close()
    assert security.remove_host_credentials(cfg, creds, "hv1") == []  # a second run: no-op


def test_host_remove_without_root_password_leaves_the_user(cfg: Config, creds: Path,
                                                            tmp_path: Path) -> None:
    """The CLI's credentials folder has no root.password: one warning line, exit 0."""
    security.issue_host_credentials(cfg, creds, "hv1")
    admin = tmp_path / "admin-only" / "admin.password"
    write_private(admin, str(cfg.password))
    done = gridtool(cfg, "host", "remove", "hv1", GRIDTOOL_USER=str(cfg.user),
                    GRIDTOOL_PASSWORD_FILE=str(admin))
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if "warning" in line]
    assert f"no root password in {admin.parent}" in warning
    assert host_user("hv1", cfg.prefix) in warning
    hv1 = as_user(cfg, creds, host_user("hv1", cfg.prefix))
    try:
        hv1.put(cfg.keys.host("hv1"), b"{}")  # still works
    finally:
        hv1.close()


def test_wrong_or_missing_password_is_one_line_exit_5(cfg: Config) -> None:
    admin = str(cfg.user)
    one_line_error(gridtool(cfg, "host", "list", GRIDTOOL_USER=admin, GRIDTOOL_PASSWORD="nope"),
                   5, "authentication failed", admin)
    one_line_error(gridtool(cfg, "host", "list"), 5, "user name is empty")
    one_line_error(gridtool(cfg, "host", "list", "--json", GRIDTOOL_USER=admin,
                            GRIDTOOL_PASSWORD_FILE="/nonexistent/pw"), 2, "password_file")


def test_lab_agents_run_as_their_host_user(lab_hosts, registry, cfg: Config) -> None:  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1")
    wait_until(lambda: registry.store.get(cfg.keys.host("hv1")), what="hv1 registered")
    conf = Path(lab_hosts.hosts["hv1"].agent_conf).read_text()
    assert f"user = {host_user('hv1', cfg.prefix)}" in conf
    assert "password =" not in conf and str(cfg.password) not in conf
    password_file = Path(lab_hosts.credentials[("hv1", False)])
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    # Rotating hv1's password locks its running agent out: it did run as host-hv1.
    security.issue_host_credentials(cfg, security.credentials_dir(cfg, None), "hv1")
    wait_until(lambda: f"(user {host_user('hv1', cfg.prefix)}): authentication failed"
               in lab_hosts.agent_log("hv1"), what="the agent refused with its old password")


def test_tls_with_the_generated_ca(tmp_path: Path) -> None:
    """A TLS etcd (client and peer URLs, client certificates required): the CA's clients
    work, a plaintext client fails in one line, and a host certificate (CN = its etcd
    user) gets that host's permissions once auth is on."""
    tls_dir = tmp_path / "tls"
    prefix = "/tls-test/"
    runner = CliRunner()
    made = runner.invoke(cli, ["--prefix", prefix, "registry", "certs", "--dir", str(tls_dir),
                               "--hosts", "hv1", "--ip", "127.0.0.1", "--json"])
    assert made.exit_code == 0, made.output
    for key in tls_dir.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cluster = EtcdCluster.create(tmp_path, 1, tls=TlsFiles(str(tls_dir), client_cert_auth=True))
    cluster.start()
    try:
        admin = admin_user(prefix)
        cfg = Config(endpoints=tuple(cluster.endpoints), prefix=prefix, timeout=3.0,
                     ca_cert=str(tls_dir / "ca.crt"), cert=str(tls_dir / f"{admin}.crt"),
                     key=str(tls_dir / f"{admin}.key"))
        store = EtcdStore(cfg)
        store.put(cfg.keys.host("x"), b"{}")
        assert store.get(cfg.keys.host("x")) is not None
        store.close()
        one_line_error(gridtool(cfg, "host", "list"), 4, "no etcd endpoint answered")
        security.init_registry(cfg, tmp_path / "credentials", ["hv1", "hv2"], [])
        hv1 = EtcdStore(replace(cfg, cert=str(tls_dir / f"{host_user('hv1', prefix)}.crt"),
                                key=str(tls_dir / f"{host_user('hv1', prefix)}.key")))
        try:
            hv1.put(cfg.keys.host("hv1"), b"{}")  # no password: the certificate's CN
            with pytest.raises(AuthError):
                hv1.put(cfg.keys.host("hv2"), b"{}")
        finally:
            hv1.close()
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- TLS, with auth


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    """Three etcd members over TLS, client and peer URLs, client certificates required on
    both; authentication on (passwords). The server certificate names 127.0.0.1 only:
    reached as 'localhost', a member shows a certificate not made out to that name."""
    with tls_registry(tmp_path_factory.mktemp("tls-etcd"), "/tls-pw/", members=3,
                      server_dns=()) as registry:
        yield registry


def tls_cli(registry: TlsRegistry, *args: str, endpoint: str | None = None,
            **env: str) -> subprocess.CompletedProcess:
    """``gridtool`` as the admin over TLS (``env`` overrides, e.g. the password)."""
    cfg = replace(registry.cfg, endpoints=(endpoint,)) if endpoint else registry.cfg
    return gridtool(cfg, *args, **registry.env(**env))


def test_tls_with_a_ca_and_passwords(tls_etcd: TlsRegistry, lab_hosts) -> None:  # type: ignore[no-untyped-def]
    """Over TLS with client certificates required (CN: no etcd user, it only opens the
    connection) and auth on: the CLI works as the admin with its password, an agent as
    its host user with its own; a wrong password is the one-line authentication error,
    exit 5, and so is no password at all (the certificate names no user)."""
    cfg = tls_etcd.cfg
    lab_hosts.cfg = cfg
    lab_hosts.add("hv1")
    lab_hosts.conn("hv1").defineXML(domain_xml("web"))
    lab_hosts.start_agent("hv1")
    conf = Path(lab_hosts.hosts["hv1"].agent_conf).read_text()
    assert f"user = {host_user('hv1', cfg.prefix)}" in conf and f"ca_cert = {cfg.ca_cert}" in conf

    def listed() -> dict | None:
        done = tls_cli(tls_etcd, "guest", "list", "--json")
        assert done.returncode == 0, done.stderr
        guests = json.loads(done.stdout)["guests"]
        return guests[0] if guests else None

    web = wait_until(listed, timeout=30, what="hv1's agent to report web over TLS")
    assert (web["name"], web["host"], web["state"]) == ("web", "hv1", "shutoff")  # type: ignore[index]
    hosts = json.loads(tls_cli(tls_etcd, "host", "list", "--json").stdout)["hosts"]
    assert [h["name"] for h in hosts] == ["hv1"]

    one_line_error(tls_cli(tls_etcd, "host", "list", GRIDTOOL_PASSWORD="wrong"), 5,
                   "authentication failed", str(cfg.user))
    one_line_error(tls_cli(tls_etcd, "host", "list", GRIDTOOL_USER="", GRIDTOOL_PASSWORD_FILE=""),
                   5, "etcd refused the request")


def test_tls_between_members(tls_etcd: TlsRegistry) -> None:
    """The members talk over TLS with client certificates (https peer URLs,
    --peer-client-cert-auth): a write through one member is read through each of the
    others, and a member's peer port refuses plaintext and a TLS client without a
    certificate, while one with a certificate of the CA gets the member list."""
    cfg, members = tls_etcd.cfg, tls_etcd.cluster.members
    stores = [EtcdStore(replace(cfg, endpoints=(m.endpoint,))) for m in members]
    key = cfg.prefix + "peer-tls"
    try:
        revision = stores[0].put(key, b"across")
        for store in stores[1:]:  # a linearizable read: the member asks the leader
            item = store.get(key)
            assert item is not None and (item.value, item.mod_revision) == (b"across", revision)
    finally:
        stores[0].delete(key)
        for store in stores:
            store.close()
    port = members[1].peer_port
    plain = http_get(port, None)
    assert not plain.startswith("HTTP/1.0 200") and "peerURLs" not in plain, plain
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        http_get(port, ssl.create_default_context(cafile=tls_etcd.tls_file("ca.crt")))
    member = ssl.create_default_context(cafile=tls_etcd.tls_file("ca.crt"))
    member.load_cert_chain(tls_etcd.tls_file("server.crt"), tls_etcd.tls_file("server.key"))
    peers = json.loads(http_get(port, member).split("\r\n\r\n", 1)[1])
    assert sorted(url for m in peers for url in m["peerURLs"]) == sorted(
        f"https://127.0.0.1:{m.peer_port}" for m in members)


def http_get(port: int, context: ssl.SSLContext | None, path: str = "/members") -> str:
    """One HTTP/1.0 GET to 127.0.0.1:``port`` (over TLS with ``context``): the raw answer,
    read until its Content-Length is in (or the connection ends)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "\r\n".encode())
        answer = b""
        # not to EOF alone: a member that kept the connection open after its whole answer
        # left that read waiting out the timeout in CI (3 times, never alone)
        while not _complete(answer) and (data := sock.recv(65536)):
            answer += data
    return answer.decode(errors="replace")


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds an HTTP head and the whole body its Content-Length names."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(sep) and length is not None and len(body) >= int(length.group(1))


def test_a_certificate_not_made_out_to_the_endpoint_is_refused_in_one_line(
        tls_etcd: TlsRegistry) -> None:
    """The members' certificate names 127.0.0.1 only. Reached as localhost, the client must
    refuse the member and say why in one line (exit 4: no usable endpoint), not report a
    mere connection failure; as 127.0.0.1 the same member works."""
    port = tls_etcd.cluster.members[0].client_port
    assert tls_cli(tls_etcd, "host", "list", endpoint=f"127.0.0.1:{port}").returncode == 0
    refused = tls_cli(tls_etcd, "host", "list", endpoint=f"localhost:{port}")
    one_line_error(refused, 4, f"localhost:{port}", "certificate", "localhost")


def test_reads_with_client_cert_auth_go_over_grpc(tls_etcd: TlsRegistry) -> None:
    """With --client-cert-auth etcd refuses gateway requests that carry a client
    certificate (HTTP 400, "CommonName ... will be ignored"): the CLI's reads go over gRPC
    (tests/integration/test_httpreads.py: the gateway over TLS without --client-cert-auth)."""
    from gridtool.registry.httpreads import ReadStore

    cfg = tls_etcd.cfg
    store = EtcdStore(cfg)
    reader = ReadStore(cfg, lambda: store)
    try:
        store.put(cfg.prefix + "cert", b"over grpc")
        assert reader.get(cfg.prefix + "cert") == store.get(cfg.prefix + "cert")
        assert reader.gave_up.startswith("HTTP 400: CommonName of client"), reader.gave_up
    finally:
        reader.close()


def test_monitor_user_runs_check_and_metrics_and_cannot_write(cfg: Config, store: EtcdStore,
                                                              creds: Path) -> None:
    import urllib.request

    from gridtool.auth.rules import monitor_user
    from gridtool.health.metrics import serve
    from gridtool.lab.procs import free_port

    security.init_registry(cfg, creds, ["hv1"], [])  # init makes the monitor
    monitor = monitor_user(cfg.prefix)
    assert read_password(password_path(creds, monitor))
    added = gridtool(cfg, "registry", "user", "add", "monitor", "--credentials-dir",
                     str(creds), "--json")
    assert added.returncode == 0, added.stderr
    doc = json.loads(added.stdout)
    conf = Path(doc["config"])
    assert doc["user"]["user"] == monitor and doc["user"]["action"] == "unchanged"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and "password =" not in conf.read_text()
    store.put(cfg.keys.violation("hv1", "u1"), b"{}")
    checked = subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()", "--config",
         str(conf), "check", "--json"], capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent"})
    report = json.loads(checked.stdout)
    found = {f["code"] for f in report["findings"]}
    assert not found & {"ETCD_UNREACHABLE", "CHECK_ERROR", "ETCD_ENDPOINT_DOWN"}, report
    assert "REGISTRY_CORRUPT" in found  # it read the (bad) violation record
    reader = as_user(cfg, creds, monitor)
    try:
        assert reader.get(cfg.keys.violation("hv1", "u1")) is not None
        for key in (cfg.keys.host("hv1"), cfg.keys.pool("web"), cfg.keys.fence("vol1"),
                    cfg.keys.violation("hv1", "u1")):
            with pytest.raises(AuthError, match="permission denied"):
                reader.put(key, b"{}")
        with pytest.raises(AuthError, match="permission denied"):
            reader.delete(cfg.keys.violation("hv1", "u1"))
        port = free_port()
        server, _thread, watches = serve(reader, cfg.keys, port)
        try:
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
            text = page.read().decode()
        finally:
            watches.cancel()
            server.shutdown()
        assert "gridtool_registry_up 1.0" in text
    finally:
        reader.close()


def test_pool_reporter_writes_only_its_own_pool(cfg: Config, store: EtcdStore, creds: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from gridtool.auth.rules import reporter_user
    from gridtool.pools import shell as pools
    from gridtool.pools.rules import PoolSpec

    def in_process(*args: str) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, *run_cli(cfg, capsys, *args))

    for name in ("web", "api"):
        pools.create(store, cfg.keys, PoolSpec(name, "tmpl", 0, 5, 1))
    one_line_error(in_process("registry", "user", "add", "reporter", "--credentials-dir",
                              str(creds)), 2, "--pool")
    added = in_process("registry", "user", "add", "reporter", "--pool", "web",
                       "--credentials-dir", str(creds), "--json")
    assert added.returncode == 0, added.stderr
    conf = json.loads(added.stdout)["config"]

    def as_reporter(*args: str) -> subprocess.CompletedProcess:
        return in_process("--config", conf, *args)

    reported = as_reporter("pool", "report", "web", "--arrivals", "7", "--interval", "10")
    assert reported.returncode == 0, reported.stderr
    assert [s.arrivals for s in pools.samples(store, cfg.keys, "web")] == [7]
    scaled = as_reporter("pool", "scale", "web", "3")
    assert scaled.returncode == 0, scaled.stderr
    assert pools.get(store, cfg.keys, "web").desired == 3
    # an outside engine's read-back: its pool's numbers (spec, status, reports), no other's
    numbers = as_reporter("pool", "numbers", "web", "--json")
    assert numbers.returncode == 0, numbers.stderr
    assert json.loads(numbers.stdout)["numbers"]["arrival_rate"] == pytest.approx(0.7, rel=0.1)
    one_line_error(as_reporter("pool", "numbers", "api"), 5, "permission denied")
    one_line_error(as_reporter("pool", "report", "api", "--arrivals", "1"), 5,
                   "permission denied")
    one_line_error(as_reporter("pool", "scale", "api", "2"), 5, "permission denied")
    assert pools.get(store, cfg.keys, "api").desired == 1
    assert pools.samples(store, cfg.keys, "api") == []
    reporter = as_user(cfg, creds, reporter_user("web", cfg.prefix))
    try:
        for key in (cfg.keys.host("hv1"), cfg.keys.guest("hv1", "u1"), cfg.keys.fence("v1"),
                    cfg.keys.intent("hv1", "i1"), cfg.keys.guest_settings("u1"),
                    cfg.keys.pool_status("web"), cfg.keys.pool_member("web", "u1"),
                    cfg.keys.manager_leader):
            with pytest.raises(AuthError, match="permission denied"):
                reporter.put(key, b"{}")
        with pytest.raises(AuthError, match="permission denied"):
            reporter.get(cfg.keys.host("hv1"))
    finally:
        reporter.close()
    results, _ = security.init_registry(cfg, creds, ["hv1"], [])  # init keeps the reporter
    assert reporter_user("web", cfg.prefix) in {r.user for r in results}
