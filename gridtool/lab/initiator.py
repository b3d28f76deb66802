"""The lab's stand-in for a dom0's kernel iSCSI initiator: one process per lab host.

It logs in once per LUN as the host's IQN, serves each LUN to the host's QEMUs over NBD
on a unix socket (``lun-N.nbd``), and carries the host's PR commands on the same
sessions (``pr.sock``, one JSON object a line each way). So, as on a real host, every
write of every guest of the host travels on the one session the host registered, and
one PREEMPT of the host's key fences all of them (tgt keys registrations by session:
docs/architecture.md, "Storage fencing"). A unit attention on a data command is answered
by sending it once more, as the kernel's SCSI layer does; a RESERVATION CONFLICT is the
NBD client's EPERM.

Run as ``python -m gridtool.lab.initiator SPEC_JSON``, SPEC_JSON
``{"host", "iqn", "urls": [...], "dir"}``; ``dir/ready`` appears once it serves.
:func:`start` and :func:`stop` do that from the lab; :class:`PrSocketLun` is the
:class:`gridtool.storage.pr.Reservations` port through ``pr.sock``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from gridtool.lab import nbd
from gridtool.lab.procs import INITIATOR_MARKER, cmdline, spawn, stop_pid, wait_for
from gridtool.storage import pr
from gridtool.storage.iscsi import BLOCK, IscsiLun

MARKER = INITIATOR_MARKER
CHUNK_BLOCKS = 128
#: What the control socket's requests may ask, and the errors it names in replies.
OPS = ("register", "unregister", "reserve", "preempt", "read_keys", "read_reservation")
ERRORS: dict[str, type[pr.PrError]] = {cls.__name__: cls for cls in (
    pr.PrError, pr.ReservationConflict, pr.UnitAttention, pr.Unsupported, pr.CheckCondition)}


def nbd_socket(directory: Path, lun_index: int) -> Path:
    """The NBD socket of the host's ``lun_index``-th LUN (1-based, in the spec's order)."""
    return directory / f"lun-{lun_index}.nbd"


def export(url: str) -> str:
    """The NBD export name of the LUN at ``url`` (``iscsi://PORTAL/TARGET-IQN/N``): its
    ``TARGET-IQN/N``, which a guest's XML names and its volume id is made from."""
    return url.split("://", 1)[-1].partition("/")[2]


def control_socket(directory: Path) -> Path:
    return directory / "pr.sock"


class LunDisk:
    """One LUN through the host's session, for the NBD server (one command at a time:
    a libiscsi context is not thread-safe)."""

    def __init__(self, lun: IscsiLun) -> None:
        self.lun = lun
        self.lock = threading.Lock()
        self.size = lun.capacity()
        self.name = export(lun.url)

    def _io(self, what: str, send: Any) -> Any:
        try:
            with self.lock:
                return pr.once_more_after_attention(what, send)
        except pr.ReservationConflict:
            raise nbd.Fenced(what) from None
        except pr.PrError as exc:
            raise OSError(str(exc)) from None

    def read(self, offset: int, length: int) -> bytes:
        out = []
        for lba in range(offset // BLOCK, (offset + length) // BLOCK, CHUNK_BLOCKS):
            blocks = min(CHUNK_BLOCKS, (offset + length) // BLOCK - lba)
            out.append(self._io("READ(10)", lambda a=lba, b=blocks: self.lun.read(a, b)))
        return b"".join(out)

    def write(self, offset: int, data: bytes) -> None:
        step = CHUNK_BLOCKS * BLOCK
        for start in range(0, len(data), step):
            lba, chunk = (offset + start) // BLOCK, data[start:start + step]
            self._io("WRITE(10)", lambda a=lba, c=chunk: self.lun.write(a, c))


def handle(disks: list[LunDisk], request: dict[str, Any]) -> dict[str, Any]:
    """One control request -> its reply (``ok`` and the result, or ``error`` and ``kind``),
    sent on the LUN's session between two of its data commands."""
    op, index = request.get("op"), request.get("lun")
    if op not in OPS or not isinstance(index, int) or not 1 <= index <= len(disks):
        return {"ok": False, "kind": "PrError", "error": f"bad request {request!r}: op one "
                f"of {', '.join(OPS)}, lun 1..{len(disks)}"}
    with disks[index - 1].lock:
        return _pr(disks[index - 1].lun, op, request)


def _pr(lun: IscsiLun, op: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        if op == "read_keys":
            keys = lun.read_keys()
            return {"ok": True, "generation": keys.generation, "keys": list(keys.keys)}
        if op == "read_reservation":
            res = lun.read_reservation()
            return {"ok": True, "generation": res.generation, "key": res.key,
                    "type": res.type, "scope": res.scope}
        if op == "preempt":
            lun.preempt(int(request["key"]), int(request["victim"]), int(request["type"]))
        elif op == "reserve":
            lun.reserve(int(request["key"]), int(request["type"]))
        else:
            getattr(lun, op)(int(request["key"]))
        return {"ok": True}
    except pr.PrError as exc:
        return {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "kind": "PrError", "error": f"bad request {request!r}: {exc}"}


def _control(conn: socket.socket, disks: list[LunDisk]) -> None:
    with contextlib.suppress(OSError), conn, conn.makefile("rwb") as stream:
        for line in stream:
            try:
                request = json.loads(line)
            except ValueError:
                request = {}
            reply = handle(disks, request if isinstance(request, dict) else {})
            stream.write(json.dumps(reply).encode() + b"\n")
            stream.flush()


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def _thread(target: Any) -> None:
    threading.Thread(target=target, daemon=True).start()


def run(spec: dict[str, Any], stop: threading.Event) -> None:
    directory = Path(spec["dir"])
    luns = [IscsiLun(url, spec["iqn"]) for url in spec["urls"]]
    disks = [LunDisk(lun) for lun in luns]
    listeners = [_listen(nbd_socket(directory, i)) for i in range(1, len(luns) + 1)]
    control = _listen(control_socket(directory))
    for listener, disk in zip(listeners, disks, strict=True):
        _thread(lambda s=listener, d=disk: nbd.serve(s, d, _thread, lambda: not stop.is_set()))
    control.settimeout(0.2)
    (directory / "ready").write_text("ready\n")
    while not stop.is_set():
        try:
            conn, _ = control.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        _thread(lambda c=conn: _control(c, disks))
    for sock in [control, *listeners]:
        sock.close()
    for lun in luns:
        lun.close()
    for path in [control_socket(directory), *(nbd_socket(directory, i)
                                              for i in range(1, len(luns) + 1))]:
        path.unlink(missing_ok=True)


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run(json.loads(sys.argv[1]), stop)


# -- from the lab -------------------------------------------------------------------------


def start(directory: Path, host: str, iqn: str, urls: list[str]) -> subprocess.Popen:
    """Start host ``host``'s initiator serving ``urls`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ready").unlink(missing_ok=True)
    spec = {"host": host, "iqn": iqn, "urls": urls, "dir": str(directory)}
    proc = spawn([sys.executable, "-m", MARKER, json.dumps(spec)], directory / "initiator.log")
    wait_for((directory / "ready").exists, 10.0, f"initiator of {host}",
             alive=lambda: proc.poll() is None)
    return proc


def stop(pid: int, directory: Path | None = None) -> bool:
    """Stop the initiator ``pid``; True when it ran. With its ``directory``, also remove
    the sockets a killed one (a power-off) left behind."""
    stopped = stop_pid(pid, MARKER)
    if directory is not None:
        for path in [control_socket(directory), directory / "ready",
                     *directory.glob("lun-*.nbd")]:
            path.unlink(missing_ok=True)
    return stopped


def alive(pid: int) -> bool:
    return MARKER in cmdline(pid)


class PrSocketLun:
    """The :class:`gridtool.storage.pr.Reservations` port through a host initiator's
    control socket: PR commands on the session the host's guests write through."""

    def __init__(self, directory: Path, lun_index: int, timeout: float = 10.0) -> None:
        self.path = control_socket(directory)
        self.lun = lun_index
        self.timeout = timeout

    def _ask(self, op: str, **args: int) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(json.dumps({"op": op, "lun": self.lun, **args}).encode() + b"\n")
                with sock.makefile("rb") as stream:
                    reply = json.loads(stream.readline() or b"{}")
        except (OSError, ValueError) as exc:
            raise pr.PrError(f"{op}: host initiator at {self.path}: {exc}") from None
        if not reply.get("ok"):
            raise ERRORS.get(reply.get("kind", ""), pr.PrError)(reply.get("error", "no reply"))
        return reply

    def register(self, key: int) -> None:
        self._ask("register", key=key)

    def unregister(self, key: int) -> None:
        self._ask("unregister", key=key)

    def reserve(self, key: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._ask("reserve", key=key, type=int(res_type))

    def preempt(self, key: int, victim: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._ask("preempt", key=key, victim=victim, type=int(res_type))

    def read_keys(self) -> pr.Keys:
        reply = self._ask("read_keys")
        return pr.Keys(reply["generation"], tuple(reply["keys"]))

    def read_reservation(self) -> pr.Reservation:
        reply = self._ask("read_reservation")
        return pr.Reservation(reply["generation"], reply["key"], reply["type"], reply["scope"])


if __name__ == "__main__":
    main()
