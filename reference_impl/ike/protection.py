"""The Encrypted and Authenticated payload (RFC 7296 §3.14) and its fragments (RFC 7383).

:class:`SkProtection` holds the prepared ciphers and MACs of one IKE SA (built once from
SK_e/SK_a, reused for every message) and turns inner payloads into protected datagrams and
back. AEAD transforms follow RFC 5282 (8-octet explicit IV, the associated data is everything
before the IV); the others encrypt then MAC the whole message up to the ICV.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import cast

from reference_impl.crypto import (
    AeadCipher,
    BlockCipher,
    EncrAlgorithm,
    IkeKeys,
    IntegAlgorithm,
    IntegrityError,
    Mac,
)
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.ike.enums import PayloadType
from reference_impl.ike.messages import HEADER, HEADER_LEN, Message
from reference_impl.ike.payloads import (
    EncryptedFragmentPayload,
    EncryptedPayload,
    syntax_error,
)

_GENERIC = struct.Struct("!BBH")
_SKF = struct.Struct("!BBHHH")
_SK = PayloadType.SK
_SKF_T = PayloadType.SKF


class SkProtection:
    """Prepared SK payload protection of one IKE SA, from the local end's point of view.

    ``initiator`` says whether we are the original initiator of the IKE SA: we then protect
    with SK_ei/SK_ai and open with SK_er/SK_ar (RFC 7296 §2.14).
    """

    __slots__ = (
        "_aead",
        "_block",
        "_counter",
        "_direct_in",
        "_direct_out",
        "_in_aead",
        "_in_block",
        "_in_mac",
        "_out_aead",
        "_out_block",
        "_out_mac",
        "_random_iv",
        "_rng",
        "encr",
        "icv_len",
        "integ",
        "iv_len",
    )

    def __init__(
        self,
        encr: EncrAlgorithm,
        integ: IntegAlgorithm | None,
        keys: IkeKeys,
        initiator: bool,
        rng: Callable[[int], bytes],
    ) -> None:
        self.encr = encr
        self.integ = integ
        self._rng = rng
        self._aead = encr.aead
        ek_out, ek_in = (keys.sk_ei, keys.sk_er) if initiator else (keys.sk_er, keys.sk_ei)
        out_c, in_c = encr.prepare(ek_out), encr.prepare(ek_in)
        # Typed per kind once here, so the per-message paths need no checks or casts (the
        # descriptor's flag says which kind ``prepare`` built: no ABC isinstance checks).
        aead = encr.aead
        self._out_aead = cast(AeadCipher, out_c) if aead else None
        self._in_aead = cast(AeadCipher, in_c) if aead else None
        self._out_block = None if aead else cast(BlockCipher, out_c)
        self._in_block = None if aead else cast(BlockCipher, in_c)
        # The bare AEAD calls when the registry offers them (GCM-16, CCM, ChaCha20-Poly1305):
        # one call per message instead of the wrapper's two.
        self._direct_out = self._out_aead.direct() if self._out_aead is not None else None
        self._direct_in = self._in_aead.direct() if self._in_aead is not None else None
        self._out_mac: Mac | None = None
        self._in_mac: Mac | None = None
        if encr.aead:
            self.icv_len = encr.icv_len
        else:
            if integ is None:
                raise LocalProtocolError(f"{encr.name} needs an integrity transform")
            ak_out, ak_in = (keys.sk_ai, keys.sk_ar) if initiator else (keys.sk_ar, keys.sk_ai)
            self._out_mac = integ.prepare(ak_out)
            self._in_mac = integ.prepare(ak_in)
            self.icv_len = integ.icv_len
        self.iv_len = encr.iv_len
        self._block = max(encr.block_size, 1)
        # CBC needs unpredictable IVs (RFC 7296 §3.14); counter-based modes need unique ones
        # (RFC 5282 §3.1, RFC 5930 §2), which a counter guarantees.
        self._random_iv = not encr.aead and self._block > 1
        self._counter = 0

    def _iv(self) -> bytes:
        if self._random_iv:
            return self._rng(self.iv_len)
        self._counter += 1
        return self._counter.to_bytes(self.iv_len, "big")

    def _pad(self, inner: bytes) -> bytes:
        if self._aead:
            return inner + b"\0"
        pad = (-(len(inner) + 1)) % self._block
        return inner + bytes(pad) + bytes((pad,))

    def overhead(self) -> int:
        """Octets an SK payload adds around its plaintext, besides padding."""
        return 4 + self.iv_len + 1 + self.icv_len

    def _seal(self, head: bytes, plaintext: bytes) -> bytes:
        iv = self._iv()
        direct = self._direct_out
        if direct is not None:  # RFC 5282 §3: nonce = salt || IV, AAD = header .. SK header
            return head + iv + direct.encrypt(direct.salt + iv, plaintext, head)
        aead = self._out_aead
        if aead is not None:
            return head + iv + aead.seal(iv, plaintext, head)
        block, mac = self._out_block, self._out_mac
        assert block is not None and mac is not None
        body = head + iv + block.encrypt(iv, plaintext)
        return body + mac.compute(body)

    def seal(self, msg: Message, inner_type: int, inner: bytes) -> bytes:
        """A whole datagram: ``msg``'s header and one SK payload around ``inner``."""
        plaintext = self._pad(inner)
        sk_len = 4 + self.iv_len + len(plaintext) + self.icv_len
        head = HEADER.pack(
            msg.spi_i,
            msg.spi_r,
            _SK,
            msg.version,
            msg.exchange_type,
            msg.flags,
            msg.message_id,
            HEADER_LEN + sk_len,
        ) + _GENERIC.pack(inner_type, 0, sk_len)
        return self._seal(head, plaintext)

    def max_fragment_plaintext(self, max_datagram: int) -> int:
        """Largest inner chunk per fragment so each SKF datagram fits ``max_datagram``."""
        room = max_datagram - HEADER_LEN - 8 - self.iv_len - self.icv_len
        if not self._aead:
            room -= room % self._block
        return room - 1

    def seal_fragments(
        self, msg: Message, inner_type: int, inner: bytes, max_datagram: int
    ) -> list[bytes]:
        """RFC 7383 §2.5: split ``inner`` into SKF datagrams no larger than ``max_datagram``."""
        chunk = self.max_fragment_plaintext(max_datagram)
        if chunk < 1:
            raise LocalProtocolError(f"fragment size {max_datagram} is too small")
        pieces = [inner[i : i + chunk] for i in range(0, len(inner), chunk)] or [b""]
        total = len(pieces)
        out: list[bytes] = []
        for n, piece in enumerate(pieces, 1):
            plaintext = self._pad(piece)
            skf_len = 8 + self.iv_len + len(plaintext) + self.icv_len
            head = HEADER.pack(
                msg.spi_i,
                msg.spi_r,
                _SKF_T,
                msg.version,
                msg.exchange_type,
                msg.flags,
                msg.message_id,
                HEADER_LEN + skf_len,
            ) + _SKF.pack(inner_type if n == 1 else 0, 0, skf_len, n, total)
            out.append(self._seal(head, plaintext))
        return out

    def open(self, datagram: bytes, sk: EncryptedPayload | EncryptedFragmentPayload) -> bytes:
        """Verify and decrypt the SK/SKF payload that ends ``datagram``; return the inner
        payload octets (padding removed).

        A failed ICV raises ``RemoteProtocolError`` without a notify: such messages are
        dropped silently (RFC 7296 §2.21.2 / §3.14). Bad padding after a good ICV is
        INVALID_SYNTAX.
        """
        body = sk.data
        iv_len = self.iv_len
        icv_len = self.icv_len
        if len(body) < iv_len + icv_len + 1:
            raise RemoteProtocolError("Encrypted payload shorter than its IV and ICV")
        iv = body[:iv_len]
        aead = self._in_aead
        direct = self._direct_in
        if direct is not None:
            aad = datagram[: len(datagram) - len(body)]
            try:
                plaintext = direct.decrypt(direct.salt + iv, body[iv_len:], aad)
            except direct.tag_error:
                raise RemoteProtocolError(
                    "integrity check of the Encrypted payload failed"
                ) from None
        elif aead is not None:
            aad = datagram[: len(datagram) - len(body)]
            try:
                plaintext = aead.open(iv, body[iv_len:], aad)
            except IntegrityError:
                raise RemoteProtocolError(
                    "integrity check of the Encrypted payload failed"
                ) from None
        else:
            cipher, mac = self._in_block, self._in_mac
            assert cipher is not None and mac is not None
            if not mac.verify(datagram[:-icv_len], datagram[-icv_len:]):
                raise RemoteProtocolError("integrity check of the Encrypted payload failed")
            ct = body[iv_len:-icv_len]
            if len(ct) % self._block:
                raise syntax_error("ciphertext is not a multiple of the block size")
            try:
                plaintext = cipher.decrypt(iv, ct)
            except (RemoteProtocolError, ValueError):
                raise syntax_error("undecryptable Encrypted payload") from None
        pad = plaintext[-1] if plaintext else 0
        if not plaintext or pad + 1 > len(plaintext):
            raise syntax_error("bad Pad Length in the Encrypted payload")
        return plaintext[: len(plaintext) - pad - 1]
