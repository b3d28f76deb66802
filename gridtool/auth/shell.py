"""``registry init`` and ``host credentials``: make etcd hold the users and roles of
``gridtool.auth.rules`` and keep each user's password in a 0600 file.

Passwords go to ``<credentials dir>/<user>.password`` and nowhere else: they are never
logged, printed or put in a result. Root's password is generated on the first
``registry init`` and read back from its file on later runs (which repair whatever
drifted: missing roles, permissions, users, role grants, a password that no longer
matches its file).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gridtool.auth import rules as authplan
from gridtool.auth.credfiles import (
    DEFAULT_DIR,
    new_password,
    password_path,
    read_password,
    write_private,
)
from gridtool.auth.etcdauth import EtcdAuth
from gridtool.config import Config
from gridtool.errors import AuthError
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.keys import validate_name

log = logging.getLogger("gridtool.auth.shell")


@dataclass(frozen=True)
class UserResult:
    """What init or credentials did for one user (no password in here)."""

    user: str
    roles: tuple[str, ...]
    password_file: str
    action: str  # created, password set, repaired, unchanged


def credentials_dir(cfg: Config, explicit: str | None) -> Path:
    """``--credentials-dir``, else the folder of the configured ``password_file``, else
    ``/etc/gridtool/credentials``."""
    if explicit:
        return Path(explicit)
    if cfg.password_file:
        return Path(cfg.password_file).parent
    return DEFAULT_DIR


class _Root:
    """A store as root (or without a user while auth is still off)."""

    def __init__(self, cfg: Config, directory: Path, create: bool) -> None:
        self.password_file = password_path(directory, authplan.ROOT)
        password = read_password(self.password_file)
        anonymous = replace(cfg, user=None, password=None, password_file=None)
        self.enabled = False
        if password is not None:
            self.store = EtcdStore(replace(anonymous, user=authplan.ROOT, password=password))
            try:
                EtcdAuth(self.store).users()
                self.enabled = True
            except AuthError as exc:
                self.store.close()
                if "not enabled" not in str(exc):
                    raise AuthError(f"etcd refused root's password from {self.password_file}: "
                                    f"{exc}") from None
        if not self.enabled:
            self.store = EtcdStore(anonymous)
            try:
                EtcdAuth(self.store).users()
            except AuthError:
                self.store.close()
                raise AuthError(f"etcd authentication is enabled and {self.password_file} does "
                                "not exist: put root's password there") from None
            if password is None:
                if not create:
                    self.store.close()
                    raise AuthError(f"etcd authentication is not enabled: run 'gridtool "
                                   f"registry init' first (no {self.password_file})")
                write_private(self.password_file, new_password())
        self.auth = EtcdAuth(self.store)

    def close(self) -> None:
        self.store.close()


def _ensure(root: _Root, want: authplan.AuthPlan, only: set[str] | None,
            directory: Path, rotate: set[str]) -> list[UserResult]:
    """Apply the repair steps (for the roles/users in ``only``, or all), then make every
    planned user's password match its file (``rotate``: always a new password)."""
    have = root.auth.current({r.name for r in want.roles}, {u.name for u in want.users})
    steps = [s for s in authplan.repair_steps(want, have) if only is None or s.name in only]
    added = {s.name for s in steps if s.op == "add_user"}
    touched = {s.name for s in steps if s.op not in ("add_user", "add_role")}
    results = []
    for step in steps:
        password = None
        if step.op == "add_user":
            password = _password_for(directory, step.name, step.name in rotate)
        root.auth.apply(step, password)
        log.info("event=auth_step op=%s name=%s", step.op, step.name)
    for user in want.users:
        if only is not None and user.name not in only:
            continue
        action = "created" if user.name in added else _sync_password(root, directory, user.name,
                                                                     user.name in rotate)
        if action == "unchanged" and user.name in touched:
            action = "repaired"
        results.append(UserResult(user.name, user.roles,
                                  str(password_path(directory, user.name)), action))
    return results


def _password_for(directory: Path, user: str, rotate: bool) -> str:
    """The user's password from its file, or a new one written there first."""
    path = password_path(directory, user)
    password = None if rotate else read_password(path)
    if password is None:
        password = new_password()
        write_private(path, password)
    return password


def _sync_password(root: _Root, directory: Path, user: str, rotate: bool) -> str:
    """Make etcd's password for an existing user match its file; say what was done."""
    path = password_path(directory, user)
    password = None if rotate else read_password(path)
    if password is not None and root.enabled and (
            user == authplan.ROOT or root.auth.check_password(user, password)):
        return "unchanged"  # root: this store authenticated with it
    action = "repaired" if password is not None and root.enabled else "password set"
    if password is None:
        password = _password_for(directory, user, rotate=True)
    root.auth.change_password(user, password)
    return action


