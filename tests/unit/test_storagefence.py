"""Storage fencing's pure parts and shells on a model LUN: what a host registers where,
what the manager's fencer preempts, and what each failure becomes. The model keeps the
rules tgt follows (checked against a real tgtd in tests/integration/test_iscsi_pr.py and
test_prwire.py): registrations per session, a type-5 reservation, PREEMPT moving the
reservation to the preempter, the holder unregistering releasing it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.storagereg import Registrar, RegistrationFailed, by_path_device, port_opener
from gridtool.config import Config, load
from gridtool.domains.storage import iscsi_id, iscsi_lun
from gridtool.errors import ConfigError
from gridtool.fencing.recovery import StorageResult
from gridtool.fencing.rules import GuestRef
from gridtool.fencing.storagefence import PrStorageFencer, from_config
from gridtool.storage import fence, pr

IQN = "iqn.2026-12.lab.gridtool:storage"
LUN1, LUN2 = iscsi_id(IQN, 1), iscsi_id(IQN, 2)
HV1, HV2 = pr.host_key("hv1"), pr.host_key("hv2")


class ModelLun:
    """One LUN's PR state, by session (I_T nexus)."""

    def __init__(self, supports_pr: bool = True) -> None:
        self.regs: dict[str, int] = {}
        self.holder: str | None = None
        self.type = 0
        self.generation = 0
        self.supports_pr = supports_pr

    def session(self, nexus: str) -> ModelPort:
        return ModelPort(self, nexus)

    def may_write(self, nexus: str) -> bool:
        return self.holder is None or nexus in self.regs


class ModelPort:
    """The Reservations port on one session of a ModelLun."""

    def __init__(self, lun: ModelLun, nexus: str) -> None:
        self.lun, self.nexus = lun, nexus

    def _pr(self, what: str) -> ModelLun:
        if not self.lun.supports_pr:
            raise pr.Unsupported(f"{what}: refused by the LUN")
        return self.lun

    def register(self, key: int) -> None:
        lun = self._pr("REGISTER")
        lun.regs[self.nexus] = key
        lun.generation += 1

    def unregister(self, key: int) -> None:
        lun = self._pr("REGISTER")
        if lun.regs.get(self.nexus) != key:
            raise pr.ReservationConflict("REGISTER: reservation conflict")
        del lun.regs[self.nexus]
        if lun.holder == self.nexus:
            lun.holder, lun.type = None, 0
        lun.generation += 1

    def reserve(self, key: int, res_type: int = pr.FENCE_TYPE) -> None:
        lun = self._pr("RESERVE")
        if self.nexus not in lun.regs or lun.holder not in (None, self.nexus):
            raise pr.ReservationConflict("RESERVE: reservation conflict")
        lun.holder, lun.type = self.nexus, res_type

    def preempt(self, key: int, victim: int, res_type: int = pr.FENCE_TYPE) -> None:
        lun = self._pr("PREEMPT")
        if self.nexus not in lun.regs or victim not in lun.regs.values():
            raise pr.ReservationConflict("PREEMPT: reservation conflict")
        took = lun.holder is not None and lun.regs[lun.holder] == victim
        lun.regs = {n: k for n, k in lun.regs.items() if k != victim or n == self.nexus}
        if took:
            lun.holder, lun.type = self.nexus, res_type
        lun.generation += 1

    def read_keys(self) -> pr.Keys:
        lun = self._pr("READ KEYS")
        return pr.Keys(lun.generation, tuple(lun.regs.values()))

    def read_reservation(self) -> pr.Reservation:
        lun = self._pr("READ RESERVATION")
        if lun.holder is None:
            return pr.Reservation(lun.generation)
        return pr.Reservation(lun.generation, lun.regs[lun.holder], lun.type)


# -- pure decisions ------------------------------------------------------------------------


def test_a_volume_id_names_its_lun_and_nothing_else_does() -> None:
    assert iscsi_lun(LUN1) == (IQN, 1)
    assert iscsi_lun("iscsi-iqn.2026-12.x:a-lun2-lun16383") == ("iqn.2026-12.x:a-lun2", 16383)
    for other in ("aoe-e9.1", "wwn-0x5000c500a1b2c3d4", "path-/srv/x.img",
                  "iscsi-IQN.UPPER:x-lun1", "iscsi-notaniqn-lun1", "iscsi-iqn.x:y-lun99999"):
        assert iscsi_lun(other) is None, other
    assert fence.luns([LUN1, "aoe-e9.1", LUN1, LUN2]) == (
        fence.Lun(LUN1, IQN, 1), fence.Lun(LUN2, IQN, 2))


def test_a_host_leaves_only_the_luns_whose_fence_it_no_longer_holds() -> None:
    assert fence.to_leave([LUN1, LUN2, "aoe-e9.1"], {LUN2}) == (fence.Lun(LUN1, IQN, 1),)


