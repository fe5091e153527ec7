"""IANA numbers of ISAKMP (RFC 2408), the IPsec DOI (RFC 2407), IKEv1 (RFC 2409) and the
extensions this package speaks (RFC 3706 DPD, RFC 3947 NAT-T), once.

Names follow the RFCs (``-`` becomes ``_``). The transform numbers shared with the crypto
registry (phase-1 Encryption/Hash Algorithm, ESP/AH transform IDs, IPsec Authentication
Algorithm) live in :mod:`reference_impl.crypto.ids` (``Ikev1EncrId``, ``Ikev1HashId``,
``Ikev1EspTransformId``, ``Ikev1AhTransformId``, ``Ikev1AuthAlgorithm``), once.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

ISAKMP_VERSION = 0x10
"""Major version 1, minor version 0 (RFC 2408 §3.1)."""

HEADER_LEN = 28
GENERIC_HEADER_LEN = 4
NON_ESP_MARKER = b"\x00\x00\x00\x00"
"""Prefix of IKE messages on UDP 4500 (RFC 3948 §2.2); the node adds and strips it."""


class ExchangeType(IntEnum):
    """RFC 2408 §3.1 Exchange Type, RFC 2409 §9 (Quick Mode, New Group Mode)."""

    NONE = 0
    BASE = 1
    IDENTITY_PROTECTION = 2
    """Main Mode (RFC 2409 §5)."""
    AUTHENTICATION_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    QUICK_MODE = 32
    NEW_GROUP_MODE = 33


class Flags(IntFlag):
    """RFC 2408 §3.1 Flags."""

    NONE = 0
    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTHENTICATION_ONLY = 0x04


class PayloadType(IntEnum):
    """RFC 2408 §3.1 Next Payload Types, RFC 3947 §3.2/§5.2, draft-ietf-ipsec-nat-t-ike-02."""

    NONE = 0
    SA = 1
    P = 2
    T = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    N = 11
    D = 12
    VID = 13
    NAT_D = 20
    NAT_OA = 21
    NAT_D_DRAFT = 130
    NAT_OA_DRAFT = 131


class NotifyType(IntEnum):
    """RFC 2408 §3.14.1 Notify Message Types; RFC 2407 §4.6.3; RFC 3706 §5."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578
    R_U_THERE = 36136
    R_U_THERE_ACK = 36137


class Doi(IntEnum):
    """RFC 2408 §3.4 / RFC 2407 §4.2."""

    ISAKMP = 0
    IPSEC = 1


class Situation(IntFlag):
    """IPsec DOI situation (RFC 2407 §4.2)."""

    SIT_IDENTITY_ONLY = 0x01
    SIT_SECRECY = 0x02
    SIT_INTEGRITY = 0x04


class ProtocolId(IntEnum):
    """IPsec DOI Security Protocol Identifiers (RFC 2407 §4.4.1)."""

    PROTO_ISAKMP = 1
    PROTO_IPSEC_AH = 2
    PROTO_IPSEC_ESP = 3
    PROTO_IPCOMP = 4


KEY_IKE = 1
"""The only ISAKMP transform ID (RFC 2407 §4.4.2)."""


class OakleyAttr(IntEnum):
    """Phase 1 attribute classes (RFC 2409 Appendix A)."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


class AuthMethod(IntEnum):
    """RFC 2409 Appendix A Authentication Method."""

    PRE_SHARED_KEY = 1
    DSS_SIGNATURES = 2
    RSA_SIGNATURES = 3
    RSA_ENCRYPTION = 4
    REVISED_RSA_ENCRYPTION = 5
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    HYBRID_INIT_RSA = 64221
    XAUTH_INIT_PRESHARED = 65001
    XAUTH_INIT_RSA = 65005


class LifeType(IntEnum):
    """RFC 2409 Appendix A Life Type and RFC 2407 §4.5 SA Life Type (same values)."""

    SECONDS = 1
    KILOBYTES = 2


class IpsecAttr(IntEnum):
    """IPsec DOI SA attribute classes (RFC 2407 §4.5, RFC 4304 §2)."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTHENTICATION_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMPRESS_DICTIONARY_SIZE = 8
    COMPRESS_PRIVATE_ALGORITHM = 9
    ECN_TUNNEL = 10
    EXTENDED_SEQUENCE_NUMBER = 11


class EncapsulationMode(IntEnum):
    """RFC 2407 §4.5 Encapsulation Mode, RFC 3947 §5.1; the draft values strongSwan knows."""

    TUNNEL = 1
    TRANSPORT = 2
    UDP_ENCAPSULATED_TUNNEL = 3
    UDP_ENCAPSULATED_TRANSPORT = 4
    UDP_ENCAPSULATED_TUNNEL_DRAFT = 61443
    UDP_ENCAPSULATED_TRANSPORT_DRAFT = 61444


class IdType(IntEnum):
    """IPsec DOI Identification Type Values (RFC 2407 §4.6.2.1)."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_USER_FQDN = 3
    ID_IPV4_ADDR_SUBNET = 4
    ID_IPV6_ADDR = 5
    ID_IPV6_ADDR_SUBNET = 6
    ID_IPV4_ADDR_RANGE = 7
    ID_IPV6_ADDR_RANGE = 8
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class CertEncoding(IntEnum):
    """RFC 2408 §3.9 Certificate Encoding."""

    NONE = 0
    PKCS7 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    X509_KEY_EXCHANGE = 5
    KERBEROS_TOKENS = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10


class VendorId:
    """Vendor ID payload contents this implementation sends or recognises."""

    NAT_T_RFC3947 = bytes.fromhex("4a131c81070358455c5728f20e95452f")
    """MD5("RFC 3947") (RFC 3947 §3.1)."""
    NAT_T_DRAFT_02_N = bytes.fromhex("90cb80913ebb696e086381b5ec427b1f")
    """MD5("draft-ietf-ipsec-nat-t-ike-02\\n"): the one strongSwan sends (with the newline)."""
    NAT_T_DRAFT_02 = bytes.fromhex("cd60464335df21f87cfdb2fc68b6a448")
    NAT_T_DRAFT_03 = bytes.fromhex("7d9419a65310ca6f2c179d9215529d56")
    DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")
    """RFC 3706 §7 (major 1, minor 0)."""
    XAUTH = bytes.fromhex("09002689dfd6b712")
    FRAGMENTATION = bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d380000000")
    """Cisco's IKE fragmentation vendor ID with the capability flags strongSwan sends."""


NAT_T_VENDOR_IDS = (VendorId.NAT_T_RFC3947, VendorId.NAT_T_DRAFT_02_N, VendorId.NAT_T_DRAFT_02)
