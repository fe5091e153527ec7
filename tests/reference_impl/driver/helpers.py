"""Builders shared by the driver tests: SA parameters, inner packets, scapy counterparts."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH, ESP, SecurityAssociation

from reference_impl.crypto import encr, integ
from reference_impl.crypto.ids import EncrId, IntegId
from reference_impl.driver import OutboundSa, Sad
from reference_impl.driver import SecurityAssociation as OurSa
from reference_impl.sa import ChildSaParams, IpsecProtocol, Lifetime, Mode, TrafficSelector

V4_OUTER = ("192.0.2.1", "192.0.2.2")
V6_OUTER = ("2001:db8::1", "2001:db8::2")
V4_INNER = ("10.1.0.1", "10.2.0.1")
V6_INNER = ("2001:db8:1::1", "2001:db8:2::1")


@dataclass(frozen=True)
class Suite:
    """One algorithm combination, with the names scapy uses for it."""

    name: str
    encr_id: int | None
    key_bits: int | None
    integ_id: int | None
    scapy_crypt: str | None
    scapy_auth: str | None
    scapy_icv: int | None = None
    scapy_ok: bool = True
    """scapy's AES-GCM goes through ``AESGCM``, which only does 16-octet tags."""


ESP_SUITES = [
    Suite("aes-gcm-16-128", EncrId.ENCR_AES_GCM_16, 128, None, "AES-GCM", None),
    Suite("aes-gcm-16-256", EncrId.ENCR_AES_GCM_16, 256, None, "AES-GCM", None),
    Suite("aes-gcm-12-192", EncrId.ENCR_AES_GCM_12, 192, None, "AES-GCM", None, 12, False),
    Suite("aes-gcm-8-128", EncrId.ENCR_AES_GCM_8, 128, None, "AES-GCM", None, 8, False),
    Suite("aes-ccm-16-128", EncrId.ENCR_AES_CCM_16, 128, None, "AES-CCM", None),
    Suite("aes-ccm-8-256", EncrId.ENCR_AES_CCM_8, 256, None, "AES-CCM", None, 8),
    Suite("chacha20-poly1305", EncrId.ENCR_CHACHA20_POLY1305, 256, None, "CHACHA20-POLY1305", None),
    Suite(
        "null-auth-aes-gmac-128", EncrId.ENCR_NULL_AUTH_AES_GMAC, 128, None, "AES-NULL-GMAC", None
    ),
    Suite(
        "aes-cbc-128-sha256",
        EncrId.ENCR_AES_CBC,
        128,
        IntegId.AUTH_HMAC_SHA2_256_128,
        "AES-CBC",
        "SHA2-256-128",
    ),
    Suite(
        "aes-cbc-256-sha512",
        EncrId.ENCR_AES_CBC,
        256,
        IntegId.AUTH_HMAC_SHA2_512_256,
        "AES-CBC",
        "SHA2-512-256",
    ),
    Suite(
        "aes-cbc-192-sha384",
        EncrId.ENCR_AES_CBC,
        192,
        IntegId.AUTH_HMAC_SHA2_384_192,
        "AES-CBC",
        "SHA2-384-192",
    ),
    Suite(
        "aes-cbc-128-sha1",
        EncrId.ENCR_AES_CBC,
        128,
        IntegId.AUTH_HMAC_SHA1_96,
        "AES-CBC",
        "HMAC-SHA1-96",
    ),
    Suite(
        "aes-ctr-128-sha256",
        EncrId.ENCR_AES_CTR,
        128,
        IntegId.AUTH_HMAC_SHA2_256_128,
        "AES-CTR",
        "SHA2-256-128",
    ),
    Suite(
        "aes-ctr-256-cmac",
        EncrId.ENCR_AES_CTR,
        256,
        IntegId.AUTH_AES_CMAC_96,
        "AES-CTR",
        "AES-CMAC-96",
    ),
    Suite("3des-md5", EncrId.ENCR_3DES, 192, IntegId.AUTH_HMAC_MD5_96, "3DES", "HMAC-MD5-96"),
    Suite(
        "null-sha256",
        EncrId.ENCR_NULL,
        None,
        IntegId.AUTH_HMAC_SHA2_256_128,
        "NULL",
        "SHA2-256-128",
    ),
]

AH_SUITES = [
    Suite("ah-sha1", None, None, IntegId.AUTH_HMAC_SHA1_96, None, "HMAC-SHA1-96"),
    Suite("ah-sha256", None, None, IntegId.AUTH_HMAC_SHA2_256_128, None, "SHA2-256-128"),
    Suite("ah-sha384", None, None, IntegId.AUTH_HMAC_SHA2_384_192, None, "SHA2-384-192"),
    Suite("ah-sha512", None, None, IntegId.AUTH_HMAC_SHA2_512_256, None, "SHA2-512-256"),
    Suite("ah-md5", None, None, IntegId.AUTH_HMAC_MD5_96, None, "HMAC-MD5-96"),
    Suite("ah-cmac", None, None, IntegId.AUTH_AES_CMAC_96, None, "AES-CMAC-96"),
]


