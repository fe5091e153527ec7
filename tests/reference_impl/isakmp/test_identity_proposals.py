"""ID payloads as identities and selectors (RFC 2407 §4.6.2); proposal selection (RFC 2409 §5,
RFC 2407 §4.5)."""

from __future__ import annotations

import ipaddress

import pytest

from reference_impl.crypto.ids import DhId, EncrId, IntegId
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.isakmp.codec import Attribute, IdPayload, Transform
from reference_impl.isakmp.constants import (
    AuthMethod,
    EncapsulationMode,
    IdType,
    IpsecAttr,
    NotifyType,
)
from reference_impl.isakmp.identity import Identity, id_from_selector, selector_from_id
from reference_impl.isakmp.proposals import (
    Phase1Transform,
    Phase2Offer,
    parse_phase2_transform,
    phase1_sa,
    phase2_sa,
    select_phase1,
    select_phase2,
)
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector
from tests.reference_impl.isakmp.algs import AH_SHA256, ESP_CBC, ESP_GCM, P1_AES128_SHA1, P1_AES256


def test_identity_parse() -> None:
    assert Identity.parse("10.99.0.1") == Identity(IdType.ID_IPV4_ADDR, bytes([10, 99, 0, 1]))
    assert Identity.parse("2001:db8::1").id_type == IdType.ID_IPV6_ADDR
    assert Identity.parse("moon.example").id_type == IdType.ID_FQDN
    assert Identity.parse("carol@example.org").id_type == IdType.ID_USER_FQDN
    assert Identity.parse("keyid:abc") == Identity(IdType.ID_KEY_ID, b"abc")
    dn = Identity.parse("CN=moon,O=example")
    assert dn.id_type == IdType.ID_DER_ASN1_DN and dn.data.startswith(b"\x30")
    assert str(Identity.parse("10.99.0.1")) == "10.99.0.1"


@pytest.mark.parametrize(
    ("ts", "id_type"),
    [
        (TrafficSelector.from_network("10.1.0.1/32"), IdType.ID_IPV4_ADDR),
        (TrafficSelector.from_network("10.1.0.0/24", 6, 80, 80), IdType.ID_IPV4_ADDR_SUBNET),
        (TrafficSelector(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.5")),
         IdType.ID_IPV4_ADDR_RANGE),
        (TrafficSelector.from_network("2001:db8::/64"), IdType.ID_IPV6_ADDR_SUBNET),
    ],
)  # fmt: skip
def test_selector_round_trip(ts: TrafficSelector, id_type: int) -> None:
    p = id_from_selector(ts)
    assert p.id_type == id_type
    assert selector_from_id(p) == ts


def test_selector_errors() -> None:
    with pytest.raises(LocalProtocolError):
        id_from_selector(TrafficSelector.from_network("10.0.0.0/8", 6, 1, 1024))
    with pytest.raises(RemoteProtocolError) as e:
        selector_from_id(IdPayload(IdType.ID_IPV4_ADDR, b"\1\2\3"))
    assert e.value.notify == NotifyType.INVALID_ID_INFORMATION
    with pytest.raises(RemoteProtocolError):  # non-contiguous mask
        selector_from_id(
            IdPayload(IdType.ID_IPV4_ADDR_SUBNET, bytes([10, 0, 0, 0, 255, 0, 255, 0]))
        )
    with pytest.raises(RemoteProtocolError):
        selector_from_id(IdPayload(IdType.ID_FQDN, b"x"))


def test_phase1_selection_prefers_initiator_order() -> None:
    sa = phase1_sa([P1_AES128_SHA1, P1_AES256])
    _prop, t, chosen = select_phase1(sa, [P1_AES256, P1_AES128_SHA1])
    assert chosen == P1_AES128_SHA1 and t.number == 1
    other = Phase1Transform(7, 192, 4, AuthMethod.PRE_SHARED_KEY, DhId.MODP_2048)
    with pytest.raises(RemoteProtocolError) as e:
        select_phase1(sa, [other])
    assert e.value.notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_phase1_lifetime_not_compared_and_unknown_attribute() -> None:
    short = Phase1Transform(7, 256, 4, AuthMethod.PRE_SHARED_KEY, DhId.MODP_2048, 600)
    assert select_phase1(phase1_sa([short]), [P1_AES256])[2].life_seconds == 600
    t = Transform(1, 1, (*P1_AES256.to_transform(1).attributes, Attribute(16, b"\1")))
    with pytest.raises(RemoteProtocolError) as e:
        Phase1Transform.from_transform(t)
    assert e.value.notify == NotifyType.ATTRIBUTES_NOT_SUPPORTED


def test_phase2_mapping_to_registry_ids() -> None:
    assert (ESP_CBC.encr_id, ESP_CBC.integ_id) == (
        EncrId.ENCR_AES_CBC,
        IntegId.AUTH_HMAC_SHA2_256_128,
    )
    assert ESP_CBC.keymat_len() == (16, 32)
    assert (ESP_GCM.encr_id, ESP_GCM.integ_id) == (EncrId.ENCR_AES_GCM_16, None)
    assert ESP_GCM.keymat_len() == (36, 0)  # 32 key + 4 salt (RFC 4106 §8.1)
    assert (AH_SHA256.encr_id, AH_SHA256.integ_id) == (None, IntegId.AUTH_HMAC_SHA2_256_128)


def test_phase2_selection_and_encapsulation() -> None:
    offer = Phase2Offer(Mode.TUNNEL, True, False, DhId.MODP_2048, 3600, None)
    spis = {IpsecProtocol.ESP: b"\1\2\3\4", IpsecProtocol.AH: b"\5\6\7\x08"}
    sa = phase2_sa([ESP_GCM, ESP_CBC, AH_SHA256], spis, offer)
    assert [p.number for p in sa.proposals] == [1, 2, 3]
    mode = sa.proposals[0].transforms[0].attr(IpsecAttr.ENCAPSULATION_MODE)
    assert mode is not None and mode.value == EncapsulationMode.UDP_ENCAPSULATED_TUNNEL
    prop, _, c = select_phase2(sa, [ESP_CBC], Mode.TUNNEL, True, DhId.MODP_2048)
    assert prop.number == 2 and c.transform == ESP_CBC and c.life_seconds == 3600
    with pytest.raises(RemoteProtocolError):  # PFS group must match
        select_phase2(sa, [ESP_CBC], Mode.TUNNEL, True, None)
    with pytest.raises(RemoteProtocolError):  # no UDP encapsulation expected
        select_phase2(sa, [ESP_CBC], Mode.TUNNEL, False, DhId.MODP_2048)
    draft = phase2_sa([ESP_CBC], spis, Phase2Offer(Mode.TRANSPORT, True, True, None, None, 4096))
    c2 = parse_phase2_transform(3, draft.proposals[0].transforms[0])
    assert c2.mode == Mode.TRANSPORT and c2.udp_encap and c2.life_kilobytes == 4096
