"""The registry's handles for per-packet and per-handshake fast paths give exactly what the
general calls give: ``AeadCipher.direct()`` (bare encrypt/decrypt with nonce salt || IV)
against ``seal``/``open``, and the one-shot ``PrfAlgorithm(key, data)`` against a prepared
PRF."""

from __future__ import annotations

import random

import pytest

from reference_impl.crypto import EncrId, IntegrityError, PrfId, encr, prf

DIRECT = [
    (EncrId.ENCR_AES_GCM_16, 128),
    (EncrId.ENCR_AES_GCM_16, 256),
    (EncrId.ENCR_AES_CCM_16, 128),
    (EncrId.ENCR_AES_CCM_8, 192),
    (EncrId.ENCR_CHACHA20_POLY1305, None),
]
NO_DIRECT = [
    (EncrId.ENCR_AES_GCM_8, 128),  # truncated tag: a GCM context per packet
    (EncrId.ENCR_AES_GCM_12, 128),
    (EncrId.ENCR_NULL_AUTH_AES_GMAC, 128),  # GMAC: the payload goes into the AAD
]


@pytest.mark.parametrize(("encr_id", "bits"), DIRECT)
def test_direct_aead_equals_seal_and_open(encr_id: int, bits: int | None) -> None:
    rng = random.Random(encr_id * 1000 + (bits or 0))
    alg = encr(encr_id, bits)
    cipher = alg.prepare_aead(rng.randbytes(alg.key_len))
    direct = cipher.direct()
    assert direct is not None and len(direct.salt) == alg.salt_len
    for n in (0, 1, 17, 1400):
        iv, pt, aad = rng.randbytes(8), rng.randbytes(n), rng.randbytes(8 + n % 5)
        sealed = cipher.seal(iv, pt, aad)
        assert direct.encrypt(direct.salt + iv, pt, aad) == sealed
        assert direct.decrypt(direct.salt + iv, sealed, aad) == pt
        bad = bytearray(sealed)
        bad[-1] ^= 1
        with pytest.raises(direct.tag_error):
            direct.decrypt(direct.salt + iv, bytes(bad), aad)
        with pytest.raises(IntegrityError):
            cipher.open(iv, bytes(bad), aad)


@pytest.mark.parametrize(("encr_id", "bits"), NO_DIRECT)
def test_no_direct_handle_where_the_wrapper_does_more(encr_id: int, bits: int) -> None:
    alg = encr(encr_id, bits)
    assert alg.prepare_aead(bytes(alg.key_len)).direct() is None


@pytest.mark.parametrize("prf_id", list(PrfId.__members__.values()))
def test_one_shot_prf_equals_prepared(prf_id: PrfId) -> None:
    if prf_id == PrfId.PRF_HMAC_TIGER:
        pytest.skip("refused by the registry")
    p = prf(prf_id)
    rng = random.Random(int(prf_id))
    for key_len in (0, 8, 16, 32, 100):
        key, data = rng.randbytes(key_len), rng.randbytes(64)
        assert p(key, data) == p.prepare(key)(data)
        prepared = p.prepare(key)
        assert prepared(data) == prepared(data)  # the keyed state is copied, not consumed
