"""What ``gridtool host add`` and ``host remove`` do on a host, as data.

A bootstrap is an ordered list of :class:`Step`. Each step has a *check* (a shell
command that exits 0 when the step's result is already in place) and an *apply* (the
shell command that puts it in place). The runner (``gridtool/bootstrap/shell.py``) runs the
check, applies only when it fails (or when an earlier step changed something the step
depends on), then checks again. So a second run repairs what is missing or different
and never duplicates anything.

Files a step installs are uploaded first into a private staging directory on the host,
whose path the commands read from ``$GT_STAGE``. Every path lives under
:class:`Layout` ``root`` (``/`` in production; a temporary directory in the tests).
Pure: no I/O, no SSH; the shell decides nothing.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from dataclasses import dataclass, replace
from enum import Enum

from gridtool.config import AGENT_CONFIG, Config

DEFAULT_VENV = "/opt/gridtool/venv"
SERVICE = "gridtool-agent.service"
LIBVIRTD = "libvirtd.service"
#: The unit's ``RuntimeDirectory=gridtool``: the hook socket's directory.
RUNTIME_DIR = "/run/gridtool"
DEFAULT_IMAGES_DIR = Config.images_dir
#: The first lines of every hook script gridtool installs: how an old gridtool hook at
#: ``hooks/<driver>`` (before hooks went into ``<driver>.d/``) is told from a site's own.
HOOK_LINE = "# gridtool fence hook: installed by"
#: libvirt drivers whose hook directory (``/etc/libvirt/hooks/<driver>.d/``) gets the
#: fence hook. libvirt >= 6.5 runs every executable there, in name order after
#: ``hooks/<driver>`` itself, each with the same arguments and XML on stdin, and fails the
#: operation if any of them fails: a site's own ``hooks/qemu`` is kept and still runs.
HOOK_DRIVERS = ("qemu", "libxl")
#: The fence hook's file name in each ``<driver>.d/`` (the package's symlink too).
HOOK_NAME = "gridtool"
#: The fence hook the ``gridtool-agent`` Debian package installs (``scripts/build-deb``),
#: with a symlink to it as ``/etc/libvirt/hooks/<driver>.d/gridtool`` for each driver.
PACKAGED_HOOK = "/usr/libexec/gridtool/fence-hook"
#: The packages ``host add --deb`` installs, in apt's order.
DEB_PACKAGES = ("gridtool-common", "gridtool-agent")
#: The constraints file of a wheelhouse (``scripts/build-wheelhouse``).
CONSTRAINTS = "constraints.txt"
_DEB_NAME = re.compile(r"^([a-z0-9][a-z0-9+.-]+)_([0-9][A-Za-z0-9.+~-]*)_([a-z0-9]+)\.deb$")


def hook_driver(libvirt_uri: str) -> str:
    """The hook script libvirt runs for guests of ``libvirt_uri``: ``libxl`` for Xen
    (``xen:///system``, ``xen+ssh://...``), else ``qemu``."""
    scheme = libvirt_uri.split(":", 1)[0].split("+", 1)[0].lower()
    return "libxl" if scheme == "xen" else "qemu"


@dataclass(frozen=True)
class Layout:
    """Where things go on the host; every path is under ``root``."""

    root: str = "/"
    venv_path: str = DEFAULT_VENV

    def at(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.root, path.lstrip("/")))

    @property
    def venv(self) -> str:
        return self.at(self.venv_path)

    @property
    def wheels(self) -> str:
        return self.at("/opt/gridtool/wheels")

    @property
    def config(self) -> str:
        return self.at(str(AGENT_CONFIG))

    @property
    def unit(self) -> str:
        return self.at(f"/etc/systemd/system/{SERVICE}")

    @property
    def hook(self) -> str:
        return self.hook_for("qemu:///system")

    def hook_for(self, libvirt_uri: str) -> str:
        """The fence hook's path for this libvirt URI (``hooks/libxl.d/`` for Xen)."""
        return self.at(f"/etc/libvirt/hooks/{hook_driver(libvirt_uri)}.d/{HOOK_NAME}")

    @property
    def hooks(self) -> tuple[str, ...]:
        """Every path the fence hook is installed at (one per driver)."""
        return tuple(self.at(f"/etc/libvirt/hooks/{d}.d/{HOOK_NAME}") for d in HOOK_DRIVERS)

    @property
    def legacy_hooks(self) -> tuple[str, ...]:
        """Where older gridtool versions installed it (``hooks/<driver>``: removed only
        when it carries :data:`HOOK_LINE`, else it is the site's own)."""
        return tuple(self.at(f"/etc/libvirt/hooks/{d}") for d in HOOK_DRIVERS)

    @property
    def pid_file(self) -> str:
        return self.at("/run/gridtool/agent.pid")

    @property
    def hook_socket(self) -> str:
        """Where the agent answers the libvirt fence hook."""
        return self.at("/run/gridtool/hook.sock")

    @property
    def log_file(self) -> str:
        return self.at("/var/log/gridtool/agent.log")

    @property
    def agent(self) -> str:
        return f"{self.venv}/bin/gridtool-agent"

    @property
    def tls_dir(self) -> str:
        """The agent's copies of the registry's TLS files."""
        return self.at("/etc/gridtool/tls")


