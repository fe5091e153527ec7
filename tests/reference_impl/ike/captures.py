"""The real strongSwan 5.9.8 captures of ../shared/data/strongswan-5.9.8 (a tiny pcap reader).

Each capture is two charon daemons, 10.99.0.1 (initiator) and 10.99.0.2, PSK, with the
initiator's log at the level that prints every secret. Only tests use this module.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

DATA = Path("/work/shared/data/strongswan-5.9.8")
PSK = b"rx-test-psk-0123456789"
INITIATOR = "10.99.0.1"
RESPONDER = "10.99.0.2"


@dataclass(frozen=True)
class UdpDatagram:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    ip: bytes = b""
    """The whole IPv4 packet (for the driver's unprotect)."""

    @property
    def is_ike(self) -> bool:
        """IKE on 500, or IKE behind the non-ESP marker on 4500 (RFC 3948 §2.2)."""
        return self.dst[1] == 500 or self.payload[:4] == b"\0\0\0\0"

    @property
    def ike(self) -> bytes:
        return self.payload[4:] if self.dst[1] == 4500 else self.payload


def read_pcap(path: Path) -> list[UdpDatagram]:
    """IPv4/UDP datagrams of a classic little-endian Ethernet pcap."""
    raw = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", raw)
    assert magic == 0xA1B2C3D4 and linktype == 1, "classic pcap, Ethernet"
    off = 24
    out: list[UdpDatagram] = []
    while off < len(raw):
        _, _, incl, _ = struct.unpack_from("<IIII", raw, off)
        frame = raw[off + 16 : off + 16 + incl]
        off += 16 + incl
        if frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        sport, dport, ulen = struct.unpack_from("!HHH", ip, ihl)
        payload = ip[ihl + 8 : ihl + ulen]
        assert ihl + ulen == total
        out.append(UdpDatagram((src, sport), (dst, dport), bytes(payload), bytes(ip[:total])))
    return out


_LINE = re.compile(r"^\S+ \d+\[\w+\] <[^>]*> (.*)$")
_HEX = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} ?)+)")


def log_dumps(path: Path) -> list[tuple[str, bytes]]:
    """Every ``name => N bytes @ addr`` hex dump of a charon log, in order."""
    dumps: list[tuple[str, bytes]] = []
    name: str | None = None
    buf = bytearray()
    want = 0
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        text = m.group(1)
        if name is not None:
            h = _HEX.match(text)
            if h:
                buf += bytes.fromhex(h.group(1).replace(" ", ""))
                if len(buf) >= want:
                    dumps.append((name, bytes(buf[:want])))
                    name = None
                continue
        d = re.match(r"^(.*) => (\d+) bytes @ 0x[0-9a-f]+$", text)
        if d:
            name, want, buf = d.group(1).strip(), int(d.group(2)), bytearray()
            if want == 0:
                dumps.append((name, b""))
                name = None
    return dumps


@dataclass(frozen=True)
class Capture:
    name: str
    datagrams: list[UdpDatagram]
    dumps: list[tuple[str, bytes]]
    log: str

    def dump(self, name: str, index: int = 0) -> bytes:
        return [v for k, v in self.dumps if k == name][index]

    @property
    def ike(self) -> list[UdpDatagram]:
        return [d for d in self.datagrams if d.is_ike]

    @property
    def esp(self) -> list[UdpDatagram]:
        return [d for d in self.datagrams if not d.is_ike]


def load(name: str) -> Capture:
    return Capture(
        name,
        read_pcap(DATA / f"{name}.pcap"),
        log_dumps(DATA / f"{name}.initiator.log"),
        (DATA / f"{name}.initiator.log").read_text(),
    )


IKEV2_CAPTURES = ["ikev2-aescbc-modp2048", "ikev2-aesgcm-x25519"]
