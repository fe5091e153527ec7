"""From a compiled policy and the node's credentials to IKEv2 and IKEv1 configurations.

The policy agent decides *what* to protect (SPD) and *who* may protect it (PAD); the IKE
services are configured in strongSwan's shape (connections with children). This module
bridges the two, once per policy load:

* every ``negotiate`` rule becomes a :class:`RuleIke`: its authentication (the first method of
  its ``auth_methods`` the node has credentials for), its Child SA proposals (from the rule's
  security methods, or the node's strongSwan-syntax override), lifetimes, mode, PFS group and
  the selectors of its SPD entries;
* rules that share one authentication are grouped into one responder connection per IKE
  version (IKEv2 picks a connection by the peer's identity and AUTH, then a child by the
  proposed selectors with RFC 7296 §2.9 narrowing; IKEv1 picks a connection by the peer's
  address before any identity is known, RFC 2409 §5.4, then a child whose selectors contain
  the proposed ones);
* an ACQUIRE becomes an initiator child with exactly the ACQUIRE's SA selectors.

Algorithm names: the policy's names (``aes128``, ``sha256``, ``modp2048``, ``curve25519``)
are strongSwan keywords, so every proposal is held as strongSwan-syntax text, parsed by
:meth:`reference_impl.ike.config.ProposalConfig.parse` into IKEv2 transform IDs and mapped
onto IKEv1 attribute values through the registry's ``IKEV1_*_TO_*`` tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reference_impl.crypto.ids import (
    IKEV1_AH_TO_INTEG,
    IKEV1_AUTH_TO_INTEG,
    IKEV1_ENCR_TO_ENCR,
    IKEV1_ESP_TO_ENCR,
    IKEV1_HASH_TO_INTEG,
)
from reference_impl.errors import LocalProtocolError
from reference_impl.ike import config as ike2
from reference_impl.isakmp import settings as ike1
from reference_impl.isakmp.constants import AuthMethod as V1Auth
from reference_impl.isakmp.identity import Identity as V1Identity
from reference_impl.isakmp.proposals import Phase1Transform, Phase2Transform
from reference_impl.policy.addresses import AddressRange
from reference_impl.policy.resolved import AuthMethod, IkeSettings, Rule, SecurityMethod
from reference_impl.policy.spd import CompiledPolicy, SpdEntry
from reference_impl.retransmit import RetransmitSchedule
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector

_V2_TO_V1_ENCR = {v: k for k, v in IKEV1_ENCR_TO_ENCR.items()}
_V2_TO_V1_HASH = {v: k for k, v in IKEV1_HASH_TO_INTEG.items()}
_V2_TO_V1_ESP = {v: k for k, v in IKEV1_ESP_TO_ENCR.items()}
_V2_TO_V1_AUTH = {v: k for k, v in IKEV1_AUTH_TO_INTEG.items()}
_V2_TO_V1_AH = {v: k for k, v in IKEV1_AH_TO_INTEG.items()}


class ConfigError(LocalProtocolError):
    """The policy and the node's settings do not make a usable IKE configuration."""


@dataclass(frozen=True)
class Credentials:
    """What the node authenticates with (loaded from its configuration or the control API).

    ``psks`` maps a policy ``secret_ref`` to the key; ``certificates`` are ``cryptography``
    objects, end entity first; ``trust_anchors`` the CA certificates a peer's must chain to.
    """

    psks: Mapping[str, bytes] = field(default_factory=dict)
    identity: str | None = None
    """Our IKE identity (strongSwan syntax); default: the IKE SA's local address."""
    remote_identities: Mapping[str, str] = field(default_factory=dict)
    """Peer address -> the identity it must prove (default: any identity that authenticates)."""
    private_key: Any = None
    certificates: tuple[Any, ...] = ()
    trust_anchors: tuple[Any, ...] = ()


