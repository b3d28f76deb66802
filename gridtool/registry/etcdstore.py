"""The etcd adapter: ``Store`` over pyetcd (etcd-sdk-python), failing over between endpoints.

This adapter keeps one single-endpoint client per etcd member,
sends each call to the endpoint that answered last, and moves on to the next one
when it does not answer. Watches re-subscribe on another endpoint from the last
revision they delivered, so no event is lost across a member failure.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar

import grpc
import pyetcd
import pyetcd.exceptions

from gridtool import supervise
from gridtool.config import Config
from gridtool.errors import AuthError, ConfigError, LeaseGone, RegistryUnavailable
from gridtool.registry.store import Compare, Delete, EndpointStatus, Event, Item, Put

log = logging.getLogger("gridtool.etcd")
T = TypeVar("T")

_UNREACHABLE = (pyetcd.exceptions.ConnectionFailedError,
                pyetcd.exceptions.ConnectionTimeoutError)
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


_MVCC_DELETE = 1  # mvccpb.Event.EventType.DELETE


class _Unavailable(Exception):
    """One endpoint did not answer."""


def _auth_error(exc: grpc.RpcError, user: str | None = None) -> AuthError | None:
    code, details = exc.code(), (exc.details() or "")
    if code in _AUTH_CODES or "authentication" in details or "auth token" in details \
            or "user name is empty" in details:
        who = f" (user {user})" if user else " (no user configured)"
        return AuthError(f"etcd refused the request{who}: "
                         f"{details.removeprefix('etcdserver: ')}")
    return None


def _tls_refusal(exc: BaseException, host: str) -> str | None:
    """What gRPC says when this client refused the server's TLS certificate, in plain
    words (None: the failure was not that). pyetcd raises its own exception from inside
    the handler of gRPC's, so the details are on ``__context__``."""
    error = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    details = (error.details() or "") if isinstance(error, grpc.RpcError) else ""
    if "Hostname Verification Check failed" in details:
        return (f"TLS: the server's certificate is not made out to {host} (refused; connect "
                "by a name or address the certificate lists: gridtool registry certs "
                "--ip/--dns)")
    if "handshake failed" in details.lower():
        return f"TLS: handshake failed ({details.rsplit(': ', 1)[-1].strip()})"
    return None


