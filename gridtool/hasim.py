"""A deterministic fleet simulator for the fencing protocol and the HA manager (tests).

In the style of pve-ha-manager's regression tests: a simulated clock in whole seconds, a
simulated etcd (leases, fence keys with revisions, host records, intents, the manager's
election key), simulated hosts (power, network, agent, watchdog, running domains) and a
command list. The agents and the manager call the real pure core: :class:`LeaseClock`,
:func:`plan_acquire`, :func:`plan_release`, :func:`judge_running`, :func:`judge_stopped`
and :func:`hadecide.decide`. Every event is one log line ``<t> <source>: <message>``.

After every command and every tick the simulator asserts the invariant "no fenced guest
runs on two hosts" (also per shared volume) and raises :class:`SimulationError` if not.

One tick, at time ``t``: (1) etcd expires leases with ``expires_at <= t`` and deletes
their keys; (2) each powered host, by name: the watchdog resets it if not petted for
``watchdog`` seconds, then its agent (unless hung) sends keepalives, judges its lease,
self-fences, pets the watchdog and, when it reaches etcd, carries out intents and checks
its guests; (3) every ``manager_interval`` seconds the elected manager decides;
(4) the invariant.

Commands (one a line, ``#`` starts a comment): ``advance N``, ``power-off H``,
``power-on H``, ``partition H``, ``heal H``, ``agent-hang H``, ``agent-resume H``,
``watchdog-off H``, ``crash GUEST``, ``confirm-dead H``, ``lease-expire H`` (advance until
H's lease is gone from etcd), ``leader-change`` (etcd leader change: every lease is
extended to ``t + ttl + leader_extend``, as etcd's lessor does on promotion).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridtool.fencing import (
    AcquirePlan,
    Act,
    Expect,
    Fence,
    FenceKind,
    GuestRef,
    IntruderPolicy,
    LeaseClock,
    LeaseState,
    Observation,
    Observed,
    Refusal,
    ReleasePlan,
    judge_running,
    judge_stopped,
    plan_acquire,
    plan_release,
)
from gridtool.hadecide import (
    Attempt,
    Blocked,
    GuestKind,
    GuestView,
    MarkError,
    Pending,
    ReleaseFences,
    Restart,
    RestartLimits,
    Snapshot,
    decide,
)
from gridtool.placement import HostView


class SimulationError(AssertionError):
    """The invariant broke (a fenced guest on two hosts) or a command was invalid."""


@dataclass(frozen=True)
class SimConfig:
    """Timing and policy of one simulation."""

    ttl: float = 15.0
    margin: float | None = None  # None: fencing.default_margin(ttl)
    watchdog: float = 5.0  # host watchdog timeout, seconds
    manager_interval: int = 5
    boot_seconds: int = 0  # from taking the fences to the guest record saying running
    leader_extend: float = 1.0
    limits: RestartLimits = field(default_factory=RestartLimits)
    policy: IntruderPolicy = IntruderPolicy.PAUSE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimConfig:
        data = dict(data)
        limits = RestartLimits(**data.pop("limits", {}))
        policy = IntruderPolicy(data.pop("policy", "pause"))
        return cls(limits=limits, policy=policy, **data)


@dataclass(frozen=True)
class GuestSpec:
    """What does not change about a guest."""

    uuid: str
    name: str
    memory_mib: int
    kind: GuestKind
    volumes: tuple[str, ...]
    desired: str = "running"

    @property
    def fenced(self) -> bool:
        return self.kind is not GuestKind.NONE and bool(self.volumes)

    def ref(self) -> GuestRef:
        return GuestRef(self.uuid, self.name, FenceKind(self.kind.value), self.volumes)


@dataclass
class Lease:
    id: int
    host: str
    expires_at: float


@dataclass
class FenceKey:
    fence: Fence
    mod_revision: int
    lease: int | None


@dataclass
class GuestRecord:
    host: str | None
    state: str


@dataclass
class Intent:
    host: str
    since: int
    started_at: int | None = None


@dataclass
class Etcd:
    """The simulated registry; its clock is the simulation's."""

    ttl: float
    revision: int = 0
    next_lease: int = 1
    leases: dict[int, Lease] = field(default_factory=dict)
    fences: dict[str, FenceKey] = field(default_factory=dict)
    hosts: dict[str, tuple[int, int]] = field(default_factory=dict)  # host: (lease, free)
    guests: dict[str, GuestRecord] = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)
    history: dict[str, list[Attempt]] = field(default_factory=dict)
    confirmed_dead: set[str] = field(default_factory=set)
    leader: tuple[str, int] | None = None  # (host, lease)

    def grant(self, host: str, now: float) -> int:
        lease = Lease(self.next_lease, host, now + self.ttl)
        self.leases[lease.id] = lease
        self.next_lease += 1
        return lease.id

    def keepalive(self, lease_id: int, now: float) -> float:
        """The TTL in the reply: -1 when the lease is gone."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return -1
        lease.expires_at = now + self.ttl
        return self.ttl

    def expire(self, now: float) -> list[tuple[str, list[str]]]:
        """Expire due leases; return (host, deleted keys) per expired lease."""
        gone = []
        for lease in sorted(self.leases.values(), key=lambda x: x.id):
            if now >= lease.expires_at:
                del self.leases[lease.id]
                gone.append((lease.host, self._drop(lease.id)))
        return gone

    def _drop(self, lease_id: int) -> list[str]:
        deleted = [f"host {h}" for h, (lid, _) in self.hosts.items() if lid == lease_id]
        self.hosts = {h: v for h, v in self.hosts.items() if v[0] != lease_id}
        vols = sorted(v for v, k in self.fences.items() if k.lease == lease_id)
        deleted += [f"fence {v}" for v in vols]
        for v in vols:
            del self.fences[v]
        if self.leader and self.leader[1] == lease_id:
            self.leader = None
            deleted.append("leader key")
        return deleted

    def observe(self, volumes: Iterable[str]) -> dict[str, Observation]:
        return {v: self.observed(v) for v in volumes}

    def observed(self, volume: str) -> Observation:
        key = self.fences.get(volume)
        return None if key is None else Observed(key.fence, key.mod_revision)

    def acquire(self, plan: AcquirePlan, lease: int | None) -> bool:
        """One transaction: every compare, then every put (or nothing)."""
        for step in plan.steps:
            key = self.fences.get(step.volume)
            ok = key is None if step.expect is Expect.ABSENT else (
                key is not None and key.mod_revision == step.mod_revision)
            if not ok:
                return False
        self.revision += 1
        for step in plan.steps:
            self.fences[step.volume] = FenceKey(
                step.fence, self.revision, lease if step.with_lease else None)
        return True

    def release(self, plan: ReleasePlan) -> bool:
        """One transaction: compare every mod_revision, then delete every key."""
        if any(self.fences.get(s.volume) is None
               or self.fences[s.volume].mod_revision != s.mod_revision for s in plan.steps):
            return False
        self.revision += 1
        for s in plan.steps:
            del self.fences[s.volume]
        return True


@dataclass
class Host:
    """A simulated hypervisor host and its agent's memory."""

    name: str
    memory_mib: int
    powered: bool = True
    draining: bool = False
    connected: bool = True
    hung: bool = False
    watchdog: bool = True
    clock: LeaseClock | None = None
    lease: int | None = None
    lease_state: LeaseState | None = None
    last_pet: float = 0.0
    domains: dict[str, str] = field(default_factory=dict)  # uuid: running | paused
    down: dict[str, str] = field(default_factory=dict)  # uuid: state to record (shutoff...)

    @property
    def reaches_etcd(self) -> bool:
        return self.powered and self.connected and not self.hung


