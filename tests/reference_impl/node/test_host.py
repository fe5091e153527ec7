"""Two sans-I/O hosts on an in-memory network with a virtual clock: IKEv2 and IKEv1 with PSK,
traffic both ways, rekey, delete, restart and DPD, fallback to clear at exactly 3.0 s, a
``require`` policy that never sends in clear, malformed input, misbehaviours, ports.
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from reference_impl.driver.packet import parse_ip
from reference_impl.node import sadump
from reference_impl.node.host import Host, PortMap, local_icmp_packet
from reference_impl.node.ikeconf import IkeOverrides
from reference_impl.policy import LocalIcmp, PacketMeta
from reference_impl.retransmit import RetransmitSchedule
from tests.reference_impl.node.hostnet import (
    A_IN,
    B_IN,
    A,
    B,
    Net,
    host,
    pair,
    transport_policy,
    tunnel_policy,
    udp_packet,
)

VERSIONS = ["ikev2", "ikev1"]


def payloads(packets: list[bytes]) -> list[bytes]:
    return [p[28:] for p in packets]


def established(net: Net, address: str) -> int:
    return sum(1 for m in net.hosts[address].agent.machines() if m.state.value == "ESTABLISHED")


@pytest.mark.parametrize("version", VERSIONS)
def test_psk_transport_traffic_both_ways(version: str) -> None:
    net = pair(version)
    net.send(A, udp_packet(A, B, 1000, 2000, b"hello"))
    net.run(1.0)
    assert payloads(net.got(B)) == [b"hello"]  # the held packet, released protected (E8)
    net.send(B, udp_packet(B, A, 2000, 1000, b"reply"))
    for i in range(5):
        net.send(A, udp_packet(A, B, 1000, 2000, b"more %d" % i))
    net.run(2.0)
    assert payloads(net.got(A)) == [b"reply"]
    assert payloads(net.got(B))[1:] == [b"more %d" % i for i in range(5)]
    assert not net.clear()  # nothing but IKE and ESP on the wire
    assert len(net.esp(A)) == 6 and len(net.esp(B)) == 1
    assert all(w.proto == 50 for w in net.esp())  # no NAT: raw ESP
    dump_a, dump_b = sadump.dump(net.hosts[A]), sadump.dump(net.hosts[B])
    assert len(dump_a["ike_sas"]) == 1 and len(dump_b["ike_sas"]) == 1
    (ca,), (cb,) = dump_a["child_sas"], dump_b["child_sas"]
    # The two ends agree on SPIs and keys, direction by direction.
    assert ca["outbound"]["spi"] == cb["inbound"]["spi"]
    assert ca["outbound"]["encr"]["key"] == cb["inbound"]["encr"]["key"]
    assert ca["inbound"]["encr"]["key"] == cb["outbound"]["encr"]["key"]
    assert ca["outbound"]["encr"]["name"] == "AES_GCM_16_128"
    assert ca["outbound"]["packets"] == 6 and cb["inbound"]["packets"] == 6
    ike_a = dump_a["ike_sas"][0]
    assert ike_a["initiator"] and ike_a["established"] and ike_a["keys"]
    assert ike_a["version"] == (2 if version == "ikev2" else 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_tunnel_mode_with_pfs(version: str) -> None:
    net = Net()
    a = net.add(A, host(A, inner=(A_IN,)))
    b = net.add(B, host(B, inner=(B_IN,)))
    a.load_policy(tunnel_policy(A, B, "10.1.0.0/24", "10.2.0.0/24", version=version), 0, text=True)
    b.load_policy(tunnel_policy(B, A, "10.2.0.0/24", "10.1.0.0/24", version=version), 0, text=True)
    net.send(A, udp_packet(A_IN, B_IN, 5, 6, b"in the tunnel"))
    net.run(1.0)
    net.send(B, udp_packet(B_IN, A_IN, 6, 5, b"and back"))
    net.run(2.0)
    assert payloads(net.got(B)) == [b"in the tunnel"]
    assert payloads(net.got(A)) == [b"and back"]
    esp = net.esp(A)[0]
    assert (esp.src, esp.dst) == (A, B)  # outer header: the tunnel endpoints
    (child,) = sadump.child_sas(net.hosts[A])
    assert child["mode"] == "tunnel"
    assert child["outbound"]["ts_src"] == ["10.1.0.0-10.1.0.255"]


@pytest.mark.parametrize("version", VERSIONS)
def test_tunnel_mode_esp_in_udp(version: str) -> None:
    """RFC 3948 tunnel mode: ESP in UDP 4500 both ways (the driver's fast paths, the node's
    UDP framing)."""
    net = Net()
    a = net.add(A, host(A, inner=(A_IN,)))
    b = net.add(B, host(B, inner=(B_IN,)))
    a.load_policy(tunnel_policy(A, B, "10.1.0.0/24", "10.2.0.0/24", version=version), 0, text=True)
    b.load_policy(tunnel_policy(B, A, "10.2.0.0/24", "10.1.0.0/24", version=version), 0, text=True)
    a.set_misbehaviour("wrong_natd", True, 0.0)
    for i in range(3):
        net.send(A, udp_packet(A_IN, B_IN, 5, 6, b"out %d" % i))
        net.send(B, udp_packet(B_IN, A_IN, 6, 5, b"back %d" % i))
        net.run(1.0 + i)
    assert payloads(net.got(B)) == [b"out 0", b"out 1", b"out 2"]
    assert payloads(net.got(A))[-2:] == [b"back 1", b"back 2"]
    esp = net.esp()
    assert esp and all(w.kind == "udp" and (w.sport, w.dport) == (4500, 4500) for w in esp)
    # Both ends acquired at once: two IKE SAs cross, both complete, both pairs work.
    children = sadump.child_sas(a)
    assert 1 <= len(children) <= 2
    assert all(c["outbound"]["encap"] == [4500, 4500] and c["encap"] for c in children)


@pytest.mark.parametrize("version", VERSIONS)
def test_ah(version: str) -> None:
    net = pair(version, protocol="ah")
    net.send(A, udp_packet(A, B, 1, 2, b"authenticated"))
    net.run(1.0)
    assert payloads(net.got(B)) == [b"authenticated"]
    assert [w.proto for w in net.wire if w.kind == "ip"] == [51]
    assert sadump.child_sas(net.hosts[B])[0]["protocol"] == "ah"


@pytest.mark.parametrize("version", VERSIONS)
def test_rekey_on_request_keeps_traffic_flowing(version: str) -> None:
    net = pair(version)
    net.send(A, udp_packet(A, B, 1, 2, b"first"))
    net.run(1.0)
    (old,) = sadump.child_sas(net.hosts[A])
    net.hosts[A].rekey_child(old["inbound"]["spi"], net.now)
    net.run(3.0)
    children = sadump.child_sas(net.hosts[A])
    assert len(children) == 1, children  # the old pair is deleted after the rekey
    new = children[0]
    assert new["inbound"]["spi"] != old["inbound"]["spi"]
    assert len(sadump.child_sas(net.hosts[B])) == 1
    net.send(A, udp_packet(A, B, 1, 2, b"second"))
    net.send(B, udp_packet(B, A, 2, 1, b"back"))
    net.run(4.0)
    assert payloads(net.got(B)) == [b"first", b"second"]
    assert payloads(net.got(A)) == [b"back"]
    spis = {int.from_bytes(w.data[20:24], "big") for w in net.esp(A)}
    assert spis == {old["outbound"]["spi"], new["outbound"]["spi"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_rekey_by_lifetime_without_loss(version: str) -> None:
    ov = IkeOverrides(child_rekey_s=20.0, child_life_s=30.0)
    net = Net()
    for addr, peer in ((A, B), (B, A)):
        h = net.add(addr, host(addr, overrides=ov))
        h.load_policy(transport_policy(peer, version=version), 0, text=True)
    sent = 0
    t = 0.0
    while t < 100:
        net.send(A, udp_packet(A, B, 1, 2, b"%d" % sent))
        sent += 1
        t += 0.5
        net.run(t)
    net.run(t + 1)
    assert payloads(net.got(B)) == [b"%d" % i for i in range(sent)]
    in_spis = {int.from_bytes(w.data[20:24], "big") for w in net.esp(A)}
    assert len(in_spis) >= 4  # rekeyed every ~20 s
    assert len(sadump.child_sas(net.hosts[A])) <= 2


@pytest.mark.parametrize("version", VERSIONS)
def test_terminate_deletes_both_ends_and_traffic_reacquires(version: str) -> None:
    net = pair(version)
    net.send(A, udp_packet(A, B, 1, 2, b"x"))
    net.run(1.0)
    assert net.hosts[A].terminate(net.now) == 1
    net.run(2.0)
    for addr in (A, B):
        assert sadump.dump(net.hosts[addr])["child_sas"] == []
        assert not [s for s in sadump.ike_sas(net.hosts[addr]) if s["established"]]
        assert len(net.hosts[addr].sad) == 0
    net.send(A, udp_packet(A, B, 1, 2, b"y"))
    net.run(3.0)
    assert payloads(net.got(B)) == [b"x", b"y"]
    assert len(sadump.child_sas(net.hosts[B])) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_restart_of_one_end_recovers_by_dpd(version: str) -> None:
    fast = RetransmitSchedule((0.5, 0.5, 1.0, 2.0))
    ov = IkeOverrides(dpd_delay_s=5.0, schedule=fast)
    net = Net()
    for addr, peer in ((A, B), (B, A)):
        h = net.add(addr, host(addr, overrides=ov))
        h.load_policy(transport_policy(peer, version=version), 0, text=True)
    net.send(A, udp_packet(A, B, 1, 2, b"before"))
    net.run(1.0)
    # B restarts: a new host with the same policy and no SAs.
    fresh = host(B, overrides=ov, now=net.now)
    fresh.load_policy(transport_policy(A, version=version), net.now, text=True)
    net.hosts[B] = fresh
    t = net.now
    while t < 60 and b"after" not in payloads(net.got(B)):
        net.send(A, udp_packet(A, B, 1, 2, b"after"))
        t += 1.0
        net.run(t)
    assert b"after" in payloads(net.got(B)), fresh.all_counters()
    assert t < 30  # DPD after 5 s idle IKE, then 4 s of retransmissions, then a new SA
    assert fresh.counters.get("drops.unknown_spi", 0) == 0
    assert fresh.agent.counters["drops.unknown_spi"] >= 1  # A's ESP for the dead SA, audited


def test_fallback_to_clear_at_exactly_3_s_when_udp_500_is_filtered() -> None:
    net = Net()
    a = net.add(A, host(A))
    net.add(B, host(B))  # no policy: an IPsec-unaware peer
    net.closed[(B, 500)] = "drop"
    a.load_policy(transport_policy(B, action="request"), 0, text=True)
    for i in range(50):  # a probe every 100 ms for 5 s
        net.send(A, udp_packet(A, B, 7, 9, b"p%02d" % i))
        net.run((i + 1) * 0.1 - 0.05)
    net.run(10.0)
    ike = net.ike(A)
    assert [w.t for w in ike] == [0.0, 0.5, 1.0, 2.0]  # policy-spec FB-09
    clear = net.clear(A)
    assert clear[0].t == 3.0  # the soft SA, to the tick of the virtual clock
    # Probe i leaves the stack at 0.1 i - 0.05 (i > 0): p30 is the last before 3.0 s.
    assert clear[0].data[28:] == b"p30"  # hold queue 1, keep_last (FB-14)
    assert [w.data[28:] for w in clear[1:]] == [b"p%02d" % i for i in range(31, 50)]
    assert not net.esp()
    audit = [r for r in a.agent.audit if r.kind == "fallback"]
    assert len(audit) == 1 and audit[0].get("reason") == "peer_silent"


def test_fallback_not_earlier_when_icmp_port_unreachable_arrives() -> None:
    net = Net()
    a = net.add(A, host(A))
    net.add(B, host(B))
    net.closed[(B, 500)] = "reject"
    a.load_policy(transport_policy(B, action="request"), 0, text=True)
    net.send(A, udp_packet(A, B, 7, 9, b"probe"))
    net.run(10.0)
    assert a.counters["icmp_errors.3.3"] == 4
    assert a.agent.counters.icmp(3, 3) == 4
    assert [w.t for w in net.clear(A)] == [3.0]  # FB-10: ICMP does not hasten it


def test_require_never_sends_in_clear() -> None:
    net = Net()
    a = net.add(A, host(A))
    net.add(B, host(B))
    net.closed[(B, 500)] = "drop"
    a.load_policy(transport_policy(B, action="require"), 0, text=True)
    t = 0.0
    while t < 100:
        net.send(A, udp_packet(A, B, 7, 9, b"secret"))
        t += 0.25
        net.run(t)
    assert not net.clear(A)  # FB-05
    times = [w.t for w in net.ike(A)]
    assert times[:8] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]  # FB-03
    assert times[8] >= 94.0  # FB-07: 30 s hold-down after the failure at 64 s
    assert a.agent.counters["drops.holddown"] > 0


def test_wrong_natd_forces_udp_encapsulation() -> None:
    net = pair("ikev2")
    net.hosts[A].set_misbehaviour("wrong_natd", True, 0.0)
    net.send(A, udp_packet(A, B, 1, 2, b"encapsulated"))
    net.run(1.0)
    net.send(B, udp_packet(B, A, 2, 1, b"both ways"))
    net.run(2.0)
    assert payloads(net.got(B)) == [b"encapsulated"]
    assert payloads(net.got(A)) == [b"both ways"]
    esp = net.esp()
    assert esp and all(w.kind == "udp" and w.dport == 4500 for w in esp)
    (child,) = sadump.child_sas(net.hosts[A])
    assert child["outbound"]["encap"] == [4500, 4500]


@pytest.mark.parametrize("version", VERSIONS)
def test_distinct_real_ports_are_translated(version: str) -> None:
    """Two nodes on one loopback: each has its own unprivileged ports, and each maps the
    other's to 500/4500, so NAT-D agrees (no NAT) and NAT-T floating still works."""
    pa, pb = (15000, 15001), (16000, 16001)
    net = Net()
    a = net.add(A, host(A, ports=PortMap(*pa, peers={B: pb})))
    b = net.add(B, host(B, ports=PortMap(*pb, peers={A: pa})))
    a.load_policy(transport_policy(B, version=version), 0, text=True)
    b.load_policy(transport_policy(A, version=version), 0, text=True)
    net.send(A, udp_packet(A, B, 1, 2, b"ports"))
    net.run(1.0)
    assert payloads(net.got(B)) == [b"ports"]
    ike = [w for w in net.wire if w.kind == "udp" and w.src == A]
    assert {(w.sport, w.dport) for w in ike} == {(15000, 16000)}
    assert net.esp()[0].proto == 50  # no NAT seen
    a.set_misbehaviour("wrong_natd", True, net.now)
    a.terminate(net.now)
    net.run(2.0)
    net.send(A, udp_packet(A, B, 1, 2, b"floated"))
    net.run(3.0)
    assert payloads(net.got(B))[-1] == b"floated"
    last = [w for w in net.wire if w.src == A][-1]  # ESP-in-UDP between the NAT-T ports
    assert (last.kind, last.sport, last.dport) == ("udp", 15001, 16001)
    assert last.data[:4] != b"\0\0\0\0" and payloads(net.got(B))[-1] == b"floated"


