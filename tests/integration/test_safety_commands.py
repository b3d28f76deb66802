"""The safety commands as an operator runs them, through the CLI, against a real etcd and
real agents on libvirtd test-driver hosts: each command's output (table and --json) and
its effect on the registry and on libvirt. Bad input: one line on stderr, a documented
exit code (2 usage, 3 unknown, 7 conflict, 8 failed on the host)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import libvirt
from prometheus_client.parser import text_string_to_metric_families

from gridtool.config import Config
from gridtool.fencing.etcdversions import revokes_leases_early
from gridtool.fencing.rules import Fence
from gridtool.lab.procs import cmdline, free_port
from gridtool.pools import shell as pools
from gridtool.pools.flex import FlexState, LoadSample, PolicyParams, decide
from gridtool.pools.rules import PoolStatus
from gridtool.registry.records import GuestSettings, decode, encode
from tests.harness.checker import DoubleRunChecker
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import (
    AGO,
    as_fields,
    credential_env,
    domain_xml,
    lease_expiry_bound,
    show_tables,
    terminate,
    wait_until,
)
from tests.harness.testbed import run_cli as gridtool
from tests.integration.test_clone import define_base
from tests.integration.test_fencing import (
    UUID,
    VOLUME,
    fence_holder,
    hosts_with_guest,
    running_on,
    wait_ha_restart,
    wait_registered,
)

#: Every metric family `metrics serve` documents (and the pools' and clones' families).
FAMILIES = ("gridtool_registry_up", "gridtool_hosts_up", "gridtool_guests",
            "gridtool_fences_held", "gridtool_fence_violations",
            "gridtool_registry_corrupt_records", "gridtool_manager_leader",
            "gridtool_lost_hosts", "gridtool_pool_desired", "gridtool_pool_members",
            "gridtool_pool_ready", "gridtool_pool_warm",
            "gridtool_pool_flex_decisions", "gridtool_event_propagation_seconds",
            "gridtool_clone_phase_seconds", "gridtool_pool_arrival_rate",
            "gridtool_pool_smoothed_arrival_rate", "gridtool_pool_service_time_seconds",
            "gridtool_pool_intensity_erlangs", "gridtool_pool_recommended",
            "gridtool_pool_last_decision_timestamp_seconds")


def one_line(err: str) -> bool:
    """An error as the CLI promises it: exactly one line, prefixed ``gridtool:``."""
    return err.count("\n") == 1 and err.startswith("gridtool: ") and "Traceback" not in err


def cli_argv(cfg: Config, *args: str, endpoint: str | None = None) -> list[str]:
    return [sys.executable, "-c", "from gridtool.cli.main import main; main()",
            "--endpoints", endpoint or ",".join(cfg.endpoints), "--prefix", cfg.prefix, *args]


def cli_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent", **credential_env()}


def gridtool_process(cfg: Config, *args: str, input_text: str = "") -> subprocess.CompletedProcess:
    """The real ``gridtool`` as a subprocess, ``input_text`` on its stdin (a prompt)."""
    return subprocess.run(cli_argv(cfg, *args), input=input_text, capture_output=True,
                          text=True, timeout=60, env=cli_env())


@contextlib.contextmanager
def cli_server(cfg: Config, log: Path, *args: str,
               endpoint: str | None = None) -> Iterator[subprocess.Popen]:
    """A long-running ``gridtool`` command (``manager run``, ``metrics serve``) as its own
    process, its stderr in ``log``; stopped with SIGTERM, which must end it cleanly."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            cli_argv(cfg, *args, endpoint=endpoint), stdout=subprocess.DEVNULL, stderr=err,
            env=cli_env())
    try:
        yield proc
    finally:
        terminate(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]


def fence_rows(cfg: Config, capsys) -> dict:  # type: ignore[no-untyped-def]
    code, out, err = gridtool(cfg, capsys, "fence", "list", "--json")
    assert code == 0, err
    return json.loads(out)


def dead_mark(store, cfg):  # type: ignore[no-untyped-def]
    item = store.get(cfg.keys.dead_host("hv1"))
    return json.loads(item.value) if item else None


