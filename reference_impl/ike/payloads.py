"""IKEv2 payloads: encode and strict decode (RFC 7296 §3.2-§3.16, RFC 7383 §2.5).

Every payload is a small mutable slotted dataclass whose ``payload_type`` class attribute is
its Next Payload value; ``body()`` returns the payload's octets after the generic payload
header. :func:`decode_chain` walks a chain of payloads and is the only decoder entry point
(``messages.decode_message`` calls it): any malformation raises
:class:`~reference_impl.errors.RemoteProtocolError` naming the notify to answer with
(``INVALID_SYNTAX`` or ``UNSUPPORTED_CRITICAL_PAYLOAD``); nothing else escapes.

Reserved fields and the reserved bits of the generic header are ignored on receipt and sent as
zero (RFC 7296 §3.2). Unknown payload types are skipped unless their critical bit is set
(§2.5), in which case the whole message is rejected with UNSUPPORTED_CRITICAL_PAYLOAD carrying
the one-octet payload type.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from reference_impl.errors import RemoteProtocolError
from reference_impl.ike.enums import NotifyType, PayloadType, TransformAttribute
from reference_impl.sa import TrafficSelector, TsType

_GENERIC = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_TRANSFORM = struct.Struct("!BBHBBH")
_PROPOSAL = struct.Struct("!BBHBBBB")
_NOTIFY = struct.Struct("!BBH")
_DELETE = struct.Struct("!BBH")
_TS = struct.Struct("!BBHHH")
_TS4 = struct.Struct("!BBHHHII")
_ATTR_TV = struct.Struct("!HH")
_SKF = struct.Struct("!HH")

CRITICAL = 0x80
_HEAD4 = tuple(bytes((n, 0, 0, 0)) for n in range(256))
"""One octet and three reserved zero octets (ID, AUTH and CP payload headers), prebuilt."""

INVALID_SYNTAX = NotifyType.INVALID_SYNTAX


def syntax_error(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, notify=INVALID_SYNTAX)


class Payload:
    """Base of every payload; ``payload_type`` is the Next Payload value announcing it."""

    __slots__ = ()
    payload_type: ClassVar[int] = 0

    def body(self) -> bytes:
        raise NotImplementedError


# --- §3.3 Security Association --------------------------------------------------------------


@dataclass(slots=True)
class Transform:
    """One transform substructure (RFC 7296 §3.3.2) with its attributes (§3.3.5).

    ``key_length`` is the Key Length attribute (TV format, type 14) in bits, or ``None``.
    Any other attribute is kept in ``unknown_attributes`` as ``(type, value)``: a transform
    carrying one MUST be rejected during selection (§3.3.6).
    """

    type: int
    id: int
    key_length: int | None = None
    unknown_attributes: tuple[tuple[int, bytes], ...] = ()

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.key_length is not None:
            attrs = _ATTR_TV.pack(0x8000 | TransformAttribute.KEY_LENGTH, self.key_length)
        for atype, value in self.unknown_attributes:
            attrs += _ATTR_TV.pack(atype & 0x7FFF, len(value)) + value
        return _TRANSFORM.pack(0 if last else 3, 0, 8 + len(attrs), self.type, 0, self.id) + attrs


@dataclass(slots=True)
class Proposal:
    """One proposal substructure (RFC 7296 §3.3.1)."""

    num: int
    protocol_id: int
    spi: bytes
    transforms: list[Transform]
    encoded_transforms: bytes | None = field(default=None, compare=False, repr=False)
    """The transforms' octets, when the builder already has them (configured proposals are
    encoded once, not per message)."""
    raw: bytes = field(default=b"", compare=False, repr=False)
    """As received: the transform substructures' octets (a key for caching selections)."""

    def encode(self, last: bool) -> bytes:
        n = len(self.transforms)
        body = self.encoded_transforms
        if body is None:
            body = b"".join(t.encode(i == n - 1) for i, t in enumerate(self.transforms))
        head = _PROPOSAL.pack(
            0 if last else 2,
            0,
            8 + len(self.spi) + len(body),
            self.num,
            self.protocol_id,
            len(self.spi),
            n,
        )
        return head + self.spi + body


