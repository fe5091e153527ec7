"""Peers: one neutral scenario description, one adapter per IPsec implementation.

A :class:`Scenario` says what to negotiate (IKE version, proposals, authentication,
identities, traffic selectors, mode, lifetimes, DPD, retransmission) between two
:class:`Endpoint` s, without any implementation's syntax. A :class:`Peer` adapter turns it
into its implementation's configuration, starts and stops the implementation in a topology
node, initiates, rekeys, terminates, lists SAs and (where it can) reads the keys.

Each adapter declares a :class:`Capabilities` manifest: what it can do on this host. A case
that needs something missing is "not applicable" with the reason
(:class:`NotApplicable`), never failed and never silently skipped.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Literal

from harness.peers import algorithms

if TYPE_CHECKING:
    from harness.topology.base import Node

# Capability features (Capabilities.features); a case names the ones it needs.
IKEV1 = "ikev1"
IKEV2 = "ikev2"
AGGRESSIVE = "ikev1.aggressive"  # IKEv1 Aggressive Mode
CHILD_SA = "child_sa"  # installs IPsec SAs and carries traffic (a data plane)
CHILDLESS = "childless"  # IKEv2 IKE SA without a Child SA (RFC 6023)
ESP = "esp"
AH = "ah"
ESN = "esn"
TUNNEL = "mode.tunnel"
TRANSPORT = "mode.transport"
NAT_T = "nat_t"  # UDP encapsulation, IKE on 4500 (RFC 3947/3948)
RAW_ESP = "raw_esp"  # ESP as IP protocol 50, without UDP encapsulation
FRAGMENTATION = "ike_fragmentation"  # RFC 7383
FALLBACK_TO_CLEAR = "fallback_to_clear"  # sends in clear when IKE fails, per policy
PSK = "auth.psk"
CERT_RSA = "auth.rsa"
CERT_ECDSA = "auth.ecdsa"
DPD = "dpd"
REKEY = "rekey"
IPV6 = "ipv6"
RECONFIGURE = "reconfigure"  # the harness can load a scenario into it
INITIATE = "initiate"  # the harness can make it initiate / terminate / rekey
KEYS = "keys"  # the harness can read its SA keys (for the oracle)
LIST_SAS = "list_sas"
IMPAIR = "impair"  # deliberate protocol violations (libreswan's --impair)

ALL_FEATURES = (
    IKEV1, IKEV2, AGGRESSIVE, CHILD_SA, CHILDLESS, ESP, AH, ESN, TUNNEL, TRANSPORT, NAT_T,
    RAW_ESP, FRAGMENTATION, FALLBACK_TO_CLEAR, PSK, CERT_RSA, CERT_ECDSA, DPD, REKEY, IPV6,
    RECONFIGURE, INITIATE, KEYS, LIST_SAS, IMPAIR,
)  # fmt: skip


class PeerError(RuntimeError):
    """The implementation failed to do what it was asked (the log has the details)."""

    def __init__(self, message: str, log: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.log = list(log)


class NotApplicable(Exception):
    """A case cannot run against this peer here; ``reasons`` say why (one per missing need)."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


# The neutral scenario


