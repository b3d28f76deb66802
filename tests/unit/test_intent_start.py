"""The agent's start intent for an HA guest over the in-memory store and a fake libvirt:
the guest's fence taken before it runs, and its settings read once (a start is a chain
of registry round trips in series: at fleet scale each one is paid per guest)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from agents.claims import GuestClaims
from agents.fencer import Fencer
from agents.intents import IntentWorker
from agents.lease import HostLease
from gridtool.config import Config
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord
from gridtool.registry.records import GuestSettings, Intent, decode, encode
from gridtool.registry.store import Item
from tests.sim.fakevirt import FakeHost, FakeLibvirt

KEYS = Config().keys
UUID = "66666666-7777-8888-9999-000000000000"


class Reads(MemStore):
    """The in-memory store, counting the gets of each key."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.0)
        self.gets: Counter[str] = Counter()

    def get(self, key: str) -> Item | None:
        self.gets[key] += 1
        return super().get(key)


def test_a_start_takes_the_fence_first_and_reads_the_settings_once() -> None:
    store = Reads()
    disk = Disk("vda", "/dev/etherd/e1.1", "block", shared=True, volume="aoe-e1.1")
    record = GuestRecord(UUID, "web", "hv2", "shutoff", 1, 128, 0.0, (disk,))
    store.put(KEYS.guest_settings(UUID), encode(GuestSettings(UUID, "web", ha=True)))
    lease = HostLease(store, 10, "hv2", lambda _doubt: True)
    lease.grant()
    virt = FakeHost("hv2", defined={UUID})
    fences_at_start: list[bool] = []

    def started(_uuid: str) -> None:
        fences_at_start.append(store.get(KEYS.fence("aoe-e1.1")) is not None)

    domains = FakeLibvirt(virt, lambda _xml: None,
                          lambda _uid, state: replace(record, state=state),
                          lambda _uid: "web", lambda _uid: None, started)
    worker = IntentWorker(host="hv2", store=store, keys=KEYS, domains=domains,  # type: ignore[arg-type]
                          fencer=Fencer(store, KEYS, "hv2", lambda: lease.lease), lease=lease,
                          claims=GuestClaims(), images_dir="/nonexistent",
                          on_change=lambda _u: None, judge=lambda _r: None)
    key = KEYS.intent("hv2", "i1")
    store.put(key, encode(Intent("i1", "hv2", "start", UUID, "web", 0.0, "test")))
    store.gets.clear()
    worker.handle(key)
    item = store.get(key)
    assert item is not None
    done = decode(Intent, key, item.value)
    assert done.state == "done" and done.message.startswith("web started on hv2")
    assert virt.state(UUID) == "running" and fences_at_start == [True]
    assert store.gets[KEYS.guest_settings(UUID)] == 1
