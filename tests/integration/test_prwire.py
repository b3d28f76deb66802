"""Storage fencing wired end to end (issue 13 items 3 and 5), on real parts: a real tgtd,
the lab's per-host initiators (each host's one session per LUN: its guests write through
it, its agent registers on it), real etcd, libvirtd test-driver hosts whose guests name
iSCSI network disks, real agents, and a manager whose storage fencer logs in with the
managers' own IQN. One target for the module; each test has a LUN of its own (tgt keeps
registrations across sessions)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gridtool.config import Config
from gridtool.fencing.storagefence import from_config
from gridtool.lab import initiator
from gridtool.lab import iscsi as lab_iscsi
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode
from gridtool.storage import pr
from gridtool.storage.fence import FENCER_KEY_NAME
from gridtool.storage.iscsi import IscsiLun
from tests.harness.luns import qemu_io
from tests.harness.testbed import domain_xml, hold_for, lease_expiry_bound, run_cli, wait_until
from tests.integration.test_fencing import (
    host_fence,
    manager_status,
    running_manager,
    running_on,
    wait_registered,
)

HOSTS = ["hv1", "hv2"]
UUID = "22222222-3333-4444-5555-666666666666"
KEY = {h: pr.host_key(h) for h in HOSTS}
FENCER = pr.host_key(FENCER_KEY_NAME)


@dataclass
class Storage:
    target: lab_iscsi.IscsiTarget
    dirs: dict[str, Path]

    def lun(self, n: int) -> IscsiLun:
        """A session of the CLI's to LUN ``n`` (reads keys, as `fence list --storage`)."""
        return IscsiLun(self.target.url(n), lab_iscsi.CLI_INITIATOR)

    def keys(self, n: int) -> tuple[int, ...]:
        with self.lun(n) as lun:
            return lun.read_keys().keys

    def holder(self, n: int) -> pr.Reservation:
        with self.lun(n) as lun:
            return lun.read_reservation()

    def volume(self, n: int) -> str:
        return f"iscsi-{self.target.iqn}-lun{n}"

    def fencer_cfg(self, cfg: Config, iqn: str = lab_iscsi.MANAGER_INITIATOR) -> Config:
        """The managers' settings, as `lab up --storage iscsi` writes them."""
        return replace(cfg, pr_fence_initiator=iqn,
                       pr_portals=(f"{self.target.iqn}={self.target.portal}",))

    def write(self, host: str, n: int) -> subprocess.CompletedProcess:
        """One 4 KiB write through ``host``'s initiator (its guests' session) by qemu-io."""
        return qemu_io(self.dirs[host], "write -P 0x5a 0 4k", n, f"{self.target.iqn}/{n}")


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    base = tmp_path_factory.mktemp("prwire")
    target = lab_iscsi.create(base, HOSTS, luns=4, size_mb=4)
    procs = []
    try:
        lab_iscsi.start(target)
        dirs = {h: base / "initiators" / h for h in HOSTS}
        for host in HOSTS:
            procs.append(initiator.start(dirs[host], host, target.initiators[host],
                                         [target.url(n) for n in target.lun_numbers()]))
        yield Storage(target, dirs)
    finally:
        for proc in procs:
            initiator.stop(proc.pid)
        lab_iscsi.stop(target)


def lun_xml(storage: Storage, n: int, name: str = "db", uuid: str = UUID) -> str:
    """A test-driver guest whose one disk is LUN ``n`` as an iSCSI network disk."""
    disk = (f"<disk type='network' device='disk'><source protocol='iscsi' "
            f"name='{storage.target.iqn}/{n}'><host name='127.0.0.1' "
            f"port='{storage.target.port}'/></source><target dev='vda'/></disk>")
    return domain_xml(name).replace(f"<name>{name}</name>",
                                    f"<name>{name}</name><uuid>{uuid}</uuid>").replace(
        "<devices>", f"<devices>{disk}")


def guest_on_hv1(lab_hosts, store, cfg, registry, storage, n, ha=True):  # type: ignore[no-untyped-def]
    """hv1 and hv2 define the guest on LUN ``n``, their agents register through their
    initiators; the guest is started on hv1."""
    for host in HOSTS:
        lab_hosts.add(host)
        lab_hosts.conn(host).defineXML(lun_xml(storage, n))
        lab_hosts.start_agent(host, pr_backend="initiator",
                              pr_initiator_dir=str(storage.dirs[host]))
    wait_registered(registry, HOSTS)
    store.put(cfg.keys.guest_settings(UUID), encode(GuestSettings(UUID, "db", ha=ha)))
    client = IntentClient(store, cfg.keys)
    assert client.wait(client.submit("hv1", "start", UUID, "db"), 30).state == "done"
    assert storage.keys(n) == (KEY["hv1"],)
    assert (storage.holder(n).key, storage.holder(n).type) == (KEY["hv1"], pr.FENCE_TYPE)
    return client


def power_off_hv1(lab_hosts) -> float:  # type: ignore[no-untyped-def]
    """hv1 loses power: its agent and its guest are gone (its initiator, standing in for
    whatever of hv1 might still write, stays)."""
    at = time.monotonic()
    lab_hosts.stop_agent("hv1", kill=True)
    lab_hosts.conn("hv1").lookupByUUIDString(UUID).destroy()
    return at


