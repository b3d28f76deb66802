"""A deterministic fleet simulator that runs the shipped manager and fencing code (tests).

In the style of pve-ha-manager's regression tests: a simulated clock in whole seconds and
a command list, every event one log line ``<t> <source>: <message>``. What runs is the
product: the registry is :class:`gridtool.registry.memstore.MemStore` on the simulated clock (its
leases expire when the clock passes their TTL); every host runs a real
:class:`gridtool.ha.manager.Manager` candidate (election, ``hadecide.decide``, its guarded
transactions, its :class:`gridtool.pools.keeper.PoolKeeper` rounds inline) and its agent
takes and releases fences with the real :class:`agents.fencer.Fencer` and carries out its
intents with the real :class:`agents.intents.IntentWorker` (its handler table, the real
:class:`agents.claims.GuestClaims`, on the simulated clock), driven without its thread
(:meth:`IntentWorker.handle` per queued intent) on the fake libvirt host
(:mod:`tests.sim.fakevirt`, behind the agent's ``Domains`` port). Its lease is the real
:class:`agents.lease.HostLease` on the simulated clock (``keepalive_step``/``guard_step``
each tick: keepalives; from the deadline on the real ``SelfFence`` on the fake
libvirt; the watchdog through :class:`SimWatchdog`). What is still simulated
(:class:`SimAgent`) is the agent's main loop: registering, reporting, and judging with
the real pure rules (``judge_running``/``judge_stopped``) instead of ``Agent.judge``.

After every command and every tick the simulator asserts the invariant "no fenced guest
runs on two powered hosts" (also per shared volume) and raises :class:`SimulationError`.

One tick, at time ``t``: (1) etcd expires due leases (unless etcd is down); (2) each
powered host, by name: the watchdog resets it if armed and not petted for ``watchdog``
seconds, then its agent (unless hung or crashed) sends keepalives, judges its lease,
self-fences, pets the watchdog and, when it reaches etcd, carries out intents, judges
its guests and reports; (3) every ``manager_interval`` seconds every manager candidate,
by host name, takes one :meth:`Manager.step`; (4) the invariant.

Commands (one a line, ``#`` starts a comment): ``advance N``, ``power-off H``,
``power-on H``, ``partition H``, ``heal H``, ``agent-hang H``, ``agent-resume H``,
``agent-crash H`` (agent and its manager die, guests keep running), ``agent-start H``
(a new agent process: resumes its predecessor's lease if it is still alive),
``manager-crash H``, ``watchdog-off H``, ``crash GUEST``, ``confirm-dead H``,
``set-ha GUEST on|off``, ``intent H ACTION GUEST`` (the operator's intent for H's agent),
``pool-size POOL N``, ``libvirtd-stop H`` / ``libvirtd-start H`` (libvirtd restarting: guests run on
untouched, the agent cannot reach them), ``refuse-starts H`` / ``allow-starts H`` (H's
libvirt fails every domain start, as a broken disk path or a full host would),
``lease-expire H`` (advance until H's lease is gone),
``slow-create H N`` (H's next domain start blocks N seconds, and H loses etcd as it
begins: the clock runs on meanwhile, H's intents wait; a start in flight at the deadline),
``leader-change`` (a new etcd leader extends every lease by TTL + ``leader_extend``),
``etcd-down`` / ``etcd-up`` (quorum lost: nobody reaches etcd and no lease expires;
back: a new leader extends every lease).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any
from xml.etree import ElementTree

from agents.claims import GuestClaims
from agents.fencer import Fencer, FenceRefused
from agents.intents import IntentWorker
from agents.lease import HostLease
from agents.selffence import SelfFence
from gridtool.clock import Clock
from gridtool.clone import templates
from gridtool.config import Config
from gridtool.errors import RegistryUnavailable
from gridtool.fencing.power import Outcome
from gridtool.fencing.rules import (
    Act,
    IntruderPolicy,
    LeaseClock,
    LeaseState,
    judge_running,
    judge_stopped,
)
from gridtool.ha.manager import Manager
from gridtool.ha.rules import GuestKind, RestartLimits
from gridtool.pools import shell as pools
from gridtool.registry import fenceagents, hostconf, settings
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import (
    DomainDefinition,
    GuestSettings,
    Intent,
    IntentAction,
    decode,
    encode,
)
from gridtool.registry.store import Event
from tests.sim.fakevirt import FakeHost, FakeLibvirt, domain_xml

#: Intents whose submitter (the pool keeper) waits for the outcome.
WAITED_ACTIONS = frozenset({IntentAction.CLONE, IntentAction.REMOVE_CLONE})
#: Intents whose outcome is the start line the fake libvirt logs.
SILENT_DONE = frozenset({IntentAction.START, IntentAction.CLONE})
#: Real seconds the pool keeper waits for such an intent (see ``_intent_put``).
POOL_ACTION_TIMEOUT = 0.2


class SimulationError(AssertionError):
    """The invariant broke (a fenced guest on two hosts) or a command was invalid."""


@dataclass(frozen=True)
class SimConfig:
    """Timing and policy of one simulation."""

    ttl: int = 15
    watchdog: float = 5.0  # host watchdog timeout, seconds
    manager_interval: int = 5
    leader_extend: float = 1.0
    limits: RestartLimits = field(default_factory=RestartLimits)
    policy: IntruderPolicy = IntruderPolicy.PAUSE
    destroy_fails: int = 0  # the self-fence's destroys fail this often (a fault point)
    #: every host has a (simulated) power fence agent; false: the manager's timed path
    power_fence: bool = True

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

    def record(self, host: str, state: str, now: float) -> GuestRecord:
        disks = tuple(Disk(f"vd{chr(97 + i)}", f"/dev/etherd/{v}", "block", shared=True,
                           volume=v) for i, v in enumerate(self.volumes))
        return GuestRecord(self.uuid, self.name, host, state, 1, self.memory_mib, now, disks)


class Link:
    """A host's connection to the registry: the store's calls, or RegistryUnavailable."""

    def __init__(self, store: MemStore, up: Callable[[], bool]) -> None:
        self._store = store
        self._up = up

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._up():
                raise RegistryUnavailable("sim: etcd unreachable from this host")
            return attr(*args, **kwargs)

        return call


@dataclass
class SimWatchdog:
    """The host's watchdog as ``agents.lease.HostLease`` tends it: a pet arms it and
    notes the time, the magic close disarms it; the simulator resets an armed host that
    went unpetted for ``timeout`` seconds (unless ``watchdog-off``)."""

    host: Host
    now: Callable[[], float]
    timeout: float
    working: bool = True

    def pet(self) -> bool:
        self.host.armed, self.host.last_pet = True, self.now()
        return True

    def inherit(self) -> None:
        """Its state is the host's: a resumed lease changes nothing."""

    def close(self) -> None:
        self.host.armed = False

    def abandon(self) -> None:
        """A process that dies leaves it as it was."""


