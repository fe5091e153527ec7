"""ISAKMP codec (RFC 2408 §3, §5; RFC 2407 §4; RFC 3947 §3.2, §5.2)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_impl.errors import RemoteProtocolError
from reference_impl.isakmp.codec import (
    AnyPayload,
    Attribute,
    CertPayload,
    CrPayload,
    DeletePayload,
    HashPayload,
    IdPayload,
    KePayload,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    SigPayload,
    Transform,
    VendorIdPayload,
    decode_attributes,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
)
from reference_impl.isakmp.constants import (
    ExchangeType,
    Flags,
    IdType,
    NotifyType,
    OakleyAttr,
    PayloadType,
    ProtocolId,
    VendorId,
)
from tests.reference_impl.isakmp.capture import read_pcap

ICKY = bytes.fromhex("a3924f4d7434ae1c")
RCKY = bytes.fromhex("ea0f392adfe0f370")


def every_payload() -> list[AnyPayload]:
    sa = SaPayload(
        (
            Proposal(
                1,
                ProtocolId.PROTO_IPSEC_ESP,
                b"\x01\x02\x03\x04",
                (
                    Transform(1, 12, (Attribute(6, 128), Attribute(2, b"\x00\x01\x51\x80"))),
                    Transform(2, 3, (Attribute(5, 2),)),
                ),
            ),
            Proposal(1, ProtocolId.PROTO_IPSEC_AH, b"\x05\x06\x07\x08", (Transform(1, 3, ()),)),
            Proposal(2, ProtocolId.PROTO_IPSEC_ESP, b"\x01\x02\x03\x05", (Transform(1, 20, ()),)),
        )
    )
    return [
        sa,
        KePayload(b"\x11" * 256),
        IdPayload(IdType.ID_IPV4_ADDR_SUBNET, bytes([10, 1, 0, 0, 255, 255, 255, 0]), 17, 500),
        CertPayload(4, b"\x30\x03\x02\x01\x00"),
        CrPayload(4, b""),
        HashPayload(b"\x22" * 32),
        SigPayload(b"\x33" * 256),
        NoncePayload(b"\x44" * 32),
        NotifyPayload(NotifyType.R_U_THERE, ProtocolId.PROTO_ISAKMP, ICKY + RCKY, b"\0\0\0\7"),
        DeletePayload(ProtocolId.PROTO_IPSEC_ESP, (b"\1\2\3\4", b"\5\6\7\x08"), 4),
        VendorIdPayload(VendorId.DPD),
        NatDPayload(b"\x55" * 20),
        NatOaPayload(ipaddress.ip_address("192.0.2.7")),
        NatOaPayload(ipaddress.ip_address("2001:db8::1"), PayloadType.NAT_OA_DRAFT),
        NatDPayload(b"\x66" * 16, PayloadType.NAT_D_DRAFT),
    ]


def test_round_trip_every_payload() -> None:
    payloads = every_payload()
    wire = encode_message(ICKY, RCKY, ExchangeType.QUICK_MODE, 0, 0x12345678, payloads)
    msg = decode_message(wire)
    assert msg.header.icookie == ICKY and msg.header.rcookie == RCKY
    assert msg.header.exchange_type == ExchangeType.QUICK_MODE
    assert msg.header.message_id == 0x12345678
    assert msg.header.length == len(wire)
    assert list(msg.payloads) == payloads
    # raw octets are kept: re-encoding the decoded payloads gives the same body
    assert b"".join(p.raw for p in msg.payloads) == wire[28:]
    assert encode_payloads(msg.payloads) == wire[28:]


def test_attribute_forms() -> None:
    # RFC 2408 §3.3: AF=1 is TV (2-octet value), AF=0 is TLV
    assert Attribute(OakleyAttr.LIFE_DURATION, 15840).encode() == bytes.fromhex("800c3de0")
    assert Attribute.integer(12, 86400).encode() == bytes.fromhex("000c000400015180")
    assert Attribute.integer(12, 86400).as_int() == 86400
    assert decode_attributes(bytes.fromhex("800c3de0000c000400015180")) == (
        Attribute(12, 15840),
        Attribute(12, b"\x00\x01\x51\x80"),
    )
    with pytest.raises(RemoteProtocolError) as e:
        Attribute(12, b"").as_int()
    assert e.value.notify == NotifyType.ATTRIBUTES_NOT_SUPPORTED


def test_strongswan_capture_decodes() -> None:
    """Every IKE message of the strongSwan 5.9.8 Main Mode + Quick Mode capture."""
    ike = []
    for d in read_pcap():
        p = d.payload
        if d.dport == 4500:
            if p[:4] != bytes(4):
                continue  # ESP in UDP (RFC 3948)
            p = p[4:]
        ike.append((d, decode_message(p)))
    assert len(ike) == 9
    kinds = [
        [p.payload_type for p in m.payloads] if not m.header.encrypted else "E" for _, m in ike
    ]
    sa, vid, ke, no, natd = 1, 13, 4, 10, 20
    assert kinds[:4] == [
        [sa, vid, vid, vid, vid, vid],
        [sa, vid, vid, vid, vid],
        [ke, no, natd, natd],
        [ke, no, natd, natd],
    ]
    assert kinds[4:] == ["E"] * 5
    mm1 = ike[0][1]
    vids = [v.data for v in mm1.find_all(VendorIdPayload)]
    assert vids == [
        VendorId.XAUTH,
        VendorId.DPD,
        VendorId.FRAGMENTATION,
        VendorId.NAT_T_RFC3947,
        VendorId.NAT_T_DRAFT_02_N,
    ]
    sa_p = mm1.find(SaPayload)
    assert sa_p is not None
    (t,) = sa_p.proposals[0].transforms
    assert [(a.type, a.value) for a in t.attributes] == [
        (1, 7), (14, 256), (2, 4), (4, 14), (3, 1), (11, 1), (12, 15840)
    ]  # fmt: skip
    # re-encoding reproduces the wire exactly
    for d, m in ike[:4]:
        again = encode_message(
            m.header.icookie, m.header.rcookie, m.header.exchange_type, m.header.flags,
            m.header.message_id, m.payloads,
        )  # fmt: skip
        assert again == d.payload
    assert ike[6][1].header.message_id == 3080355206
    assert all(m.header.flags == Flags.ENCRYPTION for _, m in ike[4:])


def _wire(body: bytes, first: int, xchg: int = 2, flags: int = 0, version: int = 0x10) -> bytes:
    return (
        struct.pack("!8s8sBBBBII", ICKY, RCKY, first, version, xchg, flags, 0, 28 + len(body))
        + body
    )


@pytest.mark.parametrize(
    ("wire", "notify"),
    [
        (_wire(b"", 0, version=0x20), NotifyType.INVALID_MAJOR_VERSION),
        (_wire(b"", 0, version=0x11), NotifyType.INVALID_MINOR_VERSION),
        (_wire(b"", 0, xchg=6), NotifyType.INVALID_EXCHANGE_TYPE),
        (_wire(b"", 0, flags=0x08), NotifyType.INVALID_FLAGS),
        (_wire(b"\x00\x00\x00\x05x", 99), NotifyType.INVALID_PAYLOAD_TYPE),
        (_wire(b"\x00\x01\x00\x05x", PayloadType.VID), NotifyType.PAYLOAD_MALFORMED),
        (_wire(b"\x00\x00\x00\x09x", PayloadType.VID), NotifyType.UNEQUAL_PAYLOAD_LENGTHS),
        (_wire(b"\x00\x00\x00\x05xx", PayloadType.VID), NotifyType.UNEQUAL_PAYLOAD_LENGTHS),
        (_wire(b"\x00\x00\x00\x0c\x00\x00\x00\x07\x00\x00\x00\x01", 1),
         NotifyType.DOI_NOT_SUPPORTED),
        (_wire(b"\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02", 1),
         NotifyType.SITUATION_NOT_SUPPORTED),
        (_wire(b"\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x01", 1),
         NotifyType.BAD_PROPOSAL_SYNTAX),
        (_wire(b"\x00\x00\x00\x04", PayloadType.KE), NotifyType.PAYLOAD_MALFORMED),
    ],
)  # fmt: skip
def test_strict_decoding(wire: bytes, notify: int) -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode_message(wire)
    assert e.value.notify == notify


def test_length_mismatch_and_short() -> None:
    w = _wire(b"", 0)
    with pytest.raises(RemoteProtocolError) as e:
        decode_message(w + b"\0")
    assert e.value.notify == NotifyType.UNEQUAL_PAYLOAD_LENGTHS
    with pytest.raises(RemoteProtocolError) as e:
        decode_message(w[:20])
    assert e.value.notify is None  # not even a header: drop silently


def test_transform_count_must_match() -> None:
    sa = SaPayload((Proposal(1, 1, b"", (Transform(1, 1, ()),)),))
    body = bytearray(encode_payloads([sa]))
    body[4 + 8 + 7] = 2  # "# of Transforms"
    with pytest.raises(RemoteProtocolError) as e:
        decode_payloads(PayloadType.SA, bytes(body))
    assert e.value.notify == NotifyType.BAD_PROPOSAL_SYNTAX


def test_padding_allowed_only_when_decrypted() -> None:
    body = encode_payloads([HashPayload(b"\1" * 20)]) + b"\0" * 7
    assert decode_payloads(PayloadType.HASH, body, padded=True) == (HashPayload(b"\1" * 20),)
    with pytest.raises(RemoteProtocolError):
        decode_payloads(PayloadType.HASH, body)


_VALID = encode_message(ICKY, RCKY, ExchangeType.QUICK_MODE, 0, 7, every_payload())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_message(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(_VALID)),
)
def test_fuzz_mutated_valid_message(flips: list[tuple[int, int]], cut: int) -> None:
    """Byte flips and truncations of a message holding every payload: only RemoteProtocolError."""
    data = bytearray(_VALID)
    for pos, val in flips:
        data[pos] = val
    data = data[:cut] if cut >= 28 else data
    try:
        decode_message(bytes(data))
    except RemoteProtocolError:
        pass
    try:
        decode_payloads(data[16] if len(data) > 16 else 1, bytes(data[28:]), padded=True)
    except RemoteProtocolError:
        pass
