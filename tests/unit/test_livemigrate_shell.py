"""The source's live-migration shell (agents.livemigrate) against fakes: a scripted
libvirt domain whose migration ends the way a test says, the destination's copy behind a
fake connection, and the real Fencer on an in-memory store that a test can take away.
Each case is one row of ``fencing.migration.after_error`` carried out end to end; the
real daemons: tests/integration/test_qemu_migration_faults.py."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

import agents.livemigrate as livemigrate
from agents.fencer import Fencer
from agents.livemigrate import LiveMigrator
from agents.ports import IntentFailed
from gridtool.errors import RegistryUnavailable
from gridtool.fencing.migration import Handover
from gridtool.fencing.rules import FenceKind, GuestRef, Observed
from gridtool.fencing.shell import read_fences
from gridtool.registry.fleet import Registry
from gridtool.registry.keys import Keys
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import Intent, IntentAction
from tests.harness.testbed import hold_for, wait_until
from tests.sim.fakevirt import sim_error

UUID = "6a1f0e2c-1111-4222-8333-944455556666"
VOLUME = "aoe-e1.2"
KEYS = Keys("/test-livemigrate/")
RUNNING, PAUSED, SHUTOFF = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                            libvirt.VIR_DOMAIN_SHUTOFF)


class Dom:
    """A libvirt domain: its state and reason, and the calls made on it. ``migrate`` is
    what ``migrateToURI3`` does (the test's script of libvirt)."""

    def __init__(self, state: int = RUNNING, reason: int = 0) -> None:
        self.st, self.reason = state, reason
        self.calls: list[str] = []
        self.migrate: Callable[[], None] = lambda: None
        self.migrate_flags = 0

    def UUIDString(self) -> str:
        return UUID

    def state(self) -> list[int]:
        return [self.st, self.reason]

    def isActive(self) -> bool:
        return self.st != SHUTOFF

    def suspend(self) -> None:
        self.calls.append("suspend")
        self.st, self.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER

    def resume(self) -> None:
        self.calls.append("resume")
        self.st, self.reason = RUNNING, 0

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.st, self.reason = SHUTOFF, 0

    def abortJob(self) -> None:
        self.calls.append("abort")

    def jobStats(self) -> dict[str, int]:
        return {}

    def migrateToURI3(self, _uri: str, _params: dict, flags: int) -> None:
        self.migrate_flags = flags
        self.migrate()


class Conn:
    """A connection to the destination's libvirt, holding its copy."""

    def __init__(self, dom: Dom) -> None:
        self.dom = dom

    def lookupByUUIDString(self, _uuid: str) -> Dom:
        return self.dom

    def close(self) -> None:
        pass


class Etcd:
    """The in-memory store, which a test can make unreachable; ``lost_reply`` makes the
    next transaction commit and then fail as if its answer was lost."""

    def __init__(self) -> None:
        self.store = MemStore(time.monotonic)
        self.down = False
        self.lost_reply = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise RegistryUnavailable("no etcd endpoint answered: (the test's cut)")
            result = attr(*args, **kwargs)
            if name == "txn" and self.lost_reply:
                self.lost_reply = self.down = False
                raise RegistryUnavailable("no etcd endpoint answered: (its answer was lost)")
            return result
        return call


class Lease:
    lease: int | None = None

    def arm(self) -> bool:
        return True


class Domains:
    """The source's libvirt: its one domain, and who listens to its lifecycle events."""

    def __init__(self, dom: Dom) -> None:
        self.dom = dom
        self.listeners: list[Callable[[int], None]] = []

    def domain(self, _uuid: str) -> Dom:
        return self.dom

    @contextlib.contextmanager
    def listening(self, _uuid: str, heard: Callable[[int], None]) -> Iterator[None]:
        self.listeners.append(heard)
        try:
            yield
        finally:
            self.listeners.remove(heard)

    def event(self, event: int) -> None:
        """libvirt's event loop delivers a lifecycle event of the domain."""
        for heard in list(self.listeners):
            heard(event)


class Bed:
    """hv1 migrating g1 (pinned, fenced on VOLUME) to hv2."""

    def __init__(self, etcd: Etcd, hypervisor: str = "qemu") -> None:
        self.etcd = etcd
        self.source, self.dest = Dom(), Dom(PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
        self.reachable = True
        registry = Registry(etcd, KEYS)  # type: ignore[arg-type]
        for host in ("hv1", "hv2"):
            registry.put_host(HostRecord(host, f"fake://{host}", hypervisor, 2, 1024, 512,
                                         "0", time.time()), lease=None)
        self.fencer = Fencer(etcd, KEYS, "hv1", lambda: None)  # type: ignore[arg-type]
        self.ref = GuestRef(UUID, "g1", FenceKind.PINNED, (VOLUME,))
        self.fencer.acquire(self.ref)
        self.domains = Domains(self.source)
        self.side = LiveMigrator(host="hv1", store=etcd, keys=KEYS,  # type: ignore[arg-type]
                                 domains=self.domains,  # type: ignore[arg-type]
                                 fencer=self.fencer, lease=Lease(), connect=self._connect)

    def _connect(self, _uri: str) -> Conn:
        if not self.reachable:
            raise sim_error("unable to connect to server at 'hv2': Connection refused")
        return Conn(self.dest)

    def holder(self) -> str | None:
        obs = read_fences(self.etcd.store, KEYS, (VOLUME,))[VOLUME]
        return obs.fence.holder if isinstance(obs, Observed) else None

    def migrate(self) -> str:
        record = GuestRecord(UUID, "g1", "hv1", "running", 1, 128, time.time(), disks=(
            Disk("vda", "/dev/etherd/e1.2", "block", shared=True, volume=VOLUME),))
        intent = Intent("i1", "hv1", IntentAction.MIGRATE, UUID, "g1", time.time(), "test",
                        params={"to": "hv2"})
        return self.side.migrate(intent, lambda: record)

    # -- libvirt's side of the story ---------------------------------------------

    def switchover(self) -> None:
        """libvirt pauses the source for the final copy; the watcher acts on it."""
        self.source.st, self.source.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION

    def wait(self, condition: Callable[[], object], what: str) -> None:
        wait_until(condition, 10, what=what)

    def fail(self, source_resumed: bool = True) -> None:
        """The migration fails: libvirt resumes the source (it tries) and raises."""
        if source_resumed:
            self.source.st, self.source.reason = RUNNING, 0
        raise sim_error("internal error: client socket is closed")

    def complete(self) -> None:
        """The migration succeeds: the destination runs it, the source's copy is gone."""
        self.dest.st, self.dest.reason = RUNNING, 0
        self.source.st = SHUTOFF


@pytest.fixture
def bed() -> Iterator[Bed]:
    yield Bed(Etcd())


@pytest.fixture(autouse=True)
def impatient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on an unreachable etcd within a second (the defaults wait a minute)."""
    monkeypatch.setattr(livemigrate, "HANDOVER_PATIENCE_S", 1.0)
    monkeypatch.setattr(livemigrate, "FENCE_READ_PATIENCE_S", 1.0)


def test_a_lost_finish_reply_keeps_the_destination_copy_that_runs_with_its_fences(
        bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.switchover()
        bed.wait(lambda: bed.holder() == "hv2", "the handover at switchover")
        bed.dest.st, bed.dest.reason = RUNNING, 0  # the destination's Finish resumed it
        bed.fail()  # ... but its answer never came: libvirt resumes the source

    bed.source.migrate = libvirt_script
    message = bed.migrate()
    assert "although libvirt reported an error" in message
    assert "it lives on hv2" in message
    assert bed.source.calls == ["suspend", "destroy"], "paused at once, then destroyed"
    assert bed.dest.calls == [] and bed.dest.st == RUNNING
    assert bed.holder() == "hv2"


@pytest.mark.parametrize("heard", [True, False], ids=["event", "event-lost"])
def test_a_source_copy_libvirt_resumes_after_the_handover_is_paused_before_it_returns(
        bed: Bed, heard: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """libvirt resumes the source's copy on a failed Finish, then does more work before
    ``migrateToURI3`` returns (seconds on a loaded host): its RESUMED event is enough (no
    poll meanwhile), and a lost event is made up for by the guard's poll."""
    if heard:
        monkeypatch.setattr(livemigrate, "GUARD_POLL_S", 60.0)

    def libvirt_script() -> None:
        bed.switchover()
        bed.wait(lambda: bed.holder() == "hv2", "the handover at switchover")
        bed.dest.st, bed.dest.reason = RUNNING, 0  # the destination's Finish resumed it
        bed.source.st, bed.source.reason = RUNNING, 0  # libvirt's failed Confirm resumes
        if heard:
            bed.domains.event(libvirt.VIR_DOMAIN_EVENT_RESUMED)  # ... and says so
        bed.wait(lambda: bed.source.st == PAUSED, "the source's copy paused on its event")
        bed.fail(source_resumed=False)  # libvirt returns only now

    bed.source.migrate = libvirt_script
    message = bed.migrate()
    assert "it lives on hv2" in message
    assert bed.source.calls == ["suspend", "destroy"], "paused once, then destroyed"
    assert "paused after" in message
    assert not bed.domains.listeners, "the listener goes with the migration"


def test_the_destination_dying_after_the_handover_gives_the_fences_back(bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.switchover()
        bed.wait(lambda: bed.holder() == "hv2", "the handover at switchover")
        bed.dest.st = SHUTOFF  # its qemu died: libvirt cleaned it up
        bed.fail()

    bed.source.migrate = libvirt_script
    with pytest.raises(IntentFailed, match="still runs on hv1 with its fences"):
        bed.migrate()
    assert bed.source.calls == ["suspend", "resume"]
    assert bed.holder() == "hv1"


def test_an_etcd_error_at_switchover_aborts_and_nothing_runs_before_the_fences_are_read(
        bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.etcd.down = True
        bed.switchover()
        bed.wait(lambda: "abort" in bed.source.calls, "the abort of a failed handover")
        bed.etcd.down = False  # etcd is back by the time libvirt gives up
        bed.fail()  # the abort came in time: the destination's copy never ran

    bed.source.migrate = libvirt_script
    with pytest.raises(IntentFailed, match="still runs on hv1 with its fences"):
        bed.migrate()
    assert bed.source.calls == ["abort", "suspend", "resume"], \
        "paused until the fences were read: the handover's outcome was unknown"
    assert bed.dest.calls == ["destroy"], "its copy never ran there: it goes"
    assert bed.holder() == "hv1"


def test_a_handover_whose_answer_was_lost_is_taken_back_once_the_copy_there_is_gone(
        bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.etcd.lost_reply = True
        bed.switchover()
        bed.wait(lambda: "abort" in bed.source.calls, "the abort of a failed handover")
        bed.dest.st = SHUTOFF
        bed.fail()

    bed.source.migrate = libvirt_script
    with pytest.raises(IntentFailed, match="still runs on hv1 with its fences"):
        bed.migrate()
    assert bed.source.calls == ["abort", "suspend", "resume"]
    assert bed.holder() == "hv1", "committed after all, and taken back"


def test_an_unreachable_destination_after_the_switchover_leaves_the_source_paused(
        bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.switchover()
        bed.wait(lambda: bed.holder() == "hv2", "the handover at switchover")
        bed.reachable = False
        bed.fail()

    bed.source.migrate = libvirt_script
    with pytest.raises(IntentFailed) as failed:
        bed.migrate()
    assert "could not be checked" in str(failed.value)
    assert "still runs" not in str(failed.value)
    assert "its fences are held by hv2" in str(failed.value)
    assert bed.source.calls == ["suspend"] and bed.source.st == PAUSED
    assert bed.holder() == "hv2"


def test_etcd_away_when_the_migration_failed_leaves_both_copies_paused(bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.etcd.down = True
        bed.switchover()
        bed.wait(lambda: "abort" in bed.source.calls, "the abort of a failed handover")
        bed.dest.st, bed.dest.reason = RUNNING, 0  # the abort came too late there
        bed.fail()

    bed.source.migrate = libvirt_script
    with pytest.raises(IntentFailed) as failed:
        bed.migrate()
    assert "its fences could not be read" in str(failed.value)
    assert bed.source.st == PAUSED and bed.dest.st == PAUSED
    assert bed.dest.calls == ["suspend"], "kept, paused: it may be the live copy"


def test_a_completed_migration_retries_the_handover_until_etcd_is_back(bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.etcd.down = True
        bed.switchover()
        bed.wait(lambda: "abort" in bed.source.calls, "the abort of a failed handover")
        bed.complete()  # too late to abort: the destination runs it (its agent pauses it)
        bed.etcd.down = False  # the next try gets through

    bed.source.migrate = libvirt_script
    message = bed.migrate()
    assert "after the switchover (the first try failed: no etcd endpoint answered" in message
    assert bed.holder() == "hv2"


def test_a_completed_migration_whose_handover_keeps_failing_pauses_the_destination(
        bed: Bed) -> None:
    def libvirt_script() -> None:
        bed.etcd.down = True
        bed.switchover()
        bed.wait(lambda: "abort" in bed.source.calls, "the abort of a failed handover")
        bed.complete()

    bed.source.migrate = libvirt_script
    with pytest.raises(IntentFailed) as failed:
        bed.migrate()
    assert "moved to hv2, but its fences could not be handed over" in str(failed.value)
    assert "it is paused there" in str(failed.value)
    assert bed.dest.calls == ["suspend"]


def test_an_unexpected_error_in_the_handover_is_an_outcome_not_a_dead_thread(
        bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(bed.fencer, "handover", broken)
    seen: list[Handover] = []

    def libvirt_script() -> None:
        bed.switchover()
        bed.wait(lambda: "abort" in bed.source.calls, "the abort of a failed handover")
        bed.complete()

    bed.source.migrate = libvirt_script
    original = livemigrate._Switchover.finish

    def finish(self: livemigrate._Switchover, patience: float) -> None:
        seen.append(self.outcome)
        original(self, patience)

    monkeypatch.setattr(livemigrate._Switchover, "finish", finish)
    with pytest.raises(IntentFailed, match="KeyError: 'a bug'"):
        bed.migrate()
    assert seen == [Handover.UNKNOWN], "the watcher recorded it and lived on to abort"


def test_xen_arrives_paused_and_is_resumed_there_only_after_the_handover() -> None:
    """libxl resumes the destination's copy in its Finish phase: with
    VIR_MIGRATE_PAUSED the copy arrives
    paused, the fences move once libvirt returned, and only then is it resumed there."""
    bed = Bed(Etcd(), hypervisor="xen")
    seen: list[tuple[int, object]] = []

    def libxl_script() -> None:  # the whole stream, then Finish (paused) and Confirm
        seen.append((bed.source.migrate_flags, bed.holder()))
        bed.dest.st, bed.dest.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER
        bed.source.st = SHUTOFF

    bed.source.migrate = libxl_script
    message = bed.migrate()
    ((flags, holder_during),) = seen
    assert flags & libvirt.VIR_MIGRATE_PAUSED and not flags & libvirt.VIR_MIGRATE_UNSAFE
    assert holder_during == "hv1"  # nothing moved while libvirt migrated
    assert bed.holder() == "hv2" and bed.dest.calls == ["resume"] and bed.dest.st == RUNNING
    assert "resumed on hv2 after the handover" in message, message


def test_xen_a_failed_resume_after_the_handover_fails_the_intent_naming_the_paused_copy(
        ) -> None:
    bed = Bed(Etcd(), hypervisor="xen")

    def libxl_script() -> None:
        bed.dest.st, bed.dest.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER
        bed.source.st = SHUTOFF
        bed.reachable = False  # hv2's libvirtd no longer answers the source

    bed.source.migrate = libxl_script
    with pytest.raises(IntentFailed, match=r"resuming it there failed .*paused on hv2"):
        bed.migrate()
    assert bed.holder() == "hv2" and bed.dest.st == PAUSED


@pytest.mark.parametrize(("uri", "address", "reached", "stream"), [
    ("xen+tcp://127.0.0.1:35903/system", "10.9.0.11",
     "xen+tcp://10.9.0.11:35903/system", "10.9.0.11"),
    ("qemu+ssh://root@hv2/system", "192.0.2.7", "qemu+ssh://root@192.0.2.7/system",
     "192.0.2.7"),
    ("qemu+tcp://hv2/system", "", "qemu+tcp://hv2/system", "hv2"),  # no address: as is
    ("xen:///system", "", "xen:///system", "hv2"),
])
def test_the_destination_is_reached_at_its_migration_address(uri: str, address: str,
                                                             reached: str,
                                                             stream: str) -> None:
    dest = HostRecord("hv2", uri, "xen", 2, 1024, 512, "0", 0.0,
                      migration_address=address)
    assert livemigrate.reach(dest) == (reached, stream)


def test_xen_hands_the_fences_over_only_after_libvirt_returned_never_at_its_paused_state(
        ) -> None:
    """Seen on two real dom0s: from the start of a migration libvirt's libxl driver says
    the source is ``paused (migrating)`` while Xen still runs the domain (``xl list``:
    ``-b----``, its CPU time growing). The switchover watcher took that for QEMU's
    final-copy pause and handed the fences to hv2 while the guest still ran on hv1. On
    Xen the fences move only once ``migrateToURI3`` returned."""
    bed = Bed(Etcd(), hypervisor="xen")
    broken: list[str] = []

    def libxl_script() -> None:
        bed.source.st, bed.source.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION
        try:  # the watcher polls every 10 ms: it had fifty chances
            hold_for(0.5, lambda: bed.holder() == "hv1", "hv1 holds g1's fences while "
                     "libxl sends it", interval=0.02)
        except AssertionError as exc:
            broken.append(str(exc))
        bed.dest.st, bed.dest.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER
        bed.source.st = SHUTOFF

    bed.source.migrate = libxl_script
    message = bed.migrate()
    assert broken == []
    assert bed.holder() == "hv2" and bed.dest.st == RUNNING, message
