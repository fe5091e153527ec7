"""The ``tun`` data plane's queue of inbound clear packets (root, a network namespace pair):
the decision per packet is the kernel's verdict (accepted packets reach their socket, dropped
ones do not), ESP and the IKE ports are never queued, the node's chains go when it
closes, and a killed node's chains is taken away by the next one (and lets packets through
meanwhile: the queue bypasses a missing listener)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.topology import Topology, TopologySpec, open_topology
from harness.topology.base import Node, NodeProcess, wait_until

QUEUE_NODE = r"""
import selectors, socket, sys, json
from reference_impl.node.nfqueue import InboundClearQueue, chain_name
addr, port, ike = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counters = {}
seen = []
def decide(packet):
    seen.append(packet[28:].decode(errors="replace"))
    return b"accept" in packet
q = InboundClearQueue(queue=7, tun="ipsecq0", ike_ports=[ike], decide=decide, counters=counters)
socks = []
for p in (port, ike):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, p)); s.setblocking(False); socks.append(s)
sel = selectors.DefaultSelector()
sel.register(q.fileno(), selectors.EVENT_READ, "q")
for s in socks:
    sel.register(s, selectors.EVENT_READ, "s")
print("ready", chain_name(), flush=True)
got = []
while not any(g == "stop" for g in got):
    for key, _ in sel.select(5):
        if key.data == "q":
            q.read()
        else:
            data = key.fileobj.recv(2048).decode()
            got.append(data)
            print("got", data, flush=True)
q.close()
print("done", json.dumps({"counters": counters, "seen": seen, "got": got}), flush=True)
"""


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    with open_topology("netns", TopologySpec.pair(ipv6=False), artifacts=tmp_path) as t:
        yield t


def _send(node: Node, dst: str, port: int, payloads: list[str], sport: int = 0) -> None:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('', int(sys.argv[3])))\n"
        "for p in sys.argv[4:]:\n"
        "    s.sendto(p.encode(), (sys.argv[1], int(sys.argv[2])))\n"
    )
    assert node.exec([sys.executable, "-c", code, dst, str(port), str(sport), *payloads]).ok


def _queue_node(node: Node, name: str) -> tuple[NodeProcess, str]:
    """QUEUE_NODE started in ``node``, once its queue is bound: (process, its chain)."""
    proc = node.spawn(
        name,
        [sys.executable, "-c", QUEUE_NODE, node.addresses.v4, "9999", "40500"],
        private_run=False,
    )
    return proc, proc.wait_for_log(r"ready (\S+)", 20).group(1)


def _stop_queue_node(sender: Node, addr: str) -> None:
    """ "stop" to both ports: the queue drops the first (QUEUE_NODE lets no "stop" through),
    the IKE port's socket ends the loop."""
    _send(sender, addr, 9999, ["stop"])
    _send(sender, addr, 40500, ["stop"])


def _chains(node: Node) -> str:
    return node.exec(["iptables", "-w", "-S"]).stdout + node.exec(["ip6tables", "-w", "-S"]).stdout


@pytest.mark.needs_root
def test_the_decision_is_the_kernels_verdict(topo: Topology) -> None:
    a, b = topo.node("a"), topo.node("b")
    addr = a.addresses.v4
    proc, chain = _queue_node(a, "queue")
    assert _chains(a).count(f"-A INPUT -j {chain}") == 2  # IPv4 and IPv6
    _send(b, addr, 9999, ["accept-1", "drop-2", "accept-3"])
    wait_until(lambda: proc.log_text().count("got accept") == 2, 10, "accepted datagrams")
    _send(b, addr, 40500, ["ike-not-queued"])
    proc.wait_for_log("got ike-not-queued", 10)
    _send(b, addr, 9999, ["from-a-peers-ike-port"], sport=4500)  # an IKE answer: not queued
    proc.wait_for_log("got from-a-peers-ike-port", 10)
    _stop_queue_node(b, addr)
    assert proc.wait(20) == 0
    result = json.loads(proc.wait_for_log(r"done (.*)", 5).group(1))
    # What reached the sockets: the accepted packets and the unqueued IKE port, nothing else.
    assert result["got"] == [
        "accept-1",
        "accept-3",
        "ike-not-queued",
        "from-a-peers-ike-port",
        "stop",
    ]
    assert result["seen"] == ["accept-1", "drop-2", "accept-3", "stop"]
    assert result["counters"] == {"nfqueue.accepted": 2, "nfqueue.dropped": 2}
    assert chain not in _chains(a), "the chain outlived the queue"


@pytest.mark.needs_root
def test_a_killed_nodes_chain_passes_packets_and_is_taken_over(topo: Topology) -> None:
    a, b = topo.node("a"), topo.node("b")
    addr = a.addresses.v4
    first, stale = _queue_node(a, "queue1")
    first.stop(sig=9)
    assert f"-N {stale}" in _chains(a)
    # Nobody reads the queue: the bypass flag lets the packet through to a plain socket.
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9998))\n"
        "s.settimeout(10); print('ready', flush=True); print('got', s.recv(100).decode())\n"
    )
    listener = a.spawn("plain", [sys.executable, "-c", code, addr], private_run=False)
    listener.wait_for_log("ready", 10)
    _send(b, addr, 9998, ["through"])
    listener.wait_for_log("got through", 10)
    second, _ = _queue_node(a, "queue2")
    assert stale not in _chains(a), "the killed node's chain is still there"
    _stop_queue_node(b, addr)
    assert second.wait(20) == 0


@pytest.mark.needs_root
def test_without_iptables_the_error_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reference_impl.node.nfqueue import InboundClearQueue, NfQueueError

    monkeypatch.setenv("PATH", str(tmp_path))  # no iptables-restore to be found
    with pytest.raises(NfQueueError, match="iptables-restore is not installed"):
        InboundClearQueue(queue=65001, tun="x", ike_ports=[500], decide=bool, counters={})
