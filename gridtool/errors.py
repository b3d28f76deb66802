"""Error types with the exit codes the CLI and agent document (see man/gridtool.1).

Each class that introduces an exit code carries it with a one-line ``meaning``;
:data:`EXIT_CODES`, the table the man pages and the README show, is derived from them.
"""

from __future__ import annotations


class GridtoolError(Exception):
    """Base error: printed as one line on stderr, process exits with `exit_code`."""

    exit_code = 1
    meaning = "unexpected internal error"


class Aborted(GridtoolError):
    """A confirmation prompt was declined, or standard input ended before an answer."""

    exit_code = 1
    meaning = "a confirmation was declined or not answered"


class UsageError(GridtoolError):
    """Bad flags, arguments or input files."""

    exit_code = 2
    meaning = "bad flags, arguments or input files"


class ConfigError(GridtoolError):
    """A configuration setting is missing or invalid; the message names the setting."""

    exit_code = 2
    meaning = "a configuration setting is missing or invalid"


class NotFound(GridtoolError):
    """Unknown host, guest or other object."""

    exit_code = 3
    meaning = "unknown host, guest or object"


class RegistryUnavailable(GridtoolError):
    """No etcd endpoint answered in time."""

    exit_code = 4
    meaning = "registry (etcd) unreachable"


class LeaseGone(RegistryUnavailable):
    """The etcd lease a write was bound to has expired or was revoked: grant a new one."""


class AuthError(GridtoolError):
    """etcd refused the credentials or the permission."""

    exit_code = 5
    meaning = "authentication or permission refused by etcd"


class CorruptRecord(GridtoolError):
    """A registry value does not decode; the message names the key."""

    exit_code = 6
    meaning = "corrupt registry record"


class Conflict(GridtoolError):
    """The operation collides with the registry's state (held elsewhere, duplicate)."""

    exit_code = 7
    meaning = "conflict with the registry's state (held elsewhere, duplicate)"


class OperationFailed(GridtoolError):
    """An agent carried out an intent and reported failure."""

    exit_code = 8
    meaning = "operation failed on the host"


class Timeout(GridtoolError):
    """Waiting for an outcome took longer than the deadline."""

    exit_code = 9
    meaning = "timed out waiting for an outcome"



class BrokerUnavailable(GridtoolError):
    """A job queue's broker (Redis, RabbitMQ) did not answer."""

    exit_code = 10
    meaning = "the job queue's broker is unreachable"


class QueueGone(GridtoolError):
    """The broker answered but the queue (or its consumer group) is not there."""

    exit_code = 11
    meaning = "the job queue (or its consumer group) does not exist"


class BadReading(GridtoolError):
    """The broker reported numbers that cannot be (a negative count)."""

    exit_code = 12
    meaning = "the broker reported impossible queue numbers"

EXIT_SUCCESS = 0
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C, at a prompt too), the shell's 128 + 2


def _coded(cls: type[GridtoolError]) -> list[type[GridtoolError]]:
    """``cls`` and its subclasses in this module that set their own exit code."""
    own = [cls] if cls.__module__ == __name__ and "exit_code" in vars(cls) else []
    return own + [c for sub in cls.__subclasses__() for c in _coded(sub)]


def exit_codes() -> dict[int, str]:
    """Exit status -> meaning: success, every error class's code (classes sharing a code
    are joined with "; "), and SIGINT."""
    table: dict[int, list[str]] = {}
    for cls in _coded(GridtoolError):
        table.setdefault(cls.exit_code, []).append(cls.meaning)
    return {EXIT_SUCCESS: "success",
            **{code: "; ".join(table[code]) for code in sorted(table)},
            EXIT_INTERRUPTED: "interrupted (SIGINT)"}


EXIT_CODES: dict[int, str] = exit_codes()
