"""Who may touch which registry keys: etcd users, roles and permissions (pure).

etcd grants permissions on single keys or key prefixes (read, write, readwrite).
For one registry prefix and a list of hosts, ``plan`` says what must exist:

- ``root`` (etcd's superuser; only it manages users and roles);
- an admin user and role for the CLI and a stand-alone manager: readwrite on the prefix;
- per host a user ``host-<name>`` whose role writes only that host's keys (its host
  record, its machine claim, its guests, its intents' outcomes, its violations, its
  ``dead/`` mark), the
  shared ``fences/``, ``holders/``, ``domains/``, ``clones/`` and ``guestindex/`` (keyed by volume,
  uuid, template or guest name, not by host: etcd cannot restrict by value; an index
  entry is checked against the guest record it points to), and reads what an agent reads;
- a manager role, granted to the hosts that run a manager candidate: reads everything,
  writes intents for any host, guest settings, pools and the election keys;
- a monitoring user and role (``gridtool-monitor``) that only reads the prefix: enough
  for ``gridtool check``, ``gridtool metrics serve`` (cron, Prometheus) and
  ``gridtool web serve``;
- per pool on request, a reporter user ``pool-<name>`` (an outside policy engine) whose
  role writes only that pool's load reports (``pools/<name>/samples/``), the heartbeat
  of ``pool feed`` (``pools/<name>/feed``) and its spec,
  where its desired size lives (etcd grants by key, not by field: it could change the
  spec's other fields too, never another pool's or any host, guest or fence), and reads
  the manager's status of that pool (``pool numbers``: what an outside engine decides on).

``repair_steps`` compares a plan with what etcd has and lists the changes that make
etcd match (a second ``registry init`` repairs instead of failing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gridtool.registry.keys import DEFAULT_PREFIX, Keys, validate_name

ROOT = "root"


class Access(StrEnum):
    """etcd's permission types."""

    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"

    def allows(self, write: bool) -> bool:
        return self is Access.READWRITE or self is (Access.WRITE if write else Access.READ)


@dataclass(frozen=True, order=True)
class Permission:
    """``access`` on ``key`` alone (``range_end`` ''), or on ``[key, range_end)`` as etcd
    stores it (``range_end`` '\\0': every key from ``key`` on)."""

    key: str
    access: Access
    range_end: str = ""

    @classmethod
    def on_prefix(cls, prefix: str, access: Access) -> Permission:
        return cls(prefix, access, prefix_end(prefix))

    def covers(self, key: str) -> bool:
        if not self.range_end:
            return key == self.key
        raw = key.encode()
        return self.key.encode() <= raw and (self.range_end == "\0"
                                             or raw < self.range_end.encode("latin-1"))


@dataclass(frozen=True)
class Role:
    name: str
    permissions: tuple[Permission, ...]


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class AuthPlan:
    """The users and roles one registry prefix needs."""

    prefix: str
    roles: tuple[Role, ...]
    users: tuple[User, ...]

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    def user(self, name: str) -> User:
        return next(u for u in self.users if u.name == name)

    def permitted(self, user: str, key: str, write: bool) -> bool:
        """Whether etcd would let ``user`` read (or write) ``key`` under this plan."""
        if user == ROOT:
            return True
        roles = [self.role(r) for r in self.user(user).roles]
        return any(p.covers(key) and p.access.allows(write)
                   for role in roles for p in role.permissions)


def prefix_end(prefix: str) -> str:
    """The smallest key above every key that starts with ``prefix``."""
    raw = prefix.encode().rstrip(b"\xff")
    return (raw[:-1] + bytes([raw[-1] + 1])).decode("latin-1") if raw else "\0"


def scope(prefix: str) -> str:
    """A tag that keeps users of different registry prefixes in one etcd apart:
    '' for the default prefix (and '/'), else the prefix without slashes."""
    if prefix == DEFAULT_PREFIX:
        return ""
    return prefix.strip("/").replace("/", ".")


def _scoped(name: str, prefix: str) -> str:
    tag = scope(prefix)
    return f"{name}@{tag}" if tag else name


def admin_user(prefix: str) -> str:
    return _scoped("gridtool-admin", prefix)


def manager_role(prefix: str) -> str:
    return _scoped("gridtool-manager", prefix)


def host_user(host: str, prefix: str) -> str:
    """The etcd user (and client-certificate CN) of ``host``'s agent."""
    return _scoped(f"host-{validate_name('host', host)}", prefix)


def host_role(host: str, prefix: str) -> str:
    return _scoped(f"gridtool-host-{host}", prefix)


def monitor_user(prefix: str) -> str:
    """The read-only monitoring user (and its role, of the same name)."""
    return _scoped("gridtool-monitor", prefix)


def reporter_user(pool: str, prefix: str) -> str:
    """The etcd user of ``pool``'s outside reporter (and its role, of the same name)."""
    return _scoped(f"pool-{validate_name('pool', pool)}", prefix)


def pool_of_user(user: str, prefix: str) -> str | None:
    """The pool a ``reporter_user`` name belongs to, or None for other users and scopes."""
    return _unscoped(user, prefix, "pool-")


def _unscoped(user: str, prefix: str, head: str) -> str | None:
    """``user`` without its scope tag and ``head``: None unless both are there."""
    tag = scope(prefix)
    if tag:
        user, _, user_tag = user.rpartition("@")
        if user_tag != tag:
            return None
    elif "@" in user:
        return None
    return user.removeprefix(head) if user.startswith(head) and len(user) > len(head) else None


def host_of_user(user: str, prefix: str) -> str | None:
    """The host a ``host_user`` name belongs to, or None for other users and scopes."""
    return _unscoped(user, prefix, "host-")


