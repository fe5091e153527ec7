"""The selector fields of an IP packet, as the SPD lookup needs them (RFC 4301 §4.4.1.1).

``PacketMeta`` is what the agent classifies; ``parse_ip_packet`` extracts it from an IPv4 or
IPv6 packet (ports from TCP/UDP/SCTP, ICMP type/code as the 16-bit "port" of RFC 7296
§3.13.1). Non-initial fragments carry no ports (``OPAQUE`` = -1, RFC 4301 §7.1): they only
match entries whose ports are ANY.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from reference_impl.policy.addresses import PORT_PROTOCOLS, ip_from_int

OPAQUE = -1
TCP_FIN = 0x01
TCP_RST = 0x04

_IPV6_EXT_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44


class PacketMeta(NamedTuple):
    """Selector fields of one packet, addresses as integers (``version`` 4 or 6)."""

    version: int
    src: int
    dst: int
    proto: int
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0

    @classmethod
    def make(
        cls,
        src: str,
        dst: str,
        proto: int,
        sport: int = 0,
        dport: int = 0,
        tcp_flags: int = 0,
    ) -> PacketMeta:
        """Build from text addresses (tests, the harness)."""
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError("source and destination must be the same address family")
        return cls(s.version, int(s), int(d), proto, sport, dport, tcp_flags)

    @classmethod
    def icmp(cls, src: str, dst: str, icmp_type: int, icmp_code: int = 0) -> PacketMeta:
        s = ipaddress.ip_address(src)
        proto = 1 if s.version == 4 else 58
        port = (icmp_type << 8) | icmp_code
        return cls.make(src, dst, proto, port, port)

    def describe(self) -> str:
        src, dst = ip_from_int(self.version, self.src), ip_from_int(self.version, self.dst)
        if self.proto in PORT_PROTOCOLS:
            return f"{src}:{self.sport} -> {dst}:{self.dport} proto {self.proto}"
        return f"{src} -> {dst} proto {self.proto}"


_V4 = struct.Struct("!BxxxxxHxBxxII")
"""Version/IHL, flags+fragment offset, protocol, source, destination (RFC 791 §3.1)."""
_PORTS = struct.Struct("!HH")
_U128 = struct.Struct("!QQQQ")


def parse_ip_packet(data: bytes) -> PacketMeta | None:
    """Selector fields of a raw IPv4/IPv6 packet, or ``None`` if it is not one."""
    n = len(data)
    if n < 20:
        return None
    version = data[0] >> 4
    if version == 4:
        vihl, frag, proto, src, dst = _V4.unpack_from(data)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or n < ihl:
            return None
        if frag & 0x1FFF:
            return PacketMeta(4, src, dst, proto, OPAQUE, OPAQUE)
        if proto == 17 or proto == 6 or proto == 132:
            if n < ihl + 4:
                return PacketMeta(4, src, dst, proto, OPAQUE, OPAQUE)
            sport, dport = _PORTS.unpack_from(data, ihl)
            flags = data[ihl + 13] if proto == 6 and n > ihl + 13 else 0
            return PacketMeta(4, src, dst, proto, sport, dport, flags)
        return _transport(4, src, dst, proto, data, ihl)
    if version == 6:
        if n < 40:
            return None
        s1, s2, d1, d2 = _U128.unpack_from(data, 8)
        src = (s1 << 64) | s2
        dst = (d1 << 64) | d2
        nh = data[6]
        off = 40
        while nh in _IPV6_EXT_HEADERS or nh == _IPV6_FRAGMENT:
            if n < off + 8:
                return None
            if nh == _IPV6_FRAGMENT:
                frag_offset = struct.unpack_from("!H", data, off + 2)[0] >> 3
                nh = data[off]
                off += 8
                if frag_offset:
                    return PacketMeta(6, src, dst, nh, OPAQUE, OPAQUE)
                continue
            nh, length = data[off], (data[off + 1] + 1) * 8
            off += length
        return _transport(6, src, dst, nh, data, off)
    return None


def _transport(version: int, src: int, dst: int, proto: int, data: bytes, off: int) -> PacketMeta:
    if proto in PORT_PROTOCOLS:
        if len(data) < off + 4:
            return PacketMeta(version, src, dst, proto, OPAQUE, OPAQUE)
        sport, dport = _PORTS.unpack_from(data, off)
        flags = data[off + 13] if proto == 6 and len(data) > off + 13 else 0
        return PacketMeta(version, src, dst, proto, sport, dport, flags)
    if proto in (1, 58):
        if len(data) < off + 2:
            return PacketMeta(version, src, dst, proto, OPAQUE, OPAQUE)
        port = (data[off] << 8) | data[off + 1]
        return PacketMeta(version, src, dst, proto, port, port)
    return PacketMeta(version, src, dst, proto, 0, 0)


def build_ipv4_udp(src: str, dst: int | str, sport: int, dport: int, payload: bytes) -> bytes:
    """A minimal IPv4/UDP packet (checksums zero): test and harness helper."""
    s = int(ipaddress.IPv4Address(src))
    d = int(ipaddress.IPv4Address(dst)) if isinstance(dst, str) else dst
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, s, d)
    return hdr + udp
