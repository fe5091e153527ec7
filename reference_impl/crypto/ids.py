"""IANA numbers of every transform the reference implementation knows, defined once.

IKEv2: "Transform Type Values" and the per-type transform IDs (RFC 7296 §3.3.2 and the IANA
"Internet Key Exchange Version 2 (IKEv2) Parameters" registry). IKEv1: the ISAKMP/IKE phase-1
attribute values (RFC 2409 Appendix A) and the IPsec DOI transform IDs and attribute values
(RFC 2407 §4.4.3, §4.4.4, §4.5, plus the later IANA "IPSEC Authentication Algorithm" and
"IPSEC ESP Transform Identifiers" assignments). The IKEv1 numbers are mapped onto the IKEv2
transforms below (``IKEV1_*_TO_*`` tables), so both IKE versions share one registry.
"""

from __future__ import annotations

from enum import IntEnum


class TransformType(IntEnum):
    """IKEv2 Transform Type (RFC 7296 §3.3.2)."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(IntEnum):
    """IKEv2 Transform Type 1, Encryption Algorithm Transform IDs."""

    ENCR_DES_IV64 = 1
    ENCR_DES = 2
    ENCR_3DES = 3
    ENCR_RC5 = 4
    ENCR_IDEA = 5
    ENCR_CAST = 6
    ENCR_BLOWFISH = 7
    ENCR_3IDEA = 8
    ENCR_DES_IV32 = 9
    ENCR_NULL = 11
    ENCR_AES_CBC = 12
    ENCR_AES_CTR = 13
    ENCR_AES_CCM_8 = 14
    ENCR_AES_CCM_12 = 15
    ENCR_AES_CCM_16 = 16
    ENCR_AES_GCM_8 = 18
    ENCR_AES_GCM_12 = 19
    ENCR_AES_GCM_16 = 20
    ENCR_NULL_AUTH_AES_GMAC = 21
    ENCR_CHACHA20_POLY1305 = 28


class PrfId(IntEnum):
    """IKEv2 Transform Type 2, Pseudorandom Function Transform IDs."""

    PRF_HMAC_MD5 = 1
    PRF_HMAC_SHA1 = 2
    PRF_HMAC_TIGER = 3
    PRF_AES128_XCBC = 4
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7
    PRF_AES128_CMAC = 8


class IntegId(IntEnum):
    """IKEv2 Transform Type 3, Integrity Algorithm Transform IDs."""

    NONE = 0
    AUTH_HMAC_MD5_96 = 1
    AUTH_HMAC_SHA1_96 = 2
    AUTH_DES_MAC = 3
    AUTH_KPDK_MD5 = 4
    AUTH_AES_XCBC_96 = 5
    AUTH_HMAC_MD5_128 = 6
    AUTH_HMAC_SHA1_160 = 7
    AUTH_AES_CMAC_96 = 8
    AUTH_AES_128_GMAC = 9
    AUTH_AES_192_GMAC = 10
    AUTH_AES_256_GMAC = 11
    AUTH_HMAC_SHA2_256_128 = 12
    AUTH_HMAC_SHA2_384_192 = 13
    AUTH_HMAC_SHA2_512_256 = 14


class DhId(IntEnum):
    """IKEv2 Transform Type 4, Key Exchange Method (Diffie-Hellman group) Transform IDs.

    The same numbers are the IKEv1 "Group Description" attribute values (RFC 2409 §6,
    RFC 3526, RFC 5903).
    """

    NONE = 0
    MODP_768 = 1
    MODP_1024 = 2
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    MODP_6144 = 17
    MODP_8192 = 18
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32


class EsnId(IntEnum):
    """IKEv2 Transform Type 5, Extended Sequence Numbers Transform IDs."""

    NO_ESN = 0
    ESN = 1


# --- IKEv1 / ISAKMP ---------------------------------------------------------------------------


class Ikev1EncrId(IntEnum):
    """IKEv1 phase-1 "Encryption Algorithm" attribute values (RFC 2409 Appendix A, RFC 3602)."""

    DES_CBC = 1
    IDEA_CBC = 2
    BLOWFISH_CBC = 3
    RC5_R16_B64_CBC = 4
    TDES_CBC = 5
    CAST_CBC = 6
    AES_CBC = 7
    CAMELLIA_CBC = 8


class Ikev1HashId(IntEnum):
    """IKEv1 phase-1 "Hash Algorithm" attribute values (RFC 2409 Appendix A, RFC 4868 §4)."""

    MD5 = 1
    SHA = 2
    TIGER = 3
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6


class Ikev1EspTransformId(IntEnum):
    """IPsec DOI ESP Transform Identifiers (RFC 2407 §4.4.4 and later IANA assignments).

    Note ESP_NULL_AUTH_AES_GMAC is 23 here but 21 in IKEv2.
    """

    ESP_DES_IV64 = 1
    ESP_DES = 2
    ESP_3DES = 3
    ESP_RC5 = 4
    ESP_IDEA = 5
    ESP_CAST = 6
    ESP_BLOWFISH = 7
    ESP_3IDEA = 8
    ESP_DES_IV32 = 9
    ESP_RC4 = 10
    ESP_NULL = 11
    ESP_AES_CBC = 12
    ESP_AES_CTR = 13
    ESP_AES_CCM_8 = 14
    ESP_AES_CCM_12 = 15
    ESP_AES_CCM_16 = 16
    ESP_AES_GCM_8 = 18
    ESP_AES_GCM_12 = 19
    ESP_AES_GCM_16 = 20
    ESP_SEED_CBC = 21
    ESP_CAMELLIA = 22
    ESP_NULL_AUTH_AES_GMAC = 23


class Ikev1AhTransformId(IntEnum):
    """IPsec DOI AH Transform Identifiers (RFC 2407 §4.4.3 and later IANA assignments)."""

    AH_MD5 = 2
    AH_SHA = 3
    AH_DES = 4
    AH_SHA2_256 = 5
    AH_SHA2_384 = 6
    AH_SHA2_512 = 7
    AH_RIPEMD = 8
    AH_AES_XCBC_MAC = 9
    AH_RSA = 10
    AH_AES_128_GMAC = 11
    AH_AES_192_GMAC = 12
    AH_AES_256_GMAC = 13


class Ikev1AuthAlgorithm(IntEnum):
    """IPsec DOI "Authentication Algorithm" SA attribute values (RFC 2407 §4.5, IANA)."""

    HMAC_MD5 = 1
    HMAC_SHA = 2
    DES_MAC = 3
    KPDK = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    HMAC_RIPEMD = 8
    AES_XCBC_MAC = 9
    SIG_RSA = 10
    AES_128_GMAC = 11
    AES_192_GMAC = 12
    AES_256_GMAC = 13


IKEV1_ENCR_TO_ENCR: dict[int, EncrId] = {
    Ikev1EncrId.DES_CBC: EncrId.ENCR_DES,
    Ikev1EncrId.IDEA_CBC: EncrId.ENCR_IDEA,
    Ikev1EncrId.BLOWFISH_CBC: EncrId.ENCR_BLOWFISH,
    Ikev1EncrId.RC5_R16_B64_CBC: EncrId.ENCR_RC5,
    Ikev1EncrId.TDES_CBC: EncrId.ENCR_3DES,
    Ikev1EncrId.CAST_CBC: EncrId.ENCR_CAST,
    Ikev1EncrId.AES_CBC: EncrId.ENCR_AES_CBC,
}
"""Phase-1 Encryption Algorithm attribute -> IKEv2 encryption transform."""

IKEV1_HASH_TO_PRF: dict[int, PrfId] = {
    Ikev1HashId.MD5: PrfId.PRF_HMAC_MD5,
    Ikev1HashId.SHA: PrfId.PRF_HMAC_SHA1,
    Ikev1HashId.SHA2_256: PrfId.PRF_HMAC_SHA2_256,
    Ikev1HashId.SHA2_384: PrfId.PRF_HMAC_SHA2_384,
    Ikev1HashId.SHA2_512: PrfId.PRF_HMAC_SHA2_512,
}
"""Phase-1 Hash Algorithm attribute -> the HMAC PRF IKEv1 uses (RFC 2409 §5)."""

IKEV1_HASH_TO_INTEG: dict[int, IntegId] = {
    Ikev1HashId.MD5: IntegId.AUTH_HMAC_MD5_96,
    Ikev1HashId.SHA: IntegId.AUTH_HMAC_SHA1_96,
    Ikev1HashId.SHA2_256: IntegId.AUTH_HMAC_SHA2_256_128,
    Ikev1HashId.SHA2_384: IntegId.AUTH_HMAC_SHA2_384_192,
    Ikev1HashId.SHA2_512: IntegId.AUTH_HMAC_SHA2_512_256,
}
"""Phase-1 Hash Algorithm attribute -> integrity transform of the same hash."""

IKEV1_ESP_TO_ENCR: dict[int, EncrId] = {
    Ikev1EspTransformId.ESP_DES_IV64: EncrId.ENCR_DES_IV64,
    Ikev1EspTransformId.ESP_DES: EncrId.ENCR_DES,
    Ikev1EspTransformId.ESP_3DES: EncrId.ENCR_3DES,
    Ikev1EspTransformId.ESP_RC5: EncrId.ENCR_RC5,
    Ikev1EspTransformId.ESP_IDEA: EncrId.ENCR_IDEA,
    Ikev1EspTransformId.ESP_CAST: EncrId.ENCR_CAST,
    Ikev1EspTransformId.ESP_BLOWFISH: EncrId.ENCR_BLOWFISH,
    Ikev1EspTransformId.ESP_3IDEA: EncrId.ENCR_3IDEA,
    Ikev1EspTransformId.ESP_DES_IV32: EncrId.ENCR_DES_IV32,
    Ikev1EspTransformId.ESP_NULL: EncrId.ENCR_NULL,
    Ikev1EspTransformId.ESP_AES_CBC: EncrId.ENCR_AES_CBC,
    Ikev1EspTransformId.ESP_AES_CTR: EncrId.ENCR_AES_CTR,
    Ikev1EspTransformId.ESP_AES_CCM_8: EncrId.ENCR_AES_CCM_8,
    Ikev1EspTransformId.ESP_AES_CCM_12: EncrId.ENCR_AES_CCM_12,
    Ikev1EspTransformId.ESP_AES_CCM_16: EncrId.ENCR_AES_CCM_16,
    Ikev1EspTransformId.ESP_AES_GCM_8: EncrId.ENCR_AES_GCM_8,
    Ikev1EspTransformId.ESP_AES_GCM_12: EncrId.ENCR_AES_GCM_12,
    Ikev1EspTransformId.ESP_AES_GCM_16: EncrId.ENCR_AES_GCM_16,
    Ikev1EspTransformId.ESP_NULL_AUTH_AES_GMAC: EncrId.ENCR_NULL_AUTH_AES_GMAC,
}
"""IPsec DOI ESP transform ID -> IKEv2 encryption transform."""

IKEV1_AUTH_TO_INTEG: dict[int, IntegId] = {
    Ikev1AuthAlgorithm.HMAC_MD5: IntegId.AUTH_HMAC_MD5_96,
    Ikev1AuthAlgorithm.HMAC_SHA: IntegId.AUTH_HMAC_SHA1_96,
    Ikev1AuthAlgorithm.DES_MAC: IntegId.AUTH_DES_MAC,
    Ikev1AuthAlgorithm.KPDK: IntegId.AUTH_KPDK_MD5,
    Ikev1AuthAlgorithm.HMAC_SHA2_256: IntegId.AUTH_HMAC_SHA2_256_128,
    Ikev1AuthAlgorithm.HMAC_SHA2_384: IntegId.AUTH_HMAC_SHA2_384_192,
    Ikev1AuthAlgorithm.HMAC_SHA2_512: IntegId.AUTH_HMAC_SHA2_512_256,
    Ikev1AuthAlgorithm.AES_XCBC_MAC: IntegId.AUTH_AES_XCBC_96,
    Ikev1AuthAlgorithm.AES_128_GMAC: IntegId.AUTH_AES_128_GMAC,
    Ikev1AuthAlgorithm.AES_192_GMAC: IntegId.AUTH_AES_192_GMAC,
    Ikev1AuthAlgorithm.AES_256_GMAC: IntegId.AUTH_AES_256_GMAC,
}
"""IPsec DOI Authentication Algorithm attribute (ESP and AH) -> IKEv2 integrity transform."""

IKEV1_AH_TO_INTEG: dict[int, IntegId] = {
    Ikev1AhTransformId.AH_MD5: IntegId.AUTH_HMAC_MD5_96,
    Ikev1AhTransformId.AH_SHA: IntegId.AUTH_HMAC_SHA1_96,
    Ikev1AhTransformId.AH_DES: IntegId.AUTH_DES_MAC,
    Ikev1AhTransformId.AH_SHA2_256: IntegId.AUTH_HMAC_SHA2_256_128,
    Ikev1AhTransformId.AH_SHA2_384: IntegId.AUTH_HMAC_SHA2_384_192,
    Ikev1AhTransformId.AH_SHA2_512: IntegId.AUTH_HMAC_SHA2_512_256,
    Ikev1AhTransformId.AH_AES_XCBC_MAC: IntegId.AUTH_AES_XCBC_96,
    Ikev1AhTransformId.AH_AES_128_GMAC: IntegId.AUTH_AES_128_GMAC,
    Ikev1AhTransformId.AH_AES_192_GMAC: IntegId.AUTH_AES_192_GMAC,
    Ikev1AhTransformId.AH_AES_256_GMAC: IntegId.AUTH_AES_256_GMAC,
}
"""IPsec DOI AH transform ID -> IKEv2 integrity transform."""
