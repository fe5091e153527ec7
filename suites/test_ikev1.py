"""Suite ikev1: ISAKMP and IKEv1 (catalogue §7, IKEV1-001..017; RFC 2408, RFC 2409, RFC 3706
DPD, RFC 3947 NAT-T).

The harness is the other ISAKMP peer itself (``suites/support/child.py``, :class:`V1Session`,
built on the reference codec and KDF): it chooses every message, derives SKEYID, the phase-1
keys and IVs and each Quick Mode's KEYMAT on its own, checks the PUT's HASH_I/HASH_R, SIG_x,
HASH(1)/(2)/(3) and NAT-D bit-exactly, and opens the PUT's ESP with its own KEYMAT. As
initiator it speaks from a socket of its own on the tester's address; as responder the tester
node is silenced and the harness answers from its address (``suites/support/ike.py`` wires).

The catalogue wrote these cases from the RFCs' structure (its §7 preamble); the sections cited
here are checked against RFC 2408/2409/3706/3947 as published.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from harness.cases import Level, case
from harness.peers.base import (
    AGGRESSIVE,
    CERT_RSA,
    CHILD_SA,
    DPD,
    ESP,
    IKEV1,
    NAT_T,
    PSK,
    TRANSPORT,
    Dpd,
    NotApplicable,
    Proposal,
)
from reference_impl.isakmp import codec as v1
from reference_impl.isakmp.constants import EncapsulationMode, IpsecAttr, NotifyType, VendorId
from reference_impl.isakmp.proposals import Phase2Transform
from reference_impl.sa import IpsecProtocol, Mode
from suites.support.child import (
    TESTER_NET,
    V1Session,
    attach_put_state,
    child_scenario,
    put_children,
    put_delete_child,
    put_net,
    require_trigger,
    trigger_child_rekey,
    ts,
    v1_initiating,
    v1_responding,
    v1_transform,
    virtual_clock,
    wait_for,
)
from suites.support.ike import grade, known, note, recorded, suite_pki

if TYPE_CHECKING:
    from harness.lab import CaseContext
    from harness.peers.base import Scenario
    from suites.support.child import V1Quick, V1Rx

SUITE = "ikev1"
PHASE1 = (IKEV1, PSK)
WITH_CHILD = (IKEV1, PSK, CHILD_SA, ESP)

CBC = Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128")
CBC_PFS = Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048")
ESP_CBC = Phase2Transform(IpsecProtocol.ESP, 12, 128, 5)
"""ESP AES-CBC-128 with HMAC-SHA2-256 (IPsec DOI transform 12, auth algorithm 5)."""
N = NotifyType
FLAGS_IGNORED = {p: "ikev1-reserved-flags-ignored" for p in ("strongswan", "libreswan")}


def _scenario(ctx: CaseContext, **kw: Any) -> Scenario:
    """IKEv1 between the tester's network and the PUT's inner address; phase 1 only for a PUT
    without a data plane."""
    child = ctx.put.capabilities().has(CHILD_SA)
    kw.setdefault("esp_proposals", (CBC,))
    return child_scenario(ctx, ike_version=1, child=child, **kw)


def _quick(s: V1Session, ctx: CaseContext, **kw: Any) -> V1Quick:
    return s.quick_mode([ESP_CBC], ts(TESTER_NET), ts(put_net(ctx)), **kw)


def _short(ctx: CaseContext) -> float:
    """How long to wait for an answer that may legitimately never come."""
    return 0.3 if ctx.topology.backend == "local" else 1.5


def _main_mode(ctx: CaseContext, s: V1Session) -> None:
    with ctx.step("Main Mode"):
        s.main_mode()


def _ping(ctx: CaseContext, s: V1Session, q: V1Quick, what: str) -> None:
    assert q.child is not None, f"{what}: no IPsec SA"
    assert s.plane is not None
    p = s.plane.ping(q.child)
    note(ctx, f"traffic-{q.child.label}", p.text() + "\n" + q.child.describe())
    assert p.ok, f"{what}: {p.text()}"


def _put_qm(ctx: CaseContext, s: V1Session, timeout: float = 6.0) -> V1Quick:
    """Wait for the PUT's Quick Mode and answer it."""
    from suites.support.child import V1_QM

    qm1 = s.next_message(exchange=V1_QM, timeout=timeout, label="QM1")
    assert qm1 is not None, "the PUT sent no Quick Mode"
    return s.answer_quick(qm1)


def _put_mm(ctx: CaseContext, s: V1Session, **kw: Any) -> tuple[bool, str]:
    """Take the PUT's MM1 and answer its Main Mode."""
    from suites.support.child import V1_MM

    mm1 = s.next_message(exchange=V1_MM, timeout=8.0, label="MM1")
    assert mm1 is not None, "the PUT sent no MM1"
    with ctx.step("answer the PUT's Main Mode"):
        return s.answer_main_mode(mm1, **kw)


