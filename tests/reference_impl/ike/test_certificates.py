"""IKE_AUTH with signatures and X.509 chains (RFC 7296 §2.15, §3.6-§3.8; RFC 4754; RFC 7427):
RSA (method 1), ECDSA (9-11), Digital Signature (14) with PKCS#1 v1.5, RSA-PSS and ECDSA;
ID types; CERTREQ; chain, validity and identity failures."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from reference_impl.events import (
    ChildSaEstablished,
    FailureReason,
    IkeSaEstablished,
    NegotiationFailed,
)
from reference_impl.ike.auth import parse_algorithm_identifier, verify_signature
from reference_impl.ike.certs import name_from_der, spki_sha1
from reference_impl.ike.config import AuthClass, Identity, LocalAuth, RemoteAuth
from reference_impl.ike.enums import AuthMethod, CertEncoding, IdType
from reference_impl.ike.messages import decode_message
from reference_impl.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    EncryptedPayload,
    decode_chain,
)

from .net import A_IP, B_IP, PSK, Net, Node, pair

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-interop test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool,
    san: list[x509.GeneralName] | None = None,
    days: int = 365,
    start: dt.datetime | None = None,
) -> x509.Certificate:
    start = start or NOW - dt.timedelta(days=1)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    root: x509.Certificate
    root_key: Any
    inter: x509.Certificate
    inter_key: Any
    other_root: x509.Certificate
    rsa_key: Any


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(_name("Root CA"), root_key, _name("Root CA"), root_key, ca=True, days=3650)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = _cert(_name("Intermediate CA"), inter_key, _name("Root CA"), root_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert(_name("Other CA"), other_key, _name("Other CA"), other_key, ca=True)
    return Pki(root, root_key, inter, inter_key, other, rsa.generate_private_key(65537, 2048))


def end_entity(
    pki: Pki, key: Any, ip: str | None = None, dns: str | None = None, **kw: Any
) -> x509.Certificate:
    san: list[x509.GeneralName] = []
    if ip:
        san.append(x509.IPAddress(ipaddress.ip_address(ip)))
    if dns:
        san.append(x509.DNSName(dns))
    cn = dns or ip or "host"
    return _cert(_name(cn), key, pki.inter.subject, pki.inter_key, ca=False, san=san, **kw)


def with_certs(
    node: Node,
    identity: Identity,
    key: Any,
    certs: tuple[x509.Certificate, ...],
    anchors: tuple[x509.Certificate, ...],
    peer: Identity | None,
    **local_kw: Any,
) -> None:
    svc = node.service
    cfg = svc.settings.connections[0]
    cfg = replace(
        cfg,
        local=LocalAuth(
            identity, AuthClass.PUBKEY, private_key=key, certificates=certs, **local_kw
        ),
        remote=RemoteAuth(peer, AuthClass.PUBKEY, trust_anchors=anchors),
    )
    svc.settings = replace(svc.settings, connections=(cfg,), cert_clock=lambda: NOW)


def run(net: Net, a: Node, b: Node) -> None:
    a.service.initiate("ab", net.now)
    net.run(3)


def auth_of(net: Net, b: Node) -> tuple[AuthPayload, list[CertPayload]]:
    """Decrypt (and reassemble) the IKE_AUTH request with the responder's keys."""
    (sa_b,) = b.service.ike_sas()
    prot = sa_b.protection
    assert prot is not None
    parts: dict[int, bytes] = {}
    first = 0
    for s in net.wire:
        msg = decode_message(s.d.data)
        sk = msg.encrypted
        if msg.exchange_type != 35 or msg.response or sk is None:
            continue
        plain = prot.open(s.d.data, sk)
        if isinstance(sk, EncryptedPayload):
            parts, first = {1: plain}, sk.inner_type
            break
        parts[sk.number] = plain
        if sk.number == 1:
            first = sk.inner_type
        if len(parts) == sk.total:
            break
    inner = decode_chain(b"".join(parts[i] for i in sorted(parts)), 0, first)
    auth = next(p for p in inner if isinstance(p, AuthPayload))
    return auth, [p for p in inner if isinstance(p, CertPayload)]


def ok(a: Node, b: Node) -> None:
    assert a.of(NegotiationFailed) == [] and b.of(NegotiationFailed) == [], (a.events, b.events)
    assert len(a.of(IkeSaEstablished)) == 1 and len(b.of(IkeSaEstablished)) == 1
    assert len(a.of(ChildSaEstablished)) == 1


