"""Suite ikev2-negotiation: IKE_SA_INIT (catalogue §1, IKEV2-NEG-001..023; RFC 7296).

The harness plays the other end with its scripted IKEv2 peer (``suites/support/ike.py``):
as initiator when the peer under test (PUT) responds, as responder (the tester node silenced)
when the PUT initiates. Every verdict comes from octets the PUT sent, plus its SA list as
extra evidence ("no IKE SA kept").
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.cases import Level, case
from harness.peers.base import CHILD_SA, ESP, IKEV2, NAT_T, PSK, NotApplicable
from reference_impl.ike import payloads as v2p
from reference_impl.ike.messages import decode_message
from suites.support.ike import (
    IKE_AUTH,
    IKE_PORT,
    IKE_SA_INIT,
    NATT_PORT,
    ZERO_SPI,
    Auth,
    CookieLoad,
    Initiator,
    N,
    RawSa,
    Reply,
    choose,
    cookie_thresholds,
    describe_proposal,
    esp_from_put,
    first,
    grade,
    key_length_attr,
    known,
    natd_hash,
    note,
    proposal,
    psk_of,
    put_initiates,
    put_responds,
    raw_proposal,
    raw_transform,
    transform,
    ts_of,
    wait_put,
)

if TYPE_CHECKING:
    from harness.lab import CaseContext
    from harness.peers.base import Scenario

SUITE = "ikev2-negotiation"
NEEDS = (IKEV2, PSK)

CBC128 = "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
GCM256 = "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_256"


def _sas_for(sas: Sequence[object], spi_i: bytes) -> list[object]:
    return [s for s in sas if getattr(s, "spi_i", None) == spi_i]


# --- IKEV2-NEG-001 ---


@case(
    "IKEV2-NEG-001",
    suite=SUITE,
    rfc="7296 §2.7, §3.3.6",
    level="MUST",
    roles="R",
    title="Responder selects exactly one proposal and one transform of each type, attributes "
    "unmodified",
    needs=NEEDS,
)
def test_neg_001_one_proposal_selected(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal(CBC128), proposal(GCM256)))
    offer = [
        v2p.Proposal(
            1,
            1,
            b"",
            [
                v2p.Transform(1, 1023, 128),
                transform("PRF_HMAC_SHA2_256"),
                transform("HMAC_SHA2_256_128"),
                transform("MODP_2048"),
            ],
        ),
        v2p.Proposal(2, 1, b"", [transform(n) for n in proposal(CBC128).transforms()]),
        v2p.Proposal(3, 1, b"", [transform(n) for n in proposal(GCM256).transforms()]),
    ]
    with put_responds(ctx, sc) as ini:
        with ctx.step("IKE_SA_INIT with 3 proposals (#1 an unknown ENCR id)"):
            reply = ini.init(offer=offer, group=14)
        sa = reply.get(v2p.SaPayload)
        note(
            ctx,
            "offer-and-answer",
            "offered:\n"
            + "\n".join(map(describe_proposal, offer))
            + "\nanswer: "
            + (" | ".join(map(describe_proposal, sa.proposals)) if sa else reply.describe()),
        )
        assert sa is not None, f"no SA payload in the answer: {reply.describe()}"
        assert len(sa.proposals) == 1, f"{len(sa.proposals)} proposals in SAr1"
        p = sa.proposals[0]
        assert p.num in (2, 3), f"SAr1 proposal number {p.num} (must be 2 or 3)"
        ours = offer[p.num - 1]
        types = [t.type for t in p.transforms]
        assert sorted(types) == sorted({t.type for t in ours.transforms}), (
            f"SAr1 transform types {types} vs offered {[t.type for t in ours.transforms]}"
        )
        for t in p.transforms:
            match = [o for o in ours.transforms if (o.type, o.id) == (t.type, t.id)]
            assert match, f"SAr1 transform {t.type}:{t.id} was not offered in proposal {p.num}"
            assert t.key_length == match[0].key_length, (
                f"Key Length {t.key_length} returned for {t.type}:{t.id}, "
                f"{match[0].key_length} offered"
            )


# --- IKEV2-NEG-002 ---


@case(
    "IKEV2-NEG-002",
    suite=SUITE,
    rfc="7296 §3.3, §3.3.1",
    level="MUST",
    roles="I",
    title="Proposals numbered 1, 2, 3 in order; Last Substruc 2 then 0",
    needs=NEEDS,
)
def test_neg_002_proposal_numbering(ctx: CaseContext) -> None:
    props = (
        proposal("AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"),
        proposal(CBC128),
        proposal("AES_CBC_256/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/ECP_384"),
    )
    sc = ctx.scenario(ike_proposals=props)
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        spans = _proposal_headers(rx.data)
        note(
            ctx,
            "proposal-headers",
            "\n".join(f"last={a} num={b} proto={c} transforms={d}" for a, b, c, d in spans),
        )
        assert len(spans) == 3, f"{len(spans)} proposals in SAi1 (3 configured)"
        assert [s[1] for s in spans] == [1, 2, 3], f"Proposal Num {[s[1] for s in spans]}"
        assert [s[0] for s in spans] == [2, 2, 0], f"Last Substruc {[s[0] for s in spans]}"
        sa = rx.get(v2p.SaPayload)
        assert sa is not None
        firsts = [p.transforms[0].id for p in sa.proposals]
        assert firsts == [20, 12, 12], f"ENCR of the proposals in order: {firsts}"


def _proposal_headers(data: bytes) -> list[tuple[int, int, int, int]]:
    """(Last Substruc, Proposal Num, Protocol ID, #Transforms) of each proposal in the SA
    payload of a cleartext message (RFC 7296 §3.3.1)."""
    from harness.probes.craft import payload_spans

    out = []
    for span in payload_spans(data):
        if span.type != 33:
            continue
        off, end = span.offset + 4, span.offset + span.length
        while off + 8 <= end:
            last, _r, plen, num, proto, _spi, ntrans = struct.unpack_from("!BBHBBBB", data, off)
            out.append((last, num, proto, ntrans))
            if plen < 8 or last == 0:
                break
            off += plen
    return out


# --- IKEV2-NEG-003 ---


@case(
    "IKEV2-NEG-003",
    suite=SUITE,
    rfc="7296 §2.7, §2.21.1",
    level="MUST",
    roles="R",
    title="No acceptable proposal: N(NO_PROPOSAL_CHOSEN) only, no IKE SA",
    needs=NEEDS,
)
def test_neg_003_no_proposal_chosen(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    offer = [
        v2p.Proposal(
            1,
            1,
            b"",
            [
                transform("3DES_CBC"),
                transform("PRF_HMAC_SHA1"),
                transform("HMAC_MD5_96"),
                transform("MODP_2048"),
            ],
        )
    ]
    with put_responds(ctx, sc) as ini:
        reply = ini.init(offer=offer, group=14)
        _assert_refused(ctx, ini, reply, N.NO_PROPOSAL_CHOSEN)


def _assert_refused(ctx: CaseContext, ini: Initiator, reply: Reply, ntype: int) -> None:
    assert reply.answered, "no answer to the IKE_SA_INIT request"
    m = reply.msg
    note(ctx, "answer", f"{m.summary()} SPIr={m.spi_r.hex()}")
    names = reply.names()
    want = f"N({N(ntype).name})"
    assert names == [want], f"answer payloads {names} (want only {want})"
    assert m.exchange_type == IKE_SA_INIT and m.response, "not an IKE_SA_INIT response"
    assert m.get(v2p.EncryptedPayload) is None, "the refusal must be unprotected"
    spi_i = ini.rounds[-1][0][:8]
    sas = wait_put(ctx, lambda s: not _sas_for(s, spi_i), 0.5)
    assert not _sas_for(sas, spi_i), f"the PUT keeps an IKE SA for SPIi {spi_i.hex()}: {sas}"


# --- IKEV2-NEG-004 ---


@case(
    "IKEV2-NEG-004",
    suite=SUITE,
    rfc="7296 §3.3.6",
    level="MUST",
    roles="R",
    title="A proposal with an unknown Transform Type is skipped, the next one chosen",
    needs=NEEDS,
)
def test_neg_004_unknown_transform_type(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal(CBC128),))
    good = [transform(n) for n in proposal(CBC128).transforms()]
    offer = [v2p.Proposal(1, 1, b"", [*good, v2p.Transform(200, 1)]), v2p.Proposal(2, 1, b"", good)]
    with put_responds(ctx, sc) as ini:
        reply = ini.init(offer=offer, group=14)
        sa = reply.get(v2p.SaPayload)
        note(
            ctx,
            "answer",
            reply.describe() + ("\n" + describe_proposal(sa.proposals[0]) if sa else ""),
        )
        assert reply.notify(N.NO_PROPOSAL_CHOSEN) is None, "answered NO_PROPOSAL_CHOSEN"
        assert sa is not None, f"no SAr1: {reply.describe()}"
        assert [p.num for p in sa.proposals] == [2], (
            f"chose proposal {[p.num for p in sa.proposals]} (want #2; #1 has Transform Type 200)"
        )


# --- IKEV2-NEG-005 ---


@case(
    "IKEV2-NEG-005",
    suite=SUITE,
    rfc="7296 §3.3.6",
    level="MUST",
    roles="R",
    title="A transform with an unknown attribute is skipped, the other ENCR chosen",
    needs=NEEDS,
)
def test_neg_005_unknown_transform_attribute(ctx: CaseContext) -> None:
    sc = ctx.scenario(
        ike_proposals=(
            proposal("AES_CBC_128/AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
        )
    )
    unknown_tv = struct.pack("!HH", 0x8010, 1)  # TV attribute type 16 (unassigned)
    transforms = [
        raw_transform(1, 12, key_length_attr(128) + unknown_tv),
        raw_transform(1, 12, key_length_attr(256)),
        raw_transform(2, 5),
        raw_transform(3, 12),
        raw_transform(4, 14, last=True),
    ]
    offer = RawSa(raw_proposal(1, transforms, last=True))
    with put_responds(ctx, sc) as ini:
        reply = ini.init(offer=offer, group=14)
        sa = reply.get(v2p.SaPayload)
        note(
            ctx,
            "answer",
            reply.describe() + ("\n" + describe_proposal(sa.proposals[0]) if sa else ""),
        )
        assert sa is not None, f"no SAr1: {reply.describe()}"
        encrs = [(t.id, t.key_length) for t in sa.proposals[0].transforms if t.type == 1]
        if encrs != [(12, 256)]:
            known(ctx, {"strongswan": "strongswan-ignores-unknown-transform-attributes"})
        assert encrs == [(12, 256)], (
            f"ENCR chosen {encrs}: want AES-CBC key length 256 (the 128 one carries an unknown "
            "attribute 0x8010)"
        )


# --- IKEV2-NEG-006 ---


@case(
    "IKEV2-NEG-006",
    suite=SUITE,
    rfc="7296 §3.3.5",
    level="MUST",
    roles="R",
    title="ENCR_AES_CBC without Key Length is rejected: NO_PROPOSAL_CHOSEN",
    needs=NEEDS,
)
def test_neg_006_aes_without_key_length(ctx: CaseContext) -> None:
    sc = ctx.scenario(
        ike_proposals=(
            proposal("AES_CBC_128/AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
        )
    )
    transforms = [
        raw_transform(1, 12),
        raw_transform(2, 5),
        raw_transform(3, 12),
        raw_transform(4, 14, last=True),
    ]
    with put_responds(ctx, sc) as ini:
        reply = ini.init(offer=RawSa(raw_proposal(1, transforms, last=True)), group=14)
        _assert_refused(ctx, ini, reply, N.NO_PROPOSAL_CHOSEN)


# --- IKEV2-NEG-007 ---


@case(
    "IKEV2-NEG-007",
    suite=SUITE,
    rfc="7296 §3.3.6",
    level="MUST",
    roles="I",
    title="Initiator rejects an answer with a transform it did not offer",
    needs=NEEDS,
)
def test_neg_007_answer_not_offered(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal(CBC128),))
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        offered = rx.get(v2p.SaPayload)
        p = offered.proposals[0]
        mine = choose(p)
        forged = v2p.Proposal(
            p.num,
            1,
            b"",
            [v2p.Transform(1, 12, 192) if t.type == 1 else t for t in mine.transforms],
        )
        with ctx.step("answer with AES-CBC-192 (not offered)"):
            resp.accept(rx, answer=forged)
        sas = wait_put(ctx, lambda s: not _sas_for(s, rx.spi_i), 3.0)
        auth = resp.request(exchange=IKE_AUTH, timeout=0.3)
        note(
            ctx,
            "answer",
            "offered: "
            + describe_proposal(p)
            + "\nanswered: "
            + describe_proposal(forged)
            + f"\nPUT SAs after: {sas}",
        )
        assert auth is None, "the PUT sent IKE_AUTH after an answer it did not offer"
        assert not any(x.established for x in sas), f"the PUT established an IKE SA: {sas}"


# --- IKEV2-NEG-008 ---


@case(
    "IKEV2-NEG-008",
    suite=SUITE,
    rfc="7296 §3.4, §2.7",
    level="MUST",
    roles="R",
    title="KE for another group than the selected one: INVALID_KE_PAYLOAD with the group",
    needs=NEEDS,
)
def test_neg_008_invalid_ke_payload(ctx: CaseContext) -> None:
    sc = ctx.scenario(
        ike_proposals=(proposal("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256"),)
    )
    offer = [
        v2p.Proposal(
            1,
            1,
            b"",
            [
                transform("AES_CBC_128"),
                transform("PRF_HMAC_SHA2_256"),
                transform("HMAC_SHA2_256_128"),
                transform("MODP_2048"),
                transform("ECP_256"),
            ],
        )
    ]
    with put_responds(ctx, sc) as ini:
        reply = ini.init(offer=offer, group=14, follow=False)
        assert reply.answered, "no answer"
        k = reply.notify(N.INVALID_KE_PAYLOAD)
        note(ctx, "answer", f"{reply.msg.summary()} data={k.data.hex() if k else '-'}")
        assert k is not None, f"no INVALID_KE_PAYLOAD: {reply.describe()}"
        assert k.data == b"\x00\x13", f"notification data {k.data.hex()} (want 0013 = ECP-256)"
        _assert_refused(ctx, ini, reply, N.INVALID_KE_PAYLOAD)


# --- IKEV2-NEG-009 ---


@case(
    "IKEV2-NEG-009",
    suite=SUITE,
    rfc="7296 §1.2, §3.3.6",
    level="SHOULD",
    roles="I",
    title="After INVALID_KE_PAYLOAD the initiator retries with that group, same proposals",
    needs=NEEDS,
)
def test_neg_009_retry_after_invalid_ke(ctx: CaseContext) -> None:
    sc = ctx.scenario(
        ike_proposals=(
            proposal("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048/CURVE_25519"),
        )
    )
    with put_initiates(ctx, sc) as (resp, _ini):
        first_rx = resp.request()
        assert first_rx is not None, "the PUT sent no IKE_SA_INIT"
        m1 = first_rx.message()
        resp.refuse(first_rx, N.INVALID_KE_PAYLOAD, (31).to_bytes(2, "big"))
        retry = resp.wire.recv(
            lambda r: (
                r.exchange == IKE_SA_INIT
                and not r.response
                and r.spi_r == ZERO_SPI
                and r.data != first_rx.data
            ),
            4.0,
        )
        assert retry is not None, "no new IKE_SA_INIT after INVALID_KE_PAYLOAD(31)"
        m2 = retry.message()
        ke = m2.get(v2p.KePayload)
        note(
            ctx,
            "retry",
            f"first: {m1.summary()} KE group {first(m1.payloads, v2p.KePayload).dh_group}\n"
            f"retry: {m2.summary()} KE group {ke.dh_group if ke else '-'} "
            f"({len(ke.data) if ke else 0} octets)",
        )
        assert ke is not None and ke.dh_group == 31, f"retry KE group {ke and ke.dh_group}"
        assert len(ke.data) == 32, f"Curve25519 KE data of {len(ke.data)} octets (32)"
        before = first(m1.payloads, v2p.SaPayload).proposals
        after = first(m2.payloads, v2p.SaPayload).proposals
        note(
            ctx,
            "proposals",
            "first:\n"
            + "\n".join(map(describe_proposal, before))
            + "\nretry:\n"
            + "\n".join(map(describe_proposal, after)),
        )
        assert _offer_set(after) == _offer_set(before), (
            "the retry does not propose the same set of suites (RFC 7296 §1.2: the full set "
            "again, downgrade protection)"
        )
        if [p.transforms for p in after] != [p.transforms for p in before]:
            note(ctx, "order", "same suites, transforms reordered in the retry")


def _offer_set(proposals: Sequence[v2p.Proposal]) -> set[tuple[int, int, frozenset[object]]]:
    return {
        (p.num, p.protocol_id, frozenset((t.type, t.id, t.key_length) for t in p.transforms))
        for p in proposals
    }


# --- IKEV2-NEG-010 ---


@case(
    "IKEV2-NEG-010",
    suite=SUITE,
    rfc="7296 §3.4",
    level="SHOULD",
    roles="I",
    title="KEi is for the first group of the first proposal",
    needs=NEEDS,
)
def test_neg_010_first_group(ctx: CaseContext) -> None:
    sc = ctx.scenario(
        ike_proposals=(
            proposal("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_384/MODP_2048"),
        )
    )
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        m = rx.message()
        ke = m.get(v2p.KePayload)
        groups = [
            t.id
            for p in first(m.payloads, v2p.SaPayload).proposals
            for t in p.transforms
            if t.type == 4
        ]
        note(
            ctx,
            "ke",
            f"{m.summary()}; DH transforms {groups}; KEi group {ke.dh_group if ke else '-'}",
        )
        assert ke is not None and ke.dh_group == 20, f"KEi DH Group Num {ke and ke.dh_group}"


# --- IKEV2-NEG-011 ---


@case(
    "IKEV2-NEG-011",
    suite=SUITE,
    rfc="7296 §3.3.6",
    level="MUST",
    roles="R",
    title="D-H NONE selected in CREATE_CHILD_SA: no KEr, Child SA created",
    needs=(*NEEDS, CHILD_SA, ESP),
)
def test_neg_011_dh_none(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_responds(ctx, sc) as ini:
        reply = ini.init()
        assert reply.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {reply.describe()}"
        a = ini.auth(Auth(psk=psk_of(sc)))
        assert a.get(v2p.AuthPayload) is not None, f"IKE_AUTH failed: {a.describe()}"
        spi = os.urandom(4)
        esp = sc.esp_proposals[0]
        ts = [transform(n) for n in (*esp.encr, *esp.integ)]
        ts += [v2p.Transform(4, 0), v2p.Transform(5, 0)]
        me, put = sc.local("tester"), sc.remote("tester")
        with ctx.step("CREATE_CHILD_SA with D-H NONE and no KE"):
            c = ini.request(
                36,
                [
                    v2p.SaPayload([v2p.Proposal(1, 3, spi, ts)]),
                    v2p.NoncePayload(os.urandom(32)),
                    v2p.TsI(ts_of(me.subnets)),
                    v2p.TsR(ts_of(put.subnets)),
                ],
            )
        note(ctx, "create-child", c.describe())
        assert c.answered, "no CREATE_CHILD_SA response"
        assert c.get(v2p.KePayload) is None, "the response carries a KE payload"
        sa = c.get(v2p.SaPayload)
        assert sa is not None, f"no Child SA created: {c.describe()}"
        dh = [t.id for t in sa.proposals[0].transforms if t.type == 4]
        assert dh in ([], [0]), f"D-H transform in the answer: {dh}"
        sas = wait_put(ctx, lambda s: any(len(x.children) >= 2 for x in s), 2.0)
        note(ctx, "put-sas", repr(sas))
        assert any(len(x.children) >= 2 for x in sas), "the PUT lists no second Child SA"


# --- cookies: IKEV2-NEG-012, -014, -015 ---


def _cookie_mode(ctx: CaseContext, ini: Initiator, limit: int = 16) -> tuple[Reply | None, int]:
    """Open half-open IKE SAs until the PUT answers with a COOKIE; returns (reply, count)."""
    return CookieLoad(ctx, ini).until_cookie(limit)


@case(
    "IKEV2-NEG-012",
    suite=SUITE,
    rfc="7296 §2.6",
    level="SHOULD",
    roles="R",
    title="Under half-open load the responder answers with N(COOKIE) only, 1..64 octets",
    needs=NEEDS,
)
def test_neg_012_cookie_under_load(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),))
    with cookie_thresholds(ctx), put_responds(ctx, sc) as ini:
        reply, n = _cookie_mode(ctx, ini)
        if reply is None:
            grade(ctx, Level.SHOULD, f"no COOKIE after {n} half-open IKE SAs")
            return
        m = reply.msg
        c = reply.notify(N.COOKIE)
        note(
            ctx,
            "cookie",
            f"after {n} half-open SAs: {m.summary()} SPIr={m.spi_r.hex()} "
            f"cookie {len(c.data)} octets {c.data.hex()}",
        )
        # sending a COOKIE under load is the SHOULD; its form is a MUST (RFC 7296 §2.6, §3.10.1)
        problems = []
        if reply.names() != ["N(COOKIE)"]:
            problems.append(f"answer payloads {reply.names()} (want only N(COOKIE))")
        if m.spi_r != ZERO_SPI:
            problems.append(f"SPIr {m.spi_r.hex()} in the COOKIE answer (must be 0)")
        if not 1 <= len(c.data) <= 64:
            problems.append(f"cookie of {len(c.data)} octets (1..64)")
        if problems:
            grade(ctx, Level.MUST, "; ".join(problems))


@case(
    "IKEV2-NEG-014",
    suite=SUITE,
    rfc="7296 §2.6",
    level="MUST",
    roles="R",
    title="A wrong cookie is treated as none: a new COOKIE, no IKE SA",
    needs=NEEDS,
)
def test_neg_014_wrong_cookie(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),))
    with cookie_thresholds(ctx), put_responds(ctx, sc) as ini:
        reply, n = _cookie_mode(ctx, ini)
        if reply is None:
            raise NotApplicable(
                [
                    f"the PUT sent no COOKIE after {n} half-open IKE SAs "
                    "(IKEV2-NEG-012): cookie mode cannot be reached"
                ]
            )
        first = reply.notify(N.COOKIE).data
        bogus = os.urandom(len(first))
        with ctx.step("IKE_SA_INIT with a random cookie"):
            r2 = ini.init(cookie=bogus, follow=False)
        note(
            ctx,
            "cookies",
            f"PUT's cookie {first.hex()}\nours {bogus.hex()}\nanswer {r2.describe()}",
        )
        assert r2.answered, "no answer to a request with a wrong cookie"
        c2 = r2.notify(N.COOKIE)
        assert c2 is not None and r2.get(v2p.SaPayload) is None, (
            f"answer to a wrong cookie: {r2.describe()} (want a new N(COOKIE))"
        )
        assert c2.data != bogus, "the PUT echoed our bogus cookie"
        spi_i = ini.rounds[-1][0][:8]
        assert not _sas_for(ctx.put.list_sas(), spi_i), "the PUT keeps an IKE SA for it"


@case(
    "IKEV2-NEG-015",
    suite=SUITE,
    rfc="7296 §2.6",
    level="MUST",
    roles="R",
    title="A valid cookie echoed first lets the exchange continue to IKE_AUTH",
    needs=NEEDS,
)
def test_neg_015_valid_cookie(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),))
    with cookie_thresholds(ctx), put_responds(ctx, sc) as ini:
        reply, n = _cookie_mode(ctx, ini)
        if reply is None:
            raise NotApplicable(
                [
                    f"the PUT sent no COOKIE after {n} half-open IKE SAs "
                    "(IKEV2-NEG-012): cookie mode cannot be reached"
                ]
            )
        with ctx.step("a new IKE_SA_INIT, then again with the PUT's cookie first"):
            r2 = ini.init()
        rounds = [r.describe() for _q, r in ini.rounds[-2:]]
        note(ctx, "answers", "\n".join(rounds))
        first_answer = ini.rounds[-2][1]
        assert first_answer.notify(N.COOKIE) is not None, (
            f"the PUT left cookie mode: {first_answer.describe()}"
        )
        assert r2.get(v2p.SaPayload) is not None and r2.get(v2p.KePayload) is not None, (
            f"answer to the echoed cookie: {r2.describe()}"
        )
        with ctx.step("IKE_AUTH"):
            a = ini.auth(Auth(psk=psk_of(sc)))
        assert a.get(v2p.AuthPayload) is not None, f"IKE_AUTH failed: {a.describe()}"


# --- IKEV2-NEG-013 ---


@case(
    "IKEV2-NEG-013",
    suite=SUITE,
    rfc="7296 §2.6",
    level="MUST",
    roles="I",
    title="Initiator retries with N(COOKIE) first and the other payloads unchanged",
    needs=NEEDS,
)
def test_neg_013_cookie_retry(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        cookie = os.urandom(32)
        resp.refuse(rx, N.COOKIE, cookie)
        retry = resp.wire.recv(
            lambda r: (
                r.exchange == IKE_SA_INIT
                and not r.response
                and r.spi_r == ZERO_SPI
                and r.data != rx.data
            ),
            4.0,
        )
        assert retry is not None, "no IKE_SA_INIT retry after N(COOKIE)"
        m1, m2 = rx.message(), retry.message()
        note(ctx, "retry", f"first: {m1.summary()}\nretry: {m2.summary()}")
        assert retry.spi_i == rx.spi_i, "the retry has another SPIi"
        p0 = m2.payloads[0]
        assert isinstance(p0, v2p.NotifyPayload) and p0.notify_type == N.COOKIE, (
            f"first payload of the retry is {m2.summary()}"
        )
        assert p0.data == cookie, "the cookie data differs from ours"
        for cls in (v2p.SaPayload, v2p.KePayload, v2p.NoncePayload):
            a, b = first(m1.payloads, cls), first(m2.payloads, cls)
            assert a is not None and a.body() == b.body(), f"{cls.__name__} changed in the retry"


# --- IKEV2-NEG-016 ---


@case(
    "IKEV2-NEG-016",
    suite=SUITE,
    rfc="7296 §2.6.1",
    level="SHOULD",
    roles="I",
    title="COOKIE then INVALID_KE_PAYLOAD: IKE_SA_INIT completes in 3-4 round trips",
    needs=NEEDS,
)
def test_neg_016_cookie_then_invalid_ke(ctx: CaseContext) -> None:
    sc = ctx.scenario(
        ike_proposals=(
            proposal("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048/CURVE_25519"),
        )
    )
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        log = [rx.message().summary()]
        resp.refuse(rx, N.COOKIE, os.urandom(24))
        rx2 = resp.wire.recv(
            lambda r: r.exchange == IKE_SA_INIT and not r.response and r.data != rx.data, 4.0
        )
        assert rx2 is not None, "no retry after COOKIE"
        log.append(rx2.message().summary())
        resp.refuse(rx2, N.INVALID_KE_PAYLOAD, (31).to_bytes(2, "big"))
        rx3 = resp.wire.recv(
            lambda r: (
                r.exchange == IKE_SA_INIT and not r.response and r.data not in (rx.data, rx2.data)
            ),
            4.0,
        )
        if rx3 is None:
            note(ctx, "rounds", "\n".join(log))
            grade(ctx, Level.MUST, "the PUT gave up after COOKIE then INVALID_KE_PAYLOAD")
            return
        log.append(rx3.message().summary())
        resp.spi_i = rx3.spi_i
        resp.accept(rx3)
        auth = resp.request(exchange=IKE_AUTH, timeout=4.0)
        log.append(auth.message().summary() if auth else "no IKE_AUTH")
        note(ctx, "rounds", "\n".join(log))
        assert auth is not None, "no IKE_AUTH after the third IKE_SA_INIT was accepted"


# --- IKEV2-NEG-017 / -018 / -019 / -020: observation of IKE_SA_INIT ---


@dataclass(frozen=True)
class _Exchange:
    request: bytes
    response: bytes
    initiator_port: int
    """The initiator's source port as the responder sees it (500 when the PUT initiates)."""


def _init_exchanges(ctx: CaseContext, sc: Scenario, count: int) -> list[_Exchange]:
    """``count`` IKE_SA_INIT exchanges with the PUT in the case's role (the harness answers
    the PUT's requests, or the PUT answers the harness's)."""
    out = []
    if ctx.put_initiates:
        with put_initiates(ctx, sc, start=False) as (resp, ini):
            for _ in range(count):
                ini.start()
                rx = resp.request(new_spi=True)
                assert rx is not None, "the PUT sent no IKE_SA_INIT"
                resp.accept(rx)
                out.append(_Exchange(rx.data, resp.harness_sa.init_response, IKE_PORT))
                ini.abort()
        return out
    with put_responds(ctx, sc) as ini:
        for _ in range(count):
            reply = ini.init()
            assert reply.answered and reply.get(v2p.SaPayload) is not None, (
                f"IKE_SA_INIT failed: {reply.describe()}"
            )
            out.append(_Exchange(reply.request, reply.datagram.data, ini.wire.local_port))
    return out


@case(
    "IKEV2-NEG-017",
    suite=SUITE,
    rfc="7296 §3.1, §2.6",
    level="MUST",
    roles="IR",
    title="SPIr zero in requests, SPIi distinct and nonzero, SPIr nonzero in responses",
    needs=NEEDS,
)
def test_neg_017_spis(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),))
    ex = _init_exchanges(ctx, sc, 10)
    lines = [
        f"SPIi={e.request[:8].hex()} SPIr(request)={e.request[8:16].hex()} "
        f"SPIr(response)={e.response[8:16].hex()}"
        for e in ex
    ]
    note(ctx, "spis", "\n".join(lines))
    if ctx.put_initiates:
        spis = [e.request[:8] for e in ex]
        assert all(e.request[8:16] == ZERO_SPI for e in ex), "a request with a nonzero SPIr"
        assert all(s != ZERO_SPI for s in spis), "a zero SPIi"
        assert len(set(spis)) == len(spis), "repeated SPIi values"
    else:
        spis = [e.response[8:16] for e in ex]
        assert all(s != ZERO_SPI for s in spis), "a response with SPIr 0"
        assert len(set(spis)) == len(spis), "repeated SPIr values"


