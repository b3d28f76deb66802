"""The pure core of ``host show`` and ``guest show``: facts for people (times as times,
units, '-' for nothing) and the JSON (raw values) from the same gathered data."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from gridtool.cli.common.output import NOTHING, guest_state, seconds, text, utc, when
from gridtool.cli.guest.facts import GuestData, disk_rows, fence_rows, guest_doc, guest_facts
from gridtool.cli.host.facts import HostData, guest_rows, host_doc, host_facts
from gridtool.cli.host.facts import fence_rows as host_fence_rows
from gridtool.registry.fleet import guest_view
from gridtool.registry.hostconf import HostConf
from gridtool.registry.model import Disk, GuestRecord, HostRecord, as_dict
from gridtool.registry.records import GuestSettings

NOW = 1_796_189_227.5  # 2026-12-02 05:27:07 UTC
HOST = HostRecord("hv1", "qemu:///system", "kvm", 16, 3072, 2560, "0.1.0",
                  reported_at=NOW - 12, started_at=NOW - 3600, watchdog=True,
                  watchdog_timeout=10.0)
SHARED = Disk("vda", "/dev/etherd/e1.2", "block", shared=True, volume="aoe-e1.2")
WEB = GuestRecord("u-web", "web", "hv1", "running", 1, 256, NOW - 30, (SHARED,),
                  fence_token=23)
DB = GuestRecord("u-db", "db", "hv1", "shutoff", 2, 1024, NOW - 30,
                 (Disk("vda", "/var/lib/db.qcow2"),))
FENCE = {"volume": "aoe-e1.2", "guest": "u-web", "guest_name": "web", "holder": "hv1",
         "token": 23, "since": NOW - 300, "kind": "ha", "leased": True}


def up_host(**changes: object) -> HostData:
    data: dict[str, Any] = {
        "name": "hv1", "record": HOST, "lease_id": 0x694D8A2F, "lease": (10, 7.0),
        "guests": [DB, WEB], "kinds": {"u-web": "ha", "u-db": "none"}, "fences": [FENCE],
        "conf": HostConf("hv1")}
    return HostData(**{**data, **changes})


def test_when_and_friends() -> None:
    assert utc(NOW - 12) == "2026-12-02 05:26:55 UTC"
    assert when(NOW - 12, NOW) == "12s ago (2026-12-02 05:26:55 UTC)"
    assert when(0.0, NOW) == when(None, NOW) == NOTHING == "-"
    assert (seconds(10), seconds(2.5)) == ("10 s", "2.5 s")
    values: tuple[object, ...] = ((), [], "", None, ("a", "b"), True, False, 0)
    assert [text(v) for v in values] == [
        "-", "-", "-", "-", "a, b", "yes", "no", "0"]
    assert guest_state("unknown", "running").endswith("unknown[/bold red] (host lost; "
                                                       "last running)")


def test_host_facts_put_the_safety_state_first_in_human_units() -> None:
    facts = host_facts(up_host(), NOW)
    rows = dict(facts)
    assert [k for k, _ in facts[:5]] == ["state", "lease", "last keepalive", "protection",
                                         "fences held"]
    assert rows["state"] == "up"
    assert rows["lease"] == "TTL 10 s, 7 s left (id 694d8a2f)"
    assert rows["last keepalive"] == "3s ago (2026-12-02 05:27:04 UTC)"  # 10 - 7 s ago
    assert rows["protection"] == "working watchdog (10 s timeout)"
    assert rows["fences held"] == "1 (1 ha)"
    assert rows["guests"] == "2 (1 running, 1 shutoff)"
    assert (rows["HA guests"], rows["pinned guests"]) == ("1", "0")
    assert rows["agent version"] == "0.1.0"
    assert rows["agent started"] == "1h ago (2026-12-02 04:27:07 UTC)"
    assert rows["last report"] == "12s ago (2026-12-02 05:26:55 UTC)"
    assert (rows["memory"], rows["free memory"]) == ("3.0 GiB", "2.5 GiB")
    assert rows["labels"] == rows["storage"] == "-"
    assert not [v for v in rows.values() if re.fullmatch(r"[\d.]+", v) and v.count(".") == 1]
    assert host_fence_rows(up_host(), NOW) == [
        ("aoe-e1.2", "web", "23", "ha", "5m ago (2026-12-02 05:22:07 UTC)")]
    assert [r[:3] for r in guest_rows(up_host())] == [
        ("db", "[dim]shutoff[/dim]", "-"), ("web", "[green]running[/green]", "HA")]


def test_host_doc_keeps_the_raw_record_and_adds_the_facts() -> None:
    doc = host_doc(up_host(), NOW)
    assert doc["host"] == as_dict(HOST)  # epoch seconds and MiB, as before
    assert [g["name"] for g in doc["guests"]] == ["db", "web"]
    assert doc["guests"][1] == {**as_dict(WEB), "kind": "ha"}
    assert doc["state"] == "up" and doc["draining"] is None
    assert doc["lease"] == {"id": 0x694D8A2F, "granted_ttl": 10, "remaining_ttl": 7.0,
                            "last_keepalive": NOW - 3}
    assert (doc["fences"], doc["ha_guests"], doc["pinned_guests"]) == ([FENCE], 1, 0)
    assert doc["protected"] is True
    assert doc["confirmed_dead"] is None
    json.dumps(doc)  # plain data


def test_protection_says_what_keeps_an_ha_guest_from_running_twice() -> None:
    def protection(record: HostRecord) -> tuple[str, bool]:
        data = up_host(record=record)
        return dict(host_facts(data, NOW))["protection"], host_doc(data, NOW)["protected"]

    bare = replace(HOST, watchdog=False, watchdog_timeout=0.0)
    assert protection(bare) == (
        "none: host hv1 has no working watchdog and cannot be fenced: an HA guest there "
        "could run twice if its agent hung", False)
    assert protection(replace(bare, fencing=("power", "storage"))) == (
        "fencing: power, storage", True)
    assert protection(replace(HOST, fencing=("storage",))) == (
        "working watchdog (10 s timeout); fencing: storage", True)


def test_draining_and_lost_hosts() -> None:
    draining = up_host(conf=HostConf("hv1", True, NOW - 60, "ops@adm1", "disk swap"))
    assert dict(host_facts(draining, NOW))["state"] == (
        "draining since 1m ago (2026-12-02 05:26:07 UTC) by ops@adm1: disk swap")
    doc = host_doc(draining, NOW)
    assert doc["state"] == "draining"
    assert doc["draining"] == {"since": NOW - 60, "by": "ops@adm1", "reason": "disk swap"}

    lost = up_host(record=None, lease_id=0, lease=None, conf=None,
                   kinds={"u-web": "pinned", "u-db": "none"})
    rows = dict(host_facts(lost, NOW))
    assert rows["state"] == "lost (its lease expired)" and rows["lease"] == "expired"
    assert rows["guests"] == "2 (unknown; last reported 1 running, 1 shutoff)"
    assert not {"agent version", "memory", "protection"} & set(rows)  # nothing known of them
    assert guest_rows(lost)[1][1].endswith("(host lost; last running)")
    doc = host_doc(lost, NOW)
    assert (doc["host"], doc["state"], doc["lease"], doc["pinned_guests"], doc["protected"]) == (
        None, "lost", None, 1, None)

    dead = up_host(record=None, lease=None, dead={"by": "ops@adm1", "at": NOW - 5})
    assert dict(host_facts(dead, NOW))["state"] == (
        "lost (confirmed dead by ops@adm1 5s ago (2026-12-02 05:27:02 UTC))")
    assert host_doc(dead, NOW)["confirmed_dead"] == {"by": "ops@adm1", "at": NOW - 5}


def guest(record: GuestRecord = WEB, live: frozenset[str] = frozenset({"hv1"}),
          **changes: object) -> GuestData:
    return GuestData(guest_view(record, live), **changes)  # type: ignore[arg-type]


def test_guest_facts_say_who_may_run_it() -> None:
    ha = GuestSettings("u-web", "web", ha=True, desired="running",
                       attempts=[[NOW - 600, 1.0], [NOW - 120, 0.0, 1.0]])
    data = guest(settings=ha, fences=[FENCE], template="worker", pool="workers")
    rows = dict(guest_facts(data, NOW))
    assert rows["policy"] == "HA: restarted on another host when hv1 dies"
    assert (rows["desired"], rows["manager"]) == ("running", "-")
    assert rows["HA restarts"] == "2 (1 failed), last 2m ago (2026-12-02 05:25:07 UTC)"
    assert (rows["template"], rows["pool"], rows["anti-affinity"]) == ("worker", "workers", "-")
    assert (rows["memory"], rows["persistent"], rows["autostart"]) == ("256 MiB", "yes", "no")
    assert rows["updated"] == "30s ago (2026-12-02 05:26:37 UTC)"
    assert rows["ready"] == "-"  # no ready marker seen: not 'ready_at 0.0'
    assert fence_rows(data, NOW) == [
        ("aoe-e1.2", "hv1", "23", "ha", "5m ago (2026-12-02 05:22:07 UTC)")]
    assert disk_rows(data) == [("vda", "/dev/etherd/e1.2", "block", "yes", "aoe-e1.2")]
    nolun = Disk("sdb", "iqn.2026-12.lab:t1/", "network", "iscsi", shared=True)
    unidentified = replace(data, view={**data.view, "disks": [*data.view["disks"],
                                                              nolun.__dict__]})
    assert disk_rows(unidentified)[1] == ("sdb", "iqn.2026-12.lab:t1/", "network", "yes",
                                          "cannot be identified: the guest may not start")

    doc = guest_doc(data)
    assert {k: doc[k] for k in guest_view(WEB, frozenset({"hv1"}))} == guest_view(
        WEB, frozenset({"hv1"}))  # what scripts read stays as it was
    assert (doc["kind"], doc["settings"]["ha"], doc["fences"], doc["template"], doc["pool"],
            doc["waiting"]) == ("ha", True, [FENCE], "worker", "workers", None)
    json.dumps(doc)


def test_pinned_guest_waiting_for_the_manager_and_an_unfenced_one() -> None:
    waiting = "pinned: host hv1 unreachable; waiting for `host confirm-dead hv1`"
    data = guest(live=frozenset(), waiting=waiting)
    rows = dict(guest_facts(data, NOW))
    assert rows["policy"] == "pinned: moved only after 'gridtool host confirm-dead hv1'"
    assert rows["manager"] == f"waiting: {waiting}"
    assert rows["state"].endswith("(host lost; last running)")
    assert rows["desired"] == rows["HA restarts"] == rows["template"] == rows["pool"] == "-"
    assert fence_rows(data, NOW) == [("aoe-e1.2", "-", "-", "-", "-")]  # not held
    assert guest_doc(data)["kind"] == "pinned" and guest_doc(data)["settings"] is None

    gave_up = guest(DB, settings=GuestSettings("u-db", "db", error="restart limit reached"))
    rows = dict(guest_facts(gave_up, NOW))
    assert rows["policy"] == "not fenced (no disk on shared storage)"
    assert rows["manager"] == "gave up: restart limit reached"
    assert fence_rows(gave_up, NOW) == [] and guest_doc(gave_up)["kind"] == "none"
