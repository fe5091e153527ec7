"""Suite ah: AH (RFC 4302), catalogue §9, AH-001 to AH-008.

As in the esp suite, every case negotiates its own Child SA (AH with HMAC-SHA2-256-128) between
the peer under test and the tester and speaks on the tester's side of it with the harness's
own AH encoder: it builds the ICV input itself (mutable IPv4/IPv6 fields and option data zeroed,
ESN high bits appended, RFC 4302 §3.3.3) and then changes what the network may change (TTL,
DSCP/ECN, flags, Record Route data, IPv6 Traffic Class/Flow Label/Hop Limit, options with the
"may change" bit) or what it may not (Identification, payload, Router Alert value, options
without that bit). Delivery is seen as in the esp suite (echo replies through the SA, or the
delivery queue of a reference PUT without a kernel). What the PUT sends is verified by the
harness's inbound AH SA as it arrived, and again after the harness mutated the mutable fields
the way a router would: it must still verify.

Section numbers follow RFC 4302's outline (§2 header fields, §3.1 header location,
§3.3.3.1.x mutable fields, §3.3.3.2 ICV padding and ESN, §3.4 inbound processing, Appendix A
option classification), as the catalogue gives them.
"""

from __future__ import annotations

import struct

from harness.cases import case
from harness.lab import CaseContext
from harness.peers.base import AH, CHILD_SA, ESN, IPV6
from harness.probes.craft import AhCrafter, mutate_ipv4, mutate_ipv6
from harness.probes.pcap import PacketKind, ip_packet, read_packets
from suites.support.ipsec import (
    AH_SHA256,
    AH_SHA256_ESN,
    Outcome,
    Probe,
    Seen,
    Tunnel,
    check,
    note,
    open_tunnel,
    open_wire,
    put_inbound_drops,
    python_of,
    require_ipv6,
    require_real_ip,
)

SUITE = "ah"
NEEDS = (AH, CHILD_SA)


def _failures(outcome: Outcome) -> list[str]:
    return outcome.failures() + [f"unexpected: {u}" for u in outcome.unexpected]


def _ah(t: Tunnel) -> AhCrafter:
    assert t.ah is not None
    return t.ah


def _put_drops(ctx: CaseContext, t: Tunnel) -> None:
    drops = put_inbound_drops(ctx, t.to_put.spi)
    if drops is not None:
        note(ctx, "put-inbound-drops", repr(drops))


def _ah_header(s: Seen) -> tuple[int, int, int, int, int]:
    """(Next Header, Payload Length, Reserved, SPI, Sequence Number) of a PUT AH packet."""
    off = s.header_offset
    return struct.unpack_from("!BBHII", s.frame, off)


def _still_verifies(t: Tunnel, sent: list[Seen], mutate: object, what: str) -> list[str]:
    """Each PUT packet, mutated in its mutable fields as the network may, must verify."""
    failures = []
    opener = t.opener()
    for s in sent:
        if not s.ok:
            failures.append(f"PUT packet seq {s.seq} does not verify ({s.verdict.name})")
            continue
        changed = mutate(s.frame)  # type: ignore[operator]
        again = open_wire(ip_packet(changed), opener, t.from_put.spi, t.esn)
        if again is None or not again.ok:
            why = again.verdict.name if again is not None else "not AH"
            failures.append(f"PUT packet seq {s.seq} no longer verifies after {what} ({why}): "
                            "its ICV covers a mutable field")  # fmt: skip
    return failures


# --- AH-001, AH-002: IPv4 base header ----------------------------------------------------------