def _admin_permissions(keys: Keys) -> tuple[Permission, ...]:
    return (Permission.on_prefix(keys.prefix, Access.READWRITE),)


def _manager_permissions(keys: Keys) -> tuple[Permission, ...]:
    rw = Access.READWRITE
    # hosts/ and heartbeats/ too: revoking a suspected host's lease (once fenced) needs
    # write access to every key under it (etcd checks each), its fences included
    return (Permission.on_prefix(keys.prefix, Access.READ),
            *(Permission.on_prefix(p, rw) for p in (
                keys.all_intents, keys.intents_done, keys.settings, keys.manager, keys.pools,
                keys.fences, keys.holders, keys.hosts, keys.heartbeats)))


def _host_permissions(keys: Keys, host: str) -> tuple[Permission, ...]:
    rw, read = Access.READWRITE, Access.READ
    return (
        Permission(keys.host(host), rw),                      # its record, under its lease
        Permission(keys.heartbeat(host), rw),                 # its heartbeat, under its lease
        Permission(keys.dead_host(host), rw),                 # deletes its 'confirmed dead' mark
        Permission(keys.machine(host), rw),                   # which machine its name belongs to
        Permission.on_prefix(keys.host_guests(host), rw),
        Permission.on_prefix(keys.guest_index, rw),           # by name: checked on each read
        Permission.on_prefix(keys.intents(host), rw),         # outcomes; clears old intents
        Permission.on_prefix(keys.violation(host, ""), rw),
        Permission.on_prefix(keys.fences, rw),                # fencing: any host may take a fence
        Permission.on_prefix(keys.holders, rw),               # ... and names itself its holder
        Permission.on_prefix(keys.domains, rw),               # XML of fenced guests, by uuid
        Permission.on_prefix(keys.clones, rw),                # clone records, by template
        Permission.on_prefix(keys.templates, read),           # what a clone is made from
        Permission.on_prefix(keys.hosts, read),               # handover compares the target
        Permission.on_prefix(keys.settings, read),            # HA or pinned
        Permission.on_prefix(keys.hostconfs, read),           # its settings (host set), watched
    )


def _reporter_permissions(keys: Keys, pool: str) -> tuple[Permission, ...]:
    rw = Access.READWRITE
    return (Permission(keys.pool(pool), rw),                  # its desired size (pool scale)
            Permission.on_prefix(keys.pool_samples(pool), rw),  # its load reports
            Permission(keys.pool_status(pool), Access.READ),  # the numbers (pool numbers)
            Permission(keys.pool_feed(pool), rw))             # pool feed's heartbeat


def plan(prefix: str, hosts: Iterable[str], managers: Iterable[str] = (),
         pools: Iterable[str] = ()) -> AuthPlan:
    """The users and roles for ``prefix``: root, admin, monitor, one per host, one per
    reporting pool (``pools``); ``managers`` are the hosts that run a manager candidate
    (they also get the manager role)."""
    keys = Keys(prefix)
    names = sorted(set(hosts) | set(managers))
    managers = set(managers)
    admin, manager, monitor = admin_user(prefix), manager_role(prefix), monitor_user(prefix)
    roles = [Role(ROOT, ()), Role(admin, _admin_permissions(keys)),
             Role(manager, _manager_permissions(keys)),
             Role(monitor, (Permission.on_prefix(keys.prefix, Access.READ),))]
    users = [User(ROOT, (ROOT,)), User(admin, (admin,)), User(monitor, (monitor,))]
    for pool in sorted(set(pools)):
        reporter = reporter_user(pool, prefix)
        roles.append(Role(reporter, _reporter_permissions(keys, pool)))
        users.append(User(reporter, (reporter,)))
    for host in names:
        role = host_role(host, prefix)
        roles.append(Role(role, _host_permissions(keys, host)))
        users.append(User(host_user(host, prefix),
                          (role, manager) if host in managers else (role,)))
    return AuthPlan(prefix, tuple(roles), tuple(users))


# -- repair ------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One change to etcd's auth state.

    ``op`` is one of add_role, grant_permission, revoke_permission, add_user,
    grant_role, revoke_role; ``name`` the role or user; ``arg`` the permission or role.
    """

    op: str
    name: str
    arg: Permission | str | None = None


@dataclass(frozen=True)
class Current:
    """What etcd has now: role -> permissions, user -> roles."""

    roles: Mapping[str, frozenset[Permission]]
    users: Mapping[str, frozenset[str]]


def repair_steps(want: AuthPlan, have: Current) -> list[Step]:
    """The changes that make etcd hold ``want``'s roles and users (extra permissions and
    role grants on planned roles and users are revoked; other users are left alone).
    Root's role is never touched: it has every permission built in."""
    steps: list[Step] = []
    for role in want.roles:
        if role.name not in have.roles:
            steps.append(Step("add_role", role.name))
        if role.name == ROOT:
            continue
        present = have.roles.get(role.name, frozenset())
        wanted = set(role.permissions)
        steps += [Step("revoke_permission", role.name, p) for p in sorted(present - wanted)]
        steps += [Step("grant_permission", role.name, p) for p in sorted(wanted - present)]
    for user in want.users:
        if user.name not in have.users:
            steps.append(Step("add_user", user.name))
        present_roles = have.users.get(user.name, frozenset())
        steps += [Step("revoke_role", user.name, r) for r in sorted(present_roles
                                                                     - set(user.roles))]
        steps += [Step("grant_role", user.name, r) for r in sorted(set(user.roles)
                                                                    - present_roles)]
    return steps