def test_a_lost_host_is_preempted_on_the_lun_before_its_guest_runs_elsewhere(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, storage, capsys):
    """hv1 runs an HA guest on LUN 1 and is lost: the manager preempts hv1's key there
    (READ KEYS: gone), records the storage fence and restarts the guest on hv2, which
    registered first; hv1's session can no longer write the LUN, hv2's can."""
    guest_on_hv1(lab_hosts, store, cfg, registry, storage, 1)
    assert storage.write("hv1", 1).returncode == 0
    fencer = from_config(storage.fencer_cfg(cfg))
    with running_manager(cfg, store, storage_fencer=fencer):
        lost = power_off_hv1(lab_hosts)
        wait_until(lambda: running_on(lab_hosts, UUID) == ["hv2"],
                   timeout=lease_expiry_bound(cfg.ttl) + 8, what="db running on hv2")
        print(f"power-off to running on hv2: {time.monotonic() - lost:.2f} s")
        status = manager_status(store, cfg)
    assert host_fence(store, cfg, "hv1").storage == {storage.volume(1): "preempted"}
    assert any("fence=storage" in a or "storage:" in a for a in status.actions), status.actions
    assert KEY["hv1"] not in storage.keys(1)
    assert set(storage.keys(1)) == {FENCER, KEY["hv2"]}
    refused = storage.write("hv1", 1)
    assert refused.returncode == 1 and "Operation not permitted" in refused.stdout, refused
    assert storage.write("hv2", 1).returncode == 0
    code, out, _ = run_cli(cfg, capsys, "fence", "list", "--storage", "--json", "--lun",
                           storage.target.url(1), "--initiator", lab_iscsi.CLI_INITIATOR)
    assert code == 0 and '"(fencer)"' in out and '"hv2"' in out and '"hv1"' not in out, out
    created = lab_hosts.agent_events("hv2", "guest_created")
    registered = lab_hosts.agent_events("hv2", "pr_registered")
    assert registered and created and registered[-1][0] <= created[-1][0]


def test_a_preempt_the_target_refuses_means_no_recovery_and_check_critical(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, storage, capsys):
    """The managers' IQN is not in the target's ACL: the preempt is refused, nothing is
    recovered (and hv1's power fence agent is not tried instead), the failure is recorded
    and `gridtool check` says CRITICAL HOST_FENCE_FAILED."""
    guest_on_hv1(lab_hosts, store, cfg, registry, storage, 2)
    fencer = from_config(storage.fencer_cfg(cfg, "iqn.2026-12.lab.gridtool:stranger"))
    with running_manager(cfg, store, storage_fencer=fencer):
        power_off_hv1(lab_hosts)
        wait_until(lambda: getattr(host_fence(store, cfg, "hv1"), "storage", {}),
                   timeout=lease_expiry_bound(cfg.ttl) + 8, what="the refused fence recorded")
        hold_for(2.0, lambda: running_on(lab_hosts, UUID) == [], "no recovery")
        code, out, _ = run_cli(cfg, capsys, "check")
    record = host_fence(store, cfg, "hv1")
    assert record.storage == {storage.volume(2): "refused"} and record.power == ""
    assert "cannot log in" in record.storage_message
    assert code == 2 and "HOST_FENCE_FAILED" in out, out
    assert storage.keys(2) == (KEY["hv1"],)  # nothing was preempted


def test_migration_registers_the_destination_and_unregisters_the_source(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, storage):
    """A cold migration (stop with handover, start on the destination) hv1 -> hv2, then
    back: the destination registers before its start; the source unregisters after its
    handover, except while it holds the reservation (unregistering the holder would
    release it and leave the LUN open to every session)."""
    client = guest_on_hv1(lab_hosts, store, cfg, registry, storage, 3, ha=False)

    def migrate(source: str, dest: str) -> None:
        stop = client.submit(source, "stop", UUID, "db", {"handover_to": dest, "timeout": 5})
        assert client.wait(stop, 30).state == "done"
        assert client.wait(client.submit(dest, "start", UUID, "db"), 30).state == "done"

    migrate("hv1", "hv2")
    assert set(storage.keys(3)) == {KEY["hv1"], KEY["hv2"]}  # hv1 holds the reservation
    assert storage.holder(3).key == KEY["hv1"]
    migrate("hv2", "hv1")
    assert storage.keys(3) == (KEY["hv1"],) and storage.holder(3).key == KEY["hv1"]
    assert lab_hosts.agent_events("hv2", "pr_unregistered")
    assert lab_hosts.agent_events("hv1", "pr_kept")


def test_a_lun_the_host_cannot_register_on_fails_the_start_closed(  # type: ignore[no-untyped-def]
        lab_hosts, store, cfg, registry, storage):
    """LUN 4 is reserved Write Exclusive (only its holder writes) by a session of no
    host: hv1 registers, but its guest could not write, so the start fails in one line,
    the fence is given back and the guest does not run."""
    with storage.lun(4) as other:  # (the registration and reservation outlive the session)
        other.register(0x77)
        other.reserve(0x77, pr.ResType.WRITE_EXCLUSIVE)
    lab_hosts.add("hv1")
    lab_hosts.conn("hv1").defineXML(lun_xml(storage, 4))
    lab_hosts.start_agent("hv1", pr_backend="initiator", pr_initiator_dir=str(storage.dirs["hv1"]))
    wait_registered(registry, ["hv1"])
    client = IntentClient(store, cfg.keys)
    done = client.wait(client.submit("hv1", "start", UUID, "db"), 30, raise_failed=False)
    assert done.state == "failed", done
    assert done.message.startswith(f"db not started on hv1: hv1 could not register its key on "
                                   f"{storage.volume(4)}: the LUN is reserved Write Exclusive")
    assert "\n" not in done.message and running_on(lab_hosts, UUID) == []
    assert store.get(cfg.keys.fence(storage.volume(4))) is None
    assert lab_hosts.agent_events("hv1", "pr_register_failed")
