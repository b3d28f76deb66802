"""Configuration: file (INI), then ``GRIDTOOL_*`` environment, then flags.

Which file: ``--config``, else ``$GRIDTOOL_CONFIG``, else the running lab's
``gridtool.conf`` (found through the lab state file, and only when the lab dir is ours:
see ``gridtool.lab.state``), else ``/etc/gridtool/gridtool.conf`` (the agent:
``/etc/gridtool/agent.conf``).
A missing default file is fine; a bad value is a ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import configparser
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS, SharedStorageRules
from gridtool.errors import ConfigError
from gridtool.registry.keys import DEFAULT_PREFIX, Keys, validate_name
from gridtool.storage.fence import parse_portals

SYSTEM_CONFIG = Path("/etc/gridtool/gridtool.conf")
AGENT_CONFIG = Path("/etc/gridtool/agent.conf")

SECRET_SETTINGS = frozenset({"password"})
#: How an agent registers its PR key (setting ``pr_backend``).
PR_BACKENDS = ("none", "initiator", "sg_persist")
#: File settings a systemd credential may stand in for: a file named after the setting in
#: ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=password_file:/etc/...``) replaces the
#: configured path, because a ``DynamicUser=`` service cannot read root's 0600 files.
CREDENTIAL_SETTINGS = ("password_file", "key", "cert", "ca_cert")
_BOOLS = {"1": True, "yes": True, "true": True, "on": True,
          "0": False, "no": False, "false": False, "off": False}


def setting(default: Any, section: str | None, *, meaning: str, repr: bool = True) -> Any:
    """A ``Config`` field with the INI section it lives in (None: not a setting) and what
    it means, in the man pages' mini markup (`` `code` ``, ``*italic*``)."""
    return field(default=default, repr=repr, metadata={"section": section, "meaning": meaning})


