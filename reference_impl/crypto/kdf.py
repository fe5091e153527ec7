"""IKEv2 key derivation (RFC 7296 §2.13, §2.14, §2.15, §2.17, §2.18), as pure functions.

Every function takes the negotiated ``PrfAlgorithm`` and octet strings and returns octet
strings; nothing here keeps state. Shared secrets (g^ir) must already be in the IKE form
(``KeyExchange.shared_secret`` returns them so).
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.crypto.prf import PrfAlgorithm
from reference_impl.errors import LocalProtocolError

__all__ = [
    "ChildKeys",
    "IkeKeys",
    "ikev2_child_keymat",
    "ikev2_ike_keys",
    "ikev2_psk_auth",
    "ikev2_rekey_skeyseed",
    "ikev2_signed_octets",
    "ikev2_skeyseed",
    "prf_plus",
]

KEY_PAD_IKEV2 = b"Key Pad for IKEv2"
"""RFC 7296 §2.15: the 17 ASCII characters, no terminating NUL."""
_OCTET = tuple(bytes((n,)) for n in range(256))


def prf_plus(prf: PrfAlgorithm, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), n a single octet.

    At most 255 blocks can be produced; asking for more is a ``LocalProtocolError``.
    """
    if length < 0:
        raise LocalProtocolError("prf+ length must not be negative")
    blocks = -(-length // prf.out_len)
    if blocks > 255:
        raise LocalProtocolError(f"prf+ cannot produce {length} octets with {prf.name}")
    if blocks <= 1:  # one block: a one-shot PRF, no prepared key
        return prf(key, seed + b"\x01")[:length] if blocks else b""
    f = prf.prepare(key)
    t = f(seed + b"\x01")
    out = [t]
    for n in range(2, blocks + 1):
        t = f(t + seed + _OCTET[n])
        out.append(t)
    return b"".join(out)[:length]


def ikev2_skeyseed(prf: PrfAlgorithm, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14).

    For AES-XCBC-PRF-128 and AES-CMAC-PRF-128 only the first 64 bits of each nonce form the
    key (RFC 7296 §2.14, RFC 4434 §2, RFC 4615 §3).
    """
    key = ni[:8] + nr[:8] if prf.fixed_key else ni + nr
    return prf(key, g_ir)


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """The seven IKE SA secrets of RFC 7296 §2.14, in derivation order."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


def ikev2_ike_keys(
    prf: PrfAlgorithm,
    skeyseed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    integ_key_len: int,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr).

    RFC 7296 §2.14. SK_d, SK_pi and SK_pr are ``prf.key_len`` octets long; ``encr_key_len`` is
    ``EncrAlgorithm.key_len`` (with the salt for AEADs, RFC 5282 §7.1) and ``integ_key_len``
    ``IntegAlgorithm.key_len`` (0 with an AEAD). The SPIs are the 8-octet IKE SPIs.
    """
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalProtocolError("IKE SPIs must be 8 octets")
    pk = prf.key_len
    sizes = (pk, integ_key_len, integ_key_len, encr_key_len, encr_key_len, pk, pk)
    km = prf_plus(prf, skeyseed, ni + nr + spi_i + spi_r, sum(sizes))
    parts: list[bytes] = []
    pos = 0
    for size in sizes:
        parts.append(km[pos : pos + size])
        pos += size
    return IkeKeys(*parts)


def ikev2_rekey_skeyseed(
    prf_old: PrfAlgorithm, sk_d_old: bytes, g_ir_new: bytes, ni: bytes, nr: bytes
) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for a rekeyed IKE SA (RFC 7296 §2.18).

    ``prf_old`` is the PRF of the *old* IKE SA; the new SA's keys then come from
    ``ikev2_ike_keys`` with the *new* SA's PRF, nonces and SPIs.
    """
    return prf_old(sk_d_old, g_ir_new + ni + nr)


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """Child SA keys in the order of RFC 7296 §2.17: initiator->responder first."""

    encr_i: bytes
    integ_i: bytes
    encr_r: bytes
    integ_r: bytes


def ikev2_child_keymat(
    prf: PrfAlgorithm,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    encr_key_len: int,
    integ_key_len: int,
    g_ir: bytes | None = None,
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS (§2.17).

    Taken in order: the initiator-to-responder encryption key, its integrity key, then the
    responder-to-initiator ones (RFC 7296 §2.17). For a Child SA created in IKE_AUTH the
    nonces are those of IKE_SA_INIT; for CREATE_CHILD_SA they are that exchange's.
    """
    seed = ni + nr if g_ir is None else g_ir + ni + nr
    km = prf_plus(prf, sk_d, seed, 2 * (encr_key_len + integ_key_len))
    e, a = encr_key_len, integ_key_len
    return ChildKeys(
        encr_i=km[:e],
        integ_i=km[e : e + a],
        encr_r=km[e + a : 2 * e + a],
        integ_r=km[2 * e + a : 2 * e + 2 * a],
    )


def ikev2_psk_auth(prf: PrfAlgorithm, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15).

    ``signed_octets`` is RealMessage | Nonce | prf(SK_px, RestOfIDPayload), built by the
    caller (see ``ikev2_signed_octets``). Also the EAP form with the MSK as the secret.
    """
    return prf(prf(psk, KEY_PAD_IKEV2), signed_octets)


def ikev2_signed_octets(
    prf: PrfAlgorithm, real_message: bytes, nonce: bytes, sk_p: bytes, id_payload_body: bytes
) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 §2.15).

    ``real_message`` is our own first message (IKE_SA_INIT request for the initiator, the
    response for the responder), ``nonce`` the *peer's* nonce data, ``sk_p`` our SK_pi or
    SK_pr and ``id_payload_body`` our ID payload without its 4-octet generic header
    (RestOfInitIDPayload: ID type, three reserved octets, identification data).
    """
    return real_message + nonce + prf(sk_p, id_payload_body)