@dataclass(frozen=True)
class IkeOverrides:
    """Node-configuration settings that win over the policy's (all optional).

    Proposals are strongSwan syntax (``aes128gcm16-prfsha256-x25519``, ``aes256-sha256``).
    """

    version: int | None = None
    """Initiate with this IKE version whatever the policy says."""
    versions: frozenset[int] = frozenset({1, 2})
    """IKE versions answered as responder."""
    proposals: tuple[str, ...] = ()
    esp_proposals: tuple[str, ...] = ()
    ah_proposals: tuple[str, ...] = ()
    schedule: RetransmitSchedule | None = None
    ike_rekey_s: float | None = None
    ike_over_s: float | None = None
    child_rekey_s: float | None = None
    child_life_s: float | None = None
    child_life_bytes: int | None = None
    child_life_packets: int | None = None
    dpd_delay_s: float | None = None
    force_encap: bool = False
    fragmentation: bool = True
    aggressive: bool = False
    allow_aggressive_psk: bool = False
    childless: bool = False
    packet_selectors: bool = True
    """IKEv2 initiator puts the triggering packet's selectors first in TSi/TSr (§2.9)."""
    replay_window: int = 64


# --- proposals --------------------------------------------------------------------------------


def _ike_text(enc: str, integ: str | None, dh: str) -> str:
    return "-".join(x for x in (enc, integ, dh) if x)


def ike_proposal_texts(ike: IkeSettings, ov: IkeOverrides) -> tuple[str, ...]:
    """The IKE SA proposals: the node's override, else the policy's main-mode proposals."""
    if ov.proposals:
        return ov.proposals
    from reference_impl.policy.model import AEAD_NAMES

    out = []
    for p in ike.proposals:
        integ = None if p.enc in AEAD_NAMES else p.integ
        # An AEAD IKE SA still needs a PRF: the policy's integrity names the hash.
        prf = f"prf{p.integ}" if p.enc in AEAD_NAMES and p.integ else None
        out.append("-".join(x for x in (p.enc, integ, prf, p.dh) if x))
    return tuple(out)


def child_proposal_texts(
    methods: Sequence[SecurityMethod], pfs_group: str | None, ov: IkeOverrides
) -> tuple[tuple[IpsecProtocol, str], ...]:
    """(protocol, strongSwan-syntax proposal) for a rule's Child SAs, in preference order.

    The node's ``esp_proposals``/``ah_proposals`` override the rule's security methods (they
    are how the harness asks for transforms the policy language does not name). ``ah+esp``
    bundles are not offered (RFC 7296 has no bundles; IKEv1 bundles are not implemented).
    """
    out: list[tuple[IpsecProtocol, str]] = []
    if ov.esp_proposals or ov.ah_proposals:
        out += [(IpsecProtocol.ESP, t) for t in ov.esp_proposals]
        out += [(IpsecProtocol.AH, t) for t in ov.ah_proposals]
        return tuple(out)
    from reference_impl.policy.model import AEAD_NAMES

    for m in methods:
        dh = [pfs_group] if pfs_group else []
        if m.protocol == "esp":
            enc = m.encryption or "null"
            integ = [] if enc in AEAD_NAMES or not m.integrity else [m.integrity]
            out.append((IpsecProtocol.ESP, "-".join([enc, *integ, *dh])))
        elif m.protocol == "ah" and m.integrity:
            out.append((IpsecProtocol.AH, "-".join([m.integrity, *dh])))
    return tuple(out)


def parse_ike(texts: Sequence[str]) -> tuple[ike2.ProposalConfig, ...]:
    try:
        return tuple(ike2.ProposalConfig.parse(t) for t in texts)
    except LocalProtocolError as exc:
        raise ConfigError(str(exc)) from None


def parse_child(texts: Sequence[tuple[IpsecProtocol, str]]) -> tuple[ike2.ProposalConfig, ...]:
    try:
        return tuple(ike2.ProposalConfig.parse(t, proto) for proto, t in texts)
    except LocalProtocolError as exc:
        raise ConfigError(str(exc)) from None


