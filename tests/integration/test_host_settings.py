"""``gridtool host set`` on the lab (libvirt test driver, a real agent process, real etcd
with the host's least-privilege user): labels and overflow reach the host record live,
the manager candidate and the watchdog at the agent's next start; ``host show`` shows
them (bad values: tests/unit/test_hostconf.py)."""

from __future__ import annotations

import json

import pytest

from gridtool.config import Config
from tests.harness.testbed import run_cli, wait_until


def test_settings_reach_the_agent_without_hand_edits(lab_hosts, registry, cfg: Config,  # type: ignore[no-untyped-def]
                                                    capsys: pytest.CaptureFixture) -> None:
    from gridtool.registry import hostconf

    lab_hosts.add("hv1")
    agent = lab_hosts.start_agent("hv1")  # agent.conf: an (emulated) watchdog, no manager

    def record():  # type: ignore[no-untyped-def]
        found = registry.find_host("hv1")
        return found[0] if found else None

    wait_until(lambda: record() and record().watchdog, timeout=20, what="hv1 registered")
    code, _, err = run_cli(cfg, capsys, "host", "set", "hv1", "--label", "ssd", "--label",
                           "rack=3", "--overflow")
    assert code == 0, err
    wait_until(lambda: record().labels == ("ssd", "rack=3", "overflow"), timeout=10,
               what="the labels in hv1's record, live")
    assert agent.poll() is None and lab_hosts.agents["hv1"] is agent  # no restart

    code, out, err = run_cli(cfg, capsys, "host", "set", "hv1", "--manager-candidate",
                             "--no-watchdog", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["at_next_start"] == ["manager", "watchdog"]
    assert doc["settings"]["manager"] is True and doc["settings"]["watchdog"] == ""
    wait_until(lambda: "event=host_settings_pending" in lab_hosts.agent_log("hv1"),
               what="the agent to say what waits for its restart")
    assert record().watchdog and registry.store.get(cfg.keys.manager_leader) is None

    hostconf.set_draining(registry.store, cfg.keys, "hv1", True)  # keeps the settings
    lab_hosts.stop_agent("hv1")
    lab_hosts.start_agent("hv1")  # the same agent.conf: the registry's settings win
    wait_until(lambda: (item := registry.store.get(cfg.keys.manager_leader))
               and b'"hv1"' in item.value, timeout=20, what="hv1's manager candidate leads")
    wait_until(lambda: record() and not record().watchdog, timeout=10,
               what="hv1 without its watchdog")
    assert record().labels == ("ssd", "rack=3", "overflow")

    code, out, _ = run_cli(cfg, capsys, "host", "show", "hv1", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "draining"
    assert shown["settings"]["labels"] == ["ssd", "rack=3"]
    assert shown["settings"]["overflow"] is True and shown["settings"]["fence_agent"]
    code, out, _ = run_cli(cfg, capsys, "host", "show", "hv1")
    assert "settings" in out and "(agent.conf)" in out  # watchdog_timeout: agent.conf's


def test_host_add_sets_settings_and_a_second_add_keeps_them(cfg: Config, store,  # type: ignore[no-untyped-def]
                                                            capsys: pytest.CaptureFixture,
                                                            tmp_path) -> None:
    from gridtool.lab.procs import free_port
    from gridtool.registry import hostconf

    closed = ["--ssh", f"root@127.0.0.1:{free_port()}", "--known-hosts",  # no host answers
              str(tmp_path / "known_hosts"), "--apt", "--timeout", "2"]
    code, _, err = run_cli(cfg, capsys, "host", "add", "hv2", *closed, "--label", "ssd",
                           "--overflow", "--watchdog", "/dev/watchdog")
    assert code == 8 and err.count("\n") == 1, err  # no host there: the settings wait
    want = {"labels": ["ssd"], "overflow": True, "watchdog": "/dev/watchdog"}
    assert hostconf.read(store, cfg.keys, "hv2").settings() == want
    code, _, err = run_cli(cfg, capsys, "host", "add", "hv2", *closed)
    assert code == 8, err
    assert hostconf.read(store, cfg.keys, "hv2").settings() == want  # not undone
