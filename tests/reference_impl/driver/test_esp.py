"""ESP (RFC 4303): known-answer packets, padding, TFC, dummy packets, IVs, bit flips, ESN
across 2^32, ECN/DSCP/DF, fragments, runts, selectors, and fast path == general path."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

from reference_impl.crypto import encr
from reference_impl.crypto.ids import EncrId
from reference_impl.driver import EspOutbound, LifetimeKind, Sad, SaExpired, SaOptions, Verdict
from reference_impl.driver.base import DriverContext
from reference_impl.driver.packet import ipv4_header
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode

from .helpers import (
    ESP_SUITES,
    V4_INNER,
    V4_OUTER,
    V6_INNER,
    V6_OUTER,
    inner_packet,
    keys_for,
    pair,
    params,
    with_,
)

GCM = ESP_SUITES[0]
CBC = ESP_SUITES[8]
CHACHA = ESP_SUITES[6]
H = bytes.fromhex


def wrap4(
    esp: bytes, src: str = "192.0.2.1", dst: str = "192.0.2.2", tos: int = 0, flags: int = 0
) -> bytes:
    import ipaddress

    return (
        ipv4_header(
            tos=tos,
            total_length=20 + len(esp),
            ident=1,
            flags_fragment=flags,
            ttl=64,
            protocol=50,
            src=ipaddress.ip_address(src).packed,
            dst=ipaddress.ip_address(dst).packed,
        )
        + esp
    )


# --- known-answer packets ---------------------------------------------------------------------

# RFC 3602 §4, Cases #5-#8: sample ESP packets with AES-CBC-128 and no integrity (SPI,
# sequence number, IV and ciphertext as printed in the RFC; payloads are the protected
# ICMP message (transport, cases 5-6) or inner IPv4 packet (tunnel, cases 7-8)).
RFC3602 = [
    (
        "case5",
        Mode.TRANSPORT,
        "90d382b410eeba7ad938c46cec1a82bf",
        0x4321,
        1,
        1,
        "e96e8c08ab465763fd098d45dd3ff893",
        "08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f3031323334353637",
        "0000432100000001e96e8c08ab465763fd098d45dd3ff893f663c25d325c18c6a9453e194e120849"
        "a4870b66cc6b9965330013b4898dc856a4699e523a55db080b59ec3a8e4b7e52775b07d1db34ed9c"
        "538ab50c551b874aa269add047ad2d5913ac19b7cfbad4a6",
    ),
    (
        "case6",
        Mode.TRANSPORT,
        "90d382b410eeba7ad938c46cec1a82bf",
        0x4321,
        8,
        1,
        "69d08df7d203329db093fc4924e5bd80",
        "0800b5e8a80a0500a69c083d0b660e00777777777777777777777777",
        "000043210000000869d08df7d203329db093fc4924e5bd80f51995881ec4e0c4488987ce742e8109"
        "689bb379d2d750c0d915dca346a89f75",
    ),
    (
        "case7",
        Mode.TUNNEL,
        "0123456789abcdef0123456789abcdef",
        0x8765,
        2,
        4,
        "f4e765244f6407adf13dc1380f673f37",
        "45000054090400004001f988c0a87b03c0a87bc808009f76a90a0100b49c083d02a2040008090a0b"
        "0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30313233"
        "34353637",
        "0000876500000002f4e765244f6407adf13dc1380f673f37773b5241a4c449225e4f3ce5ed611b0c"
        "237ca96cf74a93013c1b0ea1a0cf70f8e4ecaec78ac53aad7a0f022b859243c647752e94a859352b"
        "8a4d4d2decd136e5c177f132ad3fbfb2201ac9904c74ee0a109e0ca1e4dfe9d5a100b842f1c22f0d",
    ),
    (
        "case8",
        Mode.TUNNEL,
        "0123456789abcdef0123456789abcdef",
        0x8765,
        5,
        4,
        "85d47224b5f3dd5d2101d4ea8dffab22",
        "45000044090c00004001f990c0a87b03c0a87bc80800d63caa0a0200c69c083da3de0300ffffffff"
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "000087650000000585d47224b5f3dd5d2101d4ea8dffab2215b92683819596a8047232cc00f7048f"
        "e45318e11f8a0f62ede3c3fc61203bb50f980a08c9843fd3a1b06d5c07ff9639b7eb7dfb3512e5de"
        "435e7207ed971ef3d2726d9b5ef6affc6d17a0decbb13892",
    ),
]


def _cbc_only(key: str, spi: int, mode: Mode) -> ChildSaParams:
    return ChildSaParams(
        spi=spi,
        protocol=IpsecProtocol.ESP,
        mode=mode,
        src="192.168.123.3",
        dst="192.168.123.100",
        encr_id=EncrId.ENCR_AES_CBC,
        encr_key_bits=128,
        encr_key=H(key),
    )


@pytest.mark.parametrize("case", RFC3602, ids=lambda c: c[0])
def test_rfc3602_packets(case: tuple[str, Mode, str, int, int, int, str, str, str]) -> None:
    _, mode, key, spi, seq, nh, iv, payload, wire = case
    p = _cbc_only(key, spi, mode)
    sad, out, _inn = pair(p)
    assert isinstance(out, EspOutbound)
    # Sending: byte for byte, with the RFC's IV.
    assert out.esp_payload(seq, H(payload), nh, iv=H(iv)).hex() == wire
    # Receiving: the RFC packet in an IPv4 header decapsulates to the payload.
    verdict, inner, _ = sad.unprotect(wrap4(H(wire), p.src, p.dst), 0.0)
    assert verdict is Verdict.DELIVERED
    if mode is Mode.TUNNEL:
        assert inner.hex() == payload
    else:
        assert inner[20:].hex() == payload and inner[9] == nh
        assert IP(inner).chksum == IP(bytes(IP(inner).__class__(inner))).chksum


# RFC 7634 Appendix A: the ESP example (ChaCha20-Poly1305, SPI 0x01020304, sequence number 5,
# IV 1011121314151617, tunnel mode with an ICMP echo inside).
RFC7634_KEY = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3"
RFC7634_INNER = (
    "45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec100007362708090a0b0c0d"
    "0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
)
RFC7634_WIRE = (
    "01020304000000051011121314151617"
    "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c614ee8099d52844eb61aa"
    "95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3cbec163fac469b502773f6fb94e664da9165b828"
    "29f641e076aaa8266b7fb0f7b11b369907e1ad43"
)


def test_rfc7634_appendix_a_packet() -> None:
    p = ChildSaParams(
        spi=0x01020304,
        protocol=IpsecProtocol.ESP,
        mode=Mode.TUNNEL,
        src="203.0.113.153",
        dst="203.0.113.5",
        encr_id=EncrId.ENCR_CHACHA20_POLY1305,
        encr_key_bits=256,
        encr_key=H(RFC7634_KEY),
    )
    sad, out, _inn = pair(p)
    assert isinstance(out, EspOutbound)
    assert out.esp_payload(5, H(RFC7634_INNER), 4, iv=H("1011121314151617")).hex() == RFC7634_WIRE
    verdict, inner, _ = sad.unprotect(wrap4(H(RFC7634_WIRE), p.src, p.dst), 0.0)
    assert (verdict, inner.hex()) == (Verdict.DELIVERED, RFC7634_INNER)


# --- sequence numbers, IVs, padding ----------------------------------------------------------


def _esp_fields(datagram: bytes, ihl: int = 20) -> tuple[int, int, bytes]:
    spi, seq = struct.unpack_from(">II", datagram, ihl)
    return spi, seq, datagram[ihl + 8 : ihl + 16]


def test_sequence_numbers_from_one_and_counter_iv() -> None:
    """ESP-001: 1, 2, 3...; AES-GCM IV = the 64-bit sequence number (RFC 4106 §3.1)."""
    keys = keys_for(GCM, random.Random(1))
    _, out, _ = pair(params(GCM, keys))
    pkt = inner_packet(*V4_INNER)
    for n in range(1, 11):
        _, d = out.protect(pkt, 0.0)
        spi, seq, iv = _esp_fields(d)
        assert (spi, seq, iv) == (0x1001, n, n.to_bytes(8, "big"))


def test_cbc_iv_is_random() -> None:
    keys = keys_for(CBC, random.Random(2))
    _, out, _ = pair(params(CBC, keys))
    pkt = inner_packet(*V4_INNER)
    ivs = {out.protect(pkt, 0.0)[1][28:44] for _ in range(200)}
    assert len(ivs) == 200
    assert all(len(iv) == 16 for iv in ivs)


@pytest.mark.parametrize("size", range(1, 33))
def test_default_padding_cbc(size: int) -> None:
    """ESP-009: pad octets 1..n, minimal, (payload + pad + 2) a multiple of 16."""
    keys = keys_for(CBC, random.Random(3))
    p = params(CBC, keys, mode=Mode.TRANSPORT, outer=V4_OUTER, inner=V4_OUTER)
    _, out, _ = pair(p)
    pkt = bytes(IP(src=V4_OUTER[0], dst=V4_OUTER[1], proto=253) / (b"\xaa" * size))
    _, d = out.protect(pkt, 0.0)
    ct = d[20 + 8 + 16 : -16]
    pt = encr(EncrId.ENCR_AES_CBC, 128).prepare_block(keys[0]).decrypt(d[28:44], ct)
    pad = pt[-2]
    assert pt[-1] == 253
    assert pt[size : size + pad] == bytes(range(1, pad + 1))
    assert (size + pad + 2) % 16 == 0 and pad < 16


def _crafted(p: ChildSaParams, pkt: bytes, seq: int, **kw: object) -> bytes:
    """A packet built by a second, independent outbound SA with the same keys."""
    out = EspOutbound(p, 0.0, DriverContext(16))
    return out.encapsulate(pkt, seq, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("suite", [GCM, CBC], ids=lambda s: s.name)
def test_any_padding_length_accepted(suite: object) -> None:
    """ESP-010 (a): 254 octets of padding are accepted."""
    keys = keys_for(GCM if suite is GCM else CBC, random.Random(4))
    s = GCM if suite is GCM else CBC
    p = params(s, keys)
    sad, _, _ = pair(p)
    pkt = inner_packet(*V4_INNER, 30)
    align = 16 if s is CBC else 4
    pad = max(n for n in range(256) if (len(pkt) + n + 2) % align == 0)
    d = _crafted(p, pkt, 1, pad_length=pad)
    assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)


def test_wrong_padding_octets() -> None:
    """ESP-010 (b): wrong pad octets with a correct ICV are dropped when checking (default)
    and accepted when ``check_padding`` is off."""
    keys = keys_for(GCM, random.Random(5))
    p = params(GCM, keys)
    pkt = inner_packet(*V4_INNER, 30)
    pad = (-(len(pkt) + 2)) % 4 + 12
    d = _crafted(p, pkt, 1, pad_length=pad, padding=b"\x00" * pad)
    sad, _, inn = pair(p)
    assert sad.unprotect(d, 0.0)[0] is Verdict.BAD_PADDING
    assert inn.drops == {Verdict.BAD_PADDING: 1}
    sad2, _, _ = pair(p, options=SaOptions(check_padding=False))
    assert sad2.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)


def test_pad_length_beyond_payload() -> None:
    keys = keys_for(GCM, random.Random(6))
    p = params(GCM, keys)
    # Pad Length 255 in a 4-octet plaintext, sealed by the registry directly.
    cipher = encr(EncrId.ENCR_AES_GCM_16, 128).prepare_aead(keys[0])
    hdr = struct.pack(">II", 0x1001, 1)
    iv = (1).to_bytes(8, "big")
    esp = hdr + iv + cipher.seal(iv, b"\x01\x02\xff\x04", hdr)
    sad, _, _ = pair(p)
    assert sad.unprotect(wrap4(esp), 0.0)[0] is Verdict.BAD_PADDING


def test_dummy_packets() -> None:
    """ESP-011: Next Header 59 verifies and is discarded silently; the next real packet
    is delivered."""
    keys = keys_for(GCM, random.Random(7))
    sad, out, inn = pair(params(GCM, keys))
    verdict, d = out.dummy(0.0, 37)
    assert verdict is Verdict.DELIVERED and out.seq == 1
    assert sad.unprotect(d, 0.0) == (Verdict.DUMMY, b"", inn)
    assert sad.drops == {Verdict.DUMMY: 1} and not sad.audit
    pkt = inner_packet(*V4_INNER)
    assert sad.unprotect(out.protect(pkt, 0.0)[1], 0.0)[:2] == (Verdict.DELIVERED, pkt)


@pytest.mark.parametrize("inner", [V4_INNER, V6_INNER], ids=["v4", "v6"])
def test_tfc_padding(inner: tuple[str, str]) -> None:
    """ESP-012: TFC padding is added up to the target and stripped by the inner length."""
    keys = keys_for(GCM, random.Random(8))
    p = params(GCM, keys, inner=inner)
    sad, out, _ = pair(p, options=SaOptions(tfc_pad_to=300))
    pkt = inner_packet(*inner, 10)
    _, d = out.protect(pkt, 0.0)
    assert len(d) >= 20 + 8 + 8 + 300 + 2 + 16
    assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)
    # Not when the peer said ESP_TFC_PADDING_NOT_SUPPORTED.
    sad2, out2, _ = pair(with_(p, tfc_padding=False), options=SaOptions(tfc_pad_to=300))
    _, d2 = out2.protect(pkt, 0.0)
    assert len(d2) < 20 + 8 + 8 + 100
    assert sad2.unprotect(d2, 0.0)[:2] == (Verdict.DELIVERED, pkt)


# --- integrity and the window ------------------------------------------------------------------


@pytest.mark.parametrize("suite", [GCM, CBC, CHACHA, ESP_SUITES[15]], ids=lambda s: s.name)
def test_every_single_bit_flip_rejected(suite: object) -> None:
    """ESP-007: one flipped bit anywhere from the SPI to the end of the ICV is never
    delivered, never moves the window, and an untouched copy is delivered afterwards."""
    s = next(x for x in ESP_SUITES if x is suite)
    keys = keys_for(s, random.Random(9))
    sad, out, inn = pair(params(s, keys))
    pkt = inner_packet(*V4_INNER, 40)
    _, d = out.protect(pkt, 0.0)
    for bit in range(20 * 8, len(d) * 8):
        b = bytearray(d)
        b[bit // 8] ^= 0x80 >> (bit % 8)
        verdict, inner, _ = sad.unprotect(bytes(b), 0.0)
        assert verdict is not Verdict.DELIVERED, bit
        assert inner == b""
    assert inn.window.replay_top == 0  # type: ignore[union-attr]
    assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)
    assert set(sad.drops) <= {Verdict.INTEGRITY, Verdict.NO_SA, Verdict.OUTSIDE_WINDOW}


def test_icv_failure_does_not_move_window_esp_005() -> None:
    keys = keys_for(GCM, random.Random(10))
    p = params(GCM, keys)
    sad, _, _ = pair(p)
    pkt = inner_packet(*V4_INNER)
    for seq in range(1, 6):
        assert sad.unprotect(_crafted(p, pkt, seq), 0.0)[0] is Verdict.DELIVERED
    bad = bytearray(_crafted(p, pkt, 500))
    bad[-1] ^= 1
    assert sad.unprotect(bytes(bad), 0.0)[0] is Verdict.INTEGRITY
    assert sad.unprotect(_crafted(p, pkt, 6), 0.0)[0] is Verdict.DELIVERED
    assert sad.unprotect(_crafted(p, pkt, 500), 0.0)[0] is Verdict.DELIVERED
    assert sad.unprotect(_crafted(p, pkt, 500), 0.0)[0] is Verdict.REPLAY
    assert sad.unprotect(_crafted(p, pkt, 400), 0.0)[0] is Verdict.OUTSIDE_WINDOW


# --- ESN and sequence exhaustion ----------------------------------------------------------------


@pytest.mark.parametrize("suite", [GCM, CBC], ids=lambda s: s.name)
def test_esn_across_2_32(suite: object) -> None:
    """ESP-015: with ESN the low 32 bits wrap and the high bits stay in the ICV; a packet
    whose ICV used Seqh = 0 after the wrap is dropped."""
    s = next(x for x in ESP_SUITES if x is suite)
    keys = keys_for(s, random.Random(11))
    p = params(s, keys, esn=True)
    sad, out, inn = pair(p)
    pkt = inner_packet(*V4_INNER)
    out.set_next_seq(0xFFFFFFF0)
    inn.window.reset_window(0xFFFFFFEF)  # type: ignore[union-attr]
    lows = []
    for _ in range(32):
        _, d = out.protect(pkt, 0.0)
        lows.append(struct.unpack_from(">I", d, 24)[0])
        assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)
    assert lows[15] == 0xFFFFFFFF and lows[16] == 0 and lows[31] == 15
    assert out.seq == (1 << 32) + 15
    forged = _crafted(p, pkt, (1 << 32) + 16, esn_high=0)
    assert sad.unprotect(forged, 0.0)[0] is Verdict.INTEGRITY
    assert sad.unprotect(_crafted(p, pkt, (1 << 32) + 16), 0.0)[0] is Verdict.DELIVERED
    assert not out.soft_expired


def test_sequence_exhaustion_without_esn() -> None:
    """RFC 4303 §3.3.3: never cycle; a soft SEQUENCE event (rekey) before, hard at the end."""
    keys = keys_for(GCM, random.Random(12))
    sad, out, _ = pair(params(GCM, keys), options=SaOptions(seq_rekey_margin=2))
    pkt = inner_packet(*V4_INNER)
    out.set_next_seq(0xFFFFFFFC)
    seqs = []
    for _ in range(4):
        verdict, d = out.protect(pkt, 5.0)
        assert verdict is Verdict.DELIVERED
        seqs.append(struct.unpack_from(">I", d, 24)[0])
    assert seqs == [0xFFFFFFFC, 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF]
    assert sad.next_event() == SaExpired(
        IpsecProtocol.ESP, 0x1001, False, False, LifetimeKind.SEQUENCE, 5.0
    )
    assert sad.next_event() == SaExpired(
        IpsecProtocol.ESP, 0x1001, False, True, LifetimeKind.SEQUENCE, 5.0
    )
    assert sad.next_event() is None
    assert out.protect(pkt, 6.0) == (Verdict.SEQUENCE_EXHAUSTED, b"")
    assert out.seq == 0xFFFFFFFF
    assert out.drops == {Verdict.SEQUENCE_EXHAUSTED: 1}


def test_default_rekey_margin() -> None:
    keys = keys_for(GCM, random.Random(13))
    sad, out, _ = pair(params(GCM, keys))
    pkt = inner_packet(*V4_INNER)
    out.set_next_seq((1 << 32) - (1 << 24) - 2)  # soft at 2^32 - 1 - 2^24
    out.protect(pkt, 0.0)
    assert sad.next_event() is None
    out.protect(pkt, 0.0)
    ev = sad.next_event()
    assert ev is not None and ev.kind is LifetimeKind.SEQUENCE and not ev.hard


# --- outer header: DSCP, ECN, DF ----------------------------------------------------------------


def test_outer_header_defaults() -> None:
    """Tunnel mode: DSCP and ECN copied (RFC 4301 §5.1.2.1, RFC 6040 normal mode), DF copied
    (RFC 4301 §8.1), TTL 64, a valid checksum."""
    keys = keys_for(GCM, random.Random(14))
    _, out, _ = pair(params(GCM, keys))
    for tos, flags in [(0xB8 | 2, "DF"), (0x20 | 1, ""), (3, "DF")]:
        pkt = bytes(IP(src=V4_INNER[0], dst=V4_INNER[1], tos=tos, flags=flags) / UDP() / b"x")
        _, d = out.protect(pkt, 0.0)
        ip = IP(d)
        assert ip.tos == tos and ip.ttl == 64 and ip.proto == 50
        assert bool(ip.flags.DF) == (flags == "DF")
        assert ip.chksum == IP(bytes(IP(d).__class__(bytes(ip)))).chksum
        fixed = IP(d)
        del fixed.chksum
        assert IP(bytes(fixed)).chksum == ip.chksum


def test_outer_header_options() -> None:
    keys = keys_for(GCM, random.Random(15))
    opts = SaOptions(dscp=10, ecn="compat", df="set", ttl=9)
    _, out, _ = pair(params(GCM, keys), options=opts)
    pkt = bytes(IP(src=V4_INNER[0], dst=V4_INNER[1], tos=0xB8 | 2) / UDP() / b"x")
    ip = IP(out.protect(pkt, 0.0)[1])
    assert ip.tos == 10 << 2 and ip.flags.DF and ip.ttl == 9
    _, out6, _ = pair(params(GCM, keys, outer=V6_OUTER, inner=V6_INNER), options=opts)
    pkt6 = bytes(IPv6(src=V6_INNER[0], dst=V6_INNER[1], tc=0xB8 | 1) / UDP() / b"x")
    ip6 = IPv6(out6.protect(pkt6, 0.0)[1])
    assert ip6.tc == 10 << 2 and ip6.hlim == 9 and ip6.nh == 50


@pytest.mark.parametrize(
    ("inner_ecn", "outer_ecn", "expected"),
    [(0, 3, None), (2, 3, 3), (1, 3, 3), (3, 3, 3), (2, 1, 1), (0, 1, 0), (1, 2, 1), (2, 0, 2)],
)
def test_ecn_decapsulation(inner_ecn: int, outer_ecn: int, expected: int | None) -> None:
    """RFC 6040 §4.2 Figure 4, over the fast path (IPv4) and the general path (IPv6)."""
    keys = keys_for(GCM, random.Random(16))
    for outer, inner in [(V4_OUTER, V4_INNER), (V6_OUTER, V6_INNER)]:
        p = params(GCM, keys, outer=outer, inner=inner)
        sad, out, _ = pair(p, options=SaOptions(ecn="compat"))
        if ":" in inner[0]:
            pkt = bytes(IPv6(src=inner[0], dst=inner[1], tc=0x28 | inner_ecn) / UDP() / b"y")
        else:
            pkt = bytes(IP(src=inner[0], dst=inner[1], tos=0x28 | inner_ecn) / UDP() / b"y")
        d = bytearray(out.protect(pkt, 0.0)[1])
        if ":" in outer[0]:
            d[1] = (d[1] & 0xCF) | (outer_ecn << 4)
            verdict, got, _ = sad.unprotect(bytes(d), 0.0)
        else:
            d[1] = outer_ecn
            d[10:12] = b"\x00\x00"
            hdr = IP(bytes(d[:20]))
            del hdr.chksum
            verdict, got, _ = sad.unprotect(bytes(IP(bytes(hdr)))[:20] + bytes(d[20:]), 0.0)
        if expected is None:
            assert verdict is Verdict.ECN
            continue
        assert verdict is Verdict.DELIVERED
        if ":" in inner[0]:
            assert IPv6(got).tc == 0x28 | expected
        else:
            ip = IP(got)
            assert ip.tos == 0x28 | expected
            c = ip.chksum
            del ip.chksum
            assert IP(bytes(ip)).chksum == c


# --- malformed input ---------------------------------------------------------------------------


def test_fragments_runts_and_garbage() -> None:
    keys = keys_for(GCM, random.Random(17))
    sad, out, _ = pair(params(GCM, keys))
    _, d = out.protect(inner_packet(*V4_INNER), 0.0)
    frag = bytearray(d)
    frag[6] = 0x20  # MF
    frag[10:12] = b"\x00\x00"
    assert sad.unprotect(bytes(frag), 0.0)[0] is Verdict.FRAGMENT
    assert sad.unprotect(wrap4(d[20:30]), 0.0)[0] is Verdict.RUNT
    assert sad.unprotect(wrap4(d[20:24]), 0.0)[0] is Verdict.RUNT
    assert sad.unprotect(b"", 0.0)[0] is Verdict.MALFORMED
    assert sad.unprotect(b"\x45\x00", 0.0)[0] is Verdict.MALFORMED
    assert sad.unprotect(d[:-1], 0.0)[0] is Verdict.MALFORMED  # total length beyond data
    tcp = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=6) / (b"0" * 20))
    assert sad.unprotect(tcp, 0.0)[0] is Verdict.NOT_IPSEC
    assert out.protect(b"", 0.0)[0] is Verdict.MALFORMED
    assert out.protect(b"\x45" * 10, 0.0)[0] is Verdict.MALFORMED
    assert out.protect(b"\x10" * 40, 0.0)[0] is Verdict.MALFORMED
    audit = sad.audit
    assert [a.verdict for a in audit][:2] == [Verdict.FRAGMENT, Verdict.RUNT]
    assert audit[0].src == "192.0.2.1" and audit[0].dst == "192.0.2.2"


def test_unknown_spi_audited() -> None:
    keys = keys_for(GCM, random.Random(18))
    p = params(GCM, keys)
    _sad, out, _ = pair(p)
    _, d = out.protect(inner_packet(*V4_INNER), 0.0)
    other = Sad()
    assert other.unprotect(d, 3.0) == (Verdict.NO_SA, b"", None)
    rec = other.audit[0]
    assert (rec.verdict, rec.spi, rec.ip_protocol, rec.time) == (Verdict.NO_SA, 0x1001, 50, 3.0)


def test_selector_mismatch() -> None:
    """RFC 4301 §5.2 step 4: an inner packet outside the SA's selectors is dropped."""
    keys = keys_for(GCM, random.Random(19))
    p = params(GCM, keys)
    sad, _, inn = pair(p)
    wide = with_(p, ts_src=(), ts_dst=())
    for src, dst in [("10.9.0.1", V4_INNER[1]), (V4_INNER[0], "10.9.0.1")]:
        d = _crafted(wide, inner_packet(src, dst), 1 if src == "10.9.0.1" else 2)
        assert sad.unprotect(d, 0.0)[0] is Verdict.SELECTOR_MISMATCH
    d6 = _crafted(wide, inner_packet(*V6_INNER), 3)
    assert sad.unprotect(d6, 0.0)[0] is Verdict.SELECTOR_MISMATCH
    assert inn.drops == {Verdict.SELECTOR_MISMATCH: 3}


