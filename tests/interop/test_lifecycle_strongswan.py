"""Reference node <-> strongSwan 5.9.8: the life of the SAs, started from either side.

Child SA rekey (IKEv2 CREATE_CHILD_SA with PFS, RFC 7296 §1.3.3; IKEv1 a new Quick Mode with
PFS, RFC 2409 §5.5), IKE SA rekey (IKEv2, §1.3.2), delete of a Child SA and of the IKE SA
(§1.4; IKEv1 Delete, RFC 2408 §4.8), and dead peer detection after the other end was SIGKILLed
(IKEv2 liveness checks, §2.4; IKEv1 R-U-THERE, RFC 3706). In each case pings cross the tunnel
both ways before and after, and the capture verifies completely with each end's keys alone
(``tests/interop/live.py``); the keys of rekeyed and deleted SAs come from snapshots taken
while they were alive.
"""

from __future__ import annotations

import time

import pytest

from harness.peers.base import (
    ChildSaState,
    Dpd,
    IkeSaState,
    Peer,
    Proposal,
    Retransmit,
    Scenario,
    wait_for_sa,
)
from harness.peers.reference import ReferencePeer
from harness.peers.strongswan import StrongSwanPeer
from harness.probes.oracle import IkeMessageRecord
from tests.interop.live import Live, none, up

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("strongswan"), pytest.mark.timeout(900)]

SIDES = ["reference", "strongswan"]
IKE = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
ESP_PFS = {
    2: Proposal.parse("AES_GCM_16_128/CURVE_25519"),
    1: Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048"),
}
"""ESP with a PFS group: every rekey carries a KE payload, so the new keys come from the logs
and dumps only (the oracle cannot derive them from SK_d)."""

QUICK = Retransmit(timeout=0.5, base=1.5, tries=2)
"""Gives up 0.5 + 0.75 + 1.125 = 2.375 s after the first send (both ends use it)."""


@pytest.fixture(scope="module")
def peer(strongswan: StrongSwanPeer) -> StrongSwanPeer:
    return strongswan


def _scenario(live: Live, version: int, **kwargs: object) -> Scenario:
    return live.scenario_between(
        ike_version=version, ike_proposals=(IKE,), esp_proposals=(ESP_PFS[version],), **kwargs
    )


def _installed(sas: list[IkeSaState]) -> list[ChildSaState]:
    return [c for sa in sas for c in sa.children if c.state == "INSTALLED"]


def _children(peer: Peer) -> list[ChildSaState]:
    return _installed(peer.list_sas())


def _other(side: str) -> str:
    return SIDES[1 - SIDES.index(side)]


def _payloads(m: IkeMessageRecord) -> set[str]:
    """Payload names of a message, those inside its SK/E payload included."""
    return set(" ".join(m.payloads).split())


def _deletes(live: Live) -> list[IkeMessageRecord]:
    """Delete requests on the wire (IKEv2 DELETE, IKEv1 D payloads)."""
    assert live.verdict is not None
    return [m for m in live.verdict.messages() if not m.response and _payloads(m) & {"DELETE", "D"}]


def _esp_with_packets(live: Live) -> set[int]:
    assert live.verdict is not None
    return {int(s.spi, 16) for s in live.verdict.reference.ipsec_sas if s.packets}


@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1"])
@pytest.mark.parametrize("by", SIDES)
def test_child_sa_rekey(
    live: Live, ref: ReferencePeer, peer: StrongSwanPeer, by: str, version: int
) -> None:
    live.configure(_scenario(live, version))
    live.establish(_other(by))  # the original responder rekeys
    live.ping_both_ways()
    first = live.current_child()
    live.initiator(by).rekey_child(timeout=10)
    # both ends carry traffic on the new pair (IKEv2 deletes the old one, RFC 7296 §2.8)
    wait_for_sa(ref, lambda s: any(c.spi_in not in first for sa in s for c in sa.children), 10,
                "the reference node's new Child SA")  # fmt: skip
    new_in, new_out = live.current_child()
    assert {new_in, new_out}.isdisjoint(first)
    if version == 2:  # strongSwan keeps the old inbound SA a while, no longer INSTALLED
        for p in (ref, peer):
            wait_for_sa(p, lambda s: len(_installed(s)) == 1, 10, f"{p.kind}: one Child SA")
    assert any((c.spi_in, c.spi_out) == (new_out, new_in) for c in _children(peer))
    live.ping_both_ways()
    verdict = live.finish()
    assert {*first, new_in, new_out} <= _esp_with_packets(live)
    rekey = "CREATE_CHILD_SA" if version == 2 else "QUICK_MODE"
    with_sa = [m for m in verdict.messages() if m.exchange == rekey and "SA" in _payloads(m)]
    assert all("KE" in _payloads(m) for m in with_sa)  # PFS, both ways
    # IKEv2: the rekey's request and response; IKEv1: the first Quick Mode's and the rekey's
    assert len(with_sa) == (2 if version == 2 else 4)
    request = [m for m in with_sa if not m.response][-1]
    sender = live.a if by == "reference" else live.b
    assert request.src.split(":")[0] == sender.addresses.v4
    if version == 2:
        assert "N(REKEY_SA)" in _payloads(request)


