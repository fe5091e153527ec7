"""AH (RFC 4302): outbound and inbound SAs, tunnel and transport, IPv4 and IPv6.

Header (RFC 4302 §2)::

    Next Header(1) | Payload Len(1) | Reserved(2) | SPI(4) | Sequence Number(4) | ICV ...

Payload Len is the AH length in 32-bit words minus 2; the ICV is padded with zeros to a
multiple of 4 octets over IPv4 and 8 over IPv6 (§3.3.3.2.1). With AES-GMAC (RFC 4543 §4)
the authentication data is an 8-octet IV followed by the 16-octet tag.

The ICV covers the IP header with its mutable fields zeroed (§3.3.3.1), the AH header with
the authentication data zeroed, the payload, and with ESN the high 32 bits of the sequence
number appended after the payload (§3.3.3.2.2). ``icv_input`` builds that view.
"""

from __future__ import annotations

import struct

from reference_impl.crypto import Mac
from reference_impl.driver.base import (
    DEFAULT_OPTIONS,
    DriverContext,
    SaOptions,
    SecurityAssociation,
    integrity_algorithm,
)
from reference_impl.driver.esp import (
    OutboundSa,
    _ecn_of,
    _inner_next_header,
    _selectors_match,
)
from reference_impl.driver.packet import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IpInfo,
    MalformedPacket,
    ecn_decapsulate,
    set_inner_ecn,
    set_lengths,
    transport_split,
)
from reference_impl.driver.replay import ReplayWindow
from reference_impl.driver.verdict import Verdict
from reference_impl.errors import LocalProtocolError
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode

_AH = struct.Struct(">BBHII")
_U32 = struct.Struct(">I")
_Q = struct.Struct(">Q")
_M32 = 0xFFFFFFFF
_ID = struct.Struct(">H")

IMMUTABLE_IPV4_OPTIONS = frozenset({0, 1, 130, 133, 134, 148, 149})
"""Option types covered by the ICV as they are (RFC 4302 Appendix A.1): End of Options List,
No Operation, Security, Extended Security, Commercial Security, Router Alert, Sender Directed
Multi-Destination Delivery. Every other option is zeroed whole, the unknown ones included."""
_SOURCE_ROUTES = frozenset({131, 137})  # Loose / Strict Source Route


