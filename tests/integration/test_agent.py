"""The agent against a real libvirtd (test driver) and a real etcd."""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time

import pytest

from agents.main import STOP_SIGNALS
from gridtool.registry.model import HostRecord, effective_state
from gridtool.sdnotify import Notifier
from tests.harness.testbed import domain_xml, lease_expiry_bound, wait_until


def _guests(registry, host):  # type: ignore[no-untyped-def]
    return registry.guests_of(host)[0]


def _state_of(registry, host, name):  # type: ignore[no-untyped-def]
    for g in _guests(registry, host).values():
        if g.name == name:
            return g.state
    return None


def test_full_sync_then_events(lab_hosts, registry):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    conn = lab_hosts.conn("hv1")
    conn.defineXML(domain_xml("pre-running", disk="/dev/etherd/e1.1", block=True)).create()
    conn.defineXML(domain_xml("pre-off"))
    lab_hosts.start_agent("hv1")

    wait_until(lambda: {g.name: g.state for g in _guests(registry, "hv1").values()}
               == {"pre-running": "running", "pre-off": "shutoff"}, what="full sync")
    host = registry.get_host("hv1")
    assert host.hypervisor == "test" and host.cpus == 16 and host.memory_mib == 3072
    assert host.free_memory_mib == 3072 - 128
    fenced = next(g for g in _guests(registry, "hv1").values() if g.name == "pre-running")
    assert fenced.fenced and fenced.volumes == ("aoe-e1.1",)

    dom = conn.defineXML(domain_xml("new"))
    wait_until(lambda: _state_of(registry, "hv1", "new") == "shutoff", what="define event")
    dom.create()
    wait_until(lambda: _state_of(registry, "hv1", "new") == "running", what="start event")
    dom.suspend()
    wait_until(lambda: _state_of(registry, "hv1", "new") == "paused", what="suspend event")
    dom.resume()
    dom.destroy()
    wait_until(lambda: _state_of(registry, "hv1", "new") == "shutoff", what="destroy event")
    dom.undefine()
    wait_until(lambda: _state_of(registry, "hv1", "new") is None, what="undefine event")
    # A transient guest disappears from the registry when it is destroyed.
    transient = conn.createXML(domain_xml("transient"), 0)
    wait_until(lambda: _state_of(registry, "hv1", "transient") == "running", what="transient")
    transient.destroy()
    wait_until(lambda: _state_of(registry, "hv1", "transient") is None, what="transient gone")


def test_sigkill_expires_host_and_guests_show_unknown(lab_hosts, registry, cfg):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    lab_hosts.conn("hv1").defineXML(domain_xml("g1")).create()
    lab_hosts.start_agent("hv1")
    wait_until(lambda: _state_of(registry, "hv1", "g1") == "running", what="sync")
    lab_hosts.stop_agent("hv1", kill=True)

    wait_until(lambda: not registry.list_hosts()[0], timeout=lease_expiry_bound(cfg.ttl),
               what="host key to expire with its lease")
    live = frozenset(h.name for h in registry.list_hosts()[0])
    (guest,) = _guests(registry, "hv1").values()
    assert guest.state == "running"  # the last report is kept...
    assert effective_state(guest, live) == "unknown"  # ...but shown as unknown


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_revokes_the_lease_at_once(lab_hosts, registry, signum):  # type: ignore[no-untyped-def]
    """gridtool-agent(8), SIGNALS: with no HA guest, a stop signal revokes the lease."""
    lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1", ttl=30)
    wait_until(lambda: registry.list_hosts()[0], what="host registered")
    lab_hosts.agents["hv1"].send_signal(signum)
    # With a 30 s TTL only a revoked lease makes the host vanish before 30 s. The bound is
    # half the TTL, not a few seconds: the agent first stops its helpers (threads joined,
    # its intent watch cancelled, which waits up to 5 s for the watch's thread), seconds
    # on a loaded 2-core machine; 15 s still tells a revoked lease from an expired one.
    wait_until(lambda: not registry.list_hosts()[0], timeout=15, what="host gone on the signal")
    assert lab_hosts.agents["hv1"].wait(15) == 0


