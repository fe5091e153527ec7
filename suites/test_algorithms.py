"""Suite algorithms: which transforms the peer under test accepts, refuses and uses (catalogue
§11, ALG-001..008; RFC 8247 for IKEv2, RFC 8221 for ESP/AH, RFC 7427 signatures).

Each case is a set of sub-cases, one per algorithm (a table in the evidence; the verdict is the
worst of them, graded by each sub-case's own level). What the PUT must accept is configured on
it explicitly and negotiated by the harness, which then proves the transform works: it derives
the IKE keys itself and opens the PUT's protected IKE_AUTH answer, or it derives the Child SA's
KEYMAT and checks ESP/AH traffic both ways with its own encoder and the reference driver's
inbound code. What the PUT must not accept is offered against its *default* configuration
(the requirement is on what an implementation ships): each forbidden transform as the only
choice of its type, the other types left open to anything common.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.cases import Level, case
from harness.peers.base import (
    AH,
    CERT_ECDSA,
    CERT_RSA,
    CHILD_SA,
    ESP,
    IKEV2,
    PSK,
    NotApplicable,
    PeerError,
    Proposal,
)
from reference_impl.ike import payloads as v2p
from suites.support.child import (
    DEFAULT,
    SetupFailed,
    child_scenario,
    esp_proposal,
    initiating,
    proposals_as,
    put_children,
    responding,
    sa_init_probe,
    ts,
)
from suites.support.ike import (
    Auth,
    Initiator,
    N,
    SocketWire,
    configure_put,
    flush_half_open,
    grade,
    known,
    note,
    put_initiates,
    recorded,
    suite_pki,
    transform,
)

if TYPE_CHECKING:
    from harness.lab import CaseContext
    from harness.peers.base import Scenario

SUITE = "algorithms"

ENCR, PRF, INTEG, DH = 1, 2, 3, 4
BASE = {
    ENCR: [transform("AES_CBC_128")],
    PRF: [transform("PRF_HMAC_SHA2_256")],
    INTEG: [transform("HMAC_SHA2_256_128")],
    DH: [transform("MODP_2048")],
}
"""The RFC 8247 MUST suite: the fixed value of every type a sub-case does not vary."""
OPEN = {
    ENCR: [transform(n) for n in ("AES_CBC_128", "AES_CBC_256", "AES_CBC_192", "3DES_CBC")],
    PRF: [transform(n) for n in ("PRF_HMAC_SHA2_256", "PRF_HMAC_SHA2_384", "PRF_HMAC_SHA2_512",
                                 "PRF_HMAC_SHA1")],
    INTEG: [transform(n) for n in ("HMAC_SHA2_256_128", "HMAC_SHA2_384_192", "HMAC_SHA2_512_256",
                                   "HMAC_SHA1_96")],
    DH: [transform(n) for n in ("MODP_2048", "ECP_256", "CURVE_25519", "ECP_384", "MODP_3072",
                                "MODP_4096", "MODP_1536", "MODP_1024")],
    "aead": [transform(n) for n in ("AES_GCM_16_128", "AES_GCM_16_256", "CHACHA20_POLY1305")],
}  # fmt: skip
"""Everything common per type: the types a MUST NOT probe leaves open (default config)."""

GMAC_128 = v2p.Transform(ENCR, 21, 128)
"""ENCR_NULL_AUTH_AES_GMAC with its Key Length attribute (RFC 4543 §3)."""
CCM_8 = v2p.Transform(ENCR, 14, 128)
"""ENCR_AES_CCM_8 with a 128-bit key (no canonical name in the harness's table)."""


@dataclass
class Sub:
    """One sub-case: an algorithm, its level, what happened."""

    label: str
    level: Level
    outcome: str
    """``accepted``, ``refused``, ``not tested``, or ``broken`` (accepted, then failed)."""
    detail: str = ""

    def line(self) -> str:
        return f"{self.label:<44} {self.level.value:<10} {self.outcome:<11} {self.detail}"


def _table(ctx: CaseContext, subs: list[Sub], name: str = "algorithms") -> None:
    head = f"{'algorithm':<44} {'level':<10} {'outcome':<11} detail"
    note(ctx, name, "\n".join([head, *(s.line() for s in subs)]))
    if ctx.recording is not None:
        for s in subs:
            ctx.recording.parameter(s.label, s.outcome)


def _require_some(subs: list[Sub]) -> None:
    if subs and all(s.outcome == "not tested" for s in subs):
        raise NotApplicable([f"no sub-case could be set up: {subs[0].detail}"])


def _base_scenario(ctx: CaseContext, **kw: Any) -> Scenario:
    """IKEv2 with a Child SA (a PUT without a data plane: childless, RFC 6023)."""
    child = ctx.put.capabilities().has(CHILD_SA)
    return child_scenario(ctx, child=child, **kw)


def _offer(types: dict[Any, list[v2p.Transform]]) -> list[v2p.Transform]:
    out: list[v2p.Transform] = []
    for k in (ENCR, PRF, INTEG, DH):
        out += types.get(k, [])
    return out


# --- IKE SA transforms (RFC 8247 §3) ----------------------------------------------------------


def _ike_sub(
    ctx: CaseContext,
    label: str,
    level: Level,
    transforms: list[v2p.Transform],
    *,
    names: str | None = None,
    keyword: str | None = None,
) -> Sub:
    """Configure the PUT with exactly this IKE proposal (canonical ``names`` or a strongSwan
    ``keyword``), negotiate it and open the PUT's IKE_AUTH answer with the harness's keys."""
    try:
        if names is not None:
            sc = _base_scenario(ctx, ike_proposals=(Proposal.parse(names),))
            ctx.put.capabilities().require((), sc)
            extra = None
        else:
            sc = _base_scenario(ctx)
            extra = proposals_as(sc, ike=keyword)
    except (NotApplicable, ValueError) as exc:
        return Sub(label, level, "not tested", str(exc))
    offer = v2p.Proposal(1, 1, b"", transforms)
    try:
        with (
            ctx.step(label),
            responding(
                ctx, sc, ike=[offer], extra=extra, child=sc.child, require_child=False, plane=False
            ) as o,
        ):
            chosen = o.init.get(v2p.SaPayload).proposals[0]
            got = sorted((t.type, t.id, t.key_length) for t in chosen.transforms)
            want = sorted((t.type, t.id, t.key_length) for t in transforms)
            if got != want:
                return Sub(label, level, "broken", f"chose {got} from {want}")
            owner = o.session.owner
            assert isinstance(owner, Initiator)
            ok, what = owner.verify_put(o.auth, psk=sc.psk.encode())
            if not ok:
                return Sub(label, level, "broken", f"IKE_AUTH decrypted, AUTH: {what}")
            return Sub(label, level, "accepted", "IKE_AUTH opened and its AUTH verified")
    except SetupFailed as exc:
        text = str(exc)
        outcome = "refused" if "IKE_SA_INIT" in text else "broken"
        return Sub(label, level, outcome, text)
    except (NotApplicable, PeerError) as exc:
        return Sub(label, level, "not tested", str(exc).splitlines()[0][:200])


def _with(kind: int, t: v2p.Transform) -> list[v2p.Transform]:
    return _offer({**BASE, kind: [t]})


@case(
    "ALG-001",
    suite=SUITE,
    rfc="8247 §3.1-§3.4",
    level="MUST",
    roles="R",
    title="IKE SA with each MUST transform (AES-CBC-128, PRF/AUTH HMAC-SHA2-256, group 14; "
    "MUST- HMAC-SHA1)",
    needs=(IKEV2, PSK),
)
def test_alg_001_ike_must(ctx: CaseContext) -> None:
    base = "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    subs = [
        _ike_sub(ctx, "ENCR_AES_CBC-128 + PRF/AUTH SHA2-256 + group 14", Level.MUST,
                 _offer(BASE), names=base),
        _ike_sub(ctx, "PRF_HMAC_SHA1 (MUST-)", Level.MUST,
                 _with(PRF, transform("PRF_HMAC_SHA1")),
                 names="AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA1/MODP_2048"),
        _ike_sub(ctx, "AUTH_HMAC_SHA1_96 (MUST-)", Level.MUST,
                 _with(INTEG, transform("HMAC_SHA1_96")),
                 names="AES_CBC_128/HMAC_SHA1_96/PRF_HMAC_SHA2_256/MODP_2048"),
    ]  # fmt: skip
    _table(ctx, subs)
    _require_some(subs)
    known(ctx, {"libreswan": "libreswan-prf-tied-to-integrity"})
    bad = [
        f"{s.label}: {s.outcome} ({s.detail})" for s in subs if s.outcome in ("refused", "broken")
    ]
    assert not bad, "; ".join(bad)


