"""Suite ``fallback``: fallback when UDP 500 is closed (policy-spec §5, FB-01 to FB-30).

The peer under test is the initiator I of policy-spec §5.1 (its policy is ``require`` or
``request``); the tester plays R, whose UDP 500 is filtered, closed with ICMP, or has no
listener, opens later, or answers. Machinery and observation points:
:mod:`suites.support.fallback`.

* reference: its policy is loaded through the control API (shapes of policy-spec §1.5 and
  ``reference_impl/policy/examples``); timing runs on its virtual clock, so the 0, 0.5, 1, 2,
  ..., 32 schedule, the failure at 64 s and the 30 s hold-down are asserted exactly and at
  once; what R received is observed from R's side.
* strongSwan (kernel-libipsec): a trap policy (``start_action = trap``), probes from the
  protected address, a capture and charon's log. It has no notion of fallback: request cases
  record what it did against the policy it was given; its retransmission schedule is checked
  against the one it was configured with (short timers; policy-spec §5.3).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from harness.cases import case
from harness.lab import CaseContext
from harness.peers.base import NotApplicable
from suites.support.fallback import (
    BEFORE,
    EPS,
    IKE_SA_INIT,
    MAIN_MODE,
    PROBE_DPORT,
    CaptureObserver,
    RefFb,
    SwanFb,
    icmp4_port_unreachable,
    is_reference,
    request_action,
    require_action,
    stamps,
    swan_schedule,
    tcp4,
    udp4,
    wall_tolerance,
)

SUITE = "fallback"
REF_SENDS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
REF_FAIL = 64.0
"""Policy-spec §3.3 E3: transmissions at 0, 0.5, 1, 2, 4, 8, 16, 32; exchange failure at 64."""

NO_ACQUIRE = "strongswan-libipsec-no-acquire"
NO_FALLBACK = "strongswan-no-fallback"
EMULATED = "strongswan-acquire-emulated"


def _other_peer(ctx: CaseContext) -> None:
    """The case has no driver for this peer kind (yet): not applicable, with the reason."""
    if ctx.peer_name == "libreswan":
        raise NotApplicable(
            ["libreswan: pluto installs no SA on this kernel (errno 38, peers.md §4) and the "
             "harness has no traffic source behind it; fallback cases need both"]
        )  # fmt: skip
    raise NotApplicable([f"{ctx.peer_name}: the fallback cases need a traffic source behind "
                         "the peer under test (reference and strongSwan have one)"])  # fmt: skip


def _swan_na(ctx: CaseContext, why: str) -> None:
    if ctx.peer_name == "strongswan":
        raise NotApplicable([f"strongswan: {why}"])
    _other_peer(ctx)


def _same(values: list[Any]) -> bool:
    return len(set(values)) <= 1


def _ike_ok(fb: RefFb, n: int) -> None:
    """The first ``n`` IKE datagrams R saw are one attempt's first message, byte-identical
    (RFC 7296 §2.1: retransmissions are the same octets)."""
    seen = fb.ike[:n]
    assert _same([s.spi_i for s in seen]), (
        f"more than one initiator SPI: {[s.spi_i.hex() for s in seen]}"
    )
    if fb.closure != "reject" or not fb.local:
        assert _same([s.data for s in seen]), "retransmissions are not byte-identical"
        first = IKE_SA_INIT if fb.ike_version == 2 else MAIN_MODE
        assert all(s.exchange == first for s in seen), (
            f"expected exchange type {first}: {[s.exchange for s in seen]}"
        )


# ================================================================================ require


@case("FB-01", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="A first packet matching a require rule: one ACQUIRE, the first IKE message to "
            "R:500 within 100 ms, state ACQUIRING")  # fmt: skip
def test_fb01_first_packet_one_acquire(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="silent") as fb:
            fb.put_policy(require_action())
            fb.probe("P1")
            fb.sync()
            acq = fb.audit("acquire")
            assert len(acq) == 1, f"{len(acq)} ACQUIRE audit records for one packet"
            assert fb.counter("acquires") == 1, f"acquires counter +{fb.counter('acquires')}"
            assert len(fb.ike) == 1, f"R saw {len(fb.ike)} IKE datagrams at t=0 (expected 1)"
            first = fb.ike[0]
            assert first.t <= 0.1, f"first IKE message at t={first.t} (> 100 ms)"
            assert first.port == 500 and first.sport == 500, (
                f"first IKE message {first.sport} -> R:{first.port}, expected 500 -> 500"
            )
            _ike_ok(fb, 1)
            assert fb.state() == "ACQUIRING", f"state {fb.state()}, expected ACQUIRING"
            assert not fb.clear_probes(), "the probe left in clear"
        return
    if ctx.peer_name == "strongswan":
        _swan_acquire(ctx, probes=1, window=2.0)
        return
    _other_peer(ctx)


def _swan_acquire(ctx: CaseContext, *, probes: int, window: float) -> None:
    """strongSwan: probes from the protected address towards a closed R; an ACQUIRE shows as
    an IKE_SA_INIT on the wire."""
    with SwanFb(ctx, closure="filtered") as sw:
        t0 = time.time()
        sw.ping(count=probes, interval=0.1)
        run = sw.observe(window, t0=t0)
        ctx.recording.attach_text("observed", run.summary()) if ctx.recording else None
        assert not run.clear_probes, f"{len(run.clear_probes)} probes left in clear"
        if not run.ike:
            ctx.recording.known_behaviour(NO_ACQUIRE) if ctx.recording else None
            raise AssertionError(
                f"no IKE message within {window:g} s of {probes} probe(s): charon got no "
                f"ACQUIRE (kernel-libipsec drops the packets: 'could not find an outbound IPsec "
                f"SA ... dropping packet' x{run.libipsec_drops})"
            )
        assert run.ike[0][0] <= 0.1 + 0.05, f"first IKE message {run.ike[0][0]:.3f} s after"
        spis = {d[:8] for _, _, d in run.ike}
        assert len(spis) == 1, f"{len(spis)} IKE attempts for {probes} probes"


@case("FB-02", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="20 packets while ACQUIRING: still one ACQUIRE and one IKE attempt whose packets "
            "follow the retransmission schedule only")  # fmt: skip
def test_fb02_acquire_deduplicated(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="silent") as fb:
            fb.put_policy(require_action())
            for k in range(20):
                fb.advance_to(k * 0.1 + EPS)
                fb.probe(f"P{k + 1}")
            fb.step(2.0 + EPS)
            assert fb.counter("acquires") == 1, f"{fb.counter('acquires')} ACQUIREs for 20 probes"
            assert len(fb.audit("acquire")) == 1
            assert stamps(fb.ike) == [0.0, 0.5, 1.0, 2.0], (
                f"IKE datagrams at {stamps(fb.ike)}; expected the schedule 0, 0.5, 1, 2 only"
            )
            _ike_ok(fb, 4)
            assert not fb.clear_probes(), "probes left in clear"
        return
    if ctx.peer_name == "strongswan":
        _swan_acquire(ctx, probes=20, window=2.5)
        return
    _other_peer(ctx)


@case("FB-03", suite=SUITE, rfc="7296 §2.1; 4301 §5.1", level="MUST", roles="I",
      title="R:500 filtered: IKE at 0, 0.5, 1, 2, 4, 8, 16, 32 (byte-identical), failure "
            "audited at 64, state FAILED")  # fmt: skip
def test_fb03_schedule_and_failure(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.put_policy(require_action())
            fb.probe("P1")
            seen = fb.check_schedule(REF_SENDS)
            assert stamps(seen) == REF_SENDS, f"IKE at {stamps(seen)}, expected {REF_SENDS}"
            _ike_ok(fb, 8)
            fb.step(REF_FAIL - BEFORE)
            assert not fb.audit("failed"), "failure before t=64"
            assert fb.state() == "ACQUIRING", f"state {fb.state()} at t=63.999"
            fb.step(REF_FAIL + EPS)
            failed = fb.audit("failed")
            assert len(failed) == 1, "no failure audited at t=64"
            assert failed[0]["t"] == pytest.approx(REF_FAIL, abs=1e-6), (
                f"failed at {failed[0]['t']}"
            )
            assert fb.audit("negotiation_failed"), "no negotiation_failed audit record"
            assert fb.state() == "FAILED", f"state {fb.state()}, expected FAILED"
            assert len(fb.ike) == 8, f"{len(fb.ike)} IKE datagrams in all (expected 8)"
        return
    if ctx.peer_name == "strongswan":
        _swan_schedule(ctx, closure="filtered")
        return
    _other_peer(ctx)


def _swan_schedule(ctx: CaseContext, *, closure: str) -> None:
    """strongSwan's schedule against its configured one (trigger: ``initiate``, see FB-01)."""
    with SwanFb(ctx, closure=closure) as sw:
        rt = sw.timers
        sends, fail = swan_schedule(rt.timeout, rt.base, rt.tries)
        t0 = time.time()
        assert not sw.initiate(timeout=fail + 30), "established although R's UDP 500 is closed"
        t_fail = time.time() - t0  # initiate returns when charon gives up
        run = sw.observe(0.0, t0=t0)
        ike = [(t, d) for t, p, d in run.ike if p == 500]
        evidence = (f"{run.summary()}\ninitiate returned (gave up) after {t_fail:.3f} s; "
                    f"expected sends {sends}, give-up {fail}; ICMP port unreachable "
                    f"from R: {sw.observer.icmp_unreachable if sw.observer else '?'}")  # fmt: skip
        if ctx.recording:
            ctx.recording.attach_text("observed", evidence)
            ctx.recording.known_behaviour(EMULATED)
        assert len(ike) == len(sends), f"{len(ike)} IKE datagrams, expected {sends}"
        for (t, _), want in zip(ike, sends, strict=True):
            assert abs(t - want) <= wall_tolerance(want), f"IKE at {t:.3f} s, expected {want}"
        assert _same([d for _, d in ike]), "retransmissions are not byte-identical"
        assert abs(t_fail - fail) <= wall_tolerance(fail) + 0.1, (
            f"gave up after {t_fail:.3f} s, expected {fail}"
        )
        if closure == "reject" and sw.observer is not None:
            assert sw.observer.icmp_unreachable >= 1, "R sent no ICMP port unreachable"


