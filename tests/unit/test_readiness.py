"""Ready markers: the clone XML carries the marker, the watcher finds it in the serial
file of the guest's current run, the record gains ``ready_at`` (old records still decode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.readiness import MarkerScan, ReadinessWatcher, domain_id
from gridtool.clone import rules as cloneplan
from gridtool.registry.model import GuestRecord, decode, encode

TEMPLATE = """<domain type='qemu'>
  <name>tiny</name>
  <uuid>4f8b5b3e-1111-4222-8333-944455556666</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/shared/tiny.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='/lab/serial/tiny.log' append='on'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>"""
IDENT = cloneplan.CloneIdentity("tiny-1", "0e7c3a52-aaaa-4bbb-8ccc-ddddeeeeffff", ())


def clone_xml(marker: str = "GRIDTOOL-READY", template: str = TEMPLATE) -> str:
    return cloneplan.rewrite(template, IDENT, {"vda": "/img/clones/hv1/x-vda.qcow2"}, marker)


def live(xml: str, dom_id: int) -> str:
    """What libvirt's XMLDesc returns for a running domain."""
    return xml.replace("<domain ", f"<domain id='{dom_id}' ", 1)


def record(state: str = "running", ready_at: float = 0.0) -> GuestRecord:
    return GuestRecord(IDENT.uuid, IDENT.name, "hv1", state, 1, 128, 1.0, ready_at=ready_at)


# --------------------------------------------------------------------------- the XML


def test_clone_xml_carries_the_marker_and_its_own_truncated_serial_file() -> None:
    xml = clone_xml()
    assert cloneplan.ready_spec(xml) == ("GRIDTOOL-READY", "/lab/serial/tiny-1.log")
    assert "append" not in xml, "truncated at each start: a marker seen is from this boot"
    assert "https://gridtool.invalid/ready" in xml
    assert cloneplan.ready_spec(cloneplan.rewrite(
        TEMPLATE, IDENT, {"vda": "/img/x.qcow2"})) is None, "no marker: nothing watched"


def test_marker_goes_into_existing_metadata_and_replaces_an_old_one() -> None:
    with_meta = TEMPLATE.replace("<memory", "<metadata><app:x xmlns:app='urn:app'/>"
                                 "</metadata>\n  <memory", 1)
    xml = clone_xml("NEW", clone_xml("OLD", with_meta))
    assert cloneplan.ready_spec(xml) == ("NEW", "/lab/serial/tiny-1.log")
    assert xml.count("gridtool.invalid/ready") == 1 and "urn:app" in xml


def test_a_log_file_of_a_pty_console_counts_and_no_file_is_refused() -> None:
    pty = TEMPLATE.replace("<serial type='file'>\n      <source path='/lab/serial/tiny.log' "
                           "append='on'/>", "<serial type='pty'>\n      <log "
                           "file='/var/log/tiny.log' append='on'/>")
    assert cloneplan.ready_spec(clone_xml(template=pty))[1] == "/var/log/tiny-1.log"
    bare = TEMPLATE.replace("type='file'>\n      <source path='/lab/serial/tiny.log' "
                            "append='on'/>", "type='pty'>")
    with pytest.raises(cloneplan.ClonePlanError, match="serial console writing to a file"):
        cloneplan.check_ready(bare, "GRIDTOOL-READY")


@pytest.mark.parametrize("marker", ["has space", "x" * 65, "", "tab\there", "é"])
def test_bad_markers_are_refused(marker: str) -> None:
    with pytest.raises(cloneplan.ClonePlanError, match="invalid ready marker"):
        cloneplan.check_marker(marker)


def test_domain_id_only_for_a_live_domain() -> None:
    assert domain_id(live(clone_xml(), 7)) == "7"
    assert domain_id(clone_xml()) == ""
    assert domain_id(live(clone_xml(), -1)) == ""


# --------------------------------------------------------------------------- scanning


