"""CREATE_CHILD_SA (RFC 7296 §1.3, §2.8, §2.25) and INFORMATIONAL (§1.4) between two of our
services, both roles, including simultaneous rekeys and loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from reference_impl.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
    NegotiationFailed,
)
from reference_impl.ike.config import ChildConfig, esp_proposals
from reference_impl.ike.ike_sa import IkeSa
from reference_impl.ike.types import ChildState, Datagram, IkeState
from reference_impl.sa import ChildSaPair

from .net import PSK, Net, Node, pair, ts


def up(
    a_cfg: Mapping[str, Any] | None = None,
    b_cfg: Mapping[str, Any] | None = None,
    **kw: object,
) -> tuple[Net, Node, Node, IkeSa, IkeSa]:
    net, a, b = pair(a_cfg, b_cfg, **kw)  # type: ignore[arg-type]
    a.service.initiate("ab", net.now)
    net.run(2)
    assert len(a.of(IkeSaEstablished)) == 1 and len(b.of(IkeSaEstablished)) == 1
    a.events.clear()
    b.events.clear()
    (sa_a,) = a.service.ike_sas()
    (sa_b,) = b.service.ike_sas()
    return net, a, b, sa_a, sa_b


def live(sa: IkeSa) -> list[int]:
    return sorted(c.inbound_spi for c in sa.children if c.state != ChildState.DELETED)


def agree(pa: ChildSaPair, pb: ChildSaPair) -> None:
    assert pa.outbound == pb.inbound and pa.inbound == pb.outbound


PFS = {"esp": ("aes128gcm16-modp2048", "aes128gcm16-x25519")}


@pytest.mark.parametrize("who", ["A", "B"])
@pytest.mark.parametrize("pfs", [False, True], ids=["no-pfs", "pfs"])
def test_additional_child_sa(who: str, pfs: bool) -> None:
    extra = PFS if pfs else {}
    net, a, b, sa_a, sa_b = up(extra, extra)
    x, y, sa_x = (a, b, sa_a) if who == "A" else (b, a, sa_b)
    assert sa_x.config is not None
    x.service.create_child(sa_x.ike_sa_id, "c", net.now, acquire_id=7)
    net.run(2)
    mid = 2 if who == "A" else 0  # B never sent a request before
    assert net.summaries()[-2:] == [
        f"CREATE_CHILD_SA request {mid} [ SK ]",
        f"CREATE_CHILD_SA response {mid} [ SK ]",
    ]
    cx, cy = x.of(ChildSaEstablished), y.of(ChildSaEstablished)
    assert len(cx) == len(cy) == 1
    agree(cx[0].pair, cy[0].pair)
    assert cx[0].pair.acquire_id == 7
    assert len(sa_a.children) == len(sa_b.children) == 2
    # a fresh KEYMAT: different from the first child's
    first = sa_a.children[0].pair.outbound.encr_key
    assert cx[0].pair.outbound.encr_key != first and cx[0].pair.inbound.encr_key != first


def test_child_pfs_invalid_ke_retry() -> None:
    """The responder wants another PFS group: INVALID_KE_PAYLOAD, then a retry (§1.3)."""
    net, a, b, sa_a, _sa_b = up(
        {"esp": ("aes128gcm16-x25519", "aes128gcm16-modp2048")}, {"esp": ("aes128gcm16-modp2048",)}
    )
    # the first child came from IKE_AUTH, which carries no KE: no PFS question there
    a.service.create_child(sa_a.ike_sa_id, "c", net.now)
    net.run(2)
    assert len(a.of(ChildSaEstablished)) == 1 and len(b.of(ChildSaEstablished)) == 1
    assert a.of(NegotiationFailed) == []
    assert sum(1 for s in net.summaries() if s.startswith("CREATE_CHILD_SA request")) == 2


@pytest.mark.parametrize("who", ["A", "B"])
@pytest.mark.parametrize("pfs", [False, True], ids=["no-pfs", "pfs"])
def test_child_rekey(who: str, pfs: bool) -> None:
    extra = PFS if pfs else {}
    net, a, b, sa_a, sa_b = up(extra, extra)
    x, y, sa_x = (a, b, sa_a) if who == "A" else (b, a, sa_b)
    old = sa_x.children[0]
    assert x.service.rekey_child(old.inbound_spi, net.now)
    net.run(2)
    rx, ry = x.of(ChildSaRekeyed), y.of(ChildSaRekeyed)
    assert len(rx) == len(ry) == 1
    agree(rx[0].pair, ry[0].pair)
    assert rx[0].old_inbound_spi == old.inbound_spi and rx[0].old_outbound_spi == old.outbound_spi
    assert ry[0].old_inbound_spi == old.outbound_spi
    dx, dy = x.of(ChildSaDeleted), y.of(ChildSaDeleted)
    assert [(d.inbound_spi, d.outbound_spi) for d in dx] == [(old.inbound_spi, old.outbound_spi)]
    assert [(d.inbound_spi, d.outbound_spi) for d in dy] == [(old.outbound_spi, old.inbound_spi)]
    assert (
        live(sa_a) == [rx[0].pair.inbound.spi]
        if who == "A"
        else live(sa_b) == [rx[0].pair.inbound.spi]
    )
    assert len(live(sa_a)) == len(live(sa_b)) == 1


def test_child_rekey_by_timer() -> None:
    net, a, b, sa_a, sa_b = up(
        {"child": {"rekey_time": 100.0, "life_time": 120.0}},
        {"child": {"rekey_time": 200.0, "life_time": 220.0}},
    )
    net.run(101)
    assert len(a.of(ChildSaRekeyed)) == 1 and len(b.of(ChildSaRekeyed)) == 1
    assert len(a.of(ChildSaDeleted)) == 1
    net.run(100)  # A's new child rekeys again at +200
    assert len(a.of(ChildSaRekeyed)) == 2
    assert len(live(sa_a)) == len(live(sa_b)) == 1


@pytest.mark.parametrize("pfs", [False, True], ids=["no-pfs", "pfs"])
def test_simultaneous_child_rekey(pfs: bool) -> None:
    """RFC 7296 §2.8.1: both ends rekey the same Child SA at once; the SA made with the
    lowest nonce is deleted by its creator, the other one survives on both ends."""
    extra = PFS if pfs else {}
    net, a, b, sa_a, sa_b = up(extra, extra)
    old_a = sa_a.children[0]
    a.service.rekey_child(old_a.inbound_spi, net.now)
    b.service.rekey_child(sa_b.children[0].inbound_spi, net.now)
    net.run(3)
    la, lb = live(sa_a), live(sa_b)
    assert len(la) == len(lb) == 1, (la, lb)
    ca = next(c for c in sa_a.children if c.state != ChildState.DELETED)
    cb = next(c for c in sa_b.children if c.state != ChildState.DELETED)
    assert ca.inbound_spi == cb.outbound_spi and ca.outbound_spi == cb.inbound_spi
    agree(ca.pair, cb.pair)
    assert old_a.state == ChildState.DELETED
    assert a.of(NegotiationFailed) == [] and b.of(NegotiationFailed) == []
    # every SA either side installed was deleted again, except the survivor
    installed_a = {e.pair.inbound.spi for e in a.of(ChildSaRekeyed)} | {old_a.inbound_spi}
    deleted_a = {d.inbound_spi for d in a.of(ChildSaDeleted)}
    assert installed_a - deleted_a == {ca.inbound_spi}


def test_simultaneous_child_rekey_with_responses_first() -> None:
    """Each side sees its own response before the peer's request: the peer answers
    TEMPORARY_FAILURE, and still one pair survives."""
    net, a, b, sa_a, sa_b = up()
    a.service.rekey_child(sa_a.children[0].inbound_spi, net.now)
    net.step()  # A's request reaches B
    b.service.rekey_child(sa_b.children[0].inbound_spi, net.now)
    net.run(12)
    la, lb = live(sa_a), live(sa_b)
    assert len(la) == len(lb) == 1
    ca = next(c for c in sa_a.children if c.state != ChildState.DELETED)
    cb = next(c for c in sa_b.children if c.state != ChildState.DELETED)
    assert ca.inbound_spi == cb.outbound_spi


@pytest.mark.parametrize("who", ["A", "B"])
def test_ike_rekey(who: str) -> None:
    net, a, b, sa_a, sa_b = up()
    x, y, sa_x = (a, b, sa_a) if who == "A" else (b, a, sa_b)
    child_spi = sa_a.children[0].inbound_spi
    assert x.service.rekey_ike(sa_x.ike_sa_id, net.now)
    net.run(2)
    rx, ry = x.of(IkeSaRekeyed), y.of(IkeSaRekeyed)
    assert len(rx) == len(ry) == 1
    assert rx[0].new_ike_sa_id == ry[0].new_ike_sa_id
    assert rx[0].old_ike_sa_id == sa_a.ike_sa_id
    (new_a,) = a.service.ike_sas()
    (new_b,) = b.service.ike_sas()
    assert new_a.ike_sa_id == new_b.ike_sa_id == rx[0].new_ike_sa_id
    assert new_a.initiator == (who == "A")  # the rekey initiator is the new SA's initiator
    assert [c.inbound_spi for c in new_a.children] == [child_spi]
    assert sa_a.state == sa_b.state == IkeState.CLOSED
    assert x.of(IkeSaDeleted) == [] and y.of(IkeSaDeleted) == []
    assert x.of(ChildSaDeleted) == [] and y.of(ChildSaDeleted) == []
    # the new IKE SA works: a child rekey over it
    a.service.rekey_child(child_spi, net.now)
    net.run(2)
    assert len(a.of(ChildSaRekeyed)) == 1 and len(b.of(ChildSaRekeyed)) == 1
    assert a.of(ChildSaRekeyed)[0].pair.ike_sa_id == new_a.ike_sa_id


def test_simultaneous_ike_rekey() -> None:
    """RFC 7296 §2.8.2: both rekey the IKE SA; one new IKE SA survives on both ends."""
    net, a, b, sa_a, sa_b = up()
    a.service.rekey_ike(sa_a.ike_sa_id, net.now)
    b.service.rekey_ike(sa_b.ike_sa_id, net.now)
    net.run(3)
    sas_a, sas_b = a.service.ike_sas(), b.service.ike_sas()
    assert len(sas_a) == len(sas_b) == 1, (sas_a, sas_b)
    assert sas_a[0].ike_sa_id == sas_b[0].ike_sa_id
    assert len(sas_a[0].children) == len(sas_b[0].children) == 1
    assert len(a.of(IkeSaRekeyed)) == 1 and len(b.of(IkeSaRekeyed)) == 1
    assert a.of(IkeSaRekeyed)[0].new_ike_sa_id == sas_a[0].ike_sa_id
    # and the survivor is usable
    a.service.liveness_check(sas_a[0].ike_sa_id, net.now)
    net.run(2)
    assert a.of(IkeSaDeleted) == []


def test_ike_rekey_by_timer_keeps_children() -> None:
    net, a, _b, sa_a, _sa_b = up({"rekey_time": 50.0}, {"rekey_time": 500.0})
    first = sa_a.rekey_at
    assert first is not None
    net.run(51)
    assert len(a.of(IkeSaRekeyed)) == 1
    (new_a,) = a.service.ike_sas()
    assert len(new_a.children) == 1
    assert new_a.rekey_at == pytest.approx(first + 50.0)


def test_temporary_failure_during_ike_rekey() -> None:
    """§2.25.2: a CREATE_CHILD_SA for a new child arriving while the responder rekeys the IKE
    SA gets TEMPORARY_FAILURE; the initiator retries later and succeeds."""
    net, a, b, sa_a, sa_b = up()
    a.service.rekey_ike(sa_a.ike_sa_id, net.now)
    b.service.create_child(sa_b.ike_sa_id, "c", net.now)
    net.run(30)
    assert b.of(NegotiationFailed) == []
    assert len(b.of(ChildSaEstablished)) == 1 and len(a.of(ChildSaEstablished)) == 1
    (new_a,) = a.service.ike_sas()
    (new_b,) = b.service.ike_sas()
    assert len(live(new_a)) == len(live(new_b)) == 2


def test_child_sa_not_found() -> None:
    """Rekeying a Child SA the peer no longer has: CHILD_SA_NOT_FOUND (§2.25), and the
    initiator drops it too."""
    net, a, b, sa_a, sa_b = up()
    child_b = sa_b.children[0]
    sa_b._remove_child(child_b, "forgotten")  # B loses it without telling A
    b.events.clear()
    a.service.rekey_child(sa_a.children[0].inbound_spi, net.now)
    net.run(2)
    assert live(sa_a) == []
    assert [d.reason for d in a.of(ChildSaDeleted)] == ["not found at peer"]
    assert a.of(ChildSaRekeyed) == []


@pytest.mark.parametrize("who", ["A", "B"])
def test_delete_child(who: str) -> None:
    net, a, b, sa_a, sa_b = up()
    x, y, sa_x = (a, b, sa_a) if who == "A" else (b, a, sa_b)
    spi = sa_x.children[0].inbound_spi
    assert x.service.delete_child(spi, net.now)
    net.run(2)
    dx, dy = x.of(ChildSaDeleted), y.of(ChildSaDeleted)
    assert [d.inbound_spi for d in dx] == [spi]
    assert [d.outbound_spi for d in dy] == [spi]
    assert live(sa_a) == live(sa_b) == []
    assert sa_a.state == sa_b.state == IkeState.ESTABLISHED


def test_simultaneous_delete_child() -> None:
    net, a, b, sa_a, sa_b = up()
    a.service.delete_child(sa_a.children[0].inbound_spi, net.now)
    b.service.delete_child(sa_b.children[0].inbound_spi, net.now)
    net.run(2)
    assert len(a.of(ChildSaDeleted)) == len(b.of(ChildSaDeleted)) == 1
    assert live(sa_a) == live(sa_b) == []


@pytest.mark.parametrize("who", ["A", "B"])
def test_delete_ike_sa(who: str) -> None:
    net, a, b, sa_a, sa_b = up()
    x, y, sa_x = (a, b, sa_a) if who == "A" else (b, a, sa_b)
    x.service.delete_ike(sa_x.ike_sa_id, net.now)
    net.run(2)
    for n in (x, y):
        assert len(n.of(IkeSaDeleted)) == 1 and len(n.of(ChildSaDeleted)) == 1
    assert a.service.ike_sas() == [] and b.service.ike_sas() == []


def test_delete_ike_sa_response_lost_is_answered_from_cache() -> None:
    net, a, b, sa_a, _sa_b = up()
    n0 = len(net.wire)

    def f(index: int, d: Datagram) -> list[Datagram]:
        return [] if index == n0 + 1 else [d]

    net.filter = f
    a.service.delete_ike(sa_a.ike_sa_id, net.now)
    net.run(3)
    assert b.service.stats.get("retransmitted_responses") == 1
    assert len(a.of(IkeSaDeleted)) == 1 and len(b.of(IkeSaDeleted)) == 1


def test_liveness_check_and_dead_peer() -> None:
    """DPD (§1.4): empty INFORMATIONAL every dpd_delay of silence; when the peer is gone the
    IKE SA and its children are deleted after the retransmission schedule."""
    net, a, _b, _sa_a, _sa_b = up({"dpd_delay": 30.0})
    net.run(31)
    assert net.summaries()[-2:] == [
        "INFORMATIONAL request 2 [ SK ]",
        "INFORMATIONAL response 2 [ SK ]",
    ]
    assert a.of(IkeSaDeleted) == []
    net.filter = lambda i, d: []
    net.run(40)
    dead = a.of(IkeSaDeleted)
    assert len(dead) == 1 and dead[0].reason == "peer not responding"
    assert len(a.of(ChildSaDeleted)) == 1


def test_invalid_spi_notify() -> None:
    """B got ESP for an SPI it does not know: INVALID_SPI (§3.10.1) makes A delete the
    Child SA whose outbound SPI that is."""
    net, a, b, sa_a, sa_b = up()
    out_spi = sa_a.children[0].outbound_spi
    assert b.service.report_invalid_spi(sa_b.remote[0], 0xDEADBEEF, net.now)
    net.run(2)
    assert a.of(ChildSaDeleted) == []  # unknown to A as well: nothing happens
    b.service.report_invalid_spi(sa_b.remote[0], out_spi, net.now)
    net.run(2)
    assert [d.outbound_spi for d in a.of(ChildSaDeleted)] == [out_spi]
    assert live(sa_a) == live(sa_b) == []


def test_child_ts_unacceptable_keeps_ike_sa() -> None:
    net, a, b = pair(b_cfg={"remote_ts": "10.9.0.0/16"})
    a.service.initiate("ab", net.now, acquire_id=3)
    net.run(2)
    assert len(a.of(IkeSaEstablished)) == 1 and len(b.of(IkeSaEstablished)) == 1
    fail = a.of(NegotiationFailed)
    assert [(f.reason, f.acquire_id) for f in fail] == [(FailureReason.TS_UNACCEPTABLE, 3)]
    assert a.of(ChildSaEstablished) == [] and b.of(ChildSaEstablished) == []
    assert [f.reason for f in b.of(NegotiationFailed)] == [FailureReason.TS_UNACCEPTABLE]
    (sa_a,) = a.service.ike_sas()
    assert sa_a.state == IkeState.ESTABLISHED


def test_child_no_proposal_chosen_keeps_ike_sa() -> None:
    net, a, _b = pair(a_cfg={"esp": ("aes256-sha512",)}, b_cfg={"esp": ("aes128gcm16",)})
    a.service.initiate("ab", net.now)
    net.run(2)
    assert len(a.of(IkeSaEstablished)) == 1
    assert [f.reason for f in a.of(NegotiationFailed)] == [FailureReason.NO_PROPOSAL_CHOSEN]
    assert a.service.ike_sas()[0].state == IkeState.ESTABLISHED


def test_traffic_selector_narrowing() -> None:
    """§2.9: A asks for 10.1.0.0/16 <-> 10.2.0.0/16, B allows /24s: A gets the /24s."""
    net, a, b = pair(
        a_cfg={"local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"},
        b_cfg={"local_ts": "10.2.0.0/24", "remote_ts": "10.1.0.0/24"},
    )
    a.service.initiate("ab", net.now)
    net.run(2)
    (ca,) = a.of(ChildSaEstablished)
    assert [str(t) for t in ca.pair.outbound.ts_src] == ["10.1.0.0-10.1.0.255"]
    assert [str(t) for t in ca.pair.outbound.ts_dst] == ["10.2.0.0-10.2.0.255"]
    (cb,) = b.of(ChildSaEstablished)
    agree(ca.pair, cb.pair)


def test_packet_selectors_come_first() -> None:
    """§2.9: an acquire's packet selectors go first; the responder narrows to its policy."""
    net, a, _b = pair(
        a_cfg={"local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"},
        b_cfg={"local_ts": "10.2.0.0/16", "remote_ts": "10.1.0.0/16"},
    )
    a.service.initiate("ab", net.now, packet_ts=(ts("10.1.2.3/32"), ts("10.2.4.5/32")))
    net.run(2)
    (ca,) = a.of(ChildSaEstablished)
    assert {str(t) for t in ca.pair.outbound.ts_src} >= {"10.1.2.3", "10.1.0.0-10.1.255.255"}


