"""The lab NBD server's replies, without sockets: alignment, bounds, a fenced write."""

from __future__ import annotations

import errno
import struct

from gridtool.lab import nbd


class Disk:
    size = 8192
    name = "iqn.2026-12.lab.gridtool:storage/1"

    def __init__(self, fenced: bool = False) -> None:
        self.fenced = fenced
        self.data = bytearray(self.size)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if self.fenced:
            raise nbd.Fenced("WRITE(10)")
        self.data[offset:offset + len(data)] = data


def error_of(reply: bytes) -> int:
    magic, error, handle = struct.unpack(">IIQ", reply[:16])
    assert magic == nbd.SIMPLE_REPLY_MAGIC and handle == 7
    return int(error)


def test_writes_and_reads_whole_blocks_and_refuses_the_rest() -> None:
    disk = Disk()
    assert error_of(nbd._answer(disk, nbd.CMD_WRITE, 7, 512, 512, b"\x01" * 512)) == 0
    reply = nbd._answer(disk, nbd.CMD_READ, 7, 512, 512, b"")
    assert error_of(reply) == 0 and reply[16:] == b"\x01" * 512
    for offset, length in ((1, 512), (0, 100), (8192, 512), (0, nbd.MAX_PAYLOAD + 512)):
        assert error_of(nbd._answer(disk, nbd.CMD_READ, 7, offset, length, b"")) == errno.EINVAL
    assert error_of(nbd._answer(disk, 9, 7, 0, 512, b"")) == errno.EINVAL
    assert error_of(nbd._answer(disk, nbd.CMD_FLUSH, 7, 0, 0, b"")) == 0


def test_a_fenced_write_is_eperm_and_changes_nothing() -> None:
    disk = Disk(fenced=True)
    assert error_of(nbd._answer(disk, nbd.CMD_WRITE, 7, 0, 512, b"\x01" * 512)) == errno.EPERM
    assert disk.data == bytearray(disk.size)


def test_info_replies_announce_the_size_and_512_byte_blocks() -> None:
    replies = nbd.info_replies(nbd.OPT_GO, 8192)
    magic, option, kind, length = struct.unpack(">QIII", replies[:20])
    assert (magic, option, kind, length) == (nbd.OPT_REPLY_MAGIC, nbd.OPT_GO, nbd.REP_INFO, 12)
    assert struct.unpack(">HQH", replies[20:32])[:2] == (nbd.INFO_EXPORT, 8192)
    assert struct.unpack(">HIII", replies[52:66])[:2] == (nbd.INFO_BLOCK_SIZE, 512)
    assert struct.unpack(">QIII", replies[-20:])[2] == nbd.REP_ACK


def test_the_export_name_is_read_from_each_option_that_names_one() -> None:
    name = Disk.name.encode()
    assert nbd.export_name(nbd.OPT_EXPORT_NAME, name) == Disk.name
    go = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    assert nbd.export_name(nbd.OPT_GO, go) == nbd.export_name(nbd.OPT_INFO, go) == Disk.name
    assert nbd.export_name(nbd.OPT_GO, struct.pack(">I", 0) + b"\0\0") == ""
    assert nbd.export_name(nbd.OPT_GO, struct.pack(">I", 99) + name) is None
    assert nbd.export_name(nbd.OPT_GO, b"\0") is None


def test_the_initiator_serves_each_lun_under_its_target_and_number() -> None:
    from gridtool.lab.initiator import export

    assert export("iscsi://127.0.0.1:3260/iqn.2026-12.lab.gridtool:storage/2") == \
        "iqn.2026-12.lab.gridtool:storage/2"
