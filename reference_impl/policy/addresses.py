"""Address, protocol and port tokens of the policy language, and their resolution.

Policy-spec §1.2 (``filter_lists[].filters[]``): ``me`` | ``any`` | IP | CIDR | range ``a-b`` |
``dns:<name>`` | ``dynamic:dns_servers|wins_servers|dhcp|default_gateway``. Addresses are kept
as integer ranges per family, which is what the matcher compares (RFC 4301 §4.4.1.1 address
selectors are ranges, too).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from reference_impl.sa import IPAddress

DYNAMIC_TOKENS = ("dns_servers", "wins_servers", "dhcp", "default_gateway")

PROTOCOL_NAMES: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "tcp": 6,
    "udp": 17,
    "ipv6": 41,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
}
"""IANA "Assigned Internet Protocol Numbers". ``icmp`` is family dependent (see ``ICMP``)."""

ICMP = -1
"""Pseudo protocol number of the ``icmp`` token: ICMP (1) in IPv4 entries, ICMPv6 (58) in IPv6."""

PORT_PROTOCOLS = frozenset({6, 17, 132})
"""Protocols with port selectors (RFC 4301 §4.4.1.1): TCP, UDP, SCTP."""

ICMP_PROTOCOLS = frozenset({1, 58, ICMP})

ANY_PORTS = (0, 65535)

_FAMILY_BITS = {4: 32, 6: 128}


@dataclass(frozen=True, slots=True, order=True)
class AddressRange:
    """An inclusive range of addresses of one family, as integers."""

    version: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    @property
    def prefix_bits(self) -> int:
        """Specificity on the common 128-bit scale of policy-spec §2.2, key items 3-4.

        IPv4 counts as ``96 + n``; a range that is not a prefix counts as
        ``floor(bits - log2(size))``. Integer form: ``128 - ceil(log2(size))``.
        """
        return 128 - (self.size - 1).bit_length()

    def contains(self, version: int, addr: int) -> bool:
        return version == self.version and self.lo <= addr <= self.hi

    def covers(self, other: AddressRange) -> bool:
        return self.version == other.version and self.lo <= other.lo and other.hi <= self.hi

    def intersect(self, other: AddressRange) -> AddressRange | None:
        if self.version != other.version:
            return None
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        return AddressRange(self.version, lo, hi) if lo <= hi else None

    @property
    def first(self) -> IPAddress:
        return ip_from_int(self.version, self.lo)

    @property
    def last(self) -> IPAddress:
        return ip_from_int(self.version, self.hi)

    @classmethod
    def host(cls, addr: IPAddress) -> AddressRange:
        return cls(addr.version, int(addr), int(addr))

    @classmethod
    def any(cls, version: int) -> AddressRange:
        return cls(version, 0, (1 << _FAMILY_BITS[version]) - 1)

    def __str__(self) -> str:
        if self.lo == self.hi:
            return str(self.first)
        bits = _FAMILY_BITS[self.version]
        host_bits = self.size.bit_length() - 1
        if self.size == 1 << host_bits and self.lo % self.size == 0:
            return f"{self.first}/{bits - host_bits}"
        return f"{self.first}-{self.last}"


def ip_from_int(version: int, value: int) -> IPAddress:
    if version == 4:
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


@dataclass(frozen=True, slots=True)
class AddressToken:
    """A parsed address token; ``literal`` holds the ranges of a literal IP/CIDR/range."""

    kind: str
    """``me``, ``any``, ``literal``, ``dns`` or ``dynamic``."""
    text: str
    literal: tuple[AddressRange, ...] = ()
    name: str = ""
    """The DNS name or the dynamic list name."""

    @property
    def literal_versions(self) -> frozenset[int]:
        return frozenset(r.version for r in self.literal)


def parse_address_token(text: str) -> AddressToken:
    """Parse one address token; ``ValueError`` (with what to write instead) if invalid."""
    raw = str(text).strip()
    low = raw.lower()
    if low in ("me", "any"):
        return AddressToken(low, low)
    if low.startswith("dns:"):
        name = raw[4:].strip()
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"{raw!r}: write dns:<hostname>, e.g. dns:fs1.example.com")
        return AddressToken("dns", raw, name=name)
    if low.startswith("dynamic:"):
        name = low[8:].strip()
        if name not in DYNAMIC_TOKENS:
            raise ValueError(
                f"{raw!r}: unknown dynamic list; use one of "
                + ", ".join(f"dynamic:{t}" for t in DYNAMIC_TOKENS)
            )
        return AddressToken("dynamic", raw, name=name)
    if "-" in raw and "/" not in raw:
        a, _, b = raw.partition("-")
        try:
            first = ipaddress.ip_address(a.strip())
            last = ipaddress.ip_address(b.strip())
        except ValueError:
            raise ValueError(_address_hint(raw)) from None
        if first.version != last.version:
            raise ValueError(f"{raw!r}: both ends of a range must be the same address family")
        if int(first) > int(last):
            raise ValueError(f"{raw!r}: the range is reversed; write {last}-{first}")
        return AddressToken(
            "literal", raw, literal=(AddressRange(first.version, int(first), int(last)),)
        )
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ValueError(_address_hint(raw)) from None
    if "/" in raw and int(net.network_address) != int(ipaddress.ip_interface(raw).ip):
        raise ValueError(f"{raw!r} has host bits set; write {net}")
    rng = AddressRange(net.version, int(net.network_address), int(net.broadcast_address))
    return AddressToken("literal", raw, literal=(rng,))


def _address_hint(raw: str) -> str:
    return (
        f"{raw!r} is not an address; use me, any, an IP (10.1.0.10), a prefix (10.1.0.0/16), "
        "a range (10.1.0.1-10.1.0.9), dns:<name> or dynamic:<list>"
    )


def parse_protocol(value: str | int) -> int:
    """``any`` → 0, a name of ``PROTOCOL_NAMES`` or 0-255; ``icmp`` → the ``ICMP`` marker."""
    if isinstance(value, bool):
        raise ValueError("protocol must be any, a name (tcp, udp, icmp, ...) or 0-255")
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise ValueError(f"protocol {value} is out of range; use 0-255")
        return value
    low = str(value).strip().lower()
    if low == "any":
        return 0
    if low == "icmp":
        return ICMP
    if low in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[low]
    if low.isdigit() and 0 <= int(low) <= 255:
        return int(low)
    raise ValueError(
        f"unknown protocol {value!r}; use any, 0-255 or one of " + ", ".join(sorted(PROTOCOL_NAMES))
    )


def parse_ports(value: str | int) -> tuple[int, int]:
    """``any`` → (0, 65535); ``445`` → (445, 445); ``"1024-65535"`` → a range."""
    if isinstance(value, bool):
        raise ValueError("ports must be any, a number or a range like 1024-65535")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValueError(f"port {value} is out of range; use 0-65535")
        return (value, value)
    low = str(value).strip().lower()
    if low == "any":
        return ANY_PORTS
    a, sep, b = low.partition("-")
    try:
        lo = int(a)
        hi = int(b) if sep else lo
    except ValueError:
        raise ValueError(
            f"{value!r} is not a port; use any, a number or a range like 1024-65535"
        ) from None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise ValueError(f"{value!r}: ports are 0-65535")
    if lo > hi:
        raise ValueError(f"{value!r}: the range is reversed; write {hi}-{lo}")
    return (lo, hi)


DnsResolver = Callable[[str], Sequence[str]]


@dataclass(frozen=True, slots=True)
class CompileEnv:
    """What compilation needs to know about the node (policy-spec §2.1 step C2).

    ``local_addresses`` resolves ``me`` and tells which side of a tunnel rule is ours;
    ``ike_addresses`` are the local IKE endpoints of the step-0 bypass (default: all local
    addresses). DNS names are resolved by ``resolve_dns`` at every compile (our choice).
    """

    local_addresses: tuple[str, ...] = ()
    ike_addresses: tuple[str, ...] | None = None
    dynamic: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    resolve_dns: DnsResolver | None = None

    def local_ranges(self) -> tuple[AddressRange, ...]:
        return tuple(AddressRange.host(ipaddress.ip_address(a)) for a in self.local_addresses)

    def ike_ranges(self) -> tuple[AddressRange, ...]:
        addrs = self.local_addresses if self.ike_addresses is None else self.ike_addresses
        return tuple(AddressRange.host(ipaddress.ip_address(a)) for a in addrs)

    def is_local(self, addr: IPAddress) -> bool:
        return any(ipaddress.ip_address(a) == addr for a in self.local_addresses)


def resolve_token(token: AddressToken, env: CompileEnv) -> tuple[tuple[AddressRange, ...], str]:
    """Address ranges of a token, and a warning text when it resolved to nothing."""
    if token.kind == "literal":
        return token.literal, ""
    if token.kind == "any":
        return (AddressRange.any(4), AddressRange.any(6)), ""
    if token.kind == "me":
        ranges = env.local_ranges()
        return ranges, "" if ranges else "'me' has no local address (none configured)"
    if token.kind == "dynamic":
        dyn = env.dynamic.get(token.name, ())
        ranges = tuple(AddressRange.host(ipaddress.ip_address(a)) for a in dyn)
        return ranges, "" if ranges else f"{token.text} is empty on this node"
    # dns
    if env.resolve_dns is None:
        return (), f"{token.text}: no DNS resolver given to the compiler"
    try:
        values = env.resolve_dns(token.name)
    except Exception as exc:  # a resolver failure only empties this filter
        return (), f"{token.text}: resolution failed ({exc})"
    ranges = tuple(
        sorted({AddressRange.host(ipaddress.ip_address(a)) for a in values}, key=lambda r: r)
    )
    return ranges, "" if ranges else f"{token.text} resolved to no address"