@pytest.mark.parametrize("by", SIDES)
def test_ike_sa_rekey(live: Live, ref: ReferencePeer, peer: StrongSwanPeer, by: str) -> None:
    live.configure(_scenario(live, 2))
    live.establish(_other(by))
    live.ping_both_ways()
    (old,) = ref.list_sas()
    live.initiator(by).rekey_ike(timeout=10)
    for p in (ref, peer):
        (new,) = wait_for_sa(
            p, lambda s: len(s) == 1 and s[0].spi_i != old.spi_i and up(s), 10, "one new IKE SA"
        )
        assert new.initiator == (p.kind == by)  # the rekey's initiator is the new SA's
    (new_ref,), (new_sw,) = ref.list_sas(), peer.list_sas()
    assert (new_ref.spi_i, new_ref.spi_r) == (new_sw.spi_i, new_sw.spi_r)
    live.ping_both_ways()  # the Child SA moved to the new IKE SA
    live.snapshot()
    verdict = live.finish()  # deletes through the new IKE SA: its keys get checked too
    ike_sas = {s.spi_i: s for s in verdict.reference.ike_sas}
    assert set(ike_sas) == {old.spi_i.hex(), new_ref.spi_i.hex()}
    assert ike_sas[new_ref.spi_i.hex()].parent == old.spi_i.hex()
    assert all(s.verified for s in ike_sas.values())


@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1"])
@pytest.mark.parametrize("by", SIDES)
def test_delete_ike_sa(
    live: Live, ref: ReferencePeer, peer: StrongSwanPeer, by: str, version: int
) -> None:
    live.configure(_scenario(live, version))
    live.establish(_other(by))
    live.ping_both_ways()
    live.snapshot()
    live.initiator(by).terminate(timeout=10)
    wait_for_sa(ref, none, 10, "the reference node to delete its SAs")
    wait_for_sa(peer, none, 10, "strongSwan to delete its SAs")
    verdict = live.finish(terminate=False)
    deletes = _deletes(live)
    sender = live.a if by == "reference" else live.b
    assert deletes and all(m.src.split(":")[0] == sender.addresses.v4 for m in deletes)
    assert all(s.deleted for s in verdict.reference.ike_sas)


@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1"])
@pytest.mark.parametrize("by", SIDES)
def test_delete_child_sa(
    live: Live, ref: ReferencePeer, peer: StrongSwanPeer, by: str, version: int
) -> None:
    live.configure(_scenario(live, version))
    live.establish(_other(by))
    live.ping_both_ways()
    spi_in, _ = live.current_child()
    if by == "reference":
        ref.client.delete_child(spi_in)
    else:
        list(peer.session.terminate({"child": "c", "timeout": "10000"}))
    for p in (ref, peer):  # the IKE SA stays, without Child SA
        wait_for_sa(p, lambda s: len(s) == 1 and up(s, child=False) and not s[0].children, 10,
                    f"{p.kind}: the IKE SA without its Child SA")  # fmt: skip
    live.finish()
    first, *_ = _deletes(live)  # the Child SA's Delete, then the IKE SA's at the end
    sender = live.a if by == "reference" else live.b
    assert first.src.split(":")[0] == sender.addresses.v4
    assert len(_deletes(live)) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1"])
@pytest.mark.parametrize("killed", SIDES)
def test_dead_peer_detection_after_sigkill(
    live: Live, ref: ReferencePeer, peer: StrongSwanPeer, killed: str, version: int
) -> None:
    dpd = Dpd(delay=1.0, timeout=3.0, action="clear")
    live.configure(_scenario(live, version, dpd=dpd, retransmit=QUICK))
    live.establish("reference" if killed == "strongswan" else "strongswan")
    live.ping_both_ways()
    survivor: Peer = peer if killed == "reference" else ref
    start = time.monotonic()
    if killed == "reference":
        live.kill_reference()
    else:
        live.kill_peer()
    # IKEv2: a liveness check after at most 1 s of silence, given up after the retransmissions
    # (2.375 s); IKEv1: R-U-THERE after at most 1 s, given up after the retransmissions (our
    # node) or the DPD timeout (strongSwan). The first check may have left before the kill
    # (our node counts only IKE messages as signs of life), so only the retransmission
    # schedule bounds the time from below: the survivor neither gave up at once (on the
    # ICMP port unreachable the dead end's host answers) nor waited for the defaults.
    longest = dpd.delay + max(QUICK.give_up_after(), dpd.timeout)
    wait_for_sa(survivor, none, longest + 8, f"{survivor.kind} to declare its peer dead")
    elapsed = time.monotonic() - start
    assert elapsed >= min(QUICK.give_up_after(), dpd.timeout) - 0.5, f"{elapsed:.1f} s"
    verdict = live.finish(terminate=False)
    checks = [
        m
        for m in verdict.reference.ike_messages
        if m.exchange == "INFORMATIONAL" and not m.response and m.time >= 0
    ]
    assert checks, "no liveness check on the wire"
    sender = (live.b if killed == "reference" else live.a).addresses.v4
    probes = [m for m in checks if m.src.split(":")[0] == sender]
    assert len(probes) >= 2, [m.summary() for m in checks]  # the check and retransmissions
