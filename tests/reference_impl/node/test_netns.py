"""Reference nodes in two network namespaces joined by a veth (root): the ``tun`` data plane
with real kernel traffic (ping, a TCP transfer), raw ESP, ESP-in-UDP and AH; a capture of the
veth shows only ESP/AH for the protected selectors; the fallback scenario with UDP 500
dropped and rejected by nftables at the peer (``request`` falls back at 3.0 s, ``require``
sends nothing in clear); malformed ESP on the raw socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.peers.base import Proposal, Scenario
from harness.peers.reference import ReferencePeer
from harness.topology import Topology, TopologySpec, open_topology
from harness.topology.base import Node

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    with open_topology("netns", TopologySpec.pair(ipv6=False), artifacts=tmp_path) as t:
        yield t


@pytest.fixture
def nodes(topo: Topology) -> Iterator[tuple[ReferencePeer, ReferencePeer]]:
    a, b = ReferencePeer(topo.node("a")), ReferencePeer(topo.node("b"))
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def ping(src: Node, dst_addr: str, src_addr: str, count: int = 3) -> bool:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", src_addr, dst_addr]
    return src.exec(argv).ok


TCP_SERVER = """
import socket, sys, hashlib
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

TCP_CLIENT = """
import socket, sys, hashlib, os
data = bytes(range(256)) * (int(sys.argv[3]) // 256)
s = socket.create_connection((sys.argv[2], 5001), source_address=(sys.argv[1], 0), timeout=20)
s.sendall(data); s.close(); print(len(data), hashlib.sha256(data).hexdigest())
"""


def tcp_transfer(a: Node, b: Node, src: str, dst: str, size: int = 2_000_000) -> None:
    """A TCP transfer from ``src`` on a to ``dst`` on b; both sides' byte counts and SHA-256
    must agree."""
    import sys

    from harness.topology.base import wait_until

    server = b.spawn("tcp-server", [sys.executable, "-c", TCP_SERVER, dst], private_run=False)
    wait_until(lambda: "listening" in server.log_text(), 10, "TCP server", alive=lambda: True)
    res = a.exec([sys.executable, "-c", TCP_CLIENT, src, dst, str(size)], timeout=60)
    assert res.ok, res.stderr
    server.wait(30)
    assert server.log_text().split()[-2:] == res.stdout.split()


def packets(pcap: Path) -> list[Any]:
    from scapy.utils import rdpcap

    return list(rdpcap(str(pcap)))


def clear_between(pkts: list[Any], a: str, b: str) -> list[Any]:
    """Packets whose IP addresses are the protected inner pair: they must never be seen."""
    from scapy.layers.inet import IP

    return [p for p in pkts if IP in p and {p[IP].src, p[IP].dst} == {a, b}]


@pytest.mark.parametrize("encap", [False, True], ids=["raw-esp", "esp-in-udp"])
def test_tunnel_ping_and_tcp_only_esp_on_the_wire(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer], encap: bool
) -> None:
    from scapy.layers.inet import IP, UDP

    na, nb = topo.node("a"), topo.node("b")
    a, b = nodes
    sc = Scenario.between(na, nb, force_encap=encap)
    a.configure(sc)
    b.configure(sc)
    cap = topo.capture()
    ia, ib = na.addresses.inner_v4, nb.addresses.inner_v4
    assert ping(na, ib, ia)  # the first ping triggers the ACQUIRE and waits in the hold queue
    assert ping(nb, ia, ib)
    tcp_transfer(na, nb, ia, ib)
    pkts = packets(cap.stop())
    assert not clear_between(pkts, ia, ib)
    esp = [p for p in pkts if IP in p and p[IP].proto == 50]
    udp_esp = [
        p
        for p in pkts
        if UDP in p and p[UDP].dport == 4500 and bytes(p[UDP].payload)[:4] != b"\0\0\0\0"
    ]
    # (tcpdump under load may miss packets: the node's own counters prove the volume.)
    if encap:
        # UDP GSO: a run of equal-sized ESP datagrams leaves as one buffer (the capture on
        # the veth sees it whole, the receiving socket gets it as UDP GRO).
        assert not esp and sum(len(bytes(p[UDP].payload)) for p in udp_esp) > 200_000
    else:
        assert not udp_esp and len(esp) > 100
    (sa,) = a.list_sas()
    assert sa.children[0].encap is encap
    assert sa.children[0].packets_out > 1400  # 2 MB in segments of at most 1360 octets
    # The SA dump's keys decrypt what was captured (the oracle's use of them).
    keys = a.keys().child[0]
    assert keys.outbound()[0] == sa.children[0].spi_out


