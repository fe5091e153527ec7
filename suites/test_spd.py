"""Suite ``spd``: RFC 4301 policy processing (catalogue §10): SPD-001 to SPD-008.

The PUT is the host whose SPD is under test; the tester is the peer on the other side and
the observation point (what reached it, in clear or protected). Machinery shared with the
fallback suite: :mod:`suites.support.fallback`.
"""

from __future__ import annotations

import time
from typing import Any

from harness.cases import case
from harness.lab import CaseContext
from harness.peers.base import CHILD_SA, ESP, TRANSPORT
from harness.probes.craft import udp_packet
from suites.support.fallback import (
    MAGIC,
    CaptureObserver,
    Ip4,
    RefFb,
    SwanFb,
    is_reference,
    policy_yaml,
    require_action,
    tcp4,
    udp4,
)
from suites.support.spd import ReplyListener, clear_probe, host_route

SUITE = "spd"


@case("SPD-001", suite=SUITE, rfc="4301 §4.4.1, §5.1", level="MUST", roles="I",
      title="Outbound traffic matching PROTECT never leaves in clear; with no SA it triggers "
            "SA negotiation")  # fmt: skip
def test_spd001_protect_triggers_negotiation(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="open") as fb:
            fb.tester_policy(require_action(inbound_passthrough=True))  # a leak would show
            fb.put_policy(require_action())
            fb.probe("P1")  # before any SA exists
            assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: no SA negotiated"
            acq = fb.audit("acquire")
            assert len(acq) == 1, f"{len(acq)} ACQUIREs"
            r_sas = fb.tester.list_sas()
            assert r_sas and not r_sas[0].initiator, "R saw no IKE_SA_INIT from the PUT"
            for k in range(3):
                fb.probe(f"P{k + 2}")
            clear = fb.clear_probes()
            assert not clear, f"{len(clear)} cleartext packets of the flow reached R"
            if fb.local:
                got = [(p.packet.probe or b"").decode() for p in fb.protected_probes()]
                assert got == ["P1", "P2", "P3", "P4"], f"protected at R: {got}"
                assert fb.r_discarded_clear() == 0, "R discarded clear packets of the flow"
            else:
                assert isinstance(fb.observer, CaptureObserver)
                ike = [ip for _, ip in fb.observer.wire if ip.proto == 17 and ip.dport == 500]
                assert ike and ike[0].payload[18] == 34, "no IKE_SA_INIT from the PUT first"
                assert len(fb.protected_probes()) >= 4, "the probes were not seen as ESP"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="open") as sw:
            t0 = time.time()
            sw.ping(count=3, interval=0.3)
            run = sw.observe(1.0, t0=t0)
            if ctx.recording:
                ctx.recording.attach_text("observed", run.summary())
            assert not run.clear_probes, f"{len(run.clear_probes)} probes left in clear"
            if not run.ike:
                if ctx.recording:
                    ctx.recording.known_behaviour("strongswan-libipsec-no-acquire")
                raise AssertionError(
                    "no IKE_SA_INIT: the trap policy never triggered a negotiation "
                    "(kernel-libipsec dropped the packets, 'could not find an outbound IPsec "
                    f"SA' x{run.libipsec_drops})"
                )
            assert run.esp >= 1, "no ESP after the negotiation"
        return
    from harness.peers.base import NotApplicable

    raise NotApplicable([f"{ctx.peer_name}: needs a traffic source behind the peer under test"])


def _reference_only(ctx: CaseContext, swan_lacks: str) -> None:
    """Not applicable to other peers: strongSwan for ``swan_lacks`` (what its adapter cannot
    load), the others for want of a traffic source behind them."""
    if not is_reference(ctx):
        from harness.peers.base import NotApplicable

        raise NotApplicable(
            [f"{ctx.peer_name}: {swan_lacks} (kernel-libipsec installs no shunt policies)"
             if ctx.peer_name == "strongswan"
             else f"{ctx.peer_name}: needs a traffic source behind the peer under test"]
        )  # fmt: skip


def _initiate(ctx: CaseContext, fb: RefFb) -> None:
    initiator = fb.put if ctx.put_initiates else fb.tester
    initiator.client.initiate("fb", peer=fb.r_addr if ctx.put_initiates else fb.i_addr)
    assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: no SA"


def _labels(seen: list[Any]) -> list[str]:
    return [(p.packet.probe or b"").decode() for p in seen]


