"""Phase-1 and phase-2 proposals: building, parsing and selection.

Phase 1 (RFC 2409 §5, Appendix A): one ISAKMP proposal with KEY_IKE transforms whose Oakley
attributes are encryption (with key length), hash, authentication method, group and lifetime.
Phase 2 (RFC 2407 §4.4, §4.5; RFC 2409 §5.5): ESP or AH proposals with IPsec DOI attributes
(encapsulation mode, authentication algorithm, key length, lifetimes, PFS group).

Every IKEv1 number is mapped to the IKEv2 transform IDs of the crypto registry
(``reference_impl.crypto.ids.IKEV1_*``), so the driver sees one form (:mod:`reference_impl.sa`).
Attribute order follows strongSwan (what peers compare against in practice).
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.crypto import dh, encr, integ, prf
from reference_impl.crypto.ids import (
    IKEV1_AH_TO_INTEG,
    IKEV1_AUTH_TO_INTEG,
    IKEV1_ENCR_TO_ENCR,
    IKEV1_ESP_TO_ENCR,
    IKEV1_HASH_TO_INTEG,
    IKEV1_HASH_TO_PRF,
)
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.isakmp.codec import Attribute, Proposal, SaPayload, Transform
from reference_impl.isakmp.constants import (
    KEY_IKE,
    AuthMethod,
    EncapsulationMode,
    IpsecAttr,
    LifeType,
    NotifyType,
    OakleyAttr,
    ProtocolId,
)
from reference_impl.sa import IpsecProtocol, Mode

_AEAD_ESP = frozenset({14, 15, 16, 18, 19, 20, 23})
"""ESP transforms that carry their own integrity (CCM, GCM, GMAC): no auth attribute."""


def _no_prop(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, notify=NotifyType.NO_PROPOSAL_CHOSEN)


# --------------------------------------------------------------------------------------------
# Phase 1


@dataclass(frozen=True, slots=True)
class Phase1Transform:
    """One Oakley protection suite (RFC 2409 Appendix A attribute values)."""

    encryption: int
    """Encryption Algorithm (Ikev1EncrId), e.g. 7 = AES-CBC."""
    key_bits: int | None
    hash: int
    """Hash Algorithm (Ikev1HashId), e.g. 4 = SHA2-256."""
    auth_method: int
    group: int
    """Group Description (= DhId)."""
    life_seconds: int | None = 28800
    life_kilobytes: int | None = None

    def to_transform(self, number: int) -> Transform:
        attrs = [Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, self.encryption)]
        if self.key_bits is not None:
            attrs.append(Attribute(OakleyAttr.KEY_LENGTH, self.key_bits))
        attrs += [
            Attribute(OakleyAttr.HASH_ALGORITHM, self.hash),
            Attribute(OakleyAttr.GROUP_DESCRIPTION, self.group),
            Attribute(OakleyAttr.AUTHENTICATION_METHOD, self.auth_method),
        ]
        if self.life_seconds is not None:
            attrs.append(Attribute(OakleyAttr.LIFE_TYPE, LifeType.SECONDS))
            attrs.append(Attribute.integer(OakleyAttr.LIFE_DURATION, self.life_seconds))
        if self.life_kilobytes is not None:
            attrs.append(Attribute(OakleyAttr.LIFE_TYPE, LifeType.KILOBYTES))
            attrs.append(Attribute.integer(OakleyAttr.LIFE_DURATION, self.life_kilobytes))
        return Transform(number, KEY_IKE, tuple(attrs))

    @classmethod
    def from_transform(cls, t: Transform) -> Phase1Transform:
        """Parse a KEY_IKE transform; unknown or unsupported attributes raise
        ATTRIBUTES-NOT-SUPPORTED (RFC 2408 §5.6)."""
        if t.transform_id != KEY_IKE:
            raise RemoteProtocolError(
                f"phase-1 transform ID {t.transform_id}", notify=NotifyType.INVALID_TRANSFORM_ID
            )
        vals: dict[int, int] = {}
        life_s: int | None = None
        life_kb: int | None = None
        life_type: int | None = None
        for a in t.attributes:
            if a.type == OakleyAttr.LIFE_TYPE:
                life_type = a.as_int()
                continue
            if a.type == OakleyAttr.LIFE_DURATION:
                if life_type == LifeType.SECONDS:
                    life_s = a.as_int()
                elif life_type == LifeType.KILOBYTES:
                    life_kb = a.as_int()
                else:
                    raise RemoteProtocolError(
                        "life duration without a known life type",
                        notify=NotifyType.ATTRIBUTES_NOT_SUPPORTED,
                    )
                continue
            if a.type not in (
                OakleyAttr.ENCRYPTION_ALGORITHM,
                OakleyAttr.HASH_ALGORITHM,
                OakleyAttr.AUTHENTICATION_METHOD,
                OakleyAttr.GROUP_DESCRIPTION,
                OakleyAttr.KEY_LENGTH,
            ):
                raise RemoteProtocolError(
                    f"phase-1 attribute {a.type} not supported",
                    notify=NotifyType.ATTRIBUTES_NOT_SUPPORTED,
                )
            vals[a.type] = a.as_int()
        for need in (
            OakleyAttr.ENCRYPTION_ALGORITHM,
            OakleyAttr.HASH_ALGORITHM,
            OakleyAttr.AUTHENTICATION_METHOD,
            OakleyAttr.GROUP_DESCRIPTION,
        ):
            if need not in vals:
                raise RemoteProtocolError(
                    f"phase-1 transform lacks attribute {need}",
                    notify=NotifyType.BAD_PROPOSAL_SYNTAX,
                )
        return cls(
            vals[OakleyAttr.ENCRYPTION_ALGORITHM],
            vals.get(OakleyAttr.KEY_LENGTH),
            vals[OakleyAttr.HASH_ALGORITHM],
            vals[OakleyAttr.AUTHENTICATION_METHOD],
            vals[OakleyAttr.GROUP_DESCRIPTION],
            life_s,
            life_kb,
        )

    def same_suite(self, other: Phase1Transform) -> bool:
        """Equal apart from lifetimes (those are the initiator's to choose, RFC 2409 §4)."""
        return (self.encryption, self.key_bits, self.hash, self.auth_method, self.group) == (
            other.encryption,
            other.key_bits,
            other.hash,
            other.auth_method,
            other.group,
        )

    # registry views
    @property
    def encr_id(self) -> int:
        try:
            return IKEV1_ENCR_TO_ENCR[self.encryption]
        except KeyError:
            raise _no_prop(f"phase-1 encryption {self.encryption} unknown") from None

    @property
    def prf_id(self) -> int:
        try:
            return IKEV1_HASH_TO_PRF[self.hash]
        except KeyError:
            raise _no_prop(f"phase-1 hash {self.hash} unknown") from None

    def usable(self) -> bool:
        """Whether the registry can run this suite (used to skip unsupported transforms)."""
        try:
            encr(self.encr_id, self.key_bits)
            prf(self.prf_id)
            dh(self.group)
        except (LocalProtocolError, RemoteProtocolError):
            return False
        return self.auth_method in (AuthMethod.PRE_SHARED_KEY, AuthMethod.RSA_SIGNATURES)

    def algorithms(self) -> str:
        """strongSwan notation: ``AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048``."""
        parts = [encr(self.encr_id, self.key_bits).name]
        if self.hash in IKEV1_HASH_TO_INTEG:
            parts.append(integ(IKEV1_HASH_TO_INTEG[self.hash]).name)
        parts.append(prf(self.prf_id).name)
        parts.append(dh(self.group).name)
        return "/".join(parts)


def phase1_sa(transforms: tuple[Phase1Transform, ...] | list[Phase1Transform]) -> SaPayload:
    """The initiator's phase-1 SA: one ISAKMP proposal, transforms numbered from 1."""
    ts = tuple(t.to_transform(i + 1) for i, t in enumerate(transforms))
    return SaPayload((Proposal(1, ProtocolId.PROTO_ISAKMP, b"", ts),))


def select_phase1(
    sa: SaPayload, ours: tuple[Phase1Transform, ...] | list[Phase1Transform]
) -> tuple[Proposal, Transform, Phase1Transform]:
    """Responder choice (RFC 2408 §4.2): the first of the initiator's transforms that one of
    ours matches. Returns the proposal and transform to echo, and the parsed suite."""
    last_error: RemoteProtocolError | None = None
    for p in sa.proposals:
        if p.protocol_id != ProtocolId.PROTO_ISAKMP:
            continue
        for t in p.transforms:
            try:
                theirs = Phase1Transform.from_transform(t)
            except RemoteProtocolError as e:
                last_error = e
                continue
            if any(o.same_suite(theirs) for o in ours):
                return p, t, theirs
    detail = f" (last problem: {last_error})" if last_error else ""
    raise _no_prop("no acceptable phase-1 transform" + detail)


def accept_phase1_reply(
    sa: SaPayload, offered: tuple[Phase1Transform, ...] | list[Phase1Transform]
) -> Phase1Transform:
    """The initiator checks the responder's one chosen transform is one it offered."""
    if len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
        raise RemoteProtocolError(
            "reply SA must carry exactly one transform", notify=NotifyType.BAD_PROPOSAL_SYNTAX
        )
    p = sa.proposals[0]
    if p.protocol_id != ProtocolId.PROTO_ISAKMP:
        raise RemoteProtocolError("reply is not ISAKMP", notify=NotifyType.INVALID_PROTOCOL_ID)
    chosen = Phase1Transform.from_transform(p.transforms[0])
    for o in offered:
        if o.same_suite(chosen):
            return chosen
    raise _no_prop("responder chose a transform we did not offer")


# --------------------------------------------------------------------------------------------
# Phase 2


@dataclass(frozen=True, slots=True)
class Phase2Transform:
    """One IPsec DOI transform: ESP (transform ID = cipher) or AH (transform ID = MAC)."""

    protocol: IpsecProtocol
    transform_id: int
    key_bits: int | None = None
    auth_algorithm: int | None = None
    """IPsec DOI Authentication Algorithm attribute (None for AEAD ESP)."""
    esn: bool = False

    @property
    def encr_id(self) -> int | None:
        if self.protocol != IpsecProtocol.ESP:
            return None
        try:
            return IKEV1_ESP_TO_ENCR[self.transform_id]
        except KeyError:
            raise _no_prop(f"ESP transform {self.transform_id} unknown") from None

    @property
    def integ_id(self) -> int | None:
        try:
            if self.protocol == IpsecProtocol.AH:
                return IKEV1_AH_TO_INTEG[self.transform_id]
            if self.auth_algorithm is None:
                return None
            return IKEV1_AUTH_TO_INTEG[self.auth_algorithm]
        except KeyError:
            raise _no_prop("unknown authentication algorithm") from None

    def keymat_len(self) -> tuple[int, int]:
        """(encryption key octets incl. salt, integrity key octets) of one direction."""
        e = self.encr_id
        i = self.integ_id
        elen = encr(e, self.key_bits).key_len if e is not None else 0
        ilen = integ(i).key_len if i is not None else 0
        return elen, ilen

    def usable(self) -> bool:
        try:
            self.keymat_len()
            e = self.encr_id
            if e is not None:
                encr(e, self.key_bits).prepare(bytes(encr(e, self.key_bits).key_len))
        except (LocalProtocolError, RemoteProtocolError):
            return False
        return True

    def name(self) -> str:
        parts = []
        e = self.encr_id
        if e is not None:
            parts.append(encr(e, self.key_bits).name)
        i = self.integ_id
        if i is not None:
            parts.append(integ(i).name)
        return "/".join(parts)


@dataclass(frozen=True, slots=True)
class Phase2Offer:
    """What one Quick Mode proposes for one protocol, besides the algorithms."""

    mode: Mode
    udp_encap: bool
    draft_encap: bool
    """Use the draft-ietf-ipsec-nat-t encapsulation numbers (peer spoke only the draft)."""
    pfs_group: int | None
    life_seconds: int | None
    life_kilobytes: int | None


def _encap_value(offer: Phase2Offer) -> int:
    if not offer.udp_encap:
        return (
            EncapsulationMode.TUNNEL if offer.mode == Mode.TUNNEL else EncapsulationMode.TRANSPORT
        )
    if offer.draft_encap:
        return (
            EncapsulationMode.UDP_ENCAPSULATED_TUNNEL_DRAFT
            if offer.mode == Mode.TUNNEL
            else EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT_DRAFT
        )
    return (
        EncapsulationMode.UDP_ENCAPSULATED_TUNNEL
        if offer.mode == Mode.TUNNEL
        else EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT
    )


def phase2_transform(t: Phase2Transform, number: int, offer: Phase2Offer) -> Transform:
    """Attributes in strongSwan's order (key length, auth, mode, lifetimes; seen in its QM1)."""
    attrs: list[Attribute] = []
    if t.key_bits is not None:
        attrs.append(Attribute(IpsecAttr.KEY_LENGTH, t.key_bits))
    if t.auth_algorithm is not None:
        attrs.append(Attribute(IpsecAttr.AUTHENTICATION_ALGORITHM, t.auth_algorithm))
    attrs.append(Attribute(IpsecAttr.ENCAPSULATION_MODE, _encap_value(offer)))
    if offer.life_seconds is not None:
        attrs.append(Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS))
        attrs.append(Attribute.integer(IpsecAttr.SA_LIFE_DURATION, offer.life_seconds))
    if offer.life_kilobytes is not None:
        attrs.append(Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES))
        attrs.append(Attribute.integer(IpsecAttr.SA_LIFE_DURATION, offer.life_kilobytes))
    if offer.pfs_group is not None:
        attrs.append(Attribute(IpsecAttr.GROUP_DESCRIPTION, offer.pfs_group))
    if t.esn:
        attrs.append(Attribute(IpsecAttr.EXTENDED_SEQUENCE_NUMBER, 1))
    return Transform(number, t.transform_id, tuple(attrs))


