"""Suite esp: ESP (RFC 4303), catalogue §8, ESP-001 to ESP-016.

Every case negotiates its own Child SA between the peer under test (PUT) and the tester (either
side initiating, by role) and then speaks on the tester's side of it with the harness's own ESP
encoder (``suites/support/ipsec.py``): chosen sequence numbers, flipped bits, odd padding,
dummies, TFC padding, ESN high bits, fragments. A crafted packet counts as delivered when the
PUT's echo reply to the ICMP echo request inside it comes back through the SA (or, for a
reference PUT without a kernel, when it is in the PUT's delivery queue). What the PUT sends is
opened by the harness with the SA's keys as the tester received it.

The PUT's replay window is set to 64 (``Scenario.replay_window``) unless the case is about the
default. Sender-side cycling at 2^32 without ESN cannot be reached black-box and is left out
(catalogue §12.4); ESP-015 tests the receiver side of the ESN wrap.
"""

from __future__ import annotations

import os
import struct
import time

from harness.cases import Level, case
from harness.lab import CaseContext
from harness.peers.base import CHILD_SA, ESN, ESP, IPV6, REKEY, TRANSPORT, TUNNEL
from harness.probes.pcap import PacketKind, read_packets
from suites.support.ipsec import (
    CBC,
    GCM,
    GCM_ESN,
    Outcome,
    Probe,
    Seen,
    Tunnel,
    check,
    describe,
    grade,
    note,
    open_tunnel,
    open_wire,
    put_inbound_drops,
    python_of,
    require_ipv6,
    require_real_ip,
    tcp_syn,
    udp_datagram,
)

SUITE = "esp"
NEEDS = (ESP, CHILD_SA)


def _outcome_failures(outcome: Outcome) -> list[str]:
    return outcome.failures() + [f"unexpected: {u}" for u in outcome.unexpected]


def _put_drops(ctx: CaseContext, t: Tunnel) -> None:
    """The reference PUT's drop counters of its inbound SA, as extra evidence."""
    drops = put_inbound_drops(ctx, t.to_put.spi)
    if drops is not None:
        note(ctx, "put-inbound-drops", repr(drops))


# --- ESP-001 ------------------------------------------------------------------------------------


def _counts_from_one(sent: list[Seen], n: int, what: str) -> list[str]:
    seqs = [s.seq for s in sent]
    bad = [s for s in sent if not s.ok]
    out = []
    if bad:
        out.append(
            f"{what}: {len(bad)} of the PUT's packets did not verify ({bad[0].verdict.name})"
        )
    if seqs != list(range(1, n + 1)):
        out.append(f"{what}: sequence numbers {seqs}, expected 1..{n} in order")
    return out


@case(
    "ESP-001",
    suite=SUITE,
    rfc="4303 §2.2, §3.3.3",
    level="MUST",
    roles="IR",
    title="The sender's counter starts at 0: the first packet on a new SA has sequence number "
    "1, then +1 per packet (also after a rekey)",
    needs=NEEDS,
)
def test_esp_001(ctx: CaseContext) -> None:
    failures: list[str] = []
    with open_tunnel(ctx) as t:
        with ctx.step("PUT sends 10 packets on the new Child SA"):
            failures += _counts_from_one(t.put_sends(range(10)), 10, "new Child SA")
        if ctx.put.capabilities().has(REKEY):
            with ctx.step("PUT rekeys the Child SA, then sends 10 packets"):
                ctx.put.rekey_child()
                t.rebind()
                failures += _counts_from_one(t.put_sends(range(10)), 10, "rekeyed Child SA")
        else:
            note(ctx, "rekey", f"not checked after a rekey: {ctx.put.capabilities().reason(REKEY)}")
    check(ctx, failures)


# --- ESP-002..006: anti-replay ------------------------------------------------------------------


@case(
    "ESP-002",
    suite=SUITE,
    rfc="4303 §3.4.3",
    level="MUST",
    roles="IR",
    title="Anti-replay: a duplicate sequence number inside the window is discarded",
    needs=NEEDS,
)
def test_esp_002(ctx: CaseContext) -> None:
    with open_tunnel(ctx, replay_window=64) as t:
        probes = [t.probe(f"seq {s}", s) for s in range(1, 6)]
        probes.append(t.probe("seq 3 again (replay, valid ICV)", 3, expect=False))
        probes.append(t.probe("seq 6", 6))
        outcome = t.exchange(probes)
        _put_drops(ctx, t)
    check(ctx, _outcome_failures(outcome))


