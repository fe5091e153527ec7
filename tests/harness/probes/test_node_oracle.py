"""The oracle on our own reference node: two sans-I/O hosts on the in-memory network of
``tests/reference_impl/node/hostnet.py`` (virtual clock), everything they put on the wire fed
to the oracle with the keys from their SA dumps (``sadump``, the ``list_sas`` shape of
/work/notes/oracle-keys.md). Every IKE message and ESP/AH packet must verify; a host told to
corrupt ICVs is caught by the oracle exactly as often as its peer's driver counts it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.probes.craft import udp_packet as scapy_udp
from harness.probes.keys import KeySet
from harness.probes.oracle import ICV_GOOD, OracleReport, check_packets
from harness.probes.pcap import WirePacket, ip_packet
from reference_impl.node import sadump
from tests.reference_impl.node.hostnet import (
    A_IN,
    B_IN,
    A,
    B,
    Net,
    host,
    pair,
    tunnel_policy,
    udp_packet,
)

VERSIONS = ["ikev2", "ikev1"]


def wire(net: Net) -> list[WirePacket]:
    """Everything the hosts sent, as IP datagrams in order (UDP records get IP/UDP headers)."""
    out = []
    for n, w in enumerate(net.wire, 1):
        datagram = w.data if w.kind == "ip" else scapy_udp(w.src, w.dst, w.sport, w.dport, w.data)
        out.append(ip_packet(datagram, w.t, n))
    return out


class Keys:
    """The SA dumps of both hosts, taken whenever asked and merged (rekeyed SAs are gone from
    a later dump but their packets are still on the wire)."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.keys = KeySet()

    def take(self) -> None:
        for addr, name in ((A, "a"), (B, "b")):
            dump = sadump.dump(self.net.hosts[addr], keys=True)
            self.keys = self.keys.merge(KeySet.from_node_sas(dump, source=f"reference:{name}"))

    def check(self, **kw: object) -> OracleReport:
        self.take()
        oracle = check_packets(wire(self.net), self.keys, **kw)  # type: ignore[arg-type]
        return oracle.report


def _all_verified(report: OracleReport) -> None:
    assert report.ok, report.summary() + "\n" + "\n".join(str(p) for p in report.problems)
    assert all(m.integrity == ICV_GOOD for m in report.ike_messages if m.encrypted)
    for sa in report.ipsec_sas:
        assert sa.icv_good == sa.packets > 0 and sa.seq_first == 1
        assert sa.seq_last == sa.seq_max == sa.packets and sa.gaps == 0
        assert sa.padding_other == 0 and sa.keys.startswith("reference:")


@pytest.mark.parametrize("version", VERSIONS)
def test_transport_traffic_both_ways(version: str) -> None:
    net = pair(version)
    keys = Keys(net)
    net.send(A, udp_packet(A, B, 1000, 2000, b"hello"))
    net.run(1.0)
    net.send(B, udp_packet(B, A, 2000, 1000, b"reply"))
    for i in range(5):
        net.send(A, udp_packet(A, B, 1000, 2000, b"more %d" % i))
    net.run(2.0)
    report = keys.check()
    _all_verified(report)
    assert sorted(s.packets for s in report.ipsec_sas) == [1, 6]
    assert {s.mode for s in report.ipsec_sas} == {"transport"}
    assert all(s.next_headers == {17: s.packets} for s in report.ipsec_sas)
    assert report.key_mismatches == []  # the Child SA keys the oracle derives = the node's
    (ike,) = report.ike_sas
    assert ike.version == (2 if version == "ikev2" else 1) and ike.verified > 0


@pytest.mark.parametrize("version", VERSIONS)
def test_tunnel_with_pfs(version: str) -> None:
    net = Net()
    a = net.add(A, host(A, inner=(A_IN,)))
    b = net.add(B, host(B, inner=(B_IN,)))
    a.load_policy(tunnel_policy(A, B, "10.1.0.0/24", "10.2.0.0/24", version=version), 0, text=True)
    b.load_policy(tunnel_policy(B, A, "10.2.0.0/24", "10.1.0.0/24", version=version), 0, text=True)
    keys = Keys(net)
    net.send(A, udp_packet(A_IN, B_IN, 5, 6, b"in the tunnel"))
    net.run(1.0)
    net.send(B, udp_packet(B_IN, A_IN, 6, 5, b"and back"))
    net.run(2.0)
    report = keys.check()
    _all_verified(report)
    flows = {f for s in report.ipsec_sas for f in s.inner_flows}
    assert flows == {f"{A_IN} > {B_IN}", f"{B_IN} > {A_IN}"}
    assert all(s.outside_selectors == 0 and s.next_headers == {4: 1} for s in report.ipsec_sas)


