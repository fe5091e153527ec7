"""What the esp and ah suites share (RFC 4303, RFC 4302): a fresh Child SA between the tester
and the peer under test, crafted packets on it, and the two ways of seeing what happened.

The tester (our reference node) and the peer under test (PUT) negotiate one Child SA per case
(:func:`open_tunnel`). The harness then speaks on the tester's side of that SA itself: it reads
the SA's keys from the tester (``list_sas`` with keys), builds ESP/AH datagrams with the
harness's own encoder (:mod:`harness.probes.craft`: chosen sequence numbers, bad ICVs, odd
padding, dummies, ESN high bits) and sends them to the PUT as if the tester had sent them
(:meth:`Tunnel.send`: an in-process UDP socket on the ``local`` topology's clear link or NAT-T
port, a raw socket inside the tester's namespace with the tester's socket mark otherwise).

Whether the PUT delivered a crafted packet is seen black-box where the PUT has a real IP stack:
every crafted packet carries an ICMP echo request with its own identifier and sequence number,
and the PUT's echo reply comes back through the SA (the tester records what it receives,
``record_received``, and the harness opens it with the SA's keys). A reference PUT on the
``local`` topology has no kernel behind it (the ``api`` data plane): there the harness is its
local stack, and "delivered" means the packet is in the PUT's delivery queue.

Each exchange of probes ends with a packet that must be delivered; IPsec peers process one SA's
packets in order, so once its answer is in, every earlier probe has been decided. Everything the
PUT sends on the SA during the case (:meth:`Tunnel.put_packets`) is kept with its sequence
number, plaintext and verdict for the cases that check the sender (RFC 4303 §2.2, §2.4,
RFC 4302 §2).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from harness.peers.base import NotApplicable, Peer, PeerError, Proposal, Scenario
from harness.probes.craft import AhCrafter, EspCrafter, mutate_ipv4
from harness.probes.keys import IpsecSaEntry, KeySet
from harness.probes.pcap import PacketKind, WirePacket, ip_packet
from harness.report.model import EvidenceKind
from reference_impl.driver import AhInbound, EspInbound, SaOptions
from reference_impl.driver import Verdict as DriverVerdict
from reference_impl.driver.base import DriverContext
from reference_impl.driver.packet import IPPROTO_AH, IPPROTO_ESP, IpInfo, checksum, parse_ip
from reference_impl.sa import IpsecProtocol, Mode
from suites.support.ike import grade as grade_level
from suites.support.ike import note

if TYPE_CHECKING:
    from harness.cases import Level
    from harness.lab import CaseContext

PUT = "put"
TESTER = "tester"
NATT = 4500

GCM = Proposal.parse("AES_GCM_16_128")
CBC = Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128")
GCM_ESN = Proposal.parse("AES_GCM_16_128/EXT_SEQ")
AH_SHA256 = Proposal.parse("HMAC_SHA2_256_128")
AH_SHA256_ESN = Proposal.parse("HMAC_SHA2_256_128/EXT_SEQ")


# --- grading ------------------------------------------------------------------------------------


def grade(ctx: CaseContext, level: Level, reason: str) -> None:
    """A sub-requirement of another level than the case's was not met (the SHOULD part of a
    "MUST / SHOULD" row), graded by ``level`` (:func:`suites.support.ike.grade`) and marked
    with this peer's known-behaviour anchor, if it has one."""
    mark_known(ctx)
    grade_level(ctx, level, reason)


def require_real_ip(ctx: CaseContext, why: str) -> None:
    """Not applicable on a topology whose links carry no real IP (the ``local`` clear links)."""
    from harness.topology.base import FEATURE_ROOT

    if FEATURE_ROOT not in ctx.topology.features:
        raise NotApplicable([f"topology {ctx.topology.backend}: {why} (use --topology netns)"])


def require_ipv6(ctx: CaseContext) -> None:
    from harness.topology.base import FEATURE_IPV6

    if FEATURE_IPV6 not in ctx.topology.features or not ctx.topology.node(PUT).addresses.v6:
        raise NotApplicable([f"ipv6: topology {ctx.topology.backend} has no IPv6 link"])


