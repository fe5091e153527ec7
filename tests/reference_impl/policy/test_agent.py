"""Policy agent behaviour beyond the FB suite: inbound processing (§4), policy change (E11),
responder and default response rule (§4.5), SA lifecycle, the other timing profiles end to
end, the hold queue variants, packet parsing and the flow table."""

from __future__ import annotations

import struct

import pytest

from reference_impl.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    FailureReason,
    NegotiationFailed,
)
from reference_impl.policy import (
    CancelAcquire,
    CompileEnv,
    DeleteChildSa,
    PolicyAgent,
    SaState,
    Verdict,
)
from reference_impl.policy.audit import AuditLog
from reference_impl.policy.packet import OPAQUE, PacketMeta, build_ipv4_udp, parse_ip_packet
from reference_impl.retransmit import RetransmitSchedule
from reference_impl.sa import IpsecProtocol, TrafficSelector

from .sim import RTT, FakeDriver, I, PolicyKnobs, R, ScriptedIke, World, policy_text

REQ = "10.1.0.50"


def established(w: World, peer: str = R, t: float = 0.0) -> int:
    """Bring up an SA with ``peer`` (open path); returns the outbound SPI."""
    w.set_path(peer, "open")
    w.at(t, lambda: w.probe(peer))
    w.run_until(t + 1.0)
    assert w.agent.state_for(I, peer) is SaState.ESTABLISHED
    return w.agent.machines()[-1].out_spi


def udp(src: str, dst: str, sport: int = 7000, dport: int = 40000) -> bytes:
    return build_ipv4_udp(src, dst, sport, dport, b"payload")


# ------------------------------------------------------------------------------ inbound (§4)


def test_require_discards_clear_inbound_and_audits_it() -> None:
    w = World(policy_text())
    assert w.agent.inbound_clear(udp(R, I), 1.0) is Verdict.DISCARDED
    (rec,) = w.agent.audit.of_kind("clear_inbound_discarded")
    assert rec.get("reason") == "require" and rec.time == 1.0 and "10.1.0.10" in rec.selectors
    assert w.agent.counters["drops.clear_inbound"] == 1
    assert w.ike.acquires == []  # no SA is created from an inbound packet (RFC 4301 §5.2 3b)


def test_inbound_passthrough_accepts_and_the_reply_initiates() -> None:
    w = World(policy_text())
    w.set_path(REQ, "filtered")
    assert w.agent.inbound_clear(udp(REQ, I), 0.0) is Verdict.ACCEPTED
    w.pump()
    assert w.ike.acquires == []  # accepting creates no SA
    w.at(0.1, lambda: w.probe(REQ, sport=40000, dport=7000))  # our reply
    w.run_until(0.2)
    (acq,) = w.ike.acquires
    assert acq.rule == "everything" and acq.local == (I, 500)  # we are the initiator


def test_clear_grace_after_sa_install() -> None:
    w = World(policy_text(PolicyKnobs(require={"accept_clear_grace_s": 5})))
    established(w)
    t_est = w.agent.machines()[0].established_at
    assert w.agent.inbound_clear(udp(R, I, 1, 2), t_est + 4.9) is Verdict.ACCEPTED
    assert w.agent.inbound_clear(udp(R, I, 1, 3), t_est + 5.0) is Verdict.DISCARDED


def test_block_rule_discards_both_directions() -> None:
    text = policy_text().replace(
        "    - {name: require-r,",
        "    - {name: blocked, filter_list: to-r, filter_action: block}\n    - {name: require-r,",
    )
    text = text.replace(
        "  filter_actions:\n", "  filter_actions:\n    - {name: block, type: block}\n"
    )
    w = World(text)
    assert w.agent.outbound(udp(I, R), 0.0) is Verdict.DISCARDED
    assert w.agent.inbound_clear(udp(R, I), 0.0) is Verdict.DISCARDED
    assert w.agent.counters["drops.policy"] == 1 and w.agent.counters["drops.inbound_policy"] == 1
    assert {r.get("direction") for r in w.agent.audit.of_kind("discard")} == {"in", "out"}


def test_guarantee_encryption_refuses_integrity_only_esp() -> None:
    w = World(policy_text(PolicyKnobs(require={"guarantee_encryption": True})))
    pkt = udp(R, I)
    assert w.agent.inbound_protected(pkt, 0x99, 0.0, encrypted=False) is Verdict.DISCARDED
    assert w.agent.inbound_protected(pkt, 0x99, 0.0, encrypted=True) is Verdict.ACCEPTED
    assert w.agent.counters["drops.not_encrypted"] == 1


