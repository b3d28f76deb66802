"""Real Xen hosts (issue 17): ``gridtool lab up --hypervisor xen`` boots two QEMU machines
running Xen 4.17 and a Debian dom0 whose agent comes from gridtool's .deb; the checks
share that one lab (module scope: each dom0 takes minutes to boot under TCG) and run in
file order (the last one powers hv1 off).

Not in CI (marker ``xen``, excluded by scripts/test): run alone with
``pytest -m xen tests/integration/test_xen.py`` after ``gridtool lab build-xen-image``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from gridtool.config import Config
from gridtool.lab import dom0storage, xenimage, xenlab
from gridtool.lab.power import power_off
from gridtool.lab.xenha import lab_machine_manager
from gridtool.placement.shell import (
    XEN_LIVE_REFUSAL,
    EndState,
    Migrator,
    choose_mode,
    current_record,
)
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.records import GuestSettings, Violation, decode, encode
from tests.harness import xenbed
from tests.harness.testbed import wait_until
from tests.harness.xenbed import START_S, holder, host, in_dom0, start, state_of

pytestmark = [pytest.mark.xen, pytest.mark.timeout(1800),
              pytest.mark.usefixtures("no_guest_left_running")]

xen_lab = xenbed.lab_fixture("xen", hosts=2)
cfg, store, registry = xenbed.cfg, xenbed.store, xenbed.registry  # module-scoped fixtures
no_guest_left_running = xenbed.no_guest_left_running  # after each check


def disk(conn: libvirt.virConnect, name: str) -> str:
    """The path of ``name``'s disk in this dom0's pool (made when missing): the same
    path on every dom0 stands for shared storage (fenced)."""
    pool = xenlab.ensure_pool(conn)
    try:
        vol = pool.storageVolLookupByName(f"{name}.img")  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        vol = pool.createXML(  # type: ignore[attr-defined]
            f"<volume><name>{name}.img</name><capacity unit='MiB'>8</capacity>"
            "<target><format type='raw'/></target></volume>", 0)
    return str(vol.path())


def define(xen_lab: dict[str, Any], on: str, name: str) -> libvirt.virDomain:
    """Define PV guest ``name`` on host ``on`` (a disk in its pool: shared, so fenced)."""
    conn = libvirt.open(host(xen_lab, on).libvirt_uri)
    return conn.defineXML(xenlab.pv_guest_xml(name, disk(conn, name)))


def test_dom0_agents_register_from_the_package(xen_lab: dict[str, Any],
                                               registry: Registry) -> None:
    hosts, _ = registry.list_hosts()
    by_name = {h.name: h for h in hosts}
    assert set(by_name) == {"hv1", "hv2"}
    assert by_name["hv1"].hypervisor == "xen"
    assert by_name["hv1"].libvirt_uri == host(xen_lab, "hv1").libvirt_uri
    # the agent is the packaged one, run by its systemd unit in the dom0
    shown = in_dom0(host(xen_lab, "hv1"), "systemctl is-active gridtool-agent; "
                     "dpkg-query -W -f '${Version}' gridtool-agent")
    assert shown.stdout.startswith("active\n") and shown.stdout.endswith("-1"), shown
    # Domain-0 (which libvirt's libxl driver lists, id 0) is the host, never a guest
    conn = libvirt.open(host(xen_lab, "hv1").libvirt_uri)
    assert "Domain-0" in [d.name() for d in conn.listAllDomains(0)]
    for name in ("hv1", "hv2"):
        recs, _ = registry.guests_of(name)
        assert [r.name for r in recs.values() if r.name == "Domain-0"] == []
        assert (by_name[name].guests, by_name[name].running_guests, by_name[name].unhealthy) \
            == (len(recs), 0, "")


def test_the_agent_follows_libxl_domains(xen_lab: dict[str, Any], store: EtcdStore,
                                         registry: Registry, cfg: Config) -> None:
    dom = define(xen_lab, "hv1", "pv1")
    uuid = dom.UUIDString()
    wait_until(lambda: state_of(registry, "hv1", uuid) == "shutoff", 60,
               what="the defined PV guest in the registry")
    start(store, cfg, "hv1", dom.UUIDString(), dom.name())
    recs, _ = registry.guests_of("hv1")
    assert recs[uuid].fenced and holder(store, cfg, recs[uuid].volumes[0]) == "hv1"
    wait_until(lambda: "GRIDTOOL-HEARTBEAT" in host(xen_lab, "hv1").console("pv1"), 120,
               what="pv1's heartbeats on its console")
    dom.destroy()  # behind gridtool's back: the libxl event reaches the registry
    wait_until(lambda: state_of(registry, "hv1", uuid) == "shutoff", 60,
               what="the destroy seen through libxl's events")


def test_the_libxl_hook_refuses_a_start_held_elsewhere(xen_lab: dict[str, Any],
                                                       store: EtcdStore, registry: Registry,
                                                       cfg: Config) -> None:
    dom = define(xen_lab, "hv1", "pv2")
    start(store, cfg, "hv1", dom.UUIDString(), dom.name())
    other = define(xen_lab, "hv2", "pv2")
    with pytest.raises(libvirt.libvirtError) as exc:
        other.create()  # a bare 'virsh start' on hv2
    assert exc.value.get_error_code() == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED
    assert "fence is held by hv1" in str(exc.value)
    assert not other.isActive() and dom.isActive()


def xl_create(xen_host: xenlab.XenHost, name: str, uuid: str, path: str) -> None:
    """``xl create`` a PV guest of disk ``path`` in the dom0, behind libvirt's back (under
    TCG it takes tens of seconds; the agent may destroy it before it returns)."""
    config = (f'name = "{name}"\nuuid = "{uuid}"\ntype = "pv"\n'
              f'kernel = "{xenimage.GUEST_DIR}/vmlinuz"\n'
              f'ramdisk = "{xenimage.GUEST_DIR}/initramfs.cpio.gz"\n'
              'extra = "console=hvc0 quiet panic=-1"\nmemory = 128\nvcpus = 1\n'
              f'disk = [ "file:{path},xvda,w" ]\n')
    in_dom0(xen_host, f"cat > /tmp/{name}.cfg <<'EOF'\n{config}EOF\nxl create /tmp/{name}.cfg")


def xl_names(xen_host: xenlab.XenHost) -> list[str]:
    return [line.split()[0] for line in in_dom0(xen_host, "xl list").stdout.splitlines()[1:]
            if line.strip()]


def violation(store: EtcdStore, cfg: Config, on: str, uuid: str) -> Violation | None:
    item = store.get(cfg.keys.violation(on, uuid))
    return decode(Violation, item.key, item.value) if item else None


def test_xl_create_behind_libvirts_back_is_caught_as_an_intruder(
        xen_lab: dict[str, Any], store: EtcdStore, registry: Registry, cfg: Config) -> None:
    """pv3 runs on hv1 (holding its fence); the same guest made with ``xl create`` on hv2
    is invisible to hv2's libvirt, but its agent compares ``xl list`` with libvirt's list:
    it destroys it with ``xl destroy`` and records the violation."""
    dom = define(xen_lab, "hv1", "pv3")
    start(store, cfg, "hv1", dom.UUIDString(), dom.name())
    hv2 = host(xen_lab, "hv2")
    conn = libvirt.open(hv2.libvirt_uri)
    xl_create(hv2, "pv3", dom.UUIDString(), disk(conn, "pv3"))
    seen = wait_until(lambda: violation(store, cfg, "hv2", dom.UUIDString()), 120,
                      what="hv2's agent to catch the xl-made pv3")
    assert isinstance(seen, Violation)
    assert seen.action == "destroy" and "behind libvirt's back" in seen.message, seen
    assert "is held by hv1" in seen.message and seen.holder == "hv1", seen
    wait_until(lambda: "pv3" not in xl_names(hv2), 60, what="pv3 destroyed on hv2")
    assert dom.isActive() and holder(store, cfg, seen.volume) == "hv1"
    assert dom.UUIDString() not in {d.UUIDString() for d in conn.listAllDomains(0)}
    store.delete(cfg.keys.violation("hv2", dom.UUIDString()))


def gridtool(xen_lab: dict[str, Any], *argv: str, timeout: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
    """The gridtool CLI on the lab's config, as an operator runs it."""
    return subprocess.run([str(Path(sys.executable).parent / "gridtool"), "--config",
                           xen_lab["config"], *argv], capture_output=True, text=True,
                          check=False, timeout=timeout)


