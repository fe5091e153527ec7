"""Read a capture (pcap or pcapng) as IP datagrams, classified for the wire oracle.

:func:`read_packets` yields one :class:`WirePacket` per IP datagram, in capture order, with
its timestamp and frame number (1-based, as Wireshark numbers frames), after stripping the
link layer (Ethernet with VLAN tags, Linux cooked v1/v2, raw IP, BSD loopback) and
reassembling IP fragments (RFC 791 §3.2, RFC 8200 §4.5). Each datagram is classified:

* ``IKE``: UDP to or from port 500, or UDP on the NAT-T port (4500) starting with the
  non-ESP marker (RFC 3948 §2.2), which is stripped;
* ``ESP``: IP protocol 50, or UDP on the NAT-T port otherwise (RFC 3948 §2.1);
* ``AH``: IP protocol 51;
* ``NAT_KEEPALIVE``: a single 0xFF octet on the NAT-T port (RFC 3948 §2.3);
* ``OTHER``: anything else (the oracle checks cleartext against the selectors).

The harness may use scapy (never the data path): its raw readers parse the file format;
everything above the link layer is decoded here, so the octets are exactly the captured ones.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_ntop
from typing import Any

IKE_PORT = 500
NATT_PORT = 4500
NON_ESP_MARKER = b"\0\0\0\0"

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = frozenset({0x8100, 0x88A8, 0x9100})

# pcap LINKTYPE_* values (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_TYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})

_IPV6_EXT = frozenset(
    {0, 43, 60, 135, 139, 140}
)  # hop-by-hop, routing, dst opts, mobility, HIP, shim6
_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_UDP = 17


class PacketKind(StrEnum):
    IKE = "ike"
    ESP = "esp"
    AH = "ah"
    NAT_KEEPALIVE = "nat_keepalive"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class WirePacket:
    """One IP datagram of a capture.

    ``ip`` is the whole datagram (reassembled when it arrived in fragments); ``data`` the
    IKE message (without any non-ESP marker), the ESP packet (from its SPI) or the AH header
    onwards. ``protocol`` is the upper-layer protocol after IPv6 extension headers.
    """

    frame: int
    time: float
    ip: bytes
    version: int
    src: str
    dst: str
    protocol: int
    kind: PacketKind
    offset: int
    """Where ``data`` starts in ``ip``."""
    end: int
    """Where ``data`` ends in ``ip`` (the IP total length)."""
    payload_offset: int
    """Where the IP payload (UDP, ESP, AH, ...) starts in ``ip``."""
    sport: int | None = None
    dport: int | None = None
    encapsulated: bool = False
    """UDP on the NAT-T port: ESP-in-UDP, or IKE behind the non-ESP marker."""
    fragments: int = 1
    """How many IP fragments this datagram was reassembled from (1: not fragmented)."""

    @property
    def data(self) -> bytes:
        return self.ip[self.offset : self.end]

    @property
    def endpoints(self) -> str:
        """``src[:port] > dst[:port]`` for reports."""
        if self.sport is None:
            return f"{self.src} > {self.dst}"
        return f"{self.src}:{self.sport} > {self.dst}:{self.dport}"


@dataclass(slots=True)
class CaptureStats:
    """What :func:`read_packets` skipped or rebuilt (filled while iterating)."""

    frames: int = 0
    not_ip: int = 0
    truncated: int = 0
    fragments: int = 0
    reassembled: int = 0
    incomplete: int = 0
    """Fragments of datagrams that never completed (counted at the end of the capture)."""
    link_types: set[int] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "not_ip": self.not_ip,
            "truncated": self.truncated,
            "fragments": self.fragments,
            "reassembled": self.reassembled,
            "incomplete": self.incomplete,
            "link_types": sorted(self.link_types),
        }


# --- the file -----------------------------------------------------------------------------------


def read_frames(path: str | Path) -> Iterator[tuple[int, float, int, bytes]]:
    """``(frame number, timestamp, link type, frame octets)`` of a pcap or pcapng file."""
    from scapy.utils import RawPcapReader

    reader: Any = RawPcapReader(str(path))  # a RawPcapNgReader for pcapng files
    try:
        default_link = getattr(reader, "linktype", None)
        nano = bool(getattr(reader, "nano", False))
        for n, (data, meta) in enumerate(reader, 1):
            if hasattr(meta, "tshigh"):
                ts = ((meta.tshigh << 32) | meta.tslow) / float(meta.tsresol or 1_000_000)
                link = meta.linktype
            else:
                ts = meta.sec + meta.usec / (1e9 if nano else 1e6)
                link = default_link
            yield n, ts, int(link if link is not None else LINKTYPE_ETHERNET), bytes(data)
    finally:
        reader.close()


def _strip_link(link: int, frame: bytes) -> bytes | None:
    """The network-layer octets of a frame, or None when it carries no IP."""
    if link == LINKTYPE_ETHERNET:
        off = 12
        if len(frame) < 14:
            return None
        etype = struct.unpack_from("!H", frame, off)[0]
        while etype in _ETH_VLAN and len(frame) >= off + 6:
            off += 4
            etype = struct.unpack_from("!H", frame, off)[0]
        if etype not in (_ETH_IPV4, _ETH_IPV6):
            return None
        return frame[off + 2 :]
    if link == LINKTYPE_LINUX_SLL:
        if len(frame) < 16 or struct.unpack_from("!H", frame, 14)[0] not in (_ETH_IPV4, _ETH_IPV6):
            return None
        return frame[16:]
    if link == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20 or struct.unpack_from("!H", frame, 0)[0] not in (_ETH_IPV4, _ETH_IPV6):
            return None
        return frame[20:]
    if link in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return frame[4:] if len(frame) > 4 else None
    if link in _RAW_TYPES:
        return frame
    return None


# --- IP -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ip:
    version: int
    src: str
    dst: str
    protocol: int
    proto_offset: int
    """Offset of the octet naming ``protocol`` (IPv4 Protocol, or the last Next Header)."""
    payload_offset: int
    total_length: int
    frag_offset: int = 0
    more_fragments: bool = False
    ident: int | None = None
    """Fragment identification when the datagram is a fragment."""


def _parse_ip(d: bytes) -> _Ip | None:
    if not d:
        return None
    version = d[0] >> 4
    if version == 4:
        if len(d) < 20:
            return None
        ihl = (d[0] & 0x0F) * 4
        total = struct.unpack_from("!H", d, 2)[0]
        if ihl < 20 or total < ihl or len(d) < total:
            return None
        flags_frag = struct.unpack_from("!H", d, 6)[0]
        mf = bool(flags_frag & 0x2000)
        foff = (flags_frag & 0x1FFF) * 8
        return _Ip(
            4,
            inet_ntop(AF_INET, d[12:16]),
            inet_ntop(AF_INET, d[16:20]),
            d[9],
            9,
            ihl,
            total,
            foff,
            mf,
            struct.unpack_from("!H", d, 4)[0] if (mf or foff) else None,
        )
    if version == 6:
        if len(d) < 40:
            return None
        total = 40 + struct.unpack_from("!H", d, 4)[0]
        if len(d) < total:
            return None
        nh = d[6]
        nh_at = 6
        off = 40
        foff = 0
        mf = False
        ident: int | None = None
        while nh in _IPV6_EXT or nh == _FRAGMENT:
            if off + 8 > total:
                return None
            if nh == _FRAGMENT:
                fo = struct.unpack_from("!H", d, off + 2)[0]
                foff = fo & 0xFFF8
                mf = bool(fo & 1)
                ident = struct.unpack_from("!I", d, off + 4)[0]
                nh_at, nh, off = off, d[off], off + 8
                if foff or mf:
                    break
                continue
            length = (d[off + 1] + 1) * 8
            nh_at, nh, off = off, d[off], off + length
        return _Ip(
            6,
            inet_ntop(AF_INET6, d[8:24]),
            inet_ntop(AF_INET6, d[24:40]),
            nh,
            nh_at,
            off,
            total,
            foff,
            mf,
            ident if (foff or mf) else None,
        )
    return None


@dataclass(slots=True)
class _Reassembly:
    header: bytes = b""
    """Unfragmentable part of the first fragment (IPv6: up to the fragment header)."""
    proto_offset: int = 0
    protocol: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    count: int = 0


def _reassemble(r: _Reassembly, version: int) -> bytes | None:
    if r.total is None or not r.header:
        return None
    body = bytearray()
    for off in sorted(r.parts):
        if off > len(body):
            return None  # a hole
        chunk = r.parts[off]
        body[off : off + len(chunk)] = chunk
    if len(body) < r.total:
        return None
    body = body[: r.total]
    head = bytearray(r.header)
    if version == 4:
        struct.pack_into("!H", head, 2, len(head) + len(body))
        struct.pack_into("!H", head, 6, 0)
        struct.pack_into("!H", head, 10, 0)
        s = sum(struct.unpack(f"!{len(head) // 2}H", bytes(head)))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        struct.pack_into("!H", head, 10, ~s & 0xFFFF)
    else:
        head[r.proto_offset] = r.protocol
        struct.pack_into("!H", head, 4, len(head) - 40 + len(body))
    return bytes(head) + bytes(body)


class _Defragmenter:
    def __init__(self, stats: CaptureStats) -> None:
        self.stats = stats
        self.pending: dict[tuple[int, str, str, int, int], _Reassembly] = {}

    def add(self, d: bytes, ip: _Ip) -> bytes | None:
        assert ip.ident is not None
        self.stats.fragments += 1
        key = (ip.version, ip.src, ip.dst, ip.protocol if ip.version == 4 else 0, ip.ident)
        r = self.pending.setdefault(key, _Reassembly())
        r.count += 1
        r.parts[ip.frag_offset] = d[ip.payload_offset : ip.total_length]
        if ip.frag_offset == 0:
            if ip.version == 4:
                r.header = d[: ip.payload_offset]
            else:
                r.header = d[: ip.payload_offset - 8]  # without the fragment header
                # The fragment header's Next Header names the payload; after reassembly the
                # octet that named the fragment header must name it instead.
                r.protocol = ip.protocol
                r.proto_offset = self._v6_link(d, ip.payload_offset - 8)
        if not ip.more_fragments:
            r.total = ip.frag_offset + ip.total_length - ip.payload_offset
        whole = _reassemble(r, ip.version)
        if whole is None:
            return None
        del self.pending[key]
        self.stats.reassembled += 1
        return whole

    @staticmethod
    def _v6_link(d: bytes, frag_header_at: int) -> int:
        """Offset of the Next Header octet that names the fragment header."""
        nh_at = 6
        nh = d[6]
        off = 40
        while off < frag_header_at and nh in _IPV6_EXT:
            nh_at, nh, off = off, d[off], off + (d[off + 1] + 1) * 8
        return nh_at

    def finish(self) -> None:
        self.stats.incomplete += sum(r.count for r in self.pending.values())
        self.pending.clear()


# --- classification -----------------------------------------------------------------------------


def classify(
    frame: int,
    time: float,
    d: bytes,
    ip: _Ip,
    *,
    ike_ports: frozenset[int],
    natt_ports: frozenset[int],
    fragments: int = 1,
) -> WirePacket:
    """Classify one whole (reassembled) IP datagram, see the module docstring."""
    off = ip.payload_offset
    end = ip.total_length

    def packet(
        kind: PacketKind,
        start: int,
        stop: int,
        sport: int | None = None,
        dport: int | None = None,
        encapsulated: bool = False,
    ) -> WirePacket:
        return WirePacket(
            frame,
            time,
            d[:end],
            ip.version,
            ip.src,
            ip.dst,
            ip.protocol,
            kind,
            start,
            stop,
            off,
            sport,
            dport,
            encapsulated,
            fragments,
        )

    if ip.protocol == IPPROTO_ESP:
        return packet(PacketKind.ESP, off, end)
    if ip.protocol == IPPROTO_AH:
        return packet(PacketKind.AH, off, end)
    if ip.protocol == IPPROTO_UDP and end - off >= 8:
        sport, dport, ulen = struct.unpack_from("!HHH", d, off)
        uend = min(end, off + ulen) if ulen >= 8 else end
        p = off + 8
        n = uend - p
        if sport in natt_ports or dport in natt_ports:
            if n == 1 and d[p] == 0xFF:
                return packet(PacketKind.NAT_KEEPALIVE, p, uend, sport, dport, True)
            if n >= 4 and d[p : p + 4] == NON_ESP_MARKER:
                return packet(PacketKind.IKE, p + 4, uend, sport, dport, True)
            if n >= 8:
                return packet(PacketKind.ESP, p, uend, sport, dport, True)
        elif sport in ike_ports or dport in ike_ports:
            return packet(PacketKind.IKE, p, uend, sport, dport)
        return packet(PacketKind.OTHER, p, uend, sport, dport)
    return packet(PacketKind.OTHER, off, end)


def datagrams(
    frames: Iterable[tuple[int, float, int, bytes]],
    *,
    ike_ports: Iterable[int] = (IKE_PORT,),
    natt_ports: Iterable[int] = (NATT_PORT,),
    stats: CaptureStats | None = None,
) -> Iterator[WirePacket]:
    """Classified IP datagrams of ``(frame, time, link type, octets)`` tuples."""
    ike = frozenset(ike_ports)
    natt = frozenset(natt_ports)
    st = stats if stats is not None else CaptureStats()
    defrag = _Defragmenter(st)
    counts: dict[tuple[int, str, str, int, int], int] = {}
    for frame, time, link, raw in frames:
        st.frames += 1
        st.link_types.add(link)
        d = _strip_link(link, raw)
        if d is None:
            st.not_ip += 1
            continue
        ip = _parse_ip(d)
        if ip is None:
            st.truncated += 1
            continue
        n = 1
        if ip.ident is not None:
            key = (ip.version, ip.src, ip.dst, ip.protocol if ip.version == 4 else 0, ip.ident)
            counts[key] = counts.get(key, 0) + 1
            whole = defrag.add(d, ip)
            if whole is None:
                continue
            n = counts.pop(key)
            d = whole
            ip2 = _parse_ip(d)
            if ip2 is None or ip2.ident is not None:
                st.truncated += 1
                continue
            ip = ip2
        yield classify(frame, time, d, ip, ike_ports=ike, natt_ports=natt, fragments=n)
    defrag.finish()


def read_packets(
    path: str | Path,
    *,
    ike_ports: Iterable[int] = (IKE_PORT,),
    natt_ports: Iterable[int] = (NATT_PORT,),
    stats: CaptureStats | None = None,
) -> Iterator[WirePacket]:
    """Every IP datagram of a pcap/pcapng file, classified (see the module docstring).

    ``ike_ports``/``natt_ports`` add ports for nodes that do not use 500/4500 (the ``local``
    topology gives each node its own ports).
    """
    return datagrams(read_frames(path), ike_ports=ike_ports, natt_ports=natt_ports, stats=stats)


def ip_packet(data: bytes, time: float = 0.0, frame: int = 0, **ports: Iterable[int]) -> WirePacket:
    """Classify one IP datagram given as octets (crafted packets, tests)."""
    ip = _parse_ip(data)
    if ip is None or ip.ident is not None:
        raise ValueError("not a whole IP datagram")
    return classify(
        frame,
        time,
        data,
        ip,
        ike_ports=frozenset(ports.get("ike_ports", (IKE_PORT,))),
        natt_ports=frozenset(ports.get("natt_ports", (NATT_PORT,))),
    )


def write_pcap(
    path: str | Path,
    packets: Iterable[bytes | tuple[float, bytes]],
    *,
    linktype: int = LINKTYPE_RAW,
) -> Path:
    """Write a classic pcap (microsecond timestamps) of whole frames; with the default link
    type each packet is an IP datagram. Timestamps default to 1 s apart."""
    p = Path(path)
    with p.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for n, item in enumerate(packets):
            ts, data = item if isinstance(item, tuple) else (float(n), item)
            sec = int(ts)
            usec = round((ts - sec) * 1e6)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            f.write(struct.pack("<IIII", sec, usec, len(data), len(data)))
            f.write(data)
    return p


def frames_of(path: str | Path) -> tuple[int, list[tuple[float, bytes]]]:
    """``(link type, [(time, frame)])`` of a capture, to edit and write back (tests)."""
    out: list[tuple[float, bytes]] = []
    link = LINKTYPE_ETHERNET
    for _, ts, lt, data in read_frames(path):
        link = lt
        out.append((ts, data))
    return link, out
