"""RSA signatures, DPD, rekeying and lifetimes, INITIAL-CONTACT, Informational robustness
(RFC 2409 §5.1, §5.5, §5.7; RFC 3706; RFC 2407 §4.6.3.3)."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from reference_impl.crypto.ids import DhId
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
from reference_impl.isakmp import auth
from reference_impl.isakmp.codec import CertPayload, SigPayload, decode_message
from reference_impl.isakmp.constants import AuthMethod, ExchangeType
from reference_impl.isakmp.proposals import Phase1Transform
from reference_impl.isakmp.settings import RsaAuth
from tests.reference_impl.isakmp.link import A_ADDR, B_ADDR, Link, child, conn_pair, make_link

P1_RSA = Phase1Transform(7, 128, 4, AuthMethod.RSA_SIGNATURES, DhId.ECP_256, 28800)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey, ip: str | None
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ip is not None:
        import ipaddress

        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False
        )
    else:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    keys = {n: rsa.generate_private_key(public_exponent=65537, key_size=2048) for n in "cab"}
    der = {
        n: k.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for n, k in keys.items()
    }
    return {
        "ca": _cert("Test CA", keys["c"], "Test CA", keys["c"], None),
        "a": _cert("moon", keys["a"], "Test CA", keys["c"], A_ADDR),
        "b": _cert("sun", keys["b"], "Test CA", keys["c"], B_ADDR),
        "a_key": der["a"],
        "b_key": der["b"],
        "rogue_key": rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }


def test_rsa_sign_matches_cryptography_verify(pki: dict[str, bytes]) -> None:
    digest = bytes(range(32))
    sig = auth.rsa_sign(pki["a_key"], digest)
    assert auth.rsa_verify(pki["a"], digest, sig)
    assert not auth.rsa_verify(pki["a"], bytes(32), sig)
    assert not auth.rsa_verify(pki["b"], digest, sig)


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("aggressive", [False, True])
def test_rsa_signatures(pki: dict[str, bytes], initiator: str, aggressive: bool) -> None:
    """Main and Aggressive Mode with RSA signatures and certificates (RFC 2409 §5.1)."""
    a, b = conn_pair(
        auth_a=RsaAuth(pki["a"], pki["a_key"], trusted=(pki["ca"],)),
        auth_b=RsaAuth(pki["b"], pki["b_key"], trusted=(pki["ca"],)),
        props_a=(P1_RSA,),
        props_b=(P1_RSA,),
        aggressive=aggressive,
    )
    link = make_link((a, b))
    (link.a if initiator == "a" else link.b).initiate("t", 0.0)
    link.pump(until=10)
    assert len(link.of("a", IkeSaEstablished)) == 1 and len(link.of("b", IkeSaEstablished)) == 1
    assert len(link.of("a", ChildSaEstablished)) == 1
    if not aggressive:
        ike_keys = link.a.phase1_keys(link.a.ike_sa_ids()[0])
        assert ike_keys["encryption_key"] and len(ike_keys["encryption_key"]) == 16
    else:
        am2 = decode_message(link.sent[1][2].data)
        assert am2.find(CertPayload) is not None and am2.find(SigPayload) is not None


def test_rsa_wrong_key_fails(pki: dict[str, bytes]) -> None:
    a, b = conn_pair(
        auth_a=RsaAuth(pki["a"], pki["rogue_key"], trusted=(pki["ca"],)),
        auth_b=RsaAuth(pki["b"], pki["b_key"], trusted=(pki["ca"],)),
        props_a=(P1_RSA,),
        props_b=(P1_RSA,),
    )
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=30)
    assert not link.of("b", IkeSaEstablished)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.AUTHENTICATION_FAILED and f.notify == 25  # INVALID-SIGNATURE


def test_rsa_untrusted_ca_fails(pki: dict[str, bytes]) -> None:
    a, b = conn_pair(
        auth_a=RsaAuth(pki["a"], pki["a_key"], trusted=(pki["ca"],)),
        auth_b=RsaAuth(pki["b"], pki["b_key"], trusted=(pki["b"],)),
        props_a=(P1_RSA,),
        props_b=(P1_RSA,),
    )
    link = make_link((a, b))
    link.a.initiate("t", 0.0)
    link.pump(until=30)
    assert not link.of("b", IkeSaEstablished)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.AUTHENTICATION_FAILED and f.notify == 22


def _up(link: Link) -> None:
    link.a.initiate("t", 0.0)
    link.pump(until=5)
    assert len(link.of("a", ChildSaEstablished)) == 1


def test_dpd_probes_when_idle_and_detects_dead_peer() -> None:
    """RFC 3706: R-U-THERE after dpd_delay idle, answered by R-U-THERE-ACK with the same
    sequence number; unanswered probes on the retransmission schedule kill the SA."""
    link = make_link(conn_pair(dpd_delay=10.0))
    _up(link)
    t0 = link.now
    link.pump(until=t0 + 25)
    infos = [
        (t, side)
        for t, side, d in link.sent
        if decode_message(d.data).header.exchange_type == ExchangeType.INFORMATIONAL
    ]
    # both sides probe after 10 s idle and answer each other's probe
    assert len(infos) >= 4 and infos[0][0] == pytest.approx(10.0)  # idle since t=0
    assert not link.of("a", IkeSaDeleted)
    link.drop = lambda n, side, d: side == "b"  # B goes dark
    link.pump(until=link.now + 60)
    (dead,) = link.of("a", IkeSaDeleted)
    assert dead.reason == "dead peer"
    assert link.of("a", ChildSaDeleted)[0].reason == "dead peer"


def test_child_rekey_before_expiry() -> None:
    c_a = child(life_seconds=100, rekey_margin=20)
    c_b = child("c", "10.2.0.0/24", "10.1.0.0/24", life_seconds=100, rekey_margin=20)
    link = make_link(conn_pair(child_a=c_a, child_b=c_b, dpd_delay=None))
    _up(link)
    (first,) = link.of("a", ChildSaEstablished)
    link.pump(until=85)
    (ra,) = link.of("a", ChildSaRekeyed)
    (rb,) = link.of("b", ChildSaRekeyed)
    assert ra.old_inbound_spi == first.pair.inbound.spi
    assert rb.old_outbound_spi == first.pair.inbound.spi
    assert ra.pair.outbound.encr_key == rb.pair.inbound.encr_key
    assert ra.pair.inbound.spi != first.pair.inbound.spi
    assert link.of("a", ChildSaDeleted)[0].inbound_spi == first.pair.inbound.spi
    assert link.of("b", ChildSaDeleted)[0].outbound_spi == first.pair.inbound.spi
    assert len(link.a.child_sas()) == 1 and len(link.b.child_sas()) == 1
    # and again, on the new SA's schedule
    link.pump(until=170)
    assert len(link.of("a", ChildSaRekeyed)) == 2


def test_responder_child_expires_without_initiator() -> None:
    c_b = child("c", "10.2.0.0/24", "10.1.0.0/24", life_seconds=50, rekey_margin=10)
    a, b = conn_pair(child_b=c_b, dpd_delay=None)
    link = make_link((a, b))
    _up(link)
    link.drop = lambda n, side, d: side == "a"
    link.pump(until=60)
    assert [e.reason for e in link.of("b", ChildSaDeleted)] == ["expired"]


def test_ike_rekey_moves_children() -> None:
    a, b = conn_pair(life_seconds=200, rekey_margin=50, dpd_delay=None)
    link = make_link((a, b))
    _up(link)
    (old,) = link.a.ike_sa_ids()
    link.pump(until=160)
    (ra,) = link.of("a", IkeSaRekeyed)
    (rb,) = link.of("b", IkeSaRekeyed)
    assert ra.old_ike_sa_id == old == rb.old_ike_sa_id
    assert ra.new_ike_sa_id == rb.new_ike_sa_id != old
    assert link.a.ike_sa_ids() == [ra.new_ike_sa_id] and link.b.ike_sa_ids() == [ra.new_ike_sa_id]
    assert len(link.a.child_sas()) == 1 and not link.of("a", ChildSaDeleted)
    assert not link.of("a", IkeSaDeleted) and not link.of("b", IkeSaDeleted)


def test_ike_hard_expiry_without_rekey() -> None:
    a, b = conn_pair(life_seconds=100, rekey_margin=50, dpd_delay=None)
    b = dataclasses.replace(b, life_seconds=60)
    link = make_link((a, b))
    _up(link)
    link.drop = lambda n, side, d: side == "a"  # A's rekey never reaches B
    link.pump(until=70)
    assert [e.reason for e in link.of("b", IkeSaDeleted)] == ["expired"]


def test_initial_contact_clears_stale_state() -> None:
    """RFC 2407 §4.6.3.3: A restarts and comes back with INITIAL-CONTACT; B drops the old SA."""
    link = make_link(conn_pair(dpd_delay=None))
    _up(link)
    (old,) = link.b.ike_sa_ids()
    # A loses its state (a fresh service with the same settings)
    from reference_impl.isakmp.service import IsakmpService

    link.a = IsakmpService(link.a.settings)
    link.events_a.clear()
    link.a.initiate("t", link.now)
    link.pump(until=link.now + 5)
    assert old not in link.b.ike_sa_ids() and len(link.b.ike_sa_ids()) == 1
    assert [e.reason for e in link.of("b", IkeSaDeleted)] == ["initial contact"]
    assert len(link.b.child_sas()) == 1


def test_garbage_and_forged_informational_are_counted_drops() -> None:
    link = make_link(conn_pair(dpd_delay=None))
    _up(link)
    (ike,) = link.b.ike_sa_ids()
    before = sum(link.b.counters.dropped.values())
    link.b.receive_datagram(b"\x00" * 10, (A_ADDR, 500), link.now)
    forged = bytearray(link.sent[-1][2].data)  # QM3, now replayed with a flipped bit
    forged[-1] ^= 1
    link.b.receive_datagram(bytes(forged), (A_ADDR, 500), link.now)
    link.b.receive_datagram(ike + bytes(12) + b"\x00" * 4, (A_ADDR, 500), link.now)
    assert sum(link.b.counters.dropped.values()) >= before + 2
    assert link.b.ike_sa_ids() == [ike] and len(link.b.child_sas()) == 1


def test_quick_mode_retransmission_failure_reports() -> None:
    link = make_link(conn_pair(dpd_delay=None))
    link.a.initiate("t", 0.0)
    n_mm = 6
    link.drop = lambda n, side, d: n >= n_mm and side == "b"
    link.pump(until=30)
    assert len(link.of("a", IkeSaEstablished)) == 1
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.PEER_SILENT and f.peer_replied


def test_dpd_one_lost_probe_recovers() -> None:
    """RFC 3706 §5.5: an unanswered R-U-THERE is retried (with the next sequence number); the
    ACK for the retry keeps the SA alive."""
    link = make_link(conn_pair(dpd_delay=10.0))
    _up(link)
    lost: list[float] = []

    def drop_first_probe(n: int, side: str, d: object) -> bool:
        data = d.data  # type: ignore[attr-defined]
        if side == "a" and data[18] == ExchangeType.INFORMATIONAL and not lost:
            lost.append(link.now)
            return True
        return False

    link.drop = drop_first_probe  # type: ignore[assignment]
    link.pump(until=60)
    assert lost == [pytest.approx(10.0)]
    a_infos = [t for t, side, d in link.sent if side == "a" and d.data[18] == 5]
    assert 10.5 in a_infos  # the probe was retried on the schedule (first gap 0.5 s)
    assert not link.of("a", IkeSaDeleted) and not link.of("b", IkeSaDeleted)
    assert len(link.a.child_sas()) == 1


@pytest.mark.parametrize("lost", [2, 3, 4, 5])
def test_rsa_with_loss(pki: dict[str, bytes], lost: int) -> None:
    a, b = conn_pair(
        auth_a=RsaAuth(pki["a"], pki["a_key"], trusted=(pki["ca"],)),
        auth_b=RsaAuth(pki["b"], pki["b_key"], trusted=(pki["ca"],)),
        props_a=(P1_RSA,),
        props_b=(P1_RSA,),
        dpd_delay=None,
    )
    link = make_link((a, b))
    seen: list[bytes] = []

    def drop(n: int, side: str, d: object) -> bool:
        data = d.data  # type: ignore[attr-defined]
        if data in seen:
            return False
        seen.append(data)
        return len(seen) - 1 == lost

    link.drop = drop  # type: ignore[assignment]
    link.a.initiate("t", 0.0)
    link.pump(until=20)
    assert len(link.of("a", ChildSaEstablished)) == 1 and len(link.of("b", ChildSaEstablished)) == 1


def test_forged_delete_is_ignored() -> None:
    """An Informational whose HASH(1) does not verify must not delete anything."""
    link = make_link(conn_pair(dpd_delay=None))
    _up(link)
    (ca,) = link.of("a", ChildSaEstablished)
    link.drop = lambda n, side, d: False
    link.mutate = lambda n, side, data: data[:-1] + bytes([data[-1] ^ 0x5A])  # type: ignore[assignment]
    link.a.delete_child_sa(ca.pair.inbound.spi, link.now)
    link.pump(until=link.now + 1)
    assert not link.of("b", ChildSaDeleted) and len(link.b.child_sas()) == 1
    assert sum(link.b.counters.dropped.values()) >= 1


def test_wrong_identity_reports_authentication_failed() -> None:
    """The responder refuses MM5 (unexpected ID) with a protected notify the initiator can
    read: the policy agent learns AUTHENTICATION_FAILED, not a timeout."""
    from reference_impl.isakmp.identity import Identity

    a, b = conn_pair(dpd_delay=None)
    b = dataclasses.replace(b, remote_id=Identity.parse("someone.else.example"))
    link = make_link((a, b))
    link.a.initiate("t", 0.0, acquire_id=9)
    link.pump(until=30)
    (f,) = link.of("a", NegotiationFailed)
    assert f.reason == FailureReason.AUTHENTICATION_FAILED and f.acquire_id == 9
    assert f.notify == 18  # INVALID-ID-INFORMATION
    assert link.now < 1 and link.b.ike_sa_ids() == []


def test_bad_ke_value_is_invalid_key_information() -> None:
    """RFC 6989-style checks in the registry; ISAKMP answers INVALID-KEY-INFORMATION (17)."""
    from reference_impl.isakmp.codec import KePayload, encode_message

    link = make_link(conn_pair(dpd_delay=None))
    link.a.initiate("t", 0.0)
    link.b.receive_datagram(link.a.datagrams_to_send(0.0)[0].data, (A_ADDR, 500), 0.0)
    mm2 = decode_message(link.b.datagrams_to_send(0.0)[0].data)
    mm3 = encode_message(
        mm2.header.icookie, mm2.header.rcookie, ExchangeType.IDENTITY_PROTECTION, 0, 0,
        [KePayload(b"\x00" * 255 + b"\x01")],
    )  # fmt: skip
    link.b.receive_datagram(mm3, (A_ADDR, 500), 0.1)
    assert (
        link.b.counters.dropped.get("PAYLOAD_MALFORMED", 0)
        + link.b.counters.dropped.get("INVALID_KEY_INFORMATION", 0)
        == 1
    )


def test_responder_lifetime_notify_shortens_the_initiators_sa() -> None:
    """RFC 2407 §4.6.3.1: B keeps its SAs 600 s; A asked for 3600 s. B says so in QM2 and A
    rekeys before B's expiry instead of losing the SA."""
    c_b = child("c", "10.2.0.0/24", "10.1.0.0/24", life_seconds=600, rekey_margin=60)
    link = make_link(conn_pair(child_b=c_b, dpd_delay=None))
    _up(link)
    (ca,) = link.of("a", ChildSaEstablished)
    (cb,) = link.of("b", ChildSaEstablished)
    assert cb.pair.inbound.lifetime.hard_seconds == 600
    assert ca.pair.outbound.lifetime.hard_seconds == 600
    soft = ca.pair.outbound.lifetime.soft_seconds
    assert soft is not None and 0 < soft < 600
    link.pump(until=650)
    assert len(link.of("a", ChildSaRekeyed)) >= 1
    assert [e.reason for e in link.of("b", ChildSaDeleted)] == ["deleted by peer"]
    assert len(link.b.child_sas()) == 1
