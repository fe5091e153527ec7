"""The reference peer adapter without processes: manifest, registry, and what a scenario
becomes (a policy the policy agent accepts, node IKE settings in strongSwan syntax)."""

from __future__ import annotations

import yaml

from harness.peers.base import (
    ALL_FEATURES,
    Dpd,
    Endpoint,
    Lifetimes,
    Proposal,
    Retransmit,
    Scenario,
)
from harness.peers.reference import (
    ReferencePeer,
    child_proposal,
    ike_proposal,
    scenario_credentials,
    scenario_ike,
    scenario_policy,
)
from harness.peers.registry import describe_peers, peer_class
from reference_impl.node.config import IkeModel, parse
from reference_impl.policy import CompileEnv, compile_policy, load_policy_text

A = Endpoint("a", "198.18.0.1", "198.18.0.1", ("198.19.1.1/32",), 40001, 40002)
B = Endpoint("b", "198.18.0.2", "@b.example", ("198.19.2.0/24",))


def test_registry_and_full_manifest() -> None:
    assert peer_class("reference") is ReferencePeer
    caps = ReferencePeer.capabilities()
    assert set(caps.features) == set(ALL_FEATURES)
    for name in ("AES_GCM_16_128", "CHACHA20_POLY1305", "AES_CBC_256", "HMAC_SHA2_256_128"):
        assert name in caps.algorithms["esp"]
    assert "CURVE_25519" in caps.algorithms["ike"] and "MODP_2048" in caps.algorithms["pfs"]
    report = next(r for r in describe_peers() if r.kind == "reference")
    assert report.availability.available and report.capabilities is not None


def test_proposals_in_the_nodes_syntax() -> None:
    assert ike_proposal(Proposal.parse("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519")) == (
        "aes128gcm16-prfsha256-x25519"
    )
    assert child_proposal(Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/MODP_2048/EXT_SEQ")) == (
        "aes256-sha256-modp2048-esn"
    )


def _compiled(sc: Scenario, node: str, me: str) -> object:
    text = scenario_policy(sc, node)
    return compile_policy(load_policy_text(text), CompileEnv(local_addresses=(me,)))


def test_tunnel_scenario_compiles_to_a_rule_per_direction() -> None:
    sc = Scenario((A, B))
    compiled = _compiled(sc, "a", "198.18.0.1")
    protect = [e for e in compiled.spd.entries() if e.action.value == "protect"]  # type: ignore[attr-defined]
    assert {e.rule.name for e in protect} == {"t-out", "t-in"}
    assert all(e.tunnel == ("198.18.0.1", "198.18.0.2") for e in protect)


def test_transport_scenario_and_node_settings() -> None:
    sc = Scenario(
        (A, B),
        ike_version=1,
        mode="transport",
        ah_proposals=(Proposal.parse("HMAC_SHA2_256_128"),),
        lifetimes=Lifetimes(child_rekey=100, child_rekey_bytes=9000),
        dpd=Dpd(delay=5),
        retransmit=Retransmit(1.0, 1.5, 3),
        aggressive=True,
    )
    compiled = _compiled(sc, "b", "198.18.0.2")
    (rule,) = {e.rule.name for e in compiled.spd.entries() if e.rule is not None}  # type: ignore[attr-defined]
    assert rule == "t"
    ike = scenario_ike(sc)
    IkeModel.model_validate(ike)  # the node accepts it
    assert ike["ah_proposals"] == ["sha256"] and ike["esp_proposals"] == []
    assert ike["child_life_bytes"] == 10000 and ike["dpd_delay_s"] == 5
    assert ike["allow_aggressive_psk"] and ike["version"] == 1
    creds = scenario_credentials(sc, "b")
    assert creds["identity"] == "@b.example" and creds["psk"]["t"]["value"] == sc.psk
    cfg = parse(
        {"addresses": ["198.18.0.2"], "control": {"socket": "/tmp/x"}, "ike": ike,
         "credentials": creds},
    )  # fmt: skip
    assert cfg.ike.retransmit is not None and cfg.ike.retransmit.tries == 3
    yaml.safe_load(scenario_policy(sc, "b"))
