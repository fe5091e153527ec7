"""Cross-check against an independent ESP implementation (scapy's ``layers.ipsec``) for the
combinations no published ESP packet vector covers: scapy builds ESP packets (RFC 4303) with
its own key/salt/nonce layout, AAD and ICV handling; we must open what it seals."""

from __future__ import annotations

import pytest

from reference_impl.crypto import EncrId, IntegId, encr, integ

pytest.importorskip("scapy.layers.ipsec")

from scapy.layers.inet import ICMP, IP
from scapy.layers.ipsec import ESP, SecurityAssociation

CRYPT = {
    "AES-CBC": (EncrId.ENCR_AES_CBC, (128, 192, 256)),
    "AES-CTR": (EncrId.ENCR_AES_CTR, (128, 256)),
    "AES-GCM": (EncrId.ENCR_AES_GCM_16, (128, 192, 256)),
    "AES-CCM": (EncrId.ENCR_AES_CCM_16, (128, 256)),
    "CHACHA20-POLY1305": (EncrId.ENCR_CHACHA20_POLY1305, (256,)),
    "AES-NULL-GMAC": (EncrId.ENCR_NULL_AUTH_AES_GMAC, (128, 256)),
    "3DES": (EncrId.ENCR_3DES, (192,)),
    "NULL": (EncrId.ENCR_NULL, (0,)),
}
AUTH = {
    "HMAC-SHA1-96": IntegId.AUTH_HMAC_SHA1_96,
    "SHA2-256-128": IntegId.AUTH_HMAC_SHA2_256_128,
    "SHA2-384-192": IntegId.AUTH_HMAC_SHA2_384_192,
    "SHA2-512-256": IntegId.AUTH_HMAC_SHA2_512_256,
    "HMAC-MD5-96": IntegId.AUTH_HMAC_MD5_96,
    "AES-CMAC-96": IntegId.AUTH_AES_CMAC_96,
}

CASES = []
for cname, (eid, sizes) in CRYPT.items():
    for bits in sizes:
        aead = encr(eid, bits if eid not in (EncrId.ENCR_3DES, EncrId.ENCR_NULL) else None).aead
        for aname in [None] if aead else AUTH:
            CASES.append((cname, bits, aname))


@pytest.mark.parametrize(("cname", "bits", "aname"), CASES, ids=lambda x: str(x))
def test_open_what_scapy_seals(cname: str, bits: int, aname: str | None) -> None:
    eid, _ = CRYPT[cname]
    ealg = encr(eid, bits if eid not in (EncrId.ENCR_3DES, EncrId.ENCR_NULL) else None)
    ekey = bytes((i * 37 + 11) & 0xFF for i in range(ealg.key_len))
    ialg = integ(AUTH[aname]) if aname else None
    ikey = bytes((i * 53 + 5) & 0xFF for i in range(ialg.key_len)) if ialg else b""
    sa = SecurityAssociation(
        ESP,
        spi=0x11223344,
        crypt_algo=cname,
        crypt_key=ekey or None,
        auth_algo=aname or "NULL",
        auth_key=ikey or None,
    )
    inner = IP(src="10.1.0.1", dst="10.2.0.1") / ICMP() / (b"ping payload " * 5)
    iv = bytes(range(1, ealg.iv_len + 1)) if ealg.iv_len else None
    wire = bytes(sa.encrypt(inner, seq_num=7, iv=iv)[ESP])
    spi_sn, rest = wire[:8], wire[8:]
    iv_w, body = rest[: ealg.iv_len], rest[ealg.iv_len :]
    if ealg.aead:
        c = ealg.prepare_aead(ekey)
        payload = c.open(iv_w, body, spi_sn)
        # and we seal the same payload to the same bytes
        assert c.seal(iv_w, payload, spi_sn) == body
    else:
        assert ialg is not None
        m = ialg.prepare(ikey)
        ct, icv = body[: -ialg.icv_len], body[-ialg.icv_len :]
        assert m.verify(spi_sn + iv_w + ct, icv)  # RFC 4303 §3.3.2.1: ICV over the ESP packet
        assert m.compute(spi_sn + iv_w + ct) == icv
        c = ealg.prepare_block(ekey)
        payload = c.decrypt(iv_w, ct)
        assert c.encrypt(iv_w, payload) == ct
    pad_len, next_header = payload[-2], payload[-1]
    assert next_header == 1  # transport mode: the ICMP message
    assert payload[: -2 - pad_len] == bytes(inner[ICMP])