def test_unknown_spi_and_selector_mismatch_are_audited() -> None:
    w = World(policy_text())
    w.agent.report_unknown_spi(0xDEAD, R, I, 50, 1.0)
    w.agent.report_unknown_spi(0xDEAD, R, I, 50, 1.5)  # rate limited: counted, not recorded
    w.agent.report_unknown_spi(0xDEAD, R, I, 50, 2.5)
    recs = w.agent.audit.of_kind("unknown_spi")
    assert [r.time for r in recs] == [1.0, 2.5]
    assert recs[0].get("spi") == "0000dead" and recs[0].get("src") == R
    assert recs[1].get("suppressed") == 1
    assert w.agent.counters["drops.unknown_spi"] == 3
    w.agent.report_selector_mismatch(0x1234, "10.9.9.9 -> 10.1.0.1", 3.0)
    assert w.agent.audit.of_kind("selector_mismatch")[0].get("spi") == "00001234"


def test_soft_sa_idle_timer_counts_inbound_traffic() -> None:
    knobs = PolicyKnobs(request={"inbound_passthrough": False, "fallback": {"soft_sa_idle_s": 10}})
    w = World(policy_text(knobs))
    w.set_path(REQ, "filtered")
    w.at(0.0, lambda: w.probe(REQ))
    w.run_until(3.0)
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    for t in (8.0, 16.0):  # only inbound traffic keeps the soft SA alive
        w.at(t, lambda: w.agent.inbound_clear(udp(REQ, I), w.now))
    w.run_until(25.99)
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    w.run_until(26.0)
    assert w.agent.state_for(I, REQ) is SaState.NO_SA


# ---------------------------------------------------------------------- policy change (E11)


def test_policy_change_deletes_affected_sas() -> None:
    w = World(policy_text())
    spi = established(w)
    w.set_path(REQ, "filtered")
    w.at(2.0, lambda: w.probe(REQ))
    w.run_until(2.5)  # a second machine, ACQUIRING, with one held packet
    new = (
        policy_text()
        .replace("dst: 10.1.0.10", "dst: 10.1.0.99")
        .replace("allow_fallback: true", "allow_fallback: true, failure_holddown_s: 5")
    )
    w.agent.load_policy_text(new, 3.0, "v2.yaml")
    reqs = []
    while (r := w.agent.next_request()) is not None:
        reqs.append(r)
    deletes = [r for r in reqs if isinstance(r, DeleteChildSa)]
    cancels = [r for r in reqs if isinstance(r, CancelAcquire)]
    assert [d.outbound_spi for d in deletes] == [spi]
    assert len(cancels) == 1 and cancels[0].reason == "policy change"
    assert w.agent.machines() == []
    assert w.agent.counters["drops.policy_change"] == 1
    assert {r.get("action") for r in w.agent.audit.of_kind("policy_change")} == {"deleted"}


def test_policy_change_keep_sas_and_unaffected_machines() -> None:
    w = World(policy_text())
    established(w)
    # same selectors and parameters under another policy name: unaffected
    w.agent.load_policy_text(policy_text().replace("fallback-test", "renamed"), 2.0)
    assert w.agent.state_for(I, R) is SaState.ESTABLISHED
    assert w.agent.next_request() is None
    # R no longer covered, but keep_sas: the SA stays
    text = (
        policy_text()
        .replace("dst: 10.1.0.10", "dst: 10.1.0.99")
        .replace(
            "    timing_profile: reference\n",
            "    timing_profile: reference\n    on_policy_change: keep_sas\n",
        )
    )
    w.agent.load_policy_text(text, 3.0)
    assert [m.state for m in w.agent.machines()] == [SaState.ESTABLISHED]
    assert w.agent.next_request() is None
    assert w.agent.audit.of_kind("policy_change")[0].get("action") == "kept"


def test_policy_swap_is_atomic_for_classification() -> None:
    w = World(policy_text())
    before = w.agent.policy
    assert w.agent.outbound(udp(I, "10.9.9.9"), 0.0) is Verdict.HELD  # request-everything
    text = policy_text().replace(
        "filter_action: request-security", "filter_action: require-security"
    )
    after = w.agent.load_policy_text(text, 1.0)
    assert w.agent.policy is after and after is not before
    # the cached per-flow decision does not survive the swap
    assert [m.params.name for m in w.agent.machines()] == []  # affected machine removed


