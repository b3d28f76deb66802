"""The man pages in man/ match the code: regenerated output, every command and option,
every setting, and groff renders them without a warning."""

from __future__ import annotations

import configparser
import difflib
import importlib.util
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import click
import pytest

from agents.main import main as agent_main
from gridtool import config
from gridtool.cli.main import cli
from gridtool.config import Config, load
from tests.harness.testbed import wait_until

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"


def _load_generator():  # type: ignore[no-untyped-def]
    """tools/manpage.py: a build tool outside the installed package."""
    spec = importlib.util.spec_from_file_location("manpage", ROOT / "tools" / "manpage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["manpage"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


manpage = _load_generator()
PAGES = ("gridtool.1", "gridtool-agent.8", "gridtool.conf.5")
REGENERATE = "run scripts/gen-man and commit the result"


def plain(roff: str) -> str:
    """Roff source with the escapes this project uses undone (``\\-`` -> ``-`` ...)."""
    text = re.sub(r"\\f[BIRP]", "", roff)
    text = text.replace(r"\%", "").replace(r"\&", "").replace(r"\:", "")
    text = text.replace(r"\-", "-").replace(r"\e", "\\")
    for name, char in (("aq", "'"), ("ga", "`"), ("ha", "^"), ("ti", "~"), ("dq", '"')):
        text = text.replace(rf"\({name}", char)
    return text


def page(name: str) -> str:
    path = MAN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {REGENERATE}")
    return path.read_text()


def top() -> list[str]:
    """The top-level commands' names (imported or not yet)."""
    return cli.list_commands(click.Context(cli))


def commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    """(command path, command) for the whole tree, walked with click alone."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from commands(sub, f"{path} {name}")


def flags(command: click.Command) -> list[str]:
    return [flag for param in command.params
            if isinstance(param, click.Option) and not param.hidden
            for flag in param.opts + param.secondary_opts]


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


# -- (a) the committed pages are the generator's output --------------------------


@pytest.mark.parametrize("name", PAGES)
def test_committed_page_is_current(name: str) -> None:
    fresh = manpage.generate()[name]
    committed = page(name)
    if committed != fresh:
        diff = "".join(list(difflib.unified_diff(
            committed.splitlines(keepends=True), fresh.splitlines(keepends=True),
            f"man/{name} (committed)", f"man/{name} (generated)"))[:40])
        pytest.fail(f"man/{name} is stale: {REGENERATE}\n{diff}")


def test_generation_is_reproducible() -> None:
    assert manpage.generate() == manpage.generate()
    assert set(manpage.generate()) == set(PAGES)


# -- (b) every command and option is documented -----------------------------------


def test_every_gridtool_command_and_option_is_in_the_page() -> None:
    text = plain(page("gridtool.1"))
    missing = []
    for path, command in commands(cli, "gridtool"):
        if path != "gridtool" and f'.SS "{path}"' not in text:
            missing.append(f"command '{path}'")
        missing += [f"option {flag} of '{path}'" for flag in flags(command)
                    if not mentions(text, flag)]
    for flag in cli.get_help_option(click.Context(cli, **cli.context_settings)).opts:
        if not mentions(text, flag):
            missing.append(f"option {flag}")
    assert not missing, f"man/gridtool.1 lacks {', '.join(missing)}: {REGENERATE}"


def test_every_agent_option_is_in_the_page() -> None:
    text = plain(page("gridtool-agent.8"))
    missing = [flag for flag in [*flags(agent_main), "--help"] if not mentions(text, flag)]
    assert not missing, f"man/gridtool-agent.8 lacks {', '.join(missing)}: {REGENERATE}"


def test_choices_and_shown_defaults_are_documented() -> None:
    for name, root in (("gridtool.1", cli), ("gridtool-agent.8", agent_main)):
        text = plain(page(name))
        for path, command in commands(root, name.split(".")[0]):
            for param in command.params:
                if isinstance(param, click.Option) and isinstance(param.type, click.Choice):
                    for choice in param.type.choices:
                        assert mentions(text, str(choice)), (path, param.name, choice)
                if isinstance(param, click.Option) and param.show_default \
                        and not param.is_flag:
                    shown = {str(param.default), format(param.default, "g")
                             if isinstance(param.default, float) else str(param.default)}
                    if isinstance(param.show_default, str):
                        shown = {param.show_default}
                    assert any(f"Default: {d}." in text for d in shown), (path, param.name)


def section_of(text: str, heading: str) -> str:
    """The body of ``.SH "heading"`` in plain roff."""
    return text.split(f'.SH "{heading}"')[1].split(".SH")[0]


def listed(text: str) -> dict[str, str]:
    """``.TP`` entries of a section: tag line -> first body line."""
    return dict(re.findall(r"^\.TP\n(.+)\n(.+)$", text, flags=re.M))


def test_exit_codes_environment_and_files_are_documented() -> None:
    from gridtool.config import _SECTIONS, AGENT_CONFIG, SYSTEM_CONFIG
    from gridtool.errors import EXIT_CODES
    from gridtool.lab.state import DEFAULT_LAB_DIR

    text = plain(page("gridtool.1"))
    exit_status = text.split('.SH "EXIT STATUS"')[1].split(".SH")[0]
    for code, meaning in EXIT_CODES.items():
        assert f".TP\n{code}\n{meaning[0].upper()}{meaning[1:]}." in exit_status, code
    for env in ["GRIDTOOL_CONFIG", "GRIDTOOL_LAB_DIR", "GRIDTOOL_DEBUG",
                *(f"GRIDTOOL_{name.upper()}" for name in _SECTIONS)]:
        assert mentions(text, env), env
    for path in (SYSTEM_CONFIG, AGENT_CONFIG, DEFAULT_LAB_DIR, DEFAULT_LAB_DIR / "lab.json"):
        assert str(path) in text, path
    assert ('"gridtool check"' in text) == ("check" in top())
    assert ("Nagios" in text) == ("check" in top())
    agent = plain(page("gridtool-agent.8"))
    for heading in ("SIGNALS", "LOGGING", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert f'.SH "{heading}"' in agent, heading
    assert "SIGTERM" in agent


def test_new_commands_are_picked_up_without_changes() -> None:
    """A command added to the tree (a fake ``frobnicate``) appears with its options,
    choices, defaults and example, and goes with it."""
    assert "frobnicate" not in top()

    @click.command("frobnicate",
                   help="Frobnicate the fleet.\n\n\b\nExample:\n  gridtool frobnicate --warn 3")
    @click.option("--warn", type=int, default=3, show_default=True, help="Warn above this.")
    @click.option("--mode", type=click.Choice(["a", "b"]), help="Which way.")
    def frobnicate(warn: int, mode: str) -> None:
        """unused"""

    cli.add_command(frobnicate)
    try:
        text = plain(manpage.render_gridtool())
    finally:
        cli.commands.pop("frobnicate")
    assert '.SS "gridtool frobnicate"' in text and "Frobnicate the fleet." in text
    assert "--warn" in text and "Default: 3." in text and "{a|b}" in text
    assert "gridtool frobnicate --warn 3" in text
    assert "frobnicate" not in plain(manpage.render_gridtool())


def test_the_nagios_note_follows_the_check_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gridtool check`` exits with Nagios statuses, not the EXIT STATUS table: the page
    says so while the command exists, and not once it is gone."""
    from gridtool.health.ranges import Status

    assert "check" in top()
    note = section_of(plain(manpage.render_gridtool()), "EXIT STATUS")
    assert "Nagios" in note
    assert all(f"{int(s)} {s.name}" in note for s in Status)
    monkeypatch.delitem(cli.lazy, "check")
    monkeypatch.delitem(cli.commands, "check", raising=False)
    assert "Nagios" not in plain(manpage.render_gridtool())


# -- roff escaping ----------------------------------------------------------------


def test_escaping() -> None:
    assert manpage.code("--log-level") == r"\-\-log\-level"
    assert manpage.code(r"a \ b") == r"a \e b"
    assert manpage.code(".hidden") == r"\&.hidden"
    assert manpage.code("'quoted'") == r"\(aqquoted\(aq"
    assert manpage.prose("'tis so") == r"\&'tis so"
    assert manpage.prose("use --json, not re-run") == r"use \%\-\-json, not re-run"
    assert manpage.prose("ünïcode…") == r"\[u00FC]n\[u00EF]code\[u2026]"
    assert manpage.prose("line\none\n.two") == "line\none\n\\&.two"


def test_help_blocks_become_example_blocks() -> None:
    roff = manpage.help_blocks(agent_main)
    assert ".nf" in roff and ".fi" in roff
    # the docstring's continuation backslash survives as \e, hyphens as \-
    assert "\\e\n" in roff and r"\-\-endpoints 10.0.0.1:2379" in roff


# -- (c) groff renders every page without a warning ---------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_groff_renders_without_warnings(name: str) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt package groff-base; scripts/setup installs it)")
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(MAN / name)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"groff warns about man/{name}:\n{result.stderr}"
    assert len(result.stdout.splitlines()) > 20


# -- (d) every setting is documented ------------------------------------------------


def test_every_config_field_has_a_meaning() -> None:
    names = {f.name for f in fields(Config)}
    missing = sorted(n for n in names if not config.MEANINGS.get(n))
    assert not missing, (f"Config field(s) {missing} have no meaning: declare them with "
                         "setting(..., meaning=...) in gridtool/config.py, then run "
                         "scripts/gen-man")
    assert set(config.MEANINGS) == names


def test_conf_page_mentions_every_config_field() -> None:
    from gridtool.config import _SECTIONS

    text = plain(page("gridtool.conf.5"))
    for f in fields(Config):
        assert f".TP\n{f.name}\n" in text, f"man/gridtool.conf.5 lacks {f.name}: {REGENERATE}"
    for name, section in _SECTIONS.items():
        block = text.split(f'.SS "[{section}]"')[1].split(".SS")[0]
        assert mentions(block, name), f"{name} is not under [{section}] in gridtool.conf.5"
        assert mentions(text, f"GRIDTOOL_{name.upper()}"), name


def test_conf_example_is_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.conf"
    path.write_text(manpage.EXAMPLE_CONF)
    cfg = load(str(path), env={"GRIDTOOL_PASSWORD": "secret"})
    assert cfg.host == "hv1" and cfg.source == str(path)


def test_a_field_without_meaning_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(config.MEANINGS, "ttl")
    with pytest.raises(manpage.MissingMeaning, match="ttl"):
        manpage.render_conf()


def test_gen_man_writes_then_checks(tmp_path: Path) -> None:
    assert manpage.main(["--check", str(tmp_path)]) == 1
    assert manpage.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PAGES)
    assert manpage.main(["--check", str(tmp_path)]) == 0