@dataclass(slots=True)
class SaPayload(Payload):
    """Security Association payload (RFC 7296 §3.3)."""

    payload_type: ClassVar[int] = PayloadType.SA
    proposals: list[Proposal]

    def body(self) -> bytes:
        n = len(self.proposals)
        return b"".join(p.encode(i == n - 1) for i, p in enumerate(self.proposals))


def _decode_attributes(data: bytes, off: int, end: int, t: Transform) -> None:
    unknown: list[tuple[int, bytes]] = []
    while off < end:
        if end - off < 4:
            raise syntax_error("truncated transform attribute")
        atype, value = _ATTR_TV.unpack_from(data, off)
        off += 4
        if atype & 0x8000:
            atype &= 0x7FFF
            if atype == TransformAttribute.KEY_LENGTH:
                if t.key_length is not None:
                    raise syntax_error("duplicate Key Length attribute")
                t.key_length = value
            else:
                unknown.append((atype, _U16.pack(value)))
        else:
            if end - off < value:
                raise syntax_error("transform attribute overruns its transform")
            unknown.append((atype, data[off : off + value]))
            off += value
    if unknown:
        t.unknown_attributes = tuple(unknown)


_TRANSFORMS: dict[bytes, tuple[int, tuple[Transform, ...]]] = {}
"""Decoded transform lists by their octets: peers send the same few proposals over and over.
The Transform objects are shared between decoded messages and must not be modified."""


def _decode_sa(data: bytes, off: int, end: int) -> SaPayload:
    proposals: list[Proposal] = []
    last = 2
    while off < end:
        if last != 2:
            raise syntax_error("data after the last proposal")
        if end - off < 8:
            raise syntax_error("truncated proposal")
        last, _, plen, num, proto, spi_size, ntrans = _PROPOSAL.unpack_from(data, off)
        if last not in (0, 2):
            raise syntax_error(f"bad Last Substruc {last} in proposal")
        if plen < 8 + spi_size or off + plen > end:
            raise syntax_error("bad proposal length")
        # §3.3.1: numbered from 1, each one the same (AND) or one more than the previous; an
        # answer carries the one chosen proposal with its original number (§3.3.6).
        if (proposals and num not in (proposals[-1].num, proposals[-1].num + 1)) or num == 0:
            raise syntax_error(f"proposal number {num} out of sequence")
        pend = off + plen
        toff = off + 8 + spi_size
        spi = data[off + 8 : toff]
        raw = data[toff:pend]
        cached = _TRANSFORMS.get(raw)
        if cached is not None and cached[0] == ntrans:
            proposals.append(Proposal(num, proto, spi, list(cached[1]), None, raw))
            off = pend
            continue
        transforms: list[Transform] = []
        tlast = 3
        while toff < pend:
            if tlast != 3:
                raise syntax_error("data after the last transform")
            if pend - toff < 8:
                raise syntax_error("truncated transform")
            tlast, _, tlen, ttype, _, tid = _TRANSFORM.unpack_from(data, toff)
            if tlast not in (0, 3):
                raise syntax_error(f"bad Last Substruc {tlast} in transform")
            if tlen < 8 or toff + tlen > pend:
                raise syntax_error("bad transform length")
            t = Transform(ttype, tid)
            if tlen > 8:
                _decode_attributes(data, toff + 8, toff + tlen, t)
            transforms.append(t)
            toff += tlen
        if tlast != 0 or len(transforms) != ntrans:
            raise syntax_error("transform count does not match the proposal")
        if len(_TRANSFORMS) > 512:
            _TRANSFORMS.clear()
        _TRANSFORMS[raw] = (ntrans, tuple(transforms))
        proposals.append(Proposal(num, proto, spi, transforms, None, raw))
        off = pend
    if last != 0:
        raise syntax_error("SA payload without a last proposal")
    return SaPayload(proposals)


