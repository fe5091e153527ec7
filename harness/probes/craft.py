"""Crafted packets for the negative cases, and an injector that sends them from a node.

ESP/AH packets are built by the reference driver's outbound SAs (``reference_impl.driver``:
the harness's own encoder, checked against RFC known answers and scapy), never by scapy's
``SecurityAssociation`` (no receive replay window, GCM-ICV and NAT-T IPv6 bugs; catalogue
§12.3). :class:`EspCrafter` and :class:`AhCrafter` control what the negative cases need: the
sequence number (replay, window edges, ESN wrap with the high half only in the ICV), padding
(long, non-default), Next Header 59 dummies, TFC padding, and bit flips in any field
afterwards (:meth:`EspCrafter.corrupt`), plus AH's Reserved field and the IPv4 fields that
change in transit (:func:`mutate_ipv4`).

IKEv2 messages are built with the IKEv2 codec and SK-protected with live SA keys
(:class:`IkeCrafter`, the IKE SA's :class:`~harness.probes.keys.IkeSaEntry`), so that they
pass the integrity check and reach the code under test; malformed variants keep a valid ICV:
reserved flag bits, another version octet, a wrong Length in the IKE header or the SK
payload, reserved bits or lengths inside the encrypted chain (``inner`` hook), unknown
critical payloads (:class:`~reference_impl.ike.payloads.UnknownPayload`). Cleartext messages
(IKE_SA_INIT) are patched with :func:`patch_ike_header`. Inner test packets come from scapy.

:class:`Injector` sends octets from a topology node: UDP from a chosen source port (through
a raw socket when the port is taken, e.g. by the node's IKE daemon), optionally with the
non-ESP marker, or whole IP datagrams through a raw socket (root/CAP_NET_RAW in the node).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.probes.keys import IkeSaEntry, IpsecSaEntry
from reference_impl.crypto import (
    IkeKeys,
    encr,
    integ,
)
from reference_impl.driver.ah import AhOutbound, icv_input
from reference_impl.driver.base import DriverContext, SaOptions
from reference_impl.driver.esp import EspOutbound, OutboundSa
from reference_impl.driver.packet import IPPROTO_AH, IPPROTO_ESP, checksum, parse_ip
from reference_impl.errors import LocalProtocolError
from reference_impl.ike import messages as v2msg
from reference_impl.ike import payloads as v2p
from reference_impl.ike.enums import IKE_VERSION_OCTET, ExchangeType, HeaderFlag, PayloadType
from reference_impl.ike.protection import SkProtection
from reference_impl.sa import ChildSaParams, IpsecProtocol

# --- inner packets (scapy: the harness may use it, the data path may not) -----------------------


def icmp_echo(
    src: str, dst: str, *, ident: int = 0x4242, seq: int = 1, payload: bytes = b"probe"
) -> bytes:
    """An ICMP (or ICMPv6) echo request as an IP packet."""
    if ":" in src:
        from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

        return bytes(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=seq, data=payload))
    from scapy.layers.inet import ICMP, IP

    return bytes(IP(src=src, dst=dst) / ICMP(id=ident, seq=seq) / payload)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes = b"probe") -> bytes:
    """A UDP datagram as an IP packet (checksums computed)."""
    from scapy.layers.inet import IP, UDP

    if ":" in src:
        from scapy.layers.inet6 import IPv6

        return bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)

    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


# --- ESP ----------------------------------------------------------------------------------------

Where = str
"""A field of an ESP packet: ``spi``, ``seq``, ``iv``, ``ciphertext``, ``icv``, ``trailer``
(the last ciphertext block, i.e. the encrypted Pad Length / Next Header)."""


def _params(sa: IpsecSaEntry | ChildSaParams, encap: tuple[int, int] | None) -> ChildSaParams:
    params = sa.to_params(replay_window=0) if isinstance(sa, IpsecSaEntry) else sa
    if encap is not None:
        params = replace(params, encap=encap)
    return params


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    """``data`` with bit ``bit`` (0 = least significant) of octet ``index`` inverted."""
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


class EspCrafter:
    """Builds ESP datagrams of one SA (RFC 4303 §3.3) exactly as the parameters say.

    ``sa`` is the SA's key entry (``KeySet`` entry, e.g. from the peer's keys) or driver
    parameters; ``encap`` (source, destination port) sends it in UDP (RFC 3948).
    """

    def __init__(
        self,
        sa: IpsecSaEntry | ChildSaParams,
        *,
        encap: tuple[int, int] | None = None,
        options: SaOptions | None = None,
    ) -> None:
        self.params = _params(sa, encap)
        if self.params.protocol != IpsecProtocol.ESP:
            raise LocalProtocolError("EspCrafter needs an ESP SA")
        self._sa = EspOutbound(self.params, 0.0, DriverContext(0), options or SaOptions())
        assert self.params.encr_id is not None
        alg = encr(self.params.encr_id, self.params.encr_key_bits)
        self.iv_len = alg.iv_len
        self.align = max(alg.block_size, 4)
        i = self.params.integ_id
        self.icv_len = alg.icv_len if alg.aead else (integ(i).icv_len if i else 0)

    def packet(
        self,
        inner: bytes,
        seq: int,
        *,
        next_header: int | None = None,
        pad_length: int | None = None,
        padding: bytes | None = None,
        tfc_pad_to: int | None = None,
        esn_high: int | None = None,
        iv: bytes | None = None,
    ) -> bytes:
        """The datagram carrying ``inner`` (tunnel: an IP packet; transport: the packet whose
        upper layer is protected) with sequence number ``seq`` (64 bits with ESN: only the
        low half is sent, RFC 4303 §2.2.1). ``esn_high`` puts other high bits in the ICV (a
        wrong Seqh), ``pad_length``/``padding`` choose the padding (RFC 4303 §2.4: any value
        that keeps the alignment; octets other than 1, 2, 3, ...)."""
        return self._sa.encapsulate(
            inner,
            seq,
            next_header=next_header,
            pad_length=pad_length,
            padding=padding,
            tfc_pad_to=tfc_pad_to,
            esn_high=esn_high,
            iv=iv,
        )

    def dummy(self, seq: int, length: int = 32) -> bytes:
        """A dummy packet (Next Header 59, RFC 4303 §2.6) of ``length`` random octets."""
        self._sa.set_next_seq(seq)
        _, out = self._sa.dummy(0.0, length)
        if not out:
            raise LocalProtocolError("the SA refused a dummy packet")
        return out

    def max_pad_length(self, inner_length: int) -> int:
        """The longest padding (at most 255) that keeps the alignment for this payload."""
        n = 255
        while (inner_length + n + 2) % self.align:
            n -= 1
        return n

    def bad_padding(self, inner: bytes, seq: int, pad_length: int | None = None) -> bytes:
        """A packet with a correct ICV whose padding octets are zeros, not 1, 2, 3, ...
        (catalogue ESP-010(b); ``pad_length`` defaults to the largest below 16)."""
        if pad_length is None:
            pad_length = 15
            while (len(inner) + pad_length + 2) % self.align:
                pad_length -= 1
        return self.packet(inner, seq, pad_length=pad_length, padding=bytes(pad_length))

    def esp_offset(self, datagram: bytes) -> int:
        return OutboundSa.outer_header_length(datagram)

    def field(self, datagram: bytes, where: Where) -> tuple[int, int]:
        """``(start, end)`` of a field of an ESP datagram built by this crafter."""
        off = self.esp_offset(datagram)
        end = len(datagram)
        icv = end - self.icv_len
        spans = {
            "spi": (off, off + 4),
            "seq": (off + 4, off + 8),
            "iv": (off + 8, off + 8 + self.iv_len),
            "ciphertext": (off + 8 + self.iv_len, icv),
            "trailer": (icv - max(self.align, 2), icv),
            "icv": (icv, end),
        }
        if where not in spans:
            raise LocalProtocolError(f"no ESP field {where!r}")
        start, stop = spans[where]
        if stop <= start:
            raise LocalProtocolError(f"this SA has no {where}")
        return start, stop

    def corrupt(self, datagram: bytes, where: Where = "icv", bit: int = 0, index: int = 0) -> bytes:
        """The datagram with one bit flipped in ``where`` (catalogue ESP-007: sequence number,
        IV, ciphertext, ICV); ``index`` counts octets from the field's start."""
        start, stop = self.field(datagram, where)
        if not 0 <= index < stop - start:
            raise LocalProtocolError(f"octet {index} is outside {where}")
        return flip_bit(datagram, start + index, bit)


