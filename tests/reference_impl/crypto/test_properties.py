"""Property tests (hypothesis): every AEAD and every cipher+integrity pair round-trips, and any
single flipped bit in what is authenticated makes verification fail."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.crypto import EncrId, IntegId, IntegrityError, encr, integ

AEADS = [
    (eid, bits)
    for eid in (
        EncrId.ENCR_AES_GCM_8,
        EncrId.ENCR_AES_GCM_12,
        EncrId.ENCR_AES_GCM_16,
        EncrId.ENCR_AES_CCM_8,
        EncrId.ENCR_AES_CCM_12,
        EncrId.ENCR_AES_CCM_16,
        EncrId.ENCR_NULL_AUTH_AES_GMAC,
    )
    for bits in (128, 192, 256)
] + [(EncrId.ENCR_CHACHA20_POLY1305, 256)]

CIPHERS = [
    (EncrId.ENCR_AES_CBC, 128),
    (EncrId.ENCR_AES_CBC, 192),
    (EncrId.ENCR_AES_CBC, 256),
    (EncrId.ENCR_AES_CTR, 128),
    (EncrId.ENCR_AES_CTR, 256),
    (EncrId.ENCR_3DES, None),
    (EncrId.ENCR_NULL, None),
]
INTEGS = [
    IntegId.AUTH_HMAC_MD5_96,
    IntegId.AUTH_HMAC_SHA1_96,
    IntegId.AUTH_AES_XCBC_96,
    IntegId.AUTH_AES_CMAC_96,
    IntegId.AUTH_HMAC_SHA2_256_128,
    IntegId.AUTH_HMAC_SHA2_384_192,
    IntegId.AUTH_HMAC_SHA2_512_256,
]
PAIRS = [(c, i) for c in CIPHERS for i in INTEGS]


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@pytest.mark.parametrize(("eid", "bits"), AEADS, ids=lambda x: str(x))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_aead_round_trip_and_tamper(eid: EncrId, bits: int, data: st.DataObject) -> None:
    alg = encr(eid, bits)
    key = data.draw(st.binary(min_size=alg.key_len, max_size=alg.key_len), "key")
    iv = data.draw(st.binary(min_size=8, max_size=8), "iv")
    pt = data.draw(st.binary(max_size=300), "plaintext")
    aad = data.draw(st.binary(min_size=8, max_size=12), "aad")
    c = alg.prepare_aead(key)
    sealed = c.seal(iv, pt, aad)
    assert len(sealed) == len(pt) + alg.icv_len
    assert c.open(iv, sealed, aad) == pt
    # A second prepared object from the same key agrees (no hidden per-object state).
    assert alg.prepare_aead(key).open(iv, sealed, aad) == pt
    where = data.draw(st.sampled_from(["sealed", "aad", "iv"]), "where")
    if where == "sealed":
        bit = data.draw(st.integers(0, 8 * len(sealed) - 1), "bit")
        args = (iv, _flip(sealed, bit), aad)
    elif where == "aad":
        bit = data.draw(st.integers(0, 8 * len(aad) - 1), "bit")
        args = (iv, sealed, _flip(aad, bit))
    else:
        bit = data.draw(st.integers(0, 63), "bit")
        args = (_flip(iv, bit), sealed, aad)
    with pytest.raises(IntegrityError):
        c.open(*args)


@pytest.mark.parametrize(("cipher", "iid"), PAIRS, ids=lambda x: str(x))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_cipher_integrity_pair(
    cipher: tuple[EncrId, int | None], iid: IntegId, data: st.DataObject
) -> None:
    """ESP with a separate integrity transform (RFC 4303 §3.3.2.1, §3.4.4): ICV over
    SPI | SN | IV | ciphertext, checked before decryption."""
    ealg, ialg = encr(*cipher), integ(iid)
    ekey = data.draw(st.binary(min_size=ealg.key_len, max_size=ealg.key_len), "ekey")
    ikey = data.draw(st.binary(min_size=ialg.key_len, max_size=ialg.key_len), "ikey")
    iv = data.draw(st.binary(min_size=ealg.iv_len, max_size=ealg.iv_len), "iv")
    blocks = data.draw(st.integers(1, 20), "blocks")
    pt = data.draw(st.binary(min_size=blocks * 8, max_size=blocks * 8), "plaintext")
    if ealg.block_size == 16 and len(pt) % 16:
        pt += bytes(8)
    header = data.draw(st.binary(min_size=8, max_size=8), "spi_sn")
    c, m = ealg.prepare_block(ekey), ialg.prepare(ikey)
    ct = c.encrypt(iv, pt)
    assert len(ct) == len(pt)
    packet = header + iv + ct
    icv = m.compute(packet)
    assert m.verify(packet, icv)
    assert c.decrypt(iv, ct) == pt
    bit = data.draw(st.integers(0, 8 * (len(packet) + len(icv)) - 1), "bit")
    tampered = _flip(packet + icv, bit)
    assert not m.verify(tampered[: len(packet)], tampered[len(packet) :])