def test_marker_split_between_reads_is_found() -> None:
    scan = MarkerScan(b"GRIDTOOL-READY")
    assert not scan.feed(b"[ 0.1] booting\nGRIDTO")
    assert scan.feed(b"OL-READY 0e7c\n")


def test_a_shrunk_file_is_read_again_from_its_start() -> None:
    scan = MarkerScan(b"READY")
    scan.feed(b"x" * 100)
    assert not scan.truncated(100) and scan.offset == 100
    assert scan.truncated(10) and scan.offset == 0 and scan.tail == b""


# --------------------------------------------------------------------------- the watcher


def watcher_for(tmp_path: Path) -> tuple[ReadinessWatcher, list[str], Path, str]:
    told: list[str] = []
    watcher = ReadinessWatcher(told.append, clock=lambda: 1234.5)
    log = tmp_path / "tiny-1.log"
    xml = clone_xml().replace("/lab/serial/tiny-1.log", str(log))
    return watcher, told, log, xml


def test_running_guest_becomes_ready_when_the_marker_appears(tmp_path: Path) -> None:
    watcher, _told, log, xml = watcher_for(tmp_path)
    assert watcher.observe(record(), live(xml, 3)).ready_at == 0.0
    assert watcher.poll() == [], "no file yet"
    log.write_bytes(b"Linux version 6.1\n")
    assert watcher.poll() == []
    with log.open("ab") as f:
        f.write(b"GRIDTOOL-READY " + IDENT.uuid.encode() + b"\n")
    assert watcher.poll() == [IDENT.uuid]
    assert watcher.poll() == [], "reported once"
    assert watcher.observe(record(), live(xml, 3)).ready_at == 1234.5


def test_a_new_run_is_watched_afresh_and_a_stopped_guest_is_not_ready(tmp_path: Path) -> None:
    watcher, _told, log, xml = watcher_for(tmp_path)
    log.write_bytes(b"GRIDTOOL-READY\n")
    watcher.observe(record(), live(xml, 3))
    assert watcher.poll() == [IDENT.uuid]
    assert watcher.observe(record("shutoff", ready_at=1.0), xml).ready_at == 0.0
    log.write_bytes(b"")  # libvirt truncates the file at the next start
    assert watcher.observe(record(), live(xml, 4)).ready_at == 0.0
    assert watcher.poll() == []


def test_guests_without_a_marker_or_gone_are_not_watched(tmp_path: Path) -> None:
    watcher, _told, log, xml = watcher_for(tmp_path)
    plain = cloneplan.rewrite(TEMPLATE, IDENT, {"vda": "/img/x.qcow2"})
    log.write_bytes(b"GRIDTOOL-READY\n")
    assert watcher.observe(record(), live(plain, 3)).ready_at == 0.0
    assert watcher.poll() == []
    watcher.observe(record(), live(xml, 3))
    watcher.retain(set())
    assert watcher.poll() == []


# --------------------------------------------------------------------------- the record


def test_ready_at_round_trips_and_old_records_without_it_decode() -> None:
    rec = record(ready_at=99.5)
    assert decode(GuestRecord, "k", encode(rec)) == rec
    old = json.loads(encode(rec))
    del old["ready_at"]
    assert decode(GuestRecord, "k", json.dumps(old)).ready_at == 0.0
    old["ready_at"] = "soon"
    with pytest.raises(ValueError, match="ready_at"):
        decode(GuestRecord, "k", json.dumps(old))


def test_a_wake_counts_only_console_output_written_after_it() -> None:
    from agents.readiness import wrote_since

    assert not wrote_since(120, 120), "nothing new: the stale marker does not count"
    assert wrote_since(120, 140), "a resumed guest appended"
    assert wrote_since(120, 30), "a restore started the file afresh and wrote again"
    assert not wrote_since(120, 0), "started afresh, nothing written yet"
    assert not wrote_since(-1, -1), "no file"
    assert wrote_since(-1, 10), "the file appeared"
