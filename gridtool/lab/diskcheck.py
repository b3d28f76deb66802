"""The storage-level checker: did a stale copy of a guest write to its shared disk after
a new boot of it had started? Judged from the disk alone, independent of gridtool's code
(nothing here imports the registry, the fencing code or libvirt).

The lab guest (``scripts/build-guest-initramfs``) appends to its data disk every 100 ms a
512-byte text record ``GTDISK1 BOOT SEQ SLOT EPOCH UPTIME UUID CRC32``: its boot id (random
per boot), a sequence number counting its write attempts, the slot it writes, its clock,
its domain UUID, and the CRC-32 of the text before the CRC. At boot it finds the log's end
(the first empty slot) and appends from there; it moves one slot on only after a write
succeeded (a failed write is retried in the same slot with the next sequence number).

The rule, which trusts no clock (guest clocks across boots, or hosts, need not agree):
positions on the disk order the writes. When boot B started, its first slot ``first(B)``
was empty and every slot below it was written already. A boot writes its slots in
increasing order, so a boot A that started earlier (``first(A) < first(B)``) and has a
record at a slot above ``first(B)`` wrote it after B had started: a **violation** (a stale
copy wrote after the new one started). Within one boot the sequence number grows with the
slot; a record whose sequence is not above the one below it is a second copy of that same
boot writing (a **fork**: a migration that left the source running), also a violation.
A slot whose text does not parse, whose CRC does not match or whose slot field is not its
position is **corrupt** (a torn write, or noise): counted apart, never a violation.

The checker can miss a stale write that the new boot overwrote later; it never invents
one. Times in the report (the guest's epoch seconds) are for people only.

:func:`check` reads a file or block device; :func:`check_lun` a LUN, through the target
(a session of its own: a reader, allowed by the target's ACL, that never registers; a
Write Exclusive - Registrants Only reservation lets everyone read).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SLOT = 512
MAGIC = "GTDISK1"


@dataclass(frozen=True)
class Record:
    """One decoded record and the slot it was found in."""

    slot: int
    boot: str
    seq: int
    epoch: int
    uptime: float
    uuid: str


@dataclass
class Boot:
    """What one boot wrote: its first and last record (by position)."""

    boot: str
    uuid: str
    first: Record
    last: Record
    records: int = 1

    def to_dict(self) -> dict:
        return {"boot": self.boot, "uuid": self.uuid, "records": self.records,
                "first_slot": self.first.slot, "last_slot": self.last.slot,
                "first_seq": self.first.seq, "last_seq": self.last.seq,
                "first_epoch": self.first.epoch, "last_epoch": self.last.epoch}


@dataclass(frozen=True)
class Violation:
    """A record that should not be there, and the record that shows why."""

    kind: str  # "stale" (an older boot wrote after a newer one started) or "fork"
    record: Record
    evidence: Record  # the newer boot's first record, or the same boot's record below

    def __str__(self) -> str:
        if self.kind == "stale":
            return (f"boot {self.record.boot} wrote slot {self.record.slot} (seq "
                    f"{self.record.seq}) after boot {self.evidence.boot} started at slot "
                    f"{self.evidence.slot}")
        return (f"boot {self.record.boot} wrote seq {self.record.seq} at slot "
                f"{self.record.slot} after seq {self.evidence.seq} at slot "
                f"{self.evidence.slot}: two copies of one boot")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "record": self.record.__dict__,
                "evidence": self.evidence.__dict__, "message": str(self)}


@dataclass
class Report:
    """The verdict over one disk: boots in the order they started, violations, and how
    many slots were corrupt."""

    boots: list[Boot] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    corrupt: list[int] = field(default_factory=list)  # slot numbers

    @property
    def ok(self) -> bool:
        return not self.violations

    def boot(self, boot_id: str) -> Boot | None:
        return next((b for b in self.boots if b.boot == boot_id), None)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "boots": [b.to_dict() for b in self.boots],
                "violations": [v.to_dict() for v in self.violations],
                "corrupt": len(self.corrupt), "corrupt_slots": self.corrupt[:20]}

    def summary(self) -> str:
        """One line: boots, records, violations, corrupt slots."""
        records = sum(b.records for b in self.boots)
        head = (f"{len(self.boots)} boots, {records} records, {len(self.violations)} "
                f"violations, {len(self.corrupt)} corrupt")
        return head + "".join(f"; {v}" for v in self.violations[:3])


def encode(slot: int, boot: str, seq: int, epoch: int, uptime: float, uuid: str) -> bytes:
    """One slot as the guest writes it (for tests and tools that fake a writer)."""
    body = f"{MAGIC} {boot} {seq} {slot} {epoch} {uptime:.2f} {uuid}"
    return f"{body} {zlib.crc32(body.encode()):08x}".ljust(SLOT - 1).encode() + b"\n"


def decode(slot: int, raw: bytes) -> Record | None:
    """The record in one slot; None when it is not a valid record for that slot."""
    try:
        body, crc = raw.decode("ascii").rstrip(" \n\0").rsplit(" ", 1)
        magic, boot, seq, at, epoch, uptime, uuid = body.split(" ")
        if magic != MAGIC or int(crc, 16) != zlib.crc32(body.encode()) or int(at) != slot:
            return None
        return Record(slot, boot, int(seq), int(epoch), float(uptime), uuid)
    except ValueError:
        return None


def scan(slots: Iterable[bytes]) -> tuple[list[Record], list[int]]:
    """Decode slots in disk order: the records, and the numbers of corrupt slots (an empty,
    all-zero slot is neither)."""
    records, corrupt = [], []
    for n, raw in enumerate(slots):
        if not raw.strip(b"\0"):
            continue
        rec = decode(n, raw)
        if rec is None:
            corrupt.append(n)
        else:
            records.append(rec)
    return records, corrupt


def judge(records: list[Record], corrupt: list[int] | None = None) -> Report:
    """The verdict (see the module docstring) over records in slot order."""
    report = Report(corrupt=list(corrupt or ()))
    boots: dict[str, Boot] = {}
    started: list[Record] = []  # each boot's first record, in slot order
    for rec in records:
        known = boots.get(rec.boot)
        if known is None:
            boots[rec.boot] = Boot(rec.boot, rec.uuid, rec, rec)
            started.append(rec)
            continue
        newer = next((s for s in started if s.slot > known.first.slot), None)
        if newer is not None:
            report.violations.append(Violation("stale", rec, newer))
        elif rec.seq <= known.last.seq:
            report.violations.append(Violation("fork", rec, known.last))
        known.last = rec
        known.records += 1
    report.boots = [boots[s.boot] for s in started]
    return report


def slots_of(path: Path, size: int = SLOT) -> Iterator[bytes]:
    """A disk image's slots, in order (reads the whole file)."""
    with path.open("rb") as fh:
        while chunk := fh.read(size * 2048):
            for at in range(0, len(chunk) - size + 1, size):
                yield chunk[at:at + size]


def check(path: Path) -> Report:
    """Read a data disk (a file or block device) and judge it."""
    return judge(*scan(slots_of(path)))


#: Blocks read per READ(10) from a LUN (64 KiB).
LUN_CHUNK = 128


def lun_slots(url: str, initiator_iqn: str) -> Iterator[bytes]:
    """The slots of the LUN at ``url`` (``iscsi://PORTAL/TARGET-IQN/N``), read through
    the target as ``initiator_iqn``; PrError when it cannot be read."""
    from gridtool.storage.iscsi import IscsiLun

    with IscsiLun(url, initiator_iqn) as lun:
        blocks = lun.capacity() // SLOT
        for lba in range(0, blocks, LUN_CHUNK):
            data = lun.read(lba, min(LUN_CHUNK, blocks - lba))
            yield from (data[at:at + SLOT] for at in range(0, len(data), SLOT))


def check_lun(url: str, initiator_iqn: str) -> Report:
    """Read a data disk on a LUN through the target and judge it."""
    return judge(*scan(lun_slots(url, initiator_iqn)))
