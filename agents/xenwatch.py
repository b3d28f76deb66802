"""Xen's own list of domains beside libvirt's, for an agent in a Xen dom0.

libvirt's libxl driver does not see domains made with ``xl create``, and a stopped
xenstored or a failing libxl does not stop libvirt answering from what it remembers.
:class:`XenWatch` runs ``xl list -v`` every ``interval`` seconds (and at once when
woken: each resync) with a deadline, then reads libvirt's domains in ONE listing
(``active``: on this thread, so that the agent's main loop never waits on a libvirt call
that a slow libxl start holds up): those it counts active and those it has but not active
(a domain libvirt is still starting or receiving, which ``xl`` lists first; one listing,
so a start that ends meanwhile is in one set or the other), keeps the latest :class:`Probe` and
tells the agent (``on_probe``); the agent compares the lists and judges the host's health
(:mod:`gridtool.domains.xen`). ``xl list -l DOMID`` reads an unknown domain's disks;
``xl destroy`` stops a domain libvirt cannot.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from gridtool import supervise
from gridtool.bootstrap.rules import hook_driver
from gridtool.domains.xen import XenDomain, XlListError, parse_xl_list, parse_xl_verbose

log = logging.getLogger("gridtool.agent")

#: libvirt's listing for the watch: the uuids of its active domains, and of the others.
Listing = tuple[set[str], set[str]]

#: Seconds between probes, and how long one ``xl`` command may take (a stopped
#: xenstored makes ``xl`` block, not fail; ``xl list -v`` takes 0.4 s in a TCG dom0).
INTERVAL = 10.0
TIMEOUT = 20.0


@dataclass(frozen=True)
class Probe:
    """One ``xl list -v``: the guests Xen runs, or why it did not answer; and the uuids
    libvirt listed active right after (None: libvirt did not answer), and those it has
    defined but not active."""

    domains: tuple[XenDomain, ...] = ()
    error: str | None = None
    libvirt_active: frozenset[str] | None = None
    libvirt_inactive: frozenset[str] = frozenset()


def run_xl(args: list[str], timeout: float = TIMEOUT, xl: str = "xl") -> str:
    """``xl ARGS``'s stdout; XlError (one line) when it fails or does not finish in time."""
    try:
        done = subprocess.run([xl, *args], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise XlError(f"xl {' '.join(args)}: no answer in {timeout:g} s") from None
    except OSError as exc:
        raise XlError(f"xl {' '.join(args)}: {exc.strerror}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise XlError(f"xl {' '.join(args)} exited {done.returncode}: "
                      f"{lines[-1].strip() if lines else 'no message'}")
    return done.stdout


class XlError(Exception):
    """An ``xl`` command failed or hung."""


def probe(xl: str = "xl", timeout: float = TIMEOUT) -> Probe:
    """What Xen runs now (``xl list -v``), or the error."""
    try:
        return Probe(parse_xl_verbose(run_xl(["list", "-v"], timeout, xl)))
    except (XlError, XlListError) as exc:
        return Probe(error=str(exc))


class XenWatch:
    """Probe Xen's domains on a period, and when woken; ``latest`` is the last probe."""

    def __init__(self, on_probe: Callable[[], None], interval: float = INTERVAL,
                 xl: str = "xl", active: Callable[[], Listing | None] = lambda: None
                 ) -> None:
        self.on_probe = on_probe
        self.active = active
        self.interval = interval
        self.xl = xl
        self.latest: Probe | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()

    @classmethod
    def for_uri(cls, uri: str, on_probe: Callable[[], None],
                active: Callable[[], Listing | None] = lambda: None) -> XenWatch | None:
        """A watch when ``uri`` is a Xen (libxl) one and ``xl`` is here, else None."""
        if hook_driver(uri) != "libxl":
            return None
        xl = shutil.which("xl")
        if xl is None:
            log.warning("event=xl_missing uri=%s note=domains made behind libvirt's back "
                        "are not watched and xenstored's health is unknown", uri)
            return None
        return cls(on_probe, xl=xl, active=active)

    def start(self) -> None:
        supervise.start(self._run, "xen-watch", (self._stopping,), logger=log)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Probe now (a resync compares libvirt's list with Xen's)."""
        self._wake.set()

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            found = probe(self.xl)
            if found.error is None:
                listed = self.active()
                if listed is not None:
                    found = replace(found, libvirt_active=frozenset(listed[0]),
                                    libvirt_inactive=frozenset(listed[1]))
            self.latest = found
            self.on_probe()
            self._wake.wait(self.interval)

    def details(self, dom: XenDomain) -> XenDomain | None:
        """``dom`` with its disks (``xl list -l DOMID``); None when it is gone or is
        another domain now. XlError when ``xl`` fails otherwise."""
        try:
            found = parse_xl_list(run_xl(["list", "-l", str(dom.domid)], TIMEOUT, self.xl))
        except XlListError as exc:
            raise XlError(str(exc)) from None
        except XlError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return next((d for d in found if d.uuid == dom.uuid), None)

    def destroy(self, domid: int) -> None:
        """``xl destroy DOMID``; XlError when it fails."""
        run_xl(["destroy", str(domid)], TIMEOUT, self.xl)