def test_selector_ports_and_protocol() -> None:
    from reference_impl.sa import TrafficSelector

    keys = keys_for(GCM, random.Random(20))
    p = with_(
        params(GCM, keys),
        ts_src=(TrafficSelector.from_network("10.1.0.0/16", 17, 1234, 1234),),
        ts_dst=(TrafficSelector.from_network("10.2.0.0/16", 17, 5000, 6000),),
    )
    sad, _, _ = pair(p)
    wide = with_(p, ts_src=(), ts_dst=())
    ok = inner_packet(*V4_INNER, proto="udp")  # 1234 -> 5678
    tcp = inner_packet(*V4_INNER, proto="tcp")
    assert sad.unprotect(_crafted(wide, ok, 1), 0.0)[0] is Verdict.DELIVERED
    assert sad.unprotect(_crafted(wide, tcp, 2), 0.0)[0] is Verdict.SELECTOR_MISMATCH


# --- IPv6 extension headers in transport mode ----------------------------------------------------


def test_ipv6_transport_header_order() -> None:
    """ESP-014: ESP goes after hop-by-hop and a destination options header that precedes it
    (no routing header follows); decapsulation restores the packet."""
    keys = keys_for(GCM, random.Random(21))
    p = params(GCM, keys, mode=Mode.TRANSPORT, outer=V6_OUTER, inner=V6_OUTER)
    sad, out, _ = pair(p)
    pkt = bytes(
        IPv6(src=V6_OUTER[0], dst=V6_OUTER[1])
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=7, dport=9)
        / b"payload"
    )
    _, d = out.protect(pkt, 0.0)
    parsed = IPv6(d)
    assert parsed.nh == 0 and parsed[IPv6ExtHdrHopByHop].nh == 60
    assert parsed[IPv6ExtHdrDestOpt].nh == 50
    assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)


