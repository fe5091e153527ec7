"""Suite ikev2-auth: IKE_AUTH (catalogue §2, IKEV2-AUTH-001..017; RFC 7296 §2.15, §3.5, §3.8,
RFC 7427, RFC 4754).

The harness's scripted IKEv2 peer (``suites/support/ike.py``) computes and checks every AUTH
value itself (PSK, RSA PKCS#1 v1.5, RSASSA-PSS, ECDSA, RFC 7427 AlgorithmIdentifiers) with
the keys of its own end of the IKE SA, and presents chosen identities and certificates (a
small PKI: RSA and P-256 end entities, an intermediate CA, an expired and a self-signed
certificate, one whose subjectAltName names another identity).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from harness.cases import Level, case
from harness.peers.base import CERT_ECDSA, CERT_RSA, CHILD_SA, ESP, IKEV2, IPV6, PSK
from reference_impl.ike import payloads as v2p
from reference_impl.ike.certs import cert_der
from reference_impl.ike.enums import AuthMethod, IdType
from reference_impl.ike.messages import Message, encode_message
from suites.support.ike import (
    HASHES_ALL,
    IKE_AUTH,
    INFORMATIONAL,
    Auth,
    HarnessSa,
    Initiator,
    N,
    Reply,
    Responder,
    check_auth,
    first,
    grade,
    hash_ids,
    id_payload,
    id_text,
    known,
    note,
    notify,
    payload_names,
    proposal,
    psk_of,
    put_initiates,
    put_responds,
    signature_algorithm,
    suite_pki,
    wait_put,
)

if TYPE_CHECKING:
    from harness.lab import CaseContext
    from harness.peers.base import Scenario

SUITE = "ikev2-auth"
NEEDS = (IKEV2,)
WITH_CHILD = (IKEV2, CHILD_SA, ESP)


def _put_established(ctx: CaseContext, *, child: bool = True, timeout: float = 3.0) -> list[Any]:
    """The PUT's SA list once it shows an established IKE SA (with a Child SA)."""
    sas = wait_put(
        ctx, lambda s: any(x.established and (x.children or not child) for x in s), timeout
    )
    note(ctx, "put-sas", repr(sas))
    return sas


def _has_established(sas: Sequence[Any], *, child: bool = True) -> bool:
    return any(x.established and (x.children or not child) for x in sas)


def _sas_for(sas: Sequence[Any], spi_i: bytes) -> list[Any]:
    return [s for s in sas if s.spi_i == spi_i]


# --- a whole exchange in either role ---


class Outcome:
    """What one IKE_SA_INIT + IKE_AUTH with the PUT showed: the PUT's ID, CERTs and AUTH (and
    whether the harness could verify that AUTH), and whether the PUT accepted ours."""

    def __init__(self) -> None:
        self.put_id: v2p.IdPayload | None = None
        self.put_auth: v2p.AuthPayload | None = None
        self.put_certs: list[v2p.CertPayload] = []
        self.put_ok: bool | None = None
        self.put_check = ""
        self.accepted = False
        """The PUT accepted the harness's AUTH (its answer carried AUTH / it established)."""
        self.refusal: list[str] = []
        self.raw_auth: bytes = b""
        """The PUT's IKE_AUTH message as sent (its request or its response)."""
        self.init_hashes: list[int] | None = None
        self.payloads: list[str] = []
        self.sa: HarnessSa | None = None
        """The harness's end of the IKE SA (keys, octets), for further checks."""

    def describe(self) -> str:
        return (
            f"PUT ID {id_text(self.put_id)}; PUT AUTH method "
            f"{self.put_auth.method if self.put_auth else '-'} "
            f"({len(self.put_auth.data) if self.put_auth else 0} octets): {self.put_check}; "
            f"CERTs {len(self.put_certs)}; PUT accepted ours: {self.accepted}; "
            f"PUT's IKE_AUTH payloads: {' '.join(self.payloads)}"
        )


