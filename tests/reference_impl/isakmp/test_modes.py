"""Aggressive Mode, NAT-T, PFS, AH, transport mode with NAT-OA, both roles (RFC 2409 §5,
§5.5; RFC 3947)."""

from __future__ import annotations

import dataclasses

import pytest

from reference_impl.crypto.ids import (
    DhId,
    Ikev1AhTransformId,
    Ikev1AuthAlgorithm,
    Ikev1EspTransformId,
)
from reference_impl.events import (
    ChildSaEstablished,
    FailureReason,
    IkeSaEstablished,
    NegotiationFailed,
)
from reference_impl.isakmp.codec import KePayload, decode_message
from reference_impl.isakmp.constants import ExchangeType, VendorId
from reference_impl.isakmp.proposals import Phase2Transform
from reference_impl.sa import IpsecProtocol, Mode
from tests.reference_impl.isakmp.algs import AH_SHA256, ESP_GCM
from tests.reference_impl.isakmp.link import Link, child, conn_pair, make_link


def _ok(link: Link) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    assert len(link.of("a", IkeSaEstablished)) == 1 and len(link.of("b", IkeSaEstablished)) == 1
    assert not link.of("a", NegotiationFailed) and not link.of("b", NegotiationFailed)
    (ca,) = link.of("a", ChildSaEstablished)
    (cb,) = link.of("b", ChildSaEstablished)
    assert ca.pair.outbound.spi == cb.pair.inbound.spi
    assert ca.pair.outbound.encr_key == cb.pair.inbound.encr_key
    assert ca.pair.outbound.integ_key == cb.pair.inbound.integ_key
    assert ca.pair.inbound.encr_key == cb.pair.outbound.encr_key
    return ca, cb


def test_aggressive_refused_by_default() -> None:
    """strongSwan: 'Aggressive Mode PSK disabled for security reasons' -> AUTHENTICATION-FAILED."""
    link = make_link(conn_pair(aggressive=True))
    link.a.initiate("t", 0.0)
    link.pump(until=30)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.AUTHENTICATION_FAILED and f.notify == 24 and f.peer_replied
    assert link.b.ike_sa_ids() == []


@pytest.mark.parametrize("lost", [None, 0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_aggressive_psk_allowed(lost: int | None, initiator: str) -> None:
    link = make_link(conn_pair(aggressive=True), allow_aggressive_psk=True)
    seen: list[bytes] = []

    def drop(n: int, side: str, d: object) -> bool:
        data = d.data  # type: ignore[attr-defined]
        if data in seen:
            return False
        seen.append(data)
        return len(seen) - 1 == lost

    link.drop = drop
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=20)
    _ok(link)
    first = decode_message(link.sent[0][2].data)
    assert first.header.exchange_type == ExchangeType.AGGRESSIVE
    if lost is None:
        assert len(link.sent) == 6  # AM1-3, QM1-3


def test_nat_detected_floats_to_4500_and_encapsulates() -> None:
    """A NAPT in front of A (500->1500, 4500->40000): NAT-D reveals it (RFC 3947 §3.2), IKE
    floats to 4500 with MM5 (§4), ESP goes in UDP to the mapped port (RFC 3948)."""
    a, b = conn_pair()
    b = dataclasses.replace(b, remote_addr="%any")
    link = make_link((a, b))
    link.nat = ("198.51.100.7", {500: 1500, 4500: 40000})
    link.a.initiate("t", 0.0)
    link.pump(until=20)
    ca, cb = _ok(link)
    assert ca.pair.outbound.encap == (4500, 4500)
    assert cb.pair.outbound.encap == (4500, 40000)  # B answers the NAT's mapping
    assert cb.pair.outbound.dst == "198.51.100.7"
    ports = [(d.src[1], d.dst[1]) for _, _, d in link.sent if d.data != b"\xff"]
    assert ports[:4] == [(500, 500), (500, 1500), (500, 500), (500, 1500)]
    assert ports[4:] == [(4500, 4500), (4500, 40000)] * 2 + [(4500, 4500)]
    (ea,) = link.of("a", IkeSaEstablished)
    assert ea.local == ("192.0.2.1", 4500) and ea.peer == ("192.0.2.2", 4500)
    # A is behind the NAT: it keeps the mapping open with keepalives (RFC 3948 §2.3)
    link.pump(until=45)
    ka = [(t, d) for t, side, d in link.sent if d.data == b"\xff"]
    assert [t for t, _ in ka][:2] == [pytest.approx(20.0, abs=5), pytest.approx(40.0, abs=5)]
    assert all(side_d.src == ("192.0.2.1", 4500) and not side_d.marker for _, side_d in ka)
    assert all(side == "a" for _, side, d in link.sent if d.data == b"\xff")


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_forced_encapsulation_like_strongswan(initiator: str) -> None:
    """force_encap fakes the NAT-D source hash: both sides see a NAT and use modes 3/4."""
    a, b = conn_pair(force_encap=True)
    link = make_link((a, b))
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=20)
    ca, cb = _ok(link)
    assert ca.pair.outbound.encap == (4500, 4500) and cb.pair.inbound.encap == (4500, 4500)
    assert [d.src[1] for _, _, d in link.sent if d.data != b"\xff"][4:] == [4500] * 5