# --- §3.4 Key Exchange ----------------------------------------------------------------------


@dataclass(slots=True)
class KePayload(Payload):
    """Key Exchange payload (RFC 7296 §3.4)."""

    payload_type: ClassVar[int] = PayloadType.KE
    dh_group: int
    data: bytes

    def body(self) -> bytes:
        return _U16.pack(self.dh_group) + b"\0\0" + self.data


def _decode_ke(data: bytes, off: int, end: int) -> KePayload:
    if end - off < 4:
        raise syntax_error("truncated KE payload")
    return KePayload(_U16.unpack_from(data, off)[0], data[off + 4 : end])


# --- §3.5 Identification --------------------------------------------------------------------


@dataclass(slots=True)
class IdPayload(Payload):
    """Identification payload body (RFC 7296 §3.5); see :class:`IdI` and :class:`IdR`."""

    id_type: int
    data: bytes

    def body(self) -> bytes:
        return _HEAD4[self.id_type] + self.data

    @property
    def rest(self) -> bytes:
        """The body as used for AUTH: ID Type | RESERVED | data (RFC 7296 §2.15 ``RestOfIDx``)."""
        return self.body()


@dataclass(slots=True)
class IdI(IdPayload):
    payload_type: ClassVar[int] = PayloadType.IDi


@dataclass(slots=True)
class IdR(IdPayload):
    payload_type: ClassVar[int] = PayloadType.IDr


_ID_LENGTHS = {1: 4, 5: 16}


def _decode_id(cls: type[IdPayload]) -> Callable[[bytes, int, int], IdPayload]:
    def decode(data: bytes, off: int, end: int) -> IdPayload:
        if end - off < 4:
            raise syntax_error("truncated ID payload")
        id_type = data[off]
        value = data[off + 4 : end]
        need = _ID_LENGTHS.get(id_type)
        if need is not None and len(value) != need:
            raise syntax_error(f"ID type {id_type} needs {need} octets, got {len(value)}")
        return cls(id_type, value)

    return decode


# --- §3.6 Certificate, §3.7 Certificate Request ---------------------------------------------


@dataclass(slots=True)
class CertPayload(Payload):
    """Certificate payload (RFC 7296 §3.6)."""

    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes

    def body(self) -> bytes:
        return bytes((self.encoding,)) + self.data


@dataclass(slots=True)
class CertReqPayload(Payload):
    """Certificate Request payload (RFC 7296 §3.7).

    For X.509 encodings ``data`` is a concatenation of SHA-1 hashes of trusted CAs' public
    keys (Subject Public Key Info); :attr:`authorities` splits it.
    """

    payload_type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes

    def body(self) -> bytes:
        return bytes((self.encoding,)) + self.data

    @property
    def authorities(self) -> list[bytes]:
        return [self.data[i : i + 20] for i in range(0, len(self.data) - 19, 20)]


def _decode_cert(data: bytes, off: int, end: int) -> CertPayload:
    if end - off < 1:
        raise syntax_error("truncated CERT payload")
    return CertPayload(data[off], data[off + 1 : end])


def _decode_certreq(data: bytes, off: int, end: int) -> CertReqPayload:
    if end - off < 1:
        raise syntax_error("truncated CERTREQ payload")
    enc = data[off]
    if enc == 4 and (end - off - 1) % 20:
        raise syntax_error("X.509 CERTREQ authority list is not a multiple of 20 octets")
    return CertReqPayload(enc, data[off + 1 : end])


# --- §3.8 Authentication, §3.9 Nonce ---------------------------------------------------------


@dataclass(slots=True)
class AuthPayload(Payload):
    """Authentication payload (RFC 7296 §3.8)."""

    payload_type: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes

    def body(self) -> bytes:
        return _HEAD4[self.method] + self.data


