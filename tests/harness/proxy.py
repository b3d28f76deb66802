"""A TCP proxy on loopback that a test can cut and heal: a network partition between an
agent and etcd without touching the host's network; and a server that accepts and never
answers (a hung etcd)."""

from __future__ import annotations

import contextlib
import socket
import threading

from gridtool.lab.procs import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; ``cut()`` drops every connection and
    refuses new ones until ``heal()``."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy").start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            conns, self._open = self._open, set()
        for conn in conns:
            _close(conn)

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            answers = self._answers()
            for src, dst, swallow in ((client, upstream, None), (upstream, client, answers)):
                threading.Thread(target=_pump, args=(src, dst, swallow), daemon=True).start()

    def _answers(self) -> threading.Event | None:
        """For a new connection: an event that, once set, swallows what the upstream
        sends on it (None: always forwarded)."""
        return None


class StallingProxy(CuttableProxy):
    """A :class:`CuttableProxy` that can also fail one way: ``watch()`` marks the
    connections accepted from then on; ``stall()`` stops marking and, on the marked
    connections, swallows everything the upstream sends while the client's requests still
    reach it. The client then waits for answers that never come (a one-way network
    fault), until its keepalive gives up; connections made later are not touched."""

    def __init__(self, upstream: str) -> None:
        self._stalled: threading.Event | None = None
        super().__init__(upstream)

    def watch(self) -> None:
        with self._lock:
            self._stalled = threading.Event()

    def stall(self) -> None:
        with self._lock:
            stalled, self._stalled = self._stalled, None
        if stalled is not None:
            stalled.set()

    def _answers(self) -> threading.Event | None:
        with self._lock:
            return self._stalled


def _pump(src: socket.socket, dst: socket.socket,
          swallow: threading.Event | None = None) -> None:
    try:
        while data := src.recv(65536):
            if swallow is None or not swallow.is_set():
                dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class SilentServer:
    """A TCP server on loopback that accepts every connection and never answers: an etcd
    endpoint whose process hangs (or a firewall that lets SYNs through). ``close()``
    (or leaving the ``with`` block) closes the listener and every connection it holds."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="silent-server").start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """How many connections it has accepted (and left unanswered)."""
        with self._lock:
            return self._accepted

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        _close(self._listener)
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            _close(conn)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._held.append(conn)
                self._accepted += 1