# --- probes and what became of them -------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One crafted stimulus: its datagrams (fragments: several), the inner echo request that
    makes its delivery visible (``key`` = ICMP identifier and sequence number) and whether it
    must be delivered (``expect``: True, False, or None = only observed)."""

    label: str
    datagrams: tuple[bytes, ...]
    key: tuple[int, int] | None
    expect: bool | None
    seq: int | None = None
    """The ESP/AH sequence number it carries (for the evidence)."""


@dataclass
class Seen:
    """One datagram the PUT sent on the SA, as the tester received it, opened by the harness
    with the SA's keys (no replay window, no padding check: the harness judges those)."""

    time: float
    frame: bytes
    """The IP datagram (ESP-in-UDP with its IP/UDP header rebuilt, RFC 3948)."""
    protocol: str
    spi: int
    seq: int
    """As the harness inferred it (ESN: 64 bits)."""
    verdict: DriverVerdict
    inner: bytes
    plaintext: bytes | None = None
    """ESP: the decrypted payload with its padding and trailer (RFC 4303 §2.4-§2.6)."""
    udp: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict is DriverVerdict.DELIVERED

    @property
    def header_offset(self) -> int:
        """Where the ESP or AH header starts in ``frame``."""
        return ip_packet(self.frame, natt_ports=(NATT,)).offset


@dataclass
class Outcome:
    """Which probes of one exchange were delivered."""

    probes: list[Probe]
    delivered: dict[str, bool]
    unexpected: list[str] = field(default_factory=list)
    """Delivered inner packets that belong to no probe (a dummy's payload, an ICMP error)."""
    waited: float = 0.0

    def failures(self) -> list[str]:
        out = []
        for p in self.probes:
            got = self.delivered.get(p.label, False)
            if p.expect is True and not got:
                out.append(f"{p.label}: not delivered")
            elif p.expect is False and got:
                out.append(f"{p.label}: delivered")
        return out

    def table(self) -> str:
        lines = [f"{'probe':<48} {'seq':>20} {'expected':>9} {'delivered':>9}"]
        for p in self.probes:
            exp = {True: "yes", False: "no", None: "-"}[p.expect]
            got = "yes" if self.delivered.get(p.label) else "no"
            seq = "-" if p.seq is None else f"{p.seq:#x}"
            lines.append(f"{p.label:<48} {seq:>20} {exp:>9} {got:>9}")
        if self.unexpected:
            lines.append("unexpected deliveries: " + "; ".join(self.unexpected))
        lines.append(f"waited {self.waited:.3f} s")
        return "\n".join(lines)


# --- the tunnel ---------------------------------------------------------------------------------


class EspOpener(EspInbound):
    """The driver's inbound ESP SA, keeping the plaintext of the packet it verified last."""

    last_pt: bytes | None = None

    def after_decrypt(
        self, pt: bytes, d: bytes, info: IpInfo, udp: bool, seq: int, now: float
    ) -> tuple[DriverVerdict, bytes]:
        self.last_pt = pt
        return super().after_decrypt(pt, d, info, udp, seq, now)


_OPEN_OPTIONS = SaOptions(check_padding=False)


def _observe_stack(put: Peer) -> bool:
    """Whether the PUT is a reference node on the ``api`` data plane (no kernel: the harness
    reads its delivery queue instead of waiting for echo replies)."""
    return put.kind == "reference" and getattr(put, "dataplane", "") == "api"