@case(
    "ESP-003",
    suite=SUITE,
    rfc="4303 §3.4.3, §A",
    level="MUST",
    roles="IR",
    title="Packets inside the window not yet seen are accepted; packets left of the window are "
    "discarded (W = 64)",
    needs=NEEDS,
)
def test_esp_003(ctx: CaseContext) -> None:
    with open_tunnel(ctx, replay_window=64) as t:
        outcome = t.exchange(
            [
                t.probe("seq 100", 100),
                t.probe("seq 40 (inside the window 37..100)", 40),
                t.probe("seq 36 (= T - W: left of the window)", 36, expect=False),
                t.probe("seq 101", 101),
            ]
        )
        _put_drops(ctx, t)
    check(ctx, _outcome_failures(outcome))


@case(
    "ESP-004",
    suite=SUITE,
    rfc="4303 §3.4.3, §A",
    level="MUST",
    roles="IR",
    title="A packet right of the window is accepted and slides the window (W = 64)",
    needs=NEEDS,
)
def test_esp_004(ctx: CaseContext) -> None:
    with open_tunnel(ctx, replay_window=64) as t:
        outcome = t.exchange(
            [
                t.probe("seq 1000 (right of the window: slides it)", 1000),
                t.probe("seq 999", 999),
                t.probe("seq 937 (left edge of the window 937..1000)", 937),
                t.probe("seq 936 (left of the window)", 936, expect=False),
                t.probe("seq 999 again (replay)", 999, expect=False),
                t.probe("seq 1001", 1001),
            ]
        )
        _put_drops(ctx, t)
    check(ctx, _outcome_failures(outcome))


@case(
    "ESP-005",
    suite=SUITE,
    rfc="4303 §3.4.3",
    level="MUST",
    roles="IR",
    title="The window is updated only after the integrity check succeeded; ICV failures are "
    "discarded",
    needs=NEEDS,
)
def test_esp_005(ctx: CaseContext) -> None:
    with open_tunnel(ctx, replay_window=64) as t:
        esp = t.esp
        assert esp is not None
        probes = [t.probe(f"seq {s}", s) for s in range(1, 6)]
        probes += [
            t.probe(
                "seq 500 with a corrupted ICV",
                500,
                expect=False,
                mutate=lambda d: esp.corrupt(d, "icv"),
            ),
            t.probe("seq 6 (the window did not move to 500)", 6),
            t.probe("seq 500 with a valid ICV", 500),
            t.probe("seq 400 (left of the window 437..500 once 500 verified)", 400, expect=False),
            t.probe("seq 501", 501),
        ]
        outcome = t.exchange(probes)
        _put_drops(ctx, t)
    check(ctx, _outcome_failures(outcome))


@case(
    "ESP-006",
    suite=SUITE,
    rfc="4303 §3.4.3",
    level="MUST",
    roles="IR",
    title="A window of at least 32 must be supported, 64 is the recommended default (the PUT's "
    "default window is recorded)",
    needs=NEEDS,
)
def test_esp_006(ctx: CaseContext) -> None:
    # Right edge T = 200; each older number probes one window size (none moves the window).
    sizes = ((169, 32), (137, 64), (73, 128), (72, 129))
    labels = {w: f"seq {n} (T - {200 - n}: inside a window >= {w})" for n, w in sizes}
    with open_tunnel(ctx, replay_window=None) as t:
        probes = [t.probe("seq 200", 200)]
        probes += [t.probe(labels[w], n, expect=True if w == 32 else None) for n, w in sizes]
        probes.append(t.probe("seq 201", 201))
        outcome = t.exchange(probes)
        _put_drops(ctx, t)
    got = {w: outcome.delivered[labels[w]] for _, w in sizes}
    window = (
        "> 128" if got[129] else "128" if got[128] else "64..127" if got[64]
        else "32..63" if got[32] else "< 32"
    )  # fmt: skip
    if ctx.recording is not None:
        ctx.recording.parameter("effective default window", window)
    check(ctx, _outcome_failures(outcome), f"default window {window}")
    if not got[64]:
        grade(ctx, Level.SHOULD, f"default replay window {window}: smaller than 64")