@case("SPD-002", suite=SUITE, rfc="4301 §4.4.1, §4.4.1.2", level="MUST", roles="IR",
      title="SPD entries are ordered and the first match wins: a BYPASS entry for TCP/22 "
            "ahead of a PROTECT entry for all traffic takes effect")  # fmt: skip
def test_spd002_first_match_wins(ctx: CaseContext) -> None:
    _reference_only(ctx, "the BYPASS entry needs a shunt policy the adapter cannot load")
    with RefFb(ctx, closure="open") as fb:
        fb.tester_policy(require_action(), bypass=[("tcp", 22)])
        fb.put_policy(require_action(), bypass=[("tcp", 22)])
        _initiate(ctx, fb)
        fb.probe("U1")
        ssh = tcp4(fb.i_addr, fb.r_addr, fb.sport + 1, 22, payload=MAGIC + b"T22")
        fb.inject(ssh, "TCP/22 SYN (BYPASS entry)")
        fb.probe("U2")
        clear, protected = _labels(fb.clear_probes()), _labels(fb.protected_probes())
        assert "T22" in clear, f"the TCP/22 segment was not seen in clear (clear: {clear})"
        assert "T22" not in protected, "the TCP/22 segment went through the SA"
        assert not [c for c in clear if c.startswith("U")], f"UDP left in clear: {clear}"
        if fb.local:  # the capture of netns/docker sees ESP, not what is inside
            assert {"U1", "U2"} <= set(protected), f"UDP not protected: {protected}"
        else:
            assert len(fb.protected_probes()) >= 2, "the UDP probes were not seen as ESP"


@case("SPD-006", suite=SUITE, rfc="4301 §4.4.1.1", level="MUST", roles="IR",
      title="Selectors on next-layer protocol and ports are honoured: a Child SA for TCP/443 "
            "only, DISCARD for the rest of the host pair")  # fmt: skip
def test_spd006_port_selectors(ctx: CaseContext) -> None:
    _reference_only(ctx, "the DISCARD for the rest needs a shunt policy the adapter cannot load")
    with RefFb(ctx, closure="open") as fb:
        fb.tester_policy(require_action(), only=("tcp", 443, "src"))  # R: the server
        fb.put_policy(require_action(), only=("tcp", 443, "dst"), default_action="discard")
        _initiate(ctx, fb)
        children = fb.put.client.list_sas()["child_sas"]
        assert children, "no Child SA listed"
        out = children[-1]["outbound"]
        ts = (out["ts_src"], out["ts_dst"])
        assert ts == ([f"{fb.i_addr}[6]"], [f"{fb.r_addr}[6/443]"]), (
            f"the Child SA's selectors (out: source, destination) are {ts}, not TCP to 443"
        )
        drops = fb.counter("drops.inbound_policy") + fb.counter("drops.policy")
        https = tcp4(fb.i_addr, fb.r_addr, fb.sport + 2, 443, payload=MAGIC + b"T443")
        fb.inject(https, "TCP/443 SYN (the SA's selectors)")
        dns = udp4(fb.i_addr, fb.r_addr, fb.sport + 3, 53, MAGIC + b"U53")
        fb.inject(dns, "UDP/53 (no entry but the DISCARD)")
        fb.probe("U1")  # UDP to the probe port: DISCARD as well (and the observer's sync)
        clear, protected = _labels(fb.clear_probes()), _labels(fb.protected_probes())
        assert not clear, f"left in clear: {clear}"
        if fb.local:
            assert protected == ["T443"], f"protected at R: {protected} (only TCP/443 may be)"
        else:
            assert len(fb.protected_probes()) == 1, (
                f"{len(fb.protected_probes())} ESP packets for one TCP/443 segment"
            )
        dropped = fb.counter("drops.inbound_policy") + fb.counter("drops.policy") - drops
        assert dropped == 2, f"{dropped} packets discarded by policy, expected 2 (UDP/53, UDP)"


@case("SPD-003", suite=SUITE, rfc="4301 §5.1, §5.1.1", level="MUST", roles="IR",
      title="Outbound packets matching DISCARD are dropped; record whether an ICMP "
            "Destination Unreachable (3/13) comes back")  # fmt: skip
