"""ESP (RFC 4303): outbound and inbound SAs, tunnel and transport, IPv4 and IPv6, with
optional UDP encapsulation (RFC 3948).

Packet layout (RFC 4303 §2)::

    SPI(4) | Sequence Number(4) | IV | ciphertext of [payload | TFC padding | padding |
    Pad Length | Next Header] | ICV

IVs (RFC 4303 §3.3.2): the counter-based transforms (AES-GCM RFC 4106 §3.1, AES-CCM RFC 4309
§3.1, AES-CTR RFC 3686 §3.1, ChaCha20-Poly1305 RFC 7634 §2, AES-GMAC RFC 4543 §3.1) carry the
64-bit sequence number, which never repeats under one key; CBC (RFC 3602 §3) gets a fresh
random IV from a pool refilled from ``os.urandom``. ESN (RFC 4303 §2.2.1): the high 32 bits go
into the AEAD AAD (RFC 4106 §5) or after the payload for a separate ICV, never on the wire.

Every outbound SA has a general ``protect`` (``_protect_slow``) that handles everything; the
common configuration (AEAD with a 16-octet ICV, no ESN, tunnel mode, IPv4 outer header, no
UDP encapsulation, no TFC padding, default options) gets a specialised fast path
(``_EspOutboundFast4``) that produces the same octets with fewer Python operations.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable

from reference_impl.crypto import AeadCipher, BlockCipher, IntegrityError, Mac
from reference_impl.crypto.ids import EncrId
from reference_impl.driver.base import (
    DEFAULT_OPTIONS,
    DriverContext,
    SaOptions,
    SecurityAssociation,
    encryption_algorithm,
    integrity_algorithm,
)
from reference_impl.driver.events import LifetimeKind
from reference_impl.driver.packet import (
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_NONE,
    IPPROTO_UDP,
    UDP_HEADER,
    IpInfo,
    MalformedPacket,
    ecn_decapsulate,
    fix_transport_checksum,
    flow_of,
    ipv4_header,
    ipv6_header,
    set_inner_ecn,
    set_lengths,
    transport_split,
    udp_checksum_v6,
)
from reference_impl.driver.replay import ReplayWindow
from reference_impl.driver.selectors import SelectorMatcher
from reference_impl.driver.verdict import Verdict
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_SPI_SEQ = struct.Struct(">II")
_SPI_SEQ_ESN = struct.Struct(">III")
_U32 = struct.Struct(">I")
_Q = struct.Struct(">Q")

PADDING = tuple(bytes(range(1, n + 1)) for n in range(256))
"""Default padding (RFC 4303 §2.4): ``PADDING[n]`` is the octets 1, 2, ..., n."""


def _trailers(align: int, next_header: int) -> tuple[bytes, ...]:
    """Minimal-padding ESP trailers for payload length ``n``, indexed by ``n % align``."""
    out = []
    for r in range(align):
        pad = (-(r + 2)) % align
        out.append(PADDING[pad] + bytes((pad, next_header)))
    return tuple(out)


TRAILERS_IPV4 = _trailers(4, IPPROTO_IPIP)
"""Trailers of an IPv4 inner packet under a 4-octet-aligned (stream/AEAD) cipher."""
_TRAILERS_TL4 = tuple((t, len(t) + 52) for t in TRAILERS_IPV4)
"""(trailer, octets the fast path adds to the inner length: 20 IPv4 + 8 ESP + 8 IV + trailer
+ 16 ICV)."""
_DELIVERED = Verdict.DELIVERED


_Seal = Callable[[bytes, bytes, bytes], bytes]
_Crypt = Callable[[bytes, bytes], bytes]


def _unprepared(iv: bytes, data: bytes, aad: bytes) -> bytes:
    raise LocalProtocolError("SA crypto used before preparation")


def _unprepared2(iv: bytes, data: bytes) -> bytes:
    raise LocalProtocolError("SA crypto used before preparation")


@functools.cache
def _nonce_packer(salt_len: int) -> Callable[[bytes, int], bytes]:
    """``pack(salt, iv)``: the AEAD nonce salt || 64-bit IV in one call."""
    return struct.Struct(f">{salt_len}sQ").pack


# --- random IVs for CBC -------------------------------------------------------------------------

_IV_POOL_SIZE = 4096
_iv_pool = b""
_iv_pos = 0


def _reset_iv_pool() -> None:
    global _iv_pool, _iv_pos
    _iv_pool = b""
    _iv_pos = 0


os.register_at_fork(after_in_child=_reset_iv_pool)


def random_iv(n: int) -> bytes:
    """``n`` fresh random octets (RFC 3602 §3: CBC IVs MUST be unpredictable), taken from a
    pool refilled by ``os.urandom`` so that a packet costs a slice, not a system call."""
    global _iv_pool, _iv_pos
    p = _iv_pos
    if p + n > len(_iv_pool):
        _iv_pool = os.urandom(_IV_POOL_SIZE)
        p = 0
    _iv_pos = p + n
    return _iv_pool[p : p + n]


# --- outbound -----------------------------------------------------------------------------------


def _family(addr: str) -> tuple[int, bytes]:
    import ipaddress

    a = ipaddress.ip_address(addr)
    return a.version, a.packed


@functools.cache
def _soft_seq(esn: bool, margin: int | None) -> int:
    """The sequence number that raises the soft SEQUENCE event (shared int objects: a large
    SAD holds one reference per SA, not one integer)."""
    if margin is None:
        margin = 1 << 32 if esn else 1 << 24
    return max(1, (_M64 if esn else _M32) - margin)


@functools.cache
def _shared_int(value: int) -> int:
    return value


class OutboundSa(SecurityAssociation):
    """An outbound SA (ESP or AH): sequence numbers, exhaustion, outer headers.

    ``seq`` is the last sequence number sent (0 before the first packet, RFC 4303 §3.3.3).
    """

    __slots__ = (
        "_dst",
        "_encap",
        "_family",
        "_next_seq",
        "_seq0",
        "_seq_max",
        "_seq_soft",
        "_src",
        "seq",
    )

    def __init__(
        self, params: ChildSaParams, now: float, ctx: DriverContext, options: SaOptions
    ) -> None:
        self._family, self._src = _family(params.src)
        fam, self._dst = _family(params.dst)
        if fam != self._family:
            raise LocalProtocolError("SA source and destination are of different IP versions")
        self.seq = 0
        self._seq0 = 0
        self._seq_max = _M64 if params.esn else _M32
        self._seq_soft = _soft_seq(params.esn, options.seq_rekey_margin)
        self._next_seq = 0
        self._encap = params.encap
        super().__init__(params, False, now, ctx, options)

    def _recompute(self) -> None:
        super()._recompute()
        if self.expired is not None or not self._prepared:
            self._next_seq = 0
            return
        limits = [self._seq_max, self._seq0 + self._next_packets]
        if not self.soft_expired:
            limits.append(self._seq_soft)
        self._next_seq = min(limits)

    def set_next_seq(self, seq: int) -> None:
        """Make ``seq`` the next sequence number sent (conformance probes and tests, e.g. to
        exercise the 2^32 boundary). Packets already counted stay counted."""
        if not 1 <= seq <= self._seq_max:
            raise LocalProtocolError(f"sequence number {seq} out of range")
        self._seq0 += seq - 1 - self.seq
        self.seq = seq - 1
        self._recompute()

    @property
    def packets(self) -> int:
        """Packets sent: one per sequence number used (the fast path counts nothing else)."""
        return self.seq - self._seq0

    def _after_send(self, seq: int, octets: int, now: float) -> None:
        self.octets += octets
        self._check_counts(seq - self._seq0, self.octets, now)
        if seq >= self._seq_soft:
            self._soft(LifetimeKind.SEQUENCE, now)
        if seq >= self._seq_max:
            self._expire(LifetimeKind.SEQUENCE, now)

    def _outer_tos(self, inner_tos: int) -> int:
        o = self.options
        dscp = (inner_tos & 0xFC) if o.dscp is None else o.dscp << 2
        ecn = inner_tos & 3 if o.ecn == "normal" else 0
        return dscp | ecn

    def tunnel_header(self, inner: bytes, body_length: int, protocol: int, ident: int) -> bytes:
        """The outer IP header of a tunnel-mode packet (RFC 4301 §5.1.2): our addresses, DSCP
        and ECN from the inner header per the options, DF per RFC 4301 §8.1."""
        version = inner[0] >> 4 if inner else 0
        if version == 4 and len(inner) >= 20:
            inner_tos = inner[1]
            inner_df = inner[6] & 0x40
        elif version == 6 and len(inner) >= 40:
            inner_tos = ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
            inner_df = 0
        else:
            inner_tos = inner_df = 0
        tos = self._outer_tos(inner_tos)
        o = self.options
        if self._family == 4:
            policy = o.df
            df = (inner_df if policy == "copy" else 0x40 if policy == "set" else 0) << 8
            return ipv4_header(
                tos=tos,
                total_length=20 + body_length,
                ident=ident & 0xFFFF,
                flags_fragment=df,
                ttl=o.ttl,
                protocol=protocol,
                src=self._src,
                dst=self._dst,
            )
        return ipv6_header(
            traffic_class=tos,
            flow_label=0,
            payload_length=body_length,
            next_header=protocol,
            hop_limit=o.ttl,
            src=self._src,
            dst=self._dst,
        )

    def protect(self, packet: bytes, now: float) -> tuple[Verdict, bytes]:
        """Protect one IP packet: ``(Verdict.DELIVERED, datagram)`` or ``(reason, b"")``.

        The datagram is a whole IP packet (outer header, UDP header when encapsulated); for
        a UDP socket send ``datagram[self.outer_header_length(datagram):]``.
        """
        return self._protect_slow(packet, now)

    def _protect_slow(self, packet: bytes, now: float) -> tuple[Verdict, bytes]:
        reason = self._usable(now)
        if reason is not None:
            return self._drop(reason, packet, now), b""
        seq = self.seq + 1
        if seq > self._seq_max:  # unreachable while _after_send expires at the maximum
            self._expire(LifetimeKind.SEQUENCE, now)
            return self._drop(Verdict.SEQUENCE_EXHAUSTED, packet, now), b""
        try:
            out = self.encapsulate(packet, seq)
        except (LocalProtocolError, RemoteProtocolError, IndexError) as e:
            return self._drop(Verdict.MALFORMED, packet, now, detail=str(e)), b""
        self.seq = seq
        self._after_send(seq, len(packet), now)
        return Verdict.DELIVERED, out

    def encapsulate(self, packet: bytes, seq: int) -> bytes:
        """The protected datagram for ``packet`` with sequence number ``seq``; no counters,
        no lifetimes (subclasses)."""
        raise NotImplementedError

    @staticmethod
    def outer_header_length(datagram: bytes) -> int:
        """Octets before the ESP/AH header (IP header, plus the UDP header when encapsulated)."""
        from reference_impl.driver.packet import IPPROTO_AH, parse_ip

        info = parse_ip(datagram, frozenset({IPPROTO_ESP, IPPROTO_AH, IPPROTO_UDP}))
        return info.payload_offset + (8 if info.protocol == IPPROTO_UDP else 0)


class EspOutbound(OutboundSa):
    """An outbound ESP SA (RFC 4303 §3.3)."""

    __slots__ = (
        "_aead",
        "_align",
        "_counter_iv",
        "_encr_alg",
        "_encrypt",
        "_icv_len",
        "_integ_alg",
        "_iv_len",
        "_mac",
        "_seal",
    )

    def __init__(
        self,
        params: ChildSaParams,
        now: float,
        ctx: DriverContext,
        options: SaOptions = DEFAULT_OPTIONS,
    ) -> None:
        if params.protocol != IpsecProtocol.ESP:
            raise LocalProtocolError("EspOutbound needs an ESP SA")
        self._encr_alg = encryption_algorithm(params)
        if self._encr_alg is None:
            raise LocalProtocolError("ESP needs an encryption transform (ENCR_NULL for none)")
        self._integ_alg = integrity_algorithm(params)
        alg = self._encr_alg
        self._aead = alg.aead
        if alg.aead and self._integ_alg is not None:
            raise LocalProtocolError(f"{alg.name} is combined mode: no integrity transform")
        if alg.id == EncrId.ENCR_NULL and self._integ_alg is None:
            raise LocalProtocolError("ESP with neither encryption nor integrity (RFC 4303 §3.2)")
        self._iv_len = alg.iv_len
        self._icv_len = (
            alg.icv_len if alg.aead else (self._integ_alg.icv_len if self._integ_alg else 0)
        )
        self._align = max(alg.block_size, 4)
        self._counter_iv = alg.aead or alg.id == EncrId.ENCR_AES_CTR
        self._seal: _Seal = _unprepared
        self._encrypt: _Crypt = _unprepared2
        self._mac: Mac | None = None
        super().__init__(params, now, ctx, options)

    def _prepare(self) -> None:
        alg = self._encr_alg
        assert alg is not None
        cipher = alg.prepare(self.params.encr_key)
        if isinstance(cipher, AeadCipher):
            self._seal = cipher.seal
            self._use_aead(cipher)
        else:
            assert isinstance(cipher, BlockCipher)
            self._encrypt = cipher.encrypt
        if self._integ_alg is not None:
            self._mac = self._integ_alg.prepare(self.params.integ_key)
        self._prepared = True

    def _use_aead(self, cipher: AeadCipher) -> None:
        """Hook for the fast paths: take what they need from the prepared AEAD."""

    def _iv(self, seq: int) -> bytes:
        if self._counter_iv:
            return _Q.pack(seq)
        if self._iv_len:
            return random_iv(self._iv_len)
        return b""

    def esp_payload(
        self,
        seq: int,
        payload: bytes,
        next_header: int,
        *,
        pad_length: int | None = None,
        padding: bytes | None = None,
        esn_high: int | None = None,
        iv: bytes | None = None,
    ) -> bytes:
        """The ESP header, IV, ciphertext and ICV for ``payload`` (RFC 4303 §3.3.2-§3.3.4).

        Keyword arguments exist for known-answer tests and conformance probes: a longer
        ``pad_length`` (any value up to 255 that keeps the alignment), ``padding`` octets
        other than 1, 2, 3, ..., the ESN high bits to put in the ICV, a chosen IV.
        """
        if not self._prepared:
            self._prepare()
            self._recompute()
        align = self._align
        if pad_length is None:
            pad_length = (-(len(payload) + 2)) % align
        if not 0 <= pad_length <= 255 or (len(payload) + pad_length + 2) % align:
            raise LocalProtocolError(f"pad length {pad_length} breaks the {align}-octet alignment")
        pad = PADDING[pad_length] if padding is None else padding
        if len(pad) != pad_length:
            raise LocalProtocolError("padding length does not match pad_length")
        plaintext = payload + pad + bytes((pad_length, next_header))
        low = seq & _M32
        high = seq >> 32 if esn_high is None else esn_high
        hdr = _SPI_SEQ.pack(self.spi, low)
        if iv is None:
            iv = self._iv(seq)
        if self._aead:
            aad = _SPI_SEQ_ESN.pack(self.spi, high, low) if self.params.esn else hdr
            return hdr + iv + self._seal(iv, plaintext, aad)
        ct = self._encrypt(iv, plaintext)
        if self._mac is None:
            return hdr + iv + ct
        auth = hdr + iv + ct
        icv = self._mac.compute(auth + _U32.pack(high) if self.params.esn else auth)
        return auth + icv

    def _udp(self, esp: bytes, src: bytes, dst: bytes, version: int) -> bytes:
        """RFC 3948 §2.1 UDP header: zero checksum over IPv4; computed over IPv6 (RFC 8200)."""
        encap = self._encap
        assert encap is not None
        udp = UDP_HEADER.pack(encap[0], encap[1], 8 + len(esp), 0)
        if version == 6:
            c = udp_checksum_v6(src, dst, udp + esp)
            udp = UDP_HEADER.pack(encap[0], encap[1], 8 + len(esp), c)
        return udp

    def encapsulate(
        self,
        packet: bytes,
        seq: int,
        *,
        next_header: int | None = None,
        pad_length: int | None = None,
        padding: bytes | None = None,
        tfc_pad_to: int | None = None,
        esn_high: int | None = None,
        iv: bytes | None = None,
    ) -> bytes:
        """The ESP datagram carrying ``packet`` with sequence number ``seq`` (RFC 4303 §3.3).

        Tunnel mode: ``packet`` is the inner IP packet, wrapped in an outer header from the
        SA's addresses. Transport mode: the ESP header goes after the IP header (IPv6: after
        hop-by-hop, routing, fragment and the destination options before a routing header).
        Counters and lifetimes are untouched (``protect`` does that).
        """
        encap = self._encap
        proto = IPPROTO_UDP if encap is not None else IPPROTO_ESP
        if self.mode is Mode.TUNNEL:
            nh = next_header
            if nh is None:
                nh = _inner_next_header(packet)
            payload = packet
            tfc = self.options.tfc_pad_to if tfc_pad_to is None else tfc_pad_to
            if tfc > len(payload) and self.params.tfc_padding:
                payload = payload + bytes(tfc - len(payload))
            esp = self.esp_payload(
                seq,
                payload,
                nh,
                pad_length=pad_length,
                padding=padding,
                esn_high=esn_high,
                iv=iv,
            )
            if encap is not None:
                esp = self._udp(esp, self._src, self._dst, self._family) + esp
            return self.tunnel_header(packet, len(esp), proto, seq) + esp
        info = transport_split(packet)
        nh = info.protocol if next_header is None else next_header
        esp = self.esp_payload(
            seq,
            packet[info.payload_offset : info.total_length],
            nh,
            pad_length=pad_length,
            padding=padding,
            esn_high=esn_high,
            iv=iv,
        )
        header = bytearray(packet[: info.payload_offset])
        header[info.proto_offset] = proto
        if encap is not None:
            esp = self._udp(esp, info.src, info.dst, info.version) + esp
        set_lengths(header, info.version, len(header) + len(esp))
        return bytes(header) + esp

    def dummy(self, now: float, length: int = 0) -> tuple[Verdict, bytes]:
        """A dummy packet (Next Header 59, RFC 4303 §2.6) with ``length`` random octets of
        payload, sent with the next sequence number (traffic-flow confidentiality)."""
        reason = self._usable(now)
        if reason is not None:
            return self._drop(reason, b"", now), b""
        seq = self.seq + 1
        esp = self.esp_payload(seq, os.urandom(length), IPPROTO_NONE)
        proto = IPPROTO_ESP
        if self._encap is not None:
            esp = self._udp(esp, self._src, self._dst, self._family) + esp
            proto = IPPROTO_UDP
        out = self.tunnel_header(b"", len(esp), proto, seq) + esp
        self.seq = seq
        self._after_send(seq, 0, now)
        return Verdict.DELIVERED, out


def _inner_next_header(packet: bytes) -> int:
    """Tunnel mode Next Header: 4 for an IPv4 packet, 41 for IPv6 (RFC 4303 §3.1.2)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return IPPROTO_IPIP
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return IPPROTO_IPV6
    raise MalformedPacket("tunnel mode needs an IPv4 or IPv6 packet")