def test_confirm_dead_refused_while_leased_then_the_manager_moves_the_pinned_guest(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys, tmp_path):
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")
    assert code == 0, err
    assert running_on(lab_hosts) == ["hv1"]

    # fence list: the pinned fence, its token the key's revision, in JSON and as a table.
    doc = fence_rows(cfg, capsys)
    item = store.get(cfg.keys.fence(VOLUME))
    assert doc["v"] == 1 and doc["violations"] == [] and doc["errors"] == []
    [row] = doc["fences"]
    assert (row["volume"], row["guest"], row["guest_name"], row["holder"], row["kind"],
            row["leased"], row["token"]) == (VOLUME, UUID, "db", "hv1", "pinned", False,
                                             item.mod_revision)
    code, out, _ = gridtool(cfg, capsys, "fence", "list")
    assert code == 0
    assert re.search(rf"^{re.escape(VOLUME)}\s+db\s+hv1\s+{item.mod_revision}\s+\d+s ago\s+"
                     r"pinned\s*$", out, re.M), out

    # No manager yet: manager status says so (exit 3), in one line.
    code, _, err = gridtool(cfg, capsys, "manager", "status")
    assert code == 3 and one_line(err) and "no manager leads" in err

    with cli_server(cfg, tmp_path / "manager.log", "manager", "run", "--name", "mgr-cli",
                    "--period", "0.2"), DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        wait_until(lambda: gridtool(cfg, capsys, "manager", "status", "--json")[0] == 0,
                   timeout=30, what="the CLI's manager to lead")
        code, out, _ = gridtool(cfg, capsys, "manager", "status", "--json")
        status = json.loads(out)
        assert status["leader"] == "mgr-cli" and status["since"] > 0

        # hv1 is alive: confirm-dead is refused and writes nothing.
        code, _, err = gridtool(cfg, capsys, "host", "confirm-dead", "hv1", "--yes")
        assert code == 7 and one_line(err) and "hv1 is alive" in err, err
        assert dead_mark(store, cfg) is None

        # Power hv1 off: the pinned guest stays down, its fence stays with hv1.
        lab_hosts.stop_agent("hv1", kill=True)
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        wait_until(lambda: store.get(cfg.keys.host("hv1")) is None,
                   timeout=lease_expiry_bound(cfg.ttl),
                   what="hv1's lease to expire")

        def waiting() -> dict:
            code, out, _ = gridtool(cfg, capsys, "manager", "status", "--json")
            return json.loads(out)["status"]["blocked"] if code == 0 else {}

        reason = wait_until(lambda: waiting().get("db"), timeout=20,
                            what="the manager to wait for confirm-dead")
        assert "confirm-dead hv1" in str(reason)
        code, out, _ = gridtool(cfg, capsys, "manager", "status")
        assert code == 0 and out.startswith("leader: mgr-cli, since ")
        assert re.match(rf"leader: mgr-cli, since {AGO}$", out.splitlines()[0])
        assert re.search(rf"^last round: {AGO}$", out, re.M), out
        assert re.search(r"^db\s+.*confirm-dead hv1", out, re.M), out
        assert running_on(lab_hosts) == [] and fence_holder(store, cfg) == "hv1"

        # host show: hv1 is lost and still holds the pinned fence; guest show: db waits
        # for the manager, which waits for confirm-dead
        lost = as_fields(show_tables(gridtool(cfg, capsys, "host", "show", "hv1")[1])[
            "host hv1"])
        assert (lost["state"], lost["fences held"], lost["pinned guests"]) == (
            "lost (its lease expired)", "1 (1 pinned)", "1")
        code, out, _ = gridtool(cfg, capsys, "guest", "show", "db", "--json")
        [view] = [v for v in json.loads(out)["guests"] if v["host"] == "hv1"]
        assert code == 0 and view["kind"] == "pinned" and "confirm-dead hv1" in view["waiting"]
        shown = show_tables(gridtool(cfg, capsys, "guest", "show", "db")[1])
        facts = as_fields(shown["guest db on hv1"])
        assert facts["manager"] == f"waiting: {view['waiting']}"
        assert facts["policy"] == "pinned: moved only after 'gridtool host confirm-dead hv1'"
        assert shown["fences"][0][:4] == [VOLUME, "hv1", str(item.mod_revision), "pinned"]

        # Asked without --yes, an operator who answers "n" changes nothing.
        asked = gridtool_process(cfg, "host", "confirm-dead", "hv1", input_text="n\n")
        assert asked.returncode == 1 and "really powered off" in asked.stderr
        assert dead_mark(store, cfg) is None

        code, _, err = gridtool(cfg, capsys, "host", "confirm-dead", "hv1", "--yes")
        assert code == 0 and "hv1 confirmed dead" in err, err
        mark = dead_mark(store, cfg)
        assert mark["host"] == "hv1" and mark["v"] == 1 and mark["by"]
        code, out, _ = gridtool(cfg, capsys, "host", "show", "hv1", "--json")
        assert json.loads(out)["confirmed_dead"]["by"] == mark["by"]
        state = as_fields(show_tables(gridtool(cfg, capsys, "host", "show", "hv1")[1])[
            "host hv1"])["state"]
        assert re.fullmatch(rf"lost \(confirmed dead by {re.escape(mark['by'])} {AGO}\)",
                            state), state

        wait_until(lambda: running_on(lab_hosts) == ["hv2"], timeout=30,
                   what="the pinned guest restarted on hv2 after confirm-dead")
        assert fence_holder(store, cfg) == "hv2"
        [row] = fence_rows(cfg, capsys)["fences"]
        assert (row["holder"], row["kind"]) == ("hv2", "pinned")
        assert row["token"] > item.mod_revision
        actions = json.loads(gridtool(cfg, capsys, "manager", "status", "--json")[1])
        assert any("db" in a and "hv2" in a for a in actions["status"]["actions"]), actions

        # hv1 powered on again: its agent deletes the dead/ mark when it registers (a
        # mark left behind would let the manager release hv1's pinned fences again),
        # and the moved guest is not started a second time.
        lab_hosts.start_agent("hv1")
        wait_until(lambda: store.get(cfg.keys.host("hv1")), timeout=30,
                   what="hv1 registered again")
        # (deleted right after the host record is put: a moment later)
        wait_until(lambda: dead_mark(store, cfg) is None, timeout=5,
                   what="hv1's dead mark deleted once it registered")
        code, out, _ = gridtool(cfg, capsys, "host", "list", "--json")
        assert code == 0 and "hv1" in {h["name"] for h in json.loads(out)["hosts"]}
        assert running_on(lab_hosts) == ["hv2"] and fence_holder(store, cfg) == "hv2"
    checker.assert_safe()