def test_transport_mode() -> None:
    net, a, b = pair(
        a_cfg={"local_ts": "", "remote_ts": "", "child": {"mode": "transport"}},
        b_cfg={"local_ts": "", "remote_ts": "", "child": {"mode": "transport"}},
    )
    a.service.initiate("ab", net.now)
    net.run(2)
    (ca,) = a.of(ChildSaEstablished)
    assert (
        ca.pair.outbound.mode == "transport"
        and b.of(ChildSaEstablished)[0].pair.inbound.mode == "transport"
    )
    # dynamic selectors: the hosts themselves
    assert [str(t) for t in ca.pair.outbound.ts_src] == ["198.51.100.1"]


def test_transport_refused_by_tunnel_responder() -> None:
    net, a, b = pair(a_cfg={"child": {"mode": "transport"}})
    a.service.initiate("ab", net.now)
    net.run(2)
    assert len(a.of(IkeSaEstablished)) == 1
    assert a.of(ChildSaEstablished) == []
    assert len(a.of(NegotiationFailed)) == 1
    net.run(2)
    # B installed a tunnel-mode SA, which A deletes at once
    assert len(b.of(ChildSaDeleted)) == 1


def test_tfc_padding_not_supported() -> None:
    net, a, b = pair(b_cfg={"child": {"tfc_padding": False}})
    a.service.initiate("ab", net.now)
    net.run(2)
    (ca,) = a.of(ChildSaEstablished)
    assert ca.pair.outbound.tfc_padding is False
    assert b.of(ChildSaEstablished)[0].pair.outbound.tfc_padding is True


