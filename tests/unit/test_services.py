"""The daemons under systemd: sd_notify (READY, WATCHDOG), the journald log format, the
jittered reconnect schedule, and ``systemd-analyze verify`` on every unit we ship."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridtool.backoff import Backoff
from gridtool.bootstrap.rules import PACKAGE_LAYOUT, Layout, render_unit
from gridtool.sdnotify import Notifier, socket_address, watchdog_interval
from tests.harness import ROOT
from tests.harness.units import can_verify, verify_unit

UNITS = ROOT / "scripts" / "systemd"


# -- sd_notify ------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A real datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock`` (non-blocking once the first arrived)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2.0)


def test_ready_once_then_pets_at_most_every_quarter_timeout(notify_socket: socket.socket
                                                            ) -> None:
    now = [100.0]
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "8000000",
           "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(env, monotonic=lambda: now[0])
    assert n.interval == 4.0  # half the 8 s timeout
    n.ready("hv1: registered and resynced")
    n.ready("again")
    n.pet()
    n.pet()  # too soon: not sent
    now[0] += 2.0
    n.pet()
    n.stopping("stopping hv1")
    assert received(notify_socket) == [
        "READY=1\nSTATUS=hv1: registered and resynced", "WATCHDOG=1", "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping hv1"]


def test_abstract_socket_and_outside_systemd() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"gridtool-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    with sock:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    silent = Notifier({})
    silent.ready("up")
    silent.pet()
    assert not silent.ready_sent and silent.interval is None
    assert socket_address({"NOTIFY_SOCKET": "relative"}) is None


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("20000000", "", 10.0), ("20000000", "self", 10.0), ("20000000", "1", None),
    ("0", "", None), ("x", "", None), ("", "", None)])
def test_the_watchdog_is_ours_only_when_systemd_says_so(usec: str, pid: str,
                                                        expected: float | None) -> None:
    env = {"WATCHDOG_USEC": usec}
    if pid:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    assert watchdog_interval(env) == expected


def test_a_vanished_socket_is_no_error(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"})
    n.ready("up")
    n.pet()
    assert not n.ready_sent  # tried again on the next call


# -- the jittered reconnect schedule ----------------------------------------------


def test_fifty_clients_first_retries_are_spread_not_in_lockstep() -> None:
    """After an outage every agent fails at once; their first retries must spread over
    the whole window (full jitter), not land together (a fixed or equal-jitter delay)."""
    firsts = [Backoff(first=0.2, limit=5.0).next() for _ in range(50)]
    assert all(0.0 <= d <= 0.2 for d in firsts)
    assert len({round(d, 6) for d in firsts}) == 50
    assert max(firsts) - min(firsts) > 0.1  # spread over more than half the window
    assert statistics.pstdev(firsts) > 0.03  # uniform on [0, 0.2]: 0.058


def test_the_schedule_grows_exponentially_and_stays_bounded() -> None:
    clients = [Backoff(first=0.2, limit=5.0) for _ in range(200)]
    rounds = [[c.next() for c in clients] for _ in range(12)]
    for n, delays in enumerate(rounds):
        ceiling = min(5.0, 0.2 * 2 ** n)
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # the window really widens to the ceiling
    assert clients[0].attempts == 12
    clients[0].reset()
    assert clients[0].attempts == 0 and clients[0].next() <= 0.2


def test_a_long_outage_never_overflows() -> None:
    b = Backoff(first=0.2, limit=5.0)
    assert all(b.next() <= 5.0 for _ in range(3000))


# -- logs under journald ------------------------------------------------------------

LOG_SCRIPT = """
import logging
from gridtool import logsetup
logsetup.configure("INFO")
log = logging.getLogger("gridtool.agent")
log.debug("event=hidden")
log.info("event=agent_start host=hv1")
log.warning("event=registry_lost host=hv1")
log.error("event=host_name_taken host=hv1")
log.critical("event=two_lines\\nsecond line")
"""


def run_logging(stderr_path: Path, journal_stream: str | None) -> list[str]:
    """The daemons' log set-up in a process of its own, stderr into ``stderr_path``."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_path.open("w") as err:
        subprocess.run([sys.executable, "-c", LOG_SCRIPT], stderr=err, env=env, check=True,
                       cwd=ROOT, timeout=60)
    return stderr_path.read_text().splitlines()


def test_under_journald_each_line_has_its_priority_and_no_time(tmp_path: Path) -> None:
    out = tmp_path / "stderr"
    out.touch()
    st = out.stat()
    lines = run_logging(out, f"{st.st_dev}:{st.st_ino}")
    assert lines == ["<6>INFO event=agent_start host=hv1",
                     "<4>WARNING event=registry_lost host=hv1",
                     "<3>ERROR event=host_name_taken host=hv1",
                     "<2>CRITICAL event=two_lines", "<2>second line"]
    # what journalctl -p warning keeps: priorities 0-4
    assert [ln for ln in lines if int(ln[1]) <= 4] == lines[1:]