def test_portals_name_where_the_fencer_logs_in() -> None:
    portals = fence.parse_portals([f"{IQN.upper()}=127.0.0.1:3260", "iqn.x:y=[::1]:3261"])
    assert portals == {IQN: "127.0.0.1:3260", "iqn.x:y": "[::1]:3261"}
    assert fence.lun_url(fence.Lun(LUN2, IQN, 2), portals) == f"iscsi://127.0.0.1:3260/{IQN}/2"
    assert fence.lun_url(fence.Lun("v", "iqn.other:t", 1), portals) is None
    for bad in ("iqn.x:y", "iqn.x:y=host", "=h:1", "iqn.x:y=h:port"):
        with pytest.raises(ValueError, match="TARGET-IQN=HOST:PORT"):
            fence.parse_portals([bad])


# -- register, unregister, preempt on the model ----------------------------------------------


def test_the_first_host_reserves_the_next_ones_register_under_it() -> None:
    lun = ModelLun()
    assert fence.register(lun.session("hv1"), HV1)
    assert fence.register(lun.session("hv2"), HV2)
    assert fence.register(lun.session("hv1"), HV1)  # again: the same, idempotent
    assert lun.regs == {"hv1": HV1, "hv2": HV2} and (lun.holder, lun.type) == ("hv1", 5)
    assert not lun.may_write("hv3")


def test_a_lun_without_pr_is_said_unsupported_a_foreign_reservation_is_refused() -> None:
    assert not fence.register(ModelLun(supports_pr=False).session("hv1"), HV1)
    lun = ModelLun()
    lun.session("other").register(7)
    lun.session("other").reserve(7, pr.ResType.WRITE_EXCLUSIVE)  # only its holder writes
    with pytest.raises(pr.PrError, match=r"reserved Write Exclusive by key 0x0+7"):
        fence.register(lun.session("hv1"), HV1)


def test_the_reservation_holder_keeps_its_registration_when_it_leaves() -> None:
    lun = ModelLun()
    fence.register(lun.session("hv1"), HV1)
    fence.register(lun.session("hv2"), HV2)
    assert not fence.unregister(lun.session("hv1"), HV1)  # would release the reservation
    assert fence.unregister(lun.session("hv2"), HV2)
    assert lun.regs == {"hv1": HV1} and lun.holder == "hv1"


@pytest.mark.parametrize("victim_holds", [True, False])
def test_a_preempt_fences_the_victim_and_leaves_a_reservation(victim_holds: bool) -> None:
    lun = ModelLun()
    first, second = ("hv1", "hv2") if victim_holds else ("hv2", "hv1")
    fence.register(lun.session(first), pr.host_key(first))
    fence.register(lun.session(second), pr.host_key(second))
    own = pr.host_key(fence.FENCER_KEY_NAME)
    fence.preempt(lun.session("fencer"), own, HV1)
    assert HV1 not in lun.regs.values() and not lun.may_write("hv1")
    assert lun.may_write("hv2") and lun.holder in ("fencer", "hv2")
    fence.preempt(lun.session("fencer"), own, HV1)  # again: already fenced, no error


def test_a_preempt_of_a_victim_on_an_unreserved_lun_reserves_it() -> None:
    lun = ModelLun()
    lun.session("hv1").register(HV1)  # registered, never reserved: it still writes
    fence.preempt(lun.session("fencer"), pr.host_key(fence.FENCER_KEY_NAME), HV1)
    assert lun.holder == "fencer" and not lun.may_write("hv1")


# -- the manager's fencer ------------------------------------------------------------------


def _fencer(luns: dict[str, ModelLun], refuse_login: bool = False) -> PrStorageFencer:
    @contextlib.contextmanager
    def open_lun(url: str, initiator: str) -> Iterator[pr.Reservations]:
        if refuse_login:
            raise pr.PrError(f"{url} as {initiator}: cannot log in (not in the ACL)")
        yield luns[url].session(initiator)

    return PrStorageFencer("iqn.x:manager", {IQN: "10.0.0.1:3260"}, open_lun)


def test_the_fencer_preempts_on_every_lun_and_says_what_it_could_not() -> None:
    url1, url2 = (f"iscsi://10.0.0.1:3260/{IQN}/{n}" for n in (1, 2))
    luns = {url1: ModelLun(), url2: ModelLun(supports_pr=False)}
    fence.register(luns[url1].session("hv1"), HV1)
    other = iscsi_id("iqn.other:t", 1)
    result = _fencer(luns).preempt("hv1", [LUN1, LUN2, "aoe-e9.1", other])
    assert result == StorageResult(preempted=(LUN1,),
                                   unsupported=(LUN2, "aoe-e9.1", other))
    assert not luns[url1].may_write("hv1")