@case(
    "ALG-002",
    suite=SUITE,
    rfc="8247 §3.1-§3.4",
    level="SHOULD",
    roles="R",
    title="SHOULD transforms for the IKE SA (AES-GCM, ChaCha20-Poly1305, AES-CCM-8, SHA2-512, "
    "AES-XCBC, group 19): accepted or refused, recorded",
    needs=(IKEV2, PSK),
)
def test_alg_002_ike_should(ctx: CaseContext) -> None:
    gcm = {ENCR: [transform("AES_GCM_16_128")], PRF: BASE[PRF], DH: BASE[DH]}
    cha = {ENCR: [transform("CHACHA20_POLY1305")], PRF: BASE[PRF], DH: BASE[DH]}
    ccm = {ENCR: [CCM_8], PRF: BASE[PRF], DH: BASE[DH]}
    subs = [
        _ike_sub(ctx, "ENCR_AES_GCM_16 (128)", Level.SHOULD, _offer(gcm),
                 names="AES_GCM_16_128/PRF_HMAC_SHA2_256/MODP_2048"),
        _ike_sub(ctx, "ENCR_CHACHA20_POLY1305", Level.SHOULD, _offer(cha),
                 names="CHACHA20_POLY1305/PRF_HMAC_SHA2_256/MODP_2048"),
        _ike_sub(ctx, "ENCR_AES_CCM_8 (128)", Level.SHOULD, _offer(ccm),
                 keyword="aes128ccm8-prfsha256-modp2048"),
        _ike_sub(ctx, "PRF_HMAC_SHA2_512", Level.SHOULD,
                 _with(PRF, transform("PRF_HMAC_SHA2_512")),
                 names="AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_512/MODP_2048"),
        _ike_sub(ctx, "PRF_AES128_XCBC", Level.SHOULD, _with(PRF, transform("PRF_AES128_XCBC")),
                 names="AES_CBC_128/HMAC_SHA2_256_128/PRF_AES128_XCBC/MODP_2048"),
        _ike_sub(ctx, "AUTH_HMAC_SHA2_512_256", Level.SHOULD,
                 _with(INTEG, transform("HMAC_SHA2_512_256")),
                 names="AES_CBC_128/HMAC_SHA2_512_256/PRF_HMAC_SHA2_256/MODP_2048"),
        _ike_sub(ctx, "AUTH_AES_XCBC_96", Level.SHOULD, _with(INTEG, transform("AES_XCBC_96")),
                 names="AES_CBC_128/AES_XCBC_96/PRF_HMAC_SHA2_256/MODP_2048"),
        _ike_sub(ctx, "D-H group 19 (ECP-256)", Level.SHOULD, _with(DH, transform("ECP_256")),
                 names="AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256"),
    ]  # fmt: skip
    _table(ctx, subs)
    _require_some(subs)
    known(
        ctx,
        {"strongswan": "algorithms-record-cases", "libreswan": "libreswan-prf-tied-to-integrity"},
    )
    _grade_should(ctx, subs)


