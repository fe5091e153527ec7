"""ISAKMP message codec: the header and every payload of RFC 2408 §3, the IPsec DOI parts of
RFC 2407 §4, and NAT-D/NAT-OA of RFC 3947 §3.2/§5.2.

Decoding is strict (RFC 2408 §5): anything malformed raises
:class:`~reference_impl.errors.RemoteProtocolError` whose ``notify`` is the RFC 2408 §3.14.1
type to answer with, and nothing else escapes. Decoded payloads keep their wire octets
(``raw``, generic header included) because IKEv1 hashes them: SAi_b and IDii_b in HASH_I
(RFC 2409 §5), and "the rest of the message" in Quick Mode HASH(1)/(2) (RFC 2409 §5.5).

Encrypted messages (the E flag, RFC 2408 §3.1) are decoded in two steps: :func:`decode_message`
returns the header and the ciphertext; after decryption :func:`decode_payloads` parses the
plaintext, allowing the trailing padding RFC 2409 Appendix B permits.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import TypeVar

from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.isakmp.constants import (
    GENERIC_HEADER_LEN,
    HEADER_LEN,
    ISAKMP_VERSION,
    Doi,
    ExchangeType,
    Flags,
    IdType,
    NotifyType,
    PayloadType,
    Situation,
)

_KNOWN_EXCHANGES = frozenset(int(e) for e in ExchangeType if e != ExchangeType.NONE)
_ALL_FLAGS = int(Flags.ENCRYPTION | Flags.COMMIT | Flags.AUTHENTICATION_ONLY)

_HDR = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, notify=NotifyType.PAYLOAD_MALFORMED)


# --------------------------------------------------------------------------------------------
# Data attributes (RFC 2408 §3.3)


@dataclass(frozen=True, slots=True)
class Attribute:
    """One SA attribute (RFC 2408 §3.3).

    An ``int`` value is the basic (TV) form and must fit 16 bits; a ``bytes`` value is the
    variable (TLV) form. Use :meth:`as_int` where RFC 2409 Appendix A allows either form
    (life durations).
    """

    type: int
    value: int | bytes

    def as_int(self) -> int:
        if isinstance(self.value, int):
            return self.value
        if not self.value or len(self.value) > 8:
            raise RemoteProtocolError(
                f"attribute {self.type} has an unusable length {len(self.value)}",
                notify=NotifyType.ATTRIBUTES_NOT_SUPPORTED,
            )
        return int.from_bytes(self.value, "big")

    @classmethod
    def integer(cls, attr_type: int, value: int) -> Attribute:
        """Basic form when the value fits 16 bits, otherwise the shortest variable form."""
        if 0 <= value < 0x10000:
            return cls(attr_type, value)
        length = max(4, (value.bit_length() + 7) // 8)
        return cls(attr_type, value.to_bytes(length, "big"))

    def encode(self) -> bytes:
        if not 0 <= self.type < 0x8000:
            raise LocalProtocolError(f"attribute type {self.type} out of range")
        if isinstance(self.value, int):
            if not 0 <= self.value < 0x10000:
                raise LocalProtocolError("a basic attribute value must fit 16 bits")
            return struct.pack("!HH", 0x8000 | self.type, self.value)
        if len(self.value) >= 0x10000:
            raise LocalProtocolError("attribute value too long")
        return struct.pack("!HH", self.type, len(self.value)) + self.value


def decode_attributes(data: bytes) -> tuple[Attribute, ...]:
    """RFC 2408 §3.3; the attributes fill ``data`` exactly."""
    attrs: list[Attribute] = []
    off = 0
    end = len(data)
    while off < end:
        if end - off < 4:
            raise _malformed("truncated data attribute")
        af_type, val = struct.unpack_from("!HH", data, off)
        off += 4
        if af_type & 0x8000:
            attrs.append(Attribute(af_type & 0x7FFF, val))
        else:
            if end - off < val:
                raise _malformed("data attribute value overruns its transform")
            attrs.append(Attribute(af_type, bytes(data[off : off + val])))
            off += val
    return tuple(attrs)


# --------------------------------------------------------------------------------------------
# Payloads


@dataclass(frozen=True, slots=True)
class Payload:
    """Base of all payloads. ``raw`` is the payload's wire form (generic header included)
    when it was decoded; empty for payloads built locally."""

    raw: bytes = field(default=b"", compare=False, repr=False, kw_only=True)

    @property
    def payload_type(self) -> int:
        raise NotImplementedError

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @property
    def body(self) -> bytes:
        """The payload without its generic header (e.g. SAi_b, IDii_b of RFC 2409 §5)."""
        return self.raw[GENERIC_HEADER_LEN:] if self.raw else self.encode_body()


@dataclass(frozen=True, slots=True)
class Transform(Payload):
    """RFC 2408 §3.6 Transform payload (it travels inside a Proposal)."""

    number: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    @property
    def payload_type(self) -> int:
        return PayloadType.T

    def encode_body(self) -> bytes:
        return bytes((self.number, self.transform_id, 0, 0)) + b"".join(
            a.encode() for a in self.attributes
        )

    def attr(self, attr_type: int) -> Attribute | None:
        for a in self.attributes:
            if a.type == attr_type:
                return a
        return None


@dataclass(frozen=True, slots=True)
class Proposal(Payload):
    """RFC 2408 §3.5 Proposal payload (inside an SA payload)."""

    number: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]

    @property
    def payload_type(self) -> int:
        return PayloadType.P

    def encode_body(self) -> bytes:
        if len(self.transforms) > 255 or len(self.spi) > 255:
            raise LocalProtocolError("too many transforms or SPI too long")
        head = bytes((self.number, self.protocol_id, len(self.spi), len(self.transforms)))
        return head + self.spi + _chain(self.transforms, PayloadType.T)


@dataclass(frozen=True, slots=True)
class SaPayload(Payload):
    """RFC 2408 §3.4 Security Association payload with the IPsec DOI situation (RFC 2407
    §4.6.1). Only SIT_IDENTITY_ONLY is supported (labelled secrecy/integrity are not)."""

    proposals: tuple[Proposal, ...]
    doi: int = Doi.IPSEC
    situation: int = Situation.SIT_IDENTITY_ONLY

    @property
    def payload_type(self) -> int:
        return PayloadType.SA

    def encode_body(self) -> bytes:
        return struct.pack("!II", self.doi, self.situation) + _chain(self.proposals, PayloadType.P)


@dataclass(frozen=True, slots=True)
class KePayload(Payload):
    """RFC 2408 §3.7 Key Exchange payload."""

    data: bytes

    @property
    def payload_type(self) -> int:
        return PayloadType.KE

    def encode_body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class IdPayload(Payload):
    """RFC 2408 §3.8 Identification payload with the IPsec DOI fields (RFC 2407 §4.6.2)."""

    id_type: int
    data: bytes
    protocol_id: int = 0
    port: int = 0

    @property
    def payload_type(self) -> int:
        return PayloadType.ID

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.id_type, self.protocol_id, self.port) + self.data


@dataclass(frozen=True, slots=True)
class CertPayload(Payload):
    """RFC 2408 §3.9 Certificate payload."""

    encoding: int
    data: bytes

    @property
    def payload_type(self) -> int:
        return PayloadType.CERT

    def encode_body(self) -> bytes:
        return bytes((self.encoding,)) + self.data


@dataclass(frozen=True, slots=True)
class CrPayload(Payload):
    """RFC 2408 §3.10 Certificate Request payload (authority: a DER DN, or empty)."""

    cert_type: int
    authority: bytes = b""

    @property
    def payload_type(self) -> int:
        return PayloadType.CR

    def encode_body(self) -> bytes:
        return bytes((self.cert_type,)) + self.authority


@dataclass(frozen=True, slots=True)
class HashPayload(Payload):
    """RFC 2408 §3.11."""

    data: bytes

    @property
    def payload_type(self) -> int:
        return PayloadType.HASH

    def encode_body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class SigPayload(Payload):
    """RFC 2408 §3.12."""

    data: bytes

    @property
    def payload_type(self) -> int:
        return PayloadType.SIG

    def encode_body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class NoncePayload(Payload):
    """RFC 2408 §3.13."""

    data: bytes

    @property
    def payload_type(self) -> int:
        return PayloadType.NONCE

    def encode_body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class NotifyPayload(Payload):
    """RFC 2408 §3.14 Notification payload."""

    notify_type: int
    protocol_id: int = 0
    spi: bytes = b""
    data: bytes = b""
    doi: int = Doi.IPSEC

    @property
    def payload_type(self) -> int:
        return PayloadType.N

    def encode_body(self) -> bytes:
        if len(self.spi) > 255:
            raise LocalProtocolError("SPI too long")
        head = struct.pack("!IBBH", self.doi, self.protocol_id, len(self.spi), self.notify_type)
        return head + self.spi + self.data


@dataclass(frozen=True, slots=True)
class DeletePayload(Payload):
    """RFC 2408 §3.15 Delete payload."""

    protocol_id: int
    spis: tuple[bytes, ...]
    spi_size: int
    doi: int = Doi.IPSEC

    @property
    def payload_type(self) -> int:
        return PayloadType.D

    def encode_body(self) -> bytes:
        if any(len(s) != self.spi_size for s in self.spis):
            raise LocalProtocolError("every SPI of a Delete payload has the same size")
        head = struct.pack("!IBBH", self.doi, self.protocol_id, self.spi_size, len(self.spis))
        return head + b"".join(self.spis)


@dataclass(frozen=True, slots=True)
class VendorIdPayload(Payload):
    """RFC 2408 §3.16."""

    data: bytes

    @property
    def payload_type(self) -> int:
        return PayloadType.VID

    def encode_body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class NatDPayload(Payload):
    """RFC 3947 §3.2 NAT-Discovery payload (type 20; 130 in the drafts)."""

    hash: bytes
    type_number: int = PayloadType.NAT_D

    @property
    def payload_type(self) -> int:
        return self.type_number

    def encode_body(self) -> bytes:
        return self.hash


@dataclass(frozen=True, slots=True)
class NatOaPayload(Payload):
    """RFC 3947 §5.2 NAT Original Address payload (type 21; 131 in the drafts)."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    type_number: int = PayloadType.NAT_OA

    @property
    def payload_type(self) -> int:
        return self.type_number

    def encode_body(self) -> bytes:
        id_type = IdType.ID_IPV4_ADDR if self.address.version == 4 else IdType.ID_IPV6_ADDR
        return bytes((id_type, 0, 0, 0)) + self.address.packed


