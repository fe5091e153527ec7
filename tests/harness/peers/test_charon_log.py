"""Keys read from charon logs at ike=4/chd=4 equal the keys Wireshark decrypts with.

Known answers: the real strongSwan 5.9.8 exchanges of ../shared/data/strongswan-5.9.8 (their
README): each ``NAME.initiator.log`` and the ``NAME.wireshark-keys.txt`` made from it, which
tshark used to decrypt ``NAME.pcap`` with every ICV ``[correct]`` (peers.md §5).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from harness.peers.charon_log import parse_keys

_ROOT = Path(__file__).resolve().parents[3]
_DATA = next(
    (
        p / "data" / "strongswan-5.9.8"
        for p in (_ROOT.parent / "shared", Path("/work/shared"))
        if (p / "data" / "strongswan-5.9.8").is_dir()
    ),
    None,
)
needs_data = pytest.mark.skipif(_DATA is None, reason="../shared/data/strongswan-5.9.8 missing")


def _wireshark(name: str) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    assert _DATA is not None
    ike2, ike1, esp = [], [], []
    for line in (_DATA / f"{name}.wireshark-keys.txt").read_text().splitlines():
        table, _, rest = line.removeprefix("uat:").partition(":")
        fields = next(csv.reader([rest]))
        {"ikev2_decryption_table": ike2, "ikev1_decryption_table": ike1, "esp_sa": esp}[
            table
        ].append(fields)
    return ike2, ike1, esp


@needs_data
@pytest.mark.parametrize("name", ["ikev2-aescbc-modp2048", "ikev2-aesgcm-x25519"])
def test_ikev2_keys_match_the_wireshark_table(name: str) -> None:
    assert _DATA is not None
    keys = parse_keys((_DATA / f"{name}.initiator.log").read_text())
    ike2, _, esp = _wireshark(name)
    assert len(keys.ike) == 1 and keys.ike[0].version == 2
    secrets = keys.ike[0].secrets
    _spi_i, _spi_r, sk_ei, sk_er, _enc, sk_ai, sk_ar, _integ = ike2[0]
    assert secrets["SK_ei"].hex() == sk_ei and secrets["SK_er"].hex() == sk_er
    assert secrets.get("SK_ai", b"").hex() == sk_ai and secrets.get("SK_ar", b"").hex() == sk_ar
    assert set(secrets) >= {"SK_d", "SK_ei", "SK_er", "SK_pi", "SK_pr"}
    (child,) = keys.child
    assert child.initiator and child.name == "c"
    by_spi = {int(f[3], 16): f for f in esp}
    for spi, encr, integ in (child.outbound(), child.inbound()):
        _fam, _src, _dst, _spi, _e, enc_key, _a, auth_key = by_spi[spi]
        assert "0x" + encr.hex() == enc_key
        assert ("0x" + integ.hex() if integ else "") == auth_key
    # the initiator sends on its _o SPI with the "initiator" keys (peers.md §5)
    assert child.outbound() == (child.spi_out, child.encr_i, child.integ_i)


@needs_data
def test_ikev1_keys_match_the_wireshark_table() -> None:
    assert _DATA is not None
    keys = parse_keys((_DATA / "ikev1-main-quick.initiator.log").read_text())
    _, ike1, esp = _wireshark("ikev1-main-quick")
    (ike,) = keys.ike
    assert ike.version == 1
    assert ike.secrets["Ka"].hex() == ike1[0][1]
    assert set(ike.secrets) == {"SKEYID", "SKEYID_d", "SKEYID_a", "SKEYID_e", "Ka"}
    (child,) = keys.child
    assert child.initiator  # keys computed after "parsed QUICK_MODE response"
    by_spi = {int(f[3], 16): f for f in esp}
    for spi, encr, integ in (child.outbound(), child.inbound()):
        assert "0x" + encr.hex() == by_spi[spi][5]
        assert "0x" + integ.hex() == by_spi[spi][7]


def _dump(thread: str, ctx: str, label: str, data: bytes) -> list[str]:
    lines = [f"10:00:00 {thread}[IKE] {ctx} {label} => {len(data)} bytes @ 0x7f00"]
    for off in range(0, len(data), 16):
        chunk = " ".join(f"{b:02X}" for b in data[off : off + 16])
        lines.append(f"10:00:00 {thread}[IKE] {ctx}   {off:>3}: {chunk}  ................")
    return lines


def test_interleaved_threads_and_a_responder_without_a_config_yet() -> None:
    names = ["Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr"]
    a = [_dump("11", "<1>", f"{n} secret", bytes([i]) * 20) for i, n in enumerate(names)]
    b = [_dump("12", "<t|2>", f"{n} secret", bytes([0x80 + i]) * 20) for i, n in enumerate(names)]
    lines: list[str] = []
    for da, db in zip(a, b, strict=True):
        for la, lb in zip(da, db, strict=True):  # line by line, alternating threads
            lines += [la, lb]
    lines.append("10:00:00 11[ENC] <t|1> parsed IKE_AUTH request 1 [ IDi AUTH SA TSi TSr ]")
    for label, byte in (("encryption initiator key", 1), ("encryption responder key", 2)):
        lines += [
            x.replace("[IKE]", "[CHD]") for x in _dump("11", "<t|1>", label, bytes([byte]) * 20)
        ]
    lines.append(
        "10:00:00 11[IKE] <t|1> CHILD_SA c{7} established with SPIs c1c1c1c1_i 0d0d0d0d_o and TS x"
    )
    keys = parse_keys("\n".join(lines))
    assert [k.unique_id for k in keys.ike] == ["1", "2"]
    assert keys.ike[0].secrets["SK_pr"] == bytes([6]) * 20
    assert keys.ike[1].secrets["SK_d"] == bytes([0x80]) * 20
    (child,) = keys.child
    assert not child.initiator  # keys derived after parsing a request: the responder
    assert child.inbound() == (0xC1C1C1C1, bytes([1]) * 20, b"")
    assert child.outbound() == (0x0D0D0D0D, bytes([2]) * 20, b"")
    assert (child.unique_id, child.ike_unique_id) == ("7", "1")


def test_a_cut_dump_is_ignored() -> None:
    text = "\n".join(
        [
            "10:00:00 11[IKE] <t|1> Sk_d secret => 32 bytes @ 0x1",
            "10:00:00 11[IKE] <t|1>    0: 00 11 22 33 44 55 66 77 88 99 AA BB CC DD EE FF  x",
            "10:00:00 11[IKE] <t|1> something else",
        ]
    )
    assert parse_keys(text).ike == ()
