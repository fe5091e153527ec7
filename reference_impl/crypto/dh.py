"""Key exchange methods (IKEv2 Transform Type 4; IKEv1 Group Description).

MODP groups 1, 2 (RFC 2409 §6), 5, 14-18 (RFC 3526); ECP groups 19-21 (RFC 5903); Curve25519
and Curve448 (RFC 8031). Wire forms (RFC 7296 §3.4): MODP public values and shared secrets
are big-endian and zero-padded to the length of the prime (RFC 7296 §2.14); ECP public values
are x || y without the 0x04 prefix and the shared secret is the x coordinate (RFC 5903 §7,
§9); X25519/X448 values are the raw 32/56 octets (RFC 8031 §2).

Received public values are checked as RFC 6989 requires: MODP 1 < y < p-1 (§2.1, the groups
here are safe primes), ECP a point on the curve (§2.3), X25519/X448 the exact length and a
non-zero shared secret (RFC 8031 §2.3). A failing value is ``RemoteProtocolError`` with the
IKEv2 notify INVALID_SYNTAX (IKEv1 callers map it to their own notify).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from reference_impl.crypto.base import KeyExchange
from reference_impl.crypto.ids import DhId
from reference_impl.crypto.modp_groups import MODP_PRIMES
from reference_impl.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DhGroup", "dh"]

INVALID_SYNTAX = 7  # IKEv2 Notify Message Type (RFC 7296 §3.10.1)

# Private exponent sizes in bits, at least twice the group's strength (RFC 3526 §8 table).
_MODP_EXP_BITS = {1: 256, 2: 256, 5: 256, 14: 384, 15: 384, 16: 512, 17: 512, 18: 512}


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, notify=INVALID_SYNTAX)


def _openssl_dh() -> Any:
    """``cryptography``'s finite-field DH module, or None where it is gone.

    ``cryptography`` has deprecated FFDH; while it exists we use it (OpenSSL is about 10x
    faster than ``pow``), otherwise the pure-Python path below gives the same results.
    """
    try:
        from cryptography.hazmat.primitives.asymmetric import dh as ffdh
    except ImportError:  # pragma: no cover - a future cryptography without FFDH
        return None
    return ffdh


_FFDH = _openssl_dh()


_PARAMS: dict[int, Any] = {}


def _ffdh_parameters(p: int) -> Any:
    params = _PARAMS.get(p)
    if params is None:
        params = _PARAMS[p] = _FFDH.DHParameterNumbers(p, 2).parameters()
    return params


class _ModpExchange(KeyExchange):
    """g^x mod p with g = 2. Through OpenSSL when ``cryptography`` still has FFDH (a fresh
    private value is then OpenSSL's, sized for the group), else with ``pow``."""

    __slots__ = ("_key", "_len", "_p", "_pn", "_x", "public_value")

    def __init__(self, p: int, x: int | None, exp_bits: int, use_openssl: bool) -> None:
        self._p = p
        self._len = (p.bit_length() + 7) // 8
        self._key: Any = None
        self._pn: Any = None
        if use_openssl:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = _ffdh_parameters(p)
                self._pn = params.parameter_numbers()
                if x is None:
                    self._key = params.generate_private_key()
                    nums = self._key.private_numbers()
                    x, y = nums.x, nums.public_numbers.y
                else:
                    y = pow(2, x, p)
                    pub = _FFDH.DHPublicNumbers(y, self._pn)
                    self._key = _FFDH.DHPrivateNumbers(x, pub).private_key()
        else:
            if x is None:
                x = secrets.randbits(exp_bits) | 1 << (exp_bits - 1)
            y = pow(2, x, p)
        self._x: int = x
        self.public_value = y.to_bytes(self._len)

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != self._len:
            raise _bad(f"MODP public value is {len(peer_public)} octets, expected {self._len}")
        y = int.from_bytes(peer_public)
        if not 1 < y < self._p - 1:
            raise _bad("MODP public value outside 1 < y < p-1 (RFC 6989 §2.1)")
        if self._key is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer = _FFDH.DHPublicNumbers(y, self._pn).public_key()
                try:
                    z: bytes = self._key.exchange(peer)
                except ValueError as e:
                    raise _bad(f"MODP public value rejected: {e}") from None
            return z.rjust(self._len, b"\x00")
        return pow(y, self._x, self._p).to_bytes(self._len)


class _EcpExchange(KeyExchange):
    __slots__ = ("_curve", "_flen", "_key", "public_value")

    def __init__(self, key: ec.EllipticCurvePrivateKey, flen: int) -> None:
        self._key = key
        self._curve = key.curve
        self._flen = flen
        nums = key.public_key().public_numbers()
        self.public_value = nums.x.to_bytes(flen) + nums.y.to_bytes(flen)

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 2 * self._flen:
            raise _bad(f"ECP public value is {len(peer_public)} octets, expected {2 * self._flen}")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer_public)
        except ValueError:
            raise _bad("ECP public value is not a point on the curve (RFC 6989 §2.3)") from None
        z = self._key.exchange(ec.ECDH(), peer)
        return z.rjust(self._flen, b"\x00")


