"""The agent's fence-hook server (agents.hooksock) built from its parts alone: real etcd,
a Fencer, the guest claims and libvirt's test driver, asked over its unix socket the
way ``agents/hook.py`` asks it. Real QEMU hooks: tests/integration/test_qemu.py."""

from __future__ import annotations

import io
import threading
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import libvirt
import pytest

from agents import hook
from agents.claims import GuestClaims
from agents.fencer import Fencer
from agents.hook import ask
from agents.hooksock import CLAIM_WAIT_S, HookServer
from agents.libvirt_source import LibvirtSource
from agents.livemigrate import receive
from gridtool.config import Config
from gridtool.domains.storage import SharedStorageRules
from gridtool.errors import RegistryUnavailable
from gridtool.fencing.rules import FenceKind, GuestRef, IntruderPolicy
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.records import Intent
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import domain_xml, wait_until

RULES = SharedStorageRules()
DISK = "/dev/etherd/e1.2"  # AoE: volume aoe-e1.2


class Host:
    """One host's hook server with its fencer and claims; ``changed`` collects the
    guests it asked the agent to look at again, ``reports`` the violations it reported."""

    def __init__(self, name: str, store, cfg: Config, domains: LibvirtSource,  # type: ignore[no-untyped-def]
                 path: Path, policy: IntruderPolicy = IntruderPolicy.PAUSE) -> None:
        self.fencer = Fencer(store, cfg.keys, name, lambda: None)
        self.claims = GuestClaims()
        self.changed: list[str] = []
        self.reports: list[tuple[str, str, str]] = []
        self.server = HookServer(str(path), host=name, rules=RULES, fencer=self.fencer,
                                 claims=self.claims, domains=domains,
                                 on_change=self.changed.append, policy=policy,
                                 report=lambda *r: self.reports.append(r)).start()

    def ask(self, op: str, uuid: str, xml: str) -> dict:
        return ask(self.server.path, {"op": op, "sub": "begin", "name": "g1", "uuid": uuid,
                                      "xml": xml}, timeout=10)


@pytest.fixture
def hosts(store, cfg: Config, tmp_path: Path,  # type: ignore[no-untyped-def]
          request: pytest.FixtureRequest) -> Iterator[tuple[Host, Host, str, str]]:
    """h1 and h2 sharing one test-driver daemon and guest g1 (h2's intruder policy: the
    test's ``param``, pause by default)."""
    domains = LibvirtSource("test:///default", RULES, lambda *_: None, lambda: None)
    domains.connect()
    name = f"g-{uuidlib.uuid4().hex[:8]}"
    dom = domains.define(domain_xml(name, disk=DISK, block=True))
    uuid = dom.UUIDString()
    xml = dom.XMLDesc(0)
    h1 = Host("h1", store, cfg, domains, tmp_path / "h1.sock")
    h2 = Host("h2", store, cfg, domains, tmp_path / "h2.sock",
              IntruderPolicy(getattr(request, "param", IntruderPolicy.PAUSE)))
    try:
        yield h1, h2, uuid, xml
    finally:
        h1.server.stop()
        h2.server.stop()
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        domains.close()


def ref(uuid: str) -> GuestRef:
    return GuestRef(uuid, "g1", FenceKind.PINNED, ("aoe-e1.2",))


def test_only_the_holder_may_start_it(hosts) -> None:  # type: ignore[no-untyped-def]
    h1, h2, uuid, xml = hosts
    assert h1.ask("prepare", uuid, xml)["allow"] is False, "nobody holds it yet"
    h1.fencer.acquire(ref(uuid))
    assert h1.ask("prepare", uuid, xml) == {"allow": True, "message": "h1 holds its fences"}
    refused = h2.ask("prepare", uuid, xml)
    assert refused["allow"] is False and "fence is held by h1 (not by h2)" in refused["message"]
    h1.fencer.release(ref(uuid))
    assert h1.ask("prepare", uuid, xml)["allow"] is False, "released: the cache is not used"


