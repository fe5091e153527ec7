"""Hosts (the node's sans-I/O core) joined by an in-memory network on a virtual clock.

Everything a host sends is put on the wire with a fixed latency and recorded
(:attr:`Net.wire`); UDP ports of a host can be made silent (``drop``) or answered with ICMP
port unreachable (``reject``), as the topology's firewall does. No sockets, no sleeps: time
only moves when :meth:`Net.run` jumps to the next delivery or timer.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import struct
from dataclasses import dataclass, field
from typing import Literal

from reference_impl.node.host import Host, HostSettings, PortMap
from reference_impl.node.ikeconf import Credentials, IkeOverrides
from reference_impl.sa import Address

A = "198.51.100.1"
B = "198.51.100.2"
A_IN = "10.1.0.1"
B_IN = "10.2.0.1"
PSK = b"hostnet-test-psk-0123456789"
LATENCY = 1 / 256  # exact in binary: virtual times compare exactly


@dataclass
class WireRecord:
    t: float
    kind: Literal["udp", "ip"]
    src: str
    dst: str
    proto: int
    """IP protocol of what went on the wire (17 for UDP datagrams)."""
    sport: int
    dport: int
    data: bytes

    @property
    def is_ike(self) -> bool:
        return self.kind == "udp" and (
            self.dport in (500, 4500) and (self.dport == 500 or self.data[:4] == b"\0\0\0\0")
        )

    @property
    def is_esp(self) -> bool:
        return self.proto == 50 or (
            self.kind == "udp" and self.dport == 4500 and self.data[:4] != b"\0\0\0\0"
        )

    @property
    def is_clear(self) -> bool:
        return self.kind == "ip" and self.proto not in (50, 51)


@dataclass
class Net:
    hosts: dict[str, Host] = field(default_factory=dict)
    now: float = 0.0
    wire: list[WireRecord] = field(default_factory=list)
    delivered: dict[str, list[tuple[float, bytes]]] = field(default_factory=dict)
    closed: dict[tuple[str, int], str] = field(default_factory=dict)
    """(host address, UDP port) -> ``drop`` or ``reject``."""
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)
    latency: float = LATENCY
    _queue: list[tuple[float, int, str, object]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, address: str, host: Host) -> Host:
        self.hosts[address] = host
        self.delivered[address] = []
        return host

    def owner(self, address: str) -> Host | None:
        for addr, h in self.hosts.items():
            if address == addr or address in h.settings.local_addresses:
                return h
        return None

    def name_of(self, host: Host) -> str:
        return next(a for a, h in self.hosts.items() if h is host)

    # stimuli ---------------------------------------------------------------------------------

    def send(self, address: str, packet: bytes) -> None:
        """The local stack of ``address`` sends ``packet`` now."""
        self.hosts[address].outbound_packet(packet, self.now)
        self.collect()

    def collect(self) -> None:
        for addr, h in self.hosts.items():
            for data, src, dst in h.udp_out:
                self.wire.append(WireRecord(self.now, "udp", src[0], dst[0], 17, src[1], dst[1],
                                            data))  # fmt: skip
                self._push(("udp", data, src, dst))
            h.udp_out.clear()
            for pkt in h.ip_out:
                src, dst, proto = _ip_fields(pkt)
                self.wire.append(WireRecord(self.now, "ip", src, dst, proto, 0, 0, pkt))
                self._push(("ip", pkt, src, dst))
            h.ip_out.clear()
            for pkt in h.delivered:
                self.delivered[addr].append((self.now, pkt))
            h.delivered.clear()

    def _push(self, item: object) -> None:
        heapq.heappush(self._queue, (self.now + self.latency, next(self._seq), "x", item))

    def _deliver(self, item: tuple[str, bytes, Address | str, Address | str]) -> None:
        kind, data, src, dst = item
        host = self.owner(dst if isinstance(dst, str) else dst[0])
        if host is None:
            return
        if kind == "udp":
            how = self.closed.get((dst[0], dst[1]))
            if how == "drop":
                return
            if how == "reject":
                sender = self.owner(src[0])
                if sender is not None:
                    sender.icmp_error(dst, src[1], 3, 3, data[:64], dst[0], self.now)
                return
            host.udp_received(data, src, dst, self.now)
        else:
            host.raw_received(data, self.now)

    def run(self, until: float, *, step: float | None = None) -> None:
        """Deliver and fire timers up to ``until`` (inclusive)."""
        for _ in range(1_000_000):
            self.collect()
            timers = [t for h in self.hosts.values() if (t := h.get_timer()) is not None]
            nxt = min([*timers, *([self._queue[0][0]] if self._queue else [])], default=None)
            if nxt is None or nxt > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, _, item = heapq.heappop(self._queue)
                self._deliver(item)  # type: ignore[arg-type]
                self.collect()
            for h in self.hosts.values():
                t = h.get_timer()
                if t is not None and t <= self.now:
                    h.handle_timer(self.now)
            self.collect()
        raise AssertionError("network did not settle")

    # views -----------------------------------------------------------------------------------

    def got(self, address: str) -> list[bytes]:
        return [p for _, p in self.delivered[address]]

    def ike(self, src: str | None = None) -> list[WireRecord]:
        return [w for w in self.wire if w.is_ike and (src is None or w.src == src)]

    def esp(self, src: str | None = None) -> list[WireRecord]:
        return [w for w in self.wire if w.is_esp and (src is None or w.src == src)]

    def clear(self, src: str | None = None) -> list[WireRecord]:
        return [w for w in self.wire if w.is_clear and (src is None or w.src == src)]


def _ip_fields(pkt: bytes) -> tuple[str, str, int]:
    if pkt[0] >> 4 == 4:
        v4 = ipaddress.IPv4Address
        return str(v4(pkt[12:16])), str(v4(pkt[16:20])), pkt[9]
    v6 = ipaddress.IPv6Address
    return str(v6(pkt[8:24])), str(v6(pkt[24:40])), pkt[6]


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet with a correct header checksum (UDP checksum zero)."""
    from reference_impl.driver.packet import checksum

    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = bytearray(
        struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                    ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    )  # fmt: skip
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + udp