def test_a_login_the_target_refuses_is_a_refused_fence() -> None:
    result = _fencer({}, refuse_login=True).preempt("hv1", [LUN1])
    assert result.preempted == () and "cannot log in" in result.refused[LUN1]


def test_a_login_that_hangs_is_a_refused_fence_after_the_timeout() -> None:
    import threading

    release = threading.Event()

    @contextlib.contextmanager
    def hanging(url: str, initiator: str) -> Iterator[pr.Reservations]:
        release.wait(10)
        yield ModelLun().session(initiator)

    fencer = PrStorageFencer("iqn.x:manager", {IQN: "10.0.0.1:3260"}, hanging, timeout=0.2)
    try:
        result = fencer.preempt("hv1", [LUN1])
    finally:
        release.set()
    assert result.refused == {LUN1: f"iscsi://10.0.0.1:3260/{IQN}/1: no answer within 0.2 s"}


def test_the_settings_wire_the_fencer_or_none(tmp_path: Path) -> None:
    assert from_config(Config()) is None
    cfg = Config(pr_fence_initiator="iqn.x:m", pr_portals=(f"{IQN}=127.0.0.1:3260",))
    fencer = from_config(cfg)
    assert fencer is not None and fencer.portals == {IQN: "127.0.0.1:3260"}
    conf = tmp_path / "bad.conf"
    for line, error in (("pr_backend = scsi", "'pr_backend': 'scsi' is not none, initiator"),
                        ("pr_backend = initiator", "'pr_initiator_dir': required"),
                        ("pr_portals = iqn.x:y", "'pr_portals': 'iqn.x:y' is not")):
        conf.write_text(f"[storage]\n{line}\n")
        with pytest.raises(ConfigError, match=error):
            load(str(conf), env={})


# -- the agent's registrar -----------------------------------------------------------------


def test_the_registrar_fails_closed_and_says_unsupported_once(
        caplog: pytest.LogCaptureFixture) -> None:
    luns = {1: ModelLun(), 2: ModelLun(supports_pr=False)}
    registrar = Registrar("hv1", lambda lun: luns[lun.number].session("hv1"))
    caplog.set_level(logging.INFO, "gridtool.agent")
    for _ in range(2):
        registrar.register("db", [LUN1, LUN2, "aoe-e9.1"])
    assert luns[1].regs == {"hv1": HV1} and luns[1].holder == "hv1"
    assert sum("event=pr_unsupported" in r.message for r in caplog.records) == 1
    luns[1].session("other").register(7)
    luns[1].holder, luns[1].type = "other", pr.ResType.EXCLUSIVE_ACCESS
    with pytest.raises(RegistrationFailed, match=f"^hv1 could not register its key on {LUN1}"):
        registrar.register("db", [LUN1])
    Registrar("hv1", None).register("db", [LUN1])  # no back end: nothing to do


def test_the_back_end_is_chosen_by_the_settings(tmp_path: Path) -> None:
    assert port_opener(Config()) is None
    opener = port_opener(Config(pr_backend="initiator", pr_initiator_dir=str(tmp_path)))
    assert opener is not None
    port = opener(fence.Lun(LUN2, IQN, 2))
    assert (port.lun, port.path) == (2, tmp_path / "pr.sock")  # type: ignore[attr-defined]
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    for name in (f"ip-10.0.0.1:3260-iscsi-{IQN}-lun-1-part1", f"ip-10.0.0.1:3260-iscsi-{IQN}-lun-1",
                 f"ip-10.0.0.1:3260-iscsi-{IQN}-lun-2"):
        (by_path / name).touch()
    lun1 = fence.Lun(LUN1, IQN, 1)
    assert by_path_device(lun1, str(by_path)) == f"{by_path}/ip-10.0.0.1:3260-iscsi-{IQN}-lun-1"
    with pytest.raises(pr.PrError, match="not logged in"):
        by_path_device(fence.Lun(iscsi_id(IQN, 3), IQN, 3), str(by_path))


# -- the manager with the fencer: a pinned guest after `host confirm-dead` -----------------