# --- ESP-007, ESP-008: integrity and SA lookup ----------------------------------------------------


def _icv_failures(t: Tunnel, name: str) -> list[str]:
    esp = t.esp
    assert esp is not None
    # Four packets with one bit flipped in the sequence number, the IV, the ciphertext and the
    # ICV (for AEAD, the IV and ICV of RFC 4106); then the untouched originals, which must be
    # delivered: the bad copies neither verified nor moved the window.
    fields = ("seq", "iv", "ciphertext", "icv")
    originals: list[Probe] = []
    bad: list[Probe] = []
    for i, where in enumerate(fields, start=1):
        p = t.probe(f"{name}: seq {i} original", i)
        originals.append(p)
        corrupted = esp.corrupt(p.datagrams[0], where, bit=1, index=3 if where == "seq" else 0)
        bad.append(Probe(f"{name}: seq {i}, one bit flipped in the {where}", (corrupted,),
                         p.key, False, i))  # fmt: skip
    first = t.exchange([*bad, t.probe(f"{name}: seq 5", 5)])
    second = t.exchange([*originals, t.probe(f"{name}: seq 6", 6)])
    return _outcome_failures(first) + _outcome_failures(second)


@case(
    "ESP-007",
    suite=SUITE,
    rfc="4303 §3.4.4, §3.4.4.2",
    level="MUST",
    roles="IR",
    title="An ICV failure discards the packet; the ICV covers the header, IV, ciphertext and "
    "ICV (AES-CBC with HMAC-SHA2-256-128, and AES-GCM-16)",
    needs=NEEDS,
)
def test_esp_007(ctx: CaseContext) -> None:
    failures: list[str] = []
    for name, proposal in (("AES-GCM-16", GCM), ("AES-CBC+HMAC-SHA2-256", CBC)):
        with ctx.step(name), open_tunnel(ctx, esp=proposal) as t:
            failures += _icv_failures(t, name)
            _put_drops(ctx, t)
    check(ctx, failures)


@case(
    "ESP-008",
    suite=SUITE,
    rfc="4303 §3.4.2",
    level="MUST",
    roles="IR",
    title="Inbound ESP with no matching SA (unknown SPI) is discarded",
    needs=NEEDS,
)
def test_esp_008(ctx: CaseContext) -> None:
    with open_tunnel(ctx) as t:
        spi = t.to_put.spi
        while spi in (t.to_put.spi, t.from_put.spi) or spi < 256:
            spi = int.from_bytes(os.urandom(4), "big")
        outcome = t.exchange(
            [
                t.probe("seq 1", 1),
                t.probe(f"seq 2 on the unknown SPI {spi:#010x}", 2, spi=spi, expect=False),
                t.probe("seq 2", 2),
            ]
        )
    check(ctx, _outcome_failures(outcome))


# --- ESP-009..012: padding, dummies, TFC ----------------------------------------------------------


def _padding_report(sent: list[Seen], block: int) -> tuple[list[str], int, list[str]]:
    """(failures, packets with minimal padding, table lines) for AES-CBC packets."""
    failures: list[str] = []
    minimal = 0
    lines = ["seq payload pad_length pad_octets_ok aligned minimal next_header"]
    for s in sent:
        if not s.ok or s.plaintext is None:
            failures.append(f"seq {s.seq}: did not verify ({s.verdict.name})")
            continue
        pt = s.plaintext
        pad = pt[-2]
        payload = len(pt) - 2 - pad
        ok_octets = pt[payload : len(pt) - 2] == bytes(range(1, pad + 1))
        aligned = len(pt) % block == 0 and len(pt) % 4 == 0
        is_min = pad == (-(payload + 2)) % block
        minimal += is_min
        lines.append(f"{s.seq} {payload} {pad} {ok_octets} {aligned} {is_min} {pt[-1]}")
        if not ok_octets:
            failures.append(f"seq {s.seq}: padding octets {pt[payload:-2][:16].hex()} are not "
                            "1, 2, 3, ...")  # fmt: skip
        if not aligned:
            failures.append(f"seq {s.seq}: payload, padding and trailer ({len(pt)} octets) are "
                            f"not a multiple of the block size {block}")  # fmt: skip
    return failures, minimal, lines


