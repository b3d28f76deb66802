"""HA on a Xen lab: the manager runs on the lab machine (:func:`lab_machine_manager`).

A dom0 cannot pull another dom0's plug: the lab's power fence agent (``fence_gridtool_lab``)
kills a dom0's QEMU on this machine. Without a fence agent or a watchdog a host is not
protected, and the manager restarts no HA guest there; so for HA the dom0s' agents run no
manager, and one runs here with the lab's fence agent for every dom0.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from gridtool.config import Config
from gridtool.ha.manager import Manager
from gridtool.lab.lab import _configure_fence_agents
from gridtool.lab.procs import LabError, wait_for
from gridtool.lab.state import read_state
from gridtool.lab.xenlab import XenHost
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry


@contextlib.contextmanager
def lab_machine_manager(directory: Path, cfg: Config, period: float = 0.5,
                        timeout: float = 180.0) -> Iterator[None]:
    """HA on a Xen lab: a manager candidate on this (the lab) machine, where the lab's power
    fence agent can pull a dom0's plug (kill its QEMU), instead of in the dom0s (which
    cannot): every dom0 gets the lab fence agent (so it is protected: HA guests may run
    and restart there), each dom0's agent is restarted without its manager, and a
    manager runs on a thread here until the block ends."""
    hosts = [XenHost.from_dict(h) for h in (read_state(directory) or {}).get("hosts", [])]
    _configure_fence_agents(cfg, directory, [h.name for h in hosts])
    store = EtcdStore(cfg)
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        registry = Registry(store, cfg.keys)
        before = {h.name: h.instance for h in registry.list_hosts()[0]}
        for host in hosts:
            done = host.ssh("sed -i 's/^manager = .*/manager = False/' "
                            "/etc/gridtool/agent.conf && systemctl restart gridtool-agent",
                            timeout=timeout)
            if done.returncode != 0:
                raise LabError(f"{host.name}: restarting its agent without a manager: "
                               f"{(done.stderr or done.stdout).strip()}")

        def restarted() -> bool:
            now = {h.name: h.instance for h in registry.list_hosts()[0]}
            return all(now.get(h.name, before.get(h.name)) != before.get(h.name)
                       for h in hosts)

        wait_for(restarted, timeout, "the dom0s' agents to restart without a manager")
        manager = Manager(cfg, store, "lab", period=period)
        thread = threading.Thread(target=manager.run, args=(stop,), name="lab manager")
        thread.start()
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        store.close()