def _zero_ipv4(b: bytearray, sending: bool) -> None:
    """Zero the mutable IPv4 fields (RFC 4302 §3.3.3.1.1.1) and options (§3.3.3.1.1.2)."""
    ihl = (b[0] & 0x0F) * 4
    b[1] = 0  # DSCP/ECN
    b[6] = b[7] = 0  # flags, fragment offset
    b[8] = 0  # TTL
    b[10] = b[11] = 0  # header checksum
    i = 20
    while i < ihl:
        t = b[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= ihl or b[i + 1] < 2 or i + b[i + 1] > ihl:
            raise MalformedPacket("IPv4 option length")
        n = b[i + 1]
        if t not in IMMUTABLE_IPV4_OPTIONS:
            if sending and t in _SOURCE_ROUTES and n >= 7:
                # The destination is mutable but predictable: the ICV uses the final one,
                # the last address of the route (§3.3.3.1.1.1).
                b[16:20] = b[i + n - 4 : i + n]
            b[i : i + n] = bytes(n)
        i += n


def _zero_ipv6(b: bytearray, ah_offset: int, sending: bool) -> None:
    """Zero the mutable IPv6 fields (RFC 4302 §3.3.3.1.2.1) and option data marked as changing
    en route; predict a routing header as seen at the destination (§3.3.3.1.2.2)."""
    b[0] &= 0xF0  # traffic class (high nibble part) and flow label
    b[1] = b[2] = b[3] = 0
    b[7] = 0  # hop limit
    nh = b[6]
    off = 40
    while off < ah_offset:
        if off + 2 > ah_offset:
            raise MalformedPacket("IPv6 extension header truncated")
        length = (b[off + 1] + 1) * 8
        if off + length > ah_offset:
            raise MalformedPacket("IPv6 extension header runs into AH")
        if nh in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
            i = off + 2
            while i < off + length:
                t = b[i]
                if t == 0:  # Pad1
                    i += 1
                    continue
                if i + 1 >= off + length:
                    raise MalformedPacket("IPv6 option truncated")
                n = b[i + 1]
                if i + 2 + n > off + length:
                    raise MalformedPacket("IPv6 option length")
                if t & 0x20:  # the option data may change en route
                    b[i + 2 : i + 2 + n] = bytes(n)
                i += 2 + n
        elif nh == IPPROTO_ROUTING:
            segleft = b[off + 3]
            rtype = b[off + 2]
            if sending and segleft and rtype in (0, 2):
                count = (length - 8) // 16
                if segleft > count:
                    raise LocalProtocolError("routing header Segments Left beyond its addresses")
                addrs = [bytes(b[off + 8 + 16 * k : off + 24 + 16 * k]) for k in range(count)]
                final = addrs[-1]
                rotated = [bytes(b[24:40]), *addrs[:-1]]
                for k, a in enumerate(rotated):
                    b[off + 8 + 16 * k : off + 24 + 16 * k] = a
                b[24:40] = final
                b[off + 3] = 0
        elif nh != 44:  # anything else before AH other than a fragment header is not ours
            raise MalformedPacket(f"IPv6 header {nh} before AH")
        nh = b[off]
        off += length


def icv_input(
    packet: bytes, ah_offset: int, auth_length: int, sending: bool, esn_high: int | None = None
) -> bytes:
    """The octets the AH ICV is computed over (RFC 4302 §3.3.3.1, §3.3.3.2.2).

    ``packet`` is the whole datagram with the AH header at ``ah_offset`` and
    ``auth_length`` octets of authentication data (IV, ICV and padding) after its 12 fixed
    octets. ``sending`` predicts mutable-but-predictable fields (source routes, routing
    header) as the receiver will see them.
    """
    b = bytearray(packet)
    if b[0] >> 4 == 4:
        _zero_ipv4(b, sending)
    else:
        _zero_ipv6(b, ah_offset, sending)
    start = ah_offset + 12
    b[start : start + auth_length] = bytes(auth_length)
    if esn_high is not None:
        b += _U32.pack(esn_high)
    return bytes(b)


def _ah_lengths(icv_len: int, needs_iv: bool, version: int) -> tuple[int, int]:
    """(authentication data length, AH length) with the ICV padding of §3.3.3.2.1."""
    auth = icv_len + (8 if needs_iv else 0)
    align = 8 if version == 6 else 4
    total = 12 + auth
    total += -total % align
    return auth, total


class AhOutbound(OutboundSa):
    """An outbound AH SA (RFC 4302 §3.3)."""

    __slots__ = ("_icv_len", "_integ_alg", "_mac", "_needs_iv")

    def __init__(
        self,
        params: ChildSaParams,
        now: float,
        ctx: DriverContext,
        options: SaOptions = DEFAULT_OPTIONS,
    ) -> None:
        if params.protocol != IpsecProtocol.AH:
            raise LocalProtocolError("AhOutbound needs an AH SA")
        if params.encr_id is not None:
            raise LocalProtocolError("AH has no encryption transform")
        if params.encap is not None:
            raise LocalProtocolError("AH cannot be UDP-encapsulated (RFC 3948)")
        alg = integrity_algorithm(params)
        if alg is None:
            raise LocalProtocolError("AH needs an integrity transform")
        self._integ_alg = alg
        self._icv_len = alg.icv_len
        self._needs_iv = alg.needs_iv
        self._mac: Mac | None = None
        super().__init__(params, now, ctx, options)

    def _prepare(self) -> None:
        self._mac = self._integ_alg.prepare(self.params.integ_key)
        self._prepared = True

    def encapsulate(self, packet: bytes, seq: int, *, esn_high: int | None = None) -> bytes:
        """The AH datagram for ``packet`` with sequence number ``seq`` (RFC 4302 §3.3)."""
        if not self._prepared:
            self._prepare()
            self._recompute()
        if self.mode is Mode.TUNNEL:
            nh = _inner_next_header(packet)
            version = self._family
            auth, ah_len = _ah_lengths(self._icv_len, self._needs_iv, version)
            ah = _AH.pack(nh, ah_len // 4 - 2, 0, self.spi, seq & _M32) + bytes(ah_len - 12)
            # Never Identification 0: a Linux raw socket with IP_HDRINCL replaces an ID of 0
            # on send, and AH covers the ID (RFC 4302 §3.3.3.1.1.1), so the ICV would fail.
            outer = self.tunnel_header(
                packet, ah_len + len(packet), IPPROTO_AH, (seq & 0xFFFF) or 1
            )
            head = outer
            payload = packet
        else:
            info = transport_split(packet)
            version = info.version
            auth, ah_len = _ah_lengths(self._icv_len, self._needs_iv, version)
            ah = _AH.pack(info.protocol, ah_len // 4 - 2, 0, self.spi, seq & _M32) + bytes(
                ah_len - 12
            )
            header = bytearray(packet[: info.payload_offset])
            header[info.proto_offset] = IPPROTO_AH
            if version == 4 and header[4] == header[5] == 0:
                # An atomic datagram may carry ID 0 (RFC 6864); the kernel would replace it on
                # a raw send after we signed it, so give it a non-zero ID first.
                header[4:6] = _ID.pack((seq & 0xFFFF) or 1)
            payload = packet[info.payload_offset : info.total_length]
            set_lengths(header, version, len(header) + ah_len + len(payload))
            head = bytes(header)
        whole = head + ah + payload
        esn_bits = (seq >> 32 if esn_high is None else esn_high) if self.params.esn else None
        data = icv_input(whole, len(head), auth, True, esn_bits)
        mac = self._mac
        assert mac is not None
        if self._needs_iv:
            iv = _Q.pack(seq)
            authdata = iv + mac.compute_iv(iv, data)
        else:
            authdata = mac.compute(data)
        start = len(head) + 12
        return whole[:start] + authdata + whole[start + len(authdata) :]


class AhInbound(SecurityAssociation):
    """An inbound AH SA (RFC 4302 §3.4)."""

    __slots__ = ("_icv_len", "_integ_alg", "_mac", "_needs_iv", "window")

    def __init__(
        self,
        params: ChildSaParams,
        now: float,
        ctx: DriverContext,
        options: SaOptions = DEFAULT_OPTIONS,
    ) -> None:
        if params.protocol != IpsecProtocol.AH:
            raise LocalProtocolError("AhInbound needs an AH SA")
        if params.encr_id is not None:
            raise LocalProtocolError("AH has no encryption transform")
        alg = integrity_algorithm(params)
        if alg is None:
            raise LocalProtocolError("AH needs an integrity transform")
        self._integ_alg = alg
        self._icv_len = alg.icv_len
        self._needs_iv = alg.needs_iv
        self._mac: Mac | None = None
        self.window = ReplayWindow(params.replay_window, params.esn)
        super().__init__(params, True, now, ctx, options)

    def _prepare(self) -> None:
        self._mac = self._integ_alg.prepare(self.params.integ_key)
        self._prepared = True

    def unprotect_at(self, d: bytes, info: IpInfo, off: int, now: float) -> tuple[Verdict, bytes]:
        """Process the AH packet whose header is at ``d[off]`` (RFC 4302 §3.4)."""
        reason = self._usable(now)
        if reason is not None:
            return self._drop(reason, d, now), b""
        end = info.total_length
        if end - off < 12:
            return self._drop(Verdict.RUNT, d, now), b""
        nh, plen, _reserved, _spi, seql = _AH.unpack_from(d, off)
        ah_len = (plen + 2) * 4
        auth, _ = _ah_lengths(self._icv_len, self._needs_iv, info.version)
        if ah_len < 12 + auth or off + ah_len > end:
            return self._drop(Verdict.MALFORMED, d, now, detail="AH Payload Len"), b""
        if info.version == 6 and ah_len % 8:
            return self._drop(Verdict.MALFORMED, d, now, detail="AH not 8-octet aligned"), b""
        window = self.window
        seq = window.infer(seql)
        reason = window.check(seq)
        if reason is not None:
            return self._drop(reason, d, now, seq), b""
        esn_bits = seq >> 32 if self.params.esn else None
        try:
            data = icv_input(d[:end], off, ah_len - 12, False, esn_bits)
        except MalformedPacket as e:
            return self._drop(Verdict.MALFORMED, d, now, seq, str(e)), b""
        mac = self._mac
        assert mac is not None
        field = d[off + 12 : off + 12 + auth]
        if self._needs_iv:
            ok = mac.verify_iv(field[:8], data, field[8:])
        else:
            ok = mac.verify(data, field)
        if not ok:
            return self._drop(Verdict.INTEGRITY, d, now, seq), b""
        window.update(seq)
        payload = d[off + ah_len : end]
        if nh == IPPROTO_NONE:
            self._count(Verdict.DUMMY)
            return Verdict.DUMMY, b""
        if self.mode is Mode.TUNNEL:
            if nh not in (IPPROTO_IPIP, IPPROTO_IPV6) or not payload:
                return self._drop(Verdict.MALFORMED, d, now, seq, f"Next Header {nh}"), b""
            try:
                if _inner_next_header(payload) != nh:
                    raise MalformedPacket("Next Header does not match the inner packet")
            except MalformedPacket as e:
                return self._drop(Verdict.MALFORMED, d, now, seq, str(e)), b""
            inner = payload
            ecn = ecn_decapsulate(_ecn_of(inner), info.tos & 3)
            if ecn is None:
                return self._drop(Verdict.ECN, d, now, seq), b""
            if ecn != _ecn_of(inner):
                inner = set_inner_ecn(inner, ecn)
        else:
            header = bytearray(d[:off])
            header[info.proto_offset] = nh
            set_lengths(header, info.version, off + len(payload))
            inner = bytes(header) + payload
        if self.options.check_selectors and not _selectors_match(self.selectors, inner):
            return self._drop(Verdict.SELECTOR_MISMATCH, d, now, seq), b""
        self._account(len(inner), now)
        return Verdict.DELIVERED, inner
