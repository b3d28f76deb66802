"""The self-fence on a real QEMU host (issue 12, item 2): several HA guests whose QEMU
processes are stopped (SIGSTOP: libvirt's destroy sends SIGTERM, which a stopped process
does not act on, and waits 10 s before its SIGKILL), the host cut off etcd. Every guest
must be dead before etcd may let its fence go: the agent SIGKILLs every QEMU at once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from gridtool.config import Config
from gridtool.fencing.rules import default_margin
from gridtool.lab import qemu
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode
from tests.harness import qemu_testbed
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import lease_expiry_bound, log_events, wait_until

pytestmark = pytest.mark.qemu

#: The issue asks for 8 HA guests on one host; 64 MiB each (the guest runs from its
#: initramfs). They need not finish booting: a stopped QEMU mid-boot resists SIGTERM the
#: same way. ``GRIDTOOL_SELF_FENCE_GUESTS`` runs another number.
GUESTS = int(os.environ.get("GRIDTOOL_SELF_FENCE_GUESTS") or 8)
MEMORY_MIB = 64


def qemu_pid(host: qemu.QemuHost, name: str) -> int:
    """The guest's QEMU pid (libvirt's pid file), 0 while there is none."""
    try:
        return int((host.run_dir / "qemu" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def dead(pid: int) -> bool:
    """No such process, or a zombie: it cannot touch the disk any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_stopped_ha_qemu_guests_all_die_before_their_fences_can_expire(  # type: ignore[no-untyped-def]
        tmp_path: Path, store, cfg: Config) -> None:
    why = qemu.unavailable()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")
    proxy = CuttableProxy(cfg.endpoints[0])
    hosts = qemu_testbed.QemuHosts(tmp_path, cfg)
    stopped: list[int] = []
    try:
        host = hosts.add("hv1")
        hosts.start_agent("hv1", endpoints=(proxy.endpoint,))
        wait_until(lambda: store.get(cfg.keys.host("hv1")), 20, what="hv1 registered")
        names = [f"ha{i}" for i in range(1, GUESTS + 1)]
        client = IntentClient(store, cfg.keys)
        intents = []
        for name in names:
            dom = hosts.define("hv1", name, memory_mib=MEMORY_MIB)
            uuid = dom.UUIDString()
            store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, name, ha=True)))
            intents.append(client.submit("hv1", "start", uuid, name))
        for intent in intents:
            done = client.wait(intent, 120, raise_failed=False)
            assert done.state == "done", done.message
        pids = {n: wait_until(lambda n=n: qemu_pid(host, n), 20, what=f"{n}'s QEMU pid")
                for n in names}
        fences, _ = store.list(cfg.keys.fences)
        assert len(fences) == GUESTS and all(f.lease for f in fences), "HA fences, leased"
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)  # libvirt's destroy now waits 10 s for each
            stopped.append(pid)
        deleted: list[float] = []
        watch = store.watch_prefix(cfg.keys.fences, lambda ev: ev.kind == "delete"
                                   and deleted.append(time.time()))
        try:
            cut = time.time()
            proxy.cut()
            died: dict[str, float] = {}

            def all_dead() -> bool:
                for n, pid in pids.items():
                    if n not in died and dead(pid):
                        died[n] = time.time()
                return len(died) == len(pids)

            wait_until(all_dead, lease_expiry_bound(cfg.ttl),
                       what=f"every QEMU dead (dead: {sorted(died)})")
            wait_until(lambda: len(deleted) == GUESTS, lease_expiry_bound(cfg.ttl),
                       what="every fence expired")
        finally:
            watch.cancel()
        log = hosts.agent_log("hv1")
        [(decided, line)] = log_events(log, "self_fence")
        deadline = decided - float(line.rsplit("overdue_s=", 1)[1].split()[0])
        last = max(died.values())
        margin = default_margin(cfg.ttl)
        numbers = (f"{GUESTS} stopped HA QEMU guests: cut at 0, deadline {deadline - cut:+.3f} s, "
                   f"first dead {min(died.values()) - cut:+.3f} s, last dead {last - cut:+.3f} s "
                   f"({last - deadline:.3f} s after the deadline; margin {margin:g} s), first "
                   f"fence expired {min(deleted) - cut:+.3f} s")
        creates = [float(line.rsplit("create_s=", 1)[1]) for _, line in
                   log_events(log, "guest_created")]
        print(numbers, f"; create() took {min(creates):.2f}-{max(creates):.2f} s")
        assert last < min(deleted), f"a guest outlived its fence: {numbers}"
        assert last - deadline < margin, numbers
        assert len(log_events(log, "self_fence_kill")) == GUESTS, "each QEMU SIGKILLed"
        wait_until(lambda: len(log_events(hosts.agent_log("hv1"), "self_fenced")) == GUESTS,
                   10, what="libvirt confirming every guest gone")
    finally:
        for pid in stopped:  # whatever happened, no stopped QEMU is left behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        hosts.close()
        proxy.close()