def test_window_size_allows_parallel_requests() -> None:
    """SET_WINDOW_SIZE (§2.3): with a window of 3 at B, A sends three CREATE_CHILD_SA
    requests before the first response."""
    net, a, b, sa_a, _sa_b = up(b_cfg={"window_size": 3})
    assert sa_a.peer_window == 3
    cfg = sa_a.config
    assert cfg is not None
    for _ in range(3):
        sa_a.create_child(cfg.children[0], net.now)
    assert len(a.service.outbox) == 3  # all three requests leave before any answer
    net.run(2)
    assert len(a.of(ChildSaEstablished)) == 3 and len(b.of(ChildSaEstablished)) == 3


def test_garbage_does_not_disturb_an_ike_sa() -> None:
    net, a, b, sa_a, sa_b = up()
    import random

    r = random.Random(5)
    for _ in range(200):
        junk = r.randbytes(r.randrange(0, 300))
        b.service.receive_datagram(junk, (sa_b.remote[0], 500), net.now, local=sa_b.local)
    # also valid-looking headers with our SPIs and garbage bodies
    for _ in range(100):
        body = r.randbytes(r.randrange(4, 200))
        hdr = sa_a.spi_i + sa_a.spi_r + bytes((46, 0x20, 37, 0x08)) + b"\0\0\0\x07"
        data = hdr + (28 + len(body)).to_bytes(4, "big") + body
        b.service.receive_datagram(data, sa_b.remote, net.now, local=sa_b.local)
    a.service.create_child(sa_a.ike_sa_id, "c", net.now)
    net.run(2)
    assert len(a.of(ChildSaEstablished)) == 1 and len(b.of(ChildSaEstablished)) == 1
    assert b.service.stats["malformed_dropped"] > 0


