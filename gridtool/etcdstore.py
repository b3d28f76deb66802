"""The etcd adapter: ``Store`` over the etcd3 client, with failover between endpoints.

etcd3 talks to one endpoint per client; this adapter keeps one client per endpoint,
sends each call to the endpoint that answered last, and moves on to the next one
when it does not answer. Watches re-subscribe on another endpoint from the last
revision they delivered, so no event is lost across a member failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import etcd3
import etcd3.events
import etcd3.exceptions
import grpc

from gridtool.config import Config
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.store import Compare, Delete, EndpointStatus, Event, Item, Put

log = logging.getLogger("gridtool.etcd")
T = TypeVar("T")

_UNREACHABLE = (etcd3.exceptions.ConnectionFailedError,
                etcd3.exceptions.ConnectionTimeoutError)
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _auth_error(exc: grpc.RpcError) -> AuthError | None:
    code, details = exc.code(), (exc.details() or "")
    if code in _AUTH_CODES or "authentication" in details or "auth token" in details:
        return AuthError(f"etcd refused the request: {details.removeprefix('etcdserver: ')}")
    return None


class EtcdStore:
    """A ``gridtool.store.Store`` backed by an etcd cluster."""

    def __init__(self, cfg: Config) -> None:
        if not cfg.endpoints:
            raise RegistryUnavailable("no etcd endpoints configured")
        self._cfg = cfg
        self._endpoints = list(cfg.endpoints)
        self._clients: dict[str, etcd3.Etcd3Client] = {}
        self._current = 0
        self._lock = threading.Lock()
        # Each endpoint gets a share of the total answer time, so that a dead
        # cluster is reported within ``cfg.timeout`` seconds.
        self._call_timeout = max(1.0, cfg.timeout / len(self._endpoints))

    # -- connection handling -------------------------------------------------

    def _client(self, endpoint: str) -> etcd3.Etcd3Client:
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                host, _, port = endpoint.rpartition(":")
                client = etcd3.client(
                    host=host.strip("[]"), port=int(port), timeout=self._call_timeout,
                    user=self._cfg.user, password=self._cfg.password,
                    ca_cert=self._cfg.ca_cert, cert_key=self._cfg.key,
                    cert_cert=self._cfg.cert,
                    grpc_options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
                )
                self._clients[endpoint] = client
            return client

    def _drop(self, endpoint: str) -> None:
        with self._lock:
            client = self._clients.pop(endpoint, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken channel may fail; it is gone anyway
                pass

    def _call(self, fn: Callable[[etcd3.Etcd3Client], T]) -> T:
        """Run ``fn`` on the first endpoint that answers, starting with the last good one."""
        errors = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._current + step) % count
            endpoint = self._endpoints[index]
            try:
                result = fn(self._client(endpoint))
            except _UNREACHABLE as exc:
                errors.append(f"{endpoint}: {exc}")
                self._drop(endpoint)
                continue
            except grpc.RpcError as exc:
                auth = _auth_error(exc)
                if auth is not None:
                    self._drop(endpoint)
                    raise auth from None
                if exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED):
                    errors.append(f"{endpoint}: {exc.code().name.lower()}")
                    self._drop(endpoint)
                    continue
                raise
            except ValueError as exc:  # etcd3 raises it for bad TLS parameters
                raise AuthError(f"etcd TLS settings: {exc}") from None
            self._current = index
            return result
        raise RegistryUnavailable("no etcd endpoint answered: " + "; ".join(errors))

    # -- key-value -----------------------------------------------------------

    def get(self, key: str) -> Item | None:
        value, meta = self._call(lambda c: c.get(key))
        return None if meta is None else _item(value, meta)

    def list(self, prefix: str) -> tuple[list[Item], int]:
        def run(c: etcd3.Etcd3Client) -> tuple[list[Item], int]:
            resp = c.get_prefix_response(prefix, sort_order="ascend")
            return [_raw_item(kv) for kv in resp.kvs], resp.header.revision

        return self._call(run)

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        resp = self._call(lambda c: c.put(key, value, lease=lease))
        return resp.header.revision

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda c: c.delete(key)))

    def delete_prefix(self, prefix: str) -> None:
        self._call(lambda c: c.delete_prefix(prefix))

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> bool:
        def run(c: etcd3.Etcd3Client) -> bool:
            ok, _ = c.transaction(
                compare=[_compare(c, x) for x in compares],
                success=[_op(c, x) for x in success],
                failure=[_op(c, x) for x in failure],
            )
            return bool(ok)

        return self._call(run)

    # -- leases --------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        return int(self._call(lambda c: c.lease(ttl)).id)

    def keepalive(self, lease: int) -> int:
        def run(c: etcd3.Etcd3Client) -> int:
            for resp in c.refresh_lease(lease):
                return int(resp.TTL)
            return 0

        return self._call(run)

    def revoke_lease(self, lease: int) -> None:
        self._call(lambda c: c.revoke_lease(lease))

    # -- watches and status --------------------------------------------------

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> PrefixWatch:
        return PrefixWatch(self, prefix, on_event, start_revision)

    def status(self) -> list[EndpointStatus]:
        return [self._endpoint_status(ep) for ep in self._endpoints]

    def _endpoint_status(self, endpoint: str) -> EndpointStatus:
        from etcd3 import etcdrpc

        try:
            client = self._client(endpoint)
            st = client.maintenancestub.Status(
                etcdrpc.StatusRequest(), self._call_timeout,
                credentials=client.call_credentials, metadata=client.metadata)
        except grpc.RpcError as exc:
            self._drop(endpoint)
            auth = _auth_error(exc)
            text = str(auth) if auth else (exc.details() or exc.code().name.lower())
            return EndpointStatus(endpoint, healthy=False, error=text)
        return EndpointStatus(
            endpoint, healthy=True, leader=st.leader == st.header.member_id,
            db_size=int(st.dbSize), revision=int(st.header.revision), version=st.version)

    def close(self) -> None:
        for endpoint in list(self._clients):
            self._drop(endpoint)


def _item(value: bytes, meta: Any) -> Item:
    return Item(meta.key.decode(), value, meta.mod_revision, meta.create_revision, meta.lease_id)


def _raw_item(kv: Any) -> Item:
    return Item(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


def _compare(c: etcd3.Etcd3Client, cmp: Compare) -> Any:
    builder = {"create": c.transactions.create, "mod": c.transactions.mod,
               "value": c.transactions.value}[cmp.target]
    return builder(cmp.key) == cmp.value


def _op(c: etcd3.Etcd3Client, op: Put | Delete) -> Any:
    if isinstance(op, Put):
        return c.transactions.put(op.key, op.value, lease=op.lease)
    return c.transactions.delete(op.key)


class PrefixWatch:
    """A prefix watch that resumes on another endpoint after a failure."""

    def __init__(self, store: EtcdStore, prefix: str, on_event: Callable[[Event], None],
                 start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        self._on_event = on_event
        self._next_revision = start_revision
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._handle: tuple[etcd3.Etcd3Client, int] | None = None
        self._subscribe()

    def _subscribe(self) -> None:
        def run(c: etcd3.Etcd3Client) -> tuple[etcd3.Etcd3Client, int]:
            kwargs = {} if self._next_revision is None else {
                "start_revision": self._next_revision}
            return c, c.add_watch_prefix_callback(self._prefix, self._deliver, **kwargs)

        with self._lock:
            if not self._cancelled.is_set():
                self._handle = self._store._call(run)

    def _deliver(self, response: Any) -> None:
        if isinstance(response, Exception):
            log.info("event=watch_lost prefix=%s error=%s", self._prefix, response)
            threading.Thread(target=self._resubscribe, daemon=True).start()
            return
        for ev in response.events:
            kind = "delete" if isinstance(ev, etcd3.events.DeleteEvent) else "put"
            self._next_revision = ev.mod_revision + 1
            self._on_event(Event(kind, ev.key.decode(), ev.value, ev.mod_revision))

    def _resubscribe(self) -> None:
        delay = 0.1
        while not self._cancelled.wait(delay):
            try:
                self._subscribe()
                return
            except (RegistryUnavailable, AuthError) as exc:
                log.info("event=watch_retry prefix=%s error=%s", self._prefix, exc)
                delay = min(delay * 2, 2.0)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            client, watch_id = handle
            try:
                client.cancel_watch(watch_id)
            except Exception:  # the endpoint may be gone; the watch dies with it
                pass
