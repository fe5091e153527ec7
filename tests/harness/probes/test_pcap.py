"""Capture reading: link layers, pcapng, fragment reassembly and classification."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

from harness.probes.keys import parse_wireshark
from harness.probes.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureStats,
    PacketKind,
    WirePacket,
    frames_of,
    ip_packet,
    read_packets,
    write_pcap,
)

from .conftest import INITIATOR, RESPONDER, Capture


def _datagrams(path: Path) -> list[WirePacket]:
    return list(read_packets(path))


def test_strongswan_captures_classified(capture: Capture) -> None:
    packets = _datagrams(capture.pcap)
    kinds = [p.kind for p in packets]
    n_ike = 9 if capture.version == 1 else 4
    assert kinds == [PacketKind.IKE] * n_ike + [PacketKind.ESP] * 4
    assert [p.frame for p in packets] == list(range(1, len(packets) + 1))
    assert all(p.time > 1.7e9 for p in packets)
    assert [p.time for p in packets] == sorted(p.time for p in packets)
    spi_i = parse_wireshark(capture.wireshark).ike[0].spi_i
    for p in packets[:n_ike]:
        # port 500 carries IKE as is; on 4500 the non-ESP marker is stripped (RFC 3948 §2.2)
        assert p.data[:8] == spi_i
        assert p.encapsulated == (p.dport == 4500)
        assert {p.src, p.dst} == {INITIATOR, RESPONDER}
    esp_spis = {e.spi for e in parse_wireshark(capture.wireshark).ipsec}
    for p in packets[n_ike:]:
        assert p.encapsulated and p.sport == p.dport == 4500
        assert int.from_bytes(p.data[:4]) in esp_spis
        assert p.offset == 28 and p.end == len(p.ip)


def _pcapng(path: Path, frames: list[tuple[float, bytes]], linktype: int) -> None:
    """A minimal pcapng (SHB, IDB, EPBs), written independently of any library."""

    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", linktype, 0, 0))
    for ts, data in frames:
        t = round(ts * 1e6)
        out += block(
            6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), len(data)) + data
        )
    path.write_bytes(out)


def test_pcapng_reads_like_pcap(tmp_path: Path, capture: Capture) -> None:
    link, frames = frames_of(capture.pcap)
    assert link == LINKTYPE_ETHERNET
    _pcapng(tmp_path / "x.pcapng", frames, link)
    a = _datagrams(capture.pcap)
    b = _datagrams(tmp_path / "x.pcapng")
    assert [(p.frame, p.kind, p.ip, p.data) for p in a] == [
        (p.frame, p.kind, p.ip, p.data) for p in b
    ]
    assert [round(p.time, 6) for p in a] == [round(p.time, 6) for p in b]


@pytest.mark.parametrize("linktype", ["raw", "sll", "sll2", "null", "vlan"])
def test_link_layers(tmp_path: Path, linktype: str) -> None:
    ips = [p.ip for p in _datagrams(Capture("ikev2-aesgcm-x25519").pcap)]
    frames: list[bytes] = []
    for ip in ips:
        if linktype == "raw":
            frames.append(ip)
        elif linktype == "sll":
            frames.append(struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ip)
        elif linktype == "sll2":
            frames.append(struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, bytes(8)) + ip)
        elif linktype == "null":
            frames.append(struct.pack("<I", 2) + ip)
        else:
            frames.append(bytes(12) + b"\x81\x00\x00\x05\x08\x00" + ip)
    lt = {
        "raw": LINKTYPE_RAW,
        "sll": LINKTYPE_LINUX_SLL,
        "sll2": LINKTYPE_LINUX_SLL2,
        "null": LINKTYPE_NULL,
        "vlan": LINKTYPE_ETHERNET,
    }[linktype]
    write_pcap(tmp_path / "x.pcap", frames, linktype=lt)
    assert [p.ip for p in _datagrams(tmp_path / "x.pcap")] == ips


def test_ipv4_fragments_reassembled_in_any_order(tmp_path: Path) -> None:
    original = next(p for p in _datagrams(Capture("ikev2-aescbc-modp2048").pcap) if p.kind == "esp")
    pieces = [bytes(f) for f in fragment(IP(original.ip), fragsize=48)]
    assert len(pieces) == 3
    random.Random(7).shuffle(pieces)
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    eth = bytes(12) + b"\x08\x00"
    frames = [eth + pieces[0], arp] + [eth + f for f in pieces[1:]]
    stats = CaptureStats()
    (pkt,) = read_packets(
        write_pcap(tmp_path / "f.pcap", frames, linktype=LINKTYPE_ETHERNET), stats=stats
    )
    assert pkt.kind == PacketKind.ESP and pkt.fragments == 3
    assert pkt.data == original.data
    assert pkt.ip[12:20] == original.ip[12:20]
    rebuilt = IP(pkt.ip[:20])
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == IP(pkt.ip).chksum  # the header checksum is fixed up
    assert stats.fragments == 3 and stats.reassembled == 1 and stats.not_ip == 1


def test_ipv6_fragments_and_incomplete_datagrams(tmp_path: Path) -> None:
    esp = bytes.fromhex("11223344") + (1).to_bytes(4) + bytes(range(200))
    whole = (
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrFragment()
        / UDP(sport=4500, dport=4500)
        / esp
    )
    pieces = [bytes(f) for f in fragment6(whole, 120)]
    assert len(pieces) >= 2
    lonely = [
        bytes(f)
        for f in fragment(
            IP(src="198.18.0.1", dst="198.18.0.2", id=9) / UDP() / bytes(300), fragsize=64
        )
    ]
    stats = CaptureStats()
    got = list(
        read_packets(write_pcap(tmp_path / "f6.pcap", pieces[::-1] + lonely[:-1]), stats=stats)
    )
    assert len(got) == 1
    (pkt,) = got
    assert pkt.version == 6 and pkt.kind == PacketKind.ESP and pkt.encapsulated
    assert pkt.data == esp
    assert pkt.fragments == len(pieces)
    assert stats.incomplete == len(lonely) - 1


def test_nat_t_port_classification() -> None:
    def udp(payload: bytes, sport: int = 4500, dport: int = 4500) -> WirePacket:
        return ip_packet(
            bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=sport, dport=dport) / payload)
        )

    assert udp(b"\xff").kind == PacketKind.NAT_KEEPALIVE  # RFC 3948 §2.3
    ike = udp(b"\0\0\0\0" + bytes(28))
    assert ike.kind == PacketKind.IKE and ike.data == bytes(28) and ike.encapsulated
    esp = udp(b"\x01\x02\x03\x04" + bytes(20), sport=40001)  # a NAT changed the source port
    assert esp.kind == PacketKind.ESP and esp.data[:4] == b"\x01\x02\x03\x04"
    assert udp(bytes(28), 500, 500).kind == PacketKind.IKE
    assert udp(b"\x01\x02", 4500, 4500).kind == PacketKind.OTHER  # too short for ESP
    assert udp(b"x", 53, 53).kind == PacketKind.OTHER
    raw = ip_packet(
        bytes(IP(src="198.18.0.1", dst="198.18.0.2", proto=50) / (b"\x00\x00\x10\x00" + bytes(12)))
    )
    assert (
        raw.kind == PacketKind.ESP and not raw.encapsulated and raw.data[:4] == b"\x00\x00\x10\x00"
    )
    ah = ip_packet(bytes(IP(proto=51) / bytes(24)))
    assert ah.kind == PacketKind.AH
    local = ip_packet(
        bytes(IP() / UDP(sport=5001, dport=5003) / (b"\0\0\0\0" + bytes(28))),
        ike_ports=(5000, 5002),
        natt_ports=(5001, 5003),
    )
    assert local.kind == PacketKind.IKE and local.encapsulated