def test_a_pinned_guest_moves_after_confirm_dead_only_through_the_storage_fence() -> None:
    """hv1 is confirmed dead with a pinned guest on LUN 1: the manager's fencer preempts
    hv1's key on the LUN (the model LUN refuses hv1's writes from then on), the record
    says storage, and the guest is restarted on hv2 relying on it."""
    import json

    from gridtool.fencing.rules import Fence, FenceKind
    from gridtool.ha.manager import Manager
    from gridtool.registry.fleet import Registry
    from gridtool.registry.memstore import MemStore
    from gridtool.registry.model import Disk, GuestRecord, HostRecord
    from gridtool.registry.records import Intent, decode

    store, keys = MemStore(lambda: 0.0), Config().keys
    uuid = "66666666-7777-8888-9999-000000000000"
    disk = Disk("vda", f"{IQN}/1", "network", shared=True, volume=LUN1)
    registry = Registry(store, keys)
    registry.put_host(HostRecord("hv2", "test:///", "test", 4, 4096, 4096, "0", 0.0,
                                 watchdog=True), None)
    registry.put_guest(GuestRecord(uuid, "db", "hv1", "running", 1, 128, 0.0, (disk,)))
    store.put(keys.fence(LUN1), Fence(LUN1, "hv1", uuid, "db", FenceKind.PINNED, 0.0)
              .to_json().encode())
    url = f"iscsi://10.0.0.1:3260/{IQN}/1"
    lun = ModelLun()
    fence.register(lun.session("hv1"), HV1)
    manager = Manager(Config(), store, "m1", threaded=False,
                      storage_fencer=_fencer({url: lun}))
    manager.step()
    assert [decode(Intent, i.key, i.value) for i in store.list(keys.all_intents)[0]] == []
    store.put(keys.dead_host("hv1"), json.dumps({"v": 1, "host": "hv1"}).encode())
    manager.step()
    manager.step()
    assert not lun.may_write("hv1") and HV1 not in lun.regs.values()
    (intent,) = [decode(Intent, i.key, i.value) for i in store.list(keys.all_intents)[0]]
    assert intent.host == "hv2" and str(intent.params["fence"]).startswith("storage: hv1's key")


def test_the_destination_registers_before_it_accepts_an_incoming_migration() -> None:
    """A ``receive`` intent (before the source's live migration starts): hv2 registers on
    the guest's LUNs (read from the source's record) and only then expects the guest;
    a refusal, or no record to read the LUNs from, fails it and nothing is expected."""
    from agents.claims import GuestClaims
    from agents.intents import IntentWorker
    from agents.ports import IntentFailed
    from gridtool.registry.fleet import Registry
    from gridtool.registry.memstore import MemStore
    from gridtool.registry.model import Disk, GuestRecord
    from gridtool.registry.records import Intent

    store, keys = MemStore(lambda: 0.0), Config().keys
    uuid = "66666666-7777-8888-9999-000000000000"
    disk = Disk("vda", f"{IQN}/1", "network", shared=True, volume=LUN1)
    Registry(store, keys).put_guest(GuestRecord(uuid, "db", "hv1", "running", 1, 128, 0.0,
                                                (disk,)))
    lun = ModelLun()
    fence.register(lun.session("hv1"), HV1)
    expected: list[tuple[str, str]] = []
    named: list[GuestRef | None] = []  # as the hook knows it when libxl passes no XML

    class Hook:
        def expect(self, uuid: str, source: str, guest: GuestRef | None = None,
                   within: float = 60.0) -> None:
            expected.append((uuid, source))
            named.append(guest)

    worker = IntentWorker(host="hv2", store=store, keys=keys, domains=None,  # type: ignore[arg-type]
                          fencer=None, lease=None, claims=GuestClaims(),  # type: ignore[arg-type]
                          images_dir="/nonexistent", on_change=lambda _u: None,
                          judge=lambda _r: None, hook=Hook(),
                          registrar=Registrar("hv2", lambda _lun: lun.session("hv2")))
    intent = Intent("i1", "hv2", "receive", uuid, "db", 0.0, "test", params={"from": "hv1"})
    assert worker._do_receive(intent) == "hv2 expects db from hv1 for 60 s"
    assert lun.regs == {"hv1": HV1, "hv2": HV2} and expected == [(uuid, "hv1")]
    assert [(r.uuid, r.name, r.volumes) for r in named if r] == [(uuid, "db", (LUN1,))]
    with pytest.raises(IntentFailed, match="hv3 has no record of it"):
        worker._do_receive(Intent("i2", "hv2", "receive", uuid, "db", 0.0, "test",
                                  params={"from": "hv3"}))
    # the migration's own intent carries the LUNs: no record of another host is read
    # (a host's etcd user may not read them)
    carried = Intent("i3", "hv2", "receive", uuid, "db", 0.0, "test",
                     params={"from": "hv3", "volumes": [LUN1], "unidentified": []})
    assert worker._do_receive(carried) == "hv2 expects db from hv3 for 60 s"
    assert (named[-1].uuid, named[-1].volumes) == (uuid, (LUN1,))  # type: ignore[union-attr]
    expected.pop(), named.pop()
    lun.holder, lun.type = "hv1", pr.ResType.EXCLUSIVE_ACCESS
    with pytest.raises(IntentFailed, match=r"^hv2 will not receive db: hv2 could not register"):
        worker._do_receive(intent)
    assert expected == [(uuid, "hv1")]