def test_confirm_dead_of_an_unknown_host_is_refused(store, cfg, capsys):  # type: ignore[no-untyped-def]
    code, _, err = gridtool(cfg, capsys, "host", "confirm-dead", "hv9", "--yes")
    assert store.get(cfg.keys.dead_host("hv9")) is None, err
    assert code == 3 and one_line(err) and "hv9" in err


def test_host_remove_of_a_dead_host_with_guests_needs_force_and_leaves_its_fences(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys):
    """docs/architecture.md, `host remove`: refused (exit 7) while guests are active on the
    host, unless --force; a dead host (no lease) cannot be drained, so --force alone is
    enough, and no --ssh (its agent is gone). Its registry keys go (host record, guests,
    dead mark); its fences stay (a pinned fence is released only by its host or
    confirm-dead), and the guests it still ran are named as left unmanaged."""
    hosts_with_guest(lab_hosts, ["hv1"])  # db: fenced (pinned)
    lab_hosts.conn("hv1").defineXML(domain_xml("web")).create()  # not fenced
    wait_registered(registry, ["hv1"])
    assert gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")[0] == 0
    wait_until(lambda: sorted(g.name for g in registry.guests_of("hv1")[0].values()
                              if g.state == "running") == ["db", "web"],
               what="db and web reported running")
    lab_hosts.stop_agent("hv1", kill=True)  # power off, as far as the registry can tell
    wait_until(lambda: store.get(cfg.keys.host("hv1")) is None,
               timeout=lease_expiry_bound(cfg.ttl), what="hv1's lease to expire")
    code, _, err = gridtool(cfg, capsys, "host", "confirm-dead", "hv1", "--yes")
    assert code == 0 and dead_mark(store, cfg) is not None, err

    code, _, err = gridtool(cfg, capsys, "host", "remove", "hv1")
    assert code == 7 and one_line(err), err
    assert "hv1 runs 2 guests (db, web)" in err and "--force" in err
    assert len(registry.guests_of("hv1")[0]) == 2, "a refusal deletes nothing"

    code, _, err = gridtool(cfg, capsys, "host", "remove", "hv1", "--force")
    assert code == 0, err
    assert "gridtool: warning: 2 guests still run on hv1 unmanaged: db, web\n" in err
    assert err.endswith("hv1: removed\n") and "Traceback" not in err
    assert store.get(cfg.keys.host("hv1")) is None and dead_mark(store, cfg) is None
    assert store.list(cfg.keys.host_guests("hv1"))[0] == []
    assert [i.key for i in store.list(cfg.keys.guest_index)[0] if "/hv1/" in i.key] == []
    assert fence_holder(store, cfg) == "hv1", "host remove must leave the fence"
    [row] = fence_rows(cfg, capsys)["fences"]
    assert (row["holder"], row["guest_name"], row["kind"]) == ("hv1", "db", "pinned")


