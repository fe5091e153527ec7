"""Known-answer tests from real strongSwan 5.9.8 traffic (../shared/data/strongswan-5.9.8,
``ikev1-main-quick.*``: Main Mode PSK + Quick Mode, AES_CBC_256/HMAC_SHA2_256/MODP_2048,
ESP AES_CBC_128/HMAC_SHA2_256_128, NAT faked so MM5 onwards is on UDP 4500).

Every value compared here is one charon logged (``ike=4``/``chd=4``) or the capture holds.
"""

from __future__ import annotations

import struct

import pytest

from reference_impl.crypto import BlockCipher, encr, prf
from reference_impl.crypto import kdf_ikev1 as kdf1
from reference_impl.crypto.ids import EncrId, PrfId
from reference_impl.isakmp.codec import (
    HashPayload,
    IdPayload,
    KePayload,
    Message,
    NatDPayload,
    NoncePayload,
    NotifyPayload,
    SaPayload,
    decode_message,
    decode_payloads,
)
from reference_impl.isakmp.constants import (
    EncapsulationMode,
    IdType,
    IpsecAttr,
    NotifyType,
    ProtocolId,
)
from reference_impl.isakmp.identity import selector_from_id
from reference_impl.isakmp.proposals import Phase1Transform, parse_phase2_transform
from reference_impl.sa import TrafficSelector
from tests.reference_impl.isakmp.capture import PSK, log_value, read_pcap

PRF = prf(PrfId.PRF_HMAC_SHA2_256)
AES256 = encr(EncrId.ENCR_AES_CBC, 256)


@pytest.fixture(scope="module")
def ike() -> list[tuple[bytes, Message]]:
    out = []
    for d in read_pcap():
        p = d.payload
        if d.dport == 4500:
            if p[:4] != bytes(4):
                continue
            p = p[4:]
        out.append((p, decode_message(p)))
    return out


@pytest.fixture(scope="module")
def keys(ike: list[tuple[bytes, Message]]) -> dict[str, bytes]:
    mm1, mm3, mm4 = ike[0][1], ike[2][1], ike[3][1]
    icky, rcky = mm3.header.icookie, mm3.header.rcookie
    ni, nr = mm3.find(NoncePayload), mm4.find(NoncePayload)
    gxi, gxr = mm3.find(KePayload), mm4.find(KePayload)
    sa = mm1.find(SaPayload)
    assert ni and nr and gxi and gxr and sa
    g_xy = log_value("shared Diffie Hellman secret")
    skeyid = kdf1.ikev1_skeyid_psk(PRF, PSK, ni.data, nr.data)
    d, a, e = kdf1.ikev1_skeyid_dae(PRF, skeyid, g_xy, icky, rcky)
    return {
        "icky": icky, "rcky": rcky, "ni": ni.data, "nr": nr.data, "gxi": gxi.data,
        "gxr": gxr.data, "g_xy": g_xy, "skeyid": skeyid, "d": d, "a": a, "e": e,
        "sai_b": sa.body,
    }  # fmt: skip


def test_phase1_proposal_parses(ike: list[tuple[bytes, Message]]) -> None:
    sa = ike[1][1].find(SaPayload)
    assert sa is not None
    t = Phase1Transform.from_transform(sa.proposals[0].transforms[0])
    assert t == Phase1Transform(7, 256, 4, 1, 14, 15840, None)
    assert t.algorithms() == "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"


def test_skeyid_and_derived_keys(keys: dict[str, bytes]) -> None:
    """RFC 2409 §5: SKEYID (PSK), SKEYID_d/a/e, Ka and the phase-1 IV as charon logged them."""
    assert keys["skeyid"] == log_value("SKEYID")
    assert keys["d"] == log_value("SKEYID_d")
    assert keys["a"] == log_value("SKEYID_a")
    assert keys["e"] == log_value("SKEYID_e")
    assert kdf1.ikev1_encryption_key(PRF, keys["e"], 32) == log_value("encryption key Ka")
    iv = kdf1.ikev1_phase1_iv(PRF, keys["gxi"], keys["gxr"], 16)
    assert iv == log_value("initial IV")


def test_natd_hashes(keys: dict[str, bytes], ike: list[tuple[bytes, Message]]) -> None:
    """RFC 3947 §3.2 NAT-D = HASH(CKY-I | CKY-R | IP | Port); strongSwan faked the source one."""
    chunk = keys["icky"] + keys["rcky"] + bytes([10, 99, 0, 2]) + struct.pack("!H", 500)
    mm3 = ike[2][1].find_all(NatDPayload)
    assert PRF.hash(chunk) == mm3[0].hash == log_value("natd_hash", 0)
    mm4 = ike[3][1].find_all(NatDPayload)
    mine = PRF.hash(keys["icky"] + keys["rcky"] + bytes([10, 99, 0, 1]) + struct.pack("!H", 500))
    assert mm4[0].hash == mine  # the responder saw us without NAT ...
    assert mm4[1].hash == log_value("received src_hash") != PRF.hash(chunk)  # ... but faked its own