def exchange(
    ctx: CaseContext,
    sc: Scenario,
    auth: Auth,
    *,
    put_key: Any = None,
    hashes: Sequence[int] | None = None,
    certreq: bool = False,
    child: bool = True,
    extra: Any = None,
    keep: bool = False,
) -> Outcome:
    """One IKE SA between the PUT (in the case's role) and the harness authenticating with
    ``auth``; the PUT's AUTH is checked with the scenario's PSK or ``put_key``. ``extra``:
    called with the PUT after it is configured (peer-specific additions); ``keep``: keep the
    harness's end of the IKE SA in the outcome."""
    out = Outcome()
    psk = psk_of(sc) if sc.auth == "psk" else None
    if ctx.put_initiates:
        with put_initiates(ctx, sc, extra=extra) as (resp, _ini):
            _as_responder(ctx, resp, sc, auth, out, psk, put_key, hashes, certreq, child)
    else:
        with put_responds(ctx, sc, extra=extra) as ini:
            _as_initiator(ctx, ini, auth, out, psk, put_key, hashes, certreq, child)
    note(ctx, "outcome", out.describe())
    if not keep:
        out.sa = None
    return out


def _as_initiator(
    ctx: CaseContext,
    ini: Initiator,
    auth: Auth,
    out: Outcome,
    psk: bytes | None,
    put_key: Any,
    hashes: Sequence[int] | None,
    certreq: bool,
    child: bool,
) -> None:
    with ctx.step("IKE_SA_INIT"):
        r = ini.init(hashes=hashes)
    assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
    out.init_hashes = ini.peer_hashes
    out.sa = ini.sa
    with ctx.step("IKE_AUTH"):
        a = ini.auth(auth, certreq=certreq, child=child)
    assert a.answered, "no answer to IKE_AUTH"
    out.raw_auth = a.datagram.data
    out.payloads = a.names()
    out.put_id = a.get(v2p.IdR)
    out.put_auth = a.get(v2p.AuthPayload)
    out.put_certs = [p for p in a.payloads if type(p) is v2p.CertPayload]
    out.accepted = out.put_auth is not None
    out.refusal = [n for n in a.names() if n.startswith("N(")]
    if out.put_auth is not None:
        out.put_ok, out.put_check = ini.verify_put(a, psk=psk, public_key=put_key)
    if out.accepted and child:
        out.accepted = _has_established(_put_established(ctx))


def _as_responder(
    ctx: CaseContext,
    resp: Responder,
    sc: Scenario,
    auth: Auth,
    out: Outcome,
    psk: bytes | None,
    put_key: Any,
    hashes: Sequence[int] | None,
    certreq: bool,
    child: bool,
) -> None:
    rx = resp.request()
    assert rx is not None, "the PUT sent no IKE_SA_INIT"
    h = notify(rx.message().payloads, N.SIGNATURE_HASH_ALGORITHMS)
    out.init_hashes = hash_ids(h.data) if h else None
    with ctx.step("IKE_SA_INIT answered"):
        out.sa = resp.accept(rx, hashes=hashes, certreq=certreq)
    got = resp.auth_request()
    assert got is not None, "the PUT sent no IKE_AUTH"
    arx, req = got
    out.raw_auth = arx.data
    out.payloads = payload_names(req)
    out.put_id = first(req, v2p.IdI)
    out.put_auth = first(req, v2p.AuthPayload)
    out.put_certs = [p for p in req if type(p) is v2p.CertPayload]
    if out.put_auth is not None:
        out.put_ok, out.put_check = resp.verify_put(req, psk=psk, public_key=put_key)
    with ctx.step("IKE_AUTH answered"):
        resp.answer_auth(arx, req, auth, child=child)
    out.accepted = _has_established(_put_established(ctx, child=child), child=child)


def _assert_put_auth(out: Outcome) -> None:
    assert out.put_auth is not None, f"the PUT sent no AUTH ({' '.join(out.payloads)})"
    assert out.put_ok, f"the PUT's AUTH does not verify: {out.put_check}"


# --- IKEV2-AUTH-001 / -002: pre-shared keys ---


