"""Readers for the strongSwan 5.9.8 IKEv1 capture and log in ../shared/data (README there).

A minimal pcap reader (Ethernet/IPv4/UDP only, which is what the capture holds) and a reader
of charon's ``name => N bytes`` hex dumps, so tests need neither scapy nor tshark.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "strongswan-5.9.8"
if not DATA.exists():  # CI clones main beside a copy of shared/
    DATA = Path("/work/shared/data/strongswan-5.9.8")
PCAP = DATA / "ikev1-main-quick.pcap"
LOG = DATA / "ikev1-main-quick.initiator.log"
KEYS = DATA / "ikev1-main-quick.wireshark-keys.txt"
PSK = b"rx-test-psk-0123456789"
"""The PSK of the capture (../shared/design/peers.md §0, the connection it was made with)."""


@dataclass(frozen=True)
class Datagram:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    ip: bytes
    """The whole IPv4 datagram (what a raw socket delivers)."""


def read_pcap(path: Path = PCAP) -> list[Datagram]:
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    assert magic == 0xA1B2C3D4, "little-endian microsecond pcap expected"
    out = []
    off = 24
    while off < len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, off)
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        assert ip[9] == 17
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        udp = ip[ihl:]
        sport, dport, ulen = struct.unpack_from("!HHH", udp, 0)
        total = struct.unpack_from("!H", ip, 2)[0]
        out.append(
            Datagram(
                sec + usec / 1e6, src, sport, dst, dport, bytes(udp[8:ulen]), bytes(ip[:total])
            )
        )
    return out


_DUMP = re.compile(r"\] <t\|1> (.+?) => (\d+) bytes @")
_LINE = re.compile(r"\] <t\|1> +\d+: ((?:[0-9A-F]{2} ){0,16})")


def read_log_dumps(path: Path = LOG) -> list[tuple[str, bytes]]:
    """Every ``label => N bytes`` dump in order, as (label, value)."""
    dumps: list[tuple[str, bytes]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _DUMP.search(lines[i])
        i += 1
        if not m:
            continue
        label, n = m.group(1), int(m.group(2))
        buf = bytearray()
        while len(buf) < n and i < len(lines):
            lm = _LINE.search(lines[i])
            if not lm:
                break
            buf += bytes.fromhex(lm.group(1).replace(" ", ""))
            i += 1
        assert len(buf) == n, label
        dumps.append((label, bytes(buf)))
    return dumps


def log_value(label: str, index: int = 0) -> bytes:
    return [v for k, v in read_log_dumps() if k == label][index]