@case(
    "ESP-009",
    suite=SUITE,
    rfc="4303 §2.4",
    level="MUST",
    roles="IR",
    title="Default padding is 1, 2, 3, ... and payload, padding and trailer fill whole cipher "
    "blocks (AES-CBC; minimal padding recorded)",
    needs=NEEDS,
)
def test_esp_009(ctx: CaseContext) -> None:
    with open_tunnel(ctx, esp=CBC) as t, ctx.step("PUT sends payloads of 32 lengths"):
        sent = t.put_sends(range(32))
    failures, minimal, lines = _padding_report(sent, 16)
    note(ctx, "padding", "\n".join(lines))
    if len(sent) < 32:
        failures.append(f"only {len(sent)} of 32 packets from the PUT arrived")
    if ctx.recording is not None:
        ctx.recording.parameter("minimal padding", f"{minimal} of {len(sent)} packets")
    check(ctx, failures)


@case(
    "ESP-010",
    suite=SUITE,
    rfc="4303 §2.4",
    level="MUST",
    roles="IR",
    title="Receivers accept any padding of 0..255 octets; they should check the default pad "
    "octets (a SHOULD: warning)",
    needs=NEEDS,
)
def test_esp_010(ctx: CaseContext) -> None:
    with open_tunnel(ctx) as t:
        esp = t.esp
        assert esp is not None
        data = b"pad-test"  # inner packet of 36 octets: a multiple of 4 (AES-GCM alignment)
        long_pad = esp.max_pad_length(20 + 8 + len(data))
        outcome = t.exchange(
            [
                t.probe(f"(a) {long_pad} octets of default padding", 1, data=data,
                        pad_length=long_pad),
                t.probe("(b) 14 octets of padding that are zeros, not 1..14", 2, data=data,
                        pad_length=14, padding=bytes(14), expect=None),
                t.probe("seq 3", 3),
            ]
        )  # fmt: skip
        _put_drops(ctx, t)
    failures = [f for f in _outcome_failures(outcome) if not f.startswith("(b)")]
    check(ctx, failures)
    if outcome.delivered["(b) 14 octets of padding that are zeros, not 1..14"]:
        grade(ctx, Level.SHOULD, "(b) padding octets other than 1, 2, 3, ... were accepted")


@case(
    "ESP-011",
    suite=SUITE,
    rfc="4303 §2.6",
    level="MUST",
    roles="IR",
    title="Next Header 59 marks a dummy packet: discarded without error, the SA stays up",
    needs=NEEDS,
)
def test_esp_011(ctx: CaseContext) -> None:
    with open_tunnel(ctx) as t:
        esp = t.esp
        assert esp is not None
        dummy = esp.dummy(2, length=48)
        t.use_seq(2)
        outcome = t.exchange(
            [
                t.probe("seq 1", 1),
                t.raw_probe("seq 2: dummy packet (Next Header 59, random payload)", [dummy],
                            expect=False, seq=2),
                t.probe("seq 3 (the next real packet)", 3),
            ]
        )  # fmt: skip
        _put_drops(ctx, t)
        up = any(
            sa.established and any(c.spi_in == t.to_put.spi for c in sa.children)
            for sa in ctx.put.list_sas()
        )
    failures = _outcome_failures(outcome)
    if not up:
        failures.append("the Child SA is gone after the dummy packet")
    check(ctx, failures)


def _tfc_check(sent: list[Seen]) -> tuple[list[str], int]:
    """Failures and how many PUT packets carried TFC padding (inner length < payload)."""
    failures = []
    padded = 0
    for s in sent:
        if not s.ok or s.plaintext is None:
            failures.append(f"seq {s.seq}: did not verify ({s.verdict.name})")
            continue
        pt = s.plaintext
        payload = pt[: len(pt) - 2 - pt[-2]]
        total = (
            struct.unpack_from("!H", payload, 2)[0]
            if payload[0] >> 4 == 4
            else 40 + struct.unpack_from("!H", payload, 4)[0]
        )
        if total < len(payload):
            padded += 1
            if s.inner and len(s.inner) != total:
                failures.append(f"seq {s.seq}: inner length field changed by the TFC padding")
        elif total > len(payload):
            failures.append(f"seq {s.seq}: inner IP length {total} beyond the payload")
    return failures, padded


