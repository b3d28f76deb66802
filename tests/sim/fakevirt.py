"""A fake libvirt host for the simulator: one host's domains, pure python, no libvirt.

Domains are defined (known to the host) and, when active, ``running`` or ``paused``.
Every change is told to the listeners as a lifecycle event ``(uuid, event, detail)``
with libvirt's names (``started``/``booted``, ``suspended``/``paused``,
``stopped``/``destroyed`` or ``crashed``). :meth:`FakeHost.power_off` is a power loss:
every active domain is gone at once, and no event is sent (nobody is left to send it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