# -- (e) the generator is a build tool; exit codes come from the error classes ---------


def test_generator_is_not_installed() -> None:
    from setuptools import find_packages

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    found = find_packages(str(ROOT), include=include)
    assert "gridtool" in found and "agents" in found
    assert not [p for p in found if p.startswith("tools")]
    assert not (ROOT / "gridtool" / "manpage.py").exists()


def test_exit_codes_are_the_error_classes() -> None:
    from gridtool import errors

    coded = [c for c in vars(errors).values() if isinstance(c, type)
             and issubclass(c, errors.GridtoolError) and "exit_code" in vars(c)]
    assert all("meaning" in vars(c) for c in coded), "each coded class says what it means"
    for cls in coded:
        assert cls.meaning in errors.EXIT_CODES[cls.exit_code], cls
    assert set(errors.EXIT_CODES) == {0, 130} | {c.exit_code for c in coded}


def test_readme_exit_code_table_matches_the_error_classes() -> None:
    from gridtool.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", readme, flags=re.M))
    assert {int(c) for c in rows} == set(EXIT_CODES), "README's exit-code table"
    for code, meaning in EXIT_CODES.items():
        assert rows[str(code)].startswith(meaning), (code, rows[str(code)])


def test_every_json_option_is_the_shared_one() -> None:
    """``--json`` comes from ``output.json_option`` everywhere: one name, one help."""
    options = [(path, param) for path, command in commands(cli, "gridtool")
               for param in command.params if "--json" in getattr(param, "opts", ())]
    assert len(options) >= 17
    for path, param in options:
        assert (param.name, param.is_flag, param.help) == (
            "as_json", True, "One JSON document on stdout."), path
    sources = "".join(p.read_text() for p in (ROOT / "gridtool" / "cli").rglob("*.py"))
    assert sources.count('"--json"') == 1, "declare --json with @json_option"