def check_json(xen_lab: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(gridtool(xen_lab, "check", "--json").stdout))


def unhealthy(registry: Registry, name: str) -> str:
    hosts, _ = registry.list_hosts()
    return next((h.unhealthy for h in hosts if h.name == name), "")


def test_a_stopped_xenstored_makes_the_host_unhealthy_not_empty(
        xen_lab: dict[str, Any], registry: Registry) -> None:
    """xenstored stopped (SIGSTOP) in hv2's dom0: ``xl`` hangs there, and hv2's agent
    reports the host unhealthy (host record, ``gridtool check``'s HOST_UNHEALTHY) and keeps
    its guest records; healthy again once xenstored runs on."""
    hv2 = host(xen_lab, "hv2")
    uuid = define(xen_lab, "hv2", "pv4").UUIDString()  # a guest record to keep
    wait_until(lambda: state_of(registry, "hv2", uuid) == "shutoff", 60,
               what="pv4 defined on hv2 in the registry")
    before, _ = registry.guests_of("hv2")
    assert in_dom0(hv2, "kill -STOP $(pidof oxenstored xenstored)").returncode == 0
    try:
        reason = wait_until(lambda: unhealthy(registry, "hv2"), 120,
                            what="hv2 reported unhealthy")
        assert isinstance(reason, str)
        assert "Xen toolstack not answering: xl list -v: no answer" in reason, reason
        found = [f for f in check_json(xen_lab)["findings"] if f["code"] == "HOST_UNHEALTHY"]
        assert [f["subject"] for f in found] == ["hv2"], found
        after, _ = registry.guests_of("hv2")
        assert set(after) == set(before)
    finally:
        in_dom0(hv2, "kill -CONT $(pidof oxenstored xenstored)")
    wait_until(lambda: not unhealthy(registry, "hv2"), 120, what="hv2 healthy again")


