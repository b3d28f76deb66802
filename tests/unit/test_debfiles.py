"""What the Debian packages carry that is generated from the code (tools/debfiles.py), and
``gridtool-agent --version``, which the package test runs on an installed system."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents import main as agent_main
from gridtool import __version__
from gridtool.config import AGENT_CONFIG, Config, load
from tools import debfiles


def test_the_conffile_is_all_defaults_but_the_hook_socket(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(debfiles.agent_conf())
    cfg = load(str(conf), env={})
    assert cfg.hook_socket == "/run/gridtool/hook.sock"
    defaults = Config()
    differ = [f.name for f in fields(Config)
              if f.name not in ("source", "hook_socket")
              and getattr(cfg, f.name) != getattr(defaults, f.name)]
    assert differ == []


def test_the_conffile_documents_every_agent_setting_with_its_default() -> None:
    text = debfiles.agent_conf()
    assert text.startswith(f"# {AGENT_CONFIG}:")
    for f in fields(Config):
        section = f.metadata["section"]
        if section is None or f.name in debfiles.HIDDEN or f.name in debfiles.LIVE:
            continue
        line = f"#{f.name} = {debfiles.default_text(f.default)}".rstrip()
        assert line + "\n" in text, f.name
    assert "`" not in text and "*italic*" not in text


def test_uncommenting_the_required_settings_configures_the_agent(tmp_path: Path) -> None:
    text = debfiles.agent_conf()
    for name, value in (("host", "hv1"), ("libvirt_uri", "qemu:///system"),
                        ("endpoints", "10.0.0.1:2379")):
        old = f"#{name} =" if name != "endpoints" else "#endpoints = 127.0.0.1:2379"
        assert old in text
        text = text.replace(old, f"{name} = {value}" if name != "endpoints"
                            else f"endpoints = {value}", 1)
    conf = tmp_path / "agent.conf"
    conf.write_text(text)
    cfg = load(str(conf), env={}).require("host", "libvirt_uri")
    assert (cfg.host, cfg.libvirt_uri, cfg.endpoints) == ("hv1", "qemu:///system",
                                                          ("10.0.0.1:2379",))


def test_the_packaged_unit_runs_the_packaged_agent() -> None:
    unit = debfiles.unit()
    assert "\nExecStart=/usr/bin/gridtool-agent --config /etc/gridtool/agent.conf\n" in unit
    assert "\nRuntimeDirectory=gridtool\n" in unit
    assert "\nRequires=" not in unit


def test_agent_version_names_every_library_it_loads() -> None:
    result = CliRunner().invoke(agent_main.main, ["--version"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"gridtool-agent {__version__} (python 3.")
    for dist, _module in agent_main.RUNTIME:
        assert f", {dist} " in line


def test_agent_version_fails_in_one_line_on_a_missing_library(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_main, "RUNTIME", (*agent_main.RUNTIME,
                                                ("no-such-dist", "no_such_module_xyz")))
    result = CliRunner().invoke(agent_main.main, ["--version"])
    assert result.exit_code == 8
    assert result.output == ("gridtool-agent: cannot import no_such_module_xyz (no-such-dist): "
                             "No module named 'no_such_module_xyz'\n")