def _grade_should(ctx: CaseContext, subs: list[Sub]) -> None:
    """A "record" case (catalogue §12.4): broken is a failure, a refused SHOULD a warning,
    a refused MAY an observation; the accepted ones are recorded."""
    broken = [f"{s.label}: {s.detail}" for s in subs if s.outcome == "broken"]
    if broken:
        grade(ctx, Level.MUST, "accepted but not working: " + "; ".join(broken))
    for lvl in (Level.SHOULD, Level.MAY):
        refused = [s.label for s in subs if s.outcome == "refused" and s.level is lvl]
        if refused:
            grade(ctx, lvl, f"refused {lvl.value} items: {', '.join(refused)}")
    accepted = [s.label for s in subs if s.outcome == "accepted"]
    untested = [s.label for s in subs if s.outcome == "not tested"]
    recorded(ctx, f"accepted: {', '.join(accepted) or 'none'}"
             + (f"; not tested: {', '.join(untested)}" if untested else ""))  # fmt: skip


# --- MUST NOT / SHOULD NOT against the default configuration ---------------------------------


def _probe_offers(kind: int, t: v2p.Transform) -> list[v2p.Proposal]:
    """Proposals where ``t`` is the only choice of its type and every other type is open
    (an AEAD proposal too where the type allows)."""
    plain = _offer({**OPEN, kind: [t]})
    props = [v2p.Proposal(1, 1, b"", plain)]
    if kind in (PRF, DH):
        aead = {ENCR: OPEN["aead"], PRF: OPEN[PRF], DH: OPEN[DH], kind: [t]}
        props.append(v2p.Proposal(2, 1, b"", _offer(aead)))
    return props


