"""The compiled SPD and PAD (RFC 4301 §4.4.1, §4.4.3; policy-spec §2).

An :class:`SpdEntry` is directional and in RFC 4301 "Local/Remote" form: for an outbound
packet local = source, for an inbound packet local = destination. The :class:`Spd` holds the
step-0 IKE bypass entries, the ordered static entries and the final ``default_action``
entries of each direction, immutable; the agent swaps whole tables (make-before-break, §2.1 C6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from reference_impl.policy.addresses import ANY_PORTS, AddressRange, ip_from_int
from reference_impl.policy.resolved import Action, AuthMethod, FilterAction, Policy, Rule
from reference_impl.sa import TrafficSelector


class Direction(StrEnum):
    OUT = "out"
    IN = "in"


class SaSelector(NamedTuple):
    """What one SA (and one §3 state machine) covers: RFC 4301 §4.4.1 PFP result.

    Addresses are populated from the packet for transport rules (one SA per host pair,
    §2.1 C4) and taken from the entry for tunnel rules; protocol and ports always come from
    the entry. ``tunnel`` is (our endpoint, peer endpoint) as text, or ``("", "")``.
    """

    version: int
    local_lo: int
    local_hi: int
    remote_lo: int
    remote_hi: int
    proto: int
    lport_lo: int
    lport_hi: int
    rport_lo: int
    rport_hi: int
    tunnel_local: str = ""
    tunnel_peer: str = ""

    @property
    def local(self) -> AddressRange:
        return AddressRange(self.version, self.local_lo, self.local_hi)

    @property
    def remote(self) -> AddressRange:
        return AddressRange(self.version, self.remote_lo, self.remote_hi)

    @property
    def is_tunnel(self) -> bool:
        return bool(self.tunnel_peer)

    @property
    def peer_address(self) -> str:
        """The IKE peer: the tunnel endpoint, or the remote host of a transport SA."""
        return self.tunnel_peer or str(ip_from_int(self.version, self.remote_lo))

    @property
    def local_address(self) -> str:
        return self.tunnel_local or str(ip_from_int(self.version, self.local_lo))

    def traffic_selectors(self) -> tuple[TrafficSelector, TrafficSelector]:
        """(local, remote) as RFC 7296 §3.13.1 traffic selectors."""
        lo = TrafficSelector(
            ip_from_int(self.version, self.local_lo),
            ip_from_int(self.version, self.local_hi),
            self.proto,
            self.lport_lo,
            self.lport_hi,
        )
        re = TrafficSelector(
            ip_from_int(self.version, self.remote_lo),
            ip_from_int(self.version, self.remote_hi),
            self.proto,
            self.rport_lo,
            self.rport_hi,
        )
        return lo, re

    def covers(self, version: int, local: int, remote: int) -> bool:
        return (
            version == self.version
            and self.local_lo <= local <= self.local_hi
            and self.remote_lo <= remote <= self.remote_hi
        )

    def __str__(self) -> str:
        lo, re = self.traffic_selectors()
        text = f"{lo} <-> {re}"
        return f"{text} via {self.tunnel_local}->{self.tunnel_peer}" if self.is_tunnel else text


class SpdEntry:
    """One directional SPD entry. Matching compares integers only (hot path)."""

    __slots__ = (
        "action",
        "any_ports",
        "direction",
        "dynamic_spi",
        "expansion",
        "filter_index",
        "key",
        "l_hi",
        "l_lo",
        "local",
        "local_ports",
        "lp_hi",
        "lp_lo",
        "origin",
        "params",
        "pfp",
        "position",
        "proto",
        "r_hi",
        "r_lo",
        "remote",
        "remote_ports",
        "rp_hi",
        "rp_lo",
        "rule",
        "tunnel",
        "version",
    )

    def __init__(
        self,
        *,
        direction: Direction,
        local: AddressRange,
        remote: AddressRange,
        proto: int,
        local_ports: tuple[int, int],
        remote_ports: tuple[int, int],
        action: Action,
        origin: str,
        rule: Rule | None = None,
        params: FilterAction | None = None,
        filter_index: int = 0,
        expansion: int = 0,
        tunnel: tuple[str, str] | None = None,
        pfp: bool = True,
    ) -> None:
        if local.version != remote.version:
            raise ValueError("an SPD entry's local and remote must be one family (V5)")
        self.direction = direction
        self.version = local.version
        self.local = local
        self.remote = remote
        self.l_lo, self.l_hi = local.lo, local.hi
        self.r_lo, self.r_hi = remote.lo, remote.hi
        self.proto = proto
        self.local_ports = local_ports
        self.remote_ports = remote_ports
        self.lp_lo, self.lp_hi = local_ports
        self.rp_lo, self.rp_hi = remote_ports
        self.any_ports = local_ports == ANY_PORTS and remote_ports == ANY_PORTS
        self.action = action
        self.origin = origin
        self.rule = rule
        self.params = params
        self.filter_index = filter_index
        self.expansion = expansion
        self.tunnel = tunnel
        self.pfp = pfp
        self.key: tuple[int, ...] = ()
        self.position = 0
        self.dynamic_spi: int | None = None

    # -- matching -------------------------------------------------------------------------

    def matches(self, version: int, local: int, remote: int, proto: int, lp: int, rp: int) -> bool:
        if (
            version != self.version
            or not self.l_lo <= local <= self.l_hi
            or not self.r_lo <= remote <= self.r_hi
        ):
            return False
        if self.proto and proto != self.proto:
            return False
        if self.any_ports:
            return True
        if lp < 0:  # OPAQUE ports (non-initial fragment) only match ANY, RFC 4301 §7.1
            return False
        return self.lp_lo <= lp <= self.lp_hi and self.rp_lo <= rp <= self.rp_hi

    def sa_selector(self, local: int, remote: int) -> SaSelector:
        """The SA selector for a packet matching this PROTECT entry (§2.1 C4 PFP flags)."""
        if self.pfp:
            l_lo = l_hi = local
            r_lo = r_hi = remote
        else:
            l_lo, l_hi, r_lo, r_hi = self.l_lo, self.l_hi, self.r_lo, self.r_hi
        tl, tp = self.tunnel if self.tunnel is not None else ("", "")
        return SaSelector(
            self.version,
            l_lo,
            l_hi,
            r_lo,
            r_hi,
            self.proto,
            self.lp_lo,
            self.lp_hi,
            self.rp_lo,
            self.rp_hi,
            tl,
            tp,
        )

    # -- display --------------------------------------------------------------------------

    @property
    def rule_name(self) -> str:
        if self.rule is not None:
            return self.rule.name
        return {"ike-bypass": "<ike bypass>", "default": "<default>"}.get(self.origin, self.origin)

    def describe_action(self) -> str:
        if self.action is not Action.PROTECT or self.params is None:
            return self.action.value
        p = self.params
        flags = []
        if self.tunnel is not None:
            flags.append(f"tunnel {self.tunnel[0]}->{self.tunnel[1]}")
        if p.allow_fallback:
            flags.append(f"fallback {p.fallback_after_s:g}s")
        if p.inbound_passthrough:
            flags.append("inpass")
        if p.nd_mode != "none":
            flags.append(f"nd {p.nd_mode}")
        if p.negotiation_shunt != "hold":
            flags.append(f"shunt {p.negotiation_shunt}")
        return f"protect {p.name}" + (f" [{', '.join(flags)}]" if flags else "")

    def to_json(self) -> dict[str, object]:
        return {
            "position": self.position,
            "direction": self.direction.value,
            "local": str(self.local),
            "remote": str(self.remote),
            "proto": self.proto,
            "local_ports": _ports_text(self.local_ports),
            "remote_ports": _ports_text(self.remote_ports),
            "action": self.action.value,
            "rule": self.rule_name,
            "origin": self.origin,
            "filter_action": self.params.name if self.params is not None else None,
            "allow_fallback": self.params.allow_fallback if self.params is not None else None,
            "tunnel": list(self.tunnel) if self.tunnel is not None else None,
            "sort_key": list(self.key),
        }

    def __repr__(self) -> str:
        return (
            f"SpdEntry({self.direction} {self.local}:{_ports_text(self.local_ports)} -> "
            f"{self.remote}:{_ports_text(self.remote_ports)} proto {self.proto} "
            f"{self.action} [{self.rule_name}])"
        )


def _ports_text(ports: tuple[int, int]) -> str:
    if ports == ANY_PORTS:
        return "any"
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


@dataclass(frozen=True, slots=True)
class PadEntry:
    """RFC 4301 §4.4.3 Peer Authorization Database entry."""

    remote: tuple[AddressRange, ...]
    """Peers (IKE addresses) this entry authorizes."""
    auth_methods: tuple[AuthMethod, ...]
    auth_set: str
    rule: str
    tunnel_peer: str = ""
    responder_only: bool = False
    """The default response rule: used to answer, never to initiate (§2.1 C8)."""

    def matches(self, version: int, addr: int) -> bool:
        return any(r.contains(version, addr) for r in self.remote)


@dataclass(frozen=True, slots=True)
class Pad:
    entries: tuple[PadEntry, ...]

    def lookup(self, version: int, addr: int) -> PadEntry | None:
        for e in self.entries:
            if e.matches(version, addr):
                return e
        return None


class Spd:
    """An immutable, ordered SPD: step-0 IKE bypass, static entries, default action."""

    def __init__(
        self,
        *,
        ordering: str,
        ike_bypass: Sequence[SpdEntry],
        outbound: Sequence[SpdEntry],
        inbound: Sequence[SpdEntry],
        default_out: Sequence[SpdEntry],
        default_in: Sequence[SpdEntry],
        ike_ports: Iterable[int],
        ike_locals: Sequence[AddressRange],
    ) -> None:
        self.ordering = ordering
        self.ike_bypass = tuple(ike_bypass)
        self.outbound = tuple(outbound)
        self.inbound = tuple(inbound)
        self.default_out = tuple(default_out)
        self.default_in = tuple(default_in)
        self.ike_ports = frozenset(ike_ports)
        self.ike_locals = tuple(ike_locals)
        for pos, e in enumerate(self.entries()):
            e.position = pos

    def entries(self) -> list[SpdEntry]:
        """All entries in evaluation order (step 0, outbound, inbound, defaults)."""
        return [
            *self.ike_bypass,
            *self.outbound,
            *self.default_out,
            *self.inbound,
            *self.default_in,
        ]

    def is_ike(self, version: int, local: int, proto: int, lport: int) -> bool:
        """Step 0 / O1 / I1: UDP to or from a local IKE endpoint (port 500/4500)."""
        if proto != 17 or lport not in self.ike_ports:
            return False
        if not self.ike_locals:
            return True
        return any(r.contains(version, local) for r in self.ike_locals)

    def lookup(
        self,
        direction: Direction,
        version: int,
        local: int,
        remote: int,
        proto: int,
        lport: int,
        rport: int,
        dynamic: Sequence[SpdEntry] = (),
    ) -> SpdEntry:
        """First matching entry; always returns one (the default entry matches everything)."""
        for e in dynamic:
            if e.direction is direction and e.matches(version, local, remote, proto, lport, rport):
                return e
        table = self.outbound if direction is Direction.OUT else self.inbound
        for e in table:
            if e.matches(version, local, remote, proto, lport, rport):
                return e
        default = self.default_out if direction is Direction.OUT else self.default_in
        for e in default:
            if e.version == version:
                return e
        return default[0]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A validated policy compiled for one node: what the agent swaps in atomically."""

    policy: Policy
    spd: Spd
    pad: Pad
    warnings: tuple[str, ...]
    local_addresses: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.policy.name,
            "source": self.policy.source,
            "ordering": self.spd.ordering,
            "timing_profile": self.policy.profile.name,
            "ike_version": self.policy.ike.version,
            "local_addresses": list(self.local_addresses),
            "spd": [e.to_json() for e in self.spd.entries()],
            "pad": [
                {
                    "remote": [str(r) for r in p.remote],
                    "auth_set": p.auth_set,
                    "auth_methods": [m.kind for m in p.auth_methods],
                    "rule": p.rule,
                    "tunnel_peer": p.tunnel_peer or None,
                    "responder_only": p.responder_only,
                }
                for p in self.pad.entries
            ],
            "warnings": list(self.warnings),
        }
