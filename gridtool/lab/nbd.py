"""A small NBD server (fixed newstyle handshake, simple replies) on a unix socket: how the
lab's per-host initiator (:mod:`gridtool.lab.initiator`) serves a LUN to its host's QEMUs.

Only what QEMU's and qemu-io's NBD client need: NBD_OPT_GO / INFO / EXPORT_NAME (with the
block size, so the client aligns its requests to 512 bytes), READ, WRITE, FLUSH, DISC;
other options are answered "unsupported", other commands EINVAL. A client must ask for
the disk's export name (the LUN, ``TARGET-IQN/N``, that its guest's XML names and its
fence key is named after): another name, the empty default too, is refused, so a guest
cannot write to one LUN while fenced as another. A request the back end
refuses because the host is fenced is answered EPERM (the errno QEMU then reports).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Callable
from typing import Protocol

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO, REP_ERR_UNSUP, REP_ERR_UNKNOWN = 1, 3, (1 << 31) + 1, (1 << 31) + 6
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
TFLAG_HAS_FLAGS, TFLAG_SEND_FLUSH = 1, 4
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
BLOCK = 512
MAX_PAYLOAD = 1 << 20


class Disk(Protocol):
    """What the server serves: whole 512-byte blocks, under one export name."""

    size: int
    name: str

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class Fenced(Exception):
    """The back end refused a request because this host is fenced at the LUN."""


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", OPT_REPLY_MAGIC, option, reply, len(data)) + data


def info_replies(option: int, size: int) -> bytes:
    flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH
    return (option_reply(option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, size, flags))
            + option_reply(option, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, BLOCK,
                                                         4096, MAX_PAYLOAD))
            + option_reply(option, REP_ACK))


def export_name(option: int, payload: bytes) -> str | None:
    """The export an NBD_OPT_EXPORT_NAME, _GO or _INFO payload asks for (None: cut short)."""
    if option == OPT_EXPORT_NAME:
        return payload.decode(errors="replace")
    size = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else len(payload)
    name = payload[4:4 + size]
    return name.decode(errors="replace") if len(name) == size else None


def simple_reply(handle: int, error: int = 0, data: bytes = b"") -> bytes:
    return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle) + data


def _recv(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise ConnectionError("client went away")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve_client(conn: socket.socket, disk: Disk) -> None:
    """One client, from the handshake to NBD_CMD_DISC or a closed socket."""
    with contextlib.suppress(ConnectionError, OSError), conn:
        if _handshake(conn, disk):
            _transmission(conn, disk)


def _handshake(conn: socket.socket, disk: Disk) -> bool:
    conn.sendall(NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    client_flags = struct.unpack(">I", _recv(conn, 4))[0]
    while True:
        magic, option, length = struct.unpack(">QII", _recv(conn, 16))
        if magic != IHAVEOPT or length > 4096:
            return False
        payload = _recv(conn, length)
        if option in (OPT_EXPORT_NAME, OPT_GO, OPT_INFO) and \
                export_name(option, payload) != disk.name:
            if option == OPT_EXPORT_NAME:
                return False  # the protocol's only answer: close
            conn.sendall(option_reply(option, REP_ERR_UNKNOWN,
                                      f"this socket serves {disk.name!r} only".encode()))
            continue
        if option == OPT_EXPORT_NAME:
            flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH
            zeroes = b"" if client_flags & FLAG_NO_ZEROES else bytes(124)
            conn.sendall(struct.pack(">QH", disk.size, flags) + zeroes)
            return True
        if option in (OPT_GO, OPT_INFO):
            conn.sendall(info_replies(option, disk.size))
            if option == OPT_GO:
                return True
        elif option == OPT_ABORT:
            conn.sendall(option_reply(option, REP_ACK))
            return False
        else:
            conn.sendall(option_reply(option, REP_ERR_UNSUP))


def _transmission(conn: socket.socket, disk: Disk) -> None:
    while True:
        magic, _flags, kind, handle, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
        if magic != REQUEST_MAGIC:
            return
        data = _recv(conn, length) if kind == CMD_WRITE else b""
        if kind == CMD_DISC:
            return
        conn.sendall(_answer(disk, kind, handle, offset, length, data))


def _answer(disk: Disk, kind: int, handle: int, offset: int, length: int,
            data: bytes) -> bytes:
    if kind == CMD_FLUSH:
        return simple_reply(handle)  # every WRITE(10) reached the target before its reply
    if kind not in (CMD_READ, CMD_WRITE):
        return simple_reply(handle, errno.EINVAL)
    if offset % BLOCK or length % BLOCK or length > MAX_PAYLOAD or offset + length > disk.size:
        return simple_reply(handle, errno.EINVAL)
    try:
        if kind == CMD_READ:
            return simple_reply(handle, 0, disk.read(offset, length))
        disk.write(offset, data)
        return simple_reply(handle)
    except Fenced:
        return simple_reply(handle, errno.EPERM)
    except OSError:
        return simple_reply(handle, errno.EIO)


def serve(listener: socket.socket, disk: Disk, spawn: Callable[[Callable[[], None]], None],
          running: Callable[[], bool]) -> None:
    """Accept clients until ``running()`` is false; ``spawn`` runs each in a thread."""
    listener.settimeout(0.2)
    while running():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        spawn(lambda c=conn: serve_client(c, disk))  # type: ignore[misc]