#: Where the Debian packages put the programs: ``/usr/bin/gridtool-agent``.
PACKAGE_LAYOUT = Layout(venv_path="/usr")


@dataclass(frozen=True)
class Deb:
    """A Debian package file for ``host add --deb`` (named ``PACKAGE_VERSION_ARCH.deb``)."""

    name: str
    data: bytes

    @property
    def package(self) -> str:
        return parse_deb_name(self.name)[0]

    @property
    def version(self) -> str:
        return parse_deb_name(self.name)[1]


def parse_deb_name(name: str) -> tuple[str, str]:
    """(package, version) of a ``PACKAGE_VERSION_ARCH.deb`` file name; ValueError else."""
    found = _DEB_NAME.match(name)
    if not found:
        raise ValueError(f"{name!r} is not named PACKAGE_VERSION_ARCH.deb")
    return found[1], found[2]


def check_debs(names: list[str]) -> None:
    """ValueError unless ``names`` are exactly one file of each of :data:`DEB_PACKAGES`."""
    packages = sorted(parse_deb_name(n)[0] for n in names)
    if packages != sorted(DEB_PACKAGES):
        raise ValueError(f"--deb needs one file of each of {', '.join(DEB_PACKAGES)} "
                         f"(got {', '.join(packages) or 'none'})")


def check_wheelhouse(names: list[str]) -> str:
    """The gridtool wheel among a wheelhouse's file ``names``; ValueError unless there is
    exactly one and a ``constraints.txt`` (what ``scripts/build-wheelhouse`` writes)."""
    wheels = sorted(n for n in names if n.startswith("gridtool-") and n.endswith(".whl"))
    if len(wheels) != 1 or CONSTRAINTS not in names:
        raise ValueError(f"a wheelhouse holds one gridtool-*.whl and {CONSTRAINTS} "
                         f"(got {len(wheels)} gridtool wheels"
                         f"{'' if CONSTRAINTS in names else ', no ' + CONSTRAINTS}): "
                         "build it with scripts/build-wheelhouse")
    return wheels[0]


@dataclass(frozen=True)
class HostFacts:
    """What the probe found on the host."""

    systemd: bool  # systemd is PID 1 (/run/systemd/system exists)


@dataclass(frozen=True)
class Upload:
    """A file to put into the staging directory (``$GT_STAGE/<name>``) before apply."""

    name: str
    data: bytes
    secret: bool = False  # never shown, logged or put on a command line


@dataclass(frozen=True)
class Step:
    """One idempotent step. ``check`` None: always apply. ``apply`` None: a check only
    (failing is an error). Both None: nothing to do, ``note`` says why."""

    name: str
    title: str
    check: str | None
    apply: str | None
    uploads: tuple[Upload, ...] = ()
    after_change: bool = False  # also apply when an earlier step changed something
    note: str = ""


