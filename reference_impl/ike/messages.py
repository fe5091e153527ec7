"""IKEv2 messages: the IKE header (RFC 7296 §3.1) and a decoded payload list.

:func:`decode_message` is the decoder's entry point for a whole datagram (without the
non-ESP marker, which the I/O layer strips on port 4500, RFC 3948 §2.2). It returns a
:class:`Message` whose payloads are decoded; an Encrypted (SK) or Encrypted Fragment (SKF)
payload stays encrypted as the last payload until ``protection.SkProtection`` opens it.
Anything wrong raises :class:`~reference_impl.errors.RemoteProtocolError` (and only that).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TypeVar

from reference_impl.errors import RemoteProtocolError
from reference_impl.ike.enums import (
    IKE_MAJOR_VERSION,
    IKE_VERSION_OCTET,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    name_of,
)
from reference_impl.ike.payloads import (
    EncryptedFragmentPayload,
    EncryptedPayload,
    NotifyPayload,
    Payload,
    decode_chain,
    encode_chain,
    syntax_error,
)

HEADER = struct.Struct("!8s8sBBBBII")
HEADER_LEN = 28
NON_ESP_MARKER = b"\0\0\0\0"
"""Prefix of IKE messages on the NAT-T port (RFC 3948 §2.2); the I/O layer adds/strips it."""

_I = int(HeaderFlag.INITIATOR)
_R = int(HeaderFlag.RESPONSE)
_V = int(HeaderFlag.VERSION)

P = TypeVar("P", bound=Payload)


@dataclass(slots=True)
class Message:
    """One IKEv2 message: header fields and payloads.

    ``initiator`` is the I flag (the sender is the original initiator of the IKE SA),
    ``response`` the R flag. For messages we build, ``payloads`` are the payloads to protect
    (for an encrypted exchange, those that go *inside* SK).
    """

    exchange_type: int
    message_id: int
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    response: bool
    payloads: list[Payload] = field(default_factory=list)
    version: int = IKE_VERSION_OCTET
    version_flag: bool = False

    @property
    def flags(self) -> int:
        return (
            (_I if self.initiator else 0)
            | (_R if self.response else 0)
            | (_V if self.version_flag else 0)
        )

    @property
    def ike_sa_id(self) -> bytes:
        return self.spi_i + self.spi_r

    def get(self, cls: type[P]) -> P | None:
        """The first payload of class ``cls`` (exact class), or ``None``."""
        for p in self.payloads:
            if type(p) is cls:
                return p
        return None

    def all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if type(p) is cls]

    def notify(self, notify_type: int) -> NotifyPayload | None:
        for p in self.payloads:
            if type(p) is NotifyPayload and p.notify_type == notify_type:
                return p
        return None

    def notifies(self) -> list[NotifyPayload]:
        return [p for p in self.payloads if type(p) is NotifyPayload]

    @property
    def encrypted(self) -> EncryptedPayload | EncryptedFragmentPayload | None:
        """The still-encrypted SK/SKF payload, when this message was decoded with one."""
        if self.payloads:
            last = self.payloads[-1]
            if type(last) is EncryptedPayload or type(last) is EncryptedFragmentPayload:
                return last
        return None

    def summary(self) -> str:
        """strongSwan-like one-liner, e.g. ``IKE_SA_INIT request 0 [ SA KE No N(COOKIE) ]``."""
        names = []
        for p in self.payloads:
            if type(p) is NotifyPayload:
                names.append(f"N({name_of(NotifyType, p.notify_type)})")
            else:
                names.append(name_of(PayloadType, getattr(p, "type", p.payload_type)))
        kind = "response" if self.response else "request"
        ex = name_of(ExchangeType, self.exchange_type)
        return f"{ex} {kind} {self.message_id} [ {' '.join(names)} ]"


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed IKE header (RFC 7296 §3.1), for demultiplexing before a full decode."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    version: int
    exchange_type: int
    flags: int
    message_id: int
    length: int

    @property
    def initiator(self) -> bool:
        return bool(self.flags & _I)

    @property
    def response(self) -> bool:
        return bool(self.flags & _R)


def decode_header(data: bytes) -> Header:
    """Decode and check the IKE header of a whole datagram (RFC 7296 §3.1, §2.5).

    A major version above 2 answers INVALID_MAJOR_VERSION; below 2 (IKEv1) it is not ours and
    is dropped (``notify=None``). The Length field must equal the datagram length.
    """
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError(f"datagram of {len(data)} octets is shorter than an IKE header")
    h = Header(*HEADER.unpack_from(data))
    major = h.version >> 4
    if major != IKE_MAJOR_VERSION:
        if major > IKE_MAJOR_VERSION:
            raise RemoteProtocolError(
                f"IKE major version {major}", notify=NotifyType.INVALID_MAJOR_VERSION
            )
        raise RemoteProtocolError(f"IKE major version {major} is not IKEv2")
    if h.length != len(data):
        raise syntax_error(f"IKE header length {h.length} but datagram of {len(data)} octets")
    return h


def decode_message(data: bytes) -> Message:
    """Decode a whole IKEv2 datagram: header and payload chain (SK/SKF left encrypted)."""
    if len(data) < HEADER_LEN:
        decode_header(data)  # raises the precise error
    spi_i, spi_r, nxt, version, exchange, flags, mid, length = HEADER.unpack_from(data)
    if version >> 4 != IKE_MAJOR_VERSION or length != len(data):
        decode_header(data)  # raises the precise error
    payloads = decode_chain(data, HEADER_LEN, nxt)
    return Message(
        exchange,
        mid,
        spi_i,
        spi_r,
        bool(flags & _I),
        bool(flags & _R),
        payloads,
        version,
        bool(flags & _V),
    )


def encode_header(msg: Message, next_payload: int, length: int) -> bytes:
    return HEADER.pack(
        msg.spi_i,
        msg.spi_r,
        next_payload,
        msg.version,
        msg.exchange_type,
        msg.flags,
        msg.message_id,
        length,
    )


def encode_message(msg: Message) -> bytes:
    """Encode a message in clear (IKE_SA_INIT, or a message whose SK payload is prebuilt)."""
    first, body = encode_chain(msg.payloads)
    return encode_header(msg, first, HEADER_LEN + len(body)) + body


def peek_version(data: bytes) -> int | None:
    """The major version of an IKE datagram (1 or 2), for the node to route IKEv1 vs IKEv2."""
    if len(data) < HEADER_LEN:
        return None
    return data[17] >> 4
