"""``gridtool host add|remove``: install a host's agent over SSH, or take it out.

The steps are data (:mod:`gridtool.bootstrap.rules`); :mod:`gridtool.bootstrap.shell` runs them
over paramiko.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import console, json_option, outcome, warn
from gridtool.cli.host.settings import (
    apply_settings,
    check_fence_options,
    setting_changes,
    setting_options,
)
from gridtool.errors import Conflict, Timeout, UsageError

if TYPE_CHECKING:
    from gridtool.bootstrap.rules import AddSpec, Layout, SshTarget, Step, TlsFiles
    from gridtool.bootstrap.shell import Remote, StepResult
    from gridtool.config import Config


def _ssh_options(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every SSH-using command shares."""
    options = [
        click.option("--ssh", "ssh", metavar="USER@ADDR[:PORT]", required=required,
                     help="Where to log in (as root, or a user with password-less sudo)."),
        click.option("--key", "key_file", metavar="FILE",
                     type=click.Path(exists=True, dir_okay=False),
                     help="SSH private key (default: ~/.ssh keys and ssh-agent)."),
        click.option("--known-hosts", metavar="FILE", type=click.Path(dir_okay=False),
                     default="~/.ssh/known_hosts", show_default=True,
                     help="known_hosts file the host key is checked against."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Trust an unknown host key once and save it (a changed key is "
                          "always refused)."),
        click.option("--prefix-dir", metavar="DIR", default="/", show_default=True,
                     help="Install under DIR instead of / (tests, chroots); not systemd then."),
        click.option("--venv", "venv_path", metavar="DIR", default="/opt/gridtool/venv",
                     show_default=True, help="The agent's venv on the host (under DIR)."),
        click.option("--timeout", "wait", type=float, default=120.0, show_default=True,
                     metavar="SECONDS",
                     help="Give up connecting, or waiting for the registry, after this long."),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


class _Progress:
    """One line per finished step on stderr; a spinner for the running one on a terminal."""

    WORDS = {"ok": "[green]ok[/green]     ", "apply": "[cyan]changed[/cyan]",
             "note": "[yellow]skipped[/yellow]"}

    def __init__(self) -> None:
        self.console = console(stderr=True)
        self.status: Any = None

    def start(self, step: Step) -> None:
        if self.console.is_terminal:
            self.status = self.console.status(step.title)
            self.status.start()

    def done(self, result: StepResult) -> None:
        from rich.markup import escape

        if self.status is not None:
            self.status.stop()
        text = f"  {self.WORDS[result.action.value]} {escape(result.step.title)}"
        self.console.print(f"{text}  [dim]{result.seconds:.1f}s[/dim]", highlight=False)
        if result.step.note:
            self.console.print(f"           [dim]{escape(result.step.note)}[/dim]",
                               highlight=False)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False)


def _step_docs(results: list[StepResult]) -> list[dict[str, Any]]:
    """Bootstrap steps as ``--json`` shows them."""
    return [{"step": r.step.name, "action": r.action.value, "seconds": round(r.seconds, 1)}
            for r in results]


def _validated(name: str) -> str:
    from gridtool.registry.keys import validate_name

    try:
        return validate_name("host", name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _target(ssh: str) -> SshTarget:
    from gridtool.bootstrap.rules import parse_ssh_target

    try:
        return parse_ssh_target(ssh)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _connect(target: SshTarget, key_file: str | None, known_hosts: str, accept_new: bool,
             wait: float, progress: _Progress) -> Remote:
    from gridtool.bootstrap.shell import Remote

    remote = Remote.connect(target, key_file, Path(known_hosts).expanduser(), accept_new,
                            min(wait, 30.0))
    if remote.new_host_key:
        warn(f"trusted a new host key and saved it to {known_hosts}: {remote.new_host_key}")
    progress.line(f"[bold]{target}[/bold] connected")
    return remote


def _layout(prefix_dir: str, venv_path: str) -> Layout:
    from gridtool.bootstrap.rules import Layout

    if not prefix_dir.startswith("/") or not venv_path.startswith("/"):
        raise UsageError("--prefix-dir and --venv must be absolute paths")
    return Layout(prefix_dir, venv_path)


def _read_tls(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{setting} {path}: {exc.strerror}") from None


def _tls_files(cfg: Config, name: str) -> TlsFiles | None:
    """The TLS files to copy to host ``name``: the CLI's CA certificate and, with
    client-certificate auth (``cert``/``key`` set), the host's own certificate from the
    CA's directory (the admin's key never goes to a host)."""
    from gridtool.bootstrap.rules import TlsFiles
    from gridtool.bootstrap.shell import host_user

    if not cfg.ca_cert:
        return None
    ca = Path(cfg.ca_cert)
    if not (cfg.cert and cfg.key):
        return TlsFiles(_read_tls(ca, "ca_cert"))
    stem = host_user(cfg, name)
    cert, key = ca.with_name(f"{stem}.crt"), ca.with_name(f"{stem}.key")
    if not (cert.is_file() and key.is_file()):
        raise UsageError(f"client-certificate auth: no {cert.name}/{key.name} for {name} in "
                         f"{ca.parent}: issue them with 'gridtool registry certs --dir "
                         f"{ca.parent} --hosts {name}' (repeat its --ip/--dns: it rewrites "
                         "server.crt)")
    return TlsFiles(_read_tls(ca, "ca_cert"), stem, _read_tls(cert, "cert"),
                    _read_tls(key, "key"))


def _agent_config(app: AppContext, name: str, libvirt_uri: str, endpoints: str | None,
                  user: str | None, password_file: str | None,
                  hook_socket: str | None, tls: dict[str, Any]) -> str:
    """The agent's config file: the registry and storage rules this CLI uses, the
    host's credentials, the fence hook's socket, the TLS files as installed (``tls``)."""
    from gridtool.bootstrap.shell import host_user, issue_credentials
    from gridtool.config import Config, render

    cfg = app.config
    agent = Config(endpoints=cfg.endpoints, prefix=cfg.prefix, timeout=cfg.timeout,
                   ttl=cfg.ttl, resync_interval=cfg.resync_interval, host=name,
                   libvirt_uri=libvirt_uri, hook_socket=hook_socket,
                   shared_patterns=cfg.shared_patterns, shared_pools=cfg.shared_pools,
                   **tls)
    if endpoints:
        agent = replace(agent, endpoints=tuple(e.strip() for e in endpoints.split(",")
                                               if e.strip()))
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--password-file {password_file}: {exc.strerror}") from None
        if not password:
            raise UsageError(f"--password-file {password_file} is empty")
        agent = replace(agent, user=user or host_user(cfg, name), password=password)
    elif (issued := issue_credentials(cfg, name)) is not None:
        agent = replace(agent, user=issued[0], password=issued[1])
    elif user:
        raise UsageError("--user needs --password-file")
    return render(agent, include_secrets=True)


@click.command("add")
@click.argument("name")
@_ssh_options(required=True)
@click.option("--libvirt-uri", default="qemu:///system", show_default=True, metavar="URI",
              help="libvirt URI the agent watches on the host.")
@click.option("--endpoints", "agent_endpoints", metavar="HOST:PORT,...",
              help="etcd endpoints as the host reaches them (default: this CLI's).")
@click.option("--user", metavar="USER",
              help="The host's etcd user, with --password-file (default: host-NAME).")
@click.option("--password-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="The host's etcd password (default: issued when the registry has auth).")
@click.option("--wheel", "wheel_file", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="Install this gridtool wheel, its dependencies from the host's pip index "
                   "(default: build one from this source tree).")
@click.option("--wheelhouse", metavar="DIR", type=click.Path(exists=True, file_okay=False),
              help="Install offline from this wheelhouse (scripts/build-wheelhouse): its "
                   "gridtool wheel and dependency wheels, at its constraints.txt versions, "
                   "into the venv. Needs no source tree, no compiler and no index.")
@click.option("--python", "remote_python", default="python3", show_default=True,
              metavar="PATH", help="Python on the host that creates the venv.")
@click.option("--deb", "deb_files", metavar="FILE", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Install these Debian packages with apt instead of a wheel in a venv: "
                   "gridtool-common_*.deb and gridtool-agent_*.deb from scripts/build-deb "
                   "(give --deb twice). Needs no source tree.")
@click.option("--apt", "from_apt", is_flag=True,
              help="Install gridtool-agent with apt from the host's own apt sources (a site "
                   "repository carrying the scripts/build-deb packages).")
@setting_options
@json_option
@pass_app
def add_host(app: AppContext, name: str, ssh: str, key_file: str | None, known_hosts: str,
             accept_new_host_key: bool, prefix_dir: str, venv_path: str, wait: float,
             libvirt_uri: str, agent_endpoints: str | None, user: str | None,
             password_file: str | None, wheel_file: str | None, wheelhouse: str | None,
             remote_python: str, deb_files: tuple[str, ...], from_apt: bool,
             labels: tuple[str, ...], no_labels: bool, overflow: bool | None,
             manager: bool | None, watchdog: str | None, no_watchdog: bool,
             watchdog_timeout: float | None, fence_agent: str | None,
             fence_params: tuple[str, ...], as_json: bool) -> None:
    """Install and start a host's agent over SSH, then wait until the host registers.

    Steps (each checked first, so a second run repairs and never duplicates): check
    libvirt answers, copy the gridtool wheel (and wheelhouse) and install it in a venv
    (/opt/gridtool/venv), copy the
    registry's TLS files to /etc/gridtool/tls/ (when ca_cert is set: the CA, and for
    client-certificate auth the host's own host-NAME.crt/.key from the CA's directory;
    keys 0600), write /etc/gridtool/agent.conf (0600, with the host's etcd credentials
    and TLS paths), install the libvirt hook (when this gridtool has one) and
    gridtool-agent.service, enable and start it (no systemd on the host: start the agent
    directly with nohup). The host key must be in known_hosts unless
    --accept-new-host-key.

    Where the agent comes from (none of these needs a checkout of gridtool, except the
    default): --wheelhouse DIR (scripts/build-wheelhouse) installs its wheels offline
    at its constraints.txt versions; --deb FILE (twice) or --apt install the Debian
    packages with apt (the hook runs the package's fence hook, the package's unit is
    used); --wheel FILE installs that wheel with its dependencies from the host's pip
    index; by default a wheel is built from this source tree and installed that way.

    The host settings (--label, --overflow, --manager-candidate, --watchdog,
    --fence-agent, ...) go to the registry before the agent starts, as 'gridtool host
    set' puts them; settings not given are left as they are, so running 'host add'
    again never undoes a 'host set'.

    Each host needs: SSH as root or with password-less sudo; libvirt answering at
    --libvirt-uri (virsh, or python3 with the libvirt module); TCP to the etcd
    endpoints. With --wheelhouse: python3 and python3-venv of the version the wheelhouse
    was built with (Debian 12: 3.11), the libvirt library (libvirt0, there with libvirt);
    no compiler, no index. With --deb/--apt: Debian 12 on amd64 and apt reaching
    Debian's archive (or the dependencies already installed; --apt: and the site's
    repository); nothing is compiled. With --wheel or the default: python3-venv, and
    gcc, pkg-config, libvirt-dev, python3-dev and PyPI access, since pip builds
    libvirt-python there.

    \b
    Example:
      gridtool host add hv4 --ssh root@10.0.0.14 --wheelhouse /srv/gridtool-wheelhouse
      gridtool host add hv5 --ssh admin@hv5.example:2222 --key ~/.ssh/fleet \\
          --accept-new-host-key --password-file hv5.pw --wheelhouse wheelhouse/
      gridtool host add hv6 --ssh root@10.0.0.16 --deb gridtool-common_0.1.0-1_amd64.deb \\
          --deb gridtool-agent_0.1.0-1_all.deb
      gridtool host add hv7 --ssh root@10.0.0.17 --apt --libvirt-uri xen:///system
      gridtool host add hv8 --ssh root@10.0.0.18 --wheelhouse wheelhouse/ --overflow \\
          --label ssd --watchdog /dev/watchdog --manager-candidate
    """
    from gridtool.bootstrap import shell as bootstrap
    from gridtool.bootstrap.rules import plan_add

    _validated(name)
    target = _target(ssh)
    changes = setting_changes(labels, no_labels, overflow, manager, watchdog, no_watchdog,
                              watchdog_timeout)
    check_fence_options(fence_agent, fence_params)
    spec = _add_spec(app, name, libvirt_uri, agent_endpoints, user, password_file,
                     _layout(prefix_dir, venv_path),
                     _source(wheel_file, wheelhouse, deb_files, from_apt), remote_python)
    layout = spec.layout
    app.store.get(app.config.keys.host(name))  # the registry answers, before touching a host
    if changes or fence_agent:  # before the agent starts: it reads them at start
        apply_settings(app, name, changes, fence_agent, fence_params)
    progress = _Progress()
    remote = _connect(target, key_file, known_hosts, accept_new_host_key, wait, progress)
    began = time.monotonic()
    try:
        steps = plan_add(spec, remote.facts())
        results = bootstrap.run_steps(remote, steps, progress.start, progress.done)
        progress.line(f"  waiting for {name} in the registry ...")
        keys = app.config.keys
        if not bootstrap.wait_registered(lambda: app.store.get(keys.host(name)),
                                         time.monotonic() + wait):
            raise Timeout(f"{name} did not appear in the registry within {wait:.0f} s; "
                          f"agent log: {bootstrap.agent_log_tail(remote, layout)}")
    finally:
        progress.stop()
        remote.close()
    changed = sum(r.action.value == "apply" for r in results)
    seconds = time.monotonic() - began
    outcome(as_json, f"{name}: in the registry after {seconds:.1f} s ({changed} steps "
            f"changed, {len(results) - changed} already in place or skipped)",
            host=name, registered=True, seconds=round(seconds, 1), steps=_step_docs(results))


def _source(wheel_file: str | None, wheelhouse: str | None, deb_files: tuple[str, ...],
            from_apt: bool) -> tuple[str, Any]:
    """Where the agent comes from: ("deb", files), ("apt", None), ("wheelhouse", DIR),
    ("wheel", FILE) or ("build", None: a wheel built from this source tree)."""
    given = [(kind, value) for kind, value in (("deb", deb_files), ("apt", from_apt),
                                               ("wheelhouse", wheelhouse), ("wheel", wheel_file))
             if value]
    if len(given) > 1:
        raise UsageError(" and ".join(f"--{kind}" for kind, _ in given) + " exclude each other")
    return given[0] if given else ("build", None)


def _add_spec(app: AppContext, name: str, libvirt_uri: str, agent_endpoints: str | None,
              user: str | None, password_file: str | None, layout: Layout,
              source: tuple[str, Any], remote_python: str) -> AddSpec:
    """What ``host add`` installs: the Debian packages (given, or from the host's apt), or
    a wheel (from a wheelhouse, given, or built from this source tree) in a venv. Only
    building a wheel needs the source tree: the unit template and the hook come from the
    wheel."""
    from gridtool.bootstrap import shell as bootstrap
    from gridtool.bootstrap.rules import (
        DEFAULT_VENV,
        PACKAGE_LAYOUT,
        AddSpec,
        Deb,
        Upload,
        check_debs,
        render_unit,
        tls_settings,
    )

    kind, value = source
    debs: tuple[Deb, ...] = ()
    house: list[Path] = []
    if kind in ("deb", "apt"):
        if layout.root != "/" or layout.venv_path != DEFAULT_VENV:
            raise UsageError(f"--{kind} installs into / with apt: no --prefix-dir or --venv")
        if kind == "deb":
            try:
                check_debs([Path(f).name for f in value])
                debs = tuple(sorted((Deb(Path(f).name, Path(f).read_bytes()) for f in value),
                                    key=lambda d: d.package != "gridtool-common"))
            except (ValueError, OSError) as exc:
                raise UsageError(str(exc)) from None
        layout = PACKAGE_LAYOUT
        hook: str | None = None  # the package installs it in hooks/qemu.d/ itself
        unit: str | None = None
        wheel_name, wheel = "", b""
    else:
        if kind == "wheelhouse":
            path, house = bootstrap.read_wheelhouse(Path(value))
        elif kind == "wheel":
            path = Path(value)
        else:
            path = bootstrap.build_wheel(bootstrap.project_root(), bootstrap.default_cache_dir())
        wheel_name, wheel = path.name, path.read_bytes()
        template, has_hook = bootstrap.wheel_files(wheel, wheel_name)
        hook = bootstrap.hook_script(has_hook, layout, app.config.shared_patterns)
        unit = render_unit(template, layout)
    tls = _tls_files(app.config, name)
    conf = _agent_config(app, name, libvirt_uri, agent_endpoints, user, password_file,
                         layout.hook_socket if hook or kind in ("deb", "apt") else None,
                         tls_settings(layout, tls))
    return AddSpec(name, libvirt_uri, wheel_name, wheel, conf, unit, hook, layout,
                   remote_python, tls, debs,
                   tuple(Upload(p.name, p.read_bytes()) for p in house), kind == "apt")


def _check_guests(app: AppContext, name: str, force: bool, live: bool) -> list[str]:
    """Refuse (Conflict) while guests run on ``name``, unless ``force`` after a drain (a
    dead host cannot be drained: ``force`` alone); returns the guests left running."""
    from gridtool.registry import hostconf
    from gridtool.registry.model import ACTIVE_STATES

    guests, _ = app.registry.guests_of(name)
    active = sorted(g.name for g in guests.values() if g.state in ACTIVE_STATES)
    if active and not force:
        raise Conflict(f"{name} runs {len(active)} guests ({', '.join(active[:5])}): "
                       f"'gridtool host drain {name}' first, or --force after a drain")
    if active and live and not hostconf.read(app.store, app.config.keys, name).draining:
        raise Conflict(f"{name} runs {len(active)} guests and is not draining: "
                       f"--force needs 'gridtool host drain {name}' first")
    return active


def _forget(app: AppContext, name: str) -> None:
    """Delete the host's registry keys (fences are left: a pinned fence is released
    only by its host or 'host confirm-dead')."""
    keys = app.config.keys
    app.registry.forget_guests(name)  # with their guest index entries
    for prefix in (keys.intents(name), f"{keys.violations}{name}/"):
        app.store.delete_prefix(prefix)
    for key in (keys.host(name), keys.dead_host(name), keys.hostconf(name),
                keys.fence_agent(name), keys.host_fence(name),
                keys.machine(name)):  # the name no longer belongs to any machine
        app.store.delete(key)


def _remove_credentials(cfg: Config, name: str) -> None:
    """With registry authentication, delete the host's etcd user and role and its
    password file; without root's password file, say so and leave them."""
    from gridtool.auth.shell import credentials_dir, remove_host_credentials
    from gridtool.bootstrap.shell import host_user

    if not cfg.user:
        return
    directory = credentials_dir(cfg, None)
    removed = remove_host_credentials(cfg, directory, name)
    if removed is None:
        warn(f"no root password in {directory}: etcd user {host_user(cfg, name)} and its "
             "role are left in place")
    elif removed:
        click.echo(f"{name}: removed {', '.join(removed)}", err=True)


@click.command("remove")
@click.argument("name", shell_complete=HOSTS)
@click.option("--force", is_flag=True,
              help="Remove a draining host even though guests still run there.")
@_ssh_options(required=False)
@json_option
@pass_app
def remove_host(app: AppContext, name: str, force: bool, ssh: str | None,
                key_file: str | None, known_hosts: str, accept_new_host_key: bool,
                prefix_dir: str, venv_path: str, wait: float, as_json: bool) -> None:
    """Stop a host's agent, remove its unit, config and venv (or purge the Debian
    packages that 'host add --deb' installed), and forget it in the registry.

    Refused (exit 7) while guests run on the host, unless --force after 'gridtool host
    drain'; guests still running keep running (only the agent goes). Without --ssh only
    the registry keys of a host whose agent is gone are deleted. Its fences stay. With
    registry authentication, the host's etcd user, role and password file are deleted
    too (needs root's password file in the credentials directory).

    \b
    Example:
      gridtool host drain hv4
      gridtool host remove hv4 --ssh root@10.0.0.14
    """
    from gridtool.bootstrap import shell as bootstrap
    from gridtool.bootstrap.rules import plan_remove

    _validated(name)
    target = _target(ssh) if ssh is not None else None
    layout = _layout(prefix_dir, venv_path)
    live = app.store.get(app.config.keys.host(name)) is not None
    left = _check_guests(app, name, force, live)
    if live and ssh is None:
        raise Conflict(f"{name}'s agent is running (its lease is held): give --ssh "
                       "USER@ADDR to stop it")
    results: list[StepResult] = []
    if target is not None:
        progress = _Progress()
        remote = _connect(target, key_file, known_hosts, accept_new_host_key, wait, progress)
        try:
            steps = plan_remove(layout, remote.facts(), bootstrap.host_user(app.config, name))
            results = bootstrap.run_steps(remote, steps, progress.start, progress.done)
        finally:
            progress.stop()
            remote.close()
    _forget(app, name)
    _remove_credentials(app.config, name)
    if left:
        warn(f"{len(left)} guests still run on {name} unmanaged: {', '.join(left[:5])}")
    outcome(as_json, f"{name}: removed", host=name, removed=True, unmanaged_guests=left,
            steps=_step_docs(results))