class Simulator:
    """Runs one scenario: ``Simulator(initial).run(cmds)`` returns the log lines."""

    def __init__(self, initial: Mapping[str, Any]) -> None:
        self.cfg = SimConfig.from_dict(initial.get("config", {}))
        self.t = 0
        self.log: list[str] = []
        self.etcd = Etcd(self.cfg.ttl)
        self.hosts = {h["name"]: Host(h["name"], h["memory_mib"], h.get("powered", True),
                                      h.get("draining", False)) for h in initial["hosts"]}
        self.specs = {s.uuid: s for s in map(_spec, initial["guests"])}
        self.blocked: dict[str, str] = {}  # the leader's memory of logged Blocked reasons
        self._check_watchdog()
        self._setup(initial["guests"])

    # ------------------------------------------------------------------ running

    def run(self, cmds: Iterable[str]) -> list[str]:
        """Apply every command; return the log."""
        for raw in cmds:
            line = raw.split("#", 1)[0].strip()
            if line:
                self.command(line)
        return self.log

    def command(self, line: str) -> None:
        """Apply one command line."""
        verb, *args = line.split()
        handler = getattr(self, "_cmd_" + verb.replace("-", "_"), None)
        if handler is None or len(args) != (0 if verb == "leader-change" else 1):
            raise SimulationError(f"bad command {line!r}")
        if verb not in ("advance", "lease-expire"):
            self.emit("cmd", line)
        handler(*args)
        self.check_invariant()

    def tick(self) -> None:
        """Advance the clock by one second and run everything due."""
        self.t += 1
        for host, deleted in self.etcd.expire(self.t):
            self.emit("etcd", f"lease of {host} expired; deleted {', '.join(deleted)}")
        for host in sorted(self.hosts.values(), key=lambda h: h.name):
            self._host_step(host)
        if self.t % self.cfg.manager_interval == 0:
            self._manager_step()
        self.check_invariant()

    def emit(self, source: str, message: str) -> None:
        self.log.append(f"{self.t} {source}: {message}")

    def check_invariant(self) -> None:
        """No fenced guest, and no shared volume, in use on two powered hosts."""
        users: dict[str, set[str]] = {}
        for host in self.hosts.values():
            for uuid in host.domains if host.powered else ():
                spec = self.specs[uuid]
                if spec.fenced:
                    for key in (f"guest {spec.name}", *(f"volume {v}" for v in spec.volumes)):
                        users.setdefault(key, set()).add(host.name)
        for key, hosts in sorted(users.items()):
            if len(hosts) > 1:
                raise SimulationError(
                    f"t={self.t}: {key} in use on {' and '.join(sorted(hosts))}\n"
                    + "\n".join(self.log))

    # ------------------------------------------------------------------ setup

    def _check_watchdog(self) -> None:
        clock = LeaseClock.start(self.cfg.ttl, 0, margin=self.cfg.margin)
        if self.cfg.watchdog > clock.max_watchdog_timeout:
            raise SimulationError(
                f"watchdog {self.cfg.watchdog} s exceeds {clock.max_watchdog_timeout} s")

    def _setup(self, guests: Iterable[Mapping[str, Any]]) -> None:
        self.emit("sim", f"ttl {self.cfg.ttl:g} s, margin {self._clock0().margin:g} s, "
                         f"watchdog {self.cfg.watchdog:g} s")
        for host in sorted(self.hosts.values(), key=lambda h: h.name):
            if host.powered:
                self._register(host)
        for g in sorted(guests, key=lambda g: g["name"]):
            uuid = g.get("uuid", g["name"])
            self.etcd.guests[uuid] = GuestRecord(g.get("host"), g.get("state", "shutoff"))
            if g.get("host") and g.get("state") == "running":
                host = self.hosts[g["host"]]
                if not self._start(host, self.specs[uuid], boot=0):
                    raise SimulationError(f"initial guest {g['name']} could not start")
        for host in self.hosts.values():
            self._report(host)
        self._elect()

    def _clock0(self) -> LeaseClock:
        return LeaseClock.start(self.cfg.ttl, self.t, margin=self.cfg.margin)

    def _register(self, host: Host) -> None:
        host.lease = self.etcd.grant(host.name, self.t)
        host.clock = self._clock0()
        host.lease_state = LeaseState.HEALTHY
        host.last_pet = self.t
        self.etcd.hosts[host.name] = (host.lease, self._free(host))
        self.emit(f"{host.name}/agent", f"registered, lease ttl {self.cfg.ttl:g} s")
        if host.name in self.etcd.confirmed_dead:
            self.etcd.confirmed_dead.discard(host.name)
            self.emit(f"{host.name}/agent", "cleared the confirm-dead mark")

    def _free(self, host: Host) -> int:
        return host.memory_mib - sum(self.specs[u].memory_mib for u in host.domains)

    # ------------------------------------------------------------------ hosts

    def _host_step(self, host: Host) -> None:
        if not host.powered:
            return
        if host.watchdog and self.t - host.last_pet >= self.cfg.watchdog:
            self._power_off(host, f"{host.name}/watchdog",
                            f"not petted for {self.cfg.watchdog:g} s: hardware reset")
            return
        if host.hung or host.clock is None:
            return
        self._keepalive(host)
        self._lease_state(host)
        self._pet(host)
        if host.reaches_etcd and host.clock is not None:
            self._intents(host)
            self._judge(host)
            self._report(host)

    def _keepalive(self, host: Host) -> None:
        assert host.clock is not None and host.lease is not None
        if not host.clock.keepalive_due(self.t):
            return
        host.clock = host.clock.sent(self.t)
        if host.connected:
            host.clock = host.clock.acked(self.t, self.etcd.keepalive(host.lease, self.t))

    def _lease_state(self, host: Host) -> None:
        assert host.clock is not None
        name = f"{host.name}/agent"
        state = host.clock.state(self.t)
        if state is not host.lease_state:
            self.emit(name, {
                LeaseState.HEALTHY: "lease healthy",
                LeaseState.AT_RISK: "lease at risk: keepalive overdue",
                LeaseState.MUST_SELF_FENCE: "lease deadline reached",
            }[state])
            host.lease_state = state
            pinned = self._kind_on(host, GuestKind.PINNED)
            if state is LeaseState.MUST_SELF_FENCE and pinned:
                self.emit(name, f"pinned {self._names(pinned)} left running")
        if state is LeaseState.MUST_SELF_FENCE:
            self._self_fence(host)
        if host.clock.lost and host.connected:
            self.emit(name, "lease gone in etcd; registering anew")
            self._register(host)

    def _self_fence(self, host: Host) -> None:
        ha = self._kind_on(host, GuestKind.HA)
        for uuid in ha:
            del host.domains[uuid]
            host.down[uuid] = "shutoff"
        if ha:
            self.emit(f"{host.name}/agent", f"self-fence: destroyed {self._names(ha)}")

    def _pet(self, host: Host) -> None:
        ha = bool(self._kind_on(host, GuestKind.HA))
        ok = host.clock.watchdog_may_pet(self.t, self.cfg.watchdog, ha) if host.clock else not ha
        if ok:
            host.last_pet = self.t

    def _kind_on(self, host: Host, kind: GuestKind) -> list[str]:
        return sorted((u for u in host.domains if self.specs[u].kind is kind and
                       self.specs[u].fenced), key=lambda u: self.specs[u].name)

    def _names(self, uuids: Iterable[str]) -> str:
        return ", ".join(self.specs[u].name for u in uuids)

    def _report(self, host: Host) -> None:
        """Write the host record (free memory) and the records of guests that went down."""
        if host.lease is None or host.name not in self.etcd.hosts:
            return
        self.etcd.hosts[host.name] = (host.lease, self._free(host))
        for uuid, state in sorted(host.down.items()):
            record = self.etcd.guests[uuid]
            if record.host == host.name and uuid not in host.domains:
                record.state = state
        host.down.clear()

    def _intents(self, host: Host) -> None:
        for uuid, intent in sorted(self.etcd.intents.items()):
            if intent.host != host.name:
                continue
            if intent.started_at is None:
                self._take_intent(host, uuid)
            elif self.t >= intent.started_at + self.cfg.boot_seconds:
                self._finish(host, uuid)

    def _take_intent(self, host: Host, uuid: str) -> None:
        assert host.clock is not None
        if host.clock.state(self.t) is not LeaseState.HEALTHY:
            return  # take no new fence while the lease is in doubt
        spec = self.specs[uuid]
        if self._free(host) < spec.memory_mib:
            self._fail_intent(host, uuid, f"not enough memory for {spec.name}")
        else:
            self.etcd.intents[uuid].started_at = self.t
            if not self._start(host, spec, self.cfg.boot_seconds):
                self.etcd.intents.pop(uuid)

    def _fail_intent(self, host: Host, uuid: str, why: str) -> None:
        self.emit(f"{host.name}/agent", f"intent failed: {why}")
        del self.etcd.intents[uuid]

    def _start(self, host: Host, spec: GuestSpec, boot: int) -> bool:
        """Take every fence in one transaction, then start the domain."""
        name = f"{host.name}/agent"
        taken = ""
        if spec.fenced:
            ref = spec.ref()
            plan = plan_acquire(host.name, ref, self.etcd.observe(ref.volumes), self.t)
            if isinstance(plan, Refusal):
                self.emit(name, f"refused to start {spec.name}: {plan.reason}")
                return False
            if not self.etcd.acquire(plan, host.lease):
                self.emit(name, f"fence transaction for {spec.name} failed")
                return False
            taken = f"took fence {', '.join(ref.volumes)}; "
        host.domains[spec.uuid] = "running"
        self.emit(name, f"{taken}{spec.name} {'booting' if boot else 'running'}")
        if not boot:
            self._finish(host, spec.uuid, quiet=True)
        return True

    def _finish(self, host: Host, uuid: str, quiet: bool = False) -> None:
        self.etcd.intents.pop(uuid, None)
        self.etcd.guests[uuid] = GuestRecord(host.name, "running")
        if not quiet:
            self.emit(f"{host.name}/agent", f"{self.specs[uuid].name} running")

    def _judge(self, host: Host) -> None:
        assert host.clock is not None
        if host.clock.state(self.t) is not LeaseState.HEALTHY:
            return
        for uuid in sorted(host.domains):
            spec = self.specs[uuid]
            if spec.fenced:
                self._judge_running(host, spec)
        held = {k.fence.guest for k in self.etcd.fences.values() if k.fence.holder == host.name}
        for uuid in sorted(held - set(host.domains)):
            self._judge_stopped(host, self.specs[uuid])

    def _judge_running(self, host: Host, spec: GuestSpec) -> None:
        ref = spec.ref()
        verdict = judge_running(host.name, ref, self.etcd.observe(ref.volumes), self.cfg.policy)
        if verdict.violation:
            self.emit(f"{host.name}/agent", verdict.report)
        if verdict.act is Act.ACQUIRE:
            plan = plan_acquire(host.name, ref, self.etcd.observe(ref.volumes), self.t)
            if isinstance(plan, AcquirePlan):
                self.etcd.acquire(plan, host.lease)
        elif verdict.act is Act.PAUSE:
            host.domains[spec.uuid] = "paused"
        elif verdict.act is Act.DESTROY:
            del host.domains[spec.uuid]

    def _judge_stopped(self, host: Host, spec: GuestSpec) -> None:
        ref = spec.ref()
        observed = self.etcd.observe(ref.volumes)
        verdict = judge_stopped(host.name, ref, observed, clean_stop=False)
        if verdict.act is Act.RELEASE and self.etcd.release(
                plan_release(host.name, ref, observed)):
            self.emit(f"{host.name}/agent", f"released fence {', '.join(ref.volumes)} of "
                                            f"{spec.name} (not running here)")

    def _power_off(self, host: Host, source: str, why: str) -> None:
        gone = sorted(host.domains, key=lambda u: self.specs[u].name)
        killed = f"; killed {self._names(gone)}" if gone else ""
        self.emit(source, f"{why}{killed}")
        host.powered = False
        host.domains.clear()
        host.down.clear()
        host.clock = host.lease = host.lease_state = None

    # ------------------------------------------------------------------ manager

    def _elect(self) -> str | None:
        if self.etcd.leader is None:
            for host in sorted(self.hosts.values(), key=lambda h: h.name):
                if host.reaches_etcd and host.name in self.etcd.hosts and host.lease:
                    self.etcd.leader = (host.name, host.lease)
                    self.blocked = {}
                    self.emit("manager", f"{host.name} elected leader")
                    break
        return self.etcd.leader[0] if self.etcd.leader else None

    def _manager_step(self) -> None:
        leader = self._elect()
        if leader is None or not self.hosts[leader].reaches_etcd:
            return
        source = f"manager@{leader}"
        stopped: set[str] = set()
        for action in decide(self._snapshot(), self.cfg.limits):
            if action.guest not in stopped and not self._apply(source, action):
                stopped.add(action.guest)

    def _snapshot(self) -> Snapshot:
        e = self.etcd
        hosts = [HostView(h, self.hosts[h].memory_mib, free, cpus=1,
                          draining=self.hosts[h].draining)
                 for h, (_, free) in sorted(e.hosts.items())]
        guests = [GuestView(u, s.name, e.guests[u].host, e.guests[u].state, s.memory_mib,
                            s.kind, s.volumes, s.desired) for u, s in sorted(self.specs.items())]
        return Snapshot(
            now=self.t, hosts=tuple(hosts), guests=tuple(guests),
            fences={v: e.observed(v) for v in e.fences},
            confirmed_dead=frozenset(e.confirmed_dead),
            history={u: tuple(a) for u, a in e.history.items()},
            pending={u: Pending(u, i.host, i.since) for u, i in e.intents.items()},
        )

    def _apply(self, source: str, action: Any) -> bool:
        """Carry out one action; False stops the guest's later actions."""
        name = action.name
        if isinstance(action, Blocked):
            if self.blocked.get(action.guest) != action.reason:
                self.blocked[action.guest] = action.reason
                self.emit(source, f"leave {name}: {action.reason}")
            return True
        self.blocked.pop(action.guest, None)
        if isinstance(action, ReleaseFences):
            ok = self.etcd.release(action.plan)
            vols = ", ".join(s.volume for s in action.plan.steps)
            self.emit(source, f"released fence {vols} of {name} held by dead {action.host}"
                      if ok else f"release of {name}'s fences failed")
            return ok
        if isinstance(action, MarkError):
            self.etcd.guests[action.guest].state = "error"
            self.emit(source, f"{name} marked error: {action.reason}")
            return True
        assert isinstance(action, Restart)
        self.etcd.intents[action.guest] = Intent(action.on_host, self.t)
        self.etcd.history.setdefault(action.guest, []).append(Attempt(self.t, action.relocated))
        self.emit(source, f"restart {name} on {action.on_host} ({action.reason})")
        return True

    # ------------------------------------------------------------------ commands

    def _host(self, name: str) -> Host:
        if name not in self.hosts:
            raise SimulationError(f"unknown host {name!r}")
        return self.hosts[name]

    def _cmd_advance(self, seconds: str) -> None:
        for _ in range(int(seconds)):
            self.tick()

    def _cmd_power_off(self, name: str) -> None:
        self._power_off(self._host(name), "hw", f"{name} powered off")

    def _cmd_power_on(self, name: str) -> None:
        host = self._host(name)
        host.powered, host.connected, host.hung = True, True, False
        self._register(host)

    def _cmd_partition(self, name: str) -> None:
        self._host(name).connected = False

    def _cmd_heal(self, name: str) -> None:
        self._host(name).connected = True

    def _cmd_agent_hang(self, name: str) -> None:
        self._host(name).hung = True

    def _cmd_agent_resume(self, name: str) -> None:
        self._host(name).hung = False

    def _cmd_watchdog_off(self, name: str) -> None:
        self._host(name).watchdog = False

    def _cmd_crash(self, guest: str) -> None:
        spec = next((s for s in self.specs.values() if s.name == guest), None)
        host = next((h for h in self.hosts.values() if spec and spec.uuid in h.domains), None)
        if spec is None or host is None:
            raise SimulationError(f"guest {guest!r} is not running anywhere")
        del host.domains[spec.uuid]
        host.down[spec.uuid] = "crashed"
        self.emit("hw", f"{guest} crashed on {host.name}")

    def _cmd_confirm_dead(self, name: str) -> None:
        self.etcd.confirmed_dead.add(self._host(name).name)

    def _cmd_lease_expire(self, name: str) -> None:
        lease = self.etcd.hosts.get(self._host(name).name, (None, 0))[0]
        self.emit("cmd", f"lease-expire {name}")
        for _ in range(int(10 * self.cfg.ttl)):
            if lease not in self.etcd.leases:
                return
            self.tick()
        raise SimulationError(f"lease of {name} did not expire")

    def _cmd_leader_change(self) -> None:
        until = self.t + self.cfg.ttl + self.cfg.leader_extend
        for lease in self.etcd.leases.values():
            lease.expires_at = max(lease.expires_at, until)
        self.emit("etcd", f"leader change: every lease extended to {until:g}")


def _spec(raw: Mapping[str, Any]) -> GuestSpec:
    return GuestSpec(raw.get("uuid", raw["name"]), raw["name"], raw["memory_mib"],
                     GuestKind(raw.get("kind", "ha")), tuple(sorted(raw.get("volumes", ()))),
                     raw.get("desired", "running"))