# -- (f) what the pages say against what the programs do ------------------------------

BIN = Path(sys.executable).parent


def test_exit_status_lists_exactly_the_codes_of_the_code() -> None:
    """gridtool(1): every status of the error table, nothing else; gridtool-agent(8): its
    stop signals' 0, the internal error and the start-up usage/config errors."""
    from agents.main import STOP_SIGNALS
    from gridtool.errors import EXIT_CODES, GridtoolError, UsageError
    from gridtool.supervise import EXIT_THREAD_DIED, THREAD_DIED_MEANING

    cli_codes = listed(section_of(plain(page("gridtool.1")), "EXIT STATUS"))
    assert cli_codes == {str(code): meaning[:1].upper() + meaning[1:] + "."
                         for code, meaning in EXIT_CODES.items()}
    agent_codes = listed(section_of(plain(page("gridtool-agent.8")), "EXIT STATUS"))
    assert agent_codes == {
        "0": "Stopped by " + " or ".join(s.name for s in STOP_SIGNALS) + ".",
        "1": GridtoolError.meaning[:1].upper() + GridtoolError.meaning[1:] + ".",
        "2": EXIT_CODES[UsageError.exit_code][:1].upper()
        + EXIT_CODES[UsageError.exit_code][1:] + ".",
        str(EXIT_THREAD_DIED): THREAD_DIED_MEANING.replace("`", "")}


