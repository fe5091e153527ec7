"""The netns backend (root): links, addresses, firewall, loss, NAT, capture, cleanup."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import system
from harness.topology import TopologySpec, open_topology, sweep
from harness.topology.netns import NetnsTopology, list_namespaces
from tests.harness.topology.leftovers import kept_alive
from tests.harness.topology.udp import echo as _echo
from tests.harness.topology.udp import ping as _ping
from tests.harness.topology.udp import probe as _probe

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("no_leftovers")]


def test_direct_pair_has_addresses_on_both_families(tmp_path: Path) -> None:
    with open_topology("netns", TopologySpec.pair(), artifacts=tmp_path) as topo:
        a, b = topo.node("a"), topo.node("b")
        assert (a.addresses.v4, b.addresses.v4) == ("198.18.0.1", "198.18.0.2")
        assert (a.addresses.v6, b.addresses.v6) == ("2001:db8::1", "2001:db8::2")
        assert a.addresses.inner_v4 == "198.19.1.1"
        assert _ping(a, b.addresses.v4) and _ping(b, a.addresses.v4)
        assert b.addresses.v6 is not None and _ping(a, b.addresses.v6)
        assert a.exec(["ip", "-o", "addr", "show", "dev", "lo"]).stdout.count("198.19.1.1") == 1
        names = [n.netns for n in topo.nodes.values()]  # type: ignore[attr-defined]
        assert all(n.startswith(topo.run.label) for n in names)
        assert set(names) <= set(list_namespaces())
    assert not set(names) & set(list_namespaces())


def test_spawned_processes_get_a_private_run() -> None:
    with open_topology("netns", TopologySpec.pair()) as topo:
        proc = topo.node("a").spawn(
            "mounts", ["sh", "-c", "grep ' /run ' /proc/self/mounts; touch /run/x; exec sleep 60"]
        )
        proc.wait_for_log("tmpfs")
        assert not Path("/run/x").exists()


def test_udp_closed_by_drop_is_silent_and_by_reject_is_refused() -> None:
    with open_topology("netns", TopologySpec.pair()) as topo:
        a, b = topo.node("a"), topo.node("b")
        _echo(b, 500)
        assert _probe(a, b.addresses.v4) == a.addresses.v4
        b.close_udp((500, 4500), how="drop")
        assert _probe(a, b.addresses.v4) == "silence"
        b.close_udp((500,), how="reject")
        assert _probe(a, b.addresses.v4) == "refused"
        assert b.addresses.v6 is not None
        assert _probe(a, b.addresses.v6) == "refused"  # icmpx: ICMPv6 too
        b.open_udp()
        assert _probe(a, b.addresses.v4) == a.addresses.v4
        assert "ipsec_interop" not in b.exec(["nft", "list", "ruleset"]).stdout


def test_outbound_close_stops_the_nodes_own_packets() -> None:
    with open_topology("netns", TopologySpec.pair()) as topo:
        a, b = topo.node("a"), topo.node("b")
        _echo(b, 500)
        a.close_udp((500,), how="drop", direction="out")
        assert _probe(a, b.addresses.v4) == "blocked"
        a.open_udp()
        a.close_udp((500,), how="reject", direction="out")
        assert _probe(a, b.addresses.v4) == "blocked"  # rejected locally: send() fails


def test_random_loss() -> None:
    with open_topology("netns", TopologySpec.pair()) as topo:
        a, b = topo.node("a"), topo.node("b")
        b.set_loss(100)
        assert not _ping(a, b.addresses.v4)
        b.set_loss(30)
        assert "numgen random mod 10000 < 3000" in b.exec(["nft", "list", "ruleset"]).stdout
        b.set_loss(0)
        assert _ping(a, b.addresses.v4)


def test_router_masquerades_nodes_behind_nat() -> None:
    spec = TopologySpec.routed("a", "b", behind_nat=["a"])
    with open_topology("netns", spec) as topo:
        a, b = topo.node("a"), topo.node("b")
        assert topo.router is not None
        assert (a.addresses.v4, b.addresses.v4) == ("198.18.1.2", "198.18.2.2")
        _echo(b, 500)
        _echo(a, 500)
        # b sees a's datagram from the router's address on b's link
        assert _probe(a, b.addresses.v4) == "198.18.2.1"
        assert b.addresses.v6 is not None
        _echo(b, 4500, family=6)
        assert _probe(a, b.addresses.v6, 4500) == "2001:db8:2::1"
        # nothing new reaches a node behind NAT
        assert _probe(b, a.addresses.v4) == "silence"
        assert set(topo.links) == {"a-router", "b-router"}


def test_capture_writes_the_links_packets(tmp_path: Path) -> None:
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    with open_topology("netns", TopologySpec.pair(), artifacts=tmp_path) as topo:
        a, b = topo.node("a"), topo.node("b")
        cap = topo.capture()
        assert _ping(a, b.addresses.v4)
        path = cap.stop()
    assert path == tmp_path / "a-b.pcap"
    icmp = [p for p in rdpcap(str(path)) if ICMP in p]
    assert [p[ICMP].type for p in icmp] == [8, 0]


def test_a_sigterm_mid_run_removes_the_namespaces() -> None:
    code = (
        "import time\n"
        "from harness.topology import open_topology, TopologySpec\n"
        "with open_topology('netns', TopologySpec.routed('a', 'b')) as topo:\n"
        "    print(topo.run.label, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    label = proc.stdout.readline().strip()
    assert len([n for n in list_namespaces() if n.startswith(label)]) == 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 128 + signal.SIGTERM
    assert not [n for n in list_namespaces() if n.startswith(label)]


def test_a_sigkilled_runs_namespaces_are_swept_by_the_next_run() -> None:
    code = (
        "import time\n"
        "from harness.topology import open_topology, TopologySpec\n"
        "topo = open_topology('netns', TopologySpec.pair()).start()\n"
        "topo.node('a').spawn('sleep', ['sleep', '600'])\n"
        "print(topo.run.label, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    label = proc.stdout.readline().strip()
    with kept_alive(label.removeprefix("ipsec-interop-")) as ours:
        proc.kill()
        proc.wait(10)
        assert ours.wait(5)
        left = [n for n in list_namespaces() if n.startswith(label)]
        assert len(left) == 2, "SIGKILL should leave the namespaces for the sweep"
    sweep()  # (the other worker's sweep may get there first: check the effect)
    assert not [n for n in list_namespaces() if n.startswith(label)]


def test_building_is_fast() -> None:
    start = time.monotonic()
    with open_topology("netns", TopologySpec.routed("a", "b", "c", behind_nat=["a"])):
        built = time.monotonic() - start
    assert built < 5.0
    assert NetnsTopology.available() == (True, "")
    assert system.which("tcpdump")
