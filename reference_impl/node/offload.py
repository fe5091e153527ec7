"""Segmentation and coalescing offload for the TUN device (sans-I/O).

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``) the
kernel hands the node TCP super-packets of up to 64 KiB with one read (TSO: the TCP stack of
the sender does one pass per super-packet instead of one per segment), and accepts coalesced
TCP super-packets on write (GRO: one pass of the receiving TCP stack, and one ACK, per
super-packet). Every packet on the device is preceded by a ``struct virtio_net_hdr``
(<linux/virtio_net.h>, 10 octets, native byte order).

The wire never sees a super-packet: :func:`tso_segments` cuts one into MSS-sized TCP
segments with their own IP and TCP headers and checksums (RFC 791 §3.1, RFC 9293 §3.1) before
they are protected one by one; :class:`Gro` joins decapsulated segments of one flow that
follow each other in sequence and were verified (each one's TCP checksum is checked before it
may join). Checksums use the fact that the Internet checksum (RFC 1071) is the sum of the
16-bit words modulo 0xFFFF, which for a big-endian integer of the octets is the integer
modulo 0xFFFF (2^16 = 1 mod 0xFFFF): one C-level conversion and one remainder per packet.
"""

from __future__ import annotations

import struct

VNET_HDR = struct.Struct("=BBHHHH")
"""flags, gso_type, hdr_len, gso_size, csum_start, csum_offset."""
VNET_LEN = VNET_HDR.size
NO_VNET = bytes(VNET_LEN)
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

_FIN, _SYN, _RST, _PSH, _URG, _CWR = 0x01, 0x02, 0x04, 0x08, 0x20, 0x80
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_MAX_IP = 65535


def ones_sum(data: bytes) -> int:
    """The one's complement sum of ``data`` as 16-bit big-endian words (RFC 1071), in
    1..0xFFFF (0 only for all-zero data); ``data`` of odd length is padded with a zero."""
    if len(data) & 1:
        data += b"\0"
    n = int.from_bytes(data, "big")
    r = n % 0xFFFF
    return 0xFFFF if r == 0 and n else r


def _fold(n: int) -> int:
    r = n % 0xFFFF
    return 0xFFFF if r == 0 and n else r