def test_transport_udp_encap_fixes_checksum() -> None:
    """RFC 3948 §3.1.2: after NAT the UDP checksum covers the pre-NAT address; the receiver
    repairs it after decapsulation."""
    keys = keys_for(GCM, random.Random(22))
    p = params(GCM, keys, mode=Mode.TRANSPORT, outer=V4_OUTER, inner=None, encap=(4500, 4500))
    sad, out, _ = pair(p)
    pkt = bytes(IP(src="10.9.9.9", dst=V4_OUTER[1]) / UDP(sport=5, dport=6) / b"data")
    d = bytearray(out.protect(pkt, 0.0)[1])
    # The NAT rewrites the outer source address (and the IPv4 header checksum).
    d[12:16] = bytes([192, 0, 2, 1])
    hdr = IP(bytes(d[:20]))
    del hdr.chksum
    d[:20] = bytes(IP(bytes(hdr)))[:20]
    verdict, got, _ = sad.unprotect(bytes(d), 0.0)
    assert verdict is Verdict.DELIVERED
    u = IP(got)
    c = u[UDP].chksum
    del u[UDP].chksum
    assert IP(bytes(u))[UDP].chksum == c and u.src == "192.0.2.1"


# --- fast path == general path --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
@pytest.mark.parametrize("suite", [GCM, CHACHA, ESP_SUITES[4]], ids=lambda s: s.name)
def test_fast_protect_equals_general(suite: object, mode: Mode) -> None:
    s = next(x for x in ESP_SUITES if x is suite)
    keys = keys_for(s, random.Random(23))
    hosts = V4_INNER if mode is Mode.TUNNEL else V4_OUTER
    p = params(s, keys, mode=mode, inner=hosts)
    _sad, fast, _ = pair(p)
    assert type(fast).__name__ in ("_EspOutboundFast4", "_EspOutboundFastTransport4")
    general = EspOutbound(p, 0.0, DriverContext(16))
    rng = random.Random(24)
    for i in range(200):
        if mode is Mode.TUNNEL and i % 17 == 0:
            pkt = bytearray(inner_packet(*V6_INNER, rng.randrange(0, 1500), rng=rng))
        else:
            proto = rng.choice(["udp", "tcp", "icmp"])
            pkt = bytearray(inner_packet(*hosts, rng.randrange(0, 1500), proto, rng=rng))
            pkt[1] = rng.randrange(256)  # TOS
            pkt[6] = rng.choice([0, 0x40])  # DF
            pkt[8] = rng.randrange(1, 256)  # TTL
            if i % 23 == 0:
                pkt[6] |= 0x20  # a fragment: refused by both
        assert fast.protect(bytes(pkt), 0.0) == general.protect(bytes(pkt), 0.0)
    assert fast.packets == general.packets and fast.octets == general.octets
    assert fast.drops == general.drops


