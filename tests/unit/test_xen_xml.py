"""Xen under libvirt's libxl driver, on the XML level (Xen cannot run here): shared-disk
detection of AoE and iSCSI ``phy`` disks, the fence hook's decision and exit codes for
the libxl hook's operations, ``xen:///system`` through config and ``host add``, and
clones of a PV guest."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents import hook
from agents.claims import GuestClaims
from agents.hooksock import HookServer
from gridtool.bootstrap.rules import AddSpec, HostFacts, Layout, hook_driver, plan_add, plan_remove
from gridtool.clone import rules as cloneplan
from gridtool.config import load
from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS, SharedStorageRules
from gridtool.domains.xml import parse_domain
from gridtool.fencing.rules import Fence, FenceKind, Observed

UUID = "6f2d5c1e-7a3b-4c8d-9e0f-112233445566"
ISCSI = "/dev/disk/by-path/ip-192.0.2.10:3260-iscsi-iqn.2004-01.com.example:db-lun-1"
XEN_PV = f"""<domain type='xen' id='12'>
  <name>db1</name>
  <uuid>{UUID}</uuid>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <bootloader>/usr/lib/xen-4.17/bin/pygrub</bootloader>
  <os>
    <type arch='x86_64' machine='xenpv'>linux</type>
  </os>
  <on_crash>restart</on_crash>
  <devices>
    <disk type='block' device='disk'>
      <driver name='phy'/>
      <source dev='/dev/etherd/e1.2'/>
      <target dev='xvda' bus='xen'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='phy'/>
      <source dev='{ISCSI}'/>
      <target dev='xvdb' bus='xen'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='file'/>
      <source file='/var/lib/xen/images/scratch.img'/>
      <target dev='xvdc' bus='xen'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/rescue.iso'/>
      <target dev='xvdd' bus='xen'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='00:16:3e:12:34:56'/>
      <source bridge='xenbr0'/>
      <script path='vif-bridge'/>
      <target dev='vif12.0'/>
    </interface>
    <console type='pty' tty='/dev/pts/3'>
      <source path='/dev/pts/3'/>
      <target type='xen' port='0'/>
    </console>
  </devices>
