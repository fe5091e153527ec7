"""The AUTH payload: building and checking it (RFC 7296 §2.15, §3.8; RFC 4754; RFC 7427).

Pre-shared keys use the registry's PRF. Signatures (RSA PKCS#1 v1.5, RSA-PSS, ECDSA) use the
private and public key objects of ``cryptography`` that the settings carry; the registry
covers symmetric crypto and key exchange only, so the signature schemes live here, next to
the AlgorithmIdentifier encodings of RFC 7427 that select them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from reference_impl.crypto import Prf, PrfAlgorithm, ikev2_signed_octets
from reference_impl.errors import LocalProtocolError
from reference_impl.ike.certs import (
    CertificateError,
    der,
    der_oid,
    der_tlv,
    identity_matches_certificate,
    load_certificate,
    oid_text,
    verify_chain,
)
from reference_impl.ike.config import AuthClass, LocalAuth, RemoteAuth
from reference_impl.ike.enums import AuthMethod, CertEncoding, HashAlgorithm
from reference_impl.ike.payloads import AuthPayload, CertPayload, IdPayload

KEY_PAD_IKEV2 = b"Key Pad for IKEv2"

_HASH_OID = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_OID_HASH = {v: k for k, v in _HASH_OID.items()}
_RSA_OID = {
    "sha1": "1.2.840.113549.1.1.5",
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_OID = {
    "sha1": "1.2.840.10045.4.1",
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"
_SIG_OIDS = {v: ("rsa", k) for k, v in _RSA_OID.items()} | {
    v: ("ecdsa", k) for k, v in _ECDSA_OID.items()
}
_HASH_ALG_NAMES = {
    HashAlgorithm.SHA1: "sha1",
    HashAlgorithm.SHA2_256: "sha256",
    HashAlgorithm.SHA2_384: "sha384",
    HashAlgorithm.SHA2_512: "sha512",
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_CLASSIC_ECDSA = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", "sha256", 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", "sha384", 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", "sha512", 66),
}
_CURVE_METHOD = {v[0]: k for k, v in _CLASSIC_ECDSA.items()}


def _null_alg(oid: str) -> bytes:
    return der(0x30, der_oid(oid) + b"\x05\x00")


def algorithm_identifier(scheme: str, hash_name: str) -> bytes:
    """DER AlgorithmIdentifier of RFC 7427 Appendix A for ``scheme`` rsa/pss/ecdsa."""
    if scheme == "rsa":
        return _null_alg(_RSA_OID[hash_name])
    if scheme == "ecdsa":
        return der(0x30, der_oid(_ECDSA_OID[hash_name]))
    h = _null_alg(_HASH_OID[hash_name])
    salt = _HASHES[hash_name]().digest_size
    params = der(
        0x30,
        der(0xA0, h)
        + der(0xA1, der(0x30, der_oid(_MGF1_OID) + h))
        + der(0xA2, der(0x02, bytes((salt,)))),
    )
    return der(0x30, der_oid(_PSS_OID) + params)


def parse_algorithm_identifier(data: bytes) -> tuple[str, str, int | None]:
    """(scheme, hash name, PSS salt length) of a DER AlgorithmIdentifier; ValueError if we do
    not support it."""
    tag, s, e = der_tlv(data, 0)
    if tag != 0x30 or e != len(data):
        raise ValueError("AlgorithmIdentifier is not one DER SEQUENCE")
    otag, os_, oe = der_tlv(data, s)
    if otag != 0x06:
        raise ValueError("AlgorithmIdentifier without an OID")
    oid = oid_text(data[os_:oe])
    if oid in _SIG_OIDS:
        scheme, h = _SIG_OIDS[oid]
        return scheme, h, None
    if oid != _PSS_OID:
        raise ValueError(f"unsupported signature algorithm {oid}")
    hash_name, salt = "sha1", 20
    if oe < e:
        _ptag, ps, pe = der_tlv(data, oe)
        while ps < pe:
            ftag, fs, fe = der_tlv(data, ps)
            if ftag == 0xA0:
                _, hs, _he = der_tlv(data, fs)
                _, ho, hoe = der_tlv(data, hs)
                hash_name = _OID_HASH.get(oid_text(data[ho:hoe]), "")
            elif ftag == 0xA2:
                _, is_, ie = der_tlv(data, fs)
                salt = int.from_bytes(data[is_:ie], "big")
            ps = fe
    if hash_name not in _HASHES:
        raise ValueError("unsupported RSA-PSS hash")
    return "pss", hash_name, salt


# --- PSK --------------------------------------------------------------------------------------

_PSK_CACHE: dict[tuple[int, bytes], Prf] = {}


def psk_auth(prf_alg: PrfAlgorithm, psk: bytes, octets: bytes) -> bytes:
    """prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15).

    The inner value depends only on the PRF and the secret, so its prepared PRF is kept.
    """
    key = (prf_alg.id, psk)
    outer = _PSK_CACHE.get(key)
    if outer is None:
        if len(_PSK_CACHE) > 256:
            _PSK_CACHE.clear()
        outer = _PSK_CACHE[key] = prf_alg.prepare(prf_alg.prepare(psk)(KEY_PAD_IKEV2))
    return outer(octets)


def signed_octets(
    prf_alg: PrfAlgorithm, message: bytes, peer_nonce: bytes, sk_p: bytes, id_payload: IdPayload
) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 §2.15)."""
    return ikev2_signed_octets(prf_alg, message, peer_nonce, sk_p, id_payload.body())