# --- AH -----------------------------------------------------------------------------------------


class AhCrafter:
    """Builds AH datagrams of one SA (RFC 4302 §3.3) with the driver's ICV computation."""

    def __init__(
        self, sa: IpsecSaEntry | ChildSaParams, *, options: SaOptions | None = None
    ) -> None:
        self.params = _params(sa, None)
        if self.params.protocol != IpsecProtocol.AH:
            raise LocalProtocolError("AhCrafter needs an AH SA")
        self._sa = AhOutbound(self.params, 0.0, DriverContext(0), options or SaOptions())
        assert self.params.integ_id is not None
        self._alg = integ(self.params.integ_id)
        self._mac = self._alg.prepare(self.params.integ_key)

    def ah_offset(self, datagram: bytes) -> int:
        return OutboundSa.outer_header_length(datagram)

    def packet(
        self,
        inner: bytes,
        seq: int,
        *,
        esn_high: int | None = None,
        reserved: int | None = None,
        next_header: int | None = None,
    ) -> bytes:
        """The AH datagram for ``inner`` with ``seq``; ``reserved`` (RFC 4302 §2.3) and
        ``next_header`` are set *before* the ICV is computed, so the packet verifies."""
        out = self._sa.encapsulate(inner, seq, esn_high=esn_high)
        if reserved is None and next_header is None:
            return out
        off = self.ah_offset(out)
        b = bytearray(out)
        if reserved is not None:
            struct.pack_into("!H", b, off + 2, reserved)
        if next_header is not None:
            b[off] = next_header
        high = seq >> 32 if esn_high is None else esn_high
        return self.resign(bytes(b), esn_high=high if self.params.esn else None)

    def resign(self, datagram: bytes, *, esn_high: int | None = None) -> bytes:
        """Recompute the ICV of an AH datagram after changing covered fields."""
        off = self.ah_offset(datagram)
        ah_len = (datagram[off + 1] + 2) * 4
        auth_len = ah_len - 12
        data = icv_input(datagram, off, auth_len, True, esn_high)
        start = off + 12
        if self._alg.needs_iv:
            iv = datagram[start : start + 8]
            value = iv + self._mac.compute_iv(iv, data)
        else:
            value = self._mac.compute(data)
        return datagram[:start] + value + datagram[start + len(value) :]

    def corrupt(self, datagram: bytes, where: str = "icv", bit: int = 0) -> bytes:
        """One bit flipped in ``icv``, ``seq`` or ``payload`` (the octet after AH)."""
        off = self.ah_offset(datagram)
        ah_len = (datagram[off + 1] + 2) * 4
        index = {"icv": off + 12, "seq": off + 11, "payload": off + ah_len}.get(where)
        if index is None or index >= len(datagram):
            raise LocalProtocolError(f"no AH field {where!r}")
        return flip_bit(datagram, index, bit)


