"""Settings of the IKEv2 service as plain typed objects (built by the policy agent, the node
configuration or a test).

A :class:`PeerConfig` is one "connection" in strongSwan's sense: addresses, IKE proposals,
the local and remote authentication, the Child SAs (:class:`ChildConfig`), timers. The
:class:`ServiceSettings` gather the connections with the service-wide knobs (ports,
half-open limits, cookies). Proposals accept strongSwan's proposal syntax
(``"aes128gcm16-prfsha256-x25519"``, ``"aes256-sha256-modp2048"``) so that a configuration
can mirror a strongSwan peer's ``swanctl.conf``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from reference_impl.crypto import DhId, EncrId, EsnId, IntegId, PrfId, TransformType
from reference_impl.errors import LocalProtocolError
from reference_impl.ike.enums import AuthMethod, HashAlgorithm, IdType
from reference_impl.ike.payloads import Proposal, Transform
from reference_impl.retransmit import REFERENCE_SCHEDULE, RetransmitSchedule
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector

# --- proposals -------------------------------------------------------------------------------

_AES_AEAD = {
    "gcm": {8: EncrId.ENCR_AES_GCM_8, 12: EncrId.ENCR_AES_GCM_12, 16: EncrId.ENCR_AES_GCM_16},
    "ccm": {8: EncrId.ENCR_AES_CCM_8, 12: EncrId.ENCR_AES_CCM_12, 16: EncrId.ENCR_AES_CCM_16},
}
_ICV_ALIASES = {64: 8, 96: 12, 128: 16}

_INTEG = {
    "md5": IntegId.AUTH_HMAC_MD5_96,
    "sha1": IntegId.AUTH_HMAC_SHA1_96,
    "sha": IntegId.AUTH_HMAC_SHA1_96,
    "aesxcbc": IntegId.AUTH_AES_XCBC_96,
    "aescmac": IntegId.AUTH_AES_CMAC_96,
    "sha256": IntegId.AUTH_HMAC_SHA2_256_128,
    "sha2_256": IntegId.AUTH_HMAC_SHA2_256_128,
    "sha384": IntegId.AUTH_HMAC_SHA2_384_192,
    "sha2_384": IntegId.AUTH_HMAC_SHA2_384_192,
    "sha512": IntegId.AUTH_HMAC_SHA2_512_256,
    "sha2_512": IntegId.AUTH_HMAC_SHA2_512_256,
}
_PRF = {
    "prfmd5": PrfId.PRF_HMAC_MD5,
    "prfsha1": PrfId.PRF_HMAC_SHA1,
    "prfaesxcbc": PrfId.PRF_AES128_XCBC,
    "prfaescmac": PrfId.PRF_AES128_CMAC,
    "prfsha256": PrfId.PRF_HMAC_SHA2_256,
    "prfsha384": PrfId.PRF_HMAC_SHA2_384,
    "prfsha512": PrfId.PRF_HMAC_SHA2_512,
}
_INTEG_TO_PRF: dict[int, int] = {
    IntegId.AUTH_HMAC_MD5_96: PrfId.PRF_HMAC_MD5,
    IntegId.AUTH_HMAC_SHA1_96: PrfId.PRF_HMAC_SHA1,
    IntegId.AUTH_AES_XCBC_96: PrfId.PRF_AES128_XCBC,
    IntegId.AUTH_AES_CMAC_96: PrfId.PRF_AES128_CMAC,
    IntegId.AUTH_HMAC_SHA2_256_128: PrfId.PRF_HMAC_SHA2_256,
    IntegId.AUTH_HMAC_SHA2_384_192: PrfId.PRF_HMAC_SHA2_384,
    IntegId.AUTH_HMAC_SHA2_512_256: PrfId.PRF_HMAC_SHA2_512,
}
_DH = {
    "modp768": DhId.MODP_768,
    "modp1024": DhId.MODP_1024,
    "modp1536": DhId.MODP_1536,
    "modp2048": DhId.MODP_2048,
    "modp3072": DhId.MODP_3072,
    "modp4096": DhId.MODP_4096,
    "modp6144": DhId.MODP_6144,
    "modp8192": DhId.MODP_8192,
    "ecp256": DhId.ECP_256,
    "ecp384": DhId.ECP_384,
    "ecp521": DhId.ECP_521,
    "x25519": DhId.CURVE25519,
    "curve25519": DhId.CURVE25519,
    "x448": DhId.CURVE448,
    "curve448": DhId.CURVE448,
}
_AEAD_IDS = {
    EncrId.ENCR_AES_GCM_8,
    EncrId.ENCR_AES_GCM_12,
    EncrId.ENCR_AES_GCM_16,
    EncrId.ENCR_AES_CCM_8,
    EncrId.ENCR_AES_CCM_12,
    EncrId.ENCR_AES_CCM_16,
    EncrId.ENCR_CHACHA20_POLY1305,
    EncrId.ENCR_NULL_AUTH_AES_GMAC,
}


def is_aead(encr_id: int) -> bool:
    return encr_id in _AEAD_IDS


def _parse_encr(word: str) -> tuple[int, int | None] | None:
    if word == "chacha20poly1305":
        return EncrId.ENCR_CHACHA20_POLY1305, None
    if word == "3des":
        return EncrId.ENCR_3DES, None
    if word == "null":
        return EncrId.ENCR_NULL, None
    m = re.fullmatch(r"aes(128|192|256)?(?:(ctr)|(gcm|ccm)(\d+)?|(gmac))?", word)
    if not m:
        return None
    bits = int(m.group(1) or 128)
    if m.group(2):
        return EncrId.ENCR_AES_CTR, bits
    if m.group(3):
        icv = int(m.group(4) or 16)
        icv = _ICV_ALIASES.get(icv, icv)
        table = _AES_AEAD[m.group(3)]
        if icv not in table:
            return None
        return table[icv], bits
    if m.group(5):
        return EncrId.ENCR_NULL_AUTH_AES_GMAC, bits
    return EncrId.ENCR_AES_CBC, bits


@dataclass(frozen=True, slots=True)
class ProposalConfig:
    """One proposal we offer or accept (RFC 7296 §3.3): acceptable transforms per type,
    in order of preference. Empty INTEG with an AEAD, empty DH for a Child SA without PFS."""

    protocol: IpsecProtocol = IpsecProtocol.IKE
    encr: tuple[tuple[int, int | None], ...] = ()
    integ: tuple[int, ...] = ()
    prf: tuple[int, ...] = ()
    dh: tuple[int, ...] = ()
    esn: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str, protocol: IpsecProtocol = IpsecProtocol.IKE) -> ProposalConfig:
        """A proposal in strongSwan's syntax, e.g. ``aes256-sha256-modp2048`` (IKE) or
        ``aes128gcm16-modp2048-esn`` (ESP with PFS)."""
        encrs: list[tuple[int, int | None]] = []
        integs: list[int] = []
        prfs: list[int] = []
        dhs: list[int] = []
        esns: list[int] = []
        for word in text.lower().split("-"):
            e = _parse_encr(word)
            if e is not None:
                encrs.append(e)
            elif word in _INTEG:
                integs.append(_INTEG[word])
            elif word in _PRF:
                prfs.append(_PRF[word])
            elif word in _DH:
                dhs.append(_DH[word])
            elif word == "esn":
                esns.append(EsnId.ESN)
            elif word == "noesn":
                esns.append(EsnId.NO_ESN)
            else:
                raise LocalProtocolError(f"unknown algorithm {word!r} in proposal {text!r}")
        if protocol == IpsecProtocol.AH:
            if encrs or not integs:
                raise LocalProtocolError(f"AH proposal {text!r} takes integrity algorithms only")
        elif not encrs:
            raise LocalProtocolError(f"proposal {text!r} has no encryption algorithm")
        aead = [is_aead(e[0]) for e in encrs]
        if encrs and any(aead) and not all(aead):
            raise LocalProtocolError(f"proposal {text!r} mixes AEAD and non-AEAD ciphers")
        if encrs and all(aead) and integs:
            raise LocalProtocolError(f"AEAD proposal {text!r} must not name integrity algorithms")
        if not all(aead) and not integs and protocol != IpsecProtocol.AH:
            raise LocalProtocolError(f"proposal {text!r} needs an integrity algorithm")
        if protocol == IpsecProtocol.IKE:
            if esns:
                raise LocalProtocolError("ESN is not an IKE transform")
            if not prfs:
                prfs = [_INTEG_TO_PRF[i] for i in integs if i in _INTEG_TO_PRF]
                if not prfs:  # AEAD without an explicit PRF: strongSwan's defaults
                    prfs = [PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_HMAC_SHA2_384]
            if not dhs:
                raise LocalProtocolError(f"IKE proposal {text!r} needs a key exchange method")
        else:
            if prfs:
                raise LocalProtocolError("a PRF is not an ESP/AH transform")
            if not esns:
                esns = [EsnId.NO_ESN]
        return cls(protocol, tuple(encrs), tuple(integs), tuple(prfs), tuple(dhs), tuple(esns))

    def transforms(self, with_dh: bool = True) -> list[Transform]:
        """The transform substructures to send, in preference order (RFC 7296 §3.3.2)."""
        out = [Transform(TransformType.ENCR, e, k) for e, k in self.encr]
        out += [Transform(TransformType.PRF, p) for p in self.prf]
        out += [Transform(TransformType.INTEG, i) for i in self.integ]
        if with_dh:
            out += [Transform(TransformType.DH, d) for d in self.dh]
        out += [Transform(TransformType.ESN, e) for e in self.esn]
        return out

    def to_proposal(self, num: int, spi: bytes = b"", with_dh: bool = True) -> Proposal:
        key = (id(self), with_dh)
        hit = _ENCODED.get(key)
        if hit is None or hit[0] is not self:
            ts = self.transforms(with_dh)
            encoded = b"".join(t.encode(i == len(ts) - 1) for i, t in enumerate(ts))
            if len(_ENCODED) > 1024:
                _ENCODED.clear()
            hit = _ENCODED[key] = (self, tuple(ts), encoded)
        return Proposal(num, self.protocol, spi, list(hit[1]), hit[2])


_ENCODED: dict[tuple[int, bool], tuple[ProposalConfig, tuple[Transform, ...], bytes]] = {}
"""Configured proposals, encoded once (keyed by identity; the entry keeps the object alive)."""


DEFAULT_IKE_PROPOSALS = (
    ProposalConfig.parse("aes128gcm16-prfsha256-x25519"),
    ProposalConfig.parse("aes256-sha256-modp2048"),
)
DEFAULT_ESP_PROPOSALS = (
    ProposalConfig.parse("aes128gcm16", IpsecProtocol.ESP),
    ProposalConfig.parse("aes256-sha256", IpsecProtocol.ESP),
)


def ike_proposals(*texts: str) -> tuple[ProposalConfig, ...]:
    return tuple(ProposalConfig.parse(t) for t in texts)


def esp_proposals(*texts: str) -> tuple[ProposalConfig, ...]:
    return tuple(ProposalConfig.parse(t, IpsecProtocol.ESP) for t in texts)


# --- identities ------------------------------------------------------------------------------

_DN_OIDS = {
    "C": "2.5.4.6",
    "ST": "2.5.4.8",
    "L": "2.5.4.7",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "CN": "2.5.4.3",
    "DC": "0.9.2342.19200300.100.1.25",
    "E": "1.2.840.113549.1.9.1",
    "EMAIL": "1.2.840.113549.1.9.1",
    "SN": "2.5.4.5",
}


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity (RFC 7296 §3.5): the ID type and the identification data octets."""

    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan's identity syntax: an IP address, ``@fqdn`` or a bare FQDN,
        ``user@domain``, a DN ``C=CH, O=Example, CN=host`` (in ASN.1 order) or
        ``keyid:<hex>``."""
        text = text.strip()
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            kind = IdType.ID_IPV4_ADDR if ip.version == 4 else IdType.ID_IPV6_ADDR
            return cls(kind, ip.packed)
        if text.startswith("keyid:"):
            return cls(IdType.ID_KEY_ID, bytes.fromhex(text[6:]))
        if text.startswith("@#"):
            return cls(IdType.ID_KEY_ID, bytes.fromhex(text[2:]))
        if text.startswith("@"):
            return cls(IdType.ID_FQDN, text[1:].encode())
        if "=" in text:
            return cls(IdType.ID_DER_ASN1_DN, dn_der(text))
        if "@" in text:
            return cls(IdType.ID_RFC822_ADDR, text.encode())
        return cls(IdType.ID_FQDN, text.encode())

    def __str__(self) -> str:
        t = self.id_type
        if t in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if t in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return self.data.decode("utf-8", "replace")
        if t == IdType.ID_DER_ASN1_DN:
            return dn_text(self.data)
        if t == IdType.ID_NULL:
            return "%null"
        return f"keyid:{self.data.hex()}" if t == IdType.ID_KEY_ID else self.data.hex()


def dn_der(text: str) -> bytes:
    """DER of a distinguished name written ``C=CH, O=Example, CN=host`` (ASN.1 order)."""
    from cryptography import x509
    from cryptography.x509.oid import ObjectIdentifier

    attrs = []
    for part in re.split(r"\s*,\s*", text.strip()):
        key, _, value = part.partition("=")
        oid = _DN_OIDS.get(key.strip().upper())
        if oid is None:
            raise LocalProtocolError(f"unknown DN attribute {key!r}")
        attrs.append(x509.NameAttribute(ObjectIdentifier(oid), value.strip()))
    return x509.Name(attrs).public_bytes()


def dn_text(der: bytes) -> str:
    """A readable form of a DER distinguished name (hex when it is not one)."""
    from reference_impl.ike.certs import name_from_der

    name = name_from_der(der)
    if name is None:
        return der.hex()
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for rdn in name.rdns for a in rdn)


# --- authentication --------------------------------------------------------------------------


class AuthClass(StrEnum):
    """How one end authenticates (strongSwan's ``auth = psk | pubkey``)."""

    PSK = "psk"
    PUBKEY = "pubkey"
    ANY = "any"


@dataclass(frozen=True)
class LocalAuth:
    """How we authenticate ourselves.

    ``private_key`` and ``certificates`` are ``cryptography`` objects (end-entity certificate
    first, then intermediates, sent as CERT payloads). ``method`` picks the AUTH method for
    signatures; by default RFC 7427 Digital Signature (14) when the peer announced
    SIGNATURE_HASH_ALGORITHMS, else the classic method for the key type (1 or 9-11).
    """

    identity: Identity
    auth: AuthClass = AuthClass.PSK
    psk: bytes | None = None
    private_key: Any = None
    certificates: tuple[Any, ...] = ()
    method: AuthMethod | None = None
    rsa_pss: bool = False
    """With method 14 and an RSA key: sign with RSASSA-PSS instead of PKCS#1 v1.5."""
    send_cert: bool = True


@dataclass(frozen=True)
class RemoteAuth:
    """What we require of the peer. ``identity`` ``None`` accepts any identity that
    authenticates (with certificates: any identity the certificate proves)."""

    identity: Identity | None = None
    auth: AuthClass = AuthClass.PSK
    psk: bytes | None = None
    trust_anchors: tuple[Any, ...] = ()
    """CA certificates (``cryptography.x509.Certificate``) that may issue the peer's."""
    public_keys: tuple[Any, ...] = ()
    """Raw public keys accepted for the peer without a certificate."""
    send_certreq: bool = True


# --- connections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildConfig:
    """One Child SA of a connection (strongSwan's ``children`` section).

    Empty ``local_ts``/``remote_ts`` mean "dynamic": the IKE SA's own addresses.
    """

    name: str = "child"
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    proposals: tuple[ProposalConfig, ...] = DEFAULT_ESP_PROPOSALS
    mode: Mode = Mode.TUNNEL
    rekey_time: float | None = 3600.0
    life_time: float | None = 3960.0
    lifetime_bytes: int | None = None
    lifetime_packets: int | None = None
    replay_window: int = 64
    tfc_padding: bool = True
    """False: we cannot receive TFC padding and say so with ESP_TFC_PADDING_NOT_SUPPORTED."""

    @property
    def protocol(self) -> IpsecProtocol:
        return self.proposals[0].protocol if self.proposals else IpsecProtocol.ESP

    @property
    def pfs_groups(self) -> tuple[int, ...]:
        """Key exchange methods offered for PFS, in order (empty: no PFS)."""
        return tuple(dict.fromkeys(g for p in self.proposals for g in p.dh))


@dataclass(frozen=True)
class PeerConfig:
    """One IKE connection: how to reach and authenticate a peer and what Child SAs to make.

    ``remote_addrs`` empty (or ``%any``) lets any address match as responder. Timers are in
    seconds; ``None`` disables the timer.
    """

    name: str
    local: LocalAuth
    remote: RemoteAuth
    remote_addrs: tuple[str, ...] = ()
    local_addrs: tuple[str, ...] = ()
    remote_port: int = 500
    remote_natt_port: int | None = None
    """The peer's NAT-T port (default: the service's ``natt_port``)."""
    proposals: tuple[ProposalConfig, ...] = DEFAULT_IKE_PROPOSALS
    children: tuple[ChildConfig, ...] = (ChildConfig(),)
    retransmit: RetransmitSchedule = REFERENCE_SCHEDULE
    rekey_time: float | None = 14400.0
    over_time: float = 1440.0
    """Hard IKE SA lifetime = rekey_time + over_time (strongSwan's over_time)."""
    dpd_delay: float | None = None
    fragmentation: bool = True
    fragment_size: int = 1280
    """Largest IP packet for an IKE message before we fragment it (RFC 7383 §2.5.1)."""
    force_encap: bool = False
    """Fake a NAT in our NAT-D payload so the peer floats to 4500 and encapsulates ESP, as
    strongSwan's ``encap = yes`` and its libipsec backend do (RFC 7296 §2.23)."""
    float_always: bool = False
    """Move IKE to the NAT-T port after IKE_SA_INIT even without a NAT (strongSwan with
    MOBIKE does so)."""
    send_initial_contact: bool = True
    signature_hashes: tuple[int, ...] = (
        HashAlgorithm.SHA2_256,
        HashAlgorithm.SHA2_384,
        HashAlgorithm.SHA2_512,
    )
    """Sent as SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4); empty: not sent."""
    window_size: int = 1
    """Our Message ID window as responder (RFC 7296 §2.3); above 1 sent as SET_WINDOW_SIZE."""
    nonce_size: int = 32
    initial_child: bool = True
    """Create the first Child SA inside IKE_AUTH (False: childless, RFC 6023)."""


def _random(n: int) -> bytes:
    return os.urandom(n)


@dataclass(frozen=True)
class ServiceSettings:
    """Service-wide settings: the connections and the DoS protections of RFC 7296 §2.6."""

    connections: tuple[PeerConfig, ...] = ()
    ike_port: int = 500
    natt_port: int = 4500
    local_address: str = "0.0.0.0"
    """Our address as the NAT-D payloads hash it when the I/O layer does not say."""
    cookie_threshold: int = 10
    """Half-open IKE SAs from which the responder demands a COOKIE (RFC 7296 §2.6)."""
    block_threshold: int = 1000
    """Half-open IKE SAs from which new IKE_SA_INIT requests are dropped."""
    half_open_timeout: float = 30.0
    cookie_secret_lifetime: float = 300.0
    max_fragments: int = 64
    """Most fragments we reassemble for one message (RFC 7383 §2.6 resource limits)."""
    prefer_local_proposals: bool = True
    """Responder picks by its own proposal order (strongSwan's default) or the peer's."""
    rng: Callable[[int], bytes] = field(default=_random)
    """Source of SPIs, nonces, CBC IVs and cookie secrets; tests inject a deterministic one."""
    cert_clock: Callable[[], datetime] | None = None
    """Wall-clock time for certificate validity (default: the system clock); the protocol
    timers never use it."""
    accept_any_auth: bool = False
    """A deliberate misbehaviour for negative testing (the node's ``accept_any_auth``): the
    peer's AUTH and certificates are not verified (RFC 7296 §2.15 violated on purpose)."""
