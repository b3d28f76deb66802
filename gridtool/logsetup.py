"""The daemons' log set-up (agent, manager, lab keeper): one line per event on stderr.

On a terminal or into a file each line carries its time and level
(``2026-12-02 10:00:00,123 WARNING event=...``). Under journald (systemd connected
stderr to the journal: ``$JOURNAL_STREAM`` names stderr's device and inode) the journal
adds its own time stamp, so the line has none, and it starts with its syslog priority in
sd-daemon(3)'s ``<N>`` prefix, so that ``journalctl -p warning -u gridtool-agent`` shows
warnings and errors only. A message of several lines (a traceback) gets the prefix on
every line: journald stores each line as an entry of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(message)s"
#: Python's levels as syslog priorities (sd-daemon(3): <3> error ... <7> debug).
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a Python log level (anything below INFO: 7, debug)."""
    return next((prio for level, prio in PRIORITIES if levelno >= level), 7)


class JournalFormatter(logging.Formatter):
    """Each line of the record as ``<N>LEVEL message``, without a time stamp."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def to_journal(env: Mapping[str, str], stream: TextIO) -> bool:
    """Is ``stream`` the journal stream systemd set up (``$JOURNAL_STREAM`` = its
    ``DEV:INODE``)? Not when stderr was redirected elsewhere since (sd-daemon(3))."""
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (sep and dev.isdecimal() and ino.isdecimal()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def configure(level: str | int, stream: TextIO | None = None,
              env: Mapping[str, str] | None = None) -> None:
    """Log at ``level`` and up to ``stream`` (stderr) in the format for where it goes
    (``logging.basicConfig``: nothing changes when the root logger has a handler)."""
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if to_journal(env, stream)
                         else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
