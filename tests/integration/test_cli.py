"""The ``gridtool`` CLI against a real registry: JSON output and documented exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtool.cli.main import cli
from gridtool.lab.procs import free_port
from gridtool.registry import hostconf
from tests.harness.proxy import SilentServer
from tests.harness.testbed import (
    AGO,
    as_fields,
    credential_env,
    domain_xml,
    lease_expiry_bound,
    run_cli,
    show_tables,
    wait_until,
)


def _args(cfg, *rest: str) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, *rest]


def run(cfg, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """The real ``gridtool`` as a subprocess (no lab config leaks in)."""
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()", *_args(cfg, *args)],
        capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent", **credential_env()})


@pytest.fixture
def populated(lab_hosts, registry):  # type: ignore[no-untyped-def]
    for shelf, name in enumerate(("hv1", "hv2"), start=1):
        lab_hosts.add(name)
        conn = lab_hosts.conn(name)
        conn.defineXML(domain_xml(f"{name}-web", disk=f"/dev/etherd/e7.{shelf}",
                                  block=True)).create()
        conn.defineXML(domain_xml(f"{name}-db"))
        lab_hosts.start_agent(name)
    wait_until(lambda: len(registry.list_guests()[0]) == 4, what="4 guests")
    return lab_hosts


def test_host_and_guest_list_json(populated, cfg, capsys):  # type: ignore[no-untyped-def]
    hosts = json.loads(run(cfg, "host", "list", "--json").stdout)
    assert hosts["v"] == 1 and [h["name"] for h in hosts["hosts"]] == ["hv1", "hv2"]
    assert hosts["hosts"][0]["running_guests"] == 1
    done = run(cfg, "guest", "list", "--json", "--host", "hv2", "--state", "running")
    guests = json.loads(done.stdout)
    assert [(g["name"], g["state"], g["fenced"]) for g in guests["guests"]] == [
        ("hv2-web", "running", True)]
    assert guests["guests"][0]["disks"][0]["volume"] == "aoe-e7.2"
    assert (guests["matched"], guests["more"]) == (1, 0)
    assert done.stderr == ""
    # a page of the table, and the line that says how many more match
    code, out, err = run_cli(cfg, capsys, "guest", "list", "--limit", "1", "--page", "2")
    assert code == 0 and len(out.strip().splitlines()) == 2, out
    assert "2 more guest(s) match: --page 3 for the next 1" in err
    code, _, err = run_cli(cfg, capsys, "guest", "list", "--pool", "nope")
    assert code == 3 and "unknown pool 'nope'" in err


def test_show_by_name_and_uuid(populated, cfg, registry, store):  # type: ignore[no-untyped-def]
    from gridtool.registry.guestindex import entries

    runner = CliRunner()
    result = runner.invoke(cli, _args(cfg, "guest", "show", "hv1-db", "--json"))
    assert result.exit_code == 0, result.output
    (view,) = json.loads(result.output)["guests"]
    by_uuid = runner.invoke(cli, _args(cfg, "guest", "show", view["uuid"], "--json"))
    assert json.loads(by_uuid.output)["guests"][0]["name"] == "hv1-db"
    table = runner.invoke(cli, _args(cfg, "host", "show", "hv1"))
    assert table.exit_code == 0 and "hv1-web" in table.output

    # What the agents write for the read side (issue 20): after a rename, a move (the
    # domain defined on hv1 and undefined on hv2: what a migration leaves) and an
    # undefine, the guest index holds exactly the entries of the records, ``guest show``
    # finds each guest by its new name, and ``host list`` counts come from host records.
    hv1, hv2 = populated.conn("hv1"), populated.conn("hv2")
    hv1.lookupByName("hv1-db").rename("hv1-base", 0)
    moved = hv2.lookupByName("hv2-db")
    hv1.defineXML(moved.XMLDesc(0))
    moved.undefine()
    hv1.lookupByName("hv1-web").destroy()
    hv1.lookupByName("hv1-web").undefine()

    def settled() -> bool:
        records, _ = registry.list_guests()
        wanted = set().union(*(entries(cfg.keys, g) for g in records))
        indexed = {i.key for i in store.list(cfg.keys.guest_index)[0]}
        return wanted == indexed and sorted((g.name, g.host) for g in records) == [
            ("hv1-base", "hv1"), ("hv2-db", "hv1"), ("hv2-web", "hv2")]

    wait_until(settled, what="records and index entries after rename, move, undefine")
    shown = json.loads(run(cfg, "guest", "show", "hv2-db", "--json").stdout)["guests"]
    assert [(g["name"], g["host"]) for g in shown] == [("hv2-db", "hv1")]
    assert run(cfg, "guest", "show", "hv1-db").returncode == 3
    assert run(cfg, "guest", "show", "hv1-web").returncode == 3
    wait_until(lambda: [(h["name"], h["guests"], h["running_guests"]) for h in json.loads(
        run(cfg, "host", "list", "--json").stdout)["hosts"]] == [("hv1", 2, 0), ("hv2", 1, 1)],
        what="host records' counts")


def test_guest_of_dead_host_shows_unknown(populated, cfg, capsys):  # type: ignore[no-untyped-def]
    populated.stop_agent("hv2", kill=True)
    wait_until(lambda: "hv2" not in run(cfg, "host", "list", "--json").stdout,
               timeout=lease_expiry_bound(cfg.ttl), what="hv2 lease expiry")
    guests = json.loads(run(cfg, "guest", "list", "--json", "--host", "hv2").stdout)["guests"]
    assert {g["state"] for g in guests} == {"unknown"}
    assert "host lost" in run(cfg, "guest", "list", "--host", "hv2").stdout

    # host show: a lost host still named by guest records is shown as lost, not unknown
    code, out, err = run_cli(cfg, capsys, "host", "show", "hv2", "--json")
    doc = json.loads(out)
    assert code == 0 and err == "" and (doc["host"], doc["state"], doc["lease"]) == (
        None, "lost", None)
    assert sorted(g["name"] for g in doc["guests"]) == ["hv2-db", "hv2-web"]
    code, out, _ = run_cli(cfg, capsys, "host", "show", "hv2")
    shown = show_tables(out)
    facts = as_fields(shown["host hv2"])
    assert (facts["state"], facts["lease"]) == ("lost (its lease expired)", "expired")
    assert facts["guests"] == "2 (unknown; last reported 1 running, 1 shutoff)"
    assert "agent version" not in facts  # the record went with the lease
    assert {r[0]: r[1] for r in shown["guests"]} == {
        "hv2-db": "unknown (host lost; last shutoff)",
        "hv2-web": "unknown (host lost; last running)"}


RAW_NUMBER = re.compile(r"^\d+\.\d+$")  # an epoch float or a bare fraction


def shown_time(value: str) -> float:
    """The epoch second a table shows as '12s ago (2026-12-02 05:20:15 UTC)'."""
    match = re.fullmatch(AGO, value)
    assert match, f"not a time for people: {value!r}"
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def same_second(value: str, epoch: float, slack: float = 0) -> bool:
    """The table's time is the JSON's epoch (to the second; ``slack`` for a value that may
    move between the two reads)."""
    return abs(shown_time(value) - int(epoch)) <= slack


def test_host_show_table_tells_the_json_facts_in_human_units(populated, cfg, store,  # type: ignore[no-untyped-def]
                                                             capsys):
    code, _, err = run_cli(cfg, capsys, "guest", "set", "hv1-web", "--ha", "on")
    assert code == 0, err
    wait_until(lambda: (d := json.loads(run_cli(cfg, capsys, "host", "show", "hv1",
                                                "--json")[1]))["fences"]
               and d["fences"][0]["kind"] == "ha", what="hv1-web's fence held as HA")
    code, out, err = run_cli(cfg, capsys, "host", "show", "hv1", "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    code, out, err = run_cli(cfg, capsys, "host", "show", "hv1")
    assert code == 0 and err == ""
    shown = show_tables(out)
    facts = as_fields(shown["host hv1"])
    rec, lease = doc["host"], doc["lease"]

    # JSON: the raw record as before (epoch seconds, MiB), the new facts added
    assert isinstance(rec["reported_at"], float) and rec["memory_mib"] == 3072
    assert (doc["state"], doc["draining"], doc["confirmed_dead"]) == ("up", None, None)
    assert lease["granted_ttl"] == cfg.ttl and 0 < lease["remaining_ttl"] <= cfg.ttl
    assert lease["id"] == store.get(cfg.keys.host("hv1")).lease
    assert (doc["ha_guests"], doc["pinned_guests"]) == (1, 0)
    [fence] = doc["fences"]
    assert (fence["volume"], fence["guest_name"], fence["holder"]) == ("aoe-e7.1", "hv1-web",
                                                                       "hv1")
    # the table: the same facts, for people
    assert facts["state"] == doc["state"] == "up"
    assert re.fullmatch(rf"TTL {cfg.ttl} s, \d+ s left \(id {lease['id']:x}\)", facts["lease"])
    assert same_second(facts["last keepalive"], lease["last_keepalive"], slack=cfg.ttl)
    # the lab fence agent too (the testbed gives every host one, as `lab up` does)
    assert doc["protected"] is rec["watchdog"] is True and rec["fencing"] == ["power"]
    assert facts["protection"] == (f"working watchdog ({rec['watchdog_timeout']:g} s "
                                   "timeout); fencing: power")
    assert facts["fences held"] == "1 (1 ha)"
    assert shown["fences held"] == [[fence["volume"], fence["guest_name"], str(fence["token"]),
                                     "ha", shown["fences held"][0][4]]]
    assert same_second(shown["fences held"][0][4], fence["since"])
    assert facts["guests"] == "2 (1 running, 1 shutoff)"
    assert (facts["HA guests"], facts["pinned guests"]) == ("1", "0")
    assert facts["agent version"] == rec["agent_version"]
    assert same_second(facts["agent started"], rec["started_at"])
    assert same_second(facts["last report"], rec["reported_at"], slack=5)
    assert (facts["hypervisor"], facts["libvirt uri"], facts["cpus"]) == (
        rec["hypervisor"], rec["libvirt_uri"], str(rec["cpus"]))
    assert facts["memory"] == "3.0 GiB"
    assert facts["free memory"] == f"{rec['free_memory_mib'] / 1024:.1f} GiB"
    assert (rec["labels"], rec["storage"]) == ([], []) and facts["labels"] == facts[
        "storage"] == "-"
    kinds = {"ha": "HA", "pinned": "pinned", "none": "-"}
    assert sorted(shown["guests"]) == sorted(
        [g["name"], g["state"], kinds[g["kind"]], str(g["vcpus"]), f"{g['memory_mib']} MiB",
         g["uuid"]] for g in doc["guests"])
    cells = [c for rows in shown.values() for row in rows for c in row]
    assert not [c for c in cells if RAW_NUMBER.match(c)]

    hostconf.set_draining(store, cfg.keys, "hv2", True, by="ops@test", reason="disk swap")
    code, out, _ = run_cli(cfg, capsys, "host", "show", "hv2", "--json")
    doc = json.loads(out)
    assert doc["state"] == "draining" and doc["draining"]["by"] == "ops@test"
    state = as_fields(show_tables(run_cli(cfg, capsys, "host", "show", "hv2")[1])["host hv2"])[
        "state"]
    since, _, rest = state.removeprefix("draining since ").partition(" by ")
    assert same_second(since, doc["draining"]["since"]) and rest == "ops@test: disk swap"


def test_guest_show_table_tells_the_json_facts_in_human_units(populated, cfg,  # type: ignore[no-untyped-def]
                                                              capsys):
    assert run_cli(cfg, capsys, "guest", "set", "hv1-web", "--ha", "on")[0] == 0
    for name in ("hv1-web", "hv1-db"):
        code, out, err = run_cli(cfg, capsys, "guest", "show", name, "--json")
        assert code == 0 and err == ""
        [view] = json.loads(out)["guests"]
        code, out, err = run_cli(cfg, capsys, "guest", "show", name)
        assert code == 0 and err == ""
        shown = show_tables(out)
        facts = as_fields(shown[f"guest {name} on hv1"])
        # JSON: the record as ``guest list`` gives it, raw; then the added facts
        assert isinstance(view["updated_at"], float) and view["ready_at"] == 0.0
        assert (view["template"], view["pool"], view["waiting"]) == (None, None, None)
        # the table: the same facts, for people
        assert (facts["host"], facts["state"], facts["uuid"]) == (
            view["host"], view["state"], view["uuid"])
        assert (facts["vcpus"], facts["memory"]) == (str(view["vcpus"]),
                                                     f"{view['memory_mib']} MiB")
        assert facts["persistent"] == ("yes" if view["persistent"] else "no")
        assert facts["autostart"] == ("yes" if view["autostart"] else "no")
        assert same_second(facts["updated"], view["updated_at"], slack=5)
        assert facts["ready"] == "-"  # no ready marker: not 'ready_at 0.0'
        assert facts["template"] == facts["pool"] == facts["manager"] == "-"
        assert shown["disks"] == [[d["target"], d["source"], d["kind"],
                                   "yes" if d["shared"] else "no", d["volume"] or "-"]
                                  for d in view["disks"]]
        cells = [c for rows in shown.values() for row in rows for c in row]
        assert not [c for c in cells if RAW_NUMBER.match(c)]
        if name == "hv1-db":  # defined, not shared: nothing fences it
            assert (view["kind"], view["settings"], view["fences"]) == ("none", None, [])
            assert facts["policy"] == "not fenced (no disk on shared storage)"
            assert facts["desired"] == "-" and "fences" not in shown
            continue
        assert view["kind"] == "ha" and view["settings"]["desired"] == "running"
        assert facts["policy"] == "HA: restarted on another host when hv1 dies"
        assert facts["desired"] == view["settings"]["desired"]
        [fence] = view["fences"]
        assert (fence["volume"], fence["holder"], fence["token"]) == (
            "aoe-e7.1", "hv1", view["fence_token"])
        [row] = shown["fences"]
        assert row[:4] == [fence["volume"], fence["holder"], str(fence["token"]),
                           fence["kind"]] and same_second(row[4], fence["since"])


def test_unknown_objects_exit_3(cfg, store):  # type: ignore[no-untyped-def]
    for args in (("host", "show", "nope"), ("guest", "show", "nope")):
        done = run(cfg, *args)
        assert done.returncode == 3
        assert done.stderr.count("\n") == 1 and "unknown" in done.stderr


def test_bad_flag_exits_2_with_one_line(cfg):  # type: ignore[no-untyped-def]
    done = run(cfg, "guest", "list", "--state", "flying")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def timed_cli(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``gridtool ARGS`` as a process; also return how long the CLI itself ran, timed
    inside the process from after the imports a registry command needs to the exit, so
    that the interpreter start-up (seconds on a loaded machine) does not count: what the
    CLI controls is measured."""
    took = tmp_path / "gave-up-after"
    code = ("import atexit, time\n"
            "from gridtool.cli.main import main\n"
            "import gridtool.registry.etcdstore\n"  # loaded by a registry command
            "start = time.monotonic()\n"
            f"atexit.register(lambda: open({str(took)!r}, 'w').write("
            "repr(time.monotonic() - start)))\n"
            "main()\n")
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent", **env})
    return done, float(took.read_text())