AnyPayload = (
    SaPayload
    | KePayload
    | IdPayload
    | CertPayload
    | CrPayload
    | HashPayload
    | SigPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | NatDPayload
    | NatOaPayload
)


def _chain(items: tuple[Payload, ...] | list[Payload], inner_type: int) -> bytes:
    """Proposals/transforms chain with 2/3 ("more follow") and 0 (RFC 2408 §3.5, §3.6)."""
    out = bytearray()
    for i, item in enumerate(items):
        body = item.encode_body()
        nxt = inner_type if i + 1 < len(items) else 0
        out += _generic(nxt, body)
    return bytes(out)


def _generic(next_payload: int, body: bytes) -> bytes:
    length = GENERIC_HEADER_LEN + len(body)
    if length > 0xFFFF:
        raise LocalProtocolError("payload longer than 65535 octets")
    return _GEN.pack(next_payload, 0, length) + body


def encode_payloads(payloads: list[AnyPayload] | tuple[AnyPayload, ...]) -> bytes:
    """Chain payloads (RFC 2408 §3.2). The first payload's type goes in the header (or the
    preceding payload); use :func:`first_payload_type`."""
    out = bytearray()
    n = len(payloads)
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].payload_type if i + 1 < n else 0
        out += _generic(nxt, p.encode_body())
    return bytes(out)