@dataclass(frozen=True)
class TlsFiles:
    """The registry's TLS files for a host's agent: the CA certificate, and for etcd's
    client-certificate auth the host's own certificate and key (``<stem>.crt/.key``,
    stem = the host's etcd user, as ``gridtool registry certs`` names them)."""

    ca: bytes
    stem: str = ""
    cert: bytes | None = None
    key: bytes | None = None

    def files(self) -> list[tuple[str, str, bytes, str]]:
        """(config setting, file name, content, mode) of each file to install."""
        out = [("ca_cert", "ca.crt", self.ca, "644")]
        if self.cert is not None and self.key is not None:
            out += [("cert", f"{self.stem}.crt", self.cert, "644"),
                    ("key", f"{self.stem}.key", self.key, "600")]
        return out


def tls_settings(layout: Layout, tls: TlsFiles | None) -> dict[str, str]:
    """The agent config's ``ca_cert`` (and ``cert``/``key``): where :func:`plan_add`
    installs them."""
    if tls is None:
        return {}
    return {setting: f"{layout.tls_dir}/{name}" for setting, name, _, _ in tls.files()}


@dataclass(frozen=True)
class AddSpec:
    """Everything ``host add`` installs (contents already rendered)."""

    host: str
    libvirt_uri: str
    wheel_name: str
    wheel: bytes
    agent_conf: str  # holds the host's credentials: uploaded, never on a command line
    unit: str | None  # None: the Debian package's own unit (``debs``)
    hook: str | None = None  # None: this gridtool has no libvirt hook yet
    layout: Layout = Layout()
    python: str = "python3"
    tls: TlsFiles | None = None  # None: the registry is plaintext
    debs: tuple[Deb, ...] = ()  # installed with apt instead of the wheel in a venv
    #: the dependency wheels and constraints.txt of a wheelhouse (``host add
    #: --wheelhouse``): the venv is installed from them offline, never from an index
    wheelhouse: tuple[Upload, ...] = ()
    apt: bool = False  # install gridtool-agent from the host's own apt sources


class Action(Enum):
    OK = "ok"  # already in place
    APPLY = "apply"
    FAIL = "fail"  # a check-only step failed
    NOTE = "note"  # nothing to do (skipped, with a note)


def decide(step: Step, check_passed: bool | None, changed_before: bool) -> Action:
    """What to do with ``step`` given its check result (None: not run)."""
    if step.check is None and step.apply is None:
        return Action.NOTE
    if check_passed and not (step.after_change and changed_before):
        return Action.OK
    if step.apply is None:
        return Action.FAIL
    return Action.APPLY


def apply_script(step: Step) -> str:
    """Apply, then verify with the check, in one remote command (one round trip): exits
    101 when apply failed, 102 when the check still fails after it."""
    verify = f"\n{{ {step.check}\n}} >/dev/null 2>&1 || exit 102" if step.check else ""
    return f"{{ {step.apply}\n}} || exit 101{verify}"


PROBE = "if [ -d /run/systemd/system ]; then echo systemd=1; else echo systemd=0; fi"


def parse_facts(output: str) -> HostFacts:
    """Read what :data:`PROBE` printed."""
    values = dict(line.split("=", 1) for line in output.split() if "=" in line)
    return HostFacts(systemd=values.get("systemd") == "1")


def uses_systemd(facts: HostFacts, layout: Layout) -> bool:
    """systemd runs the agent only on a real root: a test prefix gets a direct start."""
    return facts.systemd and layout.root == "/"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: What ``xl`` writes on a Xen dom0 (``-``: nothing on other hosts): the agent's ``xl list
#: -l`` of a domain made behind libvirt's back takes a lock under ``/var/lib/xen`` (without
#: it xl prints an empty list: seen in the Xen tier, the domain never judged), and ``xl
#: destroy`` runs the block hotplug script, which logs to ``/var/log/xen`` and locks under
#: ``/run/xen-hotplug``.
XEN_WRITABLE = ("-/var/lib/xen", "-/var/log/xen", "-/run/xen", "-/run/xen-hotplug")