@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
def test_fast_unprotect_equals_general(mode: Mode) -> None:
    keys = keys_for(GCM, random.Random(25))
    hosts = V4_INNER if mode is Mode.TUNNEL else V4_OUTER
    p = params(GCM, keys, mode=mode, inner=hosts)
    fast_sad, _, fast_in = pair(p)
    slow_sad, _, slow_in = pair(p)
    slow_sad._esp_fast.clear()  # type: ignore[attr-defined]
    assert fast_in.fast4  # type: ignore[union-attr]
    wide = with_(p, ts_src=(), ts_dst=())
    rng = random.Random(26)
    datagrams = []
    for seq in range(1, 400):
        kind = rng.randrange(10)
        pkt = inner_packet(*hosts, rng.randrange(0, 300), rng=rng)
        if kind == 0:
            d = _crafted(p, pkt, seq, tfc_pad_to=400)
        elif kind == 1:
            d = _crafted(p, pkt, seq, next_header=59)
        elif kind == 2:
            stranger = ("10.7.0.1", hosts[1]) if mode is Mode.TUNNEL else hosts
            d = _crafted(wide, inner_packet(*stranger, 20), seq)
            if mode is Mode.TRANSPORT:  # a packet from another host
                b = bytearray(d)
                b[12:16] = bytes([10, 7, 0, 1])
                d = bytes(b)
        elif kind == 3:
            d = _crafted(p, pkt, seq, pad_length=(-(len(pkt) + 2)) % 4 + 8)
        elif kind == 4 and mode is Mode.TUNNEL:
            d = _crafted(p, inner_packet(*V6_INNER, 10), seq)
        elif kind == 4:
            d = _crafted(
                p,
                pkt,
                seq,
                pad_length=(-(len(pkt) + 2)) % 4 + 4,
                padding=b"\x09" * ((-(len(pkt) + 2)) % 4 + 4),
            )
        elif kind == 5:
            b = bytearray(_crafted(p, pkt, seq))
            b[rng.randrange(20, len(b))] ^= 4
            d = bytes(b)
        elif kind == 6 and datagrams:
            d = rng.choice(datagrams)  # a replay
        elif kind == 7:
            d = _crafted(p, pkt, max(1, seq - rng.randrange(100)))
        else:
            d = _crafted(p, pkt, seq)
        datagrams.append(d)
    for d in datagrams:
        f = fast_sad.unprotect(d, 0.0)
        s = slow_sad.unprotect(d, 0.0)
        assert f[:2] == s[:2]
    assert fast_sad.drops == slow_sad.drops
    assert (fast_in.packets, fast_in.octets) == (slow_in.packets, slow_in.octets)
    assert fast_in.window.replay_bits == slow_in.window.replay_bits  # type: ignore[union-attr]
    assert len(fast_sad.drops) >= 5


def test_algorithms_without_scapy_counterpart_roundtrip() -> None:
    """AES-GCM with 8- and 12-octet ICVs (scapy's AESGCM path only does 16)."""
    for s in ESP_SUITES[2:4]:
        keys = keys_for(s, random.Random(27))
        for esn in (False, True):
            sad, out, _ = pair(params(s, keys, esn=esn))
            pkt = inner_packet(*V4_INNER, 77)
            _, d = out.protect(pkt, 0.0)
            inner_len = 20 + 8 + 77
            pad = (-(inner_len + 2)) % 4
            assert len(d) == 20 + 8 + 8 + inner_len + pad + 2 + (s.scapy_icv or 16)
            assert sad.unprotect(d, 0.0)[:2] == (Verdict.DELIVERED, pkt)