@dataclass(frozen=True)
class Proposal:
    """One proposal: transforms by canonical name (:mod:`harness.peers.algorithms`).

    For IKE: encr, integ (empty with AEAD), prf, groups (DH). For ESP: encr, integ (empty with
    AEAD), groups = PFS groups (used in CREATE_CHILD_SA / Quick Mode), esn. For AH: integ.
    """

    encr: tuple[str, ...] = ()
    integ: tuple[str, ...] = ()
    prf: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    esn: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        for kind, names in (("encr", self.encr), ("integ", self.integ), ("prf", self.prf),
                            ("dh", self.groups)):  # fmt: skip
            for name in names:
                if algorithms.kind_of(name) != kind:
                    raise ValueError(f"{name} is not a {kind} transform")

    @classmethod
    def parse(cls, text: str) -> Proposal:
        """``"AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"``: names sorted by kind."""
        encr: list[str] = []
        integ: list[str] = []
        prf: list[str] = []
        groups: list[str] = []
        esn: list[bool] = []
        for token in filter(None, text.replace(",", "/").split("/")):
            kind = algorithms.kind_of(token)
            if kind == "esn":
                esn.append(token == "EXT_SEQ")
            else:
                {"encr": encr, "integ": integ, "prf": prf, "dh": groups}[kind].append(token)
        return cls(tuple(encr), tuple(integ), tuple(prf), tuple(groups), tuple(esn) or (False,))

    @property
    def aead(self) -> bool:
        return bool(self.encr) and all(algorithms.get(e).aead for e in self.encr)

    def transforms(self) -> tuple[str, ...]:
        return (*self.encr, *self.integ, *self.prf, *self.groups)

    def __str__(self) -> str:
        parts = list(self.transforms())
        if True in self.esn:
            parts.append("EXT_SEQ")
        return "/".join(parts)


IKE_DEFAULT = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
ESP_DEFAULT = Proposal.parse("AES_GCM_16_128")


@dataclass(frozen=True)
class Endpoint:
    """One end of a scenario: where it is, who it is, what it protects."""

    node: str
    """Name of the topology node (or of the external device)."""
    address: str
    identity: str
    """IKE identity: an IP address, ``@fqdn``, ``user@fqdn``, or a DN (``CN=...``)."""
    subnets: tuple[str, ...]
    """Protected networks (traffic selectors in tunnel mode)."""
    ike_port: int = 500
    natt_port: int = 4500
    cert: Path | None = None
    """PEM certificate (auth ``pubkey``)."""
    key: Path | None = None
    """PEM private key (auth ``pubkey``)."""

    @classmethod
    def of(cls, node: Node, *, family: int = 4, identity: str | None = None) -> Endpoint:
        """An endpoint at a topology node: its outer address, its inner address as subnet."""
        addr = node.addresses.outer(family)
        inner = node.addresses.inner(family)
        prefix = 32 if family == 4 else 128
        return cls(
            node=node.name,
            address=addr,
            identity=identity or addr,
            subnets=(f"{inner}/{prefix}",),
            ike_port=node.addresses.ike_port,
            natt_port=node.addresses.natt_port,
        )


@dataclass(frozen=True)
class Lifetimes:
    """Rekey and expiry times in seconds (``None``: the implementation's default)."""

    ike_rekey: float | None = None
    ike_life: float | None = None
    child_rekey: float | None = None
    child_life: float | None = None
    child_rekey_bytes: int | None = None
    child_rekey_packets: int | None = None
    jitter: float | None = 0.0
    """Random share subtracted from rekey times (0: exact times, for reproducible tests)."""


@dataclass(frozen=True)
class Dpd:
    """Dead peer detection (RFC 3706 for IKEv1; liveness checks, RFC 7296 §2.4, for IKEv2)."""

    delay: float = 30.0
    timeout: float = 150.0
    """IKEv1 only; IKEv2 gives up after the retransmission schedule."""
    action: Literal["clear", "hold", "restart"] = "clear"


