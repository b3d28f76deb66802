"""Job-queue brokers for the lab, the tests and ``bench/queue_pool.py``: Debian's
``redis-server`` and ``rabbitmq-server``, each on a free loopback port with its own
temporary directory (no system service, no persistence), stopped by PID.

RabbitMQ runs as a node of its own (``RABBITMQ_NODENAME`` with a unique name, its own
mnesia, log and cookie directory, its Erlang distribution port and epmd port free ports
too), so it never meets a system node. Erlang is slow to boot: :data:`RABBIT_START_S`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gridtool.lab.procs import LabError, free_port, port_open, spawn, stop_pid, wait_for

#: Debian's rabbitmq-server and rabbitmqctl switch to the rabbitmq user (losing the
#: environment that names the node's own directories); the programs behind them do not.
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
#: Seconds a broker may take to listen (Erlang's boot is the slow one).
REDIS_START_S = 10.0
RABBIT_START_S = 60.0


@dataclass
class Broker:
    """A running broker: its URL, its process and its directory."""

    kind: str
    port: int
    directory: Path
    proc: subprocess.Popen
    marker: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}" + ("/0" if self.kind == "redis" else "/")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); safe to call twice."""
        if self.kind == "amqp":  # the Erlang VM's children (epmd, inet_gethost) go with it
            node = self.env["RABBITMQ_NODENAME"]
            subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", node, "shutdown"],
                           env={**os.environ, **self.env}, capture_output=True, timeout=60,
                           check=False)
        stop_pid(self.proc.pid, self.marker, timeout=10.0)
        self.proc.wait(10)
        if self.kind == "amqp":  # its own epmd, started by the node on its own port
            subprocess.run(["epmd", "-port", self.env["ERL_EPMD_PORT"], "-kill"],
                           env={**os.environ, **self.env}, capture_output=True, timeout=10,
                           check=False)


def start_redis(directory: Path, port: int | None = None) -> Broker:
    """``redis-server`` on 127.0.0.1 (no persistence, its files in ``directory``)."""
    if shutil.which("redis-server") is None:
        raise LabError("redis-server is not installed (scripts/setup installs it)")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir",
                  str(directory), "--save", "", "--appendonly", "no", "--daemonize", "no",
                  "--protected-mode", "yes"], directory / "redis.log")
    broker = Broker("redis", port, directory, proc, f"127.0.0.1:{port}")
    try:
        wait_for(lambda: port_open(port), REDIS_START_S, "redis-server", alive=broker.alive)
    except LabError:
        broker.stop()
        raise
    return broker


def start_rabbitmq(directory: Path, timeout: float = RABBIT_START_S) -> Broker:
    """``rabbitmq-server`` as a node of its own on a free AMQP port (guest/guest on
    loopback, RabbitMQ's default)."""
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        raise LabError("rabbitmq-server is not installed (scripts/setup installs it)")
    port, dist, epmd = free_port(), free_port(), free_port()
    node = f"gt{uuid.uuid4().hex[:8]}@localhost"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "home").mkdir(exist_ok=True)
    (directory / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
    env = {"RABBITMQ_NODENAME": node, "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(dist), "ERL_EPMD_PORT": str(epmd),
           "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
           "RABBITMQ_LOG_BASE": str(directory / "log"),
           "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
           "RABBITMQ_PID_FILE": str(directory / "rabbit.pid"),
           "HOME": str(directory / "home")}  # the Erlang cookie
    (directory / "enabled_plugins").write_text("[].\n")
    proc = spawn([str(RABBIT_BIN / "rabbitmq-server")], directory / "rabbitmq.log", env=env)
    broker = Broker("amqp", port, directory, proc, "rabbitmq-server", env)
    try:
        wait_for(lambda: port_open(port), timeout, "rabbitmq-server", interval=0.1,
                 alive=broker.alive)
    except LabError:
        broker.stop()
        raise
    return broker
