"""The ``netns`` backend: a Linux network namespace per node, veth links, nftables (root).

Shape (addressing plan in :mod:`harness.topology.base`):

- direct: ``<label>-a`` and ``<label>-b`` joined by a veth pair, ``eth0`` on both sides;
- routed: each node's ``eth0`` is joined to ``e-<node>`` in ``<label>-router``, which forwards
  and masquerades (nftables ``masquerade``) the nodes behind NAT; nothing new from outside
  reaches a node behind NAT.

No interface is created in the root namespace and nothing is written under ``/etc/netns``.
Each node's packet filter is one nft table ``inet ipsec_interop_<run id>`` in its namespace,
rewritten atomically on every change. Processes started with :meth:`Node.spawn` get a private
``/run`` (a tmpfs in the mount namespace ``ip netns exec`` makes for them), so daemons of one
kind in several nodes never share pid files or sockets (../shared/design/peers.md §0).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness import system
from harness.topology.base import (
    FEATURE_BINDS,
    FEATURE_CAPTURE,
    FEATURE_DROP,
    FEATURE_IPV6,
    FEATURE_LOSS,
    FEATURE_NAT,
    FEATURE_REJECT,
    FEATURE_ROOT,
    FEATURE_STANDARD_PORTS,
    TCPDUMP,
    Addresses,
    Capture,
    Link,
    Node,
    Topology,
    TopologyError,
    Unsupported,
    bare,
    direct_link_addresses,
    network_of,
    routed_link_addresses,
    wait_until,
)
from harness.topology.run import SweepReport, is_stale_name


def _ip(*args: str, timeout: float = 15.0) -> system.Completed:
    return system.run(["ip", *args], timeout=timeout, check=True)


def _ns_exec(ns: str, argv: Sequence[str], **kw: object) -> system.Completed:
    return system.run(["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[arg-type]


def list_namespaces() -> list[str]:
    result = system.run(["ip", "netns", "list"], timeout=10)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    result = system.run(["ip", "netns", "pids", ns], timeout=10)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def delete_namespace(ns: str) -> None:
    """Kill whatever still runs in ``ns`` (SIGKILL, by pid) and delete it."""
    for _ in range(3):
        pids = namespace_pids(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            _wait_gone(pid)
    result = system.run(["ip", "netns", "delete", ns], timeout=15)
    if not result.ok and ns in list_namespaces():
        raise TopologyError(f"cannot delete namespace {ns}: {result.first_line()}")


def _wait_gone(pid: int, timeout: float = 2.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


class NetnsNode(Node):
    """A node that is a network namespace."""

    topology: NetnsTopology

    def __init__(
        self, topology: NetnsTopology, name: str, addresses: Addresses, netns: str, iface: str
    ) -> None:
        super().__init__(topology, name, addresses)
        self.netns = netns
        self.iface = iface
        """The node's link interface (``eth0``; the router has several)."""
        self.interfaces: list[str] = [iface] if iface else []

    def netns_path(self) -> str | None:
        return f"/run/netns/{self.netns}"

    def exec(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> system.Completed:
        return system.run(["ip", "netns", "exec", self.netns, *argv], timeout=timeout, env=env)

    def _spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        private_run: bool,
        binds: Mapping[str, str],
    ) -> subprocess.Popen[bytes]:
        steps = []
        if private_run:
            steps.append("mount -t tmpfs tmpfs /run")
        for src, dst in binds.items():
            steps.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}")
        if steps:
            # ip netns exec and sh both exec, so the pid is the program's own.
            script = " && ".join([*steps, 'exec "$@"'])
            full = ["ip", "netns", "exec", self.netns, "sh", "-c", script, "sh", *argv]
        else:
            full = ["ip", "netns", "exec", self.netns, *argv]
        return system.spawn(full, log_path=log_path, env=env)

    def _apply_firewall(self) -> None:
        table = self.topology.run.nft_table
        script = [f"table inet {table} {{}}", f"delete table inet {table}"]
        rules = self._ruleset()
        if rules:
            script.append(rules)
        result = system.run(
            ["ip", "netns", "exec", self.netns, "nft", "-f", "-"],
            input="\n".join(script) + "\n",
            timeout=15,
        )
        if not result.ok:
            raise TopologyError(f"nft in {self.name}: {result.stderr.strip() or result.stdout}")

    def _ruleset(self) -> str:
        fw = self.firewall
        inbound: list[str] = []
        outbound: list[str] = []
        for port, (how, direction) in sorted(fw.closed.items()):
            verdict = "drop" if how == "drop" else "reject with icmpx type port-unreachable"
            if direction in ("in", "both"):
                inbound.append(f'iifname != "lo" udp dport {port} {verdict}')
            if direction in ("out", "both"):
                outbound.append(f'oifname != "lo" udp dport {port} {verdict}')
        if fw.loss_percent:
            # Per ten thousand, so fractional percentages work; ICMPv6 (neighbour discovery)
            # is spared, or the link itself would flap.
            share = round(fw.loss_percent * 100)
            chance = f"numgen random mod 10000 < {share} " if share < 10000 else ""
            rule = f"meta l4proto != ipv6-icmp {chance}drop"
            if fw.loss_direction in ("in", "both"):
                inbound.append(f'iifname != "lo" {rule}')
            if fw.loss_direction in ("out", "both"):
                outbound.append(f'oifname != "lo" {rule}')
        if not inbound and not outbound:
            return ""
        table = self.topology.run.nft_table
        lines = [f"table inet {table} {{"]
        for chain, hook, rules in (("input", "input", inbound), ("output", "output", outbound)):
            lines.append(f"  chain {chain} {{")
            lines.append(f"    type filter hook {hook} priority 0; policy accept;")
            lines.extend(f"    {r}" for r in rules)
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines)

    def capture(self, name: str | None = None, *, interface: str | None = None) -> Capture:
        if system.which("tcpdump") is None:
            raise Unsupported(FEATURE_CAPTURE, "tcpdump is not installed")
        iface = interface or self.iface
        name = name or f"{self.name}-{iface}"
        path = self.topology.pcap_path(name)
        proc = self.spawn(
            f"tcpdump-{name}", [*TCPDUMP, "-i", iface, "-w", str(path)], private_run=False
        )
        proc.wait_for_log(r"listening on ", timeout=10)
        cap = Capture(path, proc)
        self.topology.captures.append(cap)
        return cap