def test_sighup_ends_the_agent_without_revoking_its_lease(lab_hosts, registry):  # type: ignore[no-untyped-def]
    """gridtool-agent(8), SIGNALS: SIGHUP has no handler (no reload): the agent ends at
    once, as on SIGKILL, and its host stays registered until the lease expires."""
    lab_hosts.add("hv1")
    agent = lab_hosts.start_agent("hv1", ttl=30)
    wait_until(lambda: registry.list_hosts()[0], what="host registered")
    agent.send_signal(signal.SIGHUP)
    assert agent.wait(10) == -signal.SIGHUP
    assert [h.name for h in registry.list_hosts()[0]] == ["hv1"]  # the lease lives on
    assert "event=agent_stop" not in lab_hosts.agent_log("hv1")


def test_restart_resync_repairs_what_changed_while_down(lab_hosts, registry):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    conn = lab_hosts.conn("hv1")
    persistent = conn.defineXML(domain_xml("persistent"))
    persistent.create()
    transient = conn.createXML(domain_xml("transient"), 0)
    lab_hosts.start_agent("hv1", watchdog=False)
    wait_until(lambda: len(_guests(registry, "hv1")) == 2, what="sync")
    lab_hosts.stop_agent("hv1", kill=True)

    persistent.destroy()
    transient.destroy()
    conn.defineXML(domain_xml("defined-while-down"))
    lab_hosts.start_agent("hv1")
    wait_until(lambda: {g.name: g.state for g in _guests(registry, "hv1").values()}
               == {"persistent": "shutoff", "defined-while-down": "shutoff"},
               what="resync after restart")


def test_agent_survives_etcd_restart(lab_hosts, registry, etcd_cluster, cfg):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    conn = lab_hosts.conn("hv1")
    lab_hosts.start_agent("hv1", ttl=30)
    wait_until(lambda: registry.list_hosts()[0], what="host registered")
    member = etcd_cluster.members[0]
    etcd_cluster.stop_member(member)
    try:
        conn.defineXML(domain_xml("while-etcd-down")).create()
        wait_until(lambda: "event=registry_lost" in lab_hosts.agent_log("hv1")
                   or "keepalive_failed" in lab_hosts.agent_log("hv1"),
                   what="agent to notice etcd is gone")
    finally:
        etcd_cluster.start_member(member)
    wait_until(lambda: _state_of(registry, "hv1", "while-etcd-down") == "running",
               timeout=20, what="agent to write the change after etcd came back")
    assert registry.get_host("hv1").name == "hv1"


def test_corrupt_record_is_named_and_listing_goes_on(lab_hosts, registry, store, cfg):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    lab_hosts.conn("hv1").defineXML(domain_xml("good"))
    lab_hosts.start_agent("hv1")
    wait_until(lambda: _state_of(registry, "hv1", "good"), what="sync")
    bad_key = cfg.keys.guest("hv9", "00000000-0000-0000-0000-00000000dead")
    store.put(bad_key, b"{not json")
    store.put(cfg.keys.guest("hv9", "v2"), b'{"v": 2}')
    guests, errors = registry.list_guests()
    assert [g.name for g in guests] == ["good"]
    assert sorted(e.key for e in errors) == sorted([bad_key, cfg.keys.guest("hv9", "v2")])
    assert any("unknown schema version 2" in str(e) for e in errors)


@pytest.mark.parametrize("bad", ["--ttl=1", "--libvirt-uri="])
def test_bad_agent_config_exits_2_with_one_line(bad, cfg, tmp_path):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "agents.main", "--host", "hv1", "--libvirt-uri", "test:///default",
         "--endpoints", ",".join(cfg.endpoints), "--config", str(tmp_path / "none.conf"), bad],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "gridtool-agent:" in lines[0], done.stderr


