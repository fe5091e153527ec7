"""The reference node against strongSwan 5.9.8 (kernel-libipsec) in network namespaces (root):
IKEv2 with PSK, each side as initiator, ping through the tunnel. strongSwan's libipsec fakes
a NAT, so our node must float IKE to 4500 and speak ESP-in-UDP (peers.md §0).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.peers.base import IkeSaState, Proposal, Scenario, wait_for_sa
from harness.peers.reference import ReferencePeer
from harness.peers.strongswan import StrongSwanPeer
from harness.topology import Topology
from harness.topology.base import Node

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("strongswan"), pytest.mark.slow]


@pytest.fixture
def peers(pair: Topology) -> Iterator[tuple[ReferencePeer, StrongSwanPeer]]:
    avail = StrongSwanPeer.availability()
    if not avail.available:
        pytest.skip(avail.detail)
    ref, sw = ReferencePeer(pair.node("a")), StrongSwanPeer(pair.node("b"))
    try:
        sw.start()
        yield ref, sw
    finally:
        ref.stop()
        sw.stop()


def _ping(src: Node, dst: Node) -> bool:
    argv = ["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", src.addresses.inner_v4]
    return src.exec([*argv, dst.addresses.inner_v4]).ok


def _up(sas: list[IkeSaState]) -> bool:
    return any(sa.established and sa.children for sa in sas)


@pytest.mark.parametrize("initiator", ["reference", "strongswan"])
@pytest.mark.parametrize(
    "esp", ["AES_GCM_16_128", "AES_CBC_256/HMAC_SHA2_256_128"], ids=["gcm", "cbc"]
)
def test_ikev2_psk_tunnel_with_strongswan(
    pair: Topology, peers: tuple[ReferencePeer, StrongSwanPeer], initiator: str, esp: str
) -> None:
    ref, sw = peers
    a, b = pair.node("a"), pair.node("b")
    sc = Scenario.between(a, b, esp_proposals=(Proposal.parse(esp),))
    ref.configure(sc)
    sw.configure(sc)
    (ref if initiator == "reference" else sw).initiate(timeout=15)
    wait_for_sa(ref, _up, 10, "the reference node's SAs")
    wait_for_sa(sw, _up, 10, "strongSwan's SAs")
    assert _ping(a, b) and _ping(b, a)
    (sa_ref,) = ref.list_sas()
    (sa_sw,) = sw.list_sas()
    assert (sa_ref.spi_i, sa_ref.spi_r) == (sa_sw.spi_i, sa_sw.spi_r)
    assert sa_ref.initiator == (initiator == "reference")
    (c_ref,), (c_sw,) = sa_ref.children, sa_sw.children
    assert (c_ref.spi_in, c_ref.spi_out) == (c_sw.spi_out, c_sw.spi_in)
    assert c_ref.encap and sa_ref.nat  # libipsec's faked NAT: ESP in UDP 4500
    assert c_ref.packets_in >= 3 and c_ref.packets_out >= 3
    # Both ends derived the same keys (charon's log against our SA dump).
    keys_ref, keys_sw = ref.keys(), sw.keys()
    (k_ref,) = keys_ref.child
    k_sw = next(k for k in keys_sw.child if k.spi_in == c_sw.spi_in)
    assert k_ref.outbound() == k_sw.inbound() and k_ref.inbound() == k_sw.outbound()
    ref.terminate()
    wait_for_sa(sw, lambda sas: not sas, 10, "strongSwan to delete its SAs")


@pytest.mark.parametrize("initiator", ["reference", "strongswan"])
def test_ikev1_main_mode_with_strongswan(
    pair: Topology, peers: tuple[ReferencePeer, StrongSwanPeer], initiator: str
) -> None:
    ref, sw = peers
    a, b = pair.node("a"), pair.node("b")
    sc = Scenario.between(
        a,
        b,
        ike_version=1,
        esp_proposals=(Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048"),),
    )
    ref.configure(sc)
    sw.configure(sc)
    (ref if initiator == "reference" else sw).initiate(timeout=15)
    wait_for_sa(ref, _up, 10, "the reference node's SAs")
    wait_for_sa(sw, _up, 10, "strongSwan's SAs")
    assert _ping(a, b) and _ping(b, a)
    (sa_ref,) = ref.list_sas()
    assert sa_ref.version == 1 and sa_ref.children[0].encap
