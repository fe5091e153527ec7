"""Reference node <-> strongSwan 5.9.8 (kernel-libipsec), IKEv2: each side as initiator and as
responder, with a PSK, RSA certificates and ECDSA certificates, for three suites (IKE and ESP):
AES-CBC-256/HMAC-SHA2-256/MODP-2048, AES-GCM-16-128/X25519 and ChaCha20-Poly1305/X25519.

In each case pings cross the tunnel both ways, the capture of the link verifies completely with
our node's keys alone and with strongSwan's alone, the two key sets are equal SA by SA, and
tshark agrees with the oracle where Wireshark 4.0 has the algorithms (``tests/interop/live.py``).
strongSwan's libipsec fakes a NAT, so IKE floats to 4500 and ESP is UDP-encapsulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from harness.peers.base import Proposal
from harness.peers.pki import Pki
from harness.peers.reference import ReferencePeer
from harness.peers.strongswan import StrongSwanPeer
from harness.probes import tshark
from harness.probes.keys import KeySet, wireshark_table
from harness.probes.oracle import check_pcap
from tests.interop.live import Live, key_differences, verify

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("strongswan"), pytest.mark.timeout(900)]

SUITES = {
    "cbc-modp2048": (
        "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        "AES_CBC_256/HMAC_SHA2_256_128/MODP_2048",
    ),
    "gcm-x25519": ("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519", "AES_GCM_16_128/CURVE_25519"),
    "chacha20": (
        "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
        "CHACHA20_POLY1305/CURVE_25519",
    ),
}
"""IKE proposal and ESP proposal (its DH group is the PFS group, used from the first rekey)."""

AUTH_METHOD = {
    # strongSwan signs with RFC 7427 digital signatures (auth method 14) by default
    "rsa": "RSA_EMSA_PKCS1_SHA2_256",
    "ecdsa": "ECDSA_WITH_SHA256_DER",
    "psk": "pre-shared key",
}


@pytest.fixture(scope="module")
def peer(strongswan: StrongSwanPeer) -> StrongSwanPeer:
    return strongswan


@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("auth", ["psk", "rsa", "ecdsa"])
@pytest.mark.parametrize("initiator", ["reference", "strongswan"])
def test_ikev2_tunnel(
    live: Live,
    ref: ReferencePeer,
    peer: StrongSwanPeer,
    pkis: Callable[[str], Pki],
    initiator: str,
    auth: str,
    suite: str,
) -> None:
    ike, esp = (Proposal.parse(p) for p in SUITES[suite])
    scenario = live.scenario_between(ike_proposals=(ike,), esp_proposals=(esp,))
    if auth != "psk":
        scenario = pkis(auth).apply(scenario)
    live.configure(scenario)
    live.establish(initiator)

    (sa_ref,), (sa_sw,) = ref.list_sas(), peer.list_sas()
    assert (sa_ref.spi_i, sa_ref.spi_r) == (sa_sw.spi_i, sa_sw.spi_r)
    assert sa_ref.initiator == (initiator == "reference") != sa_sw.initiator
    assert sa_ref.proposal == sa_sw.proposal == str(ike)
    assert sa_ref.nat and sa_sw.nat  # libipsec's faked NAT (peers.md §0)
    (c_ref,), (c_sw,) = sa_ref.children, sa_sw.children
    assert (c_ref.spi_in, c_ref.spi_out) == (c_sw.spi_out, c_sw.spi_in)
    no_pfs = "/".join((*esp.encr, *esp.integ))  # IKE_AUTH's Child SA has no KE (RFC 7296 §1.2)
    assert c_ref.proposal == c_sw.proposal == no_pfs
    assert c_ref.encap and c_sw.encap and c_ref.mode == c_sw.mode == "TUNNEL"

    live.ping_both_ways()
    assert ref.list_sas()[0].children[0].packets_in >= 3
    verdict = live.finish()

    exchanges = verdict.exchanges()
    assert exchanges[:4] == ["IKE_SA_INIT", "IKE_SA_INIT", "IKE_AUTH", "IKE_AUTH"]
    assert exchanges[-2:] == ["INFORMATIONAL", "INFORMATIONAL"]  # the Delete and its answer
    spis = {s.spi for s in verdict.reference.ipsec_sas if s.packets}
    assert spis == {f"0x{c_ref.spi_in:08x}", f"0x{c_ref.spi_out:08x}"}
    # each end authenticated the other the way the scenario says
    us, them = live.a.addresses.v4, live.b.addresses.v4
    log = live.peer_log()
    assert f"authentication of '{us}' with {AUTH_METHOD[auth]} successful" in log
    assert f"authentication of '{them}' (myself) with {AUTH_METHOD[auth]}" in log
    if suite != "chacha20" and tshark.available():  # Wireshark 4.0 has no ChaCha20-Poly1305
        assert verdict.tshark_lines >= 3  # the IKE SA and both ESP SAs were cross-checked


def test_the_checks_catch_corrupted_icvs_and_differing_keys(
    live: Live, ref: ReferencePeer, peer: StrongSwanPeer
) -> None:
    """Sensitivity: our node told to flip the ICV of its next two ESP packets (strongSwan
    drops them). Each key set alone makes the oracle count exactly those two as bad (the
    rest good), :func:`verify` refuses the capture, tshark counts the same, and a single
    altered key is reported by the key comparison."""
    live.configure(live.scenario_between())
    live.establish("reference")
    in_spi, out_spi = live.current_child()
    ref.impair("corrupt_icv", 2)
    argv = ["ping", "-c", "4", "-i", "0.2", "-W", "2", "-I", live.a.addresses.inner_v4]
    result = live.a.exec([*argv, live.b.addresses.inner_v4], timeout=20)
    assert "4 packets transmitted, 2 received" in result.stdout
    live.snapshot()
    live.close_sas()
    assert live.capture is not None
    pcap = live.capture.stop()
    live.capture = None
    peer_keys = KeySet.from_charon_log(live.peer_log(), source="strongswan:b")
    for keys, source in ((live.node_keys, "reference"), (peer_keys, "strongswan")):
        report = check_pcap(pcap, keys)
        sa = report.sa(out_spi)
        assert (sa.packets, sa.icv_bad, sa.icv_good) == (4, 2, 2), sa.summary()
        assert report.sa(in_spi).packets == 2  # strongSwan answered the two good ones only
        with pytest.raises(AssertionError, match="oracle FAIL"):
            verify(report, source, live.a, live.b, encapsulated=True)
        if source == "reference" and tshark.available():
            assert report.resolved_keys is not None
            assert tshark.cross_check(pcap, report, wireshark_table(report.resolved_keys)) == []
        if source == "strongswan":
            assert report.resolved_keys is not None
            assert key_differences(live.node_keys, report.resolved_keys, "strongswan") == []
            first = live.node_keys.ipsec[0]
            bad = replace(first, encr_key=bytes([first.encr_key[0] ^ 1]) + first.encr_key[1:])
            altered = KeySet(list(live.node_keys.ike), [bad, *live.node_keys.ipsec[1:]])
            assert key_differences(altered, report.resolved_keys, "strongswan") == [
                f"ESP SA 0x{first.spi:08x}: keys differ"
            ]