_HDR4_ESP = struct.Struct(">HHHHHH12sIQ")
"""Outer IPv4 header + ESP header + 8-octet IV in one pack (the fast path): version/IHL|TOS,
total length, identification, flags/fragment, TTL|protocol, checksum, src|dst|SPI, sequence
number, IV."""
_PACK_HDR4_ESP = _HDR4_ESP.pack
_VT4 = tuple(0x4500 | tos for tos in range(256))
"""Outer IPv4 version/IHL|TOS word for an inner TOS octet."""
_DF_COPY = tuple((flags & 0x40) << 8 for flags in range(256))
"""Outer IPv4 flags/fragment word for the inner flags octet: DF copied, no fragment."""
_NOT_IPV4 = tuple(b >> 4 != 4 for b in range(256))
"""Whether a first octet is not IP version 4."""


class _EspOutboundAead(EspOutbound):
    """Base of the fast paths: keeps the bare AEAD encrypt call of the prepared cipher."""

    __slots__ = ("_aead_encrypt", "_nonce_pack", "_salt")

    def _use_aead(self, cipher: AeadCipher) -> None:
        direct = cipher.direct()
        assert direct is not None  # make_esp_outbound only picks AEADs that have one
        self._aead_encrypt = direct.encrypt
        self._salt = direct.salt
        self._nonce_pack = _nonce_packer(len(direct.salt))