def test_vendor_ids_sent() -> None:
    link = make_link(conn_pair())
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    vids = [p.data for p in decode_message(link.sent[0][2].data).payloads[1:]]  # type: ignore[union-attr]
    assert VendorId.DPD in vids and VendorId.NAT_T_RFC3947 in vids
    assert VendorId.NAT_T_DRAFT_02_N in vids


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_quick_mode_pfs_gcm(initiator: str) -> None:
    kw = {"transforms": (ESP_GCM,), "pfs_group": DhId.ECP_256}
    a, b = conn_pair(child_a=child(**kw), child_b=child("c", "10.2.0.0/24", "10.1.0.0/24", **kw))
    link = make_link((a, b))
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=5)
    ca, _ = _ok(link)
    assert len(ca.pair.outbound.encr_key) == 36 and ca.pair.outbound.integ_id is None
    qm1 = link.sent[6][2]
    assert decode_message(qm1.data).header.exchange_type == ExchangeType.QUICK_MODE


def test_pfs_mismatch_no_proposal() -> None:
    a, b = conn_pair(
        child_a=child(pfs_group=DhId.MODP_2048),
        child_b=child("c", "10.2.0.0/24", "10.1.0.0/24"),
    )
    link = make_link((a, b))
    link.a.initiate("t", 0.0, acquire_id=3)
    link.pump(until=10)
    assert len(link.of("a", IkeSaEstablished)) == 1
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.NO_PROPOSAL_CHOSEN and f.acquire_id == 3
    assert not link.of("a", ChildSaEstablished)


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ah_transport_mode(initiator: str) -> None:
    kw = {"transforms": (AH_SHA256,), "mode": Mode.TRANSPORT}
    a, b = conn_pair(
        child_a=child(local="192.0.2.1/32", remote="192.0.2.2/32", **kw),
        child_b=child("c", "192.0.2.2/32", "192.0.2.1/32", **kw),
    )
    link = make_link((a, b))
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=5)
    ca, _ = _ok(link)
    assert ca.pair.outbound.protocol == 2 and ca.pair.outbound.mode == Mode.TRANSPORT
    assert ca.pair.outbound.encr_key == b"" and len(ca.pair.outbound.integ_key) == 32


def test_transport_mode_behind_nat_sends_nat_oa() -> None:
    kw = {"mode": Mode.TRANSPORT}
    a, b = conn_pair(
        force_encap=True,
        child_a=child(local="192.0.2.1/32", remote="192.0.2.2/32", **kw),
        child_b=child("c", "192.0.2.2/32", "192.0.2.1/32", **kw),
    )
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    ca, _ = _ok(link)
    assert ca.pair.outbound.mode == Mode.TRANSPORT and ca.pair.outbound.encap is not None