@case("FB-04", suite=SUITE, rfc="7296 §2.4", level="MUST", roles="I",
      title="R:500 closed with ICMP: the same schedule and failure as FB-03; ICMP counted and "
            "audited as unauthenticated; no state change before 64")  # fmt: skip
def test_fb04_icmp_does_not_shorten(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="reject") as fb:
            fb.put_policy(require_action())
            fb.probe("P1")
            seen = fb.check_schedule(REF_SENDS)
            assert stamps(seen) == REF_SENDS, f"IKE at {stamps(seen)}, expected {REF_SENDS}"
            _ike_ok(fb, 8)
            icmp = fb.icmp_records()
            assert icmp, "no ICMP error recorded"
            assert all(r.get("authenticated") is False for r in icmp), (
                "ICMP not marked unauthenticated"
            )
            assert fb.counter("icmp_errors.3.3") >= 1, "icmp_errors{3,3} not counted"
            fb.step(REF_FAIL - BEFORE)
            assert fb.state() == "ACQUIRING", f"state {fb.state()} before t=64 (ICMP changed it)"
            assert not fb.audit("failed") and not fb.audit("fallback")
            fb.step(REF_FAIL + EPS)
            failed = fb.audit("failed")
            assert failed and failed[0]["t"] == pytest.approx(REF_FAIL, abs=1e-6), (
                f"failure at {[f['t'] for f in failed]}, expected 64"
            )
            assert fb.state() == "FAILED"
        return
    if ctx.peer_name == "strongswan":
        _swan_schedule(ctx, closure="reject")
        return
    _other_peer(ctx)


@case("FB-05", suite=SUITE, rfc="4301 §4.4.1, §5.1", level="MUST", roles="I",
      title="require, R:500 filtered and closed with ICMP, probes for 100 s: no clear probe "
            "or TCP segment of the protected selector on the wire")  # fmt: skip
def test_fb05_require_never_clear(ctx: CaseContext) -> None:
    if is_reference(ctx):
        for closure in ("filtered", "reject"):
            with ctx.step(f"R:500 {closure}"), RefFb(ctx, closure=closure) as fb:
                fb.put_policy(require_action())
                for k in range(0, 101, 4):
                    fb.advance_to(k + EPS)
                    fb.probe(f"U{k}")
                    seg = tcp4(fb.i_addr, fb.r_addr, fb.sport + 1, 80, payload=b"FBPROBE:T%d" % k)
                    fb.inject(seg, f"TCP T{k}")
                fb.step(101)
                clear = fb.clear_probes()
                assert not clear, f"{len(clear)} clear probes reached R ({closure})"
                assert fb.state() in ("FAILED", "ACQUIRING"), fb.state()
        return
    if ctx.peer_name == "strongswan":
        for closure in ("filtered", "reject"):
            with ctx.step(f"R:500 {closure}"), SwanFb(ctx, closure=closure) as sw:
                t0 = time.time()
                sw.ping(count=8, interval=0.2)
                run = sw.observe(0.3, t0=t0)
                if ctx.recording:
                    ctx.recording.attach_text(f"observed ({closure})", run.summary())
                assert not run.clear_probes, f"{len(run.clear_probes)} probes left in clear"
        return
    _other_peer(ctx)


@case("FB-06", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="hold queue 1 keep_last, 20 probes while ACQUIRING: at failure the held packet is "
            "discarded (hold_overflow 19, failed 1), nothing released")  # fmt: skip
