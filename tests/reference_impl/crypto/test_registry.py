"""The registry's descriptors: sizes per RFC, refusals, IKEv1 mappings, misuse errors."""

from __future__ import annotations

import pytest

from reference_impl.crypto import (
    AeadCipher,
    BlockCipher,
    DhId,
    EncrId,
    IntegId,
    PrfId,
    dh,
    encr,
    ids,
    integ,
    prf,
)
from reference_impl.errors import LocalProtocolError, RemoteProtocolError

# (id, key_bits) -> (name, key_len incl. salt, salt_len, block_size, iv_len, icv_len, aead)
ENCR_SIZES = {
    (12, 128): ("AES_CBC_128", 16, 0, 16, 16, 0, False),  # RFC 3602 §2-§3
    (12, 192): ("AES_CBC_192", 24, 0, 16, 16, 0, False),
    (12, 256): ("AES_CBC_256", 32, 0, 16, 16, 0, False),
    (13, 128): ("AES_CTR_128", 20, 4, 1, 8, 0, False),  # RFC 3686 §2, §5.1
    (13, 256): ("AES_CTR_256", 36, 4, 1, 8, 0, False),
    (18, 128): ("AES_GCM_8_128", 20, 4, 1, 8, 8, True),  # RFC 4106 §3, §6, §8.1
    (19, 192): ("AES_GCM_12_192", 28, 4, 1, 8, 12, True),
    (20, 256): ("AES_GCM_16_256", 36, 4, 1, 8, 16, True),
    (14, 128): ("AES_CCM_8_128", 19, 3, 1, 8, 8, True),  # RFC 4309 §3, §7.1
    (15, 192): ("AES_CCM_12_192", 27, 3, 1, 8, 12, True),
    (16, 256): ("AES_CCM_16_256", 35, 3, 1, 8, 16, True),
    (28, None): ("CHACHA20_POLY1305", 36, 4, 1, 8, 16, True),  # RFC 7634 §2, §4
    (28, 256): ("CHACHA20_POLY1305", 36, 4, 1, 8, 16, True),
    (21, 128): ("NULL_AUTH_AES_GMAC_128", 20, 4, 1, 8, 16, True),  # RFC 4543 §3, §5.4
    (21, 256): ("NULL_AUTH_AES_GMAC_256", 36, 4, 1, 8, 16, True),
    (11, None): ("NULL", 0, 0, 1, 0, 0, False),  # RFC 2410 §2
    (3, None): ("3DES_CBC", 24, 0, 8, 8, 0, False),  # RFC 2451
}


@pytest.mark.parametrize(("key", "want"), ENCR_SIZES.items(), ids=lambda x: str(x))
def test_encr_descriptor_sizes(key: tuple[int, int | None], want: tuple[object, ...]) -> None:
    a = encr(*key)
    assert (a.name, a.key_len, a.salt_len, a.block_size, a.iv_len, a.icv_len, a.aead) == want
    c = a.prepare(bytes(a.key_len))
    assert isinstance(c, AeadCipher) == a.aead
    assert isinstance(c, BlockCipher) != a.aead
    assert encr(*key) is a  # cached descriptor


INTEG_SIZES = {
    IntegId.AUTH_HMAC_MD5_96: ("HMAC_MD5_96", 16, 12),  # RFC 2403
    IntegId.AUTH_HMAC_SHA1_96: ("HMAC_SHA1_96", 20, 12),  # RFC 2404
    IntegId.AUTH_AES_XCBC_96: ("AES_XCBC_96", 16, 12),  # RFC 3566
    IntegId.AUTH_AES_CMAC_96: ("AES_CMAC_96", 16, 12),  # RFC 4494
    IntegId.AUTH_AES_128_GMAC: ("AES_128_GMAC", 20, 16),  # RFC 4543 §5.4
    IntegId.AUTH_AES_192_GMAC: ("AES_192_GMAC", 28, 16),
    IntegId.AUTH_AES_256_GMAC: ("AES_256_GMAC", 36, 16),
    IntegId.AUTH_HMAC_SHA2_256_128: ("HMAC_SHA2_256_128", 32, 16),  # RFC 4868 §2.1
    IntegId.AUTH_HMAC_SHA2_384_192: ("HMAC_SHA2_384_192", 48, 24),
    IntegId.AUTH_HMAC_SHA2_512_256: ("HMAC_SHA2_512_256", 64, 32),
}


