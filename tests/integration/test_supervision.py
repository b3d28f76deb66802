"""Supervised threads (issue 12, item 11): an error nobody planned for in one of the
agent's threads ends the agent (one log line, a non-zero exit) so that systemd restarts
it, instead of leaving it running without that thread."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

from gridtool.lab.procs import spawn
from tests.harness.testbed import terminate, wait_until

#: Starts the real agent with one etcd client call patched to fail with an error that
#: gridtool does not map (pyetcd's InternalServerError): the lease keepalive, which only
#: the keepalive thread sends once the agent has registered with a fresh lease.
UNMAPPED_KEEPALIVE = textwrap.dedent("""
    import sys

    import pyetcd
    import pyetcd.exceptions

    def refresh_lease(self, lease_id):
        raise pyetcd.exceptions.InternalServerError("injected: an error gridtool does not map")

    pyetcd.Etcd3Client.refresh_lease = refresh_lease
    from agents.main import main

    sys.argv[0] = "agents.main"
    main()
""")


def test_an_unmapped_etcd_error_in_the_keepalive_thread_ends_the_agent(  # type: ignore[no-untyped-def]
        lab_hosts, registry, tmp_path: Path):
    host = lab_hosts.add("hv1")
    host.write_agent_conf(lab_hosts.cfg, watchdog=False)
    script = tmp_path / "agent_unmapped_keepalive.py"
    script.write_text(UNMAPPED_KEEPALIVE)
    log = Path(host.dir, "agent.log")
    proc = spawn([sys.executable, str(script), "--config", str(host.agent_conf)], log)
    try:
        wait_until(lambda: "hv1" in {h.name for h in registry.list_hosts()[0]}, timeout=30,
                   what="hv1 registered")
        # The first keepalive is due ttl/3 after the grant; the lease would expire at ttl.
        wait_until(lambda: proc.poll() is not None, timeout=lab_hosts.cfg.ttl + 10,
                   what="the agent to exit after its keepalive thread died")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    died = [line for line in log.read_text().splitlines() if "event=thread_died" in line]
    assert proc.returncode == 70, log.read_text()[-2000:]
    assert len(died) == 1 and "thread=keepalive" in died[0], died
    assert "error=InternalServerError: injected" in died[0]


def test_a_supervised_thread_that_dies_ends_the_process_at_once() -> None:
    """The helper on its own, in a real process: the main thread would wait for ever."""
    code = textwrap.dedent("""
        import logging, sys, threading
        from gridtool import supervise

        logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")

        def work():
            raise KeyError("nobody planned for this")

        supervise.start(work, "worker")
        threading.Event().wait(60)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 70
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("CRITICAL event=thread_died thread=worker error=KeyError: ")
    assert "where=" in lines[0] and "<string>" in lines[0]


def notifications(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """The datagrams ``sock`` receives before the monotonic time ``until``, timed."""
    out = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return out


def next_notification(sock: socket.socket, until: float) -> str:
    """The next datagram ``sock`` receives before the monotonic time ``until``, or ""."""
    sock.settimeout(max(0.001, until - time.monotonic()))
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        return ""


def test_under_systemd_the_agent_says_ready_once_resynced_and_pets_while_libvirt_is_slow(
        lab_hosts, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Type=notify with WatchdogSec=, as the unit runs it: READY=1 once registered and
    resynced; WATCHDOG=1 while the main loop turns, and on while it waits on a libvirt
    call that does not answer (libvirtd stopped by SIGSTOP: the resync's listing waits,
    within its deadline, ``agents.bounded``: a slow libvirt is not a hung agent); still
    once libvirtd answers again."""
    host = lab_hosts.add("hv1")
    host.write_agent_conf(replace(lab_hosts.cfg, resync_interval=0.5), watchdog=False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}
    proc = spawn([sys.executable, "-m", "agents.main", "--config", str(host.agent_conf)],
                 Path(host.dir, "agent.log"), env=env)
    stopped = False
    try:
        deadline = time.monotonic() + 60
        while (msg := next_notification(sock, deadline)) != "" and msg == "WATCHDOG=1":
            pass  # pets come from the first turn on, before READY=1
        assert msg == "READY=1\nSTATUS=hv1: registered and resynced"
        assert "hv1" in {h.name for h in registry.list_hosts()[0]}
        pets = [m for _, m in notifications(sock, time.monotonic() + 1.6)]
        assert pets.count("WATCHDOG=1") >= 2, pets  # every 0.5 s (a quarter of 2 s)
        os.kill(host.libvirtd_pid, signal.SIGSTOP)
        stopped = True
        # Within a resync interval the main loop waits on libvirt: its pets go on, never
        # 2 s apart (systemd would fire), for 4 s.
        times = [time.monotonic(), *(t for t, m in notifications(
            sock, time.monotonic() + 4.0) if m == "WATCHDOG=1"), time.monotonic()]
        assert max(b - a for a, b in itertools.pairwise(times)) < 1.5, times
        assert "event=libvirt_error" not in Path(host.dir, "agent.log").read_text()
        os.kill(host.libvirtd_pid, signal.SIGCONT)
        stopped = False
        deadline = time.monotonic() + 10
        while (msg := next_notification(sock, deadline)) not in ("", "WATCHDOG=1"):
            pass
        assert msg == "WATCHDOG=1", "no WATCHDOG=1 after the main loop turned again"
        terminate(proc)
        assert any(m.startswith("STOPPING=1") for _, m in notifications(
            sock, time.monotonic() + 1)), "no STOPPING=1 on SIGTERM"
    finally:
        if stopped:
            os.kill(host.libvirtd_pid, signal.SIGCONT)
        if proc.poll() is None:
            terminate(proc)
        sock.close()
