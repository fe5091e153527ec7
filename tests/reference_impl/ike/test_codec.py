"""The IKEv2 codec: every payload of RFC 7296 §3 and RFC 7383 §2.5 round-trips, and strict
decoding rejects malformed input with the notify RFC 7296 names."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from reference_impl.errors import RemoteProtocolError
from reference_impl.ike.enums import (
    AuthMethod,
    CertEncoding,
    CfgType,
    ConfigAttributeType,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
)
from reference_impl.ike.messages import (
    HEADER_LEN,
    Message,
    decode_header,
    decode_message,
    encode_message,
    peek_version,
)
from reference_impl.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    GspmPayload,
    IdI,
    IdR,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    Transform,
    TsI,
    TsR,
    UnknownPayload,
    VendorIdPayload,
)
from reference_impl.sa import TrafficSelector

from .captures import IKEV2_CAPTURES, load

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def msg(*payloads: Payload, exchange: int = ExchangeType.IKE_SA_INIT) -> Message:
    return Message(exchange, 0, SPI_I, SPI_R, True, False, list(payloads))


def roundtrip(m: Message) -> Message:
    data = encode_message(m)
    back = decode_message(data)
    assert encode_message(back) == data
    return back


def sa_payload() -> SaPayload:
    return SaPayload(
        [
            Proposal(
                1,
                1,
                b"",
                [
                    Transform(1, 12, 256),
                    Transform(3, 12),
                    Transform(2, 5),
                    Transform(4, 14),
                ],
            ),
            Proposal(2, 1, b"", [Transform(1, 20, 128), Transform(2, 5), Transform(4, 31)]),
            Proposal(
                3,
                3,
                b"\xde\xad\xbe\xef",
                [Transform(1, 20, 256), Transform(5, 0), Transform(9, 1, None, ((77, b"xy"),))],
            ),
        ]
    )


ALL_PAYLOADS: list[Payload] = [
    sa_payload(),
    KePayload(31, bytes(range(32))),
    NoncePayload(b"n" * 32),
    IdI(IdType.ID_IPV4_ADDR, bytes([10, 99, 0, 1])),
    IdR(IdType.ID_FQDN, b"peer.example"),
    IdI(IdType.ID_IPV6_ADDR, ipaddress.IPv6Address("2001:db8::1").packed),
    CertPayload(CertEncoding.X509_CERT_SIGNATURE, b"\x30\x82der"),
    CertReqPayload(CertEncoding.X509_CERT_SIGNATURE, b"a" * 20 + b"b" * 20),
    AuthPayload(AuthMethod.SHARED_KEY_MIC, b"m" * 32),
    NotifyPayload(NotifyType.COOKIE, b"c" * 16),
    NotifyPayload(NotifyType.REKEY_SA, b"", 3, b"\x01\x02\x03\x04"),
    NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x0e"),
    DeletePayload(1, []),
    DeletePayload(3, [b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]),
    VendorIdPayload(b"strongSwan"),
    TsI(
        [
            TrafficSelector.from_network("10.1.0.1/32"),
            TrafficSelector.from_network("10.1.0.0/24", 6, 80, 80),
        ]
    ),
    TsR(
        [TrafficSelector.from_network("2001:db8::/64", 17, 500, 4500)],
        ((9, b"\x00\x00\x0c" + b"fc-range"),),
    ),
    CpPayload(
        CfgType.CFG_REQUEST,
        [
            (ConfigAttributeType.INTERNAL_IP4_ADDRESS, b""),
            (ConfigAttributeType.INTERNAL_IP4_DNS, b""),
        ],
    ),
    EapPayload(b"\x02\x07\x00\x09\x01user"),
    GspmPayload(b"\x01gspm"),
    UnknownPayload(200, b"opaque", critical=False),
]


@pytest.mark.parametrize("payload", ALL_PAYLOADS, ids=lambda p: type(p).__name__)
def test_every_payload_roundtrips(payload: Payload) -> None:
    back = roundtrip(msg(payload, NoncePayload(b"x" * 16)))
    assert back.payloads[0] == payload


def test_all_payloads_in_one_chain() -> None:
    back = roundtrip(msg(*ALL_PAYLOADS))
    assert back.payloads == ALL_PAYLOADS


def test_encrypted_payload_is_last_and_keeps_inner_type() -> None:
    sk = EncryptedPayload(PayloadType.IDi, b"\x00" * 48)
    back = roundtrip(msg(NotifyPayload(NotifyType.COOKIE, b"c" * 8), sk, exchange=35))
    assert back.encrypted == sk
    skf = EncryptedFragmentPayload(PayloadType.IDi, 1, 3, b"\x01" * 40)
    back = roundtrip(msg(skf, exchange=35))
    assert back.encrypted == skf


def test_header_fields() -> None:
    m = Message(ExchangeType.CREATE_CHILD_SA, 7, SPI_I, SPI_R, False, True, [])
    data = encode_message(m)
    assert len(data) == HEADER_LEN
    h = decode_header(data)
    assert (h.exchange_type, h.message_id, h.flags, h.version) == (36, 7, 0x20, 0x20)
    assert not h.initiator and h.response
    assert peek_version(data) == 2


@pytest.mark.parametrize("name", IKEV2_CAPTURES)
def test_strongswan_cleartext_messages_roundtrip(name: str) -> None:
    """Every IKE datagram of the real captures decodes; IKE_SA_INIT re-encodes byte for byte."""
    cap = load(name)
    msgs = [decode_message(d.ike) for d in cap.ike]
    assert [m.exchange_type for m in msgs] == [34, 34, 35, 35]
    assert [m.response for m in msgs] == [False, True, False, True]
    for d, m in zip(cap.ike[:2], msgs[:2], strict=True):
        assert encode_message(m) == d.ike
        assert m.get(SaPayload) is not None
        assert m.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None
        assert m.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        sha = m.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        assert sha is not None and sha.data == bytes.fromhex("0002000300040005")
    for m in msgs[2:]:
        assert m.encrypted is not None and m.encrypted.inner_type in (PayloadType.IDi, 36)


# --- strictness ---------------------------------------------------------------------------------


def good_init() -> bytes:
    return encode_message(msg(sa_payload(), KePayload(31, b"k" * 32), NoncePayload(b"n" * 32)))


def expect(data: bytes, notify: int | None) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as ei:
        decode_message(data)
    assert ei.value.notify == notify, str(ei.value)
    return ei.value


def test_short_datagram_is_dropped_silently() -> None:
    expect(b"\x00" * 27, None)


def test_major_version_above_2_answers_invalid_major_version() -> None:
    data = bytearray(good_init())
    data[17] = 0x30
    expect(bytes(data), NotifyType.INVALID_MAJOR_VERSION)


def test_minor_version_is_ignored() -> None:
    data = bytearray(good_init())
    data[17] = 0x2F
    assert decode_message(bytes(data)).version == 0x2F


def test_ikev1_is_not_ours() -> None:
    data = bytearray(good_init())
    data[17] = 0x10
    expect(bytes(data), None)


def test_length_field_must_match_datagram() -> None:
    expect(good_init() + b"\x00", NotifyType.INVALID_SYNTAX)
    data = good_init()
    expect(data[:-1], NotifyType.INVALID_SYNTAX)


def test_reserved_bits_are_ignored() -> None:
    data = bytearray(good_init())
    data[19] |= 0x47  # reserved header flag bits
    data[HEADER_LEN + 1] |= 0x7F  # reserved bits of the first generic payload header
    m = decode_message(bytes(data))
    assert m.get(SaPayload) == sa_payload()


def test_unknown_critical_payload() -> None:
    m = msg(NoncePayload(b"n" * 16), UnknownPayload(201, b"zz", critical=True))
    err = expect(encode_message(m), NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)
    assert err.data == bytes([201])


def test_unknown_noncritical_payload_is_skipped() -> None:
    m = decode_message(encode_message(msg(UnknownPayload(201, b"zz"), NoncePayload(b"n" * 16))))
    assert type(m.payloads[1]) is NoncePayload


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


SA_OFF = HEADER_LEN + 4  # first proposal


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [
        (SA_OFF, b"\x03", "bad Last Substruc in proposal"),
        (SA_OFF + 4, b"\x00", "proposal number 0"),
        (SA_OFF + 7, b"\x05", "transform count"),
        (SA_OFF + 8, b"\x02", "bad Last Substruc in transform"),
        (SA_OFF + 2, b"\x00\x07", "proposal length too small"),
        (SA_OFF + 10, b"\x00\x04", "transform length too small"),
    ],
)
def test_sa_payload_strictness(offset: int, value: bytes, why: str) -> None:
    expect(patch(good_init(), offset, value), NotifyType.INVALID_SYNTAX)


def test_proposal_numbers_must_increase_by_one() -> None:
    bad = sa_payload()
    bad.proposals[2].num = 5
    expect(encode_message(msg(bad)), NotifyType.INVALID_SYNTAX)
    same = sa_payload()
    same.proposals[1].num = 1  # equal numbers are allowed (AND of protocols, §3.3.1)
    same.proposals[2].num = 2
    assert roundtrip(msg(same)).get(SaPayload) == same


@pytest.mark.parametrize(
    "payload",
    [
        NoncePayload(b"n" * 15),
        NoncePayload(b"n" * 257),
        IdI(IdType.ID_IPV4_ADDR, b"\x01\x02\x03"),
        IdR(IdType.ID_IPV6_ADDR, b"\x01" * 4),
        CertReqPayload(CertEncoding.X509_CERT_SIGNATURE, b"x" * 21),
        DeletePayload(3, [b"\x00\x00\x01"]),
        DeletePayload(1, [b"\x00\x00\x00\x01"]),
        TsI([]),
        EapPayload(b"\x02\x07\x00\x10\x01"),
    ],
    ids=lambda p: type(p).__name__,
)
def test_payload_strictness(payload: Payload) -> None:
    expect(encode_message(msg(payload)), NotifyType.INVALID_SYNTAX)


def test_traffic_selector_lengths() -> None:
    good = encode_message(msg(TsI([TrafficSelector.from_network("10.0.0.0/8")])))
    off = HEADER_LEN + 4 + 4  # first selector
    expect(patch(good, off + 2, b"\x00\x14"), NotifyType.INVALID_SYNTAX)  # v4 selector != 16
    expect(patch(good, off, b"\x08"), NotifyType.INVALID_SYNTAX)  # v6 type with v4 length
    expect(patch(good, HEADER_LEN + 4, b"\x02"), NotifyType.INVALID_SYNTAX)  # count 2, one


def test_skf_numbers() -> None:
    for number, total in ((0, 1), (3, 2), (1, 0)):
        skf = EncryptedFragmentPayload(36, number, total, b"\x00" * 32)
        expect(encode_message(msg(skf, exchange=35)), NotifyType.INVALID_SYNTAX)


def test_sk_must_be_last() -> None:
    good = encode_message(msg(EncryptedPayload(0, b"\x00" * 32), exchange=35))
    bad = good + NoncePayload(b"n" * 16).body()
    bad = patch(bad, 24, struct.pack("!I", len(bad)))
    expect(bad, NotifyType.INVALID_SYNTAX)


def test_trailing_octets_after_last_payload() -> None:
    good = encode_message(msg(NoncePayload(b"n" * 16)))
    bad = good + b"\x00\x00\x00\x00"
    bad = patch(bad, 24, struct.pack("!I", len(bad)))
    expect(bad, NotifyType.INVALID_SYNTAX)


def test_payload_length_overruns_message() -> None:
    good = encode_message(msg(NoncePayload(b"n" * 16)))
    expect(patch(good, HEADER_LEN + 2, b"\x00\x40"), NotifyType.INVALID_SYNTAX)
    expect(patch(good, HEADER_LEN + 2, b"\x00\x03"), NotifyType.INVALID_SYNTAX)


def test_transform_attributes() -> None:
    t = Transform(1, 12, 128, ((3, b"\x00\x01"),))
    back = roundtrip(msg(SaPayload([Proposal(1, 1, b"", [t])]))).get(SaPayload)
    assert back is not None and back.proposals[0].transforms[0] == t
    # a duplicate Key Length attribute is malformed
    raw = bytearray(encode_message(msg(SaPayload([Proposal(1, 1, b"", [Transform(1, 12, 128)])]))))
    raw += b"\x80\x0e\x00\x80"
    for off, delta in ((24, 4), (HEADER_LEN + 2, 4), (SA_OFF + 2, 4), (SA_OFF + 10, 4)):
        (v,) = struct.unpack_from("!H" if off != 24 else "!I", raw, off)
        struct.pack_into("!H" if off != 24 else "!I", raw, off, v + delta)
    expect(bytes(raw), NotifyType.INVALID_SYNTAX)
