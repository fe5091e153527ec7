"""The injector: crafted octets sent from inside a topology node, seen on the wire.

``local`` (no root): UDP from a chosen port with the non-ESP marker, received by a socket on
the other node's address. ``netns`` (root): UDP from a port the node already holds (the
injector falls back to a raw socket and writes the IP/UDP headers itself), and crafted raw
ESP datagrams that the oracle then finds in the capture with the right verdicts.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from harness.probes.craft import EspCrafter, Injector, icmp_echo
from harness.probes.keys import IpsecSaEntry, KeySet
from harness.probes.oracle import check_pcap
from harness.probes.pcap import PacketKind, read_packets
from harness.topology import Topology, TopologySpec, open_topology
from reference_impl.crypto.ids import EncrId, IntegId
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector


@pytest.fixture
def local_pair(tmp_path: object) -> Iterator[Topology]:
    with open_topology("local", TopologySpec.pair()) as topo:
        yield topo


def _free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def test_udp_from_a_chosen_port_local(local_pair: Topology) -> None:
    a, b = local_pair.node("a"), local_pair.node("b")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind((b.addresses.v4, 0))
        rx.settimeout(5.0)
        port = rx.getsockname()[1]
        sport = _free_port(a.addresses.v4)
        done = Injector(a).udp([b"one", b"two"], b.addresses.v4, port, sport=sport, marker=True)
        assert (done.mode, done.count) == ("udp", 2)
        got = [rx.recvfrom(100) for _ in range(2)]
    assert [d for d, _ in got] == [b"\0\0\0\0one", b"\0\0\0\0two"]
    assert {src for _, src in got} == {(a.addresses.v4, sport)}


_HOLD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("holding", flush=True)
time.sleep(60)
"""

SA = IpsecSaEntry(
    IpsecProtocol.ESP,
    0xABC00001,
    encr_id=EncrId.ENCR_AES_CBC,
    encr_key_bits=128,
    encr_key=bytes(range(16)),
    integ_id=IntegId.AUTH_HMAC_SHA2_256_128,
    integ_key=bytes(range(32)),
    mode=Mode.TUNNEL,
    source="test",
)


@pytest.mark.needs_root
def test_raw_esp_and_udp_from_a_taken_port_netns(pair: Topology) -> None:
    a, b = pair.node("a"), pair.node("b")
    sa = IpsecSaEntry(
        **{
            **SA.__dict__,
            "src": a.addresses.v4,
            "dst": b.addresses.v4,
            "ts_src": (TrafficSelector.from_network(a.addresses.inner_v4 + "/32"),),
            "ts_dst": (TrafficSelector.from_network(b.addresses.inner_v4 + "/32"),),
        }
    )
    esp = EspCrafter(sa)
    inner = icmp_echo(a.addresses.inner_v4, b.addresses.inner_v4)
    packets = [esp.packet(inner, 1), esp.packet(inner, 2), esp.packet(inner, 2)]
    packets.append(esp.corrupt(esp.packet(inner, 3), "icv"))
    a.spawn("hold4500", [sys.executable, "-c", _HOLD, "4500"]).wait_for_log("holding")
    cap = pair.capture()
    assert Injector(a).raw(packets).count == 4
    udp = Injector(a).udp(b"\0\0\0\0ike?", b.addresses.v4, 4500, sport=4500)
    assert udp.mode == "udp-raw"  # 4500 is taken in a: headers built by the injector
    pcap = cap.stop()

    seen = list(read_packets(pcap))
    ike = [p for p in seen if p.kind == PacketKind.IKE]
    assert [(p.src, p.sport, p.dport, p.data) for p in ike] == [
        (a.addresses.v4, 4500, 4500, b"ike?")
    ]
    report = check_pcap(pcap, KeySet(ipsec=[sa]))
    r = report.sa(sa.spi)
    assert (r.packets, r.icv_good, r.icv_bad, r.replays) == (4, 3, 1, 1)
    assert r.inner_flows == {f"{a.addresses.inner_v4} > {b.addresses.inner_v4}": 3}
    assert not report.ok
