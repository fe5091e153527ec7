"""X.509 for IKE_AUTH: chains to trust anchors, ID-to-certificate matching, CERTREQ
authorities, and the small DER pieces RFC 7427 needs (RFC 7296 §3.6, §3.7, §2.15).

Certificates are ``cryptography.x509.Certificate`` objects. Chain building is done here rather
than with ``cryptography``'s web-PKI verifier, whose profile (mandatory SAN, server EKU) IKE
certificates do not follow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from reference_impl.crypto import PrfId, prf
from reference_impl.ike.enums import IdType

MAX_CHAIN = 8


class CertificateError(Exception):
    """A certificate or chain that does not verify; the message says why."""


# --- minimal DER ------------------------------------------------------------------------------


def der_tlv(data: bytes, off: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at ``off``; ValueError if malformed."""
    if off + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[off]
    length = data[off + 1]
    off += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or off + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[off : off + n], "big")
        off += n
    if off + length > len(data):
        raise ValueError("DER element overruns its container")
    return tag, off, off + length


def der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + value


def der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, bytes(body))


def oid_text(body: bytes) -> str:
    if not body:
        raise ValueError("empty OID")
    parts = [min(body[0] // 40, 2)]
    parts.append(body[0] - 40 * parts[0])
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def name_from_der(data: bytes) -> x509.Name | None:
    """Parse a DER Name (SEQUENCE OF SET OF AttributeTypeAndValue); ``None`` if it is not."""
    try:
        tag, s, e = der_tlv(data, 0)
        if tag != 0x30 or e != len(data):
            return None
        rdns = []
        while s < e:
            tag, rs, re_ = der_tlv(data, s)
            if tag != 0x31:
                return None
            attrs = []
            while rs < re_:
                tag, as_, ae = der_tlv(data, rs)
                if tag != 0x30:
                    return None
                otag, os_, oe = der_tlv(data, as_)
                vtag, vs, ve = der_tlv(data, oe)
                if otag != 0x06:
                    return None
                oid = x509.ObjectIdentifier(oid_text(data[os_:oe]))
                value = data[vs:ve].decode("utf-16-be" if vtag == 0x1E else "utf-8")
                attrs.append(x509.NameAttribute(oid, value))
                rs = ae
            rdns.append(x509.RelativeDistinguishedName(attrs))
            s = re_
        return x509.Name(rdns)
    except (ValueError, UnicodeDecodeError):
        return None


# --- certificates -----------------------------------------------------------------------------


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from DER or PEM."""
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki_sha1(public_key: Any) -> bytes:
    """SHA-1 of a DER SubjectPublicKeyInfo: the CA identifier of a CERTREQ (RFC 7296 §3.7)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return prf(PrfId.PRF_HMAC_SHA1).hash(spki)


def certreq_authorities(anchors: tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(spki_sha1(a.public_key()) for a in anchors)


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    end_entity: x509.Certificate
    anchor: x509.Certificate


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1  # old self-signed roots carry no extensions
    return bool(getattr(bc, "ca", False))


def _check_time(cert: x509.Certificate, at: datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate {cert.subject.rfc4514_string()} is not valid at {at.isoformat()}"
        )


def verify_chain(
    end_entity: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchors: tuple[x509.Certificate, ...],
    at: datetime,
) -> VerifiedChain:
    """Build and verify a chain from ``end_entity`` to one of ``anchors``: each signature,
    each validity period at ``at``, CA basic constraints on every issuer."""
    _check_time(end_entity, at)
    anchor_der = {cert_der(a) for a in anchors}
    if cert_der(end_entity) in anchor_der:
        return VerifiedChain(end_entity, end_entity)
    cert = end_entity
    pool = list(intermediates)
    for _ in range(MAX_CHAIN):
        for anchor in anchors:
            if anchor.subject == cert.issuer and _issued_by(cert, anchor):
                _check_time(anchor, at)
                return VerifiedChain(end_entity, anchor)
        for cand in pool:
            if cand.subject == cert.issuer and _is_ca(cand) and _issued_by(cert, cand):
                _check_time(cand, at)
                pool.remove(cand)
                cert = cand
                break
        else:
            raise CertificateError(
                f"no trusted issuer for {cert.subject.rfc4514_string()}"
                f" (issuer {cert.issuer.rfc4514_string()})"
            )
    raise CertificateError("certificate chain too long")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):
        return False
    return True


def identity_matches_certificate(id_type: int, data: bytes, cert: x509.Certificate) -> bool:
    """Whether the certificate proves the identity (RFC 7296 §3.5, RFC 4945 §3.1).

    IP and name identities must appear in subjectAltName; a DN must equal the subject; a
    KEY_ID must equal the subject key identifier.
    """
    if id_type == IdType.ID_DER_ASN1_DN:
        return data == cert.subject.public_bytes()
    try:
        ext = cert.extensions
    except ValueError:
        return False
    if id_type == IdType.ID_KEY_ID:
        try:
            ski = ext.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
        except x509.ExtensionNotFound:
            return False
        return data == getattr(ski, "digest", None)
    try:
        san = ext.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return False
    assert isinstance(san, x509.SubjectAlternativeName)
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        try:
            ip = ipaddress.ip_address(data)
        except ValueError:
            return False
        return ip in san.get_values_for_type(x509.IPAddress)
    text = data.decode("utf-8", "replace").lower()
    if id_type == IdType.ID_FQDN:
        return text in (n.lower() for n in san.get_values_for_type(x509.DNSName))
    if id_type == IdType.ID_RFC822_ADDR:
        return text in (n.lower() for n in san.get_values_for_type(x509.RFC822Name))
    return False
