"""Shared machinery of the ``fallback`` and ``spd`` suites (policy-spec §5, catalogue §10).

The peer under test is the initiator I of policy-spec §5.1; the tester (our reference node)
plays R. R's UDP 500 is closed in one of three ways (:data:`CLOSURES`):

* ``filtered``: datagrams to R:500 vanish, no answer, no ICMP. ``netns``: an nft drop rule on
  R (``close_udp(how="drop")``). ``local``: the tester node ignores what reaches its IKE port
  (``silent_ike_port``): on the wire the same thing, and the local backend cannot close a port
  a running node holds without restarting it (seconds per case).
* ``reject``: closed with ICMP port unreachable. ``netns``: nft reject on R. ``local``: R is an
  unused loopback address (``R'``) where nothing listens on UDP 500, so the kernel answers,
  which is exactly the local backend's own "reject" (nothing bound); clear packets towards R'
  still reach the tester over the PUT's clear link, so they are observed all the same.
* ``silent``: no listener answers: the tester node receives and ignores (both topologies).

What R receives is observed black-box, from R's side: ``local``, the tester's received-datagram
log (``ike_ignored`` events of ``silent_ike_port``) and the packets it delivered (clear or
protected); ``netns``, a capture of the link. A *sentinel* (an ICMP echo the PUT's policy
exempts, or a datagram the harness sends to R's IKE port) is sent after every step: when R has
seen it, it has seen everything the PUT sent before, so "nothing more was sent" is a checked
fact, not a sleep.

Timing runs on the reference PUT's **virtual clock** (policy-spec §5.1: "virtual-clock tests
exact"): the case advances the PUT's clock to just before and just after every instant it
expects something, and stamps each observation with the step it first appeared in. A datagram
sent at t=0.5 is stamped 0.5 (+1 µs); one sent early would be stamped 0.499.

For strongSwan (no notion of fallback, kernel-libipsec data plane) :class:`SwanFb` loads a trap
policy, sends probes from the protected address, captures the link and reads charon's log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from reference_impl.driver.packet import checksum

if TYPE_CHECKING:
    from harness.lab import CaseContext
    from harness.peers.base import Peer, Scenario
    from harness.topology.base import Capture, Node, Topology

T = TypeVar("T")

PROBE_SPORT = 40000
PROBE_DPORT = 9  # discard
MAGIC = b"FBPROBE:"
SENTINEL = b"FBSYNC:"
FLOW_FORGET_S = 7300.0
"""Longer than any flow idle timer of the reference agent (TCP: 7200 s)."""
EPS = 1e-6
"""Step past an instant: timers due at t fire when the clock reaches t + EPS."""
BEFORE = 1e-3
"""Step to just before an instant: nothing due at t may have happened at t - BEFORE."""
TOLERANCE_WALL = 0.05
"""Real-clock tolerance: policy-spec §5.1 ``±max(50 ms, 5 %)``."""

CLOSURES = ("filtered", "reject", "silent")

IKE_SA_INIT = 34
IKE_AUTH = 35
MAIN_MODE = 2


def wall_tolerance(expected: float) -> float:
    return max(TOLERANCE_WALL, 0.05 * expected)


# --- packets (stdlib only: no scapy on the probe path) --------------------------------------------


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0) -> bytes:
    """An IPv4 header (RFC 791) in front of ``payload``, checksum computed."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                      s, d)  # fmt: skip
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP datagram (RFC 768 checksum over the pseudo-header)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = checksum(s + d + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
    return ipv4(src, dst, 17, udp[:6] + struct.pack("!H", c) + udp[8:])


def tcp4(
    src: str, dst: str, sport: int, dport: int, *, flags: int = 0x02, seq: int = 1,
    payload: bytes = b"",
) -> bytes:  # fmt: skip
    """An IPv4/TCP segment (RFC 9293; SYN by default)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    c = checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    return ipv4(src, dst, 6, tcp[:16] + struct.pack("!H", c) + tcp[18:])


def icmp4_echo(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ipv4(src, dst, 1, body)


def icmp4_port_unreachable(
    src: str, dst: str, quoted_src: str, quoted_dst: str, sport: int, dport: int, quoted: bytes
) -> bytes:
    """An ICMP destination unreachable / port unreachable (RFC 792, type 3 code 3) from ``src``
    to ``dst``, quoting an IPv4/UDP datagram ``quoted_src:sport -> quoted_dst:dport`` whose
    payload starts with ``quoted`` (a forged ICMP, for policy-spec FB-11)."""
    inner = udp4(quoted_src, quoted_dst, sport, dport, quoted)
    body = struct.pack("!BBHI", 3, 3, 0, 0) + inner[: 20 + 8 + len(quoted)]
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ipv4(src, dst, 1, body)


@dataclass(frozen=True)
class Ip4:
    """The parts of an IPv4 packet the cases look at."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    payload: bytes
    """UDP/TCP payload (ICMP: the ICMP message)."""
    icmp: tuple[int, int] | None = None

    @classmethod
    def parse(cls, pkt: bytes) -> Ip4 | None:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        body = pkt[ihl:]
        if proto == 17 and len(body) >= 8:
            sport, dport = struct.unpack_from("!HH", body)
            return cls(src, dst, proto, sport, dport, body[8:])
        if proto == 6 and len(body) >= 20:
            sport, dport = struct.unpack_from("!HH", body)
            off = (body[12] >> 4) * 4
            return cls(src, dst, proto, sport, dport, body[off:])
        if proto == 1 and len(body) >= 8:
            return cls(src, dst, proto, 0, 0, body, (body[0], body[1]))
        return cls(src, dst, proto, 0, 0, body)

    @property
    def probe(self) -> bytes | None:
        """The probe label (``FBPROBE:<label>``), if this is one of our probes."""
        if self.payload.startswith(MAGIC):
            return self.payload[len(MAGIC) :]
        return None


# --- policies (shapes of reference_impl/policy/examples and policy-spec §1.5) ---------------------

ESP_METHODS = [{"protocol": "esp", "encryption": "aes128gcm16", "lifetime": {"seconds": 3600}}]


def require_action(**knobs: Any) -> dict[str, Any]:
    """Policy-spec §1.5 ``require-security``: negotiate, never clear (knobs override)."""
    action: dict[str, Any] = {
        "name": "require-security",
        "type": "negotiate",
        "security_methods": ESP_METHODS,
        "inbound_passthrough": False,
        "allow_fallback": False,
    }
    action.update(knobs)
    return action


def request_action(**knobs: Any) -> dict[str, Any]:
    """Policy-spec §1.5 ``request-security``: negotiate, fall back to clear if R is silent.

    ``inbound_passthrough`` is off (the §1.5 example has it on) so that inbound clear traffic
    is accepted only because of the soft SA (FB-19); fallback knobs go in ``fallback``."""
    fb = {k: knobs.pop(k) for k in list(knobs) if k in _FALLBACK_KNOBS}
    action: dict[str, Any] = {
        "name": "request-security",
        "type": "negotiate",
        "security_methods": ESP_METHODS,
        "inbound_passthrough": False,
        "allow_fallback": True,
    }
    if fb:
        action["fallback"] = fb
    action.update(knobs)
    return action


_FALLBACK_KNOBS = (
    "after_s",
    "on_negotiation_failure",
    "icmp_fast_fallback",
    "continue_ike_after_fallback",
    "soft_sa_idle_s",
    "soft_sa_max_lifetime_s",
)


def policy_yaml(
    name: str,
    peers: Sequence[str],
    action: dict[str, Any] | None,
    *,
    psk_ref: str = "t",
    profile: str = "reference",
    ike_version: int = 2,
    remote_port: int | None = None,
    all_traffic: bool = False,
    consec: str | None = None,
    block: Sequence[str] = (),
    block_icmp: bool = False,
    default_action: str = "bypass",
    bypass: Sequence[tuple[str, int]] = (),
    only: tuple[str, int, str] | None = None,
) -> str:
    """A policy: ICMP exempt (the sentinels), then one rule ``fb`` host-to-host between ``me``
    and each of ``peers`` (transport, mirrored) with ``action`` (``None``: no rule, an
    IPsec-unaware host that bypasses everything); ``all_traffic``: the rule covers ``me`` to
    ``any`` instead (policy-spec FB-29); ``consec``: a Vista+ connection-security action
    (§1.4) instead of a filter action; ``block``: addresses with a DISCARD rule;
    ``default_action``: what matches no rule (``discard``: a catch-all DISCARD); ``bypass``:
    (protocol, port) pairs with a BYPASS rule ahead of ``fb``, for that port on either side;
    ``only``: the ``fb`` rule covers (protocol, port, side) alone instead of all traffic, the
    port being the peer's (``dst``: we are the client) or ours (``src``: the server)."""
    ike: dict[str, Any] = {"version": f"ikev{ike_version}"}
    if remote_port is not None:
        ike["remote_port"] = remote_port
    pol: dict[str, Any] = {
        "name": name,
        "settings": {
            "ordering": "auto",
            "default_action": default_action,
            "timing_profile": profile,
            "ike": ike,
        },
        "default_response_rule": {"enabled": False},
        "auth_method_sets": [
            {"name": "lab-psk", "methods": [{"preshared_key": {"secret_ref": psk_ref}}]}
        ],
        "filter_lists": [
            {
                "name": "icmp",
                "filters": [{"src": "me", "dst": "any", "proto": "icmp", "mirrored": True}],
            },
        ],
        "filter_actions": [{"name": "permit", "type": "permit"}],
        "rules": [{"name": "exempt-icmp", "filter_list": "icmp", "filter_action": "permit"}],
    }
    if block:
        blk: dict[str, Any] = {"name": "block", "type": "block"}
        if block_icmp:
            blk["send_icmp_on_discard"] = True
        pol["filter_actions"].append(blk)
        pol["filter_lists"].append(
            {"name": "blocked", "filters": [{"src": "me", "dst": a, "proto": "any",
                                             "mirrored": True} for a in block]}
        )  # fmt: skip
        pol["rules"].append({"name": "blocked", "filter_list": "blocked", "filter_action": "block"})
    for proto, port in bypass:
        name = f"bypass-{proto}-{port}"
        pol["filter_lists"].append(
            {"name": name, "filters": [{"src": "me", "dst": d, "proto": proto, side: port,
                                        "mirrored": True}
                                       for d in peers for side in ("dst_port", "src_port")]}
        )  # fmt: skip
        pol["rules"].append({"name": name, "filter_list": name, "filter_action": "permit"})
    if action is not None or consec is not None:
        dsts = ["any"] if all_traffic else list(peers)
        scope: dict[str, Any] = {"proto": "any"}
        if only is not None:
            scope = {"proto": only[0], f"{only[2]}_port": only[1]}
        pol["filter_lists"].append(
            {"name": "peers", "filters": [{"src": "me", "dst": d, **scope, "mirrored": True}
                                          for d in dsts]}
        )  # fmt: skip
        rule: dict[str, Any] = {"name": "fb", "filter_list": "peers", "auth_methods": "lab-psk"}
        if consec is not None:
            rule["action"] = consec
            rule["security_methods"] = ESP_METHODS
        else:
            assert action is not None
            pol["filter_actions"].append(action)
            rule["filter_action"] = action["name"]
        pol["rules"].append(rule)
    return yaml.safe_dump({"policy": pol}, sort_keys=False)


# --- small helpers --------------------------------------------------------------------------------


def poll(probe: Callable[[], T | None], timeout: float, interval: float = 0.01) -> T | None:
    """``probe()`` until truthy (returned), or ``None`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)  # polling interval of a bounded wait, not synchronisation


def free_loopback_address(taken: Sequence[str]) -> str:
    """A 127/8 address no socket uses for UDP 500 (nothing bound to it or to 0.0.0.0:500), so
    the kernel answers IKE to it with ICMP port unreachable (the local backend's "reject")."""
    listeners = _udp_listeners(500)
    if "0.0.0.0" in listeners:
        raise RuntimeError("a process holds 0.0.0.0:500 on this host: no free R' address")
    rng = random.Random()
    for _ in range(1000):
        addr = f"127.{rng.randint(100, 250)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if addr not in taken and addr not in listeners:
            return addr
    raise RuntimeError("no free loopback address")


def _udp_listeners(port: int) -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            local = line.split()[1]
            addr_hex, port_hex = local.split(":")
            if int(port_hex, 16) == port:
                out.add(socket.inet_ntoa(struct.pack("<I", int(addr_hex, 16))))
    return out


@dataclass(frozen=True)
class IkeSeen:
    """One IKE datagram from I that R received (or, for ``reject`` on ``local``, that came back
    as an ICMP error: ``data`` is then only the quoted start)."""

    t: float
    """Relative (virtual) time of the step in which it was first observed."""
    port: int
    """R's logical port: 500 or 4500."""
    data: bytes
    """The IKE message (non-ESP marker removed)."""
    marker: bool = False
    sport: int = 500

    @property
    def spi_i(self) -> bytes:
        return self.data[:8]

    @property
    def exchange(self) -> int:
        return self.data[18] if len(self.data) > 18 else -1


@dataclass(frozen=True)
class PacketSeen:
    t: float
    packet: Ip4
    protected: bool


# --- observers of R's side ------------------------------------------------------------------------


class Observer:
    """What R received from I, stamped with the step it was first seen in."""

    def __init__(self) -> None:
        self.ike: list[IkeSeen] = []
        self.packets: list[PacketSeen] = []
        self._n = 0

    def next_id(self) -> int:
        self._n += 1
        return self._n

    def sync(self, t: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def clear_probes(self) -> list[PacketSeen]:
        return [p for p in self.packets if not p.protected and p.packet.probe is not None]

    def protected_probes(self) -> list[PacketSeen]:
        return [p for p in self.packets if p.protected and p.packet.probe is not None]

    def evidence(self) -> str:
        lines = [f"t={s.t:9.4f} IKE -> R:{s.port} spi_i={s.spi_i.hex()} exch={s.exchange} "
                 f"len={len(s.data)}{' marker' if s.marker else ''}" for s in self.ike]  # fmt: skip
        lines += [
            f"t={p.t:9.4f} {'ESP' if p.protected else 'clear'} {p.packet.src}:{p.packet.sport} > "
            f"{p.packet.dst}:{p.packet.dport} proto {p.packet.proto} "
            f"{(p.packet.probe or b'').decode(errors='replace')}"
            for p in self.packets
            if p.packet.probe is not None
        ]
        return "\n".join(lines)


class LocalObserver(Observer):
    """``local``: the tester's received-datagram log and its delivered packets; for ``reject``
    (R' has no process) the PUT's own records of the ICMP errors that came back."""

    def __init__(self, fb: RefFb) -> None:
        super().__init__()
        self.fb = fb
        self.tester = fb.tester
        self.since = float(self.tester.client.clock()["now"])
        self._seen_events = 0
        self._icmp_seen = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((fb.i_addr, 0))
        self.tester.client.delivered()  # earlier cases' leftovers

    def close(self) -> None:
        self._sock.close()

    def _ike_sentinel(self) -> None:
        """A datagram to R's IKE port after everything the PUT sent: logged after it."""
        if not self.fb.silent:
            return
        tag = SENTINEL + str(self.next_id()).encode()
        node = self.fb.tester_node
        self._sock.sendto(tag, (node.addresses.v4, node.addresses.ike_port))
        hexed = tag.hex()

        def logged() -> bool:
            return any(e.get("data") == hexed for e in self._events())

        if poll(logged, 10.0) is None:
            raise AssertionError("the tester did not log the sentinel datagram (harness)")

    def _events(self) -> list[dict[str, Any]]:
        return [
            e for e in self.tester.client.events(since=self.since) if e.get("kind") == "ike_ignored"
        ]

    def _clear_sentinel(self) -> int:
        ident = 0x4600 + self.next_id() % 0x100
        pkt = icmp4_echo(self.fb.i_addr, self.fb.r_addr, ident, 1, SENTINEL)
        self.fb.put.client.inject([pkt])
        return ident

    def sync(self, t: float) -> None:
        ident = self._clear_sentinel()
        self._ike_sentinel()
        got_sentinel = False
        deadline = time.monotonic() + 10.0
        while not got_sentinel:
            for d in self.tester.client.delivered():
                ip = Ip4.parse(d.packet)
                if ip is None:
                    continue
                if ip.icmp == (8, 0) and ip.payload[4:6] == struct.pack("!H", ident):
                    got_sentinel = True
                elif ip.src == self.fb.i_addr or ip.probe is not None:
                    self.packets.append(PacketSeen(t, ip, d.protected))
            if not got_sentinel:
                if time.monotonic() > deadline:
                    raise AssertionError("the sentinel ICMP echo never reached R (harness)")
                time.sleep(0.005)  # polling interval of a bounded wait
        if self.fb.silent:
            events = self._events()
            for e in events[self._seen_events :]:
                data = bytes.fromhex(e["data"])
                if data.startswith(SENTINEL):
                    continue
                src = str(e.get("src", ""))
                sport = int(src.rsplit(":", 1)[1]) if ":" in src else 0
                logical = 500 if sport == self.fb.put_node.addresses.ike_port else sport
                self.ike.append(IkeSeen(t, 500, data, False, logical))
            self._seen_events = len(events)
        if self.fb.closure == "reject":
            self._barrier()
            records = self.fb.icmp_records()
            for r in records[self._icmp_seen :]:
                spi = bytes.fromhex(str(r.get("initiator_spi") or ""))
                self.ike.append(IkeSeen(t, 500, spi + bytes(20)))
            self._icmp_seen = len(records)

    def _barrier(self) -> None:
        """Two round trips to the PUT: its loop has read the ICMP errors queued before."""
        self.fb.put.client.ping()
        self.fb.put.client.ping()


class CaptureObserver(Observer):
    """``netns``: a capture of the link (before R's packet filter)."""

    def __init__(self, topo: Topology, node: Node, i_addr: str, r_addrs: Sequence[str],
                 inject: Callable[[bytes], None] | None, name: str,
                 i_source: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.i_addr = i_addr
        """I's address as R sees it (behind a NAT: the router's)."""
        self.i_source = i_source or i_addr
        """I's own address (the source of the sentinels it sends)."""
        self.r_addrs = set(r_addrs)
        self.inject = inject
        self.node = node
        self.capture: Capture = node.capture(name, interface="eth0")
        self.path = self.capture.path
        self._done = 0
        self.icmp_unreachable = 0
        self.wire: list[tuple[float, Ip4]] = []
        """Every IPv4 packet I sent on the link, with its capture time."""
        if inject is not None:
            self._prime()

    def _prime(self) -> None:
        """tcpdump says "listening" a moment before it captures anything: sentinels until
        one shows (what the case sends from then on is captured)."""
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            tag = self._sentinel()
            if poll(lambda tag=tag: any(_tagged(p, tag) for p in self._echoes()), 0.3):  # type: ignore[misc]
                self._done = len(self.frames())
                return
        raise AssertionError("the capture never showed a sentinel (harness)")

    def _echoes(self) -> list[Ip4]:
        out = []
        for _, f in self.frames():
            ip = Ip4.parse(f)
            if ip is not None and ip.icmp == (8, 0):
                out.append(ip)
        return out

    def close(self) -> None:
        self.capture.stop()

    def frames(self) -> list[tuple[float, bytes]]:
        return list(_pcap_frames(self.path))

    def _sentinel(self) -> bytes:
        """An ICMP echo from I, told apart by its payload (a NAT rewrites the identifier)."""
        n = self.next_id()
        tag = SENTINEL + f"{os.getpid()}.{n}".encode()
        if self.inject is not None:
            r = sorted(self.r_addrs)[0]
            self.inject(icmp4_echo(self.i_source, r, 0x4700 + n % 0x100, 1, tag))
        return tag

    def sync(self, t: float) -> None:
        tag = self._sentinel()

        def seen() -> list[tuple[float, bytes]] | None:
            frames = self.frames()
            for _, f in frames[self._done :]:
                ip = Ip4.parse(f)
                if ip is not None and ip.icmp == (8, 0) and _tagged(ip, tag):
                    return frames
            return None

        frames = poll(seen, 10.0)
        if frames is None:
            if self.inject is not None:
                raise AssertionError("the sentinel ICMP echo never showed in the capture (harness)")
            frames = self.frames()
        for ts, f in frames[self._done :]:
            self._classify(t, ts, f)
        self._done = len(frames)

    def _classify(self, t: float, ts: float, f: bytes) -> None:
        ip = Ip4.parse(f)
        if ip is None:
            return
        if ip.src in self.r_addrs and ip.dst == self.i_addr and ip.icmp == (3, 3):
            self.icmp_unreachable += 1
            return
        if ip.src != self.i_addr or ip.dst not in self.r_addrs:
            return
        self.wire.append((ts, ip))
        if ip.proto == 17 and ip.dport in (500, 4500):
            data = ip.payload
            marker = ip.dport == 4500 and data[:4] == b"\0\0\0\0"
            if ip.dport == 4500 and not marker:
                self.packets.append(PacketSeen(t, ip, True))  # ESP in UDP
                return
            self.ike.append(IkeSeen(t, ip.dport, data[4:] if marker else data, marker,
                                    ip.sport))  # fmt: skip
        elif ip.proto == 50:
            self.packets.append(PacketSeen(t, ip, True))
        elif ip.icmp == (8, 0) and SENTINEL[:6] in ip.payload:
            return
        else:
            self.packets.append(PacketSeen(t, ip, False))

    def esp_count(self) -> int:
        return sum(1 for p in self.packets if p.protected)


def ping_sentinel(node: Node, dst: str, packet: bytes) -> None:
    """A capture sentinel from a node's kernel (a peer with no injection API): ``ping`` to
    ``dst``'s outer address (it leaves by eth0, not a tunnel), the sentinel's tag as its
    pattern."""
    ip = Ip4.parse(packet)
    assert ip is not None
    tag = ip.payload[8:]
    argv = ["ping", "-n", "-q", "-c", "1", "-W", "1", "-s", "64", "-p", tag[:16].hex(), dst]
    node.exec(argv, timeout=10)


def _is_ike(ip: Ip4) -> bool:
    """UDP to 500, or to 4500 with the non-ESP marker (RFC 3948 §2.2)."""
    return ip.dport == 500 or (ip.dport == 4500 and ip.payload[:4] == b"\0\0\0\0")


def _tagged(ip: Ip4, tag: bytes) -> bool:
    """An echo request carrying ``tag``: as its data (ours), or as ``ping -p`` repeats it
    after its 8-octet timestamp (at most 16 octets of pattern)."""
    data = ip.payload[8:]
    return data == tag or tag[:16] in data


def _pcap_frames(path: Path) -> Iterator[tuple[float, bytes]]:
    """(time, IP packet) of every complete record of a pcap being written (Ethernet or Linux
    cooked framing); a partial last record is left for the next read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian, nano = "<", magic == b"\x4d\x3c\xb2\xa1"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian, nano = ">", magic == b"\xa1\xb2\x3c\x4d"
    else:
        return
    link = struct.unpack_from(endian + "I", data, 20)[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        if off + 16 + incl > len(data):
            return
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        ip: bytes | None = None
        if link == 1 and len(frame) >= 14:
            etype = struct.unpack_from("!H", frame, 12)[0]
            ip = frame[14:] if etype == 0x0800 else None
        elif link == 113 and len(frame) >= 16:
            ip = frame[16:] if struct.unpack_from("!H", frame, 14)[0] == 0x0800 else None
        elif link == 276 and len(frame) >= 20:
            ip = frame[20:] if struct.unpack_from("!H", frame, 0)[0] == 0x0800 else None
        elif link in (101, 228):
            ip = frame
        if ip is not None:
            yield ts, ip


# --- the reference PUT on its virtual clock -------------------------------------------------------


@dataclass
class Timeline:
    lines: list[str] = field(default_factory=list)

    def add(self, t: float, what: str) -> None:
        self.lines.append(f"t={t:9.4f} {what}")

    def text(self) -> str:
        return "\n".join(self.lines)


class RefFb:
    """One fallback case against a reference PUT (I) with the tester as R.

    Use as a context manager: on exit the PUT's clock goes back to real time, both nodes get
    an IPsec-unaware policy (which ends every state machine of the case), IKE SAs are deleted,
    R's ports are reopened and the evidence is attached."""

    def __init__(
        self,
        ctx: CaseContext,
        *,
        closure: str = "filtered",
        ike_version: int = 2,
        r2: bool = False,
    ) -> None:
        from harness.peers.reference import ReferencePeer

        if closure not in (*CLOSURES, "open"):
            raise ValueError(f"closure {closure!r}")
        put, tester = ctx.put, ctx.tester
        assert isinstance(put, ReferencePeer) and isinstance(tester, ReferencePeer)
        self.ctx = ctx
        self.put: ReferencePeer = put
        self.tester: ReferencePeer = tester
        self.topo = ctx.topology
        self.local = self.topo.backend == "local"
        self.put_node = self.topo.node("put")
        self.tester_node = self.topo.node("tester")
        self.closure = closure
        self.ike_version = ike_version
        self.sc: Scenario = ctx.scenario(mode="transport", ike_version=ike_version)
        self.i_addr = self.sc.local("put").address
        self.tester_addr = self.sc.local("tester").address
        self.r_addr = self.tester_addr
        if closure == "reject" and self.local:
            self.r_addr = free_loopback_address([n.addresses.v4 for n in self.topo.nodes.values()])
        self.r2_addr: str | None = None
        if r2:
            self.r2_addr = (
                free_loopback_address([self.r_addr, self.i_addr])
                if self.local
                else str(ipaddress.ip_address(self.tester_addr) + 97)
            )
        self.silent = closure == "silent" or (closure == "filtered" and self.local)
        self.timeline = Timeline()
        self.policies: dict[str, str] = {}
        self.t0 = 0.0
        self.observer: Observer | None = None
        self._closed_ports = False
        self._probe_n = 0
        self.sport = random.Random().randrange(20000, 60000, 100)
        """Source port of this case's probe flow (``+ flow`` for others)."""
        self._start_counters: dict[str, int] = {}
        self._put_since = 0.0
        self._extra: list[tuple[str, str]] = []
        self._r_discarded = 0

    # -- set-up and tear-down ------------------------------------------------------------------

    def __enter__(self) -> RefFb:
        with self.ctx.step("configure I (reference, virtual clock) and R (tester)"):
            self.put.configure(self.sc)
            self.tester.configure(self.sc)
            self.ctx.apply_misbehaviours()
            reset_tester(self.tester)
            _quiet(self.put.client.terminate)
            _quiet(self.tester.client.terminate)
            self.tester_policy(None)
            self.put.client.load_policy(text=policy_yaml("fb-clean", [], None))
            self.put.client.clock("virtual")
            # Past every idle timer of flows earlier cases left (a flow once secure stays
            # secure while it lives: policy-spec §2.3), so this case starts from nothing.
            self.put.client.advance(FLOW_FORGET_S)
            self.put.client.delivered() if self.local else None
            if self.silent:
                self.tester.client.misbehave("silent_ike_port", True)
            if not self.local and self.closure in ("filtered", "reject"):
                how = "drop" if self.closure == "filtered" else "reject"
                self.tester_node.close_udp((500,), how=how)  # type: ignore[arg-type]
                self._closed_ports = True
                if how == "reject":
                    icmp_unlimited(self.tester_node)
            self.observer = (
                LocalObserver(self)
                if self.local
                else CaptureObserver(
                    self.topo,
                    self.put_node,
                    self.i_addr,
                    [a for a in (self.r_addr, self.r2_addr) if a],
                    self._inject_one,
                    f"fb-{self.ctx.info.id}-{os.getpid()}-{int(time.time() * 1000) % 100000}",
                )
            )
            self.t0 = float(self.put.client.clock()["now"])
            self._put_since = self.t0
            self._start_counters = self.agent_counters()
            self._r_discarded = self._r_discards()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.ExitStack() as stack:
            stack.callback(self._attach)
            if self.observer is not None:
                stack.callback(self.observer.close)
            if self._closed_ports:
                stack.callback(self.tester_node.open_udp)
                stack.callback(icmp_unlimited, self.tester_node, False)
            stack.callback(self.tester.client.misbehave, "silent_ike_port", False)
            stack.callback(self.put.client.clock, "real")
            stack.callback(_quiet, self.tester.client.terminate)
            stack.callback(_quiet, self.put.client.terminate)
            clean = policy_yaml("fb-clean", [], None)
            stack.callback(self.tester.client.load_policy, text=clean)
            stack.callback(self.put.client.load_policy, text=clean)

    def _attach(self) -> None:
        rec = self.ctx.recording
        if rec is None:
            return
        from harness.report import EvidenceKind

        parts = [f"I = {self.i_addr} (reference, virtual clock), R = {self.r_addr} "
                 f"({self.closure}; topology {self.topo.backend})"]  # fmt: skip
        if self.r2_addr:
            parts.append(f"R2 = {self.r2_addr}")
        parts += ["", "timeline:", self.timeline.text()]
        if self.observer is not None:
            parts += ["", "seen at R:", self.observer.evidence()]
        rec.attach_text("fallback timeline", "\n".join(parts), EvidenceKind.OTHER)
        for name, text in self.policies.items():
            rec.attach_text(name, text, EvidenceKind.CONFIG, filename=f"{name}.yaml")
        for name, text in self._extra:
            rec.attach_text(name, text, EvidenceKind.OTHER)
        with contextlib.suppress(Exception):
            audit = [
                {**r, "t": round(r["time"] - self.t0, 6)} for r in self.put.client.audit(
                    since=self._put_since)
                if r.get("kind") not in ("policy_loaded",)
            ]  # fmt: skip
            rec.attach_text("I audit (t relative)", json.dumps(audit, indent=1)[-60000:],
                            EvidenceKind.OTHER, filename="audit.json")  # fmt: skip
        if isinstance(self.observer, CaptureObserver):
            with contextlib.suppress(Exception):
                rec.attach_file(self.observer.path, EvidenceKind.PCAP)

    def _inject_one(self, packet: bytes) -> None:
        self.put.client.inject([packet])

    def attach(self, name: str, text: str) -> None:
        self._extra.append((name, text))

    # -- policies ------------------------------------------------------------------------------

    def put_policy(self, action: dict[str, Any] | None, **kw: Any) -> None:
        peers = kw.pop("peers", None) or [a for a in (self.r_addr, self.r2_addr) if a]
        kw.setdefault("ike_version", self.ike_version)
        text = policy_yaml(f"fb-{self.ctx.info.id.lower()}-i", peers, action, psk_ref=self.sc.name,
                           **kw)  # fmt: skip
        self.policies["I policy"] = text
        self.put.client.load_policy(text=text)

    def tester_policy(self, action: dict[str, Any] | None, **kw: Any) -> None:
        """R: ``None`` = IPsec-unaware (bypass everything); else a rule towards I."""
        kw.setdefault("ike_version", self.ike_version)
        text = policy_yaml(f"fb-{self.ctx.info.id.lower()}-r", [self.i_addr], action,
                           psk_ref=self.sc.name, **kw)  # fmt: skip
        if action is not None:
            self.policies["R policy"] = text
        self.tester.client.load_policy(text=text)

    def open_r(self, action: dict[str, Any] | None = None, **kw: Any) -> None:
        """R's UDP 500 opens and R becomes IPsec-aware (``require`` rule towards I)."""
        self.tester_policy(action or require_action(inbound_passthrough=True), **kw)
        self.tester.client.misbehave("silent_ike_port", False)
        self.silent = False
        if self._closed_ports:
            self.tester_node.open_udp()
            self._closed_ports = False
        self.timeline.add(self.t, "R opens UDP 500 and answers IKE")

    # -- time ------------------------------------------------------------------------------------

    @property
    def t(self) -> float:
        return float(self.put.client.clock()["now"]) - self.t0

    def advance_to(self, t: float) -> None:
        now = self.t
        if t > now:
            self.put.client.advance(t - now)

    def step(self, t: float) -> None:
        """Advance I's clock to ``t`` and observe everything I sent up to then."""
        self.advance_to(t)
        self.sync()

    def sync(self) -> None:
        assert self.observer is not None
        self.observer.sync(self.t)

    def check_schedule(self, expected: Sequence[float], port: int = 500) -> list[IkeSeen]:
        """Step through every expected transmission instant (just before, just after) and
        return what R saw; the caller compares the stamps with ``expected``."""
        for when in expected:
            self.step(max(0.0, when - BEFORE))
            self.step(when + EPS)
        assert self.observer is not None
        return [s for s in self.observer.ike if s.port == port]

    # -- traffic ---------------------------------------------------------------------------------

    def probe(
        self, label: str = "", *, to: str | None = None, flow: int = 0, sync: bool = True
    ) -> bytes:
        """One probe from I to R (UDP, ``FBPROBE:<label>``); then observe (``sync``), so
        what it caused is stamped with the instant it was sent."""
        self._probe_n += 1
        label = label or f"p{self._probe_n}"
        dst = to or self.r_addr
        payload = MAGIC + label.encode()
        self.put.client.inject([udp4(self.i_addr, dst, self.sport + flow, PROBE_DPORT, payload)])
        self.timeline.add(self.t, f"probe {label} -> {dst}")
        if sync:
            self.sync()
        return label.encode()

    def inject(self, packet: bytes, what: str, *, sync: bool = True) -> None:
        self.put.client.inject([packet])
        self.timeline.add(self.t, what)
        if sync:
            self.sync()

    # -- I's state ---------------------------------------------------------------------------------

    def machines(self) -> list[dict[str, Any]]:
        st = self.put.client.agent_state()
        return [m for m in st.get("machines", []) if m.get("rule") == "fb"]

    def state(self, peer: str | None = None) -> str:
        peer = peer or self.r_addr
        for m in self.machines():
            if peer in str(m.get("sa_selector", "")):
                return str(m["state"])
        return "NO_SA"

    def audit(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for r in self.put.client.audit(since=self._put_since, kinds=[kind]):
            r = dict(r)
            r["t"] = r["time"] - self.t0
            out.append(r)
        return out

    def icmp_records(self) -> list[dict[str, Any]]:
        """I's audit records of ICMP errors about its IKE datagrams to R (earlier cases' late
        errors about other addresses are left out)."""
        return [r for r in self.audit("icmp_error")
                if str(r.get("peer", "")).startswith(f"{self.r_addr}:")]  # fmt: skip

    def agent_counters(self) -> dict[str, int]:
        return dict(self.put.client.counters().get("agent", {}))

    def counter(self, name: str) -> int:
        return self.agent_counters().get(name, 0) - self._start_counters.get(name, 0)

    def node_counter(self, name: str) -> int:
        return int(self.put.client.counters().get("node", {}).get(name, 0))

    def wait_state(self, state: str, timeout: float = 15.0, peer: str | None = None) -> bool:
        return poll(lambda: self.state(peer) == state, timeout, 0.02) is not None

    def wait_audit(self, kind: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        return poll(lambda: self.audit(kind), timeout, 0.02) or []

    @property
    def ike(self) -> list[IkeSeen]:
        assert self.observer is not None
        return self.observer.ike

    def clear_probes(self) -> list[PacketSeen]:
        assert self.observer is not None
        return self.observer.clear_probes()

    def protected_probes(self) -> list[PacketSeen]:
        assert self.observer is not None
        if isinstance(self.observer, CaptureObserver):
            return [p for p in self.observer.packets if p.protected]
        return self.observer.protected_probes()

    def r_discarded_clear(self) -> int:
        """Clear packets R (the tester) discarded by policy (``local``: they never show as
        delivered, so they are counted here; ``netns``: the capture shows them)."""
        return self._r_discards() - self._r_discarded

    def _r_discards(self) -> int:
        c = self.tester.client.counters().get("agent", {})
        return int(c.get("drops.clear_inbound", 0))


def icmp_unlimited(node: Node, on: bool = True) -> None:
    """R's kernel answers every datagram to a closed port (``net.ipv4.icmp_ratelimit`` 0 in
    its namespace; the default, 1000 ms with a burst of a few, would leave later cases of a
    run without their ICMP errors). Back to the default with ``on=False``."""
    if node.topology.backend == "local":
        return  # loopback is never rate limited, and the host's sysctls are not ours
    node.exec(["sysctl", "-q", "-w", f"net.ipv4.icmp_ratelimit={0 if on else 1000}"])


def reset_tester(tester: Any) -> None:
    """R as a well-behaved node on the real clock, whatever an earlier case left switched on."""
    for name in tester.client.misbehaviours().get("active", {}):
        tester.client.misbehave(name, False)
    if tester.client.clock().get("mode") != "real":
        tester.client.clock("real")


def _quiet(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()


def stamps(items: Sequence[IkeSeen | PacketSeen]) -> list[float]:
    """Observation stamps rounded to the millisecond (for comparing with a schedule)."""
    return [round(i.t, 3) for i in items]


def is_reference(ctx: CaseContext) -> bool:
    return ctx.peer_name == "reference"


# --- strongSwan (no notion of fallback; kernel-libipsec) ------------------------------------------


LIBIPSEC_NO_ACQUIRE = re.compile(r"could not find an outbound IPsec SA for reqid")


@dataclass
class SwanRun:
    """What a strongSwan PUT did with a trap policy: R-side capture and charon's log."""

    t0: float
    ike: list[tuple[float, int, bytes]]
    """(time relative to the first probe, R's port, IKE message) of each datagram I sent."""
    clear_probes: list[tuple[float, Ip4]]
    esp: int
    log: str
    give_up: float | None = None
    """When charon logged "giving up" / "establishing IKE_SA failed" (relative, from the
    capture of its last datagram plus the log order; None if it never gave up)."""
    libipsec_drops: int = 0

    def summary(self) -> str:
        times = ", ".join(f"{t:.3f}" for t, _, _ in self.ike)
        return (
            f"IKE datagrams at t = [{times}] ({len(self.ike)}); clear probes on the wire: "
            f"{len(self.clear_probes)}; ESP: {self.esp}; libipsec 'no outbound SA, dropping "
            f"packet': {self.libipsec_drops}"
        )


class SwanFb:
    """A strongSwan PUT with a trap policy (``start_action = trap``) towards the tester, the
    tester's UDP 500 closed, a capture of the link and charon's log."""

    def __init__(self, ctx: CaseContext, *, closure: str = "filtered") -> None:
        self.ctx = ctx
        self.put: Peer = ctx.put
        self.tester = ctx.tester
        self.topo = ctx.topology
        self.put_node = self.topo.node("put")
        self.tester_node = self.topo.node("tester")
        self.closure = closure
        self.timers = swan_timers()
        self.sc = ctx.scenario(mode="tunnel", retransmit=self.timers)
        self.src = self.put_node.addresses.inner_v4
        self.dst = self.tester_node.addresses.inner_v4
        self.i_addr = self.put_node.addresses.v4
        self.r_addr = self.tester_node.addresses.v4
        self._log_start = 0
        self.observer: CaptureObserver | None = None
        self._closed = False

    def __enter__(self) -> SwanFb:
        from harness.peers.reference import ReferencePeer

        with self.ctx.step("configure I (strongSwan trap policy) and R (tester)"):
            self.put.configure(self.sc)
            self.tester.configure(self.sc)
            assert isinstance(self.tester, ReferencePeer)
            reset_tester(self.tester)
            if self.closure != "open":  # R IPsec-unaware; "open": R keeps the scenario
                self.tester.client.load_policy(text=policy_yaml("fb-clean", [], None))
            if self.closure == "silent":
                self.tester.client.misbehave("silent_ike_port", True)
            elif self.closure in ("filtered", "reject"):
                how = "drop" if self.closure == "filtered" else "reject"
                self.tester_node.close_udp((500, 4500), how=how)  # type: ignore[arg-type]
                self._closed = True
                if how == "reject":
                    icmp_unlimited(self.tester_node)
            self._trap()
            self._log_start = self._log_size()
            self.observer = CaptureObserver(
                self.topo, self.put_node, self.i_addr, [self.r_addr, self.dst], self._ping_r,
                f"fb-{self.ctx.info.id}-swan-{int(time.time() * 1000) % 100000}",
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        from harness.peers.reference import ReferencePeer

        with contextlib.ExitStack() as stack:
            stack.callback(self._attach)
            if self.observer is not None:
                stack.callback(self.observer.close)
            if self._closed:
                stack.callback(self.tester_node.open_udp)
                stack.callback(icmp_unlimited, self.tester_node, False)
            if isinstance(self.tester, ReferencePeer):
                stack.callback(_quiet, lambda: self.tester.client.misbehave(  # type: ignore[attr-defined]
                    "silent_ike_port", False))  # fmt: skip
            stack.callback(_quiet, self._untrap)

    def _session(self) -> Any:
        return self.put.session  # type: ignore[attr-defined]

    def _ping_r(self, packet: bytes) -> None:
        ping_sentinel(self.put_node, self.r_addr, packet)

    def _trap(self) -> None:
        """Reload the scenario's connection with ``start_action = trap`` (its child only)."""
        s = self._session()
        conns = s.get_conns()
        del conns
        local, remote = self.sc.local("put"), self.sc.remote("put")
        conn = {
            "version": str(self.sc.ike_version),
            "local_addrs": [local.address],
            "remote_addrs": [remote.address],
            "local_port": str(local.ike_port),
            "remote_port": str(remote.ike_port),
            "proposals": ["aes256-sha256-prfsha256-modp2048"],
            "keyingtries": "1",
            "unique": "never",
            "local": {"auth": "psk", "id": local.identity},
            "remote": {"auth": "psk", "id": remote.identity},
            "children": {
                self.sc.child_name: {
                    "local_ts": [f"{self.src}/32"],
                    "remote_ts": [f"{self.dst}/32"],
                    "mode": "tunnel",
                    "start_action": "trap",
                    "esp_proposals": ["aes128gcm16"],
                }
            },
        }
        s.load_conn({self.sc.name: conn})

    def _untrap(self) -> None:
        s = self._session()
        with contextlib.suppress(Exception):
            for _ in s.terminate({"ike": self.sc.name, "timeout": "2000", "force": "yes"}):
                pass
        s.unload_conn({"name": self.sc.name})
        self.put.configure(self.sc)

    def _log_size(self) -> int:
        path = getattr(self.put, "log_path", None)
        return path.stat().st_size if path is not None and path.exists() else 0

    def log(self) -> str:
        path: Path = self.put.log_path  # type: ignore[attr-defined]
        with path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def ping(self, count: int = 1, interval: float = 0.2) -> None:
        """Probes from I's protected address to R's (ICMP echo; they can only go through the
        tunnel: there is no other route between the inner addresses)."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", "1", "-I", self.src, self.dst]
        if count > 1:
            argv[5:5] = ["-i", str(interval)]
        self.put_node.exec(argv, timeout=count * interval + 10)

    def initiate(self, timeout: float = 30.0) -> bool:
        """Start the IKE attempt explicitly (what the ACQUIRE would have done) and wait until
        it is established (True) or charon gave up (False)."""
        s = self._session()
        req = {"child": self.sc.child_name, "ike": self.sc.name,
               "timeout": str(int(timeout * 1000)), "init-limits": "no"}  # fmt: skip
        sock = s.transport.socket
        sock.settimeout(timeout + 10)  # the adapter's 60 s would cut charon's 75 s last gap
        try:
            for _ in s.initiate(req):
                pass
        except Exception:
            return False
        finally:
            sock.settimeout(60.0)
        return True

    def observe(self, seconds: float, *, t0: float) -> SwanRun:
        """Wait ``seconds`` (real time: charon has no virtual clock) and read what happened."""
        assert self.observer is not None
        deadline = t0 + seconds
        while time.time() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.time())))  # the observation window
        self.observer.sync(0.0)
        ike = [(ts - t0, ip.dport, ip.payload) for ts, ip in self.observer.wire
               if ip.proto == 17 and _is_ike(ip)]  # fmt: skip
        clear = [(ts - t0, ip) for ts, ip in self.observer.wire
                 if ip.dst == self.dst and ip.proto in (1, 6, 17)]  # fmt: skip
        esp = self.observer.esp_count()
        log = self.log()
        give_up = None
        if ike and ("giving up after" in log or "establishing IKE_SA failed" in log):
            give_up = ike[-1][0]
        return SwanRun(t0, ike, clear, esp, log, give_up,
                       len(LIBIPSEC_NO_ACQUIRE.findall(log)))  # fmt: skip

    def _attach(self) -> None:
        rec = self.ctx.recording
        if rec is None:
            return
        from harness.report import EvidenceKind

        with contextlib.suppress(Exception):
            rec.attach_text("charon log (this case)", self.log()[-100000:], EvidenceKind.LOG,
                            filename="charon-case.log")  # fmt: skip
        if self.observer is not None:
            with contextlib.suppress(Exception):
                rec.attach_file(self.observer.path, EvidenceKind.PCAP)


DEFAULT_TIMERS_ENV = "IPSEC_INTEROP_DEFAULT_TIMERS"
"""Set to 1: strongSwan keeps its default retransmission timers (4.0 / 1.8 / 5: give-up at
165 s, policy-spec §5.3) instead of the short ones; ``tests/suites`` runs FB-03 so, marked
slow."""


def swan_timers() -> Any:
    """The retransmission timers strongSwan gets in these cases."""
    from harness.peers.base import FAST_RETRANSMIT, Retransmit

    return Retransmit() if os.environ.get(DEFAULT_TIMERS_ENV) == "1" else FAST_RETRANSMIT


def swan_schedule(timeout: float, base: float, tries: int) -> tuple[list[float], float]:
    """strongSwan's transmission instants and give-up time (policy-spec §3.4 [S]:
    ``timeout * base**n`` summed over n = 0..tries)."""
    sends, t = [0.0], 0.0
    for n in range(tries):
        t += timeout * base**n
        sends.append(round(t, 4))
    return sends, round(t + timeout * base**tries, 4)


NAT_SENDS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def nat_case(ctx: CaseContext) -> None:
    """Policy-spec FB-28: I behind a NAT (a masquerading router), R:500 open, R:4500
    filtered. IKE_SA_INIT is answered; I detects the NAT and sends IKE_AUTH from its port 4500
    (non-ESP marker) on a fresh schedule; no answer: the exchange fails at +64 s, and a request
    rule does not fall back (R replied). Built in a topology of its own (the lab has no router):
    ``netns`` only."""
    from harness.peers.base import NotApplicable
    from harness.topology import TopologySpec, open_topology
    from harness.topology.base import FEATURE_NAT

    topo_name = ctx.lab.options.topology
    if topo_name == "local":
        raise NotApplicable(["FB-28 needs a NAT router: --topology netns (or docker)"])
    if ctx.peer_name not in ("reference", "strongswan"):
        raise NotApplicable([f"{ctx.peer_name}: needs a NAT topology of its own"])
    spec = TopologySpec.routed("fbi", "fbr", behind_nat=["fbi"], ipv6=False)
    artifacts = ctx.lab.options.reports / "lab" / "fb28"
    with open_topology(topo_name, spec, artifacts=artifacts) as topo:
        topo.require(FEATURE_NAT)
        if ctx.peer_name == "reference":
            _nat_reference(ctx, topo)
        else:
            _nat_strongswan(ctx, topo)


def _masquerade_address(r: Node) -> str:
    """Where I's traffic comes from at R: the router's address on R's link (.1, the
    addressing plan of harness.topology.base.routed_link_addresses)."""
    return str(ipaddress.ip_interface(f"{r.addresses.v4}/24").network.network_address + 1)


def _nat_reference(ctx: CaseContext, topo: Topology) -> None:
    from harness.peers.base import Scenario
    from harness.peers.reference import ReferencePeer

    i_node, r_node = topo.node("fbi"), topo.node("fbr")
    nat_addr = _masquerade_address(r_node)
    i_peer, r_peer = ReferencePeer(i_node, clock="virtual"), ReferencePeer(r_node)
    with i_peer, r_peer:
        for name, value in ctx.lab.options.misbehaviour_values():
            i_peer.impair(name, value)
        sc = Scenario.between(i_node, r_node, mode="transport")
        i_peer.configure(sc)
        r_peer.configure(sc)
        r_text = policy_yaml("fb-28-r", [nat_addr], require_action(inbound_passthrough=True),
                             psk_ref=sc.name)  # fmt: skip
        r_peer.client.load_policy(text=r_text)
        r_node.close_udp((4500,), how="drop")
        i_addr, r_addr = i_node.addresses.v4, r_node.addresses.v4
        for rule in ("request", "require"):
            with ctx.step(f"{rule} rule"):
                action = request_action(after_s=3.0) if rule == "request" else require_action()
                i_text = policy_yaml(f"fb-28-i-{rule}", [r_addr], action, psk_ref=sc.name)
                i_peer.client.load_policy(text=i_text)
                i_peer.client.advance(FLOW_FORGET_S)

                def inject(packet: bytes) -> None:
                    i_peer.client.inject([packet])

                obs = CaptureObserver(topo, r_node, nat_addr, [r_addr], inject, f"fb28-{rule}",
                                      i_source=i_addr)  # fmt: skip
                try:
                    _nat_reference_run(ctx, i_peer, obs, i_addr, r_addr, rule)
                finally:
                    obs.close()
                    if ctx.recording is not None:
                        from harness.report import EvidenceKind

                        ctx.recording.attach_text(f"seen at R ({rule})", obs.evidence())
                        ctx.recording.attach_file(obs.path, EvidenceKind.PCAP)
                    i_peer.client.load_policy(text=policy_yaml("fb-clean", [], None))
                    _quiet(i_peer.client.terminate)
                    _quiet(r_peer.client.terminate)


def _nat_reference_run(
    ctx: CaseContext, i_peer: Any, obs: CaptureObserver, i_addr: str, r_addr: str, rule: str
) -> None:
    t0 = float(i_peer.client.clock()["now"])

    def t() -> float:
        return float(i_peer.client.clock()["now"]) - t0

    def step(when: float) -> None:
        now = t()
        if when > now:
            i_peer.client.advance(when - now)
        obs.sync(t())

    def audit(kind: str) -> list[dict[str, Any]]:
        return [{**r, "t": r["time"] - t0} for r in i_peer.client.audit(since=t0, kinds=[kind])]

    def state() -> str:
        for m in i_peer.client.agent_state().get("machines", []):
            if m.get("rule") == "fb":
                return str(m["state"])
        return "NO_SA"

    i_peer.client.inject([udp4(i_addr, r_addr, 40000, PROBE_DPORT, MAGIC + b"P1")])
    replied = poll(lambda: audit("peer_replied"), 15.0)
    assert replied, "IKE_SA_INIT was not answered on 500 (no peer_replied)"
    assert state() == "NEGOTIATING", f"state {state()} after R's answer"
    for when in NAT_SENDS:
        step(max(0.0, when - BEFORE))
        step(when + EPS)
    init = [s for s in obs.ike if s.port == 500]
    auth = [s for s in obs.ike if s.port == 4500]
    assert len(init) == 1 and init[0].exchange == 34, f"IKE_SA_INIT to R:500: {len(init)}"
    assert stamps(auth) == NAT_SENDS, f"IKE_AUTH to R:4500 at {stamps(auth)}, want {NAT_SENDS}"
    assert all(s.marker for s in auth), "IKE_AUTH on 4500 without the non-ESP marker"
    assert all(s.exchange == 35 for s in auth), [s.exchange for s in auth]
    assert len({s.data for s in auth}) == 1, "IKE_AUTH retransmissions not byte-identical"
    assert not audit("fallback"), "fell back although R replied"
    step(64.0 - BEFORE)
    assert state() == "NEGOTIATING", f"state {state()} before +64 s"
    step(64.0 + EPS)
    failed = audit("failed")
    assert failed and failed[0]["t"] == pytest_approx(64.0), f"failure at {failed}"
    assert state() == "FAILED", f"state {state()} ({rule}), expected FAILED"
    assert not audit("fallback"), f"{rule}: fell back although R replied"
    assert not [p for p in obs.packets if p.packet.probe is not None and not p.protected], (
        "a probe left in clear"
    )


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, abs=1e-6)


def _nat_strongswan(ctx: CaseContext, topo: Topology) -> None:
    from harness.peers.base import FAST_RETRANSMIT, Scenario
    from harness.peers.reference import ReferencePeer
    from harness.peers.registry import peer_class

    i_node, r_node = topo.node("fbi"), topo.node("fbr")
    nat_addr = _masquerade_address(r_node)
    i_peer = peer_class("strongswan")(i_node)
    r_peer = ReferencePeer(r_node)
    with i_peer, r_peer:
        sc = Scenario.between(i_node, r_node, retransmit=FAST_RETRANSMIT)
        i_peer.configure(sc)
        r_peer.configure(sc)
        r_text = policy_yaml("fb-28-r", [nat_addr], require_action(inbound_passthrough=True),
                             psk_ref=sc.name)  # fmt: skip
        r_peer.client.load_policy(text=r_text)
        r_node.close_udp((4500,), how="drop")
        r_addr = r_node.addresses.v4

        def sentinel(packet: bytes) -> None:
            ping_sentinel(i_node, r_addr, packet)

        obs = CaptureObserver(topo, r_node, nat_addr, [r_addr], sentinel, "fb28-swan",
                              i_source=i_node.addresses.v4)  # fmt: skip
        try:
            t0 = time.time()
            with contextlib.suppress(Exception):
                i_peer.initiate(timeout=20.0)
            t_fail = time.time() - t0
            obs.sync(0.0)
        finally:
            obs.close()
        sends, fail = swan_schedule(1.0, 1.5, 3)
        auth = [(ts - t0, ip) for ts, ip in obs.wire if ip.proto == 17 and ip.dport == 4500]
        init = [(ts - t0, ip) for ts, ip in obs.wire if ip.proto == 17 and ip.dport == 500]
        got = [round(t, 3) for t, _ in auth]
        if ctx.recording is not None:
            from harness.report import EvidenceKind

            ctx.recording.attach_text("observed", f"IKE_SA_INIT to R:500: {len(init)}; IKE_AUTH "
                                      f"to R:4500 at {got}; initiate gave up after {t_fail:.3f} s;"
                                      f" expected {sends}, {fail}")  # fmt: skip
            ctx.recording.attach_file(obs.path, EvidenceKind.PCAP)
            ctx.recording.known_behaviour("strongswan-acquire-emulated")
        assert init, "no IKE_SA_INIT reached R:500"
        assert len(auth) == len(sends), f"IKE_AUTH to R:4500 at {got}, expected {sends}"
        t_a = auth[0][0]
        for (t, ip), want in zip(auth, sends, strict=True):
            assert abs(t - t_a - want) <= wall_tolerance(want), f"IKE_AUTH at +{t - t_a:.3f}"
            assert ip.payload[:4] == b"\0\0\0\0", "IKE_AUTH on 4500 without the marker"
        assert len({ip.payload for _, ip in auth}) == 1, "retransmissions not byte-identical"
        assert abs(t_fail - t_a - fail) <= wall_tolerance(fail) + 0.2, (
            f"gave up {t_fail - t_a:.3f} s after the first IKE_AUTH, expected {fail}"
        )