@pytest.mark.parametrize("stream", [None, "1:2", "garbage"])
def test_elsewhere_lines_keep_their_time_stamp(tmp_path: Path, stream: str | None) -> None:
    """No JOURNAL_STREAM, or one naming another file (stderr redirected since)."""
    lines = run_logging(tmp_path / "stderr", stream)
    assert len(lines) == 5 and not any(ln.startswith("<") for ln in lines)
    assert lines[1].split()[2:] == ["WARNING", "event=registry_lost", "host=hv1"]
    assert lines[1][:2] == "20"  # 2026-12-02 ...


# -- systemd-analyze verify ---------------------------------------------------------


def verify(tmp_path: Path, unit: str, name: str, programs: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return verify_unit(tmp_path / "root", unit, name,
                       {path: Path(src) for path, src in (programs or {}).items()})


needs_systemd = pytest.mark.skipif(not can_verify(), reason="systemd-analyze is not installed")


@needs_systemd
@pytest.mark.parametrize("name", ["gridtool-agent.service", "gridtool-manager.service"])
def test_the_units_verify_with_their_programs_where_the_packages_put_them(
        tmp_path: Path, name: str) -> None:
    unit = (UNITS / name).read_text()
    program = "/usr/bin/" + name.removesuffix(".service").replace("-manager", "")
    done = verify(tmp_path, unit, name, {program: sys.executable})
    assert done.returncode == 0, done.stderr
    assert verify(tmp_path / "bare", unit, name).returncode != 0  # no program: fails


@needs_systemd
def test_the_agent_unit_as_host_add_renders_it_verifies(tmp_path: Path) -> None:
    layout = Layout("/", "/opt/gridtool/venv")
    unit = render_unit((UNITS / "gridtool-agent.service").read_text(), layout,
                       images_dir="/srv/images", hook_socket="/run/gt/hook.sock")
    done = verify(tmp_path, unit, "gridtool-agent.service", {layout.agent: sys.executable})
    assert done.returncode == 0, done.stderr
    assert "ReadWritePaths=/run/libvirt -/srv/images -/var/lib/xen -/var/log/xen -/run/xen " \
        "-/run/xen-hotplug /run/gt\n" in unit


def test_the_agent_unit_is_supervised_not_tied_to_libvirtd() -> None:
    unit = (UNITS / "gridtool-agent.service").read_text()
    settings = [ln for ln in unit.splitlines() if ln and not ln.startswith("#")]
    assert not any(ln.startswith(("Requires=", "BindsTo=", "PartOf=")) for ln in settings)
    assert {"Type=notify", "NotifyAccess=main", "WatchdogSec=60", "Restart=always",
            "Wants=network-online.target libvirtd.service",
            "ReadWritePaths=/run/libvirt -/var/lib/gridtool/images -/var/lib/xen "
            "-/var/log/xen -/run/xen -/run/xen-hotplug",
            "RuntimeDirectory=gridtool"} <= set(settings)
    # the template is the packaged unit: the rendering for the package changes nothing
    assert render_unit(unit, PACKAGE_LAYOUT) == unit
    assert f"ExecStart={PACKAGE_LAYOUT.agent} --config /etc/gridtool/agent.conf" in settings


def test_the_manager_unit_passes_the_password_as_a_credential() -> None:
    settings = (UNITS / "gridtool-manager.service").read_text().splitlines()
    assert "DynamicUser=yes" in settings
    (cred,) = [ln for ln in settings if ln.startswith("LoadCredential=")]
    name, _, path = cred.removeprefix("LoadCredential=").partition(":")
    assert name == "password_file" and path.startswith("/etc/gridtool/")


@needs_systemd
def test_the_pool_feed_unit_template_verifies_as_an_instance(tmp_path: Path) -> None:
    unit = (UNITS / "gridtool-pool-feed@.service").read_text()
    done = verify(tmp_path, unit, "gridtool-pool-feed@web.service",
                  {"/usr/bin/gridtool": sys.executable})
    assert done.returncode == 0, done.stderr


def test_the_pool_feed_unit_runs_as_the_pools_reporter_with_its_credential() -> None:
    settings = (UNITS / "gridtool-pool-feed@.service").read_text().splitlines()
    assert {"DynamicUser=yes", "Restart=on-failure", "RestartPreventExitStatus=2 3"} <= \
        set(settings)
    (cred,) = [ln for ln in settings if ln.startswith("LoadCredential=")]
    assert cred == "LoadCredential=password_file:/etc/gridtool/credentials/pool-%i.password"
    (start,) = [ln for ln in settings if ln.startswith("ExecStart=")]
    assert "pool feed %i --from ${FEED_FROM} --queue ${FEED_QUEUE}" in start
