"""A fake libvirt host for the simulator: one host's domains, pure python, no libvirt.

Domains are defined (known to the host) and, when active, ``running`` or ``paused``.
Every change is told to the listeners as a lifecycle event ``(uuid, event, detail)``
with libvirt's names (``started``/``booted``, ``suspended``/``paused``,
``stopped``/``destroyed`` or ``crashed``). :meth:`FakeHost.power_off` is a power loss:
every active domain is gone at once, and no event is sent (nobody is left to send it).
``daemon_up`` false is libvirtd down (restarting): the domains run on, untouched, but no
call reaches them. :class:`FakeLibvirt` puts a host behind the agent's ``Domains`` port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from xml.etree import ElementTree

import libvirt

from gridtool.registry.model import GuestRecord

Listener = Callable[[str, str, str], None]


class DomainError(Exception):
    """What libvirt would refuse (unknown domain, already active, not active)."""


@dataclass
class FakeHost:
    """The domains of one simulated host."""

    name: str
    defined: set[str] = field(default_factory=set)
    active: dict[str, str] = field(default_factory=dict)  # uuid -> running | paused
    crashed: set[str] = field(default_factory=set)  # stopped by a crash, not restarted
    listeners: list[Listener] = field(default_factory=list)
    daemon_up: bool = True

    def define(self, uuid: str) -> None:
        self.defined.add(uuid)
        self._tell(uuid, "defined", "added")

    def start(self, uuid: str) -> None:
        if uuid not in self.defined:
            raise DomainError(f"domain {uuid} is not defined on {self.name}")
        if uuid in self.active:
            raise DomainError(f"domain {uuid} is already active on {self.name}")
        self.active[uuid] = "running"
        self.crashed.discard(uuid)
        self._tell(uuid, "started", "booted")

    def undefine(self, uuid: str) -> None:
        if uuid in self.active:
            raise DomainError(f"domain {uuid} is active on {self.name}")
        self.defined.discard(uuid)
        self.crashed.discard(uuid)
        self._tell(uuid, "undefined", "removed")

    def suspend(self, uuid: str) -> None:
        self._need_active(uuid)
        self.active[uuid] = "paused"
        self._tell(uuid, "suspended", "paused")

    def destroy(self, uuid: str, detail: str = "destroyed") -> None:
        """Stop ``uuid`` at once; ``detail="crashed"`` is the guest dying by itself."""
        self._need_active(uuid)
        del self.active[uuid]
        if detail == "crashed":
            self.crashed.add(uuid)
        self._tell(uuid, "stopped", detail)

    def state(self, uuid: str) -> str:
        """running, paused, crashed or shutoff (defined, not active), or absent."""
        if uuid in self.active:
            return self.active[uuid]
        if uuid not in self.defined:
            return "absent"
        return "crashed" if uuid in self.crashed else "shutoff"

    def power_off(self) -> list[str]:
        """Power loss: every active domain is gone at once; return their uuids."""
        gone = sorted(self.active)
        self.active.clear()
        return gone

    def _need_active(self, uuid: str) -> None:
        if uuid not in self.active:
            raise DomainError(f"domain {uuid} is not active on {self.name}")

    def _tell(self, uuid: str, event: str, detail: str) -> None:
        for listener in self.listeners:
            listener(uuid, event, detail)


def sim_error(message: str) -> libvirt.libvirtError:
    """A libvirtError that says ``message``: libvirt-python takes the message of the
    thread's last real libvirt error when there is one (left by any earlier libvirt call
    in the process, e.g. an integration test), so clear it first."""
    libvirt.virResetLastError()
    return libvirt.libvirtError(message)


def _refused(exc: DomainError) -> libvirt.libvirtError:
    return sim_error(str(exc))


@dataclass
class FakeDomain:
    """One domain of a :class:`FakeHost` as a ``libvirt.virDomain`` (what the agent's
    intent handlers call). ``may_start(uuid)`` returns why libvirt would refuse to start
    it (not enough memory), or None; ``started(uuid)`` is told every start."""

    host: FakeHost
    uuid: str
    label: str
    may_start: Callable[[str], str | None]
    started: Callable[[str], None]

    def _up(self) -> None:
        if not self.host.daemon_up:
            raise sim_error("sim: not connected to libvirt")

    def name(self) -> str:
        return self.label

    def UUIDString(self) -> str:
        return self.uuid

    def isActive(self) -> bool:
        self._up()
        return self.uuid in self.host.active

    def hasManagedSaveImage(self, flags: int = 0) -> bool:  # (no managed save here)
        return False

    def isPersistent(self) -> bool:
        return True

    def create(self) -> None:
        self._up()
        why = self.may_start(self.uuid)
        if why is not None:
            raise sim_error(why)
        try:
            self.host.start(self.uuid)
        except DomainError as exc:
            raise _refused(exc) from None
        self.started(self.uuid)

    def _act(self, action: Callable[[str], None]) -> None:
        self._up()
        try:
            action(self.uuid)
        except DomainError as exc:
            raise _refused(exc) from None

    def destroy(self) -> None:
        self._act(self.host.destroy)

    def shutdown(self) -> None:  # an orderly shutdown that completes at once
        self._act(self.host.destroy)

    def suspend(self) -> None:
        self._act(self.host.suspend)

    def undefine(self) -> None:
        self._act(self.host.undefine)

    def undefineFlags(self, flags: int = 0) -> None:
        """The fake has no managed save images: any flags undefine as plain."""
        self.undefine()


@dataclass
class FakeLibvirt:
    """A :class:`FakeHost` behind the agent's ``Domains`` port (``agents.ports``): what
    the real ``IntentWorker`` needs of the host's libvirt. ``describe(uuid, state)`` makes
    the guest record of a defined domain (the simulator knows its disks); a domain is
    defined from XML by its ``<uuid>``, the XML first told to ``learn``."""

    host: FakeHost
    learn: Callable[[str], None]
    describe: Callable[[str, str], GuestRecord]
    label: Callable[[str], str]
    may_start: Callable[[str], str | None]
    started: Callable[[str], None]

    def _dom(self, uuid: str) -> FakeDomain:
        return FakeDomain(self.host, uuid, self.label(uuid), self.may_start, self.started)

    def domain(self, uuid: str) -> FakeDomain | None:
        self.connection()
        return self._dom(uuid) if uuid in self.host.defined else None

    def active(self) -> set[str]:
        self.connection()
        return set(self.host.active)

    def guest(self, uuid: str, host: str) -> GuestRecord | None:
        self.connection()
        if uuid not in self.host.defined:
            return None
        return self.describe(uuid, self.host.state(uuid))

    def define(self, xml: str) -> FakeDomain:
        self.connection()
        uuid = ElementTree.fromstring(xml).findtext("uuid")
        if not uuid:
            raise sim_error("sim: domain XML without a <uuid>")
        self.learn(xml)
        self.host.define(uuid)
        return self._dom(uuid)

    def inactive_xml(self, dom: FakeDomain) -> str:
        return domain_xml(dom.uuid, dom.label)

    def wait_stopped(self, dom: FakeDomain, timeout: float) -> bool:
        return not dom.isActive()

    def connection(self) -> FakeHost:
        """Stands in for the open connection; libvirtError while libvirtd is down."""
        if not self.host.daemon_up:
            raise sim_error("sim: not connected to libvirt")
        return self.host


def domain_xml(uuid: str, name: str) -> str:
    """The minimal definition the fake host needs (what ``domains/<uuid>`` carries)."""
    return f"<domain type='sim'><name>{name}</name><uuid>{uuid}</uuid></domain>"
