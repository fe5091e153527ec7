"""Types at the seam between IKE (either version), the driver and the policy agent.

IKEv2 and IKEv1 both describe what they negotiated with these types, so the driver and the
policy agent never care which IKE version made an SA (ARCHITECTURE.md, seed steps 5-7).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Address = tuple[str, int]
"""A UDP endpoint: (IP address as text, port)."""


class IpsecProtocol(IntEnum):
    """Security protocol identifiers (RFC 7296 §3.3.1 Protocol ID; IKEv1 uses 2/3 likewise)."""

    IKE = 1
    AH = 2
    ESP = 3


class Mode(StrEnum):
    """Encapsulation mode of a Child SA (RFC 4301 §4.1)."""

    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class TsType(IntEnum):
    """Traffic selector types (RFC 7296 §3.13.1)."""

    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One traffic selector: an address range, an IP protocol and a port range.

    RFC 7296 §3.13.1. ``ip_protocol`` 0 means any protocol; the port range 0-65535 means any
    port. For ICMP the "ports" are type and code as in RFC 4301 §4.4.1.1.
    """

    start_addr: IPAddress
    end_addr: IPAddress
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> TsType:
        if self.start_addr.version == 4:
            return TsType.TS_IPV4_ADDR_RANGE
        return TsType.TS_IPV6_ADDR_RANGE

    @classmethod
    def from_network(
        cls, network: str, ip_protocol: int = 0, start_port: int = 0, end_port: int = 65535
    ) -> TrafficSelector:
        """A selector covering a prefix, e.g. ``TrafficSelector.from_network("10.1.0.0/24")``."""
        net = ipaddress.ip_network(network, strict=False)
        return cls(net.network_address, net.broadcast_address, ip_protocol, start_port, end_port)

    def contains(self, addr: IPAddress, ip_protocol: int = 0, port: int | None = None) -> bool:
        """Whether a packet's address, protocol and port fall within this selector."""
        if addr.version != self.start_addr.version:
            return False
        if not (self.start_addr <= addr <= self.end_addr):  # type: ignore[operator]
            return False
        if self.ip_protocol and ip_protocol != self.ip_protocol:
            return False
        return port is None or self.start_port <= port <= self.end_port

    def __str__(self) -> str:
        if self.start_addr == self.end_addr:
            addr = str(self.start_addr)
        else:
            addr = f"{self.start_addr}-{self.end_addr}"
        proto = f"[{self.ip_protocol}" if self.ip_protocol else "["
        if (self.start_port, self.end_port) == (0, 65535):
            ports = ""
        elif self.start_port == self.end_port:
            ports = f"/{self.start_port}"
        else:
            ports = f"/{self.start_port}-{self.end_port}"
        return f"{addr}{proto}{ports}]" if (self.ip_protocol or ports) else addr


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft and hard lifetimes of an SA (RFC 4301 §4.4.2.1); ``None`` means no limit."""

    soft_seconds: float | None = None
    hard_seconds: float | None = None
    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaParams:
    """Everything the driver needs to install one direction of a Child SA (an IPsec SA).

    Keys are as IKE derived them (RFC 7296 §2.17, RFC 2409 §5.5): for AEAD and counter-mode
    ciphers ``encr_key`` includes the salt/nonce octets at its end (RFC 4106 §8.1, RFC 3686
    §5.1, RFC 7634 §2), exactly as strongSwan logs it and Wireshark wants it.
    ``encr_id``/``integ_id`` are IKEv2 transform IDs (IANA "Transform Type 1/3"); IKEv1
    negotiations map their attribute values onto the same IDs.
    """

    spi: int
    protocol: IpsecProtocol
    mode: Mode
    src: str
    """Outer source address of packets on this SA."""
    dst: str
    """Outer destination address of packets on this SA."""
    encr_id: int | None = None
    encr_key_bits: int | None = None
    encr_key: bytes = b""
    integ_id: int | None = None
    integ_key: bytes = b""
    esn: bool = False
    encap: tuple[int, int] | None = None
    """UDP encapsulation (RFC 3948): (source port, destination port), or ``None`` for raw ESP."""
    ts_src: tuple[TrafficSelector, ...] = ()
    """Selectors for inner source addresses of packets on this SA."""
    ts_dst: tuple[TrafficSelector, ...] = ()
    """Selectors for inner destination addresses of packets on this SA."""
    lifetime: Lifetime = field(default_factory=Lifetime)
    replay_window: int = 64
    tfc_padding: bool = True
    """False when the peer sent ESP_TFC_PADDING_NOT_SUPPORTED (RFC 7296 §3.10.1)."""


@dataclass(frozen=True, slots=True)
class ChildSaPair:
    """The two SAs of one negotiated Child SA, seen from the local end."""

    inbound: ChildSaParams
    outbound: ChildSaParams
    ike_sa_id: bytes
    """IKEv2: SPIi|SPIr (16 octets); IKEv1: CKY-I|CKY-R."""
    ike_version: int
    name: str = ""
    """The configuration (connection/rule) name this Child SA was negotiated for."""
    acquire_id: int | None = None
    """The ACQUIRE this answers, when the policy agent asked for it."""
