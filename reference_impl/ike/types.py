"""Small types shared by the IKE SA and the service: datagrams out, Child SA state, NAT-D."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from hashlib import sha1
from typing import NamedTuple

from reference_impl.ike.config import ChildConfig
from reference_impl.ike.proposals import Selected
from reference_impl.sa import Address, ChildSaPair, IpsecProtocol, Mode, TrafficSelector


class Datagram(NamedTuple):
    """One UDP datagram for the I/O layer to send.

    ``src`` is the local (address, port) to send from: the port says which socket (IKE or
    NAT-T). ``marker``: prefix the 4-octet non-ESP marker (RFC 3948 §2.2), true for every IKE
    message sent on the NAT-T port; false for NAT-T keepalives (one octet 0xFF, §2.3).
    """

    data: bytes
    src: Address
    dst: Address
    marker: bool = False


class IkeState(IntEnum):
    INIT_SENT = 1
    """Initiator: IKE_SA_INIT request sent."""
    AUTH_SENT = 2
    """Initiator: IKE_AUTH request sent."""
    HALF_OPEN = 3
    """Responder: IKE_SA_INIT answered, waiting for IKE_AUTH."""
    ESTABLISHED = 4
    REKEYED = 5
    """Replaced by a new IKE SA (RFC 7296 §2.18); waiting for / sending its Delete."""
    DELETING = 6
    CLOSED = 7
    """Gone; kept for a while only to answer retransmitted requests from the cache."""


class ChildState(IntEnum):
    INSTALLED = 1
    REKEYING = 2
    REKEYED = 3
    DELETING = 4
    DELETED = 5


@dataclass(slots=True, eq=False)
class ChildSa:
    """One negotiated Child SA pair as the IKE SA tracks it."""

    config: ChildConfig
    selected: Selected
    inbound_spi: int
    outbound_spi: int
    protocol: IpsecProtocol
    mode: Mode
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    pair: ChildSaPair
    created: float
    nonces: tuple[bytes, bytes]
    """(Ni, Nr) of the exchange that created it, for simultaneous rekey (RFC 7296 §2.8.1)."""
    we_initiated: bool
    state: ChildState = ChildState.INSTALLED
    rekey_at: float | None = None
    expire_at: float | None = None
    collision: ChildSa | None = None
    """The peer's replacement, created while our own rekey of this SA was outstanding."""
    rekey_retry: int = 0
    acquire_id: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


@lru_cache(maxsize=1024)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def natd_hash(spi_i: bytes, spi_r: bytes, address: Address) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port), the NAT detection hash (RFC 7296 §2.23).

    A public, keyless hash of public values (no secret goes in), so the standard library's
    SHA-1 is used directly rather than a prepared registry object.
    """
    return sha1(spi_i + spi_r + _packed(address[0]) + address[1].to_bytes(2, "big")).digest()
