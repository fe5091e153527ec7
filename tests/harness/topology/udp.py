"""Reachability between the nodes of a topology, for the backend tests: a UDP echo server, a
one-datagram probe and ping, run in the nodes (containers use their own ``python3``)."""

from __future__ import annotations

import sys

from harness.topology.base import Node

# A UDP echo server: answers each datagram with the address it came from.
_ECHO = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(addr[0].encode(), addr)
"""

# One datagram from a connected socket: prints what came back, "refused" or "silence".
_PROBE = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.connect((sys.argv[1], int(sys.argv[2])))
try:
    s.send(b"probe")
    print(s.recv(2048).decode())
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("silence")
except PermissionError:  # an output rule dropped our own datagram
    print("blocked")
"""


def _python(node: Node) -> str:
    return "python3" if node.topology.backend == "docker" else sys.executable


def echo(node: Node, port: int = 500, family: int = 4) -> None:
    """A UDP echo server on ``port`` of every address of ``family`` in ``node``, listening."""
    addr = "::" if family == 6 else "0.0.0.0"
    argv = [_python(node), "-c", _ECHO, addr, str(port)]
    node.spawn(f"echo{port}-{family}", argv).wait_for_log("listening", timeout=20)


def probe(src: Node, dst: str, port: int = 500, timeout: float = 0.5) -> str:
    """What one datagram from ``src`` to ``dst:port`` met: the source address the echo server
    saw, ``refused``, ``silence`` or ``blocked``."""
    result = src.exec([_python(src), "-c", _PROBE, dst, str(port), str(timeout)])
    assert result.ok, result.stderr
    return result.stdout.strip()


def ping(src: Node, dst: str) -> bool:
    return src.exec(["ping", "-c", "1", "-W", "1", dst]).ok
