"""What the Xen tier's modules share (tests/integration/test_xen*.py): the module-scoped
lab (one per module: a dom0 takes minutes to boot under TCG), its config, store and
registry, and reading a guest's state and fences.

A module makes its lab with ``xen_lab = lab_fixture("name", hosts=N)`` and takes the
rest by importing them: ``cfg, store, registry = xenbed.cfg, xenbed.store, xenbed.registry``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gridtool.config import Config, load
from gridtool.fencing.rules import observe
from gridtool.lab import lab as labmod
from gridtool.lab import xenimage, xenlab
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from gridtool.registry.model import ACTIVE_STATES
from gridtool.registry.settings import set_desired_after
from tests.harness.testbed import wait_until

#: The agents' lease TTL: at load 5 a TCG dom0 busy with a libxl start (150 s) missed a
#: 10 s lease's keepalives (event=self_fence reason=lease_deadline); at load 11-12 (other
#: engineers' benches on the 2 cores) hv1's agent lost a 30 s lease during its first
#: guest's start (host lost, the check failed).
TTL = 60
#: A PV guest's start through libxl under TCG: 53-66 s at load 3-5, 150 s seen at load 5-7.
START_S = 600
#: A command in a dom0 over ssh (TCG on a shared machine: slow), and ssh's own failure.
SSH_TIMEOUT = 300.0
SSH_FAILED = 255


def lab_fixture(name: str, hosts: int, ttl: int = TTL) -> Callable[..., Any]:
    """A module-scoped fixture: a Xen lab of ``hosts`` dom0s (the image built first if
    the cache lacks it), taken down after the module."""

    @pytest.fixture(scope="module")
    def xen_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
        xenimage.build()  # cached: a no-op after the first build
        directory = tmp_path_factory.mktemp(name) / "lab"
        state = labmod.up(directory, hosts=hosts, guests=0, hypervisor="xen", ttl=ttl)
        try:
            yield state
        finally:
            labmod.down(directory)

    return xen_lab


@pytest.fixture(scope="module")
def cfg(xen_lab: dict[str, Any]) -> Config:
    return load(xen_lab["config"], env={})


@pytest.fixture(scope="module")
def store(cfg: Config) -> Iterator[EtcdStore]:
    s = EtcdStore(cfg)
    yield s
    s.close()


@pytest.fixture(scope="module")
def registry(store: EtcdStore, cfg: Config) -> Registry:
    return Registry(store, cfg.keys)


@pytest.fixture
def no_guest_left_running(store: EtcdStore, cfg: Config,
                          registry: Registry) -> Iterator[None]:
    """After a check, every guest the registry shows running on a registered dom0 is
    stopped through its agent, as ``guest stop`` does (desired state stopped, then a clean
    stop: its fences go). The checks share dom0s of one emulated CPU each, and a guest's
    10 heartbeats and 10 disk records a second keep its dom0 busy: with three earlier
    checks' guests left running on hv1, moved1's start took 206 s and hv1's agent lost
    its lease."""
    yield
    client = IntentClient(store, cfg.keys)
    for name in sorted(h.name for h in registry.list_hosts()[0]):
        for rec in registry.guests_of(name)[0].values():
            if rec.state in ACTIVE_STATES:
                set_desired_after(store, cfg.keys, rec.uuid, rec.name, "stop")
                client.wait(client.submit(name, "stop", rec.uuid, rec.name, {"timeout": 30}),
                            START_S)


def host(xen_lab: dict[str, Any], name: str) -> xenlab.XenHost:
    return xenlab.XenHost.from_dict(next(h for h in xen_lab["hosts"] if h["name"] == name))


def in_dom0(xen_host: xenlab.XenHost, command: str,
            timeout: float = SSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the dom0, again while ssh itself fails (exit 255: a TCG dom0 on
    a loaded machine misses ssh's 10 s banner exchange; seen at load 9)."""
    done: list[subprocess.CompletedProcess[str]] = []

    def connected() -> bool:
        done[:] = [xen_host.ssh(command, timeout)]
        return done[0].returncode != SSH_FAILED

    wait_until(connected, timeout, what=f"ssh to {xen_host.name}'s dom0 for {command!r}")
    return done[0]


def holder(store: EtcdStore, cfg: Config, volume: str) -> str | None:
    """The host holding ``volume``'s fence (None: no fence, or unreadable)."""
    item = store.get(cfg.keys.fence(volume))
    obs = observe(volume, item.value if item else None, item.mod_revision if item else 0)
    return getattr(getattr(obs, "fence", None), "holder", None)


def state_of(registry: Registry, on: str, uuid: str) -> str | None:
    rec = registry.guests_of(on)[0].get(uuid)
    return rec.state if rec else None


def start(store: EtcdStore, cfg: Config, on: str, uuid: str, name: str,
          wait_running: bool = True) -> None:
    """Start guest ``uuid`` on ``on`` through its agent (libxl, the fence hook); then wait
    until the registry says it runs there (unless ``wait_running`` is false)."""
    client = IntentClient(store, cfg.keys)
    client.wait(client.submit(on, "start", uuid, name), START_S)
    if wait_running:
        registry = Registry(store, cfg.keys)
        wait_until(lambda: state_of(registry, on, uuid) == "running", 300,
                   what=f"{name} running on {on}")


def journals(xen_lab: dict[str, Any], names: list[str],
             units: tuple[str, ...] = ("libvirtd", "gridtool-agent"), lines: int = 60) -> str:
    """The last ``lines`` of each unit's journal in each named dom0 (a failed check's
    evidence: the lab goes down with the module)."""
    out = []
    for name in names:
        for unit in units:
            try:
                shown = host(xen_lab, name).ssh(
                    f"journalctl -b -o short-monotonic -u {unit} | tail -n {lines}", 120).stdout
            except subprocess.TimeoutExpired:
                shown = "(ssh did not finish in 120 s)"
            out.append(f"--- {name}: {unit} ---\n{shown}")
    return "\n".join(out)