def render_unit(template: str, layout: Layout, images_dir: str = DEFAULT_IMAGES_DIR,
                hook_socket: str | None = None) -> str:
    """The agent's unit (``scripts/systemd/gridtool-agent.service``) with this layout's
    program and config paths; ``ReadWritePaths`` covering libvirt's socket, the images
    directory (``-``: no error while it is missing), Xen's (:data:`XEN_WRITABLE`) and the
    hook socket's directory
    (default :attr:`Layout.hook_socket`) unless that is the unit's ``RuntimeDirectory``
    ``/run/gridtool`` (writable under ``ProtectSystem=strict`` by itself)."""
    q = shlex.quote
    text = re.sub(r"(?m)^ExecStart=.*$",
                  f"ExecStart={q(layout.agent)} --config {q(layout.config)}", template)
    text = re.sub(r"(?m)^ReadOnlyPaths=.*$",
                  f"ReadOnlyPaths={posixpath.dirname(layout.config)}", text)
    writable = ["/run/libvirt", f"-{images_dir}", *XEN_WRITABLE]
    socket_dir = posixpath.dirname(hook_socket or layout.hook_socket)
    if socket_dir != RUNTIME_DIR:
        writable.append(socket_dir)
    text = re.sub(r"(?m)^ReadWritePaths=.*$", f"ReadWritePaths={' '.join(writable)}", text)
    if not re.search(r"(?m)^RuntimeDirectory=", text):
        text = re.sub(r"(?m)^\[Service\]$", "[Service]\nRuntimeDirectory=gridtool", text,
                      count=1)
    return text


def hook_shim(layout: Layout, module: str, shared_patterns: tuple[str, ...] = ()) -> str:
    """The libvirt hook script: runs ``module`` (``agents.hook``) from the agent's venv,
    asking the agent on :attr:`Layout.hook_socket`."""
    q = shlex.quote
    shared = "".join(f" --shared {q(p)}" for p in shared_patterns)
    return (f"#!/bin/sh\n{HOOK_LINE} 'gridtool host add'\n"
            f"exec {q(layout.venv)}/bin/python -I -m {module} --socket "
            f"{q(layout.hook_socket)}{shared} -- \"$@\"\n")


def _same_file(path: str, data: bytes, mode: str) -> str:
    """Check: ``path`` has exactly ``data`` and permission bits ``mode``."""
    q = shlex.quote
    return (f"[ \"$(stat -c %a {q(path)} 2>/dev/null)\" = {mode} ] && "
            f"echo {sha256(data)}'  '{q(path)} | sha256sum -c --status")


def _install(name: str, path: str, mode: str) -> str:
    """Apply: copy the staged ``name`` to ``path`` (created with ``mode`` from the start)."""
    q = shlex.quote
    return (f"mkdir -p {q(posixpath.dirname(path))} && "
            f"(umask 077 && install -m {mode} \"$GT_STAGE\"/{q(name)} {q(path)})")


def _file_step(name: str, title: str, path: str, data: bytes, mode: str,
               secret: bool = False, then: str = "") -> Step:
    upload_name = posixpath.basename(path)
    apply = _install(upload_name, path, mode) + (f" && {then}" if then else "")
    return Step(name, title, _same_file(path, data, mode), apply,
                (Upload(upload_name, data, secret),))


def _running(layout: Layout) -> str:
    """Check: the agent started from this layout's config runs (pid file + cmdline)."""
    q = shlex.quote
    return (f"P=$(cat {q(layout.pid_file)} 2>/dev/null) && [ -n \"$P\" ] && "
            f"tr '\\0' ' ' 2>/dev/null </proc/\"$P\"/cmdline | "
            f"grep -qF -- {q('--config ' + layout.config)}")


def _stop_direct(layout: Layout) -> str:
    """Apply: SIGTERM the directly started agent, SIGKILL after 20 s; drop the pid file."""
    q = shlex.quote
    alive = _running(layout)
    return (f"if {alive}; then kill -TERM \"$P\"; i=0; "
            f"while {alive} && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; "
            f"if {alive}; then kill -KILL \"$P\"; fi; fi; rm -f {q(layout.pid_file)}")