def _default_probe(
    ctx: CaseContext, label: str, level: Level, kind: int, t: v2p.Transform, wire: SocketWire
) -> Sub:
    props = _probe_offers(kind, t)
    group = t.id if kind == DH else 14
    reply = sa_init_probe(ctx, wire, props, group, timeout=1.0 if ctx.topology.backend == "local"
                          else 2.0)  # fmt: skip
    if not reply.answered:
        return Sub(label, level, "refused", "silence")
    sa = reply.get(v2p.SaPayload)
    if sa is not None:
        return Sub(
            label, level, "accepted", f"SAr1 {[(x.type, x.id) for x in sa.proposals[0].transforms]}"
        )
    if reply.notify(N.INVALID_KE_PAYLOAD) is not None:
        return Sub(label, level, "accepted", "INVALID_KE_PAYLOAD: a proposal with it was chosen")
    return Sub(label, level, "refused", reply.describe())


@case(
    "ALG-003",
    suite=SUITE,
    rfc="8247 §3.1-§3.4",
    level="MUST NOT",
    roles="IR",
    title="DES, PRF/AUTH HMAC-MD5, AUTH DES-MAC/KPDK-MD5 and group 1 neither accepted nor proposed "
    "(default configuration)",
    needs=(IKEV2, PSK),
)
def test_alg_003_ike_must_not(ctx: CaseContext) -> None:
    forbidden = [
        ("ENCR_DES", ENCR, v2p.Transform(ENCR, 2)),
        ("PRF_HMAC_MD5", PRF, v2p.Transform(PRF, 1)),
        ("AUTH_HMAC_MD5_96", INTEG, v2p.Transform(INTEG, 1)),
        ("AUTH_DES_MAC", INTEG, v2p.Transform(INTEG, 3)),
        ("AUTH_KPDK_MD5", INTEG, v2p.Transform(INTEG, 4)),
        ("D-H group 1 (MODP-768)", DH, v2p.Transform(DH, 1)),
    ]
    sc = _base_scenario(ctx)
    if ctx.put_initiates:
        with put_initiates(ctx, sc, extra=proposals_as(sc, ike=DEFAULT, esp=DEFAULT)) as (r, _i):
            rx = r.request(timeout=6.0)
            assert rx is not None, "the PUT sent no IKE_SA_INIT"
            sa = rx.get(v2p.SaPayload)
            assert sa is not None, "IKE_SA_INIT without SA"
            offered = {(t.type, t.id) for p in sa.proposals for t in p.transforms}
            note(ctx, "sai1", "\n".join(
                f"#{p.num}: {[(t.type, t.id, t.key_length) for t in p.transforms]}"
                for p in sa.proposals))  # fmt: skip
            found = [n for n, k, t in forbidden if (k, t.id) in offered]
            assert not found, f"the PUT's default SAi1 proposes {', '.join(found)}"
        return
    configure_put(ctx, sc, extra=proposals_as(sc, ike=DEFAULT, esp=DEFAULT))
    wire = SocketWire(ctx)
    try:
        subs = [_default_probe(ctx, n, Level.MUST_NOT, k, t, wire) for n, k, t in forbidden]
    finally:
        wire.close()
        flush_half_open(ctx)
    _table(ctx, subs)
    bad = [s.label for s in subs if s.outcome == "accepted"]
    assert not bad, f"accepted with its default configuration: {', '.join(bad)}"