def test_digital_signature_rsa_and_ecdsa_with_chains(pki: Pki) -> None:
    net, a, b = pair()
    b_key = ec.generate_private_key(ec.SECP256R1())
    a_cert = end_entity(pki, pki.rsa_key, ip=A_IP)
    b_cert = end_entity(pki, b_key, dns="b.example")
    with_certs(
        a,
        Identity.parse(A_IP),
        pki.rsa_key,
        (a_cert, pki.inter),
        (pki.root,),
        Identity.parse("@b.example"),
    )
    with_certs(
        b,
        Identity.parse("@b.example"),
        b_key,
        (b_cert, pki.inter),
        (pki.root,),
        Identity.parse(A_IP),
    )
    run(net, a, b)
    ok(a, b)
    auth, certs = auth_of(net, b)
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE
    scheme, h, _ = parse_algorithm_identifier(auth.data[1 : 1 + auth.data[0]])
    assert (scheme, h) == ("rsa", "sha256")
    assert [c.encoding for c in certs] == [CertEncoding.X509_CERT_SIGNATURE] * 2
    assert a.of(IkeSaEstablished)[0].peer_id == "b.example"


def test_certreq_names_the_trust_anchor(pki: Pki) -> None:
    net, a, b = pair()
    b_key = ec.generate_private_key(ec.SECP256R1())
    with_certs(
        a,
        Identity.parse(A_IP),
        pki.rsa_key,
        (end_entity(pki, pki.rsa_key, ip=A_IP), pki.inter),
        (pki.root,),
        None,
    )
    with_certs(
        b,
        Identity.parse(B_IP),
        b_key,
        (end_entity(pki, b_key, ip=B_IP), pki.inter),
        (pki.root,),
        None,
    )
    run(net, a, b)
    ok(a, b)
    init_resp = decode_message(net.wire[1].d.data)
    cr = init_resp.get(CertReqPayload)
    assert cr is not None and cr.authorities == [spki_sha1(pki.root.public_key())]


def test_rsa_pss(pki: Pki) -> None:
    net, a, b = pair()
    b_key = ec.generate_private_key(ec.SECP256R1())
    with_certs(
        a,
        Identity.parse(A_IP),
        pki.rsa_key,
        (end_entity(pki, pki.rsa_key, ip=A_IP), pki.inter),
        (pki.root,),
        None,
        rsa_pss=True,
    )
    with_certs(
        b,
        Identity.parse(B_IP),
        b_key,
        (end_entity(pki, b_key, ip=B_IP), pki.inter),
        (pki.root,),
        None,
    )
    run(net, a, b)
    ok(a, b)
    auth, _ = auth_of(net, b)
    scheme, h, salt = parse_algorithm_identifier(auth.data[1 : 1 + auth.data[0]])
    assert (scheme, h, salt) == ("pss", "sha256", 32)


@pytest.mark.parametrize(
    ("curve", "method"),
    [
        (ec.SECP256R1(), AuthMethod.ECDSA_SHA256_P256),
        (ec.SECP384R1(), AuthMethod.ECDSA_SHA384_P384),
        (ec.SECP521R1(), AuthMethod.ECDSA_SHA512_P521),
    ],
)
def test_classic_ecdsa_methods(pki: Pki, curve: ec.EllipticCurve, method: int) -> None:
    """Without SIGNATURE_HASH_ALGORITHMS from the peer, the RFC 4754 methods (9-11)."""
    net, a, b = pair(b_cfg={"signature_hashes": ()})
    a_key = ec.generate_private_key(curve)
    b_key = ec.generate_private_key(ec.SECP256R1())
    with_certs(
        a,
        Identity.parse(A_IP),
        a_key,
        (end_entity(pki, a_key, ip=A_IP), pki.inter),
        (pki.root,),
        None,
    )
    with_certs(
        b,
        Identity.parse(B_IP),
        b_key,
        (end_entity(pki, b_key, ip=B_IP), pki.inter),
        (pki.root,),
        None,
    )
    run(net, a, b)
    ok(a, b)
    auth, _ = auth_of(net, b)
    assert auth.method == method
    size = {256: 32, 384: 48, 521: 66}[curve.key_size]
    assert len(auth.data) == 2 * size  # r | s, RFC 4754 §3


def test_classic_rsa_method_1(pki: Pki) -> None:
    net, a, b = pair(b_cfg={"signature_hashes": ()})
    b_key = ec.generate_private_key(ec.SECP256R1())
    with_certs(
        a,
        Identity.parse(A_IP),
        pki.rsa_key,
        (end_entity(pki, pki.rsa_key, ip=A_IP), pki.inter),
        (pki.root,),
        None,
    )
    with_certs(
        b,
        Identity.parse(B_IP),
        b_key,
        (end_entity(pki, b_key, ip=B_IP), pki.inter),
        (pki.root,),
        None,
    )
    run(net, a, b)
    ok(a, b)
    auth, _ = auth_of(net, b)
    assert auth.method == AuthMethod.RSA_DIGITAL_SIGNATURE and len(auth.data) == 256


