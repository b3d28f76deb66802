"""The registry's key layout under a configurable prefix (default ``/gridtool/v1/``).

Per-host subtrees (``guests/<host>/``, ``intents/<host>/``) let etcd's prefix-based
roles give each host's credentials write access to its own keys only.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/gridtool/v1/"


@dataclass(frozen=True)
class Keys:
    """Builds registry keys under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ValueError(f"registry prefix must start and end with '/': {self.prefix!r}")

    @property
    def hosts(self) -> str:
        return f"{self.prefix}hosts/"

    def host(self, name: str) -> str:
        return f"{self.hosts}{name}"

    @property
    def guests(self) -> str:
        return f"{self.prefix}guests/"

    def host_guests(self, host: str) -> str:
        return f"{self.guests}{host}/"

    def guest(self, host: str, uuid: str) -> str:
        return f"{self.host_guests(host)}{uuid}"

    @property
    def guest_index(self) -> str:
        return f"{self.prefix}guestindex/"

    def guest_lookup(self, term: str) -> str:
        """The index entries of the guests named ``term`` or with uuid ``term``:
        ``<term>/<host>/<uuid>``, empty, written with the guest record (``guest show``
        reads one guest without scanning the fleet)."""
        return f"{self.guest_index}{term}/"

    @property
    def fences(self) -> str:
        return f"{self.prefix}fences/"

    def fence(self, volume: str) -> str:
        return f"{self.fences}{volume}"

    @property
    def holders(self) -> str:
        return f"{self.prefix}holders/"

    def holder(self, uuid: str) -> str:
        """The host that last took ``uuid``'s HA fence: written with the fence, in the
        same transaction, but with no lease, so it outlives the fence when its host dies
        (``fencing.shell.plan_ops``; read by the HA manager, ``ha.rules.round_holders``)."""
        return f"{self.holders}{uuid}"

    @property
    def all_intents(self) -> str:
        return f"{self.prefix}intents/"

    def intents(self, host: str) -> str:
        return f"{self.all_intents}{host}/"

    def intent(self, host: str, intent_id: str) -> str:
        return f"{self.intents(host)}{intent_id}"

    @property
    def intents_done(self) -> str:
        """Collected intents, kept a while under a lease for ``gridtool intent list``."""
        return f"{self.prefix}intents-done/"

    def intent_done(self, host: str, intent_id: str) -> str:
        return f"{self.intents_done}{host}/{intent_id}"

    @property
    def settings(self) -> str:
        return f"{self.prefix}settings/"

    def guest_settings(self, uuid: str) -> str:
        return f"{self.settings}{uuid}"

    @property
    def domains(self) -> str:
        return f"{self.prefix}domains/"

    def domain(self, uuid: str) -> str:
        return f"{self.domains}{uuid}"

    @property
    def violations(self) -> str:
        return f"{self.prefix}violations/"

    def violation(self, host: str, uuid: str) -> str:
        return f"{self.violations}{host}/{uuid}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead/"

    def dead_host(self, host: str) -> str:
        return f"{self.dead}{host}"

    @property
    def machines(self) -> str:
        return f"{self.prefix}machines/"

    def machine(self, host: str) -> str:
        """Which machine the host name belongs to (no lease: it outlives the agent)."""
        return f"{self.machines}{host}"

    @property
    def hostconfs(self) -> str:
        return f"{self.prefix}hostconf/"

    def hostconf(self, host: str) -> str:
        """An operator's settings of a host (draining), apart from what its agent reports."""
        return f"{self.hostconfs}{host}"

    @property
    def fence_agents(self) -> str:
        return f"{self.prefix}fenceagents/"

    def fence_agent(self, host: str) -> str:
        """The power fence agent of a host and its parameters (no secrets, only paths)."""
        return f"{self.fence_agents}{host}"

    @property
    def templates(self) -> str:
        return f"{self.prefix}templates/"

    def template(self, name: str) -> str:
        return f"{self.templates}{name}"

    @property
    def clones(self) -> str:
        return f"{self.prefix}clones/"

    def template_clones(self, template: str) -> str:
        return f"{self.clones}{template}/"

    def clone(self, template: str, uuid: str) -> str:
        """One clone of a template: {uuid, name, template, host, pool, overlays}."""
        return f"{self.template_clones(template)}{uuid}"

    @property
    def pools(self) -> str:
        return f"{self.prefix}pools/"

    def pool(self, name: str) -> str:
        """The pool's spec (template, min, max, desired, policy)."""
        return f"{self.pools}{name}/spec"

    def pool_members(self, name: str) -> str:
        return f"{self.pools}{name}/members/"

    def pool_member(self, name: str, uuid: str) -> str:
        """One clone of the pool: {host, name, template, created_at}."""
        return f"{self.pool_members(name)}{uuid}"

    def pool_samples(self, name: str) -> str:
        return f"{self.pools}{name}/samples/"

    def pool_sample(self, name: str, sample_id: str) -> str:
        """One load report (arrivals, completions, busy seconds, queue depth)."""
        return f"{self.pool_samples(name)}{sample_id}"

    def pool_feed(self, name: str) -> str:
        """The queue feeder's heartbeat (broker, queue, last good reading, last error)."""
        return f"{self.pools}{name}/feed"

    def pool_status(self, name: str) -> str:
        """What the manager last did with the pool (size, flex state and decision)."""
        return f"{self.pools}{name}/status"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}heartbeats/"

    def heartbeat(self, host: str) -> str:
        """The agent's heartbeat: rewritten every second under the host's lease; the
        manager suspects a host whose heartbeat stops changing (where a fence allows)."""
        return f"{self.heartbeats}{host}"

    @property
    def manager(self) -> str:
        return f"{self.prefix}manager/"

    @property
    def manager_leader(self) -> str:
        return f"{self.manager}leader"

    @property
    def manager_status(self) -> str:
        return f"{self.manager}status"

    @property
    def host_fences(self) -> str:
        return f"{self.manager}fenced/"

    def host_fence(self, host: str) -> str:
        """What the manager did to fence a lost host (no lease: a new leader reads it)."""
        return f"{self.host_fences}{host}"


def validate_name(kind: str, name: str) -> str:
    """Host and pool names become key segments: refuse '/', blanks and control chars."""
    if not name or "/" in name or any(c.isspace() or ord(c) < 32 for c in name):
        raise ValueError(f"invalid {kind} name {name!r}: no '/', spaces or control characters")
    return name