def init_registry(cfg: Config, directory: Path, hosts: Iterable[str] | None = None,
                  managers: Iterable[str] | Literal["all"] | None = None,
                  ) -> tuple[list[UserResult], bool]:
    """Create (or repair) root, the admin and per-host users and roles, then enable auth.

    ``hosts`` defaults to the hosts in the registry plus those that already have a user;
    ``managers`` (hosts running a manager candidate; "all": every host) defaults to the
    current grants.
    Returns the users and whether auth was enabled by this call.
    """
    from gridtool.registry.fleet import Registry

    root = _Root(cfg, directory, create=True)
    try:
        prefix = cfg.prefix
        users = root.auth.users()
        existing = {h for u in users if (h := authplan.host_of_user(u, prefix)) is not None}
        pools = {p for u in users if (p := authplan.pool_of_user(u, prefix)) is not None}
        if hosts is None:
            listed, _ = Registry(root.store, cfg.keys).list_hosts()
            hosts = existing | {h.name for h in listed}
        hosts = {validate_name("host", h) for h in hosts}
        if managers == "all":
            managers = hosts
        elif managers is None:
            role = authplan.manager_role(prefix)
            managers = {h for h in existing & hosts
                        if role in root.auth.user_roles(authplan.host_user(h, prefix))}
        want = authplan.plan(prefix, hosts, managers, pools)
        results = _ensure(root, want, None, directory, rotate=set())
        enabled_now = not root.enabled
        if enabled_now:
            root.auth.enable()
            log.info("event=auth_enabled endpoints=%s", ",".join(cfg.endpoints))
        return results, enabled_now
    finally:
        root.close()


def issue_host_credentials(cfg: Config, directory: Path, host: str,
                           manager: bool | None = None) -> UserResult:
    """(Re)issue ``host``'s password (a new one every time), creating its user and role
    when missing; ``manager`` grants or revokes the manager role (None: keep)."""
    validate_name("host", host)
    root = _Root(cfg, directory, create=False)
    try:
        prefix = cfg.prefix
        user = authplan.host_user(host, prefix)
        if manager is None:
            manager = user in root.auth.users() and \
                authplan.manager_role(prefix) in root.auth.user_roles(user)
        want = authplan.plan(prefix, [host], [host] if manager else [])
        only = {user, authplan.host_role(host, prefix), authplan.manager_role(prefix)}
        (result,) = _ensure(root, want, only, directory, rotate={user})
        return result
    finally:
        root.close()


def grant_manager(cfg: Config, directory: Path, host: str, manager: bool) -> bool | None:
    """Grant ``host``'s etcd user the manager role (or take it away) without touching its
    password: what a manager candidate needs. None when ``directory`` has no root
    password (nothing is touched then); else whether anything changed (a host without a
    user yet gets the role when 'host add' or 'host credentials' makes it)."""
    validate_name("host", host)
    if read_password(password_path(directory, authplan.ROOT)) is None:
        return None
    prefix = cfg.prefix
    user, role = authplan.host_user(host, prefix), authplan.manager_role(prefix)
    root = _Root(cfg, directory, create=False)
    try:
        if user not in root.auth.users() or (role in root.auth.user_roles(user)) == manager:
            return False
        if manager:  # the role itself, as registry init makes it
            _ensure(root, authplan.plan(prefix, [], []), {role}, directory, set())
        root.auth.apply(authplan.Step("grant_role" if manager else "revoke_role", user, role))
        log.info("event=manager_role host=%s granted=%s", host, manager)
        return True
    finally:
        root.close()


def issue_user(cfg: Config, directory: Path, role: Literal["monitor", "reporter"],
               pool: str | None = None, rotate: bool = False) -> tuple[UserResult, Path]:
    """Create (or repair) the monitoring user, or ``pool``'s reporter, with its role; its
    password goes to its file (a new one with ``rotate``), and a client configuration
    naming that file to ``<directory>/<user>.conf``. Returns the user and that config."""
    from gridtool.config import render

    root = _Root(cfg, directory, create=False)
    try:
        prefix = cfg.prefix
        if role == "monitor":
            user, pools = authplan.monitor_user(prefix), []
        elif pool is None:
            raise ValueError("a reporter needs its pool")
        else:
            user, pools = authplan.reporter_user(pool, prefix), [pool]
        want = authplan.plan(prefix, [], [], pools)
        (result,) = _ensure(root, want, {user}, directory, rotate={user} if rotate else set())
    finally:
        root.close()
    client = replace(Config(endpoints=cfg.endpoints, prefix=prefix, timeout=cfg.timeout,
                            ca_cert=cfg.ca_cert),
                     user=user, password_file=result.password_file)
    conf = write_private(directory / f"{user}.conf", render(client))
    log.info("event=user_issued user=%s role=%s", user, role)
    return result, conf


def remove_host_credentials(cfg: Config, directory: Path, host: str) -> list[str] | None:
    """Delete ``host``'s etcd user and role and its password file (what ``host add`` or
    ``host credentials`` made). None when ``directory`` has no root password (nothing is
    touched then); else what was removed (names and the file, never a password)."""
    validate_name("host", host)
    if read_password(password_path(directory, authplan.ROOT)) is None:
        return None
    user, role = authplan.host_user(host, cfg.prefix), authplan.host_role(host, cfg.prefix)
    removed = []
    root = _Root(cfg, directory, create=False)
    try:
        if user in root.auth.users():
            root.auth.delete_user(user)
            removed.append(f"user {user}")
        if role in root.auth.roles():
            root.auth.delete_role(role)
            removed.append(f"role {role}")
    finally:
        root.close()
    path = password_path(directory, user)
    if path.exists():
        path.unlink()
        removed.append(str(path))
    log.info("event=host_credentials_removed host=%s removed=%d", host, len(removed))
    return removed
