"""The agent's side of storage fencing (the fence_scsi "unfence"): before a guest whose
disks include iSCSI LUNs starts or arrives here, the host registers its own key on each
of them, on the session its guests write through, and makes sure each carries a type-5
reservation (:func:`gridtool.storage.fence.register`); after a guest left (a migration),
it removes its registration from the LUNs it no longer uses.

The back end is the setting ``pr_backend``: ``sg_persist`` on the kernel's by-path device
of the LUN (a dom0's one session to it), ``initiator`` through the lab's host initiator
(``pr.sock``; the LUN's number is its index there), or ``none``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from gridtool.config import Config
from gridtool.domains.storage import lun_id
from gridtool.storage import fence, pr

log = logging.getLogger("gridtool.agent")

BY_PATH = "/dev/disk/by-path"
#: Opens the host's port to a LUN (None: no back end).
OpenPort = Callable[[fence.Lun], pr.Reservations]


class RegistrationFailed(Exception):
    """The host could not register on a LUN; str() is the one-line reason."""


def by_path_device(lun: fence.Lun, directory: str = BY_PATH) -> str:
    """The kernel's by-path link of ``lun`` (its whole device, not a partition): the
    first name in ``directory`` whose volume id is the LUN's. PrError when the host has
    no session to it."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise pr.PrError(f"{directory}: {exc.strerror}") from None
    for name in names:
        if "-part" not in name.rpartition("-lun-")[2] and lun_id(f"{directory}/{name}") == \
                lun.volume:
            return f"{directory}/{name}"
    raise pr.PrError(f"no device of {lun.volume} in {directory}: this host is not logged "
                     "in to it")


def port_opener(cfg: Config) -> OpenPort | None:
    """The back end ``pr_backend`` names, or None."""
    if cfg.pr_backend == "initiator" and cfg.pr_initiator_dir:
        from gridtool.lab.initiator import PrSocketLun

        directory = Path(cfg.pr_initiator_dir)
        return lambda lun: PrSocketLun(directory, lun.number)
    if cfg.pr_backend == "sg_persist":
        from gridtool.storage.sgpersist import SgPersistLun

        return lambda lun: SgPersistLun(by_path_device(lun))
    return None


class Registrar:
    """Registers ``host``'s key on LUNs through ``open_port`` (None: does nothing)."""

    def __init__(self, host: str, open_port: OpenPort | None, cluster: str = "gridtool"
                 ) -> None:
        self.host = host
        self.open_port = open_port
        self.key = pr.host_key(host, cluster)
        self._unsupported: set[str] = set()  # said once each
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether this host registers at all (a back end is configured)."""
        return self.open_port is not None

    def register(self, guest: str, volumes: Iterable[str]) -> None:
        """Register on every LUN of ``volumes`` before ``guest`` runs here;
        RegistrationFailed (and ``event=pr_register_failed``) on the first that refuses."""
        if self.open_port is None:
            return
        for lun in fence.luns(volumes):
            try:
                supported = fence.register(self.open_port(lun), self.key)
            except pr.PrError as exc:
                log.error("event=pr_register_failed host=%s guest=%s volume=%s error=%s",
                          self.host, guest, lun.volume, exc)
                raise RegistrationFailed(f"{self.host} could not register its key on "
                                         f"{lun.volume}: {exc}") from None
            if supported:
                log.info("event=pr_registered host=%s guest=%s volume=%s key=%s", self.host,
                         guest, lun.volume, pr.format_key(self.key))
            else:
                self._say_unsupported(lun.volume)

    def leave(self, guest: str, volumes: Iterable[str], still_held: Collection[str]) -> None:
        """``guest`` left this host: unregister from its LUNs whose fence the host no
        longer holds, except where it holds the reservation (``fence.unregister``). A
        failure is logged, never raised (the guest runs elsewhere now; a stale
        registration only lets this host's session write)."""
        if self.open_port is None:
            return
        for lun in fence.to_leave(volumes, still_held):
            try:
                if fence.unregister(self.open_port(lun), self.key):
                    log.info("event=pr_unregistered host=%s guest=%s volume=%s", self.host,
                             guest, lun.volume)
                else:
                    log.info("event=pr_kept host=%s guest=%s volume=%s reason=it holds the "
                             "reservation", self.host, guest, lun.volume)
            except pr.PrError as exc:
                log.warning("event=pr_unregister_failed host=%s guest=%s volume=%s error=%s",
                            self.host, guest, lun.volume, exc)

    def _say_unsupported(self, volume: str) -> None:
        with self._lock:
            if volume in self._unsupported:
                return
            self._unsupported.add(volume)
        log.warning("event=pr_unsupported host=%s volume=%s note=the LUN has no persistent "
                    "reservations: it is not storage-fenced", self.host, volume)


NO_REGISTRAR = Registrar("", None)