def mutate_ipv4(
    datagram: bytes,
    *,
    ttl: int | None = None,
    tos: int | None = None,
    df: bool | None = None,
    ident: int | None = None,
    fix_checksum: bool = True,
) -> bytes:
    """Change IPv4 header fields after the ICV was computed (RFC 4302 §3.3.3.1.1.1: TOS,
    flags, TTL and the checksum are mutable and zeroed for the AH ICV; the Identification is
    not), and fix the header checksum so the packet is delivered to AH."""
    b = bytearray(datagram)
    if b[0] >> 4 != 4:
        raise LocalProtocolError("not an IPv4 datagram")
    if ttl is not None:
        b[8] = ttl
    if tos is not None:
        b[1] = tos
    if df is not None:
        b[6] = (b[6] | 0x40) if df else (b[6] & ~0x40 & 0xFF)
    if ident is not None:
        struct.pack_into("!H", b, 4, ident)
    if fix_checksum:
        ihl = (b[0] & 0x0F) * 4
        b[10:12] = b"\0\0"
        struct.pack_into("!H", b, 10, checksum(bytes(b[:ihl])))
    return bytes(b)


def mutate_ipv6(
    datagram: bytes,
    *,
    traffic_class: int | None = None,
    flow_label: int | None = None,
    hop_limit: int | None = None,
) -> bytes:
    """Change the IPv6 fields RFC 4302 §3.3.3.1.2.1 zeroes for the ICV."""
    b = bytearray(datagram)
    if b[0] >> 4 != 6:
        raise LocalProtocolError("not an IPv6 datagram")
    word = struct.unpack_from("!I", b, 0)[0]
    tc = (word >> 20) & 0xFF if traffic_class is None else traffic_class
    fl = word & 0xFFFFF if flow_label is None else flow_label
    struct.pack_into("!I", b, 0, (6 << 28) | (tc << 20) | fl)
    if hop_limit is not None:
        b[7] = hop_limit
    return bytes(b)


