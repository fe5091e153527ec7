"""Two reference nodes as processes on loopback (``local`` topology, no root, ``api`` data
plane): IKEv2 and IKEv1 with PSK, traffic both ways, rekey, delete, a restart recovered by DPD,
malformed datagrams on every socket, the virtual clock, configuration errors, SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.node_client import NodeClient
from harness.peers.base import Dpd, Lifetimes, Retransmit, Scenario
from harness.peers.reference import ReferencePeer
from harness.topology import Topology, TopologySpec, open_topology
from harness.topology.base import Node
from tests.reference_impl.node.hostnet import udp_packet

pytestmark = pytest.mark.slow


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    with open_topology("local", TopologySpec.pair(ipv6=False), artifacts=tmp_path) as t:
        yield t


@pytest.fixture
def nodes(topo: Topology) -> Iterator[tuple[ReferencePeer, ReferencePeer]]:
    a, b = ReferencePeer(topo.node("a")), ReferencePeer(topo.node("b"))
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def transport(topo: Topology, **kw: object) -> Scenario:
    a, b = topo.node("a"), topo.node("b")
    sc = Scenario.between(a, b, mode="transport", **kw)
    return sc


def wait(pred: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.02)  # polling interval of a bounded wait


def exchange(a: ReferencePeer, b: ReferencePeer, na: Node, nb: Node, text: bytes) -> None:
    """One UDP packet a -> b and its answer b -> a, through the api data plane."""
    A, B = na.addresses.v4, nb.addresses.v4
    a.client.inject([udp_packet(A, B, 4000, 5000, text)])
    got = wait(lambda: b.client.delivered(), 10, f"{text!r} at b")
    assert [d.packet[28:] for d in got] == [text] and all(d.protected for d in got)
    b.client.inject([udp_packet(B, A, 5000, 4000, text + b" back")])
    got = wait(lambda: a.client.delivered(), 10, f"{text!r} back at a")
    assert [d.packet[28:] for d in got] == [text + b" back"]


@pytest.mark.parametrize("version", [2, 1])
def test_psk_traffic_both_ways_rekey_and_delete(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer], version: int
) -> None:
    a, b = nodes
    na, nb = topo.node("a"), topo.node("b")
    sc = transport(topo, ike_version=version)
    a.configure(sc)
    b.configure(sc)
    exchange(a, b, na, nb, b"first")  # the first packet triggers the ACQUIRE
    sas_a, sas_b = a.list_sas(), b.list_sas()
    assert [s.version for s in sas_a] == [version] and sas_a[0].established
    assert sas_a[0].children[0].spi_out == sas_b[0].children[0].spi_in
    keys_a, keys_b = a.keys(), b.keys()
    assert keys_a.child[0].outbound()[1] == keys_b.child[0].inbound()[1]
    old = sas_a[0].children[0].spi_in
    a.rekey_child()
    exchange(a, b, na, nb, b"after rekey")
    assert all(c.spi_in != old for s in a.list_sas() for c in s.children)
    a.terminate()
    wait(lambda: not b.list_sas(), 10, "b drops its SAs on the Delete")
    exchange(a, b, na, nb, b"again")  # a new ACQUIRE, a new IKE SA
    counters = b.counters()
    assert counters["node"].get("drops.internal", 0) == 0


def test_initiate_by_control_and_restart_recovered_by_dpd(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    a, b = nodes
    na, nb = topo.node("a"), topo.node("b")
    sc = transport(topo, dpd=Dpd(delay=1.0), retransmit=Retransmit(0.5, 1.0, 2))
    a.configure(sc)
    b.configure(sc)
    a.initiate(timeout=10)
    exchange(a, b, na, nb, b"before")
    b.kill()  # no Delete: a keeps its SAs
    b.start()
    assert not b.list_sas()
    # a's DPD finds its IKE SA dead (1 s idle + 1.5 s of retransmissions) and deletes it;
    # a's next packet negotiates afresh with the restarted b.
    wait(lambda: not a.list_sas(), 15, "a's DPD removes the dead IKE SA")
    exchange(a, b, na, nb, b"after")


def test_malformed_datagrams_on_every_socket(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    import os
    import socket
    import struct

    a, b = nodes
    na, nb = topo.node("a"), topo.node("b")
    sc = transport(topo)
    a.configure(sc)
    b.configure(sc)
    exchange(a, b, na, nb, b"x")
    B = nb.addresses.v4
    targets = [nb.addresses.ike_port, nb.addresses.natt_port, b.clear_port]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((na.addresses.v4, 0))
        for port in targets:
            for n in (0, 1, 3, 7, 28, 200, 1500):
                s.sendto(os.urandom(n), (B, port))
            s.sendto(b"\0\0\0\0" + os.urandom(40), (B, port))  # marker + truncated IKE
            s.sendto(struct.pack(">II", 0xDEADBEEF, 1) + os.urandom(40), (B, port))  # bad SPI
        ip = bytearray(udp_packet(na.addresses.v4, B, 1, 2, b""))
        ip[9] = 50  # ESP with an unknown SPI, over the clear link
        s.sendto(bytes(ip) + struct.pack(">II", 0xFEEDF00D, 1) + os.urandom(32), (B, b.clear_port))
    c = wait(lambda: (lambda c: c if c["driver"].get("no_sa", 0) >= 2 else None)(b.counters()),
             10, "unknown SPIs counted")  # fmt: skip
    assert c["ikev2"].get("malformed_dropped", 0) + c["ikev2"].get("unknown_spi_dropped", 0) > 0
    assert c["node"].get("drops.internal", 0) == 0
    b.client.delivered()  # random octets that happen to parse as IPv4 are bypassed: drop them
    exchange(a, b, na, nb, b"still serving")


def test_fallback_to_clear_on_the_virtual_clock(topo: Topology) -> None:
    """Policy-spec FB-09 through the control API: UDP 500 closed at b (nothing bound: ICMP port
    unreachable), a's request policy falls back at exactly 3.0 s of node time."""
    na, nb = topo.node("a"), topo.node("b")
    nb.close_udp([500], how="reject")
    a = ReferencePeer(na, clock="virtual")
    b = ReferencePeer(nb)
    try:
        sc = transport(topo)
        a.configure(sc)
        b.configure(sc)
        policy = a.policy_path.read_text().replace("allow_fallback: false", "allow_fallback: true")
        a.client.load_policy(text=policy)
        # b is IPsec-unaware: it bypasses everything (its "require" would drop clear input).
        b.client.load_policy(
            text=b.policy_path.read_text().replace("type: negotiate", "type: permit")
        )
        start = a.client.clock()["now"]
        a.client.inject([udp_packet(na.addresses.v4, nb.addresses.v4, 1, 2, b"probe")])
        a.client.advance(2.99)
        assert not b.client.delivered()
        a.client.advance(0.01)
        got = wait(lambda: b.client.delivered(), 5, "the probe in clear at b")
        assert [d.packet[28:] for d in got] == [b"probe"] and not got[0].protected
        (fb,) = a.client.audit(kinds=["fallback"])
        assert fb["time"] - start == pytest.approx(3.0, abs=1e-6)
        assert fb["reason"] == "peer_silent"
        assert a.counters()["node"]["icmp_errors.3.3"] >= 1  # read from the error queue
    finally:
        a.stop()
        b.stop()


