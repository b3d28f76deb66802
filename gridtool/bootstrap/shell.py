"""Host bootstrap over SSH (paramiko): runs a :mod:`gridtool.bootstrap.rules` on a host.

The host's key is checked against ``known_hosts`` (paramiko, RejectPolicy semantics);
``accept_new`` trusts an unknown key once and saves it (a *changed* key is always
refused). Every SSH failure becomes one :class:`~gridtool.errors.GridtoolError` line:
authentication and host-key problems exit 5 (``AuthError``), an unreachable host or a
failing step exits 8 (``OperationFailed``), a step that hangs exits 9 (``Timeout``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from gridtool.bootstrap.rules import (
    PROBE,
    Action,
    HostFacts,
    Layout,
    SshTarget,
    Step,
    apply_script,
    check_wheelhouse,
    decide,
    hook_shim,
    parse_facts,
)
from gridtool.config import Config
from gridtool.errors import AuthError, OperationFailed, Timeout, UsageError

#: How long one remote command may run (a pip install on a slow host included).
COMMAND_TIMEOUT = 600.0
UNIT_TEMPLATE = "scripts/systemd/gridtool-agent.service"
#: Where the wheel carries the unit template (setup.cfg ``data_files``), so ``host add
#: --wheel/--wheelhouse`` needs no source tree.
WHEEL_UNIT = ".data/data/share/gridtool/systemd/gridtool-agent.service"
#: What goes into the wheel (copied to a scratch tree so the build never writes here).
WHEEL_SOURCES = ("gridtool", "agents", "man", UNIT_TEMPLATE, "setup.cfg", "pyproject.toml",
                 "README.md", "MANIFEST.in")


class HostKeyError(AuthError):
    """The host's SSH key is unknown (and not accepted) or differs from known_hosts."""


class SshAuthFailed(AuthError):
    """The SSH server refused our key or password."""


class HostUnreachable(OperationFailed):
    """No SSH connection could be made."""


# --------------------------------------------------------------------------- local side


def project_root() -> Path:
    """The gridtool source tree this code runs from (only building a wheel needs it)."""
    root = Path(__file__).resolve().parents[2]  # gridtool/bootstrap/shell.py
    if not (root / "setup.cfg").exists() or not (root / UNIT_TEMPLATE).exists():
        raise UsageError(f"host add builds the wheel from the gridtool source tree, and there "
                         f"is none (no setup.cfg or {UNIT_TEMPLATE} under {root}): give "
                         "--wheelhouse DIR (scripts/build-wheelhouse), --wheel FILE or --deb")
    return root


def _source_files(root: Path) -> Iterator[Path]:
    for name in WHEEL_SOURCES:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and "__pycache__" not in p.parts)


def source_digest(root: Path) -> str:
    """A digest of everything that goes into the wheel: the cache key."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "gridtool", "wheels")


def build_wheel(root: Path, cache_dir: Path) -> Path:
    """The project's wheel (``pip wheel --no-deps``), built once per source digest."""
    target = cache_dir / source_digest(root)
    built = sorted(target.glob("gridtool-*.whl"))
    if built:
        return built[-1]
    with tempfile.TemporaryDirectory(prefix="gridtool-wheel-") as tmp:
        src = Path(tmp, "src")
        for name in WHEEL_SOURCES:
            path = root / name
            if path.is_dir():
                shutil.copytree(path, src / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif path.is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / name)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                               "--disable-pip-version-check", "-w", str(Path(tmp, "out")),
                               str(src)], capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp, "out").glob("gridtool-*.whl"))
        if done.returncode != 0 or not wheels:
            raise OperationFailed(f"building the gridtool wheel failed: {_last_line(done.stderr)}")
        target.mkdir(parents=True, exist_ok=True)
        final = target / wheels[0].name
        os.replace(shutil.copy2(wheels[0], target / f".{wheels[0].name}.tmp"), final)
        return final