@pytest.mark.parametrize(("iid", "want"), INTEG_SIZES.items(), ids=lambda x: str(x))
def test_integ_descriptor_sizes(iid: IntegId, want: tuple[str, int, int]) -> None:
    a = integ(iid)
    assert (a.name, a.key_len, a.icv_len) == want
    m = a.prepare(bytes(a.key_len))
    assert m.icv_len == a.icv_len
    if a.needs_iv:
        assert len(m.compute_iv(bytes(8), b"data")) == 16
        with pytest.raises(LocalProtocolError):
            m.compute(b"data")
    else:
        assert len(m.compute(b"data")) == a.icv_len
        with pytest.raises(LocalProtocolError):
            m.compute_iv(bytes(8), b"data")


PRF_SIZES = {
    PrfId.PRF_HMAC_MD5: (16, 16),
    PrfId.PRF_HMAC_SHA1: (20, 20),
    PrfId.PRF_AES128_XCBC: (16, 16),  # RFC 4434 §2
    PrfId.PRF_HMAC_SHA2_256: (32, 32),  # RFC 4868 §2.1.2
    PrfId.PRF_HMAC_SHA2_384: (48, 48),
    PrfId.PRF_HMAC_SHA2_512: (64, 64),
    PrfId.PRF_AES128_CMAC: (16, 16),  # RFC 4615 §3
}


@pytest.mark.parametrize(("pid", "want"), PRF_SIZES.items(), ids=lambda x: str(x))
def test_prf_descriptor_sizes(pid: PrfId, want: tuple[int, int]) -> None:
    a = prf(pid)
    assert (a.key_len, a.out_len) == want
    assert a.fixed_key == (pid in (PrfId.PRF_AES128_XCBC, PrfId.PRF_AES128_CMAC))
    for key_len in (1, 16, 33, 200):  # any key length is accepted
        assert len(a.prepare(b"k" * key_len)(b"x")) == a.out_len


@pytest.mark.parametrize(
    "eid",
    [
        EncrId.ENCR_DES,
        EncrId.ENCR_DES_IV64,
        EncrId.ENCR_DES_IV32,
        EncrId.ENCR_IDEA,
        EncrId.ENCR_BLOWFISH,
        EncrId.ENCR_3IDEA,
        EncrId.ENCR_RC5,
        EncrId.ENCR_CAST,
    ],
)
def test_weak_ciphers_are_named_and_refused(eid: EncrId) -> None:
    a = encr(eid)
    assert not a.supported
    assert a.name
    with pytest.raises(LocalProtocolError, match="refused"):
        a.prepare(bytes(a.key_len))
    assert not encr(eid, 128).supported


def test_refused_integrity_and_prf() -> None:
    for iid in (IntegId.AUTH_DES_MAC, IntegId.AUTH_KPDK_MD5, IntegId.NONE):
        with pytest.raises(LocalProtocolError):
            integ(iid).prepare(b"")
    assert integ(0).key_len == integ(0).icv_len == 0
    with pytest.raises(LocalProtocolError):
        prf(PrfId.PRF_HMAC_TIGER)


def test_unknown_ids_and_bad_sizes() -> None:
    for bad in (0, 10, 17, 99, 1024):
        with pytest.raises(LocalProtocolError):
            encr(bad, 128)
    with pytest.raises(LocalProtocolError):
        integ(99)
    with pytest.raises(LocalProtocolError):
        prf(0)
    with pytest.raises(LocalProtocolError, match="Key Length"):
        encr(EncrId.ENCR_AES_CBC)  # AES needs the Key Length attribute (RFC 7296 §3.3.5)
    with pytest.raises(LocalProtocolError):
        encr(EncrId.ENCR_AES_GCM_16, 64)
    with pytest.raises(LocalProtocolError):
        encr(EncrId.ENCR_CHACHA20_POLY1305, 128)
    with pytest.raises(LocalProtocolError):
        encr(EncrId.ENCR_3DES, 128)
    with pytest.raises(LocalProtocolError):
        encr(EncrId.ENCR_AES_GCM_16, 128).prepare(bytes(16))  # salt missing
    with pytest.raises(LocalProtocolError):
        integ(12).prepare(bytes(16))
    with pytest.raises(LocalProtocolError):
        encr(12, 128).prepare_aead(bytes(16))
    with pytest.raises(LocalProtocolError):
        encr(20, 128).prepare_block(bytes(20))


