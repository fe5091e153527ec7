"""The Security Association Database (RFC 4301 §4.4.2) and the per-packet entry points.

See the package docstring (``reference_impl.driver``) for the API. The IPv4 ESP fast path of
``unprotect`` is inlined here: it handles tunnel-mode AEAD SAs without ESN whose selectors
are one IPv4 range per side, on a raw ESP datagram with a 20-octet outer header, default
padding and no TFC padding; anything else, and any check that does not pass, goes through
the general path (``EspInbound.unprotect_at`` / ``after_decrypt``), which makes the exact
decision. Tests check the two paths agree.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections.abc import Iterator

from reference_impl.driver.ah import AhInbound, AhOutbound
from reference_impl.driver.base import (
    DEFAULT_OPTIONS,
    DriverContext,
    SaOptions,
    SecurityAssociation,
    packet_addresses,
)
from reference_impl.driver.esp import (
    _UNPACK_IPV4_FIELDS,
    PADDING,
    TRAILERS_IPV4,
    EspInbound,
    EspOutbound,
    OutboundSa,
    make_esp_outbound,
)
from reference_impl.driver.events import DriverEvent, PacketDropped
from reference_impl.driver.packet import (
    IPPROTO_AH,
    IPPROTO_ESP,
    IPPROTO_UDP,
    IpInfo,
    MalformedPacket,
    flow_of,
    parse_ip,
    udp_checksum_v6,
)
from reference_impl.driver.replay import ReplayWindow
from reference_impl.driver.verdict import Verdict
from reference_impl.errors import LocalProtocolError
from reference_impl.sa import ChildSaPair, ChildSaParams, IpsecProtocol

InboundSa = EspInbound | AhInbound
ProtectResult = tuple[Verdict, bytes]
UnprotectResult = tuple[Verdict, bytes, SecurityAssociation | None]

_OUTER4 = struct.Struct(">HH2xI10xII8s")
"""ESP over IPv4 without options: (version/IHL|TOS, total length, flags/fragment|TTL|protocol,
SPI, sequence number, IV); 36 octets so that a shorter datagram never reaches the fast path."""
_INNER4 = struct.Struct(">BxH8xQ")
"""Inner IPv4 header: (version/IHL, total length, source << 32 | destination)."""
_PACK_IPV4 = struct.Struct(">HHHIHQ").pack
"""An IPv4 header without options from (version/IHL|TOS, total length, identification,
flags/fragment|TTL|protocol, checksum, src << 32 | dst)."""
_UNPACK_OUTER4 = _OUTER4.unpack_from
_UNPACK_INNER4 = _INNER4.unpack_from
_U32 = struct.Struct(">I")
_H = struct.Struct(">H")
_STOP = frozenset({IPPROTO_ESP, IPPROTO_AH})
_DELIVERED = Verdict.DELIVERED
_INTEGRITY = Verdict.INTEGRITY


class SecurityAssociationDatabase:
    """The SAD of one node: inbound SAs by (protocol, SPI), outbound SAs by handle, SPI or
    selectors; ``protect``/``unprotect``; lifetime timers and events; drop counters."""

    __slots__ = (
        "_ah_in",
        "_ctx",
        "_esp_fast",
        "_esp_in",
        "_heap",
        "_n_out",
        "_out",
        "_tie",
        "udp_encap_ports",
    )

    def __init__(self, *, audit_limit: int = 4096, udp_encap_ports: tuple[int, ...] = (4500,)):
        self._ctx = DriverContext(audit_limit)
        self._esp_in: dict[int, EspInbound] = {}
        self._esp_fast: dict[int, EspInbound] = {}
        """The inbound ESP SAs the IPv4 fast path of ``unprotect`` handles (``fast4``)."""
        self._ah_in: dict[int, AhInbound] = {}
        self._out: dict[int, OutboundSa | list[OutboundSa]] = {}
        """Outbound SAs by (protocol, SPI) in installation order; a list when peers chose the
        same SPI (the destinations then differ)."""
        self._n_out = 0
        self._heap: list[tuple[float, int, SecurityAssociation]] = []
        self._tie = itertools.count()
        self.udp_encap_ports: set[int] = set(udp_encap_ports)
        """Destination ports on which UDP datagrams are ESP-in-UDP (RFC 3948); installing an
        inbound SA with ``encap`` adds its local port."""

    # --- installation ---------------------------------------------------------------------------

    def install(
        self,
        params: ChildSaParams,
        *,
        inbound: bool,
        now: float,
        options: SaOptions = DEFAULT_OPTIONS,
    ) -> SecurityAssociation:
        """Install one direction of an SA (``ChildSaParams`` from IKE) and return its handle.

        Inbound SPIs must be unique per protocol (RFC 4301 §4.1: unicast SAs are found by SPI
        and protocol). Outbound SAs may share an SPI when their destinations differ.
        """
        ctx = self._ctx
        sa: SecurityAssociation
        if inbound:
            table: dict[int, EspInbound] | dict[int, AhInbound]
            if params.protocol == IpsecProtocol.ESP:
                table = self._esp_in
                if params.spi in table:
                    raise LocalProtocolError(f"inbound ESP SPI {params.spi:#x} already installed")
                esp = EspInbound(params, now, ctx, options)
                self._esp_in[params.spi] = esp
                if esp.fast4:
                    self._esp_fast[params.spi] = esp
                sa = esp
            elif params.protocol == IpsecProtocol.AH:
                if params.spi in self._ah_in:
                    raise LocalProtocolError(f"inbound AH SPI {params.spi:#x} already installed")
                ah = AhInbound(params, now, ctx, options)
                self._ah_in[params.spi] = ah
                sa = ah
            else:
                raise LocalProtocolError(f"protocol {params.protocol} is not ESP or AH")
            if params.encap is not None:
                self.udp_encap_ports.add(params.encap[1])
        else:
            out: OutboundSa
            if params.protocol == IpsecProtocol.ESP:
                out = make_esp_outbound(params, now, ctx, options)
            elif params.protocol == IpsecProtocol.AH:
                out = AhOutbound(params, now, ctx, options)
            else:
                raise LocalProtocolError(f"protocol {params.protocol} is not ESP or AH")
            key = _key(params.protocol, params.spi)
            same = self._out.pop(key, None)
            if same is None:
                self._out[key] = out
            else:
                others = same if isinstance(same, list) else [same]
                if any(o.params.dst == params.dst for o in others):
                    self._out[key] = same
                    raise LocalProtocolError(
                        f"outbound SPI {params.spi:#x} to {params.dst} already installed"
                    )
                self._out[key] = [*others, out]  # re-inserted: newest last
            self._n_out += 1
            sa = out
        deadline = sa.deadline()
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._tie), sa))
        return sa

    def install_pair(
        self, pair: ChildSaPair, now: float, options: SaOptions = DEFAULT_OPTIONS
    ) -> tuple[SecurityAssociation, OutboundSa]:
        """Install both directions of a negotiated Child SA. A rekeyed pair is installed the
        same way: the old inbound SA keeps accepting packets until it is removed (RFC 7296
        §2.8), while ``outbound_for`` prefers the newest outbound SA."""
        inbound = self.install(pair.inbound, inbound=True, now=now, options=options)
        try:
            outbound = self.install(pair.outbound, inbound=False, now=now, options=options)
        except Exception:
            self.remove(inbound)
            raise
        assert isinstance(outbound, OutboundSa)
        return inbound, outbound

    def remove(self, sa: SecurityAssociation) -> bool:
        """Delete an SA by handle; False if it was not installed."""
        if sa.inbound:
            table: dict[int, EspInbound] | dict[int, AhInbound]
            table = self._esp_in if sa.protocol == IpsecProtocol.ESP else self._ah_in
            if table.get(sa.spi) is sa:
                del table[sa.spi]
                if self._esp_fast.get(sa.spi) is sa:
                    del self._esp_fast[sa.spi]
                return True
            return False
        key = _key(sa.protocol, sa.spi)
        same = self._out.get(key)
        if same is sa:
            del self._out[key]
        elif isinstance(same, list) and sa in same:
            rest = [o for o in same if o is not sa]
            self._out[key] = rest[0] if len(rest) == 1 else rest
        else:
            return False
        self._n_out -= 1
        return True

    def remove_inbound(self, protocol: IpsecProtocol, spi: int) -> SecurityAssociation | None:
        sa = self.inbound(protocol, spi)
        if sa is not None:
            self.remove(sa)
        return sa

    def remove_outbound(
        self, protocol: IpsecProtocol, spi: int, dst: str | None = None
    ) -> OutboundSa | None:
        sa = self.outbound(protocol, spi, dst)
        if sa is not None:
            self.remove(sa)
        return sa

    # --- lookups ---------------------------------------------------------------------------------

    def inbound(self, protocol: IpsecProtocol, spi: int) -> InboundSa | None:
        """The inbound SA for (protocol, SPI) (RFC 4301 §4.1), or None."""
        if protocol == IpsecProtocol.ESP:
            return self._esp_in.get(spi)
        if protocol == IpsecProtocol.AH:
            return self._ah_in.get(spi)
        return None

    def outbound(
        self, protocol: IpsecProtocol, spi: int, dst: str | None = None
    ) -> OutboundSa | None:
        """The outbound SA with this SPI (and destination, when SPIs collide), or None."""
        same = self._out.get(_key(protocol, spi))
        for sa in same if isinstance(same, list) else (same,):
            if sa is not None and (dst is None or sa.params.dst == dst):
                return sa
        return None

    def _outbound_newest_first(self) -> Iterator[OutboundSa]:
        for v in reversed(self._out.values()):
            if isinstance(v, list):
                yield from reversed(v)
            else:
                yield v

    def outbound_for(self, packet: bytes) -> OutboundSa | None:
        """The newest live outbound SA whose selectors cover ``packet`` (RFC 4301 §5.1 step
        3a); linear in the number of outbound SAs: callers cache the handle per flow."""
        try:
            flow = flow_of(packet)
        except MalformedPacket:
            return None
        for sa in self._outbound_newest_first():
            if sa.expired is None and sa.selectors.matches(flow):
                return sa
        return None

    def __len__(self) -> int:
        return len(self._esp_in) + len(self._ah_in) + self._n_out

    def __iter__(self) -> Iterator[SecurityAssociation]:
        yield from self._esp_in.values()
        yield from self._ah_in.values()
        yield from reversed(list(self._outbound_newest_first()))

    # --- counters, events, timers ------------------------------------------------------------

    @property
    def drops(self) -> dict[Verdict, int]:
        """Global counts of every non-delivered verdict (drops and absorbed packets)."""
        return {Verdict(i): n for i, n in enumerate(self._ctx.drops) if n}

    @property
    def audit(self) -> list[PacketDropped]:
        """The most recent drop audit records (bounded; ``audit_lost`` counts the overflow)."""
        return list(self._ctx.audit)

    @property
    def audit_lost(self) -> int:
        return self._ctx.audit_lost

    def next_event(self) -> DriverEvent | None:
        """The next lifetime event (``SaExpired``), or None."""
        events = self._ctx.events
        return events.popleft() if events else None

    def _installed(self, sa: SecurityAssociation) -> bool:
        if sa.inbound:
            return self.inbound(sa.protocol, sa.spi) is sa
        same = self._out.get(_key(sa.protocol, sa.spi))
        return same is sa or (isinstance(same, list) and sa in same)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next run (time-based lifetimes), or None."""
        heap = self._heap
        while heap:
            _, _, sa = heap[0]
            if self._installed(sa) and sa.deadline() is not None:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Raise the soft/hard time lifetime events due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, sa = heapq.heappop(heap)
            if not self._installed(sa):
                continue
            sa.check_time(now)
            deadline = sa.deadline()
            if deadline is not None:
                heapq.heappush(heap, (deadline, next(self._tie), sa))

    def _drop(
        self, verdict: Verdict, d: bytes, now: float, spi: int | None = None, detail: str = ""
    ) -> UnprotectResult:
        ctx = self._ctx
        ctx.drops[verdict] += 1
        if verdict >= Verdict.NO_SA:
            src, dst, proto = packet_addresses(d)
            audit = ctx.audit
            if audit.maxlen is not None and len(audit) == audit.maxlen:
                ctx.audit_lost += 1
            audit.append(PacketDropped(verdict, now, proto, spi, src, dst, None, detail))
        return verdict, b"", None

    # --- the data path ---------------------------------------------------------------------------

    def protect(self, packet: bytes, now: float, sa: OutboundSa | None = None) -> ProtectResult:
        """Protect ``packet`` with ``sa`` (a handle from ``install``), or with the newest
        outbound SA whose selectors cover it. ``(Verdict.DELIVERED, datagram)`` or
        ``(reason, b"")``; with a handle, ``sa.protect(packet, now)`` is the same and faster."""
        if sa is None:
            sa = self.outbound_for(packet)
            if sa is None:
                verdict, data, _ = self._drop(Verdict.NO_SA, packet, now)
                return verdict, data
        return sa.protect(packet, now)

    def unprotect(self, d: bytes, now: float) -> UnprotectResult:
        """Process one received IP datagram: ESP, AH, or UDP to an ESP-in-UDP port.

        Returns ``(verdict, data, sa)``: ``DELIVERED`` with the decapsulated inner packet,
        ``IKE`` with the IKE message (non-ESP marker removed), ``NAT_KEEPALIVE``/``DUMMY``
        with ``b""``, or a drop reason with ``b""``. ``sa`` is the inbound SA that handled the
        packet (None when none did).
        """
        try:
            vt, tl, w, spi, seq, iv = _UNPACK_OUTER4(d)
            sa = self._esp_fast[spi]
        except (struct.error, KeyError):
            return self._unprotect_slow(d, now)
        # IPv4 without options, outer ECN Not-ECT/ECT(0), not a fragment, protocol ESP.
        if vt & 0xFF01 != 0x4500 or w & 0x3FFF00FF != 50 or now >= sa._next_time:
            return self._unprotect_slow(d, now)
        win = sa.window
        top = win.replay_top
        if seq <= top:
            diff = top - seq
            if seq == 0 or diff >= win.replay_size or (win.replay_bits >> diff) & 1:
                return self._unprotect_slow(d, now)
        try:
            # The bare AEAD call: nonce = salt || IV (RFC 4106 §4), AAD = SPI || seq (§5).
            pt = sa.aead_decrypt(sa.aead_salt + iv, d[36:tl], d[20:28])
        except sa.aead_tag_error:
            if tl != len(d):  # truncated or padded datagram: let the general path say so
                return self._unprotect_slow(d, now)
            return sa._drop(_INTEGRITY, d, now, seq), b"", sa
        if seq == top + 1 and win.replay_bits == win.replay_mask:
            win.replay_top = seq  # in order with a full window: the bitmap stays all ones
        else:
            _slide(win, seq, top)
        if sa.fast_tunnel:
            try:
                vihl, itl, addrs = _UNPACK_INNER4(pt)
            except struct.error:
                vihl = itl = addrs = -1
            if (
                vihl == 0x45
                and pt[itl:] == TRAILERS_IPV4[itl & 3]
                and addrs & sa.sel_mask == sa.sel_net
            ):
                p = sa._packets + 1
                b = sa.octets + itl
                if p < sa._next_packets and b < sa._next_octets:
                    sa._packets = p
                    sa.octets = b
                else:
                    sa._account(itl, now)
                return _DELIVERED, pt[:itl], sa
        else:
            # Transport mode in a method of its own: its locals would make every tunnel-mode
            # packet's frame bigger.
            done = _transport4(sa, d, pt, now)
            if done is not None:
                return done
        info = parse_ip(d, _STOP)
        verdict, inner = sa.after_decrypt(pt, d, info, False, seq, now)
        return verdict, inner, sa

    def _unprotect_slow(self, d: bytes, now: float) -> UnprotectResult:
        try:
            info = parse_ip(d, _STOP)
        except MalformedPacket as e:
            return self._drop(Verdict.MALFORMED, d, now, detail=str(e))
        if info.fragment:
            return self._drop(Verdict.FRAGMENT, d, now)
        proto = info.protocol
        off = info.payload_offset
        end = info.total_length
        if proto == IPPROTO_ESP:
            if end - off < 8:
                return self._drop(Verdict.RUNT, d, now)
            spi = _U32.unpack_from(d, off)[0]
            esp = self._esp_in.get(spi)
            if esp is None:
                return self._drop(Verdict.NO_SA, d, now, spi)
            verdict, inner = esp.unprotect_at(d, info, off, False, now)
            return verdict, inner, esp
        if proto == IPPROTO_AH:
            if end - off < 12:
                return self._drop(Verdict.RUNT, d, now)
            spi = _U32.unpack_from(d, off + 4)[0]
            ah = self._ah_in.get(spi)
            if ah is None:
                return self._drop(Verdict.NO_SA, d, now, spi)
            verdict, inner = ah.unprotect_at(d, info, off, now)
            return verdict, inner, ah
        if proto == IPPROTO_UDP:
            return self._unprotect_udp(d, info.total_length, off, now, info)
        return self._drop(Verdict.NOT_IPSEC, d, now, detail=f"IP protocol {proto}")

    def _unprotect_udp(
        self, d: bytes, end: int, off: int, now: float, info: IpInfo
    ) -> UnprotectResult:
        """RFC 3948 §2: classify a UDP datagram on an ESP-in-UDP port. Any UDP checksum is
        accepted (§2.1: receivers do not depend on it)."""
        if end - off < 8:
            return self._drop(Verdict.MALFORMED, d, now, detail="UDP header truncated")
        dport = _H.unpack_from(d, off + 2)[0]
        if dport not in self.udp_encap_ports:
            return self._drop(Verdict.NOT_IPSEC, d, now, detail=f"UDP port {dport}")
        ulen = _H.unpack_from(d, off + 4)[0]
        if ulen != end - off:
            return self._drop(Verdict.MALFORMED, d, now, detail="UDP length")
        p = off + 8
        n = end - p
        if n == 1 and d[p] == 0xFF:
            self._ctx.drops[Verdict.NAT_KEEPALIVE] += 1
            return Verdict.NAT_KEEPALIVE, b"", None
        if n >= 4 and d[p : p + 4] == b"\x00\x00\x00\x00":
            self._ctx.drops[Verdict.IKE] += 1
            return Verdict.IKE, d[p + 4 : end], None
        if n < 8:
            return self._drop(Verdict.RUNT, d, now)
        spi = _U32.unpack_from(d, p)[0]
        esp = self._esp_in.get(spi)
        if esp is None:
            return self._drop(Verdict.NO_SA, d, now, spi)
        verdict, inner = esp.unprotect_at(d, info, p, True, now)
        return verdict, inner, esp


