"""Suite "fallback when UDP 500 is closed" (policy-spec §5.2), our node's side, on a virtual clock.

Each test is named after its assertion ID. The agent runs with a fake driver and a scripted
IKE endpoint that retransmits on the shared schedule (``reference_impl.retransmit``); times
are exact. Where an assertion is about the wire format of IKE or ESP (non-ESP marker, UDP
encapsulation), the test checks what the agent decides (ports in the ACQUIRE) and says so.
"""

from __future__ import annotations

import itertools

import pytest

from reference_impl.events import ChildSaDeleted, ChildSaEstablished
from reference_impl.policy import PolicyValidationError, SaState, Verdict
from reference_impl.policy.packet import PacketMeta, build_ipv4_udp
from reference_impl.sa import IpsecProtocol, TrafficSelector

from .sim import RTT, I, PolicyKnobs, R, World, policy_text

REF_TIMES = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def world(
    knobs: PolicyKnobs | None = None, mode: str = "filtered", peer: str = R, **kw: object
) -> World:
    w = World(policy_text(knobs))
    w.set_path(peer, mode, **kw)
    return w


REQ = "10.1.0.50"  # a request-rule target (matches only "everything")


def records(w: World, kind: str) -> list:
    return [r for r in w.agent.audit if r.kind == kind]


def assert_audited(rec: object) -> None:
    """§5.2 closing note: every record carries a timestamp and selectors."""
    assert isinstance(rec.time, float)  # type: ignore[attr-defined]
    assert rec.selectors  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- require rule


def test_FB_01_one_acquire_and_first_ike_message_at_t0() -> None:
    w = world()
    w.at(0.0, w.probe)
    w.run_until(0.1)
    assert len(w.ike.acquires) == 1
    acq = w.ike.acquires[0]
    assert acq.peer == (R, 500) and acq.local == (I, 500)
    assert acq.rule == "require-r" and acq.ike_version == 1
    ike = w.ike_packets()
    assert [p.t for p in ike] == [0.0]
    assert ike[0].dport == 500 and ike[0].sport == 500
    assert w.agent.state_for(I, R) is SaState.ACQUIRING
    (rec,) = records(w, "acquire")
    assert rec.time == 0.0 and rec.get("rule") == "require-r"
    assert_audited(rec)


def test_FB_02_probes_do_not_multiply_acquires_or_ike_packets() -> None:
    w = world()
    w.probes(0.0, 2.0)  # 20 probes
    w.run_until(1.999)
    assert w.probe_seq == 20
    assert len(w.ike.acquires) == 1
    assert w.agent.counters["acquires"] == 1
    assert w.ike_times() == [0.0, 0.5, 1.0]  # the schedule, not the probe count


def test_FB_03_schedule_failure_at_64_and_failed_state() -> None:
    w = world()
    w.at(0.0, w.probe)
    w.run_until(63.999)
    assert w.agent.state_for(I, R) is SaState.ACQUIRING
    w.run_until(64.0)
    pkts = w.ike_packets()
    assert [p.t for p in pkts] == REF_TIMES
    assert len({p.data for p in pkts}) == 1  # byte-identical retransmissions
    assert w.agent.state_for(I, R) is SaState.FAILED
    (fail,) = records(w, "negotiation_failed")
    assert fail.time == 64.0 and fail.get("reason") == "peer_silent"
    assert fail.get("peer_replied") is False
    assert_audited(fail)


def test_FB_04_icmp_changes_nothing_but_is_counted_as_unauthenticated() -> None:
    w = world(mode="closed-icmp")
    w.at(0.0, w.probe)
    w.run_until(63.999)
    assert w.agent.state_for(I, R) is SaState.ACQUIRING  # no state change before 64
    w.run_until(64.0)
    assert w.ike_times() == REF_TIMES  # identical timing and count to FB-03
    assert w.agent.counters.icmp(3, 3) >= 1
    assert w.agent.counters.icmp(3, 3) == 8
    icmps = records(w, "icmp_error")
    assert icmps and all(r.get("authenticated") is False for r in icmps)
    assert all(r.get("used_for_fallback") is False for r in icmps)
    assert w.agent.state_for(I, R) is SaState.FAILED