def test_fence_release_force_lets_another_host_start_the_guest(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                               registry, capsys):
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    assert gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")[0] == 0
    lab_hosts.stop_agent("hv1", kill=True)  # power off: the pinned fence stays
    lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
    wait_until(lambda: store.get(cfg.keys.host("hv1")) is None,
               timeout=lease_expiry_bound(cfg.ttl),
               what="hv1's lease to expire")

    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv2")
    assert code == 8 and one_line(err) and "held by hv1" in err, err
    assert running_on(lab_hosts) == []

    code, _, err = gridtool(cfg, capsys, "fence", "release", VOLUME)
    assert code == 2 and one_line(err) and "--force" in err
    code, _, err = gridtool(cfg, capsys, "fence", "release", "aoe-e9.9", "--force", "--yes")
    assert code == 3 and one_line(err) and "aoe-e9.9" in err
    refused = gridtool_process(cfg, "fence", "release", VOLUME, "--force", input_text="n\n")
    assert refused.returncode == 1 and "held by hv1" in refused.stderr
    assert fence_holder(store, cfg) == "hv1"

    code, _, err = gridtool(cfg, capsys, "fence", "release", VOLUME, "--force", "--yes")
    assert code == 0 and err == f"released fence {VOLUME} (was held by hv1)\n", err
    assert store.get(cfg.keys.fence(VOLUME)) is None
    assert fence_rows(cfg, capsys)["fences"] == []

    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv2")
    assert code == 0 and "db started on hv2 (fence token" in err, err
    assert running_on(lab_hosts) == ["hv2"] and fence_holder(store, cfg) == "hv2"


def test_fence_list_shows_violations_and_clear_violations_forgets_them(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys):
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    assert gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")[0] == 0
    lab_hosts.conn("hv2").lookupByUUIDString(UUID).create()  # a bare `virsh start` on hv2
    wait_until(lambda: fence_rows(cfg, capsys)["violations"], what="the violation listed")
    [v] = fence_rows(cfg, capsys)["violations"]
    assert (v["host"], v["name"], v["volume"], v["holder"], v["action"]) == (
        "hv2", "db", VOLUME, "hv1", "pause")
    wait_until(lambda: lab_hosts.conn("hv2").lookupByUUIDString(UUID).state()[0]
               == libvirt.VIR_DOMAIN_PAUSED, what="the intruder paused")
    code, out, _ = gridtool(cfg, capsys, "fence", "list")
    assert code == 0 and "fence violations" in out
    assert re.search(rf"^\d+s ago\s+hv2\s+db\s+{re.escape(VOLUME)}\s+hv1\s+pause\s*$", out,
                     re.M), out

    code, _, err = gridtool(cfg, capsys, "fence", "clear-violations", "--host", "hv1")
    assert code == 0 and err == "cleared 0 violation record(s)\n"
    assert len(fence_rows(cfg, capsys)["violations"]) == 1  # hv2's is left alone
    # Cleared while the intruder still sits there paused: hv2 reports it again.
    code, _, err = gridtool(cfg, capsys, "fence", "clear-violations", "--host", "hv2")
    assert code == 0 and err == "cleared 1 violation record(s)\n"
    wait_until(lambda: [w["at"] for w in fence_rows(cfg, capsys)["violations"]
                        if w["at"] > v["at"]], timeout=30, what="the violation reported again")

    # The operator destroys the intruder, then clears: it stays cleared.
    lab_hosts.conn("hv2").lookupByUUIDString(UUID).destroy()
    code, _, err = gridtool(cfg, capsys, "fence", "clear-violations")
    assert code == 0 and err == "cleared 1 violation record(s)\n"
    assert fence_rows(cfg, capsys)["violations"] == []
    seen = [time.time()]
    for _ in range(2):  # two of hv2's resyncs (each ends with its host record's report)
        seen.append(wait_until(lambda: (at := registry.get_host("hv2").reported_at) > seen[-1]
                               and at, timeout=30, what="a resync of hv2 after the clear"))
    assert store.list(cfg.keys.violations)[0] == []
    code, out, _ = gridtool(cfg, capsys, "fence", "list")
    assert "fence violations" not in out and "hv1" in out  # the fence itself stays
    assert fence_holder(store, cfg) == "hv1"


