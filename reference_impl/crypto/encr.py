"""Encryption transforms (IKEv2 Transform Type 1) for ESP and the IKE SK payload.

Key material layout (what ``key_len`` counts): the cipher key followed by the salt/nonce for
AES-CTR (RFC 3686 §5.1, 4 octets), AES-GCM (RFC 4106 §8.1, 4 octets), AES-CCM (RFC 4309 §7.1,
3 octets), ChaCha20-Poly1305 (RFC 7634 §4, 4 octets) and NULL_AUTH_AES_GMAC (RFC 4543 §5.4,
4 octets). The same descriptors serve IKEv2's encrypted payload (RFC 7296 §3.14, RFC 5282).

Per-packet cost: the AEADs keep the ``cryptography`` AEAD object (built once per SA) and do one
salt||iv concatenation and one call per packet. CBC keeps one long-lived encryptor and one
decryptor context per SA and re-seeds the chaining value by XORing the first block (see
``_CbcCipher``), which avoids building a cipher context per packet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from reference_impl.crypto.base import AeadCipher, BlockCipher, DirectAead, IntegrityError
from reference_impl.crypto.ids import EncrId
from reference_impl.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["EncrAlgorithm", "encr"]


def _bad_iv(iv: bytes, want: int) -> LocalProtocolError:
    return LocalProtocolError(f"IV must be {want} octets, got {len(iv)}")


# --- AEADs --------------------------------------------------------------------------------------


class _AesGcm16(AeadCipher):
    """AES-GCM with a 16-octet ICV (RFC 4106, RFC 5282): nonce = salt(4) || IV(8)."""

    __slots__ = ("_dec", "_enc", "_salt", "icv_len")

    def __init__(self, key: bytes, salt: bytes) -> None:
        aead = AESGCM(key)
        self._enc = aead.encrypt
        self._dec = aead.decrypt
        self._salt = salt
        self.icv_len = 16

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        return self._enc(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        try:
            return self._dec(self._salt + iv, data, aad)
        except InvalidTag:
            raise IntegrityError("AES-GCM ICV mismatch") from None

    def direct(self) -> DirectAead:
        return DirectAead(self._salt, self._enc, self._dec, InvalidTag)


class _AesGcmShort(AeadCipher):
    """AES-GCM with an 8- or 12-octet ICV (RFC 4106 §6): the GCM tag truncated.

    ``AESGCM`` only does 16-octet tags, so this builds a GCM context per packet.
    """

    __slots__ = ("_alg", "_salt", "icv_len")

    def __init__(self, key: bytes, salt: bytes, icv_len: int) -> None:
        self._alg = algorithms.AES(key)
        self._salt = salt
        self.icv_len = icv_len

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        enc = Cipher(self._alg, modes.GCM(self._salt + iv)).encryptor()
        enc.authenticate_additional_data(aad)
        ct = enc.update(plaintext) + enc.finalize()
        return ct + enc.tag[: self.icv_len]

    def open(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        n = self.icv_len
        if len(data) < n:
            raise IntegrityError("AES-GCM data shorter than the ICV")
        tag = data[-n:]
        dec = Cipher(self._alg, modes.GCM(self._salt + iv, tag, min_tag_length=n)).decryptor()
        dec.authenticate_additional_data(aad)
        pt = dec.update(data[:-n])
        try:
            dec.finalize()
        except InvalidTag:
            raise IntegrityError("AES-GCM ICV mismatch") from None
        return pt


class _AesCcm(AeadCipher):
    """AES-CCM (RFC 4309): nonce = salt(3) || IV(8), so L = 4; ICV 8, 12 or 16 octets."""

    __slots__ = ("_dec", "_enc", "_salt", "icv_len")

    def __init__(self, key: bytes, salt: bytes, icv_len: int) -> None:
        aead = AESCCM(key, tag_length=icv_len)
        self._enc = aead.encrypt
        self._dec = aead.decrypt
        self._salt = salt
        self.icv_len = icv_len

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        return self._enc(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        try:
            return self._dec(self._salt + iv, data, aad)
        except InvalidTag:
            raise IntegrityError("AES-CCM ICV mismatch") from None

    def direct(self) -> DirectAead:
        return DirectAead(self._salt, self._enc, self._dec, InvalidTag)


class _ChaCha20Poly1305(AeadCipher):
    """ChaCha20-Poly1305 (RFC 7634 §2): nonce = salt(4) || IV(8), ICV 16 octets."""

    __slots__ = ("_dec", "_enc", "_salt", "icv_len")

    def __init__(self, key: bytes, salt: bytes) -> None:
        aead = ChaCha20Poly1305(key)
        self._enc = aead.encrypt
        self._dec = aead.decrypt
        self._salt = salt
        self.icv_len = 16

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        return self._enc(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        try:
            return self._dec(self._salt + iv, data, aad)
        except InvalidTag:
            raise IntegrityError("ChaCha20-Poly1305 ICV mismatch") from None

    def direct(self) -> DirectAead:
        return DirectAead(self._salt, self._enc, self._dec, InvalidTag)


class _NullAuthAesGmac(AeadCipher):
    """ENCR_NULL_AUTH_AES_GMAC (RFC 4543 §3): no confidentiality, GMAC over everything.

    The GMAC AAD is ``aad || IV || plaintext`` (RFC 4543 §3.3, Figure 4: SPI, sequence
    number, IV and the whole ESP payload with padding, pad length and next header) and the
    GCM plaintext is empty. ``seal`` returns ``plaintext || ICV`` (the payload travels in the
    clear), ``open`` returns the payload after checking the ICV.
    """

    __slots__ = ("_dec", "_enc", "_salt", "icv_len")

    def __init__(self, key: bytes, salt: bytes) -> None:
        aead = AESGCM(key)
        self._enc = aead.encrypt
        self._dec = aead.decrypt
        self._salt = salt
        self.icv_len = 16

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        return plaintext + self._enc(self._salt + iv, b"", aad + iv + plaintext)

    def open(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        if len(data) < 16:
            raise IntegrityError("NULL_AUTH_AES_GMAC data shorter than the ICV")
        payload = data[:-16]
        try:
            self._dec(self._salt + iv, data[-16:], aad + iv + payload)
        except InvalidTag:
            raise IntegrityError("AES-GMAC ICV mismatch") from None
        return payload


# --- confidentiality-only ciphers --------------------------------------------------------------


class _CbcCipher(BlockCipher):
    """CBC mode (AES-CBC RFC 3602, 3DES-CBC RFC 2451) over long-lived OpenSSL contexts.

    A CBC context, after processing data, chains from the last ciphertext block C it handled.
    Encrypting P0 XOR IV XOR C as the first block therefore gives E(P0 XOR IV), exactly the
    first block of a fresh CBC encryption under IV; the rest chains as usual. Decrypting through
    the context gives D(C0) XOR C for the first block, which is corrected with XOR C XOR IV.
    So one encryptor and one decryptor serve the whole SA, and each packet costs one
    ``update`` call plus a one-block XOR. Inputs must be whole blocks: a partial block would
    stay buffered in the context and desynchronise it, so it is refused before ``update``.
    """

    __slots__ = ("_bs", "_dec", "_dec_prev", "_enc", "_enc_prev")

    def __init__(self, algorithm: Any, block_size: int) -> None:
        zero_iv = bytes(block_size)
        self._bs = block_size
        self._enc = Cipher(algorithm, modes.CBC(zero_iv)).encryptor().update
        self._dec = Cipher(algorithm, modes.CBC(zero_iv)).decryptor().update
        self._enc_prev = 0  # last ciphertext block the encryptor chained from, as an int
        self._dec_prev = 0

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        bs = self._bs
        n = len(plaintext)
        if len(iv) != bs:
            raise _bad_iv(iv, bs)
        if n == 0 or n % bs:
            raise LocalProtocolError(f"CBC plaintext length {n} is not a multiple of {bs}")
        first = (int.from_bytes(plaintext[:bs]) ^ int.from_bytes(iv) ^ self._enc_prev).to_bytes(bs)
        out: bytes = self._enc(first + plaintext[bs:])
        self._enc_prev = int.from_bytes(out[-bs:])
        return out

    def decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        bs = self._bs
        n = len(ciphertext)
        if len(iv) != bs:
            raise _bad_iv(iv, bs)
        if n == 0 or n % bs:
            raise RemoteProtocolError(f"CBC ciphertext length {n} is not a multiple of {bs}")
        out: bytes = self._dec(ciphertext)
        first = (int.from_bytes(out[:bs]) ^ int.from_bytes(iv) ^ self._dec_prev).to_bytes(bs)
        self._dec_prev = int.from_bytes(ciphertext[-bs:])
        return first + out[bs:]


class _AesCtr(BlockCipher):
    """AES-CTR (RFC 3686 §4): counter block = nonce(4) || IV(8) || block counter from 1."""

    __slots__ = ("_alg", "_nonce")

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._alg = algorithms.AES(key)
        self._nonce = nonce

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        if len(iv) != 8:
            raise _bad_iv(iv, 8)
        ctx = Cipher(self._alg, modes.CTR(self._nonce + iv + b"\x00\x00\x00\x01")).encryptor()
        out: bytes = ctx.update(plaintext)
        return out

    def decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        return self.encrypt(iv, ciphertext)


class _Null(BlockCipher):
    """ENCR_NULL (RFC 2410): identity, no IV."""

    __slots__ = ()

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        if iv:
            raise _bad_iv(iv, 0)
        return plaintext

    def decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        if iv:
            raise _bad_iv(iv, 0)
        return ciphertext


def _triple_des(key: bytes) -> Any:
    # 3DES lives in cryptography's "decrepit" package since 43; older releases had it in
    # algorithms. Legacy interop only (RFC 2451).
    cls: Any
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES as cls
    except ImportError:  # pragma: no cover - cryptography < 43
        cls = getattr(algorithms, "TripleDES")  # noqa: B009
    return cls(key)


# --- descriptors --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncrAlgorithm:
    """What a caller needs to size keys and packets for one encryption transform.

    ``key_len`` is the octets of keying material to take from the KDF, *including* the salt
    (``salt_len`` trailing octets). ``block_size`` is what ESP pads the payload to (before its
    own 4-octet alignment, RFC 4303 §2.4); ``iv_len`` the explicit per-packet IV; ``icv_len``
    the tag an AEAD appends (0 otherwise). ``supported`` is False for transforms known by
    number only so that they can be named and refused (DES, IDEA, Blowfish, ...).
    """

    id: int
    name: str
    key_bits: int | None
    key_len: int
    salt_len: int
    block_size: int
    iv_len: int
    icv_len: int
    aead: bool
    supported: bool = True
    _factory: Callable[[bytes, bytes], AeadCipher | BlockCipher] | None = None

    def prepare(self, key: bytes) -> AeadCipher | BlockCipher:
        """Build the per-SA cipher state from ``key_len`` octets of keying material."""
        if not self.supported or self._factory is None:
            raise LocalProtocolError(f"encryption transform {self.name} is refused (insecure)")
        if len(key) != self.key_len:
            raise LocalProtocolError(
                f"{self.name} needs {self.key_len} octets of key material, got {len(key)}"
            )
        split = self.key_len - self.salt_len
        return self._factory(key[:split], key[split:])

    def prepare_aead(self, key: bytes) -> AeadCipher:
        """``prepare`` for callers that need an AEAD (type-narrowed)."""
        c = self.prepare(key)
        if not isinstance(c, AeadCipher):
            raise LocalProtocolError(f"{self.name} is not an AEAD")
        return c

    def prepare_block(self, key: bytes) -> BlockCipher:
        """``prepare`` for callers that need a confidentiality-only cipher (type-narrowed)."""
        c = self.prepare(key)
        if not isinstance(c, BlockCipher):
            raise LocalProtocolError(f"{self.name} is an AEAD")
        return c


_AES_BITS = (128, 192, 256)


def _aes_bits(encr_id: int, key_bits: int | None) -> int:
    if key_bits is None:
        raise LocalProtocolError(f"{EncrId(encr_id).name} needs a Key Length attribute")
    if key_bits not in _AES_BITS:
        raise LocalProtocolError(f"{EncrId(encr_id).name}: unsupported key length {key_bits}")
    return key_bits


def _refused(
    encr_id: EncrId, name: str, key_bits: int | None, key_len: int, block: int
) -> EncrAlgorithm:
    return EncrAlgorithm(
        id=encr_id,
        name=name,
        key_bits=key_bits,
        key_len=key_len,
        salt_len=0,
        block_size=block,
        iv_len=block,
        icv_len=0,
        aead=False,
        supported=False,
    )


@cache
def encr(encr_id: int, key_bits: int | None = None) -> EncrAlgorithm:
    """The encryption transform ``encr_id`` (IKEv2 Transform Type 1) with ``key_bits``.

    ``key_bits`` is the Key Length attribute (RFC 7296 §3.3.5): required for the AES modes,
    optional (and then fixed) for the others. Unknown IDs or key sizes raise
    ``LocalProtocolError``.
    """
    try:
        eid = EncrId(encr_id)
    except ValueError:
        raise LocalProtocolError(f"unknown encryption transform {encr_id}") from None

    if eid is EncrId.ENCR_AES_CBC:
        bits = _aes_bits(eid, key_bits)
        return EncrAlgorithm(
            id=eid,
            name=f"AES_CBC_{bits}",
            key_bits=bits,
            key_len=bits // 8,
            salt_len=0,
            block_size=16,
            iv_len=16,
            icv_len=0,
            aead=False,
            _factory=lambda k, _s: _CbcCipher(algorithms.AES(k), 16),
        )
    if eid is EncrId.ENCR_AES_CTR:
        bits = _aes_bits(eid, key_bits)
        return EncrAlgorithm(
            id=eid,
            name=f"AES_CTR_{bits}",
            key_bits=bits,
            key_len=bits // 8 + 4,
            salt_len=4,
            block_size=1,
            iv_len=8,
            icv_len=0,
            aead=False,
            _factory=_AesCtr,
        )
    if eid in (EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_16):
        bits = _aes_bits(eid, key_bits)
        icv = {EncrId.ENCR_AES_GCM_8: 8, EncrId.ENCR_AES_GCM_12: 12}.get(eid, 16)
        gcm_factory: Callable[[bytes, bytes], AeadCipher] = (
            _AesGcm16 if icv == 16 else (lambda k, s: _AesGcmShort(k, s, icv))
        )
        return EncrAlgorithm(
            id=eid,
            name=f"AES_GCM_{icv}_{bits}",
            key_bits=bits,
            key_len=bits // 8 + 4,
            salt_len=4,
            block_size=1,
            iv_len=8,
            icv_len=icv,
            aead=True,
            _factory=gcm_factory,
        )
    if eid in (EncrId.ENCR_AES_CCM_8, EncrId.ENCR_AES_CCM_12, EncrId.ENCR_AES_CCM_16):
        bits = _aes_bits(eid, key_bits)
        icv = {EncrId.ENCR_AES_CCM_8: 8, EncrId.ENCR_AES_CCM_12: 12}.get(eid, 16)
        return EncrAlgorithm(
            id=eid,
            name=f"AES_CCM_{icv}_{bits}",
            key_bits=bits,
            key_len=bits // 8 + 3,
            salt_len=3,
            block_size=1,
            iv_len=8,
            icv_len=icv,
            aead=True,
            _factory=lambda k, s: _AesCcm(k, s, icv),
        )
    if eid is EncrId.ENCR_CHACHA20_POLY1305:
        if key_bits not in (None, 256):
            raise LocalProtocolError(f"CHACHA20_POLY1305: unsupported key length {key_bits}")
        return EncrAlgorithm(
            id=eid,
            name="CHACHA20_POLY1305",
            key_bits=256,
            key_len=36,
            salt_len=4,
            block_size=1,
            iv_len=8,
            icv_len=16,
            aead=True,
            _factory=_ChaCha20Poly1305,
        )
    if eid is EncrId.ENCR_NULL_AUTH_AES_GMAC:
        bits = _aes_bits(eid, key_bits)
        return EncrAlgorithm(
            id=eid,
            name=f"NULL_AUTH_AES_GMAC_{bits}",
            key_bits=bits,
            key_len=bits // 8 + 4,
            salt_len=4,
            block_size=1,
            iv_len=8,
            icv_len=16,
            aead=True,
            _factory=_NullAuthAesGmac,
        )
    if eid is EncrId.ENCR_NULL:
        if key_bits not in (None, 0):
            raise LocalProtocolError(f"NULL: unsupported key length {key_bits}")
        return EncrAlgorithm(eid, "NULL", 0, 0, 0, 1, 0, 0, False, _factory=lambda _k, _s: _Null())
    if eid is EncrId.ENCR_3DES:
        if key_bits not in (None, 192):
            raise LocalProtocolError(f"3DES_CBC: unsupported key length {key_bits}")
        return EncrAlgorithm(
            id=eid,
            name="3DES_CBC",
            key_bits=192,
            key_len=24,
            salt_len=0,
            block_size=8,
            iv_len=8,
            icv_len=0,
            aead=False,
            _factory=lambda k, _s: _CbcCipher(_triple_des(k), 8),
        )
    # Known by number so they can be named in logs and refused, never used.
    if eid in (EncrId.ENCR_DES, EncrId.ENCR_DES_IV64, EncrId.ENCR_DES_IV32):
        return _refused(eid, eid.name.removeprefix("ENCR_") + "_CBC", 64, 8, 8)
    bits = key_bits if key_bits is not None else 128
    if eid is EncrId.ENCR_3IDEA:
        bits = key_bits if key_bits is not None else 384
    name = eid.name.removeprefix("ENCR_")
    if key_bits is not None:
        name = f"{name}_{key_bits}"
    return _refused(eid, name, bits, bits // 8, 8)