class NetnsTopology(Topology):
    backend = "netns"
    features = frozenset(
        {
            FEATURE_ROOT,
            FEATURE_BINDS,
            FEATURE_DROP,
            FEATURE_REJECT,
            FEATURE_LOSS,
            FEATURE_CAPTURE,
            FEATURE_NAT,
            FEATURE_IPV6,
            FEATURE_STANDARD_PORTS,
        }
    )

    nodes: dict[str, NetnsNode]  # type: ignore[assignment]
    router: NetnsNode | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._namespaces: list[str] = []

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, (
                "needs root (network namespaces, veth links, nftables); without root, "
                "--topology local runs the reference peer on loopback"
            )
        if system.which("ip") is None:
            return False, "ip (iproute2) is not installed"
        if system.which("nft") is None:
            return False, "nft (nftables) is not installed"
        return True, ""

    @classmethod
    def sweep(cls, report: SweepReport) -> None:
        for ns in list_namespaces():
            if is_stale_name(ns):
                try:
                    delete_namespace(ns)
                except TopologyError as exc:
                    report.errors.append(str(exc))
                else:
                    report.add("namespaces", ns)

    def ns_name(self, node: str) -> str:
        return f"{self.run.label}-{node}"

    def _add_namespace(self, node: str) -> str:
        ns = self.ns_name(node)
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # Addresses are usable at once: no duplicate address detection on IPv6.
        for key in ("all", "default"):
            _ns_exec(ns, ["sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"], timeout=10)
        return ns

    def _address(self, ns: str, iface: str, addr: str) -> None:
        if ":" in addr:
            _ip("-n", ns, "addr", "add", addr, "dev", iface, "nodad")
        else:
            _ip("-n", ns, "addr", "add", addr, "dev", iface)

    def _build(self) -> None:
        self._build_links()
        if self.spec.ipv6:
            self._wait_ipv6_ready()

    def _build_links(self) -> None:
        ipv6 = self.spec.ipv6
        if not self.spec.router:
            a, b = self.spec.nodes
            ns_a, ns_b = self._add_namespace(a.name), self._add_namespace(b.name)
            _ip("-n", ns_a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                "netns", ns_b)  # fmt: skip
            for i, (spec, ns) in enumerate(((a, ns_a), (b, ns_b))):
                v4, v6, in4, in6 = direct_link_addresses(i)
                self._address(ns, "eth0", v4)
                if ipv6:
                    self._address(ns, "eth0", v6)
                self._inner(ns, in4, in6 if ipv6 else None)
                _ip("-n", ns, "link", "set", "eth0", "up")
                addrs = Addresses(bare(v4), bare(v6) if ipv6 else None, in4, in6 if ipv6 else None)
                self.nodes[spec.name] = NetnsNode(self, spec.name, addrs, ns, "eth0")
            v4a, v6a, _, _ = direct_link_addresses(0)
            self.links[f"{a.name}-{b.name}"] = Link(
                f"{a.name}-{b.name}",
                ((a.name, "eth0"), (b.name, "eth0")),
                network_of(v4a),
                network_of(v6a) if ipv6 else None,
            )
            return

        rns = self._add_namespace("router")
        _ns_exec(rns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], timeout=10, check=True)
        if ipv6:
            _ns_exec(rns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], timeout=10,
                     check=True)  # fmt: skip
        router_addrs = Addresses("198.18.0.1", "2001:db8::1" if ipv6 else None, "198.18.0.1", None)
        self.router = NetnsNode(self, "router", router_addrs, rns, "")
        nat_rules: list[str] = []
        for i, spec in enumerate(self.spec.nodes):
            v4, v6, r4, r6, in4, in6 = routed_link_addresses(i)
            ns = self._add_namespace(spec.name)
            riface = f"e-{spec.name}"
            _ip("-n", rns, "link", "add", riface, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            self.router.interfaces.append(riface)
            self._address(ns, "eth0", v4)
            self._address(rns, riface, r4)
            if ipv6:
                self._address(ns, "eth0", v6)
                self._address(rns, riface, r6)
            self._inner(ns, in4, in6 if ipv6 else None)
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", rns, "link", "set", riface, "up")
            _ip("-n", ns, "route", "add", "default", "via", bare(r4))
            if ipv6:
                _ip("-n", ns, "-6", "route", "add", "default", "via", bare(r6))
            addrs = Addresses(bare(v4), bare(v6) if ipv6 else None, in4, in6 if ipv6 else None)
            self.nodes[spec.name] = NetnsNode(self, spec.name, addrs, ns, "eth0")
            self.links[f"{spec.name}-router"] = Link(
                f"{spec.name}-router",
                ((spec.name, "eth0"), ("router", riface)),
                network_of(v4),
                network_of(v6) if ipv6 else None,
            )
            if spec.behind_nat:
                nat_rules.append(f'ip saddr {network_of(v4)} oifname != "{riface}" masquerade')
                if ipv6:
                    nat_rules.append(f'ip6 saddr {network_of(v6)} oifname != "{riface}" masquerade')
                nat_rules.append(f'FORWARD oifname "{riface}" ct state new drop')
        if nat_rules:
            self._install_nat(rns, nat_rules)

    def _wait_ipv6_ready(self) -> None:
        """Wait until every link interface has its link-local address: before that, the
        first IPv6 packet over a fresh veth is lost (neighbour discovery has no source)."""
        ends = [(n.netns, n.iface) for n in self.nodes.values()]
        if self.router is not None:
            ends += [(self.router.netns, i) for i in self.router.interfaces]

        def ready() -> bool:
            for ns, iface in ends:
                out = system.run(
                    ["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", iface, "scope", "link"],
                    timeout=10,
                ).stdout
                if "fe80" not in out or "tentative" in out:
                    return False
            return True

        wait_until(ready, 5.0, "IPv6 link-local addresses on the links")

    def _inner(self, ns: str, v4: str, v6: str | None) -> None:
        _ip("-n", ns, "addr", "add", f"{v4}/32", "dev", "lo")
        if v6:
            _ip("-n", ns, "addr", "add", f"{v6}/128", "dev", "lo", "nodad")

    def _install_nat(self, rns: str, rules: list[str]) -> None:
        table = f"{self.run.nft_table}_nat"
        post = [r for r in rules if not r.startswith("FORWARD ")]
        fwd = [r.removeprefix("FORWARD ") for r in rules if r.startswith("FORWARD ")]
        text = "\n".join(
            [
                f"table inet {table} {{",
                "  chain postrouting {",
                "    type nat hook postrouting priority srcnat; policy accept;",
                *(f"    {r}" for r in post),
                "  }",
                "  chain forward {",
                "    type filter hook forward priority 0; policy accept;",
                *(f"    {r}" for r in fwd),
                "  }",
                "}",
            ]
        )
        result = _ns_exec(rns, ["nft", "-f", "-"], input=text + "\n", timeout=15)
        if not result.ok:
            raise TopologyError(f"nft NAT in the router: {result.stderr.strip()}")

    def _teardown(self) -> None:
        errors = []
        for ns in reversed(self._namespaces):
            try:
                delete_namespace(ns)
            except TopologyError as exc:
                errors.append(str(exc))
        self._namespaces.clear()
        if errors:
            raise TopologyError("; ".join(errors))