class EtcdStore:
    """A ``gridtool.registry.store.Store`` backed by an etcd cluster."""

    def __init__(self, cfg: Config) -> None:
        if not cfg.endpoints:
            raise RegistryUnavailable("no etcd endpoints configured")
        self._cfg = cfg
        self._endpoints = list(cfg.endpoints)
        self._clients: dict[str, pyetcd.Etcd3Client] = {}
        self._current = 0
        self._lock = threading.Lock()
        # Each endpoint gets a share of the total answer time, so that a dead
        # cluster is reported within ``cfg.timeout`` seconds.
        self._call_timeout = max(1.0, cfg.timeout / len(self._endpoints))
        self._failing_since: float | None = None  # first failed try since the last answer

    # -- connection handling -------------------------------------------------

    def _client(self, endpoint: str) -> pyetcd.Etcd3Client:
        with self._lock:
            client = self._clients.get(endpoint)
        if client is None:
            client = self._connect(endpoint)
            with self._lock:
                client = self._clients.setdefault(endpoint, client)
        return client

    def _connect(self, endpoint: str) -> pyetcd.Etcd3Client:
        """A client for one endpoint; authenticates at once when credentials are set."""
        host, _, port = endpoint.rpartition(":")
        try:
            client = pyetcd.client(
                host=host.strip("[]"), port=int(port), timeout=self._call_timeout,
                user=self._cfg.user, password=self._cfg.password,
                ca_cert=self._cfg.ca_cert, cert_key=self._cfg.key, cert_cert=self._cfg.cert,
                grpc_options=[("grpc.max_receive_message_length", 256 * 1024 * 1024),
                              ("grpc.initial_reconnect_backoff_ms", 100),
                              ("grpc.max_reconnect_backoff_ms", 1000)])
        except OSError as exc:  # a TLS file cannot be read
            raise ConfigError(f"etcd TLS file {exc.filename}: {exc.strerror}") from None
        except ValueError as exc:  # raised for inconsistent TLS parameters
            raise AuthError(f"etcd TLS settings: {exc}") from None
        except grpc.RpcError as exc:  # the authentication call failed
            auth = _auth_error(exc, self._cfg.user)
            if auth is not None:
                raise auth from None
            raise _Unavailable(_tls_refusal(exc, host) or exc.code().name.lower()) from None
        if not client.uses_secure_channel:
            # gRPC sends call credentials over TLS only; the token metadata goes anyway.
            client.call_credentials = None
        return client

    def _drop(self, endpoint: str) -> None:
        """Forget a failing endpoint's client; the next call opens a fresh channel.

        The old channel is not closed here: a watch may still be reading from it,
        and it closes by itself once nothing refers to it.
        """
        with self._lock:
            self._clients.pop(endpoint, None)

    def _call(self, fn: Callable[[pyetcd.Etcd3Client], T]) -> T:
        """Run ``fn`` on the first endpoint that answers, starting with the last good one.

        Passes over every endpoint until ``timeout`` seconds have gone by: a cluster
        electing a new leader answers "unavailable" for a moment. Between passes it waits
        a jittered, growing pause (:class:`gridtool.backoff.Backoff`, at most 1 s).
        """
        deadline = time.monotonic() + self._cfg.timeout
        errors: dict[str, str] = {}
        backoff = None  # made at the first failed pass (tenacity: not imported before)
        while True:
            for endpoint in self._rotation():
                try:
                    result = self._attempt(fn, endpoint)
                except _Unavailable as exc:
                    errors[endpoint] = str(exc)
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                    continue
                self._current = self._endpoints.index(endpoint)
                self._failing_since = None
                return result
            if time.monotonic() + 0.1 >= deadline:
                detail = "; ".join(f"{ep}: {err}" for ep, err in errors.items())
                raise RegistryUnavailable(f"no etcd endpoint answered: {detail}")
            if backoff is None:
                from gridtool.backoff import Backoff

                backoff = Backoff(first=0.1, limit=1.0)  # jittered: many clients, one etcd
            time.sleep(max(0.0, min(backoff.next(), deadline - time.monotonic())))

    def unanswered_for(self) -> float:
        """Seconds since a try on etcd first failed with no answer from it since (0.0
        while the last try was answered): how long the registry has been unreachable."""
        since = self._failing_since
        return 0.0 if since is None else max(time.monotonic() - since, 1e-3)

    def _rotation(self) -> list[str]:
        start = self._current
        return self._endpoints[start:] + self._endpoints[:start]

    def _attempt(self, fn: Callable[[pyetcd.Etcd3Client], T], endpoint: str) -> T:
        """One try on one endpoint; ``_Unavailable`` when it did not answer."""
        client = self._client(endpoint)
        try:
            return fn(client)
        except _UNREACHABLE as exc:
            self._drop(endpoint)
            raise _Unavailable(_tls_refusal(exc, endpoint.rpartition(":")[0])
                               or str(exc) or type(exc).__name__) from None
        except ValueError as exc:  # pyetcd: this client's endpoint was marked failed
            self._drop(endpoint)
            raise _Unavailable(str(exc)) from None
        except grpc.RpcError as exc:
            if "invalid auth token" in (exc.details() or ""):  # expired or member restarted
                self._drop(endpoint)  # the next try authenticates again
                raise _Unavailable("invalid auth token") from None
            auth = _auth_error(exc, self._cfg.user)
            if auth is not None:
                self._drop(endpoint)
                raise auth from None
            details = " ".join((exc.details() or "").split()).removeprefix("etcdserver: ")
            if "lease not found" in details:
                raise LeaseGone(f"etcd: {details}") from None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._drop(endpoint)
            # Anything else etcd says (leader changed, context deadline exceeded, too many
            # requests...) is a failed try on this endpoint, never a crash of the caller.
            raise _Unavailable(details or exc.code().name.lower()) from None

    # -- key-value -----------------------------------------------------------

    def get(self, key: str) -> Item | None:
        value, meta = self._call(lambda c: c.get(key))
        return None if meta is None else _item(value, meta)

    def list(self, prefix: str) -> tuple[list[Item], int]:
        def run(c: pyetcd.Etcd3Client) -> tuple[list[Item], int]:
            resp = c.get_prefix_response(prefix, sort_order="ascend")
            return [_raw_item(kv) for kv in resp.kvs], resp.header.revision

        return self._call(run)

    def list_range(self, start: str, end: str,
                   revision: int = 0) -> tuple[builtins.list[Item], int]:
        def run(c: pyetcd.Etcd3Client) -> tuple[builtins.list[Item], int]:
            resp = c.get_range_response(start, end, revision=revision or None,
                                        sort_order="ascend")
            return [_raw_item(kv) for kv in resp.kvs], resp.header.revision

        items, now = self._call(run)
        return items, revision or now

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        resp = self._call(lambda c: c.put(key, value, lease=lease))
        return resp.header.revision

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda c: c.delete(key)))

    def delete_prefix(self, prefix: str) -> None:
        self._call(lambda c: c.delete_prefix(prefix))

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> bool:
        def run(c: pyetcd.Etcd3Client) -> bool:
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
        def run(c: pyetcd.Etcd3Client) -> int:
            for resp in c.refresh_lease(lease):
                return int(resp.TTL)
            return 0

        try:
            return self._call(run)
        except LeaseGone:
            return 0

    def revoke_lease(self, lease: int) -> None:
        self._call(lambda c: c.revoke_lease(lease))

    def lease_info(self, lease: int) -> tuple[int, float] | None:
        resp = self._call(lambda c: c.get_lease_info(lease))
        return None if resp.TTL < 0 else (int(resp.grantedTTL), float(resp.TTL))

    def auth_rpc(self, method: str, request: Any, exists_ok: bool = False) -> Any:
        """One call of etcd's Auth service (``UserAdd``, ``RoleGrantPermission``...);
        pyetcd has no methods for them, so ``gridtool.auth.etcdauth`` builds the requests.

        ``exists_ok``: an add answered "already exists" returns None. A retried add meets
        its own first try that timed out yet was applied (bcrypt under load).
        """
        def run(c: pyetcd.Etcd3Client) -> Any:
            try:
                return getattr(c.authstub, method)(request, self._call_timeout,
                                                   credentials=c.call_credentials,
                                                   metadata=c.metadata)
            except grpc.RpcError as exc:
                if exists_ok and exc.code() is grpc.StatusCode.FAILED_PRECONDITION \
                        and "already exists" in (exc.details() or ""):
                    return None
                raise

        return self._call(run)

    # -- watches and status --------------------------------------------------

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> PrefixWatch:
        return PrefixWatch(self, prefix, on_event, start_revision)

    def snapshot(self, out: BinaryIO, timeout: float = 120.0) -> str:
        """Stream a snapshot of the database into ``out`` from the first endpoint that
        answers (``out`` is emptied before each try); returns that endpoint. etcd allows
        it to root only (or to anyone while authentication is off)."""
        from pyetcd import etcdrpc

        def run(c: pyetcd.Etcd3Client) -> None:
            for chunk in c.maintenancestub.Snapshot(
                    etcdrpc.SnapshotRequest(), timeout, credentials=c.call_credentials,
                    metadata=c.metadata):
                out.write(chunk.blob)

        errors = []
        for endpoint in self._endpoints:
            out.seek(0)
            out.truncate()
            try:
                self._attempt(run, endpoint)
                return endpoint
            except _Unavailable as exc:
                errors.append(f"{endpoint}: {exc}")
        raise RegistryUnavailable("no etcd endpoint gave a snapshot (" + "; ".join(errors) + ")")

    def status(self) -> builtins.list[EndpointStatus]:
        return [self._endpoint_status(ep) for ep in self._endpoints]

    def _endpoint_status(self, endpoint: str) -> EndpointStatus:
        from pyetcd import etcdrpc

        def run(c: pyetcd.Etcd3Client) -> Any:
            return c.maintenancestub.Status(etcdrpc.StatusRequest(), self._call_timeout,
                                            credentials=c.call_credentials, metadata=c.metadata)

        try:
            st = self._attempt(run, endpoint)
        except (_Unavailable, AuthError) as exc:
            return EndpointStatus(endpoint, healthy=False, error=str(exc))
        return EndpointStatus(
            endpoint, healthy=True, leader=st.leader == st.header.member_id,
            db_size=int(st.dbSize), revision=int(st.header.revision), version=st.version)

    def alarms(self) -> builtins.list[tuple[str, str]]:
        from pyetcd import etcdrpc

        def run(c: pyetcd.Etcd3Client) -> Any:
            request = etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET, memberID=0,
                                           alarm=etcdrpc.NONE)
            return c.maintenancestub.Alarm(request, self._call_timeout,
                                           credentials=c.call_credentials, metadata=c.metadata)

        reply = self._call(run)
        return [(f"{a.memberID:x}", etcdrpc.AlarmType.Name(a.alarm)) for a in reply.alarms]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def _item(value: bytes, meta: Any) -> Item:
    return Item(meta.key.decode(), value, meta.mod_revision, meta.create_revision, meta.lease_id)


