"""Templates and copy-on-write clones with real agents on libvirtd test-driver hosts:
a template's golden image stays read-only and unchanged while 8 clones run across 3
hosts on qcow2 overlays backed by it; a clone that fails (its define refused, or no
host for it) leaves no overlay, definition or record; a template with clones cannot be
deleted; removing a clone removes its overlay, definition and pool membership."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import libvirt
import pytest

from gridtool.clone import templates
from gridtool.clone.shell import CloneResult, clone_guests, remove_clone
from tests.harness.testbed import run_cli as gridtool
from tests.harness.testbed import wait_until

HOSTS = ("hv1", "hv2", "hv3")
BASE_XML = """<domain type='test'><name>{name}</name><memory unit='MiB'>{memory}</memory>
<vcpu>1</vcpu><os><type>hvm</type></os><devices>
<disk type='file' device='disk'><source file='/var/lib/lab/{name}.img'/><target dev='vda'/>
<serial>BASE-1</serial></disk>
<interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/>
</interface></devices></domain>"""


@pytest.fixture
def fleet(lab_hosts, registry):  # type: ignore[no-untyped-def]
    """Three hosts with agents and a base guest ``base`` (defined, not running) on hv1."""
    for name in HOSTS:
        lab_hosts.add(name)
    for name in HOSTS:
        lab_hosts.start_agent(name)
    wait_until(lambda: len(registry.list_hosts()[0]) == 3, what="3 hosts registered")
    define_base(lab_hosts, registry, "base", 128)
    return lab_hosts


def define_base(lab_hosts, registry, name: str, memory: int) -> None:  # type: ignore[no-untyped-def]
    lab_hosts.conn("hv1").defineXML(BASE_XML.format(name=name, memory=memory))
    wait_until(lambda: any(g.name == name for g in registry.guests_of("hv1")[0].values()),
               what=f"{name} recorded")


def domains(lab_hosts) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    """uuid -> {host: state} over every host's libvirt (1 = running)."""
    found: dict[str, dict[str, str]] = {}
    for host, conn in lab_hosts.conns.items():
        for dom in conn.listAllDomains(0):
            found.setdefault(dom.UUIDString(), {})[host] = "running" if dom.isActive() \
                else "defined"
    return found


def overlays(lab_hosts) -> set[str]:  # type: ignore[no-untyped-def]
    root = lab_hosts.images_dir / "clones"
    return {str(p) for p in root.rglob("*")} - {str(p) for p in root.glob("*")} \
        if root.exists() else set()


def image_info(path: str) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_template_clones_and_removal(fleet, store, cfg, registry, capsys):  # type: ignore[no-untyped-def]
    code, out, err = gridtool(cfg, capsys, "template", "create", "worker", "--from", "base",
                              "--json")
    assert code == 0, err
    tpl = json.loads(out)["template"]
    golden = Path(tpl["images"]["vda"])
    assert golden == fleet.images_dir / "templates" / "worker" / "vda.qcow2"
    assert golden.stat().st_mode & 0o777 == 0o444
    before = digest(golden)
    assert (tpl["memory_mib"], tpl["vcpus"], tpl["nics"]) == (128, 1, 1)

    code, _, err = gridtool(cfg, capsys, "template", "create", "worker", "--from", "base")
    assert code == 7 and err.count("\n") == 1 and "already exists" in err

    code, out, err = gridtool(cfg, capsys, "clone", "worker", "--count", "8", "--pool",
                              "workers", "--json")
    assert code == 0, err
    doc = json.loads(out)
    clones = doc["clones"]
    assert len(clones) == 8 and all(c["ok"] for c in clones), clones
    assert [c["name"] for c in clones] == [f"worker-{i}" for i in range(1, 9)]
    assert {c["host"] for c in clones} == set(HOSTS)  # spread over the 3 hosts
    for c in clones:
        assert set(c["timings"]) >= {"overlay", "define", "start", "running"}
        assert c["timings"]["running"] >= c["timings"]["overlay"]

    # every clone runs exactly where the result says, and the registry says so
    seen = domains(fleet)
    for c in clones:
        assert seen[c["uuid"]] == {c["host"]: "running"}
    guests = {g.uuid: g for g in registry.list_guests()[0]}
    assert all(guests[c["uuid"]].state == "running" for c in clones)

    # an overlay per clone, backed by the golden image; the golden image untouched
    made = overlays(fleet)
    assert len(made) == 8
    for c in clones:
        path = fleet.images_dir / "clones" / c["host"] / f"{c['uuid']}-vda.qcow2"
        assert str(path) in made
        info = image_info(str(path))
        assert info["format"] == "qcow2"
        assert info["backing-filename"] == str(golden)
        assert info["backing-filename-format"] == "qcow2"
        xml = fleet.conn(c["host"]).lookupByUUIDString(c["uuid"]).XMLDesc(0)
        assert f"file='{path}'" in xml and "BASE-1" not in xml and "12:34:56" not in xml
    assert golden.stat().st_mode & 0o777 == 0o444 and digest(golden) == before

    # pool membership recorded; the template cannot go while clones use it
    members = store.list(cfg.keys.pool_members("workers"))[0]
    assert len(members) == 8
    member = json.loads(store.get(cfg.keys.pool_member("workers", clones[0]["uuid"])).value)
    assert member["v"] == 1 and member["template"] == "worker"
    assert {member["host"], member["name"]} == {clones[0]["host"], clones[0]["name"]}
    assert member["created_at"] > 0
    code, _, err = gridtool(cfg, capsys, "template", "delete", "worker")
    assert code == 7 and err.count("\n") == 1 and "8 clone(s)" in err
    code, out, _ = gridtool(cfg, capsys, "template", "list", "--json")
    assert code == 0 and json.loads(out)["templates"][0]["clones"] == 8

    # removing a clone: definition, overlay, pool member and clone record gone
    first = clones[0]
    remove_clone(store, cfg, first["host"], first["uuid"], first["name"], pool="workers")
    assert first["uuid"] not in domains(fleet)
    assert len(overlays(fleet)) == 7
    assert store.get(cfg.keys.pool_member("workers", first["uuid"])) is None
    assert len(templates.clones_of(store, cfg.keys, "worker")) == 7
    wait_until(lambda: first["uuid"] not in {g.uuid for g in registry.list_guests()[0]},
               what="removed clone's record gone")

    # remove the rest from the CLI; then the template can go, golden images and all
    code, _, err = gridtool(cfg, capsys, "template", "remove-clone",
                            *(c["name"] for c in clones[1:]))
    assert code == 0, err
    assert not {c["uuid"] for c in clones} & set(domains(fleet))
    assert overlays(fleet) == set() and store.list(cfg.keys.pool_members("workers"))[0] == []
    code, _, err = gridtool(cfg, capsys, "template", "delete", "worker")
    assert code == 0, err
    assert not golden.exists() and store.get(cfg.keys.template("worker")) is None