# ------------------------------------------------------------------- responder and DRR (§4.5)

DRR_POLICY = """
policy:
  name: drr
  default_response_rule:
    enabled: true
    security_methods: [{protocol: esp, encryption: aes128, integrity: sha1}]
    auth_methods: psk
  auth_method_sets: [{name: psk, methods: [{preshared_key: {secret_ref: k}}]}]
  filter_lists:
    - {name: fs, filters: [{src: me, dst: 10.5.0.0/16, proto: tcp, dst_port: 445}]}
    - {name: q, filters: [{src: me, dst: 10.66.0.0/16}]}
  filter_actions:
    - name: req
      type: negotiate
      security_methods: [{protocol: esp, encryption: aes256, integrity: sha256}]
    - {name: block, type: block}
  rules:
    - {name: fs, filter_list: fs, filter_action: req, auth_methods: psk}
    - {name: quarantine, filter_list: q, filter_action: block}
"""


def ts(net: str, proto: int = 0, lo: int = 0, hi: int = 65535) -> TrafficSelector:
    return TrafficSelector.from_network(net, proto, lo, hi)


def test_responder_uses_the_matching_rule_and_narrows() -> None:
    w = World(DRR_POLICY)
    pol = w.agent.responder_policy("10.5.0.7", [ts(f"{I}/32")], [ts("10.5.0.7/32", 6, 445, 445)], 0)
    assert pol is not None and pol.rule == "fs" and not pol.default_response_rule
    assert pol.security_methods[0].encryption == "aes256"
    # a wide proposal is narrowed to the rule (RFC 7296 §2.9)
    pol = w.agent.responder_policy("10.5.0.7", [ts("0.0.0.0/0")], [ts("0.0.0.0/0")], 0)
    assert pol is not None and pol.rule == "fs"
    assert str(pol.local) == f"{I}[6]" and pol.remote.start_port == 445


def test_responder_default_response_rule_and_dynamic_filters() -> None:
    w = World(DRR_POLICY)
    peer = "10.7.0.2"
    pol = w.agent.responder_policy(peer, [ts(f"{I}/32")], [ts(f"{peer}/32")], 0.0)
    assert pol is not None and pol.default_response_rule
    assert w.agent.outbound(udp(I, peer), 0.0) is Verdict.BYPASS  # default action before
    pair = ScriptedIke.make_pair(
        w.ike, None, b"P" * 8, local_ts=pol.local, remote_ts=pol.remote, local=I, peer=peer
    )
    w.driver.install(pair)
    w.agent.handle_event(ChildSaEstablished(pair), 0.1)
    assert w.agent.outbound(udp(I, peer), 0.2) is Verdict.PROTECTED  # dynamic filter
    assert w.agent.audit.of_kind("dynamic_filter_added")
    w.agent.handle_event(
        ChildSaDeleted(IpsecProtocol.ESP, pair.inbound.spi, pair.outbound.spi, "expired"), 0.3
    )
    assert w.agent.outbound(udp(I, peer), 0.4) is Verdict.BYPASS  # filter gone with the SA


def test_default_response_rule_sa_lost_in_the_driver() -> None:
    w = World(DRR_POLICY)
    peer = "10.7.0.2"
    pol = w.agent.responder_policy(peer, [ts(f"{I}/32")], [ts(f"{peer}/32")], 0.0)
    assert pol is not None
    pair = w.ike.make_pair(
        None, b"P" * 8, local_ts=pol.local, remote_ts=pol.remote, local=I, peer=peer
    )
    w.driver.install(pair)
    w.agent.handle_event(ChildSaEstablished(pair), 0.1)
    assert w.agent.outbound(udp(I, peer), 0.2) is Verdict.PROTECTED
    w.driver.remove(pair.outbound.spi)  # expired in the driver, no delete event
    assert w.agent.outbound(udp(I, peer), 0.3) is Verdict.BYPASS  # static policy again
    assert w.agent.machines() == []