class _EspOutboundFast4(_EspOutboundAead):
    """``EspOutbound`` specialised for the common case: AEAD with a 16-octet ICV and 8-octet
    IV, no ESN, tunnel mode, IPv4 outer header, raw ESP, no TFC padding, default options.

    Produces the same octets as the general path (the tests compare them). Inner IPv6
    packets, lifetime thresholds and anything unusual fall back to ``_protect_slow``.
    """

    __slots__ = ("_addr_spi", "_csum_m1", "_ttl_proto")

    def __init__(
        self,
        params: ChildSaParams,
        now: float,
        ctx: DriverContext,
        options: SaOptions = DEFAULT_OPTIONS,
    ) -> None:
        super().__init__(params, now, ctx, options)
        self._ttl_proto = _shared_int((options.ttl << 8) | IPPROTO_ESP)
        self._addr_spi = self._src + self._dst + _U32.pack(self.spi)
        words = struct.unpack(">4H", self._src + self._dst)
        self._csum_m1 = self._ttl_proto + sum(words) - 1
        """The constant part of the header checksum sum, minus one (see ``protect``)."""

    def protect(self, packet: bytes, now: float) -> tuple[Verdict, bytes]:
        seq = self.seq + 1
        n = len(packet)
        octets = self.octets + n
        if (
            seq >= self._next_seq
            or octets >= self._next_octets
            or now >= self._next_time
            or n < 20
            or _NOT_IPV4[packet[0]]
        ):
            return self._protect_slow(packet, now)
        self.seq = seq
        self.octets = octets
        tr, tl = _TRAILERS_TL4[n & 3]
        tl += n
        # Table lookups instead of arithmetic (one indexing each): the outer version/IHL|TOS
        # word copies the inner TOS (DSCP and ECN, RFC 4301 §5.1.2.1, RFC 6040), the outer DF
        # copies the inner DF (RFC 4301 §8.1).
        vt = _VT4[packet[1]]
        frag = _DF_COPY[packet[6]]
        ident = seq & 0xFFFF
        hdr = _PACK_HDR4_ESP(
            vt,
            tl,
            ident,
            frag,
            self._ttl_proto,
            # The one's complement sum of 16-bit words is the value mod 0xFFFF (RFC 1071).
            0xFFFE - (self._csum_m1 + vt + tl + ident + frag) % 0xFFFF,
            self._addr_spi,
            seq,
            seq,
        )
        # The bare AEAD call (no wrapper frame): nonce = salt || IV with IV = seq (RFC 4106
        # §3.1, §4), AAD = SPI || sequence number (RFC 4106 §5).
        return _DELIVERED, hdr + self._aead_encrypt(
            self._nonce_pack(self._salt, seq), packet + tr, hdr[20:28]
        )