def wheel_files(wheel: bytes, name: str) -> tuple[str, bool]:
    """The agent unit's template carried by a gridtool wheel, and whether the wheel has
    the libvirt fence hook (``agents/hook.py``); UsageError for a wheel without the unit."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
            members = archive.namelist()
            units = [m for m in members if m.endswith(WHEEL_UNIT)]
            if not units:
                raise UsageError(f"wheel {name} carries no gridtool-agent.service (an older "
                                 "build?): rebuild it with scripts/build-wheelhouse")
            return archive.read(units[0]).decode(), "agents/hook.py" in members
    except zipfile.BadZipFile:
        raise UsageError(f"wheel {name}: not a wheel (zip) file") from None


def hook_script(has_hook: bool, layout: Layout, shared_patterns: tuple[str, ...]) -> str | None:
    """The libvirt fence hook to install (``agents/hook.py`` run from the agent's venv),
    or None for a gridtool without one."""
    return hook_shim(layout, "agents.hook", shared_patterns) if has_hook else None


def read_wheelhouse(directory: Path) -> tuple[Path, list[Path]]:
    """A wheelhouse's gridtool wheel and its other files (dependency wheels and
    constraints.txt); UsageError unless it is one (:func:`rules.check_wheelhouse`)."""
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file())
        gridtool = check_wheelhouse([p.name for p in files])
    except (OSError, ValueError) as exc:
        raise UsageError(f"--wheelhouse {directory}: {exc}") from None
    return directory / gridtool, [p for p in files if p.name != gridtool]


def host_user(cfg: Config, host: str) -> str:
    """The etcd user name of ``host``'s agent."""
    try:
        from gridtool.auth.rules import host_user as scoped
    except ImportError:
        return f"host-{host}"
    return scoped(host, cfg.prefix)


def issue_credentials(cfg: Config, host: str) -> tuple[str, str] | None:
    """The seam to per-host etcd credentials (``gridtool/auth/shell.py``): None while the
    registry has no authentication (``cfg.user`` unset) or that module is absent.

    The host's password file in the credentials directory is reused when it exists
    (so a second ``host add`` changes nothing); else ``security.issue_host_credentials``
    creates the host's etcd user and role and writes one. To rotate: ``gridtool host
    credentials HOST``, then ``host add`` again.
    """
    if not cfg.user:
        return None
    try:
        from gridtool.auth import credfiles
        from gridtool.auth import shell as security
    except ImportError:
        return None
    directory = security.credentials_dir(cfg, None)
    user = host_user(cfg, host)
    password = credfiles.read_password(credfiles.password_path(directory, user))
    if password is None:
        issued = security.issue_host_credentials(cfg, directory, host)
        user, password = issued.user, credfiles.read_password(Path(issued.password_file))
    return (user, password) if password else None


