"""The manager's storage fencer (shell): the :class:`gridtool.fencing.recovery.StorageFencer`
port through SCSI-3 PR. For each LUN of the guest it logs in with an iSCSI session of its
own (libiscsi in userspace, as initiator ``pr_fence_initiator``, to the portal
``pr_portals`` names for the LUN's target), registers the fencer's key there and
PREEMPTs the lost host's (:func:`gridtool.storage.fence.preempt`), as fence_scsi does
from the fencing node. A volume that is no iSCSI LUN, whose target has no portal
configured, or whose LUN has no PR is *unsupported* (never counted as fenced: the next
method is used); anything else that fails, or takes longer than ``timeout`` (libiscsi's
login has no timeout of its own: a portal that drops packets would hold the fence for
good), is *refused* (no recovery; the gate tries again later).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

from gridtool.config import Config
from gridtool.fencing.recovery import StorageResult
from gridtool.storage import fence, pr

log = logging.getLogger("gridtool.ha.manager")

#: Seconds one LUN's login and preempt may take before it counts as refused.
TIMEOUT_S = 20.0
#: Opens a session to a LUN url as an initiator IQN (``IscsiLun``; a test may pass its own).
OpenLun = Callable[[str, str], AbstractContextManager[pr.Reservations]]


def _iscsi_lun(url: str, initiator: str) -> AbstractContextManager[pr.Reservations]:
    from gridtool.storage.iscsi import IscsiLun

    return IscsiLun(url, initiator)


class PrStorageFencer:
    """Preempts lost hosts' keys on the LUNs of their guests (see the module)."""

    def __init__(self, initiator: str, portals: Mapping[str, str],
                 open_lun: OpenLun = _iscsi_lun, cluster: str = "gridtool",
                 timeout: float = TIMEOUT_S) -> None:
        self.initiator = initiator
        self.portals = dict(portals)
        self.open_lun = open_lun
        self.cluster = cluster
        self.timeout = timeout

    def preempt(self, host: str, volumes: Sequence[str]) -> StorageResult:
        own = pr.host_key(fence.FENCER_KEY_NAME, self.cluster)
        victim = pr.host_key(host, self.cluster)
        found = {lun.volume: lun for lun in fence.luns(volumes)}
        preempted: list[str] = []
        unsupported: list[str] = []
        refused: dict[str, str] = {}
        for volume in volumes:
            lun = found.get(volume)
            url = fence.lun_url(lun, self.portals) if lun else None
            if url is None:
                why = "no portal configured for its target" if lun else "not an iSCSI LUN"
                log.warning("event=storage_fence_unsupported host=%s volume=%s reason=%s",
                            host, volume, why)
                unsupported.append(volume)
                continue
            try:
                self._within(url, own, victim)
                preempted.append(volume)
            except pr.Unsupported as exc:
                log.warning("event=storage_fence_unsupported host=%s volume=%s reason=%s",
                            host, volume, exc)
                unsupported.append(volume)
            except pr.PrError as exc:
                refused[volume] = str(exc)
        return StorageResult(tuple(preempted), refused, tuple(unsupported))

    def _preempt_on(self, url: str, own: int, victim: int) -> None:
        with self.open_lun(url, self.initiator) as port:
            fence.preempt(port, own, victim)

    def _within(self, url: str, own: int, victim: int) -> None:
        """:meth:`_preempt_on` on a thread of its own; PrError when it does not end within
        the timeout (the thread is left to its fate: its session is the fencer's own)."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                self._preempt_on(url, own, victim)
                outcome.append(None)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True, name="storage-fence")
        thread.start()
        thread.join(self.timeout)
        if not outcome:
            raise pr.PrError(f"{url}: no answer within {self.timeout:g} s")
        if outcome[0] is not None:
            raise outcome[0]


def from_config(cfg: Config) -> PrStorageFencer | None:
    """The storage fencer the settings ask for (``pr_fence_initiator``, ``pr_portals``),
    or None: no storage fencing."""
    if not cfg.pr_fence_initiator:
        return None
    return PrStorageFencer(cfg.pr_fence_initiator, fence.parse_portals(cfg.pr_portals))
