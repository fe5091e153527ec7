"""The policy after validation: every default applied, every reference resolved.

This is what the compiler (§2.1) and the agent (§3, §4) read; the YAML-shaped models of
:mod:`.model` are not used past validation. All objects are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reference_impl.policy.addresses import AddressToken
from reference_impl.policy.profiles import HoldPolicy, Shunt, TimingProfile
from reference_impl.retransmit import RetransmitSchedule
from reference_impl.sa import IPAddress


class Action(StrEnum):
    """RFC 4301 §4.4.1 processing choices (permit / block / negotiate in Windows terms)."""

    BYPASS = "bypass"
    DISCARD = "discard"
    PROTECT = "protect"


class NdMode(StrEnum):
    NONE = "none"
    SECURE = "secure"
    BOUNDARY = "boundary"


@dataclass(frozen=True, slots=True)
class SecurityMethod:
    """One quick-mode / Child SA proposal of a filter action, in preference order."""

    protocol: str
    """``esp``, ``ah`` or ``ah+esp``."""
    encryption: str | None
    integrity: str | None
    lifetime_s: int = 3600
    lifetime_kb: int = 100000

    @property
    def encrypts(self) -> bool:
        return self.protocol != "ah" and self.encryption not in (None, "null")

    def __str__(self) -> str:
        algs = "/".join(a for a in (self.encryption, self.integrity) if a)
        return f"{self.protocol.upper()}[{algs}]:{self.lifetime_kb}k/{self.lifetime_s}s"


DEFAULT_SECURITY_METHODS = (
    SecurityMethod("esp", "aes128", "sha1"),
    SecurityMethod("esp", "3des", "sha1"),
)
"""Methods of the Vista shorthand actions and the default response rule when none are given."""


@dataclass(frozen=True, slots=True)
class AuthMethod:
    kind: str
    """``kerberos``, ``certificate`` or ``preshared_key``."""
    ca: str = ""
    cert_to_account_mapping: bool = False
    secret_ref: str = ""


@dataclass(frozen=True, slots=True)
class FilterAction:
    """A filter action with the timing profile applied (policy-spec §1.2, §3.5)."""

    name: str
    outbound: Action
    inbound: Action
    security_methods: tuple[SecurityMethod, ...] = ()
    session_key_pfs: bool = False
    inbound_passthrough: bool = False
    allow_fallback: bool = False
    fallback_after_s: float = 3.0
    on_negotiation_failure: bool = False
    icmp_fast_fallback: bool = False
    continue_ike_after_fallback: bool = False
    soft_sa_idle_s: float | None = 300.0
    soft_sa_max_lifetime_s: float | None = 900.0
    negotiation_shunt: Shunt = Shunt.HOLD
    hold_length: int = 1
    hold_policy: HoldPolicy = HoldPolicy.KEEP_LAST
    failure_holddown_s: float = 30.0
    send_icmp_on_discard: bool = False
    accept_clear_grace_s: float = 0.0
    nd_mode: NdMode = NdMode.NONE
    guarantee_encryption: bool = False
    shorthand: str = ""
    """The Vista+ consec action this was expanded from (§1.4), if any."""

    def rank(self, action: Action) -> int:
        """``action_rank`` of §2.2: DISCARD 0, PROTECT 1, PROTECT+fallback 2, BYPASS 3."""
        if action is Action.DISCARD:
            return 0
        if action is Action.PROTECT:
            return 2 if self.allow_fallback else 1
        return 3


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter of a filter list (policy-spec §1.2), tokens parsed."""

    index: int
    src: AddressToken
    dst: AddressToken
    proto: int
    """0 = any; ``addresses.ICMP`` = ICMP of the entry's family."""
    src_ports: tuple[int, int]
    dst_ports: tuple[int, int]
    icmp: tuple[int, int] | None
    """ICMP type/code as a 16-bit range (type << 8 | code), RFC 7296 §3.13.1."""
    mirrored: bool

    def __str__(self) -> str:
        return f"{self.src.text} -> {self.dst.text}"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    index: int
    filter_list: str
    filters: tuple[Filter, ...]
    action: FilterAction
    auth_set: str | None
    auth_methods: tuple[AuthMethod, ...]
    tunnel: tuple[IPAddress, IPAddress] | None
    """(local_endpoint, remote_endpoint) as written in the rule, or ``None`` (transport)."""
    connection_type: str = "all"
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class MainModeProposal:
    enc: str
    integ: str
    dh: str


@dataclass(frozen=True, slots=True)
class IkeSettings:
    """Policy-wide ISAKMP/IKE settings handed to IKE in every ACQUIRE."""

    version: int
    """1 (IKEv1, ISAKMP/Oakley) or 2."""
    local_port: int
    remote_port: int
    nat_traversal: str
    schedule: RetransmitSchedule
    mm_lifetime_s: int
    max_quick_modes: int
    master_key_pfs: bool
    proposals: tuple[MainModeProposal, ...]


@dataclass(frozen=True, slots=True)
class DefaultResponseRule:
    """Legacy responder-only rule (§1.2, §4.5): filter list ``<Dynamic>``, Negotiate."""

    security_methods: tuple[SecurityMethod, ...]
    auth_set: str
    auth_methods: tuple[AuthMethod, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    source: str
    ordering: str
    default_action: Action
    profile: TimingProfile
    on_policy_change: str
    fips: bool
    ike: IkeSettings
    rules: tuple[Rule, ...]
    """Enabled and disabled rules, in file order (the compiler drops disabled ones, C1)."""
    default_response_rule: DefaultResponseRule | None
    warnings: tuple[str, ...] = ()
