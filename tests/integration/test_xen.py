"""Real Xen hosts (issue 17): ``gridtool lab up --hypervisor xen`` boots two QEMU machines
running Xen 4.17 and a Debian dom0 whose agent comes from gridtool's .deb; the checks
share that one lab (module scope: each dom0 takes minutes to boot under TCG).

Not in CI (marker ``xen``, excluded by scripts/test): run alone with
``pytest -m xen tests/integration/test_xen.py`` after ``gridtool lab build-xen-image``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from gridtool.config import Config, load
from gridtool.fencing.rules import observe
from gridtool.lab import lab as labmod
from gridtool.lab import xenimage, xenlab
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from tests.harness.testbed import wait_until

pytestmark = [pytest.mark.xen, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def xen_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    xenimage.build()  # cached: a no-op after the first build
    directory = tmp_path_factory.mktemp("xen") / "lab"
    state = labmod.up(directory, hosts=2, guests=0, hypervisor="xen")
    try:
        yield state
    finally:
        labmod.down(directory)


@pytest.fixture(scope="module")
def cfg(xen_lab: dict[str, Any]) -> Config:
    return load(xen_lab["config"], env={})


@pytest.fixture(scope="module")
def store(cfg: Config) -> Iterator[EtcdStore]:
    s = EtcdStore(cfg)
    yield s
    s.close()


@pytest.fixture(scope="module")
def registry(store: EtcdStore, cfg: Config) -> Registry:
    return Registry(store, cfg.keys)


def host(xen_lab: dict[str, Any], name: str) -> xenlab.XenHost:
    return xenlab.XenHost.from_dict(next(h for h in xen_lab["hosts"] if h["name"] == name))


def define(xen_lab: dict[str, Any], on: str, name: str) -> libvirt.virDomain:
    """Define PV guest ``name`` on host ``on`` (a disk in its pool: shared, so fenced)."""
    conn = libvirt.open(host(xen_lab, on).libvirt_uri)
    pool = xenlab.ensure_pool(conn)
    try:
        vol = pool.storageVolLookupByName(f"{name}.img")  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        vol = pool.createXML(  # type: ignore[attr-defined]
            f"<volume><name>{name}.img</name><capacity unit='MiB'>8</capacity>"
            "<target><format type='raw'/></target></volume>", 0)
    return conn.defineXML(xenlab.pv_guest_xml(name, vol.path()))


def holder(store: EtcdStore, cfg: Config, volume: str) -> str | None:
    item = store.get(cfg.keys.fence(volume))
    obs = observe(volume, item.value if item else None, item.mod_revision if item else 0)
    return getattr(getattr(obs, "fence", None), "holder", None)


def state_of(registry: Registry, on: str, uuid: str) -> str | None:
    recs, _ = registry.guests_of(on)
    rec = recs.get(uuid)
    return rec.state if rec else None


def test_dom0_agents_register_from_the_package(xen_lab: dict[str, Any],
                                               registry: Registry) -> None:
    hosts, _ = registry.list_hosts()
    by_name = {h.name: h for h in hosts}
    assert set(by_name) == {"hv1", "hv2"}
    assert by_name["hv1"].hypervisor == "xen"
    assert by_name["hv1"].libvirt_uri == host(xen_lab, "hv1").libvirt_uri
    # the agent is the packaged one, run by its systemd unit in the dom0
    shown = host(xen_lab, "hv1").ssh("systemctl is-active gridtool-agent; "
                                     "dpkg-query -W -f '${Version}' gridtool-agent")
    assert shown.stdout.startswith("active\n") and shown.stdout.endswith("-1"), shown


def test_the_agent_follows_libxl_domains(xen_lab: dict[str, Any], store: EtcdStore,
                                         registry: Registry, cfg: Config) -> None:
    dom = define(xen_lab, "hv1", "pv1")
    uuid = dom.UUIDString()
    wait_until(lambda: state_of(registry, "hv1", uuid) == "shutoff", 60,
               what="the defined PV guest in the registry")
    client = IntentClient(store, cfg.keys)
    client.wait(client.submit("hv1", "start", uuid, "pv1"), 180)
    wait_until(lambda: state_of(registry, "hv1", uuid) == "running", 60,
               what="pv1 running in the registry")
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
    client = IntentClient(store, cfg.keys)
    client.wait(client.submit("hv1", "start", dom.UUIDString(), "pv2"), 180)
    wait_until(lambda: state_of(registry, "hv1", dom.UUIDString()) == "running", 60,
               what="pv2 running on hv1")
    other = define(xen_lab, "hv2", "pv2")
    with pytest.raises(libvirt.libvirtError) as exc:
        other.create()  # a bare 'virsh start' on hv2
    assert exc.value.get_error_code() == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED
    assert "fence is held by hv1" in str(exc.value)
    assert not other.isActive() and dom.isActive()