def _raw_item(kv: Any) -> Item:
    return Item(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


def _compare(c: pyetcd.Etcd3Client, cmp: Compare) -> Any:
    builder = {"create": c.transactions.create, "mod": c.transactions.mod,
               "value": c.transactions.value}[cmp.target]
    return builder(cmp.key) == cmp.value


def _op(c: pyetcd.Etcd3Client, op: Put | Delete) -> Any:
    if isinstance(op, Put):
        return c.transactions.put(op.key, op.value, lease=op.lease)
    return c.transactions.delete(op.key)


class PrefixWatch:
    """A prefix watch on its own thread, resuming on another endpoint after a failure.

    It reads the gRPC watch stream directly (not pyetcd's shared watcher thread), so
    that cancelling it ends its thread cleanly.
    """

    def __init__(self, store: EtcdStore, prefix: str, on_event: Callable[[Event], None],
                 start_revision: int | None) -> None:
        self._store = store
        self._key = prefix.encode()
        self._on_event = on_event
        self._next_revision = start_revision or 0
        self._cancelled = threading.Event()
        self._created = threading.Event()
        self._call: Any = None
        self._thread = supervise.thread(self._run, f"watch {prefix}", logger=log)
        self._thread.start()
        if not self._created.wait(store._cfg.timeout):
            self.cancel()
            raise RegistryUnavailable(f"could not start a watch on {prefix}")

    def _run(self) -> None:
        delay = 0.1
        while not self._cancelled.is_set():
            for endpoint in self._store._rotation():
                if self._cancelled.is_set():
                    return
                try:
                    self._stream(self._store._client(endpoint))
                    delay = 0.1
                except (grpc.RpcError, ValueError, pyetcd.exceptions.Etcd3Exception,
                        _Unavailable) as exc:  # _Unavailable: reconnecting (auth) failed
                    if self._cancelled.is_set():
                        return
                    log.info("event=watch_lost endpoint=%s error=%s", endpoint,
                             type(exc).__name__)
                    self._store._drop(endpoint)
            self._cancelled.wait(delay)
            delay = min(delay * 2, 1.0)

    def _stream(self, client: pyetcd.Etcd3Client) -> None:
        from pyetcd import etcdrpc

        create = etcdrpc.WatchCreateRequest(
            key=self._key, range_end=_range_end(self._key),
            start_revision=self._next_revision)
        requests = iter([etcdrpc.WatchRequest(create_request=create)])
        stub = etcdrpc.WatchStub(client.channel)
        self._call = stub.Watch(_hold_open(requests, self._cancelled),
                                credentials=client.call_credentials, metadata=client.metadata)
        if self._cancelled.is_set():
            self._call.cancel()
        for resp in self._call:
            if resp.created:
                self._created.set()
                if resp.header.revision + 1 < self._next_revision:
                    # The store went back in time (restored from a snapshot): what we wait
                    # for may never come, and new events carry revisions we already saw.
                    self._next_revision = 0
                    self._on_event(Event("reset", self._key.decode(), b"",
                                         resp.header.revision))
                    return
            if resp.compact_revision:
                # Events were compacted away: tell the consumer to re-read, go on from now.
                self._next_revision = 0
                self._on_event(Event("reset", self._key.decode(), b"", resp.compact_revision))
                return
            for ev in resp.events:
                kind = "delete" if ev.type == _MVCC_DELETE else "put"
                self._next_revision = ev.kv.mod_revision + 1
                self._on_event(Event(kind, ev.kv.key.decode(), ev.kv.value, ev.kv.mod_revision,
                                     ev.kv.lease, ev.kv.create_revision))
            if resp.canceled:
                return

    def cancel(self) -> None:
        self._cancelled.set()
        call = self._call
        if call is not None:
            call.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


def _range_end(prefix: bytes) -> bytes:
    """The smallest key above every key starting with ``prefix`` (etcd's range end)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else b"\0"


def _hold_open(first: Iterator[Any], stop: threading.Event) -> Iterator[Any]:
    """Send the create request, then keep the request stream open until ``stop``."""
    yield from first
    stop.wait()