class _Interrupted(io.StringIO):
    """Standard input on which the user presses Ctrl-C."""

    def readline(self, *_args: object) -> str:
        raise KeyboardInterrupt


def _confirm() -> None:
    click.confirm("Really?", abort=True)


def _raise(exc: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise exc

    return action


def _ends(name: str, action: Callable[[], None], stdin: io.StringIO,
          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
          ) -> tuple[int, str]:
    """(exit status, stderr) of ``gridtool NAME`` where the command runs ``action``."""
    from gridtool.cli.main import main

    command = click.command(name)(lambda: action())
    monkeypatch.setitem(cli.commands, name, command)
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.delenv("GRIDTOOL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ended:
        main([name])
    status = ended.value.code
    assert isinstance(status, int)
    return status, capsys.readouterr().err


def _every_error_class() -> list[type[Exception]]:
    from gridtool import errors

    return [c for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, errors.GridtoolError)]


@pytest.mark.parametrize("action, stdin, status, line", [
    (_confirm, "n\n", 1, "gridtool: aborted"),
    (_confirm, "", 1, "gridtool: aborted"),  # no answer: stdin closed
    (_confirm, _Interrupted(), 130, "gridtool: interrupted"),  # Ctrl-C at the prompt
    (_raise(KeyboardInterrupt()), "", 130, "gridtool: interrupted"),
    (_raise(RuntimeError("bug")), "", 1, "gridtool: internal error: RuntimeError: bug"),
    (_raise(click.BadParameter("no")), "", 2, "gridtool: Invalid value: no"),
    *[(_raise(cls("what went wrong")), "", cls.exit_code, "gridtool: what went wrong")
      for cls in _every_error_class()],
], ids=["declined", "no-answer", "ctrl-c-at-prompt", "ctrl-c", "internal", "usage",
        *[cls.__name__ for cls in _every_error_class()]])
def test_every_way_the_cli_ends_is_a_documented_status(
        action: Callable[[], None], stdin: str | io.StringIO, status: int, line: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from gridtool.errors import EXIT_CODES

    got, err = _ends("boom", action, io.StringIO(stdin) if isinstance(stdin, str) else stdin,
                     monkeypatch, capsys)
    last = err.strip().splitlines()[-1].strip()
    assert got == status and last.startswith(line), (got, last)
    assert got in EXIT_CODES


def test_ctrl_c_ends_a_waiting_command_with_130(tmp_path: Path) -> None:
    """A real SIGINT to ``gridtool`` while it waits for an etcd that accepted the
    connection and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(30)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [str(BIN / "gridtool"), "--endpoints", f"127.0.0.1:{port}", "--timeout", "60",
             "host", "list"], stderr=subprocess.PIPE, text=True,
            env={**os.environ, "GRIDTOOL_LAB_DIR": str(tmp_path), "GRIDTOOL_CONFIG": ""})
        try:
            connection, _ = silent.accept()  # it is waiting for the registry now
            with connection:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err.strip().splitlines()[-1]) == (130, "gridtool: interrupted")


def _caught_signals(pid: int) -> set[signal.Signals]:
    """The signals process ``pid`` has handlers for (``SigCgt`` in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, flags=re.M).group(1), 16)  # type: ignore[union-attr]
    return {signal.Signals(n) for n in range(1, 65) if mask >> (n - 1) & 1
            and n in signal.Signals._value2member_map_}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real ``gridtool-agent`` on libvirt's in-process test driver whose etcd refuses
    connections (it rides that out), running its main loop; and its log file."""
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "gridtool-agent"), "--host", "hv1", "--libvirt-uri", "test:///default",
             "--endpoints", "127.0.0.1:1", "--ttl", "3"], stderr=out, text=True,
            env={**os.environ, "GRIDTOOL_LAB_DIR": str(tmp_path), "GRIDTOOL_CONFIG": ""})
    try:
        wait_until(lambda: "event=libvirt_connected" in log.read_text() or proc.poll(),
                   timeout=30, what="the agent's main loop")
        assert proc.poll() is None, log.read_text()
        yield proc, log
    finally:
        proc.kill()
        proc.wait()


def test_the_agent_handles_only_its_stop_signals(agent) -> None:  # type: ignore[no-untyped-def]
    """SIGNALS: "the agent handles only SIGTERM and SIGINT" (SIGHUP has no handler)."""
    from agents.main import STOP_SIGNALS

    proc, _ = agent
    # and faulthandler's fatal signals: it prints the Python stacks, then the process
    # dies of the signal as it would without it
    fatal = {signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGBUS, signal.SIGILL}
    assert _caught_signals(proc.pid) == set(STOP_SIGNALS) | fatal
    signals = listed(section_of(plain(page("gridtool-agent.8")), "SIGNALS"))
    assert next(iter(signals)) == ", ".join(s.name for s in STOP_SIGNALS)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_does_what_the_page_says(agent, signum: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    """A stop signal: a clean stop, exit 0 (the lease itself: tests/integration/
    test_agent.py); any other: the agent ends at once, without its clean stop."""
    from agents.main import STOP_SIGNALS

    proc, log = agent
    proc.send_signal(signum)
    status = proc.wait(30)
    if signum in STOP_SIGNALS:
        assert status == 0 and "event=agent_stop " in log.read_text()
    else:
        assert status == -signum and "event=agent_stop" not in log.read_text()
    assert signal.Signals(signum).name in section_of(plain(page("gridtool-agent.8")), "SIGNALS")


def test_files_are_the_paths_the_code_uses() -> None:
    """FILES of each page: the code's own default paths, and no other."""
    from gridtool.auth.credfiles import DEFAULT_DIR
    from gridtool.config import AGENT_CONFIG, SYSTEM_CONFIG
    from gridtool.lab.state import DEFAULT_LAB_DIR, state_path

    images = str(next(f.default for f in fields(Config) if f.name == "images_dir"))
    expected = {
        "gridtool.1": {str(SYSTEM_CONFIG), str(AGENT_CONFIG), str(DEFAULT_DIR), images,
                       str(DEFAULT_LAB_DIR), str(state_path(DEFAULT_LAB_DIR))},
        "gridtool-agent.8": {str(AGENT_CONFIG), images},
        "gridtool.conf.5": {str(SYSTEM_CONFIG), str(AGENT_CONFIG)},
    }
    for name, paths in expected.items():
        assert set(listed(section_of(plain(page(name)), "FILES"))) == paths, name