@pytest.mark.parametrize("mode", ["filtered", "closed-icmp"])
def test_FB_05_no_clear_text_of_the_protected_selector(mode: str) -> None:
    w = world(mode=mode)
    w.probes(0.0, 100.0)
    w.at(5.0, lambda: w.probe(R, sport=40001, dport=445, proto=6))  # a TCP connect too
    w.run_until(100.0)
    assert w.clear(R) == []
    assert w.esp(R) == []
    assert w.agent.counters["drops.holddown"] > 0


def test_FB_06_hold_queue_keep_last_and_discard_at_failure() -> None:
    w = world()
    w.probes(0.0, 2.0)  # P1..P20 while ACQUIRING
    w.run_until(63.999)
    assert w.agent.counters["drops.hold_overflow"] == 19
    assert w.agent.counters["drops.failed"] == 0
    w.run_until(64.0)
    assert w.agent.counters["drops.hold_overflow"] == 19
    assert w.agent.counters["drops.failed"] == 1
    assert w.clear(R) == [] and w.esp(R) == []  # nothing released
    (failed,) = records(w, "failed")
    assert failed.get("discarded") == 1


def test_FB_07_holddown_30s_then_new_attempt_with_new_cookie() -> None:
    w = world()
    w.probes(0.0, 100.0)
    w.run_until(100.0)
    times = w.ike_times()
    assert [t for t in times if 64.0 <= t < 94.0] == []
    assert times[:8] == REF_TIMES
    assert times[8] == 94.0  # the probe at t = 94.0 starts a new attempt
    assert len(w.ike.acquires) == 2 and w.ike.acquires[1].time == 94.0
    first, second = w.ike_packets()[0], w.ike_packets()[8]
    assert first.spi != second.spi  # new initiator cookie
    assert w.agent.counters["drops.holddown"] == 300  # probes 64.0 .. 93.9 discarded
    (exp,) = records(w, "holddown_expired")
    assert exp.time == 94.0


def test_FB_08_local_icmp_on_discard() -> None:
    knobs = PolicyKnobs(require={"send_icmp_on_discard": True})
    # (a) peer never contacted: type 3 code 1 at failure
    w = world(knobs)
    w.at(0.0, w.probe)
    w.probes(64.0, 70.0)
    w.run_until(70.0)
    assert w.local_icmp[0].time == 64.0
    assert (w.local_icmp[0].icmp_type, w.local_icmp[0].icmp_code) == (3, 1)
    # <= 1 ICMP per second per destination while probes (10/s) are discarded
    times = [i.time for i in w.local_icmp]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert 5 <= len(times) <= 7
    # (b) R answers the first request with NO_PROPOSAL_CHOSEN: type 3 code 13
    w = world(knobs, mode="open", responder="no-proposal")
    w.at(0.0, w.probe)
    w.run_until(1.0)
    assert w.agent.state_for(I, R) is SaState.FAILED
    assert [(i.icmp_type, i.icmp_code) for i in w.local_icmp] == [(3, 13)]
    assert w.local_icmp[0].time == RTT


# ----------------------------------------------------------------------------- request rule


def test_FB_09_peer_silent_fallback_at_3s() -> None:
    w = world(peer=REQ)
    w.probes(0.0, 100.0, dst=REQ)
    w.run_until(2.999)
    assert w.agent.state_for(I, REQ) is SaState.ACQUIRING
    w.run_until(100.0)
    assert w.ike_times(REQ) == [0.0, 0.5, 1.0, 2.0]
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    (fb,) = records(w, "fallback")
    assert fb.time == 3.0 and fb.get("reason") == "peer_silent"
    assert_audited(fb)
    assert [c.reason for c in w.ike.cancelled] == ["fallback (peer_silent)"]
    assert w.clear(REQ)[0].t == 3.0


def test_FB_10_icmp_does_not_hasten_fallback_by_default() -> None:
    w = world(mode="closed-icmp", peer=REQ)
    w.probes(0.0, 10.0, dst=REQ)
    w.run_until(10.0)
    assert w.agent.counters.icmp(3, 3) == 4
    (fb,) = records(w, "fallback")
    assert fb.time == 3.0 and fb.get("reason") == "peer_silent"
    assert w.ike_times(REQ) == [0.0, 0.5, 1.0, 2.0]


