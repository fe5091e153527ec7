"""NAT traversal (RFC 7296 §2.23, RFC 3948) and IKE fragmentation (RFC 7383) between two of
our services in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reference_impl.events import ChildSaEstablished, IkeSaEstablished, NegotiationFailed
from reference_impl.ike.messages import decode_message
from reference_impl.ike.payloads import NotifyPayload
from reference_impl.ike.types import Datagram

from .net import A_IP, B_IP, pair


def test_no_nat_stays_on_500() -> None:
    net, a, _b = pair()
    a.service.initiate("ab", net.now)
    net.run(2)
    assert {(s.d.src[1], s.d.dst[1]) for s in net.wire} == {(500, 500)}
    assert a.of(ChildSaEstablished)[0].pair.outbound.encap is None


def test_peer_fakes_nat_like_strongswan() -> None:
    """strongSwan with libipsec fakes a NAT (a bogus NATD_SOURCE_IP): we float to 4500 for
    IKE_AUTH, with the non-ESP marker, and encapsulate ESP in UDP 4500 (peers.md)."""
    net, a, b = pair(b_cfg={"force_encap": True})
    a.service.initiate("ab", net.now)
    net.run(2)
    ports = [(s.d.src[1], s.d.dst[1], s.d.marker) for s in net.wire]
    assert ports == [(500, 500, False), (500, 500, False), (4500, 4500, True), (4500, 4500, True)]
    (sa_a,) = a.service.ike_sas()
    assert sa_a.nat_remote and not sa_a.nat_local
    pa = a.of(ChildSaEstablished)[0].pair
    pb = b.of(ChildSaEstablished)[0].pair
    assert pa.outbound.encap == (4500, 4500) and pa.inbound.encap == (4500, 4500)
    assert pa.outbound == pb.inbound


def test_we_fake_nat() -> None:
    net, a, b = pair(a_cfg={"force_encap": True})
    a.service.initiate("ab", net.now)
    net.run(2)
    (sa_b,) = b.service.ike_sas()
    assert sa_b.nat_remote
    assert net.wire[2].d.dst[1] == 4500
    assert a.of(ChildSaEstablished)[0].pair.outbound.encap == (4500, 4500)


def test_float_always() -> None:
    net, a, _b = pair(a_cfg={"float_always": True})
    a.service.initiate("ab", net.now)
    net.run(2)
    assert net.wire[2].d.dst == (B_IP, 4500) and net.wire[2].d.marker
    assert a.of(ChildSaEstablished)[0].pair.outbound.encap is None  # no NAT: plain ESP


def test_initiator_behind_a_real_nat() -> None:
    """A source NAT rewrites A's address and ports: both ends detect it, IKE floats to 4500,
    B answers to the NAT's mapped port, A sends keepalives."""
    net, a, b = pair()
    net.nat[A_IP] = ("203.0.113.7", 40000)
    b.service.settings = replace(
        b.service.settings,
        connections=(replace(b.service.settings.connections[0], remote_addrs=("203.0.113.7",)),),
    )
    a.service.initiate("ab", net.now)
    net.run(2)
    assert len(a.of(IkeSaEstablished)) == 1 and len(b.of(IkeSaEstablished)) == 1
    (sa_a,) = a.service.ike_sas()
    (sa_b,) = b.service.ike_sas()
    assert sa_a.nat_local and sa_b.nat_remote
    assert sa_b.remote[0] == "203.0.113.7" and sa_b.remote[1] != 4500  # the mapped port
    pb = b.of(ChildSaEstablished)[0].pair
    assert pb.outbound.encap == (4500, sa_b.remote[1])
    # NAT-T keepalives from the end behind the NAT (RFC 3948 §2.3), without the marker
    n0 = len(net.wire)
    net.run(25)
    keepalives = [s for s in net.wire[n0:] if s.d.data == b"\xff"]
    assert keepalives and all(s.d.src == (A_IP, 4500) and not s.d.marker for s in keepalives)
    # the NAT mapping changes: B follows the new port on the next authenticated message
    net._nat_map.clear()
    net._nat_rev.clear()
    net.nat[A_IP] = ("203.0.113.7", 50000)
    a.service.liveness_check(sa_a.ike_sa_id, net.now)
    net.run(2)
    assert sa_b.remote == ("203.0.113.7", 50000)


def test_natd_hash_matches_the_ports_in_use() -> None:
    net, a, _b = pair()
    a.service.initiate("ab", net.now)
    net.settle()
    req = decode_message(net.wire[0].d.data)
    natd = [p for p in req.payloads if isinstance(p, NotifyPayload) and p.notify_type == 16389]
    from reference_impl.ike.types import natd_hash

    assert natd[0].data == natd_hash(req.spi_i, bytes(8), (B_IP, 500))


