"""The ``host`` backend: our end runs on this host, the other end is a device elsewhere.

For ``ipsec-interop run --peer external``: the device under test is a real IPsec box that
the harness did not start; it knows only its address. The topology has two nodes:

- the *local* node (``tester``): processes in the host's own network namespace, using the
  local address the kernel picks to reach the device (``ip route get DEVICE`` -> ``src``) or
  the one the caller names, and UDP ports 500/4500 of that address (configurable; binding
  ports below 1024 needs root);
- the *device* node (``put``): only an address (and the ports it listens on). Nothing runs
  there: :meth:`DeviceNode.exec`, ``spawn`` and its firewall are "not applicable".

What it changes on the host, and nothing else (nothing persistent; all of it ends with the
run): the processes it starts (the reference node, tcpdump), the UDP sockets they bind on the
local address, and files in a labelled temporary directory and in the report folder.
No namespace, interface, address, route, rule or packet-filter change: closing ports, packet
loss and NAT are therefore "not applicable" here. Captures use ``tcpdump -p`` (the interface
is not switched to promiscuous mode) filtered to the device's address.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import system
from harness.peers.base import NotApplicable
from harness.topology.base import (
    FEATURE_BINDS,
    FEATURE_CAPTURE,
    FEATURE_STANDARD_PORTS,
    TCPDUMP,
    Addresses,
    Capture,
    HostProcessNode,
    Link,
    Node,
    Topology,
    TopologyError,
    TopologySpec,
    Unsupported,
)
from harness.topology.run import Run


class HostUnsupported(Unsupported, NotApplicable):
    """Something the host topology does not do to the user's host or cannot do on a device it
    does not run: an :class:`Unsupported` that the case runner also reports as "not
    applicable" with the reason."""

    def __init__(self, feature: str, reason: str) -> None:
        Unsupported.__init__(self, feature, reason)
        self.reasons = [f"{feature}: {reason}"]


@dataclass(frozen=True)
class HostTarget:
    """Where the device is and how our end reaches it."""

    address: str
    """The device's IKE address (IPv4)."""
    ike_port: int = 500
    natt_port: int = 4500
    inner: str | None = None
    """A host address the device protects (default: its own address)."""
    local_address: str | None = None
    """Our address (default: the source address of the route to the device)."""
    local_ike_port: int = 500
    local_natt_port: int = 4500
    local_inner: str | None = None
    """Our protected (inner) address (default: our address)."""
    device_node: str = "put"
    """Which node of the spec stands for the device."""