def _cipher(key: bytes) -> BlockCipher:
    c = AES256.prepare(key)
    assert isinstance(c, BlockCipher)
    return c


def test_decrypt_main_mode_5_6(keys: dict[str, bytes], ike: list[tuple[bytes, Message]]) -> None:
    """RFC 2409 Appendix B CBC chaining; HASH_I/HASH_R recomputed (RFC 2409 §5)."""
    c = _cipher(kdf1.ikev1_encryption_key(PRF, keys["e"], 32))
    iv = kdf1.ikev1_phase1_iv(PRF, keys["gxi"], keys["gxr"], 16)
    mm5, mm6 = ike[4][1], ike[5][1]
    p5 = decode_payloads(mm5.header.next_payload, c.decrypt(iv, mm5.ciphertext), padded=True)
    assert [type(p) for p in p5] == [IdPayload, HashPayload, NotifyPayload]
    iv = mm5.ciphertext[-16:]
    assert iv == log_value("next IV for MID 0", 0)
    idii = p5[0]
    assert isinstance(idii, IdPayload) and idii.id_type == IdType.ID_IPV4_ADDR
    assert idii.data == bytes([10, 99, 0, 1])
    n = p5[2]
    assert isinstance(n, NotifyPayload) and n.notify_type == NotifyType.INITIAL_CONTACT
    hash_i = kdf1.ikev1_hash_i(
        PRF, keys["skeyid"], keys["gxi"], keys["gxr"], keys["icky"], keys["rcky"],
        keys["sai_b"], idii.body,
    )  # fmt: skip
    assert hash_i == log_value("HASH_I") == p5[1].data  # type: ignore[union-attr]
    p6 = decode_payloads(mm6.header.next_payload, c.decrypt(iv, mm6.ciphertext), padded=True)
    assert [type(p) for p in p6] == [IdPayload, HashPayload]
    assert mm6.ciphertext[-16:] == log_value("next IV for MID 0", 1)
    hash_r = kdf1.ikev1_hash_r(
        PRF, keys["skeyid"], keys["gxi"], keys["gxr"], keys["icky"], keys["rcky"],
        keys["sai_b"], p6[0].body,
    )  # fmt: skip
    assert hash_r == log_value("HASH_R") == p6[1].data  # type: ignore[union-attr]


def test_quick_mode_and_keymat(keys: dict[str, bytes], ike: list[tuple[bytes, Message]]) -> None:
    """RFC 2409 §5.5: QM IVs, HASH(1)/(2)/(3), KEYMAT for both SAs (no PFS here)."""
    c = _cipher(kdf1.ikev1_encryption_key(PRF, keys["e"], 32))
    last_p1 = ike[5][1].ciphertext[-16:]
    qm1, qm2, qm3 = ike[6][1], ike[7][1], ike[8][1]
    mid = qm1.header.message_id
    iv = kdf1.ikev1_phase2_iv(PRF, last_p1, mid, 16)
    assert iv == log_value(f"next IV for MID {mid}", 0)
    p1 = decode_payloads(qm1.header.next_payload, c.decrypt(iv, qm1.ciphertext), padded=True)
    assert qm1.ciphertext[-16:] == log_value(f"next IV for MID {mid}", 1)
    a = keys["a"]
    mid_b = struct.pack("!I", mid)
    assert PRF(a, mid_b + b"".join(p.raw for p in p1[1:])) == p1[0].data == log_value("Hash(1)")  # type: ignore[union-attr]
    sa1 = p1[1]
    assert isinstance(sa1, SaPayload)
    (prop,) = sa1.proposals
    assert prop.protocol_id == ProtocolId.PROTO_IPSEC_ESP
    choice = parse_phase2_transform(prop.protocol_id, prop.transforms[0])
    assert choice.transform.encr_id == EncrId.ENCR_AES_CBC and choice.transform.key_bits == 128
    assert choice.transform.name() == "AES_CBC_128/HMAC_SHA2_256_128"
    assert choice.udp_encap  # strongSwan asked for UDP-encapsulated tunnel mode (RFC 3947)
    mode_attr = prop.transforms[0].attr(IpsecAttr.ENCAPSULATION_MODE)
    assert mode_attr is not None and mode_attr.value == EncapsulationMode.UDP_ENCAPSULATED_TUNNEL
    ids = [p for p in p1 if isinstance(p, IdPayload)]
    assert [selector_from_id(i) for i in ids] == [
        TrafficSelector.from_network("10.1.0.1/32"),
        TrafficSelector.from_network("10.2.0.1/32"),
    ]
    ni = next(p for p in p1 if isinstance(p, NoncePayload)).data
    iv = qm1.ciphertext[-16:]
    p2 = decode_payloads(qm2.header.next_payload, c.decrypt(iv, qm2.ciphertext), padded=True)
    assert (
        PRF(a, mid_b + ni + b"".join(p.raw for p in p2[1:])) == p2[0].data == log_value("Hash(2)")
    )  # type: ignore[union-attr]
    assert qm2.ciphertext[-16:] == log_value(f"next IV for MID {mid}", 2)
    nr = next(p for p in p2 if isinstance(p, NoncePayload)).data
    sa2 = p2[1]
    assert isinstance(sa2, SaPayload)
    spi_i, spi_r = prop.spi, sa2.proposals[0].spi
    assert (spi_i.hex(), spi_r.hex()) == ("a44f3018", "bb3b57fe")
    iv = qm2.ciphertext[-16:]
    p3 = decode_payloads(qm3.header.next_payload, c.decrypt(iv, qm3.ciphertext), padded=True)
    assert PRF(a, b"\0" + mid_b + ni + nr) == p3[0].data == log_value("Hash(3)")  # type: ignore[union-attr]
    # KEYMAT per SA: the "initiator" keys protect initiator->responder, SPI chosen by responder
    length = 16 + 32
    k_out = kdf1.ikev1_quick_keymat(PRF, keys["d"], 3, spi_r, ni, nr, length)
    k_in = kdf1.ikev1_quick_keymat(PRF, keys["d"], 3, spi_i, ni, nr, length)
    assert log_value("initiator SA seed") == bytes([3]) + spi_r + ni + nr
    assert k_out[:16] == log_value("encryption initiator key")
    assert k_out[16:] == log_value("integrity initiator key")
    assert k_in[:16] == log_value("encryption responder key")
    assert k_in[16:] == log_value("integrity responder key")