def v1_phase1(
    proposals: Sequence[ike2.ProposalConfig], auth_method: int, life_s: int
) -> tuple[Phase1Transform, ...]:
    """IKEv1 protection suites for IKEv2-style proposals (every combination, in order)."""
    out: list[Phase1Transform] = []
    for p in proposals:
        for encr_id, bits in p.encr:
            v1e = _V2_TO_V1_ENCR.get(encr_id)  # type: ignore[call-overload]
            if v1e is None:
                continue  # AEAD or CTR: no IKEv1 phase-1 cipher
            hashes = [_V2_TO_V1_HASH.get(i) for i in p.integ]  # type: ignore[call-overload]
            for h in hashes:
                if h is None:
                    continue
                for group in p.dh:
                    t = Phase1Transform(int(v1e), bits, int(h), auth_method, int(group), life_s)
                    if t.usable() and t not in out:
                        out.append(t)
    if not out:
        raise ConfigError("no IKE proposal has an IKEv1 equivalent (AES/3DES-CBC with an HMAC)")
    return tuple(out)


def v1_phase2(proposals: Sequence[ike2.ProposalConfig]) -> tuple[Phase2Transform, ...]:
    out: list[Phase2Transform] = []
    for p in proposals:
        esn = any(e == 1 for e in p.esn)
        if p.protocol == IpsecProtocol.AH:
            for i in p.integ:
                ah = _V2_TO_V1_AH.get(i)  # type: ignore[call-overload]
                auth = _V2_TO_V1_AUTH.get(i)  # type: ignore[call-overload]
                if ah is not None and auth is not None:
                    out.append(Phase2Transform(IpsecProtocol.AH, int(ah), None, int(auth), esn))
            continue
        for encr_id, bits in p.encr:
            v1e = _V2_TO_V1_ESP.get(encr_id)  # type: ignore[call-overload]
            if v1e is None:
                continue
            if not p.integ:
                out.append(Phase2Transform(IpsecProtocol.ESP, int(v1e), bits, None, esn))
            for i in p.integ:
                auth = _V2_TO_V1_AUTH.get(i)  # type: ignore[call-overload]
                if auth is not None:
                    out.append(Phase2Transform(IpsecProtocol.ESP, int(v1e), bits, int(auth), esn))
    usable = tuple(t for t in out if t.usable())
    if not usable:
        raise ConfigError("no ESP/AH proposal has an IKEv1 equivalent")
    return usable


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    """The authentication one rule uses, resolved against the node's credentials."""

    kind: str
    """``psk`` or ``pubkey``."""
    psk: bytes | None = None
    ref: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.ref)


@dataclass(frozen=True)
class RuleIke:
    """Everything IKE needs about one ``negotiate`` rule."""

    rule: str
    auth: Auth
    mode: Mode
    child_texts: tuple[tuple[IpsecProtocol, str], ...]
    child_proposals: tuple[ike2.ProposalConfig, ...]
    pfs_group: int | None
    rekey_s: float | None
    life_s: float | None
    life_bytes: int | None
    life_packets: int | None
    selectors: tuple[tuple[TrafficSelector, TrafficSelector], ...]
    """(local, remote) of every PROTECT entry of the rule, as RFC 7296 §3.13.1 selectors."""
    peers: tuple[str, ...]
    """Networks the IKE peer may be in (tunnel peer, or the remote side); () = any."""
    pfp: bool = True
    """Transport rules get one SA per host pair (policy-spec §2.1 C4)."""


def range_selector(rng: AddressRange, proto: int, ports: tuple[int, int]) -> TrafficSelector:
    return TrafficSelector(rng.first, rng.last, proto, ports[0], ports[1])


def range_networks(rng: AddressRange) -> list[str]:
    first, last = rng.first, rng.last
    return [str(n) for n in ipaddress.summarize_address_range(first, last)]


def _is_any(nets: Sequence[str]) -> bool:
    return any(ipaddress.ip_network(n).prefixlen == 0 for n in nets)


