"""Reads the secrets out of the strongSwan 5.9.8 debug logs in ``shared/data/strongswan-5.9.8``.

charon at log level 4 prints each secret as ``<label> => N bytes @ 0x...`` followed by hex-dump
lines (``   0: 7A 3D ...``). ``read_log`` returns those, in order, as ``(label, bytes)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

_HEAD = re.compile(r"\] <[^>]*> (?P<label>.+?) => (?P<n>\d+) bytes @ 0x[0-9a-f]+$")
_DUMP = re.compile(r"\] <[^>]*>\s+\d+: (?P<hex>(?:[0-9A-F]{2} ?)+)")


def data_dir() -> Path:
    """``shared/data/strongswan-5.9.8`` next to the repository (CI lays ``shared/`` beside the
    clone), else the workplace copy; skips the test when neither exists."""
    repo = Path(__file__).resolve().parents[3]
    for base in (repo.parent / "shared", Path("/work/shared")):
        d = base / "data" / "strongswan-5.9.8"
        if d.is_dir():
            return d
    pytest.skip("shared/data/strongswan-5.9.8 is not available")


def read_log(name: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    want = 0
    buf = bytearray()
    label = ""
    for line in (data_dir() / name).read_text().splitlines():
        if want:
            m = _DUMP.search(line)
            assert m, f"truncated hex dump for {label!r}: {line!r}"
            buf += bytes.fromhex(m.group("hex")[:48].replace(" ", ""))
            if len(buf) >= want:
                out.append((label, bytes(buf[:want])))
                want = 0
            continue
        m = _HEAD.search(line)
        if m:
            label, want, buf = m.group("label"), int(m.group("n")), bytearray()
    return out


def first(entries: list[tuple[str, bytes]], label: str, nth: int = 0) -> bytes:
    hits = [v for k, v in entries if k == label]
    assert len(hits) > nth, f"{label!r} not logged {nth + 1} times"
    return hits[nth]


def wireshark_keys(name: str) -> list[list[str]]:
    """The comma-separated fields of each ``uat:`` line of ``NAME.wireshark-keys.txt``."""
    rows = []
    for line in (data_dir() / name).read_text().splitlines():
        if line.startswith("uat:"):
            rows.append([f.strip('"') for f in line.split(":", 2)[2].split(",")])
    return rows