@case(
    "AH-001",
    suite=SUITE,
    rfc="4302 §3.3.3.1.1.1",
    level="MUST",
    roles="IR",
    title="IPv4 mutable fields (DSCP/ECN, flags, fragment offset, TTL, checksum) are zeroed for "
    "the ICV, by the receiver and by the sender",
    needs=NEEDS,
)
def test_ah_001(ctx: CaseContext) -> None:
    failures: list[str] = []
    with open_tunnel(ctx, esp=None, ah=AH_SHA256) as t:
        with ctx.step("(a) TTL, DSCP, ECN and DF changed after the ICV"):
            outcome = t.exchange(
                [
                    # The inner packet is ECT(0), so that an outer CE may be decapsulated
                    # (RFC 6040 §4.2: CE over Not-ECT would be dropped for another reason).
                    t.probe("(a) seq 1: TTL 7, DSCP 46, ECN CE, DF set after the ICV", 1, tos=2,
                            mutate=lambda d: mutate_ipv4(d, ttl=7, tos=46 << 2 | 3, df=True)),
                    t.probe("seq 2", 2),
                ]
            )  # fmt: skip
            failures += _failures(outcome)
        with ctx.step("(b) the PUT's AH packets verify with those fields zeroed"):
            sent = t.put_sends([8, 64, 200])
            if len(sent) < 3:
                failures.append(f"(b) only {len(sent)} of 3 packets from the PUT arrived")

            def route(frame: bytes) -> bytes:
                df = bool(frame[6] & 0x40)
                return mutate_ipv4(frame, ttl=1, tos=0xB9, df=not df)

            routed = _still_verifies(t, sent, route, "TTL/DSCP/ECN/DF changes")
            failures += [f"(b) {f}" for f in routed]
        _put_drops(ctx, t)
    check(ctx, failures)


@case(
    "AH-002",
    suite=SUITE,
    rfc="4302 §3.3.3.1.1.1, §3.4.4",
    level="MUST",
    roles="IR",
    title="Immutable IPv4 fields and the payload are covered by the ICV; an ICV failure "
    "discards the packet",
    needs=NEEDS,
)
def test_ah_002(ctx: CaseContext) -> None:
    with open_tunnel(ctx, esp=None, ah=AH_SHA256) as t:
        ah = _ah(t)
        p1 = t.probe("seq 1 unmodified", 1)
        p2 = t.probe("seq 2 unmodified", 2)
        ident = struct.unpack_from("!H", p1.datagrams[0], 4)[0] ^ 0x5A5A
        bad = [
            Probe("seq 1 with the Identification changed after the ICV",
                  (mutate_ipv4(p1.datagrams[0], ident=ident),), p1.key, False, 1),
            Probe("seq 2 with one payload bit flipped", (ah.corrupt(p2.datagrams[0], "payload"),),
                  p2.key, False, 2),
        ]  # fmt: skip
        first = t.exchange([*bad, t.probe("seq 3", 3)])
        second = t.exchange([p1, p2, t.probe("seq 4", 4)])
        _put_drops(ctx, t)
    check(ctx, _failures(first) + _failures(second))


# --- AH-003: IPv4 options ------------------------------------------------------------------------

RECORD_ROUTE = bytes((7, 11, 4)) + bytes(8) + b"\x01"
"""Record Route (RFC 791 §3.1) with room for two addresses, then a NOP: 12 octets."""
ROUTER_ALERT = bytes((148, 4, 0, 0))
"""Router Alert (RFC 2113), value 0: immutable (RFC 4302 Appendix A.1)."""


def with_ipv4_options(datagram: bytes, options: bytes) -> bytes:
    """``datagram`` (an IPv4 header without options) with ``options`` (a multiple of 4 octets)
    added to its header; lengths and checksum fixed."""
    if len(options) % 4 or datagram[0] != 0x45:
        raise ValueError("options must be whole words after a 20-octet header")
    b = bytearray(datagram[:20])
    b[0] = 0x45 + len(options) // 4
    struct.pack_into("!H", b, 2, len(datagram) + len(options))
    out = bytes(b) + options + datagram[20:]
    return mutate_ipv4(out)  # fixes the checksum