def test_misuse_of_prepared_objects() -> None:
    gcm = encr(20, 128).prepare_aead(bytes(20))
    with pytest.raises(LocalProtocolError):
        gcm.seal(bytes(12), b"x", b"")  # the 8-octet wire IV, not the 12-octet nonce
    cbc = encr(12, 128).prepare_block(bytes(16))
    with pytest.raises(LocalProtocolError):
        cbc.encrypt(bytes(16), b"not a block multiple")
    with pytest.raises(RemoteProtocolError):
        cbc.decrypt(bytes(16), b"\x00" * 17)  # peer sent a truncated ciphertext
    with pytest.raises(RemoteProtocolError):
        cbc.decrypt(bytes(16), b"")
    # The failed calls must not have disturbed the chaining state.
    ct = cbc.encrypt(bytes(16), bytes(32))
    assert cbc.decrypt(bytes(16), ct) == bytes(32)
    null = encr(11).prepare_block(b"")
    assert null.encrypt(b"", b"abc") == b"abc"
    with pytest.raises(LocalProtocolError):
        null.encrypt(b"iv", b"abc")


def test_ikev1_maps_point_at_usable_transforms() -> None:
    # RFC 2409 Appendix A / RFC 2407 §4.4.4 / §4.5 numbers onto the IKEv2 transforms.
    assert ids.IKEV1_ENCR_TO_ENCR[ids.Ikev1EncrId.AES_CBC] is EncrId.ENCR_AES_CBC
    assert ids.IKEV1_ENCR_TO_ENCR[ids.Ikev1EncrId.TDES_CBC] is EncrId.ENCR_3DES
    assert ids.IKEV1_ESP_TO_ENCR[23] is EncrId.ENCR_NULL_AUTH_AES_GMAC  # 21 in IKEv2
    assert ids.IKEV1_ESP_TO_ENCR[20] is EncrId.ENCR_AES_GCM_16
    assert ids.IKEV1_HASH_TO_PRF[ids.Ikev1HashId.SHA2_256] is PrfId.PRF_HMAC_SHA2_256
    assert ids.IKEV1_AUTH_TO_INTEG[ids.Ikev1AuthAlgorithm.HMAC_SHA2_256] is (
        IntegId.AUTH_HMAC_SHA2_256_128
    )
    assert ids.IKEV1_AH_TO_INTEG[ids.Ikev1AhTransformId.AH_SHA] is IntegId.AUTH_HMAC_SHA1_96
    for table in (ids.IKEV1_ENCR_TO_ENCR, ids.IKEV1_ESP_TO_ENCR):
        for v2 in table.values():
            encr(v2, 128 if v2 in (12, 13, 14, 15, 16, 18, 19, 20, 21) else None)
    for v2i in (*ids.IKEV1_AUTH_TO_INTEG.values(), *ids.IKEV1_AH_TO_INTEG.values()):
        integ(v2i)
    for v2p in ids.IKEV1_HASH_TO_PRF.values():
        prf(v2p)
    for v2h in ids.IKEV1_HASH_TO_INTEG.values():
        assert integ(v2h).supported


def test_dh_descriptor_sizes() -> None:
    # RFC 3526 (octets of p), RFC 5903 §7 (2 x field size), RFC 8031 §2 (32 / 56)
    want = {1: 96, 2: 128, 5: 192, 14: 256, 15: 384, 16: 512, 17: 768, 18: 1024,
            19: 64, 20: 96, 21: 132, 31: 32, 32: 56}  # fmt: skip
    assert {g: dh(g).public_len for g in want} == want
    assert {g.value for g in DhId} - {0} == set(want)