def host(
    address: str,
    *,
    inner: tuple[str, ...] = (),
    psk: bytes = PSK,
    overrides: IkeOverrides | None = None,
    ports: PortMap | None = None,
    now: float = 0.0,
) -> Host:
    settings = HostSettings(
        addresses=(address,),
        local_addresses=(address, *inner),
        ports=ports or PortMap(),
        credentials=Credentials(psks={"lab": psk}),
        overrides=overrides or IkeOverrides(),
        record_deliveries=True,
    )
    return Host(settings, now)


def transport_policy(
    peer: str,
    *,
    version: str = "ikev2",
    action: str = "require",
    protocol: str = "esp",
    extra_action: str = "",
    mm: str = "{enc: aes256, integ: sha256, dh: modp2048}",
    methods: str = "",
    remote_port: int = 500,
) -> str:
    """A host-to-host policy: everything between us and ``peer`` negotiated."""
    if not methods:
        methods = (
            "[{protocol: esp, encryption: aes128gcm16}]"
            if protocol == "esp"
            else "[{protocol: ah, integrity: sha256}]"
        )
    fallback = "allow_fallback: true" if action == "request" else "allow_fallback: false"
    return f"""
policy:
  name: h2h-{action}
  settings:
    ordering: explicit
    default_action: bypass
    ike:
      version: {version}
      remote_port: {remote_port}
      main_mode:
        proposals: [{mm}]
  default_response_rule: {{enabled: false}}
  auth_method_sets:
    - name: lab
      methods: [{{preshared_key: {{secret_ref: lab}}}}]
  filter_lists:
    - name: peer
      filters: [{{src: me, dst: {peer}, proto: any, mirrored: true}}]
  filter_actions:
    - name: act
      type: negotiate
      security_methods: {methods}
      {fallback}
      {extra_action}
  rules:
    - {{name: to-peer, filter_list: peer, filter_action: act, auth_methods: lab}}
"""


def tunnel_policy(
    me: str, peer: str, my_net: str, peer_net: str, *, version: str = "ikev2", methods: str = ""
) -> str:
    methods = methods or "[{protocol: esp, encryption: aes128gcm16}]"
    return f"""
policy:
  name: tunnel
  settings:
    ordering: explicit
    default_action: bypass
    ike:
      version: {version}
      main_mode:
        proposals: [{{enc: aes256, integ: sha256, dh: modp2048}}]
  default_response_rule: {{enabled: false}}
  auth_method_sets:
    - name: lab
      methods: [{{preshared_key: {{secret_ref: lab}}}}]
  filter_lists:
    - name: out
      filters: [{{src: {my_net}, dst: {peer_net}, mirrored: false}}]
    - name: in
      filters: [{{src: {peer_net}, dst: {my_net}, mirrored: false}}]
  filter_actions:
    - name: act
      type: negotiate
      security_methods: {methods}
      session_key_pfs: true
  rules:
    - {{name: out, filter_list: out, filter_action: act, auth_methods: lab,
        tunnel: {{local_endpoint: {me}, remote_endpoint: {peer}}}}}
    - {{name: in, filter_list: in, filter_action: act, auth_methods: lab,
        tunnel: {{local_endpoint: {peer}, remote_endpoint: {me}}}}}
"""


def pair(version: str = "ikev2", **policy_kw: object) -> Net:
    """Two hosts A and B with mirrored host-to-host policies."""
    net = Net()
    a = net.add(A, host(A))
    b = net.add(B, host(B))
    a.load_policy(transport_policy(B, version=version, **policy_kw), 0.0, text=True)  # type: ignore[arg-type]
    b.load_policy(transport_policy(A, version=version, **policy_kw), 0.0, text=True)  # type: ignore[arg-type]
    return net