def _set_option_octets(datagram: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite octets of the IPv4 options (``offset`` from the start of the options)."""
    b = bytearray(datagram)
    b[20 + offset : 20 + offset + len(value)] = value
    return mutate_ipv4(bytes(b))


@case(
    "AH-003",
    suite=SUITE,
    rfc="4302 §3.3.3.1.1.2, §A",
    level="MUST",
    roles="IR",
    title="IPv4 options: mutable ones (Record Route) are zeroed whole for the ICV, immutable "
    "ones (Router Alert) are covered",
    needs=NEEDS,
)
def test_ah_003(ctx: CaseContext) -> None:
    with open_tunnel(ctx, esp=None, ah=AH_SHA256) as t:
        ah = _ah(t)

        def signed(options: bytes, change: tuple[int, bytes] | None) -> object:
            def mutate(d: bytes) -> bytes:
                out = ah.resign(with_ipv4_options(d, options))
                if change is not None:
                    out = _set_option_octets(out, *change)
                return out

            return mutate

        rr_hop = (2, bytes((8,)) + bytes((198, 51, 100, 7)))  # pointer moved past one address
        outcome = t.exchange(
            [
                t.probe("seq 1: Record Route, as signed", 1, mutate=signed(RECORD_ROUTE, None)),
                t.probe("(a) seq 2: Record Route data changed after the ICV", 2,
                        mutate=signed(RECORD_ROUTE, rr_hop)),
                t.probe("seq 3: Router Alert, as signed", 3, mutate=signed(ROUTER_ALERT, None)),
                t.probe("(b) seq 4: Router Alert value changed after the ICV", 4, expect=False,
                        mutate=signed(ROUTER_ALERT, (2, b"\x00\x01"))),
                t.probe("seq 5", 5),
            ]
        )  # fmt: skip
        _put_drops(ctx, t)
    check(ctx, _failures(outcome))


# --- AH-004, AH-005: IPv6 ------------------------------------------------------------------------


@case(
    "AH-004",
    suite=SUITE,
    rfc="4302 §3.3.3.1.2.1",
    level="MUST",
    roles="IR",
    title="IPv6 Traffic Class, Flow Label and Hop Limit are zeroed for the ICV, by the receiver "
    "and by the sender",
    needs=(*NEEDS, IPV6),
)
def test_ah_004(ctx: CaseContext) -> None:
    require_real_ip(ctx, "AH over IPv6 needs real links")
    require_ipv6(ctx)
    failures: list[str] = []
    with open_tunnel(ctx, esp=None, ah=AH_SHA256, family=6) as t:
        outcome = t.exchange(
            [
                t.probe("seq 1: flow label 0xABCDE, traffic class 0xB8, hop limit 3 set after the "
                        "ICV", 1, mutate=lambda d: mutate_ipv6(d, traffic_class=0xB8,
                                                               flow_label=0xABCDE, hop_limit=3)),
                t.probe("seq 2", 2),
            ]
        )  # fmt: skip
        failures += _failures(outcome)
        sent = [s for s in t.put_packets() if s.frame[0] >> 4 == 6]
        if not sent:
            failures.append("no IPv6 AH packet from the PUT arrived")

        def route(frame: bytes) -> bytes:
            return mutate_ipv6(frame, traffic_class=0x2E, flow_label=0x12345, hop_limit=1)

        failures += _still_verifies(t, sent, route, "traffic class/flow label/hop limit changes")
        _put_drops(ctx, t)
    check(ctx, failures)


def destination_options(next_header: int, options: bytes) -> bytes:
    """A Destination Options header (RFC 8200 §4.6) with ``options``, padded with PadN."""
    body = options
    pad = (-(2 + len(body))) % 8
    if pad == 1:
        body += b"\x00"  # Pad1
    elif pad:
        body += bytes((1, pad - 2)) + bytes(pad - 2)
    return bytes((next_header, (2 + len(body)) // 8 - 1)) + body


OPT_MAY_CHANGE = 0x3E
"""Option type 0x3E: skip if unknown (00), the data may change en route (bit 0x20)."""
OPT_FIXED = 0x1E
"""Option type 0x1E: skip if unknown (00), the data does not change (RFC 8200 §4.2)."""


def with_destination_options(datagram: bytes, header: bytes) -> bytes:
    """An IPv6 datagram with ``header`` (its Next Header already set) inserted after the base
    header."""
    b = bytearray(datagram[:40])
    b[6] = 60
    struct.pack_into("!H", b, 4, len(datagram) - 40 + len(header))
    return bytes(b) + header + datagram[40:]


@case(
    "AH-005",
    suite=SUITE,
    rfc="4302 §3.1.1, §3.3.3.1.2.2",
    level="MUST",
    roles="IR",
    title="IPv6 extension headers: AH follows them; option data with the may-change bit is "
    "zeroed for the ICV, other option data is covered",
    needs=(*NEEDS, IPV6),
)
def test_ah_005(ctx: CaseContext) -> None:
    require_real_ip(ctx, "AH over IPv6 needs real links")
    require_ipv6(ctx)
    failures: list[str] = []
    with open_tunnel(ctx, esp=None, ah=AH_SHA256, family=6) as t:
        ah = _ah(t)
        opts = bytes((OPT_MAY_CHANGE, 2, 0x11, 0x22, OPT_FIXED, 2, 0x33, 0x44))

        def signed(change: tuple[int, int] | None) -> object:
            def mutate(d: bytes) -> bytes:
                hdr = destination_options(d[6], opts)
                out = bytearray(ah.resign(with_destination_options(d, hdr)))
                if change is not None:
                    at, value = change
                    out[40 + 2 + at] = value
                return bytes(out)

            return mutate

        outcome = t.exchange(
            [
                t.probe("seq 1: Destination Options before AH, as signed", 1, mutate=signed(None)),
                t.probe("seq 2: option 0x3E (may change) data altered after the ICV", 2,
                        mutate=signed((2, 0x99))),
                t.probe("seq 3: option 0x1E (fixed) data altered after the ICV", 3, expect=False,
                        mutate=signed((6, 0x99))),
                t.probe("seq 4", 4),
            ]
        )  # fmt: skip
        failures += _failures(outcome)
        for s in t.put_packets():
            chain = _v6_chain(s.frame)
            if chain and (chain[-1] != 51 or any(h not in (0, 43, 44, 60) for h in chain[:-1])):
                failures.append(f"PUT packet seq {s.seq}: header chain {chain}")
        _put_drops(ctx, t)
    check(ctx, failures)


def _v6_chain(frame: bytes) -> list[int]:
    """IPv6 next-header values up to the first that is not hop-by-hop/routing/dst options."""
    if frame[0] >> 4 != 6:
        return []
    chain = []
    nh, off = frame[6], 40
    while nh in (0, 43, 60) and off + 2 <= len(frame):
        chain.append(nh)
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    chain.append(nh)
    return chain


# --- AH-006, AH-007: header fields ---------------------------------------------------------------

_PING = r"""
import subprocess, sys
subprocess.run(["ping", "-c", "2", "-i", "0.2", "-w", "1", "-I", sys.argv[1], sys.argv[2]],
               capture_output=True)
"""


def _lengths(sent: list[Seen], family: int) -> list[str]:
    want_len, want_pl = (28, 5) if family == 4 else (32, 6)
    failures = []
    for s in sent:
        _, pl, _, _, _ = _ah_header(s)
        ah_len = (pl + 2) * 4
        if (ah_len, pl) != (want_len, want_pl):
            failures.append(
                f"IPv{family} seq {s.seq}: AH {ah_len} octets, Payload Length {pl}; expected "
                f"{want_len} octets, Payload Length {want_pl}"
            )
    return failures


@case(
    "AH-006",
    suite=SUITE,
    rfc="4302 §2.2, §3.3.3.2.1",
    level="MUST",
    roles="IR",
    title="Payload Length = AH length in 32-bit words - 2; AH is a multiple of 8 octets over "
    "IPv6 (4 over IPv4), with ICV padding (HMAC-SHA2-256-128)",
    needs=NEEDS,
)
def test_ah_006(ctx: CaseContext) -> None:
    failures: list[str] = []
    with ctx.step("IPv4"), open_tunnel(ctx, esp=None, ah=AH_SHA256) as t:
        sent = t.put_sends([8, 100])
        if not sent:
            failures.append("IPv4: no AH packet from the PUT arrived")
        failures += _lengths(sent, 4)
    from harness.peers.base import NotApplicable

    try:
        require_real_ip(ctx, "IPv6 needs real links")
        require_ipv6(ctx)
        ctx.put.capabilities().require((IPV6,))
    except NotApplicable as exc:
        if ctx.recording is not None:
            ctx.recording.parameter("IPv6", f"not checked: {exc}")
        check(ctx, failures)
        return
    with ctx.step("IPv6"), open_tunnel(ctx, esp=None, ah=AH_SHA256, family=6) as t:
        cap = ctx.topology.capture()
        try:
            t.put_node.exec(
                [python_of(t.put_node), "-c", _PING, t.put_addr, t.tester_addr], timeout=10
            )
        finally:
            pcap = cap.stop()
        opener = t.opener()
        sent6 = []
        for wp in read_packets(pcap):
            if wp.kind is PacketKind.AH and wp.src == t.put_outer:
                s = open_wire(wp, opener, t.from_put.spi, t.esn)
                if s is not None:
                    sent6.append(s)
        if not sent6:
            failures.append("IPv6: no AH packet from the PUT in the capture")
        failures += _lengths(sent6, 6)
        failures += [f"IPv6 seq {s.seq}: does not verify" for s in sent6 if not s.ok]
        if ctx.recording is not None:
            ctx.recording.attach_file(pcap, "pcap", "ah-006-ipv6.pcap")
    check(ctx, failures)


@case(
    "AH-007",
    suite=SUITE,
    rfc="4302 §2.3",
    level="MUST",
    roles="IR",
    title="Reserved is sent as zero, is covered by the ICV, and is otherwise ignored by the "
    "receiver",
    needs=NEEDS,
)
def test_ah_007(ctx: CaseContext) -> None:
    failures: list[str] = []
    with open_tunnel(ctx, esp=None, ah=AH_SHA256) as t:
        with ctx.step("(a) the PUT sends Reserved = 0"):
            sent = t.put_sends([8, 16])
            if not sent:
                failures.append("(a) no AH packet from the PUT arrived")
            for s in sent:
                reserved = _ah_header(s)[2]
                if reserved:
                    failures.append(f"(a) PUT packet seq {s.seq}: Reserved = {reserved:#06x}")
        with ctx.step("(b) Reserved = 0xFFFF, covered by the ICV"):
            start = t.next_seq()
            outcome = t.exchange(
                [
                    t.probe(f"(b) seq {start}: Reserved 0xFFFF (ICV computed over it)", start,
                            reserved=0xFFFF),
                    t.probe(f"seq {start + 1}", start + 1),
                ]
            )  # fmt: skip
            failures += _failures(outcome)
        _put_drops(ctx, t)
    check(ctx, failures)


# --- AH-008: sequence numbers, replay, ESN ---------------------------------------------------


@case(
    "AH-008",
    suite=SUITE,
    rfc="4302 §2.5, §3.3.3.2.2, §3.4.3",
    level="MUST",
    roles="IR",
    title="Sequence numbers start at 1; duplicates are dropped; with ESN the high 32 bits are "
    "in the ICV and the 2^32 wrap is handled",
    needs=NEEDS,
)
def test_ah_008(ctx: CaseContext) -> None:
    failures: list[str] = []
    esn = ctx.put.capabilities().has(ESN)
    with open_tunnel(ctx, esp=None, ah=AH_SHA256_ESN if esn else AH_SHA256) as t:
        with ctx.step("(a) the PUT's first packets"):
            sent = t.put_sends([8, 8, 8])
            seqs = [s.seq for s in sent]
            if seqs != [1, 2, 3]:
                failures.append(f"(a) the PUT's first sequence numbers are {seqs}, not 1, 2, 3")
            failures += [f"(a) seq {s.seq} does not verify" for s in sent if not s.ok]
        with ctx.step("(b) a replayed packet"):
            n = t.next_seq()
            first = t.exchange(
                [
                    t.probe(f"seq {n}", n),
                    t.probe(f"seq {n + 1}", n + 1),
                    t.probe(f"(b) seq {n} again (replay)", n, expect=False),
                    t.probe(f"seq {n + 2}", n + 2),
                ]
            )
            failures += _failures(first)
        if t.esn:
            with ctx.step("(c) ESN: across the 2^32 wrap"):
                wrap = 1 << 32
                probes = [t.probe("seq 0x80000000 (the window moves to the upper half)",
                                  0x80000000)]  # fmt: skip
                probes += [t.probe(f"(c) seq {s:#x}", s) for s in range(wrap - 2, wrap + 3)]
                probes.append(t.probe(f"(c) seq {wrap + 3:#x} with Seqh = 0 in the ICV",
                                      wrap + 3, esn_high=0, expect=False))  # fmt: skip
                probes.append(t.probe(f"seq {wrap + 4:#x}", wrap + 4))
                failures += _failures(t.exchange(probes))
        elif ctx.recording is not None:
            ctx.recording.parameter("(c)", f"not checked: {ctx.put.capabilities().reason(ESN)}")
        _put_drops(ctx, t)
    check(ctx, failures)