def define_on_lun(xen_lab: dict[str, Any], on: str, name: str, lun: int,
                  registry: Registry) -> str:
    """Define PV guest ``name`` on ``on`` with the segment's AoE LUN ``lun`` (a block
    device every dom0 attaches: really shared) and wait for its record; its uuid."""
    device = dom0storage.devices(xen_lab)["aoe"][lun - 1]
    conn = libvirt.open(host(xen_lab, on).libvirt_uri)
    try:
        uuid = str(conn.defineXML(xenlab.pv_guest_xml(name, device)).UUIDString())
    finally:
        conn.close()
    wait_until(lambda: state_of(registry, on, uuid) == "shutoff", 120,
               what=f"{name} defined on {on} in the registry")
    return uuid


def heartbeats_on(xen_lab: dict[str, Any], on: str, name: str) -> list[int]:
    """The heartbeat counters one read of ``name``'s console on ``on`` shows, read again
    until there are some (a 4 s ``xl console`` over ssh to a busy TCG dom0 may show none:
    seen in the whole-tier run at load 3-5)."""
    seen: list[int] = []

    def read() -> bool:
        seen[:] = beats(host(xen_lab, on).console(name))
        return bool(seen)

    wait_until(read, 300, what=f"{name}'s heartbeats on {on}'s console")
    return seen


def test_a_cold_migration_right_after_a_start_arrives_running(
        xen_lab: dict[str, Any], store: EtcdStore, registry: Registry, cfg: Config) -> None:
    """Issue 17: a guest on the AoE LUN moved with --cold right after its start arrived
    defined but not started (the registry still said shutoff under TCG). The move is
    taken from the registry's record as ``guest migrate`` takes it, at once after the
    start; the destination starts it by what hv1's agent found at the stop."""
    uuid = define_on_lun(xen_lab, "hv1", "cold1", 1, registry)
    start(store, cfg, "hv1", uuid, "cold1", wait_running=False)
    rec = current_record(registry.find_guest("cold1"), ["hv1", "hv2"])
    print(f"cold1's record when the move began: {rec.state}")
    result = Migrator(store, cfg.keys, intent_timeout=START_S).migrate(rec, "hv2", "cold")
    assert result.state is EndState.MOVED, result
    assert "cold1 runs on hv2" in result.message, result
    wait_until(lambda: state_of(registry, "hv2", uuid) == "running", 300,
               what="cold1 running on hv2 in the registry")
    assert holder(store, cfg, registry.guests_of("hv2")[0][uuid].volumes[0]) == "hv2"
    heartbeats_on(xen_lab, "hv2", "cold1")
    print(f"cold1 moved in {result.seconds:.1f} s: "
          + ", ".join(f"{p.phase} {p.seconds:.1f} s" for p in result.phases))


