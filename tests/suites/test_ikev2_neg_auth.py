"""The ``ikev2-negotiation`` and ``ikev2-auth`` suites against the reference on the local
topology: every case passes, and each suite notices a deliberate misbehaviour of the peer under
test in exactly the cases that check that behaviour (``wrong_natd``: a NAT_DETECTION_SOURCE_IP
that does not hash the sender's address; ``accept_any_auth``: the peer's AUTH is not verified).

Also the scripted peer's pieces that need no peer: the two ends of an IKE SA agree on keys and
open each other's messages, every AUTH method it signs verifies with the reference's verifier,
crafted SA payloads decode as intended, the PKI's certificates chain (or do not) as designed.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from reference_impl.crypto import dh
from reference_impl.ike import payloads as v2p
from reference_impl.ike.auth import psk_auth, verify_signature
from reference_impl.ike.certs import CertificateError, verify_chain
from reference_impl.ike.types import natd_hash
from suites.support.ike import (
    Auth,
    HarnessSa,
    RawSa,
    choose_for_ke,
    id_payload,
    key_length_attr,
    make_pki,
    raw_proposal,
    raw_transform,
    selected_of,
    signature_algorithm,
    transform,
    udp4,
)
from tests.suites.runs import ROOT, run_results, verdicts_by_case

SUITES = ("ikev2-negotiation", "ikev2-auth")

NEG_CASES = 23
AUTH_CASES = 17
WRONG_NATD = {"IKEV2-NEG-020"}
"""Cases that check the NAT-D hashes (the PUT's NAT_DETECTION_SOURCE_IP is wrong on purpose)."""
ACCEPT_ANY_AUTH = {
    "IKEV2-AUTH-003",  # wrong PSK
    "IKEV2-AUTH-004",  # corrupted responder AUTH
    "IKEV2-AUTH-005",  # AUTH over another message 1
    "IKEV2-AUTH-008",  # self-signed and expired certificates
    "IKEV2-AUTH-015",  # an identity the certificate does not prove
}
"""Cases that check a failed authentication is refused."""


def run(
    tmp_path: Path, *args: str, suites: tuple[str, ...] = SUITES, jobs: int = 1
) -> dict[tuple[str, str], str]:
    rows = run_results(tmp_path, "--topology", "local", "--jobs", str(jobs), *args, suites=suites)
    return verdicts_by_case(rows)


STRONGSWAN = {
    ("IKEV2-NEG-005", "R"): ("fail", "strongswan-ignores-unknown-transform-attributes"),
    ("IKEV2-NEG-020", "I"): ("fail", "strongswan-libipsec-fakes-nat"),
    ("IKEV2-NEG-020", "R"): ("fail", "strongswan-libipsec-fakes-nat"),
    ("IKEV2-AUTH-016", "R"): ("recorded", "strongswan-unique-never"),
}
"""strongSwan's verdicts other than pass, with their KNOWN_PEER_BEHAVIOUR.md anchors."""


def failing(verdicts: dict[tuple[str, str], str]) -> set[str]:
    return {case for (case, _), v in verdicts.items() if v in ("fail", "error", "warning")}


@pytest.mark.slow
def test_reference_passes_everything_on_local(tmp_path: Path) -> None:
    verdicts = run(tmp_path)
    cases = {c for c, _ in verdicts}
    assert len([c for c in cases if c.startswith("IKEV2-NEG-")]) == NEG_CASES, sorted(cases)
    assert len([c for c in cases if c.startswith("IKEV2-AUTH-")]) == AUTH_CASES, sorted(cases)
    bad = {k: v for k, v in verdicts.items() if v != "pass"}
    assert not bad, bad
    assert len(verdicts) == 54  # 40 cases, 14 of them in both roles


@pytest.mark.slow
def test_wrong_natd_is_noticed_exactly(tmp_path: Path) -> None:
    verdicts = run(tmp_path, "--put-misbehave", "wrong_natd", suites=("ikev2-negotiation",))
    assert failing(verdicts) == WRONG_NATD, verdicts
    assert {r for (c, r), v in verdicts.items() if c in WRONG_NATD and v == "fail"} == {"I", "R"}


@pytest.mark.slow
def test_accept_any_auth_is_noticed_exactly(tmp_path: Path) -> None:
    verdicts = run(tmp_path, "--put-misbehave", "accept_any_auth", suites=("ikev2-auth",))
    assert failing(verdicts) == ACCEPT_ANY_AUTH, verdicts


@pytest.mark.slow
@pytest.mark.needs_root
def test_strongswan_verdicts_on_netns(tmp_path: Path) -> None:
    """strongSwan gets a verdict in every case; each one other than pass is the known one,
    explained under its anchor in suites/KNOWN_PEER_BEHAVIOUR.md. (One peer per run: the lab
    runs every peer under test on the same node.)"""
    from harness.peers.strongswan import StrongSwanPeer

    avail = StrongSwanPeer.availability()
    if not avail.available:
        pytest.skip(avail.detail)
    rows = run_results(
        tmp_path, "--topology", "netns", "--jobs", "2", "--peer", "strongswan", suites=SUITES,
        timeout=900,
    )  # fmt: skip
    sw = {(r["case"], r["role"]): (r["verdict"], r.get("known_behaviour")) for r in rows}
    assert len(sw) == 54, sorted(sw)
    other = {k: v for k, v in sw.items() if v[0] != "pass"}
    assert other == STRONGSWAN, other
    known = (ROOT / "suites" / "KNOWN_PEER_BEHAVIOUR.md").read_text()
    for _verdict, anchor in STRONGSWAN.values():
        assert f'<a id="{anchor}"></a>' in known, anchor


# --- the scripted peer's pieces ---------------------------------------------------------------


def _pair(sel_text: tuple[int, int | None, int, int, int]) -> tuple[HarnessSa, HarnessSa]:
    """Both ends of one IKE SA derived from one Diffie-Hellman exchange."""
    encr_id, bits, integ_id, prf_id, group = sel_text
    offer = v2p.Proposal(
        1,
        1,
        b"",
        [
            v2p.Transform(1, encr_id, bits),
            v2p.Transform(2, prf_id),
            *([v2p.Transform(3, integ_id)] if integ_id else []),
            v2p.Transform(4, group),
        ],
    )
    sel = selected_of(offer)
    a, b = dh(group).generate(), dh(group).generate()
    ends = []
    for initiator, mine, theirs in ((True, a, b), (False, b, a)):
        sa = HarnessSa(initiator=initiator, spi_i=b"\x01" * 8, spi_r=b"\x02" * 8)
        sa.nonce_i, sa.nonce_r = b"i" * 32, b"r" * 32
        sa.init_request, sa.init_response = b"message 1", b"message 2"
        sa.derive(sel, mine.shared_secret(theirs.public_value))
        ends.append(sa)
    return ends[0], ends[1]


@pytest.mark.parametrize(
    "suite",
    [(12, 256, 12, 5, 14), (20, 128, 0, 5, 31), (20, 256, 0, 7, 19)],
    ids=["aes-cbc-sha256-modp2048", "gcm128-x25519", "gcm256-sha512-ecp256"],
)
def test_both_ends_agree_and_open_each_other(suite: tuple[int, int | None, int, int, int]) -> None:
    ini, resp = _pair(suite)
    assert ini.keys == resp.keys
    req = ini.seal(35, 1, [v2p.NoncePayload(b"n" * 16)], response=False)
    msg, payloads = resp.open(req)
    assert (msg.message_id, msg.initiator, msg.response) == (1, True, False)
    assert payloads == [v2p.NoncePayload(b"n" * 16)]
    ans = resp.seal(35, 1, [v2p.NotifyPayload(24)], response=True)
    msg, payloads = ini.open(ans)
    assert (msg.initiator, msg.response) == (False, True)
    assert payloads == [v2p.NotifyPayload(24)]


def test_auth_values_verify_with_the_reference(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "192.0.2.1", "192.0.2.2")
    ini, resp = _pair((12, 256, 12, 5, 14))
    idi = id_payload("192.0.2.2")
    octets = ini.octets(initiator_signs=True, id_payload=idi)
    assert octets == resp.octets(initiator_signs=True, id_payload=idi)
    # PSK (RFC 7296 §2.15): the reference's own computation
    (auth,) = Auth(psk=b"secret").payloads(octets, ini.prf, None)
    assert (auth.method, auth.data) == (2, psk_auth(ini.prf, b"secret", octets))
    (bad,) = Auth(psk=b"secret", corrupt=True).payloads(octets, ini.prf, None)
    assert bad.data != auth.data and len(bad.data) == len(auth.data)
    rsa, ecdsa = pki.creds["tester-rsa"], pki.creds["tester-ecdsa"]
    cases = [
        (Auth.of(rsa, method=1), rsa, 1, None),
        (Auth.of(ecdsa, method=9), ecdsa, 9, None),
        (Auth.of(rsa, method=14, scheme="rsa"), rsa, 14, ("rsa", "sha256")),
        (Auth.of(rsa, method=14, scheme="pss"), rsa, 14, ("pss", "sha256")),
        (Auth.of(ecdsa, method=14, scheme="ecdsa"), ecdsa, 14, ("ecdsa", "sha256")),
        (Auth.of(rsa, method=14, hash="sha384"), rsa, 14, ("rsa", "sha384")),
        (Auth.of(rsa), rsa, 14, ("rsa", "sha256")),  # the peer announced hashes: RFC 7427
        (Auth.of(ecdsa), ecdsa, 9, None),  # it did not: the classic method of the key
    ]
    for i, (spec, cred, method, alg) in enumerate(cases):
        hashes = (2, 3, 4) if i == 6 else None
        *certs, a = spec.payloads(octets, ini.prf, hashes)
        assert [c.data for c in certs] == [c.public_bytes(Encoding.DER) for c in cred.certs]
        assert a.method == method, i
        assert signature_algorithm(a) == alg, i
        assert verify_signature(cred.cert.public_key(), a.method, a.data, octets), i
        assert not verify_signature(cred.cert.public_key(), a.method, a.data, octets + b"x"), i
    (*_c, ec9) = Auth.of(ecdsa, method=9).payloads(octets, ini.prf, None)
    assert len(ec9.data) == 64  # RFC 4754 §3: r | s, 32 octets each


def test_pki_chains_as_designed(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "192.0.2.1", "192.0.2.2")
    now = datetime.now(UTC)
    for name in ("put-rsa", "tester-rsa", "put-ecdsa", "tester-ecdsa", "tester-peer-example"):
        verify_chain(pki.creds[name].cert, [], (pki.ca,), now)
    chain = pki.creds["put-chain"]
    assert chain.chain == (pki.intermediate,)
    verify_chain(chain.cert, list(chain.chain), (pki.ca,), now)
    assert chain.path.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    for name in ("tester-expired", "tester-selfsigned"):
        with pytest.raises(CertificateError):
            verify_chain(pki.creds[name].cert, [], (pki.ca,), now)
    with pytest.raises(CertificateError):
        verify_chain(chain.cert, [], (pki.ca,), now)  # without its intermediate


def test_crafted_sa_payloads_decode_as_intended() -> None:
    unknown_tv = struct.pack("!HH", 0x8010, 1)
    raw = RawSa(
        raw_proposal(
            1,
            [
                raw_transform(1, 12, key_length_attr(128) + unknown_tv),
                raw_transform(1, 12),
                raw_transform(2, 5),
                raw_transform(4, 14, last=True),
            ],
            last=True,
        )
    )
    first, body = v2p.encode_chain([raw])
    (sa,) = v2p.decode_chain(body, 0, first)
    assert isinstance(sa, v2p.SaPayload)
    t = sa.proposals[0].transforms
    assert (t[0].id, t[0].key_length, t[0].unknown_attributes) == (12, 128, ((16, b"\0\1"),))
    assert (t[1].id, t[1].key_length) == (12, None)  # no Key Length attribute (NEG-006)
    assert [x.type for x in t] == [1, 1, 2, 4]
    assert transform("AES_GCM_16_256") == v2p.Transform(1, 20, 256)
    assert transform("CURVE_25519") == v2p.Transform(4, 31)
    # an answer to a KE for group 31 names 31 (the retry after INVALID_KE_PAYLOAD)
    offer = [
        v2p.Proposal(
            1,
            1,
            b"",
            [
                transform("AES_CBC_128"),
                transform("PRF_HMAC_SHA2_256"),
                transform("MODP_2048"),
                transform("CURVE_25519"),
            ],
        )
    ]
    ans = choose_for_ke(offer, 31)
    assert [(x.type, x.id) for x in ans.transforms] == [(1, 12), (2, 5), (4, 31)]


def test_udp4_and_natd() -> None:
    d = udp4("192.0.2.2", 500, "192.0.2.1", 500, b"\0\0\0\0ike")
    assert d[9] == 17 and struct.unpack("!HH", d[20:24]) == (500, 500)
    s = sum(struct.unpack("!10H", d[:20]))
    assert (s & 0xFFFF) + (s >> 16) == 0xFFFF  # RFC 791 header checksum
    # RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | port), SPIr zero in the first request
    want = hashlib.sha1(b"\1" * 8 + bytes(8) + bytes([192, 0, 2, 1]) + (500).to_bytes(2)).digest()
    assert natd_hash(b"\1" * 8, bytes(8), ("192.0.2.1", 500)) == want
