"""Whether a guest stopped cleanly, from a lifecycle event or from libvirt's reason for a
shut-off state: a clean stop releases a pinned guest's fences, a crash keeps them."""

from __future__ import annotations

import libvirt
import pytest

from agents.libvirt_source import shutoff_was_clean, stop_was_clean

SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF


@pytest.mark.parametrize(("reason", "clean"), [
    (libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, True),
    (libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, True),
    (libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED, True),
    (libvirt.VIR_DOMAIN_SHUTOFF_SAVED, True),
    (libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT, True),
    (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, False),
    (libvirt.VIR_DOMAIN_SHUTOFF_FAILED, False),
    (libvirt.VIR_DOMAIN_SHUTOFF_DAEMON, False),
    (libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN, None),  # libvirtd restarted since: not known
])
def test_a_shutoff_reason_says_whether_the_stop_was_clean(reason: int,
                                                          clean: bool | None) -> None:
    assert shutoff_was_clean(SHUTOFF, reason) is clean


def test_a_state_other_than_shutoff_says_nothing() -> None:
    # a crashed (not shut off) domain: its reason is a crash reason, not a shutoff one
    assert shutoff_was_clean(libvirt.VIR_DOMAIN_CRASHED, 1) is None
    assert shutoff_was_clean(libvirt.VIR_DOMAIN_RUNNING, 1) is None


def test_stop_events_agree_with_shutoff_reasons() -> None:
    event = libvirt.VIR_DOMAIN_EVENT_STOPPED
    pairs = [(libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
             (libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED),
             (libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED),
             (libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED, libvirt.VIR_DOMAIN_SHUTOFF_SAVED),
             (libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED)]
    for detail, reason in pairs:
        assert stop_was_clean(event, detail) is shutoff_was_clean(SHUTOFF, reason)
    assert stop_was_clean(libvirt.VIR_DOMAIN_EVENT_CRASHED, 0) is False
    assert stop_was_clean(libvirt.VIR_DOMAIN_EVENT_STARTED, 0) is None