def test_an_ha_start_is_refused_while_the_agents_deadline_is_near(  # type: ignore[no-untyped-def]
        hosts, store) -> None:
    """The hook asks the agent's lease clock too: an HA guest (its fence is HA) does not
    start when the self-fence deadline is nearer than the start needs (a pinned one does:
    tests/unit/test_selffence.py)."""
    import time

    from agents.lease import HOOK_BUDGET_S
    from gridtool.fencing.rules import LeaseClock

    h1, _h2, uuid, xml = hosts
    lease = store.grant_lease(30)
    try:
        h1.fencer._lease = lambda: lease  # HA fences are put with the host's lease
        h1.fencer.acquire(GuestRef(uuid, "g1", FenceKind.HA, ("aoe-e1.2",)))
        now = time.monotonic()
        clock = LeaseClock.start(10, now)  # deadline: now + 8
        h1.server.lease = SimpleNamespace(clock=clock, keepalive_rtt=0.0)
        assert h1.ask("prepare", uuid, xml) == {"allow": True, "message": "h1 holds its fences"}
        h1.server.lease.clock = LeaseClock.start(10, now - 8 + HOOK_BUDGET_S / 2)
        refused = h1.ask("prepare", uuid, xml)
        assert refused["allow"] is False
        assert refused["message"].startswith("h1's lease is in doubt: its self-fence "
                                             "deadline "), refused
        assert "it starts no HA guest until a keepalive reaches the registry" in \
            refused["message"]
        h1.server.lease.clock = clock.revoked()
        assert "h1's lease is gone" in h1.ask("prepare", uuid, xml)["message"]
    finally:
        store.revoke_lease(lease)


def test_an_expected_incoming_migration_only(hosts) -> None:  # type: ignore[no-untyped-def]
    h1, h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    assert h2.ask("migrate", uuid, xml)["allow"] is False, "a bare 'virsh migrate'"
    h2.server.expect(uuid, "h1", ref(uuid))
    assert h2.ask("prepare", uuid, xml)["allow"] is False, "expected, not accepted yet"
    assert h2.ask("migrate", uuid, xml) == {"allow": True,
                                             "message": "incoming live migration from h1"}
    assert h2.claims.busy(uuid), "arriving: the agent must not judge it an intruder"
    assert h2.ask("prepare", uuid, xml)["allow"] is True, "the accepted migration's start"
    assert h2.ask("migrate", uuid, xml)["allow"] is False, "one migration per 'receive'"
    _hand_over(h1, uuid, "h2")
    wait_until(lambda: not h2.claims.busy(uuid) and h2.changed == [uuid], 10,
               what="the arrival to end once the fences are here")
    assert h2.ask("prepare", uuid, xml)["message"] == "h2 holds its fences"
    assert h2.ask("prepare", uuid, xml)["allow"] is True


def test_an_expected_migration_waits_as_long_as_its_receive_intent_asks(  # type: ignore[no-untyped-def]
        hosts) -> None:
    """The source's ``migrate`` intent may start minutes after the destination's
    ``receive`` was done: the source agent runs its intents one at a time, and on a Xen
    dom0 another guest's failing HA restarts (each a libxl start of up to a minute) kept
    it busy for 5 min, so the destination's fixed one-minute expectation had expired and
    its hook refused the migration. The expectation now lasts the intent's ``expect_s``
    (as long as the CLI waits for the source); an older CLI's intent gets the minute."""
    h1, h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    real = h2.server.monotonic

    def receive_then_ask_after(seconds: float, params: dict) -> dict:  # type: ignore[type-arg]
        h2.server.monotonic = real
        intent = Intent("i1", "h2", "receive", uuid, "g1", 0.0, "test",
                        params={"from": "h1", **params})
        receive(h2.server, "h2", intent)
        h2.server.monotonic = lambda: real() + seconds
        return h2.ask("migrate", uuid, xml)

    assert receive_then_ask_after(61, {})["allow"] is False, "an older CLI's: one minute"
    answer = receive_then_ask_after(6 * 60, {"expect_s": 720.0})
    assert answer == {"allow": True, "message": "incoming live migration from h1"}, answer
    _hand_over(h1, uuid, "h2")
    wait_until(lambda: not h2.claims.busy(uuid), 10,
               what="the arrival to end once the fences are here")