def test_agent_survives_libvirtd_restart(lab_hosts, registry):  # type: ignore[no-untyped-def]
    import libvirt

    host = lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1", watchdog=False)
    lab_hosts.conn("hv1").defineXML(domain_xml("before"))
    wait_until(lambda: _state_of(registry, "hv1", "before"), what="sync")
    host.stop_libvirtd()
    wait_until(lambda: "event=libvirt_closed" in lab_hosts.agent_log("hv1")
               or "libvirt_unreachable" in lab_hosts.agent_log("hv1"),
               what="agent to notice libvirtd is gone")
    host.start_libvirtd()
    # The test driver's state died with the daemon: a new connection starts afresh.
    conn = libvirt.open(host.libvirt_uri)
    lab_hosts.conns["hv1"] = conn
    conn.defineXML(domain_xml("after"))
    wait_until(lambda: _state_of(registry, "hv1", "after") == "shutoff", timeout=20,
               what="agent to reconnect and report the new guest")
    # The resync after reconnecting removed what the new daemon does not have.
    wait_until(lambda: _state_of(registry, "hv1", "before") is None, timeout=20,
               what="stale record removed")


@contextlib.contextmanager
def _agent_in_process(lab_hosts, registry, prepare=lambda agent: None, notifier=None):  # type: ignore[no-untyped-def]
    """hv1's agent run in this process (its config from a first run as a process), so a
    test can patch its libvirt calls (``prepare(agent)``, before it runs); yields the
    agent and the list of what it raised."""
    from agents.agent import Agent
    from gridtool.config import load
    from gridtool.registry.etcdstore import EtcdStore

    host = lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1", watchdog=False)
    wait_until(lambda: [h for h in registry.list_hosts()[0] if h.name == "hv1"],
               what="hv1 registered")
    lab_hosts.stop_agent("hv1")  # its config is reused by the agent in this process
    agent_cfg = load(str(host.agent_conf), {}, env={})
    agent = Agent(agent_cfg, EtcdStore(agent_cfg), notifier)
    prepare(agent)
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            agent.run()
        except BaseException as exc:
            crashed.append(exc)

    runner = threading.Thread(target=run, name="agent hv1")
    runner.start()
    try:
        yield agent, crashed
    finally:
        agent.stop()
        runner.join(30)
    assert not runner.is_alive()


def test_libvirt_error_in_the_main_loop_reconnects_instead_of_crashing(lab_hosts, registry):  # type: ignore[no-untyped-def]
    """libvirtd restarting while the agent resyncs: a libvirt call outside the guarded
    listing (here the host record's node info) failed and killed the agent (seen under
    load in test_agent_survives_libvirtd_restart). The agent runs in this process with
    that call failing once: it must reconnect and go on."""
    import libvirt

    failed = threading.Event()

    def fail_node_once(agent):  # type: ignore[no-untyped-def]
        real_node = agent.libvirt.node

        def node_failing_once():  # type: ignore[no-untyped-def]
            if not failed.is_set():
                failed.set()
                raise libvirt.libvirtError("Cannot recv data: Connection reset by peer")
            return real_node()

        agent.libvirt.node = node_failing_once

    with _agent_in_process(lab_hosts, registry, fail_node_once) as (_agent, crashed):
        lab_hosts.conn("hv1").defineXML(domain_xml("after"))
        wait_until(lambda: crashed or _state_of(registry, "hv1", "after") == "shutoff",
                   timeout=20, what="the agent to report the new guest")
        assert failed.is_set() and crashed == []


def _hv1(registry):  # type: ignore[no-untyped-def]
    """hv1's host record (an empty one while it has none)."""
    found = [h for h in registry.list_hosts()[0] if h.name == "hv1"]
    return found[0] if found else HostRecord("", "", "", 0, 0, 0, "", 0.0)