@dataclass(frozen=True)
class Config:
    """Every setting gridtool and gridtool-agent read: the one table of settings (name,
    type, default, section and meaning), from which the man pages are generated."""

    endpoints: tuple[str, ...] = setting(("127.0.0.1:2379",), "registry", meaning=(
        "The etcd client endpoints, each `HOST:PORT`. A request goes to the endpoint that last "
        "answered and fails over to the next one in turn."))
    prefix: str = setting(DEFAULT_PREFIX, "registry", meaning=(
        "The key prefix every gridtool record lives under; it must start and end with `/`. Fleets "
        "with different prefixes can share one etcd cluster."))
    user: str | None = setting(None, "registry", meaning=(
        "The etcd user to authenticate as. It needs `password` (or `password_file`)."))
    password: str | None = setting(None, "registry", repr=False, meaning=(
        "The etcd password of `user`. Prefer `password_file`, which keeps the secret out of the "
        "configuration file."))
    password_file: str | None = setting(None, "registry", meaning=(
        "A file holding the etcd password (surrounding white space is stripped); read only when "
        "`password` is not set."))
    ca_cert: str | None = setting(None, "registry", meaning=(
        "A PEM file of the CA certificate that signed etcd's TLS server certificates; setting it "
        "makes gridtool talk TLS to etcd."))
    cert: str | None = setting(None, "registry", meaning=(
        "A PEM client certificate for TLS client authentication to etcd (with `key`)."))
    key: str | None = setting(None, "registry", meaning=(
        "The PEM private key of `cert`."))
    timeout: float = setting(5.0, "registry", meaning=(
        "Seconds to keep trying the registry before giving up with exit status 4; each endpoint "
        "gets an equal share of it for one attempt (at least 1 second)."))
    host: str | None = setting(None, "agent", meaning=(
        "This host's name in the registry. The agent needs it."))
    libvirt_uri: str | None = setting(None, "agent", meaning=(
        "The libvirt URI the agent watches, such as `qemu:///system` or `xen:///system`. The agent "
        "needs it."))
    migration_address: str | None = setting(None, "agent", meaning=(
        "The address other hosts reach this one at for live migrations (its libvirtd on the "
        "port of `libvirt_uri`, and the migration stream), such as its address on a migration "
        "network. Default: the host of `libvirt_uri`."))
    machine_id_file: str = setting("/etc/machine-id", "agent", meaning=(
        "A file holding this machine's identity, read by the agent at start (surrounding white "
        "space is stripped; empty or unreadable: the agent refuses to start). The host name "
        "belongs to one machine at a time: an agent of the same `host` on a machine with "
        "another identity refuses to start while the first one's lease lives. A cloned machine "
        "needs its own identity (`systemd-machine-id-setup` after emptying the file)."))
    ttl: int = setting(10, "agent", meaning=(
        "Seconds of the host's lease. The agent renews it every *ttl*/3 seconds; when the agent "
        "dies its host record vanishes after *ttl* seconds and its guests show as `unknown`."))
    resync_interval: float = setting(30.0, "agent", meaning=(
        "Seconds between the agent's full resyncs of libvirt into the registry (besides the one at "
        "start, the one after each reconnect and the write on each libvirt lifecycle event)."))
    labels: tuple[str, ...] = setting((), "agent", meaning=(
        "This host's labels, used by placement: a guest can require or prefer labels, and hosts "
        "labelled `overflow` are used only when no other host fits."))
    storage: tuple[str, ...] = setting((), "agent", meaning=(
        "The shared storage this host can reach (ids such as an AoE shelf or an iSCSI target); a "
        "guest whose volumes live on shared storage is placed only on hosts that reach all of it."))
    intruder_policy: str = setting("pause", "agent", meaning=(
        "What the agent does with a guest running on this host while another host holds its fence: "
        "`pause` suspends it and keeps its memory for an operator, `destroy` stops it at once. One "
        "of `pause` and `destroy`."))
    watchdog: str | None = setting(None, "agent", meaning=(
        "A Linux watchdog device, such as `/dev/watchdog` (hardware or the softdog module), that "
        "the agent pets while its lease is safe. If the agent hangs while HA guests run, the "
        "watchdog resets the host before their fences can expire. Only a character device "
        "counts (a missing path is never created); a device that is busy, is no watchdog or "
        "cannot take a short enough timeout does not protect the host, which its record then "
        "says, and the host takes no HA guest. Unset: no watchdog."))
    watchdog_kind: str = setting("device", "agent", meaning=(
        "What `watchdog` is: `device`, a Linux watchdog device, or `emulated`, the file that "
        "the lab's watchdog emulator watches (tests and `gridtool lab` only; it resets nothing "
        "but the lab's simulated host). One of `device` and `emulated`."))
    watchdog_timeout: float = setting(5.0, "agent", meaning=(
        "The watchdog's timeout in seconds. The agent sets it on the device when it opens it "
        "(in whole seconds, at least 1) and reckons with the value the device reads back; it "
        "must not exceed what the lease allows (*ttl* minus *ttl*/3 minus half the self-fence "
        "margin), or the watchdog protects nothing. The agent pets the watchdog only while a "
        "reset that far away still comes before the lease can expire."))
    manager: bool = setting(False, "agent", meaning=(
        "Whether the agent also runs a candidate of the HA manager (as `gridtool manager run` "
        "does): the candidates elect one leader in etcd, which restarts the HA guests of dead "
        "hosts elsewhere."))
    suspect_after: float | None = setting(None, "agent", meaning=(
        "Seconds without a heartbeat (each agent rewrites one small key every second) after "
        "which the HA manager suspects a host before its lease expires, but only where a fence "
        "makes acting safe: the host has a power fence agent, or a storage fencer covers every "
        "LUN of the guest. It fences the host, revokes its lease and restarts its HA guests "
        "elsewhere; without such a fence it still waits for the lease. A host that is only "
        "slow for longer is fenced needlessly (safe, but a needless recovery): keep it above "
        "the longest stall you expect. Unset: only the lease's expiry finds a host lost."))
    hook_socket: str | None = setting(None, "agent", meaning=(
        "The unix socket on which the agent answers the libvirt fence hook "
        "(`/etc/libvirt/hooks/qemu`): may this host start, restore or receive this guest? The "
        "hook refuses when the agent does not hold every fence of the guest, or does not answer "
        "in time. Unset: no hook server."))
    libvirt_run_dir: str = setting("/run/libvirt", "agent", meaning=(
        "Where the local libvirtd keeps its runtime state, as the agent sees it: the QEMU "
        "driver writes each running guest's process id to `qemu/NAME.pid` there. When its "
        "lease runs out, the agent kills the QEMU process of every HA guest with SIGKILL "
        "first (libvirt's own destroy tries SIGTERM and may wait 10 s before SIGKILL), then "
        "has libvirt destroy it. No pid file (another driver, a remote URI): libvirt's "
        "destroy alone."))
    fault_points: tuple[str, ...] = setting((), "agent", meaning=(
        "Test-only fault points, off by default; never set them on a real host. "
        "`self-fence-destroy-fails=N`: the self-fence's libvirt destroy of each guest fails "
        "the first N times. `delay-before-create=S`: a start waits S seconds after taking "
        "the guest's fences, before the lease check and libvirt's create. "
        "`self-fence-slow-destroy=S`: the self-fence's libvirt destroy of each guest takes "
        "S seconds more. `delay-before-remove=S`: a clone's removal waits S seconds before "
        "it destroys the clone."))
    shared_patterns: tuple[str, ...] = setting(DEFAULT_SHARED_PATTERNS, "storage", meaning=(
        "Shell glob patterns of disk source paths that live on storage several hosts can see (AoE, "
        "iSCSI by-path). A guest with such a disk must run on one host at a time, so gridtool "
        "fences it. Disks marked shareable and iSCSI network disks are always shared. A source "
        "is matched normalised (no doubled slashes, '.' or '..') and by every other name the host "
        "has for it (the device a symlink names, its /dev/disk/by-path and by-id links). The "
        "fence is named after the LUN: iscsi-IQN-lunN (network disk or by-path, any portal), "
        "wwn-0xHEX, aoe-eS.P, else path-PATH; a shared disk whose LUN cannot be identified "
        "keeps its guest from starting. Add /dev/disk/by-id/wwn-* for FC or SAS LUNs."))
    shared_pools: tuple[str, ...] = setting((), "storage", meaning=(
        "libvirt storage pools whose volumes are shared between hosts (for disks of type volume)."))
    images_dir: str = setting("/var/lib/gridtool/images", "storage", meaning=(
        "Where templates' golden images (`templates/`) and clones' copy-on-write overlays "
        "(`clones/<host>/`) live. Shared storage (NFS, a cluster file system) mounted at the same "
        "path on every host, so any host can clone any template."))
    pr_backend: str = setting("none", "storage", meaning=(
        "How this host's agent registers its SCSI-3 persistent reservation key on the iSCSI "
        "LUNs of a guest before it starts or receives it (storage fencing): `sg_persist` on "
        "the kernel's by-path device (`/dev/disk/by-path/*-iscsi-IQN-lun-N`, sg3-utils), "
        "`initiator` through the lab's host initiator (`pr.sock` in `pr_initiator_dir`), or "
        "`none`. It registers with REGISTER AND IGNORE EXISTING KEY and reserves the LUN "
        "Write Exclusive, registrants only, if no reservation is held. A failed registration "
        "fails the start; a LUN without PR support is said once in the log and is not "
        "storage-fenced. One of `none`, `initiator` and `sg_persist`."))
    pr_initiator_dir: str | None = setting(None, "storage", meaning=(
        "The directory of the lab's host initiator (`gridtool lab up --storage iscsi` sets it): "
        "its `pr.sock` carries this host's PR commands; the LUN's number is its index there. "
        "Needed by `pr_backend = initiator`."))
    pr_fence_initiator: str | None = setting(None, "storage", meaning=(
        "The iSCSI initiator name the manager logs in as to fence a lost host at the storage: "
        "before it recovers a guest of that host it registers its own key on each of the "
        "guest's LUNs and PREEMPTs the host's key, so the target refuses the host's writes. "
        "The target's ACL must allow it. Unset: the manager does not fence at the storage."))
    pr_portals: tuple[str, ...] = setting((), "storage", meaning=(
        "Where the manager reaches each iSCSI target to fence at the storage, as "
        "`TARGET-IQN=HOST:PORT` entries. A LUN of a target not listed is not storage-fenced "
        "(the manager uses the host's fence agent or the timed path)."))
    source: str = setting("defaults", None, meaning=(
        "Not a setting: where the values came from, the configuration file's path or "
        "`defaults`. It cannot be set."))

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def shared_rules(self) -> SharedStorageRules:
        return SharedStorageRules(self.shared_patterns, self.shared_pools)

    def require(self, *names: str) -> Config:
        """Raise ConfigError for the first of ``names`` that is unset."""
        for name in names:
            if getattr(self, name) in (None, "", ()):
                raise ConfigError(
                    f"setting '{name}' is required (config [{_SECTIONS[name]}] {name}, "
                    f"env GRIDTOOL_{name.upper()}, or --{name.replace('_', '-')})")
        return self


