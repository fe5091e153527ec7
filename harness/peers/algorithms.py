"""Canonical transform names and their spelling in each implementation's configuration.

Canonical names are strongSwan's log and vici names for IANA transforms (the names the
crypto registry's ``.name`` uses too): ``AES_CBC_256``, ``AES_GCM_16_128``,
``HMAC_SHA2_256_128``, ``PRF_HMAC_SHA2_256``, ``MODP_2048``, ``CURVE_25519``. Key sizes are
part of the encryption name. A proposal is written as these names joined by ``/``, in the
order strongSwan prints a selected proposal: ``AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/
MODP_2048``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["encr", "integ", "prf", "dh", "esn"]


@dataclass(frozen=True)
class Algorithm:
    """One transform: its canonical name, kind, IANA id, and per-implementation keywords."""

    name: str
    kind: Kind
    iana: int
    key_bits: int | None = None
    aead: bool = False
    strongswan: str | None = None
    libreswan: str | None = None
    """libreswan keyword (for ``prf``: the hash name used in an ``ike=`` line)."""


def _e(
    name: str, iana: int, bits: int | None, sw: str, lsw: str | None, aead: bool = False
) -> Algorithm:
    return Algorithm(name, "encr", iana, bits, aead, sw, lsw)


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        # ENCR (RFC 7296 §3.3.2, IANA "Transform Type 1")
        _e("3DES_CBC", 3, 192, "3des", "3des"),
        _e("NULL", 11, None, "null", "null"),
        _e("AES_CBC_128", 12, 128, "aes128", "aes128"),
        _e("AES_CBC_192", 12, 192, "aes192", "aes192"),
        _e("AES_CBC_256", 12, 256, "aes256", "aes256"),
        _e("AES_CTR_128", 13, 128, "aes128ctr", "aes_ctr128"),
        _e("AES_CTR_256", 13, 256, "aes256ctr", "aes_ctr256"),
        _e("AES_CCM_16_128", 16, 128, "aes128ccm16", "aes_ccm_c128", aead=True),
        _e("AES_GCM_8_128", 18, 128, "aes128gcm8", "aes_gcm_a128", aead=True),
        _e("AES_GCM_12_128", 19, 128, "aes128gcm12", "aes_gcm_b128", aead=True),
        _e("AES_GCM_16_128", 20, 128, "aes128gcm16", "aes_gcm_c128", aead=True),
        _e("AES_GCM_16_192", 20, 192, "aes192gcm16", "aes_gcm_c192", aead=True),
        _e("AES_GCM_16_256", 20, 256, "aes256gcm16", "aes_gcm_c256", aead=True),
        _e("NULL_AES_GMAC_128", 21, 128, "aes128gmac", "aes_gmac128", aead=True),
        _e("CHACHA20_POLY1305", 28, 256, "chacha20poly1305", "chacha20_poly1305", aead=True),
        # INTEG (Transform Type 3)
        Algorithm("HMAC_MD5_96", "integ", 1, None, False, "md5", "md5"),
        Algorithm("HMAC_SHA1_96", "integ", 2, None, False, "sha1", "sha1"),
        Algorithm("AES_XCBC_96", "integ", 5, None, False, "aesxcbc", "aes_xcbc"),
        Algorithm("AES_CMAC_96", "integ", 8, None, False, "aescmac", "aes_cmac"),
        Algorithm("HMAC_SHA2_256_128", "integ", 12, None, False, "sha256", "sha2_256"),
        Algorithm("HMAC_SHA2_384_192", "integ", 13, None, False, "sha384", "sha2_384"),
        Algorithm("HMAC_SHA2_512_256", "integ", 14, None, False, "sha512", "sha2_512"),
        # PRF (Transform Type 2)
        Algorithm("PRF_HMAC_MD5", "prf", 1, None, False, "prfmd5", "md5"),
        Algorithm("PRF_HMAC_SHA1", "prf", 2, None, False, "prfsha1", "sha1"),
        Algorithm("PRF_AES128_XCBC", "prf", 4, None, False, "prfaesxcbc", "aes_xcbc"),
        Algorithm("PRF_HMAC_SHA2_256", "prf", 5, None, False, "prfsha256", "sha2_256"),
        Algorithm("PRF_HMAC_SHA2_384", "prf", 6, None, False, "prfsha384", "sha2_384"),
        Algorithm("PRF_HMAC_SHA2_512", "prf", 7, None, False, "prfsha512", "sha2_512"),
        Algorithm("PRF_AES128_CMAC", "prf", 8, None, False, "prfaescmac", "aes_cmac"),
        # DH (Transform Type 4)
        Algorithm("MODP_1024", "dh", 2, None, False, "modp1024", "modp1024"),
        Algorithm("MODP_1536", "dh", 5, None, False, "modp1536", "modp1536"),
        Algorithm("MODP_2048", "dh", 14, None, False, "modp2048", "modp2048"),
        Algorithm("MODP_3072", "dh", 15, None, False, "modp3072", "modp3072"),
        Algorithm("MODP_4096", "dh", 16, None, False, "modp4096", "modp4096"),
        Algorithm("ECP_256", "dh", 19, None, False, "ecp256", "dh19"),
        Algorithm("ECP_384", "dh", 20, None, False, "ecp384", "dh20"),
        Algorithm("ECP_521", "dh", 21, None, False, "ecp521", "dh21"),
        Algorithm("CURVE_25519", "dh", 31, None, False, "x25519", "dh31"),
        # ESN (Transform Type 5)
        Algorithm("NO_EXT_SEQ", "esn", 0, None, False, "noesn", None),
        Algorithm("EXT_SEQ", "esn", 1, None, False, "esn", None),
    )
}

# strongSwan prints the integrity algorithm of an AEAD-free IKE/ESP proposal with these names
# and "AES_CBC" + key size separately in vici; canonical() folds vici's split form back.


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(ALGORITHMS)}") from None


def kind_of(name: str) -> Kind:
    return get(name).kind


def canonical(alg: str, key_bits: int | str | None = None) -> str:
    """The canonical name of an algorithm as vici reports it (``AES_CBC`` + ``256``)."""
    if key_bits and f"{alg}_{key_bits}" in ALGORITHMS:
        return f"{alg}_{key_bits}"
    return alg


def names(kind: Kind) -> frozenset[str]:
    return frozenset(a.name for a in ALGORITHMS.values() if a.kind == kind)