_HDR4T_ESP = struct.Struct(">HHHIHQIIQ")
"""Transport mode: the packet's own IPv4 header (version/IHL|TOS, total length,
identification, flags/fragment|TTL|protocol, checksum, src|dst) + ESP header + IV."""
_PACK_HDR4T_ESP = _HDR4T_ESP.pack
_UNPACK_IPV4_FIELDS = struct.Struct(">H2xHI2xQ").unpack_from
"""(version/IHL|TOS, identification, flags/fragment|TTL|protocol, src << 32 | dst)."""
_TRAILERS_TL4T = tuple(tuple((t, len(t) + 32) for t in _trailers(4, nh)) for nh in range(256))
"""Per Next Header: (trailer, octets transport mode adds to the packet length: 8 ESP + 8 IV +
trailer + 16 ICV), indexed by payload length % 4."""


class _EspOutboundFastTransport4(_EspOutboundAead):
    """``EspOutbound`` specialised for transport mode over IPv4 (no options, not a fragment)
    with an AEAD with a 16-octet ICV, no ESN and no UDP encapsulation.

    The packet's header is kept (TOS, identification, flags, TTL, addresses) with protocol
    50, the new total length and its checksum recomputed, as the general path does.
    """

    __slots__ = ("_spi_value",)

    def protect(self, packet: bytes, now: float) -> tuple[Verdict, bytes]:
        seq = self.seq + 1
        n = len(packet)
        octets = self.octets + n
        if (
            seq >= self._next_seq
            or octets >= self._next_octets
            or now >= self._next_time
            or n < 20
            or packet[0] != 0x45
            or (packet[2] << 8 | packet[3]) != n
        ):
            return self._protect_slow(packet, now)
        vt, ident, w, addrs = _UNPACK_IPV4_FIELDS(packet)
        if w & 0x3FFF0000:  # a fragment: the general path refuses it
            return self._protect_slow(packet, now)
        self.seq = seq
        self.octets = octets
        tr, tl = _TRAILERS_TL4T[w & 0xFF][n & 3]
        tl += n
        w = (w & 0xFFFFFF00) | IPPROTO_ESP
        hdr = _PACK_HDR4T_ESP(
            vt,
            tl,
            ident,
            w,
            # The one's complement sum of 16-bit words is the value mod 0xFFFF (RFC 1071).
            0xFFFE - (vt + tl + ident + w + addrs - 1) % 0xFFFF,
            addrs,
            self.spi,
            seq,
            seq,
        )
        return _DELIVERED, hdr + self._aead_encrypt(
            self._nonce_pack(self._salt, seq), packet[20:] + tr, hdr[20:28]
        )