def resolve_auth(rule: str, methods: Sequence[AuthMethod], creds: Credentials) -> Auth:
    """The first of ``methods`` the node can use (policy-spec §1.2: ordered by preference)."""
    why = []
    for m in methods:
        if m.kind == "preshared_key":
            psk = creds.psks.get(m.secret_ref)
            if psk is not None:
                return Auth("psk", psk, m.secret_ref)
            why.append(f"no pre-shared key {m.secret_ref!r} in the node's credentials")
        elif m.kind == "certificate":
            if creds.private_key is not None and creds.certificates:
                return Auth("pubkey", None, "certificate")
            why.append("no certificate and private key in the node's credentials")
        else:
            why.append(f"{m.kind} authentication is not implemented")
    detail = "; ".join(why) or "the rule has no authentication methods"
    raise ConfigError(f"rule {rule!r}: no usable authentication method ({detail})")


def _pfs_group(ike: IkeSettings, ov: IkeOverrides) -> str | None:
    texts = ike_proposal_texts(ike, ov)
    for p in parse_ike(texts):
        if p.dh:
            from reference_impl.crypto import dh

            name = dh(p.dh[0]).name.lower().replace("_", "")
            return {"curve25519": "x25519"}.get(name, name)
    return None


def rule_ike(
    rule: Rule, entries: Sequence[SpdEntry], ike: IkeSettings, creds: Credentials, ov: IkeOverrides
) -> RuleIke:
    params = rule.action
    methods = params.security_methods
    pfs = _pfs_group(ike, ov) if params.session_key_pfs else None
    texts = child_proposal_texts(methods, pfs, ov)
    if not texts:
        raise ConfigError(f"rule {rule.name!r}: no ESP or AH security method")
    proposals = parse_child(texts)
    pfs_id = next((p.dh[0] for p in proposals if p.dh), None)
    first = methods[0] if methods else None
    life_s = ov.child_life_s
    if life_s is None and first is not None:
        life_s = float(first.lifetime_s)
    rekey_s = ov.child_rekey_s
    if rekey_s is None and life_s is not None:
        rekey_s = life_s * 0.9  # strongSwan's default relation (life = rekey + 10%)
    life_bytes = ov.child_life_bytes
    if life_bytes is None and first is not None and first.lifetime_kb:
        life_bytes = first.lifetime_kb * 1024
    life_bytes = life_bytes or None  # 0: no byte lifetime
    sels: list[tuple[TrafficSelector, TrafficSelector]] = []
    peers: list[str] = []
    for e in entries:
        pair = (
            range_selector(e.local, e.proto, e.local_ports),
            range_selector(e.remote, e.proto, e.remote_ports),
        )
        if pair not in sels:
            sels.append(pair)
        if e.tunnel is not None:
            peers.append(e.tunnel[1])
        else:
            peers += range_networks(e.remote)
    tunnel = any(e.tunnel is not None for e in entries)
    return RuleIke(
        rule=rule.name,
        auth=resolve_auth(rule.name, rule.auth_methods, creds),
        mode=Mode.TUNNEL if tunnel else Mode.TRANSPORT,
        child_texts=texts,
        child_proposals=proposals,
        pfs_group=int(pfs_id) if pfs_id is not None else None,
        rekey_s=rekey_s,
        life_s=life_s,
        life_bytes=life_bytes,
        life_packets=ov.child_life_packets or None,
        selectors=tuple(sels),
        peers=() if _is_any(peers) else tuple(dict.fromkeys(peers)),
        pfp=not tunnel,
    )


# --- the configuration set of one policy --------------------------------------------------------


