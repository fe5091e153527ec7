"""A reference node SIGKILLed in its namespace starts again there (root).

Killed without ``close()``, the tun data plane leaves its policy-routing rule
(``not fwmark M lookup T pref P``) behind; the next node must take it over instead of failing
with "RTNETLINK answers: File exists" (found by the interop DPD case,
tests/interop/test_lifecycle_strongswan.py), serve traffic again, and leave nothing behind
when it stops gracefully.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.peers.base import Scenario
from harness.peers.reference import ReferencePeer
from harness.topology import Topology, TopologySpec, open_topology
from harness.topology.base import Node, wait_until

pytestmark = [pytest.mark.needs_root]


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    with open_topology("netns", TopologySpec.pair(ipv6=False), artifacts=tmp_path) as t:
        yield t


def _rules(node: Node, family: str) -> list[str]:
    out = node.exec(["ip", family, "rule", "show"]).stdout.splitlines()
    return [line for line in out if "lookup 2220" in line]


def test_a_killed_node_restarts_and_takes_over_its_rule(topo: Topology) -> None:
    na, nb = topo.node("a"), topo.node("b")
    a, b = ReferencePeer(na), ReferencePeer(nb)
    try:
        sc = Scenario.between(na, nb)
        a.configure(sc)
        b.configure(sc)
        a.kill()  # SIGKILL: the rule stays, the TUN device goes with the process
        assert len(_rules(na, "-4")) == len(_rules(na, "-6")) == 1
        a.start()  # "File exists" before the fix
        assert len(_rules(na, "-4")) == len(_rules(na, "-6")) == 1
        b.terminate()  # b still holds the SAs of the killed node
        a.initiate(timeout=15)
        argv = ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", na.addresses.inner_v4]
        assert na.exec([*argv, nb.addresses.inner_v4]).ok
        a.stop()
        assert _rules(na, "-4") == _rules(na, "-6") == []
        wait_until(lambda: not b.list_sas(), 5, "b saw a's Delete")
    finally:
        a.stop()
        b.stop()
