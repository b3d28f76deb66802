"""The watchdog that must not silently do nothing (issue 12, item 1), with real agents,
a real etcd and libvirtd: a path that is no watchdog device is refused (never created),
a device error does not kill the guard thread (it still self-fences), the host record
says whether a working watchdog protects the host, and neither ``guest set --ha on`` nor
the manager puts an HA guest on a host it does not protect."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

from gridtool.config import render
from gridtool.ha.manager import Manager
from gridtool.lab.hosts import watchdog_timeout_for
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import run_cli, wait_until
from tests.integration.test_fencing import UUID, running_on, shared_xml, wait_registered


def _host_watchdog(registry, name: str) -> object:  # type: ignore[no-untyped-def]
    """What ``name``'s live host record says of its watchdog (None: it says nothing)."""
    hosts = {h.name: h for h in registry.list_hosts()[0]}
    return getattr(hosts[name], "watchdog", None) if name in hosts else "gone"


def _start_agent_with_watchdog_path(lab_hosts, name: str, path: Path) -> None:  # type: ignore[no-untyped-def]
    """``name``'s agent with ``watchdog = path`` as an operator would write it (no
    ``watchdog_kind``: a device), and no emulator."""
    host = lab_hosts.hosts[name]
    cfg = replace(lab_hosts.cfg, host=name, libvirt_uri=host.libvirt_uri, watchdog=str(path),
                  watchdog_timeout=watchdog_timeout_for(lab_hosts.cfg.ttl))
    host.agent_conf.write_text(render(cfg, include_secrets=True))
    lab_hosts.agents[name] = host.start_agent()


def test_a_path_that_is_no_watchdog_device_protects_nothing(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys, tmp_path):
    missing, plain = tmp_path / "dev" / "watchdog", tmp_path / "plain-watchdog"
    plain.write_bytes(b"x")
    for name, path in (("hv1", missing), ("hv2", plain)):
        lab_hosts.add(name)
        lab_hosts.conn(name).defineXML(shared_xml())
        _start_agent_with_watchdog_path(lab_hosts, name, path)
    wait_registered(registry, ["hv1", "hv2"])
    store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=True)))
    client = IntentClient(store, cfg.keys)
    for name in ("hv2", "hv1"):  # an HA start is refused: the watchdog would not protect it
        outcome = client.wait(client.submit(name, "start", UUID, "db"), 30, raise_failed=False)
        assert outcome.state == "failed" and "watchdog does not work" in outcome.message, \
            outcome
    assert running_on(lab_hosts) == []
    assert not missing.exists() and not missing.parent.exists()  # never created
    assert plain.read_bytes() == b"x"  # never written
    for name in ("hv1", "hv2"):
        assert _host_watchdog(registry, name) is False
    log = lab_hosts.agent_log("hv1")
    assert "event=watchdog_problem" in log and "does not exist" in log
    assert "is not a character device" in lab_hosts.agent_log("hv2")

    # Pinned, it may run there; made HA, only with --force; then `check` reports the host.
    store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=False)))
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    code, _, err = run_cli(cfg, capsys, "guest", "set", "db", "--ha", "on")
    assert code == 7 and err.count("\n") == 1, err
    assert "db runs on hv1: host hv1 has no working watchdog" in err and "--force" in err
    code, _, err = run_cli(cfg, capsys, "guest", "set", "db", "--ha", "on", "--force")
    assert code == 0 and "db: ha=on" in err, err
    wait_until(lambda: store.get(cfg.keys.fence("aoe-e9.1")).lease, what="the HA fence")
    code, out, _ = run_cli(cfg, capsys, "check", "--json")
    findings = {(f["code"], f["subject"]) for f in json.loads(out)["findings"]}
    assert ("HOST_HA_UNPROTECTED", "hv1") in findings, out


def test_a_watchdog_error_does_not_kill_the_guard(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, etcd_cluster):
    """The watchdog fails under an HA guest (its file replaced by a dangling link: every
    pet fails): the guard goes on, and still self-fences when the host is cut off."""
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    try:
        host = lab_hosts.add("hv1")
        lab_hosts.conn("hv1").defineXML(shared_xml())
        store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=True)))
        lab_hosts.start_agent("hv1", endpoints=(proxy.endpoint,))  # the lab's emulated one
        wait_registered(registry, ["hv1"])
        client = IntentClient(store, cfg.keys)
        assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
        assert _host_watchdog(registry, "hv1") in (True, None)  # None: before the field
        dog = host.watchdog
        wait_until(dog.exists, what="the first pet")
        dog.unlink()
        dog.symlink_to(Path(host.dir, "gone", "watchdog"))
        wait_until(lambda: "event=watchdog_problem" in lab_hosts.agent_log("hv1")
                   or "Exception in thread lease-guard" in lab_hosts.agent_log("hv1"),
                   what="a failed pet")
        proxy.cut()
        wait_until(lambda: running_on(lab_hosts) == [], timeout=cfg.ttl + 2,
                   what="hv1 to self-fence its HA guest")
        log = lab_hosts.agent_log("hv1")
        assert "event=self_fence " in log and "Traceback" not in log
        proxy.heal()  # the agent goes on: registered again, its record says why
        wait_until(lambda: _host_watchdog(registry, "hv1") is False, timeout=cfg.ttl + 5,
                   what="hv1's record to say its watchdog does not work")
        assert lab_hosts.agents["hv1"].poll() is None
    finally:
        proxy.close()


def test_the_manager_restarts_an_ha_guest_only_on_a_protected_host(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry):
    """hv2's agent pets no watchdog and hv2 has no fence agent: when hv1 dies, its HA
    guest waits (with the reason) until hv2 has a watchdog, then comes back there."""
    lab_hosts.power_fence = False  # no host can be fenced: hv1's loss takes the timed path
    for name in ("hv1", "hv2"):
        lab_hosts.add(name)
        lab_hosts.conn(name).defineXML(shared_xml())
    lab_hosts.start_agent("hv1")
    lab_hosts.start_agent("hv2", watchdog=False)
    wait_registered(registry, ["hv1", "hv2"])
    store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=True)))
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    stop = threading.Event()
    manager = Manager(cfg, store, "m1", period=0.2)
    thread = threading.Thread(target=manager.run, args=(stop,))
    thread.start()
    try:
        lab_hosts.stop_agent("hv1", kill=True)  # power off: agent gone, then its guests
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_until(lambda: "unprotected" in manager.blocked.get(UUID, "")
                   or running_on(lab_hosts), timeout=cfg.ttl + 10,
                   what="the manager to decide about db")
        assert running_on(lab_hosts) == [], "restarted on a host with no watchdog"
        assert manager.blocked[UUID] == "no host passes the filters (unprotected on 1)"
        lab_hosts.stop_agent("hv2")
        lab_hosts.start_agent("hv2")  # now with (the lab's emulated) watchdog
        wait_until(lambda: running_on(lab_hosts) == ["hv2"], timeout=cfg.ttl + 15,
                   what="the HA restart on hv2 once it is protected")
    finally:
        stop.set()
        thread.join(10)
