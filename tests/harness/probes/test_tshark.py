"""tshark (Wireshark 4.0) as the independent oracle for ours (peers.md §5): with the key table
we write from strongSwan's log, tshark decrypts the same captures and agrees with our oracle
packet for packet; with a corrupted key both report the same ICV failures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness import system
from harness.probes import tshark
from harness.probes.craft import EspCrafter, icmp_echo
from harness.probes.keys import KeySet, wireshark_table
from harness.probes.oracle import check_pcap
from harness.probes.pcap import frames_of, write_pcap

from .conftest import INITIATOR, Capture

pytestmark = pytest.mark.skipif(
    tshark.available() is None, reason="tshark not installed (scripts/install-system-deps)"
)


def _resolved(capture: Capture, pcap: Path | None = None) -> tuple[KeySet, object]:
    report = check_pcap(pcap or capture.pcap, KeySet.from_charon_log(capture.log))
    assert report.resolved_keys is not None
    return report.resolved_keys, report


def test_tshark_agrees_with_the_oracle(capture: Capture) -> None:
    keys, report = _resolved(capture)
    table = wireshark_table(keys)
    frames = tshark.run(capture.pcap, table)
    esp = [f for f in frames if f.esp_spi is not None]
    assert len(esp) == 4 and all(f.icv_good for f in esp)
    # tshark decrypted the tunnel: the inner source is inside TSi / TSr
    assert {f.ip_src[1] for f in esp} == {"10.1.0.1", "10.2.0.1"}
    assert sorted((f.esp_spi, f.esp_seq) for f in esp) == sorted(
        (int(s.spi, 16), n)
        for s in report.ipsec_sas
        for n in (1, 2)  # type: ignore[attr-defined]
    )
    if capture.version == 2:
        assert [f.ike_decrypted for f in frames[:4]] == [False, False, True, True]
        assert not any(f.ike_integrity_bad for f in frames)
    else:
        assert [bool(f.ike_hash) for f in frames[:9]] == [False] * 4 + [True] * 5
    assert tshark.cross_check(capture.pcap, report, table) == []  # type: ignore[arg-type]


def test_tshark_and_oracle_agree_on_a_corrupted_key(capture: Capture) -> None:
    keys, _ = _resolved(capture)
    i = next(n for n, e in enumerate(keys.ipsec) if e.src == INITIATOR)
    sa = keys.ipsec[i]
    if sa.integ_key:
        keys.ipsec[i] = replace(sa, integ_key=bytes([sa.integ_key[0] ^ 0x10]) + sa.integ_key[1:])
    else:  # AES-GCM: the key (with its salt) is the ICV key
        keys.ipsec[i] = replace(sa, encr_key=bytes([sa.encr_key[0] ^ 0x10]) + sa.encr_key[1:])
    report = check_pcap(capture.pcap, keys, derive_child_keys=False)
    assert report.sa(sa.spi).icv_bad == 2
    table = wireshark_table(keys)
    frames = tshark.run(capture.pcap, table)
    bad = [f.frame for f in frames if f.esp_spi == sa.spi and f.icv_good is False]
    assert bad == [p.frame for p in report.sa(sa.spi).problems]
    assert tshark.cross_check(capture.pcap, report, table) == []


def test_crafted_packets_checked_alike(tmp_path: Path) -> None:
    """Packets our crafter builds (good, forged ICV, odd padding) get the same verdicts from
    tshark and from the oracle."""
    capture = Capture("ikev2-aescbc-modp2048")
    keys, _ = _resolved(capture)
    sa = next(e for e in keys.ipsec if e.src == INITIATOR)
    esp = EspCrafter(sa, encap=(4500, 4500))
    inner = icmp_echo("10.1.0.1", "10.2.0.1", seq=9)
    crafted = [
        esp.packet(inner, 3),
        esp.corrupt(esp.packet(inner, 4), "icv"),
        esp.bad_padding(inner, 5),
        esp.corrupt(esp.packet(inner, 6), "seq"),
    ]
    link, frames = frames_of(capture.pcap)
    eth = bytes(12) + b"\x08\x00"
    pcap = write_pcap(
        tmp_path / "c.pcap",
        [*frames, *((frames[-1][0] + i + 1, eth + d) for i, d in enumerate(crafted))],
        linktype=link,
    )
    report = check_pcap(pcap, keys)
    r = report.sa(sa.spi)
    assert (r.icv_good, r.icv_bad, r.padding_other) == (4, 2, 1)
    assert tshark.cross_check(pcap, report, wireshark_table(keys)) == []


def test_profile_directory_opens_the_capture_decrypted(tmp_path: Path, capture: Capture) -> None:
    keys, _ = _resolved(capture)
    profile = wireshark_table(keys).write_profile(tmp_path / "wireshark")
    program = tshark.available()
    assert program is not None
    result = system.run(
        [program, "-n", "-r", str(capture.pcap), "-T", "fields", "-e", "esp.icv_good"],
        env={"WIRESHARK_CONFIG_DIR": str(profile)},
        check=True,
    )
    assert [line for line in result.stdout.split() if line] == ["1"] * 4


def test_ikev1_retransmission_left_out_of_the_comparison(tmp_path: Path) -> None:
    """Wireshark 4.0 garbles a retransmitted IKEv1 message (its IV chain moved on); the
    oracle decrypts it with the first copy's IV, and the cross-check leaves it out."""
    capture = Capture("ikev1-main-quick")
    link, frames = frames_of(capture.pcap)
    frames.insert(7, (frames[6][0] + 0.5, frames[6][1]))  # Quick Mode 1 again
    pcap = write_pcap(tmp_path / "rt.pcap", frames, linktype=link)
    keys, report = _resolved(capture, pcap)
    assert report.ok  # type: ignore[attr-defined]
    table = wireshark_table(keys)
    assert not tshark.run(pcap, table)[7].ike_hash  # tshark could not decrypt the copy
    assert tshark.cross_check(pcap, report, table) == []  # type: ignore[arg-type]