def make_esp_outbound(
    params: ChildSaParams, now: float, ctx: DriverContext, options: SaOptions = DEFAULT_OPTIONS
) -> EspOutbound:
    """The outbound ESP SA for ``params``, with a fast path when the configuration has one."""
    common = (
        params.encr_id
        in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305, EncrId.ENCR_AES_CCM_16)
        and not params.esn
        and params.encap is None
        and ":" not in params.src
    )
    cls: type[EspOutbound] = EspOutbound
    if common and params.mode == Mode.TUNNEL:
        if (
            (options.tfc_pad_to == 0 or not params.tfc_padding)
            and options.df == "copy"
            and options.dscp is None
            and options.ecn == "normal"
        ):
            cls = _EspOutboundFast4
    elif common:
        cls = _EspOutboundFastTransport4
    return cls(params, now, ctx, options)


# --- inbound ------------------------------------------------------------------------------------


class EspInbound(SecurityAssociation):
    """An inbound ESP SA (RFC 4303 §3.4): anti-replay window, ICV, decryption, trailer,
    decapsulation and the selector check (RFC 4301 §5.2)."""

    __slots__ = (
        "_aead",
        "_align",
        "_decrypt",
        "_encr_alg",
        "_icv_len",
        "_integ_alg",
        "_iv_len",
        "_mac",
        "_open",
        "aead_decrypt",
        "aead_salt",
        "aead_tag_error",
        "fast4",
        "fast_tunnel",
        "sel_mask",
        "sel_net",
        "window",
    )

    def __init__(
        self,
        params: ChildSaParams,
        now: float,
        ctx: DriverContext,
        options: SaOptions = DEFAULT_OPTIONS,
    ) -> None:
        if params.protocol != IpsecProtocol.ESP:
            raise LocalProtocolError("EspInbound needs an ESP SA")
        alg = encryption_algorithm(params)
        if alg is None:
            raise LocalProtocolError("ESP needs an encryption transform (ENCR_NULL for none)")
        self._encr_alg = alg
        self._integ_alg = integrity_algorithm(params)
        if alg.aead and self._integ_alg is not None:
            raise LocalProtocolError(f"{alg.name} is combined mode: no integrity transform")
        if alg.id == EncrId.ENCR_NULL and self._integ_alg is None:
            raise LocalProtocolError("ESP with neither encryption nor integrity (RFC 4303 §3.2)")
        self._aead = alg.aead
        self._iv_len = alg.iv_len
        self._icv_len = (
            alg.icv_len if alg.aead else (self._integ_alg.icv_len if self._integ_alg else 0)
        )
        self._align = max(alg.block_size, 4)
        self._open: _Seal = _unprepared
        self._decrypt: _Crypt = _unprepared2
        self._mac: Mac | None = None
        self.window = ReplayWindow(params.replay_window, params.esn)
        super().__init__(params, True, now, ctx, options)
        simple = self.selectors.simple
        if self.selectors.match_all or not options.check_selectors:
            simple = (4, 0, _M32, 0, _M32)
        self.sel_mask = self.sel_net = -1
        """IPv4 prefix selectors as one 64-bit mask and value over source|destination: the
        fast path checks both with ``(src << 32 | dst) & sel_mask == sel_net``."""
        if simple is not None and simple[0] == 4:
            smask = _prefix_mask(simple[1], simple[2])
            dmask = _prefix_mask(simple[3], simple[4])
            if smask is not None and dmask is not None:
                self.sel_mask = (smask << 32) | dmask
                self.sel_net = (simple[1] << 32) | simple[3]
        self.fast4 = (
            alg.id
            in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305, EncrId.ENCR_AES_CCM_16)
            and not params.esn
            and params.encap is None
            and params.replay_window > 0
            and options.check_padding
            and self.sel_net >= 0
        )
        """Whether ``Sad.unprotect``'s IPv4 fast path may handle this SA."""
        self.fast_tunnel = params.mode == Mode.TUNNEL

    def _prepare(self) -> None:
        cipher = self._encr_alg.prepare(self.params.encr_key)
        if isinstance(cipher, AeadCipher):
            self._open = cipher.open
            direct = cipher.direct()
            if direct is not None:
                # For Sad.unprotect's fast path: the bare decrypt, one call per packet.
                self.aead_salt = direct.salt
                self.aead_decrypt = direct.decrypt
                self.aead_tag_error = direct.tag_error
            else:
                assert not self.fast4, "fast-path SAs use AEADs with a direct handle"
        else:
            assert isinstance(cipher, BlockCipher)
            self._decrypt = cipher.decrypt
        if self._integ_alg is not None:
            self._mac = self._integ_alg.prepare(self.params.integ_key)
        self._prepared = True

    def unprotect_at(
        self, d: bytes, info: IpInfo, off: int, udp: bool, now: float
    ) -> tuple[Verdict, bytes]:
        """Process the ESP packet at ``d[off:info.total_length]`` (RFC 4303 §3.4).

        ``info`` describes the outer IP header; ``udp`` says the ESP was UDP-encapsulated
        (``off`` is then past the UDP header). Returns the verdict and the inner packet.
        """
        reason = self._usable(now)
        if reason is not None:
            return self._drop(reason, d, now), b""
        end = info.total_length
        iv_len = self._iv_len
        icv_len = self._icv_len
        if end - off < 8 + iv_len + icv_len + 2:
            return self._drop(Verdict.RUNT, d, now), b""
        seql = _U32.unpack_from(d, off + 4)[0]
        window = self.window
        seq = window.infer(seql)
        reason = window.check(seq)
        if reason is not None:
            return self._drop(reason, d, now, seq), b""
        esn = self.params.esn
        iv = d[off + 8 : off + 8 + iv_len]
        if self._aead:
            aad = _SPI_SEQ_ESN.pack(self.spi, seq >> 32, seql) if esn else d[off : off + 8]
            try:
                pt = self._open(iv, d[off + 8 + iv_len : end], aad)
            except IntegrityError:
                return self._drop(Verdict.INTEGRITY, d, now, seq), b""
        else:
            ct_end = end - icv_len
            if self._mac is not None:
                auth = d[off:ct_end]
                if esn:
                    auth += _U32.pack(seq >> 32)
                if not self._mac.verify(auth, d[ct_end:end]):
                    return self._drop(Verdict.INTEGRITY, d, now, seq), b""
            ct = d[off + 8 + iv_len : ct_end]
            if len(ct) % self._align:
                window.update(seq)
                return self._drop(Verdict.DECRYPTION, d, now, seq, "not block aligned"), b""
            try:
                pt = self._decrypt(iv, ct)
            except RemoteProtocolError as e:
                window.update(seq)
                return self._drop(Verdict.DECRYPTION, d, now, seq, str(e)), b""
        window.update(seq)
        return self.after_decrypt(pt, d, info, udp, seq, now)

    def after_decrypt(
        self, pt: bytes, d: bytes, info: IpInfo, udp: bool, seq: int, now: float
    ) -> tuple[Verdict, bytes]:
        """Trailer, decapsulation, selector check and accounting of a verified packet."""
        n = len(pt)
        if n < 2:
            return self._drop(Verdict.BAD_PADDING, d, now, seq, "no trailer"), b""
        pad_length = pt[-2]
        nh = pt[-1]
        end = n - 2 - pad_length
        if end < 0:
            return self._drop(Verdict.BAD_PADDING, d, now, seq, "pad length beyond payload"), b""
        if self.options.check_padding and pt[end : n - 2] != PADDING[pad_length]:
            return self._drop(Verdict.BAD_PADDING, d, now, seq, "padding octets"), b""
        if nh == IPPROTO_NONE:
            self._count(Verdict.DUMMY)
            return Verdict.DUMMY, b""
        if self.mode is Mode.TUNNEL:
            try:
                inner = _tunnel_inner(pt, end, nh)
            except MalformedPacket as e:
                return self._drop(Verdict.MALFORMED, d, now, seq, str(e)), b""
            ecn = ecn_decapsulate(_ecn_of(inner), info.tos & 3)
            if ecn is None:
                return self._drop(Verdict.ECN, d, now, seq), b""
            if ecn != _ecn_of(inner):
                inner = set_inner_ecn(inner, ecn)
        else:
            header = bytearray(d[: info.payload_offset])
            header[info.proto_offset] = nh
            set_lengths(header, info.version, len(header) + end)
            inner = bytes(header) + pt[:end]
            if udp:
                inner = fix_transport_checksum(inner)
        if self.options.check_selectors and not _selectors_match(self.selectors, inner):
            return self._drop(Verdict.SELECTOR_MISMATCH, d, now, seq), b""
        self._account(len(inner), now)
        return Verdict.DELIVERED, inner


