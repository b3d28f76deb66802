"""SCSI-3 persistent reservations against the lab's real tgtd, through libiscsi sessions:
the fence_scsi model (register, reserve type 5, preempt the lost host) and what tgt does
with it. Each test starts its own tgtd and leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.procs import cmdline, free_port
from gridtool.storage import pr
from gridtool.storage.iscsi import IscsiLun
from tests.integration.test_lab import gridtool

HOSTS = ["hv1", "hv2", "hv3"]
BLOCK = b"\xa5" * 512


@pytest.fixture
def target(tmp_path: Path) -> Iterator[lab_iscsi.IscsiTarget]:
    started = lab_iscsi.start(lab_iscsi.create(tmp_path, HOSTS, luns=2, size_mb=8))
    try:
        yield started
    finally:
        assert lab_iscsi.stop(started)
        assert not cmdline(started.pid)
        assert not any(p.exists() for p in lab_iscsi.socket_files(started.control_port))


def session(target: lab_iscsi.IscsiTarget, host: str, lun: int = 1) -> IscsiLun:
    return IscsiLun(target.url(lun), lab_iscsi.initiator_iqn(host))


def test_a_preempted_host_can_no_longer_write_and_the_others_still_can(
        target: lab_iscsi.IscsiTarget) -> None:
    k1, k2, k3 = (pr.host_key(h) for h in HOSTS)
    with session(target, "hv1") as hv1, session(target, "hv2") as hv2, \
            session(target, "hv3") as hv3:
        hv1.register(k1)
        hv2.register(k2)
        hv1.reserve(k1)
        assert hv3.read_keys().keys == (k1, k2)
        assert hv3.read_reservation() == pr.Reservation(2, k1, pr.FENCE_TYPE, 0)
        with pytest.raises(pr.ReservationConflict):  # only registrants may write
            hv3.write(0, BLOCK)
        hv3.register(k3)
        hv1.write(0, BLOCK)
        hv3.write(0, BLOCK)
        hv3.preempt(k3, k1)  # hv1 is lost: fence it
        assert hv2.read_keys().keys == (k2, k3)
        # preempting the holder hands the reservation (same type) to the preempter
        assert hv2.read_reservation().key == k3
        assert hv2.read_reservation().type == pr.FENCE_TYPE
        with pytest.raises(pr.CheckCondition):  # the unit attention: registrations preempted
            hv1.write(8, BLOCK)
        for lba in (8, 16, 24):
            with pytest.raises(pr.ReservationConflict, match="WRITE\\(10\\): RESERVATION"):
                hv1.write(lba, BLOCK)
        hv2.write(8, BLOCK)
        hv3.write(16, BLOCK)
    data = target.lun_path(1).read_bytes()
    assert data[8 * 512:9 * 512] == BLOCK and data[24 * 512:25 * 512] == bytes(512)


def test_an_unregistered_session_cannot_write_under_the_reservation(
        target: lab_iscsi.IscsiTarget) -> None:
    k1 = pr.host_key("hv1")
    with session(target, "hv1") as hv1, session(target, "hv2") as hv2:
        hv1.register(k1)
        hv1.reserve(k1)
        with pytest.raises(pr.ReservationConflict):
            hv2.write(0, BLOCK)
        hv1.write(0, BLOCK)
        # the other LUN has no reservation: each LUN is fenced on its own
        with session(target, "hv2", lun=2) as other:
            other.write(0, BLOCK)


def test_tgt_keys_registrations_by_session_not_by_initiator_name(
        target: lab_iscsi.IscsiTarget) -> None:
    """Two sessions with hv1's IQN (the agent's and, say, QEMU's own libiscsi session):
    the second is not registered by the first's REGISTER; once it registers the same key
    too, one PREEMPT of that key fences both."""
    k1, k2 = pr.host_key("hv1"), pr.host_key("hv2")
    with session(target, "hv1") as agent, session(target, "hv1") as qemu, \
            session(target, "hv2") as hv2:
        agent.register(k1)
        agent.reserve(k1)
        agent.write(0, BLOCK)
        with pytest.raises(pr.ReservationConflict):
            qemu.write(0, BLOCK)
        qemu.register(k1)
        assert hv2.read_keys().keys == (k1, k1)  # one registration per I_T nexus
        qemu.write(0, BLOCK)
        hv2.register(k2)
        hv2.preempt(k2, k1)
        assert hv2.read_keys().keys == (k2,)
        for lun in (agent, qemu):
            with pytest.raises(pr.CheckCondition):
                lun.write(0, BLOCK)
            with pytest.raises(pr.ReservationConflict):
                lun.write(0, BLOCK)


def test_registrations_outlive_the_session_that_made_them(
        target: lab_iscsi.IscsiTarget) -> None:
    k1 = pr.host_key("hv1")
    with session(target, "hv1") as hv1:
        hv1.register(k1)
        hv1.reserve(k1)
    with session(target, "hv2") as hv2:
        assert hv2.read_keys().keys == (k1,)
        assert hv2.read_reservation().key == k1


def test_an_operation_the_lun_refuses_and_an_initiator_the_acl_refuses_are_clear_errors(
        target: lab_iscsi.IscsiTarget) -> None:
    k1 = pr.host_key("hv1")
    with session(target, "hv1") as hv1:
        hv1.register(k1)
        with pytest.raises(pr.Unsupported, match=r"^RESERVE: refused by the LUN"):
            hv1.reserve(k1, res_type=2)  # an obsolete type
        assert hv1.read_reservation().key is None
        with session(target, "hv2") as hv2, pytest.raises(pr.ReservationConflict):
            hv2.reserve(pr.host_key("hv2"))  # an unregistered session may not reserve
    with pytest.raises(pr.PrError, match="stranger: cannot log in"):
        IscsiLun(target.url(1), "iqn.2026-12.lab.gridtool:stranger")
    with pytest.raises(pr.PrError, match=r"/9 as .*: cannot log in"):
        IscsiLun(target.url(9), lab_iscsi.initiator_iqn("hv1"))


def test_fence_list_storage_still_reads_the_luns_while_etcd_is_unreachable(
        target: lab_iscsi.IscsiTarget, tmp_path: Path) -> None:
    """Storage fencing is for when the registry cannot be trusted: the keys on the LUN
    are shown anyway, without host names, and the registry's failure is a warning."""
    with session(target, "hv1") as hv1:
        hv1.register(pr.host_key("hv1"))
    conf = tmp_path / "gridtool.conf"
    conf.write_text(f"[registry]\nendpoints = 127.0.0.1:{free_port()}\n")
    listed = gridtool(tmp_path / "no-lab", "--config", str(conf), "fence", "list", "--storage",
                      "--json", "--initiator", lab_iscsi.CLI_INITIATOR, "--lun", target.url(1))
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert body["luns"][0]["registrations"] == [{"key": pr.format_key(pr.host_key("hv1")),
                                                 "host": None}]
    assert body["errors"][0].startswith("host names unknown (no etcd endpoint answered")
    assert listed.stderr.startswith("gridtool: warning: host names unknown")
