"""The SAD: installation and lookups, rekey overlap, lifetimes and timers, counters and the
audit log, RFC 3948 classification on the ESP-in-UDP port, the hold queue."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from reference_impl.driver import (
    HoldQueue,
    LifetimeKind,
    OutboundSa,
    Sad,
    Verdict,
    nat_keepalive,
)
from reference_impl.errors import LocalProtocolError
from reference_impl.sa import ChildSaPair, IpsecProtocol, Lifetime

from .helpers import (
    ESP_SUITES,
    V4_INNER,
    V4_OUTER,
    V6_OUTER,
    inner_packet,
    keys_for,
    pair,
    params,
    with_,
)

GCM = ESP_SUITES[0]
ESP = IpsecProtocol.ESP


def _keys(seed: int = 0) -> tuple[bytes, bytes]:
    return keys_for(GCM, random.Random(seed))


def _pair(spi_in: int, spi_out: int, seed: int = 0) -> ChildSaPair:
    keys = _keys(seed)
    inbound = params(GCM, keys, spi=spi_in, outer=V4_OUTER[::-1], inner=V4_INNER[::-1])
    outbound = params(GCM, keys, spi=spi_out)
    return ChildSaPair(inbound=inbound, outbound=outbound, ike_sa_id=b"\x01" * 16, ike_version=2)


# --- installation and lookups ------------------------------------------------------------------


def test_install_lookup_remove() -> None:
    sad = Sad()
    sa_in, sa_out = sad.install_pair(_pair(0x100, 0x200), 0.0)
    assert len(sad) == 2 and set(sad) == {sa_in, sa_out}
    assert sad.inbound(ESP, 0x100) is sa_in
    assert sad.inbound(IpsecProtocol.AH, 0x100) is None
    assert sad.outbound(ESP, 0x200) is sa_out
    assert sad.outbound(ESP, 0x200, "192.0.2.9") is None
    assert sad.outbound_for(inner_packet(*V4_INNER)) is sa_out
    assert sad.outbound_for(inner_packet("10.9.0.1", V4_INNER[1])) is None
    assert sad.outbound_for(b"junk") is None
    assert sad.remove_inbound(ESP, 0x100) is sa_in
    assert sad.remove_outbound(ESP, 0x200) is sa_out
    assert not sad.remove(sa_in) and len(sad) == 0


def test_duplicate_spis() -> None:
    sad = Sad()
    sad.install_pair(_pair(0x100, 0x200), 0.0)
    with pytest.raises(LocalProtocolError):
        sad.install_pair(_pair(0x100, 0x300), 0.0)
    assert sad.outbound(ESP, 0x300) is None  # the failed pair left nothing behind
    with pytest.raises(LocalProtocolError):
        sad.install(_pair(0x101, 0x200).outbound, inbound=False, now=0.0)
    # Another peer may pick the same SPI for its inbound SA: our outbound SAs differ by dst.
    other = with_(_pair(0x101, 0x200).outbound, dst="192.0.2.77")
    sa = sad.install(other, inbound=False, now=0.0)
    assert sad.outbound(ESP, 0x200, "192.0.2.77") is sa
    assert sad.outbound(ESP, 0x200, "192.0.2.2") is not sa


def test_bad_parameters_refused() -> None:
    p = params(GCM, _keys())
    for bad in (
        with_(p, spi=0),
        with_(p, spi=255),
        with_(p, encr_key=b"short"),
        with_(p, encr_id=2),  # DES: refused
        with_(p, integ_id=12, integ_key=b"k" * 32),  # AEAD with an integrity transform
        with_(p, encr_id=11, encr_key=b"", encr_key_bits=None),  # NULL without integrity
        with_(p, dst="2001:db8::1"),
    ):
        with pytest.raises(LocalProtocolError):
            Sad().install(bad, inbound=False, now=0.0)


def test_rekey_overlap() -> None:
    """Old and new inbound SAs both accepted until the old one is deleted; outbound_for
    moves to the new SA (RFC 7296 §2.8)."""
    sad = Sad()
    old_in, old_out = sad.install_pair(_pair(0x100, 0x200, seed=1), 0.0)
    new_in, new_out = sad.install_pair(_pair(0x101, 0x201, seed=2), 10.0)
    assert sad.outbound_for(inner_packet(*V4_INNER)) is new_out
    peer = Sad()
    peer_old = peer.install(with_(old_in.params), inbound=False, now=0.0)
    peer_new = peer.install(with_(new_in.params), inbound=False, now=10.0)
    assert isinstance(peer_old, OutboundSa) and isinstance(peer_new, OutboundSa)
    back = inner_packet(*V4_INNER[::-1])
    for sender, sa in [(peer_old, old_in), (peer_new, new_in), (peer_old, old_in)]:
        verdict, data, got = sad.unprotect(sender.protect(back, 11.0)[1], 11.0)
        assert (verdict, data, got) == (Verdict.DELIVERED, back, sa)
    sad.remove(old_in)
    sad.remove(old_out)
    assert sad.unprotect(peer_old.protect(back, 12.0)[1], 12.0)[0] is Verdict.NO_SA
    assert sad.unprotect(peer_new.protect(back, 12.0)[1], 12.0)[0] is Verdict.DELIVERED


def test_outbound_for_skips_expired() -> None:
    sad = Sad()
    keys = _keys()
    old = sad.install(params(GCM, keys, spi=0x200), inbound=False, now=0.0)
    new = sad.install(
        params(GCM, keys, spi=0x201, lifetime=Lifetime(hard_packets=1)), inbound=False, now=0.0
    )
    assert isinstance(new, OutboundSa)
    pkt = inner_packet(*V4_INNER)
    assert sad.protect(pkt, 0.0)[0] is Verdict.DELIVERED  # on the new one, which expires
    assert new.expired is LifetimeKind.PACKETS
    assert sad.outbound_for(pkt) is old
    assert Sad().protect(pkt, 0.0) == (Verdict.NO_SA, b"")


# --- lifetimes ---------------------------------------------------------------------------------


def test_lifetime_seconds_with_timer() -> None:
    keys = _keys()
    sad = Sad()
    p = params(GCM, keys, lifetime=Lifetime(soft_seconds=100, hard_seconds=120))
    out = sad.install(p, inbound=False, now=1000.0)
    sad.install(p, inbound=True, now=1000.0)
    assert isinstance(out, OutboundSa)
    assert sad.get_timer() == 1100.0
    sad.handle_timer(1099.9)
    assert sad.next_event() is None
    sad.handle_timer(1100.0)
    events = {(e.inbound, e.hard, e.kind) for e in (sad.next_event(), sad.next_event())}
    assert events == {(False, False, LifetimeKind.SECONDS), (True, False, LifetimeKind.SECONDS)}
    assert sad.get_timer() == 1120.0
    pkt = inner_packet(*V4_INNER)
    _, d = out.protect(pkt, 1110.0)
    assert sad.unprotect(d, 1110.0)[0] is Verdict.DELIVERED  # soft: still working
    sad.handle_timer(1120.0)
    assert [sad.next_event(), sad.next_event(), sad.next_event()][2] is None
    assert out.protect(pkt, 1121.0) == (Verdict.LIFETIME_EXPIRED, b"")
    assert sad.unprotect(d, 1121.0)[0] is Verdict.LIFETIME_EXPIRED
    assert sad.get_timer() is None


def test_lifetime_seconds_without_timer() -> None:
    """A packet after the hard lifetime is dropped even if nobody ran the timer."""
    keys = _keys()
    sad, out, inn = pair(params(GCM, keys, lifetime=Lifetime(hard_seconds=5)), now=0.0)
    pkt = inner_packet(*V4_INNER)
    _, d = out.protect(pkt, 4.9)
    assert out.protect(pkt, 5.0) == (Verdict.LIFETIME_EXPIRED, b"")
    assert sad.unprotect(d, 5.0)[0] is Verdict.LIFETIME_EXPIRED
    assert {(e.inbound, e.hard) for e in (sad.next_event(), sad.next_event())} == {
        (False, True),
        (True, True),
    }
    assert inn.expired is LifetimeKind.SECONDS


@pytest.mark.parametrize("kind", ["packets", "bytes"])
def test_lifetime_counts(kind: str) -> None:
    keys = _keys()
    pkt = inner_packet(*V4_INNER, 72)  # 100 octets
    assert len(pkt) == 100
    lt = (
        Lifetime(soft_packets=3, hard_packets=5)
        if kind == "packets"
        else Lifetime(soft_bytes=300, hard_bytes=500)
    )
    sad, out, inn = pair(params(GCM, keys, lifetime=lt))
    datagrams = []
    for i in range(1, 6):
        verdict, d = out.protect(pkt, float(i))
        assert verdict is Verdict.DELIVERED
        datagrams.append(d)
        assert sad.unprotect(d, float(i))[0] is Verdict.DELIVERED
        if i < 3:
            assert sad.next_event() is None
        if i == 3:
            evs = [sad.next_event(), sad.next_event()]
            assert {(e.inbound, e.hard, e.kind.value, e.time) for e in evs if e} == {
                (False, False, kind, 3.0),
                (True, False, kind, 3.0),
            }
    evs = [sad.next_event(), sad.next_event()]
    assert {(e.inbound, e.hard) for e in evs if e} == {(False, True), (True, True)}
    assert out.protect(pkt, 6.0)[0] is Verdict.LIFETIME_EXPIRED
    assert (out.packets, out.octets, inn.packets, inn.octets) == (5, 500, 5, 500)


# --- counters and audit ------------------------------------------------------------------------


def test_counters_and_bounded_audit() -> None:
    keys = _keys()
    sad = Sad(audit_limit=3)
    inn = sad.install(params(GCM, keys), inbound=True, now=0.0)
    peer = Sad()
    out = peer.install(params(GCM, keys), inbound=False, now=0.0)
    assert isinstance(out, OutboundSa)
    _, d = out.protect(inner_packet(*V4_INNER), 0.0)
    assert sad.unprotect(d, 1.0)[0] is Verdict.DELIVERED
    for t in range(5):
        assert sad.unprotect(d, 2.0 + t)[0] is Verdict.REPLAY
    assert inn.drops == {Verdict.REPLAY: 5}
    assert sad.drops == {Verdict.REPLAY: 5}
    assert len(sad.audit) == 3 and sad.audit_lost == 2
    rec = sad.audit[-1]
    assert (rec.verdict, rec.spi, rec.seq, rec.time, rec.src, rec.dst) == (
        Verdict.REPLAY,
        0x1001,
        1,
        6.0,
        "192.0.2.1",
        "192.0.2.2",
    )


# --- RFC 3948 on the ESP-in-UDP port -------------------------------------------------------------


def _udp(payload: bytes, dport: int = 4500, chksum: int | None = 0) -> bytes:
    pkt = (
        IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4500, dport=dport, chksum=chksum) / payload
    )
    return bytes(IP(bytes(pkt)))


def test_nat_keepalive_and_non_esp_marker() -> None:
    """NATT-005: 0xFF is absorbed; NATT-003: four zero octets mark IKE, handed over without
    the marker; NATT-007: nothing is decapsulated on port 500."""
    sad = Sad()
    assert sad.unprotect(_udp(b"\xff"), 0.0) == (Verdict.NAT_KEEPALIVE, b"", None)
    ike = b"\x00" * 4 + b"IKE message"
    assert sad.unprotect(_udp(ike), 0.0) == (Verdict.IKE, b"IKE message", None)
    assert sad.unprotect(_udp(b"\x00\x00\x00"), 0.0)[0] is Verdict.RUNT
    assert sad.unprotect(_udp(ike, dport=500), 0.0)[0] is Verdict.NOT_IPSEC
    assert sad.drops == {
        Verdict.NAT_KEEPALIVE: 1,
        Verdict.IKE: 1,
        Verdict.RUNT: 1,
        Verdict.NOT_IPSEC: 1,
    }
    assert [a.verdict for a in sad.audit] == [Verdict.RUNT, Verdict.NOT_IPSEC]


def test_esp_in_udp_and_plain_share_the_window() -> None:
    """NATT-001/002/006: zero checksum sent, any checksum accepted, plain and encapsulated
    ESP both accepted on one SA with one replay window."""
    keys = _keys()
    p = params(GCM, keys, encap=(4500, 4500))
    sad, out, _ = pair(p)
    pkt = inner_packet(*V4_INNER)
    _, d = out.protect(pkt, 0.0)
    u = IP(d)
    assert u.proto == 17 and u[UDP].sport == u[UDP].dport == 4500 and u[UDP].chksum == 0
    assert d[28:32] != b"\x00\x00\x00\x00"
    esp = d[28:]
    with_checksum = _udp(esp, chksum=None)  # scapy computes a real checksum
    assert IP(with_checksum)[UDP].chksum != 0
    assert sad.unprotect(with_checksum, 0.0)[:2] == (Verdict.DELIVERED, pkt)
    plain = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=50) / esp)
    assert sad.unprotect(plain, 0.0)[0] is Verdict.REPLAY
    assert OutboundSa.outer_header_length(d) == 28


def test_udp_encap_port_from_inbound_sa() -> None:
    keys = _keys()
    sad = Sad()
    sad.install(params(GCM, keys, encap=(4500, 34567)), inbound=True, now=0.0)
    assert 34567 in sad.udp_encap_ports
    assert sad.unprotect(_udp(b"\xff", dport=34567), 0.0)[0] is Verdict.NAT_KEEPALIVE


@pytest.mark.parametrize("outer", [V4_OUTER, V6_OUTER], ids=["v4", "v6"])
def test_nat_keepalive_builder(outer: tuple[str, str]) -> None:
    d = nat_keepalive(*outer)
    ip = IPv6(d) if ":" in outer[0] else IP(d)
    assert bytes(ip[UDP].payload) == b"\xff" and ip[UDP].dport == 4500
    if ":" in outer[0]:
        c = ip[UDP].chksum
        del ip[UDP].chksum
        assert IPv6(bytes(ip))[UDP].chksum == c
    sad = Sad()
    assert sad.unprotect(d, 0.0)[0] is Verdict.NAT_KEEPALIVE


# --- hold queue ----------------------------------------------------------------------------------


def test_hold_queue_keep_last() -> None:
    q = HoldQueue(2)
    assert [q.put(b"1"), q.put(b"2"), q.put(b"3"), q.put(b"4")] == [0, 0, 1, 1]
    assert len(q) == 2 and q.drain() == [b"3", b"4"] and not q


def test_hold_queue_keep_first_and_zero() -> None:
    q = HoldQueue(1, "keep_first")
    assert [q.put(b"1"), q.put(b"2")] == [0, 1]
    assert q.clear() == 1 and len(q) == 0
    z = HoldQueue(0)
    assert z.put(b"x") == 1 and not z
    with pytest.raises(LocalProtocolError):
        HoldQueue(1, "keep_middle")  # type: ignore[arg-type]


def test_esp_header_offsets_v6() -> None:
    keys = _keys()
    _, out, _ = pair(params(GCM, keys, outer=V6_OUTER))
    _, d = out.protect(inner_packet(*V4_INNER), 0.0)
    assert struct.unpack_from(">II", d, 40) == (0x1001, 1)
    assert OutboundSa.outer_header_length(d) == 40
