"""Suite ikev2-child: Child SAs, traffic selectors and narrowing, transport mode, PFS, rekeying
of Child SAs and of the IKE SA (also simultaneous), CREATE_CHILD_SA failures (catalogue §3,
IKEV2-CHILD-001..020; RFC 7296 §1.3, §2.8, §2.9, §2.17, §2.18, §2.25).

The harness is the other end of the IKE SA itself (``suites/support/child.py``: a
:class:`Session` over the scripted IKEv2 peer of ``suites/support/ike.py``): it chooses the
selectors, proposals, nonces and notifies, derives every key itself, and checks the Child SAs
the PUT makes with ESP it encrypts and the PUT's ESP it opens with those keys. Rekeys and
lifetimes the PUT starts itself run on the reference node's virtual clock; strongSwan gets
lifetimes of a few seconds or a vici ``rekey``.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from harness.cases import Level, case
from harness.peers.base import (
    CHILD_SA,
    CHILDLESS,
    ESP,
    IKEV2,
    PSK,
    TRANSPORT,
    TUNNEL,
    Lifetimes,
    Proposal,
)
from reference_impl.ike import payloads as v2p
from suites.support.child import (
    TESTER_NET,
    HarnessChild,
    Incoming,
    Session,
    attach_put_state,
    child_scenario,
    covers_address,
    esp_proposal,
    initiating,
    net_host,
    put_children,
    put_inner,
    put_net,
    require_trigger,
    responding,
    trigger_child_rekey,
    trigger_ike_rekey,
    ts,
    ts_text,
    ts_within,
    virtual_clock,
    wait_for,
)
from suites.support.ike import (
    CREATE_CHILD_SA,
    INFORMATIONAL,
    N,
    grade,
    known,
    note,
    notify,
    recorded,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from harness.lab import CaseContext
    from harness.peers.base import Scenario
    from reference_impl.sa import TrafficSelector
    from suites.support.ike import HarnessSa

SUITE = "ikev2-child"
WITH_CHILD = (IKEV2, PSK, CHILD_SA, ESP, TUNNEL)
IKE_ONLY = (IKEV2, PSK)

GCM = "AES_GCM_16_128"
GCM_PFS = Proposal.parse("AES_GCM_16_128/ECP_256")
ECP_256 = 19
MODP_2048 = 14


def _pfs_scenario(ctx: CaseContext, **kw: object) -> Scenario:
    return child_scenario(ctx, esp_proposals=(GCM_PFS,), **kw)  # type: ignore[arg-type]


def _ike_only(ctx: CaseContext) -> Scenario:
    """The child networks, or no Child SA at all for a PUT without a data plane (RFC 6023)."""
    if ctx.put.capabilities().has(CHILD_SA):
        return child_scenario(ctx)
    ctx.put.capabilities().require((CHILDLESS,))
    return child_scenario(ctx, child=False)


def _ping(ctx: CaseContext, s: Session, child: HarnessChild, what: str, **kw: object) -> None:
    """Echo traffic on ``child`` must pass both ways (MUST: the Child SA works)."""
    assert s.plane is not None
    p = s.plane.ping(child, **kw)  # type: ignore[arg-type]
    note(ctx, f"traffic-{child.label}", p.text())
    assert p.ok, f"{what}: {p.text()}"


def _reply_on(s: Session, child: HarnessChild, what: str) -> None:
    """The PUT's own packets must come back on ``child`` and verify with our keys."""
    assert s.plane is not None
    frames = [f for f in s.plane.frames if f.child == child.label]
    assert frames, f"{what}: the PUT sent nothing on {child.label} (SPI {child.spi_in.hex()})"
    bad = [f for f in frames if not f.ok]
    assert not bad, f"{what}: {len(bad)} of {len(frames)} packets do not verify: {bad[0].line()}"


def _times(
    ctx: CaseContext, *, virtual: tuple[float, float], real: tuple[float, float]
) -> tuple[float, float]:
    """(rekey, life) of a lifetime case: long on the reference's virtual clock, a few seconds
    for peers the harness must wait for in real time."""
    return virtual if ctx.put.kind == "reference" else real


@contextlib.contextmanager
def _session(ctx: CaseContext, sc: Scenario) -> Iterator[Session]:
    """The session in the case's role: the harness initiates (R) or the PUT does (I)."""
    if ctx.put_initiates:
        require_trigger(ctx, "initiate")
        with initiating(ctx, sc) as a:
            yield a.session
    else:
        with responding(ctx, sc, child=sc.child, plane=sc.child) as o:
            yield o.session


# --- §2.9 traffic selectors ------------------------------------------------------------------