@case(
    "ESP-012",
    suite=SUITE,
    rfc="4303 §2.7; 7296 §3.10.1",
    level="MUST",
    roles="IR",
    title="TFC padding after the inner datagram is stripped by its IP length; it is sent only "
    "to a peer that did not send ESP_TFC_PADDING_NOT_SUPPORTED",
    needs=(*NEEDS, TUNNEL),
)
def test_esp_012(ctx: CaseContext) -> None:
    failures: list[str] = []
    with ctx.step("(a) the harness sends TFC padding"), open_tunnel(ctx) as t:
        esp = t.esp
        assert esp is not None
        if not t.child["outbound"].get("tfc_padding", True):
            note(ctx, "tfc", "(a) not sent: the PUT sent ESP_TFC_PADDING_NOT_SUPPORTED")
            if ctx.recording is not None:
                ctx.recording.parameter("(a)", "PUT refused TFC padding")
            outcome = t.exchange([t.probe("seq 1", 1)])
        else:
            inner, key = t.echo_request(data=b"tfc-probe")
            tfc_datagram = esp.packet(inner, 1, tfc_pad_to=len(inner) + 200)
            t.use_seq(1)
            outcome = t.exchange(
                [
                    Probe("seq 1: echo request + 200 octets of TFC padding", (tfc_datagram,), key,
                          True, 1),
                    t.probe("seq 2", 2),
                ]
            )  # fmt: skip
            got = t.delivered_keys.get(key)
            if got is not None and len(got) != len(inner):
                failures.append(
                    f"(a) delivered {len(got)} octets for a {len(inner)}-octet packet: the TFC "
                    "padding was not stripped"
                )
        failures += _outcome_failures(outcome)
    put = ctx.put
    if put.kind != "reference":
        note(ctx, "tfc-b", f"(b) not checked: the harness has no TFC switch for {put.kind}")
        if ctx.recording is not None:
            ctx.recording.parameter("(b)", f"not checked: no TFC switch for {put.kind}")
        check(ctx, failures)
        return
    # The reference node's TFC control (tunnel-mode ESP padded to 256 octets), new SAs only.
    with (
        ctx.step("(b) the PUT sends TFC padding"),
        open_tunnel(ctx, put_switches={"tfc_pad_to": 256}) as t,
    ):
        sent = t.put_sends([1, 64])
    tfc_failures, padded = _tfc_check(sent)
    failures += [f"(b) {f}" for f in tfc_failures]
    if len(sent) < 2:
        failures.append(f"(b) only {len(sent)} of 2 packets from the PUT arrived")
    elif not padded:
        failures.append("(b) the PUT, configured with TFC padding, sent none")
    check(ctx, failures)


# --- ESP-013, ESP-014: modes and IPv6 ------------------------------------------------------------

_PUT_SENDER = r"""
import socket, sys, time
src, dst = sys.argv[1], sys.argv[2]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
u = socket.socket(fam, socket.SOCK_DGRAM)
u.bind((src, 0))
u.sendto(b"esp-013 udp", (dst, 9))
t = socket.socket(fam, socket.SOCK_STREAM)
t.bind((src, 0))
t.setblocking(False)
t.connect_ex((dst, 9))
time.sleep(0.3)
"""


def _put_originates(t: Tunnel) -> None:
    """The PUT sends a UDP datagram and a TCP SYN of its own through the SA (and, without a
    kernel to answer the harness's echo request, an echo request)."""
    if t.stack:
        packets = [
            t.echo_request(data=b"esp-013", src=t.put_addr, dst=t.tester_addr)[0],
            udp_datagram(t.put_addr, t.tester_addr, 40000, 9, b"esp-013"),
            tcp_syn(t.put_addr, t.tester_addr, 40001, 9),
        ]
        t.put.client.inject(packets, direction="out")  # type: ignore[attr-defined]
        return
    t.put_node.exec(
        [python_of(t.put_node), "-c", _PUT_SENDER, t.put_addr, t.tester_addr], timeout=10
    )


