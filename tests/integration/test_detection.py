"""Faster detection (issue 13 item 6) on the libvirt test driver with real etcd, real
agents and the lab's power fence agent: a powered-off host with a fence agent is suspected
from its silent heartbeat, fenced, its lease revoked and its HA guest restarted well
before its lease could have expired; a host whose agent is only stalled for longer than
``suspect_after`` but that has no fence agent is left alone."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gridtool.auth.credfiles import read_password
from gridtool.config import Config
from gridtool.fencing.recovery import SUSPECTED, FencePolicy
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode
from tests.harness.checker import DoubleRunChecker
from tests.harness.testbed import hold_for, wait_until
from tests.integration.test_fencing import (
    UUID,
    host_fence,
    hosts_with_guests,
    manager_status,
    running_manager,
    running_on,
    shared_xml,
    wait_registered,
)

TTL = 10  # long enough that the lease path could not explain a fast recovery
SUSPECT_AFTER = 1.5
WEB_UUID = "66666666-7777-8888-9999-000000000000"


@pytest.fixture
def cfg(cfg: Config) -> Config:
    return replace(cfg, ttl=TTL)


def test_power_fenced_host_recovered_before_its_lease_and_a_stalled_unfenced_one_left_alone(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """hv1 (fence agent) is powered off and hv3's agent (no fence agent, no watchdog) is
    SIGSTOPped for 2 x ``suspect_after`` at the same moment. hv1's HA guest runs on hv2
    sooner than hv1's lease could have expired (a keepalive every TTL/3: at least 2/3 TTL
    left), the record says "suspected", and the restart relied on the power fence; hv3 is
    never fenced, its HA guest never leaves it, and its agent goes on (no self-fence)."""
    xmls = [shared_xml(), shared_xml("web", WEB_UUID, "/dev/etherd/e9.2")]
    hosts_with_guests(lab_hosts, ["hv1", "hv2"], xmls)
    lab_hosts.power_fence = False  # hv3: no fence agent
    hosts_with_guests(lab_hosts, ["hv3"], xmls, {"hv3": {"watchdog": False}})
    wait_registered(registry, ["hv1", "hv2", "hv3"])
    client = IntentClient(store, cfg.keys)
    for uuid, name, host in ((UUID, "db", "hv1"), (WEB_UUID, "web", "hv3")):
        store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, name, ha=True)))
        assert client.wait(client.submit(host, "start", uuid, name), 30).state == "done"
    wait_until(lambda: {i.key.rsplit("/", 1)[1] for i in store.list(cfg.keys.heartbeats)[0]}
               == {"hv1", "hv2", "hv3"}, what="every host's heartbeat")
    policy = FencePolicy.for_ttl(TTL, suspect_after=SUSPECT_AFTER)
    stalled = lab_hosts.agents["hv3"].pid
    # the manager as a candidate host runs it: a host user with the manager role (revoking
    # hv1's lease needs write access to every key under it)
    candidate = lab_hosts._host_credentials("hv4", replace(cfg, manager=True))
    manager_store = EtcdStore(replace(candidate, password=read_password(
        Path(candidate.password_file or ""))))
    with contextlib.closing(manager_store), \
            running_manager(cfg, manager_store, fencing=policy), \
            DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        wait_until(lambda: manager_status(store, cfg), what="the manager leading")
        seen: dict[str, float] = {}

        def db_on_hv2() -> bool:
            if "db" not in seen and running_on(lab_hosts) == ["hv2"]:
                seen["db"] = time.monotonic() - fault
            return "db" in seen

        def web_on_hv3() -> bool:
            db_on_hv2()
            return running_on(lab_hosts, WEB_UUID) == ["hv3"]

        fault = time.monotonic()
        os.kill(stalled, signal.SIGSTOP)
        try:
            lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guest
            lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
            # hv3 stalled for 2 x suspect_after (well inside its self-fence deadline)
            hold_for(max(0.0, fault + 2 * SUSPECT_AFTER - time.monotonic()), web_on_hv3,
                     "web stays on stalled hv3")
        finally:
            os.kill(stalled, signal.SIGCONT)
        wait_until(db_on_hv2, timeout=TTL, what="db running on hv2")
        recovered = seen["db"]
        hold_for(1.0, web_on_hv3, "web stays on hv3 after its agent resumes")
        status = manager_status(store, cfg)
    checker.assert_safe()
    print(f"power-off -> running elsewhere {recovered:.2f} s (lease TTL {TTL} s)")
    assert recovered < TTL * 2 / 3, f"{recovered:.2f} s: not before the lease could expire"
    record = host_fence(store, cfg, "hv1")
    assert record is not None and record.detection == SUSPECTED and record.power == "off", \
        record
    assert record.suspected_at <= record.power_at, record
    assert any("suspected" in a and "fenced by power" in a for a in status.actions), status
    assert host_fence(store, cfg, "hv3") is None
    assert store.get(cfg.keys.host("hv3")) is not None
    assert "event=self_fence" not in lab_hosts.agent_log("hv3")
