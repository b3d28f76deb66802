"""Scripting the fleet against real parts (etcd, a libvirtd test-driver host, its agent):
``--json`` results of mutating commands, ``intent list|show``, and shell completion of
registry names."""

from __future__ import annotations

import json
import time

import pytest
from click.shell_completion import ShellComplete

from gridtool.cli.common.complete import TIMEOUT_S
from gridtool.cli.main import cli
from gridtool.lab.procs import free_port
from gridtool.pools import shell as pools
from tests.harness.testbed import domain_xml, run_cli, wait_until


@pytest.fixture
def one_host(lab_hosts, registry):  # type: ignore[no-untyped-def]
    lab_hosts.add("hv1")
    lab_hosts.conn("hv1").defineXML(domain_xml("web1")).create()
    lab_hosts.conn("hv1").defineXML(domain_xml("db1"))
    lab_hosts.start_agent("hv1")
    wait_until(lambda: len(registry.list_guests()[0]) == 2, what="2 guests")
    return lab_hosts


def test_json_results_intents_and_completion(one_host, cfg, store, capsys):  # type: ignore[no-untyped-def]
    """One lab for the three (its set-up is most of the time)."""
    _check_json_and_intents(cfg, capsys)
    _check_completion(cfg, store)


def _check_json_and_intents(cfg, capsys):  # type: ignore[no-untyped-def]
    code, out, err = run_cli(cfg, capsys, "guest", "stop", "web1", "--timeout", "5", "--json")
    assert code == 0 and err == "", err
    result = json.loads(out)
    intent = result["intent"]
    assert (result["guest"], result["host"], result["action"]) == ("web1", "hv1", "stop")
    assert (intent["state"], intent["action"], intent["name"]) == ("done", "stop", "web1")

    # Collected by the CLI, it is listed as done (moved to intents-done/), with its result.
    code, out, _ = run_cli(cfg, capsys, "intent", "list", "--json")
    listed = {i["id"]: i for i in json.loads(out)["intents"]}
    assert code == 0 and listed[intent["id"]]["state"] == "done"
    assert listed[intent["id"]]["message"] == intent["message"] != ""
    for args, present in ((("--state", "done"), True), (("--state", "pending"), False),
                          (("--host", "hv1"), True), (("--host", "hv2"), False)):
        code, out, _ = run_cli(cfg, capsys, "intent", "list", "--json", *args)
        ids = [i["id"] for i in json.loads(out)["intents"]]
        assert code == 0 and (intent["id"] in ids) is present, args
    code, out, _ = run_cli(cfg, capsys, "intent", "list")
    assert code == 0 and intent["id"] in out and "web1" in out and "done" in out

    code, out, _ = run_cli(cfg, capsys, "intent", "show", intent["id"], "--json")
    assert code == 0 and json.loads(out)["intent"]["id"] == intent["id"]
    code, out, err = run_cli(cfg, capsys, "intent", "show", "no-such-intent")
    assert code == 3 and out == "" and err.count("\n") == 1 and "no intent" in err

    # --no-wait: the intent as submitted; the agent then carries it out.
    code, out, err = run_cli(cfg, capsys, "guest", "start", "web1", "--no-wait", "--json")
    started = json.loads(out)["intent"]
    assert code == 0 and err == "" and started["state"] == "pending"

    def finished() -> bool:
        _, listing, _ = run_cli(cfg, capsys, "intent", "list", "--json", "--state", "done")
        return started["id"] in listing
    wait_until(finished, 20, "the --no-wait start done")

    # An error stays one line on stderr with its exit code, even with --json.
    code, out, err = run_cli(cfg, capsys, "pool", "scale", "nopool", "3", "--json")
    assert code == 3 and out == "" and err.count("\n") == 1


def _complete(cfg, *words: str, incomplete: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    """What <TAB> offers after ``gridtool --endpoints .. --prefix .. WORDS`` (click's
    completion protocol, in-process; credentials from GRIDTOOL_CONFIG)."""
    args = ["--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, *words]
    comp = ShellComplete(cli, {}, "gridtool", "_GRIDTOOL_COMPLETE")
    return [c.value for c in comp.get_completions(args, incomplete)]


def _check_completion(cfg, store):  # type: ignore[no-untyped-def]
    """One host's guests, then a template and a pool, as <TAB> offers them."""
    from gridtool.clone.templates import Template, create_template

    assert _complete(cfg, "guest", "stop") == ["db1", "web1"]
    assert _complete(cfg, "guest", "stop", incomplete="w") == ["web1"]
    assert _complete(cfg, "guest", "start", "db1", "--on") == ["hv1"]
    assert _complete(cfg, "host", "drain") == ["hv1"]
    assert _complete(cfg, "intent", "list", "--host") == ["hv1"]
    assert _complete(cfg, "pool", "scale") == []
    create_template(store, cfg.keys, Template(
        name="tpl1", xml=domain_xml("db1"), disks=[], images={}, memory_mib=128, vcpus=1,
        images_dir="/nonexistent", source_guest="0" * 32, source_name="db1",
        source_host="hv1", created_at=time.time()))
    pools.create(store, cfg.keys, pools.new_spec("web", "tpl1", 0, 3))
    assert _complete(cfg, "pool", "scale") == ["web"]
    assert _complete(cfg, "clone") == ["tpl1"]
    assert _complete(cfg, "template", "delete", incomplete="x") == []

    # No registry answering: nothing offered, nothing printed, within the short timeout.
    began = time.monotonic()
    dead = ["--endpoints", f"127.0.0.1:{free_port()}", "--prefix", cfg.prefix, "guest", "stop"]
    comp = ShellComplete(cli, {}, "gridtool", "_GRIDTOOL_COMPLETE")
    assert comp.get_completions(dead, "") == []
    assert time.monotonic() - began < TIMEOUT_S + 3
