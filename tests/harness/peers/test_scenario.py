"""The neutral scenario, its spelling per implementation, and capability manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.peers import libreswan, strongswan
from harness.peers.base import (
    AH,
    CHILDLESS,
    ESP,
    FAST_RETRANSMIT,
    IKEV1,
    INITIATE,
    IPV6,
    KEYS,
    TRANSPORT,
    Endpoint,
    NotApplicable,
    Proposal,
    Scenario,
)
from harness.peers.external import DeviceDeclaration, ExternalPeer
from harness.peers.registry import ADAPTERS, describe_peers, peer_class


def _scenario(**kw: object) -> Scenario:
    a = Endpoint("a", "198.18.0.1", "198.18.0.1", ("198.19.1.1/32",))
    b = Endpoint("b", "198.18.0.2", "198.18.0.2", ("198.19.2.1/32",))
    return Scenario((a, b), **kw)  # type: ignore[arg-type]


def test_proposal_sorts_transforms_by_kind() -> None:
    p = Proposal.parse("MODP_2048/AES_CBC_256/PRF_HMAC_SHA2_256/HMAC_SHA2_256_128")
    assert p.encr == ("AES_CBC_256",) and p.integ == ("HMAC_SHA2_256_128",)
    assert p.prf == ("PRF_HMAC_SHA2_256",) and p.groups == ("MODP_2048",)
    assert not p.aead
    assert str(p) == "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    assert Proposal.parse("AES_GCM_16_128/EXT_SEQ").esn == (True,)
    assert Proposal.parse("CHACHA20_POLY1305").aead
    with pytest.raises(ValueError, match="unknown transform"):
        Proposal.parse("AES_CBC_999")
    with pytest.raises(ValueError, match="not a encr"):
        Proposal(encr=("MODP_2048",))


def test_strongswan_spelling() -> None:
    ike = Proposal.parse("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519")
    assert strongswan.ike_proposal(ike, 2) == "aes128gcm16-prfsha256-x25519"
    cbc = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
    assert strongswan.ike_proposal(cbc, 2) == "aes256-sha256-prfsha256-modp2048"
    assert strongswan.ike_proposal(cbc, 1) == "aes256-sha256-modp2048"  # IKEv1: no PRF
    esp = Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048")
    assert strongswan.child_proposal(esp) == "aes128-sha256-modp2048"
    assert strongswan.child_proposal(Proposal.parse("AES_GCM_16_128/EXT_SEQ")) == (
        "aes128gcm16-esn"
    )


def test_libreswan_spelling() -> None:
    cbc = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
    assert libreswan.ike_proposal(cbc, 2) == "aes256-sha2_256-modp2048"
    gcm = Proposal.parse("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519")
    assert libreswan.ike_proposal(gcm, 2) == "aes_gcm_c128-sha2_256-dh31"
    assert libreswan.child_proposal(Proposal.parse("AES_GCM_16_128")) == "aes_gcm_c128"
    odd = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_512/MODP_2048")
    with pytest.raises(NotApplicable, match="ties the PRF"):
        libreswan.ike_proposal(odd, 2)


def test_scenario_needs() -> None:
    assert {ESP, "child_sa", "mode.tunnel", "ikev2", "auth.psk"} <= _scenario().needs()
    assert CHILDLESS in _scenario(child=False).needs()
    assert ESP not in _scenario(child=False).needs()
    ah = _scenario(ah_proposals=(Proposal.parse("HMAC_SHA2_256_128"),), mode="transport")
    assert {AH, TRANSPORT} <= ah.needs() and ESP not in ah.needs()
    assert IKEV1 in _scenario(ike_version=1).needs()
    v6 = Scenario(
        (
            Endpoint("a", "2001:db8::1", "2001:db8::1", ("2001:db8:ff:1::1/128",)),
            Endpoint("b", "2001:db8::2", "2001:db8::2", ("2001:db8:ff:2::1/128",)),
        )
    )
    assert IPV6 in v6.needs()
    sc = _scenario()
    assert sc.local("a").address == "198.18.0.1" and sc.remote("a").address == "198.18.0.2"
    with pytest.raises(ValueError, match="cert and key"):
        _scenario(auth="pubkey")


def test_fast_retransmit_gives_up_after_8_125_seconds() -> None:
    # peers.md §6: timeout=1, base=1.5, tries=3 -> 1 + 1.5 + 2.25 + 3.375
    assert FAST_RETRANSMIT.give_up_after() == pytest.approx(8.125)


def test_strongswan_manifest_says_why_ah_esn_transport_and_gmac_cannot_run() -> None:
    caps = strongswan.StrongSwanPeer.capabilities()
    assert caps.check(scenario=_scenario()) == [] or not caps.has(ESP)
    ah = _scenario(ah_proposals=(Proposal.parse("HMAC_SHA2_256_128"),))
    assert any("ah: kernel-libipsec implements no AH" in r for r in caps.check(scenario=ah))
    esn = _scenario(esp_proposals=(Proposal.parse("AES_GCM_16_128/EXT_SEQ"),))
    assert any(r.startswith("esn:") for r in caps.check(scenario=esn))
    gmac = _scenario(esp_proposals=(Proposal.parse("NULL_AES_GMAC_128"),))
    assert "esp transform NULL_AES_GMAC_128: not supported here" in caps.check(scenario=gmac)
    transport = _scenario(mode="transport")
    with pytest.raises(NotApplicable) as exc:
        caps.require(scenario=transport)
    assert "unsupported mode" in str(exc.value)
    assert caps.to_json()["features"]["raw_esp"] is False  # type: ignore[index]


def test_external_device_runs_only_what_it_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV_PSK", "s3cret")
    device = DeviceDeclaration.from_mapping(
        {
            "address": "198.18.0.2",
            "psk_env": "DEV_PSK",
            "ike_versions": [2],
            "ike_proposals": ["AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"],
            "esp_proposals": ["AES_GCM_16_128"],
            "features": ["child_sa", "esp", "mode.tunnel", "nat_t"],
        }
    )
    assert device.psk == "s3cret"
    peer = ExternalPeer(device)
    peer.check(scenario=_scenario())  # what it declared: applicable
    with pytest.raises(NotApplicable, match="ikev1"):
        peer.check(scenario=_scenario(ike_version=1))
    with pytest.raises(NotApplicable, match="initiate: the harness cannot"):
        peer.check([INITIATE])
    with pytest.raises(NotApplicable, match="keys of an external device"):
        peer.keys()
    with pytest.raises(NotApplicable):
        peer.initiate()
    other = _scenario(esp_proposals=(Proposal.parse("CHACHA20_POLY1305"),))
    with pytest.raises(NotApplicable, match="CHACHA20_POLY1305"):
        peer.check(scenario=other)
    with pytest.raises(ValueError, match="unknown features"):
        DeviceDeclaration.from_mapping({"address": "x", "features": ["teleport"]})
    assert not ExternalPeer.capabilities().has(KEYS)


def test_registry_lists_every_adapter() -> None:
    reports = {r.kind: r for r in describe_peers()}
    assert set(reports) == set(ADAPTERS) == {"reference", "strongswan", "libreswan", "external"}
    if not (Path(__file__).resolve().parents[3] / "harness/peers/reference.py").exists():
        assert not reports["reference"].availability.available
        assert "not built yet" in reports["reference"].availability.detail
    assert peer_class("strongswan") is strongswan.StrongSwanPeer
    with pytest.raises(ValueError, match="unknown peer"):
        peer_class("racoon")


def test_peers_command_prints_manifests_as_json() -> None:
    result = CliRunner().invoke(cli, ["peers", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    kinds = [p["peer"] for p in data["peers"]]
    assert kinds == ["reference", "strongswan", "libreswan", "external"]
    sw = data["peers"][1]
    if sw["available"]:
        assert sw["capabilities"]["features"]["ah"] is False
        assert "ah" in sw["capabilities"]["missing"]
    table = CliRunner().invoke(cli, ["peers"])
    assert table.exit_code == 0 and "strongswan" in table.output


def test_clean_command_reports_json() -> None:
    result = CliRunner().invoke(cli, ["clean", "--json"])
    report = json.loads(result.output)
    assert set(report) == {"removed", "errors"}
    # 1 exactly when something could not be removed (and then it says what).
    assert result.exit_code == (1 if report["errors"] else 0), result.output