# --- signatures -------------------------------------------------------------------------------


def _raw_ecdsa(sig_der: bytes, size: int) -> bytes:
    r, s = utils.decode_dss_signature(sig_der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _pick_hash(peer_hashes: tuple[int, ...], ours: tuple[int, ...]) -> str:
    for h in ours:
        if h in peer_hashes and h in _HASH_ALG_NAMES:
            return _HASH_ALG_NAMES[HashAlgorithm(h)]
    return "sha256"


def sign(
    local: LocalAuth,
    octets: bytes,
    peer_hashes: tuple[int, ...] | None,
    our_hashes: tuple[int, ...],
) -> AuthPayload:
    """A signature AUTH payload with ``local.private_key``.

    ``peer_hashes`` is the peer's SIGNATURE_HASH_ALGORITHMS (``None`` if it sent none): then
    RFC 7427 method 14 is used unless ``local.method`` forces a classic one.
    """
    key = local.private_key
    if key is None:
        raise LocalProtocolError("signature authentication without a private key")
    method = local.method
    if method is None:
        if peer_hashes is not None:
            method = AuthMethod.DIGITAL_SIGNATURE
        elif isinstance(key, rsa.RSAPrivateKey):
            method = AuthMethod.RSA_DIGITAL_SIGNATURE
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            method = _CURVE_METHOD.get(key.curve.name, AuthMethod.DIGITAL_SIGNATURE)
        else:
            method = AuthMethod.DIGITAL_SIGNATURE
    if method == AuthMethod.RSA_DIGITAL_SIGNATURE:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise LocalProtocolError("AUTH method 1 needs an RSA key")
        return AuthPayload(method, key.sign(octets, padding.PKCS1v15(), hashes.SHA1()))
    if method in _CLASSIC_ECDSA:
        curve, h, size = _CLASSIC_ECDSA[AuthMethod(method)]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != curve:
            raise LocalProtocolError(f"AUTH method {method} needs an ECDSA {curve} key")
        sig = key.sign(octets, ec.ECDSA(_HASHES[h]()))
        return AuthPayload(method, _raw_ecdsa(sig, size))
    if method != AuthMethod.DIGITAL_SIGNATURE:
        raise LocalProtocolError(f"cannot sign with AUTH method {method}")
    h = _pick_hash(peer_hashes or (), our_hashes)
    if isinstance(key, rsa.RSAPrivateKey):
        if local.rsa_pss:
            pad: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(_HASHES[h]()), salt_length=_HASHES[h]().digest_size
            )
            alg = algorithm_identifier("pss", h)
        else:
            pad = padding.PKCS1v15()
            alg = algorithm_identifier("rsa", h)
        sig = key.sign(octets, pad, _HASHES[h]())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        alg = algorithm_identifier("ecdsa", h)
        sig = key.sign(octets, ec.ECDSA(_HASHES[h]()))
    else:
        raise LocalProtocolError(f"unsupported private key type {type(key).__name__}")
    return AuthPayload(method, bytes((len(alg),)) + alg + sig)


