"""The neutral key set: strongSwan's log, a node's SA dump, JSON, and the Wireshark table."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.probes.keys import (
    IkeSaEntry,
    IpsecSaEntry,
    KeySet,
    parse_selector,
    parse_suite,
    parse_wireshark,
    wireshark_table,
)
from reference_impl.crypto.ids import EncrId, IntegId, PrfId
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector

from .conftest import INITIATOR, RESPONDER, Capture

TS_I = TrafficSelector.from_network("10.1.0.1/32")
TS_R = TrafficSelector.from_network("10.2.0.1/32")


def test_charon_log_gives_every_key_algorithm_address_and_selector(capture: Capture) -> None:
    keys = KeySet.from_charon_log(capture.log)
    table = parse_wireshark(capture.wireshark)  # the shared capture's own key table
    (ike,) = keys.ike
    (want_ike,) = table.ike
    assert ike.version == capture.version and ike.source == "strongswan"
    assert ike.spi_i is None  # the log has no IKE SPIs: the oracle binds them on the wire
    if capture.version == 2:
        assert (ike.sk_ei, ike.sk_er, ike.sk_ai, ike.sk_ar) == (
            want_ike.sk_ei,
            want_ike.sk_er,
            want_ike.sk_ai,
            want_ike.sk_ar,
        )
        assert len(ike.sk_d) == len(ike.sk_pi) == len(ike.sk_pr) == 32
    else:
        assert ike.enc_key == want_ike.enc_key and len(ike.skeyid_a) == 32
    assert ike.prf_id == PrfId.PRF_HMAC_SHA2_256  # "selected proposal: IKE:..."
    assert (
        ike.encr_id
        == {
            "ikev2-aescbc-modp2048": EncrId.ENCR_AES_CBC,
            "ikev2-aesgcm-x25519": EncrId.ENCR_AES_GCM_16,
            "ikev1-main-quick": EncrId.ENCR_AES_CBC,
        }[capture.name]
    )
    assert len(keys.ipsec) == 2
    for want in table.ipsec:
        got = keys.find_ipsec(IpsecProtocol.ESP, want.spi)
        assert got is not None
        assert (got.src, got.dst) == (want.src, want.dst)
        assert (got.encr_id, got.encr_key_bits, got.encr_key) == (
            want.encr_id,
            want.encr_key_bits,
            want.encr_key,
        )
        assert (got.integ_id, got.integ_key) == (want.integ_id, want.integ_key)
        assert got.esn is False and got.name == "c"
        if got.src == INITIATOR:
            assert (got.ts_src, got.ts_dst) == ((TS_I,), (TS_R,))
        else:
            assert got.src == RESPONDER and (got.ts_src, got.ts_dst) == ((TS_R,), (TS_I,))


def test_our_table_is_the_shared_table_byte_for_byte(capture: Capture) -> None:
    keys = KeySet.from_charon_log(capture.log)
    ws = parse_wireshark(capture.wireshark)
    keys.ike[0] = replace(keys.ike[0], spi_i=ws.ike[0].spi_i, spi_r=ws.ike[0].spi_r)
    table = wireshark_table(keys)
    assert table.skipped == []
    assert sorted(table.lines) == sorted(capture.wireshark.splitlines())


def test_table_parsed_back(capture: Capture) -> None:
    ws = parse_wireshark(capture.wireshark)
    again = parse_wireshark(wireshark_table(ws).text())
    assert again.to_json() == ws.to_json()


def test_json_round_trip(tmp_path: Path, capture: Capture) -> None:
    keys = KeySet.from_charon_log(capture.log)
    text = json.dumps(keys.to_json())
    assert KeySet.from_json(json.loads(text)) == keys
    assert KeySet.load(keys.save(tmp_path / "k.json")) == keys
    sa = keys.ipsec[0]
    assert sa.to_json()["spi"] == f"0x{sa.spi:08x}"
    assert sa.to_json()["ts_src"][0]["start"] in ("10.1.0.1", "10.2.0.1")


def _node_dump() -> list[dict[str, object]]:
    """A hand-written dump: the nested list form, JSON selectors, names and bare ids."""
    return [
        {
            "name": "t",
            "version": 2,
            "initiator": True,
            "spi_i": "0102030405060708",
            "spi_r": "1112131415161718",
            "local": "198.18.0.1:4500",
            "remote": "198.18.0.2:4500",
            "encr": {"id": 20, "key_bits": 128},
            "integ": None,
            "prf": 5,
            "dh": 31,
            "keys": {
                "sk_d": "aa" * 32,
                "sk_ai": "",
                "sk_ar": "",
                "sk_ei": "bb" * 20,
                "sk_er": "cc" * 20,
                "sk_pi": "dd" * 32,
                "sk_pr": "ee" * 32,
            },
            "child_sas": [
                {
                    "name": "c",
                    "protocol": "esp",
                    "mode": "tunnel",
                    "esn": False,
                    "encap": True,
                    "encr": {"id": 12, "key_bits": 256},
                    "integ": 12,
                    "inbound": {
                        "spi": "0xc0000001",
                        "src": "198.18.0.2",
                        "dst": "198.18.0.1",
                        "encr_key": "01" * 32,
                        "integ_key": "02" * 32,
                        "ts_src": ["198.19.2.1/32"],
                        "ts_dst": [{"start": "198.19.1.1", "end": "198.19.1.1"}],
                    },
                    "outbound": {
                        "spi": 3221225474,
                        "src": "198.18.0.1",
                        "dst": "198.18.0.2",
                        "encr_key": "03" * 32,
                        "integ_key": "04" * 32,
                        "ts_src": ["198.19.1.1"],
                        "ts_dst": ["198.19.2.0-198.19.2.255[17/53]"],
                    },
                }
            ],
        },
        {
            "version": 1,
            "spi_i": "a1" * 8,
            "spi_r": "b2" * 8,
            "encr": "AES_CBC_256",
            "prf": "PRF_HMAC_SHA2_256",
            "dh": "MODP_2048",
            "keys": {"skeyid_a": "05" * 32, "skeyid_d": "06" * 32, "enc_key": "07" * 32},
        },
    ]


def test_node_dump() -> None:
    keys = KeySet.from_node_sas(_node_dump(), source="reference:a")
    v2, v1 = keys.ike
    assert v2.spi_i == bytes(range(1, 9)) and v2.spi_r == bytes(range(0x11, 0x19))
    assert (v2.encr_id, v2.encr_key_bits, v2.integ_id, v2.prf_id, v2.dh_id) == (
        20,
        128,
        None,
        5,
        31,
    )
    assert v2.sk_ei == b"\xbb" * 20 and v2.sk_ai == b"" and v2.has_keys and v2.algorithms_known
    assert v2.algorithms() == "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"
    assert (v1.version, v1.encr_id, v1.encr_key_bits, v1.prf_id, v1.dh_id) == (1, 12, 256, 5, 14)
    assert v1.enc_key == b"\x07" * 32 and v1.skeyid == b""
    inbound = keys.find_ipsec(IpsecProtocol.ESP, 0xC0000001)
    outbound = keys.find_ipsec(IpsecProtocol.ESP, 0xC0000002)
    assert inbound is not None and outbound is not None
    assert inbound.source == "reference:a" and inbound.ike_spi_i == v2.spi_i
    assert (inbound.src, inbound.dst, inbound.mode, inbound.encap) == (
        "198.18.0.2",
        "198.18.0.1",
        Mode.TUNNEL,
        True,
    )
    assert inbound.ts_src == (TrafficSelector.from_network("198.19.2.1/32"),)
    assert inbound.ts_dst == outbound.ts_src == (TrafficSelector.from_network("198.19.1.1/32"),)
    assert outbound.ts_dst == (
        TrafficSelector.from_network("198.19.2.0/24", ip_protocol=17, start_port=53, end_port=53),
    )
    params = outbound.to_params()
    assert (params.spi, params.encr_id, params.encr_key_bits, params.integ_id) == (
        0xC0000002,
        12,
        256,
        12,
    )
    assert params.encr_key == b"\x03" * 32 and params.replay_window == 0
    assert IpsecSaEntry.from_params(params).to_params() == params
    assert KeySet.from_json(keys.to_json()) == keys


def test_merge_fills_unknown_fields_and_keeps_one_entry_per_sa() -> None:
    a = KeySet(ipsec=[IpsecSaEntry(IpsecProtocol.ESP, 0x1000, encr_key=b"k" * 36, source="log")])
    b = KeySet(
        ipsec=[
            IpsecSaEntry(
                IpsecProtocol.ESP,
                0x1000,
                src="198.18.0.1",
                dst="198.18.0.2",
                encr_id=EncrId.ENCR_AES_GCM_16,
                encr_key_bits=256,
                source="exchange",
            )
        ]
    )
    (merged,) = a.merge(b).ipsec
    assert merged.encr_key == b"k" * 36 and merged.source == "log"
    assert merged.dst == "198.18.0.2" and merged.algorithms() == "AES_GCM_16_256"
    ike1 = IkeSaEntry(2, sk_ei=b"1" * 16, sk_er=b"2" * 16)
    ike2 = IkeSaEntry(2, spi_i=b"i" * 8, spi_r=b"r" * 8, sk_ei=b"1" * 16, sk_er=b"2" * 16)
    (both,) = KeySet([ike1]).merge(KeySet([ike2])).ike
    assert both.spi_i == b"i" * 8


def test_wireshark_skips_what_wireshark_40_cannot_take() -> None:
    keys = KeySet(
        [
            IkeSaEntry(
                2,
                b"i" * 8,
                b"r" * 8,
                EncrId.ENCR_CHACHA20_POLY1305,
                256,
                sk_ei=b"1" * 36,
                sk_er=b"2" * 36,
            ),
            IkeSaEntry(
                2, None, None, EncrId.ENCR_AES_CBC, 128, 12, sk_ei=b"1" * 16, sk_er=b"2" * 16
            ),
        ],
        [
            IpsecSaEntry(
                IpsecProtocol.ESP, 0x101, "a", "b", EncrId.ENCR_CHACHA20_POLY1305, 256, b"k" * 36
            ),
            IpsecSaEntry(IpsecProtocol.AH, 0x102, "a", "b", integ_id=12, integ_key=b"k" * 32),
            IpsecSaEntry(
                IpsecProtocol.ESP, 0x103, "a", "b", 12, 128, b"k" * 16, 12, b"i" * 32, esn=True
            ),
            IpsecSaEntry(
                IpsecProtocol.ESP,
                0x104,
                "2001:db8::1",
                None,
                12,
                128,
                b"k" * 16,
                IntegId.AUTH_AES_XCBC_96,
                b"x" * 16,
            ),
            IpsecSaEntry(
                IpsecProtocol.ESP, 0x105, "a", "b", EncrId.ENCR_NULL, None, b"", 2, b"s" * 20
            ),
        ],
    )
    t = wireshark_table(keys)
    assert len(t.skipped) == 5
    assert any("ChaCha" in s or "CHACHA20" in s for s in t.skipped)
    assert any("AH" in s for s in t.skipped) and any("ESN" in s for s in t.skipped)
    assert any("SPIs unknown" in s for s in t.skipped)
    assert t.lines == [
        'uat:esp_sa:"IPv6","2001:db8::1","*","0x00000104","AES-CBC [RFC3602]","0x'
        + "6b" * 16
        + '","ANY 96 bit authentication [no checking]","0x'
        + "78" * 16
        + '"',
        'uat:esp_sa:"IPv4","a","b","0x00000105","NULL","0x","HMAC-SHA-1-96 [RFC2404]","0x'
        + "73" * 20
        + '"',
    ]
    args = t.tshark_args()
    assert args[:2] == ["-o", t.lines[0]] and "esp.enable_authentication_check:TRUE" in args


def test_write_profile(tmp_path: Path, capture: Capture) -> None:
    d = wireshark_table(parse_wireshark(capture.wireshark)).write_profile(tmp_path / "ws")
    esp = (d / "esp_sa").read_text().splitlines()
    assert esp[0].startswith("#") and len(esp) == 3 and esp[1].startswith('"IPv4","10.99.0.')
    table = "ikev1_decryption_table" if capture.version == 1 else "ikev2_decryption_table"
    assert len((d / table).read_text().splitlines()) == 2
    assert "esp.enable_encryption_decode: TRUE" in (d / "preferences").read_text()


@pytest.mark.parametrize(
    ("text", "start", "end", "proto", "ports"),
    [
        ("10.1.0.0/24", "10.1.0.0", "10.1.0.255", 0, (0, 65535)),
        ("10.1.0.1", "10.1.0.1", "10.1.0.1", 0, (0, 65535)),
        ("10.1.0.1-10.1.0.9", "10.1.0.1", "10.1.0.9", 0, (0, 65535)),
        ("10.1.0.1/32[tcp/80]", "10.1.0.1", "10.1.0.1", 6, (80, 80)),
        (
            "2001:db8::/64[17/1000-2000]",
            "2001:db8::",
            "2001:db8::ffff:ffff:ffff:ffff",
            17,
            (1000, 2000),
        ),
        ("10.0.0.0/8[icmp]", "10.0.0.0", "10.255.255.255", 1, (0, 65535)),
    ],
)
def test_selector_notation(
    text: str, start: str, end: str, proto: int, ports: tuple[int, int]
) -> None:
    ts = parse_selector(text)
    assert (ts.start_addr, ts.end_addr) == (ipaddress.ip_address(start), ipaddress.ip_address(end))
    assert (ts.ip_protocol, ts.start_port, ts.end_port) == (proto, *ports)
    assert (
        parse_selector(
            json.loads(
                json.dumps(
                    {
                        "start": start,
                        "end": end,
                        "protocol": proto,
                        "start_port": ports[0],
                        "end_port": ports[1],
                    }
                )
            )
        )
        == ts
    )


def test_proposal_names() -> None:
    assert parse_suite("AES_GCM_16_256/NO_EXT_SEQ") == {
        "encr_id": EncrId.ENCR_AES_GCM_16,
        "encr_key_bits": 256,
        "esn": False,
    }
    assert parse_suite("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519/EXT_SEQ") == {
        "encr_id": 12,
        "encr_key_bits": 128,
        "integ_id": 12,
        "prf_id": 5,
        "dh_id": 31,
        "esn": True,
    }
    assert parse_suite("CHACHA20_POLY1305")["encr_id"] == 28
    assert parse_suite("NULL_AES_GMAC_128")["encr_id"] == EncrId.ENCR_NULL_AUTH_AES_GMAC