def test_dn_identity(pki: Pki) -> None:
    net, a, b = pair()
    b_key = ec.generate_private_key(ec.SECP256R1())
    a_cert = end_entity(pki, pki.rsa_key, ip=A_IP)
    b_cert = end_entity(pki, b_key, dns="b.example")
    dn = Identity(IdType.ID_DER_ASN1_DN, b_cert.subject.public_bytes())
    assert dn == Identity.parse("C=CH, O=ipsec-interop test, CN=b.example")
    name = name_from_der(dn.data)
    assert name == b_cert.subject
    with_certs(a, Identity.parse(A_IP), pki.rsa_key, (a_cert, pki.inter), (pki.root,), dn)
    with_certs(b, dn, b_key, (b_cert, pki.inter), (pki.root,), None)
    run(net, a, b)
    ok(a, b)
    assert "CN=b.example" in a.of(IkeSaEstablished)[0].peer_id


def test_psk_one_way_signature_other_way(pki: Pki) -> None:
    """Each end authenticates with its own method (strongSwan's local/remote auth)."""
    net, a, b = pair()
    b_key = ec.generate_private_key(ec.SECP256R1())
    b_cert = end_entity(pki, b_key, ip=B_IP)
    svc = a.service
    cfg = svc.settings.connections[0]
    cfg = replace(
        cfg, remote=RemoteAuth(Identity.parse(B_IP), AuthClass.PUBKEY, trust_anchors=(pki.root,))
    )
    svc.settings = replace(svc.settings, connections=(cfg,), cert_clock=lambda: NOW)
    svc = b.service
    cfgb = svc.settings.connections[0]
    cfgb = replace(
        cfgb,
        local=LocalAuth(
            Identity.parse(B_IP),
            AuthClass.PUBKEY,
            private_key=b_key,
            certificates=(b_cert, pki.inter),
        ),
        remote=replace(cfgb.remote, psk=PSK),
    )
    svc.settings = replace(svc.settings, connections=(cfgb,), cert_clock=lambda: NOW)
    run(net, a, b)
    ok(a, b)


def _fail_case(
    pki: Pki,
    *,
    anchors_a: tuple[x509.Certificate, ...],
    b_cert: x509.Certificate | None = None,
    b_id: str = B_IP,
    clock: dt.datetime = NOW,
) -> tuple[Node, Node]:
    net, a, b = pair()
    b_key = ec.generate_private_key(ec.SECP256R1())
    cert = b_cert or end_entity(pki, b_key, ip=B_IP)
    if b_cert is not None:
        b_key = _KEYS[id(b_cert)]
    with_certs(
        a,
        Identity.parse(A_IP),
        pki.rsa_key,
        (end_entity(pki, pki.rsa_key, ip=A_IP), pki.inter),
        anchors_a,
        None,
    )
    with_certs(b, Identity.parse(b_id), b_key, (cert, pki.inter), (pki.root,), None)
    a.service.settings = replace(a.service.settings, cert_clock=lambda: clock)
    run(net, a, b)
    return a, b


_KEYS: dict[int, Any] = {}


def test_untrusted_chain_fails(pki: Pki) -> None:
    a, b = _fail_case(pki, anchors_a=(pki.other_root,))
    fail = a.of(NegotiationFailed)
    assert [f.reason for f in fail] == [FailureReason.AUTHENTICATION_FAILED]
    assert "no trusted issuer" in fail[0].detail
    assert a.of(ChildSaEstablished) == []
    # the responder hears about it in an INFORMATIONAL and drops the IKE SA
    assert [f.reason for f in b.of(NegotiationFailed)] == [FailureReason.AUTHENTICATION_FAILED]
    assert b.service.ike_sas() == []


def test_expired_certificate_fails(pki: Pki) -> None:
    a, _ = _fail_case(pki, anchors_a=(pki.root,), clock=NOW + dt.timedelta(days=400))
    fail = a.of(NegotiationFailed)
    assert fail and "not valid at" in fail[0].detail


def test_identity_not_in_certificate_fails(pki: Pki) -> None:
    a, _ = _fail_case(pki, anchors_a=(pki.root,), b_id="@not-in-cert.example")
    fail = a.of(NegotiationFailed)
    assert fail and fail[0].detail == "peer identity is not in its certificate"


def test_signature_helpers_reject_wrong_keys(pki: Pki) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    sig = k.sign(b"octets", ec.ECDSA(hashes.SHA256()))
    from reference_impl.ike.auth import algorithm_identifier

    alg = algorithm_identifier("ecdsa", "sha256")
    data = bytes((len(alg),)) + alg + sig
    assert verify_signature(k.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets")
    assert not verify_signature(k.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"other")
    assert not verify_signature(
        pki.rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets"
    )
    assert not verify_signature(
        k.public_key(), AuthMethod.DIGITAL_SIGNATURE, b"\x05junk", b"octets"
    )
    # RFC 7427 Appendix A.3.1: ecdsa-with-SHA256 AlgorithmIdentifier octets
    assert alg == bytes.fromhex("300a06082a8648ce3d040302")
    # RFC 7427 Appendix A.1.2: sha256WithRSAEncryption
    assert algorithm_identifier("rsa", "sha256") == bytes.fromhex("300d06092a864886f70d01010b0500")
