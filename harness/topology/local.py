"""The ``local`` backend: processes on loopback addresses, no root, no namespaces.

Every node gets its own address in 127.0.0.0/8 and its own pair of free UDP ports for IKE and
NAT-T (all nodes share the host's network stack, so 500/4500 are not theirs:
``Addresses.ike_port``/``natt_port`` say which ports to use). It hosts reference nodes in
``api`` mode.

"UDP 500 closed" has two meanings here, as on a real host:

- ``reject`` (closed): nothing listens on the node's port, so the kernel answers ICMP port
  unreachable. The port must be free when it is closed; whoever starts the node must consult
  :meth:`LocalNode.udp_policy` and not bind a closed port.
- ``drop`` (filtered): the topology holds a socket on the port that never reads: datagrams
  vanish without an answer.

Random loss and NAT need the ``netns`` or ``docker`` backend; capture needs root (tcpdump on
``lo``, filtered to the node's address).
"""

from __future__ import annotations

import errno
import os
import random
import socket

from harness import system
from harness.topology.base import (
    FEATURE_CAPTURE,
    FEATURE_DROP,
    FEATURE_REJECT,
    TCPDUMP,
    Addresses,
    Capture,
    HostProcessNode,
    Link,
    Topology,
    TopologyError,
    Unsupported,
)

_PORT_OF = {500: "ike_port", 4500: "natt_port"}


def _free_udp_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, 0))
        port: int = s.getsockname()[1]
        return port


class LocalNode(HostProcessNode):
    """A node that is an address on the host's loopback."""

    topology: LocalTopology

    def __init__(self, topology: LocalTopology, name: str, addresses: Addresses) -> None:
        super().__init__(topology, name, addresses)
        self._discard: dict[int, socket.socket] = {}

    def real_port(self, port: int) -> int:
        """The host port standing for this node's ``port`` (500 and 4500 are remapped)."""
        attr = _PORT_OF.get(port)
        return int(getattr(self.addresses, attr)) if attr else port

    def udp_policy(self, port: int) -> str:
        """``open``, ``drop`` or ``reject`` for this node's logical UDP ``port``."""
        state = self.firewall.closed.get(port)
        return state[0] if state else "open"

    def _apply_firewall(self) -> None:
        for port, (how, direction) in self.firewall.closed.items():
            if direction != "in":
                raise Unsupported(
                    "firewall.direction", "the local backend closes only a node's own ports"
                )
            real = self.real_port(port)
            if how == "drop":
                if port not in self._discard:
                    self._discard[port] = self._hold(real)
            else:
                held = self._discard.pop(port, None)
                if held is not None:
                    held.close()
                self._check_free(real)
        for port in [p for p in self._discard if p not in self.firewall.closed]:
            self._discard.pop(port).close()
        if self.firewall.loss_percent:
            raise Unsupported("loss", "random loss needs the netns or docker backend")

    def _hold(self, port: int) -> socket.socket:
        """A socket on the port that never reads: datagrams to it vanish (filtered)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((self.addresses.v4, port))
        except OSError as exc:
            s.close()
            raise TopologyError(
                f"{self.name}: cannot filter UDP {self.addresses.v4}:{port}: {exc.strerror} "
                "(close the port before starting the node)"
            ) from None
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return s

    def _check_free(self, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((self.addresses.v4, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise TopologyError(
                        f"{self.name}: UDP {self.addresses.v4}:{port} has a listener; close the "
                        "port before starting the node"
                    ) from None
                raise

    def capture(self, name: str | None = None, *, interface: str | None = None) -> Capture:
        self.topology.require(FEATURE_CAPTURE)
        if system.which("tcpdump") is None:
            raise Unsupported(FEATURE_CAPTURE, "tcpdump is not installed")
        name = name or self.name
        path = self.topology.pcap_path(name)
        proc = self.spawn(
            f"tcpdump-{name}",
            [*TCPDUMP, "-i", interface or "lo", "-w", str(path), "host", self.addresses.v4],
        )
        proc.wait_for_log(r"listening on ", timeout=10)
        cap = Capture(path, proc)
        self.topology.captures.append(cap)
        return cap

    def close_sockets(self) -> None:
        for s in self._discard.values():
            s.close()
        self._discard.clear()


class LocalTopology(Topology):
    backend = "local"
    features = frozenset(
        {FEATURE_DROP, FEATURE_REJECT} | ({FEATURE_CAPTURE} if os.geteuid() == 0 else set())
    )

    nodes: dict[str, LocalNode]  # type: ignore[assignment]

    def why_not(self, feature: str) -> str:
        if feature == FEATURE_CAPTURE:
            return "capture on loopback needs root"
        return "the local backend does not offer it (use --topology netns or docker)"

    def _build(self) -> None:
        if self.spec.router:
            raise Unsupported("nat", "the local backend has no router (use netns or docker)")
        taken: set[int] = set()
        rng = random.Random()
        for i, spec in enumerate(self.spec.nodes):
            while True:
                last = rng.randint(2, 254)
                if last not in taken:
                    taken.add(last)
                    break
            addr = f"127.0.{rng.randint(0, 255)}.{last}"
            addrs = Addresses(
                v4=addr,
                v6=None,
                inner_v4=f"198.19.{i + 1}.1",
                inner_v6=None,
                ike_port=_free_udp_port(addr),
                natt_port=_free_udp_port(addr),
            )
            self.nodes[spec.name] = LocalNode(self, spec.name, addrs)
        names = [n.name for n in self.spec.nodes]
        if len(names) == 2:
            self.links[f"{names[0]}-{names[1]}"] = Link(
                f"{names[0]}-{names[1]}",
                ((names[0], "lo"), (names[1], "lo")),
                "127.0.0.0/8",
                None,
            )

    def _teardown(self) -> None:
        for node in self.nodes.values():
            node.close_sockets()
