"""The two data planes of the node: ``tun`` (real kernel traffic) and ``api`` (harness-driven).

``tun``: a TUN device carries the local stack's packets to the node. Routes for the protected
selectors go into a routing table of their own, and one rule per address family sends only
*unmarked* traffic to it (``ip rule add not fwmark M lookup T``); every socket of the node sets
``SO_MARK M``, so IKE, ESP and the clear (bypass, fallback) packets the node writes leave
through the normal routes instead of looping back into the tunnel — the way strongSwan's
table 220 works. ESP and AH go on raw sockets (IP protocol 50 and 51, root or CAP_NET_RAW);
clear packets leave through a marked ``IPPROTO_RAW`` socket (the IP header is ours). Received
ESP/AH reach the node through its raw sockets; decapsulated packets are written to the TUN
device and the kernel delivers them as if they had arrived on it. Clear packets *to* the node
are queued to the node by netfilter (NFQUEUE) when they arrive for a local address: the
Policy Agent decides (policy-spec §4: accepted, or discarded and audited) and the kernel
delivers or drops them (:mod:`reference_impl.node.nfqueue`).

``api``: no device, no privilege. The harness injects packets with the control API and reads
what was delivered. IKE and ESP-in-UDP use the node's real UDP sockets. Packets that would go
on the wire as raw IP (clear packets, ESP and AH without UDP encapsulation) cannot be sent as
such without root, so they travel over a *clear link*: a UDP socket per node carrying one whole
IP packet per datagram to the peer node's clear link (``dataplane.clear_peers`` says which peer
for which destination). This is the ``local`` topology's model of the wire: what a peer
receives there is exactly what would have been on the wire, header included.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from reference_impl.node.nfqueue import InboundClearQueue
from reference_impl.node.offload import Gro
from reference_impl.node.tun import TunDevice
from reference_impl.node.udp import big_buffers

log = logging.getLogger("reference_impl.node")

_IP6_HDRINCL = 36  # <linux/in6.h> IPV6_HDRINCL (Linux 4.5)


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip`` (iproute2) for routes and rules: set-up and tear-down only, never per packet."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and res.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


_RECV_EXTENSIONS = (socket.IPV6_RECVHOPOPTS, socket.IPV6_RECVDSTOPTS, socket.IPV6_RECVRTHDR)
_EXTENSION_OF = {socket.IPV6_HOPOPTS: 0, socket.IPV6_DSTOPTS: 60, socket.IPV6_RTHDR: 43}
"""Ancillary data type -> IPv6 Next Header value of the extension header it carries."""


class DataPlane:
    """What the runtime needs from a data plane."""

    mode = "none"

    def readers(self) -> list[tuple[int, Callable[[], None]]]:
        return []

    def send_ip(self, packet: bytes) -> None:
        raise NotImplementedError

    def deliver(self, packet: bytes, now: float, protected: bool, spi: int | None) -> None:
        raise NotImplementedError

    def deliver_many(
        self, packets: list[bytes], info: list[tuple[float, bool, int | None]] | tuple[()]
    ) -> None:
        """Deliver a batch (``info``: time, protected, SPI per packet, when recorded)."""
        if info:
            for pkt, (t, prot, spi) in zip(packets, info, strict=False):
                self.deliver(pkt, t, prot, spi)
        else:
            for pkt in packets:
                self.deliver(pkt, 0.0, True, None)

    def update_routes(self, prefixes: Iterable[tuple[str, str | None]]) -> None:
        return None

    def close(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"mode": self.mode}


class TunPlane(DataPlane):
    """Root data plane: TUN device, policy routing by fwmark, raw sockets."""

    mode = "tun"

    def __init__(
        self,
        *,
        name: str,
        mtu: int,
        table: int,
        mark: int,
        priority: int,
        raw_esp: bool,
        on_ip: Callable[[bytes], None],
        counters: dict[str, int],
        offload: bool = False,
        tso: bool = False,
        on_clear: Callable[[bytes], bool] | None = None,
        ike_ports: Iterable[int] = (500, 4500),
    ) -> None:
        self.table = table
        self.mark = mark
        self.priority = priority
        self.on_ip = on_ip
        self.counters = counters
        self.routes: set[tuple[str, str | None]] = set()
        self.rules: list[str] = []
        self.sockets: list[socket.socket] = []
        self.tun = TunDevice(name, mtu, offload=offload, tso=tso)
        self.name = self.tun.name
        self._dst: dict[bytes, str] = {}
        try:
            for sysctl in (
                f"net.ipv4.conf.{self.name}.rp_filter=0",
                f"net.ipv6.conf.{self.name}.disable_ipv6=0",
            ):
                subprocess.run(["sysctl", "-qw", sysctl], capture_output=True, timeout=10)
            rule = ("not", "fwmark", hex(mark), "lookup", str(table), "pref", str(priority))
            for family in ("-4", "-6"):
                # A node killed in this namespace (SIGKILL: no close()) left this very rule
                # behind, and "ip rule add" of a duplicate fails: take it over.
                run_ip(family, "rule", "del", *rule, check=False)
                run_ip(family, "rule", "add", *rule)
                self.rules.append(family)
            self.out4 = self._raw(socket.AF_INET, socket.IPPROTO_RAW)
            self.out6: socket.socket | None
            try:
                self.out6 = self._raw(socket.AF_INET6, socket.IPPROTO_RAW)
                self.out6.setsockopt(socket.IPPROTO_IPV6, _IP6_HDRINCL, 1)
            except OSError:
                self.out6 = None
            self.in_sockets: list[socket.socket] = []
            self.in6_sockets: list[tuple[socket.socket, int]] = []
            self.clear_queue: InboundClearQueue | None = None
            self.clear_check = "off"
            if on_clear is not None:
                self._queue_clear(on_clear, ike_ports)
            if raw_esp:
                for proto in (socket.IPPROTO_ESP, socket.IPPROTO_AH):
                    self.in_sockets.append(self._raw(socket.AF_INET, proto))
                    try:
                        s6 = self._raw(socket.AF_INET6, proto)
                        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                        for opt in _RECV_EXTENSIONS:
                            s6.setsockopt(socket.IPPROTO_IPV6, opt, 1)
                    except OSError:
                        continue  # no IPv6 here
                    self.in6_sockets.append((s6, proto))
        except BaseException:
            self.close()
            raise

    def _queue_clear(self, on_clear: Callable[[bytes], bool], ike_ports: Iterable[int]) -> None:
        """Inbound clear packets for local addresses go through ``on_clear`` (policy-spec §4,
        see :mod:`reference_impl.node.nfqueue`); without iptables or nfnetlink_queue the node
        runs on, says so in its log and status, and the kernel delivers them unchecked."""
        ports = list(ike_ports)
        first = os.getpid() % 60000 + 1
        error: OSError | None = None
        for queue in range(first, first + 8):  # another node in this namespace may hold one
            try:
                self.clear_queue = InboundClearQueue(
                    queue=queue,
                    tun=self.name,
                    ike_ports=ports,
                    decide=on_clear,
                    counters=self.counters,
                )
            except OSError as exc:
                error = exc
                if exc.errno != errno.EBUSY:
                    break
                continue
            self.clear_check = f"nfqueue {queue}"
            return
        self.clear_check = f"unavailable: {error}"
        log.warning(
            "inbound clear packets are not checked against the policy: %s",
            error,
            extra={"fields": {"event": "clear_check_unavailable", "reason": str(error)}},
        )

    def _raw(self, family: int, proto: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_RAW, proto)
        self.sockets.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        big_buffers(s)
        s.setblocking(False)
        return s

    def readers(self) -> list[tuple[int, Callable[[], None]]]:
        out: list[tuple[int, Callable[[], None]]] = []
        for s in self.in_sockets:
            out.append((s.fileno(), self._reader(s)))
        for s6, proto in self.in6_sockets:
            out.append((s6.fileno(), self._reader6(s6, proto)))
        if self.clear_queue is not None:
            out.append((self.clear_queue.fileno(), self.clear_queue.read))
        return out

    def _reader6(self, s: socket.socket, proto: int) -> Callable[[], None]:
        """IPv6 raw sockets deliver what follows the IPv6 header: the header is rebuilt from
        the source and the packet-info destination (RFC 3542 §6), as the driver takes whole
        datagrams (hop limit and flow label are mutable: they do not enter an AH ICV), with the
        hop-by-hop, destination options and routing headers that preceded ESP/AH in the order
        they came (RFC 3542 §4: AH covers them, RFC 4302 §3.3.3.1.2.2)."""
        from reference_impl.driver.packet import ipv6_header

        on_ip = self.on_ip
        recvmsg = s.recvmsg
        space = socket.CMSG_SPACE(20) + 3 * socket.CMSG_SPACE(2048)

        def read() -> None:
            for _ in range(256):
                try:
                    data, anc, _flags, addr = recvmsg(65535, space)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                dst = b""
                exts: list[tuple[int, bytes]] = []
                for level, ctype, cdata in anc:
                    if level != socket.IPPROTO_IPV6:
                        continue
                    if ctype == socket.IPV6_PKTINFO:
                        dst = cdata[:16]
                    elif ctype in _EXTENSION_OF:
                        exts.append((_EXTENSION_OF[ctype], cdata))
                if len(dst) != 16:
                    continue
                src = socket.inet_pton(socket.AF_INET6, addr[0].split("%")[0])
                chain = b""
                if exts:
                    # Each header names the next; the last one names ESP/AH (a fragment header
                    # in between is gone with the reassembly).
                    last_type, last = exts[-1]
                    exts[-1] = (last_type, bytes((proto,)) + last[1:])
                    chain = b"".join(e for _, e in exts)
                hdr = ipv6_header(
                    traffic_class=0,
                    flow_label=0,
                    payload_length=len(chain) + len(data),
                    next_header=exts[0][0] if exts else proto,
                    hop_limit=64,
                    src=src,
                    dst=dst,
                )
                on_ip(hdr + chain + data)

        return read

    def _reader(self, s: socket.socket) -> Callable[[], None]:
        recv = s.recv
        on_ip = self.on_ip

        def read() -> None:
            for _ in range(256):
                try:
                    data = recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    self.counters["raw.recv_errors"] = self.counters.get("raw.recv_errors", 0) + 1
                    return
                on_ip(data)

        return read

    def send_ip(self, packet: bytes) -> None:
        if packet[0] >> 4 == 4:
            key = packet[16:20]
            dst = self._dst.get(key)
            if dst is None:
                dst = self._dst[key] = socket.inet_ntop(socket.AF_INET, key)
            sock = self.out4
        else:
            if self.out6 is None:
                self.counters["raw.no_ipv6"] = self.counters.get("raw.no_ipv6", 0) + 1
                return
            dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
            sock = self.out6
        try:
            sock.sendto(packet, (dst, 0))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                counter = f"raw.send_errors.{name}"
                self.counters[counter] = self.counters.get(counter, 0) + 1

    def deliver(self, packet: bytes, now: float, protected: bool, spi: int | None) -> None:
        self.deliver_many([packet], ())

    def deliver_many(
        self, packets: list[bytes], info: list[tuple[float, bool, int | None]] | tuple[()]
    ) -> None:
        """Write decapsulated (or accepted) packets to the device; with offload, consecutive
        segments of one TCP flow are joined first (one write, one pass of the stack)."""
        fd = self.tun.fd
        write = os.write
        if self.tun.vnet:
            gro = Gro()
            for pkt in packets:
                gro.add(pkt)
            gro.flush()
            out = gro.out
            if gro.merged:
                self.counters["tun.gro_merged"] = (
                    self.counters.get("tun.gro_merged", 0) + gro.merged
                )
        else:
            out = packets
        for pkt in out:
            try:
                write(fd, pkt)
            except OSError:
                self.counters["tun.write_errors"] = self.counters.get("tun.write_errors", 0) + 1

    def update_routes(self, prefixes: Iterable[tuple[str, str | None]]) -> None:
        """Make the tunnel table hold exactly these (prefix, preferred source) routes."""
        want = set(prefixes)
        for net, _src in self.routes - want:
            run_ip("route", "del", net, "dev", self.name, "table", str(self.table), check=False)
        for net, src in want - self.routes:
            args = ["route", "replace", net, "dev", self.name, "table", str(self.table)]
            if src:
                args += ["src", src]
            res = run_ip(*args, check=False)
            if res.returncode != 0 and src:  # the source may not be ours: route without it
                res = run_ip(*args[:-2], check=False)
            if res.returncode != 0:
                log.warning("route %s into %s failed: %s", net, self.name, res.stderr.strip())
                continue
        self.routes = want

    def close(self) -> None:
        if getattr(self, "clear_queue", None) is not None:
            assert self.clear_queue is not None
            self.clear_queue.close()
            self.clear_queue = None
        for family in self.rules:
            run_ip(family, "rule", "del", "not", "fwmark", hex(self.mark), "lookup",
                   str(self.table), "pref", str(self.priority), check=False)  # fmt: skip
        self.rules.clear()
        for net, _ in self.routes:
            run_ip("route", "del", net, "dev", self.name, "table", str(self.table), check=False)
        self.routes.clear()
        for s in self.sockets:
            s.close()
        self.sockets.clear()
        if getattr(self, "tun", None) is not None:
            self.tun.close()

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "device": self.name,
            "table": self.table,
            "mark": self.mark,
            "routes": sorted(r for r, _ in self.routes),
            "raw_esp": bool(self.in_sockets),
            "inbound_clear_check": self.clear_check,
        }


class ApiPlane(DataPlane):
    """Unprivileged data plane: injected packets, a delivery buffer, and the clear link."""

    mode = "api"

    def __init__(
        self,
        *,
        address: str,
        clear_port: int,
        clear_peers: dict[str, tuple[str, int]],
        capacity: int,
        on_ip: Callable[[bytes], None],
        counters: dict[str, int],
    ) -> None:
        self.counters = counters
        self.on_ip = on_ip
        self.delivered: deque[tuple[float, bool, int | None, bytes]] = deque(
            maxlen=capacity or None
        )
        self.lost = 0
        self.peers = sorted(
            ((ipaddress.ip_network(p, strict=False), ep) for p, ep in clear_peers.items()),
            key=lambda x: -x[0].prefixlen,
        )
        self.sock: socket.socket | None = None
        if clear_port:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                big_buffers(s)
                s.bind((address, clear_port))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            self.sock = s
        self._route: dict[bytes, tuple[str, int] | None] = {}

    def readers(self) -> list[tuple[int, Callable[[], None]]]:
        if self.sock is None:
            return []
        return [(self.sock.fileno(), self._read)]

    def _read(self) -> None:
        assert self.sock is not None
        for _ in range(256):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["clear_link.recv_errors"] = (
                    self.counters.get("clear_link.recv_errors", 0) + 1
                )
                return
            self.on_ip(data)

    def _peer(self, packet: bytes) -> tuple[str, int] | None:
        raw = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
        if raw in self._route:
            return self._route[raw]
        try:
            dst = ipaddress.ip_address(raw)
        except ValueError:
            return None
        found = next((ep for net, ep in self.peers if dst in net), None)
        if len(self._route) < 4096:
            self._route[raw] = found
        return found

    def send_ip(self, packet: bytes) -> None:
        if len(packet) < 20:
            return
        peer = self._peer(packet)
        if peer is None or self.sock is None:
            self.counters["clear_link.no_peer"] = self.counters.get("clear_link.no_peer", 0) + 1
            return
        try:
            self.sock.sendto(packet, peer)
            self.counters["clear_link.sent"] = self.counters.get("clear_link.sent", 0) + 1
        except OSError:
            self.counters["clear_link.send_errors"] = (
                self.counters.get("clear_link.send_errors", 0) + 1
            )

    def deliver(self, packet: bytes, now: float, protected: bool, spi: int | None) -> None:
        if self.delivered.maxlen is not None and len(self.delivered) == self.delivered.maxlen:
            self.lost += 1
        self.delivered.append((now, protected, spi, packet))

    def take(self, limit: int | None = None, peek: bool = False) -> list[dict[str, Any]]:
        n = len(self.delivered) if limit is None else min(limit, len(self.delivered))
        items = [self.delivered[i] for i in range(n)]
        if not peek:
            for _ in range(n):
                self.delivered.popleft()
        return [
            {"time": t, "protected": p, "spi": s, "packet": pkt.hex()} for t, p, s, pkt in items
        ]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "clear_link": self.sock.getsockname()[:2] if self.sock is not None else None,
            "clear_peers": {str(n): f"{ep[0]}:{ep[1]}" for n, ep in self.peers},
            "delivered_queued": len(self.delivered),
            "delivered_lost": self.lost,
        }
