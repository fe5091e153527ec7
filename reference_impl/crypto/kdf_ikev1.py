"""IKEv1 key derivation (RFC 2409 §5, §5.5, Appendix B), as pure functions.

``prf`` is the negotiated PRF: HMAC with the phase-1 Hash Algorithm (``IKEV1_HASH_TO_PRF``)
unless a PRF attribute was negotiated. "hash" (phase-1 IV, Quick Mode IV) is the bare
negotiated hash (``PrfAlgorithm.hash``). The "0", "1", "2" of RFC 2409 §5 are single octets.
``_b`` arguments are payload bodies without the generic payload header (RFC 2409 §5), as the
RFC's notation says.
"""

from __future__ import annotations

from reference_impl.crypto.prf import PrfAlgorithm
from reference_impl.errors import LocalProtocolError

__all__ = [
    "ikev1_encryption_key",
    "ikev1_hash_i",
    "ikev1_hash_r",
    "ikev1_phase1_iv",
    "ikev1_phase2_iv",
    "ikev1_qm_hash1",
    "ikev1_qm_hash2",
    "ikev1_qm_hash3",
    "ikev1_quick_keymat",
    "ikev1_skeyid_dae",
    "ikev1_skeyid_pke",
    "ikev1_skeyid_psk",
    "ikev1_skeyid_sig",
]


def ikev1_skeyid_sig(prf: PrfAlgorithm, ni_b: bytes, nr_b: bytes, g_xy: bytes) -> bytes:
    """SKEYID = prf(Ni_b | Nr_b, g^xy) for signature authentication (RFC 2409 §5)."""
    return prf.prepare(ni_b + nr_b)(g_xy)


def ikev1_skeyid_psk(prf: PrfAlgorithm, psk: bytes, ni_b: bytes, nr_b: bytes) -> bytes:
    """SKEYID = prf(pre-shared-key, Ni_b | Nr_b) (RFC 2409 §5)."""
    return prf.prepare(psk)(ni_b + nr_b)


def ikev1_skeyid_pke(
    prf: PrfAlgorithm, ni_b: bytes, nr_b: bytes, cky_i: bytes, cky_r: bytes
) -> bytes:
    """SKEYID = prf(hash(Ni_b | Nr_b), CKY-I | CKY-R) for public key encryption (RFC 2409 §5)."""
    return prf.prepare(prf.hash(ni_b + nr_b))(cky_i + cky_r)


def ikev1_skeyid_dae(
    prf: PrfAlgorithm, skeyid: bytes, g_xy: bytes, cky_i: bytes, cky_r: bytes
) -> tuple[bytes, bytes, bytes]:
    """(SKEYID_d, SKEYID_a, SKEYID_e) of RFC 2409 §5::

    SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)
    SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)
    SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)
    """
    if len(cky_i) != 8 or len(cky_r) != 8:
        raise LocalProtocolError("ISAKMP cookies must be 8 octets")
    f = prf.prepare(skeyid)
    tail = g_xy + cky_i + cky_r
    d = f(tail + b"\x00")
    a = f(d + tail + b"\x01")
    e = f(a + tail + b"\x02")
    return d, a, e


def ikev1_encryption_key(prf: PrfAlgorithm, skeyid_e: bytes, key_len: int) -> bytes:
    """The phase-1 encryption key from SKEYID_e (RFC 2409 Appendix B).

    The leading ``key_len`` octets of SKEYID_e when it is long enough; otherwise
    Ka = K1 | K2 | ..., K1 = prf(SKEYID_e, 0), Kn = prf(SKEYID_e, Kn-1), truncated.
    """
    if key_len <= len(skeyid_e):
        return skeyid_e[:key_len]
    f = prf.prepare(skeyid_e)
    k = f(b"\x00")
    out = bytearray(k)
    while len(out) < key_len:
        k = f(k)
        out += k
    return bytes(out[:key_len])