@dataclass
class SimAgent:
    """The agent process of one host: a real Fencer over the host's link, the real
    HostLease (keepalives, self-fence, watchdog) and IntentWorker on the fake libvirt
    (both set right after), judging with the real rules."""

    fencer: Fencer
    virt: FakeLibvirt | None = None
    worker: IntentWorker | None = None
    guard: HostLease | None = None
    selffence: SelfFence | None = None
    lease_state: LeaseState | None = None
    reported: dict[str, GuestRecord] = field(default_factory=dict)
    free_reported: int | None = None
    libvirt_up: bool = True
    handling: bool = False  # its intent worker is running (not re-entered from a watch)

    @property
    def lease(self) -> HostLease:
        assert self.guard is not None
        return self.guard


@dataclass
class Host:
    """A simulated hypervisor host: power, network, watchdog, its agent and manager."""

    name: str
    memory_mib: int
    virt: FakeHost
    powered: bool = True
    connected: bool = True
    hung: bool = False
    refuse_starts: bool = False  # its libvirt fails every domain start
    watchdog: bool = True
    armed: bool = False  # the agent arms the watchdog while HA guests run here
    last_pet: float = 0.0
    agent: SimAgent | None = None
    manager: Manager | None = None
    events: _AgentEvents | None = None  # while its intent worker runs


