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