class _Pets(Notifier):
    """systemd's notifier, recording when the agent pets the watchdog (and from where)."""

    def __init__(self) -> None:
        super().__init__(env={})
        self.at: list[float] = []
        self.threads: set[str] = set()

    def pet(self) -> None:
        self.at.append(time.monotonic())
        self.threads.add(threading.current_thread().name)

    def longest_gap(self, since: float) -> float:
        times = [since, *(t for t in self.at if t > since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(times))


class _HeldReads:
    """libvirt reads of the guests named in ``names`` held (as libxl holds its context
    while it creates a domain) until ``release`` is set or ``hold`` seconds pass."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.hold = 0.0
        self.held = threading.Event()  # a read was held
        self.release = threading.Event()

    def patch(self, agent) -> None:  # type: ignore[no-untyped-def]
        guest, guests = agent.libvirt.guest, agent.libvirt.guests
        agent.libvirt.guest = lambda uuid, host: self._after(guest(uuid, host))
        agent.libvirt.guests = lambda host: self._after(guests(host))

    def _after(self, found):  # type: ignore[no-untyped-def]
        recs = found.values() if isinstance(found, dict) else [found]
        if any(r is not None and r.name in self.names for r in recs):
            self.held.set()
            self.release.wait(self.hold)
        return found


def test_the_main_loop_keeps_petting_while_libvirt_holds_a_read(lab_hosts, registry):  # type: ignore[no-untyped-def]
    """On a Xen dom0 under TCG libxl holds its context for a minute while it creates a
    domain, and libvirt's reads wait behind it: the main loop waited with them, stopped
    petting systemd's watchdog, and systemd killed a healthy agent mid-start. Here reads
    of a guest are held (as libxl holds them): the loop must keep petting, write the
    guest once the read answers, and past the call's deadline report the host unhealthy
    (not "no guests") until libvirt answers again."""
    pets, reads = _Pets(), _HeldReads()
    with _agent_in_process(lab_hosts, registry, reads.patch, pets) as (agent, crashed):
        wait_until(lambda: _hv1(registry).instance == agent.identity.instance,
                   what="the agent in this process registered")
        # 1. A read that answers after 4 s (within its deadline): the turns go on.
        reads.names, reads.hold = {"held-1"}, 4.0
        lab_hosts.conn("hv1").defineXML(domain_xml("held-1"))
        wait_until(reads.held.is_set, what="the agent to read held-1")
        since = time.monotonic()
        wait_until(lambda: _state_of(registry, "hv1", "held-1") == "shutoff",
                   what="held-1 written once its read answered")
        assert time.monotonic() - since > 3.0  # the read was held (the loop's span)
        assert pets.longest_gap(since) < 2.0, pets.longest_gap(since)
        assert pets.threads == {"agent hv1"}  # only ever from the main loop's thread
        # 2. Reads with no answer by their deadline: the host is unhealthy, not empty.
        reads.held.clear()
        reads.names, reads.hold = {"held-2"}, 60.0
        agent.calls.deadline = 2.0
        lab_hosts.conn("hv1").defineXML(domain_xml("held-2"))
        wait_until(lambda: _hv1(registry).unhealthy, timeout=15,
                   what="hv1 reported unhealthy")
        assert registry.get_host("hv1").unhealthy.startswith("libvirt not answering: ")
        assert _state_of(registry, "hv1", "held-1") == "shutoff"  # records kept
        reads.release.set()
        wait_until(lambda: not _hv1(registry).unhealthy, timeout=15,
                   what="hv1 healthy once libvirt answers")
        wait_until(lambda: _state_of(registry, "hv1", "held-2") == "shutoff",
                   what="held-2 written once libvirt answers")
        assert crashed == []


def test_the_agent_warns_once_about_an_etcd_that_revokes_leases_early(  # type: ignore[no-untyped-def]
        lab_hosts, store, registry) -> None:
    """The lab's etcd is Debian's 3.4.23 (etcd issue 15247 unfixed): the agent says so at
    start, once per endpoint (`gridtool check`'s warning: test_safety_commands)."""
    from gridtool.fencing.etcdversions import revokes_leases_early

    version = store.status()[0].version
    lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1")
    wait_until(lambda: registry.list_hosts()[0], what="hv1 registered")
    line = f"event=etcd_early_revocation host=hv1 endpoint={store.status()[0].endpoint} "
    if revokes_leases_early(version):
        wait_until(lambda: line in lab_hosts.agent_log("hv1"), what="the warning logged")
        assert lab_hosts.agent_log("hv1").count("event=etcd_early_revocation") == 1
    else:
        assert "event=etcd_early_revocation" not in lab_hosts.agent_log("hv1")
