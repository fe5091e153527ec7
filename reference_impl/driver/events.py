"""Events the driver hands to IKE and the policy agent (``Sad.next_event()``), and audit records.

Lifetime events follow RFC 4301 §4.4.2.1: a *soft* expiry asks key management to rekey, a
*hard* expiry ends the SA (it stays in the SAD, dropping with ``LIFETIME_EXPIRED``, until it is
deleted). Sequence-number exhaustion (RFC 4303 §3.3.3) is reported the same way with
``LifetimeKind.SEQUENCE``: soft a configurable margin before the counter would cycle, hard when
the last number has been used.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from reference_impl.driver.verdict import Verdict
from reference_impl.sa import IpsecProtocol


class LifetimeKind(StrEnum):
    SECONDS = "seconds"
    BYTES = "bytes"
    PACKETS = "packets"
    SEQUENCE = "sequence"
    """The outbound sequence number is about to cycle (soft) or has no value left (hard)."""


@dataclass(frozen=True, slots=True)
class SaExpired:
    """An SA reached a soft or hard lifetime (RFC 4301 §4.4.2.1)."""

    protocol: IpsecProtocol
    spi: int
    inbound: bool
    hard: bool
    kind: LifetimeKind
    time: float


DriverEvent = SaExpired


def _addr(raw: bytes) -> str:
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    return raw.hex()


@dataclass(frozen=True, slots=True)
class PacketDropped:
    """An audit record of one dropped packet (RFC 4301 §5.2 step 3a: date/time, SPI, source
    and destination, protocol; the sequence number when it is a replay).

    Addresses are kept as packed octets so that a flood of drops costs no formatting; read
    ``src``/``dst`` for text.
    """

    verdict: Verdict
    time: float
    ip_protocol: int
    """IP protocol of the outer packet: 50 (ESP), 51 (AH), 17 (ESP-in-UDP), 0 if unknown."""
    spi: int | None
    src_raw: bytes
    dst_raw: bytes
    seq: int | None = None
    detail: str = ""

    @property
    def src(self) -> str:
        return _addr(self.src_raw)

    @property
    def dst(self) -> str:
        return _addr(self.dst_raw)