def _start_direct(layout: Layout) -> str:
    """Apply: (re)start the agent in the background, detached (nohup, own session), and
    wait up to 5 s for it to run.

    The pid file is written by the process that then execs the agent, not from ``$!``:
    setsid forks when its caller leads a process group, and ``$!`` is then a parent that
    exits at once (the check after the apply failed although the agent ran)."""
    q = shlex.quote
    inner = f"echo $$ >{q(layout.pid_file)}; exec {q(layout.agent)} --config {q(layout.config)}"
    return (f"{_stop_direct(layout)}; "
            f"mkdir -p {q(posixpath.dirname(layout.pid_file))} "
            f"{q(posixpath.dirname(layout.log_file))} && cd / && "
            f"(setsid nohup sh -c {q(inner)} >>{q(layout.log_file)} 2>&1 </dev/null &) && "
            f"i=0; while ! {{ {_running(layout)}; }} && [ $i -lt 50 ]; do sleep 0.1; "
            "i=$((i+1)); done")


def _libvirt_check(uri: str, python: str) -> str:
    q = shlex.quote
    probe = "import sys, libvirt; libvirt.open(sys.argv[1]).close()"
    return (f"if command -v virsh >/dev/null 2>&1; then virsh -q -c {q(uri)} version "
            f">/dev/null; else {q(python)} -c {q(probe)} {q(uri)}; fi")


def _tls_steps(layout: Layout, tls: TlsFiles | None) -> list[Step]:
    """One file step per TLS file (keys 0600, never shown); before the config, so a
    changed certificate restarts the agent too."""
    if tls is None:
        return []
    paths = tls_settings(layout, tls)
    return [_file_step(f"tls-{setting}", f"install {paths[setting]} ({mode})", paths[setting],
                       data, mode, secret=mode == "600")
            for setting, _, data, mode in tls.files()]


def _deb_steps(spec: AddSpec) -> list[Step]:
    """Copy the .debs to the host and install them with apt (which fetches their Debian
    dependencies); check: dpkg has exactly these versions installed. With ``apt``, the
    host's own apt sources provide gridtool-agent (check: it is installed). A config that
    ``host add`` wrote before is kept (``--force-confold``)."""
    q = shlex.quote
    install = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
               "-o Dpkg::Options::=--force-confold ")
    if spec.apt:
        return [Step("apt", "install gridtool-agent from the host's apt sources",
                     _dpkg_has("gridtool-agent", ""),
                     f"apt-get update -q && {install}gridtool-agent")]
    cache = spec.layout.at("/var/cache/gridtool/debs")
    paths = [f"{cache}/{d.name}" for d in spec.debs]
    installed = " && ".join(_dpkg_has(d.package, d.version) for d in spec.debs)
    copy = " && ".join(f"install -m 0644 \"$GT_STAGE\"/{q(d.name)} {q(path)}"
                       for d, path in zip(spec.debs, paths, strict=True))
    apply = f"mkdir -p {q(cache)} && {copy} && {install}" + " ".join(q(p) for p in paths)
    return [Step("deb", f"install {', '.join(d.name for d in spec.debs)} with apt",
                 installed, apply, tuple(Upload(d.name, d.data) for d in spec.debs))]


def _dpkg_has(package: str, version: str) -> str:
    """Check: dpkg has ``package`` installed (at ``version``, unless empty)."""
    q = shlex.quote
    status = "${Status}" + (" ${Version}" if version else "")
    want = "install ok installed" + (f" {version}" if version else "")
    return f"[ \"$(dpkg-query -W -f={q(status)} {q(package)} 2>/dev/null)\" = {q(want)} ]"


