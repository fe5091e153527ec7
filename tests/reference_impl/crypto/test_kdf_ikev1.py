"""IKEv1 key derivation (RFC 2409 §5, §5.5, Appendix B) against a real strongSwan 5.9.8
Main Mode + Quick Mode exchange (PSK, AES-CBC-256, HMAC-SHA2-256, MODP-2048).

No official vectors are available here for the whole IKEv1 derivation (the NIST CAVP SP 800-135
IKEv1 component-test files are not available in this workplace); strongSwan is the independent
implementation: its log prints g^xy, SKEYID, SKEYID_d/a/e, Ka, the IVs, HASH_I's input and
value, Hash(1)-(3) and the Quick Mode seeds and keys. The phase-1 nonces are read from the
capture (Main Mode messages 3 and 4 are in clear).
"""

from __future__ import annotations

import pytest

from reference_impl.crypto import PrfId, prf
from reference_impl.crypto.kdf_ikev1 import (
    ikev1_encryption_key,
    ikev1_hash_i,
    ikev1_hash_r,
    ikev1_phase1_iv,
    ikev1_phase2_iv,
    ikev1_qm_hash3,
    ikev1_quick_keymat,
    ikev1_skeyid_dae,
    ikev1_skeyid_pke,
    ikev1_skeyid_psk,
    ikev1_skeyid_sig,
)
from reference_impl.errors import LocalProtocolError
from tests.reference_impl.crypto.sslog import data_dir, first, read_log, wireshark_keys

PSK = b"rx-test-psk-0123456789"  # the capture's PSK (printed in the IKEv2 logs of the same setup)
ISAKMP_KE, ISAKMP_NONCE = 4, 10


def _main_mode_clear_payloads() -> list[dict[int, bytes]]:
    """Payload type -> body for each unencrypted ISAKMP message of the capture, in order."""
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    out = []
    for pkt in rdpcap(str(data_dir() / "ikev1-main-quick.pcap")):
        if UDP not in pkt or pkt[UDP].dport not in (500, 4500):
            continue
        raw = bytes(pkt[UDP].payload)
        if pkt[UDP].dport == 4500:
            if raw[:4] != b"\x00\x00\x00\x00":
                continue
            raw = raw[4:]
        if len(raw) < 28 or raw[19] & 1:  # encrypted
            continue
        payloads: dict[int, bytes] = {}
        nxt, pos = raw[16], 28
        while nxt:
            length = int.from_bytes(raw[pos + 2 : pos + 4])
            payloads[nxt] = raw[pos + 4 : pos + length]
            nxt, pos = raw[pos], pos + length
        out.append(payloads)
    return out