@pytest.mark.parametrize("direction", ["request", "response"])
def test_fragmented_ike_auth(direction: str) -> None:
    """RFC 7383: with a small fragment size, IKE_AUTH goes in SKF fragments; each fragment
    is protected on its own and the receiver reassembles them."""
    small = {"fragment_size": 200}
    net, a, b = pair(
        a_cfg=small if direction == "request" else {},
        b_cfg=small if direction == "response" else {},
    )
    a.service.initiate("ab", net.now)
    net.run(2)
    index = 2 if direction == "request" else None
    skf = [s for s in net.wire if "SKF" in s.summary]
    assert len(skf) >= 2
    assert all(len(s.d.data) + 28 <= 200 for s in skf)
    if index is not None:
        assert "SKF" in net.summaries()[index]
    assert len(a.of(ChildSaEstablished)) == 1 and len(b.of(ChildSaEstablished)) == 1


def test_fragment_lost_then_whole_message_retransmitted() -> None:
    net, a, b = pair(a_cfg={"fragment_size": 200})
    first_fragment_seen: list[int] = []

    def f(index: int, d: Datagram) -> list[Datagram]:
        try:
            summary = decode_message(d.data).summary()
        except Exception:
            return [d]
        if "SKF" in summary and "request" in summary and not first_fragment_seen:
            first_fragment_seen.append(index)
            return []  # lose one fragment of the first transmission
        return [d]

    net.filter = f
    a.service.initiate("ab", net.now)
    net.run(3)
    assert first_fragment_seen
    assert len(a.of(ChildSaEstablished)) == 1 and len(b.of(ChildSaEstablished)) == 1


def test_fragments_reordered_and_duplicated() -> None:
    net, a, b = pair(a_cfg={"fragment_size": 200}, b_cfg={"fragment_size": 200})
    held: list[Datagram] = []

    def f(index: int, d: Datagram) -> list[Datagram]:
        try:
            summary = decode_message(d.data).summary()
        except Exception:
            return [d]
        if "SKF" in summary and "request" in summary:
            held.append(d)
            return [d, d] if len(held) == 1 else []
        return [d]

    net.filter = f
    a.service.initiate("ab", net.now)
    net.settle()
    for d in reversed(held[1:]):  # the rest, in reverse order
        b.service.receive_datagram(d.data, d.src, net.now, local=d.dst)
    net.run(3)
    assert len(a.of(ChildSaEstablished)) == 1 and len(b.of(ChildSaEstablished)) == 1
    assert a.of(NegotiationFailed) == []


def test_no_fragmentation_without_peer_support() -> None:
    net, a, _b = pair(a_cfg={"fragment_size": 200}, b_cfg={"fragmentation": False})
    a.service.initiate("ab", net.now)
    net.run(2)
    assert not any("SKF" in s for s in net.summaries())
    assert len(a.of(ChildSaEstablished)) == 1


def test_ipv6_endpoints_and_selectors() -> None:
    """IKE over IPv6 (NAT-D hashes 16-octet addresses) with IPv6 selectors, and fragments
    sized for IPv6 headers."""
    from reference_impl.ike.config import ServiceSettings
    from reference_impl.ike.service import IkeService

    from .net import Net, Node, psk_config, rng

    a6, b6 = "2001:db8::1", "2001:db8::2"
    ca = psk_config(
        "ab", a6, b6, local_ts="2001:db8:1::/64", remote_ts="2001:db8:2::/64", fragment_size=300
    )
    cb = psk_config("ba", b6, a6, local_ts="2001:db8:2::/64", remote_ts="2001:db8:1::/64")
    a = Node("A", a6, IkeService(ServiceSettings(connections=(ca,), local_address=a6, rng=rng(3))))
    b = Node("B", b6, IkeService(ServiceSettings(connections=(cb,), local_address=b6, rng=rng(4))))
    net = Net(a, b)
    a.service.initiate("ab", net.now)
    net.run(2)
    (pa,) = [e.pair for e in a.of(ChildSaEstablished)]
    (pb,) = [e.pair for e in b.of(ChildSaEstablished)]
    assert pa.outbound == pb.inbound and pa.outbound.dst == b6
    assert [str(t) for t in pa.outbound.ts_dst] == ["2001:db8:2::-2001:db8:2:0:ffff:ffff:ffff:ffff"]
    (sa_a,) = a.service.ike_sas()
    assert not sa_a.nat
    assert any("SKF" in s for s in net.summaries())
    assert all(len(s.d.data) + 48 <= 300 for s in net.wire if "SKF" in s.summary)