def test_ts_mismatch_refused() -> None:
    a, b = conn_pair(child_b=child("c", "10.9.0.0/24", "10.1.0.0/24"))
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=10)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.TS_UNACCEPTABLE and f.notify == 18
    assert link.now < 1  # refused at once, not timed out


def test_ke_payload_is_the_group_size() -> None:
    link = make_link(conn_pair())
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    ke = decode_message(link.sent[2][2].data).find(KePayload)
    assert ke is not None and len(ke.data) == 256  # MODP_2048


def _drop_nth_new(lost: int) -> object:
    seen: list[bytes] = []

    def drop(n: int, side: str, d: object) -> bool:
        data = d.data  # type: ignore[attr-defined]
        if data in seen:
            return False
        seen.append(data)
        return len(seen) - 1 == lost

    return drop


@pytest.mark.parametrize("lost", range(9))
def test_nat_float_with_loss(lost: int) -> None:
    """Loss at each position while the NAT makes IKE float to 4500 at MM5."""
    a, b = conn_pair()
    b = dataclasses.replace(b, remote_addr="%any")
    link = make_link((a, b))
    link.nat = ("198.51.100.7", {500: 1500, 4500: 40000})
    link.drop = _drop_nth_new(lost)  # type: ignore[assignment]
    link.a.initiate("t", 0.0)
    link.pump(until=20)
    _, cb = _ok(link)
    assert cb.pair.outbound.encap == (4500, 40000)


@pytest.mark.parametrize("lost", [None, 0, 1, 2])
def test_aggressive_with_nat(lost: int | None) -> None:
    """Aggressive Mode: NAT-D in AM2/AM3 and the float with AM3 (RFC 3947 §4)."""
    a, b = conn_pair(aggressive=True)
    b = dataclasses.replace(b, remote_addr="%any")
    link = make_link((a, b), allow_aggressive_psk=True)
    link.nat = ("198.51.100.7", {500: 1500, 4500: 40000})
    if lost is not None:
        link.drop = _drop_nth_new(lost)  # type: ignore[assignment]
    link.a.initiate("t", 0.0)
    link.pump(until=20)
    _, cb = _ok(link)
    assert cb.pair.outbound.encap == (4500, 40000)
    am3 = [
        d
        for _, side, d in link.sent
        if side == "a" and len(d.data) > 28 and d.data[18] == ExchangeType.AGGRESSIVE
    ]
    assert am3[-1].src[1] == 4500 and am3[0].src[1] == 500  # AM3 already on 4500


def test_commit_bit_ignored_safely() -> None:
    """RFC 2408 §3.1/§4.8: a Quick Mode initiator setting the commit bit; we neither wait for
    nor send CONNECTED, and the SAs come up as usual on both sides."""
    link = make_link(conn_pair(dpd_delay=None))

    def set_commit(n: int, side: str, data: bytes) -> bytes:
        if data[18] == ExchangeType.QUICK_MODE:
            return data[:19] + bytes([data[19] | 0x02]) + data[20:]
        return data

    link.mutate = set_commit
    link.a.initiate("t", 0.0)
    link.pump(until=10)
    _ok(link)
    assert len(link.sent) == 9


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_second_child_initiated_by_phase1_responder(initiator: str) -> None:
    """Either end may start a Quick Mode over an ISAKMP SA (RFC 2409 §5.5)."""
    c2a = child("d", "10.1.1.0/24", "10.2.1.0/24")
    c2b = child("d", "10.2.1.0/24", "10.1.1.0/24")
    a, b = conn_pair(dpd_delay=None)
    a = dataclasses.replace(a, children=(*a.children, c2a))
    b = dataclasses.replace(b, children=(*b.children, c2b))
    link = make_link((a, b))
    link.a.initiate("t", 0.0, child="c")
    link.pump(until=5)
    other = link.b if initiator == "a" else link.a
    other.initiate("t", link.now, child="d")
    link.pump(until=10)
    assert len(link.a.ike_sa_ids()) == 1
    names_a = sorted(e.pair.name for e in link.of("a", ChildSaEstablished))
    names_b = sorted(e.pair.name for e in link.of("b", ChildSaEstablished))
    assert names_a == names_b == ["c", "d"]