def test_guest_start_stop_restart_destroy_take_and_release_the_fence(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys):
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    wait_registered(registry, ["hv1", "hv2"])
    wait_until(lambda: len(registry.list_guests()[0]) == 2, what="db recorded on both")

    def token() -> int:
        item = store.get(cfg.keys.fence(VOLUME))
        return item.mod_revision if item else 0

    def desired() -> str:
        item = store.get(cfg.keys.guest_settings(UUID))
        return decode(GuestSettings, item.key, item.value).desired

    for args, code_wanted, words in (
            (("start", "nope"), 3, "nope"), (("stop", "nope"), 3, "nope"),
            (("restart", "nope"), 3, "nope"), (("destroy", "nope"), 3, "nope"),
            (("start", "db", "--on", "hv9"), 3, "unknown host 'hv9'"),
            (("start",), 2, "NAME")):
        code, _, err = gridtool(cfg, capsys, "guest", *args)
        assert code == code_wanted and one_line(err) and words in err, (args, code, err)
    assert running_on(lab_hosts) == [] and token() == 0

    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")
    assert code == 0 and f"db started on hv1 (fence token {token()})" in err, err
    assert running_on(lab_hosts) == ["hv1"] and desired() == "running"
    first = token()

    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv2")
    assert code == 8 and one_line(err) and "held by hv1" in err, err
    assert running_on(lab_hosts) == ["hv1"] and token() == first

    code, _, err = gridtool(cfg, capsys, "guest", "restart", "db")
    assert code == 0 and f"db restarted on hv1 (fence token {token()})" in err, err
    assert token() > first and running_on(lab_hosts) == ["hv1"]

    code, _, err = gridtool(cfg, capsys, "guest", "stop", "db", "--timeout", "20")
    assert code == 0 and "db shut down on hv1" in err, err
    assert running_on(lab_hosts) == [] and token() == 0 and desired() == "stopped"

    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv2")
    assert code == 0 and "db started on hv2" in err, err
    assert running_on(lab_hosts) == ["hv2"] and fence_holder(store, cfg) == "hv2"

    code, _, err = gridtool(cfg, capsys, "guest", "destroy", "db")
    assert code == 0 and "db destroyed on hv2" in err, err
    assert running_on(lab_hosts) == [] and token() == 0 and desired() == "stopped"

    code, _, err = gridtool(cfg, capsys, "guest", "start", "db", "--no-wait", "--on", "hv1")
    assert code == 0 and "start db: asked hv1 (intent" in err
    wait_until(lambda: running_on(lab_hosts) == ["hv1"], what="db started without --wait")


def test_guest_set_ha_binds_the_fence_to_the_lease_and_the_manager_restarts_it(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, capsys, tmp_path):
    hosts_with_guest(lab_hosts, ["hv1", "hv2"])
    lab_hosts.conn("hv1").defineXML(domain_xml("web"))  # no shared disk: never fenced
    wait_registered(registry, ["hv1", "hv2"])
    wait_until(lambda: any(g.name == "web" for g in registry.list_guests()[0]),
               what="web recorded")
    assert gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")[0] == 0

    code, _, err = gridtool(cfg, capsys, "guest", "set", "db")
    assert code == 2 and one_line(err) and "nothing to set" in err
    code, _, err = gridtool(cfg, capsys, "guest", "set", "web", "--ha", "on")
    assert code == 7 and one_line(err) and "no disk on shared storage" in err
    code, _, err = gridtool(cfg, capsys, "guest", "set", "nope", "--ha", "on")
    assert code == 3 and one_line(err) and "nope" in err
    code, _, err = gridtool(cfg, capsys, "guest", "set", "db", "--ha", "maybe")
    assert code == 2 and one_line(err)
    assert store.get(cfg.keys.fence(VOLUME)).lease == 0  # pinned until told otherwise

    code, _, err = gridtool(cfg, capsys, "guest", "set", "db", "--ha", "on")
    assert code == 0 and "db refreshed on hv1" in err and "db: ha=on desired=running" in err
    hv1_lease = store.get(cfg.keys.host("hv1")).lease
    assert hv1_lease and store.get(cfg.keys.fence(VOLUME)).lease == hv1_lease
    [row] = fence_rows(cfg, capsys)["fences"]
    assert (row["holder"], row["kind"], row["leased"]) == ("hv1", "ha", True)
    # an HA guest now relies on the lease: with an etcd that revokes leases early (the
    # lab's Debian 3.4.23), `gridtool check` warns
    code, out, _ = gridtool(cfg, capsys, "check", "--json")
    codes = {f["code"] for f in json.loads(out)["findings"]}
    assert ("ETCD_EARLY_REVOCATION" in codes) == revokes_leases_early(
        store.status()[0].version), out

    with cli_server(cfg, tmp_path / "manager.log", "manager", "run", "--name", "mgr-ha",
                    "--period", "0.2"), DoubleRunChecker(lambda: lab_hosts.conns) as checker:
        wait_until(lambda: store.get(cfg.keys.manager_leader), timeout=30,
                   what="the CLI's manager to lead")
        powered_off = time.monotonic()
        lab_hosts.stop_agent("hv1", kill=True)  # power off
        lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
        # No confirm-dead: an HA guest comes back once hv1's lease (TTL) expires.
        wait_ha_restart(lab_hosts, cfg, powered_off, ["hv2"])
    checker.assert_safe()
    assert store.get(cfg.keys.dead_host("hv1")) is None
    [row] = fence_rows(cfg, capsys)["fences"]
    assert (row["holder"], row["kind"]) == ("hv2", "ha")

    code, _, err = gridtool(cfg, capsys, "guest", "set", "db", "--ha", "off")
    assert code == 0 and "db refreshed on hv2" in err and "db: ha=off" in err, err
    fence = store.get(cfg.keys.fence(VOLUME))
    assert fence.lease == 0 and Fence.from_json(fence.value).holder == "hv2"
    assert fence_rows(cfg, capsys)["fences"][0]["kind"] == "pinned"


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20).read().decode()