@dataclass(frozen=True)
class Retransmit:
    """IKE retransmission: first after ``timeout`` s, each next ``base`` times later, give up
    after ``tries`` retransmissions (strongSwan's model: the SA fails after the sum of
    ``timeout * base**n`` for n = 0..tries)."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def give_up_after(self) -> float:
        return sum(self.timeout * self.base**n for n in range(self.tries + 1))


FAST_RETRANSMIT = Retransmit(timeout=1.0, base=1.5, tries=3)
"""Fails after 8.125 s (../shared/design/peers.md §6: measured 8.14 s)."""


@dataclass(frozen=True)
class Scenario:
    """What two endpoints negotiate, in no implementation's syntax."""

    endpoints: tuple[Endpoint, Endpoint]
    ike_version: Literal[1, 2] = 2
    ike_proposals: tuple[Proposal, ...] = (IKE_DEFAULT,)
    esp_proposals: tuple[Proposal, ...] = (ESP_DEFAULT,)
    ah_proposals: tuple[Proposal, ...] = ()
    """Non-empty: the Child SA uses AH with these proposals instead of ESP."""
    auth: Literal["psk", "pubkey"] = "psk"
    psk: str = "ipsec-interop-psk-0123456789"
    ca_cert: Path | None = None
    """PEM CA certificate trusted for ``pubkey`` authentication."""
    mode: Literal["tunnel", "transport"] = "tunnel"
    child: bool = True
    """False: establish the IKE SA only (IKEv2 childless, RFC 6023)."""
    aggressive: bool = False
    """IKEv1 Aggressive Mode instead of Main Mode."""
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    dpd: Dpd | None = None
    retransmit: Retransmit | None = None
    force_encap: bool = False
    """UDP-encapsulate ESP even without a NAT."""
    replay_window: int | None = None
    """Anti-replay window of the Child SAs in packets (RFC 4303 §3.4.3; 0: off); ``None``: the
    implementation's default."""
    fragmentation: bool | None = None
    """IKE fragmentation (RFC 7383): True, False or the implementation's default."""
    name: str = "t"
    """Connection name."""
    child_name: str = "c"

    def __post_init__(self) -> None:
        if self.ike_version not in (1, 2):
            raise ValueError("ike_version is 1 or 2")
        if self.auth == "pubkey" and any(e.cert is None or e.key is None for e in self.endpoints):
            raise ValueError("pubkey authentication needs a cert and key on both endpoints")

    @classmethod
    def between(cls, a: Node, b: Node, *, family: int = 4, **kwargs: object) -> Scenario:
        """A scenario between two topology nodes (addresses as identities)."""
        return cls((Endpoint.of(a, family=family), Endpoint.of(b, family=family)), **kwargs)  # type: ignore[arg-type]

    def local(self, node: str) -> Endpoint:
        for e in self.endpoints:
            if e.node == node:
                return e
        raise KeyError(f"no endpoint for node {node!r} in this scenario")

    def remote(self, node: str) -> Endpoint:
        local = self.local(node)
        return self.endpoints[1] if self.endpoints[0] is local else self.endpoints[0]

    def with_(self, **changes: object) -> Scenario:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.endpoints[0].address).version

    def needs(self) -> set[str]:
        """The capability features this scenario needs from each peer."""
        needs = {IKEV1 if self.ike_version == 1 else IKEV2, RECONFIGURE}
        if self.aggressive:
            needs.add(AGGRESSIVE)
        if self.child:
            needs |= {CHILD_SA, AH if self.ah_proposals else ESP}
            needs.add(TRANSPORT if self.mode == "transport" else TUNNEL)
            if any(True in p.esn for p in (*self.esp_proposals, *self.ah_proposals)):
                needs.add(ESN)
        elif self.ike_version == 2:
            needs.add(CHILDLESS)
        if self.auth == "psk":
            needs.add(PSK)
        else:
            needs |= {_cert_feature(e.cert) for e in self.endpoints if e.cert is not None}
        if self.dpd is not None:
            needs.add(DPD)
        if self.fragmentation:
            needs.add(FRAGMENTATION)
        if self.family == 6:
            needs.add(IPV6)
        return needs

    def transforms(self) -> dict[str, set[str]]:
        """Every transform the scenario proposes, by use: ike, esp, ah."""
        return {
            "ike": {t for p in self.ike_proposals for t in p.transforms()},
            "esp": {t for p in self.esp_proposals for t in (*p.encr, *p.integ)}
            if self.child and not self.ah_proposals
            else set(),
            "ah": {t for p in self.ah_proposals for t in p.integ} if self.child else set(),
            "pfs": {t for p in (*self.esp_proposals, *self.ah_proposals) for t in p.groups}
            if self.child
            else set(),
        }


