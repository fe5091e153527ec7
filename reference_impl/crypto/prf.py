"""Pseudorandom functions (IKEv2 Transform Type 2; the IKEv1 ``prf`` of RFC 2409 §5).

HMAC-MD5 / HMAC-SHA1 (RFC 2104), HMAC-SHA2-256/384/512 (RFC 4868 §2.1.2), AES-XCBC-PRF-128
(RFC 4434) and AES-CMAC-PRF-128 (RFC 4615). HMAC takes keys of any length; the AES PRFs take
any length too and normalise it to 128 bits (RFC 4434 §2, RFC 4615 §3, which differ for short
keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives import hashes, hmac

from reference_impl.crypto.base import Prf
from reference_impl.crypto.ids import PrfId
from reference_impl.crypto.integ import _HASH_OBJECTS, _HASHES, CmacState, XcbcState
from reference_impl.errors import LocalProtocolError

__all__ = ["PrfAlgorithm", "prf"]


class _HmacPrf(Prf):
    """A keyed HMAC PRF: the pads are computed once, each call copies the keyed context."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes, hash_name: str) -> None:
        self._base = hmac.HMAC(key, _HASH_OBJECTS[hash_name])

    def __call__(self, data: bytes) -> bytes:
        h = self._base.copy()
        h.update(data)
        return h.finalize()


class _AesPrf(Prf):
    """AES-XCBC-PRF-128 (RFC 4434 §2) / AES-CMAC-PRF-128 (RFC 4615 §3).

    A 16-octet key is used as is. A longer key is first reduced to the MAC of it under the
    all-zero key (both RFCs). A shorter key is padded with zero octets for XCBC (RFC 4434
    §2) but also reduced with the zero key for CMAC (RFC 4615 §3, step 2).
    """

    __slots__ = ("_digest",)

    def __init__(
        self, key: bytes, state: Callable[[bytes], XcbcState | CmacState], pad_short: bool
    ) -> None:
        if len(key) < 16 and pad_short:
            key = key + bytes(16 - len(key))
        elif len(key) != 16:
            key = state(bytes(16)).digest(key)
        self._digest = state(key).digest

    def __call__(self, data: bytes) -> bytes:
        return self._digest(data)


@dataclass(frozen=True, slots=True)
class PrfAlgorithm:
    """One PRF: ``key_len`` is the preferred key size (SK_d / SK_pi / SK_pr length, RFC 7296
    §2.13-2.14), ``out_len`` the output size. ``hash_name`` names the underlying hash of the
    HMAC PRFs (IKEv1 needs the bare hash for the phase-1 IV, RFC 2409 Appendix B)."""

    id: int
    name: str
    key_len: int
    out_len: int
    hash_name: str | None
    fixed_key: bool = False
    """True for the AES PRFs, which RFC 7296 §2.14 keys with half of Ni and half of Nr."""

    def prepare(self, key: bytes) -> Prf:
        """The PRF keyed with ``key`` (any length)."""
        if self.hash_name is not None:
            return _HmacPrf(key, self.hash_name)
        if self.id == PrfId.PRF_AES128_XCBC:
            return _AesPrf(key, XcbcState, pad_short=True)
        return _AesPrf(key, CmacState, pad_short=False)

    def __call__(self, key: bytes, data: bytes) -> bytes:
        """One-shot ``prf(key, data)`` (for a key used once: no prepared object, no copy)."""
        if self.hash_name is not None:
            h = hmac.HMAC(key, _HASH_OBJECTS[self.hash_name])
            h.update(data)
            return h.finalize()
        return self.prepare(key)(data)

    def hash(self, data: bytes) -> bytes:
        """The bare hash underlying an HMAC PRF (IKEv1's "hash" of RFC 2409 §5 / Appendix B)."""
        if self.hash_name is None:
            raise LocalProtocolError(f"{self.name} has no underlying hash")
        h = hashes.Hash(_HASHES[self.hash_name]())
        h.update(data)
        return h.finalize()


_TABLE: dict[PrfId, tuple[str, int, int, str | None]] = {
    PrfId.PRF_HMAC_MD5: ("PRF_HMAC_MD5", 16, 16, "md5"),
    PrfId.PRF_HMAC_SHA1: ("PRF_HMAC_SHA1", 20, 20, "sha1"),
    PrfId.PRF_HMAC_SHA2_256: ("PRF_HMAC_SHA2_256", 32, 32, "sha256"),
    PrfId.PRF_HMAC_SHA2_384: ("PRF_HMAC_SHA2_384", 48, 48, "sha384"),
    PrfId.PRF_HMAC_SHA2_512: ("PRF_HMAC_SHA2_512", 64, 64, "sha512"),
    PrfId.PRF_AES128_XCBC: ("PRF_AES128_XCBC", 16, 16, None),
    PrfId.PRF_AES128_CMAC: ("PRF_AES128_CMAC", 16, 16, None),
}


@cache
def prf(prf_id: int) -> PrfAlgorithm:
    """The PRF ``prf_id`` (IKEv2 Transform Type 2). Unknown or unsupported IDs (HMAC-TIGER)
    raise ``LocalProtocolError``."""
    try:
        pid = PrfId(prf_id)
        name, key_len, out_len, hash_name = _TABLE[pid]
    except (ValueError, KeyError):
        raise LocalProtocolError(f"unknown or unsupported PRF {prf_id}") from None
    return PrfAlgorithm(pid, name, key_len, out_len, hash_name, fixed_key=hash_name is None)
