"""``gridtool completion SHELL`` as a user installs it: the script click generates for
the installed ``gridtool``, and completions that name the real commands. No etcd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin, where the `gridtool` script lives
GROUPS = ("host", "guest", "fence", "manager", "lab", "metrics", "completion", "template")


def gridtool(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "gridtool"), *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": f"{BIN}:/usr/bin:/bin",
                                           "GRIDTOOL_LAB_DIR": "/nonexistent", **env})


def complete(shell: str, words: str, cword: int) -> list[str]:
    """Ask the installed gridtool for completions through click's protocol (what the
    generated script does on <TAB>), with no registry configured. fish passes the
    incomplete word itself as COMP_CWORD, bash and zsh its index."""
    current = words.split(" ")[cword] if shell == "fish" else str(cword)
    done = gridtool(_GRIDTOOL_COMPLETE=f"{shell}_complete", COMP_WORDS=words,
                    COMP_CWORD=current, GRIDTOOL_CONFIG="/nonexistent/gridtool.conf")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script_click_would(shell: str) -> None:
    done = gridtool("completion", shell)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    script = done.stdout
    assert "_GRIDTOOL_COMPLETE" in script and "gridtool" in script
    assert f"{shell}_complete" in script  # the protocol it calls back with
    # The same script as the documented `_GRIDTOOL_COMPLETE=SHELL_source gridtool`.
    assert gridtool(_GRIDTOOL_COMPLETE=f"{shell}_source").stdout.rstrip() == script.rstrip()
    # And what it calls back yields the commands (zsh and fish: value lines).
    words = " ".join(complete(shell, "gridtool ", 1))
    assert all(group in words for group in GROUPS), words
    fence = " ".join(complete(shell, "gridtool fence ", 2))
    assert all(c in fence for c in ("list", "release", "clear-violations")), fence


def test_bash_completion_script_completes_commands_in_bash(tmp_path: Path) -> None:
    """Source the script in a real bash and press <TAB> through its function."""
    script = tmp_path / "gridtool.bash"
    script.write_text(gridtool("completion", "bash").stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    def tab(*words: str) -> list[str]:  # bash calls the function with the command as $1
        line = " ".join(words)
        done = subprocess.run(
            ["bash", "-c", f'source {script}; COMP_WORDS=({line}); '
             f'COMP_CWORD={len(words) - 1}; _gridtool_completion gridtool; '
             'printf "%s\\n" "${COMPREPLY[@]}"'],
            capture_output=True, text=True, timeout=60,
            env={"PATH": f"{BIN}:/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent",
                 "GRIDTOOL_CONFIG": "/nonexistent/gridtool.conf"})
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert set(tab("gridtool", "")) >= set(GROUPS)
    assert tab("gridtool", "fen") == ["fence"]
    assert set(tab("gridtool", "host", "con")) == {"confirm-dead"}
    assert set(tab("gridtool", "guest", "set", "db", "--ha", "")) == {"on", "off"}
    assert set(tab("gridtool", "completion", "")) == {"bash", "zsh", "fish"}


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    done = gridtool("completion", "tcsh")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("gridtool: ")
    assert "tcsh" in done.stderr