def keys_for(suite: Suite, rng: random.Random) -> tuple[bytes, bytes]:
    ek = b""
    ik = b""
    if suite.encr_id is not None:
        ek = rng.randbytes(encr(suite.encr_id, suite.key_bits).key_len)
    if suite.integ_id is not None:
        ik = rng.randbytes(integ(suite.integ_id).key_len)
    return ek, ik


def params(
    suite: Suite,
    keys: tuple[bytes, bytes],
    *,
    spi: int = 0x1001,
    mode: Mode = Mode.TUNNEL,
    outer: tuple[str, str] = V4_OUTER,
    inner: tuple[str, str] | None = V4_INNER,
    esn: bool = False,
    encap: tuple[int, int] | None = None,
    lifetime: Lifetime | None = None,
    replay_window: int = 64,
    tfc_padding: bool = True,
) -> ChildSaParams:
    """One direction's parameters; selectors are the two inner hosts' /16 (v4) or /48 (v6)."""
    ts_src: tuple[TrafficSelector, ...] = ()
    ts_dst: tuple[TrafficSelector, ...] = ()
    if inner is not None:
        plen = 16 if ":" not in inner[0] else 48
        ts_src = (TrafficSelector.from_network(f"{inner[0]}/{plen}"),)
        ts_dst = (TrafficSelector.from_network(f"{inner[1]}/{plen}"),)
    return ChildSaParams(
        spi=spi,
        protocol=IpsecProtocol.AH if suite.encr_id is None else IpsecProtocol.ESP,
        mode=mode,
        src=outer[0],
        dst=outer[1],
        encr_id=suite.encr_id,
        encr_key_bits=suite.key_bits,
        encr_key=keys[0],
        integ_id=suite.integ_id,
        integ_key=keys[1],
        esn=esn,
        encap=encap,
        ts_src=ts_src,
        ts_dst=ts_dst,
        lifetime=lifetime or Lifetime(),
        replay_window=replay_window,
        tfc_padding=tfc_padding,
    )


def scapy_sa(
    suite: Suite, keys: tuple[bytes, bytes], p: ChildSaParams, esn_high: int = 0
) -> SecurityAssociation:
    """scapy's SecurityAssociation for the same SA (tunnel header from the outer addresses)."""
    tunnel = None
    if p.mode == Mode.TUNNEL:
        tunnel = IPv6(src=p.src, dst=p.dst) if ":" in p.src else IP(src=p.src, dst=p.dst)
    nat_t = UDP(sport=p.encap[0], dport=p.encap[1]) if p.encap else None
    kw: dict[str, object] = {}
    if suite.scapy_crypt is not None:
        kw["crypt_algo"] = suite.scapy_crypt
        kw["crypt_key"] = keys[0] if keys[0] else None
        if suite.scapy_icv:
            kw["crypt_icv_size"] = suite.scapy_icv
    if suite.scapy_auth is not None:
        kw["auth_algo"] = suite.scapy_auth
        kw["auth_key"] = keys[1]
    return SecurityAssociation(
        ESP if suite.encr_id is not None else AH,
        spi=p.spi,
        tunnel_header=tunnel,
        nat_t_header=nat_t,
        esn_en=p.esn,
        esn=esn_high,
        **kw,
    )


def inner_packet(
    src: str, dst: str, size: int = 100, proto: str = "udp", rng: random.Random | None = None
) -> bytes:
    """A well-formed IP packet of ``size`` payload octets (checksums right)."""
    rng = rng or random.Random(size)
    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, id=rng.randrange(65536))
    body = rng.randbytes(size)
    if proto == "udp":
        pkt = l3 / UDP(sport=1234, dport=5678) / body
    elif proto == "tcp":
        pkt = l3 / TCP(sport=1234, dport=80, flags="PA") / body
    else:
        pkt = l3 / ICMP() / body
    return bytes(pkt.__class__(bytes(pkt)))


def pair(p: ChildSaParams, now: float = 0.0, **kw: object) -> tuple[Sad, OutboundSa, OurSa]:
    """A SAD holding ``p`` both as an outbound and an inbound SA (loopback of one direction)."""
    sad = Sad()
    out = sad.install(p, inbound=False, now=now, **kw)  # type: ignore[arg-type]
    inn = sad.install(p, inbound=True, now=now, **kw)  # type: ignore[arg-type]
    assert isinstance(out, OutboundSa)
    return sad, out, inn


def with_(p: ChildSaParams, **changes: object) -> ChildSaParams:
    return replace(p, **changes)  # type: ignore[arg-type]
