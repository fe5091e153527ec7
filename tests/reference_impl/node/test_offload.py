"""TSO segmentation and GRO coalescing for the TUN device, checked against scapy's own
header building and RFC 1071 checksums computed word by word."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from reference_impl.driver.packet import checksum
from reference_impl.node.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    NO_VNET,
    VNET_HDR,
    VNET_LEN,
    Gro,
    complete_checksum,
    ones_sum,
    read_offloaded,
    tcp_checksum_ok,
    tso_segments,
)


def test_ones_sum_matches_rfc1071_word_by_word() -> None:
    rng = random.Random(1)
    for n in [0, 1, 2, 3, 20, 1399, 1400, 65535]:
        data = rng.randbytes(n)
        assert ~ones_sum(data) & 0xFFFF == checksum(data), n
    assert ones_sum(b"\xff\xff\xff\xff") == 0xFFFF and ones_sum(bytes(8)) == 0


def _super(payload: bytes, flags: str = "PA", v6: bool = False) -> bytes:
    l3 = (
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        if v6
        else IP(src="10.1.0.1", dst="10.2.0.1", id=100)
    )
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    tcp = TCP(sport=40000, dport=5001, seq=4294967000, ack=77, flags=flags, options=opts)
    return bytes(l3 / tcp / payload)


def _valid(seg: bytes, v6: bool) -> None:
    """scapy recomputes the checksums of a segment: they must equal ours."""
    p = IPv6(seg) if v6 else IP(seg)
    given = p[TCP].chksum
    del p[TCP].chksum
    rebuilt = (IPv6 if v6 else IP)(bytes(p))
    assert rebuilt[TCP].chksum == given
    if not v6:
        ip_given = p[IP].chksum
        del p[IP].chksum
        assert IP(bytes(p))[IP].chksum == ip_given


def test_tso_segments_like_the_kernel() -> None:
    for v6 in (False, True):
        payload = os.urandom(5000)
        segs = tso_segments(_super(payload, v6=v6), 1360)
        assert [len(s) for s in segs][:3] == [(40 if v6 else 20) + 32 + 1360] * 3
        parsed = [(IPv6 if v6 else IP)(s) for s in segs]
        assert b"".join(bytes(p[TCP].payload) for p in parsed) == payload
        seqs = [p[TCP].seq for p in parsed]
        assert seqs == [(4294967000 + 1360 * i) & 0xFFFFFFFF for i in range(4)]  # wraps
        assert [str(p[TCP].flags) for p in parsed] == ["A", "A", "A", "PA"]
        if not v6:
            assert [p[IP].id for p in parsed] == [100, 101, 102, 103]
        for s in segs:
            _valid(s, v6)


def test_partial_checksum_is_completed() -> None:
    pkt = bytearray(bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(flags="A") / b"ack me"))
    good = bytes(pkt)
    # the pseudo-header sum, folded and not complemented, as CHECKSUM_PARTIAL leaves it
    pseudo = bytes(pkt[12:20]) + b"\0\x06" + (len(pkt) - 20).to_bytes(2, "big")
    pkt[36:38] = ones_sum(pseudo).to_bytes(2, "big")
    assert complete_checksum(bytes(pkt), 20, 16) == good
    hdr = VNET_HDR.pack(F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    assert read_offloaded(hdr + bytes(pkt)) == [good]
    assert read_offloaded(NO_VNET + good) == [good]


def _tcp_ok(pkt: bytes) -> bool:
    p = IP(pkt)
    given = p[TCP].chksum
    del p[TCP].chksum
    return bool(IP(bytes(p))[TCP].chksum == given)


def test_gro_joins_in_sequence_segments_and_keeps_the_rest_apart() -> None:
    payload = os.urandom(6000)
    segs = tso_segments(_super(payload), 1360)
    ack = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=40000, dport=5001, flags="A"))
    syn = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(flags="S"))
    other = tso_segments(_super(os.urandom(3000)), 1360)[1]  # out of sequence
    g = Gro()
    for p in (syn, segs[0], segs[1], segs[2], other, segs[3], ack):
        g.add(p)
    g.flush()
    out = g.out
    assert [o[:VNET_LEN] == NO_VNET for o in out] == [True, False, True, True, True]
    assert VNET_HDR.unpack_from(out[1]) == (0, GSO_TCPV4, 52, 1360, 0, 0)
    merged = out[1][VNET_LEN:]
    assert bytes(IP(merged)[TCP].payload) == payload[:4080] and IP(merged)[IP].len == 52 + 4080
    assert _tcp_ok(merged) and g.merged == 2  # the checksum, from the segments' own
    ip = IP(merged)
    del ip[IP].chksum
    assert IP(bytes(ip))[IP].chksum == IP(merged)[IP].chksum
    g2 = Gro()
    for s in segs:
        g2.add(s)
    g2.flush()
    (one,) = g2.out
    assert bytes(IP(one[VNET_LEN:])[TCP].payload) == payload and _tcp_ok(one[VNET_LEN:])
    assert str(IP(one[VNET_LEN:])[TCP].flags) == "PA"
    assert all(tcp_checksum_ok(s, 20) for s in segs)


def test_gro_of_a_corrupt_segment_fails_the_whole_checksum() -> None:
    segs = tso_segments(_super(os.urandom(4000)), 1360)
    bad = bytearray(segs[1])
    bad[-1] ^= 0x40
    g = Gro()
    for p in (segs[0], bytes(bad), segs[2]):
        g.add(p)
    g.flush()
    (one,) = g.out
    assert not _tcp_ok(one[VNET_LEN:])  # the kernel drops it; TCP retransmits


def test_gro_does_not_join_odd_sized_segments() -> None:
    segs = tso_segments(_super(os.urandom(4001)), 1361)
    g = Gro()
    for p in segs:
        g.add(p)
    g.flush()
    assert len(g.out) == len(segs) and g.merged == 0