def test_corrupt_icv_is_dropped_by_the_peer_and_counted() -> None:
    net = pair("ikev2")
    net.send(A, udp_packet(A, B, 1, 2, b"ok"))
    net.run(1.0)
    net.hosts[A].set_misbehaviour("corrupt_icv", 2, net.now)
    for i in range(3):
        net.send(A, udp_packet(A, B, 1, 2, b"%d" % i))
    net.run(2.0)
    assert payloads(net.got(B)) == [b"ok", b"2"]
    assert net.hosts[B].all_counters()["driver"]["integrity"] == 2
    assert net.hosts[A].counters["misbehave.corrupted_icv"] == 2


def test_replay_is_dropped_unless_the_check_is_off() -> None:
    net = pair("ikev2")
    net.send(A, udp_packet(A, B, 1, 2, b"once"))
    net.run(1.0)
    esp = net.esp(A)[0].data
    b = net.hosts[B]
    b.raw_received(esp, net.now)
    assert b.all_counters()["driver"]["replay"] == 1
    b.set_misbehaviour("no_replay_check", True, net.now)
    b.raw_received(esp, net.now)
    net.collect()
    assert payloads(net.got(B)) == [b"once", b"once"]


def test_silent_ike_port_and_dropped_ike_output() -> None:
    net = pair("ikev2")
    net.hosts[B].set_misbehaviour("silent_ike_port", True, 0.0)
    net.send(A, udp_packet(A, B, 1, 2, b"x"))
    net.run(3.0)
    assert not net.ike(B) and net.hosts[B].counters["misbehave.ignored_ike"] == 4
    net2 = pair("ikev2")
    net2.hosts[A].set_misbehaviour("drop_ike_out", True, 0.0)
    net2.send(A, udp_packet(A, B, 1, 2, b"x"))
    net2.run(3.0)
    assert not net2.wire and net2.hosts[A].counters["misbehave.dropped_ike_out"] == 4