@case(
    "IKEV2-CHILD-001",
    suite=SUITE,
    rfc="7296 §2.9",
    level="MUST",
    roles="R",
    title="No narrowing needed: the responder returns the same TSi/TSr and traffic flows",
    needs=WITH_CHILD,
)
def test_child_001_same_ts(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    tsi, tsr = [ts(TESTER_NET)], [ts(put_net(ctx))]
    with responding(ctx, sc, tsi=tsi, tsr=tsr) as o:
        c = o.child
        assert c is not None
        note(
            ctx,
            "selectors",
            f"proposed TSi {ts_text(tsi)} TSr {ts_text(tsr)}\n"
            f"answered TSi {ts_text(c.tsi)} TSr {ts_text(c.tsr)}",
        )
        assert c.tsi == tsi, f"TSi {ts_text(c.tsi)} (proposed {ts_text(tsi)})"
        assert c.tsr == tsr, f"TSr {ts_text(c.tsr)} (proposed {ts_text(tsr)})"
        _ping(ctx, o.session, c, "traffic tester -> PUT inner addresses", count=2)


@case(
    "IKEV2-CHILD-002",
    suite=SUITE,
    rfc="7296 §2.9",
    level="MUST",
    roles="R",
    title="Narrowing keeps the first (triggering) selector when it is acceptable, never wider",
    needs=WITH_CHILD,
)
def test_child_002_first_ts_kept(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    a, b = net_host(TESTER_NET, 5), put_inner(ctx)
    tsi = [ts(f"{a}/32", 6, 1234, 1234), ts("198.16.0.0/12")]
    tsr = [ts(f"{b}/32", 6, 80, 80), ts("198.16.0.0/12")]
    with responding(ctx, sc, tsi=tsi, tsr=tsr) as o:
        c = o.child
        assert c is not None
        note(
            ctx,
            "selectors",
            f"policy of the PUT: {TESTER_NET} <-> {put_net(ctx)}\n"
            f"proposed TSi {ts_text(tsi)}\n         TSr {ts_text(tsr)}\n"
            f"answered TSi {ts_text(c.tsi)}\n         TSr {ts_text(c.tsr)}",
        )
        _narrowed(c, tsi, tsr, (TESTER_NET, put_net(ctx)))
        assert covers_address(c.tsi, a), f"TSi {ts_text(c.tsi)} lacks the first selector's {a}"
        assert covers_address(c.tsr, b), f"TSr {ts_text(c.tsr)} lacks the first selector's {b}"


def _narrowed(
    c: HarnessChild,
    tsi: list[TrafficSelector],
    tsr: list[TrafficSelector],
    policy: tuple[str, str],
) -> None:
    """Non-empty, inside what was proposed and inside the PUT's policy (RFC 7296 §2.9)."""
    assert c.tsi and c.tsr, f"empty selectors: TSi {ts_text(c.tsi)} TSr {ts_text(c.tsr)}"
    for got, offered, mine, name in (
        (c.tsi, tsi, policy[0], "TSi"),
        (c.tsr, tsr, policy[1], "TSr"),
    ):
        for t in got:
            assert ts_within(t, offered), f"{name} {ts_text([t])} is wider than proposed"
            assert ts_within(t, [ts(mine)]), f"{name} {ts_text([t])} is outside the policy {mine}"


@case(
    "IKEV2-CHILD-003",
    suite=SUITE,
    rfc="7296 §2.9",
    level="MUST",
    roles="R",
    title="0.0.0.0/0 <-> 0.0.0.0/0 is narrowed to a non-empty subset of the policy",
    needs=WITH_CHILD,
)
def test_child_003_narrow_any(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    tsi, tsr = [ts("0.0.0.0/0")], [ts("0.0.0.0/0")]
    with responding(ctx, sc, tsi=tsi, tsr=tsr) as o:
        c = o.child
        assert c is not None
        note(
            ctx,
            "selectors",
            f"policy of the PUT: {TESTER_NET} <-> {put_net(ctx)}\n"
            "proposed 0.0.0.0/0 <-> 0.0.0.0/0\n"
            f"answered TSi {ts_text(c.tsi)} TSr {ts_text(c.tsr)}",
        )
        _narrowed(c, tsi, tsr, (TESTER_NET, put_net(ctx)))


@case(
    "IKEV2-CHILD-004",
    suite=SUITE,
    rfc="7296 §2.9, §2.21.2",
    level="MUST",
    roles="R",
    title="No acceptable selector: TS_UNACCEPTABLE in IKE_AUTH, the IKE SA stays up",
    needs=WITH_CHILD,
)
def test_child_004_ts_unacceptable(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    tsi, tsr = [ts("192.0.2.0/24")], [ts("198.51.100.0/24")]
    with responding(ctx, sc, tsi=tsi, tsr=tsr, require_child=False, plane=False) as o:
        names = o.auth.names()
        note(ctx, "ike-auth-answer", " ".join(names))
        assert o.auth.get(v2p.IdR) is not None and o.auth.get(v2p.AuthPayload) is not None
        assert o.auth.notify(N.TS_UNACCEPTABLE) is not None, f"IKE_AUTH answer: {names}"
        for cls in (v2p.SaPayload, v2p.TsI, v2p.TsR):
            assert o.auth.get(cls) is None, f"IKE_AUTH answer has {cls.__name__}: {names}"
        with ctx.step("empty INFORMATIONAL on the IKE SA"):
            r = o.session.alive()
        assert r.answered, "the IKE SA does not answer after TS_UNACCEPTABLE"


@case(
    "IKEV2-CHILD-005",
    suite=SUITE,
    rfc="7296 §2.21.2",
    level="MUST NOT",
    roles="I",
    title="A failed piggy-backed Child SA does not fail the IKE SA's authentication",
    needs=IKE_ONLY,
)
def test_child_005_child_failure_keeps_ike(ctx: CaseContext) -> None:
    require_trigger(ctx, "initiate")
    sc = child_scenario(ctx)

    def refuse(_request: list[v2p.Payload]) -> list[v2p.Payload]:
        return [v2p.NotifyPayload(N.NO_PROPOSAL_CHOSEN)]

    with initiating(ctx, sc, child_answer=refuse) as a:
        s = a.session
        with ctx.step("the PUT's requests within 0.5 s"):
            s.pump(0.5)
        info = s.requests_seen(INFORMATIONAL)
        texts = []
        auth_failed = False
        deleted = False
        for rx, sa_ in info:
            assert sa_ is not None
            _m, payloads = sa_.open(rx.data)
            texts.append(" ".join(str(type(p).__name__) for p in payloads))
            if notify(payloads, N.AUTHENTICATION_FAILED) is not None:
                auth_failed = True
            if any(type(p) is v2p.DeletePayload and p.protocol_id == 1 for p in payloads):
                deleted = True
        with ctx.step("empty INFORMATIONAL on the IKE SA"):
            r = s.alive(timeout=2.0)
        state = attach_put_state(ctx)
        note(
            ctx,
            "after",
            f"PUT's INFORMATIONAL requests: {texts}\nliveness answered: {r.answered}\n{state}",
        )
        assert not auth_failed, "the PUT sent AUTHENTICATION_FAILED after a refused Child SA"
        if not r.answered and deleted:
            recorded(
                ctx,
                "the PUT deleted the IKE SA after the refused Child SA (its policy "
                "MAY do so; no AUTHENTICATION_FAILED)",
            )
            return
        assert r.answered, "the IKE SA does not answer after the refused Child SA"
        if ctx.put.capabilities().has(CHILD_SA):
            with ctx.step("CREATE_CHILD_SA on the surviving IKE SA"):
                me, them = sc.local("tester"), sc.remote("tester")
                reply, _c = s.create_child(
                    [esp_proposal([GCM], b"")],
                    [ts(n) for n in me.subnets],
                    [ts(n) for n in them.subnets],
                )
            note(ctx, "create-child", reply.describe())


@case(
    "IKEV2-CHILD-006",
    suite=SUITE,
    rfc="7296 §2.9",
    level="MAY",
    roles="R",
    title="Narrowing to one of several disjoint subsets may add ADDITIONAL_TS_POSSIBLE",
    needs=WITH_CHILD,
)
def test_child_006_additional_ts_possible(ctx: CaseContext) -> None:
    nets = (TESTER_NET, "198.19.3.0/24")
    sc = child_scenario(ctx, tester_nets=nets)
    tsi, tsr = [ts("198.19.0.0/16")], [ts(put_net(ctx))]
    with responding(ctx, sc, tsi=tsi, tsr=tsr, plane=False) as o:
        c = o.child
        assert c is not None
        extra = o.auth.notify(N.ADDITIONAL_TS_POSSIBLE) is not None
        note(
            ctx,
            "selectors",
            f"policy of the PUT: {' + '.join(nets)} <-> {put_net(ctx)}\n"
            f"proposed TSi {ts_text(tsi)} TSr {ts_text(tsr)}\n"
            f"answered TSi {ts_text(c.tsi)} TSr {ts_text(c.tsr)}\n"
            f"ADDITIONAL_TS_POSSIBLE: {extra}",
        )
        for t in c.tsi:
            if not ts_within(t, tsi) or not ts_within(t, [ts(n) for n in nets]):
                grade(ctx, Level.MUST, f"TSi {ts_text([t])} is wider than proposed or policy")
        for t in c.tsr:
            if not ts_within(t, tsr) or not ts_within(t, [ts(put_net(ctx))]):
                grade(ctx, Level.MUST, f"TSr {ts_text([t])} is wider than proposed or policy")
        both = all(covers_address(c.tsi, net_host(n, 1)) for n in nets)
        known(ctx, {"strongswan": "child-disjoint-selectors-both"})
        if both:
            recorded(
                ctx, "the PUT returned both disjoint subnets (no ADDITIONAL_TS_POSSIBLE needed)"
            )
        elif not extra:
            recorded(ctx, "narrowed to one subnet without ADDITIONAL_TS_POSSIBLE (MAY)")


@case(
    "IKEV2-CHILD-007",
    suite=SUITE,
    rfc="7296 §3.13.1",
    level="MUST",
    roles="IR",
    title="Any port is 0..65535; ICMP type/code are carried in the port fields",
    needs=WITH_CHILD,
)
def test_child_007_port_encoding(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    if ctx.put_initiates:
        with initiating(ctx, sc, plane=False) as a:
            tsi, tsr = _ts_of(a.auth_request)
            note(ctx, "selectors", f"PUT's TSi {ts_text(tsi)}\nPUT's TSr {ts_text(tsr)}")
            assert tsi and tsr, "the PUT proposed no selectors"
            for t in (*tsi, *tsr):
                if t.ip_protocol == 0:
                    assert (t.start_port, t.end_port) == (0, 65535), (
                        f"all-ports selector {ts_text([t])}: ports must be 0..65535"
                    )
        return
    with responding(ctx, sc, plane=False) as o:
        c = o.child
        assert c is not None
        lines = [f"IKE_AUTH answer TSi {ts_text(c.tsi)} TSr {ts_text(c.tsr)}"]
        for t in (*c.tsi, *c.tsr):
            if t.ip_protocol == 0:
                assert (t.start_port, t.end_port) == (0, 65535), (
                    f"all-ports selector {ts_text([t])}: ports must be 0..65535"
                )
        # ICMP: type 8 (echo request) any code from the tester's side, echo reply (type 0)
        icmp_i = [ts(TESTER_NET, 1, 0x0800, 0x08FF)]
        icmp_r = [ts(put_net(ctx), 1, 0x0000, 0x00FF)]
        with ctx.step("CREATE_CHILD_SA for ICMP echo (type/code in the port fields)"):
            reply, c2 = o.session.create_child([esp_proposal([GCM], b"")], icmp_i, icmp_r)
        lines.append(f"ICMP proposal TSi {ts_text(icmp_i)} TSr {ts_text(icmp_r)}")
        lines.append(f"answer: {reply.describe()}")
        if c2 is not None:
            lines.append(f"answered TSi {ts_text(c2.tsi)} TSr {ts_text(c2.tsr)}")
        note(ctx, "selectors", "\n".join(lines))
        known(ctx, {"strongswan": "strongswan-icmp-selector-widened"})
        assert c2 is not None, f"ICMP selectors refused: {reply.describe()}"
        for got, offered, name in ((c2.tsi, icmp_i, "TSi"), (c2.tsr, icmp_r, "TSr")):
            for t in got:
                assert t.ip_protocol == 1, f"{name} {ts_text([t])} lost the ICMP protocol"
                assert ts_within(t, offered), (
                    f"{name} {ts_text([t])}: ICMP type/code range not within the proposed "
                    f"{ts_text(offered)}"
                )


def _ts_of(request: list[v2p.Payload]) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
    from suites.support.ike import first

    tsi, tsr = first(request, v2p.TsI), first(request, v2p.TsR)
    return (list(tsi.selectors) if tsi else [], list(tsr.selectors) if tsr else [])


# --- §1.3.1 CREATE_CHILD_SA -----------------------------------------------------------------


@case(
    "IKEV2-CHILD-008",
    suite=SUITE,
    rfc="7296 §1.3.1",
    level="MUST",
    roles="R",
    title="CREATE_CHILD_SA with PFS: SA, Nr, KEr of the same group, TSi, TSr; the SA works",
    needs=WITH_CHILD,
)
def test_child_008_create_child_pfs(ctx: CaseContext) -> None:
    sc = _pfs_scenario(ctx)
    half = "198.19.2.128/25"
    with responding(ctx, sc, tsi=[ts(f"{net_host(TESTER_NET, 1)}/32")]) as o:
        s = o.session
        with ctx.step("CREATE_CHILD_SA for 198.19.2.128/25 with KEi ECP-256"):
            reply, c = s.create_child(
                [esp_proposal([GCM, "ECP_256"], b"")],
                [ts(half)],
                [ts(put_net(ctx))],
                ke_group=ECP_256,
            )
        names = reply.names()
        note(ctx, "create-child", f"answer: {' '.join(names)}")
        assert reply.answered, "no answer to CREATE_CHILD_SA"
        for cls in (v2p.SaPayload, v2p.NoncePayload, v2p.KePayload, v2p.TsI, v2p.TsR):
            assert reply.get(cls) is not None, f"the answer lacks {cls.__name__}: {names}"
        ke = reply.get(v2p.KePayload)
        assert ke.dh_group == ECP_256, f"KEr of group {ke.dh_group} (KEi was {ECP_256})"
        assert c is not None
        assert c.sel.dh_id == ECP_256, f"the chosen proposal's D-H is {c.sel.dh_id}"
        _ping(ctx, s, c, "traffic on the new Child SA", src=net_host(half, 2))


@case(
    "IKEV2-CHILD-009",
    suite=SUITE,
    rfc="7296 §1.3.1",
    level="MUST",
    roles="R",
    title="KEi of another group than the chosen proposal's: INVALID_KE_PAYLOAD, IKE SA survives",
    needs=WITH_CHILD,
)
def test_child_009_invalid_ke(ctx: CaseContext) -> None:
    sc = _pfs_scenario(ctx)
    with responding(ctx, sc, plane=False) as o:
        s = o.session
        offer = [esp_proposal([GCM, "MODP_2048", "ECP_256"], b"")]
        tsi, tsr = [ts(TESTER_NET)], [ts(put_net(ctx))]
        with ctx.step("CREATE_CHILD_SA: groups {MODP-2048, ECP-256}, KEi MODP-2048"):
            reply, c = s.create_child(offer, tsi, tsr, ke_group=MODP_2048)
        n = reply.notify(N.INVALID_KE_PAYLOAD)
        note(ctx, "first-answer", reply.describe() + (f" data {n.data.hex()}" if n else ""))
        assert c is None, "the PUT accepted a KE of a group its policy does not allow"
        assert n is not None, f"no INVALID_KE_PAYLOAD: {reply.describe()}"
        assert n.data[:2] == ECP_256.to_bytes(2, "big"), (
            f"INVALID_KE_PAYLOAD names group {n.data.hex()} (want 0013)"
        )
        with ctx.step("retry with KEi ECP-256"):
            reply2, c2 = s.create_child(offer, tsi, tsr, ke_group=ECP_256)
        note(ctx, "retry", reply2.describe())
        assert c2 is not None, f"the retry with ECP-256 failed: {reply2.describe()}"


# --- §1.3.3 / §2.8 Child SA rekeying ---------------------------------------------------------


@case(
    "IKEV2-CHILD-010",
    suite=SUITE,
    rfc="7296 §1.3.3",
    level="MUST",
    roles="I",
    title="The PUT's Child SA rekey carries N(REKEY_SA) with protocol ESP and its inbound SPI",
    needs=WITH_CHILD,
)
def test_child_010_rekey_sa_notify(ctx: CaseContext) -> None:
    require_trigger(ctx, "initiate")
    rekey, life = _times(ctx, virtual=(60.0, 66.0), real=(2.0, 8.0))
    sc = child_scenario(ctx, lifetimes=Lifetimes(child_rekey=rekey, child_life=life))
    with initiating(ctx, sc, plane=False) as a, virtual_clock(ctx) as advance:
        c = a.child
        assert c is not None
        s = a.session
        with ctx.step(f"the Child SA's rekey time ({rekey:g} s) passes"):
            advance(rekey + 0.5 if ctx.put.kind == "reference" else 0.0)
            inc = s.next_request(exchange=CREATE_CHILD_SA, timeout=rekey + 4.0)
        assert inc is not None, f"no CREATE_CHILD_SA from the PUT within {rekey + 4:g} s"
        r = inc.notify(N.REKEY_SA)
        note(
            ctx,
            "rekey-request",
            f"{inc.describe()}\nREKEY_SA: "
            + (f"protocol {r.protocol_id} SPI {r.spi.hex()}" if r else "absent")
            + f"\nthe PUT's inbound SPI: {c.spi_out.hex()}",
        )
        assert r is not None, f"no N(REKEY_SA) in the rekey: {inc.describe()}"
        assert r.protocol_id == 3, f"REKEY_SA Protocol ID {r.protocol_id} (want 3, ESP)"
        assert r.spi == c.spi_out, (
            f"REKEY_SA SPI {r.spi.hex()} is not the PUT's inbound SPI {c.spi_out.hex()}"
        )
        s.answer_create_child(inc)


@case(
    "IKEV2-CHILD-011",
    suite=SUITE,
    rfc="7296 §1.3.3, §1.4.1, §2.8",
    level="MUST",
    roles="R",
    title="During a rekey both Child SAs carry traffic; Delete is answered with the paired SPI",
    needs=WITH_CHILD,
)
def test_child_011_rekey_overlap(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    with responding(ctx, sc) as o:
        s, old = o.session, o.child
        assert old is not None
        _ping(ctx, s, old, "traffic before the rekey")
        with ctx.step("rekey the Child SA"):
            reply, new = s.create_child(
                [esp_proposal([GCM], b"")], old.ts_ours, old.ts_theirs, rekey=old
            )
        assert new is not None, f"the rekey failed: {reply.describe()}"
        with ctx.step("traffic on the old SA during the overlap"):
            _ping(ctx, s, old, "traffic on the old SA before its Delete", count=3)
        _ping(ctx, s, new, "traffic on the new SA")
        with ctx.step("Delete the old Child SA"):
            d = s.delete_child(old)
        dels = [p for p in d.payloads if type(p) is v2p.DeletePayload]
        note(
            ctx,
            "delete-answer",
            d.describe()
            + "".join(f" Delete(proto {p.protocol_id}, {[x.hex() for x in p.spis]})" for p in dels),
        )
        assert d.answered, "no answer to the Delete"
        assert any(old.spi_out in p.spis and p.protocol_id == 3 for p in dels), (
            f"the answer does not delete the paired SPI {old.spi_out.hex()}: {d.describe()}"
        )
        _ping(ctx, s, new, "traffic on the new SA after the Delete")


@case(
    "IKEV2-CHILD-012",
    suite=SUITE,
    rfc="7296 §2.17, §1.3.3",
    level="MUST",
    roles="IR",
    title="Rekey with PFS: KEYMAT = prf+(SK_d, g^ir | Ni | Nr), checked on the PUT's ESP",
    needs=WITH_CHILD,
)
def test_child_012_pfs_keymat(ctx: CaseContext) -> None:
    sc = _pfs_scenario(ctx)
    if ctx.put_initiates:
        require_trigger(ctx)
        with initiating(ctx, sc) as a:
            s, old = a.session, a.child
            assert old is not None
            with ctx.step("the PUT rekeys the Child SA"):
                trigger_child_rekey(ctx, old.spi_out)
                inc = s.next_request(_is_child_rekey, exchange=CREATE_CHILD_SA, timeout=5.0)
            assert inc is not None, "the PUT did not rekey the Child SA"
            assert inc.get(v2p.KePayload) is not None, (
                f"the PUT's rekey has no KEi (its policy has PFS ECP-256): {inc.describe()}"
            )
            new = s.answer_create_child(inc)
            assert new is not None and new.pfs_group, "no PFS Child SA"
            _await_old_deleted(ctx, s, old)
            _check_new_keys(ctx, s, new)
        return
    with responding(ctx, sc) as o:
        s, old = o.session, o.child
        assert old is not None
        with ctx.step("rekey with KEi ECP-256"):
            reply, new = s.create_child(
                [esp_proposal([GCM, "ECP_256"], b"")],
                old.tsi,
                old.tsr,
                rekey=old,
                ke_group=ECP_256,
            )
        assert new is not None, f"the rekey failed: {reply.describe()}"
        assert new.pfs_group == ECP_256, f"no KEr of group {ECP_256}: {reply.describe()}"
        s.delete_child(old)
        _check_new_keys(ctx, s, new)


def _is_child_rekey(inc: Incoming) -> bool:
    sa_p = inc.get(v2p.SaPayload)
    return (
        inc.notify(N.REKEY_SA) is not None
        and sa_p is not None
        and any(p.protocol_id in (2, 3) for p in sa_p.proposals)
    )


def _is_ike_rekey(inc: Incoming) -> bool:
    sa_p = inc.get(v2p.SaPayload)
    return sa_p is not None and any(p.protocol_id == 1 for p in sa_p.proposals)


def _await_old_deleted(ctx: CaseContext, s: Session, old: HarnessChild) -> None:
    """The PUT (initiator of the rekey) deletes the old Child SA (RFC 7296 §2.8); answered."""
    inc = s.next_request(
        lambda i: any(type(p) is v2p.DeletePayload for p in i.payloads),
        exchange=INFORMATIONAL,
        timeout=3.0,
    )
    if inc is not None:
        s.answer_delete(inc)
    else:
        s.delete_child(old)


def _check_new_keys(ctx: CaseContext, s: Session, new: HarnessChild) -> None:
    assert s.plane is not None
    with ctx.step("traffic on the rekeyed SA, opened with the harness's KEYMAT"):
        p = s.plane.ping(new, count=2)
    note(ctx, "traffic", p.text() + "\n" + new.describe())
    assert p.delivered == p.sent, f"the PUT does not accept our packets on the new SA: {p.text()}"
    _reply_on(s, new, "the PUT's ESP on the rekeyed SA")


# --- §1.3.2 / §2.18 IKE SA rekeying ----------------------------------------------------------


@case(
    "IKEV2-CHILD-013",
    suite=SUITE,
    rfc="7296 §1.3.2, §2.18",
    level="MUST",
    roles="R",
    title="IKE SA rekey offering D-H NONE is refused; with a group it succeeds",
    needs=IKE_ONLY,
)
def test_child_013_ike_rekey_dh_none(ctx: CaseContext) -> None:
    sc = _ike_only(ctx)
    with responding(ctx, sc, child=sc.child, plane=sc.child) as o:
        s = o.session
        old = s.sa
        assert old.selected is not None
        sel = old.selected
        no_dh = [v2p.Transform(1, sel.encr_id, sel.encr_bits), v2p.Transform(2, sel.prf_id)]
        if sel.integ_id:
            no_dh.append(v2p.Transform(3, sel.integ_id))
        no_dh.append(v2p.Transform(4, 0))
        with ctx.step("rekey the IKE SA offering only D-H NONE (KEi of the SA's group)"):
            reply, new = s.rekey_ike(no_dh, ke_group=sel.dh_id)
        note(ctx, "dh-none-answer", reply.describe())
        assert reply.answered, "no answer to the IKE SA rekey with D-H NONE"
        assert new is None and reply.get(v2p.SaPayload) is None, (
            f"the PUT accepted an IKE SA rekey without key exchange: {reply.describe()}"
        )
        errors = [
            n for n in reply.payloads if type(n) is v2p.NotifyPayload and n.notify_type < 16384
        ]
        assert errors, f"no error notify in the refusal: {reply.describe()}"
        if reply.notify(N.NO_PROPOSAL_CHOSEN) is None:
            note(
                ctx,
                "refusal",
                f"refused with {reply.describe()} (the catalogue expects NO_PROPOSAL_CHOSEN)",
            )
        if reply.notify(N.INVALID_SYNTAX) is None:
            _ike_rekey_works(ctx, s, o.child)
            return
        # RFC 7296 §2.21.3: INVALID_SYNTAX in answer to a request is fatal to the IKE SA in both
        # peers; the second attempt needs a new one.
        old.established = False
    note(
        ctx,
        "second-attempt",
        "INVALID_SYNTAX ends the IKE SA (RFC 7296 §2.21.3): the rekey "
        "with a group is tried on a new IKE SA",
    )
    with responding(ctx, sc, child=sc.child, plane=sc.child) as o2:
        _ike_rekey_works(ctx, o2.session, o2.child)


def _ike_rekey_works(ctx: CaseContext, s: Session, child: HarnessChild | None) -> None:
    """An IKE SA rekey with the SA's own group succeeds; the new SA answers with Message ID
    0; the old one is deleted; the Child SA still works (RFC 7296 §1.3.2, §2.18)."""
    old = s.sa
    with ctx.step("rekey the IKE SA with its own group"):
        reply, new = s.rekey_ike()
    note(ctx, "rekey-answer", reply.describe())
    assert new is not None, f"the IKE SA rekey with a group failed: {reply.describe()}"
    with ctx.step("the new IKE SA answers (Message ID 0), the old one is deleted"):
        r = s.alive(sa=new)
        assert r.answered, "the rekeyed IKE SA does not answer"
        assert r.datagram.message_id == 0, f"Message ID {r.datagram.message_id} on the new SA"
        s.delete_ike(old)
        s.forget(old)
    if child is not None:
        _ping(ctx, s, child, "the Child SA after the IKE SA rekey")


@case(
    "IKEV2-CHILD-014",
    suite=SUITE,
    rfc="7296 §2.18",
    level="MUST",
    roles="IR",
    title="After the PUT rekeys the IKE SA: new keys, Message IDs from 0, Child SAs moved",
    needs=IKE_ONLY,
)
def test_child_014_put_rekeys_ike(ctx: CaseContext) -> None:
    require_trigger(ctx, "rekey IKE")
    sc = _ike_only(ctx)
    with _session(ctx, sc) as s:
        old = s.sa
        with ctx.step("the PUT rekeys the IKE SA"):
            trigger_ike_rekey(ctx)
            inc = s.next_request(_is_ike_rekey, exchange=CREATE_CHILD_SA, timeout=5.0)
        assert inc is not None, "the PUT did not rekey the IKE SA"
        ke = inc.get(v2p.KePayload)
        assert ke is not None, f"the PUT's IKE SA rekey has no KE: {inc.describe()}"
        new = s.answer_rekey_ike(inc)
        with ctx.step("the old IKE SA is deleted"):
            d = s.next_request(
                lambda i: any(type(p) is v2p.DeletePayload for p in i.payloads), timeout=2.0
            )
            if d is not None and d.sa is old:
                s.respond(d, [])
                s.forget(old)
            else:
                s.delete_ike(old)
                s.forget(old)
        lines = [f"new IKE SA {new.spi_i.hex()}/{new.spi_r.hex()}"]
        with ctx.step("INFORMATIONAL on the new IKE SA (our Message ID 0)"):
            r = s.alive(sa=new)
        lines.append(f"our request 0 on the new SA: {r.describe()}")
        assert r.answered, "the new IKE SA does not answer (keys or Message ID)"
        assert r.datagram.message_id == 0
        children = [c for c in s.children if c.alive]
        if children:
            c = children[0]
            with ctx.step("the PUT rekeys the Child SA on the new IKE SA"):
                trigger_child_rekey(ctx, c.spi_out)
                inc2 = s.next_request(_is_child_rekey, exchange=CREATE_CHILD_SA, timeout=5.0)
            assert inc2 is not None, "no Child SA rekey from the PUT after the IKE SA rekey"
            lines.append(f"the PUT's first request on the new SA: {inc2.describe()}")
            assert inc2.sa is new, "the Child SA rekey came on the old IKE SA"
            assert inc2.mid == 0, f"the PUT's first request on the new SA has Message ID {inc2.mid}"
            rekeyed = s.answer_create_child(inc2)
            _await_old_deleted(ctx, s, c)
            assert rekeyed is not None
            _ping(ctx, s, rekeyed, "the Child SA moved to the new IKE SA")
        note(ctx, "rekey", "\n".join(lines))
        attach_put_state(ctx)


@case(
    "IKEV2-CHILD-015",
    suite=SUITE,
    rfc="7296 §2.8.1, §1.3.3",
    level="SHOULD",
    roles="IR",
    title="Simultaneous Child SA rekey: the SA with the lowest nonce is closed by its creator",
    needs=WITH_CHILD,
)
def test_child_015_simultaneous_child_rekey(ctx: CaseContext) -> None:
    require_trigger(ctx)
    sc = child_scenario(ctx)
    high = b"\xff" * 32
    with _session(ctx, sc) as s:
        old = next(c for c in s.children if c.alive)
        with ctx.step("the PUT rekeys the Child SA; the harness rekeys it too before answering"):
            trigger_child_rekey(ctx, old.spi_out)
            inc = s.next_request(_is_child_rekey, exchange=CREATE_CHILD_SA, timeout=5.0)
            assert inc is not None, "the PUT did not rekey the Child SA"
            reply, ours = s.create_child(
                [esp_proposal([GCM], b"")], old.ts_ours, old.ts_theirs, rekey=old, nonce=high
            )
            theirs = s.answer_create_child(inc, nonce=high)
        assert theirs is not None
        lines = [
            f"the PUT's exchange: Ni {theirs.nonces[0].hex()[:16]}.. Nr ff..",
            f"ours: Ni ff.. Nr {ours.nonces[1].hex()[:16] if ours else '-'}.. "
            f"answer {reply.describe()}",
        ]
        if ours is None:
            note(ctx, "collision", "\n".join(lines))
            grade(ctx, Level.SHOULD, f"the PUT refused the colliding rekey: {reply.describe()}")
            return
        lowest = min(theirs.nonces[0], ours.nonces[1])
        redundant, survivor = (theirs, ours) if lowest == theirs.nonces[0] else (ours, theirs)
        lines.append(
            f"lowest nonce {lowest.hex()[:16]}..: redundant {redundant.label}, "
            f"survivor {survivor.label}"
        )
        with ctx.step("the creators close the redundant and the old SA"):
            if redundant is ours:
                s.delete_child(ours)
                want = old  # the PUT created the survivor: it deletes the old SA
            else:
                want = theirs  # the PUT deletes its redundant SA; we delete the old one
                s.delete_child(old)
            dels = _collect_deletes(s, 2.0, want.spi_out)
        lines.append(f"the PUT deleted: {[d.hex() for d in dels]}")
        note(ctx, "collision", "\n".join(lines))
        attach_put_state(ctx)
        if want.spi_out not in dels:
            grade(
                ctx,
                Level.SHOULD,
                f"the PUT did not delete {want.label} "
                f"({want.spi_out.hex()}) as the lowest-nonce rule asks",
            )
        if survivor.spi_out in dels:
            raise AssertionError(f"the PUT deleted the surviving SA {survivor.label}")
        if ctx.put.kind in ("reference", "strongswan"):
            ins = {c.spi_in for c in put_children(ctx)}
            assert survivor.spi_out_int in ins, "the survivor is not installed on the PUT"
        _ping(ctx, s, survivor, "traffic on the surviving SA")


def _collect_deletes(s: Session, timeout: float, want: bytes) -> list[bytes]:
    """Child SA SPIs the PUT deletes within ``timeout`` (its requests answered); after
    ``want`` is among them, only what arrives within 0.2 s more."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want in out:
            deadline = min(deadline, time.monotonic() + 0.2)
        inc = s.next_request(exchange=INFORMATIONAL, timeout=deadline - time.monotonic())
        if inc is None:
            break
        for p in inc.payloads:
            if type(p) is v2p.DeletePayload and p.protocol_id in (2, 3):
                out += p.spis
        s.answer_delete(inc)
    return out


@case(
    "IKEV2-CHILD-016",
    suite=SUITE,
    rfc="7296 §2.8.2",
    level="SHOULD",
    roles="IR",
    title="Simultaneous IKE SA rekey: the lowest-nonce new SA is deleted, the survivor keeps "
    "the Child SAs",
    needs=IKE_ONLY,
)
def test_child_016_simultaneous_ike_rekey(ctx: CaseContext) -> None:
    require_trigger(ctx, "rekey IKE")
    sc = _ike_only(ctx)
    high = b"\xff" * 32
    with _session(ctx, sc) as s:
        old = s.sa
        with ctx.step("the PUT rekeys the IKE SA; the harness rekeys it too before answering"):
            trigger_ike_rekey(ctx)
            inc = s.next_request(_is_ike_rekey, exchange=CREATE_CHILD_SA, timeout=5.0)
            assert inc is not None, "the PUT did not rekey the IKE SA"
            reply, ours = s.rekey_ike(nonce=high)
            theirs = s.answer_rekey_ike(inc, nonce=high, make_current=False)
        lines = [
            f"the PUT's new SA {theirs.spi_i.hex()}/{theirs.spi_r.hex()} "
            f"Ni {theirs.nonce_i.hex()[:16]}..",
            f"ours: answer {reply.describe()}",
        ]
        if ours is None:
            note(ctx, "collision", "\n".join(lines))
            grade(ctx, Level.SHOULD, f"the PUT refused the colliding rekey: {reply.describe()}")
            return
        lines.append(f"ours {ours.spi_i.hex()}/{ours.spi_r.hex()} Nr {ours.nonce_r.hex()[:16]}..")
        redundant, survivor = (theirs, ours) if theirs.nonce_i < ours.nonce_r else (ours, theirs)
        lines.append(
            f"redundant: {'the PUT' if redundant is theirs else 'the harness'}'s new IKE SA"
        )
        with ctx.step("the creators delete the redundant and the old IKE SA"):
            if redundant is ours:
                s.delete_ike(ours)
                s.old.remove(theirs)
                s.sa = theirs
                want_deleted = old  # by the PUT, creator of the survivor
            else:
                s.delete_ike(old)
                s.forget(old)
                want_deleted = theirs
            gone = _collect_ike_deletes(s, 6.0, want_deleted)  # stops 0.2 s after it
        lines.append(f"the PUT deleted IKE SAs: {[g.spi_i.hex() for g in gone]}")
        known(ctx, {"libreswan": "libreswan-simultaneous-ike-rekey"})
        note(ctx, "collision", "\n".join(lines))
        state = attach_put_state(ctx)
        if want_deleted not in gone:
            grade(
                ctx,
                Level.SHOULD,
                "the PUT did not delete the "
                + ("old IKE SA" if want_deleted is old else "redundant IKE SA it created"),
            )
        assert survivor not in gone, "the PUT deleted the surviving IKE SA"
        r = s.alive(sa=survivor)
        assert r.answered, "the surviving IKE SA does not answer"
        if ctx.put.kind in ("reference", "strongswan"):
            sas = [x for x in ctx.put.list_sas() if x.established]
            surv = [x for x in sas if x.spi_i == survivor.spi_i]
            assert surv, f"the survivor is not among the PUT's IKE SAs:\n{state}"
            if any(c.alive for c in s.children):
                assert surv[0].children, f"the surviving IKE SA holds no Child SA:\n{state}"


def _collect_ike_deletes(s: Session, timeout: float, want: HarnessSa) -> list[HarnessSa]:
    """IKE SAs the PUT deletes within ``timeout`` (answered; Child SA Deletes too); after
    ``want`` is among them, only what arrives within 0.2 s more."""
    gone: list[HarnessSa] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want in gone:
            deadline = min(deadline, time.monotonic() + 0.2)
        inc = s.next_request(exchange=INFORMATIONAL, timeout=deadline - time.monotonic())
        if inc is None:
            break
        if any(type(p) is v2p.DeletePayload and p.protocol_id == 1 for p in inc.payloads):
            gone.append(inc.sa)
            s.respond(inc, [])
            s.forget(inc.sa)
        else:
            s.answer_delete(inc)
    return gone


@case(
    "IKEV2-CHILD-017",
    suite=SUITE,
    rfc="7296 §2.25, §2.25.1",
    level="SHOULD",
    roles="I",
    title="A rekey refused with TEMPORARY_FAILURE (the SA is being deleted) is not retried at once",
    needs=WITH_CHILD,
)
def test_child_017_temporary_failure(ctx: CaseContext) -> None:
    require_trigger(ctx)
    sc = child_scenario(ctx)
    with initiating(ctx, sc, plane=False) as a, virtual_clock(ctx) as advance:
        s, c = a.session, a.child
        assert c is not None
        with ctx.step("the PUT rekeys; the harness deletes the SA and refuses the rekey"):
            trigger_child_rekey(ctx, c.spi_out)
            inc = s.next_request(_is_child_rekey, exchange=CREATE_CHILD_SA, timeout=5.0)
            assert inc is not None, "the PUT did not rekey the Child SA"
            sa, mid, _ = s.send_request(INFORMATIONAL, [v2p.DeletePayload(3, [c.spi_in])])
            s.answer_create_child(inc, refuse=v2p.NotifyPayload(N.TEMPORARY_FAILURE))
            d = s.await_response(sa, INFORMATIONAL, mid, 3.0)
        t0 = time.monotonic()
        with ctx.step("no new rekey at once"):
            advance(1.0 if ctx.put.kind == "reference" else 2.0)
            s.pump(0.3)
            again = [
                rx
                for rx, _sa in s.requests_seen(CREATE_CHILD_SA, since=t0)
                if rx.data != inc.rx.data
            ]
        note(
            ctx,
            "after",
            f"Delete answered: {d.describe()}\nCREATE_CHILD_SA after "
            f"TEMPORARY_FAILURE: {len(again)}",
        )
        assert not again, f"the PUT retried the rekey at once ({len(again)} requests)"
        gone = wait_for(lambda: c.spi_out_int not in {x.spi_in for x in put_children(ctx)}, 2.0)
        attach_put_state(ctx)
        assert gone, "state did not converge: the PUT still has the deleted Child SA"


@case(
    "IKEV2-CHILD-018",
    suite=SUITE,
    rfc="7296 §2.25",
    level="SHOULD",
    roles="R",
    title="Rekey of an unknown Child SA: CHILD_SA_NOT_FOUND, the IKE SA survives",
    needs=WITH_CHILD,
)
def test_child_018_child_sa_not_found(ctx: CaseContext) -> None:
    sc = child_scenario(ctx)
    with responding(ctx, sc, plane=False) as o:
        s, c = o.session, o.child
        assert c is not None
        bogus = os.urandom(4)
        with ctx.step(f"rekey of SPI {bogus.hex()} (no such SA)"):
            reply, new = s.create_child(
                [esp_proposal([GCM], b"")], c.ts_ours, c.ts_theirs, rekey_spi=bogus
            )
        note(ctx, "answer", reply.describe())
        assert reply.answered, "no answer"
        r = s.alive()
        assert r.answered, "the IKE SA does not answer afterwards"
        assert new is None, f"the PUT created a Child SA for an unknown rekey: {reply.describe()}"
        assert reply.notify(N.CHILD_SA_NOT_FOUND) is not None, (
            f"no CHILD_SA_NOT_FOUND: {reply.describe()}"
        )


@case(
    "IKEV2-CHILD-019",
    suite=SUITE,
    rfc="7296 §1.3.1",
    level="MUST",
    roles="R",
    title="USE_TRANSPORT_MODE accepted is echoed; the PUT's ESP has no inner IP header",
    needs=(IKEV2, PSK, CHILD_SA, ESP, TRANSPORT),
)
def test_child_019_transport_mode(ctx: CaseContext) -> None:
    sc = ctx.scenario(mode="transport")
    with responding(ctx, sc, transport=True) as o:
        c = o.child
        assert c is not None
        echoed = o.auth.notify(N.USE_TRANSPORT_MODE) is not None
        note(ctx, "ike-auth-answer", o.auth.describe())
        assert echoed, f"USE_TRANSPORT_MODE not echoed: {o.auth.describe()}"
        assert o.session.plane is not None
        p = o.session.plane.ping(c)
        frames = [f for f in o.session.plane.frames if f.child == c.label and f.ok]
        note(ctx, "traffic", p.text() + "\n" + "\n".join(f.line() for f in frames))
        assert p.ok, p.text()
        tunnelled = [f for f in frames if f.next_header in (4, 41)]
        assert not tunnelled, (
            f"ESP carries an inner IP header (Next Header {tunnelled[0].next_header})"
        )


@case(
    "IKEV2-CHILD-020",
    suite=SUITE,
    rfc="7296 §2.8",
    level="MUST",
    roles="IR",
    title="An expired Child SA is not used: Delete at the hard lifetime, old SPI dropped",
    needs=WITH_CHILD,
)
def test_child_020_hard_lifetime(ctx: CaseContext) -> None:
    if ctx.put_initiates:
        require_trigger(ctx, "initiate")
    rekey, life = _times(ctx, virtual=(54.0, 60.0), real=(2.0, 4.0))
    sc = child_scenario(ctx, lifetimes=Lifetimes(child_rekey=rekey, child_life=life))
    with _session(ctx, sc) as s, virtual_clock(ctx) as advance:
        c = next(x for x in s.children if x.alive)
        _ping(ctx, s, c, "traffic before expiry")
        refused = 0
        deleted: list[bytes] = []
        with ctx.step(f"rekeys refused until the hard lifetime ({life:g} s)"):
            if ctx.put.kind == "reference":
                advance(life + 1.0)
            deadline = time.monotonic() + (3.0 if ctx.put.kind == "reference" else life + 4.0)
            while time.monotonic() < deadline and not deleted:
                inc = s.next_request(timeout=max(0.0, deadline - time.monotonic()))
                if inc is None:
                    break
                if inc.exchange == CREATE_CHILD_SA:
                    refused += 1
                    s.answer_create_child(inc, refuse=v2p.NotifyPayload(N.NO_PROPOSAL_CHOSEN))
                elif inc.exchange == INFORMATIONAL:
                    for p in inc.payloads:
                        if type(p) is v2p.DeletePayload and p.protocol_id == 3:
                            deleted += p.spis
                    s.answer_delete(inc)
        note(
            ctx,
            "expiry",
            f"rekeys refused: {refused}; the PUT deleted {[d.hex() for d in deleted]}",
        )
        assert c.spi_out in deleted, f"no Delete for the expired SA {c.spi_out.hex()}"
        assert s.plane is not None
        before = len(s.plane.frames)
        after = s.plane.ping(c, expect=False)
        used = [f for f in s.plane.frames[before:] if f.child == c.label]
        note(ctx, "after-expiry", after.text())
        attach_put_state(ctx)
        assert after.delivered == 0, "the PUT accepted ESP on the expired SA"
        assert not used, "the PUT sent ESP on the expired SA"
