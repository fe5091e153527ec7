"""Shared data for the probe tests: the real strongSwan 5.9.8 captures with every key
(../shared/data/strongswan-5.9.8: initiator 10.99.0.1, responder 10.99.0.2, PSK, tunnel mode,
TS 10.1.0.1/32 <-> 10.2.0.1/32, ESP in UDP 4500, two pings)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.topology import Topology, TopologySpec

DATA = Path("/work/shared/data/strongswan-5.9.8")
CAPTURES = ("ikev2-aescbc-modp2048", "ikev2-aesgcm-x25519", "ikev1-main-quick")
INITIATOR = "10.99.0.1"
RESPONDER = "10.99.0.2"


@dataclass(frozen=True)
class Capture:
    name: str

    @property
    def pcap(self) -> Path:
        return DATA / f"{self.name}.pcap"

    @property
    def log(self) -> str:
        return (DATA / f"{self.name}.initiator.log").read_text()

    @property
    def wireshark(self) -> str:
        return (DATA / f"{self.name}.wireshark-keys.txt").read_text()

    @property
    def version(self) -> int:
        return 1 if self.name.startswith("ikev1") else 2


@pytest.fixture(params=CAPTURES)
def capture(request: pytest.FixtureRequest) -> Capture:
    return Capture(request.param)


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Assert, after the test, that nothing labelled with this process's run remains."""
    from tests.harness.topology.leftovers import leftovers

    yield
    assert leftovers() == {}


@pytest.fixture
def pair(tmp_path: Path, no_leftovers: None) -> Iterator[Topology]:
    """Two namespaces on a direct link (root); logs and pcaps kept in the test's tmp_path."""
    from harness.topology import open_topology

    with open_topology("netns", TopologySpec.pair(), artifacts=tmp_path) as topo:
        yield topo