def test_FB_11_icmp_fast_fallback_uses_only_icmp_quoting_our_cookie() -> None:
    knobs = PolicyKnobs(request={"fallback": {"icmp_fast_fallback": True}})
    w = world(knobs, mode="closed-icmp", peer=REQ)
    w.at(0.0, lambda: w.probe(REQ))
    w.run_until(10.0)
    (fb,) = records(w, "fallback")
    (icmp,) = records(w, "icmp_error")
    assert fb.get("reason") == "icmp_hint"
    assert fb.time == icmp.time and fb.time - 0.0 <= 0.1
    assert w.ike_times(REQ) == [0.0]
    # a forged ICMP quoting a different cookie is ignored: fallback still at 3.0
    w = world(knobs, mode="closed-icmp", peer=REQ, forged_icmp=True)
    w.at(0.0, lambda: w.probe(REQ))
    w.run_until(10.0)
    (fb,) = records(w, "fallback")
    assert fb.time == 3.0 and fb.get("reason") == "peer_silent"
    assert all(r.get("used_for_fallback") is False for r in records(w, "icmp_error"))


def test_FB_12_icmp_fast_fallback_on_require_rule_is_rejected() -> None:
    w = world()
    before = w.agent.policy
    bad = policy_text(PolicyKnobs(require={"fallback": {"icmp_fast_fallback": True}}))
    with pytest.raises(PolicyValidationError) as exc:
        w.agent.load_policy_text(bad, 1.0, "bad.yaml")
    (issue,) = exc.value.issues
    assert issue.rule == "V8" and issue.field == "icmp_fast_fallback"
    assert issue.file == "bad.yaml" and issue.line > 0
    assert w.agent.policy is before  # the previous policy stays in force
    w.at(2.0, w.probe)
    w.run_until(2.1)
    assert w.ike.acquires[0].rule == "require-r"
    (rej,) = records(w, "policy_rejected")
    assert rej.get("rules") == ["V8"]


def test_FB_13_windows_spu_fallback_at_half_second_before_retransmit() -> None:
    w = world(PolicyKnobs(profile="windows-spu"), peer=REQ)
    w.probes(0.0, 5.0, dst=REQ)
    w.run_until(5.0)
    assert w.ike_times(REQ) == [0.0]  # tie rule: fallback before the 0.5 s retransmission
    (fb,) = records(w, "fallback")
    assert fb.time == 0.5


def test_FB_14_held_last_packet_leaves_first_then_new_probes() -> None:
    w = world(peer=REQ)
    w.probes(0.0, 3.0, dst=REQ)  # P1..P30
    w.probes(3.0, 4.0, dst=REQ)  # P31..P40
    w.run_until(4.0)
    clear = w.clear(REQ)
    assert clear[0].t == 3.0 and clear[0].seq == 30
    assert [c.seq for c in clear] == [30, *range(31, 41)]
    assert w.agent.counters["drops.hold_overflow"] == 29


@pytest.mark.parametrize("profile", ["windows-nd", "libreswan-oe"])
def test_FB_15_pass_shunt_sends_clear_with_ike_packet_one(profile: str) -> None:
    w = world(PolicyKnobs(profile=profile), peer=REQ)
    w.probes(0.0, 5.0, dst=REQ)
    w.run_until(5.0)
    first_ike = w.ike_packets(REQ)[0]
    clear = w.clear(REQ)
    assert first_ike.t == 0.0 and clear[0].t == 0.0 and clear[0].seq == 1
    assert [c.seq for c in clear] == list(range(1, 51))  # no probe lost
    assert w.agent.counters["drops.hold_overflow"] == 0


def test_FB_16_drop_shunt() -> None:
    w = world(PolicyKnobs(request={"negotiation_shunt": "drop"}), peer=REQ)
    w.probes(0.0, 5.0, dst=REQ)
    w.run_until(5.0)
    clear = w.clear(REQ)
    assert all(c.seq is not None and c.seq > 30 for c in clear)
    assert next(c.t for c in clear) == 3.0
    assert w.agent.counters["drops.negotiating"] == 30