def test_responder_rejects_discarded_and_unmatched_selectors() -> None:
    w = World(DRR_POLICY)
    assert w.agent.responder_policy("10.66.0.1", [ts(f"{I}/32")], [ts("10.66.0.1/32")], 0) is None
    no_drr = DRR_POLICY.replace("enabled: true", "enabled: false")
    w2 = World(no_drr)
    assert w2.agent.responder_policy("10.7.0.2", [ts(f"{I}/32")], [ts("10.7.0.2/32")], 0) is None
    reasons = [r.get("reason") for r in w.agent.audit.of_kind("responder_rejected")]
    assert reasons == ["discard rule"]
    assert w2.agent.audit.of_kind("responder_rejected")[0].get("reason") == "no matching rule"


def test_peer_initiated_sa_ends_failed_holddown() -> None:
    w = World(policy_text())
    w.set_path(R, "filtered")
    w.at(0.0, w.probe)
    w.run_until(70.0)
    assert w.agent.state_for(I, R) is SaState.FAILED
    pol = w.agent.responder_policy(R, [ts(f"{I}/32")], [ts(f"{R}/32")], 70.0)
    assert pol is not None  # a FAILED hold-down still answers the peer (E10)
    pair = w.ike.make_pair(
        None, b"Q" * 8, local_ts=pol.local, remote_ts=pol.remote, local=I, peer=R
    )
    w.driver.install(pair)
    w.agent.handle_event(ChildSaEstablished(pair), 70.1)
    assert w.agent.state_for(I, R) is SaState.ESTABLISHED
    assert w.agent.outbound(udp(I, R), 70.2) is Verdict.PROTECTED


# ------------------------------------------------------------------------------ SA lifecycle


def test_sa_vanishing_in_the_driver_reacquires() -> None:
    w = World(policy_text())
    spi = established(w)
    w.driver.remove(spi)  # expired in the driver
    w.set_path(R, "filtered")
    w.at(2.0, w.probe)
    w.run_until(2.0)
    assert w.agent.state_for(I, R) is SaState.ACQUIRING
    assert w.agent.audit.of_kind("sa_lost")[0].get("reason") == "driver has no usable outbound SA"
    assert len(w.ike.acquires) == 2


def test_rekey_switches_outbound_spi() -> None:
    w = World(policy_text())
    old = established(w)
    mach = w.agent.machines()[0]
    assert mach.pair is not None
    new_pair = w.ike.make_pair(w.ike.acquires[0], b"Z" * 8)
    w.driver.install(new_pair)
    w.agent.handle_event(ChildSaRekeyed(new_pair, mach.pair.inbound.spi, old), 5.0)
    w.agent.handle_event(
        ChildSaDeleted(IpsecProtocol.ESP, mach.pair.inbound.spi - 2, old, "rekeyed"), 5.0
    )
    assert w.agent.state_for(I, R) is SaState.ESTABLISHED
    w.agent.outbound(udp(I, R), 5.1)
    (tx,) = w.agent.packets_to_send()
    assert tx.protected and tx.spi == new_pair.outbound.spi


def test_negotiation_failed_for_an_unknown_attempt_is_only_audited() -> None:
    w = World(policy_text())
    w.agent.handle_event(
        NegotiationFailed(FailureReason.TS_UNACCEPTABLE, "responder", (R, 500), True), 1.0
    )
    (rec,) = w.agent.audit.of_kind("negotiation_failed")
    assert rec.get("category") == "selectors" and rec.get("state") is None
    assert w.agent.machines() == []


# ------------------------------------------------------------------ profiles end to end (§3.5)


def test_libreswan_oe_request_passthrough_then_shunt_for_15_min() -> None:
    w = World(policy_text(PolicyKnobs(profile="libreswan-oe")))
    w.set_path(REQ, "filtered")
    w.probes(0.0, 905.0, dst=REQ, interval_ms=500)
    w.run_until(905.0)
    times = w.ike_times(REQ)
    assert times[:3] == [0.0, 0.5, 1.0] and times[3] == 902.0  # no new attempt for 900 s
    (fb, *_rest) = w.agent.audit.of_kind("fallback")
    assert fb.time == 2.0  # = exchange failure, fallback first (tie rule)
    assert w.ike.cancelled[0].reason == "fallback (peer_silent)"
    assert len(w.clear(REQ)) == w.probe_seq  # passthrough: nothing lost
    (exp,) = w.agent.audit.of_kind("soft_sa_expired")
    assert exp.time == 902.0 and exp.get("reason") == "max_lifetime"


