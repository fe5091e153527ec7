"""Inbound clear packets of the ``tun`` data plane, handed to the node by netfilter's queue.

In the ``tun`` data plane the kernel delivers clear packets addressed to this host to its
sockets by itself; the Policy Agent's inbound check (policy-spec §4, RFC 4301 §5.2 step 3:
a clear packet that matches a PROTECT entry is discarded and audited) needs to see them
first. A chain of the node's own in the ``filter`` table's INPUT hook (iptables and
ip6tables) queues every clear packet that arrives for a local address on another interface
than the node's TUN device and loopback (ESP, AH, IKE to the node's IKE ports or from a
peer's, ICMP errors and IPv6 neighbour discovery excepted) to an NFQUEUE; the node reads the
queue on a netlink socket, asks the agent, and answers each packet with a verdict: accept
(the packet goes on to its socket as if nothing happened) or drop.

The queue has the ``bypass`` flag: without the node listening (it stopped, or was killed and
left its chain behind) the kernel accepts the packets, as it would without the node; and it
fails open: when the node falls more than ``maxlen`` packets behind, the kernel accepts the
excess unchecked instead of dropping it (a reference node under a flood of clear traffic
must not cut its namespace off; conformance cases send a handful). The next
node in the namespace removes the chains of nodes that are gone.

Netlink (nfnetlink_queue, ``<linux/netfilter/nfnetlink_queue.h>``): configuration messages
bind the socket to the queue and ask for whole packets; each queued packet arrives as an
``NFQNL_MSG_PACKET`` with its id and payload (the IP packet); ``NFQNL_MSG_VERDICT`` answers it.
Only set-up and tear-down run iptables; per packet it is one read and one write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NF_DROP = 0
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")

CHAIN_PREFIX = "IPSEC_INTEROP_"
"""The node's chain in the ``filter`` table of iptables and ip6tables is ``CHAIN_PREFIX + pid``
(nftables' own ``queue`` expression is not in every kernel; the xtables NFQUEUE target, which
iptables-nft uses, is)."""
_ND_TYPES = (133, 134, 135, 136, 137)
"""ICMPv6 router/neighbour solicitation and advertisement, redirect: never queued (RFC 4301
§4.4.1 wants neighbour discovery to keep working whatever the SPD says)."""
_ICMP_ERRORS = (3, 4, 11, 12)
_ICMPV6_ERRORS = (1, 2, 3, 4)
"""ICMP errors (destination unreachable, source quench, time exceeded, parameter problem;
ICMPv6 also packet too big) are never queued: the kernel hands them to the socket they
concern, where the node reads them (an IKE port closed by reject: policy-spec §3.6), as it
did before the queue existed."""
_TOOLS = (("iptables-restore", "iptables"), ("ip6tables-restore", "ip6tables"))


class NfQueueError(OSError):
    """The queue could not be set up (no iptables, no nfnetlink_queue, no privilege)."""


def _attr(kind: int, value: bytes) -> bytes:
    n = 4 + len(value)
    return _NLATTR.pack(n, kind) + value + b"\0" * (-n % 4)


def _attrs(data: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (offset in ``data``, length) of its value, from ``off`` to ``end``."""
    out: dict[int, tuple[int, int]] = {}
    while off + 4 <= end:
        n, kind = _NLATTR.unpack_from(data, off)
        if n < 4 or off + n > end:
            break
        out[kind & 0x3FFF] = (off + 4, n - 4)
        off += (n + 3) & ~3
    return out


def chain_name(pid: int | None = None) -> str:
    return f"{CHAIN_PREFIX}{os.getpid() if pid is None else pid}"


def rules(chain: str, queue: int, tun: str, ike_ports: Iterable[int], v6: bool) -> str:
    """The ``iptables-restore --noflush`` input that queues inbound clear packets for local
    addresses (the INPUT hook) to ``queue``."""
    ours = set(ike_ports) or {500}
    ports = ",".join(str(p) for p in sorted(ours))
    peers = ",".join(str(p) for p in sorted(ours | {500, 4500}))
    lines = [
        "*filter",
        f":{chain} - [0:0]",
        f"-A {chain} -i lo -j RETURN",
        f"-A {chain} -i {tun} -j RETURN",
        f"-A {chain} -p esp -j RETURN",
        f"-A {chain} -p ah -j RETURN",
        f"-A {chain} -p udp -m multiport --dports {ports} -j RETURN",
        # IKE answers to an initiator on another port (the harness's scripted IKE peer, a
        # second IKE daemon): IKE traffic has its BYPASS whatever our side's port (RFC 4301
        # §5.2 step 3a note), as an IKE daemon's per-socket bypass gives it under XFRM.
        f"-A {chain} -p udp -m multiport --sports {peers} -j RETURN",
    ]
    if v6:
        lines += [
            f"-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
            for t in (*_ICMPV6_ERRORS, *_ND_TYPES)
        ]
    else:
        lines += [f"-A {chain} -p icmp -m icmp --icmp-type {t} -j RETURN" for t in _ICMP_ERRORS]
    lines += [
        f"-A {chain} -j NFQUEUE --queue-num {queue} --queue-bypass",
        f"-I INPUT 1 -j {chain}",
        "COMMIT",
        "",
    ]
    return "\n".join(lines)


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NfQueueError(errno.ENOENT, f"{argv[0]} is not installed (package iptables)") from None