@pytest.mark.parametrize("version", [1, 2])
def test_transport_mode_ah(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer], version: int
) -> None:
    from scapy.layers.inet import IP

    na, nb = topo.node("a"), topo.node("b")
    a, b = nodes
    sc = Scenario.between(
        na, nb, mode="transport", ike_version=version,
        ah_proposals=(Proposal.parse("HMAC_SHA2_256_128"),),
    )  # fmt: skip
    a.configure(sc)
    b.configure(sc)
    cap = topo.capture()
    A, B = na.addresses.v4, nb.addresses.v4
    assert ping(na, B, A)
    tcp_transfer(na, nb, A, B, 200_000)
    pkts = packets(cap.stop())
    ah = [p for p in pkts if IP in p and p[IP].proto == 51]
    assert len(ah) > 50
    assert not [p for p in pkts if IP in p and p[IP].proto in (1, 6)]  # no clear ICMP/TCP


PROBES = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[3])):
    s.sendto(b"probe %03d" % i, (sys.argv[2], 9999)); time.sleep(0.1)
"""


def fallback_run(topo: Topology, how: str, action: str) -> tuple[list[float], list[float], Any]:
    """a (request/require, tun) sends UDP probes every 100 ms to b, whose UDP 500 is closed
    (``how``) and which runs no IPsec at all. Returns the capture times of a's IKE packets and
    of clear probes, and a's counters."""
    import sys

    from scapy.layers.inet import IP, UDP

    na, nb = topo.node("a"), topo.node("b")
    nb.close_udp([500, 4500], how=how)  # type: ignore[arg-type]
    a = ReferencePeer(na)
    try:
        sc = Scenario.between(na, nb, mode="transport")
        a.configure(sc)
        policy = a.policy_path.read_text()
        if action == "request":
            policy = policy.replace("allow_fallback: false", "allow_fallback: true")
        a.client.load_policy(text=policy)
        cap = topo.capture()
        res = na.exec(
            [sys.executable, "-c", PROBES, na.addresses.v4, nb.addresses.v4, "60"], timeout=30
        )
        assert res.ok, res.stderr
        counters = a.counters()
        pkts = packets(cap.stop())
    finally:
        a.stop()
    ike = [
        float(p.time)
        for p in pkts
        if UDP in p and p[UDP].dport == 500 and p[IP].src == na.addresses.v4
    ]
    clear = [float(p.time) for p in pkts if UDP in p and p[UDP].dport == 9999]
    return ike, clear, counters


@pytest.mark.parametrize("how", ["drop", "reject"])
def test_request_falls_back_to_clear_at_3_s(topo: Topology, how: str) -> None:
    ike, clear, counters = fallback_run(topo, how, "request")
    assert len(ike) == 4, ike  # t = 0, 0.5, 1, 2 (policy-spec FB-09)
    assert clear, "no probe left in clear"
    assert clear[0] - ike[0] == pytest.approx(3.0, abs=0.05)  # within 50 ms
    assert len(clear) >= 25  # then every probe leaves in clear (FB-14: the held one first)
    if how == "reject":
        assert counters["node"].get("icmp_errors.3.3", 0) >= 1  # read, audited, not trusted


@pytest.mark.parametrize("how", ["drop", "reject"])
def test_require_sends_nothing_in_clear(topo: Topology, how: str) -> None:
    ike, clear, counters = fallback_run(topo, how, "require")
    assert ike and not clear
    assert counters["agent"].get("drops.hold_overflow", 0) > 0