#: setting name -> INI section it lives in.
_SECTIONS = {f.name: f.metadata["section"] for f in fields(Config) if f.metadata["section"]}
#: field name -> what it means (every field has one: ``setting`` requires it).
MEANINGS = {f.name: f.metadata["meaning"] for f in fields(Config)}


def _parse(name: str, raw: Any) -> Any:
    """Turn a string (or flag value) into the typed setting, or raise ConfigError."""
    if raw is None:
        return None
    kind = {f.name: f.type for f in fields(Config)}[name]
    text = raw if isinstance(raw, str) else None
    if kind == "str | None" and text is not None and not text.strip():
        return None  # `user =`, or `GRIDTOOL_USER=` (how a shell clears it): no user
    try:
        if "tuple" in str(kind):
            if isinstance(raw, list | tuple):
                items = raw
            elif text is not None:
                items = text.replace(",", " ").split()
            else:
                raise TypeError("must be a list or a string")
            return tuple(str(i) for i in items)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word not in _BOOLS:
                raise ValueError("must be yes or no")
            return _BOOLS[word]
        if kind == "int":
            value = int(raw)
            if value < 2:
                raise ValueError("must be at least 2")
            return value
        if kind in ("float", "float | None"):
            number = float(raw)
            if not math.isfinite(number) or number <= 0:
                raise ValueError("must be a positive number")
            return number
        return str(raw)
    except (ValueError, AttributeError, TypeError, OverflowError) as exc:
        raise ConfigError(f"setting '{name}': invalid value {raw!r} ({exc})") from None