def samples(text: str) -> dict[str, float]:
    return {s.name + str(sorted(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def families(text: str) -> set[str]:
    """The metric families of a scrape, by their TYPE lines (a counter's with _total)."""
    return {name.removesuffix("_total") if kind == "counter" else name
            for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def test_metrics_serve_exports_every_family_and_registry_down(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                              registry, etcd_cluster,
                                                              capsys, tmp_path):
    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    assert gridtool(cfg, capsys, "guest", "start", "db", "--on", "hv1")[0] == 0
    # the agent records it running from libvirt's event, a moment after the intent is done
    wait_until(lambda: [g.state for g in registry.guests_of("hv1")[0].values()] == ["running"],
               what="db recorded running on hv1")
    # A pool with the status a keeper round writes (its flex verdicts counted), so that
    # the pool families have series too (a counter with no series is not exported).
    # Its last decision: 20 requests/s of 0.5 s seen by 2 workers (the numbers' gauges).
    pools.create(store, cfg.keys, pools.new_spec("web", "tmpl", 1, 9, desired=3))
    decided = time.time()
    decision, _ = decide(FlexState(), LoadSample(decided, 10.0, 200, 200, 100.0, workers=2),
                         decided, PolicyParams(max_workers=9))
    store.put(cfg.keys.pool_status("web"), encode(PoolStatus(
        "web", decided, 3, 2, 1, decision=decision.to_dict(), decisions={"up": 2, "hold": 5})))
    proxy = CuttableProxy(etcd_cluster.endpoints[0])  # the exporter's way to etcd
    port = free_port()
    log = tmp_path / "metrics.log"
    try:
        with cli_server(cfg, log, "--timeout", "1", "metrics", "serve", "--port", str(port),
                        endpoint=proxy.endpoint) as proc:
            def up() -> str | None:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(OSError):
                    return scrape(port)
                return None

            text = wait_until(up, timeout=30, what="metrics serve to answer")
            assert f"serving metrics on http://127.0.0.1:{port}/metrics" in log.read_text()
            assert families(text) >= set(FAMILIES), set(FAMILIES) - families(text)
            values = samples(text)
            assert values["gridtool_registry_up[]"] == 1
            assert values["gridtool_hosts_up[]"] == 1
            assert values["gridtool_guests[('state', 'running')]"] == 1
            assert values["gridtool_fences_held[]"] == 1
            assert values["gridtool_fence_violations[]"] == 0
            assert values["gridtool_manager_leader[]"] == 0
            assert values["gridtool_registry_corrupt_records[]"] == 0
            assert values["gridtool_pool_desired[('pool', 'web')]"] == 3
            assert values["gridtool_pool_ready[('pool', 'web')]"] == 2
            assert values["gridtool_pool_members[('pool', 'web')]"] == 0
            assert values["gridtool_pool_flex_decisions_total[('direction', 'up'), "
                          "('pool', 'web')]"] == 2
            assert values["gridtool_pool_arrival_rate[('pool', 'web')]"] == 20.0
            assert values["gridtool_pool_service_time_seconds[('pool', 'web')]"] == 0.5
            assert values["gridtool_pool_intensity_erlangs[('pool', 'web')]"] == \
                decision.offered_load
            assert values["gridtool_pool_recommended[('pool', 'web')]"] == 9  # max
            assert values["gridtool_pool_last_decision_timestamp_seconds[('direction', 'up'), "
                          "('pool', 'web'), ('source', 'manager')]"] == decided
            assert values["gridtool_event_propagation_seconds_count[]"] >= 0

            proxy.cut()  # etcd gone for the exporter: it answers, and says so
            down = wait_until(lambda: (s := samples(scrape(port))).get(
                "gridtool_registry_up[]") == 0 and s, timeout=30, what="registry_up 0")
            assert "gridtool_hosts_up[]" not in down and "gridtool_fences_held[]" not in down

            proxy.heal()  # and it comes back by itself
            wait_until(lambda: samples(scrape(port)).get("gridtool_registry_up[]") == 1,
                       timeout=30, what="registry_up 1 after the registry came back")
    finally:
        proxy.close()


def test_metrics_serve_started_while_etcd_is_unreachable_reports_it(lab_hosts, store, cfg,  # type: ignore[no-untyped-def]
                                                                     registry, etcd_cluster,
                                                                     capsys, tmp_path):
    """An exporter (re)started during a registry outage must come up and say
    registry_up 0, then follow the registry once it is back."""
    hosts_with_guest(lab_hosts, ["hv1"])
    wait_registered(registry, ["hv1"])
    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    proxy.cut()  # a dead endpoint from the start
    port = free_port()
    log = tmp_path / "metrics.log"
    try:
        with cli_server(cfg, log, "--timeout", "1", "metrics", "serve", "--port", str(port),
                        endpoint=proxy.endpoint) as proc:
            def scraped() -> dict[str, float] | None:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(OSError):
                    return samples(scrape(port))
                return None

            down = wait_until(scraped, timeout=30, what="metrics serve to answer")
            assert down["gridtool_registry_up[]"] == 0 and "gridtool_hosts_up[]" not in down
            proxy.heal()
            up = wait_until(lambda: (s := samples(scrape(port))).get(
                "gridtool_hosts_up[]") == 1 and s, timeout=30,
                what="the exporter to reach the registry")
            assert up["gridtool_registry_up[]"] == 1 and up["gridtool_fences_held[]"] == 0
    finally:
        proxy.close()


def test_a_watch_resumes_after_the_registry_was_unreachable(cfg, store, etcd_cluster):  # type: ignore[no-untyped-def]
    """What `metrics serve`'s watches (and every agent's) rely on: with authentication on,
    reconnecting during an outage fails in the store's own connect; the watch must keep
    trying, not die with its thread."""
    from dataclasses import replace

    from gridtool.registry.etcdstore import EtcdStore

    proxy = CuttableProxy(etcd_cluster.endpoints[0])
    far = EtcdStore(replace(cfg, endpoints=(proxy.endpoint,), timeout=1.0))
    seen: list[str] = []
    watch = far.watch_prefix(cfg.prefix + "w/", lambda ev: seen.append(ev.key))
    try:
        store.put(cfg.prefix + "w/before", b"1")
        wait_until(lambda: seen, what="the watch to see a put")
        proxy.cut()
        # Puts the watch cannot see yet; each of far's reads fails in its own timeout,
        # so once two have failed the watch has been refused at least once meanwhile.
        for _ in range(2):
            with contextlib.suppress(Exception):
                far.get(cfg.prefix + "w/before")
        proxy.heal()
        store.put(cfg.prefix + "w/after", b"1")
        wait_until(lambda: cfg.prefix + "w/after" in seen, timeout=30,
                   what="the watch to resume after the outage")
    finally:
        watch.cancel()
        far.close()
        proxy.close()


def test_metrics_serve_port_in_use_fails_in_one_line(cfg, capsys) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(cli_argv(cfg, "metrics", "serve", "--port", str(port)),
                              capture_output=True, text=True, timeout=60, env=cli_env())
    assert done.returncode != 0 and one_line(done.stderr), done.stderr


def test_template_show_table_json_and_unknown(lab_hosts, registry, store, cfg, capsys):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1")
    wait_registered(registry, ["hv1"])
    define_base(lab_hosts, registry, "base", 128)
    code, _, err = gridtool(cfg, capsys, "template", "create", "worker", "--from", "base")
    assert code == 0, err

    code, out, err = gridtool(cfg, capsys, "template", "show", "worker", "--json")
    assert code == 0, err
    tpl = json.loads(out)["template"]
    golden = Path(tpl["images"]["vda"])
    assert tpl["name"] == "worker" and golden.exists()
    assert golden == lab_hosts.images_dir / "templates" / "worker" / "vda.qcow2"
    assert (tpl["memory_mib"], tpl["vcpus"]) == (128, 1) and "<domain" in tpl["xml"]

    code, out, _ = gridtool(cfg, capsys, "template", "show", "worker")
    assert code == 0
    assert "template worker" in out and re.search(r"^from\s+base \(\S+\) on hv1\s*$", out, re.M)
    assert re.search(rf"^vda\s+{re.escape(str(golden))}\s*$", out, re.M), out
    assert re.search(r"^memory\s+128 MiB\s*$", out, re.M) and "clones (0): -" in out
    assert re.search(rf"^created\s+{AGO}\s*$", out, re.M), out

    code, _, err = gridtool(cfg, capsys, "template", "show", "nope")
    assert code == 3 and one_line(err) and "nope" in err


def lab(lab_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "GRIDTOOL_LAB_DIR": str(lab_dir)})


def lab_guests(lab_dir: Path) -> list[dict]:
    done = lab(lab_dir, "guest", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["guests"]


def lab_hosts_up(lab_dir: Path) -> set[str]:
    done = lab(lab_dir, "host", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {h["name"] for h in json.loads(done.stdout)["hosts"]}


def test_lab_power_off_confirm_dead_power_on(tmp_path: Path) -> None:
    """The README's walk-through on the lab product: a pinned guest of a powered-off host
    moves only after `host confirm-dead`, by the lab's own managers; power-on brings the
    host back without starting the moved guest a second time."""
    lab_dir = tmp_path / "lab"
    up = lab(lab_dir, "lab", "up", "--hosts", "2", "--guests", "2", "--ttl", "3", "--json",
             timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        wait_until(lambda: {(g["name"], g["state"]) for g in lab_guests(lab_dir)} >= {
            ("hv1-vm1", "running"), ("hv1-vm2", "running")}, timeout=60,
            what="hv1's guests running")
        fences = json.loads(lab(lab_dir, "fence", "list", "--json").stdout)["fences"]
        mine = [f for f in fences if f["holder"] == "hv1"]
        assert [(f["guest_name"], f["kind"]) for f in mine] == [("hv1-vm2", "pinned")]

        refused = lab(lab_dir, "host", "confirm-dead", "hv1", "--yes")
        assert refused.returncode == 7 and one_line(refused.stderr), refused.stderr

        off = lab(lab_dir, "lab", "power-off", "hv1")
        assert off.returncode == 0, off.stderr
        gone = re.fullmatch(r"hv1 powered off \(2 guests gone: (\S+), (\S+)\)\n", off.stderr)
        assert gone and set(gone.groups()) == {"hv1-vm1", "hv1-vm2"}, off.stderr
        uri = {h["name"]: h for h in json.loads(up.stdout)["hosts"]}["hv1"]["libvirt_uri"]
        conn = libvirt.open(uri)
        try:  # the plug is pulled: nothing runs on hv1 any more
            assert conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) == []
        finally:
            conn.close()
        pid = json.loads(lab(lab_dir, "lab", "status", "--json").stdout)["lab"]["hosts"][0]
        assert pid["name"] == "hv1" and not cmdline(pid["agent_pid"])
        unknown = lab(lab_dir, "lab", "power-off", "hv9")
        assert unknown.returncode == 3 and one_line(unknown.stderr) and "hv9" in unknown.stderr

        wait_until(lambda: "hv1" not in lab_hosts_up(lab_dir), timeout=30,
                   what="hv1's lease to expire")
        states = {g["name"]: g["state"] for g in lab_guests(lab_dir) if g["host"] == "hv1"}
        assert all(s.startswith("unknown") for s in states.values()), states

        done = lab(lab_dir, "host", "confirm-dead", "hv1", "--yes")
        assert done.returncode == 0 and "hv1 confirmed dead" in done.stderr, done.stderr

        def moved() -> bool:
            return any((g["name"], g["host"], g["state"]) == ("hv1-vm2", "hv2", "running")
                       for g in lab_guests(lab_dir))

        wait_until(moved, timeout=60, what="hv1-vm2 restarted on hv2")
        status = json.loads(lab(lab_dir, "manager", "status", "--json").stdout)
        assert status["leader"] == "hv2"
        assert any("hv1-vm2" in a for a in status["status"]["actions"]), status

        on = lab(lab_dir, "lab", "power-on", "hv1")
        assert on.returncode == 0 and re.fullmatch(r"hv1: agent started \(pid \d+\)\n",
                                                   on.stderr), on.stderr
        new_pid = int(re.search(r"pid (\d+)", on.stderr).group(1))
        assert cmdline(new_pid)
        wait_until(lambda: "hv1" in lab_hosts_up(lab_dir), timeout=60, what="hv1 back")
        wait_until(lambda: {g["name"]: g["state"] for g in lab_guests(lab_dir)
                            if g["host"] == "hv1"}.get("hv1-vm1") == "shutoff",
                   timeout=30, what="hv1 reported again after power-on")
        running = [(g["host"]) for g in lab_guests(lab_dir)
                   if g["name"] == "hv1-vm2" and g["state"] == "running"]
        assert running == ["hv2"]
        assert lab(lab_dir, "lab", "power-on", "hv9").returncode == 3
    finally:
        down = lab(lab_dir, "lab", "down")
    assert down.returncode == 0, down.stderr
