"""The ``gridtool`` CLI against a real registry: JSON output and documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtool.cli.main import cli
from gridtool.lab.procs import free_port
from tests.harness.proxy import SilentServer
from tests.harness.testbed import credential_env, domain_xml, lease_expiry_bound, wait_until


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


def test_host_and_guest_list_json(populated, cfg):  # type: ignore[no-untyped-def]
    hosts = json.loads(run(cfg, "host", "list", "--json").stdout)
    assert hosts["v"] == 1 and [h["name"] for h in hosts["hosts"]] == ["hv1", "hv2"]
    assert hosts["hosts"][0]["running_guests"] == 1
    done = run(cfg, "guest", "list", "--json", "--host", "hv2", "--state", "running")
    guests = json.loads(done.stdout)
    assert [(g["name"], g["state"], g["fenced"]) for g in guests["guests"]] == [
        ("hv2-web", "running", True)]
    assert guests["guests"][0]["disks"][0]["volume"] == "aoe-e7.2"
    assert done.stderr == ""


def test_show_by_name_and_uuid(populated, cfg):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    result = runner.invoke(cli, _args(cfg, "guest", "show", "hv1-db", "--json"))
    assert result.exit_code == 0, result.output
    (view,) = json.loads(result.output)["guests"]
    by_uuid = runner.invoke(cli, _args(cfg, "guest", "show", view["uuid"], "--json"))
    assert json.loads(by_uuid.output)["guests"][0]["name"] == "hv1-db"
    table = runner.invoke(cli, _args(cfg, "host", "show", "hv1"))
    assert table.exit_code == 0 and "hv1-web" in table.output


def test_guest_of_dead_host_shows_unknown(populated, cfg):  # type: ignore[no-untyped-def]
    populated.stop_agent("hv2", kill=True)
    wait_until(lambda: "hv2" not in run(cfg, "host", "list", "--json").stdout,
               timeout=lease_expiry_bound(cfg.ttl), what="hv2 lease expiry")
    guests = json.loads(run(cfg, "guest", "list", "--json", "--host", "hv2").stdout)["guests"]
    assert {g["state"] for g in guests} == {"unknown"}
    assert "host lost" in run(cfg, "guest", "list", "--host", "hv2").stdout


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