@case(
    "ALG-004",
    suite=SUITE,
    rfc="8247 §3.1, §3.4",
    level="SHOULD NOT",
    roles="R",
    title="Groups 2, 5, 22, 23, 24 should not be accepted; ENCR_3DES (MAY) recorded "
    "(default configuration)",
    needs=(IKEV2, PSK),
)
def test_alg_004_ike_should_not(ctx: CaseContext) -> None:
    items = [
        ("D-H group 2 (MODP-1024)", Level.SHOULD_NOT, DH, v2p.Transform(DH, 2)),
        ("D-H group 5 (MODP-1536)", Level.SHOULD_NOT, DH, v2p.Transform(DH, 5)),
        ("D-H group 22", Level.SHOULD_NOT, DH, v2p.Transform(DH, 22)),
        ("D-H group 23", Level.SHOULD_NOT, DH, v2p.Transform(DH, 23)),
        ("D-H group 24", Level.SHOULD_NOT, DH, v2p.Transform(DH, 24)),
        ("ENCR_3DES", Level.MAY, ENCR, transform("3DES_CBC")),
    ]
    sc = _base_scenario(ctx)
    configure_put(ctx, sc, extra=proposals_as(sc, ike=DEFAULT, esp=DEFAULT))
    wire = SocketWire(ctx)
    try:
        subs = [_default_probe(ctx, n, lvl, k, t, wire) for n, lvl, k, t in items]
    finally:
        wire.close()
        flush_half_open(ctx)
    _table(ctx, subs)
    known(ctx, {"strongswan": "strongswan-default-proposals",
                "libreswan": "algorithms-record-cases"})  # fmt: skip
    weak = [s.label for s in subs if s.outcome == "accepted" and s.level is Level.SHOULD_NOT]
    if weak:
        grade(ctx, Level.SHOULD_NOT, f"accepted by default: {', '.join(weak)}")
    des3 = next(s for s in subs if s.label == "ENCR_3DES")
    recorded(ctx, f"ENCR_3DES (MAY) {des3.outcome} by default")


# --- authentication methods (RFC 8247 §4) -----------------------------------------------------


@case(
    "ALG-005",
    suite=SUITE,
    rfc="8247 §4.1, §4.2; 7427",
    level="MUST",
    roles="R",
    title="Authentication: PSK and RSA (1) MUST, ECDSA and Digital Signature (14) SHOULD, "
    "SHA-1 signatures MUST NOT",
    needs=(IKEV2,),
)
def test_alg_005_auth_methods(ctx: CaseContext) -> None:
    subs: list[Sub] = []
    caps = ctx.put.capabilities()
    base = _base_scenario(ctx)
    if caps.has(PSK):
        subs.append(_auth_sub(ctx, "Shared Key MIC (2)", Level.MUST, base, None))
    else:
        subs.append(Sub("Shared Key MIC (2)", Level.MUST, "not tested", caps.reason(PSK)))
    pki = suite_pki(ctx)
    rsa_sc = pki.scenario(base)
    rsa, ec = pki.creds["tester-rsa"], pki.creds["tester-ecdsa"]
    for label, lvl, auth, need in (
        ("RSA Digital Signature (1), 2048-bit", Level.MUST, Auth.of(rsa, method=1), CERT_RSA),
        ("ECDSA P-256 SHA-256 (9)", Level.SHOULD, Auth.of(ec, method=9), CERT_ECDSA),
        ("Digital Signature (14) RSA SHA2-256", Level.MUST,
         Auth.of(rsa, method=14, scheme="rsa", hash="sha256"), CERT_RSA),
        ("Digital Signature (14) RSA SHA2-512", Level.SHOULD,
         Auth.of(rsa, method=14, scheme="rsa", hash="sha512"), CERT_RSA),
        ("Digital Signature (14) ECDSA SHA2-256", Level.SHOULD,
         Auth.of(ec, method=14, scheme="ecdsa", hash="sha256"), CERT_ECDSA),
        ("Digital Signature (14) sha1WithRSAEncryption", Level.MUST_NOT,
         Auth.of(rsa, method=14, scheme="rsa", hash="sha1"), CERT_RSA),
    ):  # fmt: skip
        if not caps.has(need) or not caps.has(CERT_RSA):
            subs.append(Sub(label, lvl, "not tested", caps.reason(need if not caps.has(need)
                                                                  else CERT_RSA)))  # fmt: skip
            continue
        subs.append(_auth_sub(ctx, label, lvl, rsa_sc, auth))
    _table(ctx, subs)
    _require_some(subs)
    known(ctx, {"strongswan": "strongswan-sha1-signatures"})
    problems = []
    for s in subs:
        if s.level is Level.MUST_NOT and s.outcome == "accepted":
            grade(ctx, Level.MUST_NOT, f"{s.label} accepted")
            problems.append(s.label)
        elif s.level is not Level.MUST_NOT and s.outcome in ("refused", "broken"):
            grade(ctx, s.level, f"{s.label}: {s.outcome} ({s.detail})")
            problems.append(s.label)
    del problems