def _decode_auth(data: bytes, off: int, end: int) -> AuthPayload:
    if end - off < 4:
        raise syntax_error("truncated AUTH payload")
    return AuthPayload(data[off], data[off + 4 : end])


NONCE_MIN = 16
NONCE_MAX = 256


@dataclass(slots=True)
class NoncePayload(Payload):
    """Nonce payload (RFC 7296 §3.9): 16 to 256 octets."""

    payload_type: ClassVar[int] = PayloadType.NONCE
    data: bytes

    def body(self) -> bytes:
        return self.data


def _decode_nonce(data: bytes, off: int, end: int) -> NoncePayload:
    if not NONCE_MIN <= end - off <= NONCE_MAX:
        raise syntax_error(f"nonce of {end - off} octets (RFC 7296 §3.9: 16..256)")
    return NoncePayload(data[off:end])


# --- §3.10 Notify, §3.11 Delete, §3.12 Vendor ID ---------------------------------------------


@dataclass(slots=True)
class NotifyPayload(Payload):
    """Notify payload (RFC 7296 §3.10)."""

    payload_type: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int
    data: bytes = b""
    protocol_id: int = 0
    spi: bytes = b""

    def body(self) -> bytes:
        spi = self.spi
        if spi:
            return _NOTIFY.pack(self.protocol_id, len(spi), self.notify_type) + spi + self.data
        return _NOTIFY.pack(self.protocol_id, 0, self.notify_type) + self.data


def _decode_notify(data: bytes, off: int, end: int) -> NotifyPayload:
    if end - off < 4:
        raise syntax_error("truncated Notify payload")
    proto, spi_size, ntype = _NOTIFY.unpack_from(data, off)
    if end - off - 4 < spi_size:
        raise syntax_error("Notify SPI overruns the payload")
    s = off + 4 + spi_size
    return NotifyPayload(ntype, data[s:end], proto, data[off + 4 : s])