def test_an_arriving_copy_not_shown_yet_is_waited_for_while_it_is_expected(  # type: ignore[no-untyped-def]
        hosts) -> None:
    """libxl's incoming copy is a shut-off domain until its memory is all there: in the Xen
    tier (load 3-5) hv2's libvirt showed the paused copy 115 s after libxl's ``migrate
    begin``. The arrival took a copy unseen after a fixed 60 s for gone and let go of the
    guest, so hv2's agent judged the copy that then appeared, paused with hv1's fences,
    an intruder, and kept it paused after the handover. An unseen copy is now waited
    for until the expectation's end (720 s from a CLI's receive)."""
    h1, h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    receive(h2.server, "h2", Intent("i1", "h2", "receive", uuid, "g1", 0.0, "test",
                                    params={"from": "h1", "expect_s": 720.0}))
    assert h2.ask("migrate", uuid, xml)["allow"] is True
    steps: list[object] = []
    judge = h2.server._arrival_step

    def counted(arrival):  # type: ignore[no-untyped-def]
        done = judge(arrival)
        steps.append(done)
        return done

    h2.server._arrival_step = counted  # type: ignore[method-assign]
    real = h2.server.monotonic
    h2.server.monotonic = lambda: real() + 120  # g1 still shut off on h2 (not shown)
    seen = len(steps)
    h2.server.wake(uuid)
    wait_until(lambda: len(steps) > seen, 10, what="the arrival judged again")
    assert h2.claims.busy(uuid) and steps[-1] is False, "still arriving at 120 s"
    _hand_over(h1, uuid, "h2")
    h2.server.wake(uuid)
    wait_until(lambda: not h2.claims.busy(uuid), 10,
               what="the arrival to end once the fences are here")


