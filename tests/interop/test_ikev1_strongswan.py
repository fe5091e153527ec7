"""Reference node <-> strongSwan 5.9.8, IKEv1 (RFC 2409): Main Mode + Quick Mode with PFS, and
Aggressive Mode with a PSK (strongSwan answers it only with
``i_dont_care_about_security_and_use_aggressive_mode_psk``, which its adapter sets for such a
scenario; peers.md §2), each side as initiator.

In each case pings cross the tunnel both ways, the capture (phase 1 from UDP 500, then 4500
after the faked NAT, Quick Mode, ESP in UDP, the Delete) verifies completely with our node's
keys alone and with strongSwan's alone, and the keys are equal SA by SA
(``tests/interop/live.py``); tshark decrypts the same IKEv1 messages and checks the ESP ICVs.
"""

from __future__ import annotations

import pytest

from harness.peers.base import Proposal
from harness.peers.reference import ReferencePeer
from harness.peers.strongswan import StrongSwanPeer
from harness.probes import tshark
from tests.interop.live import Live

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("strongswan"), pytest.mark.timeout(900)]

IKE = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
ESP_PFS = Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048")


@pytest.fixture(scope="module")
def peer(strongswan: StrongSwanPeer) -> StrongSwanPeer:
    return strongswan


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("initiator", ["reference", "strongswan"])
def test_ikev1_tunnel(
    live: Live, ref: ReferencePeer, peer: StrongSwanPeer, initiator: str, mode: str
) -> None:
    aggressive = mode == "aggressive"
    scenario = live.scenario_between(
        ike_version=1, ike_proposals=(IKE,), esp_proposals=(ESP_PFS,), aggressive=aggressive
    )
    live.configure(scenario)
    live.establish(initiator)

    (sa_ref,), (sa_sw,) = ref.list_sas(), peer.list_sas()
    assert sa_ref.version == sa_sw.version == 1
    assert (sa_ref.spi_i, sa_ref.spi_r) == (sa_sw.spi_i, sa_sw.spi_r)  # the cookies
    assert sa_ref.initiator == (initiator == "reference") != sa_sw.initiator
    (c_ref,), (c_sw,) = sa_ref.children, sa_sw.children
    assert (c_ref.spi_in, c_ref.spi_out) == (c_sw.spi_out, c_sw.spi_in)
    assert c_sw.proposal == str(ESP_PFS)  # the Quick Mode had PFS (RFC 2409 §5.5)
    assert c_ref.encap and c_sw.encap

    live.ping_both_ways()
    verdict = live.finish()

    messages = verdict.messages()
    phase1 = "AGGRESSIVE" if aggressive else "IDENTITY_PROTECTION"
    assert [m.exchange for m in messages[:3]] == [phase1] * 3
    assert {m.exchange for m in messages} == {phase1, "QUICK_MODE", "INFORMATIONAL"}
    first = messages[0]
    starter = live.a if initiator == "reference" else live.b
    assert first.src.split(":")[0] == starter.addresses.v4
    quick = [m for m in messages if m.exchange == "QUICK_MODE" and not m.retransmission]
    # One Quick Mode: QM1 and QM2 carry KE (PFS both ways), QM3 is HASH(3) alone. A loaded
    # machine may add a resent QM3 in answer to a resent QM2; it is the same exchange.
    by_id: dict[int, list[str]] = {}
    for m in quick:
        by_id.setdefault(m.message_id, []).append(" ".join(m.payloads))
    assert len(by_id) == 1, by_id
    (exchange,) = by_id.values()
    assert len(exchange) >= 3, exchange
    assert all("KE" in p.split() for p in exchange[:2]), exchange  # PFS both ways
    log = live.peer_log()
    kind = "Aggressive" if aggressive else "Main"
    if initiator == "strongswan":
        assert f"initiating {kind} Mode IKE_SA t[" in log
    else:  # strongSwan answered phase 1
        assert f"{live.a.addresses.v4} is initiating a {kind} Mode IKE_SA" in log
    if tshark.available():
        assert verdict.tshark_lines >= 3  # the ISAKMP SA and both ESP SAs