def test_our_quick_mode_sa_is_strongswans(
    ike: list[tuple[bytes, Message]], keys: dict[str, bytes]
) -> None:
    """Our phase-2 SA for the capture's choice encodes exactly as strongSwan's QM1 SA."""
    from reference_impl.crypto.ids import Ikev1AuthAlgorithm, Ikev1EspTransformId
    from reference_impl.isakmp.proposals import Phase2Offer, Phase2Transform, phase2_sa
    from reference_impl.sa import IpsecProtocol, Mode

    c = _cipher(kdf1.ikev1_encryption_key(PRF, keys["e"], 32))
    qm1 = ike[6][1]
    iv = kdf1.ikev1_phase2_iv(PRF, ike[5][1].ciphertext[-16:], qm1.header.message_id, 16)
    p1 = decode_payloads(qm1.header.next_payload, c.decrypt(iv, qm1.ciphertext), padded=True)
    theirs = p1[1]
    assert isinstance(theirs, SaPayload)
    t = Phase2Transform(
        IpsecProtocol.ESP, Ikev1EspTransformId.ESP_AES_CBC, 128, Ikev1AuthAlgorithm.HMAC_SHA2_256
    )
    ours = phase2_sa(
        [t],
        {IpsecProtocol.ESP: theirs.proposals[0].spi},
        Phase2Offer(Mode.TUNNEL, True, False, None, 3960, None),
    )
    assert ours.encode_body() == theirs.body


def test_our_phase1_sa_is_strongswans(ike: list[tuple[bytes, Message]]) -> None:
    from reference_impl.isakmp.proposals import phase1_sa

    theirs = ike[0][1].find(SaPayload)
    assert theirs is not None
    assert phase1_sa([Phase1Transform(7, 256, 4, 1, 14, 15840)]).encode_body() == theirs.body


