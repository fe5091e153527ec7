"""AES-GMAC (RFC 4543): ENCR_NULL_AUTH_AES_GMAC for ESP and AUTH_AES_*_GMAC for AH.

RFC 4543 §6 points to the GCM specification's Appendix B for vectors; those with an empty
plaintext (test cases 1, 7, 13: the tag over nothing) are GMAC known answers. For non-empty
input, the GMAC is checked against an independent GHASH/GCTR written here from NIST SP 800-38D
§6.4-§7.1 (only the AES block function is shared with the implementation under test).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from reference_impl.crypto import EncrId, IntegId, IntegrityError, encr, integ

H = bytes.fromhex


def _aes(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _gf_mult(x: int, y: int) -> int:
    """Multiplication in GF(2^128) with GCM's bit order (SP 800-38D §6.3, Algorithm 1)."""
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def _ghash(h: int, data: bytes) -> int:
    x = 0
    for i in range(0, len(data), 16):
        x = _gf_mult(x ^ int.from_bytes(data[i : i + 16]), h)
    return x


def reference_gmac(key: bytes, nonce12: bytes, aad: bytes) -> bytes:
    """GCM-AE_K(IV, P = empty, A) of SP 800-38D §7.1: the 128-bit tag."""
    h = int.from_bytes(_aes(key, bytes(16)))
    padded = aad + bytes(-len(aad) % 16) + (8 * len(aad)).to_bytes(8) + bytes(8)
    s = _ghash(h, padded)
    j0 = nonce12 + b"\x00\x00\x00\x01"
    return (int.from_bytes(_aes(key, j0)) ^ s).to_bytes(16)


# GCM spec (McGrew & Viega) Appendix B, test cases 1, 7, 13: K = 0, IV = 0, P and A empty.
@pytest.mark.parametrize(
    ("iid", "tag"),
    [
        (IntegId.AUTH_AES_128_GMAC, "58e2fccefa7e3061367f1d57a4e7455a"),
        (IntegId.AUTH_AES_192_GMAC, "cd33b28ac773f74ba00ed1f312572435"),
        (IntegId.AUTH_AES_256_GMAC, "530f8afbc74536b9a963b4f1c4cb738b"),
    ],
)
def test_ah_gmac_gcm_spec_empty_vectors(iid: IntegId, tag: str) -> None:
    alg = integ(iid)
    m = alg.prepare(bytes(alg.key_len))  # key || 4-octet salt, all zero
    assert m.compute_iv(bytes(8), b"").hex() == tag
    assert m.verify_iv(bytes(8), b"", H(tag))
    assert H(tag) == reference_gmac(bytes(alg.key_len - 4), bytes(12), b"")


@pytest.mark.parametrize("bits", [128, 192, 256])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 333])
def test_ah_gmac_matches_reference(bits: int, size: int) -> None:
    iid = {128: IntegId.AUTH_AES_128_GMAC, 192: IntegId.AUTH_AES_192_GMAC}.get(
        bits, IntegId.AUTH_AES_256_GMAC
    )
    key = bytes(range(bits // 8)) + b"SALT"
    iv = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    data = bytes((7 * i) & 0xFF for i in range(size))  # the AH-authenticated data
    m = integ(iid).prepare(key)
    want = reference_gmac(key[:-4], b"SALT" + iv, data)
    assert m.compute_iv(iv, data) == want
    assert m.verify_iv(iv, data, want)
    assert not m.verify_iv(iv, data + b"\x00", want)
    assert not m.verify_iv(iv, data, want[:-1] + bytes([want[-1] ^ 1]))
    assert not m.verify_iv(iv, data, want[:12])


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_esp_null_auth_aes_gmac_matches_reference(bits: int) -> None:
    """RFC 4543 §3.3 / Figure 4: the GMAC AAD is SPI | SN | IV | payload | padding | PL | NH,
    the payload travels in clear, the ICV is 16 octets."""
    key = bytes(range(100, 100 + bits // 8)) + b"\xca\xfe\xba\xbe"
    spi_sn = H("0000432100000001")
    iv = H("e96e8c08ab465763")
    payload = H("4500003c0000000040017c91c0a80101c0a80102") + bytes(20) + H("0102020401")
    c = encr(EncrId.ENCR_NULL_AUTH_AES_GMAC, bits).prepare_aead(key)
    sealed = c.seal(iv, payload, spi_sn)
    assert sealed[:-16] == payload
    assert sealed[-16:] == reference_gmac(key[:-4], key[-4:] + iv, spi_sn + iv + payload)
    assert c.open(iv, sealed, spi_sn) == payload
    with pytest.raises(IntegrityError):
        c.open(iv, sealed[:3] + b"X" + sealed[4:], spi_sn)
    with pytest.raises(IntegrityError):
        c.open(iv, sealed[:15], spi_sn)
