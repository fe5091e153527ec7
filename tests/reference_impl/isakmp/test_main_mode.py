"""Main Mode + Quick Mode with PSK, both roles, over an in-memory link (RFC 2409 §5, §5.5)."""

from __future__ import annotations

import pytest

from reference_impl.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PeerReplied,
)
from reference_impl.isakmp.codec import decode_message
from reference_impl.isakmp.constants import ExchangeType
from reference_impl.isakmp.settings import PskAuth
from reference_impl.sa import Mode
from tests.reference_impl.isakmp.link import FAST, Link, conn_pair, make_link


def test_main_mode_psk_and_quick_mode() -> None:
    link = make_link(conn_pair())
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    (ea,) = link.of("a", IkeSaEstablished)
    (eb,) = link.of("b", IkeSaEstablished)
    assert ea.initiator and not eb.initiator
    assert ea.ike_sa_id == eb.ike_sa_id
    assert ea.algorithms == "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    assert ea.peer_id == "192.0.2.2" and eb.peer_id == "192.0.2.1"
    assert len(link.of("a", PeerReplied)) == 1
    (ca,) = link.of("a", ChildSaEstablished)
    (cb,) = link.of("b", ChildSaEstablished)
    # each side's outbound is the other's inbound, with the same keys
    assert ca.pair.outbound.spi == cb.pair.inbound.spi
    assert ca.pair.inbound.spi == cb.pair.outbound.spi
    assert ca.pair.outbound.encr_key == cb.pair.inbound.encr_key
    assert ca.pair.outbound.integ_key == cb.pair.inbound.integ_key
    assert ca.pair.inbound.encr_key == cb.pair.outbound.encr_key
    assert ca.pair.outbound.encr_key != ca.pair.inbound.encr_key
    assert len(ca.pair.outbound.encr_key) == 16 and len(ca.pair.outbound.integ_key) == 32
    assert ca.pair.outbound.mode == Mode.TUNNEL and ca.pair.outbound.encap is None
    assert str(ca.pair.outbound.ts_src[0]) == "10.1.0.0-10.1.0.255"
    # 6 Main Mode + 3 Quick Mode messages, nothing else
    assert len(link.sent) == 9


def _established(link: Link) -> None:
    assert len(link.of("a", IkeSaEstablished)) == 1
    assert len(link.of("b", IkeSaEstablished)) == 1
    (ca,) = link.of("a", ChildSaEstablished)
    (cb,) = link.of("b", ChildSaEstablished)
    assert ca.pair.outbound.encr_key == cb.pair.inbound.encr_key
    assert ca.pair.inbound.integ_key == cb.pair.outbound.integ_key
    assert not link.of("a", NegotiationFailed) and not link.of("b", NegotiationFailed)


@pytest.mark.parametrize("lost", range(9))
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_loss_at_each_message(lost: int, initiator: str) -> None:
    """Drop message n (MM1..MM6, QM1..QM3) once: retransmission recovers, both roles."""
    link = make_link(conn_pair())
    seen: list[bytes] = []

    def drop(n: int, side: str, d: object) -> bool:
        data = d.data  # type: ignore[attr-defined]
        if data in seen:
            return False
        seen.append(data)
        return len(seen) - 1 == lost

    link.drop = drop
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=20)
    _established(link)
    assert link.now < 5  # recovered on the first retransmissions (gaps 0.5 s)


def test_peer_silent_fails_on_schedule() -> None:
    link = make_link(conn_pair())
    link.drop = lambda n, side, d: side == "a"
    link.a.initiate("t", 0.0, acquire_id=7)
    link.pump(until=100)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.PEER_SILENT and not f.peer_replied and f.acquire_id == 7
    assert link.now == pytest.approx(FAST.failure_after)
    sends = [t for t, side, _ in link.sent if side == "a"]
    assert sends == list(FAST.send_times())
    assert link.a.ike_sa_ids() == []


def test_wrong_psk_fails_authentication() -> None:
    a, b = conn_pair(auth_b=PskAuth(b"another secret entirely"))
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=30)
    assert not link.of("a", IkeSaEstablished) and not link.of("b", IkeSaEstablished)
    (f,) = link.of("a", NegotiationFailed)
    assert f.peer_replied  # MM2/MM4 came back; MM5 could not be decrypted by the responder


def test_no_proposal_chosen() -> None:
    from tests.reference_impl.isakmp.algs import P1_AES128_SHA1

    a, b = conn_pair(props_b=(P1_AES128_SHA1,))
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=30)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.NO_PROPOSAL_CHOSEN and f.peer_replied and f.notify == 14
    assert link.now < 1


def test_delete_child_and_ike() -> None:
    link = make_link(conn_pair())
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    (ca,) = link.of("a", ChildSaEstablished)
    link.a.delete_child_sa(ca.pair.inbound.spi, link.now)
    link.pump(until=6)
    (da,) = link.of("a", ChildSaDeleted)
    (db,) = link.of("b", ChildSaDeleted)
    assert da.inbound_spi == db.outbound_spi and da.outbound_spi == db.inbound_spi
    assert db.reason == "deleted by peer"
    (ike,) = link.a.ike_sa_ids()
    link.b.delete_ike_sa(ike, link.now)
    link.pump(until=7)
    assert link.of("a", IkeSaDeleted)[0].reason == "deleted by peer"
    assert link.a.ike_sa_ids() == [] and link.b.ike_sa_ids() == []
    infos = [
        d
        for _, _, d in link.sent
        if decode_message(d.data).header.exchange_type == ExchangeType.INFORMATIONAL
    ]
    assert len(infos) == 2


def test_second_initiate_during_phase1_queues_on_it() -> None:
    link = make_link(conn_pair(dpd_delay=None))
    first = link.a.initiate("t", 0.0, acquire_id=1)
    second = link.a.initiate("t", 0.0, acquire_id=2)
    assert first == second and len(link.a.ike_sa_ids()) == 1
    link.pump(until=5)
    assert len(link.of("a", IkeSaEstablished)) == 1
    assert sorted(e.pair.acquire_id for e in link.of("a", ChildSaEstablished)) == [1, 2]
