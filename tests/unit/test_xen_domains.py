"""Xen's own view beside libvirt's (gridtool.domains.xen, pure) and the agent's use of
it: Domain-0 is never a guest, ``xl``-made domains are found and judged, a toolstack
that does not answer makes the host unhealthy."""

from __future__ import annotations

import json

import pytest

from gridtool.domains.devices import parse_local_domain
from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xen import (
    XenDomain,
    XlListError,
    as_record,
    domain_xml,
    health,
    is_dom0,
    judge_unknown,
    parse_xl_list,
    parse_xl_verbose,
    unknown_domains,
)

RULES = SharedStorageRules(("/var/lib/gridtool-lab/shared/*", "/dev/etherd/*"))
U1 = "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e01"
U2 = "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e02"


def xl_entry(domid: int, name: str, uuid: str, disks: list[tuple[str, str]]) -> dict:
    """One domain of ``xl list -l``'s JSON (the fields this code reads)."""
    return {"domid": domid, "config": {
        "c_info": {"type": "pv", "name": name, "uuid": uuid},
        "b_info": {"max_memkb": 131072},
        "disks": [{"pdev_path": p, "vdev": v, "backend": "phy", "readwrite": 1}
                  for v, p in disks]}}


def test_domain_0_is_never_a_guest() -> None:
    assert is_dom0(0, "Domain-0") and is_dom0(0, "") and is_dom0(-1, "Domain-0")
    assert not is_dom0(1, "web1") and not is_dom0(-1, "web1")  # -1: a defined, off guest


def test_xl_list_json_is_parsed_without_domain_0() -> None:
    text = json.dumps([
        xl_entry(0, "Domain-0", "00000000-0000-0000-0000-000000000000", []),
        xl_entry(3, "pv1", U1.upper(), [("xvda", "/var/lib/gridtool-lab/shared/pv1.img")])])
    (dom,) = parse_xl_list(text)
    assert dom == XenDomain(3, "pv1", U1, (("xvda", "/var/lib/gridtool-lab/shared/pv1.img"),),
                            131072)
    assert parse_xl_list("") == () and parse_xl_list("[]") == ()


@pytest.mark.parametrize("text", ["xl: command not found", "{}", '[{"domid": 1}]',
                                  '[{"domid": "x", "config": {"c_info": {}}}]'])
def test_other_xl_output_is_an_error(text: str) -> None:
    with pytest.raises(XlListError, match=r"^xl list -l: "):
        parse_xl_list(text)


def test_an_unknown_domain_counts_once_seen_in_two_probes() -> None:
    pv1, pv2 = XenDomain(3, "pv1", U1), XenDomain(4, "pv2", U2)
    # libvirt knows pv1; pv2 is new: not yet (libvirt may be starting it right now)
    assert unknown_domains([pv1, pv2], {U1.upper()}, before=[pv1]) == ()
    assert unknown_domains([pv1, pv2], {U1}, before=[pv1, pv2]) == (pv2,)
    # the same uuid under a new id (destroyed and made again): a new domain, wait again
    assert unknown_domains([XenDomain(5, "pv2", U2)], set(), before=[pv2]) == ()
    assert unknown_domains([pv2], {U2}, before=[pv2]) == ()  # libvirt counts it now


def record(dom: XenDomain, rules: SharedStorageRules = RULES) -> object:
    """What the agent makes of an xl-made domain."""
    return as_record(dom, "hv2", parse_local_domain(domain_xml(dom), rules).disks, 1.0)


def test_an_xl_domain_gets_the_volume_ids_of_the_same_libvirt_guest() -> None:
    dom = XenDomain(4, "p<v>2", U2, (("xvda", "/var/lib/gridtool-lab/shared/pv2.img"),
                                     ("xvdb", "/var/lib/local/scratch.img"),
                                     ("xvdc", "/dev/etherd/e1.2")), 131072)
    rec = record(dom)
    libvirt_guest = parse_local_domain(f"""<domain type='xen'><name>pv2</name>
      <uuid>{U2}</uuid><memory unit='MiB'>128</memory><devices>
      <disk type='file'><driver name='phy'/><source file='/var/lib/gridtool-lab/shared/pv2.img'/>
        <target dev='xvda' bus='xen'/></disk>
      <disk type='block'><source dev='/dev/etherd/e1.2'/><target dev='xvdc'/></disk>
      </devices></domain>""", RULES)
    assert rec.fenced and rec.volumes == tuple(sorted(
        d.volume for d in libvirt_guest.disks if d.volume))
    assert rec.volumes == ("aoe-e1.2", "path-var%2Flib%2Fgridtool-lab%2Fshared%2Fpv2.img")
    assert (rec.uuid, rec.name, rec.host, rec.state, rec.intruder, rec.memory_mib) == (
        U2, "p<v>2", "hv2", "running", True, 128)