def test_spd003_discard(ctx: CaseContext) -> None:
    _reference_only(ctx, "the DISCARD entry needs a drop shunt the adapter cannot load yet")
    with RefFb(ctx, closure="open", r2=True) as fb:
        assert fb.r2_addr is not None
        text = policy_yaml(
            "spd-003-i", [fb.r_addr], require_action(), psk_ref=fb.sc.name,
            block=[fb.r2_addr], block_icmp=True,
        )  # fmt: skip
        fb.policies["I policy"] = text
        fb.put.client.load_policy(text=text)
        fb.probe("D1", to=fb.r2_addr)
        fb.probe("D2", to=fb.r2_addr)
        leaked = [p for p in fb.observer.packets if p.packet.dst == fb.r2_addr]  # type: ignore[union-attr]
        assert not leaked, f"{len(leaked)} packets towards the DISCARD destination on the wire"
        assert fb.counter("drops.policy") == 2, f"drops.policy +{fb.counter('drops.policy')}"
        icmp = _icmp_back(fb)
        finding = (f"DISCARD: no packet towards {fb.r2_addr} left; ICMP back to the sender: "
                   f"{icmp or 'none'} (RFC 4301 §5.1.1: type 3 code 13, rate limited)")  # fmt: skip
        if ctx.recording:
            ctx.recording.recorded(finding)


def _icmp_back(fb: RefFb) -> list[tuple[int, int]]:
    if fb.local:
        return [(d.packet[20], d.packet[21]) for d in fb.put.client.delivered()
                if len(d.packet) > 21 and d.packet[9] == 1 and d.packet[20] == 3]  # fmt: skip
    n = fb.counter("local_icmp.sent")
    return [(3, 13)] * n


@case("SPD-004", suite=SUITE, rfc="4301 §5.2, §4.4.1", level="MUST", roles="IR",
      title="An inbound cleartext packet whose selectors match a PROTECT entry (it should "
            "have arrived protected) is discarded",
      needs=(ESP,))  # fmt: skip
def test_spd004_inbound_clear_discarded(ctx: CaseContext) -> None:
    ident = 0x5D04
    if is_reference(ctx):
        # UDP: the fallback policies exempt ICMP (policy-spec §1.5), the probe flow's UDP not.
        with RefFb(ctx, closure="open") as fb:
            fb.tester_policy(require_action())
            fb.put_policy(require_action())
            initiator = fb.put if ctx.put_initiates else fb.tester
            initiator.client.initiate("fb", peer=fb.r_addr if ctx.put_initiates else fb.i_addr)
            assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: no SA"
            drops = fb.counter("drops.clear_inbound")
            with ctx.step("R sends a cleartext UDP datagram to I past its own IPsec"):
                if fb.local:  # the local wire is the node's API: the packet arrives at I
                    fb.put.client.delivered()
                    packet = udp_packet(fb.r_addr, fb.i_addr, ident, 9, b"SPD-004")
                    fb.put.client.inject([packet], direction="in")
                    delivered = [d for d in fb.put.client.delivered() if b"SPD-004" in d.packet]
                    assert not delivered, "the cleartext datagram was delivered to I's stack"
                else:
                    mark = int(fb.tester.client.status()["dataplane"]["mark"])
                    answer = clear_probe(
                        fb.tester_node, kind="udp", src=fb.r_addr, dst=fb.i_addr, mark=mark,
                        ident=ident,
                    )  # fmt: skip
                    assert answer is None, f"I answered the cleartext datagram ({answer})"
            assert fb.counter("drops.clear_inbound") == drops + 1, (
                f"drops.clear_inbound +{fb.counter('drops.clear_inbound') - drops}, expected +1"
            )
            audit = fb.audit("clear_inbound_discarded")
            assert audit and audit[-1].get("reason") == "require", f"audit: {audit[-1:]}"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="open") as sw:
            assert sw.initiate(), "no Child SA between strongSwan and the tester"
            mark = int(sw.tester.client.status()["dataplane"]["mark"])  # type: ignore[attr-defined]
            with (
                ctx.step(
                    "the tester sends a cleartext ICMP echo request from its protected address to "
                    "strongSwan's, past its own IPsec"
                ),
                host_route(sw.tester_node, sw.src, sw.i_addr),
            ):
                answer = clear_probe(
                    sw.tester_node, kind="icmp", src=sw.dst, dst=sw.src, mark=mark, ident=ident
                )
            assert sw.observer is not None
            requests = [
                ip for _, f in sw.observer.frames() if (ip := Ip4.parse(f)) is not None
                and ip.icmp == (8, 0) and ip.src == sw.dst and ip.dst == sw.src
            ]  # fmt: skip
            assert requests, "the cleartext echo request never reached strongSwan's link (harness)"
            if answer is not None and ctx.recording:
                ctx.recording.known_behaviour("strongswan-libipsec-inbound-clear")
            assert answer is None, (
                f"strongSwan answered a cleartext echo request of a protected flow ({answer}): "
                "the packet was delivered"
            )
        return
    from harness.peers.base import NotApplicable

    raise NotApplicable([f"{ctx.peer_name}: needs an ESP SA with the tester"])


