"""UDP endpoints for IKE (500) and NAT-T (4500), with ICMP errors read from the error queue.

``IP_RECVERR`` makes the kernel queue ICMP errors for datagrams this socket sent; the node
reads them with ``MSG_ERRQUEUE`` and hands them to the policy agent as unauthenticated hints
(policy-spec §3.3 E7). They never change IKE state (RFC 7296 §2.4).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>, <linux/udp.h>; Python's socket module
# lacks these names.
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_SEGMENTS = 64
"""UDP_MAX_SEGMENTS of older kernels (128 since Linux 5.x)."""
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
_ASYNC_ERRORS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EPROTO,
        errno.EACCES,
        errno.EPERM,
        errno.EMSGSIZE,
    }
)
"""Errors an ICMP message about an earlier datagram is reported with (ip(7) IP_RECVERR)."""
_U16 = struct.Struct("=H")
_GRO_SPACE = socket.CMSG_SPACE(4)


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP error the kernel matched to a datagram we sent."""

    destination: tuple[str, int]
    """Where the datagram that provoked the error was going."""
    offender: str
    """The address that sent the ICMP error."""
    icmp_type: int
    icmp_code: int
    errno: int
    payload: bytes
    """The start of the datagram we sent (the UDP payload), to match it to an IKE SA."""


class UdpEndpoint:
    """A non-blocking UDP socket bound to one local address and port."""

    def __init__(self, address: str, port: int, *, mark: int = 0) -> None:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.family = family
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            # Large buffers: a burst of ESP-in-UDP must not be dropped by the socket.
            big_buffers(self.sock)
            if mark:
                # The node's own datagrams skip the tunnel's routing table (runtime docstring).
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            self.sock.bind((address, port))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.address = address
        self.port = self.sock.getsockname()[1]
        self.errors_possible = False
        """A send consumed an error report: the error queue holds something to read."""

    def fileno(self) -> int:
        return self.sock.fileno()

    def enable_gro(self) -> bool:
        """Ask the kernel to hand over runs of same-sized datagrams from one source as one
        buffer (UDP GRO, Linux 5.0); :meth:`recv_gro` splits them again."""
        try:
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
        self.gro = True
        return True

    gro = False
    gso = True
    """Segmentation offload for :meth:`send_segments` (off after the kernel refused it)."""

    def recv_gro(self) -> tuple[bytes, int, tuple[str, int]] | None:
        """One receive: (buffer, segment size or 0, source); None when nothing is queued.
        Raises ``OSError`` for a pending error (it is in the error queue)."""
        try:
            data, anc, _flags, addr = self.sock.recvmsg(65535, _GRO_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        seg = 0
        for level, ctype, cdata in anc:
            if level == SOL_UDP and ctype == UDP_GRO:
                seg = int.from_bytes(cdata[:4] if len(cdata) >= 4 else cdata[:2], "little")
        return data, seg, (addr[0], addr[1])

    def send_segments(self, data: bytes, size: int, addr: tuple[str, int]) -> bool:
        """Send ``data`` as datagrams of ``size`` octets (the last may be shorter) with one
        system call (UDP GSO, Linux 4.18). False when the kernel refused: send one by one."""
        try:
            self.sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, addr)
        except BlockingIOError:
            return True  # a drop, as on the wire
        except ConnectionRefusedError:
            self.errors_possible = True  # an earlier datagram's ICMP error: send one by one
            return False
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.gso = False
                return False
            return True
        return True

    def recv(self) -> tuple[bytes, tuple[str, int]] | None:
        """One datagram, or None when nothing is queued (errors go to :meth:`recv_errors`)."""
        try:
            data, addr = self.sock.recvfrom(65535)
        except BlockingIOError:
            return None
        except OSError:
            # A pending ICMP error is reported on the next recv; it is in the error queue too.
            return None
        return data, (addr[0], addr[1])

    def recv_errors(self) -> list[IcmpError]:
        """Every ICMP error queued for this socket (the queue is left empty)."""
        self.errors_possible = False
        errors: list[IcmpError] = []
        while True:
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return errors
            except OSError:
                return errors
            for level, ctype, cdata in ancdata:
                if (level, ctype) not in (
                    (socket.IPPROTO_IP, IP_RECVERR),
                    (socket.IPPROTO_IPV6, IPV6_RECVERR),
                ):
                    continue
                if len(cdata) < _SOCK_EXTENDED_ERR.size:
                    continue
                ee_errno, origin, icmp_type, icmp_code, _pad, _info, _data = (
                    _SOCK_EXTENDED_ERR.unpack_from(cdata)
                )
                if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                    continue
                offender = _offender(cdata[_SOCK_EXTENDED_ERR.size :])
                errors.append(
                    IcmpError((addr[0], addr[1]), offender, icmp_type, icmp_code, ee_errno, data)
                )

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        # With IP_RECVERR an ICMP error about an EARLIER datagram is reported (once) by the
        # next socket call, this sendto included, and then this datagram was not sent: send it
        # again. The error itself stays in the error queue for recv_errors().
        for _ in range(3):
            try:
                self.sock.sendto(data, addr)
                return
            except BlockingIOError:
                return  # a full queue: a drop, as on the wire
            except OSError as exc:
                if exc.errno not in _ASYNC_ERRORS:
                    return  # no route and the like: the datagram is lost, as on the wire
                self.errors_possible = True

    def close(self) -> None:
        self.sock.close()


SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_SIZE = 8 * 1024 * 1024


def big_buffers(sock: socket.socket, size: int = BUFFER_SIZE) -> None:
    """Large socket buffers, so a burst is not dropped by the socket: beyond
    ``net.core.[rw]mem_max`` when privileged (``SO_*BUFFORCE``, CAP_NET_ADMIN), else as large
    as the system allows."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _offender(raw: bytes) -> str:
    """The address in the ``struct sockaddr`` that follows ``sock_extended_err``."""
    if len(raw) >= 8:
        family = struct.unpack_from("=H", raw)[0]
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8])
        if family == socket.AF_INET6 and len(raw) >= 24:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return ""