# --- IKEv2 --------------------------------------------------------------------------------------


@dataclass(slots=True)
class CraftedMessage(v2msg.Message):
    """An IKEv2 message whose header may carry reserved flag bits (RFC 7296 §3.1)."""

    extra_flags: int = 0

    @property
    def flags(self) -> int:
        base = v2msg.Message.flags.fget(self)  # type: ignore[attr-defined]
        return int(base) | self.extra_flags


class IkeCrafter:
    """IKEv2 messages of one live IKE SA, SK-protected with its keys (RFC 7296 §3.14).

    ``as_initiator``: speak as the IKE SA's original initiator (I flag, SK_ei/SK_ai) or as its
    responder. ``entry`` needs SPIs, algorithms and SK_e/SK_a (e.g. ``oracle`` resolved keys,
    ``KeySet.from_node_sas`` or a charon log bound by the oracle).
    """

    def __init__(
        self, entry: IkeSaEntry, *, as_initiator: bool, rng: Callable[[int], bytes] = os.urandom
    ) -> None:
        if entry.version != 2 or not entry.spi_i or not entry.spi_r:
            raise LocalProtocolError("IkeCrafter needs an IKEv2 SA with both SPIs")
        if entry.encr_id is None:
            raise LocalProtocolError("IKE SA algorithms unknown")
        self.entry = entry
        self.as_initiator = as_initiator
        e = encr(entry.encr_id, entry.encr_key_bits)
        i = integ(entry.integ_id) if entry.integ_id else None
        keys = IkeKeys(
            entry.sk_d, entry.sk_ai, entry.sk_ar, entry.sk_ei, entry.sk_er, entry.sk_pi, entry.sk_pr
        )
        self.protection = SkProtection(e, i, keys, as_initiator, rng)
        """Protects what we send and opens what the other end sends."""

    def message(
        self,
        exchange: int,
        message_id: int,
        payloads: Iterable[v2p.Payload] = (),
        *,
        response: bool = False,
        version: int = IKE_VERSION_OCTET,
        extra_flags: int = 0,
    ) -> CraftedMessage:
        e = self.entry
        assert e.spi_i is not None and e.spi_r is not None
        return CraftedMessage(
            exchange,
            message_id,
            e.spi_i,
            e.spi_r,
            self.as_initiator,
            response,
            list(payloads),
            version,
            False,
            extra_flags,
        )

    def seal(
        self,
        msg: v2msg.Message,
        *,
        inner: Callable[[bytes], bytes] | None = None,
        inner_type: int | None = None,
        header_length: int | None = None,
        sk_length: int | None = None,
        next_payload: int | None = None,
    ) -> bytes:
        """The SK-protected datagram of ``msg`` (its payloads go inside SK).

        Malformations that keep a valid ICV: ``inner`` rewrites the encoded inner payload
        chain before encryption (reserved bits, payload lengths); ``inner_type`` the SK
        payload's Next Payload; ``header_length`` the IKE header Length; ``sk_length`` the SK
        payload Length; ``next_payload`` the header's Next Payload.
        """
        first, body = v2p.encode_chain(msg.payloads)
        if inner is not None:
            body = inner(body)
        if inner_type is not None:
            first = inner_type
        if header_length is None and sk_length is None and next_payload is None:
            return self.protection.seal(msg, first, body)
        # The header and SK header are the AEAD associated data / inside the MAC, so they are
        # built first and sealed with the SA's own cipher (SkProtection's sealing steps).
        prot = self.protection
        plaintext = prot._pad(body)
        real_sk = 4 + prot.iv_len + len(plaintext) + prot.icv_len
        head = v2msg.HEADER.pack(
            msg.spi_i,
            msg.spi_r,
            PayloadType.SK if next_payload is None else next_payload,
            msg.version,
            msg.exchange_type,
            msg.flags,
            msg.message_id,
            v2msg.HEADER_LEN + real_sk if header_length is None else header_length,
        ) + struct.pack("!BBH", first, 0, real_sk if sk_length is None else sk_length)
        return prot._seal(head, plaintext)

    def seal_fragments(self, msg: v2msg.Message, max_datagram: int) -> list[bytes]:
        """RFC 7383 SKF fragments of ``msg``."""
        first, body = v2p.encode_chain(msg.payloads)
        return self.protection.seal_fragments(msg, first, body, max_datagram)

    def informational(
        self, message_id: int, payloads: Iterable[v2p.Payload] = (), *, response: bool = False
    ) -> bytes:
        """An INFORMATIONAL request (or response); empty = a liveness check (RFC 7296 §1.4)."""
        return self.seal(
            self.message(ExchangeType.INFORMATIONAL, message_id, payloads, response=response)
        )

    def open(self, datagram: bytes) -> tuple[v2msg.Message, list[v2p.Payload]]:
        """Decode and decrypt a message the other end sent on this SA (its answer)."""
        msg = v2msg.decode_message(datagram)
        sk = msg.encrypted
        if sk is None:
            return msg, msg.payloads
        inner = self.protection.open(datagram, sk)
        return msg, v2p.decode_chain(inner, 0, sk.inner_type)

    @staticmethod
    def corrupt_icv(datagram: bytes) -> bytes:
        """The datagram with its last octet (in the ICV) changed."""
        return flip_bit(datagram, len(datagram) - 1)