def beats(text: str) -> list[int]:
    """The heartbeat counters (one every 100 ms since the guest's boot) on a console."""
    return [int(n) for n in re.findall(r"GRIDTOOL-HEARTBEAT (\d+)", text)]


class RunningWatch:
    """Samples the guest's state in both dom0s' libvirt until stopped: every moment both
    said running is kept (there must be none)."""

    def __init__(self, xen_lab: dict[str, Any], uuid: str) -> None:
        self.conns = {n: libvirt.open(host(xen_lab, n).libvirt_uri) for n in ("hv1", "hv2")}
        self.uuid, self.samples = uuid, 0
        self.both: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _running(self, name: str) -> bool:
        try:
            dom = self.conns[name].lookupByUUIDString(self.uuid)
            return bool(dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING)
        except libvirt.libvirtError:
            return False

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self._running("hv1") and self._running("hv2"):
                self.both.append(time.monotonic())
            self.samples += 1

    def __enter__(self) -> RunningWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        for conn in self.conns.values():
            conn.close()


def test_a_paused_migration_moves_the_running_guest_with_its_fence(
        xen_lab: dict[str, Any], store: EtcdStore, registry: Registry, cfg: Config) -> None:
    """``--live`` between Xen hosts is refused at once (libxl's live save needs log-dirty
    mode, which Xen in a TCG machine refuses: "xc: Failed to enable logdirty"); the
    default on Xen is a paused migration: libxl's non-live save (the guest suspended while
    its memory is sent over the lab segment), restored paused on hv2, whose fence hook
    judges libxl's ``migrate begin`` by the guest's name; the fences move, then hv2
    resumes it. The guest never runs on both dom0s, and keeps its memory (its heartbeat
    counter goes on where it was on hv1)."""
    uuid = define_on_lun(xen_lab, "hv1", "moved1", 2, registry)
    done = gridtool(xen_lab, "guest", "migrate", "moved1", "--to", "hv2", "--live")
    assert done.returncode == 7 and done.stderr.count("\n") == 1, done.stderr
    assert XEN_LIVE_REFUSAL in done.stderr, done.stderr
    assert state_of(registry, "hv2", uuid) is None  # nothing touched
    start(store, cfg, "hv1", uuid, "moved1")
    before = heartbeats_on(xen_lab, "hv1", "moved1")
    rec = current_record(registry.find_guest("moved1"), ["hv1", "hv2"])
    hosts = {h.name: h for h in registry.list_hosts()[0]}
    mode = choose_mode(hosts["hv1"], hosts["hv2"], None)
    assert mode == "paused"
    with RunningWatch(xen_lab, uuid) as watch:
        result = Migrator(store, cfg.keys, intent_timeout=START_S).migrate(rec, "hv2", mode)
        print(f"moved1: {result.message} ({result.seconds:.1f} s: "
              + ", ".join(f"{p.phase} {p.seconds:.1f} s" for p in result.phases) + ")")
        if result.state is not EndState.MOVED:
            print(xenbed.journals(xen_lab, ["hv1", "hv2"]))
        assert result.state is EndState.MOVED, result
        wait_until(lambda: state_of(registry, "hv2", uuid) == "running", 300,
                   what="moved1 running on hv2 in the registry")
    assert watch.both == [] and watch.samples > 0, (watch.both, watch.samples)
    assert holder(store, cfg, rec.volumes[0]) == "hv2"
    assert state_of(registry, "hv1", uuid) in (None, "shutoff")
    after = heartbeats_on(xen_lab, "hv2", "moved1")
    assert before and after and min(after) > max(before), (before[-3:], after[:3])