def test_malformed_input_on_every_path_is_counted_and_the_host_keeps_serving() -> None:
    net = pair("ikev2")
    a, b = net.hosts[A], net.hosts[B]
    rng = random.Random(7)
    for _ in range(200):
        junk = rng.randbytes(rng.randrange(0, 300))
        b.udp_received(junk, (A, 500), (B, 500), 0.0)
        b.udp_received(junk, (A, 4500), (B, 4500), 0.0)
        b.udp_received(b"\0\0\0\0" + junk, (A, 4500), (B, 4500), 0.0)
        b.raw_received(junk, 0.0)
        b.outbound_packet(junk, 0.0)
        b.udp_received(junk, (A, 4500), (B, 9999), 0.0)
    # Truncated IKE, ESP with an unknown SPI (raw and in UDP), runts.
    b.udp_received(os.urandom(8) + bytes(20), (A, 500), (B, 500), 0.0)
    esp = udp_packet(A, B, 1, 2, b"")[:20]
    esp = bytearray(esp)
    esp[9] = 50
    b.raw_received(bytes(esp) + struct.pack(">II", 0xDEAD, 1) + bytes(32), 0.0)
    b.udp_received(struct.pack(">II", 0xBEEF, 1) + bytes(32), (A, 4500), (B, 4500), 0.0)
    b.udp_received(b"\x01", (A, 4500), (B, 4500), 0.0)
    net.collect()
    counters = b.all_counters()
    assert counters["driver"]["no_sa"] >= 2
    assert b.agent.counters["drops.unknown_spi"] >= 2
    assert counters["ikev2"].get("malformed_dropped", 0) > 0
    assert counters["node"]["drops.udp_unknown_port"] == 200
    assert "drops.internal" not in counters["node"]
    # ... and it still negotiates and carries traffic.
    net.send(A, udp_packet(A, B, 1, 2, b"still here"))
    net.run(2.0)
    assert payloads(net.got(B))[-1] == b"still here"
    assert a.counters.get("drops.internal", 0) == 0