class Tunnel:
    """The Child SA between the tester and the PUT, seen from the tester's side."""

    def __init__(self, ctx: CaseContext, scenario: Scenario, dump: dict[str, Any]) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.put = ctx.put
        self.tester = ctx.tester
        put_address = scenario.remote(TESTER).address
        # An earlier case's Child SA (another scenario: other addresses) may still be listed
        # while its Delete is on its way: this case's is the one towards this case's PUT.
        children = [c for c in dump["child_sas"] if c["outbound"].get("dst") in (put_address, None)]
        if len(children) != 1:
            raise PeerError(
                f"tester: expected one Child SA with {put_address}, found {len(children)} "
                f"(of {len(dump['child_sas'])})"
            )
        self.seen: list[Seen] = []
        """Every datagram the PUT sent on the SA so far (see :meth:`collect`)."""
        self.other: list[bytes] = []
        """Datagrams the tester received on other SPIs."""
        self.delivered_keys: dict[tuple[int, int], bytes] = {}
        self.unexpected: list[str] = []
        self._sock: socket.socket | None = None
        self._mark: int | None = None
        self.outcomes: list[Outcome] = []
        self.ident = int.from_bytes(os.urandom(2), "big") | 0x100
        self._icmp_seq = 0
        self._crafters: dict[int, EspCrafter | AhCrafter] = {}
        self._bind(dump, children[0])

    def rebind(self, timeout: float = 5.0) -> None:
        """Follow a rekey: use the tester's newest Child SA (new SPIs and keys, sequence
        numbers from 1 again; RFC 7296 §2.8)."""
        old = self.child["inbound"]["spi"]
        deadline = time.monotonic() + timeout
        while True:
            dump = self.tester.sa_dump(keys=True)  # type: ignore[attr-defined]
            new = [c for c in dump["child_sas"] if c["inbound"]["spi"] != old]
            if new or time.monotonic() >= deadline:
                break
            time.sleep(0.02)  # polling interval of a bounded wait
        if not new:
            raise PeerError("tester: no new Child SA after the rekey")
        self.collect()
        self._bind(dump, max(new, key=lambda c: c.get("installed_at") or 0))

    def _bind(self, dump: dict[str, Any], child: dict[str, Any]) -> None:
        ctx, scenario = self.ctx, self.scenario
        self.child = child
        keys = KeySet.from_node_sas(dump, source="reference:tester")
        out, inn = child["outbound"], child["inbound"]
        proto = IpsecProtocol.AH if child["protocol"] == "ah" else IpsecProtocol.ESP
        self.protocol = proto
        to_put = keys.find_ipsec(proto, out["spi"], out["dst"])
        from_put = keys.find_ipsec(proto, inn["spi"], inn["dst"])
        if to_put is None or from_put is None:
            raise PeerError("tester: the Child SA's keys are not in its SA dump")
        self.to_put: IpsecSaEntry = to_put
        """The SA the tester sends on (the PUT's inbound SA): crafted packets use it."""
        self.from_put: IpsecSaEntry = from_put
        """The SA the PUT sends on (the tester's inbound SA)."""
        self.esn = bool(child.get("esn"))
        self.mode = Mode(child["mode"])
        self.encap: tuple[int, int] | None = (
            (int(out["encap"][0]), int(out["encap"][1])) if out.get("encap") else None
        )
        """Real UDP ports (tester, PUT) when ESP is UDP-encapsulated (RFC 3948)."""
        topo = ctx.topology
        self.put_node = topo.node(PUT)
        self.tester_node = topo.node(TESTER)
        local, remote = scenario.local(TESTER), scenario.remote(TESTER)
        self.family = scenario.family
        if self.mode is Mode.TUNNEL:
            self.tester_addr = _host(local.subnets[0])
            self.put_addr = _host(remote.subnets[0])
        else:
            self.tester_addr, self.put_addr = local.address, remote.address
        self.tester_outer, self.put_outer = local.address, remote.address
        self.esp: EspCrafter | None = None
        self.ah: AhCrafter | None = None
        if proto is IpsecProtocol.ESP:
            self.esp = EspCrafter(to_put, encap=self._crafter_encap())
        else:
            self.ah = AhCrafter(to_put)
        self.stack = _observe_stack(self.put)
        self._next_seq = 1
        self._opener = self.opener()
        self._crafters.clear()

    # -- crafting -------------------------------------------------------------------------------

    def _crafter_encap(self) -> tuple[int, int] | None:
        return (NATT, NATT) if self.encap else None

    def opener(self, entry: IpsecSaEntry | None = None) -> EspOpener | AhInbound:
        """A fresh inbound SA of the harness for what the PUT sends (no replay window, no
        padding check: the harness judges those itself)."""
        entry = entry or self.from_put
        params = entry.to_params(replay_window=0)
        params = replace(params, ts_src=(), ts_dst=(), encap=None)
        if entry.protocol is IpsecProtocol.ESP:
            return EspOpener(params, 0.0, DriverContext(0), _OPEN_OPTIONS)
        return AhInbound(params, 0.0, DriverContext(0), _OPEN_OPTIONS)

    def next_seq(self) -> int:
        """The next sequence number the harness has not used yet on this SA."""
        return self._next_seq

    def use_seq(self, seq: int) -> None:
        self._next_seq = max(self._next_seq, seq + 1)

    def echo_request(
        self, *, data: bytes = b"", src: str | None = None, dst: str | None = None, tos: int = 0
    ) -> tuple[bytes, tuple[int, int]]:
        """A new ICMP(v6) echo request from the tester's side to the PUT (unique identifier and
        sequence number: its key) with ``data`` as payload."""
        self._icmp_seq = (self._icmp_seq + 1) & 0xFFFF
        key = (self.ident, self._icmp_seq)
        src = src or self.tester_addr
        dst = dst or self.put_addr
        payload = data or b"esp-ah-probe-%d" % self._icmp_seq
        return echo_packet(src, dst, key, payload, request=True, tos=tos), key

    def crafter(self, spi: int | None = None) -> EspCrafter | AhCrafter:
        """The encoder of the SA towards the PUT, or of the same SA under another ``spi``."""
        if spi is None or spi == self.to_put.spi:
            crafter = self.esp or self.ah
            assert crafter is not None
            return crafter
        c = self._crafters.get(spi)
        if c is None:
            entry = replace(self.to_put, spi=spi)
            if self.esp is not None:
                c = EspCrafter(entry, encap=self._crafter_encap())
            else:
                c = AhCrafter(entry)
            self._crafters[spi] = c
        return c

    def craft(self, inner: bytes, seq: int, *, spi: int | None = None, **kw: Any) -> bytes:
        """The ESP or AH datagram carrying ``inner`` with sequence number ``seq``."""
        if spi is None:
            self.use_seq(seq & 0xFFFFFFFFFFFFFFFF)
        crafter = self.crafter(spi)
        d = crafter.packet(inner, seq, **kw)
        if isinstance(crafter, AhCrafter) and d[0] >> 4 == 4 and d[4:6] == b"\0\0":
            # Linux gives an IPv4 datagram sent through a raw socket with Identification 0 an
            # identification of its own (IP_HDRINCL), which AH covers: never send 0.
            high = kw.get("esn_high")
            high = (seq >> 32 if high is None else high) if self.esn else None
            d = crafter.resign(mutate_ipv4(d, ident=0x4A48), esn_high=high)
        return d

    def probe(
        self,
        label: str,
        seq: int | None = None,
        *,
        expect: bool | None = True,
        data: bytes = b"",
        tos: int = 0,
        mutate: Any = None,
        **kw: Any,
    ) -> Probe:
        """A probe: an echo request in a datagram with ``seq`` (default: the next unused);
        ``mutate`` (datagram -> datagram or datagrams) changes it after the ICV was computed."""
        seq = self.next_seq() if seq is None else seq
        inner, key = self.echo_request(data=data, tos=tos)
        d = self.craft(inner, seq, **kw)
        out: Sequence[bytes] = (d,)
        if mutate is not None:
            m = mutate(d)
            out = (m,) if isinstance(m, bytes) else tuple(m)
        return Probe(label, tuple(out), key, expect, seq)

    def raw_probe(
        self, label: str, datagrams: Sequence[bytes], *, expect: bool | None, seq: int | None = None
    ) -> Probe:
        """A probe without an echo inside (a dummy, an unknown SPI): ``expect`` False means
        nothing at all may be delivered for it."""
        return Probe(label, tuple(datagrams), None, expect, seq)

    # -- sending --------------------------------------------------------------------------------

    def send(self, datagrams: Sequence[bytes]) -> None:
        """Hand crafted datagrams to the PUT as the tester would send them, in order.

        On ``local``: raw ESP/AH over the PUT's clear link (reference nodes only), ESP in UDP
        as the ESP part to the PUT's NAT-T port. Elsewhere: whole datagrams, as crafted (IP and
        UDP headers included), through a raw socket in the tester's namespace.
        """
        if not datagrams:
            return
        local = self.ctx.topology.backend == "local"
        if local:
            sock = self._local_socket()
            for d in datagrams:
                if self.encap and _is_udp(d):
                    sock.sendto(_udp_payload(d), (self.put_outer, self.encap[1]))
                else:
                    port = getattr(self.put, "clear_port", 0)
                    if not port:
                        raise NotApplicable(
                            [f"{self.put.kind}: raw ESP/AH on the local topology reaches "
                             "reference nodes only (their clear links)"]
                        )  # fmt: skip
                    sock.sendto(d, (self.put_outer, port))
            return
        send_raw(self.tester_node, datagrams, self._tester_mark())

    def _tester_mark(self) -> int:
        """The tester's socket mark: its own packets bypass its tunnel routes (a crafted
        transport-mode datagram to the PUT would otherwise be routed into its TUN device and
        protected a second time)."""
        if self._mark is None:
            dp = self.tester.client.status().get("dataplane") or {}  # type: ignore[attr-defined]
            self._mark = int(dp.get("mark") or 0)
        return self._mark

    def _local_socket(self) -> socket.socket:
        if self._sock is None:
            fam = socket.AF_INET6 if ":" in self.tester_outer else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.bind((self.tester_outer, 0))
            self._sock = s
        return self._sock

    # -- observing ------------------------------------------------------------------------------

    def collect(self) -> None:
        """Take what arrived: the PUT's delivery queue (api plane) and the datagrams the tester
        received (opened with the SA's keys into :attr:`seen`)."""
        if self.stack:
            for d in self.put.client.delivered():  # type: ignore[attr-defined]
                if not d.protected:
                    continue
                key = echo_key(d.packet, request=True)
                if key is not None and key[0] == self.ident:
                    self.delivered_keys.setdefault(key, d.packet)
                else:
                    self.unexpected.append(f"PUT delivered {describe(d.packet)}")
        for r in self.tester.client.received():  # type: ignore[attr-defined]
            frame = r.data if r.udp is None else udp_frame(r.udp[0], r.udp[2], r.data)
            seen = self._open(r.time, frame, r.udp is not None)
            if seen is None:
                self.other.append(frame)
                continue
            self.seen.append(seen)
            if self.stack or not seen.ok or _later_fragment(seen.inner):
                continue  # a later fragment of a reply belongs to its first fragment
            key = echo_key(seen.inner, request=False)
            if key is not None and key[0] == self.ident:
                self.delivered_keys.setdefault(key, seen.inner)
            elif key is None or key[0] != self.ident:
                self.unexpected.append(f"PUT sent {describe(seen.inner)}")

    def _open(self, t: float, frame: bytes, udp: bool) -> Seen | None:
        try:
            wp = ip_packet(frame, natt_ports=(NATT,))
        except ValueError:
            return None
        return open_wire(wp, self._opener, self.from_put.spi, self.esn, t)

    def exchange(self, probes: Sequence[Probe], *, timeout: float | None = None) -> Outcome:
        """Send the probes in order and wait until every one that must be delivered was (or
        ``timeout``); the last probe must be one that must be delivered (it closes the batch).
        """
        if not probes or probes[-1].expect is not True or probes[-1].key is None:
            raise ValueError("an exchange ends with a probe that must be delivered")
        if timeout is None:
            timeout = 2.0 if self.ctx.topology.backend == "local" else 4.0
        t0 = time.monotonic()
        self.send([d for p in probes for d in p.datagrams])
        want = {p.key for p in probes if p.expect is True and p.key is not None}
        deadline = t0 + timeout
        while True:
            self.collect()
            if want <= set(self.delivered_keys):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)  # polling interval of a bounded wait
        # Peers process an SA's packets in order: the closing probe's answer means every earlier
        # one has been decided; one more look catches answers still on their way back.
        time.sleep(0.02)
        self.collect()
        got = set(self.delivered_keys)
        outcome = Outcome(
            list(probes),
            {p.label: (p.key in got if p.key is not None else False) for p in probes},
            list(self.unexpected),
            round(time.monotonic() - t0, 3),
        )
        self.unexpected.clear()
        self.outcomes.append(outcome)
        return outcome

    def put_sends(
        self,
        sizes: Iterable[int],
        *,
        timeout: float | None = None,
    ) -> list[Seen]:
        """Make the PUT send one packet per size on the SA and return what it sent (ICMP echo
        data sizes): a reference PUT on the api plane gets echo requests injected from its
        local stack; any other PUT answers crafted echo requests (its replies are the same
        size). Returns the new :attr:`seen` entries, in order."""
        sizes = list(sizes)
        before = len(self.seen)
        if timeout is None:
            timeout = 2.0 if self.ctx.topology.backend == "local" else 4.0
        if self.stack:
            packets = []
            for n in sizes:
                inner, _ = self.echo_request(data=_fill(n), src=self.put_addr, dst=self.tester_addr)
                packets.append(inner)
            self.put.client.inject(packets, direction="out")  # type: ignore[attr-defined]
        else:
            probes = [self.probe(f"echo {n} octets", data=_fill(n)) for n in sizes]
            self.send([d for p in probes for d in p.datagrams])
        deadline = time.monotonic() + timeout
        while len(self.seen) - before < len(sizes) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling interval of a bounded wait
            self.collect()
        return self.seen[before:]

    def put_packets(self) -> list[Seen]:
        self.collect()
        return list(self.seen)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- evidence -------------------------------------------------------------------------------

    def attach(self) -> None:
        """The probes and their fate, the PUT's view of the SA, and what it sent."""
        ctx = self.ctx
        if ctx.recording is None:
            return
        parts = []
        for i, o in enumerate(self.outcomes, 1):
            parts.append(f"# exchange {i}\n{o.table()}")
        if parts:
            note(ctx, "probes", "\n\n".join(parts))
        if self.seen:
            lines = [f"{'time':>12} {'proto':>5} {'spi':>10} {'seq':>18} {'verdict':>18} inner"]
            for s in self.seen[:400]:
                lines.append(
                    f"{s.time:12.3f} {s.protocol:>5} {s.spi:#010x} {s.seq:#18x} "
                    f"{s.verdict.name.lower():>18} {describe(s.inner) if s.inner else '-'}"
                )
            note(ctx, "put-sent", "\n".join(lines))
        try:
            state = put_state(ctx)
        except (PeerError, OSError) as exc:
            state = f"(PUT state unavailable: {exc})"
        ctx.recording.attach_text("put-sa", state, EvidenceKind.SA_DUMP, filename="put-sa.txt")