@pytest.mark.parametrize("holders,defined,action,words", [
    ({"aoe-e1.2": "hv1"}, False, "destroy", "fence aoe-e1.2 is held by hv1; destroy it"),
    ({"aoe-e1.2": "hv1"}, True, "destroy", "held by hv1"),  # whatever libvirt defines
    ({"aoe-e1.2": "an unreadable fence record"}, False, "destroy", "held by an unreadable"),
    ({"aoe-e1.2": None}, False, "report", "unfenced (aoe-e1.2 is free); libvirt cannot"),
    ({"aoe-e1.2": None}, True, "report", "unfenced"),  # a start without its fence
    ({}, True, "report", "unfenced"),  # no fence record at all
    ({"aoe-e1.2": "hv2"}, False, "report", "on this host's fences; libvirt cannot manage"),
])
def test_an_xl_domain_on_a_fenced_disk_is_an_intruder(holders: dict, defined: bool,
                                                      action: str, words: str) -> None:
    rec = record(XenDomain(4, "pv2", U2, (("xvda", "/dev/etherd/e1.2"),)))
    got, why = judge_unknown("hv2", rec, holders, defined)
    assert got == action and words in why
    assert why.startswith("fence violation: pv2 (" + U2 + ") runs on hv2 behind libvirt's")


def test_libvirts_own_start_on_this_hosts_fences_is_only_logged() -> None:
    """libxl creates the domain (``xl`` lists it) long before libvirt counts it active:
    with its fences held here and the uuid defined in libvirt it is no violation."""
    rec = record(XenDomain(4, "pv2", U2, (("xvda", "/dev/etherd/e1.2"),)))
    action, why = judge_unknown("hv2", rec, {"aoe-e1.2": "hv2"}, libvirt_defines=True)
    assert action == "log" and "as libvirt starts or receives it" in why
    assert "violation" not in why


def test_an_xl_domain_without_shared_disks_is_only_logged() -> None:
    rec = record(XenDomain(4, "tmp", U2, (("xvda", "/srv/tmp.img"),)))
    assert judge_unknown("hv2", rec, {}) == (
        "log", f"tmp ({U2}) runs on hv2 behind libvirt's back (xl); no shared disk")


def test_a_toolstack_that_does_not_answer_makes_the_host_unhealthy() -> None:
    assert health(None) == ""
    assert health("xl list -l: no answer in 10 s") == (
        "Xen toolstack not answering: xl list -l: no answer in 10 s")


XL_LIST_V = "".join(line + "\n" for line in (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID"
    "                            Reason-Code\tSecurity Label",
    "Domain-0                                     0   768     1     r-----     357.6 "
    "00000000-0000-0000-0000-000000000000        -                -",
    "x1                                           1   128     1     -b----      40.2 "
    "6F1C2B1E-0D7A-4A4E-9F1A-2D3C4B5A6E09        -                -",
    "my guest                                    12   256     2     -b----       1.0 "
    "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e0a        -                -",
))  # as seen in a lab dom0 (Xen 4.17), plus a name with a space


def test_xl_list_verbose_is_parsed_without_domain_0() -> None:
    assert parse_xl_verbose(XL_LIST_V) == (
        XenDomain(1, "x1", "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e09", memory_kib=128 * 1024),
        XenDomain(12, "my guest", "6f1c2b1e-0d7a-4a4e-9f1a-2d3c4b5a6e0a",
                  memory_kib=256 * 1024))
    only_dom0 = "\n".join(XL_LIST_V.splitlines()[:2])
    assert parse_xl_verbose(only_dom0) == ()


@pytest.mark.parametrize("text", ["", "Error: xenstore is down", XL_LIST_V + "x2 one two\n"])
def test_other_xl_list_verbose_output_is_an_error(text: str) -> None:
    with pytest.raises(XlListError, match=r"^xl list -v: "):
        parse_xl_verbose(text)