def _auth_sub(ctx: CaseContext, label: str, level: Level, sc: Scenario, auth: Auth | None) -> Sub:
    try:
        with (
            ctx.step(label),
            responding(ctx, sc, child=sc.child, require_child=False, plane=False, auth=auth) as o,
        ):
            if o.auth.notify(N.AUTHENTICATION_FAILED) is not None:
                return Sub(label, level, "refused", "AUTHENTICATION_FAILED")
            return Sub(label, level, "accepted", f"IKE_AUTH answer: {o.auth.describe()}")
    except SetupFailed as exc:
        text = str(exc)
        if "AUTHENTICATION_FAILED" in text or "IKE_AUTH failed" in text:
            return Sub(label, level, "refused", text)
        return Sub(label, level, "not tested", text)
    except (NotApplicable, PeerError) as exc:
        return Sub(label, level, "not tested", str(exc).splitlines()[0][:200])


# --- ESP and AH (RFC 8221) --------------------------------------------------------------------


def _esp_sub(
    ctx: CaseContext,
    label: str,
    level: Level,
    *,
    names: str | None = None,
    keyword: str | None = None,
    raw: list[v2p.Transform] | None = None,
    ah: bool = False,
) -> Sub:
    """A Child SA with exactly this ESP (or AH) transform set, configured on the PUT, made in
    the case's role, then echo traffic both ways checked with the harness's KEYMAT."""
    try:
        if ah:
            sc = child_scenario(ctx, ah_proposals=(Proposal.parse(names or ""),))
            extra = None
        elif names is not None:
            sc = child_scenario(ctx, esp_proposals=(Proposal.parse(names),))
            extra = None
        else:
            sc = child_scenario(ctx)
            extra = proposals_as(sc, esp=keyword)
        ctx.put.capabilities().require((), sc)
    except (NotApplicable, ValueError) as exc:
        return Sub(label, level, "not tested", str(exc))
    proto = 2 if ah else 3
    transforms = raw or [transform(n) for n in (names or "").split("/")]
    offer = [esp_proposal([], b"", protocol=proto, raw=transforms)]
    try:
        if ctx.put_initiates:
            with ctx.step(label), initiating(ctx, sc, extra=extra) as a:
                return _traffic(ctx, label, level, a.session, a.child)
        with ctx.step(label), responding(ctx, sc, esp=offer, extra=extra, require_child=False) as o:
            if o.child is None:
                return Sub(label, level, "refused", o.auth.describe())
            return _traffic(ctx, label, level, o.session, o.child)
    except SetupFailed as exc:
        return Sub(label, level, "refused", str(exc))
    except (NotApplicable, PeerError) as exc:
        return Sub(label, level, "not tested", str(exc).splitlines()[0][:200])


def _traffic(ctx: CaseContext, label: str, level: Level, s: Any, child: Any) -> Sub:
    if child is None:
        return Sub(label, level, "refused", "no Child SA")
    p = s.plane.ping(child, count=2)
    frames = [f for f in s.plane.frames if f.child == child.label]
    bad = [f for f in frames if not f.ok]
    detail = f"{child.sel.name()}: {p.text()}"
    if not p.ok or bad:
        return Sub(label, level, "broken", detail + (f"; {len(bad)} do not verify" if bad else ""))
    return Sub(label, level, "accepted", detail)