@dataclass(slots=True)
class DeletePayload(Payload):
    """Delete payload (RFC 7296 §3.11). An IKE SA delete has no SPIs."""

    payload_type: ClassVar[int] = PayloadType.DELETE
    protocol_id: int
    spis: list[bytes] = field(default_factory=list)

    def body(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        return _DELETE.pack(self.protocol_id, size, len(self.spis)) + b"".join(self.spis)


def _decode_delete(data: bytes, off: int, end: int) -> DeletePayload:
    if end - off < 4:
        raise syntax_error("truncated Delete payload")
    proto, size, count = _DELETE.unpack_from(data, off)
    if proto == 1 and (size or count):
        raise syntax_error("an IKE SA Delete carries no SPIs (RFC 7296 §3.11)")
    if proto in (2, 3) and size != 4:
        raise syntax_error(f"ESP/AH Delete with SPI size {size}")
    if end - off - 4 != size * count:
        raise syntax_error("Delete payload length does not match its SPI count")
    o = off + 4
    return DeletePayload(proto, [data[o + i * size : o + (i + 1) * size] for i in range(count)])


@dataclass(slots=True)
class VendorIdPayload(Payload):
    """Vendor ID payload (RFC 7296 §3.12)."""

    payload_type: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes

    def body(self) -> bytes:
        return self.data


def _decode_vendor(data: bytes, off: int, end: int) -> VendorIdPayload:
    return VendorIdPayload(data[off:end])


# --- §3.13 Traffic Selectors -----------------------------------------------------------------


@dataclass(slots=True)
class TsPayload(Payload):
    """Traffic Selector payload body (RFC 7296 §3.13); see :class:`TsI` and :class:`TsR`.

    Selectors of types other than TS_IPV4_ADDR_RANGE / TS_IPV6_ADDR_RANGE (e.g. RFC 4595
    Fibre Channel) are kept undecoded in ``unknown`` as ``(ts_type, octets)``.
    """

    selectors: list[TrafficSelector]
    unknown: tuple[tuple[int, bytes], ...] = ()

    def body(self) -> bytes:
        parts = [bytes((len(self.selectors) + len(self.unknown), 0, 0, 0))]
        for ts in self.selectors:
            start, end = ts.start_addr, ts.end_addr
            if start.version == 4:  # one pack with the addresses as integers
                parts.append(
                    _TS4.pack(
                        _V4, ts.ip_protocol, 16, ts.start_port, ts.end_port, int(start), int(end)
                    )
                )
                continue
            parts.append(_TS.pack(_V6, ts.ip_protocol, 40, ts.start_port, ts.end_port))
            parts.append(start.packed)
            parts.append(end.packed)
        for ts_type, raw in self.unknown:
            parts.append(bytes((ts_type,)) + raw)
        return b"".join(parts)


@dataclass(slots=True)
class TsI(TsPayload):
    payload_type: ClassVar[int] = PayloadType.TSi


@dataclass(slots=True)
class TsR(TsPayload):
    payload_type: ClassVar[int] = PayloadType.TSr


_SELECTORS: dict[bytes, TrafficSelector] = {}
"""Decoded selectors by their octets (TrafficSelector is immutable, so sharing is safe)."""
_V4 = TsType.TS_IPV4_ADDR_RANGE
_V6 = TsType.TS_IPV6_ADDR_RANGE


def _decode_ts(cls: type[TsPayload]) -> Callable[[bytes, int, int], TsPayload]:
    def decode(data: bytes, off: int, end: int) -> TsPayload:
        if end - off < 4:
            raise syntax_error("truncated TS payload")
        count = data[off]
        if count == 0:
            raise syntax_error("TS payload with no selectors")
        o = off + 4
        selectors: list[TrafficSelector] = []
        unknown: list[tuple[int, bytes]] = []
        for _ in range(count):
            if end - o < 8:
                raise syntax_error("truncated traffic selector")
            ts_type, proto, slen, sport, eport = _TS.unpack_from(data, o)
            if slen < 8 or o + slen > end:
                raise syntax_error("bad traffic selector length")
            raw = data[o : o + slen]
            known = _SELECTORS.get(raw)
            if known is not None:
                selectors.append(known)
                o += slen
                continue
            if ts_type == _V4:
                if slen != 16:
                    raise syntax_error("TS_IPV4_ADDR_RANGE must be 16 octets")
                a: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                    data[o + 8 : o + 12]
                )
                b: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                    data[o + 12 : o + 16]
                )
                selectors.append(TrafficSelector(a, b, proto, sport, eport))
            elif ts_type == _V6:
                if slen != 40:
                    raise syntax_error("TS_IPV6_ADDR_RANGE must be 40 octets")
                a = ipaddress.IPv6Address(data[o + 8 : o + 24])
                b = ipaddress.IPv6Address(data[o + 24 : o + 40])
                selectors.append(TrafficSelector(a, b, proto, sport, eport))
            else:
                unknown.append((ts_type, data[o + 1 : o + slen]))
                o += slen
                continue
            if len(_SELECTORS) > 1024:
                _SELECTORS.clear()
            _SELECTORS[raw] = selectors[-1]
            o += slen
        if o != end:
            raise syntax_error("TS payload length does not match its selectors")
        return cls(selectors, tuple(unknown))

    return decode


# --- §3.14 Encrypted and Authenticated, RFC 7383 §2.5 Encrypted Fragment --------------------


@dataclass(slots=True)
class EncryptedPayload(Payload):
    """Encrypted and Authenticated payload, still encrypted (RFC 7296 §3.14).

    ``inner_type`` is its Next Payload field: the type of the first payload inside.
    ``data`` is IV | ciphertext | ICV. It is always the last payload of a message.
    """

    payload_type: ClassVar[int] = PayloadType.SK
    inner_type: int
    data: bytes

    def body(self) -> bytes:
        return self.data


