"""The prepared-object interfaces the registry hands out (one per SA, reused per packet).

Protocol code only ever holds these abstract types; the concrete classes live next to their
algorithm descriptors (``encr.py``, ``integ.py``, ``prf.py``, ``dh.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple


class IntegrityError(Exception):
    """An ICV / authentication tag did not verify (the packet must be dropped and counted)."""


class DirectAead(NamedTuple):
    """The bare AEAD calls behind a prepared ``AeadCipher``, for per-packet fast paths that
    cannot afford the wrapper's extra call (the ESP data path).

    ``encrypt(nonce, plaintext, aad)`` returns ciphertext || ICV and ``decrypt(nonce, data,
    aad)`` the plaintext, where ``nonce = salt || iv`` (the caller builds it: it knows the IV
    and can pack both at once); a failed ICV raises ``tag_error`` (not ``IntegrityError``:
    catching it is the caller's job). No argument is checked: the caller guarantees an
    8-octet IV.
    """

    salt: bytes
    encrypt: Callable[[bytes, bytes, bytes], bytes]
    decrypt: Callable[[bytes, bytes, bytes], bytes]
    tag_error: type[Exception]


class AeadCipher(ABC):
    """A combined-mode cipher (GCM, CCM, ChaCha20-Poly1305, NULL_AUTH_AES_GMAC) bound to a key.

    ``iv`` is the explicit per-packet IV carried on the wire (8 octets); the implicit salt from
    the key material is added internally (RFC 4106 §4, RFC 4309 §4, RFC 7634 §2, RFC 4543 §3.2).
    ``aad`` is the ESP AAD (SPI || sequence number, or SPI || ESN, RFC 4106 §5) or the IKEv2
    associated data (RFC 5282 §5.1).
    """

    __slots__ = ()

    icv_len: int

    @abstractmethod
    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Return ciphertext || ICV."""

    @abstractmethod
    def open(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        """Verify and decrypt ``ciphertext || ICV``; raise ``IntegrityError`` if it fails."""

    def direct(self) -> DirectAead | None:
        """The bare calls when ``seal``/``open`` are exactly ``encrypt``/``decrypt`` with the
        nonce ``salt || iv`` (GCM-16, CCM, ChaCha20-Poly1305), else None."""
        return None


class BlockCipher(ABC):
    """A confidentiality-only cipher (AES-CBC, AES-CTR, 3DES-CBC, NULL) bound to a key.

    Input lengths must already be padded to the descriptor's ``block_size``; anything else is
    a ``LocalProtocolError`` (encrypt) or a ``RemoteProtocolError`` (decrypt).
    """

    __slots__ = ()

    @abstractmethod
    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes: ...

    @abstractmethod
    def decrypt(self, iv: bytes, ciphertext: bytes) -> bytes: ...


class Mac(ABC):
    """An integrity transform bound to a key; ``compute`` returns the truncated ICV."""

    __slots__ = ()

    icv_len: int

    @abstractmethod
    def compute(self, data: bytes) -> bytes: ...

    @abstractmethod
    def verify(self, data: bytes, icv: bytes) -> bool:
        """Constant-time comparison of ``compute(data)`` with ``icv``."""

    def compute_iv(self, iv: bytes, data: bytes) -> bytes:
        """ICV for transforms that take a per-packet IV (AH with AES-GMAC, RFC 4543 §4)."""
        from reference_impl.errors import LocalProtocolError

        raise LocalProtocolError(f"{type(self).__name__} takes no IV")

    def verify_iv(self, iv: bytes, data: bytes, icv: bytes) -> bool:
        from reference_impl.errors import LocalProtocolError

        raise LocalProtocolError(f"{type(self).__name__} takes no IV")


class Prf(ABC):
    """A pseudorandom function bound to a key: ``prf(key, data)`` of RFC 7296 §2.13."""

    __slots__ = ()

    @abstractmethod
    def __call__(self, data: bytes) -> bytes: ...


class KeyExchange(ABC):
    """One side of one Diffie-Hellman exchange (a fresh private value per exchange)."""

    __slots__ = ()

    public_value: bytes
    """Our public value in the IKE wire form (KE payload data, RFC 7296 §3.4)."""

    @abstractmethod
    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir in the IKE form; a bad ``peer_public`` raises ``RemoteProtocolError``
        (RFC 6989 checks), with notify INVALID_SYNTAX."""