def open_wire(
    wp: WirePacket,
    opener: EspOpener | AhInbound,
    spi: int,
    esn: bool,
    t: float | None = None,
) -> Seen | None:
    """Open one datagram of the SA ``spi`` with the harness's inbound SA ``opener`` (None for
    anything else)."""
    if wp.kind not in (PacketKind.ESP, PacketKind.AH):
        return None
    data = wp.data
    if len(data) < 12:
        return None
    if wp.kind is PacketKind.ESP:
        got, seql = struct.unpack_from("!II", data, 0)
        proto = "esp"
    else:
        got, seql = struct.unpack_from("!II", data, 4)
        proto = "ah"
    if got != spi:
        return None
    when = wp.time if t is None else t
    info = parse_ip(wp.ip, frozenset({IPPROTO_ESP, IPPROTO_AH}))
    if isinstance(opener, EspOpener):
        opener.last_pt = None
        verdict, inner = opener.unprotect_at(wp.ip, info, wp.offset, wp.encapsulated, when)
        pt = opener.last_pt
    else:
        verdict, inner = opener.unprotect_at(wp.ip, info, wp.offset, when)
        pt = None
    seq = opener.window.infer(seql) if esn else seql
    return Seen(when, wp.ip, proto, spi, seq, verdict, inner, pt, wp.encapsulated)