def _mode_failures(t: Tunnel, name: str) -> list[str]:
    failures = _outcome_failures(t.exchange([t.probe(f"{name}: ICMP echo", 1)]))
    _put_originates(t)
    for _ in range(100):
        t.collect()
        if {1, 6, 17} <= _inner_protocols(t):
            break
        time.sleep(0.02)  # polling interval of a bounded wait
    want = {1: "ICMP", 6: "TCP", 17: "UDP"}
    seen_by_proto: dict[int, Seen] = {}
    for s in t.seen:
        if s.ok and s.plaintext is not None:
            seen_by_proto.setdefault(_upper(s), s)
    for proto, label in want.items():
        found = seen_by_proto.get(proto)
        if found is None:
            failures.append(f"{name}: no {label} packet from the PUT")
            continue
        s = found
        assert s.plaintext is not None
        nh = s.plaintext[-1]
        if t.mode.value == "tunnel":
            expect_nh = 41 if ":" in t.put_addr else 4
            src_dst = (_addr(s.inner, "src"), _addr(s.inner, "dst"))
            if nh != expect_nh:
                failures.append(f"{name}: {label}: Next Header {nh}, expected {expect_nh}")
            if src_dst != (t.put_addr, t.tester_addr):
                failures.append(f"{name}: {label}: inner {src_dst}, expected the TS hosts "
                                f"{(t.put_addr, t.tester_addr)}")  # fmt: skip
        else:
            if nh != proto:
                failures.append(f"{name}: {label}: Next Header {nh}, expected {proto}")
            outer = (_addr(s.frame, "src"), _addr(s.frame, "dst"))
            if outer != (t.put_outer, t.tester_outer):
                failures.append(f"{name}: {label}: outer {outer}, expected the endpoints")
    return failures


def _upper(s: Seen) -> int:
    """The upper-layer protocol of what the PUT protected."""
    inner = s.inner
    if not inner:
        return -1
    return inner[9] if inner[0] >> 4 == 4 else inner[6]


def _inner_protocols(t: Tunnel) -> set[int]:
    return {_upper(s) for s in t.seen if s.ok}


def _addr(packet: bytes, which: str) -> str:
    import ipaddress

    if packet[0] >> 4 == 4:
        raw = packet[12:16] if which == "src" else packet[16:20]
    else:
        raw = packet[8:24] if which == "src" else packet[24:40]
    return str(ipaddress.ip_address(raw))


@case(
    "ESP-013",
    suite=SUITE,
    rfc="4303 §3.1.1, §3.1.2; 4301 §4.1",
    level="MUST",
    roles="IR",
    title="Transport and tunnel mode: tunnel Next Header 4 with the inner header intact, "
    "transport Next Header = the upper protocol (ICMP, TCP, UDP)",
    needs=(*NEEDS, TRANSPORT, TUNNEL),
)
def test_esp_013(ctx: CaseContext) -> None:
    failures: list[str] = []
    for mode in ("transport", "tunnel"):
        with ctx.step(f"{mode} mode"), open_tunnel(ctx, mode=mode) as t:
            failures += _mode_failures(t, mode)
    check(ctx, failures)


@case(
    "ESP-014",
    suite=SUITE,
    rfc="4303 §3.1.1, §3.1.2",
    level="MUST",
    roles="IR",
    title="IPv6: ESP after extension headers, destination options before ESP, 6-in-4 and "
    "4-in-6 tunnels",
    needs=(*NEEDS, IPV6),
)
def test_esp_014(ctx: CaseContext) -> None:
    require_real_ip(ctx, "IPv6 and raw ESP need real links")
    require_ipv6(ctx)
    failures: list[str] = []
    parts: dict[str, str] = {}
    with ctx.step("6-in-4 tunnel"), open_tunnel(ctx, inner_family=6) as t:
        failures += _mode_failures_v6(t, "6in4", 41)
        parts["6in4"] = "checked"
    with ctx.step("4-in-6 tunnel"), open_tunnel(ctx, family=6, inner_family=4) as t:
        failures += _mode_failures_v6(t, "4in6", 4)
        parts["4in6"] = "checked"
    if ctx.put.capabilities().has(TRANSPORT):
        with (
            ctx.step("IPv6 transport, Destination Options before ESP"),
            open_tunnel(ctx, mode="transport", family=6) as t,
        ):
            failures += _transport_dstopts(t)
            parts["transport"] = "checked"
    else:
        parts["transport"] = ctx.put.capabilities().reason(TRANSPORT)
    if ctx.recording is not None:
        for k, v in parts.items():
            ctx.recording.parameter(k, v)
    check(ctx, failures)