def test_libxls_migrate_begin_without_xml_is_judged_by_the_guests_name(  # type: ignore[no-untyped-def]
        hosts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """libvirt 9.0's libxl driver runs the hook's ``migrate begin`` with an EMPTY stdin:
    the hook (run as libvirt runs it) asks by the domain name, and the agent judges the
    incoming migration of that name it was told to expect, with the same rule as with
    the XML: only while the source holds every fence, once per ``receive``."""
    h1, h2, uuid, xml = hosts

    def libxl_runs_the_hook(op: str) -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        status = hook.main(["--socket", h2.server.path, "--timeout", "10", "--", "g1", op,
                            "begin", "-"])
        return status, capsys.readouterr().err

    status, err = libxl_runs_the_hook("migrate")
    assert status == 1 and "libvirt passed no domain XML for g1 (migrate begin) and no " \
        "live migration of it is expected here" in err, err
    h2.server.expect(uuid, "h1", ref(uuid))
    status, err = libxl_runs_the_hook("migrate")
    assert status == 1 and "h2 does not hold the fence of aoe-e1.2" in err, \
        "expected, but the source holds no fence: " + err
    h1.fencer.acquire(ref(uuid))
    status, err = libxl_runs_the_hook("prepare")
    assert status == 1 and "its disks cannot be told (fail closed)" in err, err
    assert libxl_runs_the_hook("migrate") == (0, "")
    assert h2.claims.busy(uuid), "arriving: the agent must not judge it an intruder"
    assert h2.ask("prepare", uuid, xml)["allow"] is True, "libxl's start of the arriving copy"
    status, err = libxl_runs_the_hook("migrate")
    assert status == 1 and "no live migration of it is expected here" in err, \
        "one migration per 'receive'"
    _hand_over(h1, uuid, "h2")
    wait_until(lambda: not h2.claims.busy(uuid), 10,
               what="the arrival to end once the fences are here")


def _hand_over(source: Host, uuid: str, target: str) -> None:
    """Pass the pinned fence to ``target`` as the source does at switchover (the handover
    compares the target's host record: write one)."""
    source.fencer.store.put(source.fencer.keys.host(target), b"{}")
    source.fencer.handover(ref(uuid), target)


def libvirt_resumes_it(h2: Host, uuid: str) -> None:
    """libvirt's Finish resumes the incoming guest on h2 (the test driver starts it), and
    h2's agent passes the lifecycle event on."""
    dom = h2.server.domains.domain(uuid)
    assert dom is not None
    dom.create()
    h2.server.wake(uuid)


def state_of(h: Host, uuid: str) -> int:
    dom = h.server.domains.domain(uuid)
    assert dom is not None
    return int(dom.state()[0])


def test_a_copy_resumed_before_its_fences_is_paused_until_the_handover(hosts) -> None:  # type: ignore[no-untyped-def]
    h1, h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    h2.server.expect(uuid, "h1", ref(uuid))
    assert h2.ask("migrate", uuid, xml)["allow"] is True
    libvirt_resumes_it(h2, uuid)  # before h1 handed the fences over
    wait_until(lambda: state_of(h2, uuid) == libvirt.VIR_DOMAIN_PAUSED, 10,
               what="h2 to pause a copy that runs without its fences")
    assert h2.claims.busy(uuid) and h2.reports == [], "still arriving: not a violation yet"
    _hand_over(h1, uuid, "h2")
    wait_until(lambda: state_of(h2, uuid) == libvirt.VIR_DOMAIN_RUNNING
               and not h2.claims.busy(uuid) and h2.changed == [uuid], 10,
               what="h2 to resume it once its fences arrived")


@pytest.mark.parametrize("hosts", [IntruderPolicy.DESTROY], indirect=True)
def test_a_copy_resumed_while_a_third_host_holds_its_fences_is_an_intruder(hosts) -> None:  # type: ignore[no-untyped-def]
    h1, h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    h2.server.expect(uuid, "h1", ref(uuid))
    assert h2.ask("migrate", uuid, xml)["allow"] is True
    _hand_over(h1, uuid, "h3")  # the fences went elsewhere meanwhile
    libvirt_resumes_it(h2, uuid)
    wait_until(lambda: state_of(h2, uuid) == libvirt.VIR_DOMAIN_SHUTOFF, 10,
               what="h2 to destroy the intruder (its intruder policy)")
    assert [(u, action) for u, _, action in h2.reports] == [(uuid, "destroy")]
    assert "held by h3" in h2.reports[0][1]
    wait_until(lambda: not h2.claims.busy(uuid), 10, what="the arrival to end: it is gone")


def test_the_decision_waits_for_a_judgement_of_the_guest(hosts) -> None:  # type: ignore[no-untyped-def]
    h1, _h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    with h1.claims.judging(uuid) as claimed:  # a judgement that outlasts the hook's wait
        assert claimed
        answer = h1.ask("prepare", uuid, xml)
    assert answer["allow"] is False and "judging it right now" in answer["message"]
    answers: list[dict] = []
    with h1.claims.judging(uuid):  # a judgement that releases the fence meanwhile
        asking = threading.Thread(target=lambda: answers.append(h1.ask("prepare", uuid, xml)))
        asking.start()
        h1.fencer.release(ref(uuid))
    asking.join(timeout=CLAIM_WAIT_S + 10)
    assert answers and answers[0]["allow"] is False, "decided after the judgement, not before"
    assert not h1.claims.busy(uuid)


def test_a_judgement_stuck_on_an_unreachable_registry_is_named_as_such(  # type: ignore[no-untyped-def]
        hosts, cfg: Config, etcd_cluster) -> None:
    """A judgement of the guest holds it past the claim wait because the agent's etcd
    calls fail (its way to etcd is cut): the refusal names the unreachable registry, not
    "try again" (seen in CI: the hook's answer then told the operator nothing true)."""
    h1, _h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    cut_off = EtcdStore(replace(cfg, endpoints=(proxy.endpoint,), timeout=1.0))
    try:
        assert cut_off.get("/probe") is None and cut_off.unanswered_for() == 0.0
        h1.server.registry_silence = cut_off.unanswered_for
        proxy.cut()
        with pytest.raises(RegistryUnavailable):
            cut_off.get("/probe")
        with h1.claims.judging(uuid):  # the judgement waiting on that etcd
            answer = h1.ask("prepare", uuid, xml)
        assert answer["allow"] is False
        assert "the registry (etcd) is unreachable (no answer for" in answer["message"], \
            answer["message"]
        proxy.heal()
        wait_until(lambda: cut_off.get("/probe") is None, 10, what="etcd again")
        assert cut_off.unanswered_for() == 0.0, "answered again: no longer unreachable"
    finally:
        cut_off.close()
        proxy.close()


def test_a_saved_image_of_a_marked_intruder_is_refused(hosts) -> None:  # type: ignore[no-untyped-def]
    """The intruder mark lives in the live XML, so a saved image of the copy carries it:
    restoring it would resume stale memory, even on the host that now holds the fence."""
    h1, _h2, uuid, xml = hosts
    domains = h1.server.domains
    dom = domains.domain(uuid)
    dom.create()
    try:
        domains.mark_intruder(dom, "h2")
        saved = dom.XMLDesc(0)  # what libvirt hands the hook on 'restore begin'
    finally:
        dom.destroy()
    assert "gridtool.invalid/intruder" not in dom.XMLDesc(0), "gone with the run"
    h1.fencer.acquire(ref(uuid))
    answer = h1.ask("restore", uuid, saved)
    assert answer["allow"] is False and "judged an intruder" in answer["message"]
    assert h1.ask("prepare", uuid, xml)["allow"] is True, "a fresh boot is not marked"


def test_an_answer_given_up_on_changes_nothing(hosts) -> None:  # type: ignore[no-untyped-def]
    """A fence read slower than the answer's deadline (etcd hanging): the hook hears a
    refusal naming the registry in time, and the read's late result must not take
    effect: here it would use up h2's one expected migration."""
    h1, h2, uuid, xml = hosts
    h1.fencer.acquire(ref(uuid))
    h2.server.expect(uuid, "h1", ref(uuid))
    gate = threading.Event()

    def hanging(volumes):  # type: ignore[no-untyped-def]
        gate.wait(30)
        return h2.fencer.observe(volumes)

    h2.server.fencer = SimpleNamespace(held=h2.fencer.held, observe=hanging)
    h2.server.answer_within = 0.3
    try:
        refused = h2.ask("migrate", uuid, xml)
    finally:
        gate.set()
    assert refused["allow"] is False
    assert "the registry (etcd) did not answer within 0.3 s" in refused["message"]
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.name == "hook-decision" and t.is_alive()], 10,
               what="the given-up decision to end")
    h2.server.fencer = h2.fencer
    assert h2.ask("migrate", uuid, xml) == {"allow": True,
                                             "message": "incoming live migration from h1"}


def test_a_shared_disk_that_cannot_be_identified_is_refused_even_to_the_holder(  # type: ignore[no-untyped-def]
        hosts) -> None:
    """Fail closed: an iSCSI disk with an empty LUN (no fence can cover it) keeps the guest
    from starting, even on the host holding the fence of its other disk."""
    h1, _h2, uuid, xml = hosts
    bad = ("<disk type='network' device='disk'><source protocol='iscsi' "
           "name='iqn.2026-12.lab.gridtool:t1/'><host name='127.0.0.1' port='3260'/>"
           "</source><target dev='sdb'/></disk></devices>")
    h1.fencer.acquire(ref(uuid))
    assert h1.ask("prepare", uuid, xml)["allow"] is True
    answer = h1.ask("prepare", uuid, xml.replace("</devices>", bad))
    assert answer["allow"] is False
    assert ("cannot be identified" in answer["message"]
            and "disk sdb ('iqn.2026-12.lab.gridtool:t1/'): the LUN after '/' is empty"
            in answer["message"]), answer
