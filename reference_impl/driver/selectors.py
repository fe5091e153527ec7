"""Traffic selectors compiled to integer ranges for per-packet checks (RFC 4301 §4.4.1.1,
§5.2 step 4; RFC 7296 §2.9 and §3.13.1).

A packet matches an SA's selectors when its source matches one of ``ts_src`` and its
destination one of ``ts_dst`` (each with that selector's protocol and port range). An empty
tuple means "any". Ports that cannot be known (non-first fragments, truncated transport
headers) only match full port ranges (RFC 4301 §4.4.1.1 OPAQUE handling).
"""

from __future__ import annotations

from collections.abc import Sequence

from reference_impl.driver.packet import Flow
from reference_impl.sa import TrafficSelector

_Range = tuple[int, int, int, int, int, int]
"""(version, first address, last address, protocol (0 = any), first port, last port)."""


def _compile(ts: TrafficSelector) -> _Range:
    return (
        ts.start_addr.version,
        int(ts.start_addr),
        int(ts.end_addr),
        ts.ip_protocol,
        ts.start_port,
        ts.end_port,
    )


def _side_matches(
    ranges: tuple[_Range, ...], version: int, addr: int, proto: int, port: int | None
) -> bool:
    if not ranges:
        return True
    for v, lo, hi, p, plo, phi in ranges:
        if v != version or not lo <= addr <= hi:
            continue
        if p and p != proto:
            continue
        if port is None:
            if plo == 0 and phi == 65535:
                return True
            continue
        if plo <= port <= phi:
            return True
    return False


_EMPTY: tuple[_Range, ...] = ()


class SelectorMatcher:
    """The compiled selectors of one SA (kept small: a large SAD holds one per SA)."""

    __slots__ = ("_dst", "_src", "simple")

    def __init__(
        self, ts_src: Sequence[TrafficSelector], ts_dst: Sequence[TrafficSelector]
    ) -> None:
        src = tuple(_compile(t) for t in ts_src) if ts_src else _EMPTY
        dst = tuple(_compile(t) for t in ts_dst) if ts_dst else _EMPTY
        self.simple: tuple[int, int, int, int, int] | None = None
        """(version, src first, src last, dst first, dst last) when the selectors are one
        address range per side with any protocol and any port: the fast paths then compare
        two integers against two ranges. Only this tuple is kept then."""
        if len(src) == 1 and len(dst) == 1:
            sv, slo, shi, sp, splo, sphi = src[0]
            dv, dlo, dhi, dp, dplo, dphi = dst[0]
            full = (splo, sphi, dplo, dphi) == (0, 65535, 0, 65535)
            if sv == dv and not sp and not dp and full:
                self.simple = (sv, slo, shi, dlo, dhi)
                src = dst = _EMPTY
        self._src = src
        self._dst = dst

    @property
    def match_all(self) -> bool:
        """True when there is nothing to check."""
        return self.simple is None and not self._src and not self._dst

    def matches(self, flow: Flow) -> bool:
        simple = self.simple
        if simple is not None:
            v, slo, shi, dlo, dhi = simple
            return flow.version == v and slo <= flow.src <= shi and dlo <= flow.dst <= dhi
        return _side_matches(
            self._src, flow.version, flow.src, flow.protocol, flow.sport
        ) and _side_matches(self._dst, flow.version, flow.dst, flow.protocol, flow.dport)
