"""Interop with an independent implementation: scapy's ``SecurityAssociation`` decrypts what
we protect and we unprotect what it encrypts, for every algorithm both support, ESP and AH,
tunnel (4in4, 6in6, 4in6, 6in4) and transport (v4, v6), with and without ESN, and ESP in UDP
(RFC 3948)."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6

from reference_impl.driver import Verdict
from reference_impl.sa import Mode

from .helpers import (
    AH_SUITES,
    ESP_SUITES,
    V4_INNER,
    V4_OUTER,
    V6_INNER,
    V6_OUTER,
    Suite,
    inner_packet,
    keys_for,
    pair,
    params,
    scapy_sa,
)

LAYOUTS = {
    "tunnel-4in4": (Mode.TUNNEL, V4_OUTER, V4_INNER),
    "tunnel-6in6": (Mode.TUNNEL, V6_OUTER, V6_INNER),
    "tunnel-4in6": (Mode.TUNNEL, V6_OUTER, V4_INNER),
    "tunnel-6in4": (Mode.TUNNEL, V4_OUTER, V6_INNER),
    "transport-v4": (Mode.TRANSPORT, V4_OUTER, V4_OUTER),
    "transport-v6": (Mode.TRANSPORT, V6_OUTER, V6_OUTER),
}

HIGH = 7
"""ESN runs start in the 8th sequence-number subspace, just below its end."""


def _ip(d: bytes) -> IP | IPv6:
    return IPv6(d) if d[0] >> 4 == 6 else IP(d)


def _roundtrip(suite: Suite, layout: str, esn: bool, encap: tuple[int, int] | None = None) -> None:
    mode, outer, inner = LAYOUTS[layout]
    rng = random.Random(f"{suite.name}/{layout}/{esn}")
    keys = keys_for(suite, rng)
    p = params(suite, keys, mode=mode, outer=outer, inner=inner, esn=esn, encap=encap)
    sad, out, inn = pair(p)
    sc = scapy_sa(suite, keys, p, esn_high=HIGH if esn else 0)
    first_low = 0xFFFFFF00
    if esn:
        out.set_next_seq((HIGH << 32) | first_low)
        inn.window.reset_window((HIGH << 32) | (first_low - 1))  # type: ignore[union-attr]
    low = first_low
    for size in (0, 3, 1400):
        pkt = inner_packet(*inner, size, rng=rng)
        # ours -> scapy
        verdict, datagram = out.protect(pkt, 1.0)
        assert verdict is Verdict.DELIVERED
        assert bytes(sc.decrypt(_ip(datagram))) == pkt
        # scapy -> ours (sequence numbers continue above what we sent ourselves)
        low += 1
        enc = bytes(sc.encrypt(_ip(pkt), seq_num=low + 0x10))
        verdict, got, sa = sad.unprotect(enc, 1.0)
        assert (verdict, got) == (Verdict.DELIVERED, pkt)
        assert sa is inn
    assert inn.packets == 3


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("suite", [s for s in ESP_SUITES if s.scapy_ok], ids=lambda s: s.name)
def test_esp_interop(suite: Suite, layout: str, esn: bool) -> None:
    _roundtrip(suite, layout, esn)


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("suite", AH_SUITES, ids=lambda s: s.name)
def test_ah_interop(suite: Suite, layout: str, esn: bool) -> None:
    _roundtrip(suite, layout, esn)


@pytest.mark.parametrize("layout", ["tunnel-4in4", "transport-v4", "tunnel-6in6"])
@pytest.mark.parametrize(
    "suite", [ESP_SUITES[0], ESP_SUITES[8], ESP_SUITES[6]], ids=lambda s: s.name
)
def test_esp_in_udp_interop(suite: Suite, layout: str) -> None:
    """RFC 3948 §2.1 both ways (scapy's nat_t_header); UDP 4500 to 4500."""
    _roundtrip(suite, layout, False, encap=(4500, 4500))