@case(
    "IKEV2-AUTH-001",
    suite=SUITE,
    rfc="7296 §2.15",
    level="MUST",
    roles="IR",
    title='PSK AUTH = prf(prf(PSK, "Key Pad for IKEv2"), SignedOctets), both ways',
    needs=(*WITH_CHILD, PSK),
)
def test_auth_001_psk(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    out = exchange(ctx, sc, Auth(psk=psk_of(sc)))
    _assert_put_auth(out)
    assert out.put_auth is not None and out.put_auth.method == AuthMethod.SHARED_KEY_MIC, (
        "the PUT's AUTH method is not Shared Key MIC (2)"
    )
    assert out.accepted, "the PUT did not accept the harness's PSK AUTH (no Child SA)"


@case(
    "IKEV2-AUTH-002",
    suite=SUITE,
    rfc="7296 §2.15",
    level="MUST",
    roles="IR",
    title="A 64-octet ASCII PSK is used as is (no NUL terminator)",
    needs=(*WITH_CHILD, PSK),
)
def test_auth_002_long_psk(ctx: CaseContext) -> None:
    alphabet = string.ascii_letters + string.digits
    psk = "".join(alphabet[(i * 37 + 11) % len(alphabet)] for i in range(64))
    sc = ctx.scenario(psk=psk)
    out = exchange(ctx, sc, Auth(psk=psk.encode()), keep=True)
    _assert_put_auth(out)
    assert out.accepted, "the PUT did not accept the harness's AUTH over the 64-octet PSK"
    # the same AUTH over the PSK with a NUL terminator must not verify (it is not what was used)
    assert out.sa is not None and out.put_id is not None and out.put_auth is not None
    nul, _ = check_auth(
        out.sa,
        out.put_id,
        out.put_auth,
        initiator_signs=ctx.put_initiates,
        psk=psk.encode() + b"\0",
    )
    note(ctx, "nul-variant", f"PUT's AUTH verifies with the PSK + NUL: {nul}")
    assert not nul, "the PUT's AUTH verifies with a NUL-terminated PSK"


# --- IKEV2-AUTH-003: wrong PSK ---


@case(
    "IKEV2-AUTH-003",
    suite=SUITE,
    rfc="7296 §2.21.2",
    level="SHOULD",
    roles="R",
    title="Wrong PSK: AUTHENTICATION_FAILED alone in the protected IKE_AUTH response",
    needs=(*NEEDS, PSK),
)
def test_auth_003_wrong_psk(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_responds(ctx, sc) as ini:
        r = ini.init()
        assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
        with ctx.step("IKE_AUTH with the wrong PSK"):
            a = ini.auth(Auth(psk=b"not-" + psk_of(sc)))
        _assert_auth_failed(ctx, ini, a)


def _assert_auth_failed(ctx: CaseContext, ini: Initiator, a: Reply, what: str = "") -> None:
    """The PUT refused the harness's authentication: AUTHENTICATION_FAILED (SHOULD), nothing
    else and no SA (MUST: an SA with a failed authentication is never used)."""
    assert ini.sa is not None
    spi_i = ini.sa.spi_i
    if a.get(v2p.AuthPayload) is not None:  # accepted: nothing to wait for
        sas = ctx.put.list_sas()
    else:
        sas = wait_put(ctx, lambda s: not any(x.established for x in _sas_for(s, spi_i)), 1.0)
    note(ctx, f"answer{what}", f"{a.describe()}\nPUT SAs: {sas}")
    if a.get(v2p.AuthPayload) is not None or any(x.established for x in _sas_for(sas, spi_i)):
        grade(ctx, Level.MUST, f"the PUT accepted a failed authentication{what}")
        ini.sa.established = a.get(v2p.AuthPayload) is not None
        return
    assert a.answered, f"no answer to the IKE_AUTH request{what}"
    assert a.notify(N.AUTHENTICATION_FAILED) is not None, (
        f"no N(AUTHENTICATION_FAILED){what}: {a.describe()}"
    )
    extra = [n for n in a.names() if n in ("IDr", "AUTH", "SA", "TSi", "TSr", "CERT")]
    assert not extra, f"the refusal also carries {extra}{what}"


# --- IKEV2-AUTH-004: corrupted AUTH from the responder ---


@case(
    "IKEV2-AUTH-004",
    suite=SUITE,
    rfc="7296 §2.21.2",
    level="MUST",
    roles="I",
    title="Initiator that cannot verify the responder's AUTH does not use the SA",
    needs=(*WITH_CHILD, PSK),
)
def test_auth_004_corrupted_responder_auth(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_initiates(ctx, sc) as (resp, _ini):
        rx = resp.request()
        assert rx is not None, "the PUT sent no IKE_SA_INIT"
        resp.accept(rx)
        got = resp.auth_request()
        assert got is not None, "the PUT sent no IKE_AUTH"
        arx, req = got
        with ctx.step("IKE_AUTH response with a corrupted AUTH (valid SK integrity)"):
            resp.answer_auth(arx, req, Auth(psk=psk_of(sc), corrupt=True))
        info = resp.request(exchange=INFORMATIONAL, mid=2, timeout=1.5)
        informational = "none"
        if info is not None:
            _m, payloads = resp.harness_sa.open(info.data)
            informational = " ".join(payload_names(payloads))
            _answer_informational(resp, info)
        sas = wait_put(ctx, lambda s: not any(x.established or x.children for x in s), 2.0)
        note(ctx, "after", f"INFORMATIONAL from the PUT: {informational}\nPUT SAs: {sas}")
        if any(x.established for x in sas):
            resp.harness_sa.established = True  # delete it from our side at the end
        assert not any(x.children for x in sas), "the PUT installed a Child SA"
        assert not any(x.established for x in sas), "the PUT considers the IKE SA established"
        if "N(AUTHENTICATION_FAILED)" not in informational:
            grade(ctx, Level.MAY, "no INFORMATIONAL with N(AUTHENTICATION_FAILED) (MAY)")


def _answer_informational(resp: Responder, rx: Any) -> None:
    sa = resp.harness_sa
    data = sa.seal(INFORMATIONAL, rx.message_id, [], response=True)
    resp.wire.send(data, port=rx.port, marker=rx.marker)


# --- IKEV2-AUTH-005: first message modified in flight ---


@case(
    "IKEV2-AUTH-005",
    suite=SUITE,
    rfc="7296 §2.15",
    level="MUST",
    roles="R",
    title="AUTH covers message 1 whole: a MITM-reordered SAi1 fails authentication",
    needs=(*NEEDS, PSK),
)
def test_auth_005_mitm_message_1(ctx: CaseContext) -> None:
    a_p = proposal("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
    b_p = proposal("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
    sc = ctx.scenario(ike_proposals=(a_p, b_p))

    def reorder(msg1: bytes) -> bytes:
        from reference_impl.ike.messages import decode_message

        m = decode_message(msg1)
        payloads = []
        for p in m.payloads:
            if type(p) is v2p.SaPayload:
                props = list(reversed(p.proposals))
                p = v2p.SaPayload(
                    [
                        v2p.Proposal(i, q.protocol_id, q.spi, q.transforms)
                        for i, q in enumerate(props, 1)
                    ]
                )
            payloads.append(p)
        return encode_message(Message(m.exchange_type, 0, m.spi_i, m.spi_r, True, False, payloads))

    with put_responds(ctx, sc) as ini:
        with ctx.step("IKE_SA_INIT whose SA payload is reordered on the way"):
            r = ini.init(tamper=reorder)
        assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
        with ctx.step("IKE_AUTH over the original message 1"):
            a = ini.auth(Auth(psk=psk_of(sc)))
        if a.notify(N.AUTHENTICATION_FAILED) is None and a.get(v2p.AuthPayload) is None:
            note(ctx, "answer", a.describe())
        assert a.get(v2p.AuthPayload) is None, (
            "the PUT accepted an AUTH computed over another message 1 (downgrade undetected)"
        )
        _assert_auth_failed(ctx, ini, a)


# --- certificates ---


def _cert_scenario(
    ctx: CaseContext, put: str = "put-rsa", tester: str = "tester-rsa", **kw: Any
) -> Scenario:
    pki = suite_pki(ctx)
    return pki.scenario(ctx.scenario(**kw), put=put, tester=tester)


def _put_key(ctx: CaseContext, cred: str) -> Any:
    return suite_pki(ctx).creds[cred].cert.public_key()


@case(
    "IKEV2-AUTH-006",
    suite=SUITE,
    rfc="7296 §3.8; 8247 §3.1",
    level="MUST",
    roles="IR",
    title="RSA Digital Signature (method 1) is accepted and the PUT's signature verifies",
    needs=(*WITH_CHILD, CERT_RSA),
)
def test_auth_006_rsa_method_1(ctx: CaseContext) -> None:
    sc = _cert_scenario(ctx)
    me = suite_pki(ctx).creds["tester-rsa"]
    out = exchange(
        ctx,
        sc,
        Auth.of(me, method=AuthMethod.RSA_DIGITAL_SIGNATURE),
        certreq=True,
        put_key=_put_key(ctx, "put-rsa"),
    )
    _assert_put_auth(out)
    assert out.accepted, "the PUT did not accept the harness's method-1 RSA signature"


@case(
    "IKEV2-AUTH-007",
    suite=SUITE,
    rfc="7296 §3.6",
    level="MUST",
    roles="IR",
    title="With several CERT payloads the first holds the key that verifies AUTH",
    needs=(*WITH_CHILD, CERT_RSA),
)
def test_auth_007_first_cert(ctx: CaseContext) -> None:
    pki = suite_pki(ctx)
    sc = _cert_scenario(ctx, put="put-chain")
    chain = pki.creds["put-chain"]

    def intermediate(put: Any) -> None:
        if put.kind == "strongswan":  # charon sends CA certificates it finds on the chain
            put.session.load_cert(
                {"type": "X509", "flag": "NONE", "data": pki.intermediate_path.read_text()}
            )

    out = exchange(
        ctx,
        sc,
        Auth.of(pki.creds["tester-rsa"]),
        certreq=True,
        hashes=HASHES_ALL,
        put_key=chain.cert.public_key(),
        extra=intermediate,
    )
    encodings = [c.encoding for c in out.put_certs]
    note(
        ctx,
        "certs",
        f"CERT payloads: {len(out.put_certs)}, encodings {encodings}; first is "
        f"the end entity: {bool(out.put_certs) and out.put_certs[0].data == cert_der(chain.cert)}",
    )
    assert out.put_certs, "the PUT sent no CERT payload"
    assert out.put_certs[0].encoding == 4, f"first CERT encoding {out.put_certs[0].encoding} (4)"
    assert out.put_certs[0].data == cert_der(chain.cert), (
        "the first CERT payload is not the PUT's end-entity certificate"
    )
    _assert_put_auth(out)
    if len(out.put_certs) < 2:
        grade(ctx, Level.MAY, "the PUT sent only its end-entity certificate (no intermediate)")


@case(
    "IKEV2-AUTH-008",
    suite=SUITE,
    rfc="7296 §2.21.2",
    level="SHOULD",
    roles="R",
    title="Self-signed or expired certificate: AUTHENTICATION_FAILED",
    needs=(*NEEDS, CERT_RSA),
)
def test_auth_008_untrusted_certs(ctx: CaseContext) -> None:
    pki = suite_pki(ctx)
    for cred, what in (
        ("tester-selfsigned", " (self-signed certificate)"),
        ("tester-expired", " (expired certificate)"),
    ):
        sc = _cert_scenario(ctx)
        with put_responds(ctx, sc) as ini, ctx.step(f"IKE_AUTH with a {what.strip(' ()')}"):
            r = ini.init(hashes=HASHES_ALL)
            assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
            a = ini.auth(Auth.of(pki.creds[cred]), certreq=True)
            _assert_auth_failed(ctx, ini, a, what)


@case(
    "IKEV2-AUTH-009",
    suite=SUITE,
    rfc="7427 §4",
    level="SHOULD",
    roles="IR",
    title="N(SIGNATURE_HASH_ALGORITHMS) in IKE_SA_INIT, listing SHA2-256 (2)",
    needs=(*NEEDS, CERT_RSA),
)
def test_auth_009_hash_algorithms(ctx: CaseContext) -> None:
    sc = _cert_scenario(ctx)
    if ctx.put_initiates:
        with put_initiates(ctx, sc) as (resp, _ini):
            rx = resp.request()
            assert rx is not None, "the PUT sent no IKE_SA_INIT"
            m = rx.message()
    else:
        with put_responds(ctx, sc) as ini:
            r = ini.init(hashes=HASHES_ALL)
            m = r.msg
    h = [n for n in m.notifies() if n.notify_type == N.SIGNATURE_HASH_ALGORITHMS]
    note(ctx, "ike-sa-init", f"{m.summary()}\nhash algorithms: {[hash_ids(n.data) for n in h]}")
    assert h, "no N(SIGNATURE_HASH_ALGORITHMS) in IKE_SA_INIT"
    assert len(h[0].data) % 2 == 0 and h[0].data, "hash list is not a list of 2-octet IDs"
    assert 2 in hash_ids(h[0].data), f"SHA2-256 (2) not listed: {hash_ids(h[0].data)}"


_VARIANTS = (
    ("a", "tester-rsa", "rsa", "sha256WithRSAEncryption"),
    ("b", "tester-rsa", "pss", "RSASSA-PSS with SHA-256"),
    ("c", "tester-ecdsa", "ecdsa", "ecdsa-with-SHA256 (P-256)"),
)


@case(
    "IKEV2-AUTH-010",
    suite=SUITE,
    rfc="7427 §3",
    level="MUST",
    roles="IR",
    title="Method 14 AUTH with sha256WithRSA, RSASSA-PSS and ecdsa-with-SHA256 accepted; the "
    "PUT's method-14 AUTH verifies",
    needs=(*WITH_CHILD, CERT_RSA, CERT_ECDSA),
)
def test_auth_010_digital_signature(ctx: CaseContext) -> None:
    pki = suite_pki(ctx)
    failures = []
    for label, cred, scheme, name in _VARIANTS:
        sc = _cert_scenario(ctx, tester=cred)
        with ctx.step(f"({label}) {name}"):
            out = exchange(
                ctx,
                sc,
                Auth.of(pki.creds[cred], method=14, scheme=scheme),
                certreq=True,
                hashes=HASHES_ALL,
                put_key=_put_key(ctx, "put-rsa"),
            )
        if not out.accepted:
            failures.append(f"({label}) {name} not accepted")
        if out.put_auth is None or out.put_auth.method != AuthMethod.DIGITAL_SIGNATURE:
            failures.append(
                f"({label}) the PUT's AUTH is method "
                f"{out.put_auth.method if out.put_auth else '-'}, not 14"
            )
        elif not out.put_ok:
            failures.append(f"({label}) the PUT's method-14 AUTH does not verify")
    assert not failures, "; ".join(failures)


@case(
    "IKEV2-AUTH-011",
    suite=SUITE,
    rfc="7427 §4",
    level="MUST",
    roles="IR",
    title="The signer uses a hash from the peer's list: only SHA2-384 announced",
    needs=(*NEEDS, CERT_RSA),
)
def test_auth_011_peer_hash(ctx: CaseContext) -> None:
    sc = _cert_scenario(ctx)
    me = suite_pki(ctx).creds["tester-rsa"]
    out = exchange(
        ctx,
        sc,
        Auth.of(me, method=14, hash="sha384"),
        certreq=True,
        hashes=(3,),
        put_key=_put_key(ctx, "put-rsa"),
        child=False,
    )
    if out.put_auth is None:
        note(
            ctx, "finding", "the PUT sent no AUTH: it failed cleanly instead of using another hash"
        )
        return
    alg = signature_algorithm(out.put_auth)
    note(ctx, "put-auth", f"method {out.put_auth.method}, algorithm {alg}")
    assert out.put_auth.method == AuthMethod.DIGITAL_SIGNATURE, (
        f"the PUT signed with AUTH method {out.put_auth.method} (SHA-1 based or classic) though "
        "the peer announced only SHA2-384"
    )
    assert alg is not None and alg[1] == "sha384", f"the PUT's AlgorithmIdentifier names {alg}"
    _assert_put_auth(out)


@case(
    "IKEV2-AUTH-012",
    suite=SUITE,
    rfc="4754 §3; 7296 §3.8",
    level="MUST",
    roles="IR",
    title="ECDSA P-256 with SHA-256 (method 9): 64-octet r|s, verifies both ways",
    needs=(*WITH_CHILD, CERT_ECDSA),
)
def test_auth_012_ecdsa_p256(ctx: CaseContext) -> None:
    sc = _cert_scenario(ctx, put="put-ecdsa", tester="tester-ecdsa")
    me = suite_pki(ctx).creds["tester-ecdsa"]
    out = exchange(
        ctx,
        sc,
        Auth.of(me, method=AuthMethod.ECDSA_SHA256_P256),
        certreq=True,
        put_key=_put_key(ctx, "put-ecdsa"),
    )
    assert out.put_auth is not None, "the PUT sent no AUTH"
    assert out.put_auth.method == AuthMethod.ECDSA_SHA256_P256, (
        f"the PUT's AUTH method is {out.put_auth.method} (9 expected: the harness announced no "
        "SIGNATURE_HASH_ALGORITHMS)"
    )
    assert len(out.put_auth.data) == 64, f"AUTH data of {len(out.put_auth.data)} octets (64)"
    _assert_put_auth(out)
    assert out.accepted, "the PUT did not accept the harness's method-9 AUTH"


# --- identities ---


@case(
    "IKEV2-AUTH-013",
    suite=SUITE,
    rfc="7296 §3.5",
    level="MUST",
    roles="R",
    title="IDs of type IPV4_ADDR, FQDN, RFC822_ADDR, KEY_ID and IPV6_ADDR are accepted",
    needs=(*NEEDS, PSK),
)
def test_auth_013_id_types(ctx: CaseContext) -> None:
    from harness.peers.registry import peer_class

    ids = [
        ("ID_IPV4_ADDR", None),
        ("ID_FQDN", "@tester.example"),
        ("ID_RFC822_ADDR", "tester@example.org"),
        ("ID_KEY_ID", "@#0a1b2c3d4e5f"),
    ]
    if peer_class(ctx.peer_name).capabilities().has(IPV6):
        ids.append(("ID_IPV6_ADDR", "2001:db8::7"))
    else:
        note(ctx, "ipv6", "ID_IPV6_ADDR left out: the PUT declares no IPv6 capability")
    failures, lines = [], []
    for kind, identity in ids:
        base = ctx.scenario()
        me = base.local("tester")
        if identity is not None:
            me = replace(me, identity=identity)
        sc = replace(base, endpoints=_swap(base, me))
        idi = id_payload(me.identity)
        with put_responds(ctx, sc) as ini, ctx.step(kind):
            r = ini.init()
            assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
            a = ini.auth(Auth(psk=psk_of(sc)), idi=idi, child=False)
            ok = a.get(v2p.AuthPayload) is not None
            lines.append(
                f"{kind} {me.identity!r} (type {IdType(idi.id_type).name}): "
                f"{'established' if ok else a.describe()}"
            )
            if not ok:
                failures.append(f"{kind}: {a.describe()}")
    note(ctx, "identities", "\n".join(lines))
    assert not failures, "; ".join(failures)


def _swap(sc: Scenario, tester: Any) -> tuple[Any, Any]:
    a, b = sc.endpoints
    return (tester, b) if a.node == "tester" else (a, tester)


@case(
    "IKEV2-AUTH-014",
    suite=SUITE,
    rfc="7296 §3.5",
    level="MUST NOT",
    roles="IR",
    title="ID_FQDN / ID_RFC822_ADDR carry no terminator (NUL, CR, LF)",
    needs=(*NEEDS, PSK),
)
def test_auth_014_no_terminator(ctx: CaseContext) -> None:
    problems, lines = [], []
    for identity, want_type, text in (
        ("@put.example", IdType.ID_FQDN, b"put.example"),
        ("put@example.org", IdType.ID_RFC822_ADDR, b"put@example.org"),
    ):
        base = ctx.scenario()
        put_ep = replace(base.local("put"), identity=identity)
        a, b = base.endpoints
        sc = replace(base, endpoints=(put_ep, b) if a.node == "put" else (a, put_ep))
        with ctx.step(identity):
            out = exchange(ctx, sc, Auth(psk=psk_of(sc)), child=False)
        p = out.put_id
        lines.append(f"{identity}: {id_text(p)} ({len(p.data) if p else 0} octets)")
        if p is None:
            problems.append(f"{identity}: the PUT sent no ID")
            continue
        if p.id_type != want_type:
            problems.append(f"{identity}: ID type {p.id_type} (want {int(want_type)})")
        if p.data and p.data[-1:] in (b"\x00", b"\r", b"\n"):
            problems.append(f"{identity}: ID data ends with {p.data[-1:]!r}")
        if p.data != text:
            problems.append(f"{identity}: ID data {p.data!r} is not the {len(text)}-octet string")
    note(ctx, "ids", "\n".join(lines))
    assert not problems, "; ".join(problems)


@case(
    "IKEV2-AUTH-015",
    suite=SUITE,
    rfc="7296 §2.21.2; 4301 §4.4.3",
    level="SHOULD",
    roles="R",
    title="An ID the certificate does not prove fails authentication",
    needs=(*NEEDS, CERT_RSA),
)
def test_auth_015_id_not_in_cert(ctx: CaseContext) -> None:
    pki = suite_pki(ctx)
    base = _cert_scenario(ctx, tester="tester-peer-example")
    me = replace(base.local("tester"), identity="@other.example")
    sc = replace(base, endpoints=_swap(base, me))
    with put_responds(ctx, sc) as ini:
        r = ini.init(hashes=HASHES_ALL)
        assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
        with ctx.step("IDi other.example with a certificate for peer.example"):
            a = ini.auth(
                Auth.of(pki.creds["tester-peer-example"]),
                idi=id_payload("@other.example"),
                certreq=True,
            )
        _assert_auth_failed(ctx, ini, a)


@case(
    "IKEV2-AUTH-016",
    suite=SUITE,
    rfc="7296 §2.4",
    level="MUST",
    roles="R",
    title="INITIAL_CONTACT in the first IKE_AUTH: older IKE SAs of that identity may go",
    needs=(*WITH_CHILD, PSK),
)
def test_auth_016_initial_contact(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    with put_responds(ctx, sc) as first_ini:
        with ctx.step("IKE SA #1"):
            r = first_ini.init()
            assert r.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r.describe()}"
            a = first_ini.auth(Auth(psk=psk_of(sc)))
            assert a.get(v2p.AuthPayload) is not None, f"IKE SA #1 failed: {a.describe()}"
        assert first_ini.sa is not None
        old = first_ini.sa.spi_i
        second = Initiator(ctx, sc)
        try:
            with ctx.step("IKE SA #2, same identity, N(INITIAL_CONTACT)"):
                r2 = second.init()
                assert r2.get(v2p.SaPayload) is not None, f"IKE_SA_INIT failed: {r2.describe()}"
                a2 = second.auth(Auth(psk=psk_of(sc)), extra=[v2p.NotifyPayload(N.INITIAL_CONTACT)])
            assert second.sa is not None
            new = second.sa.spi_i
            sas = wait_put(ctx, lambda s: not _sas_for(s, old), 2.0)
            note(
                ctx,
                "put-sas",
                f"#1 SPIi {old.hex()}, #2 SPIi {new.hex()}\n{sas}\n" + second.transcript(),
            )
            assert a2.get(v2p.AuthPayload) is not None, (
                f"IKE SA #2 with INITIAL_CONTACT failed: {a2.describe()}"
            )
            assert any(x.established for x in _sas_for(sas, new)), "IKE SA #2 is not listed"
            if _sas_for(sas, old):
                first_ini.sa.established = True
                known(ctx, {"strongswan": "strongswan-unique-never"})
                grade(ctx, Level.MAY, "the PUT keeps IKE SA #1 after INITIAL_CONTACT (MAY)")
            else:
                first_ini.sa.established = False  # gone: no Delete to send
        finally:
            second.close()


@case(
    "IKEV2-AUTH-017",
    suite=SUITE,
    rfc="7296 §1.2, §2.2",
    level="MUST",
    roles="IR",
    title="IKE_AUTH has Message ID 1 and only the SK payload (46), last",
    needs=(*NEEDS, PSK),
)
def test_auth_017_ike_auth_framing(ctx: CaseContext) -> None:
    sc = ctx.scenario()
    out = exchange(ctx, sc, Auth(psk=psk_of(sc)), child=False)
    data = out.raw_auth
    assert data, "no IKE_AUTH message from the PUT"
    next_payload, mid, length = data[16], int.from_bytes(data[20:24]), len(data)
    sk_len = int.from_bytes(data[30:32]) if len(data) >= 32 else 0
    note(
        ctx, "ike-auth", f"header {data[:28].hex()} SK header {data[28:32].hex()} ({length} octets)"
    )
    assert data[18] == IKE_AUTH, f"exchange type {data[18]}"
    assert mid == 1, f"IKE_AUTH Message ID {mid} (1)"
    assert next_payload == 46, f"first payload type {next_payload} (SK = 46)"
    assert 28 + sk_len == length, (
        f"SK payload of {sk_len} octets does not end the {length}-octet message (not last)"
    )