def _host(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet, strict=False).network_address)


def _fill(n: int) -> bytes:
    return bytes((0x41 + i % 26) for i in range(n))


def _later_fragment(packet: bytes) -> bool:
    """An IPv4 fragment other than the first (no transport header of its own)."""
    return len(packet) >= 20 and packet[0] >> 4 == 4 and bool(packet[6] & 0x1F or packet[7])


def _is_udp(d: bytes) -> bool:
    return (d[9] if d[0] >> 4 == 4 else d[6]) == 17


_RAW_SENDER = r"""
import socket, sys
mark = int(sys.argv[1])
socks = {}
for h in sys.argv[2:]:
    d = bytes.fromhex(h)
    v6 = d[0] >> 4 == 6
    s = socks.get(v6)
    if s is None:
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_RAW)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, 36, 1)  # IPV6_HDRINCL
        if mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        socks[v6] = s
    dst = socket.inet_ntop(socket.AF_INET6, d[24:40]) if v6 else socket.inet_ntop(
        socket.AF_INET, d[16:20])
    s.sendto(d, (dst, 0))
print(len(sys.argv) - 2, flush=True)
"""


def python_of(node: Any) -> str:
    """The interpreter inside a node for the harness's small stdlib scripts: ``python3`` in a
    container, this one in a namespace or on this host."""
    return "python3" if getattr(node.topology, "backend", "") == "docker" else sys.executable


