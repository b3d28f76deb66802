"""Two agents with one host name (issue 12 item 5): a cloned dom0, or a typo in a
config. The host name belongs to one machine at a time: a second agent of that name on
another machine refuses to start with one line, and the first keeps its lease and its
fences. Real etcd, real agents on libvirtd test-driver hosts: each lab host has its
own machine identity file."""

from __future__ import annotations

import subprocess

import libvirt

from gridtool.registry.intents import IntentClient
from gridtool.registry.model import HostRecord, decode
from tests.harness.testbed import run_cli, wait_until
from tests.integration.test_fencing import (
    UUID,
    VOLUME,
    fence_holder,
    hosts_with_guest,
    running_on,
    wait_registered,
)


def _exit_code(proc: subprocess.Popen, timeout: float = 30.0) -> int | str:
    """The agent's exit status, or 'still running' after ``timeout`` (it is then killed)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "still running"


def _refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("gridtool-agent: ")]


def _clone_of_hv1(lab_hosts):  # type: ignore[no-untyped-def]
    """Another machine ("clone": its own libvirtd and machine identity) whose agent's
    config says host hv1, with hv1's credentials."""
    lab_hosts.add("clone")
    proc = lab_hosts.start_agent("clone", as_host="hv1")
    return proc, _exit_code(proc)


def test_a_second_agent_with_the_same_name_refuses_while_the_first_lives(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    record = store.get(cfg.keys.host("hv1"))
    fence = store.get(cfg.keys.fence(VOLUME))
    _proc, code = _clone_of_hv1(lab_hosts)
    refusals = _refusals(lab_hosts.agent_log("clone"))
    assert (code, len(refusals)) == (7, 1), (code, lab_hosts.agent_log("clone")[-2000:])
    assert "host name hv1 belongs to another machine" in refusals[0]
    # The first agent keeps its lease, its record and its fence, untouched.
    assert store.get(cfg.keys.fence(VOLUME)) == fence
    now = store.get(cfg.keys.host("hv1"))
    assert now is not None and (now.lease, now.create_revision) == (
        record.lease, record.create_revision)
    first = decode(HostRecord, now.key, now.value)
    assert first.machine_id and first.machine_id in refusals[0] and first.instance
    assert lab_hosts.agents["hv1"].poll() is None and running_on(lab_hosts) == ["hv1"]
    assert "event=host_registered" not in lab_hosts.agent_log("clone")


def test_a_replacement_machine_joins_once_the_old_one_is_gone(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys):
    """hv1's agent dies with a pinned guest's fence held. Its lease expires, but the
    pinned fence (only hv1 or an operator may release it) keeps another machine out
    until the operator confirms hv1 dead; then the replacement joins."""
    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    lab_hosts.stop_agent("hv1", kill=True)  # pinned only: the watchdog is disarmed
    wait_until(lambda: store.get(cfg.keys.host("hv1")) is None, timeout=cfg.ttl + 10,
               what="hv1's lease to expire")
    _proc, code = _clone_of_hv1(lab_hosts)
    refusals = _refusals(lab_hosts.agent_log("clone"))
    assert (code, len(refusals)) == (7, 1), (code, lab_hosts.agent_log("clone")[-2000:])
    assert VOLUME in refusals[0] and "gridtool host confirm-dead hv1" in refusals[0]
    assert fence_holder(store, cfg) == "hv1"
    lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()  # hv1 is really off
    assert run_cli(cfg, capsys, "host", "confirm-dead", "hv1", "--yes")[0] == 0
    lab_hosts.start_agent("clone", as_host="hv1")
    wait_until(lambda: store.get(cfg.keys.host("hv1")) is not None, timeout=30,
               what="the replacement registered as hv1")
    clone = registry.get_host("hv1")
    assert clone.libvirt_uri == lab_hosts.hosts["clone"].libvirt_uri
    # the old machine's fence for a guest the new one does not have is released
    wait_until(lambda: fence_holder(store, cfg) is None, what="the orphan fence released")
    assert lab_hosts.conn("hv1").lookupByUUIDString(UUID).state()[0] \
        == libvirt.VIR_DOMAIN_SHUTOFF