def test_esp_proposal_sets() -> None:
    c = ChildConfig(proposals=esp_proposals("aes256gcm16-modp3072", "aes128-sha1"))
    assert c.pfs_groups == (15,)


@pytest.mark.parametrize("position", range(4))
def test_loss_in_create_child_sa_and_informational(position: int) -> None:
    """Loss at each position of a CREATE_CHILD_SA + INFORMATIONAL (rekey, then delete)."""
    net, a, b, sa_a, sa_b = up()
    n0 = len(net.wire)

    def dropped(i: int, d: Datagram) -> list[Datagram]:
        return [] if i == n0 + position else [d]

    net.filter = dropped
    a.service.rekey_child(sa_a.children[0].inbound_spi, net.now)
    net.run(5)
    assert len(a.of(ChildSaRekeyed)) == len(b.of(ChildSaRekeyed)) == 1
    assert len(a.of(ChildSaDeleted)) == len(b.of(ChildSaDeleted)) == 1
    assert len(live(sa_a)) == len(live(sa_b)) == 1


def test_ah_child_sa() -> None:
    """An AH Child SA (RFC 7296 §3.3.3: integrity and ESN transforms only, no ENCR)."""
    from dataclasses import replace

    from reference_impl.ike.config import ProposalConfig
    from reference_impl.sa import IpsecProtocol

    ah = (ProposalConfig.parse("sha256", IpsecProtocol.AH),)
    net, a, b = pair()
    for node in (a, b):
        cfg = node.service.settings.connections[0]
        child = replace(cfg.children[0], proposals=ah)
        node.service.settings = replace(
            node.service.settings, connections=(replace(cfg, children=(child,)),)
        )
    a.service.initiate("ab", net.now)
    net.run(2)
    (ca,) = a.of(ChildSaEstablished)
    (cb,) = b.of(ChildSaEstablished)
    agree(ca.pair, cb.pair)
    assert ca.pair.outbound.protocol == IpsecProtocol.AH
    assert ca.pair.outbound.encr_id is None and ca.pair.outbound.integ_id == 12
    assert len(ca.pair.outbound.integ_key) == 32