def _cert_feature(cert: Path) -> str:
    """RSA or ECDSA, from the certificate's public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    return CERT_ECDSA if isinstance(key, ec.EllipticCurvePublicKey) else CERT_RSA


# The capability manifest


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do on this host.

    ``features``: capability names (constants above). ``algorithms``: per use (``ike``,
    ``esp``, ``ah``, ``pfs``) the canonical transform names it supports. ``missing``: for a
    feature it lacks, why (shown in "not applicable" reasons and by ``ipsec-interop peers``).
    """

    features: frozenset[str]
    algorithms: Mapping[str, frozenset[str]]
    missing: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def has(self, feature: str) -> bool:
        return feature in self.features

    def reason(self, feature: str) -> str:
        return self.missing.get(feature, f"{feature} is not supported")

    def check(self, needs: Iterable[str] = (), scenario: Scenario | None = None) -> list[str]:
        """Why a case needing ``needs`` (and ``scenario``) cannot run; empty if it can."""
        wanted = set(needs)
        if scenario is not None:
            wanted |= scenario.needs()
        reasons = [f"{f}: {self.reason(f)}" for f in sorted(wanted) if f not in self.features]
        if scenario is not None:
            reasons += self.check_transforms(scenario)
        return reasons

    def check_transforms(self, scenario: Scenario) -> list[str]:
        """Why the scenario's transforms cannot be used; empty if they all can."""
        reasons = []
        for use, names in scenario.transforms().items():
            supported = self.algorithms.get(use, frozenset())
            for name in sorted(names - supported):
                reasons.append(f"{use} transform {name}: not supported here")
        return reasons

    def require(self, needs: Iterable[str] = (), scenario: Scenario | None = None) -> None:
        reasons = self.check(needs, scenario)
        if reasons:
            raise NotApplicable(reasons)

    def to_json(self) -> dict[str, object]:
        return {
            "features": {f: f in self.features for f in ALL_FEATURES},
            "algorithms": {k: sorted(v) for k, v in self.algorithms.items()},
            "missing": {f: self.missing[f] for f in sorted(self.missing) if f not in self.features},
            "notes": list(self.notes),
        }


# What peers report


@dataclass(frozen=True)
class ChildSaState:
    """One Child SA as the peer lists it (SPIs as 32-bit integers)."""

    name: str
    state: str
    protocol: str
    mode: str
    spi_in: int
    spi_out: int
    encap: bool
    proposal: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    packets_in: int = 0
    packets_out: int = 0
    unique_id: str = ""


@dataclass(frozen=True)
class IkeSaState:
    """One IKE SA as the peer lists it."""

    name: str
    state: str
    version: int
    initiator: bool
    spi_i: bytes
    spi_r: bytes
    local: str
    remote: str
    proposal: str
    children: tuple[ChildSaState, ...] = ()
    unique_id: str = ""
    nat: bool = False
    """Some NAT was detected (or faked, as strongSwan's libipsec does)."""

    @property
    def established(self) -> bool:
        return self.state.upper() == "ESTABLISHED"


@dataclass(frozen=True)
class IkeSaKeys:
    """Keys of one IKE SA. ``secrets``: IKEv2 ``SK_d SK_ai SK_ar SK_ei SK_er SK_pi SK_pr``;
    IKEv1 ``SKEYID SKEYID_d SKEYID_a SKEYID_e Ka`` (RFC 7296 §2.14, RFC 2409 §5)."""

    version: int
    secrets: Mapping[str, bytes]
    unique_id: str = ""
    spi_i: bytes | None = None
    spi_r: bytes | None = None


@dataclass(frozen=True)
class ChildSaKeys:
    """Keys of one Child SA (both directions), RFC 7296 §2.17 / RFC 2409 §5.5.

    "initiator" keys protect traffic from the Child SA's initiator to its responder
    (AEAD encryption keys include the salt). ``initiator`` says whether this peer initiated
    the exchange that made this Child SA, hence which of the two is outbound here.
    """

    name: str
    spi_in: int
    spi_out: int
    initiator: bool
    encr_i: bytes
    encr_r: bytes
    integ_i: bytes = b""
    integ_r: bytes = b""
    unique_id: str = ""
    ike_unique_id: str = ""

    def outbound(self) -> tuple[int, bytes, bytes]:
        """(SPI, encryption key, integrity key) of the SA this peer sends on."""
        if self.initiator:
            return self.spi_out, self.encr_i, self.integ_i
        return self.spi_out, self.encr_r, self.integ_r

    def inbound(self) -> tuple[int, bytes, bytes]:
        """(SPI, encryption key, integrity key) of the SA this peer receives on."""
        if self.initiator:
            return self.spi_in, self.encr_r, self.integ_r
        return self.spi_in, self.encr_i, self.integ_i


