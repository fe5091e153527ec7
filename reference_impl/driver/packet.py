"""IPv4/IPv6 header helpers for the driver's slow paths (the fast paths inline their own).

Everything works on ``bytes`` of whole IP datagrams. Parsing errors raise ``MalformedPacket``
(a ``RemoteProtocolError``) so that callers turn them into a counted ``Verdict.MALFORMED``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from reference_impl.errors import LocalProtocolError, RemoteProtocolError

# IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132
IPPROTO_MH = 135

IPV6_EXTENSION_HEADERS = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_MH})
"""Extension headers with the generic (next header, length in 8-octet units - 1) layout."""

_PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, 136})  # 136 = UDP-Lite
_ICMP_PROTOCOLS = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})

_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
IPV4_HEADER = struct.Struct(">BBHHHBBH4s4s")
IPV6_HEADER = struct.Struct(">IHBB16s16s")
UDP_HEADER = struct.Struct(">HHHH")


class MalformedPacket(RemoteProtocolError):
    """An IP header that does not parse (counted as ``Verdict.MALFORMED``)."""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``.

    The one's complement sum of 16-bit words is the data, read as one big integer, modulo
    0xFFFF (2^16 = 1 mod 0xFFFF), so one C-level conversion and one remainder do it.
    """
    if len(data) & 1:
        data += b"\x00"
    total = int.from_bytes(data, "big")
    if not total:
        return 0xFFFF
    return 0xFFFE - (total - 1) % 0xFFFF


def with_ipv4_checksum(header: bytes | bytearray) -> bytes:
    """``header`` (an IPv4 header, options included) with its checksum field recomputed."""
    h = bytearray(header)
    h[10:12] = b"\x00\x00"
    h[10:12] = _H.pack(checksum(bytes(h)))
    return bytes(h)


def ipv4_header(
    *,
    tos: int,
    total_length: int,
    ident: int,
    flags_fragment: int,
    ttl: int,
    protocol: int,
    src: bytes,
    dst: bytes,
) -> bytes:
    """A 20-octet IPv4 header (no options) with a valid checksum."""
    total = (
        (0x4500 | tos)
        + total_length
        + ident
        + flags_fragment
        + ((ttl << 8) | protocol)
        + int.from_bytes(src + dst, "big")
    )
    return IPV4_HEADER.pack(
        0x45,
        tos,
        total_length,
        ident,
        flags_fragment,
        ttl,
        protocol,
        0xFFFE - (total - 1) % 0xFFFF,
        src,
        dst,
    )


def ipv6_header(
    *,
    traffic_class: int,
    flow_label: int,
    payload_length: int,
    next_header: int,
    hop_limit: int,
    src: bytes,
    dst: bytes,
) -> bytes:
    """A 40-octet IPv6 header."""
    first = (6 << 28) | (traffic_class << 20) | flow_label
    return IPV6_HEADER.pack(first, payload_length, next_header, hop_limit, src, dst)


def _pseudo_header_v6(src: bytes, dst: bytes, length: int, protocol: int) -> bytes:
    return src + dst + struct.pack(">II", length, protocol)


def udp_checksum_v6(src: bytes, dst: bytes, udp: bytes) -> int:
    """UDP checksum over IPv6 (RFC 8200 §8.1: mandatory; 0 is sent as 0xFFFF)."""
    c = checksum(_pseudo_header_v6(src, dst, len(udp), IPPROTO_UDP) + udp)
    return c or 0xFFFF


@dataclass(slots=True)
class IpInfo:
    """Where things are in one IP datagram.

    ``proto_offset`` is the offset of the octet that holds the protocol / next header value
    of the header at ``payload_offset`` (IPv4: 9; IPv6: 6 or the first octet of the last
    extension header before it); transport-mode processing patches it.
    """

    version: int
    header_length: int
    """IPv4: IHL * 4. IPv6: 40."""
    total_length: int
    src: bytes
    dst: bytes
    tos: int
    """IPv4 TOS octet, or IPv6 Traffic Class (DSCP << 2 | ECN)."""
    protocol: int
    """The upper-layer (or IPsec) protocol found at ``payload_offset``."""
    payload_offset: int
    proto_offset: int
    fragment: bool
    """IPv4 MF or offset set; IPv6 a Fragment header before ``payload_offset``."""
    first_fragment: bool = True
    """False for a non-first fragment (its transport ports are unknowable: OPAQUE)."""