def _venv_steps(spec: AddSpec) -> list[Step]:
    """Copy the wheel (and a wheelhouse's files) to the host and install it in a venv:
    from the wheelhouse offline (``--no-index``, its constraints), else the dependencies
    from the host's pip index. The venv is stamped with a digest of every file copied."""
    q = shlex.quote
    lay = spec.layout
    files = (Upload(spec.wheel_name, spec.wheel), *spec.wheelhouse)
    path = {f.name: f"{lay.wheels}/{f.name}" for f in files}
    wheel_path = path[spec.wheel_name]
    digest = sha256("".join(sorted(f"{sha256(f.data)}  {f.name}\n" for f in files)).encode())
    stamp = f"{lay.venv}/.gridtool-wheel.sha256"
    pip = f"{q(lay.venv)}/bin/pip install -q --disable-pip-version-check"
    source = (f" --no-index --find-links {q(lay.wheels)} -c {q(path[CONSTRAINTS])}"
              if spec.wheelhouse else "")
    copied = "; ".join(f"echo {sha256(f.data)}'  '{q(path[f.name])}" for f in files)
    more = f" and {len(files) - 1} wheelhouse files" if spec.wheelhouse else ""
    return [
        Step("wheel", f"copy {spec.wheel_name}{more} to {lay.wheels}",
             f"{{ {copied}; }} | sha256sum -c --status",
             f"rm -rf {q(lay.wheels)} && mkdir -p {q(lay.wheels)} && " + " && ".join(
                 f"install -m 0644 \"$GT_STAGE\"/{q(f.name)} {q(path[f.name])}"
                 for f in files), files),
        Step("venv", f"install it in the venv {lay.venv}"
             + (" (offline, from the wheelhouse)" if spec.wheelhouse else ""),
             f"{q(lay.venv)}/bin/python -c 'import gridtool, agents.agent' 2>/dev/null && "
             f"test -x {q(lay.agent)} && grep -qx {digest} {q(stamp)}",
             f"{{ {q(lay.venv)}/bin/python -c pass 2>/dev/null || "
             f"{q(spec.python)} -m venv --clear {q(lay.venv)}; }} && "
             f"{pip}{source} {q(wheel_path)} && "
             f"{pip} --no-index --force-reinstall --no-deps {q(wheel_path)} && "
             f"echo {digest} >{q(stamp)}"),
    ]


def _hook_step(spec: AddSpec, systemd: bool) -> Step:
    """The fence hook in ``hooks/<driver>.d/`` (a site's own ``hooks/<driver>`` is kept;
    one an older gridtool put there is removed, else both would run). With ``debs`` or ``apt`` the
    package installed it (a symlink to its fence hook): only checked."""
    q = shlex.quote
    path = spec.layout.hook_for(spec.libvirt_uri)
    if spec.debs or spec.apt:
        return Step("hook", f"the package's libvirt hook {path}", f"test -x {q(path)}", None)
    if spec.hook is None:
        return Step("hook", "libvirt hook", None, None,
                    note="skipped: this gridtool has no libvirt hook to install")
    legacy = spec.layout.at(f"/etc/libvirt/hooks/{hook_driver(spec.libvirt_uri)}")
    reload = f"{{ systemctl try-reload-or-restart {LIBVIRTD} || true; }}" if systemd else ""
    hook = _file_step("hook", f"install the libvirt hook {path}", path, spec.hook.encode(),
                      "755", then=" && ".join(filter(None, [_drop_legacy(legacy), reload])))
    return hook if systemd else replace(
        hook, note="libvirt reads a new hook only when it starts or gets SIGHUP")


def _drop_legacy(path: str) -> str:
    """Apply: remove ``path`` if an older gridtool installed it (:data:`HOOK_LINE`)."""
    q = shlex.quote
    return f"{{ ! grep -qsF {q(HOOK_LINE)} {q(path)} || rm -f {q(path)}; }}"


def plan_add(spec: AddSpec, facts: HostFacts) -> list[Step]:
    """The steps of ``host add``, in order."""
    lay = spec.layout
    steps = [
        Step("libvirt", f"libvirt answers at {spec.libvirt_uri}",
             _libvirt_check(spec.libvirt_uri, spec.python), None),
        *(_deb_steps(spec) if spec.debs or spec.apt else _venv_steps(spec)),
        *_tls_steps(lay, spec.tls),
        _file_step("config", f"write {lay.config} (0600)", lay.config,
                   spec.agent_conf.encode(), "600", secret=True),
    ]
    systemd = uses_systemd(facts, lay)
    steps.append(_hook_step(spec, systemd))
    if spec.unit is None:
        steps.append(Step("unit", "systemd unit", None, None,
                          note="the package's own /lib/systemd/system/" + SERVICE))
    else:
        steps.append(_file_step("unit", f"install {lay.unit}", lay.unit, spec.unit.encode(),
                                "644", then="systemctl daemon-reload" if systemd else ""))
    if systemd:
        steps.append(Step("start", f"enable and start {SERVICE}",
                          f"systemctl is-enabled --quiet {SERVICE} && "
                          f"systemctl is-active --quiet {SERVICE}",
                          f"systemctl enable --quiet {SERVICE} && systemctl restart {SERVICE}",
                          after_change=True))
    else:
        steps.append(Step("start", "start the agent directly (no systemd: nohup, "
                          f"log {lay.log_file})", _running(lay), _start_direct(lay),
                          after_change=True,
                          note="no systemd on this host: the unit is installed but the agent "
                               "was started directly, and will not restart on reboot"))
    return steps


