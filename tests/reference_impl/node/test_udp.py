"""UDP endpoints on loopback: datagrams both ways, and ICMP port unreachable read as a hint."""

from __future__ import annotations

import select
import socket
import time

from reference_impl.node.udp import UdpEndpoint


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _wait_readable(ep: UdpEndpoint, timeout: float = 5.0) -> None:
    r, _, x = select.select([ep.fileno()], [], [ep.fileno()], timeout)
    assert r or x, "nothing arrived within the timeout"


def test_datagram_roundtrip() -> None:
    a = UdpEndpoint("127.0.0.1", 0)
    b = UdpEndpoint("127.0.0.1", 0)
    try:
        a.send(b"hello", ("127.0.0.1", b.port))
        _wait_readable(b)
        got = b.recv()
        assert got == (b"hello", ("127.0.0.1", a.port))
        assert b.recv() is None
    finally:
        a.close()
        b.close()


def test_port_unreachable_is_reported() -> None:
    """Nothing listens on the port: the kernel's ICMP error lands in the error queue."""
    closed = _free_port()
    a = UdpEndpoint("127.0.0.1", 0)
    try:
        a.send(b"\x01\x02ike-sa-init", ("127.0.0.1", closed))
        deadline = time.monotonic() + 5
        errors = []
        while not errors and time.monotonic() < deadline:
            _wait_readable(a, deadline - time.monotonic())
            errors = a.recv_errors()
            a.recv()
        assert errors, "no ICMP error read"
        err = errors[0]
        assert err.destination == ("127.0.0.1", closed)
        assert (err.icmp_type, err.icmp_code) == (3, 3)  # destination unreachable, port
        assert err.payload.startswith(b"\x01\x02ike")
    finally:
        a.close()


def test_send_after_an_icmp_error_still_sends() -> None:
    """The ICMP error about datagram 1 is reported by the next call, here the sendto of
    datagram 2: datagram 2 must still go out, and both errors stay readable."""
    closed = _free_port()
    a = UdpEndpoint("127.0.0.1", 0)
    try:
        a.send(b"\x01first", ("127.0.0.1", closed))
        _wait_readable(a)  # the first ICMP error has arrived (EPOLLERR)
        a.send(b"\x02second", ("127.0.0.1", closed))
        deadline = time.monotonic() + 5
        errors = []
        while len(errors) < 2 and time.monotonic() < deadline:
            _wait_readable(a, deadline - time.monotonic())
            errors += a.recv_errors()
        assert [e.payload[:1] for e in errors] == [b"\x01", b"\x02"]
        assert not a.errors_possible
    finally:
        a.close()