def ikev1_phase1_iv(prf: PrfAlgorithm, g_xi: bytes, g_xr: bytes, block_size: int) -> bytes:
    """The first phase-1 IV: hash(g^xi | g^xr), truncated to the block size (Appendix B).

    Later messages chain: each message's IV is the last ciphertext block of the previous one.
    """
    return _truncate(prf.hash(g_xi + g_xr), block_size)


def ikev1_phase2_iv(
    prf: PrfAlgorithm, last_phase1_block: bytes, message_id: int, block_size: int
) -> bytes:
    """The first IV of a Quick Mode / Informational exchange (RFC 2409 Appendix B):
    hash(last phase-1 CBC output block | M-ID), truncated to the block size. Within one Quick
    Mode exchange later messages chain on the previous message's last ciphertext block."""
    if len(last_phase1_block) != block_size:
        raise LocalProtocolError("last phase-1 block has the wrong size")
    return _truncate(prf.hash(last_phase1_block + message_id.to_bytes(4)), block_size)


def _truncate(digest: bytes, block_size: int) -> bytes:
    if block_size > len(digest):
        raise LocalProtocolError(f"hash too short for a {block_size}-octet IV")
    return digest[:block_size]


def ikev1_hash_i(
    prf: PrfAlgorithm,
    skeyid: bytes,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    idii_b: bytes,
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b) (RFC 2409 §5)."""
    return prf.prepare(skeyid)(g_xi + g_xr + cky_i + cky_r + sai_b + idii_b)


def ikev1_hash_r(
    prf: PrfAlgorithm,
    skeyid: bytes,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    idir_b: bytes,
) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b) (RFC 2409 §5).

    Arguments are in the same (initiator, responder) order as ``ikev1_hash_i``; the swap the
    RFC prescribes happens here.
    """
    return prf.prepare(skeyid)(g_xr + g_xi + cky_r + cky_i + sai_b + idir_b)


def ikev1_quick_keymat(
    prf: PrfAlgorithm,
    skeyid_d: bytes,
    protocol: int,
    spi: bytes,
    ni_b: bytes,
    nr_b: bytes,
    length: int,
    g_qm: bytes | None = None,
) -> bytes:
    """Quick Mode KEYMAT for one SA direction (RFC 2409 §5.5)::

    KEYMAT = K1 | K2 | ...
    K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)
    Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)

    ``spi`` is the SPI of the SA the keys are for (the receiver's SPI, 4 octets), ``protocol``
    the IPsec DOI protocol ID (2 AH, 3 ESP), ``g_qm`` the PFS shared secret if any. The
    encryption key comes first, then the authentication key (RFC 2409 §5.5, RFC 2407 §4.5).
    """
    if not 0 <= protocol <= 255:
        raise LocalProtocolError("protocol ID is one octet")
    f = prf.prepare(skeyid_d)
    seed = (g_qm or b"") + bytes((protocol,)) + spi + ni_b + nr_b
    k = f(seed)
    out = bytearray(k)
    while len(out) < length:
        k = f(k + seed)
        out += k
    return bytes(out[:length])


def ikev1_qm_hash1(prf: PrfAlgorithm, skeyid_a: bytes, message_id: int, rest: bytes) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | <the message after the HASH payload>) (RFC 2409 §5.5).

    Also the HASH of Informational exchanges (RFC 2409 §5.7) with ``rest`` = N/D payload.
    """
    return prf.prepare(skeyid_a)(message_id.to_bytes(4) + rest)


def ikev1_qm_hash2(
    prf: PrfAlgorithm, skeyid_a: bytes, message_id: int, ni_b: bytes, rest: bytes
) -> bytes:
    """HASH(2) = prf(SKEYID_a, M-ID | Ni_b | <the message after the HASH payload>) (§5.5)."""
    return prf.prepare(skeyid_a)(message_id.to_bytes(4) + ni_b + rest)


def ikev1_qm_hash3(
    prf: PrfAlgorithm, skeyid_a: bytes, message_id: int, ni_b: bytes, nr_b: bytes
) -> bytes:
    """HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b) (RFC 2409 §5.5)."""
    return prf.prepare(skeyid_a)(b"\x00" + message_id.to_bytes(4) + ni_b + nr_b)
