"""Error types with the exit codes the CLI and agent document (see man/gridtool.1)."""

from __future__ import annotations


class GridtoolError(Exception):
    """Base error: printed as one line on stderr, process exits with `exit_code`."""

    exit_code = 1


class UsageError(GridtoolError):
    """Bad flags, arguments or input files."""

    exit_code = 2


class ConfigError(GridtoolError):
    """A configuration setting is missing or invalid; the message names the setting."""

    exit_code = 2


class NotFound(GridtoolError):
    """Unknown host, guest or other object."""

    exit_code = 3


class RegistryUnavailable(GridtoolError):
    """No etcd endpoint answered in time."""

    exit_code = 4


class LeaseGone(RegistryUnavailable):
    """The etcd lease a write was bound to has expired or was revoked: grant a new one."""


class AuthError(GridtoolError):
    """etcd refused the credentials or the permission."""

    exit_code = 5


class CorruptRecord(GridtoolError):
    """A registry value does not decode; the message names the key."""

    exit_code = 6


class Conflict(GridtoolError):
    """The operation collides with the registry's state (held elsewhere, duplicate)."""

    exit_code = 7


class OperationFailed(GridtoolError):
    """An agent carried out an intent and reported failure."""

    exit_code = 8


class Timeout(GridtoolError):
    """Waiting for an outcome took longer than the deadline."""

    exit_code = 9


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error",
    2: "usage or configuration error",
    3: "unknown host, guest or object",
    4: "registry (etcd) unreachable",
    5: "authentication or permission refused by etcd",
    6: "corrupt registry record",
    7: "conflict with registry state (held elsewhere, duplicate)",
    8: "operation failed on the host",
    9: "timed out waiting for an outcome",
}
