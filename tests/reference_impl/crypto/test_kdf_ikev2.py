"""IKEv2 key derivation (RFC 7296 §2.13-2.18) against real strongSwan 5.9.8 exchanges.

There are no official vectors for SKEYSEED / SK_x / AUTH / Child SA KEYMAT of a whole exchange
(the NIST CAVP SP 800-135 IKEv2 files are not available here; their prf+ step is covered in
test_known_answers.py). So these are derived from the strongSwan logs in
shared/data/strongswan-5.9.8, which print the DH shared secret, both nonces, SKEYSEED, every
SK_x, the AUTH octets and value, and the Child SA keys: strongSwan is the independent
implementation we check against.
"""

from __future__ import annotations

import pytest

from reference_impl.crypto import (
    EncrId,
    IntegId,
    PrfId,
    encr,
    ikev2_child_keymat,
    ikev2_ike_keys,
    ikev2_psk_auth,
    ikev2_rekey_skeyseed,
    ikev2_signed_octets,
    ikev2_skeyseed,
    integ,
    prf,
    prf_plus,
)
from reference_impl.errors import LocalProtocolError
from tests.reference_impl.crypto.sslog import first, read_log, wireshark_keys

CAPTURES = {
    # name: (IKE encr, IKE integ, ESP encr, ESP integ)
    "ikev2-aescbc-modp2048": (
        (EncrId.ENCR_AES_CBC, 256),
        IntegId.AUTH_HMAC_SHA2_256_128,
        (EncrId.ENCR_AES_CBC, 256),
        IntegId.AUTH_HMAC_SHA2_256_128,
    ),
    "ikev2-aesgcm-x25519": (
        (EncrId.ENCR_AES_GCM_16, 128),
        IntegId.NONE,
        (EncrId.ENCR_AES_GCM_16, 256),
        IntegId.NONE,
    ),
}


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_strongswan_ike_sa_keys(name: str) -> None:
    log = read_log(f"{name}.initiator.log")
    ike_encr, ike_integ, esp_encr, esp_integ = CAPTURES[name]
    f = prf(PrfId.PRF_HMAC_SHA2_256)
    g_ir = first(log, "shared Diffie Hellman secret")
    seed = first(log, "seed")  # Ni | Nr, logged when the Child SA keys are derived
    ni, nr = seed[:32], seed[32:]
    table = wireshark_keys(f"{name}.wireshark-keys.txt")[0]
    spi_i, spi_r = bytes.fromhex(table[0]), bytes.fromhex(table[1])

    skeyseed = ikev2_skeyseed(f, ni, nr, g_ir)
    assert skeyseed == first(log, "SKEYSEED")

    e, a = encr(*ike_encr), integ(ike_integ)
    keys = ikev2_ike_keys(f, skeyseed, ni, nr, spi_i, spi_r, e.key_len, a.key_len)
    assert keys.sk_d == first(log, "Sk_d secret")
    assert keys.sk_ei == first(log, "Sk_ei secret")
    assert keys.sk_er == first(log, "Sk_er secret")
    assert keys.sk_pi == first(log, "Sk_pi secret")
    assert keys.sk_pr == first(log, "Sk_pr secret")
    if a.key_len:
        assert keys.sk_ai == first(log, "Sk_ai secret")
        assert keys.sk_ar == first(log, "Sk_ar secret")
    else:
        assert keys.sk_ai == keys.sk_ar == b""
    # The Wireshark table carries the same SK_ei / SK_er (AEAD keys with their salt).
    assert keys.sk_ei.hex() == table[2] and keys.sk_er.hex() == table[3]

    # AUTH (RFC 7296 §2.15): ours (initiator) first, then the responder's.
    psk = first(log, "secret")
    for nth, (sk_p, id_label_pos) in enumerate(((keys.sk_pi, 0), (keys.sk_pr, 1))):
        octets = first(log, "octets = message + nonce + prf(Sk_px, IDx')", nth)
        id_body = first(log, "IDx'", id_label_pos)
        assert first(log, "SK_p", nth) == sk_p
        maced_id = f.prepare(sk_p)(id_body)
        assert octets.endswith(maced_id)
        body = octets[: -len(maced_id)]
        nonce = nr if nth == 0 else ni  # InitiatorSignedOctets carries Nr, and vice versa
        assert body.endswith(nonce)
        message = body[: -len(nonce)]
        assert ikev2_signed_octets(f, message, nonce, sk_p, id_body) == octets
        auth = ikev2_psk_auth(f, psk, octets)
        assert auth == first(log, "AUTH = prf(prf(secret, keypad), octets)", nth)
    assert f.prepare(psk)(b"Key Pad for IKEv2") == first(log, "prf(secret, keypad)")

    # Child SA created in IKE_AUTH: KEYMAT = prf+(SK_d, Ni | Nr) (RFC 7296 §2.17).
    ce, ca = encr(*esp_encr), integ(esp_integ)
    child = ikev2_child_keymat(f, keys.sk_d, ni, nr, ce.key_len, ca.key_len)
    assert child.encr_i == first(log, "encryption initiator key")
    assert child.encr_r == first(log, "encryption responder key")
    if ca.key_len:
        assert child.integ_i == first(log, "integrity initiator key")
        assert child.integ_r == first(log, "integrity responder key")
    esp = wireshark_keys(f"{name}.wireshark-keys.txt")[1:]
    outbound = next(r for r in esp if r[1] == "10.99.0.1")
    assert outbound[5] == "0x" + child.encr_i.hex()


