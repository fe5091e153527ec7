"""Reference node <-> libreswan 4.10: IKE only, since libreswan cannot install an ESP SA on this
kernel (errno 38, peers.md §4) and has no userspace data plane.

IKEv2 childless IKE SA (RFC 6023) and IKE SA rekey (RFC 7296 §1.3.2) from either side, and
IKEv1 phase 1 (Main Mode, RFC 2409 §5) with each side as initiator. libreswan's keys are not
read, so the capture verifies with our node's keys alone: every encrypted IKE message must
open and authenticate with them.
"""

from __future__ import annotations

import pytest

from harness.peers.base import PeerError, Proposal, wait_for_sa
from harness.peers.libreswan import LibreswanPeer
from harness.peers.reference import ReferencePeer
from tests.interop.live import Live, none, up

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("libreswan"), pytest.mark.timeout(900)]

SIDES = ["reference", "libreswan"]
CANNOT_INITIATE_IKE_ONLY = (
    "libreswan 4.10 cannot initiate without a Child SA (pluto only answers childless "
    "IKE_AUTH requests; no option makes it start one), and its Child SA fails on this "
    "kernel (errno 38): it then drops the IKE SA without a Delete and revives it every 5 s"
)
IKE = Proposal.parse("AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")


@pytest.fixture(scope="module")
def peer(libreswan: LibreswanPeer) -> LibreswanPeer:
    return libreswan


def _ike_up(sas: list) -> bool:  # type: ignore[type-arg]
    return up(sas, child=False)


@pytest.mark.parametrize(
    "initiator",
    ["reference", pytest.param("libreswan", marks=pytest.mark.skip(CANNOT_INITIATE_IKE_ONLY))],
)
def test_ikev2_childless_ike_sa(
    live: Live, ref: ReferencePeer, peer: LibreswanPeer, initiator: str
) -> None:
    live.configure(live.scenario_between(ike_proposals=(IKE,), child=False))
    live.establish(initiator, child=False)
    (sa_ref,) = ref.list_sas()
    assert sa_ref.established and sa_ref.children == () and not sa_ref.nat
    assert sa_ref.initiator == (initiator == "reference")
    (sa_lsw,) = wait_for_sa(peer, _ike_up, 10, "libreswan's IKE SA")
    assert sa_lsw.version == 2
    verdict = live.finish(expect_flows=False)
    exchanges = verdict.exchanges()
    assert exchanges[:4] == ["IKE_SA_INIT", "IKE_SA_INIT", "IKE_AUTH", "IKE_AUTH"]
    auth = [m for m in verdict.messages() if m.exchange == "IKE_AUTH"]
    assert all("SA" not in " ".join(m.payloads).split() for m in auth)  # childless
    assert verdict.reference.ipsec_sas == []
    if initiator == "reference":
        log = "\n".join(p.read_text() for p in peer.logs())
        assert "IKE_AUTH request does not propose a Child SA; creating childless SA" in log


@pytest.mark.parametrize("by", SIDES)
def test_ikev2_ike_sa_rekey(live: Live, ref: ReferencePeer, peer: LibreswanPeer, by: str) -> None:
    live.configure(live.scenario_between(ike_proposals=(IKE,), child=False))
    live.establish("reference", child=False)
    (old,) = ref.list_sas()
    live.initiator(by).rekey_ike(timeout=10)
    (new,) = wait_for_sa(
        ref, lambda s: len(s) == 1 and s[0].spi_i != old.spi_i and _ike_up(s), 10, "one new IKE SA"
    )
    assert new.initiator == (by == "reference")
    live.snapshot()
    verdict = live.finish(expect_flows=False)  # the Delete goes through the new IKE SA
    ike_sas = {s.spi_i: s for s in verdict.reference.ike_sas}
    assert set(ike_sas) == {old.spi_i.hex(), new.spi_i.hex()}
    assert ike_sas[new.spi_i.hex()].parent == old.spi_i.hex()
    assert all(s.verified >= 2 for s in ike_sas.values())
    rekeys = [m for m in verdict.messages() if m.exchange == "CREATE_CHILD_SA"]
    sender = live.a if by == "reference" else live.b
    assert len(rekeys) == 2 and rekeys[0].src.split(":")[0] == sender.addresses.v4


@pytest.mark.parametrize("initiator", SIDES)
def test_ikev1_main_mode_phase1(
    live: Live, ref: ReferencePeer, peer: LibreswanPeer, initiator: str
) -> None:
    """Our node starts phase 1 alone. libreswan cannot (it always goes on to Quick Mode):
    its Main Mode completes with our node as responder, then its Quick Mode fails on its own
    side when the kernel refuses the ESP SA (errno 38), so QM3 never comes."""
    live.configure(live.scenario_between(ike_version=1, ike_proposals=(IKE,), child=False))
    peer.impair("revival")  # no re-initiation after the failed Quick Mode or our Delete
    if initiator == "reference":
        live.establish(initiator, child=False)
    else:
        with pytest.raises(PeerError):
            peer.initiate(timeout=15)
        log = "\n".join(p.read_text() for p in peer.logs())
        assert "Function not implemented (errno 38)" in log
        wait_for_sa(ref, _ike_up, 10, "the reference node's ISAKMP SA")
        live.snapshot()
    (sa_ref,) = ref.list_sas()
    assert sa_ref.version == 1 and sa_ref.children == ()
    assert sa_ref.initiator == (initiator == "reference")
    (sa_lsw,) = wait_for_sa(peer, _ike_up, 10, "libreswan's ISAKMP SA")
    assert sa_lsw.version == 1 and sa_lsw.initiator == (initiator == "libreswan")
    # The initiator deletes (libreswan's Delete also drops its pending Quick Mode, which a
    # Delete from us would make it retry on a new ISAKMP SA)
    live.initiator(initiator).terminate(timeout=10)
    wait_for_sa(ref, none, 10, "the reference node to delete its ISAKMP SA")
    wait_for_sa(peer, none, 10, "libreswan to delete its ISAKMP SA")
    verdict = live.finish(expect_flows=False, terminate=False)
    messages = verdict.messages()
    main = [m for m in messages if m.exchange == "IDENTITY_PROTECTION"]
    assert len(main) == 6 and [m.encrypted for m in main] == [False] * 4 + [True] * 2
    starter = live.a if initiator == "reference" else live.b
    assert main[0].src.split(":")[0] == starter.addresses.v4
    quick = [m for m in messages if m.exchange == "QUICK_MODE"]
    assert len(quick) == (0 if initiator == "reference" else 2)  # QM1, QM2; no QM3