def test_FB_17_peer_replied_then_auth_failed_no_fallback() -> None:
    w = world(mode="open", responder="auth-fail", peer=REQ)
    w.probes(0.0, 10.0, dst=REQ)
    w.run_until(10.0)
    assert records(w, "fallback") == []
    assert w.agent.state_for(I, REQ) is SaState.FAILED
    assert w.clear(REQ) == [] and w.esp(REQ) == []
    (nf,) = records(w, "negotiation_failed")
    assert nf.get("category") == "auth" and nf.time == 2 * RTT
    (pr,) = records(w, "peer_replied")
    assert pr.time == RTT


def test_FB_18_spu_falls_back_on_negotiation_failure() -> None:
    w = world(PolicyKnobs(profile="windows-spu"), mode="open", responder="auth-fail", peer=REQ)
    w.at(0.0, lambda: w.probe(REQ))
    w.run_until(1.0)
    (fb,) = records(w, "fallback")
    assert fb.get("reason") == "negotiation_failed" and fb.time == 2 * RTT
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    assert w.clear(REQ)[0].t == 2 * RTT  # the held probe leaves in clear


def test_FB_19_soft_sa_is_bidirectional_and_per_host_pair() -> None:
    for passthrough in (True, False):
        knobs = PolicyKnobs(request={"inbound_passthrough": passthrough})
        w = world(knobs, peer=REQ)
        w.at(0.0, lambda w=w: w.probe(REQ))
        w.run_until(3.0)
        assert w.agent.state_for(I, REQ) is SaState.SOFT
        inbound = build_ipv4_udp(REQ, I, 7000, 40000, b"reply")
        assert w.agent.inbound_clear(inbound, 3.1) is Verdict.ACCEPTED
        # a second peer on the same rule triggers its own ACQUIRE
        other = "10.1.0.51"
        w.at(3.2, lambda w=w, other=other: w.probe(other))
        w.run_until(3.3)
        assert len(w.ike.acquires) == 2 and w.ike.acquires[1].peer == (other, 500)
        assert w.agent.state_for(I, other) is SaState.ACQUIRING
    # without passthrough, a peer we did not fall back to is refused in clear
    assert w.agent.inbound_clear(build_ipv4_udp("10.1.0.52", I, 1, 2, b"x"), 3.4) is (
        Verdict.DISCARDED
    )


def test_FB_20_soft_sa_idle_expiry_then_fresh_acquire() -> None:
    knobs = PolicyKnobs(request={"fallback": {"soft_sa_idle_s": 10}})
    w = world(knobs, peer=REQ)
    w.probes(0.0, 5.0, dst=REQ)  # last probe at 4.9
    w.run_until(14.89)
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    w.run_until(14.9)
    assert w.agent.state_for(I, REQ) is SaState.NO_SA
    (exp,) = records(w, "soft_sa_expired")
    assert exp.time == 14.9 and exp.get("reason") == "idle"
    w.at(20.0, lambda: w.probe(REQ))
    w.run_until(25.0)
    assert w.ike_times(REQ) == [0.0, 0.5, 1.0, 2.0, 20.0, 20.5, 21.0, 22.0]
    assert len(w.ike.acquires) == 2


def test_FB_21_soft_sa_max_lifetime_despite_traffic() -> None:
    knobs = PolicyKnobs(request={"fallback": {"soft_sa_max_lifetime_s": 30}})
    w = world(knobs, peer=REQ)
    w.probes(0.0, 40.0, dst=REQ)
    w.run_until(40.0)
    (exp,) = records(w, "soft_sa_expired")
    assert exp.time == 33.0 and exp.get("reason") == "max_lifetime"
    assert w.ike.acquires[1].time == 33.0  # the probe at 33.0 re-acquires


def test_FB_22_require_recovers_after_holddown() -> None:
    w = World(policy_text())
    w.set_path(R, lambda port, t: "filtered" if t < 70.0 else "open")
    w.probes(0.0, 100.0)
    w.run_until(100.0)
    assert w.ike_times()[8:10] == [94.0, 94.0 + RTT]  # second attempt succeeds
    (est,) = records(w, "established")
    assert est.time == 94.0 + 2 * RTT
    esp = w.esp(R)
    assert esp[0].t == est.time and esp[0].seq == 941  # the held probe, protected
    assert all(e.kind == "esp" for e in w.wire if e.kind != "ike" and e.t > est.time)
    assert w.clear(R) == []  # still zero clear probes overall


