"""``ReadStore``: reads over etcd's JSON gateway, and the gRPC client for every read the
gateway does not answer cleanly (real etcd; real HTTP servers in place of a gateway that
is turned off, hung, or answers nonsense)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gridtool.config import Config
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.httpreads import ANSWER_TIMEOUT, ReadStore
from gridtool.registry.store import Store
from tests.harness.proxy import SilentServer
from tests.harness.tls import tls_registry


class _Answers(http.server.BaseHTTPRequestHandler):
    status, body = 404, b"404 page not found\n"  # no gateway at /v3/ (etcd 3.3: /v3beta/)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


class _Nonsense(_Answers):
    status, body = 200, b'{"header": {}, "kvs": "not a list"}'


def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(params=["turned off", "nonsense"])
def broken_gateway(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serving(_Answers if request.param == "turned off" else _Nonsense)


def _written(store: Store, cfg: Config) -> list[str]:
    keys = [cfg.prefix + name for name in ("a/1", "a/2", "a/3", "b")]
    for i, key in enumerate(keys):
        store.put(key, f"value {i}".encode() if i != 1 else b"")  # an empty value too
    return keys


def _reads(store: Store, cfg: Config, keys: list[str]) -> tuple:
    first, revision = store.list_range(keys[0], keys[2])
    return (store.get(keys[0]), store.get(keys[1]), store.get(cfg.prefix + "none"),
            store.list(cfg.prefix + "a/")[0], first,
            store.list_range(keys[0], keys[3], revision)[0])


def test_the_gateway_answers_what_grpc_answers(cfg: Config, store: Store) -> None:
    """Auth on (the admin's password): the gateway answers every read, as gRPC does,
    without opening the gRPC client."""
    keys = _written(store, cfg)
    opened: list[Store] = []
    reader = ReadStore(cfg, lambda: opened.append(store) or store)  # type: ignore[func-returns-value]
    try:
        assert _reads(reader, cfg, keys) == _reads(store, cfg, keys)
        assert reader.gave_up == "" and not opened
    finally:
        reader.close()


def test_a_gateway_that_is_off_or_talks_nonsense_leaves_the_reads_to_grpc(
        cfg: Config, store: Store, broken_gateway: str) -> None:
    keys = _written(store, cfg)
    reader = ReadStore(replace(cfg, endpoints=(broken_gateway,)), lambda: store)
    assert _reads(reader, cfg, keys) == _reads(store, cfg, keys)
    # the admin's user is set: the gateway's first request is the authentication
    assert reader.gave_up in ("HTTP 404: 404 page not found\n", "no token"), reader.gave_up


def test_a_hung_gateway_costs_at_most_its_answer_timeout(cfg: Config, store: Store) -> None:
    keys = _written(store, cfg)
    with SilentServer() as hung:
        reader = ReadStore(replace(cfg, endpoints=(hung.endpoint,)), lambda: store)
        start = time.monotonic()
        assert reader.get(keys[0]) == store.get(keys[0])
        took = time.monotonic() - start
        assert hung.accepted == 1 and "timed out" in reader.gave_up, reader.gave_up
        assert took < ANSWER_TIMEOUT + 1.5, took  # then gRPC at once (loaded machine: +1.5)
        assert reader.get(keys[1]) == store.get(keys[1])  # the gateway is not asked again
        assert hung.accepted == 1


def test_a_range_answer_that_is_not_one_leaves_the_read_to_grpc(cfg: Config,
                                                                 store: Store) -> None:
    """Without a user (no authentication first), a range answer that does not parse."""
    keys = _written(store, cfg)
    for body in (b'{"header": {}, "kvs": "x"}', b'{"kvs": []}', b"[1]", b"not json"):
        handler = type("Handler", (_Answers,), {"status": 200, "body": body})
        for endpoint in _serving(handler):
            reader = ReadStore(replace(cfg, endpoints=(endpoint,), user=None), lambda: store)
            assert reader.get(keys[0]) == store.get(keys[0])
            assert reader.gave_up, body


def test_the_gateway_over_tls_with_auth(tmp_path: Path) -> None:
    """TLS (the CA, the client certificate, the host name checked; etcd without
    --client-cert-auth) and auth on: the gateway
    answers with the admin's token; a wrong password, or a member reached by a name its
    certificate does not bear, is refused by the gateway and then by gRPC, which reports
    it as it always has."""
    with tls_registry(tmp_path, "/gw-tls/", server_dns=(), client_cert_auth=False) as tls:
        cfg, key = tls.cfg, "/gw-tls/key"
        store = EtcdStore(cfg)
        readers = []
        try:
            store.put(key, b"over https")
            reader = ReadStore(cfg, lambda: store)
            readers.append(reader)
            assert reader.get(key) == store.get(key) and reader.gave_up == ""
            wrong = ReadStore(replace(cfg, password="wrong"))
            readers.append(wrong)
            with pytest.raises(AuthError, match="authentication failed"):
                wrong.get(key)
            assert "authentication failed" in wrong.gave_up, wrong.gave_up
            port = tls.cluster.members[0].client_port
            misnamed = ReadStore(replace(cfg, endpoints=(f"localhost:{port}",)))
            readers.append(misnamed)
            with pytest.raises(RegistryUnavailable, match="not made out to localhost"):
                misnamed.get(key)
            assert "CERTIFICATE_VERIFY_FAILED" in misnamed.gave_up, misnamed.gave_up
        finally:
            for r in readers:
                r.close()
            store.close()


@pytest.mark.parametrize("command", [["host", "list"], ["guest", "list", "--host", "hv1"],
                                     ["guest", "show", "nosuch"]], ids=" ".join)
def test_read_commands_import_no_grpc(cfg: Config, store: Store, tmp_path: Path,
                                      command: list[str]) -> None:
    """The read commands answer from the gateway (auth on): gRPC is never imported."""
    imported = tmp_path / "imported"
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: open({str(imported)!r}, 'w').write("
            "' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'pyetcd', 'google')))))\n"
            "from gridtool.cli.main import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code, "--endpoints", ",".join(cfg.endpoints),
                           "--prefix", cfg.prefix, *command], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == (3 if command[1] == "show" else 0), done.stderr
    assert imported.read_text() == ""
