"""What the policy agent hands to IKE, to the driver and to the node (sans-I/O outputs).

IKE (either version) receives :class:`Acquire` and :class:`CancelAcquire` /
:class:`DeleteChildSa` from ``PolicyAgent.next_request()`` and answers only with the events
of :mod:`reference_impl.events`; nothing here depends on the IKE version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from reference_impl.policy.packet import PacketMeta
from reference_impl.policy.resolved import AuthMethod, IkeSettings, SecurityMethod
from reference_impl.policy.spd import SaSelector
from reference_impl.sa import Address, Mode, TrafficSelector


@dataclass(frozen=True, slots=True)
class ChildSettings:
    """Quick-mode / Child SA parameters of the rule that triggered an ACQUIRE."""

    mode: Mode
    security_methods: tuple[SecurityMethod, ...]
    pfs: bool
    guarantee_encryption: bool = False


@dataclass(frozen=True, slots=True)
class Acquire:
    """Policy-spec §3.3 E1: "negotiate an SA for this selector" (RFC 4301 §5.1 step 3b).

    ``sa_selectors`` are the (local, remote) selectors of the SA to negotiate (PFP applied,
    §2.1 C4); ``packet_selectors`` describe the triggering packet (IKEv2 puts them first in
    TSi/TSr, RFC 7296 §2.9). ``peer``/``local`` are the IKE endpoints (UDP port from
    ``settings.ike``: 500, or 4500 for an IKEv2 start on 4500, §3.6 N2). IKE MUST send its
    first message within 100 ms of receiving this.
    """

    acquire_id: int
    rule: str
    sa_selector: SaSelector
    sa_selectors: tuple[TrafficSelector, TrafficSelector]
    packet_selectors: tuple[TrafficSelector, TrafficSelector]
    local: Address
    peer: Address
    ike_version: int
    ike: IkeSettings
    child: ChildSettings
    auth_methods: tuple[AuthMethod, ...]
    auth_set: str
    time: float


@dataclass(frozen=True, slots=True)
class CancelAcquire:
    """Stop the IKE attempt of ``acquire_id`` now: send nothing more for it (E5, E11)."""

    acquire_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeleteChildSa:
    """Delete a Child SA pair because the policy changed (E11, ``delete_affected_sas``)."""

    ike_sa_id: bytes
    inbound_spi: int
    outbound_spi: int
    reason: str


IkeRequest = Acquire | CancelAcquire | DeleteChildSa


class Transmit(NamedTuple):
    """A packet the node must put on the wire now (clear, or already protected).

    A named tuple, not a dataclass: one is made per forwarded packet (hot path)."""

    data: bytes
    protected: bool
    spi: int | None = None


@dataclass(frozen=True, slots=True)
class LocalIcmp:
    """An ICMP error for the local sender of a discarded packet (RFC 4301 §5.1.1).

    IPv4 type 3 code 1 (peer never contacted) / code 13 (administratively prohibited);
    IPv6 type 1 code 3 / code 1. Rate limited to one per second per destination.
    """

    icmp_type: int
    icmp_code: int
    original: bytes
    meta: PacketMeta
    time: float


@dataclass(frozen=True, slots=True)
class IcmpHint:
    """An ICMP error about one of our IKE datagrams (policy-spec E7): never authenticated.

    ``peer`` is where the quoted datagram went, ``local_port`` the port it left from and
    ``payload`` the start of its UDP payload (the IKE header: initiator SPI / cookie first,
    after the 4-octet non-ESP marker on port 4500). The node's ``udp.IcmpError`` maps 1:1.
    """

    peer: Address
    local_port: int
    icmp_type: int
    icmp_code: int
    payload: bytes
    offender: str = ""

    @property
    def initiator_spi(self) -> bytes:
        data = self.payload
        if (self.local_port == 4500 or self.peer[1] == 4500) and data[:4] == b"\0\0\0\0":
            data = data[4:]
        return data[:8] if len(data) >= 8 else b""

    @property
    def port_unreachable(self) -> bool:
        """IPv4 type 3 code 3 or IPv6 type 1 code 4 (RFC 792, RFC 4443)."""
        return (self.icmp_type, self.icmp_code) in ((3, 3), (1, 4))


class Verdict(StrEnum):
    """What happened to one packet handed to the agent."""

    BYPASS = "bypass"
    """Sent (outbound) or accepted (inbound) in clear."""
    PROTECTED = "protected"
    HELD = "held"
    DISCARDED = "discarded"
    ACCEPTED = "accepted"
    IKE = "ike"
    """IKE traffic (step 0): goes to or comes from the IKE daemon, unprotected."""


class OutboundSad(Protocol):
    """What the agent needs from the driver: protect a packet with an outbound SA.

    The agent keeps the map from SA selector to the SPIs IKE reported (``ChildSaEstablished``)
    and asks the driver to protect with the outbound SPI. ``None`` means the driver has no
    usable SA with that SPI any more (deleted, expired, sequence exhausted): the agent then
    treats the SA as lost (§3.2 "SA loss -> NO_SA").
    """

    def protect(self, spi: int, packet: bytes, now: float) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class ResponderPolicy:
    """The agent's answer when IKE, as responder, asks what to accept (policy-spec §4.5)."""

    rule: str
    local: TrafficSelector
    remote: TrafficSelector
    """Narrowed selectors (RFC 7296 §2.9): the matching entry intersected with the proposal."""
    mode: Mode
    security_methods: tuple[SecurityMethod, ...]
    pfs: bool
    auth_methods: tuple[AuthMethod, ...]
    default_response_rule: bool = False
    tunnel: tuple[str, str] | None = None
    notes: tuple[str, ...] = field(default=())
