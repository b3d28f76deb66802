"""The agent's side of the fence hook: a unix socket answering "does this host hold
every fence of this guest?" for ``agents/hook.py``.

A request is one JSON line ``{"op", "sub", "name", "uuid", "xml"}``; the answer one JSON
line ``{"allow": bool, "message": str}``. The guest's shared volumes come from its XML
under the agent's storage rules (no shared disk: allowed). Allowed when the fencer holds
every one of them for this guest; a positive local view is trusted for
:data:`FRESH_S` seconds after etcd last confirmed it, otherwise (and whenever the local
view says no) the fence keys are read from etcd.

An incoming live migration (``migrate``) is allowed while the fences are still with the
source only when this agent was told to expect it (a ``receive`` intent, submitted by
the migrating client before the source's ``migrate`` intent; it names the source, which
must hold every fence, and lasts one minute for one migration): the source hands the
fences over at switchover. A bare ``virsh migrate`` is refused. Until the fences are
here (or the incoming guest is gone again), the guest is marked busy (the agent does
not judge it an intruder) and its ``prepare`` is allowed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from agents.hook import read_line
from gridtool.domxml import DomainXMLError, parse_domain
from gridtool.fencing import Observed

if TYPE_CHECKING:
    from agents.agent import Agent

log = logging.getLogger("gridtool.agent")

FRESH_S = 2.0  # how long an etcd-confirmed "held" answer is trusted without a read
INCOMING_MAX_S = 900.0  # an incoming migration is given up on after this
EXPECT_S = 60.0  # a 'receive' intent's acceptance lasts this long


class HookServer:
    """A daemon thread serving the fence hook on ``path``."""

    def __init__(self, agent: Agent, path: str) -> None:
        self.agent = agent
        self.path = path
        self._sock: socket.socket | None = None
        self._confirmed: dict[str, float] = {}  # guest uuid -> when etcd said "held"
        self._incoming: dict[str, str] = {}  # guest uuid -> source host
        self._expected: dict[str, tuple[str, float]] = {}  # uuid -> (source, until)
        self._lock = threading.Lock()

    def start(self) -> HookServer:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        threading.Thread(target=self._serve, name="hooksock", daemon=True).start()
        log.info("event=hook_socket host=%s path=%s", self.agent.host, self.path)
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        request: dict = {}
        with conn:
            conn.settimeout(5.0)
            try:
                request = dict(json.loads(read_line(conn)))
                allow, message = self.check(str(request.get("op", "")),
                                             str(request.get("uuid", "")),
                                             str(request.get("name", "")),
                                             str(request.get("xml", "")))
            except Exception as exc:
                allow, message = False, f"the agent could not decide ({exc})"
            log.info("event=hook_%s host=%s guest=%s op=%s message=%s",
                     "allowed" if allow else "refused", self.agent.host,
                     request.get("name", "?"), request.get("op", "?"), message)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"allow": allow, "message": message}).encode() + b"\n")

    # -- the decision --------------------------------------------------------

    def check(self, op: str, uuid: str, name: str, xml: str) -> tuple[bool, str]:
        """(allowed, why) for starting/restoring/receiving guest ``uuid`` here."""
        try:
            spec = parse_domain(xml, self.agent.cfg.shared_rules)
        except DomainXMLError as exc:
            return False, f"its domain XML cannot be read ({exc})"
        volumes = tuple(sorted({d.volume for d in spec.disks if d.shared and d.volume}))
        if not volumes:
            return True, "not fenced"
        host = self.agent.host
        if self._held_locally(uuid, volumes):
            return True, f"{host} holds its fences"
        holders = self._holders(uuid, volumes)
        if all(h == host for h in holders.values()):
            with self._lock:
                self._confirmed[uuid] = time.monotonic()
            return True, f"{host} holds its fences"
        source = self._accepts(op, uuid, holders)
        if source:
            return True, f"incoming live migration from {source}"
        return False, describe(name, host, holders)

    def _held_locally(self, uuid: str, volumes: Iterable[str]) -> bool:
        with self._lock:
            at = self._confirmed.get(uuid)
        if at is None or time.monotonic() - at > FRESH_S:
            return False
        held = self.agent.fencer.held
        return all(v in held and held[v].guest == uuid for v in volumes)

    def _holders(self, uuid: str, volumes: Iterable[str]) -> dict[str, str | None]:
        """Volume -> the host holding its fence for ``uuid`` (None: free, unreadable, or
        held for another guest)."""
        found: dict[str, str | None] = {}
        for volume, obs in self.agent.fencer.observe(volumes).items():
            found[volume] = (obs.fence.holder if isinstance(obs, Observed)
                             and obs.fence.guest == uuid else None)
        return found

    # -- incoming live migrations ---------------------------------------------

    def expect(self, uuid: str, source: str) -> None:
        """The ``receive`` intent: accept ONE incoming live migration of ``uuid`` from
        ``source`` within :data:`EXPECT_S` seconds (its fences still with ``source``)."""
        with self._lock:
            self._expected[uuid] = (source, time.monotonic() + EXPECT_S)

    def _accepts(self, op: str, uuid: str, holders: dict[str, str | None]) -> str | None:
        """The source host when this is an expected incoming migration (every fence held
        by that source), else None. ``migrate`` consumes the expectation; the ``prepare``
        that follows it is allowed while the migration runs."""
        sources = set(holders.values())
        if len(sources) != 1 or None in sources:
            return None
        (holder,) = sources
        with self._lock:
            if op in ("prepare", "restore") and self._incoming.get(uuid) == holder:
                return holder
            source, until = self._expected.get(uuid, ("", 0.0))
            if op != "migrate" or source != holder or time.monotonic() > until:
                return None
            del self._expected[uuid]
            self._incoming[uuid] = source
        with self.agent.busy_lock:  # not an intruder while its fences are still away
            self.agent.busy.add(uuid)
        threading.Thread(target=self._follow, args=(uuid, tuple(holders)), daemon=True,
                         name=f"incoming-{uuid[:8]}").start()
        return holder

    def _follow(self, uuid: str, volumes: tuple[str, ...]) -> None:
        """Until the fences are ours or the incoming guest is gone again (a failed
        migration), keep it out of the agent's judgement; then judge it at once."""
        deadline = time.monotonic() + INCOMING_MAX_S
        try:
            while time.monotonic() < deadline:
                time.sleep(0.1)
                with contextlib.suppress(Exception):  # etcd or libvirt away: keep waiting
                    if all(h == self.agent.host
                           for h in self._holders(uuid, volumes).values()):
                        break
                    if self.agent.libvirt.domain(uuid) is None:
                        break
        finally:
            with self._lock:
                self._incoming.pop(uuid, None)
            with self.agent.busy_lock:
                self.agent.busy.discard(uuid)
            self.agent.changes.put(("guest", uuid, None))


def describe(name: str, host: str, holders: dict[str, str | None]) -> str:
    """Why ``host`` may not run ``name``, naming whoever holds its fences."""
    others = sorted({h for h in holders.values() if h and h != host})
    free = sorted(v for v, h in holders.items() if h is None)
    if others:
        return (f"its fence is held by {', '.join(others)} (not by {host}); start it "
                f"through gridtool ('gridtool guest start {name}') or migrate it")
    return (f"{host} does not hold the fence of {', '.join(free)}; start it through "
            f"gridtool ('gridtool guest start {name}')")