@dataclass
class IkeConfigs:
    """IKE configurations for one compiled policy (rebuilt on every policy or credential
    change; existing SAs keep the objects they were made with)."""

    ike: IkeSettings
    overrides: IkeOverrides
    creds: Credentials
    rules: dict[str, RuleIke]
    ike_texts: tuple[str, ...]
    ike_proposals: tuple[ike2.ProposalConfig, ...]
    v2_responders: tuple[ike2.PeerConfig, ...]
    v1_responders: tuple[ike1.ConnectionConfig, ...]
    warnings: list[str]
    local_address: str = "0.0.0.0"
    drr: RuleIke | None = None
    _v2_by_auth: dict[tuple[str, str], ike2.PeerConfig] = field(default_factory=dict)

    # IKEv2 ----------------------------------------------------------------------------------

    def v2_child(
        self,
        r: RuleIke,
        local_ts: Sequence[TrafficSelector],
        remote_ts: Sequence[TrafficSelector],
        name: str | None = None,
    ) -> ike2.ChildConfig:
        return ike2.ChildConfig(
            name=name or r.rule,
            local_ts=tuple(local_ts),
            remote_ts=tuple(remote_ts),
            proposals=r.child_proposals,
            mode=r.mode,
            rekey_time=r.rekey_s,
            life_time=r.life_s,
            lifetime_bytes=r.life_bytes,
            lifetime_packets=r.life_packets,
            replay_window=self.overrides.replay_window,
        )

    def v2_peer(self, r: RuleIke) -> ike2.PeerConfig:
        """The IKEv2 connection of ``r``'s authentication group (initiator and responder)."""
        cfg = self._v2_by_auth.get(r.auth.key)
        if cfg is None:
            raise ConfigError(f"rule {r.rule!r} has no IKEv2 connection")
        return cfg

    # IKEv1 ----------------------------------------------------------------------------------

    def v1_child(
        self, r: RuleIke, local_ts: TrafficSelector, remote_ts: TrafficSelector, name: str
    ) -> ike1.ChildConfig:
        life = int(r.life_s) if r.life_s is not None else 3600
        margin = max(1.0, life - r.rekey_s) if r.rekey_s is not None else life * 0.1
        margin = min(margin, life * 0.5)
        return ike1.ChildConfig(
            name,
            local_ts,
            remote_ts,
            v1_phase2(r.child_proposals),
            mode=r.mode,
            pfs_group=r.pfs_group,
            life_seconds=max(life, 2),
            life_kilobytes=r.life_bytes // 1024 if r.life_bytes else None,
            rekey_margin=margin,
            replay_window=self.overrides.replay_window,
        )

    def v1_connection(
        self,
        r: RuleIke,
        local: str,
        peer: str,
        local_ts: TrafficSelector,
        remote_ts: TrafficSelector,
        port: int = 500,
    ) -> ike1.ConnectionConfig:
        """An initiator connection for one rule, peer and selector pair."""
        child = self.v1_child(r, local_ts, remote_ts, r.rule)
        return self._v1_base(f"{r.rule}@{peer}", r.auth, local, peer, (child,), port)

    def _v1_base(
        self,
        name: str,
        auth: Auth,
        local: str,
        peer: str,
        children: tuple[ike1.ChildConfig, ...],
        port: int = 500,
    ) -> ike1.ConnectionConfig:
        ov = self.overrides
        v1auth: ike1.PskAuth | ike1.RsaAuth
        if auth.kind == "psk":
            assert auth.psk is not None
            v1auth = ike1.PskAuth(auth.psk)
            method = V1Auth.PRE_SHARED_KEY
        else:
            v1auth = _v1_rsa(self.creds)
            method = V1Auth.RSA_SIGNATURES
        life = int(self.ike.mm_lifetime_s)
        rekey = ov.ike_rekey_s
        margin = life - rekey if rekey is not None and rekey < life else life * 0.1
        remote_id = self.creds.remote_identities.get(peer)
        local_id = self.creds.identity or (local if local != "%any" else self.local_address)
        return ike1.ConnectionConfig(
            name=name,
            local_addr=local,
            remote_addr=peer,
            local_id=V1Identity.parse(local_id),
            auth=v1auth,
            proposals=v1_phase1(self.ike_proposals, method, life),
            children=children,
            remote_id=V1Identity.parse(remote_id) if remote_id else None,
            aggressive=ov.aggressive,
            life_seconds=life,
            rekey_margin=max(1.0, min(margin, life * 0.5)),
            dpd_delay=ov.dpd_delay_s,
            nat_traversal=self.ike.nat_traversal != "off",
            force_encap=ov.force_encap or self.ike.nat_traversal == "force_encap",
            port=port,
        )


