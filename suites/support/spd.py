"""Cleartext stimuli of the spd suite: an ICMP echo request or a UDP datagram put on the wire
by the tester past its own IPsec, and whether anything answers it (catalogue SPD-004)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from suites.support.ipsec import python_of

_PROBE = r"""
import select, socket, struct, sys, time
kind, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
mark, ident, wait = int(sys.argv[4], 0), int(sys.argv[5]), float(sys.argv[6])
body = bytes.fromhex(sys.argv[7])  # icmp: the echo request (built by the harness); udp: data

icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
socks = [icmp]
if kind == "icmp":
    if mark:
        icmp.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)  # past the sender's tunnel
    icmp.bind((src, 0))
    icmp.sendto(body, (dst, 0))
else:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if mark:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    udp.bind((src, ident))
    udp.sendto(body, (dst, 9))  # discard: an answer, if any, is port unreachable
    socks.append(udp)
deadline = time.monotonic() + wait
answer = "none"
while answer == "none" and time.monotonic() < deadline:
    ready, _, _ = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        break
    for s in ready:
        try:
            data, addr = s.recvfrom(65535)
        except OSError:
            continue
        if s is not icmp:
            answer = "udp-reply"
            continue
        ihl = (data[0] & 0x0F) * 4
        t = data[ihl]
        if kind == "icmp" and t == 0 and struct.unpack_from("!H", data, ihl + 4)[0] == ident:
            answer = "echo-reply"
        elif kind == "udp" and t == 3:
            q = data[ihl + 8:]  # the quoted datagram: our ports?
            qihl = (q[0] & 0x0F) * 4 if q else 0
            if len(q) >= qihl + 4 and struct.unpack_from("!HH", q, qihl) == (ident, 9):
                answer = "icmp-%d-%d" % (t, data[ihl + 1])
print(answer, flush=True)
"""


@contextlib.contextmanager
def host_route(node: Any, dst: str, via: str | None) -> Iterator[None]:
    """A main-table route to ``dst`` via ``via`` in ``node`` for the case's duration (the
    tester's marked packets use the main table, which has no route to a peer's inner
    address: only the tunnel leads there)."""
    if via is None:
        yield
        return
    res = node.exec(["ip", "route", "replace", f"{dst}/32", "via", via])
    if not res.ok:
        raise RuntimeError(f"route to {dst} via {via} in {node.name}: {res.stderr.strip()}")
    try:
        yield
    finally:
        node.exec(["ip", "route", "del", f"{dst}/32", "via", via])


def clear_probe(
    node: Any, *, kind: str, src: str, dst: str, mark: int, ident: int, wait: float = 2.0
) -> str | None:
    """Send one cleartext packet from ``src`` to ``dst`` (``mark``: the sending node's SO_MARK,
    so that its own IPsec lets it pass) and return what answered it within ``wait`` seconds,
    or None: ``kind`` "icmp" is an echo request (answer: "echo-reply"); "udp" a datagram from
    port ``ident`` to the discard port (answer: an ICMP error quoting it, "icmp-3-3", or a UDP
    reply). Either answer, in clear or through the tunnel, means the packet was delivered."""
    from suites.support.fallback import icmp4_echo

    body = b"SPD-004 cleartext probe"
    if kind == "icmp":  # the ICMP message alone: the raw socket adds the IP header
        body = icmp4_echo(src, dst, ident, 1, body)[20:]
    argv = [python_of(node), "-c", _PROBE, kind, src, dst, hex(mark), str(ident), str(wait),
            body.hex()]  # fmt: skip
    res = node.exec(argv, timeout=wait + 20)
    if not res.ok:
        raise RuntimeError(f"cleartext probe from {node.name}: {res.stderr.strip()}")
    answer = str(res.stdout).split()[-1:]
    return None if answer in ([], ["none"]) else answer[0]


_LISTEN = r"""
import socket, struct, sys
src, dst, ident = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    if addr[2] == 4 or len(data) < 28 or data[9] != 1:  # our own, or not ICMP
        continue
    ihl = (data[0] & 0x0F) * 4
    if (socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])) != (src, dst):
        continue
    t, c, _, i, q = struct.unpack_from("!BBHHH", data, ihl)
    if t == 0 and i == ident:
        print("reply", q, flush=True)
    elif t == 3 and len(data) >= ihl + 8 + 20 + 4:
        quoted = data[ihl + 8:]
        qihl = (quoted[0] & 0x0F) * 4
        if quoted[9] == 17 and struct.unpack_from("!H", quoted, qihl)[0] == ident:
            print("unreachable", c, flush=True)
"""


class ReplyListener:
    """ICMP answers from ``src`` to ``dst`` as they arrive at a node, seen on a packet socket
    (before the node's own packet filter or IPsec can drop them: what the peer under test sent,
    not what the tester accepted): echo replies with identifier ``ident``, and destination
    unreachable errors quoting a UDP datagram from source port ``ident``."""

    def __init__(self, node: Any, *, src: str, dst: str, ident: int) -> None:
        self.proc = node.spawn(
            f"reply-listener-{ident}",
            [python_of(node), "-u", "-c", _LISTEN, src, dst, str(ident)],
            private_run=False,
        )
        self.proc.wait_for_log("ready", 10)

    def replies(self) -> list[int]:
        """The echo sequence numbers answered so far."""
        return [int(line.split()[1]) for line in self.proc.log_text().splitlines()
                if line.startswith("reply ")]  # fmt: skip

    def unreachable(self) -> list[int]:
        """The codes of the destination-unreachable errors about our UDP datagrams."""
        return [int(line.split()[1]) for line in self.proc.log_text().splitlines()
                if line.startswith("unreachable ")]  # fmt: skip

    def close(self) -> None:
        self.proc.stop(timeout=2.0)
