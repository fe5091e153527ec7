"""Phase-1 authentication helpers: constant-time comparison, certificates and IKEv1 RSA
signatures (RFC 2409 §5.1).

IKEv1 signs HASH_I/HASH_R with PKCS#1 v1.5 block type 1 padding and **no** DigestInfo
(strongSwan's ``SIGN_RSA_EMSA_PKCS1_NULL``). ``cryptography`` verifies such signatures
(``recover_data_from_signature`` with no hash) but cannot make them, so signing applies the
RSA private operation to the padded block itself. TODO(crypto registry): move
``rsa_sign``/``rsa_verify`` into ``reference_impl.crypto`` when it grows signatures.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.isakmp.constants import IdType, NotifyType
from reference_impl.isakmp.identity import Identity


def equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _load_cert(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise RemoteProtocolError(
            f"bad certificate: {e}", notify=NotifyType.INVALID_CERTIFICATE
        ) from None


def cert_der(data: bytes) -> bytes:
    """Our certificate as DER (configuration may hold PEM)."""
    try:
        return _load_cert(data).public_bytes(serialization.Encoding.DER)
    except RemoteProtocolError as e:
        raise LocalProtocolError(str(e)) from None


def _private_key(data: bytes) -> rsa.RSAPrivateKey:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, None)
        else:
            key = serialization.load_der_private_key(data, None)
    except ValueError as e:
        raise LocalProtocolError(f"bad private key: {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise LocalProtocolError("only RSA keys are supported for IKEv1 signatures")
    return key


def rsa_sign(private_key: bytes, digest: bytes) -> bytes:
    """EMSA-PKCS1-v1_5 type 1 without DigestInfo (RFC 2409 §5.1, RFC 8017 §9.2 steps 3-5),
    then RSASP1 (RFC 8017 §5.2.1)."""
    key = _private_key(private_key)
    nums = key.private_numbers()
    n = nums.public_numbers.n
    k = (n.bit_length() + 7) // 8
    if len(digest) > k - 11:
        raise LocalProtocolError("hash too long for the RSA modulus")
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(digest)) + b"\x00" + digest
    m = int.from_bytes(em, "big")
    s = pow(m, nums.d, n)
    return s.to_bytes(k, "big")


def rsa_verify(cert: bytes, digest: bytes, signature: bytes) -> bool:
    pub = _load_cert(cert).public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise RemoteProtocolError("peer key is not RSA", notify=NotifyType.INVALID_CERTIFICATE)
    try:
        recovered = pub.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return False
    return equal(recovered, digest)


def choose_peer_certificate(auth: object, received: list[bytes]) -> bytes:
    """The peer's certificate: pinned, or received and issued by a trusted CA."""
    from reference_impl.isakmp.settings import RsaAuth

    assert isinstance(auth, RsaAuth)
    if auth.peer_certificate is not None:
        pinned = cert_der(auth.peer_certificate)
        if received and received[0] != pinned:
            raise RemoteProtocolError(
                "peer sent another certificate than the pinned one",
                notify=NotifyType.INVALID_CERTIFICATE,
            )
        return pinned
    if not received:
        raise RemoteProtocolError("no peer certificate", notify=NotifyType.CERTIFICATE_UNAVAILABLE)
    cert = _load_cert(received[0])
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise RemoteProtocolError("peer certificate expired", notify=NotifyType.INVALID_CERTIFICATE)
    for ca_data in auth.trusted:
        ca = _load_cert(ca_data)
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return cert.public_bytes(serialization.Encoding.DER)
    raise RemoteProtocolError(
        "peer certificate not trusted", notify=NotifyType.INVALID_CERT_AUTHORITY
    )


def check_identity(cert: bytes, ident: Identity) -> None:
    """The phase-1 ID must name the certificate: its subject DN, or a subjectAltName."""
    c = _load_cert(cert)
    if ident.id_type == IdType.ID_DER_ASN1_DN:
        if ident.data == c.subject.public_bytes():
            return
    else:
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            text = str(ident)
            values: list[str] = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
            values += san.get_values_for_type(x509.DNSName)
            values += san.get_values_for_type(x509.RFC822Name)
            if text in values:
                return
    raise RemoteProtocolError(
        f"identity {ident} does not match the certificate", notify=NotifyType.INVALID_ID_INFORMATION
    )
