"""Which machine a host name belongs to (issue 12 item 5): the pure rule
``gridtool.registry.identity.may_register``, and how the agent reads its identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.identity import read_identity
from gridtool.errors import ConfigError
from gridtool.registry.identity import MachineIdentity, may_register
from gridtool.registry.records import HostClaim, decode, encode

ME = MachineIdentity("m-me", "boot-1", "i-new")
OLD = HostClaim("hv1", "m-other", "boot-9", "i-old", 10.0)
MINE = HostClaim("hv1", "m-me", "boot-1", "i-before", 10.0)


@pytest.mark.parametrize(("claim", "alive", "pinned", "dead", "allow", "needle"), [
    (None, False, (), False, True, "no machine claims"),
    (None, True, ("v1",), False, True, "no machine claims"),  # records before claims
    (MINE, True, ("v1",), False, True, "belongs to this machine"),  # an agent restart
    (MINE, False, ("v1",), False, True, "belongs to this machine"),  # after a long outage
    (HostClaim("hv1", "m-me", "boot-0", "i", 1), False, (), False, True, "this machine"),
    (HostClaim("hv1", "m-me", "boot-0", "i", 1), True, (), False, False, "copied machine id"),
    (HostClaim("hv1", "m-me", "", "i", 1), True, (), False, True, "this machine"),  # unknown
    (OLD, True, (), False, False, "whose lease is alive"),
    (OLD, True, (), True, False, "whose lease is alive"),  # a mark cannot beat a live lease
    (OLD, False, ("v2", "v1"), False, False, "pinned fences (v1, v2)"),
    (OLD, False, ("v1",), True, True, "confirmed dead"),
    (OLD, False, (), False, True, "holds no pinned fence"),
])
def test_who_may_register_a_host_name(claim: HostClaim | None, alive: bool,
                                      pinned: tuple[str, ...], dead: bool, allow: bool,
                                      needle: str) -> None:
    answer = may_register("hv1", ME, claim, alive, pinned, dead)
    assert (answer.allow, needle in answer.reason) == (allow, True), answer.reason
    if not allow:
        assert "\n" not in answer.reason and "hv1" in answer.reason


def test_a_refusal_names_the_owner_and_the_way_out() -> None:
    taken = may_register("hv1", ME, OLD, alive=True)
    assert "machine-id m-other, agent instance i-old" in taken.reason
    assert "this is machine-id m-me" in taken.reason
    pinned = may_register("hv1", ME, OLD, alive=False, pinned=("aoe-e1.1",))
    assert "gridtool host confirm-dead hv1" in pinned.reason


CLAIMS = st.none() | st.builds(HostClaim, host=st.just("hv1"),
                               machine=st.sampled_from(["m-me", "m-other"]),
                               boot=st.sampled_from(["", "boot-1", "boot-2"]),
                               instance=st.just("i"), at=st.just(1.0))


@given(claim=CLAIMS, alive=st.booleans(), pinned=st.lists(st.just("v1"), max_size=1),
       dead=st.booleans())
@settings(max_examples=200, deadline=None, database=None)
def test_never_two_live_machines_under_one_name(claim: HostClaim | None, alive: bool,
                                                pinned: list[str], dead: bool) -> None:
    """Another machine's live lease always wins; a machine that may still run a pinned
    guest keeps its name until an operator confirms it dead."""
    answer = may_register("hv1", ME, claim, alive, pinned, dead)
    other = claim is not None and claim.machine != ME.machine
    if other and alive:
        assert not answer.allow
    if other and pinned and not dead:
        assert not answer.allow
    if claim is None or (claim.machine == ME.machine and not alive):
        assert answer.allow


def test_the_claim_round_trips_through_the_registry_codec() -> None:
    claim = ME.claim("hv1", 12.5)
    assert decode(HostClaim, "k", encode(claim)) == claim == HostClaim(
        "hv1", "m-me", "boot-1", "i-new", 12.5)


def test_read_identity(tmp_path: Path) -> None:
    machine, boot = tmp_path / "machine-id", tmp_path / "boot_id"
    machine.write_text("  3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    boot.write_text("ac76b488-29da-41a9-bcf9-42cf88592c45\n")
    first = read_identity(str(machine), str(boot))
    second = read_identity(str(machine), str(tmp_path / "no-boot-id"))
    assert (first.machine, first.boot) == ("3d1219c7c4c5404aaa1f6d2a48adfda4",
                                           "ac76b488-29da-41a9-bcf9-42cf88592c45")
    assert second.boot == "" and first.instance != second.instance  # one per agent start


@pytest.mark.parametrize(("content", "needle"), [
    (None, "cannot read"), ("", "holds no machine id"), ("two words", "holds no machine id"),
    ("x" * 129, "holds no machine id"), (b"\xff\xfe", "holds no machine id"),
])
def test_an_unusable_machine_id_file_is_a_config_error(tmp_path: Path, content: str | bytes | None,
                                                       needle: str) -> None:
    path = tmp_path / "machine-id"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"setting 'machine_id_file': .*{needle}") as err:
        read_identity(str(path))
    assert "\n" not in str(err.value)