def test_childless_ike_sa_then_child() -> None:
    """RFC 6023 style: IKE_AUTH without a Child SA, the child comes with CREATE_CHILD_SA."""
    net, a, _b = pair(a_cfg={"initial_child": False})
    a.service.initiate("ab", net.now)
    net.run(2)
    assert len(a.of(IkeSaEstablished)) == 1 and a.of(ChildSaEstablished) == []
    (sa_a,) = a.service.ike_sas()
    a.service.create_child(sa_a.ike_sa_id, "c", net.now, acquire_id=9)
    net.run(2)
    assert [c.pair.acquire_id for c in a.of(ChildSaEstablished)] == [9]


def test_local_configuration_error_does_not_crash_the_responder() -> None:
    """B has a PSK connection without a PSK: the exchange fails with LOCAL_ERROR at B and
    the service keeps running (ARCHITECTURE: bad input never crashes a node)."""
    from dataclasses import replace

    net, a, b = pair()
    cfg = b.service.settings.connections[0]
    bad = replace(cfg, local=replace(cfg.local, psk=None), remote=replace(cfg.remote, psk=PSK))
    b.service.settings = replace(b.service.settings, connections=(bad,))
    a.service.initiate("ab", net.now, acquire_id=4)
    net.run(10)
    assert b.service.stats.get("local_errors") == 1
    assert [f.reason for f in b.of(NegotiationFailed)] == [FailureReason.LOCAL_ERROR]
    fail = a.of(NegotiationFailed)
    assert len(fail) == 1 and fail[0].acquire_id == 4


