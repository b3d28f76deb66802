"""Registry reads over etcd's JSON gateway (HTTP/1.1), for the CLI's read commands.

``host list``, ``guest list --host`` and ``guest show`` read a few keys; over gRPC each
paid about 0.15-0.2 s of CPU to import gRPC, pyetcd and its protobuf modules before its
first read. ``ReadStore`` sends ``get``, ``list`` and ``list_range`` as ``POST
/v3/kv/range`` to etcd's gateway on one persistent connection (stdlib ``http.client``;
TLS with the same CA, client certificate and host name check, the same user's token
as the gRPC client), and everything else to the gRPC store (``EtcdStore``),
opened on first use. The gateway is only a fast path: any read it does not answer
cleanly (an endpoint down or slow to connect, a TLS or auth refusal, a gateway turned
off, an answer that does not parse) is sent again through the gRPC store, as are all
reads after it, so that every failure is reported as the gRPC client reports it (same
messages, same exit codes, same fail-over and time limit). One refusal is by design:
etcd started with ``--client-cert-auth`` answers a gateway request over a connection
with a client certificate "400: CommonName of client sending a request against gateway
will be ignored" (it would not take the CN as the user), so there the CLI reads over
gRPC after one HTTPS round trip. The whole-fleet ``guest
list`` stays on gRPC: etcd spends about ten times more CPU to serve 100,000 records as
JSON (measured: docs/architecture.md, "Reads at fleet scale").
"""

from __future__ import annotations

import base64
import builtins
import http.client
from collections.abc import Callable
from typing import Any

from gridtool.config import Config
from gridtool.registry.store import (
    Item,
    Store,
    StoreProxy,
    prefix_end,
)

#: Seconds to connect to the gateway, and at most to wait for an answer, before the
#: gRPC client is asked instead (which then has the whole --timeout: a hung etcd is
#: given up on within the timeout plus this).
CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 1.0
class _NoAnswer(Exception):
    """The gateway did not answer this read cleanly: ask the gRPC store."""


def range_request(start: str, end: str | None, revision: int = 0) -> dict[str, Any]:
    """The JSON body of a RangeRequest (keys base64, as the gateway wants bytes)."""
    body: dict[str, Any] = {"key": _b64(start), "sort_order": "ASCEND", "sort_target": "KEY"}
    if end is not None:
        body["range_end"] = _b64(end)
    if revision:
        body["revision"] = str(revision)
    return body


def range_items(reply: dict[str, Any]) -> tuple[list[Item], int]:
    """The items and revision of a RangeResponse as JSON (int64 as strings, fields at
    their zero value left out); KeyError, ValueError or TypeError when it is not one."""
    decode = base64.b64decode
    items = [Item(decode(kv["key"]).decode(), decode(kv.get("value", "")),
                  int(kv.get("mod_revision", 0)), int(kv.get("create_revision", 0)),
                  int(kv.get("lease", 0))) for kv in reply.get("kvs", ())]
    return items, int(reply["header"]["revision"])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Gateway:
    """One endpoint's gateway on one persistent connection, with the user's token."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        host, _, port = cfg.endpoints[0].rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._timeout = min(ANSWER_TIMEOUT, cfg.timeout / len(cfg.endpoints))
        self._conn: http.client.HTTPConnection | None = None
        self._token: str | None = None

    def range(self, body: dict[str, Any]) -> tuple[list[Item], int]:
        try:
            return range_items(self._post("/v3/kv/range", body))
        except (KeyError, ValueError, TypeError) as exc:
            raise _NoAnswer(f"not a range answer: {exc}") from None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import orjson

        conn = self._connection()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        try:
            conn.request("POST", path, orjson.dumps(body), headers)
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None
        if reply.status != 200:
            raise _NoAnswer(f"HTTP {reply.status}: {data[:200].decode(errors='replace')}")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _NoAnswer("not JSON") from None
        if not isinstance(answer, dict):
            raise _NoAnswer("not a JSON object")
        return answer

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None:
            return self._conn
        cfg = self._cfg
        conn: http.client.HTTPConnection
        if cfg.ca_cert:
            import ssl

            try:
                context = ssl.create_default_context(cafile=cfg.ca_cert)
                if cfg.cert and cfg.key:
                    context.load_cert_chain(cfg.cert, cfg.key)
            except (OSError, ValueError) as exc:
                raise _NoAnswer(f"TLS settings: {exc}") from None
            conn = http.client.HTTPSConnection(self._host, self._port,
                                               timeout=CONNECT_TIMEOUT, context=context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except OSError as exc:
            raise _NoAnswer(f"connect: {exc}") from None
        assert conn.sock is not None
        conn.sock.settimeout(self._timeout)  # connected: a read may take its share
        self._conn = conn
        if cfg.user:
            token = self._post("/v3/auth/authenticate",
                               {"name": cfg.user, "password": cfg.password or ""}).get("token")
            if not isinstance(token, str):
                raise _NoAnswer("no token")
            self._token = token
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ReadStore(StoreProxy):
    """A ``Store`` whose reads go to etcd's JSON gateway while it answers them, and
    everything else (and every read after one it did not answer) to ``EtcdStore``."""

    def __init__(self, cfg: Config, grpc: Callable[[], Store] | None = None) -> None:
        self._gateway = Gateway(cfg) if cfg.endpoints else None
        #: Why the gateway was given up ('' while it answers): for tests and debugging.
        self.gave_up = ""
        self._open_grpc = grpc or (lambda: _etcd_store(cfg))
        self._grpc: Store | None = None

    @property
    def inner(self) -> Store:
        """The gRPC store, opened on first use."""
        if self._grpc is None:
            self._grpc = self._open_grpc()
        return self._grpc

    def _read(self, body: dict[str, Any]) -> tuple[list[Item], int] | None:
        """The gateway's answer, or None once it has failed (the caller asks gRPC)."""
        if self._gateway is None:
            return None
        try:
            return self._gateway.range(body)
        except _NoAnswer as exc:
            self.gave_up = str(exc)
            self._gateway.close()
            self._gateway = None
            return None

    # -- reads: the gateway first ------------------------------------------------

    def get(self, key: str) -> Item | None:
        answer = self._read(range_request(key, None))
        if answer is None:
            return self.inner.get(key)
        return answer[0][0] if answer[0] else None

    def list(self, prefix: str) -> tuple[builtins.list[Item], int]:
        answer = self._read(range_request(prefix, prefix_end(prefix)))
        return self.inner.list(prefix) if answer is None else answer

    def list_range(self, start: str, end: str,
                   revision: int = 0) -> tuple[builtins.list[Item], int]:
        answer = self._read(range_request(start, end, revision))
        if answer is None:
            return self.inner.list_range(start, end, revision)
        return answer[0], revision or answer[1]

    def unanswered_for(self) -> float:
        return self.inner.unanswered_for() if self._grpc is not None else 0.0

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()
        if self._grpc is not None:
            self._grpc.close()


def _etcd_store(cfg: Config) -> Store:
    from gridtool.registry.etcdstore import EtcdStore

    return EtcdStore(cfg)