def patch_ike_header(
    datagram: bytes,
    *,
    spi_i: bytes | None = None,
    spi_r: bytes | None = None,
    next_payload: int | None = None,
    version: int | None = None,
    exchange: int | None = None,
    flags: int | None = None,
    message_id: int | None = None,
    length: int | None = None,
) -> bytes:
    """Replace IKE header fields of a datagram (RFC 7296 §3.1; the ISAKMP header has the same
    layout, RFC 2408 §3.1). On a protected message this breaks the ICV: for malformations
    that must verify, use :meth:`IkeCrafter.seal`."""
    fields = list(v2msg.HEADER.unpack_from(datagram))
    for i, value in enumerate(
        (spi_i, spi_r, next_payload, version, exchange, flags, message_id, length)
    ):
        if value is not None:
            fields[i] = value
    return v2msg.HEADER.pack(*fields) + datagram[v2msg.HEADER_LEN :]


def ike_message(
    exchange: int,
    message_id: int,
    spi_i: bytes,
    spi_r: bytes,
    payloads: Sequence[v2p.Payload],
    *,
    initiator: bool = True,
    response: bool = False,
    extra_flags: int = 0,
) -> bytes:
    """A cleartext IKEv2 message (IKE_SA_INIT, or anything sent without keys)."""
    msg = CraftedMessage(
        exchange,
        message_id,
        spi_i,
        spi_r,
        initiator,
        response,
        list(payloads),
        extra_flags=extra_flags,
    )
    return v2msg.encode_message(msg)


RESERVED_FLAGS = 0xFF & ~(HeaderFlag.INITIATOR | HeaderFlag.VERSION | HeaderFlag.RESPONSE)
"""The IKE header flag bits RFC 7296 §3.1 leaves reserved (besides I, V, R)."""


# --- cleartext IKE: IKE_SA_INIT, payload chain edits, IKEv1 Main Mode 1 -------------------------

_TRANSFORM_TYPES = {"encr": 1, "prf": 2, "integ": 3, "dh": 4, "esn": 5}


def ike_proposal(
    num: int = 1,
    *,
    encr: tuple[int, int | None] = (12, 256),
    integ_id: int | None = 12,
    prf_id: int = 5,
    dh_id: int = 14,
    protocol_id: int = 1,
    spi: bytes = b"",
) -> v2p.Proposal:
    """One IKE proposal (RFC 7296 §3.3.1); the default is AES_CBC_256/HMAC_SHA2_256_128/
    PRF_HMAC_SHA2_256/MODP_2048. ``encr`` key bits ``None`` omits the Key Length attribute
    (catalogue IKEV2-NEG-006)."""
    ts = [v2p.Transform(1, encr[0], encr[1])]
    ts.append(v2p.Transform(2, prf_id))
    if integ_id:
        ts.append(v2p.Transform(3, integ_id))
    ts.append(v2p.Transform(4, dh_id))
    return v2p.Proposal(num, protocol_id, spi, ts)