# --- Main Mode -------------------------------------------------------------------------------


@case(
    "IKEV1-001",
    suite=SUITE,
    rfc="2408 §3.1; 2409 §5",
    level="MUST",
    roles="IR",
    title="Main Mode: six messages, cookies, Message ID 0, E flag only on messages 5 and 6",
    needs=PHASE1,
)
def test_ikev1_001_main_mode_headers(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    if ctx.put_initiates:
        with v1_initiating(ctx, sc) as s:
            ok, what = _put_mm(ctx, s)
            msgs = [m for m in s.messages if m.exchange == 2]
            _headers(ctx, s, msgs, ("MM1", "MM3", "MM5"), initiator_side=True)
            assert ok, f"MM5 does not verify: {what}"
        return
    with v1_responding(ctx, sc) as s:
        _main_mode(ctx, s)
        msgs = [m for m in s.messages if m.exchange == 2]
        _headers(ctx, s, msgs, ("MM2", "MM4", "MM6"), initiator_side=False)


def _headers(
    ctx: CaseContext,
    s: V1Session,
    msgs: list[V1Rx],
    labels: tuple[str, ...],
    *,
    initiator_side: bool,
) -> None:
    note(ctx, "headers", "\n".join(m.header_text() for m in msgs))
    assert [m.label for m in msgs[:3]] == list(labels), (
        f"the PUT's messages: {[m.label for m in msgs]}"
    )
    for i, m in enumerate(msgs[:3]):
        h = m.header
        assert h.version == 0x10, f"{m.label}: version {h.version:#04x} (MjVer 1, MnVer 0)"
        assert h.exchange_type == 2, f"{m.label}: exchange type {h.exchange_type}"
        assert h.message_id == 0, f"{m.label}: Message ID {h.message_id:#x}"
        assert h.icookie == s.icky, f"{m.label}: CKY-I {h.icookie.hex()}"
        if initiator_side and i == 0:
            assert h.rcookie == bytes(8), f"MM1: CKY-R {h.rcookie.hex()} (must be 0)"
        else:
            assert h.rcookie == s.rcky and h.rcookie != bytes(8), (
                f"{m.label}: CKY-R {h.rcookie.hex()}"
            )
        want_e = i == 2
        assert bool(h.flags & 1) == want_e, f"{m.label}: E flag {'set' if h.flags & 1 else 'clear'}"


@case(
    "IKEV1-002",
    suite=SUITE,
    rfc="2409 §5; 2408 §4.2",
    level="MUST",
    roles="R",
    title="Phase 1 answer: one proposal, one of the offered transforms, attributes unchanged",
    needs=PHASE1,
)
def test_ikev1_002_one_transform(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    offer = [
        v1_transform(key_bits=128, hash_id=2, group=5),
        v1_transform(key_bits=256, hash_id=4, group=14),
        v1_transform(encr_id=5, key_bits=None, hash_id=2, group=2),
        v1_transform(key_bits=128, hash_id=4, group=14),
    ]
    with v1_responding(ctx, sc) as s:
        with ctx.step("MM1 with 4 transforms in one proposal"):
            v = s.mm1(offer)
        assert v is not None, "no answer to MM1"
        sa = v.find(v1.SaPayload)
        note(ctx, "answer", v.header_text() + (f"\nSA {sa.raw.hex()}" if sa else ""))
        assert sa is not None, f"no SA in MM2: {v.names()}"
        assert len(v.find_all(v1.SaPayload)) == 1, "more than one SA payload"
        assert len(sa.proposals) == 1, f"{len(sa.proposals)} proposals"
        p = sa.proposals[0]
        assert len(p.transforms) == 1, f"{len(p.transforms)} transforms in the answer"
        t = p.transforms[0]
        offered = [o.to_transform(i + 1) for i, o in enumerate(offer)]
        same = [o for o in offered if o.number == t.number and o.encode_body() == t.body]
        assert same, f"transform #{t.number} {t.body.hex()} is not byte-identical to one offered"


@case(
    "IKEV1-003",
    suite=SUITE,
    rfc="2408 §5.5",
    level="SHOULD",
    roles="R",
    title="No acceptable transform: NO-PROPOSAL-CHOSEN (14) or silence, no ISAKMP SA",
    needs=PHASE1,
)
def test_ikev1_003_no_proposal(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    with v1_responding(ctx, sc) as s:
        with ctx.step("MM1 offering only DES/MD5/MODP-768"):
            v = s.mm1(
                [v1_transform(encr_id=1, key_bits=None, hash_id=1, group=1)], timeout=_short(ctx)
            )
        note(ctx, "answer", v.header_text() if v else "silence")
        if v is None:
            return
        assert v.find(v1.SaPayload) is None, "the PUT accepted DES/MD5/MODP-768"
        n = v.find(v1.NotifyPayload)
        assert not v.encrypted and n is not None, f"unexpected answer: {v.header_text()}"
        assert n.notify_type == N.NO_PROPOSAL_CHOSEN, f"Notify {n.notify_type} (want 14)"


@case(
    "IKEV1-004",
    suite=SUITE,
    rfc="2409 §5, §5.4",
    level="MUST",
    roles="IR",
    title="PSK Main Mode: SKEYID, HASH_I/HASH_R and the phase-1 IV as the harness derives them",
    needs=PHASE1,
)
def test_ikev1_004_psk_hashes(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    if ctx.put_initiates:
        with v1_initiating(ctx, sc) as s:
            ok, what = _put_mm(ctx, s)
            note(ctx, "hash-i", what)
            assert ok, f"HASH_I of the PUT: {what}"
        return
    with v1_responding(ctx, sc) as s:
        s.mm1()
        s.mm3()
        v, ok, what = s.mm5()
        note(ctx, "hash-r", what)
        assert v is not None, "no MM6"
        assert ok, f"HASH_R of the PUT: {what}"


@case(
    "IKEV1-005",
    suite=SUITE,
    rfc="2409 §5",
    level="MUST",
    roles="R",
    title="A wrong PSK (HASH_I) establishes no ISAKMP SA",
    needs=PHASE1,
)
def test_ikev1_005_wrong_psk(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    with v1_responding(ctx, sc) as s:
        s.mm1()
        s.mm3()
        with ctx.step("MM5 with HASH_I from a wrong PSK"):
            v, ok, what = s.mm5(psk=b"not-the-psk", timeout=_short(ctx))
        s.pump(_short(ctx) / 2)
        s.next_message(timeout=0.0)
        lines = [v.header_text() if v else "no MM6", what]
        lines += [m.header_text() for m in s.messages if m.exchange == 5]
        assert not ok, f"the PUT answered a wrong HASH_I with a valid MM6: {what}"
        if v is not None and v.encrypted:
            lines.append(f"decrypted MM6: {v.names()}")
        infos = [m for m in s.messages if m.exchange == 5]
        for m in infos:
            if not m.encrypted:
                n = m.find(v1.NotifyPayload)
                lines.append(f"Notify {n.notify_type if n else '-'}")
                if n is not None and n.notify_type not in (23, 24):
                    recorded(ctx, f"answered with Notify {n.notify_type} (23 or 24 expected)")
        with ctx.step("Quick Mode on the rejected SA"):
            s.established = True
            s.last_p1 = s.iv
            q = _quick(s, ctx, timeout=_short(ctx))
            s.established = False
        lines.append(f"Quick Mode: hash_ok={q.hash_ok} refused={q.refused}")
        note(ctx, "outcome", "\n".join(lines))
        assert not q.hash_ok, "a Quick Mode succeeded on an ISAKMP SA with a wrong PSK"


@case(
    "IKEV1-006",
    suite=SUITE,
    rfc="2409 §5.1",
    level="MUST",
    roles="IR",
    title="RSA signature Main Mode: SIG_I/SIG_R over HASH_I/HASH_R, certificates exchanged",
    needs=(IKEV1, CERT_RSA),
)
def test_ikev1_006_rsa_signatures(ctx: CaseContext) -> None:
    pki = suite_pki(ctx)
    sc = pki.scenario(_scenario(ctx))
    ctx.put.capabilities().require((), sc)
    me, put_cred = pki.creds["tester-rsa"], pki.creds["put-rsa"]
    if ctx.put_initiates:
        with v1_initiating(ctx, sc, cred=me, peer_cert=put_cred.cert) as s:
            ok, what = _put_mm(ctx, s)
            note(ctx, "sig-i", what)
            assert ok, f"the PUT's SIG_I: {what}"
            assert s.established
        return
    with v1_responding(ctx, sc, cred=me, peer_cert=put_cred.cert) as s:
        s.mm1([v1_transform(auth=3)])
        s.mm3()
        v, ok, what = s.mm5()
        note(ctx, "sig-r", what + (f"\nMM6: {v.names()}" if v else ""))
        assert v is not None, "no MM6: the PUT did not accept our SIG_I"
        assert ok, f"the PUT's SIG_R: {what}"


@case(
    "IKEV1-007",
    suite=SUITE,
    rfc="2409 §5, §5.4",
    level="SHOULD",
    roles="R",
    title="Aggressive Mode: three messages, one group, HASH_R verifies; refused when disabled",
    needs=(IKEV1, PSK, AGGRESSIVE),
)
def test_ikev1_007_aggressive_mode(ctx: CaseContext) -> None:
    t = v1_transform()
    lines = []
    with v1_responding(ctx, _scenario(ctx, aggressive=True), plane=True) as s:
        with ctx.step("Aggressive Mode (allowed)"):
            v, ok, what = s.aggressive_mode(t)
        lines.append(f"allowed: {v.header_text() if v else 'no AM2'}; {what}")
        assert v is not None and ok, f"Aggressive Mode failed: {what}"
        assert s.chosen.group == t.group, f"AM2 changed the group to {s.chosen.group}"
        if ctx.put.capabilities().has(CHILD_SA):
            with ctx.step("Quick Mode after Aggressive Mode"):
                q = _quick(s, ctx)
            lines.append(f"Quick Mode: hash_ok={q.hash_ok}")
            assert q.hash_ok, "Quick Mode after Aggressive Mode failed"
            _ping(ctx, s, q, "ESP after Aggressive Mode")
    with v1_responding(ctx, _scenario(ctx, aggressive=False)) as s2:
        with ctx.step("Aggressive Mode (not allowed)"):
            v2, ok2, what2 = s2.aggressive_mode(t, timeout=_short(ctx))
        lines.append(f"disabled: {v2.header_text() if v2 else 'silence'}; {what2}")
        note(ctx, "aggressive", "\n".join(lines))
        assert not ok2, "Aggressive Mode was accepted with Aggressive Mode disabled"


# --- Quick Mode ------------------------------------------------------------------------------


@case(
    "IKEV1-008",
    suite=SUITE,
    rfc="2409 §5.5",
    level="MUST",
    roles="IR",
    title="Quick Mode: HASH(1)/(2)/(3), nonzero distinct Message IDs, KEYMAT opens the PUT's ESP",
    needs=WITH_CHILD,
)
def test_ikev1_008_quick_mode(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    if ctx.put_initiates:
        require_trigger(ctx)
        with v1_initiating(ctx, sc, plane=True) as s:
            ok, what = _put_mm(ctx, s)
            assert ok, what
            qs = [_put_qm(ctx, s)]
            with ctx.step("four more Quick Modes (the PUT rekeys)"):
                for _ in range(4):
                    c = qs[-1].child
                    assert c is not None
                    trigger_child_rekey(ctx, c.spi_out)
                    qs.append(_put_qm(ctx, s))
            mids = [q.msgid for q in qs]
            note(
                ctx,
                "quick-modes",
                "\n".join(
                    f"M-ID {q.msgid:#010x} hashes {'ok' if q.hash_ok else 'BAD'}" for q in qs
                ),
            )
            assert all(mids), f"a Quick Mode with Message ID 0: {mids}"
            assert len(set(mids)) == len(mids), f"Message IDs repeat: {[hex(m) for m in mids]}"
            bad = [hex(q.msgid) for q in qs if not q.hash_ok]
            assert not bad, f"HASH(1)/HASH(3) do not verify in {bad}"
            _ping(ctx, s, qs[-1], "ESP on the last Quick Mode's SA")
        return
    with v1_responding(ctx, sc, plane=True) as s:
        _main_mode(ctx, s)
        qs = []
        with ctx.step("five Quick Modes"):
            for _ in range(5):
                qs.append(_quick(s, ctx))
        note(
            ctx,
            "quick-modes",
            "\n".join(
                f"M-ID {q.msgid:#010x} HASH(2) {'ok' if q.hash_ok else 'BAD'} {q.refused or ''}"
                for q in qs
            ),
        )
        bad = [hex(q.msgid) for q in qs if not q.hash_ok]
        assert not bad, f"HASH(2) does not verify (or no QM2) in {bad}"
        answered = [m for q in qs for m in q.messages if m.header.message_id != q.msgid]
        assert not answered, "a QM2 carries another Message ID"
        _ping(ctx, s, qs[-1], "ESP on the last Quick Mode's SA")


@case(
    "IKEV1-009",
    suite=SUITE,
    rfc="2409 §5.5",
    level="MUST",
    roles="IR",
    title="Quick Mode with PFS: KE in QM1 and QM2, g(qm)^xy in KEYMAT",
    needs=WITH_CHILD,
)
def test_ikev1_009_quick_mode_pfs(ctx: CaseContext) -> None:
    sc = _scenario(ctx, esp_proposals=(CBC_PFS,))
    if ctx.put_initiates:
        with v1_initiating(ctx, sc, plane=True) as s:
            ok, what = _put_mm(ctx, s)
            assert ok, what
            q = _put_qm(ctx, s)
            ke = q.messages[0].find(v1.KePayload)
            note(ctx, "qm1", q.messages[0].header_text())
            assert ke is not None, f"no KE in the PUT's QM1: {q.messages[0].names()}"
            assert q.child is not None and q.child.pfs_group == 14, "no PFS group 14 negotiated"
            _ping(ctx, s, q, "ESP with PFS KEYMAT")
        return
    with v1_responding(ctx, sc, plane=True) as s:
        _main_mode(ctx, s)
        q = _quick(s, ctx, pfs_group=14)
        qm2 = q.messages[0] if q.messages else None
        note(ctx, "qm2", qm2.header_text() if qm2 else "no QM2")
        assert qm2 is not None and q.hash_ok, f"Quick Mode with PFS failed: {q.refused}"
        assert qm2.find(v1.KePayload) is not None, f"no KE in QM2: {qm2.names()}"
        _ping(ctx, s, q, "ESP with PFS KEYMAT")


@case(
    "IKEV1-010",
    suite=SUITE,
    rfc="2409 §5.5",
    level="SHOULD",
    roles="R",
    title="Client IDs outside the policy: INVALID-ID-INFORMATION (18) or silence, no IPsec SA",
    needs=WITH_CHILD,
)
def test_ikev1_010_invalid_id(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    with v1_responding(ctx, sc) as s:
        _main_mode(ctx, s)
        with ctx.step("QM1 with IDci 192.0.2.0/24"):
            q = s.quick_mode([ESP_CBC], ts("192.0.2.0/24"), ts(put_net(ctx)), timeout=_short(ctx))
        n = q.refused
        note(
            ctx,
            "answer",
            f"hash_ok={q.hash_ok} refused with "
            f"{n.notify_type if n is not None else 'nothing (silence)'}",
        )
        if q.hash_ok:
            grade(ctx, Level.MUST, "the PUT made an IPsec SA for client IDs outside its policy")
            return
        if n is not None:
            assert n.notify_type == N.INVALID_ID_INFORMATION, (
                f"refused with Notify {n.notify_type} (18, INVALID-ID-INFORMATION, expected)"
            )


@case(
    "IKEV1-011",
    suite=SUITE,
    rfc="2409 §5.7; 2408 §3.15",
    level="MUST",
    roles="IR",
    title="Protected Informational Delete: the PUT honours ours and sends its own",
    needs=WITH_CHILD,
)
def test_ikev1_011_delete(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    if ctx.put_initiates:
        with v1_initiating(ctx, sc, plane=True) as s:
            ok, what = _put_mm(ctx, s)
            assert ok, what
            a = _put_qm(ctx, s)
            b = _quick(s, ctx)
            _deletes(ctx, s, a, b)
        return
    with v1_responding(ctx, sc, plane=True) as s:
        _main_mode(ctx, s)
        a, b = _quick(s, ctx), _quick(s, ctx)
        _deletes(ctx, s, a, b)


def _deletes(ctx: CaseContext, s: V1Session, a: V1Quick, b: V1Quick) -> None:
    assert a.child is not None and b.child is not None, "Quick Modes failed"
    assert s.plane is not None
    lines = []
    _ping(ctx, s, a, "SA A before its Delete")
    with ctx.step("(a) the harness deletes SA A"):
        s.info([v1.DeletePayload(3, (a.child.spi_in,), 4)])
        a.child.alive = False
        wait_for(lambda: a.child is not None and a.child.spi_out_int not in
                 {c.spi_in for c in put_children(ctx)}, 2.0)  # fmt: skip
        before = len(s.plane.frames)
        p = s.plane.ping(a.child, expect=False)
        used = [f for f in s.plane.frames[before:] if f.child == a.child.label]
    lines.append(f"(a) after our Delete: {p.text()}; the PUT sent {len(used)} on A")
    with ctx.step("(b) the operator deletes SA B on the PUT"):
        put_delete_child(ctx, b.child.spi_out)
        v, hash_ok = s.next_info(
            lambda m: any(isinstance(x, v1.DeletePayload) for x in m.payloads), timeout=3.0
        )
    dels = [x for x in v.payloads if isinstance(x, v1.DeletePayload)] if v else []
    lines.append(
        f"(b) the PUT's Informational: {v.header_text() if v else 'none'} HASH(1) "
        f"{'ok' if hash_ok else 'BAD'}; Deletes "
        + str([(d.protocol_id, [x.hex() for x in d.spis]) for d in dels])
    )
    note(ctx, "deletes", "\n".join(lines))
    attach_put_state(ctx)
    assert p.delivered == 0, "the PUT still accepts ESP on SA A after our Delete"
    assert not used, "the PUT still sends ESP on SA A after our Delete"
    assert v is not None, "the PUT sent no Delete for SA B"
    assert v.encrypted and hash_ok, "the PUT's Delete is not protected with a valid HASH(1)"
    assert any(d.protocol_id == 3 and b.child.spi_out in d.spis for d in dels), (
        f"the Delete does not name the PUT's inbound SPI {b.child.spi_out.hex()}"
    )


# --- DPD (RFC 3706) --------------------------------------------------------------------------


@case(
    "IKEV1-012",
    suite=SUITE,
    rfc="3706 §5.1, §5.2, §5.3",
    level="MUST",
    roles="R",
    title="DPD: Vendor ID exchanged; R-U-THERE answered with R-U-THERE-ACK echoing the sequence",
    needs=(IKEV1, PSK, DPD),
)
def test_ikev1_012_dpd_ack(ctx: CaseContext) -> None:
    sc = _scenario(ctx, dpd=Dpd(delay=30.0, timeout=120.0))
    with v1_responding(ctx, sc) as s:
        _main_mode(ctx, s)
        dpd_vid = VendorId.DPD in s.peer_vids
        if not dpd_vid:
            raise NotApplicable(["the PUT did not signal DPD (no RFC 3706 Vendor ID)"])
        seq = (0x1234).to_bytes(4, "big")
        with ctx.step("R-U-THERE seq 0x1234"):
            s.info([v1.NotifyPayload(N.R_U_THERE, 1, s.cookies, seq)])
            v, ok = s.next_info(
                lambda m: any(
                    isinstance(x, v1.NotifyPayload) and x.notify_type == N.R_U_THERE_ACK
                    for x in m.payloads
                ),
                timeout=3.0,
            )
        n = next((x for x in v.payloads if isinstance(x, v1.NotifyPayload)), None) if v else None
        note(
            ctx,
            "dpd",
            f"ack: {v.header_text() if v else 'none'}; HASH(1) ok={ok}"
            + (f"; SPI {n.spi.hex()} data {n.data.hex()}" if n else ""),
        )
        assert v is not None and n is not None, "no R-U-THERE-ACK"
        assert ok, "the ACK's HASH(1) does not verify"
        assert n.spi == s.cookies, f"ACK SPI {n.spi.hex()} is not CKY-I|CKY-R"
        assert n.data == seq, f"ACK sequence {n.data.hex()} (want 00001234)"


@case(
    "IKEV1-013",
    suite=SUITE,
    rfc="3706 §5, §7",
    level="MUST",
    roles="I",
    title="DPD sender: increasing sequence numbers, the peer declared dead after silence",
    needs=(IKEV1, PSK, DPD, CHILD_SA, ESP),
)
def test_ikev1_013_dpd_dead(ctx: CaseContext) -> None:
    reference = ctx.put.kind == "reference"
    delay, timeout = (10.0, 30.0) if reference else (2.0, 6.0)
    sc = _scenario(ctx, dpd=Dpd(delay=delay, timeout=timeout, action="clear"))
    with v1_initiating(ctx, sc) as s, virtual_clock(ctx) as advance:
        ok, what = _put_mm(ctx, s)
        assert ok, what
        if sc.child:
            _put_qm(ctx, s)
        probes: dict[int, int] = {}
        gone = False
        deadline = time.monotonic() + (8.0 if reference else delay + timeout + 6.0)
        with ctx.step("the harness stops answering"):
            while time.monotonic() < deadline:
                if reference:
                    advance(delay)
                v, _ok = s.next_info(timeout=0.1 if reference else 1.0)
                if v is not None:
                    for n in v.payloads:
                        if isinstance(n, v1.NotifyPayload) and n.notify_type == N.R_U_THERE:
                            probes.setdefault(v.header.message_id, int.from_bytes(n.data, "big"))
                if not any(x.established for x in ctx.put.list_sas()):
                    gone = True
                    break
        seqs = list(probes.values())
        note(
            ctx,
            "dpd",
            "R-U-THERE sequence numbers in order (one per Message ID): "
            f"{[hex(x) for x in seqs]}; ISAKMP SA cleared: {gone}",
        )
        assert len(seqs) >= 2, f"{len(seqs)} R-U-THERE before the PUT gave up"
        # a retransmitted probe keeps its number; each new probe must take a higher one
        steps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a]
        assert all(b > a for a, b in steps), (
            f"sequence numbers do not increase: {[hex(x) for x in seqs]}"
        )
        assert gone, "the PUT did not declare the peer dead"
        if not steps:
            known(ctx, {"strongswan": "strongswan-ikev1-dpd-retransmits"})
            recorded(
                ctx,
                f"one R-U-THERE sequence number ({seqs[0]:#x}) sent {len(seqs)} times "
                "(retransmissions under new Message IDs) before the peer was declared dead: no "
                "second probe to check the increment on",
            )


# --- NAT-T (RFC 3947) ------------------------------------------------------------------------


@case(
    "IKEV1-014",
    suite=SUITE,
    rfc="3947 §3.1, §3.2",
    level="MUST",
    roles="IR",
    title="NAT-T: RFC 3947 Vendor ID; NAT-D hashes, the first for the remote end",
    needs=(IKEV1, PSK, NAT_T),
)
def test_ikev1_014_nat_detection(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    if ctx.put_initiates:
        with v1_initiating(ctx, sc) as s:
            _ok, _what = _put_mm(ctx, s)
            first = next((m for m in s.messages if m.label == "MM1"), None)
            carrier = next((m for m in s.messages if m.label == "MM3"), None)
            _natd(ctx, s, first, carrier, s.natd(s.me.address, s._port()))
        return
    with v1_responding(ctx, sc) as s:
        v = s.mm1()
        v4 = s.mm3()
        _natd(ctx, s, v, v4, s.natd(s.me.address, s._port()))


def _natd(
    ctx: CaseContext, s: V1Session, vid_msg: V1Rx | None, carrier: V1Rx | None, ours: bytes
) -> None:
    assert vid_msg is not None and carrier is not None, "Main Mode did not get that far"
    vids = [x.data for x in vid_msg.find_all(v1.VendorIdPayload)]
    natds = carrier.find_all(v1.NatDPayload)
    own = s.natd(s.put.address, 500)
    note(
        ctx,
        "nat-t",
        f"{vid_msg.label} Vendor IDs: {[x.hex() for x in vids]}\n"
        f"{carrier.label} NAT-D: {[n.hash.hex() for n in natds]}\n"
        f"recomputed: remote end (us) {ours.hex()}, the PUT itself {own.hex()}",
    )
    known(ctx, {"strongswan": "strongswan-libipsec-fakes-nat"})
    assert VendorId.NAT_T_RFC3947 in vids, "no RFC 3947 Vendor ID"
    assert len(natds) >= 2, f"{len(natds)} NAT-D payloads"
    assert natds[0].hash == ours, "the first NAT-D is not the hash of our address and port"
    if all(n.hash != own for n in natds[1:]):
        recorded(
            ctx,
            "the PUT's own NAT-D does not match its address and port: it claims a NAT "
            "in front of itself (UDP encapsulation forced)",
        )


@case(
    "IKEV1-015",
    suite=SUITE,
    rfc="3947 §4",
    level="MUST",
    roles="I",
    title="NAT detected: the initiator moves to UDP 4500 with the non-ESP marker from MM5 on",
    needs=(IKEV1, PSK, NAT_T),
)
def test_ikev1_015_float(ctx: CaseContext) -> None:
    sc = _scenario(ctx)
    with v1_initiating(ctx, sc) as s:
        _ok, what = _put_mm(ctx, s, forge_natd=True)
        mm5 = next((m for m in s.messages if m.label == "MM5"), None)
        note(
            ctx,
            "mm5",
            f"MM5 to port {mm5.rx.port if mm5 else '-'} marker "
            f"{mm5.rx.marker if mm5 else '-'}; HASH_I {what}",
        )
        assert mm5 is not None, "no MM5"
        assert mm5.rx.port == 4500 and mm5.rx.marker, (
            f"MM5 came to port {mm5.rx.port} {'with' if mm5.rx.marker else 'without'} the marker"
        )


@case(
    "IKEV1-016",
    suite=SUITE,
    rfc="3947 §5.1, §5.2",
    level="MUST",
    roles="IR",
    title="Behind a NAT Quick Mode uses UDP-Encapsulated modes (3/4), NAT-OA in transport mode",
    needs=(IKEV1, PSK, NAT_T, CHILD_SA, ESP),
)
def test_ikev1_016_udp_encapsulated_modes(ctx: CaseContext) -> None:
    lines: list[str] = []
    modes = ["tunnel"]
    if ctx.put.capabilities().has(TRANSPORT):
        modes.append("transport")
    else:
        lines.append(f"transport mode: not applicable ({ctx.put.capabilities().reason(TRANSPORT)})")
    for mode in modes:
        sc = _scenario(ctx, mode=mode)
        want = (EncapsulationMode.UDP_ENCAPSULATED_TUNNEL if mode == "tunnel"
                else EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT)  # fmt: skip
        if ctx.put_initiates:
            with v1_initiating(ctx, sc, plane=True) as s:
                ok, what = _put_mm(ctx, s, forge_natd=True)
                assert ok, what
                q = _put_qm(ctx, s)
                _encap_check(ctx, s, q, q.messages[0], int(want), mode, lines)
        else:
            with v1_responding(ctx, sc, plane=True) as s:
                s.mm1()
                s.mm3(forge_natd=True)
                _v, ok, what = s.mm5()
                assert ok, what
                m = Mode.TUNNEL if mode == "tunnel" else Mode.TRANSPORT
                if m is Mode.TRANSPORT:
                    local, remote = ts(f"{s.me.address}/32"), ts(f"{s.put.address}/32")
                else:
                    local, remote = ts(TESTER_NET), ts(put_net(ctx))
                q = s.quick_mode([ESP_CBC], local, remote, mode=m, encap=True,
                                 nat_oa=m is Mode.TRANSPORT)  # fmt: skip
                assert q.messages and q.hash_ok, f"Quick Mode failed: {q.refused}"
                _encap_check(ctx, s, q, q.messages[0], int(want), mode, lines)
    note(ctx, "encapsulation", "\n".join(lines))


def _encap_check(
    ctx: CaseContext, s: V1Session, q: V1Quick, msg: V1Rx, want: int, mode: str, lines: list[str]
) -> None:
    sa = msg.find(v1.SaPayload)
    assert sa is not None, f"{msg.label} without SA"
    attr = sa.proposals[0].transforms[0].attr(IpsecAttr.ENCAPSULATION_MODE)
    got = attr.value if attr is not None else None
    oas = msg.find_all(v1.NatOaPayload)
    lines.append(f"{mode}: {msg.label} Encapsulation Mode {got}, NAT-OA {len(oas)}")
    assert got == want, f"{mode}: Encapsulation Mode {got} (want {want})"
    if mode == "transport":
        assert oas, f"{msg.label} in transport mode behind a NAT has no NAT-OA"
    assert q.child is not None and q.child.encap
    _ping(ctx, s, q, f"{mode}: ESP in UDP")
    assert s.plane is not None
    udp = [f for f in s.plane.frames if f.child == q.child.label and f.udp]
    assert udp, f"{mode}: the PUT's ESP is not in UDP"


# --- header errors (RFC 2408 §5.2) -----------------------------------------------------------


@case(
    "IKEV1-017",
    suite=SUITE,
    rfc="2408 §5.2",
    level="SHOULD",
    roles="R",
    title="Bad major version, unknown exchange type, reserved flags: dropped or notified",
    needs=PHASE1,
)
def test_ikev1_017_header_errors(ctx: CaseContext) -> None:
    import os

    from reference_impl.isakmp.proposals import phase1_sa

    sc = _scenario(ctx)
    lines = []
    with v1_responding(ctx, sc) as s:
        sa = phase1_sa([v1_transform()])
        for what, version, xchg, flags, ok_notify in (
            ("MjVer 2", 0x20, 2, 0, N.INVALID_MAJOR_VERSION),
            ("exchange type 250", 0x10, 250, 0, N.INVALID_EXCHANGE_TYPE),
            ("reserved flags 0xf8", 0x10, 2, 0xF8, N.INVALID_FLAGS),
        ):
            icky = os.urandom(8)
            body = v1.encode_payloads([sa, *s.vids()])
            hdr = struct_header(
                icky, bytes(8), sa.payload_type, version, xchg, flags, 0, 28 + len(body)
            )
            s.icky = icky
            with ctx.step(f"MM1 with {what}"):
                v = s.mm1(raw=hdr + body, timeout=_short(ctx))
            if v is None:
                lines.append(f"{what}: silence")
                continue
            n = v.find(v1.NotifyPayload)
            lines.append(f"{what}: {v.header_text()}")
            if v.find(v1.SaPayload) is not None:
                note(ctx, "answers", "\n".join(lines))
                known(ctx, FLAGS_IGNORED)
                raise AssertionError(f"{what}: the PUT answered with an SA (MM2)")
            if n is not None and n.notify_type != ok_notify:
                grade(ctx, Level.SHOULD, f"{what}: Notify {n.notify_type} (not {int(ok_notify)})")
        s.icky = os.urandom(8)
        s.rcky = bytes(8)
        with ctx.step("a valid MM1 afterwards"):
            v = s.mm1()
        lines.append(f"valid MM1: {v.header_text() if v else 'no answer'}")
        note(ctx, "answers", "\n".join(lines))
        assert v is not None and v.find(v1.SaPayload) is not None, "the PUT stopped answering"


def struct_header(
    icky: bytes, rcky: bytes, nxt: int, version: int, xchg: int, flags: int, mid: int, length: int
) -> bytes:
    """An ISAKMP header with chosen fields (RFC 2408 §3.1)."""
    import struct

    return struct.pack("!8s8sBBBBII", icky, rcky, nxt, version, xchg, flags, mid, length)