def _node_config(tmp_path: Path, **changes: object) -> Path:
    cfg = {
        "addresses": ["127.0.0.9"],
        "control": {"socket": str(tmp_path / "c.sock")},
        "ike": {"port": 0, "natt_port": 0},
    }
    cfg.update(changes)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_invalid_configuration_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = _node_config(tmp_path, ike={"port": 70000}, dataplane={"mode": "warp"})
    res = subprocess.run(
        [sys.executable, "-m", "reference_impl.node", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "ike.port:" in res.stderr and "dataplane.mode:" in res.stderr
    assert not (tmp_path / "c.sock").exists()  # nothing was bound
    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("policy: {name: x, rules: [{name: r, filter_list: nope}]}\n")
    path = _node_config(tmp_path, policy=str(bad_policy))
    res = subprocess.run(
        [sys.executable, "-m", "reference_impl.node", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "policy" in res.stderr
    path = _node_config(tmp_path, credentials={"psk": {"lab": {"env": "NO_SUCH_VARIABLE_X"}}})
    res = subprocess.run(
        [sys.executable, "-m", "reference_impl.node", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "credentials.psk.lab.env" in res.stderr


def test_sigterm_sends_deletes_and_removes_the_control_socket(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    a, b = nodes
    na, nb = topo.node("a"), topo.node("b")
    sc = transport(topo, lifetimes=Lifetimes(child_rekey=300))
    a.configure(sc)
    b.configure(sc)
    exchange(a, b, na, nb, b"x")
    assert a.process is not None
    a.process.send_signal(signal.SIGTERM)
    assert a.process.wait(10) == 0
    wait(lambda: not b.list_sas(), 5, "b saw the Delete")
    assert not a.socket_path.exists()
    assert '"event": "stopped"' in a.process.log_text()
    a.process = None


def test_control_api_lists_its_methods(
    topo: Topology, nodes: tuple[ReferencePeer, ReferencePeer]
) -> None:
    a, _ = nodes
    a.configure(transport(topo))
    methods = a.client.methods()
    for name in ("load_policy", "set_credentials", "initiate", "terminate", "rekey_child",
                 "rekey_ike", "list_sas", "counters", "audit", "inject", "delivered", "clock",
                 "advance", "misbehave"):  # fmt: skip
        assert methods.get(name)
    assert set(a.client.misbehaviours()["available"]) >= {
        "no_replay_check",
        "wrong_natd",
        "silent_ike_port",
        "corrupt_icv",
    }
    with NodeClient(str(a.socket_path)) as c:
        stream = c.audit_stream(history=True, timeout=5)
        first = next(stream)
        assert first["kind"] == "policy_loaded"
