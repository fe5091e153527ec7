"""AH (RFC 4302): mutable fields (IPv4 and options, IPv6 and extension headers), ICV padding,
Reserved, sequence numbers and ESN, routing header prediction, AES-GMAC (RFC 4543)."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import HBHOptUnknown, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting

from reference_impl.crypto import integ
from reference_impl.crypto.ids import IntegId
from reference_impl.driver import AhOutbound, Verdict
from reference_impl.driver.ah import icv_input
from reference_impl.sa import Mode

from .helpers import (
    AH_SUITES,
    V4_INNER,
    V4_OUTER,
    V6_OUTER,
    Suite,
    inner_packet,
    keys_for,
    pair,
    params,
    scapy_sa,
)

SHA256 = AH_SUITES[1]


def _fix4(b: bytearray) -> bytes:
    """Recompute the IPv4 header checksum (as a router would after changing a field)."""
    ihl = (b[0] & 0x0F) * 4
    b[10:12] = b"\x00\x00"
    words = struct.unpack(f">{ihl // 2}H", bytes(b[:ihl]))
    s = sum(words)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    b[10:12] = struct.pack(">H", ~s & 0xFFFF)
    return bytes(b)


def _transport4(suite: Suite = SHA256, seed: int = 1):
    keys = keys_for(suite, random.Random(seed))
    p = params(suite, keys, mode=Mode.TRANSPORT, outer=V4_OUTER, inner=V4_OUTER)
    return (p, keys, *pair(p))


def test_ipv4_mutable_fields_ah_001() -> None:
    p, keys, sad, out, _ = _transport4()
    pkt = inner_packet(*V4_OUTER)
    _, d = out.protect(pkt, 0.0)
    b = bytearray(d)
    b[8] = 7  # TTL
    b[1] = (46 << 2) | 3  # DSCP 46, ECN CE
    b[6] |= 0x40  # DF
    verdict, inner, _ = sad.unprotect(_fix4(b), 0.0)
    assert verdict is Verdict.DELIVERED
    ip = IP(inner)
    assert ip.ttl == 7 and ip.tos == (46 << 2) | 3
    assert bytes(ip[UDP]) == bytes(IP(pkt)[UDP])
    # (b) what we send verifies the same way in scapy
    assert bytes(scapy_sa(SHA256, keys, p).decrypt(IP(d))) == pkt


def test_ipv4_immutable_fields_ah_002() -> None:
    _, _, sad, out, inn = _transport4()
    pkt = inner_packet(*V4_OUTER)
    _, d = out.protect(pkt, 0.0)
    b = bytearray(d)
    b[4] ^= 0xFF  # Identification
    assert sad.unprotect(_fix4(b), 0.0)[0] is Verdict.INTEGRITY
    b = bytearray(d)
    b[-1] ^= 1
    assert sad.unprotect(bytes(b), 0.0)[0] is Verdict.INTEGRITY
    assert sad.unprotect(d, 0.0)[0] is Verdict.DELIVERED
    assert inn.drops == {Verdict.INTEGRITY: 2}


def test_ipv4_options_ah_003() -> None:
    """Record Route is zeroed for the ICV (mutable), Router Alert is covered (immutable)."""
    _, _, sad, out, _ = _transport4()
    pkt = (
        IP(
            src=V4_OUTER[0],
            dst=V4_OUTER[1],
            options=[IPOption_RR(routers=["0.0.0.0", "0.0.0.0"]), IPOption_Router_Alert()],
        )
        / UDP(sport=1, dport=2)
        / b"opts"
    )
    pkt = bytes(IP(bytes(pkt)))
    _, d = out.protect(pkt, 0.0)
    ihl = (d[0] & 0x0F) * 4
    assert ihl > 20 and d[9] == 51
    rr = d.index(bytes([7]), 20)  # the Record Route option
    ra = d.index(bytes([148, 4]), 20)
    b = bytearray(d)
    b[rr + 3 : rr + 7] = bytes([198, 51, 100, 1])  # a router recorded its address
    b[rr + 2] += 4  # and moved the pointer
    assert sad.unprotect(_fix4(b), 0.0)[0] is Verdict.DELIVERED
    b = bytearray(out.protect(pkt, 0.0)[1])  # a fresh sequence number
    b[ra + 3] ^= 1
    assert sad.unprotect(_fix4(b), 0.0)[0] is Verdict.INTEGRITY


def test_ipv6_mutable_fields_ah_004() -> None:
    keys = keys_for(SHA256, random.Random(4))
    p = params(SHA256, keys, mode=Mode.TRANSPORT, outer=V6_OUTER, inner=V6_OUTER)
    sad, out, _ = pair(p)
    _, d = out.protect(inner_packet(*V6_OUTER), 0.0)
    b = bytearray(d)
    b[0] = 0x6B  # traffic class 0xB8 ...
    b[1] = 0x8A  # ... and flow label 0xABCDE
    b[2:4] = b"\xbc\xde"
    b[7] = 3  # hop limit
    assert sad.unprotect(bytes(b), 0.0)[0] is Verdict.DELIVERED


def test_ipv6_option_change_bit_ah_005() -> None:
    keys = keys_for(SHA256, random.Random(5))
    p = params(SHA256, keys, mode=Mode.TRANSPORT, outer=V6_OUTER, inner=V6_OUTER)
    sad, out, _ = pair(p)
    pkt = bytes(
        IPv6(src=V6_OUTER[0], dst=V6_OUTER[1])
        / IPv6ExtHdrDestOpt(
            options=[
                HBHOptUnknown(otype=0x3E, optdata=b"abcd"),
                HBHOptUnknown(otype=0x1E, optdata=b"wxyz"),
            ]
        )
        / UDP(sport=3, dport=4)
        / b"x"
    )
    _, d = out.protect(pkt, 0.0)
    parsed = IPv6(d)
    assert parsed.nh == 60 and parsed[IPv6ExtHdrDestOpt].nh == 51  # dest opts before AH
    changing = d.index(b"abcd")
    fixed = d.index(b"wxyz")
    b = bytearray(d)
    b[changing] ^= 0xFF
    verdict, inner, _ = sad.unprotect(bytes(b), 0.0)
    assert verdict is Verdict.DELIVERED and b"wxyz" in inner
    b = bytearray(out.protect(pkt, 0.0)[1])
    b[fixed] ^= 0xFF
    assert sad.unprotect(bytes(b), 0.0)[0] is Verdict.INTEGRITY


@pytest.mark.parametrize(("outer", "length"), [(V4_OUTER, 28), (V6_OUTER, 32)], ids=["v4", "v6"])
def test_icv_padding_ah_006(outer: tuple[str, str], length: int) -> None:
    """HMAC-SHA2-256-128: AH is 28 octets over IPv4 (Payload Len 5), 32 over IPv6 (4
    octets of ICV padding, Payload Len 6)."""
    keys = keys_for(SHA256, random.Random(6))
    p = params(SHA256, keys, mode=Mode.TRANSPORT, outer=outer, inner=outer)
    _, out, _ = pair(p)
    pkt = inner_packet(*outer, 10)
    _, d = out.protect(pkt, 0.0)
    off = 20 if ":" not in outer[0] else 40
    assert d[off + 1] == length // 4 - 2
    assert len(d) == len(pkt) + length
    assert d[off + 2 : off + 4] == b"\x00\x00"  # AH-007 (a): Reserved sent as zero


def test_reserved_is_covered_and_ignored_ah_007() -> None:
    _p, keys, sad, out, _ = _transport4(seed=7)
    _, d = out.protect(inner_packet(*V4_OUTER), 0.0)
    b = bytearray(d)
    b[22:24] = b"\xff\xff"
    mac = integ(IntegId.AUTH_HMAC_SHA2_256_128).prepare(keys[1])
    icv = mac.compute(icv_input(bytes(b), 20, 16, False))
    b[32:48] = icv
    assert sad.unprotect(bytes(b), 0.0)[0] is Verdict.DELIVERED
    b = bytearray(out.protect(inner_packet(*V4_OUTER), 0.0)[1])
    b[23] = 0xFE  # Reserved is covered by the ICV
    assert sad.unprotect(bytes(b), 0.0)[0] is Verdict.INTEGRITY


def test_sequence_numbers_and_esn_ah_008() -> None:
    keys = keys_for(SHA256, random.Random(8))
    p = params(SHA256, keys, esn=True)
    sad, out, inn = pair(p)
    assert isinstance(out, AhOutbound)
    pkt = inner_packet(*V4_INNER)
    _, d1 = out.protect(pkt, 0.0)
    assert struct.unpack_from(">I", d1, 28)[0] == 1
    assert sad.unprotect(d1, 0.0)[0] is Verdict.DELIVERED
    assert sad.unprotect(d1, 0.0)[0] is Verdict.REPLAY
    out.set_next_seq(0xFFFFFFFE)
    inn.window.reset_window(0xFFFFFFFD)  # type: ignore[union-attr]
    for _ in range(5):
        _, d = out.protect(pkt, 0.0)
        assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)
    assert struct.unpack_from(">I", d, 28)[0] == 2
    forged = out.encapsulate(pkt, (1 << 32) + 3, esn_high=0)
    assert sad.unprotect(forged, 0.0)[0] is Verdict.INTEGRITY
    assert sad.unprotect(out.encapsulate(pkt, (1 << 32) + 3), 0.0)[0] is Verdict.DELIVERED


def test_routing_header_predicted_as_seen_at_destination() -> None:
    """RFC 4302 §3.3.3.1.2.2: the sender computes the ICV over the routing header and
    destination as they will be at the final destination; scapy verifies it there."""
    keys = keys_for(SHA256, random.Random(9))
    final = V6_OUTER[1]
    hop = "2001:db8::99"
    p = params(SHA256, keys, mode=Mode.TRANSPORT, outer=V6_OUTER, inner=None)
    sad, out, _ = pair(p)
    pkt = bytes(
        IPv6(src=V6_OUTER[0], dst=hop)
        / IPv6ExtHdrRouting(addresses=[final], segleft=1)
        / UDP(sport=1, dport=2)
        / b"routed"
    )
    _, d = out.protect(pkt, 0.0)
    assert IPv6(d)[IPv6ExtHdrRouting].nh == 51
    # The intermediate node processes the routing header.
    b = bytearray(d)
    off = 40
    b[24:40], b[off + 8 : off + 24] = b[off + 8 : off + 24], b[24:40]
    b[off + 3] = 0
    arrived = bytes(b)
    assert IPv6(arrived).dst == final
    scapy_sa(SHA256, keys, p).decrypt(IPv6(arrived))  # raises IPSecIntegrityError if not
    verdict, inner, _ = sad.unprotect(arrived, 0.0)
    assert verdict is Verdict.DELIVERED
    assert inner.endswith(b"routed")


def test_aes_gmac_ah_roundtrip() -> None:
    """AUTH_AES_128_GMAC (RFC 4543 §4): 8-octet IV then the 16-octet tag."""
    suite = Suite("ah-gmac", None, None, IntegId.AUTH_AES_128_GMAC, None, None)
    keys = keys_for(suite, random.Random(10))
    for outer in (V4_OUTER, V6_OUTER):
        p = params(suite, keys, mode=Mode.TRANSPORT, outer=outer, inner=outer)
        sad, out, _ = pair(p)
        pkt = inner_packet(*outer, 33)
        _, d = out.protect(pkt, 0.0)
        off = 20 if ":" not in outer[0] else 40
        assert d[off + 12 : off + 20] == (1).to_bytes(8, "big")  # the IV is the counter
        assert (d[off + 1] + 2) * 4 == (36 if off == 20 else 40)
        assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)
        b = bytearray(d)
        b[off + 12] ^= 1  # the IV is an input: a changed IV fails
        assert sad.unprotect(bytes(b), 0.0)[0] in (Verdict.INTEGRITY, Verdict.REPLAY)


def test_ah_refuses_encryption_and_udp() -> None:
    from reference_impl.driver import Sad
    from reference_impl.errors import LocalProtocolError

    keys = keys_for(SHA256, random.Random(11))
    p = params(SHA256, keys, encap=(4500, 4500))
    with pytest.raises(LocalProtocolError):
        Sad().install(p, inbound=False, now=0.0)


def test_ipv4_identification_never_zero() -> None:
    """A Linux raw socket (IP_HDRINCL) replaces Identification 0 on send, and AH covers the
    ID (RFC 4302 §3.3.3.1.1.1): the driver must never sign a header with ID 0."""
    _, _, sad, out, _ = _transport4()
    pkt = bytearray(inner_packet(*V4_OUTER))
    pkt[4:6] = b"\x00\x00"  # an atomic datagram with ID 0 (RFC 6864)
    _, d = out.protect(_fix4(pkt), 0.0)
    assert d[4:6] != b"\x00\x00"
    verdict, inner, _ = sad.unprotect(d, 0.0)
    assert verdict is Verdict.DELIVERED
    assert inner[20:] == bytes(pkt[20:])

    keys = keys_for(SHA256, random.Random(2))
    tp = params(SHA256, keys, mode=Mode.TUNNEL, outer=V4_OUTER, inner=V4_INNER)
    tsad, tout, _ = pair(tp)
    tout.seq = 0xFFFF  # the next packet has sequence number 65536: low 16 bits zero
    _, td = tout.protect(inner_packet(*V4_INNER), 0.0)
    assert td[4:6] != b"\x00\x00"
    assert tsad.unprotect(td, 0.0)[0] is Verdict.DELIVERED
