"""Integrity transforms (IKEv2 Transform Type 3) for ESP, AH and the IKE SK payload.

HMAC-MD5-96 (RFC 2403), HMAC-SHA1-96 (RFC 2404), HMAC-SHA2-256-128/384-192/512-256
(RFC 4868), AES-XCBC-MAC-96 (RFC 3566), AES-CMAC-96 (RFC 4494) and AES-GMAC for AH (RFC 4543
§4). Prepared MACs keep the keyed state (HMAC inner/outer pads, CMAC subkeys, XCBC K1/K2/K3)
and copy it per packet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from hmac import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reference_impl.crypto.base import Mac
from reference_impl.crypto.encr import _CbcCipher
from reference_impl.crypto.ids import IntegId
from reference_impl.errors import LocalProtocolError

__all__ = ["IntegAlgorithm", "integ"]

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_HASH_OBJECTS: dict[str, hashes.HashAlgorithm] = {name: cls() for name, cls in _HASHES.items()}
"""One shared (immutable) algorithm object per hash, so that keying an HMAC does not build
one each time."""


class HmacState:
    """A keyed HMAC whose pads are computed once; each call copies the keyed context."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes, hash_name: str) -> None:
        self._base = hmac.HMAC(key, _HASH_OBJECTS[hash_name])

    def digest(self, data: bytes) -> bytes:
        h = self._base.copy()
        h.update(data)
        return h.finalize()


class XcbcState:
    """AES-XCBC-MAC (RFC 3566 §4) over AES-ECB-derived subkeys.

    K1 = E(K, 0x01 * 16), K2 = E(K, 0x02 * 16), K3 = E(K, 0x03 * 16). The message is
    CBC-MACed under K1; the last block is XORed with K2 when complete, or padded with 0x80
    0x00... and XORed with K3. The chain runs through a long-lived CBC context (one OpenSSL
    call per message, see ``encr._CbcCipher``) with a zero IV, which is the CBC-MAC of §4.
    """

    __slots__ = ("_cbc", "_k2", "_k3")

    _ZERO = bytes(16)

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise LocalProtocolError(f"AES-XCBC-MAC needs a 16-octet key, got {len(key)}")
        ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        k = ecb.update(b"\x01" * 16 + b"\x02" * 16 + b"\x03" * 16) + ecb.finalize()
        self._cbc = _CbcCipher(algorithms.AES(k[:16]), 16)
        self._k2 = int.from_bytes(k[16:32])
        self._k3 = int.from_bytes(k[32:48])

    def digest(self, data: bytes) -> bytes:
        n = len(data)
        if n and n % 16 == 0:
            head, last, mask = data[:-16], data[-16:], self._k2
        else:
            cut = n - n % 16
            head, mask = data[:cut], self._k3
            last = data[cut:] + b"\x80" + bytes(15 - n % 16)
        last = (int.from_bytes(last) ^ mask).to_bytes(16)
        return self._cbc.encrypt(self._ZERO, head + last)[-16:]