def phase2_sa(
    transforms: tuple[Phase2Transform, ...] | list[Phase2Transform],
    spis: dict[IpsecProtocol, bytes],
    offer: Phase2Offer,
) -> SaPayload:
    """strongSwan's layout: one proposal per transform, numbered from 1, one SPI per protocol."""
    props = []
    for i, t in enumerate(transforms):
        props.append(
            Proposal(i + 1, int(t.protocol), spis[t.protocol], (phase2_transform(t, 1, offer),))
        )
    return SaPayload(tuple(props))


@dataclass(frozen=True, slots=True)
class Phase2Choice:
    """A parsed phase-2 transform with its SA attributes."""

    transform: Phase2Transform
    mode: Mode
    udp_encap: bool
    pfs_group: int | None
    life_seconds: int | None
    life_kilobytes: int | None


def parse_phase2_transform(protocol_id: int, t: Transform) -> Phase2Choice:
    """RFC 2407 §4.5; unknown attributes raise ATTRIBUTES-NOT-SUPPORTED."""
    if protocol_id == ProtocolId.PROTO_IPSEC_ESP:
        proto = IpsecProtocol.ESP
    elif protocol_id == ProtocolId.PROTO_IPSEC_AH:
        proto = IpsecProtocol.AH
    else:
        raise RemoteProtocolError(
            f"protocol {protocol_id} in Quick Mode", notify=NotifyType.INVALID_PROTOCOL_ID
        )
    life_type: int | None = None
    life_s = life_kb = None
    mode = Mode.TUNNEL
    encap = False
    auth = key_bits = group = None
    esn = False
    for a in t.attributes:
        v = a.as_int()
        if a.type == IpsecAttr.SA_LIFE_TYPE:
            life_type = v
        elif a.type == IpsecAttr.SA_LIFE_DURATION:
            if life_type == LifeType.SECONDS:
                life_s = v
            elif life_type == LifeType.KILOBYTES:
                life_kb = v
            else:
                raise RemoteProtocolError(
                    "SA life duration without type", notify=NotifyType.ATTRIBUTES_NOT_SUPPORTED
                )
        elif a.type == IpsecAttr.ENCAPSULATION_MODE:
            if v in (EncapsulationMode.TUNNEL, EncapsulationMode.TRANSPORT):
                encap = False
            elif v in (
                EncapsulationMode.UDP_ENCAPSULATED_TUNNEL,
                EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT,
                EncapsulationMode.UDP_ENCAPSULATED_TUNNEL_DRAFT,
                EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT_DRAFT,
            ):
                encap = True
            else:
                raise RemoteProtocolError(
                    f"encapsulation mode {v}", notify=NotifyType.ATTRIBUTES_NOT_SUPPORTED
                )
            mode = (
                Mode.TUNNEL
                if v
                in (
                    EncapsulationMode.TUNNEL,
                    EncapsulationMode.UDP_ENCAPSULATED_TUNNEL,
                    EncapsulationMode.UDP_ENCAPSULATED_TUNNEL_DRAFT,
                )
                else Mode.TRANSPORT
            )
        elif a.type == IpsecAttr.AUTHENTICATION_ALGORITHM:
            auth = v
        elif a.type == IpsecAttr.KEY_LENGTH:
            key_bits = v
        elif a.type == IpsecAttr.GROUP_DESCRIPTION:
            group = v
        elif a.type == IpsecAttr.EXTENDED_SEQUENCE_NUMBER:
            esn = v == 1
        else:
            raise RemoteProtocolError(
                f"IPsec attribute {a.type} not supported",
                notify=NotifyType.ATTRIBUTES_NOT_SUPPORTED,
            )
    return Phase2Choice(
        Phase2Transform(proto, t.transform_id, key_bits, auth, esn),
        mode,
        encap,
        group,
        life_s,
        life_kb,
    )