def test_esp_packets_decrypt_with_our_keymat(
    keys: dict[str, bytes], ike: list[tuple[bytes, Message]]
) -> None:
    """The ESP-in-UDP packets of the capture (RFC 3948, RFC 4303) verify and decrypt with the
    KEYMAT we derive (HMAC-SHA2-256-128 over SPI..ciphertext, AES-CBC-128). The driver will
    take this over; here the registry's transforms are used directly."""
    from reference_impl.crypto import integ
    from reference_impl.crypto.ids import IntegId

    c = _cipher(kdf1.ikev1_encryption_key(PRF, keys["e"], 32))
    qm1, qm2 = ike[6][1], ike[7][1]
    mid = qm1.header.message_id
    iv = kdf1.ikev1_phase2_iv(PRF, ike[5][1].ciphertext[-16:], mid, 16)
    p1 = decode_payloads(qm1.header.next_payload, c.decrypt(iv, qm1.ciphertext), padded=True)
    p2 = decode_payloads(
        qm2.header.next_payload, c.decrypt(qm1.ciphertext[-16:], qm2.ciphertext), padded=True
    )
    ni = next(p for p in p1 if isinstance(p, NoncePayload)).data
    nr = next(p for p in p2 if isinstance(p, NoncePayload)).data
    sa1, sa2 = p1[1], p2[1]
    assert isinstance(sa1, SaPayload) and isinstance(sa2, SaPayload)
    by_spi = {}
    for spi in (sa1.proposals[0].spi, sa2.proposals[0].spi):
        km = kdf1.ikev1_quick_keymat(PRF, keys["d"], 3, spi, ni, nr, 48)
        cipher = encr(EncrId.ENCR_AES_CBC, 128).prepare(km[:16])
        mac = integ(IntegId.AUTH_HMAC_SHA2_256_128).prepare(km[16:])
        by_spi[spi] = (cipher, mac)
    esp = [d for d in read_pcap() if d.dport == 4500 and d.payload[:4] != bytes(4)]
    assert len(esp) == 4
    for d in esp:
        pkt = d.payload
        cipher, mac = by_spi[pkt[:4]]
        assert mac.verify(pkt[:-16], pkt[-16:])
        assert isinstance(cipher, BlockCipher)
        inner = cipher.decrypt(pkt[8:24], pkt[24:-16])
        pad_len, next_header = inner[-2], inner[-1]
        assert next_header == 4  # IPv4 in tunnel mode
        ip = inner[: -2 - pad_len]
        assert ip[9] == 1  # ICMP
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        assert {src, dst} == {"10.1.0.1", "10.2.0.1"}


def test_esp_through_the_driver(keys: dict[str, bytes], ike: list[tuple[bytes, Message]]) -> None:
    """The driver (reference_impl.driver) unprotects the capture's ESP-in-UDP packets with SAs
    described the way the IKEv1 service hands them over (ChildSaParams, IKEv2 transform IDs,
    UDP encapsulation 4500/4500, tunnel mode, selectors from the QM IDs)."""
    from reference_impl.crypto.ids import IntegId
    from reference_impl.driver import Sad, Verdict
    from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode

    c = _cipher(kdf1.ikev1_encryption_key(PRF, keys["e"], 32))
    qm1, qm2 = ike[6][1], ike[7][1]
    iv = kdf1.ikev1_phase2_iv(PRF, ike[5][1].ciphertext[-16:], qm1.header.message_id, 16)
    p1 = decode_payloads(qm1.header.next_payload, c.decrypt(iv, qm1.ciphertext), padded=True)
    p2 = decode_payloads(
        qm2.header.next_payload, c.decrypt(qm1.ciphertext[-16:], qm2.ciphertext), padded=True
    )
    ni = next(p for p in p1 if isinstance(p, NoncePayload)).data
    nr = next(p for p in p2 if isinstance(p, NoncePayload)).data
    sa1, sa2 = p1[1], p2[1]
    assert isinstance(sa1, SaPayload) and isinstance(sa2, SaPayload)
    ts_i, ts_r = (selector_from_id(p) for p in p1 if isinstance(p, IdPayload))
    sad = {"10.99.0.1": Sad(), "10.99.0.2": Sad()}
    # the SPI a side chose is its inbound SPI: initiator's in QM1, responder's in QM2
    for spi, owner, peer, ts_src, ts_dst in (
        (sa1.proposals[0].spi, "10.99.0.1", "10.99.0.2", ts_r, ts_i),
        (sa2.proposals[0].spi, "10.99.0.2", "10.99.0.1", ts_i, ts_r),
    ):
        km = kdf1.ikev1_quick_keymat(PRF, keys["d"], 3, spi, ni, nr, 48)
        params = ChildSaParams(
            spi=int.from_bytes(spi, "big"),
            protocol=IpsecProtocol.ESP,
            mode=Mode.TUNNEL,
            src=peer,
            dst=owner,
            encr_id=EncrId.ENCR_AES_CBC,
            encr_key_bits=128,
            encr_key=km[:16],
            integ_id=IntegId.AUTH_HMAC_SHA2_256_128,
            integ_key=km[16:],
            encap=(4500, 4500),
            ts_src=(ts_src,),
            ts_dst=(ts_dst,),
        )
        sad[owner].install(params, inbound=True, now=0.0)
    esp = [d for d in read_pcap() if d.dport == 4500 and d.payload[:4] != bytes(4)]
    assert len(esp) == 4
    for d in esp:
        r = sad[d.dst].unprotect(d.ip, 0.0)
        assert r[0] == Verdict.DELIVERED, r[0]
        inner = r[1]
        assert inner[9] == 1  # ICMP echo inside
        assert {bytes(inner[12:16]), bytes(inner[16:20])} == {
            bytes([10, 1, 0, 1]),
            bytes([10, 2, 0, 1]),
        }