def _check_header(data: bytes, *, response: bool, initiator: bool) -> list[str]:
    _si, _sr, _np, version, exchange, flags, mid, length = struct.unpack_from("!8s8sBBBBII", data)
    bad = []
    if version != 0x20:
        bad.append(f"version octet {version:#04x} (want 0x20: major 2, minor 0)")
    if exchange != IKE_SA_INIT:
        bad.append(f"exchange type {exchange}")
    if bool(flags & 0x08) != initiator:
        bad.append(f"I flag {'set' if flags & 0x08 else 'clear'}")
    if bool(flags & 0x20) != response:
        bad.append(f"R flag {'set' if flags & 0x20 else 'clear'}")
    if flags & 0x10:
        bad.append("V flag set")
    if flags & ~0x38 & 0xFF:
        bad.append(f"reserved flag bits {flags & ~0x38 & 0xFF:#04x}")
    if mid != 0:
        bad.append(f"Message ID {mid}")
    if length != len(data):
        bad.append(f"Length {length} for {len(data)} octets")
    return bad


@case(
    "IKEV2-NEG-018",
    suite=SUITE,
    rfc="7296 §3.1",
    level="MUST",
    roles="IR",
    title="IKE_SA_INIT header: version 2.0, I/R flags, V clear, Message ID 0",
    needs=NEEDS,
)
def test_neg_018_header(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    (e,) = _init_exchanges(ctx, sc, 1)
    data = e.request if ctx.put_initiates else e.response
    bad = _check_header(data, response=not ctx.put_initiates, initiator=ctx.put_initiates)
    note(ctx, "header", data[:28].hex() + ("\n" + "\n".join(bad) if bad else "\nall checks pass"))
    assert not bad, "; ".join(bad)


@case(
    "IKEV2-NEG-019",
    suite=SUITE,
    rfc="7296 §2.10, §3.9",
    level="MUST",
    roles="IR",
    title="Nonces >= 32 octets with PRF_HMAC_SHA2_512, never repeated",
    needs=NEEDS,
)
def test_neg_019_nonces(ctx: CaseContext) -> None:
    sc = ctx.scenario(ike_proposals=(proposal("AES_GCM_16_256/PRF_HMAC_SHA2_512/CURVE_25519"),))
    ex = _init_exchanges(ctx, sc, 20)
    nonces = []
    for e in ex:
        m = decode_message(e.request if ctx.put_initiates else e.response)
        prf_ids = [
            t.id for t in first(m.payloads, v2p.SaPayload).proposals[0].transforms if t.type == 2
        ]
        assert 7 in prf_ids, f"PRF_HMAC_SHA2_512 not in the SA ({prf_ids})"
        nonce = m.get(v2p.NoncePayload)
        assert nonce is not None, f"no nonce in {m.summary()}"
        nonces.append(nonce.data)
    note(ctx, "nonces", "\n".join(f"{len(x)} {x.hex()}" for x in nonces))
    short = [len(x) for x in nonces if len(x) < 32]
    assert not short, f"nonces shorter than 32 octets (half of SHA-512's key size): {short}"
    assert all(len(x) <= 256 for x in nonces), "a nonce longer than 256 octets"
    assert len(set(nonces)) == len(nonces), "a nonce was repeated"


@case(
    "IKEV2-NEG-020",
    suite=SUITE,
    rfc="7296 §2.23",
    level="MUST",
    roles="IR",
    title="Both NAT-D notifies present and equal to SHA-1(SPIi|SPIr|IP|port)",
    needs=(*NEEDS, NAT_T),
)
def test_neg_020_natd(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    (e,) = _init_exchanges(ctx, sc, 1)
    put_addr, tester_addr = sc.remote("tester").address, sc.local("tester").address
    if ctx.put_initiates:
        m = decode_message(e.request)
        spi_r = ZERO_SPI
        src, dst = (put_addr, IKE_PORT), (tester_addr, IKE_PORT)
    else:
        m = decode_message(e.response)
        spi_r = m.spi_r
        src, dst = (put_addr, IKE_PORT), (tester_addr, e.initiator_port)
    srcs = [n.data for n in m.notifies() if n.notify_type == N.NAT_DETECTION_SOURCE_IP]
    dsts = [n.data for n in m.notifies() if n.notify_type == N.NAT_DETECTION_DESTINATION_IP]
    want_s = natd_hash(m.spi_i, spi_r, src)
    want_d = natd_hash(m.spi_i, spi_r, dst)
    note(
        ctx,
        "natd",
        f"{m.summary()}\nsource: got {[x.hex() for x in srcs]} want "
        f"{want_s.hex()} = SHA-1(SPIi|{spi_r.hex()}|{src})\ndestination: got "
        f"{[x.hex() for x in dsts]} want {want_d.hex()} = SHA-1(SPIi|{spi_r.hex()}|{dst})",
    )
    assert srcs, "no NAT_DETECTION_SOURCE_IP"
    assert dsts, "no NAT_DETECTION_DESTINATION_IP"
    problems = []
    if want_s not in srcs:
        problems.append("NAT_DETECTION_SOURCE_IP does not hash the address/port it was sent from")
    if want_d not in dsts:
        problems.append(
            "NAT_DETECTION_DESTINATION_IP does not hash the address/port it was sent to"
        )
    if problems:
        known(ctx, {"strongswan": "strongswan-libipsec-fakes-nat"})
    assert not problems, "; ".join(problems)


# --- IKEV2-NEG-021 ---


@case(
    "IKEV2-NEG-021",
    suite=SUITE,
    rfc="7296 §2.23",
    level="MUST",
    roles="I",
    title="NAT detected: IKE_AUTH on UDP 4500 with the non-ESP marker, ESP in UDP",
    needs=(*NEEDS, NAT_T, CHILD_SA, ESP),
)
def test_neg_021_initiator_floats(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        with ctx.step("answer with a NAT_DETECTION_DESTINATION_IP that does not match"):
            resp.accept(rx, forge_natd_dst=True)
        got = resp.auth_request()
        assert got is not None, "no IKE_AUTH from the PUT"
        arx, req = got
        note(
            ctx,
            "ike-auth",
            f"IKE_AUTH to tester port {arx.port} from {arx.src} marker={arx.marker}",
        )
        assert arx.port == NATT_PORT, f"IKE_AUTH sent to port {arx.port} (want 4500)"
        assert arx.marker, "IKE_AUTH on 4500 without the non-ESP marker"
        resp.answer_auth(arx, req, Auth(psk=psk_of(sc)))
        sas = wait_put(ctx, lambda s: any(x.children for x in s), 3.0)
        note(ctx, "put-sas", repr(sas))
        children = [c for x in sas for c in x.children]
        assert children, "no Child SA on the PUT"
        with ctx.step("traffic from the PUT on the Child SA"):
            how = esp_from_put(ctx, sc, resp.wire, resp.child_spi)
        note(ctx, "esp", f"the PUT's ESP (SPI {resp.child_spi.hex()}): {how}")
        assert how is not None, "no ESP from the PUT on the new Child SA"
        assert how.startswith("ESP in UDP"), f"the PUT's ESP is {how}"
        assert all(c.encap for c in children), "the PUT lists its Child SA without encapsulation"


# --- IKEV2-NEG-022 ---


@case(
    "IKEV2-NEG-022",
    suite=SUITE,
    rfc="7296 §2.23",
    level="MUST",
    roles="R",
    title="IKE from source port 40000 is answered to port 40000",
    needs=NEEDS,
)
def test_neg_022_any_source_port(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_responds(ctx, sc, port=40000) as ini:
        reply = ini.init()
        assert reply.answered, "no answer to IKE_SA_INIT from source port 40000"
        note(
            ctx,
            "answer",
            f"from {reply.datagram.src} to our port {reply.datagram.port}: {reply.describe()}",
        )
        assert reply.get(v2p.SaPayload) is not None, f"answer {reply.describe()}"


# --- IKEV2-NEG-023 ---


@case(
    "IKEV2-NEG-023",
    suite=SUITE,
    rfc="7296 §2.23",
    level="MUST",
    roles="R",
    title="Responder behind which a NAT is detected accepts IKE on 4500 and encapsulates ESP",
    needs=(*NEEDS, NAT_T, CHILD_SA, ESP),
)
def test_neg_023_responder_nat(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_responds(ctx, sc) as ini:
        reply = ini.init(forge_natd_src=True)
        assert reply.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {reply.describe()}"
        with ctx.step("IKE_AUTH to the PUT's port 4500"):
            a = ini.auth(Auth(psk=psk_of(sc)), natt=True)
        assert a.answered, "no answer to IKE_AUTH on 4500"
        put_natt = ini.wire.put_real(NATT_PORT)
        note(
            ctx,
            "ike-auth",
            f"answer from {a.datagram.src} marker={a.datagram.marker}: {a.describe()}",
        )
        assert a.datagram.src[1] == put_natt, f"answered from port {a.datagram.src[1]} (want 4500)"
        assert a.datagram.marker, "answer on 4500 without the non-ESP marker"
        assert a.get(v2p.AuthPayload) is not None, f"IKE_AUTH failed: {a.describe()}"
        sas = wait_put(ctx, lambda s: any(x.children for x in s), 2.0)
        note(ctx, "put-sas", repr(sas))
        children = [c for x in sas for c in x.children]
        assert children, "no Child SA on the PUT"
        with ctx.step("traffic from the PUT on the Child SA"):
            how = esp_from_put(ctx, sc, ini.wire, ini.child_spi)
        note(ctx, "esp", f"the PUT's ESP (SPI {ini.child_spi.hex()}): {how}")
        assert how is not None, "no ESP from the PUT on the new Child SA"
        assert how.startswith("ESP in UDP"), f"the PUT's ESP is {how}"
        assert all(c.encap for c in children), "the PUT lists its Child SA without encapsulation"
