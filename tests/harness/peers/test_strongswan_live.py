"""strongSwan <-> strongSwan and strongSwan <-> libreswan in network namespaces (root).

Recipes and expected behaviour: ../shared/design/peers.md (§0 recipe, §2 IKEv1, §4 libreswan,
§5 keys from the log, §6 retransmission against a closed port).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.peers.base import (
    FAST_RETRANSMIT,
    IkeSaState,
    Lifetimes,
    NotApplicable,
    PeerError,
    Proposal,
    Scenario,
    wait_for_sa,
)
from harness.peers.libreswan import LibreswanPeer
from harness.peers.pki import make_pki
from harness.peers.strongswan import StrongSwanPeer
from harness.topology import Topology
from harness.topology.base import Node

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("strongswan")]


def _skip_unless(peer: type[StrongSwanPeer] | type[LibreswanPeer]) -> None:
    avail = peer.availability()
    if not avail.available:
        pytest.skip(avail.detail)


@pytest.fixture
def swans(pair: Topology) -> Iterator[tuple[StrongSwanPeer, StrongSwanPeer]]:
    _skip_unless(StrongSwanPeer)
    a, b = StrongSwanPeer(pair.node("a")), StrongSwanPeer(pair.node("b"))
    with a, b:
        yield a, b


def _ping(src: Node, dst: Node) -> bool:
    """Pings between the inner addresses: they reach each other only through the tunnel."""
    argv = ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", src.addresses.inner_v4]
    return src.exec([*argv, dst.addresses.inner_v4]).ok


def _established(sas: list[IkeSaState], child: bool = True) -> bool:
    return any(
        sa.established and (not child or any(c.state == "INSTALLED" for c in sa.children))
        for sa in sas
    )


def _udp_4500_payloads(pcap: Path) -> tuple[list[bytes], int]:
    """Payloads of UDP 4500 datagrams and the count of raw ESP (IP protocol 50) packets."""
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    payloads, raw_esp = [], 0
    for pkt in rdpcap(str(pcap)):
        if IP in pkt and pkt[IP].proto == 50:
            raw_esp += 1
        elif UDP in pkt and 4500 in (pkt[UDP].sport, pkt[UDP].dport):
            payloads.append(bytes(pkt[UDP].payload))
    return payloads, raw_esp


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ikev2_psk_tunnel_keys_and_esp_in_udp(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer], initiator: str
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans if initiator == "a" else swans[::-1]
    scenario = Scenario.between(a, b)
    cap = pair.capture()
    ini.configure(scenario)
    resp.configure(scenario)
    ini.initiate(timeout=10)

    (sa_i,) = ini.list_sas()
    sas_r = wait_for_sa(resp, _established, 5, "the responder's SAs")
    (sa_r,) = sas_r
    assert sa_i.established and sa_i.initiator and not sa_r.initiator
    assert (sa_i.spi_i, sa_i.spi_r) == (sa_r.spi_i, sa_r.spi_r)
    assert sa_i.proposal == "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    (child_i,), (child_r,) = sa_i.children, sa_r.children
    assert child_i.encap and child_i.mode == "TUNNEL" and child_i.proposal == "AES_GCM_16_128"
    assert (child_i.spi_in, child_i.spi_out) == (child_r.spi_out, child_r.spi_in)

    assert _ping(a, b) and _ping(b, a)

    keys_i, keys_r = ini.keys(), resp.keys()
    (ike_i,), (ike_r,) = keys_i.ike, keys_r.ike
    assert set(ike_i.secrets) == {"SK_d", "SK_ai", "SK_ar", "SK_ei", "SK_er", "SK_pi", "SK_pr"}
    assert ike_i.secrets == ike_r.secrets
    assert (ike_i.spi_i, ike_i.spi_r) == (sa_i.spi_i, sa_i.spi_r) == (ike_r.spi_i, ike_r.spi_r)
    (ck_i,), (ck_r,) = keys_i.child, keys_r.child
    assert ck_i.initiator and not ck_r.initiator
    assert len(ck_i.encr_i) == 20  # AES-128 key + 4-octet salt (RFC 4106 §8.1)
    assert ck_i.outbound() == ck_r.inbound() and ck_i.inbound() == ck_r.outbound()
    assert ck_i.outbound()[0] == child_i.spi_out

    payloads, raw_esp = _udp_4500_payloads(cap.stop())
    esp_spis = {int.from_bytes(p[:4], "big") for p in payloads if p[:4] != b"\0\0\0\0"}
    ike_on_4500 = [p for p in payloads if p[:4] == b"\0\0\0\0"]
    assert esp_spis == {child_i.spi_in, child_i.spi_out}  # ESP in UDP 4500, both ways
    assert ike_on_4500, "IKE_AUTH floats to 4500 with the non-ESP marker"
    assert raw_esp == 0

    ini.terminate()
    assert ini.list_sas() == []
    wait_for_sa(resp, lambda sas: sas == [], 5, "the responder to delete its SAs")
    assert ini.log_path in ini.logs() and ini.log_path.stat().st_size > 0


def test_ikev1_main_mode_and_quick_mode_with_pfs(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer]
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(
        a,
        b,
        ike_version=1,
        esp_proposals=(Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048"),),
    )
    ini.configure(scenario)
    resp.configure(scenario)
    ini.initiate(timeout=10)
    (sa,) = ini.list_sas()
    assert sa.version == 1 and sa.established
    assert sa.children[0].proposal == "AES_CBC_128/HMAC_SHA2_256_128/MODP_2048"
    assert _ping(a, b)
    wait_for_sa(resp, _established, 5, "the responder's SAs")
    (ike_i,), (ike_r,) = ini.keys().ike, resp.keys().ike
    assert ike_i.version == 1 and ike_i.secrets == ike_r.secrets
    (ck_i,), (ck_r,) = ini.keys().child, resp.keys().child
    assert ck_i.outbound() == ck_r.inbound()


def test_ikev1_aggressive_mode_psk(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer]
) -> None:
    """peers.md §2: works once the responder allows Aggressive Mode with a PSK."""
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(a, b, ike_version=1, aggressive=True)
    ini.configure(scenario)
    resp.configure(scenario)
    ini.initiate(timeout=10)
    assert _established(ini.list_sas())
    assert "initiating Aggressive Mode IKE_SA" in ini.log_path.read_text()
    assert _ping(a, b)


def test_ikev2_over_ipv6(pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer]) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(a, b, family=6)
    ini.configure(scenario)
    resp.configure(scenario)
    ini.initiate(timeout=10)
    (sa,) = ini.list_sas()
    assert (sa.local, sa.remote) == (a.addresses.v6, b.addresses.v6)
    assert sa.children[0].local_ts == (f"{a.addresses.inner_v6}/128",)
    assert a.addresses.inner_v6 and b.addresses.inner_v6
    argv = ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "-I", a.addresses.inner_v6]
    assert a.exec([*argv, b.addresses.inner_v6]).ok


def test_child_and_ike_rekey_keep_the_tunnel(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer]
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(a, b)
    ini.configure(scenario)
    resp.configure(scenario)
    ini.initiate(timeout=10)
    old = ini.list_sas()[0]
    resp.rekey_child()  # from the responder's side
    ini.rekey_ike()
    (new,) = wait_for_sa(
        ini, lambda sas: len(sas) == 1 and _established(sas), 5, "the old IKE SA to go"
    )
    assert new.spi_i != old.spi_i
    assert _ping(a, b)
    # every Child SA's keys agree between the two logs, the rekeyed ones included
    keys_i, keys_r = ini.keys(), resp.keys()
    assert len(keys_i.child) == len(keys_r.child) == 2
    by_out = {c.spi_out: c for c in keys_i.child}
    for child in keys_r.child:
        assert by_out[child.spi_in].outbound() == child.inbound()
    assert keys_r.child[1].initiator and not keys_i.child[1].initiator  # b started the rekey
    # the rekeyed IKE SA's keys are attributed to the new SA on both ends
    ike_i = {k.unique_id: k for k in keys_i.ike}
    (ike_r,) = [k for k in keys_r.ike if k.spi_i == new.spi_i]
    assert ike_i[new.unique_id].spi_i == new.spi_i
    assert ike_i[new.unique_id].secrets == ike_r.secrets
    assert ike_i[new.unique_id].secrets != ike_i[old.unique_id].secrets


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_ikev2_certificate_authentication(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer], tmp_path: Path, kind: str
) -> None:
    a, b = pair.node("a"), pair.node("b")
    base = Scenario.between(a, b)
    pki = make_pki(tmp_path / "pki", [a.addresses.v4, b.addresses.v4], kind)  # type: ignore[arg-type]
    scenario = pki.apply(base)
    assert scenario.needs() >= {"auth.ecdsa" if kind == "ecdsa" else "auth.rsa"}
    ini, resp = swans
    ini.configure(scenario)
    resp.configure(scenario)
    ini.initiate(timeout=10)
    assert _established(ini.list_sas())
    assert _ping(a, b)
    log = ini.log_path.read_text()
    # strongSwan signs with RFC 7427 digital signatures (auth method 14) by default
    method = "ECDSA_WITH_SHA256_DER" if kind == "ecdsa" else "RSA_EMSA_PKCS1_SHA2_256"
    assert f"authentication of '{b.addresses.v4}' with {method} successful" in log


def test_child_lifetime_makes_strongswan_rekey_on_its_own(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer]
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(a, b)
    ini.configure(scenario.with_(lifetimes=Lifetimes(child_rekey=2, jitter=0)))
    resp.configure(scenario)
    ini.initiate(timeout=10)
    (first,) = ini.list_sas()[0].children
    start = time.monotonic()
    wait_for_sa(
        ini,
        lambda sas: any(
            c.spi_in != first.spi_in and c.state == "INSTALLED" for c in sas[0].children
        ),
        6,
        "the Child SA to be rekeyed at its lifetime",
    )
    assert time.monotonic() - start <= 4.0
    log = ini.log_path.read_text()
    assert "CHILD_SA c{1} state change: INSTALLED => REKEYING" in log  # rekeyed, not expired
    assert "closing expired CHILD_SA" not in log
    assert _ping(a, b)


def test_a_scenario_the_peer_cannot_run_is_not_applicable(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer]
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ah = Scenario.between(a, b, ah_proposals=(Proposal.parse("HMAC_SHA2_256_128"),))
    with pytest.raises(NotApplicable, match="kernel-libipsec implements no AH"):
        swans[0].configure(ah)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["drop", "reject"])
def test_closed_udp_500_fails_after_the_retransmission_schedule(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer], how: str
) -> None:
    from scapy.layers.inet import ICMP, UDP
    from scapy.utils import rdpcap

    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(a, b, retransmit=FAST_RETRANSMIT)
    ini.configure(scenario)
    resp.configure(scenario)
    b.close_udp((500, 4500), how=how)  # type: ignore[arg-type]
    cap = pair.capture()
    start = time.monotonic()
    with pytest.raises(PeerError):
        ini.initiate(timeout=30)
    elapsed = time.monotonic() - start
    # 1 + 1.5 + 2.25 + 3.375 = 8.125 s; charon ignores ICMP, so reject fails no sooner
    # (the upper bound leaves room for a loaded machine; the wire shows the exact schedule)
    assert 7.9 <= elapsed <= 12.0, elapsed
    packets = rdpcap(str(cap.stop()))
    sa_init = [p for p in packets if UDP in p and p[UDP].dport == 500 and p[UDP].sport == 500]
    assert len(sa_init) == 4  # the request and 3 retransmissions
    gaps = [float(y.time - x.time) for x, y in itertools.pairwise(sa_init)]
    assert gaps == pytest.approx([1.0, 1.5, 2.25], abs=0.25)
    unreachable = [p for p in packets if ICMP in p and p[ICMP].type == 3 and p[ICMP].code == 3]
    assert len(unreachable) == (4 if how == "reject" else 0)
    assert resp.list_sas() == []
    assert "giving up after 3 retransmits" in ini.log_path.read_text()


def test_strongswan_to_libreswan_childless_ikev2_and_ike_rekey(pair: Topology) -> None:
    _skip_unless(StrongSwanPeer)
    _skip_unless(LibreswanPeer)
    a, b = pair.node("a"), pair.node("b")
    scenario = Scenario.between(a, b, child=False)
    with StrongSwanPeer(a) as sw, LibreswanPeer(b) as lsw:
        sw.configure(scenario)
        lsw.configure(scenario)
        sw.initiate(timeout=10)
        (sa,) = sw.list_sas()
        assert sa.established and sa.children == ()
        (first,) = wait_for_sa(lsw, lambda s: _established(s, child=False), 5, "libreswan SA")
        log = lsw.logs()[0].read_text()
        assert "IKE_AUTH request does not propose a Child SA; creating childless SA" in log
        sw.rekey_ike()
        rekeyed = wait_for_sa(
            lsw,
            lambda s: any(x.established and x.unique_id != first.unique_id for x in s),
            5,
            "libreswan to take the rekeyed IKE SA",
        )
        assert first.unique_id not in {x.unique_id for x in rekeyed}
        assert "responder rekeyed IKE SA" in lsw.logs()[0].read_text()
        sw.terminate()
        wait_for_sa(lsw, lambda s: s == [], 5, "libreswan to delete the IKE SA")


def test_strongswan_to_libreswan_ikev1_main_mode_only(pair: Topology) -> None:
    _skip_unless(StrongSwanPeer)
    _skip_unless(LibreswanPeer)
    a, b = pair.node("a"), pair.node("b")
    scenario = Scenario.between(a, b, ike_version=1, child=False)
    with StrongSwanPeer(a) as sw, LibreswanPeer(b) as lsw:
        sw.configure(scenario)
        lsw.configure(scenario)
        sw.initiate(timeout=10)
        (sa,) = sw.list_sas()
        assert sa.version == 1 and sa.established and sa.children == ()
        (theirs,) = wait_for_sa(lsw, lambda s: _established(s, child=False), 5, "libreswan")
        assert theirs.version == 1


def test_libreswan_manifest_makes_child_sas_not_applicable_here(pair: Topology) -> None:
    _skip_unless(LibreswanPeer)
    caps = LibreswanPeer.capabilities()
    if caps.has("child_sa"):
        pytest.skip("this kernel has ESP: libreswan can install Child SAs here")
    scenario = Scenario.between(pair.node("a"), pair.node("b"))
    with pytest.raises(NotApplicable, match="errno 38"):
        LibreswanPeer(pair.node("b")).check(scenario=scenario)
