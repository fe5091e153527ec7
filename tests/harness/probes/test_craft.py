"""Crafted packets round trip: the reference driver and IKEv2 protection accept what craft
builds with correct parameters, and reject each malformed variant with the right reason."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from harness.probes.craft import (
    RESERVED_FLAGS,
    AhCrafter,
    EspCrafter,
    IkeCrafter,
    SaInit,
    edit_payload,
    icmp_echo,
    ike_message,
    ike_proposal,
    ikev1_main_mode_1,
    mutate_ipv4,
    mutate_ipv6,
    patch_ike_header,
    payload_spans,
    set_reserved_bits,
    udp_packet,
)
from harness.probes.keys import IkeSaEntry, parse_wireshark
from harness.probes.oracle import check_packets
from harness.probes.pcap import ip_packet
from reference_impl.crypto.ids import EncrId, IntegId
from reference_impl.driver import Sad, Verdict
from reference_impl.errors import RemoteProtocolError
from reference_impl.ike import messages as v2msg
from reference_impl.ike import payloads as v2p
from reference_impl.ike.enums import ExchangeType, NotifyType
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode, TrafficSelector

from .conftest import Capture

A, B = "198.18.0.1", "198.18.0.2"
INNER_A, INNER_B = "198.19.1.1", "198.19.2.1"
SUITES = {
    "aes-cbc-hmac": dict(
        encr_id=EncrId.ENCR_AES_CBC,
        encr_key_bits=128,
        encr_key=os.urandom(16),
        integ_id=IntegId.AUTH_HMAC_SHA2_256_128,
        integ_key=os.urandom(32),
    ),
    "aes-gcm": dict(encr_id=EncrId.ENCR_AES_GCM_16, encr_key_bits=256, encr_key=os.urandom(36)),
    "chacha": dict(
        encr_id=EncrId.ENCR_CHACHA20_POLY1305, encr_key_bits=256, encr_key=os.urandom(36)
    ),
}


def _esp(
    suite: str,
    *,
    esn: bool = False,
    mode: Mode = Mode.TUNNEL,
    encap: tuple[int, int] | None = None,
    window: int = 64,
) -> ChildSaParams:
    return ChildSaParams(
        spi=0xC0FFEE01,
        protocol=IpsecProtocol.ESP,
        mode=mode,
        src=A,
        dst=B,
        esn=esn,
        encap=encap,
        ts_src=(TrafficSelector.from_network(INNER_A + "/32"),) if mode == Mode.TUNNEL else (),
        ts_dst=(TrafficSelector.from_network(INNER_B + "/32"),) if mode == Mode.TUNNEL else (),
        replay_window=window,
        **SUITES[suite],  # type: ignore[arg-type]
    )


def _receiver(params: ChildSaParams) -> Sad:
    sad = Sad()
    sad.install(params, inbound=True, now=0.0)
    return sad


INNER = icmp_echo(INNER_A, INNER_B, payload=b"x" * 37)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("encap", [None, (4500, 4500)])
def test_esp_round_trip_and_each_rejection(suite: str, encap: tuple[int, int] | None) -> None:
    params = _esp(suite, encap=encap)
    esp = EspCrafter(params)
    sad = _receiver(params)
    good = esp.packet(INNER, 1)
    assert sad.unprotect(good, 0.0)[:2] == (Verdict.DELIVERED, INNER)
    assert sad.unprotect(good, 0.0)[0] == Verdict.REPLAY  # RFC 4303 §3.4.3
    fields = ["seq", "ciphertext", "icv", "trailer"] + (["iv"] if esp.iv_len else [])
    for n, where in enumerate(fields, 2):  # catalogue ESP-007: one bit in each field
        bad = esp.corrupt(esp.packet(INNER, n), where)
        assert sad.unprotect(bad, 0.0)[0] == Verdict.INTEGRITY, where
    assert sad.unprotect(esp.corrupt(esp.packet(INNER, 9), "spi"), 0.0)[0] == Verdict.NO_SA
    assert sad.unprotect(esp.bad_padding(INNER, 10), 0.0)[0] == Verdict.BAD_PADDING
    long_pad = esp.packet(INNER, 11, pad_length=esp.max_pad_length(len(INNER)))
    assert sad.unprotect(long_pad, 0.0)[:2] == (Verdict.DELIVERED, INNER)
    assert sad.unprotect(esp.dummy(12), 0.0)[0] == Verdict.DUMMY  # RFC 4303 §2.6
    tfc = esp.packet(INNER, 13, tfc_pad_to=300)
    assert len(tfc) > 300 and sad.unprotect(tfc, 0.0)[:2] == (Verdict.DELIVERED, INNER)
    stranger = icmp_echo("198.19.9.9", INNER_B)
    assert sad.unprotect(esp.packet(stranger, 14), 0.0)[0] == Verdict.SELECTOR_MISMATCH
    # window W = 64 (catalogue ESP-003): 100, then 40 delivered, then 36 left of the window
    assert sad.unprotect(esp.packet(INNER, 100), 0.0)[0] == Verdict.DELIVERED
    assert sad.unprotect(esp.packet(INNER, 40), 0.0)[0] == Verdict.DELIVERED
    assert sad.unprotect(esp.packet(INNER, 36), 0.0)[0] == Verdict.OUTSIDE_WINDOW


@pytest.mark.parametrize("suite", ["aes-cbc-hmac", "aes-gcm"])
def test_esn_wrap(suite: str) -> None:
    """Catalogue ESP-015: 0xFFFFFFF0.. then 2^32 + 1..: only the low half is sent, the high
    half is in the ICV; a packet whose ICV used Seqh = 0 after the wrap fails."""
    params = _esp(suite, esn=True)
    esp = EspCrafter(params)
    sad = _receiver(params)
    inbound = sad.inbound(IpsecProtocol.ESP, params.spi)
    assert inbound is not None
    inbound.window.reset_window(0xFFFFFFE0)  # as if 0xFFFFFFE0 packets had arrived
    seqs = [*range(0xFFFFFFF0, 0x1_0000_0000), *range(0x1_0000_0001, 0x1_0000_0011)]
    datagrams = [esp.packet(INNER, s) for s in seqs]
    for s, d in zip(seqs, datagrams, strict=True):
        assert int.from_bytes(d[24:28]) == s & 0xFFFFFFFF
        assert sad.unprotect(d, 0.0)[0] == Verdict.DELIVERED, hex(s)
    wrong_high = esp.packet(INNER, 0x1_0000_0020, esn_high=0)
    assert sad.unprotect(wrong_high, 0.0)[0] == Verdict.INTEGRITY
    # and the oracle follows the wrap the same way
    entry_params = replace(params, ts_src=(), ts_dst=())
    from harness.probes.keys import IpsecSaEntry, KeySet

    oracle = check_packets(
        [ip_packet(d, i) for i, d in enumerate([*datagrams, wrong_high])],
        KeySet(ipsec=[IpsecSaEntry.from_params(entry_params, source="test")]),
    )
    r = oracle.report.sa(params.spi)
    assert (r.icv_good, r.icv_bad, r.out_of_order, r.gaps) == (len(seqs), 1, 0, 1)
    assert (r.seq_first, r.seq_max) == (0xFFFFFFF0, 0x1_0000_0010)


def test_esp_transport_mode_ipv6() -> None:
    params = ChildSaParams(
        spi=0x1000,
        protocol=IpsecProtocol.ESP,
        mode=Mode.TRANSPORT,
        src="2001:db8::1",
        dst="2001:db8::2",
        **SUITES["aes-gcm"],  # type: ignore[arg-type]
    )
    packet = udp_packet("2001:db8::1", "2001:db8::2", 1000, 2000, b"hello")
    out = EspCrafter(params).packet(packet, 1)
    verdict, inner, _ = _receiver(params).unprotect(out, 0.0)
    assert verdict == Verdict.DELIVERED and inner[40:] == packet[40:]


AH = ChildSaParams(
    spi=0xA0A0,
    protocol=IpsecProtocol.AH,
    mode=Mode.TUNNEL,
    src=A,
    dst=B,
    integ_id=IntegId.AUTH_HMAC_SHA2_256_128,
    integ_key=os.urandom(32),
)


def test_ah_round_trip_mutable_and_immutable_fields() -> None:
    ah = AhCrafter(AH)
    sad = _receiver(AH)
    assert sad.unprotect(ah.packet(INNER, 1), 0.0)[:2] == (Verdict.DELIVERED, INNER)
    # catalogue AH-001: TOS, flags, TTL and the checksum are zeroed for the ICV
    moved = mutate_ipv4(ah.packet(INNER, 2), ttl=7, tos=(46 << 2) | 1, df=True)  # ECT(1)
    assert sad.unprotect(moved, 0.0)[0] == Verdict.DELIVERED
    # catalogue AH-002: the Identification is covered; so is the payload
    assert (
        sad.unprotect(mutate_ipv4(ah.packet(INNER, 3), ident=0x1234), 0.0)[0] == Verdict.INTEGRITY
    )
    assert sad.unprotect(ah.corrupt(ah.packet(INNER, 4), "payload"), 0.0)[0] == Verdict.INTEGRITY
    assert sad.unprotect(ah.corrupt(ah.packet(INNER, 5), "icv"), 0.0)[0] == Verdict.INTEGRITY
    # catalogue AH-007: Reserved = 0xFFFF inside the ICV is accepted
    reserved = ah.packet(INNER, 6, reserved=0xFFFF)
    off = ah.ah_offset(reserved)
    assert reserved[off + 2 : off + 4] == b"\xff\xff"
    assert sad.unprotect(reserved, 0.0)[0] == Verdict.DELIVERED
    assert sad.unprotect(ah.packet(INNER, 6), 0.0)[0] == Verdict.REPLAY


def test_ah_ipv6_mutable_fields() -> None:
    params = replace(AH, src="2001:db8::1", dst="2001:db8::2", mode=Mode.TRANSPORT)
    ah = AhCrafter(params)
    sad = _receiver(params)
    packet = udp_packet("2001:db8::1", "2001:db8::2", 7, 9, b"v6")
    out = mutate_ipv6(ah.packet(packet, 1), traffic_class=0xB8, flow_label=0xABCDE, hop_limit=3)
    assert sad.unprotect(out, 0.0)[0] == Verdict.DELIVERED  # catalogue AH-004


# --- IKEv2 --------------------------------------------------------------------------------------


def _ike_entry() -> IkeSaEntry:
    return parse_wireshark(Capture("ikev2-aescbc-modp2048").wireshark).ike[0]


@pytest.mark.parametrize("name", ["ikev2-aescbc-modp2048", "ikev2-aesgcm-x25519"])
def test_ike_round_trip_with_live_keys(name: str) -> None:
    entry = parse_wireshark(Capture(name).wireshark).ike[0]
    me = IkeCrafter(entry, as_initiator=True)
    peer = IkeCrafter(entry, as_initiator=False)
    payloads = [
        v2p.NotifyPayload(NotifyType.COOKIE2, os.urandom(16)),
        v2p.DeletePayload(3, [b"\1\2\3\4"]),
    ]
    datagram = me.seal(me.message(ExchangeType.INFORMATIONAL, 7, payloads))
    msg, inner = peer.open(datagram)
    assert (msg.exchange_type, msg.message_id, msg.initiator, msg.response) == (37, 7, True, False)
    assert inner == payloads
    with pytest.raises(RemoteProtocolError, match="integrity"):
        peer.open(IkeCrafter.corrupt_icv(datagram))
    with pytest.raises(RemoteProtocolError, match="integrity"):
        me.open(datagram)  # our own message does not open with the peer's direction keys


def test_ike_malformations_keep_a_valid_icv() -> None:
    entry = _ike_entry()
    me = IkeCrafter(entry, as_initiator=True)
    peer = IkeCrafter(entry, as_initiator=False)
    # reserved header flags (RFC 7296 §3.1: ignored on receipt) and a minor version bump
    odd = me.seal(
        me.message(ExchangeType.INFORMATIONAL, 1, extra_flags=RESERVED_FLAGS, version=0x21)
    )
    _, inner = peer.open(odd)
    assert odd[19] & RESERVED_FLAGS == RESERVED_FLAGS and odd[17] == 0x21 and inner == []
    # an unknown payload marked critical inside SK (RFC 7296 §2.5)
    crit = me.seal(
        me.message(ExchangeType.INFORMATIONAL, 2, [v2p.UnknownPayload(250, b"??", critical=True)])
    )
    with pytest.raises(RemoteProtocolError) as err:
        peer.open(crit)
    assert err.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    # the same, non-critical, is skipped
    _, inner = peer.open(
        me.seal(me.message(ExchangeType.INFORMATIONAL, 3, [v2p.UnknownPayload(250, b"??")]))
    )
    assert [type(p).__name__ for p in inner] == ["UnknownPayload"]
    # reserved bits in an inner generic header (ignored) and an inner length that lies
    vid = [v2p.VendorIdPayload(b"v" * 8)]
    _, inner = peer.open(
        me.seal(
            me.message(ExchangeType.INFORMATIONAL, 4, vid), inner=lambda b: b[:1] + b"\x7f" + b[2:]
        )
    )
    assert inner == vid

    def longer(b: bytes) -> bytes:
        return b[:2] + (int.from_bytes(b[2:4]) + 4).to_bytes(2) + b[4:]

    with pytest.raises(RemoteProtocolError) as err:
        peer.open(me.seal(me.message(ExchangeType.INFORMATIONAL, 5, vid), inner=longer))
    assert err.value.notify == NotifyType.INVALID_SYNTAX
    # IKE header Length and SK payload Length that lie, under a valid ICV
    for kw in ({"header_length": 9999}, {"sk_length": 5}):
        datagram = me.seal(me.message(ExchangeType.INFORMATIONAL, 6), **kw)  # type: ignore[arg-type]
        with pytest.raises(RemoteProtocolError) as err:
            peer.open(datagram)
        assert err.value.notify == NotifyType.INVALID_SYNTAX


def test_cleartext_ike_and_header_patches() -> None:
    spi = os.urandom(8)
    sa_init = ike_message(
        ExchangeType.IKE_SA_INIT, 0, spi, bytes(8), [v2p.NoncePayload(os.urandom(32))]
    )
    msg = v2msg.decode_message(sa_init)
    assert msg.spi_i == spi and isinstance(msg.payloads[0], v2p.NoncePayload)
    with pytest.raises(RemoteProtocolError) as err:
        v2msg.decode_message(patch_ike_header(sa_init, version=0x30))  # RFC 7296 §2.5
    assert err.value.notify == NotifyType.INVALID_MAJOR_VERSION
    with pytest.raises(RemoteProtocolError):
        v2msg.decode_message(patch_ike_header(sa_init, length=len(sa_init) + 1))
    assert v2msg.decode_message(patch_ike_header(sa_init, flags=0x08 | 0x01)).initiator


# --- cleartext IKE ------------------------------------------------------------------------------


def test_sa_init_builder_and_forged_natd() -> None:
    from reference_impl.ike.types import natd_hash

    init = SaInit(natd=(("198.18.0.1", 500), ("198.18.0.2", 500)))
    msg = v2msg.decode_message(init.encode())
    assert [type(p).__name__ for p in msg.payloads] == [
        "SaPayload",
        "KePayload",
        "NoncePayload",
        "NotifyPayload",
        "NotifyPayload",
    ]
    ke = msg.get(v2p.KePayload)
    assert ke is not None and ke.dh_group == 14 and len(ke.data) == 256
    src = msg.notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert src is not None and src.data == natd_hash(init.spi_i, bytes(8), ("198.18.0.1", 500))
    forged = v2msg.decode_message(replace(init, forge_natd=True).encode())
    dst = forged.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert dst is not None and dst.data != natd_hash(init.spi_i, bytes(8), ("198.18.0.2", 500))
    no_len = SaInit(proposals=[ike_proposal(encr=(12, None))])  # catalogue IKEV2-NEG-006
    (prop,) = v2msg.decode_message(no_len.encode()).get(v2p.SaPayload).proposals  # type: ignore[union-attr]
    assert prop.transforms[0].key_length is None


def test_sa_init_malformations_seen_by_the_ikev2_decoder() -> None:
    init = SaInit()
    good = init.encode()
    # catalogue IKEV2-ROB-001/002/007: versions and the R flag
    with pytest.raises(RemoteProtocolError) as err:
        v2msg.decode_message(init.encode(version=0x30))
    assert err.value.notify == NotifyType.INVALID_MAJOR_VERSION
    assert v2msg.decode_message(init.encode(version=0x21)).version == 0x21
    assert v2msg.decode_message(init.encode(response=True)).response
    # IKEV2-ROB-003/004: unknown payload 200 between KE and Ni, critical or not
    crit = SaInit(extra=(v2p.UnknownPayload(200, b"x", critical=True),)).encode()
    with pytest.raises(RemoteProtocolError) as err:
        v2msg.decode_message(crit)
    assert err.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and err.value.data == b"\xc8"
    skipped = v2msg.decode_message(SaInit(extra=(v2p.UnknownPayload(200, b"x"),)).encode())
    assert [p.payload_type for p in skipped.payloads] == [33, 34, 0, 40]
    # IKEV2-ROB-006: every reserved bit set is ignored
    odd = set_reserved_bits(good)
    assert odd != good and odd[19] & RESERVED_FLAGS == RESERVED_FLAGS
    assert v2msg.decode_message(odd).payloads == v2msg.decode_message(good).payloads
    spans = payload_spans(good)
    assert [s.type for s in spans] == [33, 34, 40] and spans[0].offset == 28
    # IKEV2-ROB-008: lengths that lie
    with pytest.raises(RemoteProtocolError):
        v2msg.decode_message(patch_ike_header(good, length=len(good) + 100))
    with pytest.raises(RemoteProtocolError):
        v2msg.decode_message(edit_payload(good, 0, length_delta=-8))
    # IKEV2-ROB-009: an 8-octet nonce
    with pytest.raises(RemoteProtocolError):
        v2msg.decode_message(edit_payload(good, 2, body=bytes(8)))


def test_ikev1_main_mode_1_header_errors() -> None:
    from reference_impl.isakmp import codec as v1
    from reference_impl.isakmp.constants import NotifyType as V1Notify

    mm1 = ikev1_main_mode_1(vendor_ids=[b"harness"])
    msg = v1.decode_message(mm1)
    assert msg.header.exchange_type == 2 and len(msg.payloads) == 2
    for kw, notify in (
        ({"version": 0x20}, V1Notify.INVALID_MAJOR_VERSION),  # catalogue IKEV1-017
        ({"exchange": 200}, V1Notify.INVALID_EXCHANGE_TYPE),
        ({"flags": 0x80}, V1Notify.INVALID_FLAGS),
    ):
        with pytest.raises(RemoteProtocolError) as err:
            v1.decode_message(patch_ike_header(mm1, **kw))  # type: ignore[arg-type]
        assert err.value.notify == notify