def _v1_rsa(creds: Credentials) -> ike1.RsaAuth:
    from cryptography.hazmat.primitives import serialization

    if creds.private_key is None or not creds.certificates:
        raise ConfigError("certificate authentication needs a certificate and a private key")
    cert = creds.certificates[0].public_bytes(serialization.Encoding.DER)
    key = creds.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    anchors = tuple(c.public_bytes(serialization.Encoding.DER) for c in creds.trust_anchors)
    return ike1.RsaAuth(cert, key, anchors)


def _v2_auth(
    auth: Auth, creds: Credentials, identity: str
) -> tuple[ike2.LocalAuth, ike2.RemoteAuth]:
    ident = ike2.Identity.parse(identity)
    if auth.kind == "psk":
        return (
            ike2.LocalAuth(ident, ike2.AuthClass.PSK, psk=auth.psk),
            ike2.RemoteAuth(None, ike2.AuthClass.PSK, psk=auth.psk),
        )
    return (
        ike2.LocalAuth(
            ident,
            ike2.AuthClass.PUBKEY,
            private_key=creds.private_key,
            certificates=tuple(creds.certificates),
        ),
        ike2.RemoteAuth(None, ike2.AuthClass.PUBKEY, trust_anchors=tuple(creds.trust_anchors)),
    )