def remove_chain(chain: str) -> None:
    """Take the chain out of INPUT and delete it, in both families (what exists)."""
    for _restore, tool in _TOOLS:
        with contextlib.suppress(NfQueueError, subprocess.TimeoutExpired):
            while _run([tool, "-w", "-D", "INPUT", "-j", chain]).returncode == 0:
                pass
            _run([tool, "-w", "-F", chain])
            _run([tool, "-w", "-X", chain])


def remove_stale_chains(alive: Callable[[int], bool] | None = None) -> list[str]:
    """Delete the chains of nodes (in this network namespace) whose process is gone."""
    is_alive = alive or _pid_alive
    stale: set[str] = set()
    for _restore, tool in _TOOLS:
        try:
            res = _run([tool, "-w", "-S"])
        except (NfQueueError, subprocess.TimeoutExpired):
            continue
        for m in re.finditer(rf"^-N ({CHAIN_PREFIX}(\d+))$", res.stdout, re.M):
            if not is_alive(int(m.group(2))):
                stale.add(m.group(1))
    for chain in sorted(stale):
        remove_chain(chain)
    return sorted(stale)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InboundClearQueue:
    """The node's NFQUEUE for inbound clear packets: ``decide(packet) -> accept?`` per packet.

    ``counters`` gets ``nfqueue.accepted``, ``nfqueue.dropped`` and error counts.
    """

    def __init__(
        self,
        *,
        queue: int,
        tun: str,
        ike_ports: Iterable[int],
        decide: Callable[[bytes], bool],
        counters: dict[str, int],
        maxlen: int = 4096,
    ) -> None:
        self.queue = queue
        self.chain = chain_name()
        self.decide = decide
        self.counters = counters
        self.sock: socket.socket | None = None
        self._seq = 0
        self._chain_made = False
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NfQueueError(exc.errno, f"netfilter netlink socket: {exc.strerror}") from None
        self.sock = s
        try:
            s.bind((0, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            with contextlib.suppress(OSError):
                s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0xFFFF, NFQNL_COPY_PACKET)))
            self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
            # A full queue (the node too slow for the traffic) lets packets through unchecked
            # rather than cut the namespace off.
            flags = struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
            self._config(_attr(NFQA_CFG_MASK, flags) + _attr(NFQA_CFG_FLAGS, flags))
            remove_stale_chains()
            self._chain_made = True
            for (restore, _tool), v6 in zip(_TOOLS, (False, True), strict=True):
                res = _run(
                    [restore, "-w", "--noflush"], rules(self.chain, queue, tun, ike_ports, v6)
                )
                if res.returncode != 0:
                    if v6 and not os.path.exists("/proc/net/if_inet6"):
                        continue  # no IPv6 in this kernel: nothing to queue
                    raise NfQueueError(errno.EINVAL, f"{restore}: {res.stderr.strip()}")
            s.setblocking(False)
        except BaseException:
            self.close()
            raise

    def _config(self, attrs: bytes) -> None:
        """One configuration request, acknowledged (an error raises)."""
        assert self.sock is not None
        self._seq += 1
        kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
        body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, self.queue) + attrs
        msg = _NLMSGHDR.pack(16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
        self.sock.send(msg + body)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                n, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if mtype == NLMSG_ERROR and seq == self._seq:
                    code = struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        raise NfQueueError(-code, f"nfnetlink_queue: {os.strerror(-code)}")
                    return
                off += (n + 3) & ~3
                if n < 16:
                    break

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def read(self) -> None:
        """Answer every queued packet that is waiting (the event loop's reader callback)."""
        sock = self.sock
        if sock is None:
            return
        decide = self.decide
        counters = self.counters
        for _ in range(256):
            try:
                data = sock.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                counters[f"nfqueue.recv_errors.{name}"] = (
                    counters.get(f"nfqueue.recv_errors.{name}", 0) + 1
                )
                return
            off = 0
            end = len(data)
            while off + 16 <= end:
                n, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if n < 16 or off + n > end:
                    break
                if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    attrs = _attrs(data, off + 20, off + n)
                    hdr = attrs.get(NFQA_PACKET_HDR)
                    payload = attrs.get(NFQA_PAYLOAD)
                    if hdr is not None and hdr[1] >= 4:
                        packet_id = struct.unpack_from("!I", data, hdr[0])[0]
                        packet = (
                            data[payload[0] : payload[0] + payload[1]]
                            if payload is not None
                            else b""
                        )
                        try:
                            accept = bool(packet) and decide(packet)
                        except Exception:
                            counters["nfqueue.decide_errors"] = (
                                counters.get("nfqueue.decide_errors", 0) + 1
                            )
                            accept = False
                        self._verdict(packet_id, NF_ACCEPT if accept else NF_DROP)
                        key = "nfqueue.accepted" if accept else "nfqueue.dropped"
                        counters[key] = counters.get(key, 0) + 1
                off += (n + 3) & ~3

    def _verdict(self, packet_id: int, verdict: int) -> None:
        assert self.sock is not None
        kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
        msg = (
            _NLMSGHDR.pack(32, kind, NLM_F_REQUEST, 0, 0)
            + _NFGENMSG.pack(socket.AF_UNSPEC, 0, self.queue)
            + _NLATTR.pack(12, NFQA_VERDICT_HDR)
            + struct.pack("!II", verdict, packet_id)
        )
        try:
            self.sock.send(msg)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            key = f"nfqueue.verdict_errors.{name}"
            self.counters[key] = self.counters.get(key, 0) + 1

    def close(self) -> None:
        if self._chain_made:
            remove_chain(self.chain)
            self._chain_made = False
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.settimeout(1.0)
                self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)))
            self.sock.close()
            self.sock = None