def test_failed_clones_leave_nothing(fleet, store, cfg, registry, capsys):  # type: ignore[no-untyped-def]
    code, _, err = gridtool(cfg, capsys, "template", "create", "worker", "--from", "base")
    assert code == 0, err

    def sabotage(item: CloneResult | str) -> None:
        """Before worker-2 is submitted, hv2 gets a domain of that name behind the
        registry's back: the agent's define is refused after it made the overlay."""
        if item == "worker-2: placed on hv2":
            fleet.conn("hv2").defineXML(BASE_XML.format(name="worker-2", memory=64))

    results = clone_guests(store, cfg, "worker", 3, on="hv2", progress=sabotage)
    assert [(r.name, r.ok) for r in results] == [("worker-1", True), ("worker-2", False),
                                                 ("worker-3", True)]
    bad = results[1]
    assert "already exists" in bad.error and "\n" not in bad.error
    assert bad.uuid not in domains(fleet)
    assert not [p for p in overlays(fleet) if bad.uuid in p]
    assert len(overlays(fleet)) == 2
    assert templates.find_clone(store, cfg.keys, bad.uuid) is None
    assert "event=intent_failed host=hv2" in fleet.agent_log("hv2")

    # no host can take a 64 GiB clone: refused before anything is made
    define_base(fleet, registry, "huge", 64 * 1024)
    code, _, err = gridtool(cfg, capsys, "template", "create", "huge", "--from", "huge")
    assert code == 0, err
    code, out, err = gridtool(cfg, capsys, "clone", "huge", "--count", "2", "--json")
    assert code == 8 and err.count("\n") == 1 and "2 of 2 clones failed" in err
    doc = json.loads(out)
    assert not doc["ok"] and all("no host for it" in c["error"] for c in doc["clones"])
    assert templates.clones_of(store, cfg.keys, "huge") == []
    assert len(overlays(fleet)) == 2

    # bad requests: one line, distinct exit codes, nothing made
    before = set(domains(fleet))
    for args, exit_code in ((("clone", "nope"), 3), (("clone", "worker", "--on", "hv9"), 3),
                            (("clone", "worker", "--count", "0"), 2),
                            (("clone", "worker", "--name-prefix", "a b"), 2),
                            (("clone", "worker", "--on", "hv1", "--auto"), 2),
                            (("template", "create", "x/y", "--from", "base"), 2),
                            (("template", "create", "x", "--from", "nope"), 3)):
        code, _, err = gridtool(cfg, capsys, *args)
        assert code == exit_code and err.count("\n") == 1, (args, code, err)
    assert set(domains(fleet)) == before
    assert len(overlays(fleet)) == 2
    assert not os.path.exists(fleet.images_dir / "templates" / "x")


def test_template_of_running_guest_and_no_start(fleet, store, cfg, registry):  # type: ignore[no-untyped-def]
    """A running guest is frozen too (paused meanwhile, running after); --no-start
    clones are defined, not started, and pause nothing."""
    dom = fleet.conn("hv1").lookupByName("base")
    dom.create()
    from gridtool.clone.shell import create_template

    tpl = create_template(store, cfg, "live", "base")
    assert dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING
    results = clone_guests(store, cfg, tpl.name, 2, start=False, name_prefix="cold-")
    assert [r.name for r in results] == ["cold-1", "cold-2"] and all(r.ok for r in results)
    assert all("running" not in r.timings and r.timings["defined"] >= r.timings["overlay"]
               for r in results)
    seen = domains(fleet)
    assert all(list(seen[r.uuid].values()) == ["defined"] for r in results)
