"""What the agent's helpers (intent worker, hook server, live migration) need of the rest
of the agent, as narrow protocols: each helper is built from a store, these and a
libvirt-like connection, never from the whole ``Agent``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

import libvirt

from gridtool.fencing.rules import (
    EXPECT_S,
    Fence,
    FenceKind,
    GuestRef,
    LeaseClock,
    Observation,
)
from gridtool.registry.model import GuestRecord


class IntentFailed(Exception):
    """The intent cannot be carried out; str() is the one-line reason."""


class Domains(Protocol):
    """The host's libvirt, as ``agents.libvirt_source.LibvirtSource`` offers it."""

    def domain(self, uuid: str) -> libvirt.virDomain | None: ...

    def guest(self, uuid: str, host: str) -> GuestRecord | None: ...

    def define(self, xml: str) -> libvirt.virDomain: ...

    def inactive_xml(self, dom: libvirt.virDomain) -> str: ...

    def wait_stopped(self, dom: libvirt.virDomain, timeout: float) -> bool: ...

    def connection(self) -> libvirt.virConnect: ...

    def listening(self, uuid: str, heard: Callable[[int], None]
                  ) -> AbstractContextManager[None]: ...


class LeaseView(Protocol):
    """The host's lease (``agents.lease.HostLease``): its id and clock, whether it is
    ``lost`` (the agent registers anew), arming before HA work, and whether an HA guest
    may start now."""

    lease: int | None
    lost: threading.Event
    clock: LeaseClock | None
    keepalive_rtt: float

    def arm(self) -> bool: ...

    def why_not_start(self, budget: float = ...) -> str: ...

    def creating(self, guest: str) -> AbstractContextManager[None]: ...

    @property
    def watchdog_problem(self) -> str: ...


class FenceView(Protocol):
    """What the fence hook reads of the host's fencer: the fences it holds, fresh reads."""

    held: dict[str, Fence]

    def observe(self, volumes: Iterable[str]) -> dict[str, Observation]: ...


class FenceHolder(FenceView, Protocol):
    """The host's fencer (``agents.fencer.Fencer``) as intents and live migration use it."""

    def ref(self, guest: GuestRecord, kind: FenceKind | None = None) -> GuestRef: ...

    def acquire(self, guest: GuestRef, attempts: int = 5) -> int: ...

    def handover(self, guest: GuestRef, target: str, attempts: int = 5) -> int: ...

    def release(self, guest: GuestRef) -> list[str]: ...

    def refresh_held(self) -> dict[str, Fence]: ...


class Receiver(Protocol):
    """The fence hook's side of a ``receive`` intent (``agents.hooksock.HookServer``)."""

    def expect(self, uuid: str, source: str, guest: GuestRef | None = None,
               within: float = EXPECT_S) -> None: ...