def _selectors_match(selectors: SelectorMatcher, inner: bytes) -> bool:
    """RFC 4301 §5.2 step 4 for a decapsulated packet (which is well-formed by now); address
    ranges alone are read straight from the header, anything else via ``flow_of``."""
    simple = selectors.simple
    if simple is not None:
        version, slo, shi, dlo, dhi = simple
        if inner[0] >> 4 != version:
            return False
        if version == 4:
            src = int.from_bytes(inner[12:16], "big")
            dst = int.from_bytes(inner[16:20], "big")
        else:
            src = int.from_bytes(inner[8:24], "big")
            dst = int.from_bytes(inner[24:40], "big")
        return slo <= src <= shi and dlo <= dst <= dhi
    if selectors.match_all:
        return True
    try:
        return selectors.matches(flow_of(inner))
    except MalformedPacket:
        return False


def _prefix_mask(lo: int, hi: int) -> int | None:
    """The IPv4 netmask when [lo, hi] is exactly one prefix, else None."""
    size = hi - lo + 1
    if size & (size - 1) or lo & (size - 1):
        return None
    return ~(size - 1) & _M32


def _ecn_of(inner: bytes) -> int:
    if inner[0] >> 4 == 4:
        return inner[1] & 3
    return (inner[1] >> 4) & 3


def _tunnel_inner(pt: bytes, end: int, nh: int) -> bytes:
    """The inner packet of a tunnel-mode payload, TFC padding stripped by its own length
    (RFC 4303 §2.7)."""
    if nh == IPPROTO_IPIP:
        if end < 20 or pt[0] >> 4 != 4:
            raise MalformedPacket("Next Header 4 but no IPv4 packet inside")
        length = pt[2] << 8 | pt[3]
        if length < (pt[0] & 0x0F) * 4 or (pt[0] & 0x0F) < 5:
            raise MalformedPacket("inner IPv4 header length")
    elif nh == IPPROTO_IPV6:
        if end < 40 or pt[0] >> 4 != 6:
            raise MalformedPacket("Next Header 41 but no IPv6 packet inside")
        length = 40 + (pt[4] << 8 | pt[5])
    else:
        raise MalformedPacket(f"tunnel mode Next Header {nh}")
    if length > end:
        raise MalformedPacket("inner packet longer than the ESP payload")
    return pt[:length]