def _slide(win: ReplayWindow, seq: int, top: int) -> None:
    """The fast path's window update for a packet that is not the next in order with a full
    window (that case is inline): ``ReplayWindow.update`` without its checks."""
    if seq > top:
        shift = seq - top  # past the whole window: only seq is left (see ReplayWindow)
        win.replay_bits = (
            1 if shift >= win.replay_size else ((win.replay_bits << shift) | 1) & win.replay_mask
        )
        win.replay_top = seq
    else:
        win.replay_bits |= 1 << (top - seq)


def _transport4(sa: EspInbound, d: bytes, pt: bytes, now: float) -> UnprotectResult | None:
    """Transport mode over IPv4 on the fast path: put the payload back behind the received
    header (RFC 4303 §3.4.4.1 for the trailer, §3.1.1 for the layout); None when the general
    path must decide."""
    n = len(pt)
    if n < 2:
        return None
    pad = pt[-2]
    nh = pt[-1]
    end = n - 2 - pad
    vt, ident, w, addrs = _UNPACK_IPV4_FIELDS(d)
    if (
        end >= 0
        and nh != 59
        and pt[end : n - 2] == PADDING[pad]
        and addrs & sa.sel_mask == sa.sel_net
    ):
        itl = 20 + end
        w = (w & 0xFFFFFF00) | nh
        hdr = _PACK_IPV4(
            vt, itl, ident, w, 0xFFFE - (vt + itl + ident + w + addrs - 1) % 0xFFFF, addrs
        )
        p = sa._packets + 1
        b = sa.octets + itl
        if p < sa._next_packets and b < sa._next_octets:
            sa._packets = p
            sa.octets = b
        else:
            sa._account(itl, now)
        return _DELIVERED, hdr + pt[:end], sa
    return None