def _parse_v4(d: bytes) -> IpInfo:
    if len(d) < 20:
        raise MalformedPacket("IPv4 header truncated")
    ihl = (d[0] & 0x0F) * 4
    tl = (d[2] << 8) | d[3]
    if ihl < 20 or tl < ihl or len(d) < tl:
        raise MalformedPacket(f"IPv4 header length {ihl}, total length {tl}, got {len(d)}")
    frag = ((d[6] << 8) | d[7]) & 0x3FFF
    return IpInfo(
        version=4,
        header_length=ihl,
        total_length=tl,
        src=d[12:16],
        dst=d[16:20],
        tos=d[1],
        protocol=d[9],
        payload_offset=ihl,
        proto_offset=9,
        fragment=bool(frag),
        first_fragment=not (frag & 0x1FFF),
    )


def _parse_v6(d: bytes, stop_at: frozenset[int]) -> IpInfo:
    if len(d) < 40:
        raise MalformedPacket("IPv6 header truncated")
    tl = 40 + ((d[4] << 8) | d[5])
    if len(d) < tl:
        raise MalformedPacket(f"IPv6 payload length {tl - 40}, got {len(d) - 40}")
    nh = d[6]
    proto_offset = 6
    off = 40
    fragment = False
    first = True
    while nh not in stop_at:
        if nh in IPV6_EXTENSION_HEADERS:
            if off + 2 > tl:
                raise MalformedPacket("IPv6 extension header truncated")
            length = (d[off + 1] + 1) * 8
        elif nh == IPPROTO_FRAGMENT:
            if off + 8 > tl:
                raise MalformedPacket("IPv6 fragment header truncated")
            fragment = True
            first = not ((d[off + 2] << 8 | d[off + 3]) & 0xFFF8)
            length = 8
            if not first:
                proto_offset, off, nh = off, off + length, d[off]
                break
        else:
            break
        if off + length > tl:
            raise MalformedPacket("IPv6 extension header beyond the payload")
        proto_offset = off
        nh = d[off]
        off += length
    return IpInfo(
        version=6,
        header_length=40,
        total_length=tl,
        src=d[8:24],
        dst=d[24:40],
        tos=((d[0] & 0x0F) << 4) | (d[1] >> 4),
        protocol=nh,
        payload_offset=off,
        proto_offset=proto_offset,
        fragment=fragment,
        first_fragment=first,
    )


_STOP_UPPER: frozenset[int] = frozenset()


def parse_ip(d: bytes, stop_at: frozenset[int] = _STOP_UPPER) -> IpInfo:
    """Parse an IP datagram up to the first header that is not an IPv6 extension header
    (or one in ``stop_at``, e.g. ESP/AH), checking every length against the datagram."""
    if not d:
        raise MalformedPacket("empty packet")
    version = d[0] >> 4
    if version == 4:
        return _parse_v4(d)
    if version == 6:
        return _parse_v6(d, stop_at)
    raise MalformedPacket(f"IP version {version}")


def transport_split(d: bytes) -> IpInfo:
    """Where transport mode inserts ESP or AH (RFC 4303 §3.1.1, RFC 4302 §3.1.1).

    IPv4: after the header and its options. IPv6: after hop-by-hop, routing and fragment
    headers and the destination options that precede a routing header; destination options
    that follow a routing header stay after the IPsec header (Linux and scapy split the same
    way, so the header order interoperates).
    """
    if not d:
        raise MalformedPacket("empty packet")
    if d[0] >> 4 == 4:
        info = _parse_v4(d)
        if info.fragment:
            raise LocalProtocolError("transport mode is applied before fragmentation")
        return info
    if d[0] >> 4 != 6 or len(d) < 40:
        raise MalformedPacket("not an IPv4 or IPv6 packet")
    tl = 40 + ((d[4] << 8) | d[5])
    if len(d) < tl:
        raise MalformedPacket("IPv6 payload length beyond the packet")
    nh = d[6]
    proto_offset = 6
    off = 40
    seen_routing = False
    while nh in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
        if nh == IPPROTO_DSTOPTS and seen_routing:
            break
        if nh == IPPROTO_ROUTING:
            seen_routing = True
        if off + 2 > tl:
            raise MalformedPacket("IPv6 extension header truncated")
        length = (d[off + 1] + 1) * 8
        if off + length > tl:
            raise MalformedPacket("IPv6 extension header beyond the payload")
        proto_offset = off
        nh = d[off]
        off += length
    if nh == IPPROTO_FRAGMENT:
        raise LocalProtocolError("transport mode is applied before fragmentation")
    return IpInfo(
        version=6,
        header_length=40,
        total_length=tl,
        src=d[8:24],
        dst=d[24:40],
        tos=((d[0] & 0x0F) << 4) | (d[1] >> 4),
        protocol=nh,
        payload_offset=off,
        proto_offset=proto_offset,
        fragment=False,
    )