def test_queued_child_fails_with_its_ike_sa() -> None:
    """Two acquires on one connection while the peer is silent: both hear about it."""
    net, a, _b = pair()
    net.filter = lambda i, d: []
    a.service.initiate("ab", net.now, acquire_id=1)
    a.service.initiate("ab", net.now, acquire_id=2)
    net.run(10)
    fails = a.of(NegotiationFailed)
    assert sorted(f.acquire_id or 0 for f in fails) == [1, 2]
    assert all(f.reason is FailureReason.PEER_SILENT for f in fails)


class _Probe:
    """A hand-made request on an established IKE SA; keeps the response payloads."""

    def __init__(self, exchange: int, payloads: list[object]) -> None:
        from reference_impl.ike.ike_sa import Task

        probe = self

        class T(Task):
            def build(self, sa: IkeSa, now: float) -> list:  # type: ignore[type-arg]
                return list(payloads)  # type: ignore[arg-type]

            def done(self, sa: IkeSa, got: list, now: float) -> None:  # type: ignore[type-arg]
                probe.response = got

        T.exchange = exchange
        self.task = T()
        self.response: list[object] | None = None


@pytest.mark.parametrize(
    ("exchange", "payloads", "notify"),
    [
        # RFC 7296 §2.5: an unknown payload with the critical bit set
        (37, "critical", 1),
        # a CREATE_CHILD_SA request without its Nonce: INVALID_SYNTAX (§2.21.2)
        (36, "no-nonce", 7),
    ],
)
def test_malformed_protected_requests_are_answered_with_the_error(
    exchange: int, payloads: str, notify: int
) -> None:
    from reference_impl.ike.payloads import NotifyPayload, SaPayload, UnknownPayload

    net, _a, _b, sa_a, sa_b = up()
    if payloads == "critical":
        body: list[object] = [UnknownPayload(222, b"?", critical=True)]
    else:
        cfg = sa_a.config
        assert cfg is not None
        body = [SaPayload([cfg.children[0].proposals[0].to_proposal(1, b"\0\0\1\0")])]
    probe = _Probe(exchange, body)
    sa_a.queue_task(probe.task, net.now)  # type: ignore[arg-type]
    net.run(2)
    assert probe.response is not None
    (n,) = probe.response
    assert isinstance(n, NotifyPayload) and n.notify_type == notify
    if notify == 1:
        assert n.data == bytes([222])
    assert sa_b.state == IkeState.ESTABLISHED  # the IKE SA survives


def test_timer_heap_stays_small() -> None:
    """Stale timer entries (lazily invalidated) are compacted away: many liveness checks on
    one IKE SA do not grow the service's timer heap without bound."""
    net, a, _b, sa_a, _sa_b = up()
    for _ in range(1500):
        a.service.liveness_check(sa_a.ike_sa_id, net.now)
        net.settle()
        net.now += 0.001
    assert len(a.service._heap) < 1100
    assert a.service.get_timer() is not None


def test_acquire_fails_when_the_ike_sa_is_deleted_under_it() -> None:
    net, a, b, sa_a, sa_b = up()
    a.service.create_child(sa_a.ike_sa_id, "c", net.now, acquire_id=5)
    b.service.delete_ike(sa_b.ike_sa_id, net.now)
    net.run(5)
    fails = [f for f in a.of(NegotiationFailed) if f.acquire_id == 5]
    assert len(fails) == 1 and fails[0].peer_replied
    assert len(a.of(IkeSaDeleted)) == 1 and a.service.ike_sas() == []