def send_raw(node: Any, datagrams: Sequence[bytes], mark: int = 0) -> None:
    """Whole IP datagrams (headers as crafted: raw ESP/AH, ESP in UDP, fragments) sent in order
    from a raw socket inside ``node`` with socket mark ``mark`` (root in the node)."""
    argv = [python_of(node), "-c", _RAW_SENDER, str(mark), *(d.hex() for d in datagrams)]
    result = node.exec(argv, timeout=30.0)
    if not result.ok:
        raise PeerError(f"sending from {node.name} failed: {result.stderr.strip()}")


def _udp_payload(d: bytes) -> bytes:
    off = (d[0] & 0x0F) * 4 if d[0] >> 4 == 4 else 40
    return d[off + 8 :]


def udp_frame(src: str, dst: str, payload: bytes, sport: int = NATT, dport: int = NATT) -> bytes:
    """An IP/UDP datagram around ``payload`` (the checksum left zero over IPv4; IPv6 gets it)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ulen = 8 + len(payload)
    if s.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    from reference_impl.driver.packet import ipv6_header, udp_checksum_v6

    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    c = udp_checksum_v6(s.packed, d.packed, udp)
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return (
        ipv6_header(
            traffic_class=0,
            flow_label=0,
            payload_length=len(udp),
            next_header=17,
            hop_limit=64,
            src=s.packed,
            dst=d.packed,
        )
        + udp
    )


# --- inner packets ------------------------------------------------------------------------------


def echo_packet(
    src: str, dst: str, key: tuple[int, int], data: bytes, *, request: bool, tos: int = 0
) -> bytes:
    """An ICMP (or ICMPv6) echo request/reply as a whole IP packet (RFC 792, RFC 4443 §4)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ident, seq = key
    if s.version == 4:
        icmp = struct.pack("!BBHHH", 8 if request else 0, 0, 0, ident, seq) + data
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), seq, 0, 64, 1, 0, s.packed, d.packed
        )
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + icmp
    from reference_impl.driver.packet import ipv6_header

    icmp = struct.pack("!BBHHH", 128 if request else 129, 0, 0, ident, seq) + data
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    return (
        ipv6_header(
            traffic_class=tos,
            flow_label=0,
            payload_length=len(icmp),
            next_header=58,
            hop_limit=64,
            src=s.packed,
            dst=d.packed,
        )
        + icmp
    )


