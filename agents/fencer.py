"""The agent's fencing shell: read fence keys, run the pure rule, write ONE transaction.

Every decision is taken by ``gridtool.fencing.rules``; this module only reads what it needs
from etcd and carries the plan out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from gridtool.fencing.rules import (
    AcquirePlan,
    Fence,
    FenceKind,
    GuestRef,
    Observation,
    Observed,
    Refusal,
    plan_acquire,
    plan_handover,
    plan_release,
)
from gridtool.fencing.shell import read_all_fences, read_fences, run_plan
from gridtool.registry.keys import Keys
from gridtool.registry.model import GuestRecord
from gridtool.registry.records import GuestSettings, decode
from gridtool.registry.store import Compare, Store

log = logging.getLogger("gridtool.agent")


class FenceRefused(Exception):
    """The guest's fence is held elsewhere (or unreadable); str() names the holder."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class Fencer:
    """Takes and releases one host's fences; remembers which it holds and of what kind."""

    def __init__(self, store: Store, keys: Keys, host: str, lease: Callable[[], int | None]
                 ) -> None:
        self.store = store
        self.keys = keys
        self.host = host
        self._lease = lease
        self._lock = threading.Lock()
        self.held: dict[str, Fence] = {}  # volume -> fence this host holds
        self.tokens: dict[str, int] = {}  # guest uuid -> fencing token
        # guest uuids whose HA fence is bound to another lease than ours (a lost one)
        self.stale: set[str] = set()

    # -- reading -------------------------------------------------------------

    def kind_of(self, uuid: str) -> FenceKind:
        """HA when the operator set ``guest set --ha on``; pinned otherwise."""
        item = self.store.get(self.keys.guest_settings(uuid))
        if item is None:
            return FenceKind.PINNED
        try:
            settings = decode(GuestSettings, item.key, item.value)
        except ValueError:
            return FenceKind.PINNED
        return FenceKind.HA if settings.ha else FenceKind.PINNED

    def ref(self, guest: GuestRecord, kind: FenceKind | None = None) -> GuestRef:
        """The rule's view of ``guest``: its fence kind (the operator's setting unless
        given), volumes, whether this run of it is marked an intruder, and its shared
        disks that cannot be identified."""
        return GuestRef(guest.uuid, guest.name, kind or self.kind_of(guest.uuid), guest.volumes,
                        intruder=guest.intruder, unidentified=guest.unidentified)

    def observe(self, volumes: Iterable[str]) -> dict[str, Observation]:
        return read_fences(self.store, self.keys, volumes)

    def refresh_held(self) -> dict[str, Fence]:
        """Re-read which fences this host holds (one range read)."""
        observed, leases = read_all_fences(self.store, self.keys)
        held: dict[str, Fence] = {}
        tokens: dict[str, int] = {}
        stale: set[str] = set()
        lease = self._lease()
        for volume, obs in observed.items():
            if isinstance(obs, Observed) and obs.fence.holder == self.host:
                held[volume] = obs.fence
                tokens[obs.fence.guest] = max(tokens.get(obs.fence.guest, 0), obs.mod_revision)
                if obs.fence.kind is FenceKind.HA and leases[volume] != lease:
                    stale.add(obs.fence.guest)
        with self._lock:
            self.held, self.tokens, self.stale = held, tokens, stale
        return held

    def forget_ha(self, guests: Iterable[str] | None = None) -> None:
        """After a self-fence, once libvirt confirmed its HA guests gone (``guests``, by
        uuid; None: every one): their fences expire with the lease; stop counting them (so
        the watchdog may be disarmed)."""
        gone = None if guests is None else set(guests)
        with self._lock:
            self.held = {v: f for v, f in self.held.items() if f.kind is not FenceKind.HA
                         or (gone is not None and f.guest not in gone)}

    def ha_guests(self) -> set[str]:
        """UUIDs of guests this host holds HA fences for (used to self-fence)."""
        return set(self.ha_names())

    def ha_names(self) -> dict[str, str]:
        """uuid -> name of the guests this host holds HA fences for."""
        with self._lock:
            return {f.guest: f.guest_name for f in self.held.values()
                    if f.kind is FenceKind.HA}

    # -- writing -------------------------------------------------------------

    def acquire(self, guest: GuestRef, attempts: int = 5) -> int:
        """Take every fence of ``guest`` in one transaction; return the fencing token.

        Raises FenceRefused when another host holds one. A transaction that loses a
        race is re-planned from a fresh read.
        """
        for _ in range(attempts):
            plan = plan_acquire(self.host, guest, self.observe(guest.volumes), time.time())
            if isinstance(plan, Refusal):
                raise FenceRefused(plan)
            if self._run_acquire(plan):
                token = self._token(guest)
                log.info("event=fence_acquired host=%s guest=%s volumes=%s kind=%s token=%s",
                         self.host, guest.name, ",".join(guest.volumes), guest.kind.value,
                         token)
                return token
        raise FenceRefused(Refusal(guest.uuid, guest.volumes[0], None,
                                   f"fence of {guest.name} keeps changing: try again"))

    def _run_acquire(self, plan: AcquirePlan) -> bool:
        if not run_plan(self.store, self.keys, plan, self._lease()):
            return False
        with self._lock:
            for step in plan.steps:
                self.held[step.volume] = step.fence
            self.stale.discard(plan.guest)
        return True

    def _token(self, guest: GuestRef) -> int:
        tokens = [o.mod_revision for o in self.observe(guest.volumes).values()
                  if isinstance(o, Observed)]
        token = max(tokens, default=0)
        with self._lock:
            self.tokens[guest.uuid] = token
        return token

    def handover(self, guest: GuestRef, target: str, attempts: int = 5) -> int:
        """Pass every fence this host holds for ``guest`` to ``target`` (cold migration)
        in ONE transaction, instead of releasing it; return the new fencing token.

        Each key's mod_revision is compared (``plan_handover``), and so is the create
        revision of ``target``'s host record: HA fences are put with the lease that record
        lives under, so they die with ``target`` as if it had taken them itself. Returns 0
        when this host holds none of them (nothing to hand over). Raises FenceRefused when
        a fence is held by someone else or ``target`` has no live host record.
        """
        for _ in range(attempts):
            observed = self.observe(guest.volumes)
            if not any(isinstance(o, Observed) and o.fence.holder == self.host
                       and o.fence.guest == guest.uuid for o in observed.values()):
                return 0
            plan = plan_handover(self.host, target, guest, observed, time.time())
            if isinstance(plan, Refusal):
                raise FenceRefused(plan)
            host_key = self.keys.host(target)
            host = self.store.get(host_key)
            if host is None or (guest.kind is FenceKind.HA and not host.lease):
                raise FenceRefused(Refusal(guest.uuid, guest.volumes[0], None,
                                           f"{target} has no live host record: cannot hand "
                                           f"the fences of {guest.name} to it"))
            guard = [Compare(host_key, "create", host.create_revision)]
            if not run_plan(self.store, self.keys, plan, host.lease, guard):
                continue  # a fence or the target's record changed: read again
            with self._lock:
                for step in plan.steps:
                    self.held.pop(step.volume, None)
                self.tokens.pop(guest.uuid, None)
            token = max((o.mod_revision for o in self.observe(guest.volumes).values()
                         if isinstance(o, Observed)), default=0)
            log.info("event=fence_handed_over host=%s to=%s guest=%s volumes=%s kind=%s "
                     "token=%s", self.host, target, guest.name,
                     ",".join(s.volume for s in plan.steps), guest.kind.value, token)
            return token
        raise FenceRefused(Refusal(guest.uuid, guest.volumes[0], None,
                                   f"fence of {guest.name} keeps changing: try again"))

    def release(self, guest: GuestRef) -> list[str]:
        """Delete the fences this host holds for ``guest`` (compare-and-delete, one txn)."""
        plan = plan_release(self.host, guest, self.observe(guest.volumes))
        if plan.empty:
            return []
        ok = run_plan(self.store, self.keys, plan)
        with self._lock:
            for step in plan.steps:
                self.held.pop(step.volume, None)
            self.tokens.pop(guest.uuid, None)
        if ok:
            log.info("event=fence_released host=%s guest=%s volumes=%s", self.host, guest.name,
                     ",".join(s.volume for s in plan.steps))
        return [s.volume for s in plan.steps] if ok else []
