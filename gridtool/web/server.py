"""The web view's ASGI app (starlette) and its server (uvicorn): the thin shell.

Routes: ``/`` the page, ``/static/*`` its script and style (package data), ``/api/fleet``
everything but the guests, ``/api/guests`` one filtered page of guests, ``/events`` the
server-sent events that tell every open page the registry changed. All of them read the
one ``Mirror`` that ``Feed`` keeps; nothing here writes the registry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gridtool import supervise
from gridtool.registry.keys import Keys
from gridtool.registry.mirror import Mirror, RegistryState, Snapshot
from gridtool.web.listen import Tls
from gridtool.web.view import (
    PENDING_CHECK,
    Fleet,
    GuestQuery,
    Memo,
    QueryError,
    check_report,
    fleet,
    page_guests,
)

log = logging.getLogger("gridtool.web")

#: No inline script or style, nothing from elsewhere: a value that slipped past escaping
#: still could not run.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies close it)


class Views:
    """The fleet view of the mirror's current snapshot, built once per change and only
    when a page asks (on a worker thread), decoding only the records that changed.

    ``gridtool check``'s findings come from a thread of their own (``start``), every
    ``CHECK_EVERY`` seconds and never more than a fifth of the time (on 10,000 guests the
    check reads and judges everything again): a page's request never waits for it, nor
    starts it. Pages are woken when the findings change."""

    CHECK_EVERY = 10.0

    def __init__(self, mirror: Mirror, keys: Keys, member_count: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._mirror, self._keys, self._members, self._clock = mirror, keys, member_count, clock
        self._lock = threading.Lock()
        self._memo = Memo()
        self._cached: tuple[Snapshot, Fleet] | None = None
        self._check: dict[str, Any] = PENDING_CHECK
        self._stop = threading.Event()
        self._checker = supervise.thread(self._run_checks, "web check", logger=log)

    def start(self) -> None:
        self._checker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._checker.is_alive():
            self._checker.join(timeout=30)

    def current(self) -> tuple[Snapshot, Fleet]:
        with self._lock:
            snap = self._mirror.frozen()
            if self._cached is None or self._cached[0] is not snap:
                self._cached = snap, fleet(snap, self._keys, self._clock(), self._memo,
                                           self._check)
            elif self._cached[1].check is not self._check:
                self._cached = snap, replace(self._cached[1], check=self._check)
            return self._cached

    def _run_checks(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            if not self._mirror.state.up and self._check is PENDING_CHECK:
                wait = 1.0  # nothing read yet: no check of an empty copy
                continue
            start = time.monotonic()
            report = check_report(self._mirror.frozen(), self._keys, self._members)
            with self._lock:
                self._check = report
            self._mirror.touch()
            wait = max(self.CHECK_EVERY, 5 * (time.monotonic() - start))


class Hub:
    """Wakes every event stream when the mirror's version changes (on the event loop)."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()

    def bump(self, version: int) -> None:
        self.version = version
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, version: int, timeout: float) -> bool:
        """Wait until the version differs from ``version``; False on timeout."""
        if self.version != version:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True


def registry_doc(state: RegistryState) -> dict[str, Any]:
    return {"up": state.up, "error": state.error, "since": state.since}


@dataclass
class BasicAuth:
    """HTTP basic auth against ``user -> password`` (compared in constant time)."""

    app: ASGIApp
    users: dict[str, str]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(dict(scope["headers"])):
            response = Response("authentication required\n", 401,
                                {"WWW-Authenticate": 'Basic realm="gridtool"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, headers: dict[bytes, bytes]) -> bool:
        kind, _, encoded = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        expected = self.users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(),
                                                            password.encode())


def create_app(mirror: Mirror, views: Views, start: Callable[[], None],
               stop: Callable[[], None], users: dict[str, str] | None = None) -> Starlette:
    """The app; ``start``/``stop`` run the feed with the app's lifespan."""
    from contextlib import asynccontextmanager
    from importlib.resources import files

    from starlette.concurrency import run_in_threadpool

    static = files("gridtool.web") / "static"
    hub = Hub()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        def wake(version: int) -> None:
            loop.call_soon_threadsafe(hub.bump, version)

        mirror.on_change = wake
        start()
        try:
            yield
        finally:
            stop()

    async def index(request: Request) -> Response:
        return FileResponse(str(static / "index.html"), headers=HEADERS)

    async def api_fleet(request: Request) -> Response:
        snap, view = await run_in_threadpool(views.current)
        return _json({**view.summary(), "registry": registry_doc(snap.state),
                      "now": time.time()})

    async def api_guests(request: Request) -> Response:
        try:
            query = GuestQuery.parse(request.query_params)
        except QueryError as exc:
            return _json({"error": str(exc)}, 400)
        snap, view = await run_in_threadpool(views.current)
        return _json({**page_guests(view.guests, query), "query": asdict(query),
                      "revision": view.revision, "registry": registry_doc(snap.state)})

    async def events(request: Request) -> Response:
        return StreamingResponse(_stream(hub, mirror), media_type="text/event-stream",
                                 headers={**HEADERS, "X-Accel-Buffering": "no"})

    app = Starlette(routes=[
        Route("/", index), Route("/api/fleet", api_fleet), Route("/api/guests", api_guests),
        Route("/events", events), Mount("/static", StaticFiles(directory=str(static)))],
        lifespan=lifespan,
        middleware=[Middleware(BasicAuth, users=users)] if users else [])
    return app


async def _stream(hub: Hub, mirror: Mirror) -> AsyncIterator[str]:
    """One page's events: ``change`` (with the registry's state) whenever the mirror
    changes, at most one per change however many came while the page was busy."""
    yield "retry: 1000\n\n"  # the browser reconnects a second after losing the stream
    sent = -1
    while True:
        if hub.version != sent:
            sent = hub.version
            data = json.dumps({"version": sent, "registry": registry_doc(mirror.state)})
            yield f"event: change\ndata: {data}\n\n"
        elif not await hub.wait_past(sent, KEEPALIVE):
            yield ": keepalive\n\n"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, allow_nan=False, separators=(",", ":")), status,
                    headers=HEADERS, media_type="application/json")


def serve(app: Starlette, sock: socket.socket, tls: Tls | None,
          announce: Callable[[str], None]) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGINT or SIGTERM."""
    import uvicorn

    options: dict[str, Any] = {}
    if tls is not None:
        options.update(ssl_certfile=tls.cert, ssl_keyfile=tls.key)
        if tls.client_ca:
            options.update(ssl_ca_certs=tls.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=1, **options)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce(f"{'https' if tls else 'http'}://{shown}:{port}/")
    _quiet_server()(config).run(sockets=[sock])


def _quiet_server() -> type:
    import uvicorn

    class Quiet(uvicorn.Server):
        """Stops on SIGINT or SIGTERM and returns (uvicorn re-raises the signal after its
        shutdown, which would end the CLI with -15 instead of 0)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def stop(signum: int, frame: object) -> None:
                self.should_exit = True

            old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Quiet