class CmacState:
    """AES-CMAC (RFC 4493 / NIST SP 800-38B) via ``cryptography``'s CMAC, keyed once."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = cmac.CMAC(algorithms.AES(key))

    def digest(self, data: bytes) -> bytes:
        c = self._base.copy()
        c.update(data)
        return c.finalize()


class _HmacMac(Mac):
    __slots__ = ("_base", "icv_len")

    def __init__(self, key: bytes, hash_name: str, icv_len: int) -> None:
        self._base = hmac.HMAC(key, _HASH_OBJECTS[hash_name])
        self.icv_len = icv_len

    def compute(self, data: bytes) -> bytes:
        h = self._base.copy()
        h.update(data)
        return h.finalize()[: self.icv_len]

    def verify(self, data: bytes, icv: bytes) -> bool:
        h = self._base.copy()
        h.update(data)
        return compare_digest(h.finalize()[: self.icv_len], icv)


class _StateMac(Mac):
    """A 96-bit truncation of an AES-based MAC (AES-XCBC-96 RFC 3566, AES-CMAC-96 RFC 4494)."""

    __slots__ = ("_digest", "icv_len")

    def __init__(self, digest: Callable[[bytes], bytes], icv_len: int) -> None:
        self._digest = digest
        self.icv_len = icv_len

    def compute(self, data: bytes) -> bytes:
        return self._digest(data)[: self.icv_len]

    def verify(self, data: bytes, icv: bytes) -> bool:
        return compare_digest(self._digest(data)[: self.icv_len], icv)


class _AhGmac(Mac):
    """AUTH_AES_*_GMAC for AH (RFC 4543 §4): GCM with empty plaintext, nonce salt||IV.

    The AAD is the AH-authenticated data (RFC 4302 §3.3.3.1, mutable fields and the ICV field
    zeroed by the caller); the ICV is the full 16-octet tag. It needs the per-packet IV, so
    only ``compute_iv`` / ``verify_iv`` work.
    """

    __slots__ = ("_dec", "_enc", "_salt", "icv_len")

    def __init__(self, key: bytes, salt: bytes) -> None:
        aead = AESGCM(key)
        self._enc = aead.encrypt
        self._dec = aead.decrypt
        self._salt = salt
        self.icv_len = 16

    def compute(self, data: bytes) -> bytes:
        raise LocalProtocolError("AES-GMAC needs an IV: use compute_iv")

    def verify(self, data: bytes, icv: bytes) -> bool:
        raise LocalProtocolError("AES-GMAC needs an IV: use verify_iv")

    def compute_iv(self, iv: bytes, data: bytes) -> bytes:
        if len(iv) != 8:
            raise LocalProtocolError(f"AES-GMAC IV must be 8 octets, got {len(iv)}")
        return self._enc(self._salt + iv, b"", data)

    def verify_iv(self, iv: bytes, data: bytes, icv: bytes) -> bool:
        if len(iv) != 8:
            raise LocalProtocolError(f"AES-GMAC IV must be 8 octets, got {len(iv)}")
        if len(icv) != 16:
            return False
        try:
            self._dec(self._salt + iv, icv, data)
        except InvalidTag:
            return False
        return True


@dataclass(frozen=True, slots=True)
class IntegAlgorithm:
    """One integrity transform: ``key_len`` octets of keying material (including the 4-octet
    salt for AES-GMAC), ``icv_len`` octets of ICV, ``needs_iv`` for AES-GMAC (AH carries an
    8-octet IV before the ICV, RFC 4543 §4)."""

    id: int
    name: str
    key_len: int
    icv_len: int
    needs_iv: bool = False
    supported: bool = True
    _factory: Callable[[bytes], Mac] | None = None

    def prepare(self, key: bytes) -> Mac:
        """Build the per-SA MAC state from ``key_len`` octets of keying material."""
        if not self.supported or self._factory is None:
            raise LocalProtocolError(f"integrity transform {self.name} is refused")
        if len(key) != self.key_len:
            raise LocalProtocolError(
                f"{self.name} needs a {self.key_len}-octet key, got {len(key)}"
            )
        return self._factory(key)


def _hmac(iid: IntegId, name: str, hash_name: str, key_len: int, icv: int) -> IntegAlgorithm:
    return IntegAlgorithm(iid, name, key_len, icv, _factory=lambda k: _HmacMac(k, hash_name, icv))


def _gmac(iid: IntegId, bits: int) -> IntegAlgorithm:
    n = bits // 8
    return IntegAlgorithm(
        iid,
        f"AES_{bits}_GMAC",
        n + 4,
        16,
        needs_iv=True,
        _factory=lambda k: _AhGmac(k[:n], k[n:]),
    )


@cache
def integ(integ_id: int) -> IntegAlgorithm:
    """The integrity transform ``integ_id`` (IKEv2 Transform Type 3).

    ``NONE`` (0) has ``key_len`` 0 and ``icv_len`` 0 and cannot be prepared (AEADs need no
    separate integrity transform). Unknown IDs raise ``LocalProtocolError``.
    """
    try:
        iid = IntegId(integ_id)
    except ValueError:
        raise LocalProtocolError(f"unknown integrity transform {integ_id}") from None
    match iid:
        case IntegId.NONE:
            return IntegAlgorithm(iid, "NONE", 0, 0)
        case IntegId.AUTH_HMAC_MD5_96:
            return _hmac(iid, "HMAC_MD5_96", "md5", 16, 12)
        case IntegId.AUTH_HMAC_SHA1_96:
            return _hmac(iid, "HMAC_SHA1_96", "sha1", 20, 12)
        case IntegId.AUTH_HMAC_SHA2_256_128:
            return _hmac(iid, "HMAC_SHA2_256_128", "sha256", 32, 16)
        case IntegId.AUTH_HMAC_SHA2_384_192:
            return _hmac(iid, "HMAC_SHA2_384_192", "sha384", 48, 24)
        case IntegId.AUTH_HMAC_SHA2_512_256:
            return _hmac(iid, "HMAC_SHA2_512_256", "sha512", 64, 32)
        case IntegId.AUTH_AES_XCBC_96:
            return IntegAlgorithm(
                iid, "AES_XCBC_96", 16, 12, _factory=lambda k: _StateMac(XcbcState(k).digest, 12)
            )
        case IntegId.AUTH_AES_CMAC_96:
            return IntegAlgorithm(
                iid, "AES_CMAC_96", 16, 12, _factory=lambda k: _StateMac(CmacState(k).digest, 12)
            )
        case IntegId.AUTH_AES_128_GMAC:
            return _gmac(iid, 128)
        case IntegId.AUTH_AES_192_GMAC:
            return _gmac(iid, 192)
        case IntegId.AUTH_AES_256_GMAC:
            return _gmac(iid, 256)
        case IntegId.AUTH_HMAC_MD5_128:
            return _hmac(iid, "HMAC_MD5_128", "md5", 16, 16)
        case IntegId.AUTH_HMAC_SHA1_160:
            return _hmac(iid, "HMAC_SHA1_160", "sha1", 20, 20)
        case _:  # DES-MAC, KPDK-MD5: known by number, refused
            return IntegAlgorithm(iid, iid.name.removeprefix("AUTH_"), 0, 0, supported=False)