def test_gridtool_clone_on_xen_boots_a_pv_guest_on_a_qcow2_overlay(
        xen_lab: dict[str, Any], store: EtcdStore, registry: Registry) -> None:
    """``template create`` freezes a PV guest's raw disk as a qcow2 golden image in hv1's
    images_dir; ``gridtool clone`` makes a qcow2 overlay of it and starts the clone, whose
    disk libxl serves with its qdisk back end (QEMU's Xen build in the dom0)."""
    dom = define(xen_lab, "hv1", "gold")
    wait_until(lambda: state_of(registry, "hv1", dom.UUIDString()) == "shutoff", 120,
               what="gold defined on hv1 in the registry")
    made = gridtool(xen_lab, "template", "create", "goldt", "--from", "gold", timeout=700)
    assert made.returncode == 0, made.stderr
    done = gridtool(xen_lab, "clone", "goldt", "--count", "1", "--on", "hv1", "--timeout",
                    str(START_S), "--json", timeout=START_S + 120)
    assert done.returncode == 0, done.stderr
    (clone,) = json.loads(done.stdout)["clones"]
    name = clone["name"]
    rec = registry.guests_of("hv1")[0][clone["uuid"]]
    assert rec.state == "running", rec
    (disk,) = rec.disks
    assert disk.source.startswith("/var/lib/gridtool/images/clones/hv1/"), disk
    shown = in_dom0(host(xen_lab, "hv1"), f"qemu-img info --output=json {disk.source}; "
                    "pgrep -fa xen-qemu-system-i386")
    info = json.loads(shown.stdout[:shown.stdout.rindex("}") + 1])
    assert info["format"] == "qcow2" and "templates/goldt/" in info["backing-filename"]
    assert "-xen-domid" in shown.stdout  # libxl's qdisk back end: a QEMU for the clone
    heartbeats_on(xen_lab, "hv1", name)


def volume_of(registry: Registry, uuid: str) -> str:
    recs, _ = registry.guests_of("hv1")
    return recs[uuid].volumes[0]


def test_an_ha_guest_restarts_on_the_other_dom0_after_a_power_off(
        xen_lab: dict[str, Any], store: EtcdStore, registry: Registry, cfg: Config) -> None:
    """hv1 runs HA guest ha1; hv1's machine is killed (``lab power-off``). The manager (on
    the lab machine) fences hv1 with the lab's power fence agent first, then restarts ha1
    on hv2, which takes its fence; ha1 prints heartbeats on hv2's console."""
    directory = Path(xen_lab["lab_dir"])
    dom = define(xen_lab, "hv1", "ha1")
    disk(libvirt.open(host(xen_lab, "hv2").libvirt_uri), "ha1")  # its "shared" disk there
    uuid = dom.UUIDString()
    with lab_machine_manager(directory, cfg):
        start(store, cfg, "hv1", dom.UUIDString(), dom.name())
        # HA only once it runs on hv1: an HA guest found off is started by the manager
        # wherever it fits (seen: on hv2, before this start on hv1 could run)
        store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, "ha1", ha=True)))
        wait_until(lambda: (item := store.get(cfg.keys.fence(volume_of(registry, uuid))))
                   is not None and item.lease != 0, 60, what="ha1's fence bound to hv1's lease")
        recs, _ = registry.guests_of("hv1")
        volume = recs[uuid].volumes[0]
        assert holder(store, cfg, volume) == "hv1"
        began = time.monotonic()
        power_off(directory, "hv1")
        wait_until(lambda: state_of(registry, "hv2", uuid) == "running", 600,
                   what="ha1 restarted on hv2")
        took = time.monotonic() - began
        assert holder(store, cfg, volume) == "hv2"
        assert not host(xen_lab, "hv1").running()
        wait_until(lambda: "GRIDTOOL-HEARTBEAT" in host(xen_lab, "hv2").console("ha1"), 120,
                   what="ha1's heartbeats on hv2's console")
    print(f"ha1 running on hv2 {took:.1f} s after hv1's power-off")