@pytest.mark.parametrize("aggressive", [False, True])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_every_datagram_twice(aggressive: bool, initiator: str) -> None:
    """Duplicates are answered at most once per copy and never ping-pong (jacob-two-two)."""
    link = make_link(conn_pair(aggressive=aggressive, dpd_delay=None), allow_aggressive_psk=True)
    link.duplicate = True
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=30)
    _ok(link)
    assert len(link.sent) <= 20


def test_main_mode_6_twice_does_not_ping_pong() -> None:
    """MM6 is delayed past MM5's retransmission, so two MM6 arrive: the initiator must not
    answer the second (it is the final message), or MM5/MM6 would bounce for ever."""
    from tests.reference_impl.isakmp.link import A_ADDR, B_ADDR

    link = make_link(conn_pair(dpd_delay=None))
    a, b = link.a, link.b
    a.initiate("t", 0.0, child=None)
    la, lb = (A_ADDR, 500), (B_ADDR, 500)

    def a_to_b(now: float) -> int:
        out = a.datagrams_to_send(now)
        for d in out:
            b.receive_datagram(d.data, (A_ADDR, d.src[1]), now, local=(B_ADDR, d.dst[1]))
        return len(out)

    def b_out(now: float) -> list[bytes]:
        return [d.data for d in b.datagrams_to_send(now)]

    def to_a(datas: list[bytes], now: float) -> None:
        for x in datas:
            a.receive_datagram(x, lb, now, local=la)

    for _ in range(2):  # MM1/MM2, MM3/MM4
        a_to_b(0.0)
        to_a(b_out(0.0), 0.0)
    a_to_b(0.0)  # MM5
    mm6 = b_out(0.0)
    assert len(mm6) == 1
    a.handle_timer(0.5)  # MM5 retransmitted
    assert a_to_b(0.5) == 1
    mm6_again = b_out(0.5)
    assert mm6_again == mm6
    to_a(mm6 + mm6_again, 0.6)
    sent_after = [
        d for d in a.datagrams_to_send(0.6) if d.data[18] == ExchangeType.IDENTITY_PROTECTION
    ]
    assert sent_after == []  # no MM5 in answer to the duplicate MM6
    while (e := a.next_event()) is not None:
        link.events_a.append(e)
    assert len(link.of("a", IkeSaEstablished)) == 1


def _ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    import ipaddress
    import struct

    total = 20 + 8 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    )  # fmt: skip
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:]
    return hdr + struct.pack("!HHHH", 1234, 5678, 8 + len(payload), 0) + payload


@pytest.mark.parametrize("force_encap", [False, True])
@pytest.mark.parametrize("transform", ["cbc", "gcm"])
def test_negotiated_pairs_carry_traffic_in_the_driver(force_encap: bool, transform: str) -> None:
    """The pairs both services hand over install in the driver and carry packets both ways
    (ESP in UDP when a NAT is seen)."""
    from reference_impl.driver import Sad, Verdict

    kw = {"transforms": (ESP_GCM,)} if transform == "gcm" else {}
    a, b = conn_pair(
        force_encap=force_encap,
        child_a=child(**kw),
        child_b=child("c", "10.2.0.0/24", "10.1.0.0/24", **kw),
    )
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    ca, cb = _ok(link)
    sad_a, sad_b = Sad(), Sad()
    _, out_a = sad_a.install_pair(ca.pair, 0.0)
    _, out_b = sad_b.install_pair(cb.pair, 0.0)
    for out, sad_rx, src, dst in ((out_a, sad_b, "10.1.0.5", "10.2.0.7"),
                                  (out_b, sad_a, "10.2.0.7", "10.1.0.5")):  # fmt: skip
        pkt = _ipv4_udp(src, dst, b"hello through IKEv1 keys")
        verdict, wire = out.protect(pkt, 1.0)
        assert verdict == Verdict.DELIVERED
        assert (wire[9] == 17) == force_encap  # UDP-encapsulated ESP or raw ESP (50)
        v2, inner, _ = sad_rx.unprotect(wire, 1.0)
        assert v2 == Verdict.DELIVERED and inner == pkt