@dataclass(frozen=True)
class SaKeys:
    ike: tuple[IkeSaKeys, ...]
    child: tuple[ChildSaKeys, ...]


@dataclass(frozen=True)
class Availability:
    """Whether an adapter can run on this host; ``detail`` is the version or the reason."""

    available: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Peer(ABC):
    """An IPsec implementation the harness drives in a topology node.

    Life cycle: ``start()`` (or ``with``), ``configure(scenario)``, then ``initiate()`` /
    ``rekey_*()`` / ``terminate()`` / ``list_sas()`` / ``keys()``, and ``stop()``.
    Logs go to the node's ``log_dir`` and are kept.
    """

    kind: ClassVar[str]
    """Adapter name: ``strongswan``, ``libreswan``, ``reference``, ``external``."""

    def __init__(self, node: Node | None) -> None:
        self.node = node
        self.scenario: Scenario | None = None

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether it can run here (binaries, root), probed cheaply."""

    @classmethod
    @abstractmethod
    def capabilities(cls) -> Capabilities:
        """The manifest on this host."""

    def check(self, needs: Iterable[str] = (), scenario: Scenario | None = None) -> None:
        """Raise :class:`NotApplicable` unless this peer can run a case with these needs."""
        avail = self.availability()
        if not avail.available:
            raise NotApplicable([f"{self.kind}: {avail.detail}"])
        self.capabilities().require(needs, scenario)

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def configure(self, scenario: Scenario) -> None:
        """Load the scenario (connection, credentials, timers) from this node's side."""

    @abstractmethod
    def initiate(self, *, timeout: float = 30.0) -> None:
        """Establish the scenario's IKE SA (and Child SA); :class:`PeerError` on failure."""

    @abstractmethod
    def terminate(self, *, timeout: float = 10.0) -> None:
        """Delete the IKE SA (and its Child SAs), sending the Delete."""

    def rekey_child(self, *, timeout: float = 10.0) -> None:
        raise NotApplicable([f"{REKEY}: {self.kind} cannot be asked to rekey a Child SA"])

    def rekey_ike(self, *, timeout: float = 10.0) -> None:
        raise NotApplicable([f"{REKEY}: {self.kind} cannot be asked to rekey an IKE SA"])

    @abstractmethod
    def list_sas(self) -> list[IkeSaState]: ...

    def keys(self) -> SaKeys:
        raise NotApplicable([f"{KEYS}: the keys of {self.kind} cannot be read"])

    def logs(self) -> list[Path]:
        """The peer's log files (kept per test)."""
        return []

    def __enter__(self) -> Peer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_sa(
    peer: Peer,
    predicate: Callable[[list[IkeSaState]], bool],
    timeout: float,
    what: str,
) -> list[IkeSaState]:
    """Poll ``peer.list_sas()`` until ``predicate(sas)`` holds; :class:`PeerError` on timeout."""
    from harness.topology.base import TopologyError, wait_until

    last: list[IkeSaState] = []

    def probe() -> tuple[list[IkeSaState]] | None:
        nonlocal last
        last = peer.list_sas()
        return (last,) if predicate(last) else None  # a tuple: truthy even for no SAs

    try:
        return wait_until(probe, timeout, what, interval=0.05)[0]
    except TopologyError as exc:
        raise PeerError(f"{peer.kind}: {exc}; SAs now: {last}") from None


def ts_str(subnets: Sequence[str]) -> list[str]:
    return [str(ipaddress.ip_network(s, strict=False)) for s in subnets]
