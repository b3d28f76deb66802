"""Supervised threads (issue 12, item 11): an error nobody planned for in one of the
agent's threads ends the agent (one log line, a non-zero exit) so that systemd restarts
it, instead of leaving it running without that thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from gridtool.lab.procs import spawn
from tests.harness.testbed import wait_until

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