@case("SPD-005", suite=SUITE, rfc="4301 §5.2 (steps 4-5)", level="MUST", roles="IR",
      title="After ESP processing the inner packet must match the SA's selectors, or be "
            "discarded",
      needs=(ESP, CHILD_SA))  # fmt: skip
def test_spd005_inner_packet_checked_against_selectors(ctx: CaseContext) -> None:
    from suites.support.ipsec import Probe, check, open_tunnel, put_inbound_drops

    with open_tunnel(ctx, mode="tunnel") as t:
        # The inner source: the tester's outer address, outside TSi (the tester's inner /32)
        # yet on the PUT's link, so that a PUT that delivers the request answers in clear on
        # the wire where the tester sees it.
        outside = t.tester_outer
        inner, key = t.echo_request(src=outside)
        seq = t.next_seq()
        listener = None
        if not t.stack:
            listener = ReplyListener(t.tester_node, src=t.put_addr, dst=outside, ident=t.ident)
        try:
            with ctx.step(f"ESP on the SA carrying an echo request from {outside} (outside TSi)"):
                outcome = t.exchange(
                    [
                        Probe("inner source outside TSi", (t.craft(inner, seq),), key, False, seq),
                        t.probe("inner source inside TSi (the control)"),
                    ]
                )
            failures = outcome.failures() + [f"unexpected: {u}" for u in outcome.unexpected]
            if listener is not None and key[1] in listener.replies():
                failures.append(
                    f"the PUT answered the echo request from {outside} (in clear, outside the "
                    "SA): the decapsulated packet was delivered"
                )
        finally:
            if listener is not None:
                listener.close()
        drops = put_inbound_drops(ctx, t.to_put.spi)
        if drops is not None and not failures and drops.get("selector_mismatch", 0) < 1:
            failures.append(f"the reference PUT's inbound SA counts no selector mismatch: {drops}")
    check(ctx, failures)


OUTSIDER = "198.51.100.1"
"""A source no SPD entry of the case covers (catalogue SPD-008)."""


@case("SPD-008", suite=SUITE, rfc="4301 §4.4.1, §5.2", level="SHOULD", roles="R",
      title="Inbound unprotected traffic that matches no SPD entry is discarded (every SPD "
            "should end with a catch-all DISCARD); what the PUT does is recorded")  # fmt: skip
def test_spd008_unmatched_inbound_clear(ctx: CaseContext) -> None:
    from suites.support.fallback import icmp4_echo, udp4

    ident = 0x5D08
    if is_reference(ctx):
        # UDP: the case's policies exempt ICMP from everything (policy-spec §1.5). The PUT's
        # policy ends with a catch-all DISCARD (its default_action), as §4.4.1 advises.
        with RefFb(ctx, closure="open") as fb:
            fb.tester_policy(require_action())
            fb.put_policy(require_action(), default_action="discard")
            packet = udp4(OUTSIDER, fb.i_addr, ident, 9, b"SPD-008")
            before = fb.agent_counters()
            with ctx.step(f"a cleartext UDP datagram from {OUTSIDER} to I"):
                if fb.local:
                    fb.put.client.delivered()
                    fb.put.client.inject([packet], direction="in")
                    answer = (
                        "delivered to I's stack"
                        if any(b"SPD-008" in d.packet for d in fb.put.client.delivered())
                        else None
                    )
                else:
                    answer = _unmatched_answer(
                        ctx, fb.tester_node, fb.put_node, packet, fb.i_addr, fb.r_addr,
                        int(fb.tester.client.status()["dataplane"]["mark"]), ident,
                    )  # fmt: skip
            after = fb.agent_counters()
            counted = {k: after.get(k, 0) - before.get(k, 0)
                       for k in ("bypass.in", "drops.inbound_policy")}  # fmt: skip
            _record_unmatched(ctx, fb.i_addr, answer, f"default_action discard; {counted}")
            assert answer is None, f"the catch-all DISCARD let it through ({answer})"
            assert counted["drops.inbound_policy"] == 1, f"not discarded by policy: {counted}"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="open") as sw:
            packet = icmp4_echo(OUTSIDER, sw.src, ident, 1, b"SPD-008")
            mark = int(sw.tester.client.status()["dataplane"]["mark"])  # type: ignore[attr-defined]
            with ctx.step(f"a cleartext ICMP echo request from {OUTSIDER} to {sw.src}"), \
                    host_route(sw.tester_node, sw.src, sw.i_addr):  # fmt: skip
                answer = _unmatched_answer(
                    ctx, sw.tester_node, sw.put_node, packet, sw.src, sw.r_addr, mark, ident
                )
            if answer is not None and ctx.recording:
                ctx.recording.known_behaviour("strongswan-no-catch-all-discard")
            _record_unmatched(ctx, sw.src, answer, "a trap policy for the tester only")
        return
    from harness.peers.base import NotApplicable

    raise NotApplicable([f"{ctx.peer_name}: needs a node of ours on its link to send from"])