def test_FB_23_no_silent_upgrade_until_soft_sa_expiry() -> None:
    w = World(policy_text())
    w.set_path(REQ, lambda port, t: "filtered" if t < 10.0 else "open")
    w.probes(0.0, 910.0, dst=REQ)
    w.run_until(910.0)
    assert w.ike_times(REQ)[:4] == [0.0, 0.5, 1.0, 2.0]
    assert [t for t in w.ike_times(REQ) if 2.0 < t < 903.0] == []  # no IKE from I meanwhile
    (exp,) = records(w, "soft_sa_expired")
    assert exp.time == 903.0 and exp.get("reason") == "max_lifetime"
    (est,) = records(w, "established")
    assert est.time == 903.0 + 2 * RTT
    assert max(c.t for c in w.clear(REQ)) < 903.0
    assert w.esp(REQ)[0].t == est.time
    assert all(e.t >= est.time for e in w.esp(REQ))


def test_FB_24_peer_initiated_upgrade_removes_soft_sa() -> None:
    w = World(policy_text())
    w.set_path(REQ, lambda port, t: "filtered" if t < 10.0 else "open")
    w.probes(0.0, 20.0, dst=REQ)
    answered: list[float] = []

    def peer_initiates() -> None:
        # R's IKE request reaches I at t = 12 while SOFT; IKE asks the agent what to accept.
        lts = TrafficSelector.from_network(f"{I}/32")
        rts = TrafficSelector.from_network(f"{REQ}/32")
        pol = w.agent.responder_policy(REQ, [lts], [rts], w.now)
        assert pol is not None and pol.rule == "everything"
        answered.append(w.now)
        pair = w.ike.make_pair(
            None, b"R" * 8, local_ts=pol.local, remote_ts=pol.remote, local=I, peer=REQ
        )
        w.at(w.now + RTT, lambda: w.ike.events.append(ChildSaEstablished(pair)))

    w.at(12.0, peer_initiates)
    w.run_until(12.0)
    assert w.agent.state_for(I, REQ) is SaState.SOFT
    w.run_until(20.0)
    assert answered == [12.0]  # answered while SOFT, within one RTT
    (est,) = records(w, "established")
    assert est.time == 12.0 + RTT and est.get("soft_sa_removed") is True
    assert w.agent.state_for(I, REQ) is SaState.ESTABLISHED
    assert all(e.t > est.time for e in w.esp(REQ))
    assert all(c.t < est.time for c in w.clear(REQ))
    assert w.esp(REQ) and w.esp(REQ)[0].t == 12.1
    # inbound ESP marks the flow secure; a clear packet injected on it is discarded + audited
    reply = build_ipv4_udp(REQ, I, 7000, 40000, b"esp-reply")
    assert w.agent.inbound_protected(reply, 0x1002, 20.1) is Verdict.ACCEPTED
    assert w.agent.inbound_clear(reply, 20.2) is Verdict.DISCARDED
    (disc,) = records(w, "clear_inbound_discarded")
    assert disc.get("reason") == "flow_secure" and disc.time == 20.2
    assert_audited(disc)


def test_FB_25_never_downgrade_a_secure_flow() -> None:
    w = World(policy_text())
    w.set_path(REQ, lambda port, t: "open" if t < 5.0 else "filtered")
    tcp_old = {"sport": 50000, "dport": 80, "proto": 6}
    tcp_new = {"sport": 50001, "dport": 80, "proto": 6}
    w.probes(0.0, 20.0, dst=REQ, **tcp_old)
    w.run_until(5.0)
    assert w.agent.state_for(I, REQ, 6, 50000, 80) is SaState.ESTABLISHED
    assert w.agent.flow_secure(I, REQ, 6, 50000, 80)
    (spi,) = w.driver.sas
    pair = w.driver.sas[spi]

    def vanish() -> None:  # R's IKE/ESP vanish: DPD deletes the SA
        w.driver.remove(spi)
        w.agent.handle_event(ChildSaDeleted(IpsecProtocol.ESP, pair.inbound.spi, spi, "dpd"), w.now)

    w.at(5.95, vanish)
    w.probes(10.0, 20.0, dst=REQ, **tcp_new)
    w.run_until(20.0)
    old_clear = [c for c in w.clear(REQ) if c.sport == 50000]
    assert old_clear == []  # the old flow never leaves in clear
    new_clear = [c for c in w.clear(REQ) if c.sport == 50001]
    (fb,) = records(w, "fallback")
    assert fb.time == 9.0  # re-acquire at 6.0 (first probe after the loss), fallback at 9.0
    assert new_clear and new_clear[0].t == 10.0
    assert w.agent.counters["drops.never_downgrade"] > 0


