"""The local backend: loopback addresses, distinct ports, no root; closed vs filtered."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness.topology import TopologySpec, Unsupported, open_topology
from harness.topology.local import LocalNode

pytestmark = pytest.mark.usefixtures("no_leftovers")


def _probe(node: LocalNode, port: int) -> str:
    """Send one datagram to the node's port from a connected socket: refused or silence."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.connect((node.addresses.v4, node.real_port(port)))
        s.send(b"probe")
        try:
            s.recv(100)
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "silence"
        return "answer"


def test_nodes_get_distinct_loopback_addresses_and_ports(tmp_path: Path) -> None:
    with open_topology("local", TopologySpec.pair(), artifacts=tmp_path) as topo:
        a, b = topo.node("a"), topo.node("b")
        assert a.addresses.v4.startswith("127.") and b.addresses.v4.startswith("127.")
        assert a.addresses.v4 != b.addresses.v4
        assert a.addresses.ike_port != a.addresses.natt_port
        assert a.addresses.v6 is None
        assert set(topo.links) == {"a-b"}
        workdir = topo.workdir
        assert workdir.is_dir()
    assert not workdir.exists()


def test_spawned_process_logs_to_the_artifacts_and_stops(tmp_path: Path) -> None:
    with open_topology("local", TopologySpec.pair(), artifacts=tmp_path) as topo:
        proc = topo.node("a").spawn("talker", ["sh", "-c", "echo ready; exec sleep 60"])
        proc.wait_for_log("ready", timeout=5)
        assert proc.running
    assert not proc.running
    assert (tmp_path / "a" / "talker.log").read_text() == "ready\n"


def test_closed_port_is_refused_and_filtered_port_is_silent() -> None:
    with open_topology("local", TopologySpec.pair()) as topo:
        b = topo.node("b")
        assert isinstance(b, LocalNode)
        b.close_udp([500], how="reject")
        assert b.udp_policy(500) == "reject"
        assert _probe(b, 500) == "refused"
        b.close_udp([500], how="drop")
        assert b.udp_policy(500) == "drop"
        assert _probe(b, 500) == "silence"
        b.open_udp()
        assert b.udp_policy(500) == "open"
        assert _probe(b, 500) == "refused"  # nothing listens: the kernel answers


def test_what_local_cannot_do_is_unsupported_with_a_reason() -> None:
    with open_topology("local", TopologySpec.pair()) as topo:
        with pytest.raises(Unsupported) as exc:
            topo.node("a").set_loss(10)
        assert exc.value.feature == "loss"
        with pytest.raises(Unsupported, match="mount namespace"):
            topo.node("a").spawn("x", ["true"], binds={"/tmp": "/mnt"})
    with pytest.raises(Unsupported, match="router"):
        open_topology("local", TopologySpec.routed("a", "b", behind_nat=["a"])).start()


def test_a_port_in_use_cannot_be_closed_by_reject() -> None:
    with open_topology("local", TopologySpec.pair()) as topo:
        b = topo.node("b")
        assert isinstance(b, LocalNode)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((b.addresses.v4, b.real_port(500)))
            with pytest.raises(Exception, match="has a listener"):
                b.close_udp([500], how="reject")


@pytest.mark.needs_root
def test_capture_on_loopback_as_root(tmp_path: Path) -> None:
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    with open_topology("local", TopologySpec.pair(), artifacts=tmp_path) as topo:
        b = topo.node("b")
        assert isinstance(b, LocalNode)
        cap = topo.node("b").capture("b")
        assert _probe(b, 500) == "refused"
        path = cap.stop()
    udp = [p for p in rdpcap(str(path)) if UDP in p]
    assert [p[UDP].dport for p in udp] == [b.real_port(500)]