class Simulator:
    """Runs one scenario: ``Simulator(initial).run(cmds)`` returns the log lines."""

    def __init__(self, initial: Mapping[str, Any]) -> None:
        self.cfg = SimConfig.from_dict(initial.get("config", {}))
        self.t = 0
        self.log: list[str] = []
        self.etcd_up = True
        self.store = MemStore(self._now)
        self.conf = Config(ttl=self.cfg.ttl)
        self.keys = self.conf.keys
        self.sim_clock = Clock(wall=self._now, monotonic=self._now)
        self.owners: dict[int, str] = {}  # lease id -> "h1" (agent) or "manager h1"
        self.hosts = {h["name"]: Host(h["name"], h["memory_mib"], FakeHost(h["name"]),
                                      h.get("powered", True)) for h in initial["hosts"]}
        self.specs = {s.uuid: s for s in map(_spec, initial["guests"])}
        self.slow_creates: dict[str, int] = {}  # host -> seconds its next start blocks
        self._check_watchdog()
        self._setup(initial)

    def _now(self) -> float:
        return float(self.t)

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
        arity = {"leader-change": 0, "etcd-down": 0, "etcd-up": 0, "set-ha": 2,
                 "intent": 3, "pool-size": 2, "slow-create": 2}.get(verb, 1)
        if handler is None or len(args) != arity:
            raise SimulationError(f"bad command {line!r}")
        if verb not in ("advance", "lease-expire"):
            self.emit("cmd", line)
        handler(*args)
        self.check_invariant()

    def tick(self) -> None:
        """Advance the clock by one second and run everything due."""
        self.t += 1
        if self.etcd_up:
            for gone in self.store.expire():
                if gone.keys:
                    self.emit("etcd", f"lease of {self.owners.get(gone.lease, '?')} expired; "
                                      f"deleted {self._labels(gone.keys)}")
        for host in self._by_name():
            self._host_step(host)
        if self.t % self.cfg.manager_interval == 0:
            self._managers_step()
        self.check_invariant()

    def emit(self, source: str, message: str) -> None:
        self.log.append(f"{self.t} {source}: {message}")

    def check_invariant(self) -> None:
        """No fenced guest, and no shared volume, in use on two powered hosts."""
        users: dict[str, set[str]] = {}
        for host in self.hosts.values():
            for uuid in host.virt.active if host.powered else ():
                spec = self.specs[uuid]
                if spec.fenced:
                    for key in (f"guest {spec.name}", *(f"volume {v}" for v in spec.volumes)):
                        users.setdefault(key, set()).add(host.name)
        for key, hosts in sorted(users.items()):
            if len(hosts) > 1:
                raise SimulationError(
                    f"t={self.t}: {key} in use on {' and '.join(sorted(hosts))}\n"
                    + "\n".join(self.log))

    def _by_name(self) -> list[Host]:
        return sorted(self.hosts.values(), key=lambda h: h.name)

    def _labels(self, keys: Iterable[str]) -> str:
        """Deleted keys as the log names them: hosts, fences, the election, the rest."""
        named = {self.keys.manager_leader: (2, "leader key"),
                 self.keys.manager_status: (3, "manager status")}
        for key in keys:
            for rank, (prefix, label) in enumerate(((self.keys.hosts, "host "),
                                                     (self.keys.fences, "fence "))):
                if key.startswith(prefix):
                    named.setdefault(key, (rank, label + key.removeprefix(prefix)))
            named.setdefault(key, (4, key))
        return ", ".join(label for _, label in sorted(named[k] for k in keys))

    # ------------------------------------------------------------------ setup

    def _check_watchdog(self) -> None:
        clock = LeaseClock.start(self.cfg.ttl, 0)
        if self.cfg.watchdog > clock.max_watchdog_timeout:
            raise SimulationError(
                f"watchdog {self.cfg.watchdog} s exceeds {clock.max_watchdog_timeout} s")

    def _setup(self, initial: Mapping[str, Any]) -> None:
        margin = LeaseClock.start(self.cfg.ttl, 0).margin
        self.emit("sim", f"ttl {self.cfg.ttl:g} s, margin {margin:g} s, "
                         f"watchdog {self.cfg.watchdog:g} s")
        for raw in initial["hosts"]:
            if raw.get("draining"):
                hostconf.set_draining(self.store, self.keys, raw["name"], True, by="sim")
            if self.cfg.power_fence:
                fenceagents.write(self.store, self.keys, raw["name"], "fence_sim",
                                  {"plug": raw["name"]}, by="sim")
        for spec in self.specs.values():
            if spec.fenced:  # settings, and the definition agents keep for a takeover
                self.store.put(self.keys.guest_settings(spec.uuid), encode(GuestSettings(
                    spec.uuid, spec.name, ha=spec.kind is GuestKind.HA, desired=spec.desired)))
                self.store.put(self.keys.domain(spec.uuid), encode(DomainDefinition(
                    spec.uuid, spec.name, domain_xml(spec.uuid, spec.name), "sim", 0.0)))
        for raw in initial.get("templates", ()):
            templates.create_template(self.store, self.keys, _template(raw))
        for raw in initial.get("pools", ()):
            pools.create(self.store, self.keys, pools.new_spec(
                raw["name"], raw["template"], raw["min"], raw.get("max", raw["min"]),
                desired=raw.get("desired")))
        for host in self._by_name():
            if host.powered:
                self._boot(host)
        for g in sorted(initial["guests"], key=lambda g: g["name"]):
            host, spec = self.hosts[g["host"]], self.specs[g.get("uuid", g["name"])]
            host.virt.define(spec.uuid)
            if g.get("state") == "running" and not self._start(host, spec):
                raise SimulationError(f"initial guest {spec.name} could not start")
        for host in self._by_name():
            if host.agent is not None:
                self._report(host)
        self._managers_step()

    def _link(self, host: Host) -> Link:
        return Link(self.store, lambda: self.etcd_up and host.powered and host.connected)

    def _boot(self, host: Host) -> None:
        """Power on: a fresh agent process (registers) and manager candidate."""
        host.powered, host.connected, host.hung = True, True, False
        host.virt.daemon_up = True
        self._start_processes(host)

    def _start_processes(self, host: Host) -> None:
        """The agent process (resumes or registers) and its manager candidate."""
        self._start_agent(host)
        host.manager = Manager(self.conf, self._link(host), host.name,  # type: ignore[arg-type]
                               period=self.cfg.manager_interval, limits=self.cfg.limits,
                               clock=self.sim_clock, threaded=False,
                               power_fence=self._fence_agent)
        # an intent the pool keeper waits for is done inside its put, or never (no other
        # agent runs during the wait): do not wait the real-time default for it
        host.manager.pools.action_timeout = POOL_ACTION_TIMEOUT

    def _start_agent(self, host: Host) -> None:
        """A new agent process: resume the lease on its host record if it is alive."""
        link = self._link(host)
        agent = SimAgent(Fencer(link, self.keys, host.name,  # type: ignore[arg-type]
                                lambda: agent.lease.lease))
        agent.guard = HostLease(
            link, self.cfg.ttl, host.name,  # type: ignore[arg-type]
            lambda in_doubt: self._self_fence(host, agent, in_doubt),
            SimWatchdog(host, self._now, self.cfg.watchdog),  # type: ignore[arg-type]
            has_ha_guests=lambda: bool(agent.fencer.ha_guests()),
            came_up=lambda uuid: agent.selffence and agent.selffence.came_up(uuid),
            clock=self.sim_clock)
        agent.worker = self._worker(host, agent, link)
        agent.selffence = SelfFence(host.name, agent.fencer, agent.virt,  # type: ignore[arg-type]
                                    destroy_fails=self.cfg.destroy_fails, threaded=False,
                                    clock=self.sim_clock)
        host.agent = agent
        self.store.watch_prefix(self.keys.intents(host.name),
                                lambda ev: self._intent_put(host, agent, ev))
        item = self.store.get(self.keys.host(host.name))
        if item is not None and item.lease and agent.lease.resume(item.lease):
            agent.lease_state = LeaseState.HEALTHY
            agent.fencer.refresh_held()
            self.emit(f"{host.name}/agent", "resumed its lease")
            return
        self._register(host)

    def _worker(self, host: Host, agent: SimAgent, link: Link) -> IntentWorker:
        """The agent's real intent worker, on the host's link and fake libvirt."""
        agent.virt = FakeLibvirt(
            host.virt, self._learn,
            lambda uuid, state: self.specs[uuid].record(host.name, state, self.t),
            lambda uuid: self.specs[uuid].name, lambda uuid: self._refusal(host, uuid),
            lambda uuid: self._started(host, uuid))
        return IntentWorker(
            host=host.name, store=link, keys=self.keys,
            domains=agent.virt,  # type: ignore[arg-type]
            fencer=agent.fencer, lease=agent.lease, claims=GuestClaims(),
            images_dir="/nonexistent",
            on_change=lambda _uuid: None,  # the agent reports every tick
            judge=lambda rec: self._judge_running(host, agent.fencer, self.specs[rec.uuid]),
            clock=self.sim_clock)

    def _learn(self, xml: str) -> None:
        """A domain defined from XML the simulator did not set up (a clone): know it."""
        root = ElementTree.fromstring(xml)
        uuid, name = root.findtext("uuid") or "", root.findtext("name") or ""
        if uuid and uuid not in self.specs:
            memory = int(root.findtext("memory") or 0) // 1024  # KiB
            self.specs[uuid] = GuestSpec(uuid, name, memory, GuestKind.NONE, ())

    def _intent_put(self, host: Host, agent: SimAgent, event: Event) -> None:
        """The agent's intent watch. The pool keeper's intents (clone, remove_clone) are
        carried out at once, inside the submitter's put (a remove's submitter waits for
        it: in production on its own thread while the agent works; here nothing else can
        run meanwhile). Every other intent waits for the agent's next tick."""
        if event.kind != "put" or agent.handling or host.agent is not agent \
                or not self._reaches(host) or not agent.libvirt_up:
            return
        try:
            intent = decode(Intent, event.key, event.value)
        except ValueError:
            return  # the worker's offer logs a corrupt intent at its next tick
        if not intent.finished and intent.action in WAITED_ACTIONS:
            self._intents(host, agent, event)

    def _refusal(self, host: Host, uuid: str) -> str | None:
        """Why the fake libvirt refuses to start ``uuid`` here (a fault, memory), or None.
        A ``slow-create`` of this host blocks here first, the clock running on."""
        spec = self.specs[uuid]
        seconds = self.slow_creates.pop(host.name, 0)
        if seconds:
            host.connected = False
            self.emit(f"{host.name}/libvirt", f"start of {spec.name} blocks {seconds} s; "
                                              f"{host.name} cut off etcd")
            for _ in range(seconds):
                self.tick()
            if not host.powered:
                return f"sim: {host.name} was reset during the start of {spec.name}"
        if host.refuse_starts:
            return f"sim: {host.name} cannot start {spec.name} (injected fault)"
        if self._free(host) < spec.memory_mib:
            return f"sim: not enough memory for {spec.name} on {host.name}"
        return None

    def _started(self, host: Host, uuid: str) -> None:
        """The fake libvirt started ``uuid`` for an intent: log it with the fences taken."""
        spec = self.specs[uuid]
        taken = host.events.taken.pop(spec.name, "") if host.events else ""
        self.emit(f"{host.name}/agent", f"took fence {taken}; {spec.name} running"
                  if taken else f"{spec.name} running")
        if self._reaches(host):
            self._report(host)  # a clone's submitter waits to see it running

    def _register(self, host: Host) -> None:
        agent = self._agent(host)
        self.owners[agent.lease.grant()] = host.name
        agent.lease_state = LeaseState.HEALTHY
        agent.free_reported, agent.reported = None, {}
        marked = self.store.get(self.keys.dead_host(host.name)) is not None
        self._report(host)  # the host record's write drops the mark (one transaction)
        self.emit(f"{host.name}/agent", f"registered, lease ttl {self.cfg.ttl:g} s")
        if marked and self.store.get(self.keys.dead_host(host.name)) is None:
            self.emit(f"{host.name}/agent", "cleared the confirm-dead mark")

    def _agent(self, host: Host) -> SimAgent:
        assert host.agent is not None
        return host.agent

    def _free(self, host: Host) -> int:
        return host.memory_mib - sum(self.specs[u].memory_mib for u in host.virt.active)

    # ------------------------------------------------------------------ hosts

    def _host_step(self, host: Host) -> None:
        if not host.powered:
            return
        if host.watchdog and host.armed and self.t - host.last_pet >= self.cfg.watchdog:
            self._power_off(host, f"{host.name}/watchdog",
                            f"not petted for {self.cfg.watchdog:g} s: hardware reset")
            return
        agent = host.agent
        if host.hung or agent is None or agent.lease.clock is None:
            return
        agent.lease.keepalive_step()
        self._lease_state(host, agent)
        if self._reaches(host):
            if not agent.handling:  # (a slow start of its own is in flight)
                self._intents(host, agent)
            if self._reaches(host) and host.agent is agent and self._libvirt(host, agent):
                self._judge(host, agent)
                self._report(host)

    def _libvirt(self, host: Host, agent: SimAgent) -> bool:
        """Whether the agent is connected to libvirtd. While it is not, the agent neither
        judges nor reports (its intent worker still runs, and fails what needs libvirt);
        once it is back, a full resync re-reports every guest."""
        if host.virt.daemon_up != agent.libvirt_up:
            agent.libvirt_up = host.virt.daemon_up
            if agent.libvirt_up:
                agent.reported, agent.free_reported = {}, None
            self.emit(f"{host.name}/agent", "libvirt connected again: resync"
                      if agent.libvirt_up else "libvirt connection lost")
        return agent.libvirt_up

    def _reaches(self, host: Host) -> bool:
        return self.etcd_up and host.powered and host.connected and not host.hung

    def _lease_state(self, host: Host, agent: SimAgent) -> None:
        """Log the lease clock's state changes; the real guard step self-fences and tends
        the watchdog; a lost lease is registered anew once etcd is reached."""
        clock = agent.lease.clock
        assert clock is not None
        name = f"{host.name}/agent"
        state = clock.state(self.t)
        if state is not agent.lease_state:
            self.emit(name, {
                LeaseState.HEALTHY: "lease healthy",
                LeaseState.AT_RISK: "lease at risk: keepalive overdue",
                LeaseState.MUST_SELF_FENCE: "lease deadline reached",
            }[state])
            agent.lease_state = state
            pinned = self._kind_on(host, GuestKind.PINNED)
            if state is LeaseState.MUST_SELF_FENCE and pinned:
                self.emit(name, f"pinned {self._names(pinned)} left running")
        agent.lease.guard_step()
        if agent.lease.lost.is_set() and self._reaches(host):
            self.emit(name, "lease lost; registering anew")
            self._register(host)

    def _self_fence(self, host: Host, agent: SimAgent, in_doubt: bool) -> bool:
        """The guard's self-fence: the real ``agents.selffence.SelfFence`` on the fake
        libvirt, its destroys inline (destroy every guest this host holds HA fences for;
        until libvirt confirms them gone, keep counting them so the watchdog resets the
        host)."""
        assert agent.selffence is not None
        with _logged(_AgentEvents(self, host.name), "gridtool.agent"):
            return agent.selffence.step(in_doubt)

    def _kind_on(self, host: Host, kind: GuestKind) -> list[str]:
        return sorted((u for u in host.virt.active if self.specs[u].kind is kind
                       and self.specs[u].fenced), key=lambda u: self.specs[u].name)

    def _names(self, uuids: Iterable[str]) -> str:
        return ", ".join(self.specs[u].name for u in uuids)

    def _report(self, host: Host) -> None:
        """Put the host record (free memory) and the changed guest records; delete the
        records of guests no longer defined here."""
        agent = self._agent(host)
        registry = Registry(agent.fencer.store, self.keys)
        free = self._free(host)
        if free != agent.free_reported:
            registry.put_host(HostRecord(
                host.name, f"sim:///{host.name}", "sim", 16, host.memory_mib, free, "sim",
                self.t, watchdog=agent.lease.has_watchdog,
                watchdog_timeout=agent.lease.watchdog_timeout), agent.lease.lease)
            agent.free_reported = free
        for uuid in sorted(host.virt.defined):
            record = self.specs[uuid].record(host.name, host.virt.state(uuid), self.t)
            seen = agent.reported.get(uuid)
            if seen is None or not seen.same_content(record):
                registry.put_guest(record)
                agent.reported[uuid] = record
        for uuid in sorted(set(agent.reported) - host.virt.defined):
            registry.delete_guest(host.name, uuid)
            del agent.reported[uuid]

    # ------------------------------------------------------------------ intents

    def _intents(self, host: Host, agent: SimAgent, offered: Event | None = None) -> None:
        """Carry out this host's unfinished intents with the real IntentWorker, in order:
        its catch-up queues them (or just the ``offered`` one, as its watch does),
        :meth:`IntentWorker.handle` runs each (no thread)."""
        worker = agent.worker
        assert worker is not None
        host.events, agent.handling = _AgentEvents(self, host.name), True
        try:
            with _logged(host.events, "gridtool.agent"):
                if offered is None:
                    worker.catch_up()
                else:
                    worker.offer(offered.key, offered.value)
                while not worker.queue.empty():
                    key = worker.queue.get_nowait()
                    if key is not None:
                        worker.handle(key)
        finally:
            host.events, agent.handling = None, False

    def _start(self, host: Host, spec: GuestSpec) -> bool:
        """A guest running at the start: take every fence (the real Fencer: one
        transaction), then start the domain."""
        name = f"{host.name}/agent"
        taken = ""
        if spec.fenced:
            fencer = self._agent(host).fencer
            try:
                fencer.acquire(fencer.ref(spec.record(host.name, "shutoff", self.t)))
            except FenceRefused as exc:
                self.emit(name, f"refused to start {spec.name}: {exc}")
                return False
            taken = f"took fence {', '.join(spec.volumes)}; "
        host.virt.start(spec.uuid)
        self.emit(name, f"{taken}{spec.name} running")
        return True

    # ------------------------------------------------------------------ judging

    def _judge(self, host: Host, agent: SimAgent) -> None:
        """Judge every fenced guest here (running or holding fences), with the real rules."""
        if not agent.lease.healthy():
            return
        fencer = agent.fencer
        held = {f.guest for f in fencer.refresh_held().values()}
        for uuid in sorted(host.virt.active):
            spec = self.specs[uuid]
            if spec.fenced:
                self._judge_running(host, fencer, spec)
        for uuid in sorted(held - set(host.virt.active)):
            spec = self.specs[uuid]
            ref = fencer.ref(spec.record(host.name, "shutoff", self.t))
            verdict = judge_stopped(host.name, ref, fencer.observe(ref.volumes),
                                    clean_stop=False)
            if verdict.act is Act.RELEASE and fencer.release(ref):
                self.emit(f"{host.name}/agent", f"released fence {', '.join(ref.volumes)} "
                                                f"of {spec.name} (not running here)")

    def _judge_running(self, host: Host, fencer: Fencer, spec: GuestSpec) -> None:
        ref = fencer.ref(spec.record(host.name, "running", self.t))
        verdict = judge_running(host.name, ref, fencer.observe(ref.volumes), self.cfg.policy)
        if verdict.violation:
            self.emit(f"{host.name}/agent", verdict.report)
        if verdict.act is Act.ACQUIRE:
            with suppress(FenceRefused):  # judged again next tick
                fencer.acquire(ref)
        elif verdict.act is Act.PAUSE and host.virt.state(spec.uuid) == "running":
            host.virt.suspend(spec.uuid)
        elif verdict.act is Act.DESTROY:
            host.virt.destroy(spec.uuid)

    def _fence_agent(self, name: str) -> Outcome:
        """The simulated fence agent: ``off`` pulls the plug (as ``power-off`` does), then
        ``status`` says off."""
        host = self._host(name)
        if host.powered:
            self._power_off(host, "hw", f"{name} powered off by its fence agent")
        return Outcome(True, "power off confirmed")

    def _power_off(self, host: Host, source: str, why: str) -> None:
        gone = sorted(host.virt.power_off(), key=lambda u: self.specs[u].name)
        killed = f"; killed {self._names(gone)}" if gone else ""
        self.emit(source, f"{why}{killed}")
        host.powered, host.armed = False, False
        host.agent = host.manager = None

    # ------------------------------------------------------------------ manager

    def _managers_step(self) -> None:
        for host in self._by_name():
            if host.powered and not host.hung and host.manager is not None:
                with _logged(_ManagerEvents(self, host.name), "gridtool.ha.manager",
                             "gridtool.pools.shell"):
                    host.manager.step()
                if host.manager.lease is not None:
                    self.owners.setdefault(host.manager.lease, f"manager {host.name}")

    # ------------------------------------------------------------------ commands

    def _host(self, name: str) -> Host:
        if name not in self.hosts:
            raise SimulationError(f"unknown host {name!r}")
        return self.hosts[name]

    def _guest(self, name: str) -> GuestSpec:
        spec = next((s for s in self.specs.values() if s.name == name), None)
        if spec is None:
            raise SimulationError(f"unknown guest {name!r}")
        return spec

    def _cmd_advance(self, seconds: str) -> None:
        for _ in range(int(seconds)):
            self.tick()

    def _cmd_power_off(self, name: str) -> None:
        self._power_off(self._host(name), "hw", f"{name} powered off")

    def _cmd_power_on(self, name: str) -> None:
        self._boot(self._host(name))

    def _cmd_partition(self, name: str) -> None:
        self._host(name).connected = False

    def _cmd_heal(self, name: str) -> None:
        self._host(name).connected = True

    def _cmd_agent_hang(self, name: str) -> None:
        self._host(name).hung = True

    def _cmd_agent_resume(self, name: str) -> None:
        self._host(name).hung = False

    def _cmd_agent_crash(self, name: str) -> None:
        host = self._host(name)
        host.agent = host.manager = None

    def _cmd_agent_start(self, name: str) -> None:
        self._start_processes(self._host(name))

    def _cmd_manager_crash(self, name: str) -> None:
        self._host(name).manager = None

    def _cmd_watchdog_off(self, name: str) -> None:
        self._host(name).watchdog = False

    def _cmd_crash(self, guest: str) -> None:
        spec = self._guest(guest)
        host = next((h for h in self.hosts.values() if spec.uuid in h.virt.active), None)
        if host is None:
            raise SimulationError(f"guest {guest!r} is not running anywhere")
        host.virt.destroy(spec.uuid, "crashed")
        self.emit("hw", f"{guest} crashed on {host.name}")

    def _cmd_confirm_dead(self, name: str) -> None:
        self.store.put(self.keys.dead_host(self._host(name).name), b'{"v": 1}')

    def _cmd_set_ha(self, guest: str, value: str) -> None:
        spec = self._guest(guest)
        key = self.keys.guest_settings(spec.uuid)
        item = self.store.get(key)
        current = decode(GuestSettings, key, item.value) if item else GuestSettings(
            spec.uuid, spec.name)
        self.store.put(key, encode(replace(current, ha=value == "on")))

    def _cmd_intent(self, name: str, action: str, guest: str) -> None:
        """The operator asks host ``name`` to ``action`` ``guest`` (``gridtool guest
        start/stop/...``): as the CLI does, the desired state the action leaves is recorded
        first; then an intent its agent carries out at its next tick, or fails."""
        spec, host = self._guest(guest), self._host(name)
        try:
            what = IntentAction(action)
        except ValueError:
            raise SimulationError(f"unknown intent action {action!r}") from None
        if spec.fenced and action in settings.DESIRED_AFTER:
            settings.set_desired_after(self.store, self.keys, spec.uuid, spec.name, action)
        intent = Intent(f"{self.t:08d}-op", host.name, what, spec.uuid, spec.name,
                        float(self.t), "sim")
        self.store.put(self.keys.intent(host.name, intent.id), encode(intent))

    def _cmd_pool_size(self, pool: str, size: str) -> None:
        """``gridtool pool scale POOL N``: the keeper grows or shrinks it next round."""
        pools.set_desired(self.store, self.keys, pool, int(size))

    def _cmd_refuse_starts(self, name: str) -> None:
        self._host(name).refuse_starts = True

    def _cmd_allow_starts(self, name: str) -> None:
        self._host(name).refuse_starts = False

    def _cmd_slow_create(self, name: str, seconds: str) -> None:
        self.slow_creates[self._host(name).name] = int(seconds)

    def _cmd_libvirtd_stop(self, name: str) -> None:
        self._host(name).virt.daemon_up = False

    def _cmd_libvirtd_start(self, name: str) -> None:
        self._host(name).virt.daemon_up = True

    def _cmd_lease_expire(self, name: str) -> None:
        item = self.store.get(self.keys.host(self._host(name).name))
        self.emit("cmd", f"lease-expire {name}")
        for _ in range(int(10 * self.cfg.ttl)):
            if item is None or self.store.lease_info(item.lease) is None:
                return
            self.tick()
        raise SimulationError(f"lease of {name} did not expire")

    def _cmd_leader_change(self) -> None:
        self.store.promote(self.cfg.leader_extend)
        self.emit("etcd", f"leader change: every lease extended to "
                          f"{self.t + self.cfg.ttl + self.cfg.leader_extend:g}")

    def _cmd_etcd_down(self) -> None:
        self.etcd_up = False

    def _cmd_etcd_up(self) -> None:
        self.etcd_up = True
        self._cmd_leader_change()