def _mode_failures_v6(t: Tunnel, name: str, expect_nh: int) -> list[str]:
    failures = _outcome_failures(t.exchange([t.probe(f"{name}: echo 1", 1), t.probe("echo 2", 2)]))
    for s in t.seen:
        if s.ok and s.plaintext is not None and s.plaintext[-1] != expect_nh:
            failures.append(f"{name}: PUT sent Next Header {s.plaintext[-1]}, expected {expect_nh}")
    if not any(s.ok for s in t.seen) and not t.stack:
        failures.append(f"{name}: nothing verified came from the PUT")
    return failures


def _dstopts(next_header: int) -> bytes:
    """A Destination Options header (RFC 8200 §4.6) with one PadN option: 8 octets."""
    return bytes((next_header, 0, 1, 4, 0, 0, 0, 0))


def _with_dstopts(datagram: bytes) -> bytes:
    """An IPv6 ESP datagram with a Destination Options header inserted before ESP."""
    nh = datagram[6]
    ext = _dstopts(nh)
    b = bytearray(datagram[:40])
    b[6] = 60
    struct.pack_into("!H", b, 4, len(datagram) - 40 + len(ext))
    return bytes(b) + ext + datagram[40:]


def _transport_dstopts(t: Tunnel) -> list[str]:
    outcome = t.exchange(
        [
            t.probe("transport: echo with Destination Options before ESP", 1,
                    mutate=_with_dstopts),
            t.probe("transport: echo", 2),
        ]
    )  # fmt: skip
    failures = _outcome_failures(outcome)
    for s in t.seen:
        if not s.ok:
            continue
        chain = _v6_chain(s.frame)
        if chain and chain[-1] != 50:
            failures.append(f"transport: PUT header chain {chain} does not end in ESP")
        if any(h not in (0, 43, 44, 60) for h in chain[:-1]):
            failures.append(f"transport: PUT header chain {chain}: ESP after an upper header")
    return failures


def _v6_chain(frame: bytes) -> list[int]:
    if frame[0] >> 4 != 6:
        return []
    chain = []
    nh, off = frame[6], 40
    while nh in (0, 43, 60) and off + 2 <= len(frame):
        chain.append(nh)
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    chain.append(nh)
    return chain


# --- ESP-015: ESN ---------------------------------------------------------------------------------


@case(
    "ESP-015",
    suite=SUITE,
    rfc="4303 §2.2.1, §3.4.3, §A2.2",
    level="MUST",
    roles="IR",
    title="With ESN only the low 32 bits are sent, the high 32 bits are inferred and covered "
    "by the ICV, and the receiver handles the 2^32 wrap",
    needs=(*NEEDS, ESN),
)
def test_esp_015(ctx: CaseContext) -> None:
    with open_tunnel(ctx, esp=GCM_ESN) as t:
        if not t.esn:
            raise AssertionError("ESN was proposed alone but the Child SA has no ESN")
        wrap = 1 << 32
        probes = [t.probe("seq 0x80000000 (the window moves to the upper half)", 0x80000000)]
        probes += [t.probe(f"seq {s:#x}", s) for s in range(0xFFFFFFF0, wrap)]
        probes += [t.probe(f"seq {s:#x} (low {s & 0xFFFFFFFF:#x}, Seqh 1)", s)
                   for s in range(wrap + 1, wrap + 0x11)]  # fmt: skip
        probes.append(
            t.probe(
                f"seq {wrap + 0x11:#x} with Seqh = 0 in the ICV",
                wrap + 0x11,
                esn_high=0,
                expect=False,
            )
        )
        probes.append(t.probe(f"seq {wrap + 0x12:#x}", wrap + 0x12))
        outcome = t.exchange(probes)
        _put_drops(ctx, t)
    check(ctx, _outcome_failures(outcome))