@pytest.mark.parametrize(
    ("encryption", "key_bits", "hash_alg", "group"),
    [
        (5, None, 2, DhId.MODP_1024),  # 3DES: 8-octet blocks, 24-octet key > SHA1's 20: expansion
        (7, 256, 1, DhId.MODP_1536),  # AES-256 with MD5: key expanded from a 16-octet SKEYID_e
        (7, 128, 6, DhId.ECP_384),
        (7, 192, 5, DhId.CURVE25519),
        (7, 256, 4, DhId.ECP_521),
    ],
)
def test_phase1_suites(encryption: int, key_bits: int | None, hash_alg: int, group: int) -> None:
    """RFC 2409 Appendix A attributes and Appendix B key expansion across the registry."""
    from reference_impl.isakmp.constants import AuthMethod
    from reference_impl.isakmp.proposals import Phase1Transform

    t = Phase1Transform(encryption, key_bits, hash_alg, AuthMethod.PRE_SHARED_KEY, group)
    link = make_link(conn_pair(props_a=(t,), props_b=(t,), dpd_delay=None))
    link.b.initiate("t", 0.0)
    link.pump(until=5)
    _ok(link)
    keys = link.a.phase1_keys(link.a.ike_sa_ids()[0])
    assert keys == link.b.phase1_keys(link.b.ike_sa_ids()[0])
    want = {5: 24, 7: (key_bits or 0) // 8}[encryption]
    assert len(keys["encryption_key"]) == want


ESP = IpsecProtocol.ESP
_p2 = Phase2Transform


@pytest.mark.parametrize(
    "transform",
    [
        _p2(ESP, Ikev1EspTransformId.ESP_3DES, None, Ikev1AuthAlgorithm.HMAC_SHA),
        _p2(ESP, Ikev1EspTransformId.ESP_AES_CTR, 256, Ikev1AuthAlgorithm.HMAC_SHA2_512),
        _p2(ESP, Ikev1EspTransformId.ESP_NULL, None, Ikev1AuthAlgorithm.HMAC_SHA2_256),
        _p2(ESP, Ikev1EspTransformId.ESP_AES_GCM_8, 128, None),
        _p2(ESP, Ikev1EspTransformId.ESP_AES_CCM_16, 192, None),
        _p2(ESP, Ikev1EspTransformId.ESP_AES_CBC, 256, Ikev1AuthAlgorithm.AES_XCBC_MAC),
        _p2(IpsecProtocol.AH, Ikev1AhTransformId.AH_SHA, None, Ikev1AuthAlgorithm.HMAC_SHA),
    ],
    ids=lambda t: t.name(),
)  # fmt: skip
def test_phase2_transforms_carry_traffic(transform: Phase2Transform) -> None:
    """IPsec DOI transforms map onto the registry's IKEv2 IDs and key sizes (RFC 2409 §5.5
    KEYMAT length = encryption key incl. salt + integrity key), and the driver accepts them."""
    from reference_impl.driver import Sad, Verdict

    kw = {"transforms": (transform,)}
    a, b = conn_pair(
        child_a=child(**kw), child_b=child("c", "10.2.0.0/24", "10.1.0.0/24", **kw), dpd_delay=None
    )
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    ca, cb = _ok(link)
    elen, ilen = transform.keymat_len()
    assert len(ca.pair.outbound.encr_key) == elen and len(ca.pair.outbound.integ_key) == ilen
    sad_a, sad_b = Sad(), Sad()
    _, out_a = sad_a.install_pair(ca.pair, 0.0)
    sad_b.install_pair(cb.pair, 0.0)
    pkt = _ipv4_udp("10.1.0.5", "10.2.0.7", b"x" * 33)
    verdict, wire = out_a.protect(pkt, 1.0)
    assert verdict == Verdict.DELIVERED
    v2, inner, _ = sad_b.unprotect(wire, 1.0)
    assert v2 == Verdict.DELIVERED and inner == pkt