def test_libreswan_oe_require_fails_at_2s_and_holds_900s() -> None:
    w = World(policy_text(PolicyKnobs(profile="libreswan-oe")))
    w.set_path(R, "filtered")
    w.probes(0.0, 903.0, interval_ms=1000)
    w.run_until(903.0)
    assert w.ike_times() == [0.0, 0.5, 1.0, 902.0, 902.5, 903.0]
    assert w.agent.audit.of_kind("failed")[0].time == 2.0
    assert w.agent.counters["drops.negotiating"] == 3  # probes at 0, 1 and 902 s: drop shunt
    assert w.agent.counters["drops.holddown"] == 900  # probes at 2 .. 901 s
    assert w.clear(R) == []


def test_strongswan_require_schedule_and_immediate_reacquire() -> None:
    w = World(policy_text(PolicyKnobs(profile="strongswan")))
    w.set_path(R, "filtered")
    w.probes(0.0, 170.0, interval_ms=1000)
    w.run_until(170.0)
    expected = RetransmitSchedule.exponential(4.0, 1.8, 5).send_times()
    times = w.ike_times()
    assert times[:6] == list(expected)
    assert [round(t, 2) for t in times[:6]] == [0, 4, 11.2, 24.16, 47.49, 89.48]
    failed = w.agent.audit.of_kind("failed")[0]
    assert failed.time == pytest.approx(165.06, abs=0.01)
    assert times[6] == 166.0  # hold-down 0: the next probe re-acquires
    assert w.clear(R) == [] and w.agent.counters["drops.negotiating"] > 100


def test_continue_ike_after_fallback_upgrades_and_survives_failure() -> None:
    w = World(policy_text(PolicyKnobs(profile="windows-nd")))
    w.set_path(REQ, lambda port, t: "filtered" if t < 5.0 else "open")
    w.probes(0.0, 10.0, dst=REQ)
    w.run_until(7.9)
    assert w.agent.audit.of_kind("fallback")[0].time == 0.0  # parallel (after_s 0)
    assert w.ike.cancelled == []  # IKE continues
    assert w.ike_times(REQ) == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    w.run_until(10.0)  # the 8.0 retransmission is answered: upgrade
    assert w.agent.state_for(I, REQ) is SaState.ESTABLISHED
    (est,) = w.agent.audit.of_kind("established")
    assert est.time == 8.0 + 2 * RTT and est.get("from_state") == "SOFT"
    assert all(c.t < est.time for c in w.clear(REQ)) and w.esp(REQ)
    # a failure verdict while SOFT changes nothing
    w2 = World(policy_text(PolicyKnobs(profile="windows-nd")))
    w2.set_path(REQ, "filtered")
    w2.probes(0.0, 70.0, dst=REQ, interval_ms=1000)
    w2.run_until(70.0)
    assert w2.agent.state_for(I, REQ) is SaState.SOFT
    assert w2.agent.audit.of_kind("negotiation_failed")[0].get("state") == "SOFT"
    assert len(w2.clear(REQ)) == w2.probe_seq


def test_windows_legacy_equals_reference_timing() -> None:
    for profile in ("reference", "windows-legacy"):
        w = World(policy_text(PolicyKnobs(profile=profile)))
        w.set_path(REQ, "filtered")
        w.at(0.0, lambda w=w: w.probe(REQ))
        w.run_until(5.0)
        assert w.ike_times(REQ) == [0.0, 0.5, 1.0, 2.0]
        assert w.agent.audit.of_kind("fallback")[0].time == 3.0


def test_hold_queue_keep_first_longer_queue() -> None:
    knobs = PolicyKnobs(request={"hold_queue": {"length": 3, "policy": "keep_first"}})
    w = World(policy_text(knobs))
    w.set_path(REQ, "filtered")
    w.probes(0.0, 1.0, dst=REQ)
    w.run_until(3.0)
    assert [c.seq for c in w.clear(REQ)] == [1, 2, 3]
    assert w.agent.counters["drops.hold_overflow"] == 7


# ----------------------------------------------------------------------- packets and flows