def test_malformed_esp_on_the_raw_socket_is_counted(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    na, nb = topo.node("a"), topo.node("b")
    a, b = nodes
    sc = Scenario.between(na, nb)
    a.configure(sc)
    b.configure(sc)
    ia, ib = na.addresses.inner_v4, nb.addresses.inner_v4
    assert ping(na, ib, ia)
    dst = nb.addresses.v4
    script = (
        "import socket, os, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)\n"
        "for n in (0, 3, 8, 40, 400):\n"
        f"    s.sendto(struct.pack('>II', 0xBADC0DE, 1)[:n] + os.urandom(n), ('{dst}', 0))\n"
        "s2 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 51)\n"
        f"s2.sendto(os.urandom(64), ('{dst}', 0))\n"
    )
    import sys

    assert na.exec([sys.executable, "-c", script]).ok
    from harness.topology.base import wait_until

    wait_until(lambda: b.counters()["driver"].get("no_sa", 0) >= 3, 5, "unknown SPIs counted")
    c = b.counters()
    assert c["agent"].get("drops.unknown_spi", 0) >= 3
    assert c["node"].get("drops.internal", 0) == 0
    assert ping(na, ib, ia)  # still serving


def test_graceful_stop_removes_device_rule_and_routes(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    na, nb = topo.node("a"), topo.node("b")
    a, b = nodes
    sc = Scenario.between(na, nb)
    a.configure(sc)
    b.configure(sc)
    assert ping(na, nb.addresses.inner_v4, na.addresses.inner_v4)
    assert "ipsec0" in na.exec(["ip", "link"]).stdout
    assert "lookup 2220" in na.exec(["ip", "rule"]).stdout
    a.stop()
    assert "ipsec0" not in na.exec(["ip", "link"]).stdout
    assert "2220" not in na.exec(["ip", "rule"]).stdout
    assert "2220" not in na.exec(["ip", "route", "show", "table", "all"]).stdout
    from harness.topology.base import wait_until

    wait_until(lambda: not b.list_sas(), 5, "b saw a's Delete")


@pytest.mark.parametrize("encap", [False, True], ids=["raw-esp", "esp-in-udp"])
def test_ipv6_tunnel(tmp_path: Path, encap: bool) -> None:
    """IPv6 outer and inner addresses: raw ESP over IPv6 (the header rebuilt from the raw
    socket's packet info) and ESP-in-UDP over IPv6."""
    from scapy.layers.inet6 import IPv6

    with open_topology("netns", TopologySpec.pair(), artifacts=tmp_path) as topo:
        na, nb = topo.node("a"), topo.node("b")
        a, b = ReferencePeer(na), ReferencePeer(nb)
        try:
            sc = Scenario.between(na, nb, family=6, force_encap=encap)
            a.configure(sc)
            b.configure(sc)
            cap = topo.capture()
            ia, ib = na.addresses.inner_v6, nb.addresses.inner_v6
            assert ia and ib
            argv = ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", ia, ib]
            assert na.exec(argv).ok
            tcp_transfer(na, nb, ia, ib, 300_000)
            pkts = packets(cap.stop())
            assert not [p for p in pkts if IPv6 in p and {p[IPv6].src, p[IPv6].dst} == {ia, ib}]
            (sa,) = a.list_sas()
            assert sa.local == na.addresses.v6 and sa.children[0].encap is encap
            assert sa.children[0].packets_in > 10
        finally:
            a.stop()
            b.stop()


CLEAR_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[4], 0))  # past the node's tunnel
s.bind((sys.argv[1], 0))
s.sendto(sys.argv[3].encode(), (sys.argv[2], 9999))
"""

UDP_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999))
print("ready", flush=True)
while True:
    print("got", s.recv(2048).decode(), flush=True)
"""


def test_clear_packets_that_should_be_protected_are_discarded(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    """policy-spec §4.2 / RFC 4301 §5.2 step 3 in the tun data plane: with the SA up, a clear
    packet of the protected flow sent straight onto the wire is discarded and audited by the
    receiving node, never reaching its socket; with the node gone the same packet does (the
    control)."""
    import sys

    na, nb = topo.node("a"), topo.node("b")
    a, b = nodes
    sc = Scenario.between(na, nb, mode="transport")
    a.configure(sc)
    b.configure(sc)
    A, B = na.addresses.v4, nb.addresses.v4
    assert a.client.status()["dataplane"]["inbound_clear_check"].startswith("nfqueue ")
    assert ping(nb, A, B)  # the SA is up, ESP both ways
    listener = na.spawn("udp-listener", [sys.executable, "-c", UDP_LISTENER, A])
    listener.wait_for_log("ready", 10)
    before = a.counters()["agent"].get("drops.clear_inbound", 0)
    mark = hex(0x2220)  # the nodes' SO_MARK: this datagram leaves b in clear
    assert nb.exec([sys.executable, "-c", CLEAR_SENDER, B, A, "clear-1", mark]).ok

    from harness.topology.base import wait_until

    wait_until(
        lambda: a.counters()["agent"].get("drops.clear_inbound", 0) > before,
        10,
        "the clear datagram discarded",
    )
    audit = a.client.audit(kinds=["clear_inbound_discarded"])
    assert audit and audit[-1].get("reason") == "require", audit
    assert ping(nb, A, B)  # protected traffic still flows
    assert "got" not in listener.log_text(), "a clear packet of a protected flow was delivered"
    a.stop()  # the control: without the node the kernel delivers it
    assert "IPSEC_INTEROP_" not in na.exec(["iptables", "-w", "-S"]).stdout
    assert nb.exec([sys.executable, "-c", CLEAR_SENDER, B, A, "clear-2", mark]).ok
    listener.wait_for_log("got clear-2", 10)
    assert "got clear-1" not in listener.log_text()
