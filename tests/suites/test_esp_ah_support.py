"""Unit tests of the esp/ah suites' helpers (``suites/support/ipsec.py``) and of the driver fix
the ESN wrap cases found (a window jump of 2^31 built a 2^31-bit integer per packet)."""

from __future__ import annotations

import ipaddress
import struct
import time

from reference_impl.crypto.ids import EncrId
from reference_impl.driver import ReplayWindow, Sad, Verdict
from reference_impl.driver.packet import checksum
from reference_impl.sa import ChildSaPair, ChildSaParams, IpsecProtocol, Mode, TrafficSelector
from suites.support.ipsec import describe, echo_key, echo_packet, udp_frame
from suites.test_ah import with_ipv4_options
from suites.test_esp import fragment_ipv4


def test_echo_packets_round_trip_their_key() -> None:
    for src, dst in (("198.19.2.1", "198.19.1.1"), ("2001:db8:ff:2::1", "2001:db8:ff:1::1")):
        req = echo_packet(src, dst, (0x1234, 7), b"data", request=True)
        rep = echo_packet(dst, src, (0x1234, 7), b"data", request=False)
        assert echo_key(req, request=True) == (0x1234, 7)
        assert echo_key(req, request=False) is None
        assert echo_key(rep, request=False) == (0x1234, 7)
        assert describe(req).startswith(f"{src} > {dst}")
    v4 = echo_packet("198.19.2.1", "198.19.1.1", (1, 2), b"x", request=True)
    assert checksum(v4[:20]) == 0  # RFC 791 header checksum verifies
    assert checksum(v4[20:]) == 0  # RFC 792 ICMP checksum verifies


def test_udp_frame_is_esp_in_udp_on_4500() -> None:
    frame = udp_frame("192.0.2.1", "192.0.2.2", b"\x00\x00\x10\x01" + bytes(12))
    assert frame[9] == 17 and struct.unpack_from("!HH", frame, 20) == (4500, 4500)
    assert checksum(frame[:20]) == 0


def test_fragment_ipv4_reassembles() -> None:
    d = echo_packet("192.0.2.1", "192.0.2.2", (1, 1), bytes(2972), request=True)
    frags = fragment_ipv4(d, 1280)
    assert len(frags) == 3 and all(len(f) <= 1280 for f in frags)
    payload = b"".join(f[20:] for f in frags)
    assert payload == d[20:]
    offsets = [struct.unpack_from("!H", f, 6)[0] for f in frags]
    assert [o & 0x2000 for o in offsets] == [0x2000, 0x2000, 0]
    assert [(o & 0x1FFF) * 8 for o in offsets] == [0, 1256, 2512]


def test_ipv4_options_are_inserted_whole() -> None:
    d = echo_packet("192.0.2.1", "192.0.2.2", (1, 1), b"abc", request=True)
    rr = bytes((7, 11, 4)) + bytes(8) + b"\x01"
    out = with_ipv4_options(d, rr)
    assert out[0] == 0x48 and struct.unpack_from("!H", out, 2)[0] == len(d) + 12
    assert out[20:32] == rr and out[32:] == d[20:]
    assert checksum(out[:32]) == 0


def test_replay_window_jump_is_cheap() -> None:
    """RFC 4303 App. A2: a verified packet far right of the window slides it in one step; the
    bitmap must not be built by a shift of the jump (ESN jumps reach 2^32)."""
    w = ReplayWindow(64, esn=True)
    w.update(5)
    t0 = time.perf_counter()
    for top in (0x80000000, 0xFFFFFFF0, (1 << 32) + 1, (1 << 40)):
        w.update(top)
    assert time.perf_counter() - t0 < 0.05
    assert w.replay_top == 1 << 40 and w.replay_bits == 1
    assert w.check(1 << 40) is Verdict.REPLAY
    assert w.check((1 << 40) - 63) is None and w.check((1 << 40) - 64) is Verdict.OUTSIDE_WINDOW


def test_sad_fast_path_jump_is_cheap() -> None:
    """The same on the driver's IPv4 AES-GCM fast path (``Sad.unprotect``)."""
    a, b = "192.0.2.1", "192.0.2.2"
    ts_a = (TrafficSelector.from_network("10.1.0.1/32"),)
    ts_b = (TrafficSelector.from_network("10.2.0.1/32"),)
    key = bytes(range(20))

    def params(spi: int, src: str, dst: str, s: tuple, d: tuple) -> ChildSaParams:  # type: ignore[type-arg]
        return ChildSaParams(
            spi, IpsecProtocol.ESP, Mode.TUNNEL, src, dst, EncrId.ENCR_AES_GCM_16, 128, key,
            ts_src=s, ts_dst=d,
        )  # fmt: skip

    sender, receiver = Sad(), Sad()
    out_p = params(0x1001, a, b, ts_a, ts_b)
    in_p = params(0x1001, a, b, ts_a, ts_b)
    _, sa_out = sender.install_pair(
        ChildSaPair(params(0x2002, b, a, ts_b, ts_a), out_p, bytes(16), 2), 0.0
    )
    receiver.install_pair(ChildSaPair(in_p, params(0x2002, b, a, ts_b, ts_a), bytes(16), 2), 0.0)
    inner = echo_packet("10.1.0.1", "10.2.0.1", (1, 1), b"x", request=True)
    t0 = time.perf_counter()
    for seq in (1, 0x80000000, 0xFFFFFFF0):
        sa_out.set_next_seq(seq)
        verdict, d = sa_out.protect(inner, 0.0)
        assert verdict is Verdict.DELIVERED
        assert receiver.unprotect(d, 0.0)[0] is Verdict.DELIVERED
    assert time.perf_counter() - t0 < 0.2
    assert ipaddress.ip_address(inner[16:20]) == ipaddress.ip_address("10.2.0.1")


def test_udp_and_tcp_builders_have_valid_checksums() -> None:
    from suites.support.ipsec import tcp_syn, udp_datagram

    u = udp_datagram("192.0.2.1", "192.0.2.2", 40000, 9, b"x")
    t = tcp_syn("192.0.2.1", "192.0.2.2", 40001, 9)
    for pkt, proto in ((u, 17), (t, 6)):
        assert checksum(pkt[:20]) == 0 and pkt[9] == proto
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, proto, len(pkt) - 20)
        assert checksum(pseudo + pkt[20:]) == 0  # RFC 768 / RFC 9293 pseudo-header checksum
    u6 = udp_datagram("2001:db8::1", "2001:db8::2", 1, 2, b"abc")
    pseudo6 = u6[8:40] + struct.pack("!I3xB", len(u6) - 40, 17)
    assert checksum(pseudo6 + u6[40:]) == 0
