"""Bring a lab up and down: etcd, simulated hosts (libvirtd + agent), a connection keeper."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt

from gridtool.config import Config, render
from gridtool.lab import dom0storage, initiator, qemu, xenlab
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.etcd import EtcdCluster
from gridtool.lab.hosts import LabHost, sample_domain_xml, watchdog_timeout_for
from gridtool.lab.power import initiators_of
from gridtool.lab.procs import AGENT_MARKER, LabError, spawn, stop_pid, wait_for
from gridtool.lab.state import pid_alive, read_state, state_path, write_file
from gridtool.registry.upkeep import SnapshotStatus

Progress = Callable[[str], None]
#: test: libvirt's test driver; qemu: real QEMU guests; xen: Xen dom0s in QEMU machines.
HYPERVISORS = ("test", "qemu", "xen")
#: The lab's shared storage: files in the lab dir, or LUNs of a lab-owned iSCSI target.
STORAGE = ("files", "iscsi")


def host_from(entry: dict) -> LabHost:
    """A lab state entry as its host object (QEMU, Xen or test driver)."""
    if entry.get("hypervisor") == "xen":
        return xenlab.XenHost.from_dict(entry)
    return qemu.QemuHost.from_dict(entry) if entry.get("hypervisor") == "qemu" \
        else LabHost.from_dict(entry)


def _quiet(_msg: str) -> None:
    pass


def is_up(directory: Path) -> bool:
    state = read_state(directory)
    if not state:
        return False
    return any(pid_alive(m.get("pid")) for m in state["etcd"]["members"])


def up(directory: Path, hosts: int = 3, guests: int = 2, etcd_members: int = 1,
       ttl: int = 10, progress: Progress = _quiet, insecure: bool = False,
       hypervisor: str = "test", storage: str | None = None,
       power_fence: bool = True) -> dict[str, Any]:
    """Start a lab under ``directory`` and return its state (also saved as lab.json).

    etcd authentication is on (credentials in ``<directory>/credentials``: the CLI runs as
    the admin user, each agent as its host's user) unless ``insecure``. ``storage`` iscsi
    also starts the lab's iSCSI target (:mod:`gridtool.lab.iscsi`) and each host's
    initiator, and a QEMU lab's fenced guests get their data disks on its LUNs (default:
    iscsi for qemu labs, files for test-driver ones). Every host gets the
    lab's power fence agent (``fence_gridtool_lab``) unless not ``power_fence``: the
    manager then takes the timed path."""
    if hosts < 1 or guests < 0 or etcd_members not in (1, 3):
        raise LabError("need --hosts >= 1, --guests >= 0 and --etcd-members 1 or 3")
    if hypervisor not in HYPERVISORS:
        raise LabError(f"unknown hypervisor {hypervisor!r} ({', '.join(HYPERVISORS)})")
    storage = storage or default_storage(hypervisor)
    if storage not in STORAGE:
        raise LabError(f"unknown storage {storage!r} ({' or '.join(STORAGE)})")
    if hypervisor == "xen" and storage != "files":
        raise LabError("a Xen lab has --storage files only (its dom0s' own initiators come "
                       "with the lab's L2 segment)")
    if is_up(directory):
        raise LabError(f"a lab is already up in {directory} (run 'gridtool lab down' first)")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o755)  # ours alone: see gridtool.lab.state
    state: dict[str, Any] = {"v": 1, "lab_dir": str(directory), "created_at": time.time(),
                             "config": str(directory / "gridtool.conf")}
    state["hypervisor"] = hypervisor  # qemu: real guests (gridtool.lab.qemu)
    state["storage"] = storage
    # a Xen lab's managers run in its dom0s, which cannot run the lab's fence agent (it
    # kills processes on this machine): they take the timed path
    state["power_fence"] = power_fence and hypervisor != "xen"
    try:
        _up(directory, state, hosts, guests, etcd_members, ttl, progress, insecure)
    except BaseException:
        _save(directory, state)
        down(directory)
        raise
    return state


def default_storage(hypervisor: str) -> str:
    """A QEMU lab's guests write to iSCSI LUNs unless told otherwise (``files``); a
    test-driver lab's guests have no real disks."""
    return "iscsi" if hypervisor == "qemu" else "files"


