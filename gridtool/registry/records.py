"""Registry records beyond hosts and guests: intents, guest settings, domain definitions,
fence violations and the manager's status (pure; JSON with ``"v": 1``).

A small typed codec: every field is checked against its annotation on decode, so a
corrupt value is a ``DecodeError`` naming the key, never a crash further on.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from gridtool.registry.model import DecodeError, dump_json, load_json

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")



class IntentAction(StrEnum):
    """What an agent can be asked to do (stored as its plain string)."""

    START = "start"
    STOP = "stop"
    DESTROY = "destroy"
    RESTART = "restart"
    DEFINE = "define"
    UNDEFINE = "undefine"
    REFRESH = "refresh"  # settings changed: judge the guest again
    MIGRATE = "migrate"  # live migration, on the source
    RECEIVE = "receive"  # accept one incoming live migration, on the destination
    TEMPLATE = "template"
    REMOVE_TEMPLATE = "remove_template"
    CLONE = "clone"
    REMOVE_CLONE = "remove_clone"
    SLEEP = "sleep"  # a warm pool worker: managed save or pause (params: mode)
    WAKE = "wake"  # a warm pool worker: restore or resume (params: alive_timeout)

    @classmethod
    def parse(cls, text: str) -> IntentAction | str:
        """The action named ``text``, or ``text`` itself when no agent knows it (a newer
        client's action, a corrupt record): kept so that it can be reported."""
        try:
            return cls(text)
        except ValueError:
            return text


INTENT_ACTIONS = tuple(a.value for a in IntentAction)
INTENT_STATES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class Intent:
    """What a host is asked to do with a guest, and (once done) the outcome."""

    id: str
    host: str
    action: IntentAction | str  # a str only when no agent knows the action
    guest: str  # uuid
    name: str
    created: float
    by: str
    state: str = "pending"
    message: str = ""
    updated: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.action, str) and not isinstance(self.action, IntentAction):
            object.__setattr__(self, "action", IntentAction.parse(self.action))

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


@dataclass(frozen=True)
class GuestSettings:
    """Operator settings of a guest, kept apart from what agents report.

    ``ha``: restart elsewhere when its host dies (fence bound to the host's lease);
    otherwise a fenced guest is pinned. ``desired``: running or stopped (set by
    start/stop, read by the HA manager). ``attempts``: HA restarts as
    ``[epoch, relocated]`` pairs (``[epoch, relocated, 1]`` once its intent failed);
    ``failed_on``: host -> the epoch of the last restart whose intent failed there (the
    next try goes elsewhere at once); ``error``: why the manager gave up.
    """

    uuid: str
    name: str
    ha: bool = False
    desired: str = "running"
    attempts: list[list[float]] = field(default_factory=list)
    error: str = ""
    anti_affinity: str = ""
    failed_on: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainDefinition:
    """A fenced guest's libvirt XML, so another host can define it to take it over."""

    uuid: str
    name: str
    xml: str
    host: str
    updated: float


@dataclass(frozen=True)
class Violation:
    """A fenced guest found running on a host without holding its fence."""

    host: str
    guest: str
    name: str
    volume: str
    holder: str
    action: str
    at: float
    message: str


@dataclass(frozen=True)
class HostClaim:
    """Which machine a host name belongs to: the identity of the agent that last
    registered under it (``machines/<host>``, no lease). See ``registry.identity``."""

    host: str
    machine: str  # the machine identity (/etc/machine-id)
    boot: str  # the boot it was registered in (/proc/sys/kernel/random/boot_id; '' unknown)
    instance: str  # that agent process (random, new at each start)
    at: float  # when (epoch seconds)


@dataclass(frozen=True)
class ManagerStatus:
    """What the leading manager is doing (``gridtool manager status``)."""

    leader: str
    since: float
    heartbeat: float
    actions: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    fences: dict[str, str] = field(default_factory=dict)  # lost host -> its fence, in words


def encode(record: Any) -> bytes:
    """A record as the registry's JSON."""
    return dump_json({f.name: getattr(record, f.name) for f in fields(record)})


def decode(cls: type[R], key: str, raw: bytes | str) -> R:
    """Parse and type-check a record; ``DecodeError`` naming ``key`` on any problem."""
    data = load_json(key, raw)
    hints = _hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            if not _conforms(data[f.name], hints[f.name]):
                raise DecodeError(key, f"field {f.name!r} has the wrong type")
            kwargs[f.name] = data[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            raise DecodeError(key, f"missing field {f.name!r}")
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A record class's resolved field types (resolving them is most of a decode's cost)."""
    return typing.get_type_hints(cls)


def _conforms(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)