def set_lengths(header: bytearray, version: int, total_length: int) -> None:
    """Patch the length field of an IP header (and the IPv4 checksum) in place."""
    if version == 4:
        header[2:4] = _H.pack(total_length)
        header[10:12] = b"\x00\x00"
        header[10:12] = _H.pack(checksum(bytes(header)))
    else:
        header[4:6] = _H.pack(total_length - 40)


@dataclass(frozen=True, slots=True)
class Flow:
    """What selectors match on: addresses as integers, protocol, and the two "ports".

    ``sport``/``dport`` are None when unknowable (non-first fragment, truncated header:
    RFC 4301 §4.4.1.1 OPAQUE). For ICMP both carry type << 8 | code (RFC 7296 §3.13.1).
    """

    version: int
    src: int
    dst: int
    protocol: int
    sport: int | None
    dport: int | None


def flow_of(d: bytes) -> Flow:
    """The selector fields of an IP packet (its upper-layer protocol after IPv6 extension
    headers, ESP and AH excepted: those are the protocol)."""
    info = parse_ip(d, frozenset({IPPROTO_ESP, IPPROTO_AH}))
    proto = info.protocol
    off = info.payload_offset
    sport: int | None = None
    dport: int | None = None
    if info.first_fragment:
        if proto in _PORT_PROTOCOLS and off + 4 <= info.total_length:
            sport, dport = _HH.unpack_from(d, off)
        elif proto in _ICMP_PROTOCOLS and off + 2 <= info.total_length:
            sport = dport = (d[off] << 8) | d[off + 1]
    return Flow(
        info.version,
        int.from_bytes(info.src),
        int.from_bytes(info.dst),
        proto,
        sport,
        dport,
    )


# --- ECN (RFC 6040) -----------------------------------------------------------------------------

NOT_ECT = 0
ECT_1 = 1
ECT_0 = 2
CE = 3


def ecn_decapsulate(inner: int, outer: int) -> int | None:
    """The inner ECN field after decapsulation (RFC 6040 §4.2, Figure 4); None means drop."""
    if outer == CE:
        return None if inner == NOT_ECT else CE
    if outer == ECT_1 and inner == ECT_0:
        return ECT_1
    return inner


def set_inner_ecn(d: bytes, ecn: int) -> bytes:
    """``d`` with its ECN field replaced (IPv4 checksum updated)."""
    b = bytearray(d)
    if d[0] >> 4 == 4:
        b[1] = (b[1] & 0xFC) | ecn
        ihl = (b[0] & 0x0F) * 4
        hdr = with_ipv4_checksum(b[:ihl])
        return hdr + bytes(b[ihl:])
    b[1] = (b[1] & 0xCF) | (ecn << 4)
    return bytes(b)


def fix_transport_checksum(d: bytes) -> bytes:
    """``d`` with its TCP or UDP checksum recomputed from its own addresses.

    Transport-mode ESP through a NAT (RFC 3948 §3.1.2): the sender computed the checksum
    with its pre-NAT address, so the receiver repairs it after decapsulation (the ESP ICV has
    already authenticated the segment). A zero UDP checksum over IPv4 stays zero.
    """
    info = parse_ip(d)
    proto = info.protocol
    off = info.payload_offset
    end = info.total_length
    if proto == IPPROTO_TCP:
        at = off + 16
    elif proto == IPPROTO_UDP:
        at = off + 6
    else:
        return d
    if info.fragment or at + 2 > end:
        return d
    if proto == IPPROTO_UDP and info.version == 4 and d[at : at + 2] == b"\x00\x00":
        return d
    seg = bytearray(d[off:end])
    seg[at - off : at - off + 2] = b"\x00\x00"
    length = end - off
    if info.version == 4:
        pseudo = info.src + info.dst + struct.pack(">BBH", 0, proto, length)
    else:
        pseudo = info.src + info.dst + struct.pack(">II", length, proto)
    c = checksum(pseudo + bytes(seg))
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF
    seg[at - off : at - off + 2] = _H.pack(c)
    return d[:off] + bytes(seg) + d[end:]
