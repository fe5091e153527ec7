"""The Child SA pairs our IKEv2 service hands over install in the driver and carry traffic
both ways: raw ESP, ESP in UDP when a NAT is seen (RFC 3948), AES-GCM and AES-CBC+HMAC, and
the pairs of a rekey."""

from __future__ import annotations

import struct

import pytest

from reference_impl.driver import Sad, Verdict
from reference_impl.events import ChildSaEstablished, ChildSaRekeyed
from reference_impl.sa import ChildSaPair

from .net import pair


def ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    def ip(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))

    udp = struct.pack("!HHHH", 1234, 5678, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, ip(src), ip(dst))
    csum = sum(struct.unpack("!10H", hdr))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + udp


def carry(pa: ChildSaPair, pb: ChildSaPair, encap: bool) -> None:
    sad_a, sad_b = Sad(), Sad()
    _, out_a = sad_a.install_pair(pa, 0.0)
    _, out_b = sad_b.install_pair(pb, 0.0)
    for out, rx, src, dst in (
        (out_a, sad_b, "10.1.0.1", "10.2.0.1"),
        (out_b, sad_a, "10.2.0.1", "10.1.0.1"),
    ):
        pkt = ipv4_udp(src, dst, b"hello through IKEv2 keys")
        verdict, wire = out.protect(pkt, 1.0)
        assert verdict == Verdict.DELIVERED
        assert (wire[9] == 17) == encap  # ESP in UDP 4500, or IP protocol 50
        v2, inner, _ = rx.unprotect(wire, 1.0)
        assert v2 == Verdict.DELIVERED and inner == pkt


@pytest.mark.parametrize("nat", [False, True], ids=["raw-esp", "esp-in-udp"])
@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256-sha256"])
def test_negotiated_pairs_carry_traffic(nat: bool, esp: str) -> None:
    net, a, b = pair(a_cfg={"esp": (esp,)}, b_cfg={"esp": (esp,), "force_encap": nat})
    a.service.initiate("ab", net.now)
    net.run(2)
    (ca,) = a.of(ChildSaEstablished)
    (cb,) = b.of(ChildSaEstablished)
    carry(ca.pair, cb.pair, nat)


def test_rekeyed_pairs_carry_traffic() -> None:
    net, a, b = pair(a_cfg={"esp": ("aes128gcm16-x25519",)}, b_cfg={"esp": ("aes128gcm16-x25519",)})
    a.service.initiate("ab", net.now)
    net.run(2)
    (sa_a,) = a.service.ike_sas()
    a.service.rekey_child(sa_a.children[0].inbound_spi, net.now)
    net.run(2)
    (ra,) = a.of(ChildSaRekeyed)
    (rb,) = b.of(ChildSaRekeyed)
    carry(ra.pair, rb.pair, False)