def _unmatched_answer(
    ctx: CaseContext, tester: Any, put: Any, packet: bytes, put_addr: str, tester_addr: str,
    mark: int, ident: int,
) -> str | None:  # fmt: skip
    """Send ``packet`` (from :data:`OUTSIDER`) from the tester's namespace past its IPsec, with
    a route back to the outsider through the tester on the PUT's side, and say what came back
    within 3 s: an echo reply or a port unreachable means the PUT delivered it."""
    from suites.support.fallback import poll
    from suites.support.ipsec import send_raw

    with host_route(put, OUTSIDER, tester_addr):
        listener = ReplyListener(tester, src=put_addr, dst=OUTSIDER, ident=ident)
        try:
            send_raw(tester, [packet], mark)
            got = poll(lambda: listener.replies() or listener.unreachable(), 3.0, 0.05)
        finally:
            listener.close()
    if not got:
        return None
    return "answered with an echo reply" if listener.replies() else "answered: port unreachable"


def _record_unmatched(ctx: CaseContext, addr: str, answer: str | None, config: str) -> None:
    seen = f"accepted ({answer})" if answer else "discarded (no answer)"
    finding = (
        f"cleartext from {OUTSIDER}, which no SPD entry covers, to {addr}: {seen}; "
        f"PUT configuration: {config}. RFC 4301 §5.2 step 3b: discard traffic that matches "
        "no entry (stock Linux XFRM passes it unless a catch-all drop is set)"
    )
    if ctx.recording:
        ctx.recording.recorded(finding)


@case("SPD-007", suite=SUITE, rfc="4301 §5.2, §4.4.1", level="MUST", roles="IR",
      title="IKE has an explicit BYPASS: a host-to-host protect-all policy does not capture "
            "UDP 500/4500; an IKE rekey travels in clear and succeeds",
      needs=(ESP, TRANSPORT))  # fmt: skip
def test_spd007_ike_bypass_rekey(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        from harness.peers.base import NotApplicable

        raise NotApplicable([f"{ctx.peer_name}: needs a protect-all transport policy"])
    with RefFb(ctx, closure="open") as fb:
        fb.tester_policy(require_action(), all_traffic=True)
        fb.put_policy(require_action(), all_traffic=True)
        initiator = fb.put if ctx.put_initiates else fb.tester
        initiator.client.initiate("fb", peer=fb.r_addr if ctx.put_initiates else fb.i_addr)
        assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: no SA"
        before = {s["ike_sa_id"] for s in fb.put.client.list_sas()["ike_sas"]}
        (old,) = [s for s in initiator.client.list_sas()["ike_sas"] if s["established"]]
        initiator.client.rekey_ike(old["ike_sa_id"])

        def rekeyed() -> bool:
            sas = fb.put.client.list_sas()["ike_sas"]
            return any(s["established"] and s["ike_sa_id"] not in before for s in sas)

        from suites.support.fallback import poll

        assert poll(rekeyed, 15.0), "the IKE rekey did not complete"
        fb.probe("P1")
        assert not fb.clear_probes(), "data in clear under the protect-all policy"
        assert fb.counter("acquires") <= 1, "IKE traffic triggered an ACQUIRE"
        if fb.local:
            assert [(p.packet.probe or b"").decode() for p in fb.protected_probes()] == ["P1"]
        else:
            assert isinstance(fb.observer, CaptureObserver)
            late = [ip for _, ip in fb.observer.wire if ip.proto == 17 and ip.dport in (500, 4500)]
            assert late, "the rekey's IKE messages were not seen as plain UDP"
