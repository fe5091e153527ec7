"""What every SA in the SAD shares: identity, counters, lifetimes, drop accounting, options.

Lifetimes (RFC 4301 §4.4.2.1). Counters are checked after each packet: the packet that
reaches a soft limit raises one ``SaExpired(hard=False)`` (once per SA, whichever kind comes
first); the packet that reaches a hard limit is still processed and the SA then expires
(``SaExpired(hard=True)``), after which every packet on it is dropped with
``LIFETIME_EXPIRED`` (``SEQUENCE_EXHAUSTED`` when the sequence space ran out) until the SA is
deleted. Time limits are checked before each packet and by ``Sad.handle_timer``.

The per-packet fast paths compare three precomputed thresholds (``_next_packets`` or
``_next_seq``, ``_next_octets``, ``_next_time``) and take the slow path when one is reached;
the slow path does the exact bookkeeping and recomputes them. An SA whose crypto is not
prepared yet (preparation is lazy: 100,000 installed SAs must fit in little memory) or that
has expired keeps ``_next_time`` at minus infinity, so every packet takes the slow path.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from reference_impl.crypto import EncrAlgorithm, IntegAlgorithm, encr, integ
from reference_impl.crypto.ids import EncrId, IntegId
from reference_impl.driver.events import LifetimeKind, PacketDropped, SaExpired
from reference_impl.driver.selectors import SelectorMatcher
from reference_impl.driver.verdict import VERDICT_COUNT, Verdict
from reference_impl.errors import LocalProtocolError
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode

_NEVER = math.inf
_ALWAYS = -math.inf
_HUGE = 1 << 80
"""A packet or octet count no SA reaches."""

DfPolicy = Literal["copy", "set", "clear"]
EcnMode = Literal["normal", "compat"]


@dataclass(frozen=True, slots=True)
class SaOptions:
    """Driver-side knobs of one SA that IKE does not negotiate (all default to RFC behaviour).

    ``tfc_pad_to``: tunnel-mode ESP pads inner packets shorter than this with TFC padding
    (RFC 4303 §2.7), only when the peer did not send ESP_TFC_PADDING_NOT_SUPPORTED.
    ``check_padding``: inbound ESP checks the padding octets are 1, 2, 3, ... (RFC 4303 §2.4
    SHOULD). ``df``: the outer IPv4 DF bit in tunnel mode, copied from an inner IPv4 packet,
    set or cleared (RFC 4301 §8.1). ``dscp``: ``None`` copies the inner DSCP to the outer
    header (RFC 4301 §5.1.2.1), an int sets it. ``ecn``: RFC 6040 normal mode (copy the inner
    ECN field outward) or compatibility mode (outer Not-ECT); decapsulation always follows
    RFC 6040 §4.2. ``ttl``: the outer TTL / hop limit in tunnel mode. ``seq_rekey_margin``:
    how many sequence numbers before the counter would cycle the soft ``SEQUENCE`` event
    fires (None: 2^24 without ESN, 2^32 with). ``check_selectors``: inbound, the decapsulated
    packet must match the SA's selectors (RFC 4301 §5.2 step 4: a MUST; off only for
    negative testing).
    """

    tfc_pad_to: int = 0
    check_padding: bool = True
    check_selectors: bool = True
    df: DfPolicy = "copy"
    dscp: int | None = None
    ecn: EcnMode = "normal"
    ttl: int = 64
    seq_rekey_margin: int | None = None

    def __post_init__(self) -> None:
        if self.df not in ("copy", "set", "clear"):
            raise LocalProtocolError(f"unknown DF policy {self.df!r}")
        if self.ecn not in ("normal", "compat"):
            raise LocalProtocolError(f"unknown ECN mode {self.ecn!r}")
        if self.dscp is not None and not 0 <= self.dscp < 64:
            raise LocalProtocolError(f"DSCP {self.dscp} out of range")
        if not 0 < self.ttl < 256:
            raise LocalProtocolError(f"TTL {self.ttl} out of range")
        if self.tfc_pad_to < 0 or self.tfc_pad_to > 65535:
            raise LocalProtocolError(f"TFC padding target {self.tfc_pad_to} out of range")


DEFAULT_OPTIONS = SaOptions()


class DriverContext:
    """What the SAs of one SAD share: the event queue, global drop counters and the audit log."""

    __slots__ = ("audit", "audit_lost", "drops", "events")

    def __init__(self, audit_limit: int) -> None:
        self.events: deque[SaExpired] = deque()
        self.drops = [0] * VERDICT_COUNT
        """Global counters indexed by ``Verdict`` (absorbed verdicts are counted too)."""
        self.audit: deque[PacketDropped] = deque(maxlen=audit_limit or None)
        self.audit_lost = 0
        """Audit records pushed out of the bounded log."""


def packet_addresses(d: bytes) -> tuple[bytes, bytes, int]:
    """(source, destination, protocol) of an IP packet for audit records, best effort."""
    if len(d) >= 20 and d[0] >> 4 == 4:
        return d[12:16], d[16:20], d[9]
    if len(d) >= 40 and d[0] >> 4 == 6:
        return d[8:24], d[24:40], d[6]
    return b"", b"", 0


def encryption_algorithm(params: ChildSaParams) -> EncrAlgorithm | None:
    if params.encr_id is None:
        return None
    alg = encr(params.encr_id, params.encr_key_bits)
    if not alg.supported:
        raise LocalProtocolError(f"encryption transform {alg.name} is refused")
    if len(params.encr_key) != alg.key_len:
        raise LocalProtocolError(
            f"{alg.name} needs {alg.key_len} octets of key, got {len(params.encr_key)}"
        )
    return alg


def integrity_algorithm(params: ChildSaParams) -> IntegAlgorithm | None:
    if params.integ_id is None or params.integ_id == IntegId.NONE:
        return None
    alg = integ(params.integ_id)
    if len(params.integ_key) != alg.key_len:
        raise LocalProtocolError(
            f"{alg.name} needs {alg.key_len} octets of key, got {len(params.integ_key)}"
        )
    return alg


class SecurityAssociation:
    """One direction of one IPsec SA in the SAD (RFC 4301 §4.4.2).

    Read-only for users: ``params`` (what IKE installed), ``spi``, ``protocol``, ``mode``,
    ``inbound``, ``packets``/``octets`` processed, ``drops`` (per-``Verdict`` counts or
    None before the first one), ``expired`` (the hard-lifetime kind once dead),
    ``soft_expired``, ``installed`` (time of installation).
    """

    __slots__ = (
        "_ctx",
        "_drops",
        "_next_octets",
        "_next_packets",
        "_next_time",
        "_packets",
        "_prepared",
        "expired",
        "inbound",
        "installed",
        "mode",
        "octets",
        "options",
        "params",
        "protocol",
        "selectors",
        "soft_expired",
        "spi",
    )

    def __init__(
        self,
        params: ChildSaParams,
        inbound: bool,
        now: float,
        ctx: DriverContext,
        options: SaOptions,
    ) -> None:
        if not 0 < params.spi <= 0xFFFFFFFF or params.spi <= 255:
            # RFC 4303 §2.1: 1..255 are reserved by IANA, 0 is never sent.
            raise LocalProtocolError(f"SPI {params.spi:#x} is reserved or out of range")
        self.params = params
        self.spi = params.spi
        self.protocol = IpsecProtocol(params.protocol)
        self.mode = Mode(params.mode)
        self.inbound = inbound
        self.options = options
        self.installed = now
        self._packets = 0
        self.octets = 0
        self._drops: list[int] | None = None
        self.soft_expired = False
        self.expired: LifetimeKind | None = None
        self.selectors = SelectorMatcher(params.ts_src, params.ts_dst)
        self._ctx = ctx
        self._prepared = False
        self._next_time = _ALWAYS
        self._next_packets = 0
        self._next_octets = 0
        self._recompute()

    # --- counters and audit --------------------------------------------------------------------

    @property
    def drops(self) -> dict[Verdict, int]:
        """Per-SA counts of every non-delivered verdict."""
        if self._drops is None:
            return {}
        return {Verdict(i): n for i, n in enumerate(self._drops) if n}

    def _count(self, verdict: Verdict) -> None:
        d = self._drops
        if d is None:
            d = self._drops = [0] * VERDICT_COUNT
        d[verdict] += 1
        self._ctx.drops[verdict] += 1

    def _drop(
        self, verdict: Verdict, d: bytes, now: float, seq: int | None = None, detail: str = ""
    ) -> Verdict:
        """Count a dropped packet on this SA and globally, and audit it (RFC 4301 §5.2)."""
        self._count(verdict)
        if verdict >= Verdict.NO_SA:
            ctx = self._ctx
            src, dst, proto = packet_addresses(d)
            audit = ctx.audit
            if audit.maxlen is not None and len(audit) == audit.maxlen:
                ctx.audit_lost += 1
            audit.append(PacketDropped(verdict, now, proto, self.spi, src, dst, seq, detail))
        return verdict

    # --- lifetimes --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Build the per-SA crypto state (subclasses); called on the first packet."""
        self._prepared = True

    def _recompute(self) -> None:
        """Recompute the fast-path thresholds from the lifetimes and the state."""
        if self.expired is not None or not self._prepared:
            self._next_time = _ALWAYS
            self._next_packets = 0
            self._next_octets = 0
            return
        lt = self.params.lifetime
        soft = not self.soft_expired
        t = lt.soft_seconds if soft and lt.soft_seconds is not None else lt.hard_seconds
        if soft and lt.hard_seconds is not None and t is not None:
            t = min(t, lt.hard_seconds)
        self._next_time = self.installed + t if t is not None else _NEVER
        self._next_packets = _threshold(lt.soft_packets if soft else None, lt.hard_packets)
        self._next_octets = _threshold(lt.soft_bytes if soft else None, lt.hard_bytes)

    def _expire(self, kind: LifetimeKind, now: float) -> None:
        if self.expired is None:
            self.expired = kind
            self._ctx.events.append(
                SaExpired(self.protocol, self.spi, self.inbound, True, kind, now)
            )
            self._recompute()

    def _soft(self, kind: LifetimeKind, now: float) -> None:
        if not self.soft_expired and self.expired is None:
            self.soft_expired = True
            self._ctx.events.append(
                SaExpired(self.protocol, self.spi, self.inbound, False, kind, now)
            )
            self._recompute()

    def check_time(self, now: float) -> None:
        """Raise the time-based lifetime events due at ``now`` (also ``Sad.handle_timer``)."""
        if self.expired is not None:
            return
        if not self._prepared:
            self._prepare()
            self._recompute()
        lt = self.params.lifetime
        age = now - self.installed
        if lt.soft_seconds is not None and age >= lt.soft_seconds:
            self._soft(LifetimeKind.SECONDS, now)
        if lt.hard_seconds is not None and age >= lt.hard_seconds:
            self._expire(LifetimeKind.SECONDS, now)

    def deadline(self) -> float | None:
        """The next time ``check_time`` has something to do, or None."""
        if self.expired is not None:
            return None
        lt = self.params.lifetime
        times = [lt.hard_seconds]
        if not self.soft_expired:
            times.append(lt.soft_seconds)
        pending = [self.installed + t for t in times if t is not None]
        return min(pending) if pending else None

    @property
    def packets(self) -> int:
        """Packets processed (delivered or sent) on this SA."""
        return self._packets

    def _account(self, octets: int, now: float) -> None:
        """Count one processed packet and raise the count-based lifetime events it reaches."""
        p = self._packets = self._packets + 1
        b = self.octets = self.octets + octets
        if p >= self._next_packets or b >= self._next_octets:
            self._check_counts(p, b, now)

    def _check_counts(self, p: int, b: int, now: float) -> None:
        if p >= self._next_packets or b >= self._next_octets:
            lt = self.params.lifetime
            if lt.soft_packets is not None and p >= lt.soft_packets:
                self._soft(LifetimeKind.PACKETS, now)
            if lt.soft_bytes is not None and b >= lt.soft_bytes:
                self._soft(LifetimeKind.BYTES, now)
            if lt.hard_packets is not None and p >= lt.hard_packets:
                self._expire(LifetimeKind.PACKETS, now)
            if lt.hard_bytes is not None and b >= lt.hard_bytes:
                self._expire(LifetimeKind.BYTES, now)

    def _usable(self, now: float) -> Verdict | None:
        """Slow-path gate before processing a packet: prepare, check time, refuse if dead."""
        if not self._prepared:
            self._prepare()
            self._recompute()
        if self.expired is None and now >= self._next_time:
            self.check_time(now)
        if self.expired is None:
            return None
        if self.expired is LifetimeKind.SEQUENCE:
            return Verdict.SEQUENCE_EXHAUSTED
        return Verdict.LIFETIME_EXPIRED

    def __repr__(self) -> str:
        direction = "in" if self.inbound else "out"
        return (
            f"<{type(self).__name__} {self.protocol.name} {direction} spi={self.spi:#010x} "
            f"{self.mode} {self.params.src}->{self.params.dst}>"
        )


def _threshold(soft: int | None, hard: int | None) -> int:
    vals = [v for v in (soft, hard) if v is not None]
    return min(vals) if vals else _HUGE


def describe_algorithms(params: ChildSaParams) -> str:
    """strongSwan-style suite name, e.g. ``AES_GCM_16_128`` or ``AES_CBC_128/HMAC_SHA2_256_128``."""
    parts = []
    if params.encr_id is not None:
        parts.append(encr(params.encr_id, params.encr_key_bits).name)
    if params.integ_id not in (None, IntegId.NONE):
        parts.append(integ(params.integ_id).name)
    if params.esn:
        parts.append("ESN")
    return "/".join(parts)


AEAD_16 = frozenset({EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305, EncrId.ENCR_AES_CCM_16})
