"""Header helpers and selector matching."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

from reference_impl.driver.packet import (
    MalformedPacket,
    checksum,
    ecn_decapsulate,
    flow_of,
    ipv4_header,
    parse_ip,
)
from reference_impl.driver.selectors import SelectorMatcher
from reference_impl.sa import TrafficSelector


def _naive(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(max_size=300))
def test_checksum_matches_rfc1071_loop(data: bytes) -> None:
    assert checksum(data) == _naive(data)


def test_checksum_edge_cases() -> None:
    assert checksum(b"") == checksum(b"\x00\x00") == 0xFFFF
    assert checksum(b"\xff\xff") == 0
    assert checksum(b"\x01") == _naive(b"\x01")


@given(
    tos=st.integers(0, 255),
    length=st.integers(20, 65535),
    ident=st.integers(0, 65535),
    frag=st.integers(0, 65535),
    ttl=st.integers(0, 255),
    proto=st.integers(0, 255),
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
)
def test_ipv4_header_checksum(
    tos: int, length: int, ident: int, frag: int, ttl: int, proto: int, src: bytes, dst: bytes
) -> None:
    h = ipv4_header(
        tos=tos,
        total_length=length,
        ident=ident,
        flags_fragment=frag,
        ttl=ttl,
        protocol=proto,
        src=src,
        dst=dst,
    )
    assert _naive(h) in (0, 0xFFFF) or checksum(h) == 0
    assert checksum(h[:10] + b"\x00\x00" + h[12:]) == int.from_bytes(h[10:12], "big")


def test_parse_errors() -> None:
    for bad in (b"", b"\x45" * 10, b"\x46" + bytes(19), b"\x30" + bytes(40), b"\x60" + bytes(20)):
        with pytest.raises(MalformedPacket):
            parse_ip(bad)
    six = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP())
    with pytest.raises(MalformedPacket):
        parse_ip(six[:44])  # the hop-by-hop header runs past the end


def test_flow_of() -> None:
    f = flow_of(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=80)))
    assert (f.version, f.protocol, f.sport, f.dport) == (4, 6, 5, 80)
    assert f.src == int(ipaddress.ip_address("10.0.0.1"))
    icmp = flow_of(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, code=0)))
    assert (icmp.sport, icmp.dport) == (0x0800, 0x0800)
    frag = flow_of(bytes(IP(src="10.0.0.1", dst="10.0.0.2", frag=10, proto=17) / (b"x" * 8)))
    assert frag.sport is None
    v6frag = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrFragment(offset=3, nh=17)
        / (b"\x00" * 8)
    )
    f6 = flow_of(v6frag)
    assert (f6.version, f6.protocol, f6.sport) == (6, 17, None)


def test_selector_matching() -> None:
    m = SelectorMatcher(
        [
            TrafficSelector.from_network("10.0.0.0/8", 17, 1000, 2000),
            TrafficSelector.from_network("10.0.0.0/8", 1),
        ],
        [TrafficSelector.from_network("192.0.2.0/24")],
    )
    assert m.simple is None and not m.match_all

    def flow(proto: object) -> bytes:
        return bytes(IP(src="10.1.1.1", dst="192.0.2.9") / proto)  # type: ignore[operator]

    assert m.matches(flow_of(flow(UDP(sport=1500, dport=9))))
    assert not m.matches(flow_of(flow(UDP(sport=999, dport=9))))
    assert not m.matches(flow_of(flow(TCP(sport=1500))))
    assert m.matches(flow_of(flow(ICMP())))
    # OPAQUE ports (a non-first fragment) only match a full port range.
    frag = bytes(IP(src="10.1.1.1", dst="192.0.2.9", frag=5, proto=17) / (b"x" * 8))
    assert not m.matches(flow_of(frag))
    wide = SelectorMatcher([TrafficSelector.from_network("10.0.0.0/8", 17)], [])
    assert wide.matches(flow_of(frag))
    assert SelectorMatcher([], []).match_all
    simple = SelectorMatcher(
        [TrafficSelector.from_network("10.0.0.0/8")], [TrafficSelector.from_network("192.0.2.0/24")]
    )
    assert simple.simple is not None
    assert simple.matches(flow_of(flow(TCP())))
    six = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP())
    assert not simple.matches(flow_of(six))


def test_ecn_decapsulation_table() -> None:
    """RFC 6040 §4.2 Figure 4, row by row (None = drop)."""
    table = {
        0: (0, 0, 0, None),
        2: (2, 2, 1, 3),
        1: (1, 1, 1, 3),
        3: (3, 3, 3, 3),
    }
    for inner, row in table.items():
        for outer, expected in zip((0, 2, 1, 3), row, strict=True):
            assert ecn_decapsulate(inner, outer) == expected, (inner, outer)