def _validate(cfg: Config) -> Config:
    try:
        Keys(cfg.prefix)
    except ValueError as exc:
        raise ConfigError(f"setting 'prefix': {exc}") from None
    try:
        if cfg.host:
            validate_name("host", cfg.host)
    except ValueError as exc:
        raise ConfigError(f"setting 'host': {exc}") from None
    if cfg.watchdog_kind not in ("device", "emulated"):
        raise ConfigError(f"setting 'watchdog_kind': {cfg.watchdog_kind!r} is not "
                          "device or emulated")
    if cfg.intruder_policy not in ("pause", "destroy"):
        raise ConfigError(f"setting 'intruder_policy': {cfg.intruder_policy!r} is not "
                          "pause or destroy")
    if cfg.pr_backend not in PR_BACKENDS:
        raise ConfigError(f"setting 'pr_backend': {cfg.pr_backend!r} is not "
                          f"{', '.join(PR_BACKENDS[:-1])} or {PR_BACKENDS[-1]}")
    if cfg.pr_backend == "initiator" and not cfg.pr_initiator_dir:
        raise ConfigError("setting 'pr_initiator_dir': required when 'pr_backend' is initiator")
    try:
        parse_portals(cfg.pr_portals)
    except ValueError as exc:
        raise ConfigError(f"setting 'pr_portals': {exc}") from None
    if not cfg.endpoints:
        raise ConfigError("setting 'endpoints': at least one HOST:PORT is required")
    for ep in cfg.endpoints:
        host, _, port = ep.rpartition(":")
        if not host or not (port.isascii() and port.isdecimal()) or not 0 < int(port) < 65536:
            raise ConfigError(f"setting 'endpoints': {ep!r} is not HOST:PORT")
    if cfg.password is None and cfg.password_file:
        try:
            pw = Path(cfg.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"setting 'password_file': cannot read it ({exc.strerror})") from None
        cfg = replace(cfg, password=pw)
    if cfg.user and not cfg.password:
        raise ConfigError("setting 'password': required when 'user' is set")
    return cfg