def _words(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return int.from_bytes(data, "big")


def complete_checksum(pkt: bytes, start: int, offset: int) -> bytes:
    """Finish a partial (``CHECKSUM_PARTIAL``) checksum: the field at ``start + offset``
    holds the folded pseudo-header sum; the checksum covers everything from ``start``."""
    at = start + offset
    if at + 2 > len(pkt) or start & 1:
        return pkt
    c = ~ones_sum(pkt[start:]) & 0xFFFF
    return pkt[:at] + _H.pack(c) + pkt[at + 2 :]


def _pseudo(pkt: bytes, v6: bool, proto: int, length: int) -> int:
    if v6:
        return _words(pkt[8:40]) + length + proto
    return _words(pkt[12:20]) + proto + length


def tso_segments(pkt: bytes, gso_size: int) -> list[bytes]:
    """Cut a TCP super-packet (IPv4 or IPv6, no extension headers) into segments of at most
    ``gso_size`` payload octets, with sequence numbers, flags, lengths, IPv4 identification
    and every checksum set as the kernel's own segmentation would (``tcp_gso_segment``).
    Anything it cannot parse is returned unchanged (one packet)."""
    v6 = pkt[0] >> 4 == 6
    if v6:
        if len(pkt) < 60 or pkt[6] != 6:
            return [pkt]
        ihl = 40
        end = 40 + _H.unpack_from(pkt, 4)[0]
    else:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl + 20 or pkt[9] != 6:
            return [pkt]
        end = _H.unpack_from(pkt, 2)[0] or len(pkt)
    end = min(end, len(pkt))
    thl = (pkt[ihl + 12] >> 4) * 4
    hl = ihl + thl
    payload = pkt[hl:end]
    if gso_size <= 0 or thl < 20 or len(payload) <= gso_size:
        if len(payload) <= gso_size and thl >= 20:
            return [_with_checksums(pkt[:end], ihl, hl, v6)]
        return [pkt]
    seq = _I.unpack_from(pkt, ihl + 4)[0]
    flags = pkt[ihl + 13]
    ident = 0 if v6 else _H.unpack_from(pkt, 4)[0]
    ip_head = bytearray(pkt[:ihl])
    tcp_head = bytearray(pkt[ihl:hl])
    tcp_head[16:18] = b"\0\0"
    if not v6:
        ip_head[10:12] = b"\0\0"
    base = _pseudo(pkt, v6, 6, 0)
    out = []
    n = len(payload)
    for i, off in enumerate(range(0, n, gso_size)):
        chunk = payload[off : off + gso_size]
        last = off + gso_size >= n
        f = flags if last else flags & ~(_FIN | _PSH)
        if i:
            f &= ~_CWR
        tcp_head[4:8] = _I.pack((seq + off) & 0xFFFFFFFF)
        tcp_head[13] = f
        tcp_len = thl + len(chunk)
        csum = ~_fold(base + tcp_len + _words(bytes(tcp_head)) + _words(chunk)) & 0xFFFF
        tcp_head[16:18] = _H.pack(csum)
        if v6:
            ip_head[4:6] = _H.pack(tcp_len)
        else:
            ip_head[2:4] = _H.pack(ihl + tcp_len)
            ip_head[4:6] = _H.pack((ident + i) & 0xFFFF)
            ip_head[10:12] = b"\0\0"
            ip_head[10:12] = _H.pack(~_fold(_words(bytes(ip_head))) & 0xFFFF)
        out.append(bytes(ip_head) + bytes(tcp_head) + chunk)
        tcp_head[16:18] = b"\0\0"
    return out


def _with_checksums(pkt: bytes, ihl: int, hl: int, v6: bool) -> bytes:
    b = bytearray(pkt)
    b[ihl + 16 : ihl + 18] = b"\0\0"
    tcp_len = len(pkt) - ihl
    b[ihl + 16 : ihl + 18] = _H.pack(
        ~_fold(_pseudo(pkt, v6, 6, tcp_len) + _words(bytes(b[ihl:]))) & 0xFFFF
    )
    if not v6:
        b[10:12] = b"\0\0"
        b[10:12] = _H.pack(~_fold(_words(bytes(b[:ihl]))) & 0xFFFF)
    return bytes(b)


def tcp_checksum_ok(pkt: bytes, ihl: int) -> bool:
    """Whether an IPv4 TCP segment's checksum verifies (RFC 9293 §3.1)."""
    return _fold(_pseudo(pkt, False, 6, len(pkt) - ihl) + _words(pkt[ihl:])) == 0xFFFF


def read_offloaded(data: bytes) -> list[bytes]:
    """The IP packets in one read from an offloading TUN device (virtio header first)."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(data)
    pkt = data[VNET_LEN:]
    if gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
        return tso_segments(pkt, gso_size)
    if flags & F_NEEDS_CSUM:
        return [complete_checksum(pkt, csum_start, csum_offset)]
    return [pkt]


class Gro:
    """Coalesces consecutive in-sequence IPv4 TCP segments of one flow for one TUN write
    (what ``tcp_gro_receive`` does in the kernel). Feed :meth:`add` the delivered packets of
    one batch, in order, then call :meth:`flush`; :attr:`out` holds what to write, each with
    its virtio header. ``merged`` counts joined segments.

    The joined packet's TCP checksum is derived from the segments' own checksums and headers
    (RFC 1624 arithmetic: each segment's checksum minus its pseudo-header and header is the
    sum of its payload), without touching the payload, and it is handed over unverified
    (``CHECKSUM_NONE``): the kernel verifies the whole super-packet, so one corrupt segment
    makes the stack drop it and TCP retransmit, as it would have dropped the segment.
    """

    __slots__ = (
        "_first",
        "_mss",
        "_next",
        "_open",
        "_parts",
        "_psum",
        "_size",
        "merged",
        "out",
    )

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.merged = 0
        self._parts: list[bytes] = []
        self._first = b""
        self._next = 0
        self._mss = 0
        self._size = 0
        self._psum = 0
        self._open = False

    def add(self, pkt: bytes) -> None:
        # IPv4, IHL 5, TCP, not a fragment, exact length, with payload and no SYN/FIN/RST/URG.
        n = len(pkt)
        if n < 40 or pkt[0] != 0x45 or pkt[9] != 6 or pkt[6] & 0x3F or pkt[7]:
            self._plain(pkt)
            return
        if (pkt[2] << 8 | pkt[3]) != n:
            self._plain(pkt)
            return
        thl = (pkt[32] >> 4) * 4
        hl = 20 + thl
        plen = n - hl
        flags = pkt[33]
        if thl < 20 or plen <= 0 or flags & (_SYN | _FIN | _RST | _URG):
            self._plain(pkt)
            return
        seq = _I.unpack_from(pkt, 24)[0]
        # This segment's share of the sum of the payloads (RFC 1624): ~checksum minus the
        # header words that differ between segments (TCP length, sequence number, the word
        # with the flags); the words they share are taken out once per run, at flush.
        psum = (
            (0xFFFF ^ (pkt[36] << 8 | pkt[37]))
            - (thl + plen)
            - (seq >> 16)
            - (seq & 0xFFFF)
            - (pkt[32] << 8 | flags)
        )  # fmt: skip
        f = self._first
        if (
            self._open
            and seq == self._next
            and plen <= self._mss
            and pkt[12:24] == f[12:24]
            and pkt[28:33] == f[28:33]
            and (flags | _PSH) == (f[33] | _PSH)
            and pkt[34:36] == f[34:36]
            and pkt[38:hl] == f[38:hl]
            and pkt[8:10] == f[8:10]
            and pkt[1] == f[1]
            and pkt[6] == f[6]
            and self._size + plen + hl <= _MAX_IP
        ):
            self._parts.append(pkt[hl:])
            self._size += plen
            self._psum += psum
            self._next = (seq + plen) & 0xFFFFFFFF
            self.merged += 1
            if plen < self._mss or flags & _PSH:
                self._open = False  # a short or pushed segment ends the super-packet
                if flags & _PSH:
                    self._first = f[:33] + bytes((f[33] | _PSH,)) + f[34:]
            return
        self.flush()
        self._parts = [pkt[hl:]]
        self._first = pkt[:hl]
        self._mss = plen
        self._size = plen
        self._psum = psum
        self._next = (seq + plen) & 0xFFFFFFFF
        # An odd segment size would shift the next payload's octets within their words.
        self._open = not flags & _PSH and not plen & 1

    def _plain(self, pkt: bytes) -> None:
        self.flush()
        self.out.append(NO_VNET + pkt)

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        head = self._first
        self._parts = []
        self._open = False
        k = len(parts)
        if k == 1:
            self.out.append(NO_VNET + head + parts[0])
            return
        hl = len(head)
        total = hl + self._size
        ip = bytearray(head[:20])
        ip[2:4] = _H.pack(total)
        ip[10:12] = b"\0\0"
        ip[10:12] = _H.pack(~_fold(_words(bytes(ip))) & 0xFFFF)
        # Per segment, ~checksum = pseudo(addresses, 6, length) + header + payload; the
        # shared words (addresses, protocol, ports, ack, window, urgent pointer, options)
        # come out once per segment, k times in all.
        shared = _words(head[12:20]) + 6 + _words(head[20:24]) + _words(head[28:32])
        shared += _words(head[34:36]) + _words(head[38:hl])
        payload_sum = self._psum - k * shared
        tcp = bytearray(head[20:])
        tcp[16:18] = b"\0\0"
        s = _words(head[12:20]) + 6 + (total - 20) + _words(bytes(tcp)) + payload_sum
        tcp[16:18] = _H.pack(~_fold(s % 0xFFFF + 0xFFFF) & 0xFFFF)
        vnet = VNET_HDR.pack(0, GSO_TCPV4, hl, self._mss, 0, 0)
        self.out.append(vnet + bytes(ip) + bytes(tcp) + b"".join(parts))