def test_fb06_hold_queue_discarded(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(
            ctx,
            "no hold queue: charon/libipsec drop packets while negotiating "
            "(policy-spec §5.3); the counters checked here are the reference's",
        )
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(require_action(hold_queue={"length": 1, "policy": "keep_last"}))
        for k in range(20):
            fb.advance_to(k + EPS)
            fb.probe(f"P{k + 1}")
        fb.step(REF_FAIL + EPS)
        assert fb.state() == "FAILED"
        assert fb.counter("drops.hold_overflow") == 19, (
            f"drops.hold_overflow +{fb.counter('drops.hold_overflow')}, expected 19"
        )
        assert fb.counter("drops.failed") == 1, f"drops.failed +{fb.counter('drops.failed')}"
        assert not fb.clear_probes(), "a held probe was released in clear"
        assert not fb.protected_probes(), "a held probe was released"
        (failed,) = fb.audit("failed")
        assert failed.get("discarded") == 1, f"audit says {failed.get('discarded')} discarded"


@case("FB-07", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="after the failure: no IKE in [64, 94), packets discarded; the first probe at or "
            "after 94 starts a new attempt with a new initiator SPI (30 s hold-down)")  # fmt: skip
def test_fb07_holddown(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.put_policy(require_action())
            fb.probe("P1")
            fb.step(REF_FAIL + EPS)
            assert fb.state() == "FAILED"
            for k, t in enumerate((65.0, 70.0, 80.0, 90.0, 94.0 - BEFORE)):
                fb.advance_to(t)
                fb.probe(f"H{k}")
            fb.step(94.0 - BEFORE)
            assert len(fb.ike) == 8, f"IKE during the hold-down: {stamps(fb.ike[8:])}"
            assert fb.counter("drops.holddown") == 5, (
                f"drops.holddown +{fb.counter('drops.holddown')}, expected 5"
            )
            assert fb.counter("acquires") == 1
            fb.step(94.0 + EPS)
            assert fb.audit("holddown_expired"), "no hold-down expiry at 94"
            fb.probe("N1")
            fb.sync()
            assert len(fb.ike) == 9, f"{len(fb.ike)} IKE datagrams; expected a new attempt"
            new = fb.ike[8]
            assert new.t == pytest.approx(94.0, abs=2e-3), f"new attempt at {new.t}"
            assert new.spi_i != fb.ike[0].spi_i, "the new attempt reuses the initiator SPI"
            assert fb.counter("acquires") == 2
            assert not fb.clear_probes(), "probes left in clear"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="filtered") as sw:
            t0 = time.time()
            assert not sw.initiate(), "established although R's UDP 500 is closed"
            t_fail = time.time() - t0
            sw.ping(count=5, interval=0.3)
            run = sw.observe(0.5, t0=t0)
            after = [t for t, _, _ in run.ike if t > t_fail]
            finding = (f"no hold-down notion; after the failure at {t_fail:.2f} s, 5 probes in "
                       f"1.5 s started {len(after)} IKE datagrams (trap stays; kernel-libipsec "
                       f"never acquires, so no new attempt ever starts by traffic); clear probes:"
                       f" {len(run.clear_probes)}")  # fmt: skip
            if ctx.recording:
                ctx.recording.attach_text("observed", run.summary())
                ctx.recording.known_behaviour(NO_ACQUIRE)
                ctx.recording.recorded(finding)
            assert not run.clear_probes, "probes left in clear after the failure"
        return
    _other_peer(ctx)


@case("FB-08", suite=SUITE, rfc="4301 §5.1.1", level="SHOULD", roles="I",
      title="send_icmp_on_discard: the local sender gets ICMP 3/1 when R was never reached, "
            "3/13 when R refused; at most one per second per destination")  # fmt: skip
def test_fb08_local_icmp(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no send_icmp_on_discard knob (libipsec drops silently)")
    with ctx.step("(a) R:500 filtered"), RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(require_action(send_icmp_on_discard=True))
        fb.probe("P1")
        fb.step(REF_FAIL + EPS)
        assert fb.state() == "FAILED"
        got = _local_icmp(fb)
        assert got == [(3, 1)], f"local ICMP {got}, expected one type 3 code 1"
    with ctx.step("(b) R refuses (NO_PROPOSAL_CHOSEN)"), RefFb(ctx, closure="open") as fb:
        fb.put_policy(require_action(send_icmp_on_discard=True))
        fb.tester_policy(require_action())
        fb.tester.client.set_ike(proposals=["aes256gcm16-prfsha512-ecp384"])
        fb.probe("P1")
        assert fb.wait_state("FAILED"), f"state {fb.state()}: R's refusal did not fail it"
        (nf,) = fb.audit("negotiation_failed")
        assert nf.get("category") == "proposal", nf
        for k in range(3):
            fb.probe(f"F{k}")  # same second: at most one ICMP
        fb.step(1.5)
        fb.probe("G")
        got = _local_icmp(fb)
        assert got == [(3, 13), (3, 13)], f"local ICMP {got}: expected 3/13 once per second"


def _local_icmp(fb: RefFb) -> list[tuple[int, int]]:
    """ICMP errors the PUT handed its local stack (``local``: delivered packets; ``netns``:
    the agent's count, since the TUN delivers them to the kernel)."""
    if fb.local:
        out = []
        for d in fb.put.client.delivered():
            if len(d.packet) > 21 and d.packet[9] == 1 and d.packet[20] == 3:
                out.append((d.packet[20], d.packet[21]))
        return out
    audit = fb.agent_counters()
    n = audit.get("local_icmp.sent", 0) - fb._start_counters.get("local_icmp.sent", 0)
    kind = (3, 1) if fb.closure != "open" else (3, 13)
    return [kind] * n


# ================================================================================ request


@case("FB-09", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="request (after_s 3.0), R:500 filtered: IKE at 0, 0.5, 1, 2 only; soft SA at 3.0, "
            "audit fallback{peer_silent}; no IKE afterwards until soft-SA expiry")  # fmt: skip
def test_fb09_fallback_at_3s(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.put_policy(request_action(after_s=3.0))
            fb.probe("P1")
            _fallback_at_3(fb)
            if not fb.local:
                _wall_clock_fallback(fb)
        return
    if ctx.peer_name == "strongswan":
        _swan_no_fallback(ctx, closure="filtered")
        return
    _other_peer(ctx)


def _fallback_at_3(fb: RefFb, *, sends: list[float] | None = None) -> None:
    sends = [0.0, 0.5, 1.0, 2.0] if sends is None else sends
    seen = fb.check_schedule(sends)
    assert stamps(seen) == sends, f"IKE at {stamps(seen)}, expected {sends}"
    _ike_ok(fb, len(sends))
    fb.step(3.0 - BEFORE)
    assert not fb.audit("fallback"), "fallback before 3.0 s"
    assert not fb.clear_probes(), "the probe left in clear before the fallback"
    assert fb.state() == "ACQUIRING", f"state {fb.state()} at 2.999"
    fb.step(3.0 + EPS)
    fbk = fb.audit("fallback")
    assert len(fbk) == 1, "no fallback at 3.0 s"
    assert fbk[0]["t"] == pytest.approx(3.0, abs=1e-6), f"fallback at {fbk[0]['t']}"
    assert fbk[0].get("reason") == "peer_silent", fbk[0]
    assert fb.state() == "SOFT", f"state {fb.state()}, expected SOFT"
    assert stamps(fb.clear_probes()) == [3.0], (
        f"clear probes at R: {stamps(fb.clear_probes())}, expected the held one at 3.0"
    )
    # every instant a retransmission would be due, one step each (so that each one, if
    # sent, is observed on its own), then up to just before the soft SA's idle expiry
    for when in (4.0, 8.0, 16.0, 32.0, 64.0, 302.0):
        fb.step(when + EPS)
    assert len(fb.ike) == len(sends), (
        f"IKE after the fallback: {stamps(fb.ike[len(sends) :])} (expected none)"
    )


def _wall_clock_fallback(fb: RefFb) -> None:
    """netns: the same on the real clock, measured on the wire (policy-spec §5.1 tolerance)."""
    assert isinstance(fb.observer, CaptureObserver)
    with fb.ctx.step("real clock: fallback at 3.0 s on the wire"):
        fb.put_policy(None)  # ends the soft SA
        fb.put_policy(request_action(after_s=3.0))
        fb.put.client.clock("real")
        fb.observer.sync(0.0)
        start = len(fb.observer.wire)
        fb.probe("W1")
        time.sleep(3.3)  # the real-clock window being measured
        fb.observer.sync(0.0)
        wire = fb.observer.wire[start:]
        ike = [ts for ts, ip in wire if ip.proto == 17 and ip.dport == 500]
        clear = [ts for ts, ip in wire if ip.probe == b"W1"]
        fb.attach("real clock (s after the first IKE message)",
                  f"IKE {[round(t - ike[0], 4) for t in ike]}; clear W1 "
                  f"{[round(t - ike[0], 4) for t in clear]}" if ike else "no IKE")  # fmt: skip
        assert len(ike) == 4 and clear, f"{len(ike)} IKE datagrams, clear W1: {len(clear)}"
        for got, want in zip(ike, (0.0, 0.5, 1.0, 2.0), strict=True):
            assert abs(got - ike[0] - want) <= wall_tolerance(want), f"IKE at {got - ike[0]:.3f}"
        delta = clear[0] - ike[0]
        assert abs(delta - 3.0) <= wall_tolerance(3.0), f"fallback after {delta:.3f} s (wall)"


def _swan_no_fallback(ctx: CaseContext, *, closure: str, seconds: float = 4.0) -> None:
    """strongSwan has no fallback: record what it did with the probes for ``seconds``."""
    with SwanFb(ctx, closure=closure) as sw:
        t0 = time.time()
        sw.ping(count=int(seconds / 0.5), interval=0.5)
        run = sw.observe(0.3, t0=t0)
        finding = (f"no fallback to clear: for {seconds:g} s of probes (policy: request, "
                   f"fallback after 3 s) none left in clear ({len(run.clear_probes)}); "
                   f"IKE datagrams {len(run.ike)}; the trap drops them (kernel-libipsec: "
                   f"{run.libipsec_drops} 'no outbound SA, dropping packet')")  # fmt: skip
        if ctx.recording:
            ctx.recording.attach_text("observed", run.summary())
            ctx.recording.known_behaviour(NO_FALLBACK)
            ctx.recording.recorded(finding)


@case("FB-10", suite=SUITE, rfc="7296 §2.4", level="MUST", roles="I",
      title="request, R:500 closed with ICMP, icmp_fast_fallback off: fallback at 3.0 s, not "
            "earlier, despite the ICMP at t=0")  # fmt: skip
def test_fb10_icmp_no_early_fallback(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="reject") as fb:
            fb.put_policy(request_action(after_s=3.0, icmp_fast_fallback=False))
            fb.probe("P1")
            fb.sync()
            if fb.local:
                got = fb.icmp_records()
                assert got and got[0]["t"] < 0.1, "no ICMP port unreachable at t=0"
            _fallback_at_3(fb)
            if not fb.local:
                assert fb.counter("icmp_errors.3.3") >= 1, "no ICMP port unreachable counted"
        return
    if ctx.peer_name == "strongswan":
        _swan_no_fallback(ctx, closure="reject")
        return
    _other_peer(ctx)


@case("FB-11", suite=SUITE, rfc="7296 §2.4", level="MUST", roles="I",
      title="request with icmp_fast_fallback: fallback within 100 ms of the ICMP quoting our "
            "attempt (icmp_hint); a forged ICMP quoting another SPI is ignored")  # fmt: skip
def test_fb11_icmp_fast_fallback(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no icmp_fast_fallback (charon reads no ICMP errors at all, §3.3 E7)")
    with ctx.step("real ICMP port unreachable"), RefFb(ctx, closure="reject") as fb:
        fb.put_policy(request_action(after_s=3.0, icmp_fast_fallback=True))
        fb.probe("P1")
        got = fb.wait_audit("fallback", 10.0)
        assert got, "no fallback on the ICMP port unreachable"
        assert got[0].get("reason") == "icmp_hint", got[0]
        assert got[0]["t"] <= 0.1, f"fallback {got[0]['t']} s after the first packet"
        fb.sync()
        assert stamps(fb.clear_probes()) == [0.0], "the held probe did not leave in clear at once"
    import os

    if ctx.topology.backend == "local" and os.geteuid() != 0:
        if ctx.recording is not None:  # the first half above is the verdict
            ctx.recording.attach_text("forged ICMP", "not sent: a raw socket needs root")
        return
    with ctx.step("forged ICMP quoting another SPI"), RefFb(ctx, closure="silent") as fb:
        fb.put_policy(request_action(after_s=3.0, icmp_fast_fallback=True))
        fb.probe("P1")
        fb.sync()
        assert fb.ike, "no IKE message"
        _send_forged_icmp(fb)
        rec = _poll(fb.icmp_records)
        assert rec, "the forged ICMP never reached I (harness)"
        assert rec[0].get("matched_attempt") is False and rec[0].get("used_for_fallback") is False
        fb.step(3.0 - BEFORE)
        assert not fb.audit("fallback"), "a forged ICMP triggered the fallback"
        fb.step(3.0 + EPS)
        fbk = fb.audit("fallback")
        assert fbk and fbk[0]["t"] == pytest.approx(3.0, abs=1e-6), "fallback not at 3.0"
        assert fbk[0].get("reason") == "peer_silent"


def _send_forged_icmp(fb: RefFb) -> None:
    """An ICMP port unreachable from R quoting I's IKE ports and a random initiator SPI
    (needs a raw socket: root, in I's network)."""
    import os
    import socket

    sport = fb.put_node.addresses.ike_port if fb.local else 500
    dport = fb.tester_node.addresses.ike_port if fb.local else 500
    quoted = os.urandom(8) + bytes(20)
    pkt = icmp4_port_unreachable(fb.r_addr, fb.i_addr, fb.i_addr, fb.r_addr, sport, dport, quoted)
    if fb.local:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(pkt, (fb.i_addr, 0))
        return
    from harness.probes.craft import Injector

    Injector(fb.tester_node).raw(pkt)


@case("FB-12", suite=SUITE, rfc="4301 §4.4.1", level="MUST", roles="I",
      title="a require rule with icmp_fast_fallback is refused at load (V8); the policy in "
            "force stays")  # fmt: skip
def test_fb12_v8_rejected(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no policy agent with icmp_fast_fallback to validate")
    from harness.node_client import NodeError

    with RefFb(ctx, closure="open") as fb:
        fb.put_policy(require_action())
        before = fb.put.client.get_policy()
        assert before is not None
        bad = require_action(fallback={"icmp_fast_fallback": True})
        from suites.support.fallback import policy_yaml

        text = policy_yaml("fb-12-bad", [fb.r_addr], bad, psk_ref=fb.sc.name)
        fb.policies["refused policy"] = text
        with pytest.raises(NodeError) as err:
            fb.put.client.load_policy(text=text)
        assert err.value.code in ("policy_invalid", "refused"), err.value
        assert "V8" in str(err.value), f"refusal does not name V8: {err.value}"
        after = fb.put.client.get_policy()
        assert after is not None and after.get("name") == before.get("name"), (
            f"policy in force changed: {after and after.get('name')}"
        )
        rej = fb.audit("policy_rejected")
        assert rej and rej[-1].get("in_force") == before.get("name"), rej


@case("FB-13", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="profile windows-spu, request, R:500 filtered: exactly one IKE packet; fallback at "
            "0.5 s (before the 0.5 s retransmission)")  # fmt: skip
def test_fb13_windows_spu(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no timing profiles (windows-spu)")
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(request_action(), profile="windows-spu")
        fb.probe("P1")
        fb.step(0.5 - BEFORE)
        assert stamps(fb.ike) == [0.0] and not fb.audit("fallback")
        fb.step(0.5 + EPS)
        fbk = fb.audit("fallback")
        assert fbk and fbk[0]["t"] == pytest.approx(0.5, abs=1e-6), "fallback not at 0.5 s"
        assert stamps(fb.ike) == [0.0], f"IKE at {stamps(fb.ike)}: the tie rule sent a retransmit"
        fb.step(30.0)
        assert len(fb.ike) == 1, f"IKE after the fallback: {stamps(fb.ike)}"
        assert stamps(fb.clear_probes()) == [0.5]


@case("FB-14", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="request, hold 1 keep_last, 30 probes in [0, 3): at 3.0 exactly the last one "
            "leaves in clear first, then new ones; hold_overflow 29")  # fmt: skip
def test_fb14_hold_keep_last_released(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no hold queue (packets are dropped while negotiating)")
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(request_action(hold_queue={"length": 1, "policy": "keep_last"}))
        for k in range(30):
            fb.advance_to(k * 0.1 + EPS)
            fb.probe(f"P{k + 1}")
        fb.step(3.0 - BEFORE)
        assert not fb.clear_probes(), "held probes left before 3.0"
        fb.step(3.0 + EPS)
        for k in (31, 32):
            fb.advance_to(3.0 + (k - 30) * 0.1)
            fb.probe(f"P{k}")
        fb.sync()
        got = [(p.packet.probe or b"").decode() for p in fb.clear_probes()]
        assert got == ["P30", "P31", "P32"], f"clear at R: {got}, expected P30, P31, P32"
        assert fb.clear_probes()[0].t == pytest.approx(3.0, abs=1e-3)
        assert fb.counter("drops.hold_overflow") == 29, fb.counter("drops.hold_overflow")


@case("FB-15", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="request with negotiation_shunt pass (libreswan-oe): every probe leaves in clear "
            "at once, the first with IKE packet #1; none lost")  # fmt: skip
def test_fb15_shunt_pass(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no pass-through while negotiating (negotiationshunt): drop only")
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(request_action(), profile="libreswan-oe")
        sent = []
        for k in range(10):
            fb.step(k * 0.19 + EPS)
            fb.probe(f"P{k + 1}")
            sent.append(round(k * 0.19 + EPS, 3))
            fb.sync()
        got = fb.clear_probes()
        assert [(p.packet.probe or b"").decode() for p in got] == [f"P{k + 1}" for k in range(10)]
        assert stamps(got) == sent, f"clear at {stamps(got)}, sent at {sent} (held?)"
        assert fb.ike and fb.ike[0].t == got[0].t, "the first probe and IKE #1 not together"


@case("FB-16", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="request with negotiation_shunt drop: probes in [0, 3) never appear on the wire "
            "(drops.negotiating); probes after 3 s flow in clear")  # fmt: skip
def test_fb16_shunt_drop(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.put_policy(request_action(negotiation_shunt="drop"))
            for k in range(6):
                fb.advance_to(k * 0.5 + EPS)
                fb.probe(f"D{k}")
            fb.step(3.0 + EPS)
            fb.advance_to(3.5)
            fb.probe("C1")
            fb.step(4.0)
            got = [(p.packet.probe or b"").decode() for p in fb.clear_probes()]
            assert got == ["C1"], f"clear at R: {got}, expected only C1"
            assert fb.counter("drops.negotiating") == 6, fb.counter("drops.negotiating")
        return
    if ctx.peer_name == "strongswan":
        _swan_no_fallback(ctx, closure="filtered")
        return
    _other_peer(ctx)


@case("FB-17", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="request (legacy): R answers but authentication fails: no soft SA ever, FAILED, "
            "no clear probe, audit negotiation_failed{auth}")  # fmt: skip
def test_fb17_auth_failure_no_fallback(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no fallback semantics to compare (request rules)")
    with RefFb(ctx, closure="open") as fb:
        _wrong_psk(fb)
        fb.put_policy(request_action(after_s=3.0))
        fb.probe("P1")
        assert fb.wait_state("FAILED"), f"state {fb.state()} after the authentication failure"
        nf = fb.audit("negotiation_failed")
        assert nf and nf[0].get("category") == "auth", nf
        fb.step(3.5)
        fb.probe("P2")
        fb.step(10.0)
        assert not fb.audit("fallback"), "fell back although R answered"
        assert fb.state() == "FAILED"
        assert not fb.clear_probes(), "probes in clear"


def _wrong_psk(fb: RefFb) -> None:
    from harness.peers.reference import scenario_credentials

    fb.tester_policy(require_action(inbound_passthrough=True))  # clear probes stay visible
    wrong = fb.sc.with_(psk="not-the-psk-of-the-initiator-000")
    fb.tester.client.set_credentials(**scenario_credentials(wrong, "tester"))


@case("FB-18", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="as FB-17 with windows-spu (on_negotiation_failure): soft SA on the failure "
            "verdict, audit fallback{negotiation_failed}")  # fmt: skip
def test_fb18_spu_fallback_on_failure(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no on_negotiation_failure fallback (windows-spu)")
    with RefFb(ctx, closure="open") as fb:
        _wrong_psk(fb)
        fb.put_policy(request_action(), profile="windows-spu")
        fb.probe("P1")
        got = fb.wait_audit("fallback")
        assert got, f"no fallback on the failure verdict (state {fb.state()})"
        assert got[0].get("reason") == "negotiation_failed", got[0]
        assert fb.audit("negotiation_failed"), "no negotiation_failed record"
        assert fb.state() == "SOFT"
        fb.sync()
        assert [(p.packet.probe or b"").decode() for p in fb.clear_probes()] == ["P1"]


@case("FB-19", suite=SUITE, rfc="4301 §5.2", level="MUST", roles="I",
      title="after the fallback R's clear packets are accepted (the soft SA is bidirectional); "
            "a second peer on the same rule gets its own ACQUIRE")  # fmt: skip
def test_fb19_soft_sa_per_host_pair(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no soft SA")
    with RefFb(ctx, closure="filtered", r2=True) as fb:
        fb.put_policy(request_action(after_s=3.0))
        fb.probe("P1")
        fb.step(1.0)
        assert not _r_sends_clear(fb, "R-early"), "clear from R accepted before the fallback"
        fb.step(3.0 + EPS)
        assert fb.state() == "SOFT"
        assert _r_sends_clear(fb, "R-late"), "clear from R refused after the fallback"
        assert fb.r2_addr is not None
        fb.probe("Q1", to=fb.r2_addr)
        acq = [a for a in fb.audit("acquire") if str(a.get("peer", "")).startswith(fb.r2_addr)]
        assert len(acq) == 1, "no ACQUIRE of its own for the second peer"
        assert fb.state(fb.r2_addr) == "ACQUIRING", fb.state(fb.r2_addr)
        assert fb.state() == "SOFT", "the soft SA towards R changed"


def _r_sends_clear(fb: RefFb, label: str) -> bool:
    """R sends one clear probe to I; whether I accepted (delivered) it. ``local``: it travels
    R's clear link (R bypasses everything); ``netns``: handed to I's inbound path through the
    API (the tun data plane does not see clear packets, its docstring)."""
    pkt = udp4(fb.r_addr if fb.r_addr == fb.tester_addr else fb.tester_addr, fb.i_addr,
               PROBE_DPORT, fb.sport, b"FBPROBE:" + label.encode())  # fmt: skip
    before = fb.agent_counters()
    if fb.local:
        fb.tester.client.inject([pkt])
    else:
        fb.put.client.inject([pkt], direction="in")

    def decided() -> dict[str, int] | None:
        c = fb.agent_counters()
        moved = any(c.get(k, 0) != before.get(k, 0) for k in
                    ("drops.clear_inbound", "accepted_clear.soft_sa", "bypass.in"))  # fmt: skip
        return c if moved else None

    after = _poll(decided)
    assert after is not None, "I never processed R's clear packet (harness)"
    accepted = after.get("accepted_clear.soft_sa", 0) > before.get("accepted_clear.soft_sa", 0)
    if fb.local:
        got = [d for d in fb.put.client.delivered() if label.encode() in d.packet]
        assert bool(got) == accepted, "delivered and counters disagree"
    return bool(accepted)


def _poll(fn: Any, timeout: float = 10.0) -> Any:
    from suites.support.fallback import poll

    return poll(fn, timeout)


@case("FB-20", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="soft_sa_idle_s 10: the soft SA goes after 10 s without traffic; the next probe "
            "starts a new ACQUIRE and a fresh schedule")  # fmt: skip
def test_fb20_soft_sa_idle(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no soft SA")
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(request_action(after_s=3.0, soft_sa_idle_s=10))
        fb.probe("P1")
        fb.step(13.0 - BEFORE)
        assert fb.state() == "SOFT", f"state {fb.state()} before 10 s of idle"
        fb.step(13.0 + EPS)
        exp = fb.audit("soft_sa_expired")
        assert exp and exp[0].get("reason") == "idle", exp
        assert exp[0]["t"] == pytest.approx(13.0, abs=1e-6), f"soft SA gone at {exp[0]['t']}"
        fb.advance_to(14.0)
        fb.probe("P2")
        fb.step(14.5 + EPS)
        assert fb.counter("acquires") == 2, "no new ACQUIRE"
        assert stamps(fb.ike[4:]) == [14.0, 14.5], f"new attempt at {stamps(fb.ike[4:])}"
        assert fb.ike[4].spi_i != fb.ike[0].spi_i


@case("FB-21", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="soft_sa_max_lifetime_s 30 with continuous traffic: the soft SA goes at "
            "t_fallback + 30; the next probe re-acquires")  # fmt: skip
def test_fb21_soft_sa_max_lifetime(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no soft SA")
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(request_action(after_s=3.0, soft_sa_max_lifetime_s=30))
        fb.probe("P0")
        for k in range(1, 35):
            fb.advance_to(k + 0.5)
            fb.probe(f"P{k}")
        fb.step(34.6)
        exp = fb.audit("soft_sa_expired")
        assert exp and exp[0].get("reason") == "max_lifetime", exp
        assert exp[0]["t"] == pytest.approx(33.0, abs=1e-6), f"soft SA gone at {exp[0]['t']}"
        assert fb.counter("acquires") == 2, "no new ACQUIRE after the soft SA went"
        assert stamps(fb.ike[4:5]) == [33.5], f"new attempt at {stamps(fb.ike[4:])}"
        assert fb.ike[4].spi_i != fb.ike[0].spi_i, "the new attempt reuses the initiator SPI"
        clear = [(p.packet.probe or b"").decode() for p in fb.clear_probes()]
        # P0..P2 held (keep_last: P2 is the one left), released at 3.0; P3..P32 while SOFT
        assert clear == [f"P{k}" for k in range(2, 33)], f"clear at R: {clear}"


# ================================================================================ recovery


@case("FB-22", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="recovery, require: R:500 filtered until 70 s; the first probe after the "
            "hold-down (94 s) negotiates; then only ESP; never a clear probe")  # fmt: skip
def test_fb22_recovery_require(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.put_policy(require_action())
            fb.probe("P1")
            fb.step(REF_FAIL + EPS)
            assert fb.state() == "FAILED"
            for t in (66.0, 70.0 + EPS, 80.0, 90.0):
                fb.advance_to(t)
                if t > 70.0 and fb.silent is not None and t < 71:
                    fb.open_r()
                fb.probe(f"H{int(t)}")
            fb.step(94.0 + EPS)
            assert fb.counter("acquires") == 1, "a new attempt during the hold-down"
            assert not fb.tester.list_sas(), "R got IKE during the hold-down"
            fb.probe("N1")
            assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: no SA after R opened"
            for k in range(3):
                fb.probe(f"E{k}")
            fb.sync()
            assert not fb.clear_probes(), (
                f"clear probes: {fb.observer.evidence() if fb.observer else ''}"
            )
            if fb.local:
                got = [(p.packet.probe or b"").decode() for p in fb.protected_probes()]
                assert got == ["N1", "E0", "E1", "E2"], f"protected at R: {got}"
                assert fb.r_discarded_clear() == 0
            else:
                assert len(fb.protected_probes()) >= 4, "probes not seen as ESP"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="filtered") as sw:
            t0 = time.time()
            assert not sw.initiate(), "established although R's UDP 500 is closed"
            sw.tester_node.open_udp()
            sw._closed = False
            sw.tester.configure(sw.sc)
            assert sw.initiate(), "no SA once R's UDP 500 opened"
            sw.ping(count=3, interval=0.2)
            run = sw.observe(0.3, t0=t0)
            if ctx.recording:
                ctx.recording.attach_text("observed", run.summary())
                ctx.recording.known_behaviour(EMULATED)
            assert not run.clear_probes, "clear probes"
            assert run.esp >= 3, f"{run.esp} ESP packets after R opened (expected the probes)"
        return
    _other_peer(ctx)


@case("FB-23", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="recovery, request: fallback at 3 s, R:500 opens at 10 s: clear until the soft SA "
            "expires (no silent upgrade, no IKE); then ESTABLISHED and only ESP")  # fmt: skip
def test_fb23_recovery_request(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.put_policy(request_action(after_s=3.0))
            fb.probe("P0")
            fb.step(3.0 + EPS)
            assert fb.state() == "SOFT"
            fb.advance_to(10.0)
            fb.open_r(require_action(inbound_passthrough=True))
            n = 0
            for t in range(30, 901, 30):
                fb.advance_to(float(t))
                fb.probe(f"S{t}")
                n += 1
                if t in (30, 300, 600, 900):
                    fb.sync()
                    assert not fb.tester.list_sas(), f"R got an IKE SA at {t} s (silent upgrade)"
                    assert fb.state() == "SOFT", f"state {fb.state()} at {t} s"
            fb.step(903.0 + EPS)
            exp = fb.audit("soft_sa_expired")
            assert exp and exp[0]["t"] == pytest.approx(903.0, abs=1e-6), exp
            assert fb.counter("acquires") == 1, "IKE from I while SOFT"
            assert len(fb.clear_probes()) == n + 1, f"{len(fb.clear_probes())} clear, sent {n + 1}"
            fb.advance_to(905.0)
            fb.probe("N1")
            assert fb.wait_state("ESTABLISHED"), f"state {fb.state()} after the soft SA"
            fb.probe("E1")
            fb.sync()
            assert len(fb.clear_probes()) == n + 1, "clear probes after ESTABLISHED"
            assert len(fb.protected_probes()) >= 2, "N1/E1 not protected"
        return
    if ctx.peer_name == "strongswan":
        _swan_no_fallback(ctx, closure="filtered")
        return
    _other_peer(ctx)


@case("FB-24", suite=SUITE, rfc="4301 §5.2", level="MUST", roles="I",
      title="peer-initiated upgrade: R initiates while I holds a soft SA; I answers, the "
            "soft SA goes, ESP both ways; clear on a secure flow is discarded")  # fmt: skip
def test_fb24_peer_initiated_upgrade(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no soft SA to upgrade")
    with RefFb(ctx, closure="filtered") as fb:
        fb.put_policy(request_action(after_s=3.0))
        fb.probe("P0")
        fb.step(3.0 + EPS)
        assert fb.state() == "SOFT"
        fb.advance_to(10.0)
        fb.open_r(require_action(inbound_passthrough=True))
        fb.advance_to(12.0)
        fb.tester.client.initiate("fb")
        assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: I did not answer R"
        est = fb.audit("established")
        assert est and est[-1].get("soft_sa_removed") is True, est
        assert est[-1]["t"] == pytest.approx(12.0, abs=1e-3), f"answered at {est[-1]['t']}"
        fb.probe("E1")
        fb.sync()
        assert [(p.packet.probe or b"").decode() for p in fb.protected_probes()][-1:] in (
            ["E1"],
            [""],
        ), "I's probe after the upgrade is not ESP"
        before = fb.counter("protected.in")
        fb.tester.client.inject([udp4(fb.r_addr, fb.i_addr, 7777, 7778, b"FBPROBE:R1")])
        assert _poll(lambda: fb.counter("protected.in") > before), "R's packet not ESP at I"
        # a clear packet on the flow already secure (R -> I, the probe flow mirrored)
        drops = fb.counter("drops.clear_inbound")
        fb.put.client.inject([udp4(fb.r_addr, fb.i_addr, PROBE_DPORT, fb.sport,
                                   b"FBPROBE:clear-on-secure")], direction="in")  # fmt: skip
        assert fb.counter("drops.clear_inbound") == drops + 1, "clear packet on a secure flow kept"
        disc = [r for r in fb.audit("clear_inbound_discarded") if r.get("reason") == "flow_secure"]
        assert disc, "the discard was not audited"


@case("FB-25", suite=SUITE, rfc="4301 §5.1", level="MUST", roles="I",
      title="never downgrade: a TCP flow that ran under ESP never leaves in clear after R "
            "vanishes; a new flow falls back after 3 s")  # fmt: skip
def test_fb25_never_downgrade(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no fallback, hence nothing to downgrade")
    with RefFb(ctx, closure="open") as fb:
        fb.tester_policy(require_action(inbound_passthrough=True))
        fb.put_policy(request_action(after_s=3.0))
        a, b = fb.sport + 11, fb.sport + 12
        fb.inject(tcp4(fb.i_addr, fb.r_addr, a, 80, payload=b"FBPROBE:A1"), "TCP A1 (SYN)")
        assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}"
        fb.sync()
        fb.tester.client.terminate()  # R's IKE and ESP vanish (with a Delete)
        fb.tester_policy(None)
        fb.tester.client.misbehave("silent_ike_port", True)
        fb.silent = True
        assert _poll(lambda: fb.state() == "NO_SA"), f"I kept its SA: {fb.state()}"
        ta = fb.t
        fb.inject(tcp4(fb.i_addr, fb.r_addr, a, 80, seq=2, payload=b"FBPROBE:A2"), "TCP A2")
        fb.advance_to(ta + 0.1)
        fb.inject(tcp4(fb.i_addr, fb.r_addr, b, 80, payload=b"FBPROBE:B1"), "TCP B1 (new)")
        fb.step(ta + 3.0 + EPS)
        assert fb.state() == "SOFT"
        fb.advance_to(ta + 3.5)
        fb.inject(tcp4(fb.i_addr, fb.r_addr, a, 80, seq=3, payload=b"FBPROBE:A3"), "TCP A3")
        fb.inject(tcp4(fb.i_addr, fb.r_addr, b, 80, seq=2, payload=b"FBPROBE:B2"), "TCP B2")
        fb.sync()
        clear = [(p.packet.probe or b"").decode() for p in fb.clear_probes()]
        assert not [c for c in clear if c.startswith("A")], f"old flow in clear: {clear}"
        assert clear == ["B1", "B2"], f"clear at R: {clear}, expected B1, B2"
        b1 = fb.clear_probes()[0]
        assert b1.t - ta == pytest.approx(3.0, abs=2e-3), f"new flow fell back after {b1.t - ta}"
        assert fb.counter("drops.never_downgrade") >= 1


# ================================================================================ NAT-T


@case("FB-26", suite=SUITE, rfc="7296 §2.23", level="MUST", roles="I",
      title="R:500 filtered, R:4500 open, IKEv1: nothing to R:4500; require as FB-03, "
            "request as FB-09")  # fmt: skip
def test_fb26_no_4500_retry(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with ctx.step("require"), RefFb(ctx, closure="filtered", ike_version=1) as fb:
            fb.put_policy(require_action())
            before = _r_ike_received(fb)
            fb.probe("P1")
            seen = fb.check_schedule(REF_SENDS)
            assert stamps(seen) == REF_SENDS, f"IKE at {stamps(seen)}"
            _ike_ok(fb, 8)
            fb.step(REF_FAIL + EPS)
            assert fb.state() == "FAILED"
            assert not [s for s in fb.ike if s.port == 4500], "IKE to R:4500"
            assert _r_ike_received(fb) == before, "R:4500 received IKE"
        with ctx.step("request"), RefFb(ctx, closure="filtered", ike_version=1) as fb:
            fb.put_policy(request_action(after_s=3.0))
            fb.probe("P1")
            _fallback_at_3(fb)
            assert not [s for s in fb.ike if s.port == 4500], "IKE to R:4500"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="filtered") as sw:
            sw.tester_node.open_udp([4500])
            t0 = time.time()
            assert not sw.initiate(), "established although R's UDP 500 is closed"
            run = sw.observe(0.0, t0=t0)
            if ctx.recording:
                ctx.recording.attach_text("observed", run.summary())
                ctx.recording.known_behaviour(EMULATED)
            assert not [p for _, p, _ in run.ike if p == 4500], "IKE to R:4500"
            rt = sw.timers
            sends, _ = swan_schedule(rt.timeout, rt.base, rt.tries)
            assert len(run.ike) == len(sends), f"{len(run.ike)} IKE datagrams to R:500"
        return
    _other_peer(ctx)


def _r_ike_received(fb: RefFb) -> int:
    c = fb.tester.client.counters()
    return int(c.get("ikev1", {}).get("received", 0)) + sum(
        int(v) for k, v in c.get("ikev2", {}).items() if k in ("no_config", "malformed_dropped")
    )


@case("FB-27", suite=SUITE, rfc="7296 §2.23", level="MUST", roles="I",
      title="IKEv2 with remote_port 4500, R:500 filtered: IKE_SA_INIT to R:4500 with the "
            "non-ESP marker, negotiation succeeds, ESP in UDP 4500, nothing to R:500")  # fmt: skip
def test_fb27_start_on_4500(ctx: CaseContext) -> None:
    if is_reference(ctx):
        with RefFb(ctx, closure="filtered") as fb:
            fb.tester_policy(require_action(inbound_passthrough=True), remote_port=4500)
            fb.put_policy(require_action(), remote_port=4500)
            fb.probe("P1")
            assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}: no SA over 4500"
            fb.probe("P2")
            fb.sync()
            assert not [s for s in fb.ike if s.port == 500], "IKE to R:500"
            children = fb.put.client.list_sas()["child_sas"]
            assert children, "no Child SA"
            # RFC 7296 §2.23: "When either side is using port 4500, sending ESP with UDP
            # encapsulation is not required" (policy-spec FB-27 says it is): recorded only.
            encap = [bool(c.get("encap")) for c in children]
            fb.attach("ESP form", f"UDP-encapsulated: {encap} (RFC 7296 §2.23: not required)")
            if fb.local:
                got = [(p.packet.probe or b"").decode() for p in fb.protected_probes()]
                assert got == ["P1", "P2"], f"protected at R: {got}"
            else:
                first = [s for s in fb.ike if s.port == 4500]
                assert first and first[0].marker and first[0].exchange == IKE_SA_INIT, (
                    "the first IKE_SA_INIT to R:4500 lacks the non-ESP marker"
                )
                assert fb.protected_probes(), "no ESP on the wire"
        return
    if ctx.peer_name == "strongswan":
        with SwanFb(ctx, closure="filtered") as sw:
            sw.tester_node.open_udp([4500])
            from harness.peers.reference import ReferencePeer

            assert isinstance(sw.tester, ReferencePeer)
            sw.tester.configure(sw.sc)
            _swan_remote_port(sw, 4500)
            t0 = time.time()
            assert sw.initiate(), "no SA over R:4500"
            sw.ping(count=3, interval=0.2)
            run = sw.observe(0.3, t0=t0)
            if ctx.recording:
                ctx.recording.attach_text("observed", run.summary())
                ctx.recording.known_behaviour(EMULATED)
            assert not [p for _, p, _ in run.ike if p == 500], "IKE to R:500"
            on_4500 = [d for _, p, d in run.ike if p == 4500]
            assert on_4500 and on_4500[0][:4] == b"\0\0\0\0", "no non-ESP marker on R:4500"
            assert run.esp >= 3, f"{run.esp} ESP-in-UDP packets"
        return
    _other_peer(ctx)


def _swan_remote_port(sw: SwanFb, port: int) -> None:
    s = sw._session()
    conns = s.get_conns()
    del conns
    sw.put.configure(sw.sc)  # plain connection, then trap with remote_port
    local, remote = sw.sc.local("put"), sw.sc.remote("put")
    s.load_conn({sw.sc.name: {
        "version": "2", "local_addrs": [local.address], "remote_addrs": [remote.address],
        "local_port": str(port), "remote_port": str(port),
        "proposals": ["aes256-sha256-prfsha256-modp2048"],
        "keyingtries": "1", "unique": "never",
        "local": {"auth": "psk", "id": local.identity},
        "remote": {"auth": "psk", "id": remote.identity},
        "children": {sw.sc.child_name: {
            "local_ts": [f"{sw.src}/32"], "remote_ts": [f"{sw.dst}/32"], "mode": "tunnel",
            "start_action": "trap", "esp_proposals": ["aes128gcm16"]}},
    }})  # fmt: skip


@case("FB-28", suite=SUITE, rfc="7296 §2.23, §2.4", level="MUST", roles="I",
      title="behind NAT, R:4500 filtered: IKE_SA_INIT answered on 500, IKE_AUTH from "
            "I:4500 with the marker on the schedule, failure at +64; no fallback")  # fmt: skip
def test_fb28_nat_4500_filtered(ctx: CaseContext) -> None:
    from suites.support.fallback import nat_case

    nat_case(ctx)


@case("FB-29", suite=SUITE, rfc="4301 §5.2, §4.4.1", level="MUST", roles="I",
      title="an all-traffic negotiate rule: IKE itself (UDP 500/4500) never triggers an "
            "ACQUIRE and is never protected or held; an IKE rekey works")  # fmt: skip
def test_fb29_ike_bypass(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(
            ctx,
            "kernel-libipsec refuses a policy covering the IKE peer itself "
            "(allow_peer_ts = no) and has no transport mode",
        )
    with RefFb(ctx, closure="open") as fb:
        fb.tester_policy(require_action(inbound_passthrough=True), all_traffic=True)
        fb.put_policy(require_action(), all_traffic=True)
        fb.probe("P1")
        assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}"
        ike_sa = [s for s in fb.put.client.list_sas()["ike_sas"] if s["established"]]
        assert ike_sa
        fb.put.client.rekey_ike(ike_sa[0]["ike_sa_id"])
        old_id = ike_sa[0]["ike_sa_id"]

        def rekeyed() -> bool:
            sas = fb.put.client.list_sas()["ike_sas"]
            return any(s["established"] and s["ike_sa_id"] != old_id for s in sas)

        assert _poll(rekeyed), "the IKE rekey failed"
        fb.probe("P2")
        fb.sync()
        assert fb.counter("acquires") == 1, f"{fb.counter('acquires')} ACQUIREs (IKE captured?)"
        assert not fb.clear_probes()
        if not fb.local:
            assert isinstance(fb.observer, CaptureObserver)
            ike = [ip for _, ip in fb.observer.wire if ip.proto == 17 and ip.dport in (500, 4500)]
            assert len(ike) >= 3, "IKE (incl. the rekey) not seen as plain UDP on the wire"


@case("FB-30", suite=SUITE, rfc="4301 §5.2", level="MUST", roles="I",
      title="request with pass (windows-nd) against an ND-secure R: R drops the clear "
            "SYN; once ESTABLISHED the SYN goes over ESP; never clear after that")  # fmt: skip
def test_fb30_negotiation_discovery(ctx: CaseContext) -> None:
    if not is_reference(ctx):
        _swan_na(ctx, "no negotiation discovery (pass while negotiating, upgrade later)")
    with RefFb(ctx, closure="open") as fb:
        fb.tester_policy(None, consec="requireinrequestout", profile="windows-nd")
        fb.put_policy(request_action(), profile="windows-nd")
        port = fb.sport + 21
        dropped = fb.r_discarded_clear()
        fb.inject(tcp4(fb.i_addr, fb.r_addr, port, 80, payload=b"FBPROBE:SYN1"), "SYN1")
        assert fb.wait_state("ESTABLISHED"), f"state {fb.state()}"
        fb.inject(tcp4(fb.i_addr, fb.r_addr, port, 80, payload=b"FBPROBE:SYN2"), "SYN2 (retx)")
        fb.inject(tcp4(fb.i_addr, fb.r_addr, port, 80, flags=0x10, seq=2,
                       payload=b"FBPROBE:DATA"), "data")  # fmt: skip
        fb.sync()
        seen = [(p.packet.probe or b"").decode() for p in fb.observer.packets  # type: ignore[union-attr]
                if p.packet.sport == port or p.packet.proto in (17, 50)]  # fmt: skip
        clear = [(p.packet.probe or b"").decode() for p in fb.clear_probes()]
        if fb.local:
            assert "SYN1" not in clear, "R accepted the clear SYN (ND secure)"
            assert fb.r_discarded_clear() > dropped, "R did not discard the clear SYN"
            prot = [(p.packet.probe or b"").decode() for p in fb.protected_probes()]
            assert prot == ["SYN2", "DATA"], f"protected at R: {prot} ({seen})"
        else:
            assert clear in ([], ["SYN1"]), f"clear on the wire: {clear}"
            assert len(fb.protected_probes()) >= 2, "SYN2/DATA not ESP"
        assert "SYN2" not in clear and "DATA" not in clear, "clear after the first ESP packet"