def test_responder_refuses_a_peer_outside_its_policy() -> None:
    net = Net()
    a = net.add(A, host(A))
    b = net.add(B, host(B))
    a.load_policy(transport_policy(B), 0, text=True)
    b.load_policy(transport_policy("198.51.100.99"), 0, text=True)  # not A
    net.send(A, udp_packet(A, B, 1, 2, b"x"))
    net.run(5.0)
    assert not net.esp() and not b.child_sas()
    assert [m.state.value for m in a.agent.machines()] == ["FAILED"]


def test_local_icmp_for_a_discarded_packet() -> None:
    orig = udp_packet(A, B, 1, 2, b"data")
    pkt = local_icmp_packet(LocalIcmp(3, 13, orig, PacketMeta.make(A, B, 17, 1, 2), 0.0))
    info = parse_ip(pkt)
    assert (info.protocol, info.src, info.dst) == (1, orig[16:20], orig[12:16])
    assert pkt[20:22] == b"\x03\x0d" and pkt[28:] == orig[:28]


def test_initiate_by_rule_without_traffic() -> None:
    net = pair("ikev2")
    ike_sa_id = net.hosts[A].initiate("to-peer", net.now)
    net.run(1.0)
    assert len(ike_sa_id) == 16
    assert established(net, A) == 1 and established(net, B) == 1
    net.send(A, udp_packet(A, B, 1, 2, b"no acquire needed"))
    net.run(2.0)
    assert payloads(net.got(B)) == [b"no acquire needed"]
    assert net.hosts[A].agent.counters["acquires"] == 0


