"""tshark as an independent oracle for ours (../shared/design/peers.md §5).

Wireshark 4.0 decrypts IKEv2, IKEv1 and ESP (AES-CBC/CTR/GCM, 3DES, NULL) with the key table
of :func:`harness.probes.keys.wireshark_table` and checks ESP ICVs (``esp.icv_good`` /
``esp.icv_bad``) and IKEv2 integrity (the ``isakmp.ikev2.integrity_checksum`` expert item when
it is wrong). :func:`cross_check` runs it on a capture and lists every point where it and
:class:`~harness.probes.oracle.OracleReport` disagree; SAs the table cannot express
(ChaCha20-Poly1305, CCM, GMAC, ESN, AH) are left out, as the table's ``skipped`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import system
from harness.probes.keys import WiresharkTable
from harness.probes.oracle import ICV_BAD, ICV_GOOD, MALFORMED, OracleReport

_FIELDS = (
    "frame.number",
    "esp.spi",
    "esp.sequence",
    "esp.icv_good",
    "esp.icv_bad",
    "ip.src",
    "isakmp.enc.decrypted",
    "isakmp.ikev2.integrity_checksum",
    "isakmp.hash",
    "isakmp.ispi",
)


@dataclass(frozen=True)
class TsharkFrame:
    """What tshark said about one frame (``None``: not that kind of packet)."""

    frame: int
    esp_spi: int | None
    esp_seq: int | None
    icv_good: bool | None
    ip_src: tuple[str, ...]
    """Outer source, then the inner one when tshark decrypted a tunnel-mode packet."""
    ike_decrypted: bool
    ike_integrity_bad: bool
    ike_hash: str
    ike_spi: str


def available() -> str | None:
    """The tshark program, or None."""
    return system.which("tshark")


def run(pcap: str | Path, table: WiresharkTable, *, timeout: float = 120.0) -> list[TsharkFrame]:
    """tshark's per-frame view of ``pcap`` decrypted with ``table``."""
    program = available()
    if program is None:
        raise FileNotFoundError("tshark is not installed (scripts/install-system-deps)")
    argv = [program, "-n", "-r", str(pcap), *table.tshark_args(), "-T", "fields"]
    for f in _FIELDS:
        argv += ["-e", f]
    result = system.run(argv, timeout=timeout, check=True)
    frames = []
    for line in result.stdout.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(_FIELDS) - len(cols))
        number, spi, seq, good, bad, src, dec, integ, hsh, ispi = cols[: len(_FIELDS)]
        frames.append(
            TsharkFrame(
                frame=int(number),
                esp_spi=int(spi.split(",")[0], 16) if spi else None,
                esp_seq=int(seq.split(",")[0]) if seq else None,
                icv_good=None if not (good or bad) else good.split(",")[0] == "1",
                ip_src=tuple(s for s in src.split(",") if s),
                ike_decrypted=bool(dec),
                ike_integrity_bad=bool(integ),
                ike_hash=hsh,
                ike_spi=ispi.split(",")[0].removeprefix("0x") if ispi else "",
            )
        )
    return frames


def cross_check(pcap: str | Path, report: OracleReport, table: WiresharkTable) -> list[str]:
    """Where tshark and our oracle disagree on ``pcap`` (empty: they agree).

    Compared: for every ESP SA in the table, the count of good and bad ICVs; for every
    IKEv2 SA in the table, which encrypted messages verified; for IKEv1, that both decrypted
    the same messages (Wireshark 4.0 shows their HASH payloads, it does not check them, and
    it garbles retransmitted ones, which are left out).
    """
    frames = run(pcap, table)
    disagreements: list[str] = []
    in_table = {
        line.split('"0x', 1)[1][:8] for line in table.lines if line.startswith("uat:esp_sa:")
    }
    for sa in report.ipsec_sas:
        if sa.protocol != "esp" or sa.spi[2:] not in in_table:
            continue
        spi = int(sa.spi, 16)
        mine = [f for f in frames if f.esp_spi == spi and f.icv_good is not None]
        good = sum(1 for f in mine if f.icv_good)
        bad = len(mine) - good
        if (good, bad) != (sa.icv_good, sa.icv_bad):
            disagreements.append(
                f"ESP {sa.spi}: tshark {good} good {bad} bad, oracle {sa.icv_good} good "
                f"{sa.icv_bad} bad"
            )
    ike_keys = {
        line.split(":", 2)[2].split(",", 1)[0]
        for line in table.lines
        if line.startswith(("uat:ikev2_decryption_table:", "uat:ikev1_decryption_table:"))
    }
    by_frame = {f.frame: f for f in frames}
    for m in report.ike_messages:
        if not m.encrypted or m.spi_i not in ike_keys:
            continue
        f = by_frame.get(m.frame)
        if f is None:
            disagreements.append(f"IKE frame {m.frame}: tshark did not see it")
            continue
        if m.version == 2:
            theirs = ICV_BAD if f.ike_integrity_bad else (ICV_GOOD if f.ike_decrypted else "?")
            ours = m.integrity
            if ours == MALFORMED and theirs == ICV_GOOD:
                theirs = MALFORMED if not f.ike_decrypted else theirs
            if theirs != ours:
                disagreements.append(f"IKEv2 frame {m.frame}: tshark {theirs}, oracle {ours}")
        elif not m.retransmission:  # Wireshark 4.0 decrypts an IKEv1 retransmission with
            # the IV chain already moved on (it does not recognise it): nothing to compare
            ours_hash = any(p == "HASH" for p in m.payloads)
            if ours_hash != bool(f.ike_hash) and m.integrity != MALFORMED:
                theirs = "decrypted" if f.ike_hash else "did not decrypt"
                disagreements.append(
                    f"IKEv1 frame {m.frame}: tshark {theirs}, oracle {m.integrity} "
                    f"{' '.join(m.payloads)}"
                )
    return disagreements
