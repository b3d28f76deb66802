"""Secret files: passwords and private keys, written 0600 in a 0700 directory.

A file is written under a temporary name created 0600 and renamed into place, so a
reader never sees a partial secret and the secret is never world-readable, not even
for a moment. Nothing here logs or returns a secret's text except ``read_password``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gridtool.errors import ConfigError

DEFAULT_DIR = Path("/etc/gridtool/credentials")


def password_path(directory: Path, user: str) -> Path:
    """Where ``user``'s password lives: ``<directory>/<user>.password``."""
    return directory / f"{user}.password"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with mode 0600 (the directory is made 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_password(path: Path) -> str | None:
    """The password in ``path``, or None when the file does not exist."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return text or None