def route_to(address: str) -> tuple[str, str]:
    """``(interface, source address)`` of the route the kernel uses to reach ``address``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise TopologyError(f"{address!r} is not an IP address") from None
    result = system.run(["ip", "-o", f"-{ip.version}", "route", "get", str(ip)], timeout=10)
    if not result.ok:
        raise TopologyError(f"no route to {address}: {result.stderr.strip() or result.stdout}")
    words = result.stdout.split()
    dev = words[words.index("dev") + 1] if "dev" in words else ""
    src = words[words.index("src") + 1] if "src" in words else ""
    if not src:
        raise TopologyError(f"the route to {address} has no source address: {result.stdout}")
    return dev, src


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def check_udp_free(address: str, port: int) -> None:
    """:class:`TopologyError` unless UDP ``address:port`` can be bound now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TopologyError(
                    f"UDP {address}:{port} is in use on this host (another IKE daemon?): stop "
                    "it, or give the tester other ports in the peer file (tester.ike_port, "
                    "tester.natt_port)"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise TopologyError(f"{address} is not an address of this host") from None
            if exc.errno == errno.EACCES:
                raise TopologyError(f"binding UDP port {port} needs root") from None
            raise TopologyError(f"cannot bind UDP {address}:{port}: {exc.strerror}") from None


class HostNode(HostProcessNode):
    """Our end: processes in the host's network namespace, on one local address."""

    topology: HostTopology

    def __init__(self, topology: HostTopology, name: str, addresses: Addresses, iface: str) -> None:
        super().__init__(topology, name, addresses)
        self.iface = iface
        """The interface towards the device (``lo`` for a local address)."""

    def _no_binds(self) -> Unsupported:
        return HostUnsupported(FEATURE_BINDS, "the host topology mounts nothing")

    def _apply_firewall(self) -> None:
        if self.firewall.closed or self.firewall.loss_percent:
            self.firewall.closed.clear()
            self.firewall.loss_percent = 0.0
            raise HostUnsupported(
                "firewall", "the host topology does not change the host's packet filter"
            )

    def capture(self, name: str | None = None, *, interface: str | None = None) -> Capture:
        self.topology.require(FEATURE_CAPTURE)
        name = name or f"{self.name}-{interface or self.iface}"
        path = self.topology.pcap_path(name)
        device = self.topology.device.addresses.v4
        proc = self.spawn(
            f"tcpdump-{name}",
            [*TCPDUMP, "-p", "-i", interface or self.iface, "-w", str(path), "host", device],
            private_run=False,
        )
        proc.wait_for_log(r"listening on ", timeout=10)
        cap = Capture(path, proc)
        self.topology.captures.append(cap)
        return cap


class DeviceNode(Node):
    """The device: an address the harness talks to; nothing of ours runs there."""

    topology: HostTopology

    def _refuse(self, what: str) -> HostUnsupported:
        return HostUnsupported(what, f"the device at {self.addresses.v4} is not run by the harness")

    def exec(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> system.Completed:
        raise self._refuse("exec")

    def _spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        private_run: bool,
        binds: Mapping[str, str],
    ) -> subprocess.Popen[bytes]:
        raise self._refuse("spawn")

    def _apply_firewall(self) -> None:
        if self.firewall.closed or self.firewall.loss_percent:
            self.firewall.closed.clear()
            self.firewall.loss_percent = 0.0
            raise self._refuse("firewall")

    def capture(self, name: str | None = None, *, interface: str | None = None) -> Capture:
        """The device's traffic as seen from our end."""
        return self.topology.local.capture(name or self.name, interface=interface)


class HostTopology(Topology):
    backend = "host"
    features = frozenset({FEATURE_STANDARD_PORTS, FEATURE_CAPTURE})
    """The most it offers; :attr:`features` of an instance says what it offers here."""

    nodes: dict[str, Node]

    def __init__(
        self,
        spec: TopologySpec,
        *,
        artifacts: Path | None = None,
        run: Run | None = None,
        target: HostTarget | None = None,
    ) -> None:
        super().__init__(spec, artifacts=artifacts, run=run)
        self.target = target
        feats = set()
        if target is not None and (target.local_ike_port, target.local_natt_port) == (500, 4500):
            feats.add(FEATURE_STANDARD_PORTS)
        if os.geteuid() == 0 and system.which("tcpdump") is not None:
            feats.add(FEATURE_CAPTURE)
        self.features = frozenset(feats)  # type: ignore[misc]

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return cls.available_for(500, 4500)

    @classmethod
    def available_for(cls, *ports: int) -> tuple[bool, str]:
        """Whether our end can bind these UDP ports here (root for ports below 1024)."""
        if system.which("ip") is None:
            return False, "iproute2 (ip) is not installed"
        low = [p for p in ports if 0 < p < unprivileged_port_start()]
        if low and os.geteuid() != 0:
            return False, (
                f"binding UDP {'/'.join(map(str, low))} on this host needs root (or give the "
                "tester ports >= 1024 in the peer file: tester.ike_port, tester.natt_port)"
            )
        return True, ""

    def require(self, feature: str) -> None:
        if feature not in self.features:
            raise HostUnsupported(feature, self.why_not(feature))

    def why_not(self, feature: str) -> str:
        if feature == FEATURE_CAPTURE:
            return "capture on the host needs root and tcpdump"
        if feature == FEATURE_STANDARD_PORTS:
            return "the tester does not use UDP 500/4500 (peer file: tester ports)"
        return "the host topology does not change the host (no firewall, loss, NAT, IPv6)"

    @property
    def device(self) -> Node:
        assert self.target is not None
        return self.nodes[self.target.device_node]

    @property
    def local(self) -> HostNode:
        assert self.target is not None
        node = next(n for name, n in self.nodes.items() if name != self.target.device_node)
        assert isinstance(node, HostNode)
        return node

    def _build(self) -> None:
        t = self.target
        if t is None:
            raise TopologyError("the host topology needs the device's address (a HostTarget)")
        names = [n.name for n in self.spec.nodes]
        if self.spec.router or len(names) != 2 or t.device_node not in names:
            raise HostUnsupported(
                "nat", f"the host topology is a pair: our end and the device {t.device_node!r}"
            )
        try:
            device_ip = ipaddress.ip_address(t.address)
        except ValueError:
            raise TopologyError(f"device address {t.address!r} is not an IP address") from None
        if device_ip.version != 4:
            raise HostUnsupported("ipv6", "the host topology supports IPv4 devices only")
        iface, src = route_to(t.address)
        local = t.local_address or src
        for port in (t.local_ike_port, t.local_natt_port):
            check_udp_free(local, port)
        ours = next(n for n in names if n != t.device_node)
        self.nodes[ours] = HostNode(
            self,
            ours,
            Addresses(
                v4=local,
                v6=None,
                inner_v4=t.local_inner or local,
                inner_v6=None,
                ike_port=t.local_ike_port,
                natt_port=t.local_natt_port,
            ),
            iface,
        )
        self.nodes[t.device_node] = DeviceNode(
            self,
            t.device_node,
            Addresses(
                v4=str(device_ip),
                v6=None,
                inner_v4=t.inner or str(device_ip),
                inner_v6=None,
                ike_port=t.ike_port,
                natt_port=t.natt_port,
            ),
        )
        name = f"{names[0]}-{names[1]}"
        self.links[name] = Link(name, ((ours, iface), (t.device_node, "")), f"{local}/32", None)

    def capture(self, link: str | None = None) -> Capture:
        self.require(FEATURE_CAPTURE)
        name = link or next(iter(self.links), None) or "host"
        return self.local.capture(name)

    def _teardown(self) -> None:
        """Nothing to remove: the host was not changed (processes are already stopped)."""