def read_file(path: Path) -> dict[str, str]:
    """Read an INI config file into {setting: raw string}; unknown keys are errors."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open() as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}: {first}") from None
    if parser.defaults():
        raise ConfigError(f"config file {path}: settings must be in [registry], [agent] "
                          "or [storage], not [DEFAULT]")
    values: dict[str, str] = {}
    for section in parser.sections():
        for name, raw in parser.items(section):
            if _SECTIONS.get(name) != section:
                raise ConfigError(f"config file {path}: unknown setting [{section}] {name}")
            values[name] = raw
    return values


def choose_file(explicit: str | None, default: Path, env: Mapping[str, str]) -> Path | None:
    """The config file to read, or None when no file applies."""
    if explicit:
        return Path(explicit)
    if env.get("GRIDTOOL_CONFIG"):
        return Path(env["GRIDTOOL_CONFIG"])
    from gridtool.lab.state import UntrustedLab, running_lab_config

    try:
        lab = running_lab_config(env)
    except UntrustedLab as exc:
        sys.stderr.write(f"gridtool: warning: ignoring {exc}\n")
        lab = None
    if lab is not None:
        return lab
    return default if default.exists() else None


def credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The file settings systemd passed in as credentials (:data:`CREDENTIAL_SETTINGS`
    found in ``$CREDENTIALS_DIRECTORY``): setting -> the credential's path."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return {}
    found = {name: Path(directory, name) for name in CREDENTIAL_SETTINGS}
    return {name: str(path) for name, path in found.items() if path.is_file()}


def load(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    default_file: Path = SYSTEM_CONFIG,
) -> Config:
    """Merge file, environment, systemd credentials and flag overrides (later ones win)
    into a validated Config."""
    env = os.environ if env is None else env
    path = choose_file(config_file, default_file, env)
    raw: dict[str, Any] = read_file(path) if path else {}
    for name in _SECTIONS:
        if f"GRIDTOOL_{name.upper()}" in env:
            raw[name] = env[f"GRIDTOOL_{name.upper()}"]
    raw.update(credentials(env))
    raw.update({k: v for k, v in (overrides or {}).items() if v not in (None, ())})
    parsed = {name: _parse(name, value) for name, value in raw.items()}
    return _validate(Config(**parsed, source=str(path) if path else "defaults"))


def render(cfg: Config, include_secrets: bool = False) -> str:
    """The config as an INI file (what the lab and ``host add`` write)."""
    parser = configparser.ConfigParser(interpolation=None)
    for f in fields(Config):
        section = _SECTIONS.get(f.name)
        value = getattr(cfg, f.name)
        if section is None or value in (None, ()) or value == f.default:
            continue
        if f.name in SECRET_SETTINGS and not include_secrets:
            continue
        parser.setdefault(section, {})
        parser[section][f.name] = ", ".join(value) if isinstance(value, tuple) else str(value)
    from io import StringIO

    out = StringIO()
    parser.write(out)
    return out.getvalue()