def plan_remove(layout: Layout, facts: HostFacts, tls_stem: str = "") -> list[Step]:
    """The steps of ``host remove``: stop the agent, then delete what ``add`` installed,
    the host's TLS certificate and key ``<tls_stem>.crt/.key`` included (the log and the
    CA certificate are kept)."""
    q = shlex.quote
    lay = layout
    if uses_systemd(facts, lay):
        stop = Step("stop", f"stop and disable {SERVICE}",
                    f"! systemctl is-active --quiet {SERVICE} && "
                    f"! systemctl is-enabled --quiet {SERVICE}",
                    f"systemctl disable --now --quiet {SERVICE}")
    else:
        stop = Step("stop", "stop the agent", f"! {{ {_running(lay)}; }}", _stop_direct(lay))
    paths = [lay.unit, lay.config, lay.venv, lay.wheels, lay.pid_file,
             lay.at("/var/cache/gridtool/debs")]
    if tls_stem:
        paths += [f"{lay.tls_dir}/{tls_stem}.{ext}" for ext in ("crt", "key")]
    paths += list(lay.hooks)  # hooks/qemu.d/gridtool, hooks/libxl.d/gridtool
    legacy = [f"grep -qsF {q(HOOK_LINE)} {q(h)}" for h in lay.legacy_hooks]
    reload = " && systemctl daemon-reload" if uses_systemd(facts, lay) else ""
    files = Step("files", "remove the unit, config, venv and hook",
                 " && ".join(f"! test -e {q(p)}" for p in paths)
                 + "".join(f" && ! {ours}" for ours in legacy),
                 f"rm -rf {' '.join(q(p) for p in paths)}"
                 + "".join(f" && {_drop_legacy(h)}" for h in lay.legacy_hooks)
                 + reload)
    return [stop, *_purge_steps(lay), files]


def _purge_steps(layout: Layout) -> list[Step]:
    """Purge the Debian packages ``host add --deb`` installed; none for an install under
    a prefix (dpkg acts on the real root only)."""
    if layout.root != "/":
        return []
    present = (f"dpkg-query -W -f='${{Status}}\\n' {' '.join(DEB_PACKAGES)} 2>/dev/null | "
               "grep -Eq 'installed|unpacked|config-files'")
    return [Step("packages", f"purge {', '.join(DEB_PACKAGES)}", f"! {{ {present}; }}",
                 "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "
                 + " ".join(DEB_PACKAGES))]


@dataclass(frozen=True)
class SshTarget:
    user: str
    address: str
    port: int = 22

    def __str__(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{addr}" + (f":{self.port}" if self.port != 22 else "")


def parse_ssh_target(text: str) -> SshTarget:
    """``USER@ADDR[:PORT]`` (IPv6 as ``USER@[ADDR]:PORT``); ValueError naming the fault."""
    user, at, rest = text.rpartition("@")
    if not at or not user or not rest:
        raise ValueError(f"--ssh {text!r}: expected USER@ADDR[:PORT]")
    port = "22"
    if rest.startswith("["):
        address, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"--ssh {text!r}: expected USER@[IPV6]:PORT")
        port = tail[1:] or port
    elif rest.count(":") == 1:
        address, _, port = rest.partition(":")
    else:
        address = rest
    if not address or any(c.isspace() or c in "/@" for c in address + user):
        raise ValueError(f"--ssh {text!r}: bad user or address")
    if not (port.isascii() and port.isdecimal() and 0 < int(port) < 65536):
        raise ValueError(f"--ssh {text!r}: port must be 1-65535")
    return SshTarget(user, address, int(port))
