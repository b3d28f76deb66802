"""The lab's per-host initiator (the stand-in for a dom0's kernel initiator) against a real
tgtd, with QEMU's own NBD client (qemu-io): one PREEMPT of a host's key fences every
writer on that host, because they all write through the host's one registered session."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridtool.lab import initiator
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.procs import cmdline
from gridtool.storage import pr
from tests.harness.luns import qemu_io

HOSTS = ["hv1", "hv2"]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[lab_iscsi.IscsiTarget, dict[str, Path]]]:
    target = lab_iscsi.start(lab_iscsi.create(tmp_path, HOSTS, luns=2, size_mb=8))
    procs = []
    try:
        dirs = {h: tmp_path / h for h in HOSTS}
        for host, directory in dirs.items():
            procs.append(initiator.start(directory, host, lab_iscsi.initiator_iqn(host),
                                         [target.url(1), target.url(2)]))
        yield target, dirs
    finally:
        for proc in procs:
            assert initiator.stop(proc.pid)
            assert not cmdline(proc.pid)
        assert lab_iscsi.stop(target)
    assert not list(tmp_path.glob("*/*.nbd")) and not list(tmp_path.glob("*/pr.sock"))


def test_one_preempt_of_a_hosts_key_fences_every_writer_on_that_host(hosts) -> None:  # type: ignore[no-untyped-def]
    target, dirs = hosts
    hv1, hv2 = (initiator.PrSocketLun(dirs[h], 1) for h in HOSTS)
    k1, k2 = pr.host_key("hv1"), pr.host_key("hv2")
    hv1.register(k1)
    hv2.register(k2)
    hv1.reserve(k1)
    assert hv2.read_reservation() == pr.Reservation(2, k1, pr.FENCE_TYPE, 0)
    # two writers on hv1 (two qemu-io, as two guests), one on hv2: all on registered sessions
    assert qemu_io(dirs["hv1"], "write -P 0x11 0 4k").returncode == 0
    assert qemu_io(dirs["hv1"], "write -P 0x12 4k 4k").returncode == 0
    assert qemu_io(dirs["hv2"], "write -P 0x22 8k 4k").returncode == 0
    hv2.preempt(k2, k1)  # hv1 is lost
    assert hv1.read_keys().keys == (k2,)
    for offset in ("0", "4k", "16k"):  # the unit attention is absorbed; then refused
        refused = qemu_io(dirs["hv1"], f"write -P 0x33 {offset} 4k")
        assert refused.returncode == 1 and "Operation not permitted" in refused.stdout
    assert qemu_io(dirs["hv1"], "read -P 0x22 8k 4k").returncode == 0  # type 5: reads go on
    assert qemu_io(dirs["hv2"], "write -P 0x44 12k 4k").returncode == 0
    data = target.lun_path(1).read_bytes()
    assert [data[o * 1024] for o in (0, 4, 8, 12, 16)] == [0x11, 0x12, 0x22, 0x44, 0]
    # the other LUN has no reservation: hv1 still writes there
    assert qemu_io(dirs["hv1"], "write -P 0x55 0 4k", lun=2).returncode == 0
    # a socket serves its own LUN only: another LUN's name, or none, is refused
    for other in (f"{lab_iscsi.TARGET_IQN}/1", ""):
        refused = qemu_io(dirs["hv1"], "read 0 4k", lun=2, export=other)
        assert refused.returncode == 1 and "serves" in refused.stdout + refused.stderr


def test_the_control_socket_says_what_went_wrong_in_one_line(hosts) -> None:  # type: ignore[no-untyped-def]
    _target, dirs = hosts
    hv1 = initiator.PrSocketLun(dirs["hv1"], 1)
    hv1.register(pr.host_key("hv1"))
    with pytest.raises(pr.Unsupported, match=r"^RESERVE: refused by the LUN"):
        hv1.reserve(pr.host_key("hv1"), res_type=2)
    with pytest.raises(pr.PrError, match=r"lun 1\.\.2"):
        initiator.PrSocketLun(dirs["hv1"], 3).read_keys()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(initiator.control_socket(dirs["hv1"])))
        sock.sendall(b"not json\n")
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"] is False and "bad request" in reply["error"]
    with pytest.raises(pr.PrError, match="host initiator at"):
        initiator.PrSocketLun(dirs["hv1"] / "nowhere", 1).read_keys()
