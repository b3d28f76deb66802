"""The storage-level checker over crafted disks: boots appended one after another pass; an
older boot writing above a newer boot's first slot, or two copies of one boot, fail; torn
and foreign slots are counted as corrupt, never as violations."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from gridtool.cli.main import cli
from gridtool.errors import NotFound
from gridtool.lab import diskcheck
from gridtool.lab.diskcheck import SLOT, Record, check, decode, encode, judge, scan

UUID = "11111111-2222-3333-4444-555555555555"


def boot_id(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


def disk(writes: list[tuple[int, int]], size: int | None = None) -> list[bytes]:
    """Slots after ``writes`` of (slot, boot number) in that order; each boot counts its
    sequence from 1; later writes overwrite earlier ones."""
    slots = [bytes(SLOT)] * (size or max(s for s, _ in writes) + 1)
    seqs: dict[int, int] = {}
    for slot, boot in writes:
        seqs[boot] = seqs.get(boot, 0) + 1
        slots[slot] = encode(slot, boot_id(boot), seqs[boot], 1_800_000_000 + slot, 1.5, UUID)
    return slots


def verdict(writes: list[tuple[int, int]]) -> diskcheck.Report:
    return judge(*scan(disk(writes)))


def test_a_record_round_trips_through_its_slot() -> None:
    raw = encode(7, boot_id(1), 3, 1_800_000_123, 12.25, UUID)
    assert len(raw) == SLOT
    assert decode(7, raw) == Record(7, boot_id(1), 3, 1_800_000_123, 12.25, UUID)
    assert decode(8, raw) is None, "a record found in another slot than it names is corrupt"


def test_one_boot_then_its_restart_elsewhere_is_no_violation() -> None:
    report = verdict([(s, 1) for s in range(10)] + [(s, 2) for s in range(10, 15)])
    assert report.ok and report.corrupt == []
    assert [(b.boot, b.first.slot, b.last.slot, b.first.seq, b.last.seq, b.records)
            for b in report.boots] == [(boot_id(1), 0, 9, 1, 10, 10),
                                       (boot_id(2), 10, 14, 1, 5, 5)]


def test_an_older_boot_writing_after_a_newer_one_started_is_a_violation() -> None:
    # boot 1 runs on while boot 2 (its restart elsewhere) starts at slot 5: both append
    writes = [(s, 1) for s in range(5)] + [(5, 2), (6, 1), (7, 1), (6, 2)]
    report = verdict(writes)
    assert not report.ok
    (stale,) = report.violations
    assert stale.kind == "stale"
    assert (stale.record.boot, stale.record.slot) == (boot_id(1), 7)
    assert (stale.evidence.boot, stale.evidence.slot) == (boot_id(2), 5)
    assert "after boot" in str(stale)
    assert json.loads(json.dumps(report.to_dict()))["violations"][0]["kind"] == "stale"


def test_a_stale_write_the_new_boot_overwrote_is_not_seen() -> None:
    """What the checker cannot see: it never invents a violation from a hidden write."""
    assert verdict([(0, 1), (1, 1), (2, 1), (2, 2), (3, 2)]).ok


def test_two_copies_of_one_boot_writing_are_a_fork() -> None:
    slots = disk([(0, 1), (1, 1), (2, 1)])
    # a second copy of boot 1 (a migration source left running) writes its seq 2 at slot 3
    slots.append(encode(3, boot_id(1), 2, 0, 0.0, UUID))
    report = judge(*scan(slots))
    (fork,) = report.violations
    assert (fork.kind, fork.record.slot, fork.evidence.slot) == ("fork", 3, 2)


def test_torn_and_foreign_slots_are_corrupt_not_violations() -> None:
    slots = disk([(s, 1) for s in range(6)] + [(6, 2), (7, 2)], size=10)
    slots[2] = slots[2][:100] + bytes(SLOT - 100)  # torn: half a record
    slots[3] = slots[3].replace(b"GTDISK1 ", b"GTDISK1 0", 1)[:SLOT]  # bad CRC
    slots[4] = b"\xff" * SLOT  # not text at all
    report = judge(*scan(slots))
    assert report.ok
    assert report.corrupt == [2, 3, 4]
    assert [b.records for b in report.boots] == [3, 2]
    assert "3 corrupt" in report.summary()


def test_a_disk_file_is_read_slot_by_slot(tmp_path: Path) -> None:
    path = tmp_path / "data.img"
    path.write_bytes(b"".join(disk([(s, 1) for s in range(3)] + [(3, 2), (4, 1)], size=4096)))
    report = check(path)
    assert [b.records for b in report.boots] == [4, 1]
    assert [v.record.slot for v in report.violations] == [4]
    empty = tmp_path / "empty.img"
    empty.write_bytes(bytes(SLOT * 8))
    assert check(empty).to_dict() == {"ok": True, "boots": [], "violations": [], "corrupt": 0,
                                      "corrupt_slots": []}


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6))
def test_boots_appending_one_after_another_never_violate(lengths: list[int]) -> None:
    writes, at = [], 0
    for boot, length in enumerate(lengths):
        writes += [(s, boot) for s in range(at, at + length)]
        at += length
    report = verdict(writes)
    assert report.ok and len(report.boots) == len(lengths)


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=20),
       st.integers(min_value=1, max_value=20))
def test_any_older_write_above_a_newer_first_slot_is_found(before: int, newer: int,
                                                           late: int) -> None:
    """Boot 0 writes ``before`` slots, boot 1 ``newer`` after it, then boot 0 ``late``
    more above them: each late record is a violation naming boot 1's first slot."""
    writes = [(s, 0) for s in range(before)] + [(s, 1) for s in range(before, before + newer)]
    writes += [(s, 0) for s in range(before + newer, before + newer + late)]
    report = verdict(writes)
    assert len(report.violations) == late
    assert {(v.kind, v.evidence.slot) for v in report.violations} == {("stale", before)}


def test_the_cli_judges_a_disk_and_exits_1_on_a_violation(tmp_path: Path) -> None:
    clean, stale = tmp_path / "clean.img", tmp_path / "stale.img"
    clean.write_bytes(b"".join(disk([(0, 1), (1, 1), (2, 2)])))
    stale.write_bytes(b"".join(disk([(0, 1), (1, 2), (2, 1)])))
    ok = CliRunner().invoke(cli, ["lab", "disk-check", "--json", str(clean)])
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.output)
    assert body["ok"] and [b["records"] for b in body["boots"]] == [2, 1]
    bad = CliRunner().invoke(cli, ["lab", "disk-check", str(stale)])
    assert bad.exit_code == 1
    assert f"boot {boot_id(1)} wrote slot 2" in bad.output
    missing = CliRunner().invoke(cli, ["lab", "disk-check", str(tmp_path / "none.img")])
    assert isinstance(missing.exception, NotFound) and missing.exception.exit_code == 3