@pytest.mark.parametrize("version", ["ikev1", "ikev2"])
def test_FB_26_port_4500_open_is_not_used_for_the_first_message(version: str) -> None:
    for peer, target in ((R, "require"), (REQ, "request")):
        w = World(policy_text(PolicyKnobs(ike_version=version)))
        w.set_path(peer, lambda port, t: "open" if port == 4500 else "filtered")
        w.probes(0.0, 70.0, dst=peer)
        w.run_until(70.0)
        assert all(p.dport == 500 for p in w.ike_packets(peer))
        assert w.ike.acquires[0].peer == (peer, 500)
        if target == "require":
            assert w.ike_times(peer) == REF_TIMES
            assert w.agent.state_for(I, peer) is SaState.FAILED
        else:
            assert w.ike_times(peer) == [0.0, 0.5, 1.0, 2.0]
            assert records(w, "fallback")[0].time == 3.0


def test_FB_27_ikev2_starts_on_4500_when_configured() -> None:
    # The agent's part: the ACQUIRE names R:4500 (§3.6 N2). The 4-octet non-ESP marker and
    # ESP-in-UDP are IKE's and the driver's (covered by their suites).
    w = World(policy_text(PolicyKnobs(ike_version="ikev2", remote_port=4500)))
    w.set_path(R, lambda port, t: "open" if port == 4500 else "filtered")
    w.probes(0.0, 2.0)
    w.run_until(2.0)
    assert w.ike.acquires[0].peer == (R, 4500) and w.ike.acquires[0].ike_version == 2
    pkts = w.ike_packets()
    assert pkts and all(p.dport == 4500 for p in pkts)
    assert pkts[0].data[:4] == b"\0\0\0\0"
    assert w.agent.state_for(I, R) is SaState.ESTABLISHED
    assert w.esp(R)


def test_FB_27_ikev1_cannot_start_on_4500() -> None:
    with pytest.raises(PolicyValidationError) as exc:
        World(policy_text(PolicyKnobs(ike_version="ikev1", remote_port=4500)))
    assert exc.value.issues[0].field == "remote_port"


@pytest.mark.parametrize("peer", [R, REQ])
def test_FB_28_reply_on_500_then_silence_on_4500_never_falls_back(peer: str) -> None:
    w = World(policy_text(PolicyKnobs(ike_version="ikev2")))
    w.set_path(peer, lambda port, t: "open" if port == 500 else "filtered", nat=True)
    w.probes(0.0, 80.0, dst=peer)
    w.run_until(80.0)
    t_a = RTT
    auth = [p for p in w.ike_packets(peer) if p.dport == 4500]
    assert [p.t for p in auth] == [t_a + x for x in REF_TIMES]
    assert all(p.data[:4] == b"\0\0\0\0" for p in auth)
    assert records(w, "fallback") == []  # the peer replied: no fallback
    (fail,) = records(w, "failed")
    assert fail.time == t_a + 64.0 and fail.get("peer_replied") is True
    assert w.agent.state_for(I, peer) is SaState.FAILED
    assert w.clear(peer) == []


def test_FB_29_ike_traffic_is_never_acquired_held_or_protected() -> None:
    w = World(policy_text())
    w.set_path(R, "open")
    for sport, dport in ((500, 500), (4500, 4500), (500, 4500)):
        pkt = build_ipv4_udp(I, R, sport, dport, b"\0" * 28)
        assert w.agent.outbound(pkt, 0.0) is Verdict.IKE
        back = build_ipv4_udp(R, I, dport, sport, b"\0" * 28)
        assert w.agent.inbound_clear(back, 0.0) is Verdict.IKE
    w.pump()
    assert w.ike.acquires == [] and w.agent.counters["acquires"] == 0
    assert len(w.clear(R)) == 3
    # with an SA up, IKE still goes in clear
    w.at(1.0, w.probe)
    w.run_until(2.0)
    assert w.agent.state_for(I, R) is SaState.ESTABLISHED
    assert w.agent.outbound(build_ipv4_udp(I, R, 500, 500, b"\0" * 28), 2.0) is Verdict.IKE