def gives_up_in_one_line(done: subprocess.CompletedProcess, endpoint: str) -> None:
    """Exit 4 (registry unreachable), one line naming the endpoint, no traceback."""
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("gridtool: no etcd endpoint answered") and \
        done.stderr.count("\n") == 1 and endpoint in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_etcd_answers_within_5s_with_exit_4(cfg, tmp_path):  # type: ignore[no-untyped-def]
    """The promise: a registry command gives up after --timeout (default 5 s); waiting
    e.g. twice the timeout fails."""
    dead = f"127.0.0.1:{free_port()}"
    done, gave_up = timed_cli(tmp_path, "--endpoints", dead, "host", "list")
    gives_up_in_one_line(done, dead)
    assert 5.0 - 0.2 <= gave_up < 5.0 + 2.0, gave_up  # tries for the timeout, then stops


@pytest.mark.parametrize("credentials", [False, True], ids=["anonymous", "password"])
def test_an_etcd_that_accepts_but_never_answers_is_given_up_on_within_the_timeout(  # type: ignore[no-untyped-def]
        tmp_path, credentials):
    """A hung etcd (the connection is accepted, nothing ever comes back) must not hang the
    CLI: neither the first request nor, with a user set, the authentication that comes
    before it. --timeout 2: the flag is honoured, not only the default."""
    env = {"GRIDTOOL_USER": "gridtool-admin", "GRIDTOOL_PASSWORD": "x"} if credentials else {}
    with SilentServer() as hung:
        done, gave_up = timed_cli(tmp_path, "--endpoints", hung.endpoint, "--timeout", "2",
                                  "host", "list", **env)
        assert hung.accepted >= 1, "the CLI never even connected: nothing was tested"
    gives_up_in_one_line(done, hung.endpoint)
    # 2 s of tries, then a last one may still be under way (0.1 s of the loop's slack);
    # +2 s for a loaded 2-core machine: still short of a second full timeout
    assert 2.0 - 0.2 <= gave_up < 2.0 + 2.0, gave_up


def test_corrupt_record_warns_and_lists_the_rest(populated, cfg, store):  # type: ignore[no-untyped-def]
    # Under a host with no agent: hv1's agent deletes a corrupt record of its own at its
    # next resync (every 2 s here), often before the CLI has started up to list it.
    key = cfg.keys.guest("hv9", "bad-uuid")
    store.put(key, b"\xff\xfe garbage")
    done = run(cfg, "guest", "list", "--json")
    assert done.returncode == 0
    body = json.loads(done.stdout)
    assert len(body["guests"]) == 4 and body["errors"][0]["key"] == key
    assert f"corrupt registry record {key}" in done.stderr


def test_registry_status(cfg, store):  # type: ignore[no-untyped-def]
    (ep,) = json.loads(run(cfg, "registry", "status", "--json").stdout)["endpoints"]
    assert ep["healthy"] and ep["leader"] and ep["revision"] > 0