def test_child_keymat_with_pfs_and_order() -> None:
    """RFC 7296 §2.17: with PFS the seed is g^ir (new) | Ni | Nr; keys in i->r, r->i order."""
    f = prf(PrfId.PRF_HMAC_SHA2_256)
    sk_d, ni, nr, g = b"D" * 32, b"n" * 16, b"N" * 16, b"G" * 256
    k = ikev2_child_keymat(f, sk_d, ni, nr, 20, 32, g_ir=g)
    km = prf_plus(f, sk_d, g + ni + nr, 2 * (20 + 32))
    assert (k.encr_i, k.integ_i, k.encr_r, k.integ_r) == (
        km[:20],
        km[20:52],
        km[52:72],
        km[72:104],
    )
    assert ikev2_child_keymat(f, sk_d, ni, nr, 20, 32) != k


def test_rekey_skeyseed() -> None:
    """RFC 7296 §2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), old SA's PRF."""
    old = prf(PrfId.PRF_HMAC_SHA1)
    sk_d, g, ni, nr = b"d" * 20, b"g" * 128, b"i" * 32, b"r" * 32
    assert ikev2_rekey_skeyseed(old, sk_d, g, ni, nr) == old.prepare(sk_d)(g + ni + nr)


def test_fixed_key_prf_uses_half_nonces() -> None:
    """RFC 7296 §2.14: AES-XCBC/CMAC PRFs take the first 64 bits of Ni and of Nr as the key."""
    for pid in (PrfId.PRF_AES128_XCBC, PrfId.PRF_AES128_CMAC):
        f = prf(pid)
        ni, nr, g = bytes(range(32)), bytes(range(100, 132)), b"\x42" * 256
        assert ikev2_skeyseed(f, ni, nr, g) == f.prepare(ni[:8] + nr[:8])(g)
        assert ikev2_skeyseed(f, ni, nr, g) != f.prepare(ni + nr)(g)
        # SK_d etc. are 16 octets (the preferred key size, RFC 4434 / RFC 4615).
        keys = ikev2_ike_keys(f, b"s" * 16, ni, nr, b"I" * 8, b"R" * 8, 16, 16)
        assert len(keys.sk_d) == len(keys.sk_pi) == len(keys.sk_pr) == 16


def test_prf_plus_limits() -> None:
    f = prf(PrfId.PRF_HMAC_SHA1)
    assert len(prf_plus(f, b"k", b"s", 255 * 20)) == 255 * 20
    with pytest.raises(LocalProtocolError):
        prf_plus(f, b"k", b"s", 255 * 20 + 1)
    assert prf_plus(f, b"k", b"s", 0) == b""


def test_ike_keys_rejects_bad_spis() -> None:
    with pytest.raises(LocalProtocolError):
        ikev2_ike_keys(prf(5), b"s", b"n", b"n", b"1234", b"12345678", 16, 32)


# NIST CAVP SP 800-135 IKEv2 KDF component test, [SHA-1] with 64-bit nonces, 256-bit g^ir and a
# 1056-bit DKM (the sample libreswan's CAVS driver documents with its inputs and outputs).
CAVP_IKEV2_SHA1 = dict(
    gir="4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    girnew="863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    ni="32b50d5f4a3763f3",
    nr="9206a04b26564cb1",
    spii="34c9e7c188868785",
    spir="3ff77d760d2b2199",
    skeyseed="a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    dkm="a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b"
    "76606f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa2808"
    "70d2ed41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435"
    "a7a56cc4",
    dkm_child="8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdab"
    "d9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b"
    "1e521a8fe20754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e"
    "664994d234cb4",
    dkm_child_dh="bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c"
    "66232eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a50"
    "80d7d4b5666023a8bbb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06"
    "e27899c7054d56fd74c",
    skeyseed_rekey="63e81194946ebd05df7df5ebf5d8750056bf1f1d",
)


def test_cavp_sp800_135_ikev2_chain() -> None:
    v = {k: bytes.fromhex(x) for k, x in CAVP_IKEV2_SHA1.items()}
    f = prf(PrfId.PRF_HMAC_SHA1)
    skeyseed = ikev2_skeyseed(f, v["ni"], v["nr"], v["gir"])
    assert skeyseed == v["skeyseed"]
    seed = v["ni"] + v["nr"] + v["spii"] + v["spir"]
    dkm = prf_plus(f, skeyseed, seed, len(v["dkm"]))
    assert dkm == v["dkm"]
    keys = ikev2_ike_keys(f, skeyseed, v["ni"], v["nr"], v["spii"], v["spir"], 16, 20)
    assert keys.sk_d == dkm[:20]  # SK_d is the first prf-key-length octets of DKM
    half = len(v["dkm_child"]) // 2  # encr_i | integ_i | encr_r | integ_r over 132 octets
    child = ikev2_child_keymat(f, keys.sk_d, v["ni"], v["nr"], half, 0)
    assert child.encr_i + child.encr_r == v["dkm_child"]
    child_dh = ikev2_child_keymat(f, keys.sk_d, v["ni"], v["nr"], half, 0, g_ir=v["girnew"])
    assert child_dh.encr_i + child_dh.encr_r == v["dkm_child_dh"]
    rekey = ikev2_rekey_skeyseed(f, keys.sk_d, v["girnew"], v["ni"], v["nr"])
    assert rekey == v["skeyseed_rekey"]