def select_phase2(
    sa: SaPayload,
    ours: tuple[Phase2Transform, ...] | list[Phase2Transform],
    mode: Mode,
    udp_encap: bool,
    pfs_group: int | None,
) -> tuple[Proposal, Transform, Phase2Choice]:
    """Responder choice: the first initiator transform matching one of ours with the same mode,
    encapsulation and PFS group. Proposals of one number with several protocols (AH+ESP
    bundles, RFC 2408 §4.2) are not supported and are skipped."""
    counts: dict[int, int] = {}
    for p in sa.proposals:
        counts[p.number] = counts.get(p.number, 0) + 1
    last_error: RemoteProtocolError | None = None
    for p in sa.proposals:
        if counts[p.number] != 1 or len(p.spi) != 4:
            continue
        for t in p.transforms:
            try:
                c = parse_phase2_transform(p.protocol_id, t)
            except RemoteProtocolError as e:
                last_error = e
                continue
            if c.mode != mode or c.udp_encap != udp_encap or c.pfs_group != pfs_group:
                continue
            if any(o == c.transform for o in ours):
                return p, t, c
    detail = f" (last problem: {last_error})" if last_error else ""
    raise _no_prop("no acceptable Quick Mode proposal" + detail)


def lifetime_min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


AEAD_ESP_TRANSFORMS = _AEAD_ESP