def test_parse_ipv4_udp_tcp_icmp_and_fragments() -> None:
    m = parse_ip_packet(build_ipv4_udp(I, R, 1234, 53, b"q"))
    assert m == PacketMeta.make(I, R, 17, 1234, 53)
    frag = bytearray(build_ipv4_udp(I, R, 1, 2, b"x" * 16))
    struct.pack_into("!H", frag, 6, 185)  # fragment offset 185*8
    assert parse_ip_packet(bytes(frag)) == PacketMeta(
        4, *PacketMeta.make(I, R, 17)[1:3], 17, OPAQUE, OPAQUE
    )
    tcp = bytearray(build_ipv4_udp(I, R, 1, 2, bytes(20)))
    tcp[9] = 6
    tcp[20 + 13] = 0x12
    got = parse_ip_packet(bytes(tcp))
    assert got is not None and got.proto == 6 and got.tcp_flags == 0x12
    icmp = bytearray(build_ipv4_udp(I, R, 0, 0, b""))
    icmp[9] = 1
    icmp[20], icmp[21] = 8, 0
    got = parse_ip_packet(bytes(icmp))
    assert got is not None and got.sport == got.dport == 0x0800
    assert parse_ip_packet(b"") is None and parse_ip_packet(b"\x45" + bytes(5)) is None


def test_parse_ipv4_header_fields_at_their_rfc791_offsets() -> None:
    # RFC 791 §3.1: TOS 0xb8, total length 32, identification 0xabcd, DF set (not a
    # fragment), TTL 1, protocol 17, checksum 0xffff: every byte around the fields we read
    # is non-zero, so a wrong offset shows.
    hdr = bytes.fromhex("45b80020abcd40000111ffff0a0100010a01000a")
    udp_hdr = bytes.fromhex("9c400fa0000c0000") + b"ping"
    m = parse_ip_packet(hdr + udp_hdr)
    assert m == PacketMeta.make(I, R, 17, 40000, 4000)
    more_frags = hdr[:6] + bytes.fromhex("2000") + hdr[8:]  # MF set, offset 0: first fragment
    assert parse_ip_packet(more_frags + udp_hdr) == m
    later = hdr[:6] + bytes.fromhex("0005") + hdr[8:]  # offset 5: no transport header
    got = parse_ip_packet(later + udp_hdr)
    assert got is not None and got.sport == OPAQUE and got.proto == 17


def test_parse_ipv6_with_extension_header() -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    hbh = bytes([17, 0]) + bytes(6)  # hop-by-hop, next header UDP
    payload = struct.pack("!HHHH", 5000, 500, 8, 0)
    pkt = struct.pack("!IHBB", 6 << 28, len(hbh) + 8, 0, 64) + src + dst + hbh + payload
    m = parse_ip_packet(pkt)
    assert m == PacketMeta.make("2001:db8::1", "2001:db8::2", 17, 5000, 500)


def test_malformed_packets_are_counted_drops() -> None:
    w = World(policy_text())
    assert w.agent.outbound(b"\x99garbage", 0.0) is Verdict.DISCARDED
    assert w.agent.inbound_clear(b"", 0.0) is Verdict.DISCARDED
    assert w.agent.counters["drops.malformed"] == 2


def test_ipv6_policy_and_icmpv6() -> None:
    text = """
policy:
  name: v6
  default_response_rule: {enabled: false}
  auth_method_sets: [{name: psk, methods: [{preshared_key: {secret_ref: k}}]}]
  filter_lists:
    - {name: icmp, filters: [{src: me, dst: any, proto: icmp}]}
    - {name: all, filters: [{src: me, dst: '2001:db8::/32'}]}
  filter_actions:
    - {name: permit, type: permit}
    - name: req
      type: negotiate
      security_methods: [{protocol: esp, encryption: aes128, integrity: sha1}]
  rules:
    - {name: icmp, filter_list: icmp, filter_action: permit}
    - {name: all, filter_list: all, filter_action: req, auth_methods: psk}
"""
    agent = PolicyAgent(FakeDriver(), CompileEnv(local_addresses=("2001:db8::1", I)))
    agent.load_policy_text(text, 0.0)
    ping6 = PacketMeta.icmp("2001:db8::1", "2001:db8::2", 128)
    assert ping6.proto == 58
    assert agent.outbound(b"x", 0.0, ping6) is Verdict.BYPASS
    data = PacketMeta.make("2001:db8::1", "2001:db8::2", 17, 1, 2)
    assert agent.outbound(b"x", 0.0, data) is Verdict.HELD
    acq = agent.next_request()
    assert acq is not None and acq.peer == ("2001:db8::2", 500)  # type: ignore[union-attr]


