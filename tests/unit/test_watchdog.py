"""``agents.lease.Watchdog`` against real character devices that are no watchdog: this
machine's ``/dev/null``, and a pseudo-terminal whose other end shows every byte the agent
writes (pets and the magic "V"). The watchdog ioctls are the only fake: no test opens the
machine's real ``/dev/watchdog`` (an armed one would reset it)."""

from __future__ import annotations

import array
import errno
import os
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.lease import WDIOC_GETTIMEOUT, WDIOC_SETTIMEOUT, HostLease, Watchdog
from gridtool.clock import Clock
from gridtool.registry.memstore import MemStore


class FakeWatchdogIoctl:
    """The two watchdog ioctls of a device that takes ``granted`` for any timeout asked."""

    def __init__(self, granted: int | None = None, error: int | None = None) -> None:
        self.granted, self.error = granted, error
        self.asked: list[int] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> object:
        buf: array.array = arg  # type: ignore[assignment]
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if request == WDIOC_SETTIMEOUT:
            self.asked.append(buf[0])
            if self.granted is None:
                self.granted = buf[0]
        elif request == WDIOC_GETTIMEOUT:
            buf[0] = self.granted if self.granted is not None else 60
        else:
            raise OSError(errno.ENOTTY, "not a watchdog ioctl")
        return 0


@pytest.fixture
def pty() -> Iterator[tuple[Path, int]]:
    """A pseudo-terminal: (the path of its device end, the descriptor that reads it)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    try:
        yield Path(os.ttyname(slave)), master
    finally:
        os.close(slave)
        os.close(master)


def written(master: int, expect: bytes = b"") -> bytes:
    """What the device end received: all of ``expect`` once it arrived (a pty may hand
    over two writes in two reads), else what one read gives within 2 s."""
    got, deadline = b"", time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            got += os.read(master, 1024)
        except BlockingIOError:
            if not expect or len(got) >= len(expect):
                return got
            time.sleep(0.01)  # the pty's delivery: bounded by the deadline
            continue
        if len(got) >= len(expect):
            return got
    return got


def test_a_plain_file_or_a_missing_path_is_no_watchdog(tmp_path: Path) -> None:
    plain, missing = tmp_path / "watchdog", tmp_path / "dev" / "watchdog"
    plain.write_bytes(b"x")
    for path, why in ((plain, "is not a character device"), (missing, "does not exist")):
        dog = Watchdog(str(path), 4.0, limit=5.0)
        assert not dog.working and why in dog.problem
        assert dog.pet() is False
        dog.close()
        dog.abandon()
    assert plain.read_bytes() == b"x" and not missing.parent.exists()


def test_the_timeout_is_set_and_read_back(pty: tuple[Path, int]) -> None:
    path, master = pty
    ioctl = FakeWatchdogIoctl()
    changes: list[str] = []
    dog = Watchdog(str(path), 4.53, limit=5.67, ioctl=ioctl,
                   on_change=lambda: changes.append(dog.problem))
    assert dog.working and written(master) == b""  # not opened before the first pet
    assert dog.pet() is True
    assert ioctl.asked == [4] and dog.timeout == 4.0  # whole seconds, the device's value
    assert dog.pet() is True and written(master, b"\0\0") == b"\0\0"
    dog.close()
    assert written(master, b"V") == b"V" and changes == []


def test_a_device_timeout_longer_than_the_lease_allows_is_refused(pty: tuple[Path, int]) -> None:
    """softdog's default is 60 s; a driver may round the asked timeout up."""
    path, master = pty
    dog = Watchdog(str(path), 4.0, limit=5.67, ioctl=FakeWatchdogIoctl(granted=60))
    assert dog.pet() is False
    assert dog.problem == "the device's timeout is 60 s, over the 5.67 s the lease allows"
    assert written(master, b"V") == b"V"  # disarmed at once, not left armed for 60 s
    at_zero = Clock(lambda: 0.0, lambda: 0.0)
    lease = HostLease(MemStore(at_zero.monotonic), 10, "hv1", lambda: None, dog, clock=at_zero)
    lease.grant()
    assert lease.arm() is False and not lease.has_watchdog and lease.watchdog_timeout == 0.0
    assert "60 s" in lease.watchdog_problem


def test_a_device_error_is_a_problem_until_a_pet_succeeds(pty: tuple[Path, int]) -> None:
    """EBUSY: systemd's RuntimeWatchdogSec holds the device."""
    path, _ = pty
    ioctl = FakeWatchdogIoctl(error=errno.EBUSY)
    seen: list[str] = []
    dog = Watchdog(str(path), 4.0, limit=5.67, ioctl=ioctl,
                   on_change=lambda: seen.append(dog.problem))
    assert dog.pet() is False and "(EBUSY)" in dog.problem and not dog.working
    assert dog.pet() is False and len(seen) == 1  # logged and reported once
    ioctl.error = None
    assert dog.pet() is True and dog.working and seen[-1] == ""


def test_a_char_device_that_is_no_watchdog_fails_without_raising() -> None:
    """/dev/null takes the pets but not the watchdog ioctls (ENOTTY), for real."""
    dog = Watchdog("/dev/null", 4.0, limit=5.67)
    assert dog.working  # a character device: nothing known against it yet
    assert dog.pet() is False and "(ENOTTY)" in dog.problem
    dog.close()


def test_a_device_nobody_opened_is_never_opened_to_disarm_it(pty: tuple[Path, int]) -> None:
    """Opening arms it: on a nowayout kernel for good. Only a predecessor's (a resumed
    lease) is opened to be disarmed."""
    path, master = pty
    dog = Watchdog(str(path), 4.0, limit=5.67, ioctl=FakeWatchdogIoctl())
    dog.close()
    assert written(master) == b""
    dog.inherit()
    dog.close()
    assert written(master, b"V") == b"V"


def test_on_a_nowayout_kernel_an_opened_device_is_petted_not_let_go(
        pty: tuple[Path, int], tmp_path: Path) -> None:
    path, master = pty
    rdev = path.stat().st_rdev
    node = tmp_path / "dev" / "char" / f"{os.major(rdev)}:{os.minor(rdev)}"
    node.mkdir(parents=True)
    (node / "nowayout").write_text("1\n")
    dog = Watchdog(str(path), 4.0, limit=5.67, ioctl=FakeWatchdogIoctl(), sysfs=tmp_path)
    assert dog.pet() is True
    dog.close()  # nothing to fence any more: but a "V" would not stop it
    assert written(master, b"\0\0") == b"\0\0" and dog.armed


def test_the_lab_emulated_watchdog_is_a_file_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    dog = Watchdog(str(path), 1.2, "emulated", limit=1.5)
    assert dog.pet() is True and path.read_bytes() == b"\0"
    dog.close()
    assert path.read_bytes() == b"V"
    path.unlink()
    path.symlink_to(tmp_path / "gone" / "watchdog")
    assert dog.pet() is False and "(ENOENT)" in dog.problem  # no exception