def test_unusable_rule_fails_the_acquire_instead_of_hanging() -> None:
    net = Net()
    a = net.add(A, Host(host(A).settings.__class__(addresses=(A,)), 0.0))  # no credentials
    a.load_policy(transport_policy(B), 0, text=True)
    assert a.cfgs is not None and a.cfgs.warnings
    net.send(A, udp_packet(A, B, 1, 2, b"x"))
    net.run(1.0)
    assert [m.state.value for m in a.agent.machines()] == ["FAILED"]
    assert not net.wire


def test_ikev2_starts_on_4500_when_the_policy_says_so() -> None:
    """Policy-spec FB-27 / §3.6 N2: IKE_SA_INIT to port 4500 with the non-ESP marker, ESP in
    UDP, nothing to port 500."""
    net = Net()
    a = net.add(A, host(A))
    b = net.add(B, host(B))
    a.load_policy(transport_policy(B, remote_port=4500), 0, text=True)
    b.load_policy(transport_policy(A), 0, text=True)
    net.closed[(B, 500)] = "drop"
    net.send(A, udp_packet(A, B, 1, 2, b"via 4500"))
    net.run(2.0)
    assert payloads(net.got(B)) == [b"via 4500"]
    ike = [w for w in net.wire if w.kind == "udp" and w.src == A]
    assert ike[0].dport == 4500 and ike[0].data[:4] == b"\0\0\0\0"
    assert not [w for w in net.wire if w.kind == "udp" and w.dport == 500]