def first_payload_type(payloads: list[AnyPayload] | tuple[AnyPayload, ...]) -> int:
    return payloads[0].payload_type if payloads else 0


# --------------------------------------------------------------------------------------------
# Header and message


@dataclass(frozen=True, slots=True)
class Header:
    """RFC 2408 §3.1 ISAKMP header."""

    icookie: bytes
    rcookie: bytes
    next_payload: int
    exchange_type: int
    flags: int
    message_id: int
    length: int
    version: int = ISAKMP_VERSION

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & Flags.ENCRYPTION)

    def encode(self) -> bytes:
        return _HDR.pack(
            self.icookie,
            self.rcookie,
            self.next_payload,
            self.version,
            self.exchange_type,
            self.flags,
            self.message_id,
            self.length,
        )


_P = TypeVar("_P", bound=Payload)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded message: its header and either its payloads or, if encrypted, ciphertext."""

    header: Header
    payloads: tuple[AnyPayload, ...] = ()
    ciphertext: bytes = b""

    def find(self, cls: type[_P]) -> _P | None:
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def find_all(self, cls: type[_P]) -> list[_P]:
        return [p for p in self.payloads if isinstance(p, cls)]


def encode_message(
    icookie: bytes,
    rcookie: bytes,
    exchange_type: int,
    flags: int,
    message_id: int,
    payloads: list[AnyPayload] | tuple[AnyPayload, ...],
) -> bytes:
    """A plaintext message (RFC 2408 §3.1)."""
    body = encode_payloads(payloads)
    return encode_raw(
        icookie, rcookie, first_payload_type(payloads), exchange_type, flags, message_id, body
    )


def encode_raw(
    icookie: bytes,
    rcookie: bytes,
    next_payload: int,
    exchange_type: int,
    flags: int,
    message_id: int,
    body: bytes,
) -> bytes:
    """Header plus an already chained (possibly encrypted) body."""
    if len(icookie) != 8 or len(rcookie) != 8:
        raise LocalProtocolError("cookies are 8 octets")
    hdr = Header(
        icookie, rcookie, next_payload, exchange_type, flags, message_id, HEADER_LEN + len(body)
    )
    return hdr.encode() + body


def decode_header(data: bytes) -> Header:
    """RFC 2408 §5.1 checks that need no state: version, exchange type, flags, length."""
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError("shorter than an ISAKMP header", notify=None)
    icky, rcky, nxt, version, xchg, flags, msgid, length = _HDR.unpack_from(data, 0)
    if version >> 4 != 1:
        raise RemoteProtocolError(
            f"major version {version >> 4}", notify=NotifyType.INVALID_MAJOR_VERSION
        )
    if version & 0x0F != 0:
        raise RemoteProtocolError(
            f"minor version {version & 0x0F}", notify=NotifyType.INVALID_MINOR_VERSION
        )
    if xchg not in _KNOWN_EXCHANGES and not 240 <= xchg <= 255:
        raise RemoteProtocolError(f"exchange type {xchg}", notify=NotifyType.INVALID_EXCHANGE_TYPE)
    if flags & ~_ALL_FLAGS:
        raise RemoteProtocolError(f"flags {flags:#x}", notify=NotifyType.INVALID_FLAGS)
    if length != len(data):
        raise RemoteProtocolError(
            f"header length {length} but datagram {len(data)}",
            notify=NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
        )
    if icky == bytes(8):
        raise RemoteProtocolError("zero initiator cookie", notify=NotifyType.INVALID_COOKIE)
    return Header(icky, rcky, nxt, xchg, flags, msgid, length, version)


def decode_message(data: bytes) -> Message:
    """Decode a datagram (without the non-ESP marker). Encrypted bodies are left as
    ciphertext; decrypt them and call :func:`decode_payloads` with ``padded=True``."""
    hdr = decode_header(data)
    body = data[HEADER_LEN:]
    if hdr.encrypted:
        if not body:
            raise _malformed("empty encrypted body")
        return Message(hdr, (), bytes(body))
    return Message(hdr, decode_payloads(hdr.next_payload, body))


def decode_payloads(first_type: int, body: bytes, padded: bool = False) -> tuple[AnyPayload, ...]:
    """Walk the payload chain (RFC 2408 §3.2, §5.2). ``padded``: trailing octets after the last
    payload are padding of a decrypted body (RFC 2409 Appendix B) and are ignored."""
    out: list[AnyPayload] = []
    off = 0
    nxt = first_type
    end = len(body)
    while nxt != PayloadType.NONE:
        if end - off < GENERIC_HEADER_LEN:
            raise _malformed(f"truncated generic header of payload type {nxt}")
        follow, reserved, length = _GEN.unpack_from(body, off)
        if reserved != 0:
            raise _malformed(f"non-zero RESERVED in payload type {nxt}")
        if length < GENERIC_HEADER_LEN or off + length > end:
            raise RemoteProtocolError(
                f"payload type {nxt} length {length} does not fit",
                notify=NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
            )
        raw = bytes(body[off : off + length])
        out.append(_decode_one(nxt, raw))
        off += length
        nxt = follow
    if off != end and not padded:
        raise RemoteProtocolError(
            f"{end - off} octets after the last payload",
            notify=NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
        )
    return tuple(out)


def _need(raw: bytes, n: int, what: str) -> None:
    if len(raw) < GENERIC_HEADER_LEN + n:
        raise _malformed(f"{what} payload too short")


def _decode_one(ptype: int, raw: bytes) -> AnyPayload:
    b = raw[GENERIC_HEADER_LEN:]
    if ptype == PayloadType.SA:
        return _decode_sa(raw)
    if ptype == PayloadType.KE:
        if not b:
            raise _malformed("empty KE payload")
        return KePayload(b, raw=raw)
    if ptype == PayloadType.ID:
        _need(raw, 4, "ID")
        id_type, proto, port = struct.unpack_from("!BBH", b, 0)
        return IdPayload(id_type, b[4:], proto, port, raw=raw)
    if ptype == PayloadType.CERT:
        _need(raw, 1, "CERT")
        return CertPayload(b[0], b[1:], raw=raw)
    if ptype == PayloadType.CR:
        _need(raw, 1, "CR")
        return CrPayload(b[0], b[1:], raw=raw)
    if ptype == PayloadType.HASH:
        if not b:
            raise _malformed("empty HASH payload")
        return HashPayload(b, raw=raw)
    if ptype == PayloadType.SIG:
        if not b:
            raise _malformed("empty SIG payload")
        return SigPayload(b, raw=raw)
    if ptype == PayloadType.NONCE:
        return NoncePayload(b, raw=raw)
    if ptype == PayloadType.N:
        _need(raw, 8, "Notification")
        doi, proto, spi_size, ntype = struct.unpack_from("!IBBH", b, 0)
        if len(b) < 8 + spi_size:
            raise _malformed("Notification SPI overruns the payload")
        if doi not in (Doi.ISAKMP, Doi.IPSEC):
            raise RemoteProtocolError(f"DOI {doi}", notify=NotifyType.DOI_NOT_SUPPORTED)
        return NotifyPayload(ntype, proto, b[8 : 8 + spi_size], b[8 + spi_size :], doi, raw=raw)
    if ptype == PayloadType.D:
        _need(raw, 8, "Delete")
        doi, proto, spi_size, count = struct.unpack_from("!IBBH", b, 0)
        if doi not in (Doi.ISAKMP, Doi.IPSEC):
            raise RemoteProtocolError(f"DOI {doi}", notify=NotifyType.DOI_NOT_SUPPORTED)
        if len(b) != 8 + spi_size * count:
            raise _malformed("Delete payload length does not match its SPI count")
        if count and spi_size == 0:
            raise RemoteProtocolError("Delete with zero-size SPIs", notify=NotifyType.INVALID_SPI)
        spis = tuple(b[8 + i * spi_size : 8 + (i + 1) * spi_size] for i in range(count))
        return DeletePayload(proto, spis, spi_size, doi, raw=raw)
    if ptype == PayloadType.VID:
        return VendorIdPayload(b, raw=raw)
    if ptype in (PayloadType.NAT_D, PayloadType.NAT_D_DRAFT):
        if not b:
            raise _malformed("empty NAT-D payload")
        return NatDPayload(b, ptype, raw=raw)
    if ptype in (PayloadType.NAT_OA, PayloadType.NAT_OA_DRAFT):
        _need(raw, 4, "NAT-OA")
        id_type = b[0]
        if b[1:4] != b"\0\0\0":
            raise _malformed("non-zero RESERVED in NAT-OA")
        addr_bytes = b[4:]
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address
        if id_type == IdType.ID_IPV4_ADDR and len(addr_bytes) == 4:
            addr = ipaddress.IPv4Address(addr_bytes)
        elif id_type == IdType.ID_IPV6_ADDR and len(addr_bytes) == 16:
            addr = ipaddress.IPv6Address(addr_bytes)
        else:
            raise _malformed(f"NAT-OA with ID type {id_type} and {len(addr_bytes)} octets")
        return NatOaPayload(addr, ptype, raw=raw)
    raise RemoteProtocolError(f"payload type {ptype}", notify=NotifyType.INVALID_PAYLOAD_TYPE)


def _decode_sa(raw: bytes) -> SaPayload:
    """RFC 2408 §3.4, §5.4 (DOI, situation) and §5.5/§5.6 (proposals, transforms)."""
    _need(raw, 8, "SA")
    b = raw[GENERIC_HEADER_LEN:]
    doi, situation = struct.unpack_from("!II", b, 0)
    if doi not in (Doi.ISAKMP, Doi.IPSEC):
        raise RemoteProtocolError(f"DOI {doi}", notify=NotifyType.DOI_NOT_SUPPORTED)
    if situation != Situation.SIT_IDENTITY_ONLY:
        raise RemoteProtocolError(
            f"situation {situation:#x}", notify=NotifyType.SITUATION_NOT_SUPPORTED
        )
    proposals: list[Proposal] = []
    off = 8
    end = len(b)
    nxt: int = PayloadType.P
    while nxt != 0:
        if nxt != PayloadType.P:
            raise RemoteProtocolError(
                f"payload type {nxt} inside an SA payload", notify=NotifyType.BAD_PROPOSAL_SYNTAX
            )
        if end - off < 8:
            raise RemoteProtocolError("truncated proposal", notify=NotifyType.BAD_PROPOSAL_SYNTAX)
        follow, reserved, length = _GEN.unpack_from(b, off)
        if reserved or length < 8 or off + length > end:
            raise RemoteProtocolError("bad proposal header", notify=NotifyType.BAD_PROPOSAL_SYNTAX)
        proposals.append(_decode_proposal(bytes(b[off : off + length])))
        off += length
        nxt = follow
    if off != end:
        raise RemoteProtocolError(
            "octets after the last proposal", notify=NotifyType.BAD_PROPOSAL_SYNTAX
        )
    if not proposals:
        raise RemoteProtocolError("SA without proposals", notify=NotifyType.BAD_PROPOSAL_SYNTAX)
    numbers = [p.number for p in proposals]
    if numbers != sorted(numbers):
        # RFC 2408 §3.5: proposal numbers are monotonically increasing
        raise RemoteProtocolError(
            "proposal numbers decrease", notify=NotifyType.BAD_PROPOSAL_SYNTAX
        )
    return SaPayload(tuple(proposals), doi, situation, raw=raw)


def _decode_proposal(raw: bytes) -> Proposal:
    b = raw[GENERIC_HEADER_LEN:]
    number, proto, spi_size, ntrans = b[0], b[1], b[2], b[3]
    if proto == 0:
        raise RemoteProtocolError("protocol ID 0", notify=NotifyType.INVALID_PROTOCOL_ID)
    off = 4 + spi_size
    if off > len(b):
        raise RemoteProtocolError("proposal SPI overruns", notify=NotifyType.BAD_PROPOSAL_SYNTAX)
    spi = bytes(b[4:off])
    transforms: list[Transform] = []
    nxt: int = PayloadType.T
    end = len(b)
    while nxt != 0:
        if nxt != PayloadType.T:
            raise RemoteProtocolError(
                f"payload type {nxt} inside a proposal", notify=NotifyType.BAD_PROPOSAL_SYNTAX
            )
        if end - off < 8:
            raise RemoteProtocolError("truncated transform", notify=NotifyType.BAD_PROPOSAL_SYNTAX)
        follow, reserved, length = _GEN.unpack_from(b, off)
        if reserved or length < 8 or off + length > end:
            raise RemoteProtocolError("bad transform header", notify=NotifyType.BAD_PROPOSAL_SYNTAX)
        t = b[off + 4 : off + length]
        if t[2:4] != b"\0\0":
            raise _malformed("non-zero RESERVED2 in a transform")
        transforms.append(
            Transform(t[0], t[1], decode_attributes(bytes(t[4:])), raw=bytes(b[off : off + length]))
        )
        off += length
        nxt = follow
    if off != end:
        raise RemoteProtocolError(
            "octets after the last transform", notify=NotifyType.BAD_PROPOSAL_SYNTAX
        )
    if len(transforms) != ntrans:
        raise RemoteProtocolError(
            f"proposal announces {ntrans} transforms, carries {len(transforms)}",
            notify=NotifyType.BAD_PROPOSAL_SYNTAX,
        )
    return Proposal(number, proto, spi, tuple(transforms), raw=raw)