def build(
    compiled: CompiledPolicy,
    creds: Credentials,
    ov: IkeOverrides,
    local_address: str,
) -> IkeConfigs:
    """IKE configurations for ``compiled``. Rules the node cannot serve (no credential, no
    usable proposal) are left out with a warning, so one bad rule does not stop the rest."""
    policy = compiled.policy
    ike = policy.ike
    warnings: list[str] = []
    ike_texts = ike_proposal_texts(ike, ov)
    ike_props = parse_ike(ike_texts)
    by_rule: dict[str, list[SpdEntry]] = {}
    rule_of: dict[str, Rule] = {}
    for e in compiled.spd.entries():
        if e.rule is None or e.params is None or e.origin != "rule":
            continue
        if e.action.value != "protect":
            continue
        by_rule.setdefault(e.rule.name, []).append(e)
        rule_of[e.rule.name] = e.rule
    rules: dict[str, RuleIke] = {}
    for name, entries in by_rule.items():
        try:
            rules[name] = rule_ike(rule_of[name], entries, ike, creds, ov)
        except ConfigError as exc:
            warnings.append(str(exc))
    drr: RuleIke | None = None
    if policy.default_response_rule is not None:
        d = policy.default_response_rule
        try:
            texts = child_proposal_texts(d.security_methods, None, ov)
            any4 = TrafficSelector.from_network("0.0.0.0/0")
            any6 = TrafficSelector.from_network("::/0")
            drr = RuleIke(
                rule="<default response rule>",
                auth=resolve_auth("<default response rule>", d.auth_methods, creds),
                mode=Mode.TRANSPORT,
                child_texts=texts,
                child_proposals=parse_child(texts),
                pfs_group=None,
                rekey_s=ov.child_rekey_s,
                life_s=ov.child_life_s or float(d.security_methods[0].lifetime_s),
                life_bytes=None,
                life_packets=None,
                selectors=((any4, any4), (any6, any6)),
                peers=(),
                pfp=True,
            )
        except (ConfigError, IndexError) as exc:
            warnings.append(f"default response rule: {exc}")

    identity = creds.identity or local_address
    schedule = ov.schedule or ike.schedule
    encap = ov.force_encap or ike.nat_traversal == "force_encap"
    cfgs = IkeConfigs(
        ike=ike,
        overrides=ov,
        creds=creds,
        rules=rules,
        ike_texts=ike_texts,
        ike_proposals=ike_props,
        v2_responders=(),
        v1_responders=(),
        warnings=warnings,
        local_address=local_address,
        drr=drr,
    )
    # IKEv2: one connection per authentication, children for every rule using it.
    groups: dict[tuple[str, str], list[RuleIke]] = {}
    for r in rules.values():
        groups.setdefault(r.auth.key, []).append(r)
    v2: list[ike2.PeerConfig] = []
    for key, members in groups.items():
        local_auth, remote_auth = _v2_auth(members[0].auth, creds, identity)
        children = tuple(
            cfgs.v2_child(r, [ls for ls, _ in r.selectors], [rs for _, rs in r.selectors])
            for r in members
        )
        any_peer = any(not r.peers for r in members)
        peers = () if any_peer else tuple(dict.fromkeys(p for r in members for p in r.peers))
        cfg = _v2_peer(f"{key[0]}:{key[1]}", local_auth, remote_auth, peers, ike_props, children,
                       schedule, ov, encap)  # fmt: skip
        cfgs._v2_by_auth[key] = cfg
        v2.append(cfg)
    if drr is not None and 2 in ov.versions:
        local_auth, remote_auth = _v2_auth(drr.auth, creds, identity)
        child = cfgs.v2_child(drr, [s[0] for s in drr.selectors], [s[1] for s in drr.selectors])
        v2.append(
            _v2_peer("<drr>", local_auth, remote_auth, (), ike_props, (child,), schedule, ov, encap)
        )
    cfgs.v2_responders = tuple(v2) if 2 in ov.versions else ()

    # IKEv1: connections by peer address (PSK is chosen before identities are known).
    v1: list[ike1.ConnectionConfig] = []
    v1_any: list[ike1.ConnectionConfig] = []
    if 1 in ov.versions:
        for r in rules.values():
            try:
                v1_children = tuple(
                    cfgs.v1_child(r, ls, rs, f"{r.rule}/{i}")
                    for i, (ls, rs) in enumerate(r.selectors)
                )
                hosts = [p for p in r.peers if "/" not in p or p.endswith(("/32", "/128"))]
                if r.peers and len(hosts) == len(r.peers):
                    for h in hosts:
                        addr = h.split("/")[0]
                        v1.append(
                            cfgs._v1_base(f"{r.rule}<{addr}", r.auth, "%any", addr, v1_children)
                        )
                else:
                    v1_any.append(
                        cfgs._v1_base(f"{r.rule}<any", r.auth, "%any", "%any", v1_children)
                    )
            except ConfigError as exc:
                warnings.append(f"IKEv1 responder for rule {r.rule!r}: {exc}")
        if drr is not None:
            try:
                v1_children = tuple(
                    cfgs.v1_child(drr, ls, rs, f"drr/{i}")
                    for i, (ls, rs) in enumerate(drr.selectors)
                )
                v1_any.append(cfgs._v1_base("<drr>", drr.auth, "%any", "%any", v1_children))
            except ConfigError as exc:
                warnings.append(f"IKEv1 default response rule: {exc}")
    cfgs.v1_responders = tuple(v1 + v1_any)
    return cfgs


def _v2_peer(
    name: str,
    local_auth: ike2.LocalAuth,
    remote_auth: ike2.RemoteAuth,
    peers: tuple[str, ...],
    proposals: tuple[ike2.ProposalConfig, ...],
    children: tuple[ike2.ChildConfig, ...],
    schedule: RetransmitSchedule,
    ov: IkeOverrides,
    force_encap: bool = False,
) -> ike2.PeerConfig:
    rekey = ov.ike_rekey_s if ov.ike_rekey_s is not None else 14400.0
    over = ov.ike_over_s if ov.ike_over_s is not None else rekey * 0.1
    return ike2.PeerConfig(
        name=name,
        local=local_auth,
        remote=remote_auth,
        remote_addrs=peers,
        proposals=proposals,
        children=children,
        retransmit=schedule,
        rekey_time=rekey,
        over_time=over,
        dpd_delay=ov.dpd_delay_s,
        fragmentation=ov.fragmentation,
        force_encap=force_encap,
        initial_child=not ov.childless,
    )
