"""Configuration: file (INI), then ``GRIDTOOL_*`` environment, then flags.

Which file: ``--config``, else ``$GRIDTOOL_CONFIG``, else the running lab's
``gridtool.conf`` (found through the lab state file, and only when the lab dir is ours:
see ``gridtool.labstate``), else ``/etc/gridtool/gridtool.conf`` (the agent:
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

from gridtool.errors import ConfigError
from gridtool.keys import DEFAULT_PREFIX, Keys, validate_name
from gridtool.storage import DEFAULT_SHARED_PATTERNS, SharedStorageRules

SYSTEM_CONFIG = Path("/etc/gridtool/gridtool.conf")
AGENT_CONFIG = Path("/etc/gridtool/agent.conf")

#: setting name -> INI section it lives in.
_SECTIONS = {
    "endpoints": "registry", "prefix": "registry", "user": "registry", "password": "registry",
    "password_file": "registry", "ca_cert": "registry", "cert": "registry", "key": "registry",
    "timeout": "registry",
    "host": "agent", "libvirt_uri": "agent", "ttl": "agent", "resync_interval": "agent",
    "labels": "agent", "storage": "agent", "intruder_policy": "agent", "watchdog": "agent",
    "watchdog_timeout": "agent", "manager": "agent", "hook_socket": "agent",
    "shared_patterns": "storage", "shared_pools": "storage", "images_dir": "storage",
}
SECRET_SETTINGS = frozenset({"password"})
_BOOLS = {"1": True, "yes": True, "true": True, "on": True,
          "0": False, "no": False, "false": False, "off": False}


@dataclass(frozen=True)
class Config:
    """Every setting gridtool and gridtool-agent read."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = DEFAULT_PREFIX
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = 5.0
    host: str | None = None
    libvirt_uri: str | None = None
    ttl: int = 10
    resync_interval: float = 30.0
    labels: tuple[str, ...] = ()
    storage: tuple[str, ...] = ()
    intruder_policy: str = "pause"
    watchdog: str | None = None
    watchdog_timeout: float = 5.0
    manager: bool = False
    hook_socket: str | None = None  # the fence hook asks the agent here
    shared_patterns: tuple[str, ...] = DEFAULT_SHARED_PATTERNS
    shared_pools: tuple[str, ...] = ()
    images_dir: str = "/var/lib/gridtool/images"  # golden images and clone overlays
    source: str = "defaults"

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


def _parse(name: str, raw: Any) -> Any:
    """Turn a string (or flag value) into the typed setting, or raise ConfigError."""
    if raw is None:
        return None
    kind = {f.name: f.type for f in fields(Config)}[name]
    text = raw if isinstance(raw, str) else None
    try:
        if "tuple" in str(kind):
            items = raw if isinstance(raw, list | tuple) else text.replace(",", " ").split()
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
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value) or value <= 0:
                raise ValueError("must be a positive number")
            return value
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
    if cfg.intruder_policy not in ("pause", "destroy"):
        raise ConfigError(f"setting 'intruder_policy': {cfg.intruder_policy!r} is not "
                          "pause or destroy")
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
    from gridtool.labstate import UntrustedLab, running_lab_config

    try:
        lab = running_lab_config(env)
    except UntrustedLab as exc:
        sys.stderr.write(f"gridtool: warning: ignoring {exc}\n")
        lab = None
    if lab is not None:
        return lab
    return default if default.exists() else None


def load(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    default_file: Path = SYSTEM_CONFIG,
) -> Config:
    """Merge file, environment and flag overrides into a validated Config."""
    env = os.environ if env is None else env
    path = choose_file(config_file, default_file, env)
    raw: dict[str, Any] = read_file(path) if path else {}
    for name in _SECTIONS:
        if f"GRIDTOOL_{name.upper()}" in env:
            raw[name] = env[f"GRIDTOOL_{name.upper()}"]
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
