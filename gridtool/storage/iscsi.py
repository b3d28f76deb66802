"""Persistent reservations over libiscsi in userspace (``cython-iscsi``): one iSCSI
session, with a given initiator IQN, to one LUN.

The I_T nexus a target keys registrations by is this session (tgt: its TSIH), not the
initiator name: a second session with the same IQN is another registrant, unregistered
until it registers itself (see docs/architecture.md, "Storage fencing").
cython-iscsi 1.0 gives a command's SCSI status but not its sense data, so a CHECK
CONDITION is :class:`gridtool.storage.pr.CheckCondition` here; PR commands are sent once
more after one (:func:`gridtool.storage.pr.once_more_after_attention`).
"""

from __future__ import annotations

import contextlib
from types import TracebackType

from gridtool.storage import pr

try:
    import iscsi
except ImportError:  # the optional extra: pip install 'gridtool[iscsi]'
    iscsi = None

#: libiscsi's own status for a transport failure (SCSI_STATUS_ERROR), not a SCSI status.
TRANSPORT_ERROR = 0x0F000001
BLOCK = 512


class IscsiLun:
    """A session to the LUN at ``url`` (``iscsi://HOST:PORT/TARGET-IQN/LUN``) as initiator
    ``initiator``; implements :class:`gridtool.storage.pr.Reservations`."""

    def __init__(self, url: str, initiator: str) -> None:
        self.url = url
        self.initiator = initiator
        if iscsi is None:
            raise pr.PrError("libiscsi's Python binding is not installed: pip install "
                             "'gridtool[iscsi]' (builds against Debian's libiscsi-dev)")
        try:
            self._ctx = iscsi.Context(initiator)
            parsed = iscsi.URL(self._ctx, url)
            self.lun = parsed.lun
            self._ctx.set_targetname(parsed.target)
            self._ctx.set_session_type(iscsi.iscsi_session_type.ISCSI_SESSION_NORMAL)
            self._ctx.set_header_digest(iscsi.iscsi_header_digest.ISCSI_HEADER_DIGEST_NONE_CRC32C)
            self._ctx.connect(parsed.portal, parsed.lun)
        except (ValueError, RuntimeError) as exc:
            raise pr.PrError(f"{url} as {initiator}: cannot log in ({exc})") from None
        self._open = True

    # -- raw commands -----------------------------------------------------------------

    def _send(self, what: str, cdb: bytes, data_out: bytes = b"", data_in: int = 0) -> bytes:
        if not self._open:
            raise pr.PrError(f"{what}: session to {self.url} is closed")
        if data_in:
            direction, length = iscsi.scsi_xfer_dir.SCSI_XFER_READ, data_in
        elif data_out:
            direction, length = iscsi.scsi_xfer_dir.SCSI_XFER_WRITE, len(data_out)
        else:
            direction, length = iscsi.scsi_xfer_dir.SCSI_XFER_NONE, 0
        task = iscsi.Task(cdb, direction, length)
        buffer = bytearray(data_in)
        self._ctx.command(self.lun, task, bytearray(data_out), buffer)
        status = task.status
        if status == TRANSPORT_ERROR:
            raise pr.PrError(f"{what}: {self.url}: the session failed")
        pr.check(what, status, None)
        return bytes(buffer)

    def _out(self, request: pr.Request) -> None:
        pr.once_more_after_attention(
            request.name, lambda: self._send(request.name, request.cdb, request.data))

    def _in(self, action: pr.InAction) -> bytes:
        name = action.name.replace("_", " ")
        return pr.once_more_after_attention(
            name, lambda: self._send(name, pr.in_cdb(action), data_in=pr.ALLOC_LEN))

    def write(self, lba: int, data: bytes) -> None:
        """WRITE(10) ``data`` (whole blocks) at ``lba``, once: a fenced session's write
        raises :class:`gridtool.storage.pr.ReservationConflict`."""
        if not data or len(data) % BLOCK:
            raise ValueError(f"write of {len(data)} bytes: not whole {BLOCK}-byte blocks")
        self._send("WRITE(10)", pr.write10_cdb(lba, len(data) // BLOCK), data)

    def read(self, lba: int, blocks: int) -> bytes:
        """READ(10) ``blocks`` blocks at ``lba``, once."""
        return self._send("READ(10)", pr.read10_cdb(lba, blocks), data_in=blocks * BLOCK)

    def capacity(self) -> int:
        """The LUN's size in bytes (READ CAPACITY(10)); PrError unless its blocks are
        512 bytes, the only size this session reads and writes."""
        blocks, size = pr.parse_capacity10(pr.once_more_after_attention(
            "READ CAPACITY(10)",
            lambda: self._send("READ CAPACITY(10)", pr.read_capacity10_cdb(), data_in=8)))
        if size != BLOCK:
            raise pr.PrError(f"{self.url}: {size}-byte blocks, not {BLOCK}")
        return blocks * size

    # -- the port ---------------------------------------------------------------------

    def register(self, key: int) -> None:
        self._out(pr.register(key))

    def unregister(self, key: int) -> None:
        self._out(pr.unregister(key))

    def reserve(self, key: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._out(pr.reserve(key, res_type))

    def release(self, key: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._out(pr.release(key, res_type))

    def clear(self, key: int) -> None:
        self._out(pr.clear(key))

    def preempt(self, key: int, victim: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._out(pr.preempt(key, victim, res_type))

    def read_keys(self) -> pr.Keys:
        return pr.parse_keys(self._in(pr.InAction.READ_KEYS))

    def read_reservation(self) -> pr.Reservation:
        return pr.parse_reservation(self._in(pr.InAction.READ_RESERVATION))

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Log out: the target forgets this I_T nexus (its registrations stay, tgt keeps
        them with the nexus until preempted or cleared)."""
        if self._open:
            self._open = False
            with contextlib.suppress(RuntimeError):
                self._ctx.disconnect()

    def __enter__(self) -> IscsiLun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