@dataclass(slots=True)
class EncryptedFragmentPayload(Payload):
    """Encrypted Fragment payload (RFC 7383 §2.5), still encrypted.

    ``inner_type`` is the first inner payload type in fragment 1 and 0 in the others.
    """

    payload_type: ClassVar[int] = PayloadType.SKF
    inner_type: int
    number: int
    total: int
    data: bytes

    def body(self) -> bytes:
        return _SKF.pack(self.number, self.total) + self.data


def _decode_skf(data: bytes, off: int, end: int, inner: int) -> EncryptedFragmentPayload:
    if end - off < 4:
        raise syntax_error("truncated SKF payload")
    number, total = _SKF.unpack_from(data, off)
    if number == 0 or total == 0 or number > total:
        raise syntax_error(f"bad fragment number {number} of {total} (RFC 7383 §2.5)")
    return EncryptedFragmentPayload(inner, number, total, data[off + 4 : end])


# --- §3.15 Configuration, §3.16 EAP, RFC 6467 GSPM -------------------------------------------


@dataclass(slots=True)
class CpPayload(Payload):
    """Configuration payload (RFC 7296 §3.15); ``attributes`` are ``(type, value)``."""

    payload_type: ClassVar[int] = PayloadType.CP
    cfg_type: int
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def body(self) -> bytes:
        parts = [bytes((self.cfg_type, 0, 0, 0))]
        for atype, value in self.attributes:
            parts.append(_ATTR_TV.pack(atype & 0x7FFF, len(value)))
            parts.append(value)
        return b"".join(parts)


def _decode_cp(data: bytes, off: int, end: int) -> CpPayload:
    if end - off < 4:
        raise syntax_error("truncated CP payload")
    cfg_type = data[off]
    o = off + 4
    attrs: list[tuple[int, bytes]] = []
    while o < end:
        if end - o < 4:
            raise syntax_error("truncated configuration attribute")
        atype, alen = _ATTR_TV.unpack_from(data, o)
        o += 4
        if end - o < alen:
            raise syntax_error("configuration attribute overruns the CP payload")
        attrs.append((atype & 0x7FFF, data[o : o + alen]))
        o += alen
    return CpPayload(cfg_type, attrs)


@dataclass(slots=True)
class EapPayload(Payload):
    """EAP payload (RFC 7296 §3.16): one EAP message (RFC 3748 §4)."""

    payload_type: ClassVar[int] = PayloadType.EAP
    message: bytes

    def body(self) -> bytes:
        return self.message

    @property
    def code(self) -> int:
        return self.message[0]


def _decode_eap(data: bytes, off: int, end: int) -> EapPayload:
    if end - off < 4:
        raise syntax_error("truncated EAP payload")
    if _U16.unpack_from(data, off + 2)[0] != end - off:
        raise syntax_error("EAP length does not match the EAP payload")
    return EapPayload(data[off:end])


@dataclass(slots=True)
class GspmPayload(Payload):
    """Generic Secure Password Methods payload (RFC 6467 §3.3): opaque method data."""

    payload_type: ClassVar[int] = PayloadType.GSPM
    data: bytes

    def body(self) -> bytes:
        return self.data


def _decode_gspm(data: bytes, off: int, end: int) -> GspmPayload:
    return GspmPayload(data[off:end])


@dataclass(slots=True)
class UnknownPayload(Payload):
    """A payload of a type we do not know, skipped because its critical bit was clear.

    Also usable to *send* odd payloads in conformance probes (``critical`` is sent as is).
    """

    type: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data


# --- the chain -------------------------------------------------------------------------------

_Decoder = Callable[[bytes, int, int], Payload]