def test_strongswan_main_and_quick_mode() -> None:
    log = read_log("ikev1-main-quick.initiator.log")
    f = prf(PrfId.PRF_HMAC_SHA2_256)  # IKEv1 hash SHA2_256 -> HMAC-SHA2-256 (RFC 4868 §4)
    g_xy = first(log, "shared Diffie Hellman secret")
    hash_i_data = first(log, "HASH_I data")
    g_xi, g_xr = hash_i_data[:256], hash_i_data[256:512]
    cky_i, cky_r = hash_i_data[512:520], hash_i_data[520:528]
    assert wireshark_keys("ikev1-main-quick.wireshark-keys.txt")[0][0] == cky_i.hex()

    kex = [p for p in _main_mode_clear_payloads() if ISAKMP_KE in p]
    assert [p[ISAKMP_KE] for p in kex[:2]] == [g_xi, g_xr]
    ni_b, nr_b = kex[0][ISAKMP_NONCE], kex[1][ISAKMP_NONCE]

    skeyid = ikev1_skeyid_psk(f, PSK, ni_b, nr_b)
    assert skeyid == first(log, "SKEYID")
    d, a, e = ikev1_skeyid_dae(f, skeyid, g_xy, cky_i, cky_r)
    assert (d, a, e) == (first(log, "SKEYID_d"), first(log, "SKEYID_a"), first(log, "SKEYID_e"))
    ka = ikev1_encryption_key(f, e, 32)  # AES-256: SKEYID_e is long enough, Ka = SKEYID_e
    assert ka == first(log, "encryption key Ka")
    assert ka.hex() == wireshark_keys("ikev1-main-quick.wireshark-keys.txt")[0][1]
    assert ikev1_phase1_iv(f, g_xi, g_xr, 16) == first(log, "initial IV")

    # HASH_I over the logged input; its tail is SAi_b | IDii_b.
    rest = hash_i_data[528:]
    assert f.prepare(skeyid)(hash_i_data) == first(log, "HASH_I")
    sai_b, idii_b = rest[:-8], rest[-8:]  # IDii_b: ID_IPV4_ADDR 10.99.0.1, 8 octets
    assert idii_b == bytes.fromhex("010000000a630001")
    assert ikev1_hash_i(f, skeyid, g_xi, g_xr, cky_i, cky_r, sai_b, idii_b) == first(log, "HASH_I")
    hash_r_data = first(log, "HASH_R data")
    assert hash_r_data[:256] == g_xr and hash_r_data[256:512] == g_xi
    idir_b = hash_r_data[-8:]
    assert ikev1_hash_r(f, skeyid, g_xi, g_xr, cky_i, cky_r, sai_b, idir_b) == first(log, "HASH_R")

    # Quick Mode IV: hash(last phase-1 ciphertext block | M-ID). The last phase-1 block is the
    # "next IV for MID 0" logged after Main Mode message 6.
    last_p1 = first(log, "next IV for MID 0", 1)
    mid = 3080355206
    assert ikev1_phase2_iv(f, last_p1, mid, 16) == first(log, f"next IV for MID {mid}", 0)

    # Quick Mode KEYMAT (RFC 2409 §5.5): seed = protocol | SPI | Ni_b | Nr_b, no PFS.
    seed_i = first(log, "initiator SA seed")
    seed_r = first(log, "responder SA seed")
    assert seed_i[0] == 3  # PROTO_IPSEC_ESP
    qm_ni, qm_nr = seed_i[5:37], seed_i[37:69]
    km_i = ikev1_quick_keymat(f, d, 3, seed_i[1:5], qm_ni, qm_nr, 16 + 32)
    km_r = ikev1_quick_keymat(f, d, 3, seed_r[1:5], qm_ni, qm_nr, 16 + 32)
    assert km_i[:16] == first(log, "encryption initiator key")
    assert km_i[16:] == first(log, "integrity initiator key")
    assert km_r[:16] == first(log, "encryption responder key")
    assert km_r[16:] == first(log, "integrity responder key")
    assert ikev1_qm_hash3(f, a, mid, qm_ni, qm_nr) == first(log, "Hash(3)")


def test_encryption_key_expansion() -> None:
    """RFC 2409 Appendix B: K1 = prf(SKEYID_e, 0), K2 = prf(SKEYID_e, K1), ..."""
    f = prf(PrfId.PRF_HMAC_MD5)  # 16-octet output: AES-256 needs expansion
    e = bytes(range(16))
    k = ikev1_encryption_key(f, e, 32)
    k1 = f.prepare(e)(b"\x00")
    k2 = f.prepare(e)(k1)
    assert k == k1 + k2
    assert ikev1_encryption_key(f, e, 24) == (k1 + k2)[:24]
    assert ikev1_encryption_key(f, e, 16) == e  # long enough: no expansion


def test_quick_keymat_with_pfs_expansion() -> None:
    """RFC 2409 §5.5 with PFS: Kn = prf(SKEYID_d, Kn-1 | g(qm)^xy | protocol | SPI | Ni | Nr)."""
    f = prf(PrfId.PRF_HMAC_SHA1)
    d, g, spi, ni, nr = b"d" * 20, b"g" * 128, b"\x01\x02\x03\x04", b"i" * 16, b"r" * 16
    seed = g + b"\x03" + spi + ni + nr
    k1 = f.prepare(d)(seed)
    k2 = f.prepare(d)(k1 + seed)
    k3 = f.prepare(d)(k2 + seed)
    assert ikev1_quick_keymat(f, d, 3, spi, ni, nr, 52, g_qm=g) == (k1 + k2 + k3)[:52]
    assert ikev1_quick_keymat(f, d, 3, spi, ni, nr, 52) != (k1 + k2 + k3)[:52]


def test_skeyid_variants() -> None:
    f = prf(PrfId.PRF_HMAC_SHA1)
    ni, nr, g, ci, cr = b"n" * 16, b"N" * 16, b"G" * 128, b"I" * 8, b"R" * 8
    assert ikev1_skeyid_sig(f, ni, nr, g) == f.prepare(ni + nr)(g)
    assert ikev1_skeyid_pke(f, ni, nr, ci, cr) == f.prepare(f.hash(ni + nr))(ci + cr)
    with pytest.raises(LocalProtocolError):
        ikev1_skeyid_dae(f, b"s", g, b"short", cr)
    with pytest.raises(LocalProtocolError):
        ikev1_phase2_iv(f, b"x" * 8, 1, 16)
    with pytest.raises(LocalProtocolError):
        ikev1_phase1_iv(prf(PrfId.PRF_AES128_XCBC), g, g, 16)  # no underlying hash