def lun_count(hypervisor: str, hosts: int, guests: int) -> int:
    """How many LUNs the lab's target exports: one per fenced sample guest of a QEMU lab
    (every second guest of each host), at least 2."""
    return max(2, hosts * (guests // 2)) if hypervisor == "qemu" else 2


def _up(directory: Path, state: dict[str, Any], hosts: int, guests: int, etcd_members: int,
        ttl: int, progress: Progress, insecure: bool = False) -> None:
    progress(f"starting etcd ({etcd_members} member{'s' if etcd_members > 1 else ''})")
    cluster = EtcdCluster.create(directory, etcd_members)
    state["etcd"] = cluster.to_dict()
    cluster.start()
    state["etcd"] = cluster.to_dict()
    state["etcd_endpoints"] = cluster.endpoints
    cfg = Config(endpoints=tuple(cluster.endpoints), ttl=ttl, resync_interval=30.0,
                 images_dir=str(directory / "images"))  # the lab's "shared storage"
    names = [f"hv{i}" for i in range(1, hosts + 1)]
    if state.get("storage") == "iscsi":
        progress("starting the iSCSI target (tgtd) and the hosts' initiators")
        target = _start_target(directory, state, names,
                               lun_count(state["hypervisor"], hosts, guests))
        cfg = replace(cfg, pr_fence_initiator=lab_iscsi.MANAGER_INITIATOR,
                      pr_portals=(f"{target.iqn}={target.portal}",))  # managers fence there
    if state.get("hypervisor") == "xen":
        progress("starting the lab segment: its iSCSI portal and AoE targets (vblade)")
        _start_segment(directory, state, names)
    if not insecure:
        progress("enabling etcd authentication")
        cfg = _enable_auth(cfg, directory / "credentials", names)
    state["auth"] = not insecure
    write_file(Path(state["config"]), render(cfg))  # password_file, never the password
    qemu_hosts = (qemu.lab_hosts(directory, names, iscsi="iscsi" in state)
                  if state.get("hypervisor") == "qemu" else [])
    xen_hosts = xenlab.lab_hosts(directory, names) if state.get("hypervisor") == "xen" else []
    lab_hosts: list[LabHost] = (list(qemu_hosts) or list(xen_hosts) or
                                [LabHost(name, str(directory / "hosts" / name)) for name in names])
    state["hosts"] = []
    for host in lab_hosts:
        progress(f"starting libvirtd for {host.name}")
        host.start_libvirtd()
        state["hosts"].append(host.to_dict())
    if state.get("power_fence"):
        progress("configuring the lab fence agent")
        _configure_fence_agents(cfg, directory, [h.name for h in lab_hosts])
    progress("defining sample guests")
    state["keeper_pid"] = (0 if state.get("hypervisor") != "test"  # guests boot below
                           else _seed_and_keep(directory, lab_hosts, guests, ttl))
    for host in lab_hosts:
        progress(f"starting agent for {host.name}")
        host.write_agent_conf(_agent_cfg(_registering(replace(cfg, manager=True), state,
                                                      host.name), host.name))  # candidates
        host.start_agent()
    state["hosts"] = [h.to_dict() for h in lab_hosts]
    _save(directory, state)
    if xen_hosts:  # each agent starts as its dom0 boots
        progress("booting the Xen dom0s (TCG: minutes)")
        xenlab.wait_booted(xen_hosts)
        progress("waiting for the dom0s' agents to register")
        wait_registered(cfg, names, 0, timeout=xenlab.BOOT_TIMEOUT)
        progress("starting sample PV guests")
        xenlab.seed_guests(cfg, xen_hosts, guests)
    if state.get("hypervisor") == "qemu":  # started through the agents: the hook lets them
        progress("booting sample QEMU guests")
        qemu.seed_guests(cfg, qemu_hosts, guests, directory, _lun_sources(directory, state))
    progress("waiting for every host to report to the registry")
    wait_registered(cfg, [h.name for h in lab_hosts], hosts * guests)


def _registering(cfg: Config, state: dict[str, Any], name: str) -> Config:
    """Host ``name``'s agent registers its PR key through its initiator (iSCSI labs), or
    with sg_persist on its dom0 kernel's session (Xen labs: the segment's portal)."""
    if "segment" in state:
        return replace(cfg, pr_backend="sg_persist")
    where = {e["host"]: e["dir"] for e in state.get("initiators", [])}.get(name)
    return replace(cfg, pr_backend="initiator", pr_initiator_dir=where) if where else cfg


#: A Xen lab's LUNs on its segment: AoE (vblade) and iSCSI (tgtd's segment portal).
XEN_AOE_LUNS = 2
XEN_ISCSI_LUNS = 2


def _start_segment(directory: Path, state: dict[str, Any], names: list[str]) -> None:
    """A Xen lab's shared storage for its dom0 kernels: tgtd (no host initiators: each
    dom0 logs in from its own kernel), the segment, vblades, tgtd's portal on it; saved
    at once, since each dom0's machine reads it from the lab state
    (:func:`gridtool.lab.xenlab.netdev_args`)."""
    _start_tgtd(directory, state, names, XEN_ISCSI_LUNS)
    try:
        dom0storage.start(directory, state, names, aoe_luns=XEN_AOE_LUNS)
    finally:
        _save(directory, state)


def _start_target(directory: Path, state: dict[str, Any], names: list[str],
                  luns: int) -> lab_iscsi.IscsiTarget:
    """Start the lab's tgtd, then each host's initiator (``gridtool.lab.initiator``); each
    is recorded as soon as it runs, so that ``down`` stops it even after a failure."""
    target = _start_tgtd(directory, state, names, luns)
    state["initiators"] = []
    for name in names:
        entry = {"host": name, "pid": 0, "dir": str(qemu.initiators_dir(directory) / name)}
        state["initiators"].append(entry)
        _start_initiator(state, entry)
    return target


def _start_tgtd(directory: Path, state: dict[str, Any], names: list[str],
                luns: int) -> lab_iscsi.IscsiTarget:
    """Start the lab's tgtd, recorded in ``state`` even when the start fails."""
    target = lab_iscsi.create(directory, names, luns=luns, size_mb=(
        qemu.DATA_DISK_MIB if state["hypervisor"] == "qemu" else lab_iscsi.LUN_MIB))
    try:
        lab_iscsi.start(target)
    finally:
        state["iscsi"] = target.to_dict()
    return target


def _start_initiator(state: dict[str, Any], entry: dict[str, Any]) -> None:
    """Start one host's initiator (at boot, or at power-on) and record its pid."""
    target = lab_iscsi.IscsiTarget.from_dict(state["iscsi"])
    proc = initiator.start(Path(entry["dir"]), entry["host"], target.initiators[entry["host"]],
                           [target.url(n) for n in target.lun_numbers()])
    entry["pid"] = proc.pid


def _lun_sources(directory: Path, state: dict[str, Any]) -> list[qemu.LunSource]:
    """The lab's LUNs as its QEMU guests name them (none without a target)."""
    if "iscsi" not in state:
        return []
    target = lab_iscsi.IscsiTarget.from_dict(state["iscsi"])
    return [qemu.lun_source(target.iqn, n, qemu.luns_dir(directory))
            for n in target.lun_numbers()]


#: The lab's power fence agent (a console script of this package).
FENCE_AGENT = "fence_gridtool_lab"


def _configure_fence_agents(cfg: Config, directory: Path, names: list[str]) -> None:
    """Give every lab host the lab fence agent, as an operator's ``host fence-agent set``."""
    from gridtool.registry import fenceagents
    from gridtool.registry.etcdstore import EtcdStore

    store = EtcdStore(cfg)
    try:
        for name in names:
            fenceagents.write(store, cfg.keys, name, FENCE_AGENT,
                              {"lab_dir": str(directory), "plug": name}, by="lab")
    finally:
        store.close()


def _enable_auth(cfg: Config, credentials: Path, names: list[str]) -> Config:
    """Root, the admin and one user per host (all manager candidates); auth on. Returns
    the admin's config."""
    from gridtool.auth.credfiles import password_path, read_password
    from gridtool.auth.rules import admin_user
    from gridtool.auth.shell import init_registry

    init_registry(cfg, credentials, names, "all")
    path = password_path(credentials, admin_user(cfg.prefix))
    return replace(cfg, user=admin_user(cfg.prefix), password=read_password(path),
                   password_file=str(path))


def _agent_cfg(cfg: Config, name: str) -> Config:
    """The admin's config turned into host ``name``'s (its own user and password file)."""
    if not cfg.user or not cfg.password_file:
        return cfg
    from gridtool.auth.credfiles import password_path
    from gridtool.auth.rules import host_user

    user = host_user(name, cfg.prefix)
    return replace(cfg, user=user, password=None,
                   password_file=str(password_path(Path(cfg.password_file).parent, user)))


def _seed_and_keep(directory: Path, hosts: list[LabHost], guests: int, ttl: int) -> int:
    """Replace the test driver's default guest with ours, then hand the state to a keeper."""
    conns = [libvirt.open(h.libvirt_uri) for h in hosts]
    try:
        for host, conn in zip(hosts, conns, strict=True):
            for dom in conn.listAllDomains(0):
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            for index in range(1, guests + 1):
                dom = conn.defineXML(sample_domain_xml(host.name, index, shared=index % 2 == 0))
                if index % 3 != 0:
                    dom.create()
        ready = directory / "keeper.ready"
        spec = [{"name": h.name, "uri": h.libvirt_uri, "watchdog": str(h.watchdog),
                 "watchdog_timeout": watchdog_timeout_for(ttl)} for h in hosts]
        proc = spawn([sys.executable, "-m", "gridtool.lab.keeper", str(ready),
                      json.dumps(spec)], directory / "keeper.log")
        wait_for(ready.exists, 10.0, "lab keeper", alive=lambda: proc.poll() is None)
        return proc.pid
    finally:
        for conn in conns:
            conn.close()


def wait_registered(cfg: Config, names: list[str], guest_count: int,
                    timeout: float = 30.0) -> None:
    """Wait until every host is in the registry with at least ``guest_count`` guests."""
    from gridtool.registry.etcdstore import EtcdStore
    from gridtool.registry.fleet import Registry

    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)

    def ready() -> bool:
        hosts, _ = registry.list_hosts()
        guests, _ = registry.list_guests()
        return {h.name for h in hosts} >= set(names) and len(guests) >= guest_count

    try:
        wait_for(ready, timeout, "hosts reporting to the registry", interval=0.1)
    finally:
        store.close()


def down(directory: Path) -> list[str]:
    """Stop every process the lab started (by PID); return what was stopped."""
    state = read_state(directory)
    if state is None:
        return []
    stopped = []
    for host in [host_from(h) for h in state.get("hosts", [])]:
        if stop_pid(host.agent_pid, AGENT_MARKER):
            stopped.append(f"agent {host.name}")
    if stop_pid(state.get("keeper_pid"), "gridtool.lab.keeper"):
        stopped.append("keeper")
    stopped += qemu.down_hosts(state.get("hosts", []))  # guests, daemons, hook files
    stopped += xenlab.down_hosts(state.get("hosts", []))  # the dom0s' machines
    for host in [host_from(h) for h in state.get("hosts", [])]:
        if stop_pid(host.libvirtd_pid, "libvirtd"):
            stopped.append(f"libvirtd {host.name}")
    for entry in state.get("initiators", []):
        if initiator.stop(entry["pid"], Path(entry["dir"])):
            stopped.append(f"initiator {entry['host']}")
    stopped += dom0storage.stop(state)  # vblades and the L2 segment of a Xen lab
    if "iscsi" in state and lab_iscsi.stop(lab_iscsi.IscsiTarget.from_dict(state["iscsi"])):
        stopped.append("tgtd")
    if "etcd" in state:
        for member in EtcdCluster.from_dict(state["etcd"]).members:
            if stop_pid(member.pid, "etcd"):
                stopped.append(f"etcd {member.name}")
    state_path(directory).unlink(missing_ok=True)
    return stopped


def status(directory: Path) -> dict[str, Any] | None:
    """The lab's state with each process marked alive or not; None when no lab."""
    state = read_state(directory)
    if state is None:
        return None
    for host in state.get("hosts", []):
        host["agent_alive"] = pid_alive(host.get("agent_pid"))
        if host.get("hypervisor") == "xen":  # its dom0, libvirtd and agent: one QEMU
            host["qemu_alive"] = pid_alive(host.get("qemu_pid"))
        host["libvirtd_alive"] = pid_alive(host.get("libvirtd_pid"))
    for member in state.get("etcd", {}).get("members", []):
        member["alive"] = pid_alive(member.get("pid"))
    state["keeper_alive"] = pid_alive(state.get("keeper_pid"))
    if "iscsi" in state:
        state["iscsi"]["alive"] = lab_iscsi.alive(lab_iscsi.IscsiTarget.from_dict(state["iscsi"]))
    for entry in state.get("initiators", []):
        entry["alive"] = initiator.alive(entry["pid"])
    dom0storage.mark_alive(state)
    return state


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """The documented ``lab up --json`` document."""
    return {"v": 1, "etcd_endpoints": state.get("etcd_endpoints", []),
            "hosts": [{"name": h["name"], "libvirt_uri": h["libvirt_uri"]}
                      for h in state.get("hosts", [])],
            "lab_dir": state["lab_dir"], "config": state["config"],
            **({"iscsi": {k: state["iscsi"][k] for k in ("portal", "iqn", "urls", "initiators")}}
               if "iscsi" in state else {}),
            **({"segment": {"network": state["segment"]["network"],
                            "iscsi_portal": state["iscsi"]["segment_portal"],
                            "dom0_devices": dom0storage.devices(state)}}
               if "segment" in state and "iscsi" in state else {})}


def _save(directory: Path, state: dict[str, Any]) -> None:
    write_file(state_path(directory), json.dumps(state, indent=2))


def restore_etcd(directory: Path, snapshot: Path) -> SnapshotStatus:
    """Put the lab's registry back to ``snapshot``: check it, stop every etcd member,
    move its data dir aside (``DIR.pre-restore``, replacing an older one), restore each
    member from the snapshot into a new data dir, start them on their ports. The agents
    keep running: they reconnect, and their resync rewrites what changed since."""
    from gridtool.registry import backup

    state = read_state(directory)
    if state is None or "etcd" not in state:
        raise LabError(f"no lab in {directory}")
    checked = backup.status(snapshot)  # before anything is stopped
    cluster = EtcdCluster.from_dict(state["etcd"])
    cluster.stop()
    for member in cluster.members:
        aside = Path(f"{member.data_dir}.pre-restore")
        shutil.rmtree(aside, ignore_errors=True)
        if Path(member.data_dir).exists():
            Path(member.data_dir).rename(aside)
        backup.restore(snapshot, cluster.restore_member(member), Path(member.data_dir))
    cluster.resume()
    state["etcd"] = cluster.to_dict()
    _save(directory, state)
    return checked


def power_on(directory: Path, name: str) -> int:
    """Power a lab host on after :func:`power_off`: its initiator logs in to the LUNs
    again (unless it still runs), then its agent starts; returns the agent's PID."""
    state = read_state(directory)
    for entry in initiators_of(state, name):
        if not initiator.alive(entry["pid"]):
            assert state is not None  # an entry was found in it
            _start_initiator(state, entry)
            _save(directory, state)
    return start_agent(directory, name)


def start_agent(directory: Path, name: str) -> int:
    """(Re)start a lab host's agent after a power-off; returns its PID."""
    state = read_state(directory)
    if state is None:
        raise LabError(f"no lab in {directory}")
    for entry in state["hosts"]:
        if entry["name"] == name:
            host = host_from(entry)
            host.start_agent()
            entry.update(host.to_dict())
            _save(directory, state)
            return host.agent_pid
    raise LabError(f"no lab host {name!r}")