DECODERS: dict[int, _Decoder] = {
    PayloadType.SA: _decode_sa,
    PayloadType.KE: _decode_ke,
    PayloadType.IDi: _decode_id(IdI),
    PayloadType.IDr: _decode_id(IdR),
    PayloadType.CERT: _decode_cert,
    PayloadType.CERTREQ: _decode_certreq,
    PayloadType.AUTH: _decode_auth,
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR_ID: _decode_vendor,
    PayloadType.TSi: _decode_ts(TsI),
    PayloadType.TSr: _decode_ts(TsR),
    PayloadType.CP: _decode_cp,
    PayloadType.EAP: _decode_eap,
    PayloadType.GSPM: _decode_gspm,
}

_SK = PayloadType.SK
_SKF_T = PayloadType.SKF


def decode_chain(data: bytes, off: int, first: int, end: int | None = None) -> list[Payload]:
    """Decode the payload chain starting at ``off`` whose first type is ``first``.

    The chain must end exactly at ``end`` (default: the end of ``data``). An Encrypted (SK) or
    Encrypted Fragment (SKF) payload ends the chain and must be the last octets (RFC 7296
    §3.14, RFC 7383 §2.5).
    """
    if end is None:
        end = len(data)
    payloads: list[Payload] = []
    ptype = first
    decoders = DECODERS
    try:
        while ptype:
            if end - off < 4:
                raise syntax_error(f"truncated payload header (type {ptype})")
            nxt, flags, plen = _GENERIC.unpack_from(data, off)
            if plen < 4 or off + plen > end:
                raise syntax_error(f"bad payload length {plen} (type {ptype})")
            pend = off + plen
            dec = decoders.get(ptype)
            if dec is not None:
                payloads.append(dec(data, off + 4, pend))
            elif ptype in (_SK, _SKF_T):
                if pend != end:
                    raise syntax_error("the Encrypted payload must be the last payload")
                if ptype == _SK:
                    payloads.append(EncryptedPayload(nxt, data[off + 4 : pend]))
                else:
                    payloads.append(_decode_skf(data, off + 4, pend, nxt))
                return payloads
            elif flags & CRITICAL:
                raise RemoteProtocolError(
                    f"unsupported critical payload type {ptype}",
                    notify=NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                    data=bytes((ptype & 0xFF,)),
                )
            else:
                payloads.append(UnknownPayload(ptype, data[off + 4 : pend]))
            off = pend
            ptype = nxt
    except RemoteProtocolError:
        raise
    except (ValueError, IndexError, struct.error) as exc:  # defence in depth: never escapes
        raise syntax_error(f"malformed payload: {exc}") from None
    if off != end:
        raise syntax_error(f"{end - off} octets after the last payload")
    return payloads


def encode_chain(payloads: Iterable[Payload], last_next: int = 0) -> tuple[int, bytes]:
    """Encode payloads as a chain; returns (type of the first payload, octets).

    ``last_next`` is the Next Payload of the last one (0 except for special layouts).
    """
    items = payloads if isinstance(payloads, list) else list(payloads)
    n = len(items)
    if not n:
        return last_next, b""
    # Walked backwards, so each generic header knows the type of the payload after it.
    parts: list[bytes] = [b""] * (2 * n)
    pack = _GENERIC.pack
    special = _SPECIAL
    nxt = last_next
    i = 2 * n
    for p in reversed(items):
        body = p.body()
        i -= 2
        cls = p.__class__
        if cls in special:
            if cls is UnknownPayload:
                parts[i] = pack(nxt, CRITICAL if p.critical else 0, 4 + len(body))
                parts[i + 1] = body
                nxt = p.type
                continue
            parts[i] = pack(p.inner_type, 0, 4 + len(body))
        else:
            parts[i] = pack(nxt, 0, 4 + len(body))
        parts[i + 1] = body
        nxt = p.payload_type
    return nxt, b"".join(parts)


_SPECIAL = frozenset((EncryptedPayload, EncryptedFragmentPayload, UnknownPayload))
