"""Typed settings of the IKEv1 service (one :class:`IsakmpSettings` per node).

Defaults follow strongSwan 5.9 where interop depends on them (lifetimes, vendor IDs, NAT-T),
and the project's reference retransmission schedule (policy-spec §3.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reference_impl.errors import LocalProtocolError
from reference_impl.isakmp.constants import AuthMethod
from reference_impl.isakmp.identity import Identity
from reference_impl.isakmp.proposals import Phase1Transform, Phase2Transform
from reference_impl.retransmit import REFERENCE_SCHEDULE, RetransmitSchedule
from reference_impl.sa import Mode, TrafficSelector


@dataclass(frozen=True, slots=True)
class PskAuth:
    """Pre-shared key authentication (RFC 2409 §5.4)."""

    psk: bytes

    @property
    def method(self) -> int:
        return AuthMethod.PRE_SHARED_KEY


@dataclass(frozen=True, slots=True)
class RsaAuth:
    """RSA signature authentication with X.509 certificates (RFC 2409 §5.1).

    ``certificate`` and ``private_key`` are DER (or PEM); ``trusted`` are the CA certificates
    (DER or PEM) a peer's certificate must be issued by; an empty tuple with ``peer_certificate``
    set pins the peer's certificate instead.
    """

    certificate: bytes
    private_key: bytes
    trusted: tuple[bytes, ...] = ()
    peer_certificate: bytes | None = None
    send_cert: bool = True

    @property
    def method(self) -> int:
        return AuthMethod.RSA_SIGNATURES


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """One phase-2 (IPsec SA) configuration, negotiated with Quick Mode (RFC 2409 §5.5)."""

    name: str
    local_ts: TrafficSelector
    remote_ts: TrafficSelector
    transforms: tuple[Phase2Transform, ...]
    mode: Mode = Mode.TUNNEL
    pfs_group: int | None = None
    life_seconds: int = 3600
    life_kilobytes: int | None = None
    rekey_margin: float = 540.0
    """Seconds before the hard lifetime at which the Quick Mode initiator rekeys."""
    replay_window: int = 64

    def __post_init__(self) -> None:
        if not self.transforms:
            raise LocalProtocolError(f"child {self.name!r} has no transforms")
        if self.rekey_margin >= self.life_seconds:
            raise LocalProtocolError("rekey margin must be shorter than the lifetime")


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """One IKEv1 peer: phase-1 parameters and its children."""

    name: str
    local_addr: str
    remote_addr: str
    """The peer's address; ``"%any"`` lets a responder accept any address."""
    local_id: Identity
    auth: PskAuth | RsaAuth
    proposals: tuple[Phase1Transform, ...]
    children: tuple[ChildConfig, ...] = ()
    remote_id: Identity | None = None
    """None accepts any authenticated identity."""
    aggressive: bool = False
    life_seconds: int = 14400
    rekey_margin: float = 1440.0
    dpd_delay: float | None = 30.0
    """Idle seconds before an R-U-THERE (RFC 3706 §5.3); None disables DPD probing."""
    nat_traversal: bool = True
    force_encap: bool = False
    """Fake a NAT (a bogus NAT-D source hash) to force UDP encapsulation, as strongSwan
    with kernel-libipsec does."""
    send_initial_contact: bool = True
    port: int = 500
    """The peer's IKE port."""

    def __post_init__(self) -> None:
        if not self.proposals:
            raise LocalProtocolError(f"connection {self.name!r} has no phase-1 proposals")
        for p in self.proposals:
            if p.auth_method != self.auth.method:
                raise LocalProtocolError("proposal auth method differs from the auth setting")
        if self.aggressive and len({p.group for p in self.proposals}) != 1:
            raise LocalProtocolError("Aggressive Mode proposals must share one DH group")

    def child(self, name: str) -> ChildConfig:
        for c in self.children:
            if c.name == name:
                return c
        raise LocalProtocolError(f"connection {self.name!r} has no child {name!r}")


@dataclass(frozen=True, slots=True)
class IsakmpSettings:
    """Node-wide IKEv1 settings."""

    connections: tuple[ConnectionConfig, ...]
    retransmit: RetransmitSchedule = REFERENCE_SCHEDULE
    allow_aggressive_psk: bool = False
    """Answer Aggressive Mode with PSK as responder (strongSwan's
    ``i_dont_care_about_security_and_use_aggressive_mode_psk``); refused by default."""
    half_open_timeout: float = 30.0
    """A responder forgets an unfinished phase 1 after this long (strongSwan's default)."""
    natt_keepalive: float | None = 20.0
    """Seconds between NAT-T keepalives when we are behind a NAT (RFC 3948 §2.3; strongSwan's
    ``keep_alive``); None disables them."""
    send_vendor_ids: tuple[bytes, ...] = field(default=())
    """Extra vendor IDs for MM1/MM2 (the DPD and NAT-T ones are sent automatically)."""

    def connection(self, name: str) -> ConnectionConfig:
        for c in self.connections:
            if c.name == name:
                return c
        raise LocalProtocolError(f"no connection {name!r}")