@dataclass
class SaInit:
    """An IKE_SA_INIT request built with the IKEv2 codec; change any field before
    :meth:`encode` (RFC 7296 §1.2). ``natd`` computes NAT_DETECTION_SOURCE_IP/DESTINATION_IP
    for ``(source, destination)`` addresses (RFC 7296 §2.23); ``forge_natd`` garbles them so
    the peer believes there is a NAT. ``extra`` payloads go between KE and Ni."""

    spi_i: bytes = b""
    proposals: list[v2p.Proposal] | None = None
    dh_group: int = 14
    ke_data: bytes | None = None
    nonce: bytes = b""
    natd: tuple[tuple[str, int], tuple[str, int]] | None = None
    forge_natd: bool = False
    cookie: bytes | None = None
    extra: tuple[v2p.Payload, ...] = ()
    notifies: tuple[v2p.NotifyPayload, ...] = ()
    key_exchange: Any = field(default=None, init=False, repr=False)
    """Our side of the Diffie-Hellman exchange when ``ke_data`` was generated."""

    def __post_init__(self) -> None:
        from reference_impl.crypto import dh

        self.spi_i = self.spi_i or os.urandom(8)
        self.nonce = self.nonce or os.urandom(32)
        if self.proposals is None:
            self.proposals = [ike_proposal(dh_id=self.dh_group)]
        if self.ke_data is None:
            self.key_exchange = dh(self.dh_group).generate()
            self.ke_data = self.key_exchange.public_value

    def payloads(self) -> list[v2p.Payload]:
        from reference_impl.ike.enums import NotifyType
        from reference_impl.ike.types import natd_hash

        out: list[v2p.Payload] = []
        if self.cookie is not None:
            out.append(v2p.NotifyPayload(NotifyType.COOKIE, self.cookie))
        assert self.proposals is not None and self.ke_data is not None
        out += [v2p.SaPayload(list(self.proposals)), v2p.KePayload(self.dh_group, self.ke_data)]
        out += list(self.extra)
        out.append(v2p.NoncePayload(self.nonce))
        if self.natd is not None:
            src, dst = self.natd
            for ntype, addr in (
                (NotifyType.NAT_DETECTION_SOURCE_IP, src),
                (NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
            ):
                h = natd_hash(self.spi_i, bytes(8), addr)
                out.append(v2p.NotifyPayload(ntype, flip_bit(h, 0) if self.forge_natd else h))
        out += list(self.notifies)
        return out

    def encode(
        self, *, version: int = IKE_VERSION_OCTET, extra_flags: int = 0, response: bool = False
    ) -> bytes:
        msg = CraftedMessage(
            ExchangeType.IKE_SA_INIT,
            0,
            self.spi_i,
            bytes(8),
            True,
            response,
            self.payloads(),
            version,
            False,
            extra_flags,
        )
        return v2msg.encode_message(msg)


@dataclass(frozen=True)
class PayloadSpan:
    """One payload of a cleartext message: its type and where its generic header starts."""

    index: int
    type: int
    offset: int
    length: int


def payload_spans(datagram: bytes) -> list[PayloadSpan]:
    """The payload chain of a cleartext IKEv2/ISAKMP message (RFC 7296 §3.2, RFC 2408 §3.2),
    walked by Next Payload and Payload Length without decoding anything."""
    out: list[PayloadSpan] = []
    nxt = datagram[16]
    off = v2msg.HEADER_LEN
    while nxt and off + 4 <= len(datagram):
        length = int.from_bytes(datagram[off + 2 : off + 4])
        out.append(PayloadSpan(len(out), nxt, off, length))
        if length < 4:
            break
        nxt = datagram[off]
        off += length
    return out


def edit_payload(
    datagram: bytes,
    index: int,
    *,
    flags: int | None = None,
    length_delta: int = 0,
    body: bytes | None = None,
    fix_lengths: bool = True,
) -> bytes:
    """Change payload ``index`` of a cleartext message: its flags octet (critical bit and the
    7 reserved bits, catalogue IKEV2-ROB-006), its Payload Length (``length_delta``: a length
    that lies, IKEV2-ROB-008), or its body (then the lengths follow unless ``fix_lengths`` is
    off)."""
    span = payload_spans(datagram)[index]
    b = bytearray(datagram)
    if flags is not None:
        b[span.offset + 1] = flags
    if body is not None:
        start, end = span.offset + 4, span.offset + span.length
        b[start:end] = body
        if fix_lengths:
            struct.pack_into("!H", b, span.offset + 2, 4 + len(body))
            struct.pack_into("!I", b, 24, len(b))
    if length_delta:
        cur = int.from_bytes(b[span.offset + 2 : span.offset + 4])
        struct.pack_into("!H", b, span.offset + 2, (cur + length_delta) & 0xFFFF)
    return bytes(b)


def set_reserved_bits(datagram: bytes) -> bytes:
    """Every reserved bit of a cleartext IKEv2 message set to 1: the header's X flags, each
    generic payload header's 7 reserved bits, and the RESERVED octets of every proposal and
    transform in SA payloads (catalogue IKEV2-ROB-006: they must be ignored)."""
    b = bytearray(datagram)
    b[19] |= RESERVED_FLAGS
    for span in payload_spans(datagram):
        b[span.offset + 1] |= 0x7F
        if span.type == PayloadType.SA:
            off, end = span.offset + 4, span.offset + span.length
            while off + 8 <= end:
                b[off + 1] = 0xFF  # proposal RESERVED
                plen = int.from_bytes(b[off + 2 : off + 4])
                spi_size, ntrans = b[off + 6], b[off + 7]
                t = off + 8 + spi_size
                for _ in range(ntrans):
                    if t + 8 > off + plen:
                        break
                    b[t + 1] = 0xFF  # transform RESERVED
                    b[t + 5] = 0xFF  # transform RESERVED after the type
                    t += int.from_bytes(b[t + 2 : t + 4])
                if plen < 8 or b[off] == 0:
                    break
                off += plen
    return bytes(b)


def ikev1_main_mode_1(
    icookie: bytes | None = None,
    *,
    transforms: Sequence[Any] | None = None,
    vendor_ids: Sequence[bytes] = (),
) -> bytes:
    """An IKEv1 Main Mode first message (RFC 2409 §5: HDR, SA) built with the ISAKMP codec;
    the default offer is AES-CBC-256/SHA2-256/MODP-2048 with a pre-shared key. Patch its
    header with :func:`patch_ike_header` (catalogue IKEV1-017)."""
    from reference_impl.isakmp import codec as v1
    from reference_impl.isakmp.constants import AuthMethod
    from reference_impl.isakmp.constants import ExchangeType as V1Exchange
    from reference_impl.isakmp.proposals import Phase1Transform, phase1_sa

    offer = (
        list(transforms)
        if transforms is not None
        else [Phase1Transform(7, 256, 4, AuthMethod.PRE_SHARED_KEY, 14)]
    )
    payloads: list[Any] = [phase1_sa(offer), *(v1.VendorIdPayload(v) for v in vendor_ids)]
    return v1.encode_message(
        icookie or os.urandom(8), bytes(8), V1Exchange.IDENTITY_PROTECTION, 0, 0, payloads
    )


# --- injection ----------------------------------------------------------------------------------

_SENDER = r"""
import errno, socket, struct, sys, time
mode, dst, src = sys.argv[1], sys.argv[2], sys.argv[5]
dport, sport, interval = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[6])
packets = [bytes.fromhex(h) for h in sys.argv[7:]]
v6 = ":" in dst
fam = socket.AF_INET6 if v6 else socket.AF_INET

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def raw_udp(payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    s_b = socket.inet_pton(fam, src)
    d_b = socket.inet_pton(fam, dst)
    if v6:
        pseudo = s_b + d_b + struct.pack("!I3xB", len(udp), 17)
        c = csum(pseudo + udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
        return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + s_b + d_b + udp
    pseudo = s_b + d_b + struct.pack("!BBH", 0, 17, len(udp))
    c = csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, s_b, d_b)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + udp

sock = None
raw = mode == "raw"
if mode == "udp":
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        sock.bind((src if src != "-" else "", sport))
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        sock.close()
        raw = True
        mode = "udp-raw"
if raw:
    sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i, p in enumerate(packets):
    if i and interval:
        time.sleep(interval)
    if mode == "udp":
        sock.sendto(p, (dst, dport))
    elif mode == "udp-raw":
        sock.sendto(raw_udp(p), (dst, 0))
    else:
        sock.sendto(p, (dst, 0))
print(mode, len(packets), flush=True)
"""


@dataclass(frozen=True)
class Injection:
    """What an :class:`Injector` call did: ``udp`` (bound the port), ``udp-raw`` (port taken:
    built the IP/UDP headers itself) or ``raw``, and how many datagrams."""

    mode: str
    count: int


class Injector:
    """Sends crafted octets from inside a topology node (its namespace/container).

    It runs a small standard-library sender with the node's ``exec`` (``python`` is the
    interpreter in the node: this one for ``local`` and ``netns``, ``python3`` in a
    container).
    """

    def __init__(self, node: Any, *, python: str | None = None) -> None:
        self.node = node
        self.python = python or (
            "python3" if getattr(node.topology, "backend", "") == "docker" else sys.executable
        )

    def _port(self, node: Any, port: int) -> int:
        real = getattr(node, "real_port", None)
        return int(real(port)) if callable(real) else port

    def _run(
        self,
        mode: str,
        dst: str,
        dport: int,
        sport: int,
        src: str,
        packets: Sequence[bytes],
        interval: float,
    ) -> Injection:
        argv = [self.python, "-c", _SENDER, mode, dst, str(dport), str(sport), src, str(interval)]
        result = self.node.exec(
            [*argv, *(p.hex() for p in packets)], timeout=30.0 + interval * len(packets)
        )
        if not result.ok:
            raise LocalProtocolError(
                f"injection from {self.node.name} failed: {result.stderr.strip()}"
            )
        done_mode, count = result.stdout.split()
        return Injection(done_mode, int(count))

    def udp(
        self,
        payloads: bytes | Sequence[bytes],
        dst: Any,
        dport: int,
        *,
        sport: int,
        src: str | None = None,
        marker: bool = False,
        interval: float = 0.0,
    ) -> Injection:
        """UDP datagrams from ``sport`` to ``dst`` (an address, or a node whose logical
        ports are mapped as the ``local`` backend does); ``marker`` prefixes the non-ESP
        marker (IKE on the NAT-T port, RFC 3948 §2.2)."""
        items = [payloads] if isinstance(payloads, bytes) else list(payloads)
        if marker:
            items = [v2msg.NON_ESP_MARKER + p for p in items]
        if isinstance(dst, str):
            address = dst
        else:
            address = dst.addresses.v4
            dport = self._port(dst, dport)
        if src is None:
            v6 = ":" in address
            src = (self.node.addresses.v6 if v6 else self.node.addresses.v4) or "-"
        return self._run("udp", address, dport, self._port(self.node, sport), src, items, interval)

    def raw(self, datagrams: bytes | Sequence[bytes], *, interval: float = 0.0) -> Injection:
        """Whole IP datagrams (headers included) through a raw socket, as crafted."""
        items = [datagrams] if isinstance(datagrams, bytes) else list(datagrams)
        if not items:
            return Injection("raw", 0)
        first = parse_ip(items[0], frozenset({IPPROTO_ESP, IPPROTO_AH}))
        fam = 4 if first.version == 4 else 6
        dst = str(ipaddress.ip_address(first.dst))
        return self._run("raw", dst, 0, 0, "-" if fam == 4 else "::", items, interval)


__all__ = [
    "AhCrafter",
    "CraftedMessage",
    "EspCrafter",
    "IkeCrafter",
    "Injection",
    "Injector",
    "PayloadSpan",
    "SaInit",
    "edit_payload",
    "flip_bit",
    "icmp_echo",
    "ike_message",
    "ike_proposal",
    "ikev1_main_mode_1",
    "mutate_ipv4",
    "mutate_ipv6",
    "patch_ike_header",
    "payload_spans",
    "set_reserved_bits",
    "udp_packet",
]
