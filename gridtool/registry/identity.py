"""Which machine a host name belongs to, and whether an agent may register under it (pure).

Two agents with one host name (a cloned dom0, a typo in a config) would share one lease
and one set of fences: the second would resume the first's lease, release the first's
fences as orphans and start guests as if they were its own. So a host name belongs to
one machine at a time. Each agent knows its :class:`MachineIdentity` (the machine id,
the boot it runs in, and a random id of the agent process); the last one that registered
under a name is recorded in the name's :class:`~gridtool.registry.records.HostClaim`
(``machines/<host>``, no lease, so it outlives the agent). Before it touches any lease or
fence, an agent asks :func:`may_register`:

* nobody claims the name (a new host, or ``host remove`` forgot it): yes, it claims it;
* this machine claims it: yes, resuming the lease if it lives (an agent restart) -- but
  not while the lease lives and the claim is from another boot of the same machine id (a
  clone whose machine id was copied; a reboot shorter than the lease TTL passes a TTL
  later);
* another machine claims it and its lease lives: no;
* another machine claims it and its lease is gone: yes when the operator confirmed that
  machine dead (``host confirm-dead``), or when it holds no pinned fence (HA fences died
  with its lease; a pinned fence is released only by its own machine or an operator, so
  a machine that may still run a pinned guest keeps its name until then). Otherwise no.

The registration then writes the claim and the host record in ONE transaction that
compares both keys as read, so of two agents registering at once one loses and asks again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridtool.registry.records import HostClaim


@dataclass(frozen=True)
class MachineIdentity:
    """Who is asking: the machine, the boot it runs in ('' when unknown) and the agent
    process (random at each start)."""

    machine: str
    boot: str
    instance: str

    def claim(self, host: str, at: float) -> HostClaim:
        """The claim this identity writes when it registers as ``host`` at ``at``."""
        return HostClaim(host, self.machine, self.boot, self.instance, at)


@dataclass(frozen=True)
class Admission:
    """May the agent register: yes or no, and one line why."""

    allow: bool
    reason: str


def may_register(
    host: str,
    me: MachineIdentity,
    claim: HostClaim | None,
    alive: bool,
    pinned: Sequence[str] = (),
    confirmed_dead: bool = False,
) -> Admission:
    """May ``me`` register as ``host``? ``claim``: the name's claim as read (None when
    absent); ``alive``: the host record (under its lease) exists; ``pinned``: volumes of
    pinned fences held under the name; ``confirmed_dead``: an operator's mark is there."""
    if claim is None or not claim.machine:
        return Admission(True, f"no machine claims host name {host}: this one does")
    ours = claim.machine == me.machine
    same_boot = not (claim.boot and me.boot) or claim.boot == me.boot
    if ours and (same_boot or not alive):
        return Admission(True, f"host name {host} belongs to this machine")
    who = f"machine-id {claim.machine}, agent instance {claim.instance}"
    if ours:  # alive, from another boot of a machine with this very machine id
        return Admission(False, (
            f"host name {host} is in use by an agent on a machine with this machine id "
            f"({who}) that booted as {claim.boot}, not {me.boot}, and its lease is alive: "
            "a cloned machine with a copied machine id? Give it its own "
            "(systemd-machine-id-setup); after a reboot shorter than the lease TTL, start "
            "again once the old lease has expired"))
    if alive:
        return Admission(False, (
            f"host name {host} belongs to another machine ({who}) whose lease is alive; "
            f"this is machine-id {me.machine}: fix 'host' in this agent's config (a cloned "
            "dom0 or a typo?)"))
    if confirmed_dead:
        return Admission(True, f"host name {host}: its previous machine ({who}) was "
                               "confirmed dead by an operator; this machine replaces it")
    if pinned:
        return Admission(False, (
            f"host name {host} belongs to another machine ({who}); its lease is gone but it "
            f"holds pinned fences ({', '.join(sorted(pinned))}) that only it may release: "
            f"once it is powered off, run 'gridtool host confirm-dead {host}', then start "
            "this agent again"))
    return Admission(True, f"host name {host}: its previous machine ({who}) is gone and "
                           "holds no pinned fence; this machine replaces it")
