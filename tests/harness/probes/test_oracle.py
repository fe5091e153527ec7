"""The wire oracle on the real strongSwan 5.9.8 captures, and its negative controls.

Positive: every IKE message and every ESP packet of the three captures decrypts and verifies
with the keys from strongSwan's log (or from the Wireshark table alone, or with the Child SA
keys derived from the IKE keys), sequence numbers 1, 2 in order, inner addresses within
TS 10.1.0.1/32 <-> 10.2.0.1/32, default padding. Negative controls edit the capture (flip a
key bit, duplicate or reorder a packet, add crafted packets) and check the oracle says so.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.probes.craft import EspCrafter, IkeCrafter, icmp_echo
from harness.probes.keys import IkeSaEntry, IpsecSaEntry, KeySet, parse_wireshark, wireshark_table
from harness.probes.oracle import ICV_BAD, ICV_GOOD, MALFORMED, NO_KEYS, check_pcap, save_evidence
from harness.probes.pcap import LINKTYPE_ETHERNET, frames_of, write_pcap
from reference_impl.ike import payloads as v2p
from reference_impl.ike.enums import ExchangeType
from reference_impl.sa import IpsecProtocol

from .conftest import INITIATOR, RESPONDER, Capture

ETH = bytes(12) + b"\x08\x00"


def _edited(tmp_path: Path, capture: Capture, edit: object, name: str = "edited.pcap") -> Path:
    """The capture rewritten by ``edit(frames) -> frames`` (frames are (time, octets))."""
    link, frames = frames_of(capture.pcap)
    assert link == LINKTYPE_ETHERNET
    return write_pcap(tmp_path / name, edit(frames), linktype=link)  # type: ignore[operator]


def _esp_frames(capture: Capture) -> list[int]:
    """Indexes of the ESP frames (the last four of each capture)."""
    _, frames = frames_of(capture.pcap)
    return list(range(len(frames) - 4, len(frames)))


def _keys(capture: Capture) -> KeySet:
    return KeySet.from_charon_log(capture.log)


def _out_sa(keys: KeySet) -> IpsecSaEntry:
    """The initiator -> responder ESP SA."""
    return next(e for e in keys.ipsec if e.src == INITIATOR)


# --- positive -----------------------------------------------------------------------------------


def test_capture_fully_decrypted_and_verified(capture: Capture) -> None:
    report = check_pcap(capture.pcap, _keys(capture))
    assert report.ok, report.summary()
    assert report.summary().startswith("oracle OK: ")
    encrypted = [m for m in report.ike_messages if m.encrypted]
    assert encrypted and all(m.integrity == ICV_GOOD for m in encrypted)
    assert len(encrypted) == (5 if capture.version == 1 else 2)
    (ike,) = report.ike_sas
    assert ike.keys == "strongswan" and ike.verified == len(encrypted) and ike.failed == 0
    ws = parse_wireshark(capture.wireshark)
    assert ike.spi_i == ws.ike[0].spi_i.hex()  # type: ignore[union-attr]
    assert len(report.ipsec_sas) == 2
    for sa in report.ipsec_sas:
        assert sa.ok and sa.keys == "strongswan" and sa.encapsulated
        assert (sa.packets, sa.icv_good, sa.icv_bad) == (2, 2, 0)
        assert (sa.seq_first, sa.seq_last, sa.gaps, sa.replays, sa.out_of_order) == (1, 2, 0, 0, 0)
        assert sa.padding_default == 2 and sa.padding_other == 0
        assert sa.next_headers == {4: 2} and sa.outside_selectors == 0 and sa.dummy == 0
        if sa.src == INITIATOR:
            assert sa.inner_flows == {"10.1.0.1 > 10.2.0.1": 2}
            assert sa.selectors == "10.1.0.1 > 10.2.0.1"
        else:
            assert sa.src == RESPONDER and sa.inner_flows == {"10.2.0.1 > 10.1.0.1": 2}
    assert report.unknown_spis == {} and report.cleartext == 0 and report.key_mismatches == []
    assert report.capture_stats["frames"] == len(report.ike_messages) + 4


def test_ike_message_list(capture: Capture) -> None:
    report = check_pcap(capture.pcap, _keys(capture))
    lines = [(m.exchange, m.message_id, m.response) for m in report.ike_messages]
    if capture.version == 2:
        assert lines == [
            ("IKE_SA_INIT", 0, False),
            ("IKE_SA_INIT", 0, True),
            ("IKE_AUTH", 1, False),
            ("IKE_AUTH", 1, True),
        ]
        auth = report.ike_messages[2]
        assert auth.payloads[-1].startswith("SK{ IDi N(INITIAL_CONTACT) IDr AUTH SA TSi TSr")
        assert auth.initiator and auth.src == f"{INITIATOR}:4500"
        assert "IKE_AUTH request 1 [ SK{ IDi" in auth.summary()
    else:
        qm = 3080355206  # "generating QUICK_MODE request 3080355206" in the log
        assert lines == [("IDENTITY_PROTECTION", 0, r) for r in (0, 1, 0, 1, 0, 1)] + [
            ("QUICK_MODE", qm, False),
            ("QUICK_MODE", qm, True),
            ("QUICK_MODE", qm, False),
        ]
        assert report.ike_messages[4].payloads == ["E{", "ID", "HASH", "N(INITIAL_CONTACT)", "}"]
        assert report.ike_messages[8].payloads == ["E{", "HASH", "}"]


def test_wireshark_table_alone_suffices(capture: Capture) -> None:
    report = check_pcap(capture.pcap, parse_wireshark(capture.wireshark))
    assert report.ok, report.summary()
    assert report.totals()["icv_good"] == 4
    enc = [m.integrity for m in report.ike_messages if m.encrypted]
    # IKEv1's table has only CKY-I and Ka: messages decrypt, HASHes need SKEYID(_a)
    assert set(enc) == ({"unchecked"} if capture.version == 1 else {ICV_GOOD})


def test_child_sa_keys_derived_from_the_ike_keys(capture: Capture) -> None:
    logged = _keys(capture)
    report = check_pcap(capture.pcap, KeySet(logged.ike, []))
    assert report.ok, report.summary()
    assert {s.keys for s in report.ipsec_sas} == {"derived"}
    resolved = report.resolved_keys
    assert resolved is not None
    for want in logged.ipsec:
        got = resolved.find_ipsec(IpsecProtocol.ESP, want.spi)
        assert got is not None and got.source == "derived"
        # RFC 7296 §2.17 / RFC 2409 §5.5 KEYMAT from SK_d / SKEYID_d equals what charon logged
        assert (got.encr_key, got.integ_key) == (want.encr_key, want.integ_key)
        assert (got.src, got.dst, got.ts_src, got.ts_dst) == (
            want.src,
            want.dst,
            want.ts_src,
            want.ts_dst,
        )
        assert got.mode is not None and str(got.mode) == "tunnel"


def test_resolved_keys_give_the_shared_wireshark_table(capture: Capture) -> None:
    report = check_pcap(capture.pcap, _keys(capture))
    assert report.resolved_keys is not None
    table = wireshark_table(report.resolved_keys)
    assert table.skipped == []
    assert sorted(table.lines) == sorted(capture.wireshark.splitlines())


def test_evidence_files(tmp_path: Path, capture: Capture) -> None:
    report = check_pcap(capture.pcap, _keys(capture))
    assert report.resolved_keys is not None
    files = save_evidence(tmp_path / "ev", report, report.resolved_keys)
    data = json.loads(files["oracle"].read_text())
    assert data["ok"] is True and data["summary"] == report.summary()
    assert len(data["ipsec_sas"]) == 2 and data["ipsec_sas"][0]["ok"] is True
    assert KeySet.load(files["keys"]) == report.resolved_keys
    assert sorted(files["wireshark"].read_text().splitlines()) == sorted(
        capture.wireshark.splitlines()
    )


# --- negative controls --------------------------------------------------------------------------


def _flip(key: bytes) -> bytes:
    return bytes([key[0] ^ 0x01]) + key[1:]


def test_flipped_esp_key_bit_gives_icv_failures(capture: Capture) -> None:
    keys = _keys(capture)
    target = _out_sa(keys)
    bad = (
        replace(target, integ_key=_flip(target.integ_key))
        if target.integ_key
        else replace(target, encr_key=_flip(target.encr_key))
    )
    keys.ipsec[keys.ipsec.index(target)] = bad
    report = check_pcap(capture.pcap, keys, derive_child_keys=False)
    assert not report.ok and report.summary().startswith("oracle FAIL")
    sa = report.sa(target.spi)
    assert (sa.icv_good, sa.icv_bad) == (0, 2)
    assert [p.kind for p in sa.problems] == ["icv", "icv"]
    other = next(s for s in report.ipsec_sas if s is not sa)
    assert other.ok and other.icv_good == 2
    # With the IKE keys at hand the oracle also derives the real keys and says they differ
    report = check_pcap(capture.pcap, keys)
    assert len(report.key_mismatches) == 1 and f"0x{target.spi:08x}" in report.key_mismatches[0]


def test_flipped_ike_key_bit_gives_ike_integrity_failures(capture: Capture) -> None:
    keys = parse_wireshark(capture.wireshark)  # with SPIs: the keys are bound to the SA
    ike = keys.ike[0]
    if capture.version == 1:
        keys.ike[0] = replace(ike, enc_key=_flip(ike.enc_key))
        want = MALFORMED  # no ICV in IKEv1: a wrong key garbles the payload chain
    elif ike.sk_ai:
        keys.ike[0] = replace(ike, sk_ai=_flip(ike.sk_ai))
        want = ICV_BAD
    else:
        keys.ike[0] = replace(ike, sk_ei=_flip(ike.sk_ei))
        want = ICV_BAD
    report = check_pcap(capture.pcap, keys)
    assert not report.ike_ok
    failed = [m.integrity for m in report.ike_messages if m.encrypted]
    assert failed and failed[0] == want
    # From the log, without SPIs, the flipped key set binds to nothing: the SA has no keys
    log_keys = _keys(capture)
    e = log_keys.ike[0]
    if capture.version == 1:
        log_keys.ike[0] = replace(e, enc_key=_flip(e.enc_key))
    elif e.sk_ai:  # CBC + HMAC: the integrity keys are what binds keys to an SA
        log_keys.ike[0] = replace(e, sk_ai=_flip(e.sk_ai), sk_ar=_flip(e.sk_ar))
    else:
        log_keys.ike[0] = replace(e, sk_ei=_flip(e.sk_ei), sk_er=_flip(e.sk_er))
    report = check_pcap(capture.pcap, KeySet(log_keys.ike, []))
    assert {m.integrity for m in report.ike_messages if m.encrypted} == {NO_KEYS}
    assert report.ike_sas[0].keys == "missing" and not report.ok


def test_duplicated_packet_is_a_replay(tmp_path: Path, capture: Capture) -> None:
    first_esp = _esp_frames(capture)[0]
    pcap = _edited(tmp_path, capture, lambda fr: [*fr, (fr[-1][0] + 0.1, fr[first_esp][1])])
    report = check_pcap(pcap, _keys(capture))
    assert not report.ok
    (sa,) = [s for s in report.ipsec_sas if s.replays]
    assert (sa.replays, sa.packets, sa.icv_good) == (1, 3, 3)
    (problem,) = sa.problems
    assert (problem.kind, problem.seq, problem.frame) == ("replay", 1, len(frames_of(pcap)[1]))


def test_reordered_packets(tmp_path: Path, capture: Capture) -> None:
    a, _b, c, _d = _esp_frames(capture)  # a, c: seq 1 and 2 of the initiator's SA

    def swap(fr: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        fr = list(fr)
        fr[a], fr[c] = (fr[a][0], fr[c][1]), (fr[c][0], fr[a][1])
        return fr

    report = check_pcap(_edited(tmp_path, capture, swap), _keys(capture))
    sa = report.sa(_out_sa(_keys(capture)).spi)
    assert (sa.seq_first, sa.seq_last, sa.out_of_order, sa.gaps, sa.replays) == (2, 1, 1, 0, 0)
    assert not sa.ok


def _with_crafted(tmp_path: Path, capture: Capture, datagrams: list[bytes]) -> Path:
    def add(fr: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        t = fr[-1][0]
        return [*fr, *((t + 0.01 * (i + 1), ETH + d) for i, d in enumerate(datagrams))]

    return _edited(tmp_path, capture, add, "crafted.pcap")


def test_crafted_packets_gaps_padding_dummies_and_selectors(
    tmp_path: Path, capture: Capture
) -> None:
    keys = _keys(capture)
    sa = _out_sa(keys)
    esp = EspCrafter(sa, encap=(4500, 4500))
    ok = icmp_echo("10.1.0.1", "10.2.0.1", seq=3)
    outside = icmp_echo("10.1.0.9", "10.2.0.1")
    datagrams = [
        esp.packet(ok, 3),
        esp.packet(ok, 5),  # seq 4 never sent: a gap
        esp.bad_padding(ok, 6),  # zeros instead of 1, 2, 3, ... (correct ICV)
        esp.dummy(7),  # Next Header 59
        esp.packet(outside, 8),  # inner source outside TSi
        esp.packet(ok, 9, pad_length=esp.max_pad_length(len(ok))),  # long but default padding
        esp.corrupt(esp.packet(ok, 10), "ciphertext"),
    ]
    report = check_pcap(_with_crafted(tmp_path, capture, datagrams), keys)
    r = report.sa(sa.spi)
    assert (r.packets, r.icv_good, r.icv_bad) == (9, 8, 1)
    assert (r.seq_last, r.seq_max, r.gaps, r.missing) == (9, 9, 1, 1)  # forged 10 not counted
    assert r.padding_other == 1 and r.padding_default == 7
    assert r.dummy == 1 and r.next_headers == {4: 7, 59: 1}
    assert r.outside_selectors == 1
    assert any(p.kind == "selectors" and "10.1.0.9 > 10.2.0.1" in p.detail for p in r.problems)
    assert max(r.pad_lengths) >= 240
    kinds = sorted({p.kind for p in r.problems})
    assert kinds == ["icv", "padding", "selectors"]
    assert not r.ok and not report.ok


def test_unknown_spi_and_cleartext(tmp_path: Path, capture: Capture) -> None:
    keys = _keys(capture)
    stranger = replace(_out_sa(keys), spi=0x0BADC0DE)
    clear = icmp_echo("10.1.0.1", "10.2.0.1")
    crafted = [EspCrafter(stranger, encap=(4500, 4500)).packet(clear, 1), clear]
    report = check_pcap(_with_crafted(tmp_path, capture, crafted), keys)
    assert report.unknown_spis == {f"esp 0x0badc0de > {RESPONDER}": 1}
    assert report.cleartext == 1
    assert {p.kind for p in report.problems} >= {"unknown_spi", "cleartext"}
    assert not report.ok and "1 on unknown SPIs" in report.summary()


def test_crafted_ike_messages_on_the_live_sa(tmp_path: Path) -> None:
    capture = Capture("ikev2-aescbc-modp2048")
    keys = parse_wireshark(capture.wireshark)
    entry: IkeSaEntry = keys.ike[0]
    me = IkeCrafter(entry, as_initiator=True)
    peer = IkeCrafter(entry, as_initiator=False)
    dpd = me.informational(2)
    answer = peer.informational(2, response=True)
    delete = me.informational(3, [v2p.DeletePayload(1)])
    frags = me.seal_fragments(
        me.message(ExchangeType.INFORMATIONAL, 4, [v2p.VendorIdPayload(bytes(300))]), 200
    )
    forged = IkeCrafter.corrupt_icv(me.informational(5))
    marker = b"\0\0\0\0"

    def udp(src: str, dst: str, payload: bytes) -> bytes:
        from scapy.layers.inet import IP, UDP

        return bytes(IP(src=src, dst=dst) / UDP(sport=4500, dport=4500) / (marker + payload))

    crafted = [udp(INITIATOR, RESPONDER, d) for d in (dpd, delete, *frags, forged)]
    crafted.insert(1, udp(RESPONDER, INITIATOR, answer))
    report = check_pcap(_with_crafted(tmp_path, capture, crafted), keys)
    extra = report.ike_messages[4:]
    assert [m.summary().split(" ", 4)[4] for m in extra[:3]] == [
        "INFORMATIONAL request 2 [ SK{ } ] (good)",
        "INFORMATIONAL response 2 [ SK{ } ] (good)",
        "INFORMATIONAL request 3 [ SK{ DELETE } ] (good)",
    ]
    assert len(frags) >= 2
    assert (
        extra[-2].payloads[-1] == "SKF{ VENDOR_ID }"
        and extra[-2].fragment == f"{len(frags)}/{len(frags)}"
    )
    assert extra[-1].integrity == ICV_BAD
    (sa,) = report.ike_sas
    assert sa.deleted and sa.failed == 1 and not report.ike_ok


@pytest.mark.parametrize("name", ["ikev2-aescbc-modp2048"])
def test_ipsec_without_any_key_is_unchecked_not_passed(name: str) -> None:
    capture = Capture(name)
    keys = KeySet(ipsec=[replace(e, encr_key=b"", integ_key=b"") for e in _keys(capture).ipsec])
    report = check_pcap(capture.pcap, keys)
    assert report.totals()["undecrypted"] == 4 and not report.ipsec_ok
    # sequence analysis needs no keys
    assert {(s.seq_first, s.seq_last) for s in report.ipsec_sas} == {(1, 2)}


def test_retransmitted_ike_messages(tmp_path: Path, capture: Capture) -> None:
    """A retransmission is the same datagram again: IKEv2 verifies it as before, IKEv1
    decrypts it with the IV of its first copy (the CBC chain does not move, RFC 2409
    Appendix B), and nothing else changes."""
    n = 6 if capture.version == 1 else 2  # Quick Mode 1 / IKE_AUTH request (0-based frames)
    pcap = _edited(
        tmp_path, capture, lambda fr: [*fr[: n + 1], (fr[n][0] + 0.5, fr[n][1]), *fr[n + 1 :]]
    )
    report = check_pcap(pcap, _keys(capture))
    assert report.ok, report.summary()
    first, again = report.ike_messages[n], report.ike_messages[n + 1]
    assert (first.retransmission, again.retransmission) == (False, True)
    assert again.payloads == first.payloads and again.integrity == first.integrity == ICV_GOOD
    assert all(m.integrity == ICV_GOOD for m in report.ike_messages if m.encrypted)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.probes.__main__ import main

    capture = Capture("ikev2-aesgcm-x25519")
    log = tmp_path / "charon.log"
    log.write_text(capture.log)
    assert main([str(capture.pcap), "--charon-log", str(log), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("oracle OK: ")
    assert (tmp_path / "out" / "wireshark" / "esp_sa").exists()
    assert json.loads((tmp_path / "out" / "oracle.json").read_text())["ok"] is True
    assert main([str(capture.pcap)]) == 1  # no keys: nothing can be verified
    assert "oracle FAIL" in capsys.readouterr().out


def test_ah_and_ipv6_packets() -> None:
    """AH (RFC 4302) and IPv6 ESP through the oracle: verdicts, Next Header, inner flows."""
    from harness.probes.craft import AhCrafter, mutate_ipv4, udp_packet
    from harness.probes.oracle import check_packets
    from harness.probes.pcap import ip_packet
    from reference_impl.crypto.ids import EncrId, IntegId
    from reference_impl.sa import Mode, TrafficSelector

    ah_sa = IpsecSaEntry(
        IpsecProtocol.AH,
        0x5151,
        "198.18.0.1",
        "198.18.0.2",
        integ_id=IntegId.AUTH_HMAC_SHA2_256_128,
        integ_key=bytes(32),
        mode=Mode.TRANSPORT,
        source="test",
    )
    ah = AhCrafter(ah_sa)
    seg = udp_packet("198.18.0.1", "198.18.0.2", 7, 9, b"ah")
    esp_sa = IpsecSaEntry(
        IpsecProtocol.ESP,
        0x6161,
        "2001:db8::1",
        "2001:db8::2",
        encr_id=EncrId.ENCR_AES_GCM_16,
        encr_key_bits=128,
        encr_key=bytes(range(20)),
        mode=Mode.TUNNEL,
        ts_src=(TrafficSelector.from_network("2001:db8:ff:1::/64"),),
        ts_dst=(TrafficSelector.from_network("2001:db8:ff:2::/64"),),
        source="test",
    )
    esp = EspCrafter(esp_sa)
    inner6 = icmp_echo("2001:db8:ff:1::1", "2001:db8:ff:2::1")
    datagrams = [
        ah.packet(seg, 1),
        mutate_ipv4(ah.packet(seg, 2), ttl=3),  # mutable: still verifies
        mutate_ipv4(ah.packet(seg, 3), ident=7),  # immutable: fails
        esp.packet(inner6, 1),
        esp.packet(icmp_echo("2001:db8:ff:9::1", "2001:db8:ff:2::1"), 2),
    ]
    oracle = check_packets(
        [ip_packet(d, float(i), i + 1) for i, d in enumerate(datagrams)],
        KeySet(ipsec=[ah_sa, esp_sa]),
    )
    a = oracle.report.sa(0x5151, "ah")
    assert (a.packets, a.icv_good, a.icv_bad, a.next_headers) == (3, 2, 1, {17: 2})
    e = oracle.report.sa(0x6161)
    assert (e.icv_good, e.outside_selectors, e.next_headers) == (2, 1, {41: 2})
    assert e.inner_flows == {"2001:db8:ff:1::1 > 2001:db8:ff:2::1": 1}
    assert not oracle.report.ok