# --------------------------------------------------------------------------- SSH side


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key, remember it for saving (``--accept-new-host-key``)."""

    def __init__(self) -> None:
        self.line = ""  # the known_hosts line to append
        self.added = ""  # what to tell the operator

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        self.line = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line() or ""
        self.added = f"{hostname} {key.get_name()} {key.fingerprint}"


class _Reject(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostKeyError(f"host key of {hostname} ({key.get_name()}) is not in known_hosts: "
                           "check it, then add it (ssh-keyscan) or give --accept-new-host-key")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@dataclass
class Remote:
    """An SSH connection to a host: run commands (as root, via sudo when needed) and
    stage files in a private temporary directory."""

    client: paramiko.SSHClient
    target: SshTarget
    stage: str = ""
    new_host_key: str = ""  # set when --accept-new-host-key trusted a new key

    @classmethod
    def connect(cls, target: SshTarget, key_file: str | None, known_hosts: Path,
                accept_new: bool, timeout: float) -> Remote:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # our one line says it
        client = paramiko.SSHClient()
        if known_hosts.exists():
            try:
                client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise UsageError(f"known_hosts {known_hosts}: {exc}") from None
        policy = _TrustOnFirstUse() if accept_new else _Reject()
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(target.address, target.port, username=target.user,
                           key_filename=key_file, look_for_keys=key_file is None,
                           allow_agent=key_file is None, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
        except BaseException as exc:
            client.close()
            raise _ssh_error(exc, target, key_file) from None
        remote = cls(client, target)
        if isinstance(policy, _TrustOnFirstUse) and policy.line:
            known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with known_hosts.open("a") as fh:  # append: the rest of the file stays as it is
                fh.write(policy.line)
            remote.new_host_key = policy.added
        return remote

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT,
            stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run ``command`` with ``sh`` (as root), ``$GT_STAGE`` set; (status, out, err)."""
        script = f"GT_STAGE={shlex.quote(self.stage)}; export GT_STAGE; {command}"
        line = f"sh -c {shlex.quote(script)}"
        if self.target.user != "root":
            line = f"sudo -n {line}"
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(line, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read().decode(errors="replace")
            err = chan_err.read().decode(errors="replace")
            return chan_out.channel.recv_exit_status(), out, err
        except TimeoutError:
            raise Timeout(f"{self.target}: a command gave no answer within "
                          f"{timeout:.0f} s") from None
        except (paramiko.SSHException, OSError) as exc:
            raise HostUnreachable(f"{self.target}: connection lost ({exc})") from None

    def facts(self) -> HostFacts:
        """Probe the host, and make the private staging directory (one round trip)."""
        status, out, err = self.run(
            f"umask 077 && echo stage=$(mktemp -d /tmp/gridtool-stage.XXXXXX) && {PROBE}")
        stage = [line[6:] for line in out.splitlines() if line.startswith("stage=/")]
        if status != 0 or not stage:
            raise OperationFailed(f"{self.target}: probing the host failed: {_last_line(err)}")
        self.stage = stage[0]
        return parse_facts(out)

    def upload(self, name: str, data: bytes) -> None:
        """Put ``data`` into ``$GT_STAGE/name`` (through the command's stdin: no SFTP)."""
        if not self.stage:
            raise OperationFailed(f"{self.target}: no staging directory (probe first)")
        status, _, err = self.run(f"umask 077 && cat >\"$GT_STAGE\"/{shlex.quote(name)}",
                                  stdin=data)
        if status != 0:
            raise OperationFailed(f"{self.target}: copying {name} failed: {_last_line(err)}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.stage:
                self.run('rm -rf "$GT_STAGE"', timeout=30)
        self.client.close()


def _ssh_error(exc: BaseException, target: SshTarget, key_file: str | None) -> BaseException:
    """The one-line error for a failed connect (or ``exc`` itself when not SSH's)."""
    if isinstance(exc, HostKeyError | KeyboardInterrupt):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"host key of {target.address} has CHANGED (got {exc.key.get_name()} "
            f"{exc.key.get_base64()[:16]}..., known_hosts has another): possible "
            "man-in-the-middle; if the host was reinstalled, remove the old key with "
            f"'ssh-keygen -R {target.address}'")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return UsageError(f"key {key_file} is encrypted: load it into ssh-agent and omit --key")
    if isinstance(exc, paramiko.AuthenticationException):
        used = f"key {key_file}" if key_file else "the keys in ~/.ssh and ssh-agent"
        return SshAuthFailed(f"ssh authentication failed for {target} with {used}")
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(f"cannot reach {target}: unknown address {target.address!r}")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        reason = next(iter(exc.errors.values()), exc)
        text = getattr(reason, "strerror", None) or str(reason)
        return HostUnreachable(f"cannot reach {target}: {text}")
    if isinstance(exc, TimeoutError):
        return HostUnreachable(f"cannot reach {target}: no answer (timed out)")
    if isinstance(exc, paramiko.SSHException | OSError):
        return HostUnreachable(f"ssh to {target} failed: {exc}")
    if isinstance(exc, ValueError | TypeError):  # e.g. a file that is not a private key
        return UsageError(f"key {key_file}: not a usable private key ({exc})")
    return exc


# --------------------------------------------------------------------------- running a plan


@dataclass(frozen=True)
class StepResult:
    step: Step
    action: Action  # OK (already in place), APPLY (changed), NOTE (skipped)
    seconds: float


def run_steps(remote: Remote, steps: Sequence[Step],
              on_start: Callable[[Step], None] = lambda _s: None,
              on_done: Callable[[StepResult], None] = lambda _r: None) -> list[StepResult]:
    """Check, apply when needed, check again; stop at the first step that fails."""
    results: list[StepResult] = []
    changed = False
    for step in steps:
        on_start(step)
        began = time.monotonic()
        passed, err = None, ""
        if step.check is not None and not (step.after_change and changed):
            status, _, err = remote.run(step.check)
            passed = status == 0
        action = decide(step, passed, changed)
        if action is Action.FAIL:
            raise OperationFailed(f"{remote.target}: {step.title}: failed: {_last_line(err)}")
        if action is Action.APPLY:
            for upload in step.uploads:
                remote.upload(upload.name, upload.data)
            status, out, err = remote.run(apply_script(step))
            if status != 0:
                why = "its check still fails after it" if status == 102 else \
                    _last_line(err or out)
                raise OperationFailed(f"{remote.target}: {step.title}: failed: {why}")
            changed = True
        result = StepResult(step, action, time.monotonic() - began)
        results.append(result)
        on_done(result)
    return results


def wait_registered(present: Callable[[], Any], deadline: float,
                    interval: float = 0.2) -> bool:
    """Poll ``present()`` (the host's registry key) until true or ``deadline``."""
    while True:
        if present():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def agent_log_tail(remote: Remote, layout: Layout) -> str:
    """The agent log's last line (for a host that never registered)."""
    _, out, _ = remote.run(f"tail -n 20 {shlex.quote(layout.log_file)} 2>/dev/null")
    return _last_line(out)