@case(
    "ALG-006",
    suite=SUITE,
    rfc="8221 §5, §6",
    level="MUST",
    roles="IR",
    title="ESP/AH MUST suites interoperate: AES-CBC+SHA2-256, AES-GCM-16, NULL+SHA2-256, "
    "AH SHA2-256",
    needs=(IKEV2, PSK, CHILD_SA, ESP),
)
def test_alg_006_esp_must(ctx: CaseContext) -> None:
    subs = [
        _esp_sub(ctx, "ENCR_AES_CBC-128 + AUTH_HMAC_SHA2_256_128", Level.MUST,
                 names="AES_CBC_128/HMAC_SHA2_256_128"),
        _esp_sub(ctx, "ENCR_AES_GCM_16-128", Level.MUST, names="AES_GCM_16_128"),
        _esp_sub(ctx, "ENCR_NULL + AUTH_HMAC_SHA2_256_128", Level.MUST,
                 names="NULL/HMAC_SHA2_256_128"),
    ]  # fmt: skip
    if ctx.put.capabilities().has(AH):
        subs.append(_esp_sub(ctx, "AH AUTH_HMAC_SHA2_256_128", Level.MUST,
                             names="HMAC_SHA2_256_128", ah=True))  # fmt: skip
    else:
        subs.append(Sub("AH AUTH_HMAC_SHA2_256_128", Level.MUST, "not tested",
                        ctx.put.capabilities().reason(AH)))  # fmt: skip
    _table(ctx, subs)
    known(ctx, {"strongswan": "strongswan-libipsec-no-ah"})
    bad = [
        f"{s.label}: {s.outcome} ({s.detail})" for s in subs if s.outcome in ("refused", "broken")
    ]
    assert not bad, "; ".join(bad)


@case(
    "ALG-007",
    suite=SUITE,
    rfc="8221 §5, §6",
    level="SHOULD",
    roles="IR",
    title="ESP SHOULD (ChaCha20-Poly1305, AES-CCM-8, HMAC-SHA2-512) and MAY (AES-CTR, AES-GMAC) "
    "transforms: recorded, working where accepted",
    needs=(IKEV2, PSK, CHILD_SA, ESP),
)
def test_alg_007_esp_should_may(ctx: CaseContext) -> None:
    subs = [
        _esp_sub(ctx, "ENCR_CHACHA20_POLY1305", Level.SHOULD, names="CHACHA20_POLY1305"),
        _esp_sub(ctx, "ENCR_AES_CCM_8 (128)", Level.SHOULD, keyword="aes128ccm8", raw=[CCM_8]),
        _esp_sub(ctx, "AUTH_HMAC_SHA2_512_256 (AES-CBC-128)", Level.SHOULD,
                 names="AES_CBC_128/HMAC_SHA2_512_256"),
        _esp_sub(ctx, "ENCR_AES_CTR (128) + HMAC_SHA2_256_128", Level.MAY,
                 names="AES_CTR_128/HMAC_SHA2_256_128"),
        _esp_sub(ctx, "ENCR_NULL_AUTH_AES_GMAC (128)", Level.MAY, names="NULL_AES_GMAC_128",
                 raw=[GMAC_128]),
    ]  # fmt: skip
    _table(ctx, subs)
    _require_some(subs)
    known(ctx, {"strongswan": "strongswan-libipsec-no-gmac"})
    _grade_should(ctx, subs)