def verify_signature(public_key: Any, method: int, data: bytes, octets: bytes) -> bool:
    """Check a signature AUTH value of ``method`` over ``octets`` with ``public_key``."""
    try:
        if method == AuthMethod.RSA_DIGITAL_SIGNATURE:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
            return True
        if method in _CLASSIC_ECDSA:
            curve, h, size = _CLASSIC_ECDSA[AuthMethod(method)]
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            if public_key.curve.name != curve or len(data) != 2 * size:
                return False
            sig = utils.encode_dss_signature(
                int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big")
            )
            public_key.verify(sig, octets, ec.ECDSA(_HASHES[h]()))
            return True
        if method != AuthMethod.DIGITAL_SIGNATURE or not data:
            return False
        alg_len = data[0]
        scheme, h, salt = parse_algorithm_identifier(data[1 : 1 + alg_len])
        if h == "sha1":  # RFC 8247 §4.2: SHA-1 MUST NOT be used for Digital Signature (14)
            return False
        sig = data[1 + alg_len :]
        if scheme == "ecdsa":
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            public_key.verify(sig, octets, ec.ECDSA(_HASHES[h]()))
            return True
        if not isinstance(public_key, rsa.RSAPublicKey):
            return False
        if scheme == "pss":
            pad: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(_HASHES[h]()), salt_length=salt or 0
            )
        else:
            pad = padding.PKCS1v15()
        public_key.verify(sig, octets, pad, _HASHES[h]())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    reason: str = ""


def verify_auth(
    remote: RemoteAuth,
    local: LocalAuth,
    auth: AuthPayload,
    octets: bytes,
    prf_alg: PrfAlgorithm,
    peer_id: IdPayload,
    certs: list[CertPayload],
    clock: Callable[[], datetime],
) -> AuthResult:
    """Check the peer's AUTH against what ``remote`` requires (RFC 7296 §2.15)."""
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        if remote.auth == AuthClass.PUBKEY:
            return AuthResult(False, "peer used a PSK where a signature is required")
        psk = remote.psk if remote.psk is not None else local.psk
        if psk is None:
            return AuthResult(False, "no pre-shared key for the peer")
        if psk_auth(prf_alg, psk, octets) != auth.data:
            return AuthResult(False, "pre-shared key AUTH value does not verify")
        return AuthResult(True)
    if remote.auth == AuthClass.PSK:
        return AuthResult(False, f"peer used AUTH method {auth.method} where a PSK is required")
    keys: list[Any] = []
    x509_certs = [c for c in certs if c.encoding == CertEncoding.X509_CERT_SIGNATURE]
    if x509_certs:
        try:
            chain = [load_certificate(c.data) for c in x509_certs]
        except ValueError:
            return AuthResult(False, "undecodable certificate")
        ee = chain[0]
        if not identity_matches_certificate(peer_id.id_type, peer_id.data, ee):
            return AuthResult(False, "peer identity is not in its certificate")
        try:
            verify_chain(ee, chain[1:], remote.trust_anchors, clock())
        except CertificateError as exc:
            return AuthResult(False, str(exc))
        keys.append(ee.public_key())
    else:
        keys.extend(remote.public_keys)
        for anchor in remote.trust_anchors:  # a trusted self-signed end entity
            if identity_matches_certificate(peer_id.id_type, peer_id.data, anchor):
                keys.append(anchor.public_key())
    if not keys:
        return AuthResult(False, "no certificate or public key for the peer")
    for key in keys:
        if verify_signature(key, auth.method, auth.data, octets):
            return AuthResult(True)
    return AuthResult(False, f"signature (AUTH method {auth.method}) does not verify")