def ip_packet_of(src: str, dst: str, protocol: int, upper: bytes, *, checksum_at: int) -> bytes:
    """An IPv4/IPv6 packet carrying ``upper`` (a UDP or TCP header and data) with its checksum
    (at octet ``checksum_at`` of ``upper``) computed over the pseudo-header (RFC 768, RFC 9293,
    RFC 8200 §8.1)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, protocol, len(upper))
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", len(upper), protocol)
    c = checksum(pseudo + upper) or (0xFFFF if protocol == 17 else 0)
    upper = upper[:checksum_at] + struct.pack("!H", c) + upper[checksum_at + 2 :]
    if s.version == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(upper), 1, 0, 64, protocol, 0, s.packed, d.packed
        )
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + upper
    from reference_impl.driver.packet import ipv6_header

    return (
        ipv6_header(
            traffic_class=0,
            flow_label=0,
            payload_length=len(upper),
            next_header=protocol,
            hop_limit=64,
            src=s.packed,
            dst=d.packed,
        )
        + upper
    )


def udp_datagram(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP datagram as an IP packet (RFC 768)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return ip_packet_of(src, dst, 17, udp, checksum_at=6)


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int = 1) -> bytes:
    """A TCP SYN as an IP packet (RFC 9293 §3.1)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 65535, 0, 0)
    return ip_packet_of(src, dst, 6, tcp, checksum_at=16)


def echo_key(packet: bytes, *, request: bool) -> tuple[int, int] | None:
    """(identifier, sequence number) of an ICMP(v6) echo request/reply, else None."""
    if len(packet) < 28:
        return None
    if packet[0] >> 4 == 4:
        off = (packet[0] & 0x0F) * 4
        if packet[9] != 1 or len(packet) < off + 8:
            return None
        want = 8 if request else 0
    else:
        off = 40
        if packet[6] != 58 or len(packet) < 48:
            return None
        want = 128 if request else 129
    if packet[off] != want:
        return None
    ident, seq = struct.unpack_from("!HH", packet, off + 4)
    return ident, seq


def describe(packet: bytes) -> str:
    """``src > dst proto N len L`` of an IP packet, for evidence."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        s4, d4 = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        return f"{s4} > {d4} proto {packet[9]} len {len(packet)}"
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        s6, d6 = ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40])
        return f"{s6} > {d6} next {packet[6]} len {len(packet)}"
    return f"{len(packet)} octets"


# --- the PUT's own view -------------------------------------------------------------------------


def put_state(ctx: CaseContext) -> str:
    """The PUT's Child SAs as it lists them (reference: with per-SA drop counters)."""
    import json

    put = ctx.put
    dump = getattr(put, "sa_dump", None)
    if callable(dump):
        data = dump(keys=False)
        slim = [
            {
                "mode": c["mode"],
                "protocol": c["protocol"],
                "esn": c["esn"],
                "inbound": {k: c["inbound"].get(k) for k in
                            ("spi_hex", "replay_window", "packets", "drops", "encap")},
                "outbound": {k: c["outbound"].get(k) for k in ("spi_hex", "packets", "seq")},
            }
            for c in data["child_sas"]
        ]  # fmt: skip
        return json.dumps(slim, indent=1)
    try:
        return "\n".join(str(sa) for sa in put.list_sas())
    except NotApplicable as exc:  # an external device
        return f"(not listed: {exc})"


def put_inbound_drops(ctx: CaseContext, spi: int) -> dict[str, int] | None:
    """The reference PUT's drop counters of its inbound SA ``spi`` (None for other peers)."""
    dump = getattr(ctx.put, "sa_dump", None)
    if not callable(dump):
        return None
    for c in dump(keys=False)["child_sas"]:
        if c["inbound"]["spi"] == spi:
            return dict(c["inbound"].get("drops") or {})
    return {}


# --- setting up ---------------------------------------------------------------------------------