@case(
    "ALG-008",
    suite=SUITE,
    rfc="8221 §5, §6",
    level="MUST NOT",
    roles="R",
    title="Forbidden ESP/AH suites refused in CREATE_CHILD_SA (default configuration); the IKE "
    "SA survives",
    needs=(IKEV2, PSK, CHILD_SA, ESP),
)
def test_alg_008_esp_must_not(ctx: CaseContext) -> None:
    sha256 = transform("HMAC_SHA2_256_128")
    cbc = transform("AES_CBC_128")
    none = v2p.Transform(INTEG, 0)
    items: list[tuple[str, int, list[v2p.Transform]]] = [
        ("ENCR_DES", 3, [v2p.Transform(ENCR, 2), sha256]),
        ("ENCR_DES_IV32", 3, [v2p.Transform(ENCR, 9), sha256]),
        ("ENCR_DES_IV64", 3, [v2p.Transform(ENCR, 1), sha256]),
        ("ENCR_BLOWFISH", 3, [v2p.Transform(ENCR, 7, 128), sha256]),
        ("ENCR_3IDEA", 3, [v2p.Transform(ENCR, 8), sha256]),
        ("AUTH_HMAC_MD5_96 (AES-CBC)", 3, [cbc, v2p.Transform(INTEG, 1)]),
        ("AUTH_DES_MAC (AES-CBC)", 3, [cbc, v2p.Transform(INTEG, 3)]),
        ("AUTH_KPDK_MD5 (AES-CBC)", 3, [cbc, v2p.Transform(INTEG, 4)]),
        ("ENCR_AES_CBC + AUTH_NONE", 3, [cbc, none]),
        ("ENCR_NULL + AUTH_NONE", 3, [v2p.Transform(ENCR, 11), none]),
        ("AH AUTH_HMAC_MD5_96", 2, [v2p.Transform(INTEG, 1)]),
    ]
    sc = child_scenario(ctx)
    offer = [esp_proposal(["AES_GCM_16_128"], b""),
             esp_proposal(["AES_CBC_128", "HMAC_SHA2_256_128"], b"", num=2)]  # fmt: skip
    with responding(
        ctx, sc, esp=offer, extra=proposals_as(sc, ike=DEFAULT, esp=DEFAULT),
        ike=_default_ike_offer(), require_child=False, plane=False,
    ) as o:  # fmt: skip
        s = o.session
        me, them = sc.local("tester"), sc.remote("tester")
        tsi, tsr = [ts(n) for n in me.subnets], [ts(n) for n in them.subnets]
        before = _put_child_spis(ctx)
        subs = []
        for label, proto, transforms in items:
            with ctx.step(label):
                reply, c = s.create_child(
                    [esp_proposal([], b"", protocol=proto, raw=transforms)], tsi, tsr
                )
            if c is not None:
                subs.append(Sub(label, Level.MUST_NOT, "accepted", c.sel.name()))
            elif reply.notify(N.NO_PROPOSAL_CHOSEN) is not None:
                subs.append(Sub(label, Level.MUST_NOT, "refused", "NO_PROPOSAL_CHOSEN"))
            else:
                subs.append(Sub(label, Level.MUST_NOT, "refused", reply.describe()))
        alive = s.alive()
        after = _put_child_spis(ctx)
    _table(ctx, subs)
    bad = [s.label for s in subs if s.outcome == "accepted"]
    other = [f"{s.label}: {s.detail}" for s in subs
             if s.outcome == "refused" and s.detail != "NO_PROPOSAL_CHOSEN"]  # fmt: skip
    note(ctx, "after", f"IKE SA answers: {alive.answered}; Child SAs on the PUT before "
         f"{sorted(before)} after {sorted(after)}; other refusals: {other}")  # fmt: skip
    assert not bad, f"accepted with its default configuration: {', '.join(bad)}"
    assert alive.answered, "the IKE SA does not survive the refused CREATE_CHILD_SAs"
    assert after <= before | set(), f"new Child SAs installed: {sorted(after - before)}"


def _default_ike_offer() -> list[v2p.Proposal]:
    """IKE proposals any default configuration should take (RFC 8247 MUST and SHOULD)."""
    dh = OPEN[DH]
    return [
        v2p.Proposal(1, 1, b"", _offer({ENCR: OPEN[ENCR], PRF: OPEN[PRF], INTEG: OPEN[INTEG],
                                        DH: dh})),
        v2p.Proposal(2, 1, b"", _offer({ENCR: OPEN["aead"], PRF: OPEN[PRF], DH: dh})),
    ]  # fmt: skip


def _put_child_spis(ctx: CaseContext) -> set[int]:
    if ctx.put.kind not in ("reference", "strongswan"):
        return set()
    return {c.spi_in for c in put_children(ctx)}