class _XExchange(KeyExchange):
    """X25519 / X448 (RFC 7748, RFC 8031)."""

    __slots__ = ("_key", "_len", "_pub_cls", "public_value")

    def __init__(self, key: Any, pub_cls: Any, length: int) -> None:
        self._key = key
        self._pub_cls = pub_cls
        self._len = length
        self.public_value = key.public_key().public_bytes_raw()

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != self._len:
            raise _bad(f"public value is {len(peer_public)} octets, expected {self._len}")
        try:
            z: bytes = self._key.exchange(self._pub_cls.from_public_bytes(peer_public))
        except ValueError:
            raise _bad("all-zero shared secret (RFC 8031 §2.3)") from None
        if not any(z):  # pragma: no cover - OpenSSL already refuses it
            raise _bad("all-zero shared secret (RFC 8031 §2.3)")
        return z


_ECP = {
    DhId.ECP_256: (ec.SECP256R1, 32),
    DhId.ECP_384: (ec.SECP384R1, 48),
    DhId.ECP_521: (ec.SECP521R1, 66),
}


@dataclass(frozen=True, slots=True)
class DhGroup:
    """One key exchange method: ``public_len`` is the KE payload data length."""

    id: int
    name: str
    public_len: int
    supported: bool = True

    def generate(self) -> KeyExchange:
        """A fresh private value and its public value."""
        return self._make(None)

    def load_private(self, private: bytes) -> KeyExchange:
        """The exchange for a given private value (known-answer tests, replays of captures).

        MODP: the exponent, big-endian; ECP: the scalar d, big-endian; X25519/X448: the raw
        private key octets.
        """
        return self._make(private)

    def _make(self, private: bytes | None, *, use_openssl: bool = True) -> KeyExchange:
        gid = DhId(self.id)
        if gid in _MODP_EXP_BITS:
            p = MODP_PRIMES[gid]
            x = None
            if private is not None:
                x = int.from_bytes(private)
                if not 1 < x < p - 1:
                    raise LocalProtocolError("MODP private exponent out of range")
            return _ModpExchange(p, x, _MODP_EXP_BITS[gid], use_openssl and _FFDH is not None)
        if gid in _ECP:
            curve_cls, flen = _ECP[gid]
            if private is None:
                key = ec.generate_private_key(curve_cls())
            else:
                key = ec.derive_private_key(int.from_bytes(private), curve_cls())
            return _EcpExchange(key, flen)
        if gid is DhId.CURVE25519:
            k25519 = (
                x25519.X25519PrivateKey.generate()
                if private is None
                else x25519.X25519PrivateKey.from_private_bytes(private)
            )
            return _XExchange(k25519, x25519.X25519PublicKey, 32)
        if gid is DhId.CURVE448:
            k448 = (
                x448.X448PrivateKey.generate()
                if private is None
                else x448.X448PrivateKey.from_private_bytes(private)
            )
            return _XExchange(k448, x448.X448PublicKey, 56)
        raise LocalProtocolError(f"key exchange {self.name} is not supported")


_PUBLIC_LEN = {
    **{g: (MODP_PRIMES[g].bit_length() + 7) // 8 for g in _MODP_EXP_BITS},
    DhId.ECP_256: 64,
    DhId.ECP_384: 96,
    DhId.ECP_521: 132,
    DhId.CURVE25519: 32,
    DhId.CURVE448: 56,
}

_NAMES = {DhId.CURVE25519: "CURVE_25519", DhId.CURVE448: "CURVE_448"}


@cache
def dh(dh_id: int) -> DhGroup:
    """The key exchange method ``dh_id``; unknown IDs and NONE raise ``LocalProtocolError``."""
    try:
        gid = DhId(dh_id)
    except ValueError:
        raise LocalProtocolError(f"unknown key exchange method {dh_id}") from None
    if gid is DhId.NONE:
        raise LocalProtocolError("key exchange method NONE has no exchange")
    return DhGroup(gid, _NAMES.get(gid, gid.name), _PUBLIC_LEN[gid])