@contextmanager
def open_tunnel(
    ctx: CaseContext,
    *,
    esp: Proposal | None = GCM,
    ah: Proposal | None = None,
    mode: str = "tunnel",
    family: int = 4,
    inner_family: int | None = None,
    replay_window: int | None = 64,
    force_encap: bool = False,
    put_switches: dict[str, Any] | None = None,
) -> Iterator[Tunnel]:
    """A fresh Child SA between the PUT and the tester (the role says who initiates), with the
    tester recording what it receives. ``family`` is the outer address family; in tunnel mode
    ``inner_family`` the protected one (the nodes' inner addresses: 6-in-4, 4-in-6).
    ``put_switches``: reference-node switches for this Child SA only (``tfc_pad_to``), set
    before it is negotiated and restored when the block ends."""
    kwargs: dict[str, Any] = {
        "mode": mode,
        "replay_window": replay_window,
        "force_encap": force_encap,
    }
    if ah is not None:
        kwargs["ah_proposals"] = (ah,)
    elif esp is not None:
        kwargs["esp_proposals"] = (esp,)
    if family == 6:
        kwargs["family"] = 6
    scenario = ctx.scenario(**kwargs)
    if inner_family is not None and inner_family != family:
        eps = []
        for e in scenario.endpoints:
            inner = ctx.topology.node(e.node).addresses.inner(inner_family)
            if not inner:
                raise NotApplicable(
                    [f"topology {ctx.topology.backend}: no inner IPv{inner_family}"]
                )
            prefix = 32 if inner_family == 4 else 128
            eps.append(replace(e, subnets=(f"{inner}/{prefix}",)))
        scenario = scenario.with_(endpoints=tuple(eps))
        ctx.put.capabilities().require((), scenario)
    rec = ctx.recording
    if rec is not None and "proposal" not in rec.parameters:  # the case's first Child SA
        rec.parameter("proposal", str(ah or esp))
        rec.parameter("mode", mode)
        rec.parameter("replay_window", "default" if replay_window is None else replay_window)
    client = ctx.tester.client  # type: ignore[attr-defined]
    put = ctx.put
    restore: dict[str, Any] = {}

    def switch_on() -> None:
        """This case's own switches, before the SA is made (some apply to new SAs only)."""
        if not put_switches:
            return
        if put.kind != "reference":
            raise NotApplicable([f"{put.kind}: the harness has no switch {sorted(put_switches)}"])
        active = put.client.misbehaviours()["active"]  # type: ignore[attr-defined]
        for name, value in put_switches.items():
            restore[name] = active.get(name, 0)
            put.impair(name, value)  # type: ignore[attr-defined]

    with ctx.step("fresh Child SA"):
        ctx.establish(scenario, before_initiate=switch_on)
    client.record_received(False)
    client.record_received(True)
    if _observe_stack(ctx.put):
        ctx.put.client.delivered()  # type: ignore[attr-defined]  # drop older deliveries
    tunnel = Tunnel(ctx, scenario, ctx.tester.sa_dump(keys=True))  # type: ignore[attr-defined]
    try:
        yield tunnel
    finally:
        try:
            tunnel.collect()
        except (PeerError, OSError, RuntimeError):
            pass
        tunnel.attach()
        tunnel.close()
        try:
            client.record_received(False)
            for name, value in restore.items():
                put.impair(name, value)  # type: ignore[attr-defined]
        except (PeerError, OSError, RuntimeError):
            pass


KNOWN_BEHAVIOUR: dict[tuple[str, str], str] = {
    ("strongswan", "ESP-003"): "strongswan-libipsec-replay-window",
    ("strongswan", "ESP-004"): "strongswan-libipsec-replay-window",
    ("strongswan", "ESP-005"): "strongswan-libipsec-replay-window",
}
"""(peer, case) -> anchor in ``suites/KNOWN_PEER_BEHAVIOUR.md`` (section "esp and ah suites")
explaining why that peer does not meet the case."""


def mark_known(ctx: CaseContext) -> None:
    anchor = KNOWN_BEHAVIOUR.get((ctx.peer_name, ctx.info.id))
    if anchor is not None and ctx.recording is not None:
        ctx.recording.known_behaviour(anchor)


def check(ctx: CaseContext, failures: Sequence[str], what: str = "") -> None:
    """Fail the case's own level with every failure found (evidence is attached already); a
    failure explained in KNOWN_PEER_BEHAVIOUR.md is marked with its anchor."""
    if failures:
        mark_known(ctx)
        raise AssertionError((what + ": " if what else "") + "; ".join(failures))


__all__ = [
    "AH_SHA256",
    "AH_SHA256_ESN",
    "CBC",
    "GCM",
    "GCM_ESN",
    "Outcome",
    "Probe",
    "Seen",
    "Tunnel",
    "check",
    "describe",
    "echo_key",
    "echo_packet",
    "grade",
    "mark_known",
    "note",
    "open_tunnel",
    "open_wire",
    "put_inbound_drops",
    "put_state",
    "require_ipv6",
    "require_real_ip",
    "tcp_syn",
    "udp_datagram",
    "udp_frame",
]
