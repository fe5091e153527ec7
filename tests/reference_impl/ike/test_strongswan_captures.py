"""Real strongSwan 5.9.8 traffic (../shared/data/strongswan-5.9.8): decode every IKEv2
message, reproduce SKEYSEED and every SK_x from the logged shared secret and the capture's
nonces and SPIs (RFC 7296 §2.14), reproduce both AUTH values (§2.15), decrypt the SK payloads
(§3.14, RFC 5282) and derive the Child SA keys (§2.17) exactly as charon logged them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from reference_impl.crypto import (
    EncrAlgorithm,
    IkeKeys,
    IntegAlgorithm,
    PrfAlgorithm,
    encr,
    ikev2_child_keymat,
    ikev2_ike_keys,
    ikev2_psk_auth,
    ikev2_signed_octets,
    ikev2_skeyseed,
    integ,
    prf,
)
from reference_impl.ike.enums import AuthMethod, IdType, NotifyType, PayloadType
from reference_impl.ike.messages import Message, decode_message
from reference_impl.ike.payloads import (
    AuthPayload,
    IdI,
    IdR,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsI,
    TsR,
    decode_chain,
    encode_chain,
)
from reference_impl.ike.protection import SkProtection
from reference_impl.sa import TrafficSelector

from .captures import DATA, IKEV2_CAPTURES, PSK, Capture, load


@dataclass
class Exchange:
    cap: Capture
    msgs: list[Message]
    ni: bytes
    nr: bytes
    prf: PrfAlgorithm
    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    keys: IkeKeys


def negotiated(m: Message) -> dict[int, tuple[int, int | None]]:
    sa = m.get(SaPayload)
    assert sa is not None and len(sa.proposals) == 1
    return {t.type: (t.id, t.key_length) for t in sa.proposals[0].transforms}


@pytest.fixture(params=IKEV2_CAPTURES)
def ex(request: pytest.FixtureRequest) -> Exchange:
    cap = load(request.param)
    msgs = [decode_message(d.ike) for d in cap.ike]
    ni_p, nr_p = msgs[0].get(NoncePayload), msgs[1].get(NoncePayload)
    assert ni_p is not None and nr_p is not None
    t = negotiated(msgs[1])
    p = prf(t[2][0])
    e = encr(*t[1])
    i = integ(t[3][0]) if 3 in t else None
    skeyseed = ikev2_skeyseed(p, ni_p.data, nr_p.data, cap.dump("shared Diffie Hellman secret"))
    keys = ikev2_ike_keys(
        p,
        skeyseed,
        ni_p.data,
        nr_p.data,
        msgs[0].spi_i,
        msgs[1].spi_r,
        e.key_len,
        i.key_len if i else 0,
    )
    return Exchange(cap, msgs, ni_p.data, nr_p.data, p, e, i, keys)


def test_skeyseed_and_every_sk(ex: Exchange) -> None:
    cap = ex.cap
    skeyseed = ikev2_skeyseed(ex.prf, ex.ni, ex.nr, cap.dump("shared Diffie Hellman secret"))
    assert skeyseed == cap.dump("SKEYSEED")
    k = ex.keys
    assert k.sk_d == cap.dump("Sk_d secret")
    assert k.sk_ei == cap.dump("Sk_ei secret")
    assert k.sk_er == cap.dump("Sk_er secret")
    assert k.sk_pi == cap.dump("Sk_pi secret")
    assert k.sk_pr == cap.dump("Sk_pr secret")
    if ex.integ is not None:
        assert k.sk_ai == cap.dump("Sk_ai secret")
        assert k.sk_ar == cap.dump("Sk_ar secret")
    else:
        assert k.sk_ai == k.sk_ar == b""
    # and the Wireshark decryption table agrees (the independent oracle's input)
    table = (DATA / f"{cap.name}.wireshark-keys.txt").read_text()
    row = re.search(r"ikev2_decryption_table:([^\n]*)", table)
    assert row is not None
    spi_i, spi_r, ei, er = row.group(1).split(",")[:4]
    assert (spi_i, spi_r) == (ex.msgs[0].spi_i.hex(), ex.msgs[1].spi_r.hex())
    assert (ei, er) == (k.sk_ei.hex(), k.sk_er.hex())


def open_auth(ex: Exchange, index: int) -> list[Payload]:
    """Decrypt IKE_AUTH message ``index`` (2: request, 3: response) as its receiver."""
    m = ex.msgs[index]
    sk = m.encrypted
    assert sk is not None and m.exchange_type == 35
    receiver_is_initiator = index == 3
    prot = SkProtection(ex.encr, ex.integ, ex.keys, receiver_is_initiator, lambda n: bytes(n))
    inner = prot.open(ex.cap.ike[index].ike, sk)
    return decode_chain(inner, 0, sk.inner_type)


def test_decrypt_ike_auth_request_and_response(ex: Exchange) -> None:
    req = open_auth(ex, 2)
    names = [type(p).__name__ for p in req]
    assert names[:7] == ["IdI", "NotifyPayload", "IdR", "AuthPayload", "SaPayload", "TsI", "TsR"]
    notify_types = [p.notify_type for p in req if isinstance(p, NotifyPayload)]
    assert notify_types == [
        NotifyType.INITIAL_CONTACT,
        NotifyType.MOBIKE_SUPPORTED,
        NotifyType.NO_ADDITIONAL_ADDRESSES,
        NotifyType.MULTIPLE_AUTH_SUPPORTED,
        NotifyType.EAP_ONLY_AUTHENTICATION,
        NotifyType.IKEV2_MESSAGE_ID_SYNC_SUPPORTED,
    ]
    idi = req[0]
    assert isinstance(idi, IdI) and idi.id_type == IdType.ID_IPV4_ADDR
    assert idi.data == bytes([10, 99, 0, 1])
    tsi, tsr = req[5], req[6]
    assert isinstance(tsi, TsI) and isinstance(tsr, TsR)
    assert tsi.selectors == [TrafficSelector.from_network("10.1.0.1/32")]
    assert tsr.selectors == [TrafficSelector.from_network("10.2.0.1/32")]
    resp = open_auth(ex, 3)
    assert [type(p).__name__ for p in resp][:5] == [
        "IdR",
        "AuthPayload",
        "SaPayload",
        "TsI",
        "TsR",
    ]
    idr = resp[0]
    assert isinstance(idr, IdR) and idr.data == bytes([10, 99, 0, 2])
    sa = resp[2]
    assert isinstance(sa, SaPayload) and len(sa.proposals[0].spi) == 4


def test_both_auth_values(ex: Exchange) -> None:
    """RFC 7296 §2.15: AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>)."""
    cap = ex.cap
    req, resp = open_auth(ex, 2), open_auth(ex, 3)
    idi, auth_i = req[0], req[3]
    idr, auth_r = resp[0], resp[1]
    assert isinstance(idi, IdI) and isinstance(idr, IdR)
    assert isinstance(auth_i, AuthPayload) and isinstance(auth_r, AuthPayload)
    assert auth_i.method == auth_r.method == AuthMethod.SHARED_KEY_MIC

    octets_i = ikev2_signed_octets(ex.prf, cap.ike[0].ike, ex.nr, ex.keys.sk_pi, idi.rest)
    assert octets_i == cap.dump("octets = message + nonce + prf(Sk_px, IDx')", 0)
    assert ikev2_psk_auth(ex.prf, PSK, octets_i) == auth_i.data
    assert auth_i.data == cap.dump("AUTH = prf(prf(secret, keypad), octets)", 0)

    octets_r = ikev2_signed_octets(ex.prf, cap.ike[1].ike, ex.ni, ex.keys.sk_pr, idr.rest)
    assert octets_r == cap.dump("octets = message + nonce + prf(Sk_px, IDx')", 1)
    assert ikev2_psk_auth(ex.prf, PSK, octets_r) == auth_r.data
    assert auth_r.data == cap.dump("AUTH = prf(prf(secret, keypad), octets)", 1)
    # a wrong PSK gives a different value
    assert ikev2_psk_auth(ex.prf, PSK + b"x", octets_r) != auth_r.data


def test_child_sa_keys(ex: Exchange) -> None:
    """RFC 7296 §2.17: KEYMAT = prf+(SK_d, Ni | Nr) for the Child SA of IKE_AUTH."""
    cap = ex.cap
    resp = open_auth(ex, 3)
    sa = resp[2]
    assert isinstance(sa, SaPayload)
    t = {tr.type: (tr.id, tr.key_length) for tr in sa.proposals[0].transforms}
    e = encr(*t[1])
    i = integ(t[3][0]) if 3 in t and t[3][0] else None
    keys = ikev2_child_keymat(ex.prf, ex.keys.sk_d, ex.ni, ex.nr, e.key_len, i.key_len if i else 0)
    assert keys.encr_i == cap.dump("encryption initiator key")
    assert keys.encr_r == cap.dump("encryption responder key")
    if i is not None:
        assert keys.integ_i == cap.dump("integrity initiator key")
        assert keys.integ_r == cap.dump("integrity responder key")
    # Wireshark esp_sa rows: initiator keys protect 10.99.0.1 -> 10.99.0.2, whose SPI is the
    # responder's (the one in the IKE_AUTH response's SA payload).
    table = (DATA / f"{cap.name}.wireshark-keys.txt").read_text()
    rows = re.findall(
        r'esp_sa:"IPv4","([\d.]+)","([\d.]+)","0x([0-9a-f]+)","[^"]*","0x([0-9a-f]+)"', table
    )
    by_src = {src: (spi, key) for src, _dst, spi, key in rows}
    assert by_src["10.99.0.1"] == (sa.proposals[0].spi.hex(), keys.encr_i.hex())
    req_sa = open_auth(ex, 2)[4]
    assert isinstance(req_sa, SaPayload)
    assert by_src["10.99.0.2"] == (req_sa.proposals[0].spi.hex(), keys.encr_r.hex())
    # the ESP packets of the capture carry exactly these SPIs
    esp_spis = {d.payload[:4].hex() for d in cap.esp}
    assert esp_spis == {sa.proposals[0].spi.hex(), req_sa.proposals[0].spi.hex()}


class _FixedIv(SkProtection):
    """Our SK encoder, with the IV strongSwan chose, to compare octets on the wire."""

    iv = b""

    def _iv(self) -> bytes:
        return self.iv


def test_reencrypting_reproduces_the_wire(ex: Exchange) -> None:
    """Our SK encoding of the decrypted payloads, with strongSwan's IV, gives the captured
    datagram: byte for byte for AES-GCM (RFC 5282: no padding), and for AES-CBC (random
    padding octets there) a datagram of the same length that decrypts to the same payloads."""
    for index, we_initiated in ((2, True), (3, False)):
        m = ex.msgs[index]
        sk = m.encrypted
        assert sk is not None
        payloads = open_auth(ex, index)
        prot = _FixedIv(ex.encr, ex.integ, ex.keys, we_initiated, lambda n: bytes(n))
        prot.iv = sk.data[: ex.encr.iv_len]
        first, inner = encode_chain(payloads)
        assert first == sk.inner_type == (PayloadType.IDi if index == 2 else PayloadType.IDr)
        header = Message(m.exchange_type, m.message_id, m.spi_i, m.spi_r, m.initiator, m.response)
        wire = prot.seal(header, first, inner)
        original = ex.cap.ike[index].ike
        assert len(wire) == len(original)
        if ex.encr.aead:
            assert wire == original
        peer = SkProtection(ex.encr, ex.integ, ex.keys, not we_initiated, lambda n: bytes(n))
        again = decode_message(wire)
        assert again.encrypted is not None
        assert decode_chain(peer.open(wire, again.encrypted), 0, first) == payloads


def test_capture_esp_through_the_driver(ex: Exchange) -> None:
    """The driver (reference_impl.driver) unprotects every ESP-in-UDP packet of the capture
    with the SAs described as our IKEv2 service hands them over: KEYMAT of RFC 7296 §2.17,
    the SPIs of the IKE_AUTH SA payloads, UDP encapsulation 4500/4500 (strongSwan faked a
    NAT), tunnel mode, the negotiated selectors."""
    from reference_impl.driver import Sad, Verdict
    from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode

    req, resp = open_auth(ex, 2), open_auth(ex, 3)
    sa_i, sa_r = req[4], resp[2]
    tsi, tsr = resp[3], resp[4]
    assert isinstance(sa_i, SaPayload) and isinstance(sa_r, SaPayload)
    assert isinstance(tsi, TsI) and isinstance(tsr, TsR)
    t = {tr.type: (tr.id, tr.key_length) for tr in sa_r.proposals[0].transforms}
    e = encr(*t[1])
    i = integ(t[3][0]) if 3 in t and t[3][0] else None
    keys = ikev2_child_keymat(ex.prf, ex.keys.sk_d, ex.ni, ex.nr, e.key_len, i.key_len if i else 0)
    sad = {"10.99.0.1": Sad(), "10.99.0.2": Sad()}
    # initiator -> responder: the responder's SPI, the "i" keys; and the other way round
    for spi, owner, peer, ek, ak, ts_src, ts_dst in (
        (sa_r.proposals[0].spi, "10.99.0.2", "10.99.0.1", keys.encr_i, keys.integ_i, tsi, tsr),
        (sa_i.proposals[0].spi, "10.99.0.1", "10.99.0.2", keys.encr_r, keys.integ_r, tsr, tsi),
    ):
        params = ChildSaParams(
            spi=int.from_bytes(spi, "big"),
            protocol=IpsecProtocol.ESP,
            mode=Mode.TUNNEL,
            src=peer,
            dst=owner,
            encr_id=e.id,
            encr_key_bits=e.key_bits,
            encr_key=ek,
            integ_id=i.id if i else None,
            integ_key=ak,
            encap=(4500, 4500),
            ts_src=tuple(ts_src.selectors),
            ts_dst=tuple(ts_dst.selectors),
        )
        sad[owner].install(params, inbound=True, now=0.0)
    esp = ex.cap.esp
    assert len(esp) == 4
    for d in esp:
        verdict, inner, _sa = sad[d.dst[0]].unprotect(d.ip, 0.0)
        assert verdict == Verdict.DELIVERED, verdict
        assert inner[9] == 1  # ICMP inside
        assert {inner[12:16], inner[16:20]} == {bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1])}
    # a flipped bit in the first packet: the driver drops it
    bad = bytearray(esp[0].ip)
    bad[-1] ^= 1
    assert sad[esp[0].dst[0]].unprotect(bytes(bad), 0.0)[0] != Verdict.DELIVERED


def test_nat_detection_hashes(ex: Exchange) -> None:
    """RFC 7296 §2.23: our NAT-D hash of each address equals the one strongSwan logged and
    sent; the responder's NATD_SOURCE_IP does not match its address (libipsec fakes a NAT),
    so we too would conclude "remote host is behind NAT" and float to 4500."""
    from reference_impl.ike.types import natd_hash

    req, resp = ex.msgs[0], ex.msgs[1]
    spi_i, spi_r = req.spi_i, resp.spi_r
    dst = req.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert dst is not None and dst.data == natd_hash(spi_i, bytes(8), ("10.99.0.2", 500))
    assert ex.cap.dump("natd_hash", 1) == dst.data
    # the initiator's own source hash is faked too (strongSwan with libipsec)
    src = req.notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert src is not None and src.data != natd_hash(spi_i, bytes(8), ("10.99.0.1", 500))
    r_src = resp.notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    r_dst = resp.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert r_src is not None and r_dst is not None
    assert r_dst.data == natd_hash(spi_i, spi_r, ("10.99.0.1", 500))  # no NAT on our side
    assert r_src.data != natd_hash(spi_i, spi_r, ("10.99.0.2", 500))  # "remote behind NAT"
    assert "remote host is behind NAT" in ex.cap.log
