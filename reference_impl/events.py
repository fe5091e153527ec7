"""Events that IKE (either version) hands to the driver and the policy agent.

Frozen dataclasses, returned by ``next_event()`` of the IKE state machines (the aioquic
style). The policy agent relies on three facts from them: an SA pair arrived (E8), the peer
replied at all (E4, "any IKE reply rules out fallback to clear"), and why a negotiation failed
(E6). Spec: ../shared/design/policy-spec.md §3.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reference_impl.sa import Address, ChildSaPair, IpsecProtocol


class FailureReason(StrEnum):
    PEER_SILENT = "peer_silent"
    """No reply to an exchange within the retransmission schedule."""
    NO_PROPOSAL_CHOSEN = "no_proposal_chosen"
    INVALID_KE_PAYLOAD = "invalid_ke_payload"
    AUTHENTICATION_FAILED = "authentication_failed"
    TS_UNACCEPTABLE = "ts_unacceptable"
    INVALID_SYNTAX = "invalid_syntax"
    PROTOCOL_ERROR = "protocol_error"
    """Any other error notify or an inconsistent reply (the detail says which)."""
    LOCAL_ERROR = "local_error"


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every IKE event."""


@dataclass(frozen=True, slots=True)
class PeerReplied(Event):
    """The first syntactically valid IKE reply carrying our initiator SPI/cookie (spec E4).

    Emitted once per attempt, for authenticated and unauthenticated replies alike (a
    NO_PROPOSAL_CHOSEN or INVALID_KE_PAYLOAD notify counts). ICMP never produces it.
    """

    ike_sa_id: bytes
    peer: Address
    acquire_id: int | None = None


@dataclass(frozen=True, slots=True)
class IkeSaEstablished(Event):
    ike_sa_id: bytes
    ike_version: int
    local: Address
    peer: Address
    local_id: str
    peer_id: str
    algorithms: str
    """Negotiated suite in strongSwan's notation, e.g. ``AES_CBC_256/HMAC_SHA2_256_128/...``."""
    initiator: bool


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed(Event):
    old_ike_sa_id: bytes
    new_ike_sa_id: bytes


@dataclass(frozen=True, slots=True)
class IkeSaDeleted(Event):
    ike_sa_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ChildSaEstablished(Event):
    """A new Child SA pair to install (spec E8)."""

    pair: ChildSaPair


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed(Event):
    """A rekeyed pair: install ``pair``; the old SAs stay until a ``ChildSaDeleted`` for them."""

    pair: ChildSaPair
    old_inbound_spi: int
    old_outbound_spi: int


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(Event):
    protocol: IpsecProtocol
    inbound_spi: int
    outbound_spi: int
    reason: str


@dataclass(frozen=True, slots=True)
class NegotiationFailed(Event):
    """An IKE or Child SA negotiation failed (spec E6).

    ``peer_replied`` tells the policy agent whether the peer ever answered this attempt.
    """

    reason: FailureReason
    detail: str
    peer: Address
    peer_replied: bool
    ike_sa_id: bytes = b""
    acquire_id: int | None = None
    notify: int | None = None