Sad = SecurityAssociationDatabase


def _key(protocol: int, spi: int) -> int:
    return (int(protocol) << 32) | spi


def nat_keepalive(src: str, dst: str, sport: int = 4500, dport: int = 4500) -> bytes:
    """A NAT-keepalive datagram (RFC 3948 §2.3): UDP from our ESP-in-UDP port carrying one
    0xFF octet, as a whole IP packet."""
    import ipaddress

    from reference_impl.driver.packet import ipv4_header, ipv6_header

    s = ipaddress.ip_address(src)
    t = ipaddress.ip_address(dst)
    body = b"\xff"
    if s.version == 4:
        udp = struct.pack(">HHHH", sport, dport, 9, 0) + body
        return (
            ipv4_header(
                tos=0,
                total_length=20 + len(udp),
                ident=0,
                flags_fragment=0,
                ttl=64,
                protocol=IPPROTO_UDP,
                src=s.packed,
                dst=t.packed,
            )
            + udp
        )
    udp0 = struct.pack(">HHHH", sport, dport, 9, 0) + body
    c = udp_checksum_v6(s.packed, t.packed, udp0)
    udp = struct.pack(">HHHH", sport, dport, 9, c) + body
    return (
        ipv6_header(
            traffic_class=0,
            flow_label=0,
            payload_length=len(udp),
            next_header=IPPROTO_UDP,
            hop_limit=64,
            src=s.packed,
            dst=t.packed,
        )
        + udp
    )


__all__ = [
    "EspOutbound",
    "InboundSa",
    "ProtectResult",
    "Sad",
    "SecurityAssociationDatabase",
    "UnprotectResult",
    "nat_keepalive",
]
