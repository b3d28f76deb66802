"""The agent's ``xl`` adapter (agents.xenwatch) against a stand-in ``xl`` script: a real
process that answers, fails, or hangs as a dom0's ``xl`` does with xenstored stopped."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import libvirt
import pytest

from agents.agent import Agent
from agents.libvirt_source import LibvirtSource
from agents.xenwatch import XenWatch, XlError, probe, run_xl
from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xen import XenDomain, split_listing

TABLE = ("Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID"
         "                            Reason-Code\tSecurity Label\n"
         "Domain-0                                     0   768     1     r-----     1.0 "
         "00000000-0000-0000-0000-000000000000        -                -\n"
         "x1                                           3   128     1     -b----     1.0 "
         "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e09        -                -\n")
ONE = ('[{"domid": 3, "config": {"c_info": {"name": "x1", "uuid": '
       '"6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e09"}, "b_info": {"max_memkb": 131072}, '
       '"disks": [{"pdev_path": "/srv/x1.img", "vdev": "xvda"}]}}]')


def fake_xl(tmp_path: Path, body: str) -> str:
    script = tmp_path / "xl"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_a_probe_lists_what_xen_runs(tmp_path: Path) -> None:
    xl = fake_xl(tmp_path, f"cat <<'EOF'\n{TABLE}EOF\n")
    assert probe(xl).domains == (XenDomain(3, "x1", "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e09",
                                           memory_kib=131072),)


def test_xl_that_hangs_is_an_error_with_a_deadline(tmp_path: Path) -> None:
    xl = fake_xl(tmp_path, "exec sleep 30\n")
    got = probe(xl, timeout=0.5)
    assert got.domains == () and got.error == "xl list -v: no answer in 0.5 s"


def test_xl_that_fails_is_an_error_naming_its_last_line(tmp_path: Path) -> None:
    xl = fake_xl(tmp_path, "echo 'libxl: error: cannot init xl context' >&2\nexit 1\n")
    assert probe(xl).error == ("xl list -v exited 1: libxl: error: cannot init xl context")
    with pytest.raises(XlError, match="xl destroy 3 exited 1"):
        XenWatch(lambda: None, xl=xl).destroy(3)


def test_details_read_an_unknown_domains_disks(tmp_path: Path) -> None:
    xl = fake_xl(tmp_path, 'if [ "$3" = 3 ]; then cat <<\'EOF\'\n' + ONE +
                 "\nEOF\nelse echo \"Error: Domain '$3' does not exist.\" >&2; exit 1; fi\n")
    watch = XenWatch(lambda: None, xl=xl)
    seen = XenDomain(3, "x1", "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e09")
    assert watch.details(seen) == XenDomain(3, "x1", seen.uuid, (("xvda", "/srv/x1.img"),),
                                            131072)
    assert watch.details(XenDomain(4, "x2", seen.uuid)) is None  # gone meanwhile
    assert run_xl(["list", "-l", "3"], xl=xl).startswith('[{"domid": 3')


def test_the_watch_probes_on_its_period_and_when_woken(tmp_path: Path) -> None:
    xl = fake_xl(tmp_path, f"cat <<'EOF'\n{TABLE}EOF\n")
    probed = threading.Semaphore(0)
    listings: list[tuple[set[str], set[str]] | None] = [None, ({"u1"}, {"u2"})]
    # libvirt answering, then down
    watch = XenWatch(probed.release, interval=3600.0, xl=xl, active=listings.pop)
    watch.start()
    try:
        assert probed.acquire(timeout=10)  # the first probe at once
        assert watch.latest is not None and watch.latest.libvirt_active == frozenset({"u1"})
        assert watch.latest.libvirt_inactive == frozenset({"u2"})
        watch.wake()
        assert probed.acquire(timeout=10)  # woken long before the period ends
        assert watch.latest is not None and len(watch.latest.domains) == 1
        assert watch.latest.libvirt_active is None  # libvirt did not answer: no comparison
    finally:
        watch.stop()


def test_only_a_xen_uri_with_xl_here_gets_a_watch(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert XenWatch.for_uri("qemu:///system", lambda: None) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    assert XenWatch.for_uri("xen:///system", lambda: None) is None  # no xl here
    fake_xl(tmp_path, "exit 0\n")
    found = XenWatch.for_uri("xen+tcp://127.0.0.1:1/system", lambda: None)
    assert found is not None and found.xl == str(tmp_path / "xl")


class _Dom:
    def __init__(self, uuid: str, domid: int) -> None:
        self.uuid, self.domid = uuid, domid

    def UUIDString(self) -> str:
        return self.uuid

    def ID(self) -> int:
        return self.domid

    def name(self) -> str:
        return "pv1"


class _StartEndsAfterOneListing:
    """A libvirt connection whose guest's start (libxl's create: 25 s under TCG) ends right
    after the first listing the Xen watch reads: inactive (id -1), then active."""

    def __init__(self) -> None:
        self.listings = 0

    def listAllDomains(self, flags: int) -> list[_Dom]:
        started = self.listings > 0
        self.listings += 1
        if flags == libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE and not started:
            return []
        if flags == libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE and started:
            return []
        return [_Dom("6F1C2B1E-0D7A-4A4E-9F1A-2D3C4B5A6E09", 7 if started else -1)]


def test_a_start_ending_while_libvirt_is_read_is_never_missing_from_its_listing() -> None:
    """The lab's false "runs on hv1 behind libvirt's back (xl) on this host's fences": the
    watch read libvirt's active list, then its inactive one, and a PV start that ended
    between them was in neither (judged unknown to libvirt). One listing has it in one."""
    source = LibvirtSource("xen:///system", SharedStorageRules(), lambda *_: None,
                           lambda: None)
    source._conn = cast(libvirt.virConnect, _StartEndsAfterOneListing())
    listed = Agent._libvirt_active(cast(Agent, SimpleNamespace(libvirt=source)))
    assert listed is not None
    active, inactive = listed
    assert "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e09" in active | inactive


def test_one_listing_splits_by_domain_id() -> None:
    assert split_listing([("A", 3), ("b", -1)]) == ({"a"}, {"b"})
