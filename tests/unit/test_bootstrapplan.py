"""The host bootstrap plan: step order, idempotent checks (run with a real ``sh`` in a
temporary root, no SSH), secrets kept off command lines, SSH target parsing."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from gridtool.bootstrap.rules import (
    HOOK_LINE,
    PACKAGE_LAYOUT,
    Action,
    AddSpec,
    Deb,
    HostFacts,
    Layout,
    SshTarget,
    Step,
    TlsFiles,
    Upload,
    apply_script,
    check_debs,
    check_wheelhouse,
    decide,
    hook_shim,
    parse_deb_name,
    parse_facts,
    parse_ssh_target,
    plan_add,
    plan_remove,
    render_unit,
    tls_settings,
)
from gridtool.bootstrap.shell import wheel_files
from gridtool.errors import UsageError

UNIT = Path(__file__).resolve().parents[2] / "scripts/systemd/gridtool-agent.service"
SECRET = "s3cret-pw-do-not-log"


KEY = b"-----BEGIN PRIVATE KEY-----\nhost key\n"
TLS = TlsFiles(b"CA cert", "host-hv1", b"host cert", KEY)


def spec(root: str = "/", hook: str | None = None, tls: TlsFiles | None = None) -> AddSpec:
    layout = Layout(root)
    conf = f"[registry]\nuser = hv1\npassword = {SECRET}\n"
    return AddSpec("hv1", "qemu:///system", "gridtool-0.1.0-py3-none-any.whl", b"PK wheel",
                   conf, render_unit(UNIT.read_text(), layout), hook, layout, tls=tls)


def sh(command: str, stage: Path) -> int:
    return subprocess.run(["sh", "-c", command], env={**os.environ, "GT_STAGE": str(stage)},
                          capture_output=True, check=False).returncode


def run_local(steps: list[Step], stage: Path) -> list[Action]:
    """What bootstrap.run_steps does, with a local sh instead of SSH."""
    actions, changed = [], False
    for step in steps:
        passed = sh(step.check, stage) == 0 if step.check is not None else None
        action = decide(step, passed, changed)
        if action is Action.APPLY:
            for upload in step.uploads:
                (stage / upload.name).write_bytes(upload.data)
            assert sh(apply_script(step), stage) == 0, step.name
            changed = True
        actions.append(action)
    return actions


@pytest.mark.parametrize(("text", "target"), [
    ("root@10.0.0.5", SshTarget("root", "10.0.0.5", 22)),
    ("admin@hv5.example:2222", SshTarget("admin", "hv5.example", 2222)),
    ("root@[fe80::1]:22", SshTarget("root", "fe80::1", 22)),
    ("root@fe80::1", SshTarget("root", "fe80::1", 22)),
])
def test_parse_ssh_target(text: str, target: SshTarget) -> None:
    assert parse_ssh_target(text) == target
    assert parse_ssh_target(str(target)) == target


@pytest.mark.parametrize("text", ["10.0.0.5", "@host", "root@", "root@h:0", "root@h:99999",
                                  "root@h:x", "root@[::1", "a b@h"])
def test_parse_ssh_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--ssh"):
        parse_ssh_target(text)


def test_decide() -> None:
    both = Step("s", "s", "true", "true")
    after = Step("s", "s", "true", "true", after_change=True)
    check_only = Step("s", "s", "true", None)
    assert decide(both, True, True) is Action.OK
    assert decide(both, False, False) is Action.APPLY
    assert decide(after, True, False) is Action.OK
    assert decide(after, True, True) is Action.APPLY
    assert decide(check_only, False, False) is Action.FAIL
    assert decide(Step("s", "s", None, None, note="n"), None, True) is Action.NOTE


def test_apply_script_exit_codes(tmp_path: Path) -> None:
    """0 applied and verified, 101 apply failed, 102 the check still fails after it."""
    flag = tmp_path / "flag"
    assert sh(apply_script(Step("s", "s", f"test -e {flag}", f"touch {flag}")), tmp_path) == 0
    assert sh(apply_script(Step("s", "s", "true", "false")), tmp_path) == 101
    assert sh(apply_script(Step("s", "s", "false", "true")), tmp_path) == 102
    assert sh(apply_script(Step("s", "s", None, "true")), tmp_path) == 0


def test_facts() -> None:
    assert parse_facts("systemd=1\n") == HostFacts(systemd=True)
    assert parse_facts("systemd=0\n") == HostFacts(systemd=False)
    assert parse_facts("") == HostFacts(systemd=False)


def test_steps_in_order_systemd_only_on_a_real_root() -> None:
    names = [s.name for s in plan_add(spec(), HostFacts(systemd=True))]
    assert names == ["libvirt", "wheel", "venv", "config", "hook", "unit", "start"]
    start = plan_add(spec(), HostFacts(systemd=True))[-1]
    assert "systemctl enable" in (start.apply or "") and start.after_change
    for facts, root in ((HostFacts(False), "/"), (HostFacts(True), "/tmp/r")):
        start = plan_add(spec(root), facts)[-1]
        assert "nohup" in (start.apply or "") and "systemctl" not in (start.apply or "")
        assert "no systemd" in start.note


def test_paths_under_the_prefix_and_unit_rendered() -> None:
    lay = Layout("/tmp/r", "/opt/x/venv")
    assert lay.config == "/tmp/r/etc/gridtool/agent.conf"
    assert lay.agent == "/tmp/r/opt/x/venv/bin/gridtool-agent"
    unit = render_unit(UNIT.read_text(), lay)
    assert "ExecStart=/tmp/r/opt/x/venv/bin/gridtool-agent --config " \
           "/tmp/r/etc/gridtool/agent.conf" in unit
    assert "ReadOnlyPaths=/tmp/r/etc/gridtool" in unit and "Restart=always" in unit


def test_the_password_is_uploaded_never_on_a_command_line() -> None:
    steps = plan_add(spec(), HostFacts(False)) + plan_remove(Layout(), HostFacts(False))
    for step in steps:
        assert SECRET not in f"{step.check} {step.apply} {step.title} {step.note}"
    (config,) = [s for s in steps if s.name == "config"]
    assert config.uploads[0].secret and SECRET.encode() in config.uploads[0].data


def test_hook_step_skipped_or_installed() -> None:
    (skipped,) = [s for s in plan_add(spec(), HostFacts(False)) if s.name == "hook"]
    assert decide(skipped, None, False) is Action.NOTE and "no libvirt hook" in skipped.note
    shim = hook_shim(Layout("/r"), "agents.hook")
    (hook,) = [s for s in plan_add(spec("/r", shim), HostFacts(False)) if s.name == "hook"]
    assert hook.uploads[0].data == shim.encode()
    assert "/r/etc/libvirt/hooks/qemu.d/gridtool" in hook.title


FILES = ("wheel", "config", "hook", "unit")


def test_file_steps_apply_once_then_repair(tmp_path: Path) -> None:
    """Real sh in a temporary root: the first run installs, the second changes nothing,
    a changed mode or content is repaired, and remove deletes only what is ours."""
    root, stage = tmp_path / "root", tmp_path / "stage"
    stage.mkdir()
    the_spec = spec(str(root), hook=hook_shim(Layout(str(root)), "agents.hook"))
    steps = [s for s in plan_add(the_spec, HostFacts(False)) if s.name in FILES]
    assert run_local(steps, stage) == [Action.APPLY] * 4
    lay = the_spec.layout
    conf = Path(lay.config)
    assert conf.stat().st_mode & 0o777 == 0o600 and SECRET in conf.read_text()
    assert Path(lay.hook).stat().st_mode & 0o777 == 0o755
    assert run_local(steps, stage) == [Action.OK] * 4
    conf.chmod(0o644)
    Path(lay.unit).write_text("tampered")
    assert run_local(steps, stage) == [Action.OK, Action.APPLY, Action.OK, Action.APPLY]
    assert conf.stat().st_mode & 0o777 == 0o600 and "ExecStart=" in Path(lay.unit).read_text()
    assert sorted(p.name for p in Path(lay.wheels).iterdir()) == [the_spec.wheel_name]

    remove = plan_remove(lay, HostFacts(False))
    assert run_local(remove, stage) == [Action.OK, Action.APPLY]
    assert not conf.exists() and not Path(lay.unit).exists() and not Path(lay.hook).exists()
    assert run_local(remove, stage) == [Action.OK, Action.OK]


def test_remove_keeps_a_hook_that_is_not_ours(tmp_path: Path) -> None:
    lay = Layout(str(tmp_path))
    site = Path(lay.legacy_hooks[0])  # hooks/qemu
    site.parent.mkdir(parents=True)
    site.write_text("#!/bin/sh\n# the site's own gridtool-aware hook\nexit 0\n")
    assert run_local(plan_remove(lay, HostFacts(False)), tmp_path) == [Action.OK, Action.OK]
    assert site.exists()


def test_a_sites_own_hook_survives_add_and_remove_and_an_old_gridtool_hook_goes(
        tmp_path: Path) -> None:
    """libvirt >= 6.5 runs hooks/qemu and then hooks/qemu.d/*: ours goes into qemu.d, a
    site's hooks/qemu is never touched; one an older gridtool put at hooks/qemu is
    removed on add (else both would run) and on remove."""
    root, stage = tmp_path / "root", tmp_path / "stage"
    stage.mkdir()
    lay = Layout(str(root))
    the_spec = spec(str(root), hook=hook_shim(lay, "agents.hook"))
    (hook_step,) = [s for s in plan_add(the_spec, HostFacts(False)) if s.name == "hook"]
    site = Path(lay.legacy_hooks[0])
    site.parent.mkdir(parents=True)
    site_text = "#!/bin/sh\nlogger \"site hook $*\"\n"
    site.write_text(site_text)
    site.chmod(0o755)
    assert run_local([hook_step], stage) == [Action.APPLY]
    assert Path(lay.hook).parent.name == "qemu.d" and Path(lay.hook).stat().st_mode & 0o111
    assert site.read_text() == site_text
    run_local(plan_remove(lay, HostFacts(False)), stage)
    assert site.read_text() == site_text and not Path(lay.hook).exists()
    site.write_text(f"#!/bin/sh\n{HOOK_LINE} 'gridtool host add'\nexec true\n")  # an old one
    assert run_local([hook_step], stage) == [Action.APPLY]
    assert not site.exists() and Path(lay.hook).exists()
    site.write_text(f"#!/bin/sh\n{HOOK_LINE} 'gridtool host add'\nexec true\n")
    assert run_local(plan_remove(lay, HostFacts(False)), stage)[-1] is Action.APPLY
    assert not site.exists() and not Path(lay.hook).exists()


def test_direct_stop_kills_only_the_agent_of_this_config(tmp_path: Path) -> None:
    """The pid file's process is stopped only when its command line names our config."""
    lay = Layout(str(tmp_path))
    Path(lay.pid_file).parent.mkdir(parents=True)
    stop = plan_remove(lay, HostFacts(False))[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "--config", lay.config])
    try:
        Path(lay.pid_file).write_text(f"{other.pid}\n")
        assert sh(stop.check or "", tmp_path) == 0  # not ours: counts as stopped
        Path(lay.pid_file).write_text(f"{ours.pid}\n")
        assert sh(stop.check or "", tmp_path) != 0
        assert sh(stop.apply or "", tmp_path) == 0
        assert ours.wait(5) == -15 and other.poll() is None
        assert not Path(lay.pid_file).exists()
    finally:
        for proc in (other, ours):
            proc.kill()
            proc.wait()


def test_tls_files_go_before_the_config_and_the_agent_config_points_at_them() -> None:
    names = [s.name for s in plan_add(spec(tls=TLS), HostFacts(False))]
    assert names == ["libvirt", "wheel", "venv", "tls-ca_cert", "tls-cert", "tls-key",
                     "config", "hook", "unit", "start"]
    ca_only = [s.name for s in plan_add(spec(tls=TlsFiles(b"CA")), HostFacts(False))]
    assert ca_only[3:5] == ["tls-ca_cert", "config"]
    assert tls_settings(Layout("/r"), TLS) == {
        "ca_cert": "/r/etc/gridtool/tls/ca.crt", "cert": "/r/etc/gridtool/tls/host-hv1.crt",
        "key": "/r/etc/gridtool/tls/host-hv1.key"}
    assert tls_settings(Layout(), TlsFiles(b"CA")) == {"ca_cert": "/etc/gridtool/tls/ca.crt"}
    assert tls_settings(Layout(), None) == {}
    (key,) = [s for s in plan_add(spec(tls=TLS), HostFacts(False)) if s.name == "tls-key"]
    assert key.uploads[0].secret and KEY.decode() not in f"{key.check} {key.apply}"


def test_tls_files_installed_keys_0600_repaired_and_removed(tmp_path: Path) -> None:
    """Real sh: installed with their modes, a no-op the second time, a changed key is
    put back (and would restart the agent), remove deletes the host's cert and key."""
    root, stage = tmp_path / "root", tmp_path / "stage"
    stage.mkdir()
    the_spec = spec(str(root), tls=TLS)
    steps = [s for s in plan_add(the_spec, HostFacts(False)) if s.name.startswith("tls-")]
    assert run_local(steps, stage) == [Action.APPLY] * 3
    paths = tls_settings(the_spec.layout, TLS)
    modes = {k: Path(v).stat().st_mode & 0o777 for k, v in paths.items()}
    assert modes == {"ca_cert": 0o644, "cert": 0o644, "key": 0o600}
    assert Path(paths["key"]).read_bytes() == KEY
    assert run_local(steps, stage) == [Action.OK] * 3
    Path(paths["key"]).write_bytes(b"other")
    assert run_local(steps, stage) == [Action.OK, Action.OK, Action.APPLY]
    assert Path(paths["key"]).read_bytes() == KEY

    remove = plan_remove(the_spec.layout, HostFacts(False), tls_stem="host-hv1")
    assert run_local(remove, stage) == [Action.OK, Action.APPLY]
    assert not Path(paths["key"]).exists() and not Path(paths["cert"]).exists()
    assert Path(paths["ca_cert"]).exists()  # public, and possibly shared: kept
    assert run_local(remove, stage) == [Action.OK, Action.OK]


def test_the_agent_unit_outlives_a_libvirtd_restart() -> None:
    """Requires=/BindsTo=/PartOf= libvirtd would stop or restart the agent with libvirtd,
    and an agent stopped without a watchdog destroys its HA guests: only ordering and a
    weak Wants= link the two (the agent reconnects by itself)."""
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    section = unit["Unit"]
    for strong in ("Requires", "Requisite", "BindsTo", "PartOf"):
        assert "libvirtd" not in section.get(strong, ""), f"{strong}= ties the agent to libvirtd"
    assert "libvirtd.service" in section["After"].split()
    assert "libvirtd.service" in section["Wants"].split()


def test_a_direct_start_waits_for_the_agent_and_records_its_own_pid(tmp_path: Path) -> None:
    """The start step's apply returns once the agent runs, with the agent's pid (not a
    short-lived parent's) in the pid file; its check then passes and the stop step ends
    it. A stand-in agent that only sleeps, run by a real sh."""
    from gridtool.bootstrap.rules import _running, _start_direct, _stop_direct

    layout = Layout(str(tmp_path))
    agent = Path(layout.agent)
    agent.parent.mkdir(parents=True)
    agent.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    agent.chmod(0o755)
    try:
        assert sh(_start_direct(layout), tmp_path) == 0
        pid = int(Path(layout.pid_file).read_text())
        assert f"--config {layout.config}" in Path(f"/proc/{pid}/cmdline").read_bytes() \
            .replace(b"\0", b" ").decode()
        assert sh(_running(layout), tmp_path) == 0
    finally:
        assert sh(_stop_direct(layout), tmp_path) == 0
    assert sh(_running(layout), tmp_path) != 0


DEBS = (Deb("gridtool-common_0.1.0-1_amd64.deb", b"common"),
        Deb("gridtool-agent_0.1.0-1_all.deb", b"agent"))


def test_deb_names_are_checked() -> None:
    assert parse_deb_name("gridtool-agent_0.1.0-1_all.deb") == ("gridtool-agent", "0.1.0-1")
    with pytest.raises(ValueError, match=r"is not named PACKAGE_VERSION_ARCH\.deb"):
        parse_deb_name("gridtool-agent.deb")
    check_debs([d.name for d in DEBS])
    with pytest.raises(ValueError, match=r"\(got gridtool-agent\)$"):
        check_debs(["gridtool-agent_0.1.0-1_all.deb"])
    with pytest.raises(ValueError, match="got gridtool-agent, gridtool-agent, gridtool-common"):
        check_debs([*(d.name for d in DEBS), "gridtool-agent_0.2.0-1_all.deb"])


@pytest.mark.parametrize("systemd", [True, False])
def test_a_deb_install_uses_apt_the_packaged_hook_and_the_packages_unit(systemd: bool) -> None:
    base = spec()
    deb_spec = AddSpec("hv1", "qemu:///system", "", b"", base.agent_conf, None,
                       None, PACKAGE_LAYOUT, debs=DEBS)
    steps = plan_add(deb_spec, HostFacts(systemd=systemd))
    names = [s.name for s in steps]
    assert names == ["libvirt", "deb", "config", "hook", "unit", "start"]
    deb = steps[1]
    assert [u.name for u in deb.uploads] == [d.name for d in DEBS]
    assert deb.apply is not None and deb.check is not None
    common, agent = (f"/var/cache/gridtool/debs/{d.name}" for d in DEBS)
    assert deb.apply.endswith(f"--force-confold {common} {agent}")
    assert "install ok installed 0.1.0-1" in deb.check and "gridtool-common" in deb.check
    assert steps[4].apply is None and "package's own" in steps[4].note
    hook = steps[3]  # the package's own symlink, checked only
    assert hook.apply is None and not hook.uploads
    assert hook.check == "test -x /etc/libvirt/hooks/qemu.d/gridtool"
    start = steps[5]
    assert start.apply is not None
    assert ("systemctl restart" in start.apply) == systemd
    assert systemd or "/usr/bin/gridtool-agent --config /etc/gridtool/agent.conf" in start.apply


def test_remove_purges_the_packages_on_a_real_root_only() -> None:
    assert [s.name for s in plan_remove(Layout(), HostFacts(True))] == [
        "stop", "packages", "files"]
    purge = plan_remove(Layout(), HostFacts(True))[1]
    assert purge.apply is not None and purge.apply.endswith(
        "apt-get purge -y -q gridtool-common gridtool-agent")
    assert [s.name for s in plan_remove(Layout("/tmp/x"), HostFacts(False))] == [
        "stop", "files"]


HOUSE = (Upload("grpcio-1.85.3-cp311-cp311-manylinux2014_x86_64.whl", b"PK grpcio"),
         Upload("constraints.txt", b"grpcio==1.85.3\n"))


def test_a_wheelhouse_is_copied_whole_and_installed_offline_at_its_constraints(
        tmp_path: Path) -> None:
    root, stage = tmp_path / "root", tmp_path / "stage"
    stage.mkdir()
    house = replace(spec(str(root)), wheelhouse=HOUSE)
    wheel, venv = [s for s in plan_add(house, HostFacts(False)) if s.name in ("wheel", "venv")]
    assert [u.name for u in wheel.uploads] == [house.wheel_name, *(u.name for u in HOUSE)]
    wheels = house.layout.wheels
    assert venv.apply is not None and "(offline, from the wheelhouse)" in venv.title
    assert (f"pip install -q --disable-pip-version-check --no-index --find-links {wheels} "
            f"-c {wheels}/constraints.txt {wheels}/{house.wheel_name}") in venv.apply
    assert run_local([wheel], stage) == [Action.APPLY]
    assert sorted(p.name for p in Path(wheels).iterdir()) == sorted(
        [house.wheel_name, *(u.name for u in HOUSE)])
    assert run_local([wheel], stage) == [Action.OK]
    Path(wheels, HOUSE[0].name).write_bytes(b"PK other grpcio")
    assert run_local([wheel], stage) == [Action.APPLY]
    # the venv's stamp covers every file: another wheelhouse is another install
    (plain_venv,) = [s for s in plan_add(spec(str(root)), HostFacts(False)) if s.name == "venv"]
    assert plain_venv.check != venv.check and "--no-index --find-links" not in (
        plain_venv.apply or "").split("&&")[1]


def test_a_wheelhouse_needs_one_gridtool_wheel_and_its_constraints() -> None:
    assert check_wheelhouse(["a-1-py3-none-any.whl", "gridtool-0.1.0-py3-none-any.whl",
                             "constraints.txt"]) == "gridtool-0.1.0-py3-none-any.whl"
    with pytest.raises(ValueError, match=r"\(got 1 gridtool wheels, no constraints.txt\)"):
        check_wheelhouse(["gridtool-0.1.0-py3-none-any.whl"])
    with pytest.raises(ValueError, match=r"\(got 2 gridtool wheels\)"):
        check_wheelhouse(["gridtool-0.1.0-py3-none-any.whl", "gridtool-0.2.0-py3-none-any.whl",
                          "constraints.txt"])


def test_apt_installs_gridtool_agent_from_the_hosts_sources() -> None:
    apt_spec = AddSpec("hv1", "qemu:///system", "", b"", spec().agent_conf, None,
                       None, PACKAGE_LAYOUT, apt=True)
    steps = plan_add(apt_spec, HostFacts(systemd=True))
    assert [s.name for s in steps] == ["libvirt", "apt", "config", "hook", "unit", "start"]
    apt = steps[1]
    assert apt.uploads == () and apt.apply is not None and apt.check is not None
    assert apt.apply.startswith("apt-get update -q && ")
    assert apt.apply.endswith("--force-confold gridtool-agent")
    assert "'install ok installed' ]" in apt.check and "gridtool-agent" in apt.check


def _wheel(members: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return out.getvalue()


def test_the_unit_template_and_the_hook_come_from_the_wheel() -> None:
    unit = UNIT.read_text()
    data = "gridtool-0.1.0.data/data/share/gridtool/systemd/gridtool-agent.service"
    assert wheel_files(_wheel({data: unit, "agents/hook.py": ""}), "w.whl") == (unit, True)
    assert wheel_files(_wheel({data: unit}), "w.whl") == (unit, False)
    with pytest.raises(UsageError, match=r"wheel old\.whl carries no gridtool-agent\.service"):
        wheel_files(_wheel({"agents/hook.py": ""}), "old.whl")
    with pytest.raises(UsageError, match=r"wheel x\.whl: not a wheel"):
        wheel_files(b"not a zip", "x.whl")
