"""A TUN device for the node's ``tun`` data plane (Linux ``/dev/net/tun``).

The device is non-persistent: it disappears when the node closes the descriptor (or dies),
so nothing is left behind even on SIGKILL. Link, addresses and routes are set with ``ip``
(iproute2): pyroute2's socket cannot be driven from inside the node's running asyncio loop.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


class TunDevice:
    """An open TUN device in non-blocking mode; read() returns one IP packet or None.

    With ``offload`` every packet on the device carries a virtio-net header and the kernel
    accepts coalesced TCP super-packets (GRO); with ``tso`` too it may hand over TCP
    super-packets (:mod:`reference_impl.node.offload`); ``vnet`` says whether headers are on.
    """

    def __init__(
        self, name: str, mtu: int = 1400, offload: bool = False, tso: bool = False
    ) -> None:
        if len(name.encode()) >= 16:
            raise ValueError(f"interface name {name!r} is longer than 15 octets")
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = _IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if offload else 0)
            ifr = struct.pack("16sH", name.encode(), flags)
            result = fcntl.ioctl(self.fd, _TUNSETIFF, ifr)
            self.name = result[:16].rstrip(b"\0").decode()
            self.mtu = mtu
            self.vnet = offload
            if offload and tso:
                from reference_impl.node.offload import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6

                try:
                    fcntl.ioctl(self.fd, _TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                except OSError:
                    pass  # no offload: the headers stay (all zero), packets stay small
            self._configure_link(mtu)
        except BaseException:
            os.close(self.fd)
            raise

    def _configure_link(self, mtu: int) -> None:
        # A longer queue than the default 500: the node reads in batches, and a burst the
        # kernel cannot queue is a TCP retransmission.
        _ip("link", "set", "dev", self.name, "mtu", str(mtu), "txqueuelen", "5000", "up")
        with open(f"/sys/class/net/{self.name}/ifindex") as f:
            self.index = int(f.read())

    def add_address(self, address: str, prefixlen: int) -> None:
        _ip("addr", "add", f"{address}/{prefixlen}", "dev", self.name)

    def add_route(self, network: str, source: str | None = None, table: int | None = None) -> None:
        """Route ``network`` (a prefix) into the tunnel, optionally with a preferred source."""
        args = ["route", "replace", network, "dev", self.name]
        if table is not None:
            args += ["table", str(table)]
        if source:
            args += ["src", source]
        _ip(*args)

    def read(self) -> bytes | None:
        try:
            return os.read(self.fd, 65535)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            pass  # the kernel queue is full: a drop, as on a real interface

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the device and its routes go with it
            self.fd = -1


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if res.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {res.stderr.strip()}")
