"""IKE_SA_INIT and IKE_AUTH between two of our services in memory, both roles, with loss,
duplication and reordering at every message position (RFC 7296 §1.2, §2.1-§2.7, §2.23)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reference_impl.events import (
    ChildSaEstablished,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PeerReplied,
)
from reference_impl.ike.enums import NotifyType
from reference_impl.ike.messages import decode_message
from reference_impl.ike.payloads import KePayload, NotifyPayload, SaPayload
from reference_impl.ike.types import Datagram
from reference_impl.sa import Mode

from .net import A_IP, B_IP, FAST, Net, Node, pair


def established(net: Net, a: Node, b: Node) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    ea = a.of(IkeSaEstablished)
    eb = b.of(IkeSaEstablished)
    assert len(ea) == 1 and len(eb) == 1, (a.events, b.events)
    assert ea[0].ike_sa_id == eb[0].ike_sa_id
    ca, cb = a.of(ChildSaEstablished), b.of(ChildSaEstablished)
    assert len(ca) == 1 and len(cb) == 1
    pa, pb = ca[0].pair, cb[0].pair
    # the two ends agree on every SA: A's outbound is B's inbound and vice versa
    assert pa.outbound == pb.inbound
    assert pa.inbound == pb.outbound
    assert len(pa.outbound.encr_key) == 20  # AES-GCM-128 + salt
    return ca[0], cb[0]


def test_psk_handshake_x25519_both_roles() -> None:
    net, a, b = pair()
    ike_id = a.service.initiate("ab", net.now)
    net.run(2)
    assert net.summaries()[:2] == [
        "IKE_SA_INIT request 0 [ SA KE NONCE N(NAT_DETECTION_SOURCE_IP) "
        "N(NAT_DETECTION_DESTINATION_IP) N(IKEV2_FRAGMENTATION_SUPPORTED) "
        "N(SIGNATURE_HASH_ALGORITHMS) ]",
        "IKE_SA_INIT response 0 [ SA KE NONCE N(NAT_DETECTION_SOURCE_IP) "
        "N(NAT_DETECTION_DESTINATION_IP) N(IKEV2_FRAGMENTATION_SUPPORTED) "
        "N(SIGNATURE_HASH_ALGORITHMS) ]",
    ]
    assert net.summaries()[2:] == ["IKE_AUTH request 1 [ SK ]", "IKE_AUTH response 1 [ SK ]"]
    ca, _cb = established(net, a, b)
    ev = a.of(IkeSaEstablished)[0]
    assert ev.initiator and ev.algorithms == "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"
    assert ev.ike_sa_id[:8] == ike_id[:8]
    assert not b.of(IkeSaEstablished)[0].initiator
    # PeerReplied comes once, before anything else, on the initiator only
    assert isinstance(a.events[0], PeerReplied) and len(a.of(PeerReplied)) == 1
    assert b.of(PeerReplied) == []
    assert str(ca.pair.outbound.ts_src[0]) == "10.1.0.1"
    assert ca.pair.outbound.mode is Mode.TUNNEL and ca.pair.outbound.encap is None


def test_psk_handshake_modp2048_aes_cbc() -> None:
    net, a, b = pair(
        a_cfg={"proposals": ("aes256-sha256-modp2048",), "esp": ("aes256-sha256",)},
        b_cfg={"proposals": ("aes256-sha256-modp2048",), "esp": ("aes256-sha256",)},
    )
    a.service.initiate("ab", net.now)
    net.run(2)
    ev = a.of(IkeSaEstablished)
    assert ev[0].algorithms == "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    pa = a.of(ChildSaEstablished)[0].pair
    pb = b.of(ChildSaEstablished)[0].pair
    assert pa.outbound == pb.inbound and pa.inbound == pb.outbound
    assert len(pa.outbound.encr_key) == 32 and len(pa.outbound.integ_key) == 32


def test_b_initiates_too() -> None:
    net, a, b = pair()
    b.service.initiate("ba", net.now)
    net.run(2)
    ea, eb = a.of(IkeSaEstablished), b.of(IkeSaEstablished)
    assert eb[0].initiator and not ea[0].initiator
    assert len(a.of(ChildSaEstablished)) == len(b.of(ChildSaEstablished)) == 1


def drop_once(positions: set[int]) -> Callable[[int, Datagram], list[Datagram]]:
    def f(index: int, d: Datagram) -> list[Datagram]:
        return [] if index in positions else [d]

    return f


@pytest.mark.parametrize("lost", [0, 1, 2, 3])
def test_loss_at_each_message_position(lost: int) -> None:
    """Any one of the four messages lost: the initiator retransmits its request byte for
    byte after 0.5 s; a lost response is answered again from the cache (RFC 7296 §2.1)."""
    net, a, b = pair()
    net.filter = drop_once({lost})
    a.service.initiate("ab", net.now)
    start = net.now
    net.run(5)
    established(net, a, b)
    wire = net.wire
    if lost % 2 == 0:  # a lost request: retransmitted 0.5 s later, byte for byte
        assert len(wire) == 5
        assert wire[lost + 1].d.data == wire[lost].d.data
        assert wire[lost + 1].at == pytest.approx(wire[lost].at + 0.5)
    else:  # a lost response: the retransmitted request gets the cached response again
        assert len(wire) == 6
        assert wire[lost + 1].d.data == wire[lost - 1].d.data
        assert wire[lost + 1].at == pytest.approx(wire[lost - 1].at + 0.5)
        assert wire[lost + 2].d.data == wire[lost].d.data
        assert b.service.stats.get("retransmitted_responses", 0) == (1 if lost == 3 else 0)
    assert start == wire[0].at


@pytest.mark.parametrize("dup", [0, 1, 2, 3])
def test_duplicate_at_each_message_position(dup: int) -> None:
    net, a, b = pair()

    def f(index: int, d: Datagram) -> list[Datagram]:
        return [d, d] if index == dup else [d]

    net.filter = f
    a.service.initiate("ab", net.now)
    net.run(5)
    established(net, a, b)  # exactly one of everything despite the duplicate


def test_reordered_auth_response_and_stale_init_response() -> None:
    """A stale IKE_SA_INIT response arriving after IKE_AUTH started changes nothing."""
    net, a, b = pair()
    held: list[Datagram] = []

    def f(index: int, d: Datagram) -> list[Datagram]:
        if index == 1:
            held.append(d)
            return [d]
        return [d]

    net.filter = f
    a.service.initiate("ab", net.now)
    net.settle()
    a.service.receive_datagram(held[0].data, held[0].src, net.now, local=held[0].dst)
    net.run(3)
    established(net, a, b)


def test_peer_silent() -> None:
    """No answer at all: NegotiationFailed(peer_silent) exactly when the schedule ends."""
    net, a, _b = pair()
    net.filter = lambda i, d: []
    start = net.now
    a.service.initiate("ab", net.now)
    net.run(10)
    sends = [s.at - start for s in net.wire]
    assert sends == list(FAST.send_times())
    assert len({s.d.data for s in net.wire}) == 1
    fail = a.of(NegotiationFailed)
    assert len(fail) == 1
    assert fail[0].reason is FailureReason.PEER_SILENT and not fail[0].peer_replied
    assert a.of(PeerReplied) == []
    assert a.service.ike_sas() == []


def test_peer_silent_after_init() -> None:
    """The responder answers IKE_SA_INIT, then goes silent: peer_replied is true."""
    net, a, _b = pair()
    net.filter = lambda i, d: [d] if i < 2 else []
    a.service.initiate("ab", net.now)
    net.run(10)
    fail = a.of(NegotiationFailed)
    assert len(fail) == 1
    assert fail[0].reason is FailureReason.PEER_SILENT and fail[0].peer_replied
    assert len(a.of(PeerReplied)) == 1


def test_no_proposal_chosen() -> None:
    net, a, b = pair(b_cfg={"proposals": ("aes256-sha384-ecp384",)})
    a.service.initiate("ab", net.now)
    net.run(5)
    assert net.summaries()[1] == "IKE_SA_INIT response 0 [ N(NO_PROPOSAL_CHOSEN) ]"
    fail = a.of(NegotiationFailed)
    assert [f.reason for f in fail] == [FailureReason.NO_PROPOSAL_CHOSEN]
    assert fail[0].peer_replied and fail[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert len(a.of(PeerReplied)) == 1
    assert len(net.wire) == 2  # nothing retransmitted after the verdict
    assert b.service.ike_sas() == []


def test_invalid_ke_payload_retry() -> None:
    """RFC 7296 §1.2: the responder wants MODP-2048; the initiator retries with that group
    and still offers all its proposals."""
    net, a, _b = pair(b_cfg={"proposals": ("aes256-sha256-modp2048",)})
    a.service.initiate("ab", net.now)
    net.run(3)
    s = net.summaries()
    assert s[1] == "IKE_SA_INIT response 0 [ N(INVALID_KE_PAYLOAD) ]"
    retry = decode_message(net.wire[2].d.data)
    ke = retry.get(KePayload)
    sa = retry.get(SaPayload)
    assert ke is not None and ke.dh_group == 14 and len(ke.data) == 256
    assert sa is not None and len(sa.proposals) == 2
    assert "MODP_2048" in a.of(IkeSaEstablished)[0].algorithms
    assert len(a.of(PeerReplied)) == 1


def test_cookie_exchange() -> None:
    """RFC 7296 §2.6: above the half-open threshold the responder answers with a COOKIE and
    keeps no state; the initiator retries with the COOKIE first."""
    net, a, b = pair(b_settings={"cookie_threshold": 0})
    a.service.initiate("ab", net.now)
    net.run(3)
    s = net.summaries()
    assert s[1] == "IKE_SA_INIT response 0 [ N(COOKIE) ]"
    retry = decode_message(net.wire[2].d.data)
    first = retry.payloads[0]
    assert isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE
    first_req = decode_message(net.wire[0].d.data)
    assert retry.payloads[1:] == first_req.payloads  # "all other payloads unchanged"
    established(net, a, b)
    assert b.service.stats["cookies_sent"] == 1


def test_bad_cookie_is_answered_with_a_new_cookie() -> None:
    net, a, b = pair(b_settings={"cookie_threshold": 0})

    def f(index: int, d: Datagram) -> list[Datagram]:
        if index == 2:  # corrupt the cookie in the retry
            data = bytearray(d.data)
            data[36] ^= 1
            return [Datagram(bytes(data), d.src, d.dst, d.marker)]
        return [d]

    net.filter = f
    a.service.initiate("ab", net.now)
    net.run(6)
    assert b.service.stats["cookies_sent"] >= 2


def test_block_threshold_drops_new_requests() -> None:
    net, a, b = pair(b_settings={"block_threshold": 0})
    a.service.initiate("ab", net.now)
    net.run(10)
    assert b.service.stats["half_open_blocked"] == len(FAST.gaps)
    assert a.of(NegotiationFailed)[0].reason is FailureReason.PEER_SILENT


def test_half_open_sa_expires() -> None:
    net, a, b = pair(b_settings={"half_open_timeout": 3.0})
    net.filter = lambda i, d: [d] if i < 2 else []
    a.service.initiate("ab", net.now)
    net.settle()
    assert b.service.half_open == 1
    net.run(3.5)
    assert b.service.half_open == 0
    assert b.service.stats["half_open_expired"] == 1


def test_authentication_failed_at_responder() -> None:
    """A wrong PSK: the responder answers AUTHENTICATION_FAILED (RFC 7296 §2.21.2)."""
    net, a, b = pair()
    b_cfg = b.service.settings.connections[0]
    from dataclasses import replace

    bad = replace(b_cfg, local=replace(b_cfg.local, psk=b"another secret"))
    b.service.settings = replace(b.service.settings, connections=(bad,))
    b.service.__init__(b.service.settings)  # type: ignore[misc]
    a.service.initiate("ab", net.now)
    net.run(5)
    fa = a.of(NegotiationFailed)
    assert [f.reason for f in fa] == [FailureReason.AUTHENTICATION_FAILED]
    assert fa[0].notify == NotifyType.AUTHENTICATION_FAILED
    fb = b.of(NegotiationFailed)
    assert [f.reason for f in fb] == [FailureReason.AUTHENTICATION_FAILED]
    assert a.of(IkeSaEstablished) == [] and b.of(IkeSaEstablished) == []
    assert a.service.ike_sas() == [] and b.service.ike_sas() == []


def test_authentication_failed_at_initiator() -> None:
    """The initiator cannot verify the responder: it reports it in an INFORMATIONAL
    exchange (RFC 7296 §2.21.2) and both ends drop the IKE SA."""
    net, a, b = pair()
    from dataclasses import replace

    a_cfg = a.service.settings.connections[0]
    bad = replace(a_cfg, remote=replace(a_cfg.remote, psk=b"expected something else"))
    a.service.__init__(replace(a.service.settings, connections=(bad,)))  # type: ignore[misc]
    a.service.initiate("ab", net.now)
    net.run(5)
    assert [f.reason for f in a.of(NegotiationFailed)] == [FailureReason.AUTHENTICATION_FAILED]
    assert net.summaries()[-2:] == [
        "INFORMATIONAL request 2 [ SK ]",
        "INFORMATIONAL response 2 [ SK ]",
    ]
    assert [f.reason for f in b.of(NegotiationFailed)] == [FailureReason.AUTHENTICATION_FAILED]
    assert len(b.of(IkeSaDeleted)) == 1
    assert a.service.ike_sas() == [] and b.service.ike_sas() == []


def test_a_ip_constants() -> None:
    assert A_IP != B_IP


@pytest.mark.parametrize(
    ("a_id", "b_id", "id_type"),
    [
        ("alice@example.org", "bob@example.org", 3),  # ID_RFC822_ADDR
        ("@a.example", "@b.example", 2),  # ID_FQDN
        ("2001:db8::1", "2001:db8::2", 5),  # ID_IPV6_ADDR
        ("keyid:0a0b0c", "keyid:0d0e0f", 11),  # ID_KEY_ID
        ("C=CH, O=Test, CN=a", "C=CH, O=Test, CN=b", 9),  # ID_DER_ASN1_DN
    ],
)
def test_psk_with_every_id_type(a_id: str, b_id: str, id_type: int) -> None:
    """RFC 7296 §3.5: the identities are carried and matched whatever their type."""
    from dataclasses import replace

    from reference_impl.ike.config import Identity

    net, a, b = pair()
    for node, me, peer in ((a, a_id, b_id), (b, b_id, a_id)):
        cfg = node.service.settings.connections[0]
        cfg = replace(
            cfg,
            local=replace(cfg.local, identity=Identity.parse(me)),
            remote=replace(cfg.remote, identity=Identity.parse(peer)),
        )
        node.service.settings = replace(node.service.settings, connections=(cfg,))
    assert Identity.parse(a_id).id_type == id_type
    a.service.initiate("ab", net.now)
    net.run(2)
    ev = a.of(IkeSaEstablished)
    assert len(ev) == 1 and len(b.of(IkeSaEstablished)) == 1
    expected = b_id[1:] if b_id.startswith("@") else b_id  # "@" only marks an FQDN
    assert ev[0].peer_id.replace(" ", "") == expected.replace(" ", "")
