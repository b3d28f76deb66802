"""Per-host fence agents in the registry: stored without secrets, and counted as what
protects a host (placement's ``unprotected`` filter, HOST_HA_UNPROTECTED)."""

from __future__ import annotations

from gridtool.config import Config
from gridtool.placement.shell import read_fleet
from gridtool.registry import fenceagents
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import HostRecord

KEYS = Config().keys


def host(name: str, watchdog: bool = False) -> HostRecord:
    return HostRecord(name, "test:///", "test", 4, 4096, 4096, "0", 0.0, watchdog=watchdog)


def test_write_read_remove() -> None:
    store = MemStore(lambda: 0.0)
    assert fenceagents.read(store, KEYS, "hv1") is None
    fenceagents.write(store, KEYS, "hv1", "fence_ipmilan", {"ip": "10.0.0.1"}, by="ops")
    conf = fenceagents.read(store, KEYS, "hv1")
    assert conf is not None and (conf.agent, conf.params, conf.by) == (
        "fence_ipmilan", {"ip": "10.0.0.1"}, "ops")
    assert list(fenceagents.read_all(store, KEYS)) == ["hv1"]
    assert fenceagents.remove(store, KEYS, "hv1") and not fenceagents.remove(store, KEYS, "hv1")


def test_a_fence_agent_protects_a_host_without_a_watchdog() -> None:
    bare = host("hv1")
    assert not bare.protected
    fenced = fenceagents.with_fencing(bare, {"hv1"})
    assert fenced.protected and fenced.fencing == ("power",)
    assert fenceagents.with_fencing(bare, {"hv2"}) is bare
    assert fenceagents.with_fencing(fenced, {"hv1"}) is fenced  # not twice


def test_placement_reads_a_host_with_a_fence_agent_as_protected() -> None:
    store = MemStore(lambda: 0.0)
    registry = Registry(store, KEYS)
    for name in ("hv1", "hv2"):
        registry.put_host(host(name), None)
    fenceagents.write(store, KEYS, "hv2", "fence_gridtool_lab", {"plug": "hv2"})
    fleet = read_fleet(store, KEYS)
    assert {h.name: h.protected for h in fleet.hosts} == {"hv1": False, "hv2": True}
    assert fleet.records["hv2"].fencing == ("power",)


def test_metrics_count_lost_hosts_by_the_state_of_their_fence() -> None:
    from gridtool.fencing.recovery import HostFence
    from gridtool.health.metrics import FleetCollector
    from gridtool.registry.records import encode

    store = MemStore(lambda: 0.0)
    records = [HostFence("hv1", 1.0, power="off"), HostFence("hv2", 1.0, power="failed",
                                                             power_message="exit 1"),
               HostFence("hv3", 1.0), HostFence("hv4", 1.0, storage={"lun1": "preempted"})]
    for record in records:
        store.put(KEYS.host_fence(record.host), encode(record))
    store.put(KEYS.host_fence("hv5"), b"{not json")
    (family,) = [f for f in FleetCollector(store, KEYS).collect()
                 if f.name == "gridtool_lost_hosts"]
    assert {s.labels["fence"]: s.value for s in family.samples} == {
        "failed": 1, "power": 1, "storage": 1, "waiting": 1}