# --- ESP-016: fragments ---------------------------------------------------------------------------


def fragment_ipv4(datagram: bytes, mtu: int) -> list[bytes]:
    """IPv4 fragments (RFC 791 §3.2) of ``datagram`` no larger than ``mtu`` octets."""
    from reference_impl.driver.packet import checksum

    ihl = (datagram[0] & 0x0F) * 4
    header, payload = bytearray(datagram[:ihl]), datagram[ihl:]
    step = (mtu - ihl) // 8 * 8
    ident = int.from_bytes(os.urandom(2), "big") or 1
    out = []
    for off in range(0, len(payload), step):
        chunk = payload[off : off + step]
        h = bytearray(header)
        more = off + step < len(payload)
        struct.pack_into("!HHH", h, 2, ihl + len(chunk), ident, (0x2000 if more else 0) | off // 8)
        h[10:12] = b"\0\0"
        struct.pack_into("!H", h, 10, checksum(bytes(h)))
        out.append(bytes(h) + chunk)
    return out


@case(
    "ESP-016",
    suite=SUITE,
    rfc="4303 §3.3.4, §3.4.1",
    level="MUST",
    roles="IR",
    title="ESP is applied to whole datagrams, then fragmented; inbound, reassembly comes before "
    "ESP processing",
    needs=NEEDS,
)
def test_esp_016(ctx: CaseContext) -> None:
    require_real_ip(
        ctx, "IP fragmentation needs real links (the clear links carry whole datagrams)"
    )
    failures: list[str] = []
    with open_tunnel(ctx) as t:
        cap = ctx.topology.capture()
        try:
            big = t.probe("seq 1: a 3000-octet ESP datagram sent as IPv4 fragments (MTU 1280)", 1,
                          data=_pattern(2900), mutate=lambda d: fragment_ipv4(d, 1280))  # fmt: skip
            outcome = t.exchange([big, t.probe("seq 2", 2)], timeout=6.0)
        finally:
            pcap = cap.stop()
        failures += _outcome_failures(outcome)
        if len(big.datagrams) < 3:
            failures.append(f"harness: {len(big.datagrams)} fragments, expected 3")
        opener = t.opener()
        large = []
        lines = []
        for wp in read_packets(pcap, natt_ports=(4500,)):
            if wp.kind is not PacketKind.ESP or wp.src != t.put_outer:
                continue
            spi = int.from_bytes(wp.data[:4], "big")
            if spi != t.from_put.spi:
                continue
            seen = open_wire(wp, opener, t.from_put.spi, t.esn)
            if seen is None:
                continue
            lines.append(f"frame {wp.frame}: {len(wp.ip)} octets from {wp.fragments} fragment(s), "
                         f"{seen.verdict.name.lower()}, inner {describe(seen.inner)}")  # fmt: skip
            if not seen.ok:  # ESP applied per outer fragment would not verify either
                failures.append(f"frame {wp.frame}: ESP from {wp.fragments} fragment(s) does not "
                                f"verify ({seen.verdict.name})")  # fmt: skip
            if (seen.ok and len(seen.inner) >= 1000) or wp.fragments > 1:
                large.append((wp, seen))
        note(ctx, "put-fragments", "\n".join(lines) or "(no ESP from the PUT in the capture)")
        if ctx.recording is not None:
            ctx.recording.attach_file(pcap, "pcap", "esp-016.pcap")
        if outcome.delivered.get(big.label) and ctx.recording is not None:
            if any(wp.fragments > 1 for wp, _ in large):
                how = "fragmented after ESP (outer fragments of one ESP datagram)"
            else:
                how = ("inner fragments in separate ESP packets (tunnel mode, RFC 4303 "
                       "§3.3.4 allows ESP on a fragment of the inner datagram)")  # fmt: skip
            ctx.recording.parameter("PUT's large reply", how)
    check(ctx, failures)


def _pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))
