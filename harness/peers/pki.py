"""A throw-away PKI for certificate scenarios: one CA and an end-entity certificate per identity.

RSA (2048-bit) or ECDSA (P-256) keys; each end-entity certificate carries its identity as CN
and as subjectAltName (an IP address or a DNS name), so IKE IDs of either type match it
(RFC 4945 §3.1). Keys are written as unencrypted PKCS#8 PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from harness.peers.base import Scenario

KeyKind = Literal["rsa", "ecdsa"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _key(kind: KeyKind) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _alt_name(identity: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity.lstrip("@"))


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    certs: dict[str, tuple[Path, Path]]
    """identity -> (certificate PEM, private key PEM)."""

    def apply(self, scenario: Scenario) -> Scenario:
        """The scenario with ``pubkey`` authentication, each endpoint's cert/key and the CA."""
        endpoints = tuple(
            replace(e, cert=self.certs[e.identity][0], key=self.certs[e.identity][1])
            for e in scenario.endpoints
        )
        return replace(
            scenario,
            endpoints=(endpoints[0], endpoints[1]),
            auth="pubkey",
            ca_cert=self.ca_cert,
        )


def make_pki(directory: Path, identities: list[str], kind: KeyKind = "ecdsa") -> Pki:
    """Write a CA and one certificate per identity under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = _key(kind)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ipsec-interop test CA {kind}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs: dict[str, tuple[Path, Path]] = {}
    for i, identity in enumerate(identities):
        key = _key(kind)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.lstrip("@"))])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([_alt_name(identity)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"ee{i}.pem", directory / f"ee{i}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        certs[identity] = (cert_path, key_path)
    return Pki(ca_path, certs)