@contextmanager
def _logged(handler: logging.Handler, *names: str) -> Iterator[None]:
    """Hand the INFO records of the loggers ``names`` to ``handler`` meanwhile."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class _AgentEvents(logging.Handler):
    """The intent worker's log records: the fences it took (by guest name, for the line
    the start logs); fences released and intents finished as simulator log lines."""

    def __init__(self, sim: Simulator, host: str) -> None:
        super().__init__(logging.INFO)
        self.sim = sim
        self.host = host
        self.taken: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg, args = str(record.msg), record.args if isinstance(record.args, tuple) else ()
        if msg.startswith("event=fence_acquired"):
            self.taken[str(args[1])] = ", ".join(str(args[2]).split(","))
        elif msg.startswith("event=self_fenced"):
            self.sim.emit(f"{self.host}/agent", f"self-fence: destroyed {args[1]}")
        elif msg.startswith("event=self_fence_failed"):
            self.sim.emit(f"{self.host}/agent", f"self-fence of "
                          f"{self.sim.specs[str(args[1])].name} failed: {args[2]}")
        elif msg.startswith("event=fence_released"):
            volumes = ", ".join(str(args[2]).split(","))
            self.sim.emit(f"{self.host}/agent", f"released fence {volumes} of {args[1]}")
        elif msg.startswith("event=intent_%s") and args[0] == "failed":
            self.sim.emit(f"{self.host}/agent", f"intent failed: {args[5]}")
        elif msg.startswith("event=intent_%s") and args[0] == "done" \
                and args[3] not in SILENT_DONE:  # a start logs its own line
            self.sim.emit(f"{self.host}/agent", f"{args[3]} done: {args[5]}")


class _ManagerEvents(logging.Handler):
    """The manager's ``event=...`` log records as simulator log lines."""

    def __init__(self, sim: Simulator, name: str) -> None:
        super().__init__(logging.INFO)
        self.sim = sim
        self.name = name

    def emit(self, record: logging.LogRecord) -> None:
        event = str(record.msg).split()[0].removeprefix("event=")
        args = record.args if isinstance(record.args, tuple) else ()
        if event.endswith("%s") and args:  # "event=pool_%s": the name's tail is args[0]
            event, args = event.removesuffix("%s") + str(args[0]), args[1:]
        here = f"manager@{self.name}"
        line = {
            "manager_elected": lambda: ("manager", f"{args[0]} elected leader"),
            "manager_lost_leadership": lambda: (here, "lost the leadership"),
            "manager_step_down": lambda: (here, f"stepped down: {args[1]}"),
            "ha_restart": lambda: (here, f"restart {args[0]} on {args[1]} ({args[3]})"),
            "host_fenced": lambda: (here, f"fenced {args[0]} by {args[1]}: {args[4]}"
                                          if args[2] else f"fence of {args[0]} by {args[1]} "
                                                          f"FAILED: {args[4]}"),
            "ha_blocked": lambda: (here, f"leave {args[0]}: {args[1]}"),
            "ha_error": lambda: (here, f"{args[0]} marked error: {args[1]}"),
            "pool_clone": lambda: (here, f"pool {args[0]}: sent {args[1]} clone(s), "
                                         f"{args[2]} failed ({args[3]})"),
            "pool_serving": lambda: (here, f"pool {args[0]}: {args[1]} serving on {args[2]} "
                                           f"(after {args[3]})"),
            "pool_round_crashed": lambda: (here, f"pool {args[0]}: round crashed"),
            "pool_forget": lambda: (here, f"pool {args[0]}: forgot {args[1]} on {args[2]} "
                                          f"({args[3]})"),
            "pool_remove": lambda: (here, f"pool {args[0]}: removing {args[1]} on {args[2]} "
                                          f"({args[4]})"),
            "pool_removed": lambda: (here, f"pool {args[0]}: removed {args[1]} on {args[2]}"),
            "fences_released_for_dead_host": lambda: (
                here, f"released the fences of {args[0]} held by dead {args[1]}"
                if args[2] else f"release of {args[0]}'s fences failed"),
        }.get(event)
        if line is not None:
            self.sim.emit(*line())


def _template(raw: Mapping[str, Any]) -> templates.Template:
    """A diskless template (clones are defined and started, no images to make)."""
    xml = (f"<domain type='kvm'><name>{raw['name']}</name><uuid>{raw['name']}</uuid>"
           f"<memory unit='KiB'>{raw['memory_mib'] * 1024}</memory><vcpu>1</vcpu>"
           "<devices/></domain>")
    return templates.Template(raw["name"], xml, [], {}, raw["memory_mib"], 1, "/nonexistent",
                              raw["name"], raw["name"], "sim", 0.0)


def _spec(raw: Mapping[str, Any]) -> GuestSpec:
    return GuestSpec(raw.get("uuid", raw["name"]), raw["name"], raw["memory_mib"],
                     GuestKind(raw.get("kind", "ha")), tuple(sorted(raw.get("volumes", ()))),
                     raw.get("desired", "stopped" if raw.get("state") == "stopped"
                             else "running"))  # a guest set up stopped is meant to be
