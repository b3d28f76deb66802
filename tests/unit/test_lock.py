"""constraints.txt (``tools/lock.py``, ``scripts/lock``): the committed lock agrees with
setup.cfg and with the Debian package's vendored versions; the generator's rules."""

from __future__ import annotations

import re

import pytest

from tests.harness import ROOT
from tools.lock import (
    CONSTRAINTS,
    Dist,
    direct_requirements,
    disagreements,
    parse,
    render,
    setup_cfg_requirements,
    wheelhouse_faults,
)

TRIO = ("etcd-sdk-python", "grpcio", "protobuf")


def committed() -> dict[str, str]:
    return parse(CONSTRAINTS.read_text())


def test_every_setup_cfg_requirement_is_pinned_inside_its_range() -> None:
    install_requires, extras = setup_cfg_requirements()
    every = install_requires + [r for reqs in extras.values() for r in reqs]
    assert len(every) > 10
    assert disagreements(every, committed()) == []


def test_the_etcd_client_grpcio_and_protobuf_are_pinned_together_with_their_reason() -> None:
    lines = {line.split("==")[0]: line for line in CONSTRAINTS.read_text().splitlines()
             if "==" in line and not line.startswith("#")}
    for name in TRIO:
        assert "bump etcd-sdk-python, grpcio and protobuf together" in lines[name], name
    assert all("  # " in line for line in lines.values()), "a pin without its reason"


def test_the_debian_packages_vendor_the_locked_versions() -> None:
    vendored = dict(re.findall(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)",
                               (ROOT / "packaging/deb/vendor.txt").read_text()))
    pins = committed()
    assert set(TRIO) <= set(vendored)
    assert {name: pins.get(name) for name in vendored} == vendored


def test_disagreements_name_a_missing_pin_and_a_pin_out_of_range() -> None:
    pins = {"click": "8.0.4", "rich": "13.1.0", "etcd-sdk-python": "0.0.7"}
    assert disagreements(["click>=8.1", "rich>=13", "etcd_sdk_python==0.0.7", "paramiko>=3.4"],
                         pins) == ["click>=8.1: pinned to 8.0.4", "paramiko: no pin"]


def test_render_gives_each_pin_its_reason_and_leaves_out_the_project_and_pip() -> None:
    dists = [Dist("gridtool", "0.1.0", ("click>=8.1",)), Dist("pip", "25.0"),
             Dist("click", "8.5.1"), Dist("grpcio", "1.85.3", ("typing-extensions~=4.12",)),
             Dist("etcd-sdk-python", "0.0.7", ("grpcio>=1.66.2", "pytest; extra == 'dev'")),
             Dist("typing-extensions", "4.16.0"), Dist("pytest", "9.0.0"),
             Dist("orphan", "1.0")]
    text = render(dists, direct_requirements(["click>=8.1", "etcd-sdk-python==0.0.7"],
                                             {"test": ["pytest>=7"]}))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "click==8.5.1  # install_requires click>=8.1",
        "etcd-sdk-python==0.0.7  # install_requires etcd-sdk-python==0.0.7; "
        "0.0.x may change its API; bump etcd-sdk-python, grpcio and protobuf together "
        "(pinned as one)",
        "grpcio==1.85.3  # needed by etcd-sdk-python; pyetcd's generated stubs refuse "
        "grpcio < 1.66.2; bump etcd-sdk-python, grpcio and protobuf together (pinned as one)",
        "orphan==1.0  # installed by setup",
        "pytest==9.0.0  # [test] pytest>=7",  # an extra's requirement is not "needed by"
        "typing-extensions==4.16.0  # needed by grpcio",
    ]
    assert parse(text) == {"click": "8.5.1", "etcd-sdk-python": "0.0.7", "grpcio": "1.85.3",
                           "orphan": "1.0", "pytest": "9.0.0", "typing-extensions": "4.16.0"}


def test_parse_refuses_what_is_not_an_exact_pin() -> None:
    assert parse("# c\n\nFoo_Bar==1.0  # why\n") == {"foo-bar": "1.0"}
    with pytest.raises(ValueError, match="line 2: 'click>=8' is not NAME==VERSION"):
        parse("rich==13\nclick>=8\n")


def test_wheelhouse_faults() -> None:
    pins = {"grpcio": "1.85.3", "libvirt-python": "12.8.0"}
    good = ["gridtool-0.1.0-py3-none-any.whl", "constraints.txt",
            "grpcio-1.85.3-cp311-cp311-manylinux2014_x86_64.whl",
            "libvirt_python-12.8.0-cp311-cp311-linux_x86_64.whl"]
    assert wheelhouse_faults(good, pins) == []
    assert wheelhouse_faults([*good[1:], "grpcio-1.66.2-cp311-cp311-linux_x86_64.whl",
                              "libvirt-python-12.8.0.tar.gz"], pins) == [
        "a wheelhouse holds one gridtool-*.whl and constraints.txt (got 0 gridtool wheels): "
        "build it with scripts/build-wheelhouse",
        "grpcio-1.66.2-cp311-cp311-linux_x86_64.whl: not the pinned grpcio==1.85.3",
        "libvirt-python-12.8.0.tar.gz: not a wheel"]