def test_flow_table_is_bounded_and_forgets_secure_flows_last() -> None:
    driver = FakeDriver()
    agent = PolicyAgent(driver, CompileEnv(local_addresses=(I,)), flow_capacity=4)
    agent.load_policy_text(policy_text(), 0.0)
    agent.inbound_protected(udp(R, I, 1, 1), 1, 0.0)  # one secure flow
    for port in range(2, 12):
        agent.inbound_clear(udp(REQ, I, port, port), 0.0)
    assert agent.counters["flows.evicted"] >= 7
    assert agent.flow_secure(I, R, 17, 1, 1)


def test_audit_log_is_bounded() -> None:
    log = AuditLog(capacity=3)
    for i in range(5):
        log.record(float(i), "x", "sel", n=i)
    assert len(log) == 3 and log.dropped == 2 and log.total == 5
    assert [r.get("n") for r in log] == [2, 3, 4]
    assert log.to_json()[0] == {"time": 2.0, "kind": "x", "selectors": "sel", "n": 2}


def test_status_snapshot_is_json_ready() -> None:
    import json

    w = World(policy_text())
    w.set_path(R, "filtered")
    w.at(0.0, w.probe)
    w.run_until(0.1)
    status = w.agent.status()
    json.dumps(status)
    assert status["policy"] == "fallback-test"
    (m,) = status["machines"]  # type: ignore[misc]
    assert m["state"] == "ACQUIRING" and m["held"] == 1


# ------------------------------------------------------------------------------- E7 details


def _icmp_world(**request: object) -> tuple[World, bytes]:
    knobs = PolicyKnobs(request={"fallback": {"icmp_fast_fallback": True}, **request})
    w = World(policy_text(knobs))
    w.set_path(REQ, "filtered")
    w.at(0.0, lambda: w.probe(REQ))
    w.run_until(0.0)
    (att,) = w.ike.attempts.values()
    return w, att.spi


def test_icmp_hint_needs_port_unreachable_and_our_ports() -> None:
    from reference_impl.policy import IcmpHint

    w, spi = _icmp_world()
    host_unreach = IcmpHint((REQ, 500), 500, 3, 1, spi + bytes(20))
    wrong_port = IcmpHint((REQ, 4500), 500, 3, 3, spi + bytes(20))
    wrong_peer = IcmpHint(("10.1.0.51", 500), 500, 3, 3, spi + bytes(20))
    for hint in (host_unreach, wrong_port, wrong_peer):
        w.agent.handle_icmp_error(hint, 0.1)
    assert w.agent.state_for(I, REQ) is SaState.ACQUIRING
    assert w.agent.counters.icmp(3, 1) == 1 and w.agent.counters.icmp(3, 3) == 2
    w.agent.handle_icmp_error(IcmpHint((REQ, 500), 500, 3, 3, spi + bytes(20)), 0.2)
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    (fb,) = w.agent.audit.of_kind("fallback")
    assert fb.get("reason") == "icmp_hint" and fb.time == 0.2


def test_icmp_hint_after_a_reply_is_ignored() -> None:
    from reference_impl.events import PeerReplied
    from reference_impl.policy import IcmpHint

    w, spi = _icmp_world()
    (acq,) = w.ike.acquires
    w.agent.handle_event(PeerReplied(spi + bytes(8), (REQ, 500), acq.acquire_id), 0.05)
    assert w.agent.state_for(I, REQ) is SaState.NEGOTIATING
    w.agent.handle_icmp_error(IcmpHint((REQ, 500), 500, 3, 3, spi + bytes(20)), 0.1)
    assert w.agent.state_for(I, REQ) is SaState.NEGOTIATING  # E4 ruled fallback out
    w.agent.handle_timer(10.0)
    assert w.agent.state_for(I, REQ) is SaState.NEGOTIATING  # and the 3 s timer is gone


def test_icmp_hint_on_port_4500_skips_the_non_esp_marker() -> None:
    from reference_impl.policy import IcmpHint

    hint = IcmpHint(("192.0.2.9", 4500), 4500, 3, 3, bytes(4) + b"ABCDEFGH" + bytes(20))
    assert hint.initiator_spi == b"ABCDEFGH"
    assert IcmpHint(("192.0.2.9", 500), 500, 3, 3, b"short").initiator_spi == b""
    assert IcmpHint(("2001:db8::9", 500), 500, 1, 4, b"").port_unreachable