def test_ah_ikev1() -> None:
    net = pair("ikev1", protocol="ah")
    keys = Keys(net)
    net.send(A, udp_packet(A, B, 1, 2, b"authenticated"))
    net.run(1.0)
    report = keys.check()
    _all_verified(report)
    (sa,) = report.ipsec_sas
    assert sa.protocol == "ah" and sa.next_headers == {17: 1}


@pytest.mark.parametrize("version", VERSIONS)
def test_rekey_on_request(version: str) -> None:
    net = pair(version)
    keys = Keys(net)
    net.send(A, udp_packet(A, B, 1, 2, b"first"))
    net.run(1.0)
    keys.take()
    (old,) = sadump.child_sas(net.hosts[A])
    net.hosts[A].rekey_child(old["inbound"]["spi"], net.now)
    net.run(3.0)
    net.send(A, udp_packet(A, B, 1, 2, b"second"))
    net.send(B, udp_packet(B, A, 2, 1, b"back"))
    net.run(4.0)
    report = keys.check()
    _all_verified(report)
    assert len(report.ipsec_sas) == 3  # the old SA A->B, and the new pair
    assert report.key_mismatches == []
    exchanges = {m.exchange for m in report.ike_messages}
    assert ("CREATE_CHILD_SA" if version == "ikev2" else "QUICK_MODE") in exchanges
    assert "INFORMATIONAL" in exchanges  # the old pair's delete


def test_child_keys_from_the_exchange_alone() -> None:
    """Without any Child SA key in the dump, the oracle derives them (no PFS)."""
    net = pair("ikev2")
    net.send(A, udp_packet(A, B, 1, 2, b"x"))
    net.run(1.0)
    dump = sadump.dump(net.hosts[A], keys=True)
    dump["child_sas"] = []
    for ike in dump["ike_sas"]:
        ike["child_sas"] = []
    report = check_packets(wire(net), KeySet.from_node_sas(dump)).report
    assert report.ok and {s.keys for s in report.ipsec_sas} == {"derived"}


def test_wrong_natd_forces_udp_encapsulation() -> None:
    net = pair("ikev2")
    net.hosts[A].set_misbehaviour("wrong_natd", True, 0.0)
    keys = Keys(net)
    net.send(A, udp_packet(A, B, 1, 2, b"encapsulated"))
    net.run(1.0)
    net.send(B, udp_packet(B, A, 2, 1, b"both ways"))
    net.run(2.0)
    report = keys.check()
    _all_verified(report)
    assert all(s.encapsulated for s in report.ipsec_sas)
    assert any(m.dst.endswith(":4500") for m in report.ike_messages)


def test_corrupted_icvs_caught_as_often_as_the_peer_drops_them() -> None:
    net = pair("ikev2")
    keys = Keys(net)
    net.send(A, udp_packet(A, B, 1, 2, b"ok"))
    net.run(1.0)
    net.hosts[A].set_misbehaviour("corrupt_icv", 2, net.now)
    for i in range(3):
        net.send(A, udp_packet(A, B, 1, 2, b"%d" % i))
    net.run(2.0)
    report = keys.check()
    dropped = net.hosts[B].all_counters()["driver"]["integrity"]
    (sa,) = [s for s in report.ipsec_sas if s.src == A]
    assert sa.icv_bad == dropped == 2 and sa.icv_good == 2 and not report.ok
    assert [p.kind for p in sa.problems] == ["icv", "icv"]


def _after(net: Net, step: Callable[[], None]) -> None:
    step()
    net.run(net.now + 1.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_terminate_is_seen_as_deletes(version: str) -> None:
    net = pair(version)
    keys = Keys(net)
    net.send(A, udp_packet(A, B, 1, 2, b"x"))
    net.run(1.0)
    keys.take()
    _after(net, lambda: net.hosts[A].terminate(net.now))
    report = keys.check()
    assert report.ok, report.summary()
    (ike,) = report.ike_sas
    assert ike.deleted