</domain>"""
LOCAL_ONLY = XEN_PV.replace("/dev/etherd/e1.2", "/dev/vg0/db1-root").replace(
    ISCSI, "/dev/vg0/db1-data")


# --------------------------------------------------------------------------- detection


def test_aoe_and_iscsi_phy_disks_are_shared_with_stable_volume_ids() -> None:
    spec = parse_domain(XEN_PV, SharedStorageRules())
    disks = {d.target: d for d in spec.disks}
    assert set(disks) == {"xvda", "xvdb", "xvdc"}, "a CD-ROM is not fenced"
    assert disks["xvda"].kind == "block" and disks["xvda"].source == "/dev/etherd/e1.2"
    assert (disks["xvda"].shared, disks["xvda"].volume) == (True, "aoe-e1.2")
    assert disks["xvdb"].volume == "iscsi-iqn.2004-01.com.example:db-lun1"
    assert not disks["xvdc"].shared
    assert (spec.memory_mib, spec.vcpus) == (1024, 2)


def test_the_hook_asks_the_agent_only_for_shared_disks() -> None:
    patterns = list(DEFAULT_SHARED_PATTERNS)
    assert hook.may_be_fenced(XEN_PV, patterns)
    assert hook.may_be_fenced(XEN_PV.replace("/dev/etherd/e1.2", "/dev/vg0/root"), patterns)
    assert not hook.may_be_fenced(LOCAL_ONLY, patterns), "LVM-local PV guest: no round trip"
    assert hook.domain_uuid(XEN_PV) == UUID


# --------------------------------------------------------------------------- the hook


def run_hook(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             tmp_path: Path, op: str, sub: str, xml: str = XEN_PV) -> tuple[int, str, str]:
    """``hooks/libxl db1 OP SUB -`` (as ``host add`` installs it: with the shared
    patterns) with no agent listening on the socket."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(xml))
    shared = [a for p in DEFAULT_SHARED_PATTERNS for a in ("--shared", p)]
    code = hook.main(["--socket", str(tmp_path / "absent.sock"), "--timeout", "0.5", *shared,
                      "--", "db1", op, sub, "-"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("op,sub", [("prepare", "begin"), ("migrate", "begin"),
                                    ("restore", "begin")])
def test_libxl_start_and_incoming_migration_fail_closed_without_the_agent(
        monkeypatch, capsys, tmp_path, op: str, sub: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_hook(monkeypatch, capsys, tmp_path, op, sub)
    assert code == 1 and "fail closed" in err and "db1" in err
    assert out == "", "libxl reads stdout of 'migrate begin' as a rewritten domain XML"


@pytest.mark.parametrize("op,sub", [("start", "begin"), ("started", "begin"),
                                    ("stopped", "end"), ("release", "end"),
                                    ("reconnect", "begin")])
def test_other_libxl_operations_are_never_refused(
        monkeypatch, capsys, tmp_path, op: str, sub: str) -> None:  # type: ignore[no-untyped-def]
    # 'reconnect begin' failing would make libxl kill the running domains
    assert run_hook(monkeypatch, capsys, tmp_path, op, sub) == (0, "", "")


def test_local_only_xen_guest_starts_without_asking(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run_hook(monkeypatch, capsys, tmp_path, "prepare", "begin", LOCAL_ONLY)[0] == 0


def hook_server(holders: dict[str, str]) -> HookServer:
    """A hook server for xen1 whose fence reads return ``holders`` (pure logic: no etcd)."""
    def observe(volumes):  # type: ignore[no-untyped-def]
        return {v: Observed(Fence(v, holders[v], UUID, "db1", FenceKind.PINNED, 1.0), 7)
                if v in holders else None for v in volumes}
    fencer = SimpleNamespace(held={}, observe=observe)
    return HookServer("/nonexistent", host="xen1", rules=SharedStorageRules(),
                      fencer=fencer, claims=GuestClaims(), domains=SimpleNamespace(),  # type: ignore[arg-type]
                      on_change=lambda uuid: None)


def test_the_agents_decision_on_a_xen_guest() -> None:
    both = {"aoe-e1.2": "xen1", "iscsi-iqn.2004-01.com.example:db-lun1": "xen1"}
    ok, why = hook_server(both).check("prepare", UUID, "db1", XEN_PV)
    assert ok and "xen1 holds its fences" in why
    split = {**both, "iscsi-iqn.2004-01.com.example:db-lun1": "xen2"}
    ok, why = hook_server(split).check("prepare", UUID, "db1", XEN_PV)
    assert not ok and "held by xen2" in why, "every fence, not just one"
    ok, why = hook_server({}).check("prepare", UUID, "db1", LOCAL_ONLY)
    assert ok and why == "not fenced"


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize("uri,driver", [("xen:///system", "libxl"),
                                        ("xen+ssh://root@xen1/system", "libxl"),
                                        ("XEN:///", "libxl"), ("qemu:///system", "qemu"),
                                        ("qemu+tcp://127.0.0.1:16509/system", "qemu"),
                                        ("test:///default", "qemu")])
def test_hook_driver_follows_the_libvirt_uri(uri: str, driver: str) -> None:
    assert hook_driver(uri) == driver


def test_host_add_installs_the_libxl_hook_for_a_xen_uri_and_remove_takes_both() -> None:
    layout = Layout("/")
    spec = AddSpec("xen1", "xen:///system", "gridtool-0.1.0-py3-none-any.whl", b"PK",
                   "[agent]\nlibvirt_uri = xen:///system\n", "[Unit]\n", "#!/bin/sh\n",
                   layout)
    step = next(s for s in plan_add(spec, HostFacts(systemd=True)) if s.name == "hook")
    assert "/etc/libvirt/hooks/libxl.d/gridtool" in step.title and "hooks/qemu" not in step.apply
    libvirt_check = plan_add(spec, HostFacts(systemd=True))[0].check
    assert "xen:///system" in libvirt_check
    files = plan_remove(layout, HostFacts(systemd=True))[-1]
    assert "/etc/libvirt/hooks/libxl.d/gridtool" in files.apply
    assert "/etc/libvirt/hooks/qemu.d/gridtool" in files.apply


def test_xen_uri_through_config(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\nhost = xen1\nlibvirt_uri = xen:///system\n")
    assert load(str(conf), env={}).libvirt_uri == "xen:///system"
    assert load(None, env={"GRIDTOOL_LIBVIRT_URI": "xen+ssh://root@xen1/system"},
                default_file=tmp_path / "none").libvirt_uri == "xen+ssh://root@xen1/system"


# --------------------------------------------------------------------------- clones


def test_a_pv_guest_clones_onto_qdisk_overlays() -> None:
    template = LOCAL_ONLY.replace(" id='12'", "")
    disks = cloneplan.template_disks(template)
    assert [(d.target, d.kind) for d in disks] == [("xvda", "block"), ("xvdb", "block"),
                                                   ("xvdc", "file")]
    ident = cloneplan.CloneIdentity("db1-1", "0e7c3a52-aaaa-4bbb-8ccc-ddddeeeeffff",
                                    ("52:54:00:aa:bb:cc",))
    xml = cloneplan.rewrite(template, ident, {d.target: f"/img/{d.target}.qcow2"
                                              for d in disks})
    spec = parse_domain(xml)
    assert [(d.kind, d.source) for d in spec.disks] == [
        ("file", "/img/xvda.qcow2"), ("file", "/img/xvdb.qcow2"), ("file", "/img/xvdc.qcow2")]
    assert "/srv/iso/rescue.iso" in xml, "the CD-ROM stays as it is"
    assert "name=\"phy\"" not in xml and xml.count('<driver name="qemu" type="qcow2"') == 3
    assert "<bootloader>/usr/lib/xen-4.17/bin/pygrub</bootloader>" in xml
    assert "vif12.0" not in xml and "00:16:3e:12:34:56" not in xml