def test_FB_30_nd_secure_responder_drops_clear_syn_until_sa() -> None:
    """Two nodes: I (request, pass shunt, windows-nd) and R (requireinrequestout, ND secure)."""
    from reference_impl.policy import CompileEnv, PolicyAgent

    from .sim import FakeDriver

    r_policy = """
policy:
  name: r-nd-secure
  settings: {timing_profile: windows-nd}
  auth_method_sets: [{name: psk, methods: [{preshared_key: {secret_ref: k}}]}]
  filter_lists: [{name: all, filters: [{src: me, dst: any}]}]
  rules: [{name: nd, filter_list: all, action: requireinrequestout, auth_methods: psk}]
"""
    w = World(policy_text(PolicyKnobs(profile="windows-nd")))
    r_driver = FakeDriver()
    r_agent = PolicyAgent(r_driver, CompileEnv(local_addresses=(REQ,)))
    r_agent.load_policy_text(r_policy, 0.0, "r.yaml")
    w.set_path(REQ, "filtered")  # the scripted endpoint stays silent; R's IKE is below
    r_seen: list[tuple[float, str, object]] = []

    def deliver_to_r() -> None:
        for rec in [x for x in w.wire if x.dst == REQ and x.t == w.now and x.kind != "ike"]:
            if rec.kind == "clear":
                r_seen.append((w.now, "clear", r_agent.inbound_clear(rec.data, w.now)))
            else:
                r_seen.append((w.now, "esp", r_agent.inbound_protected(rec.data, 1, w.now)))

    syn = {"sport": 50000, "dport": 445, "proto": 6}
    for t in (0.0, 1.0, 3.0):  # the TCP SYN and its retransmissions
        w.at(t, lambda: w.probe(REQ, **syn))
        w.at(t, deliver_to_r)

    def sa_up() -> None:  # IKE completes at t = 2.0 on both sides
        acq = w.ike.acquires[0]
        pol = r_agent.responder_policy(I, [acq.sa_selectors[1]], [acq.sa_selectors[0]], w.now)
        assert pol is not None and pol.rule == "nd"
        pair = w.ike.make_pair(acq, b"I" * 8)
        w.ike.attempts[acq.acquire_id].done = True
        w.ike.events.append(ChildSaEstablished(pair))
        r_pair = w.ike.make_pair(
            None, b"I" * 8, local_ts=pol.local, remote_ts=pol.remote, local=REQ, peer=I
        )
        r_driver.install(r_pair)
        r_agent.handle_event(ChildSaEstablished(r_pair), w.now)

    w.at(2.0, sa_up)
    w.run_until(4.0)
    assert [v for _, kind, v in r_seen if kind == "clear"] == [Verdict.DISCARDED] * 2
    assert r_seen[-1] == (3.0, "esp", Verdict.ACCEPTED)  # retransmitted SYN over ESP
    first_esp = w.esp(REQ)[0].t
    assert first_esp == 3.0
    assert all(c.t < first_esp for c in w.clear(REQ) if c.sport == 50000)
    assert w.agent.flow_secure(I, REQ, 6, 50000, 445)
    assert r_agent.counters["drops.clear_inbound"] == 2
    assert [r.get("reason") for r in r_agent.audit.of_kind("clear_inbound_discarded")] == [
        "nd_secure_new_flow"
    ] * 2
    # I never sends clear on the flow after its first ESP packet
    w.at(4.0, lambda: w.probe(REQ, **syn))
    w.run_until(4.0)
    assert w.esp(REQ)[-1].t == 4.0 and not [c for c in w.clear(REQ) if c.t >= 3.0]


def test_sim_probes_land_on_exact_tenths() -> None:
    """Sanity check of the harness itself: probes land on exact tenths."""
    w = world(peer=REQ)
    w.probes(0.0, 1.0, dst=REQ)
    w.run_until(1.0)
    assert w.probe_seq == 10
    assert PacketMeta.make(I, R, 17).version == 4
