"""The wire oracle: decrypt and verify every IKE and ESP/AH packet of a capture.

Given a capture and the keys of both ends (:class:`~harness.probes.keys.KeySet`), the oracle
replays the wire in order and reports:

* every IKE message (IKEv2 and IKEv1): exchange, message ID, direction, the payloads inside
  the encryption, and whether it verified: IKEv2 SK/SKF integrity (RFC 7296 §3.14, RFC 5282,
  RFC 7383), IKEv1 decryption with the CBC IV chain (RFC 2409 Appendix B) and the HASH
  payloads it can check (HASH_I/HASH_R §5, HASH(1)/(2)/(3) §5.5, Informational §5.7);
* per IKE SA: the algorithms, where its keys came from, counts;
* per IPsec SA (one direction): packets, ICV good/bad, decryption errors, sequence numbers
  (first, last, out of order, gaps, replays = duplicates, RFC 4303 §3.3.3/§3.4.3), padding
  (RFC 4303 §2.4 default 1, 2, 3, ... and minimal), Next Header values, dummy packets (59),
  inner addresses against the SA's traffic selectors (RFC 4301 §5.2);
* packets on unknown SPIs, cleartext packets inside some SA's selectors, NAT-keepalives.

What the key set lacks, the oracle learns from the IKE exchanges it decrypts: IKE SPIs and
algorithms (IKE_SA_INIT, IKEv1 phase-1 SA), Child SA SPIs, algorithms, outer addresses,
mode and selectors (IKE_AUTH/CREATE_CHILD_SA, Quick Mode), and, when SK_d / SKEYID_d is known
and the exchange had no PFS, the Child SA keys themselves (RFC 7296 §2.17, RFC 2409 §5.5),
which are compared with any logged keys. IKE key sets without SPIs (strongSwan's log) are
bound to IKE SAs on the wire by trial decryption.

ESP and AH packets go through the reference driver (``reference_impl.driver``: its inbound
SAs verify the ICV, decrypt and decapsulate; with the replay window off and padding checks
left to the oracle); IKE goes through the IKEv2 codec and SK protection and the ISAKMP codec.

Findings are dataclasses with ``to_json``; :meth:`OracleReport.summary` is one line, and
:func:`save_evidence` writes them with the resolved keys and the Wireshark key table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_ntop
from typing import Any

from harness.probes.keys import IkeSaEntry, IpsecSaEntry, KeySet, fill, wireshark_table
from harness.probes.pcap import CaptureStats, PacketKind, WirePacket, read_packets
from reference_impl.crypto import (
    BlockCipher,
    EncrAlgorithm,
    IkeKeys,
    IntegAlgorithm,
    PrfAlgorithm,
    encr,
    integ,
    prf,
)
from reference_impl.crypto import kdf_ikev1 as kdf1
from reference_impl.crypto.kdf import ikev2_child_keymat
from reference_impl.driver.ah import AhInbound
from reference_impl.driver.base import DriverContext, SaOptions
from reference_impl.driver.esp import EspInbound
from reference_impl.driver.packet import IPPROTO_AH, IPPROTO_ESP, IpInfo, MalformedPacket, parse_ip
from reference_impl.driver.verdict import Verdict
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.ike import enums as v2enums
from reference_impl.ike import messages as v2msg
from reference_impl.ike import payloads as v2p
from reference_impl.ike.protection import SkProtection
from reference_impl.isakmp import codec as v1
from reference_impl.isakmp import constants as v1c
from reference_impl.isakmp.identity import host_selector, selector_from_id
from reference_impl.isakmp.proposals import Phase1Transform, parse_phase2_transform
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector

MAX_PROBLEMS = 50
"""Problem packets kept per SA (the counts stay exact)."""
_SEQ_MEMORY = 1 << 16
"""Sequence numbers remembered behind the highest one for replay detection."""

ICV_GOOD = "good"
ICV_BAD = "bad"
NO_KEYS = "no_keys"
UNCHECKED = "unchecked"
MALFORMED = "malformed"


# --- findings -----------------------------------------------------------------------------------


@dataclass
class IkeMessageRecord:
    """One IKE datagram on the wire."""

    frame: int
    time: float
    src: str
    dst: str
    version: int
    exchange: str
    message_id: int
    spi_i: str
    spi_r: str
    initiator: bool
    """IKEv2: the I flag (sent by the original initiator). IKEv1: sent by the CKY-I owner
    as far as the oracle can tell (the first sender of the IKE SA)."""
    response: bool
    """IKEv2: the R flag. IKEv1: sent by the exchange's responder."""
    payloads: list[str] = field(default_factory=list)
    """Payload names in order; encrypted ones after ``SK{`` / ``E{`` up to ``}``."""
    encrypted: bool = False
    integrity: str = UNCHECKED
    """IKEv2: ``good``/``bad`` ICV; IKEv1: ``good``/``bad`` HASH, or ``unchecked``;
    ``no_keys``; ``malformed`` (did not decode or decrypt)."""
    retransmission: bool = False
    fragment: str = ""
    """``n/total`` for an IKEv2 SKF fragment."""
    error: str = ""

    def summary(self) -> str:
        kind = "response" if self.response else "request"
        extra = f" ({self.integrity})" if self.encrypted else ""
        rt = " retransmit" if self.retransmission else ""
        return (
            f"#{self.frame} {self.src} > {self.dst} {self.exchange} {kind} {self.message_id} "
            f"[ {' '.join(self.payloads)} ]{extra}{rt}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IkeSaReport:
    version: int
    spi_i: str
    spi_r: str
    algorithms: str = "?"
    keys: str = "missing"
    """``missing``, or the key source (``strongswan``, ``reference:<node>``, ``wireshark``)."""
    parent: str = ""
    """For an IKEv2 SA made by a rekey: the old SA's ``spi_i``."""
    messages: int = 0
    verified: int = 0
    failed: int = 0
    unchecked: int = 0
    deleted: bool = False

    @property
    def ok(self) -> bool:
        return self.failed == 0 and (self.keys != "missing" or self.messages == 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class PacketProblem:
    frame: int
    time: float
    kind: str
    """``icv``, ``decrypt``, ``malformed``, ``replay``, ``order``, ``padding``, ``selectors``,
    ``no_keys``, ``unknown_spi``, ``cleartext``, ``key_mismatch``."""
    detail: str = ""
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IpsecSaReport:
    """One direction of one IPsec SA as seen on the wire."""

    protocol: str
    spi: str
    src: str
    dst: str
    algorithms: str = "?"
    keys: str = "missing"
    mode: str = ""
    encapsulated: bool = False
    selectors: str = ""
    packets: int = 0
    first_frame: int = 0
    last_frame: int = 0
    icv_good: int = 0
    icv_bad: int = 0
    decrypt_errors: int = 0
    malformed: int = 0
    undecrypted: int = 0
    """Packets not checked for want of keys or algorithms."""
    seq_first: int | None = None
    """The first verified sequence number (1 on a new SA, RFC 4303 §3.3.3)."""
    seq_last: int | None = None
    seq_max: int = 0
    out_of_order: int = 0
    replays: int = 0
    gaps: int = 0
    missing: int = 0
    """Sequence numbers skipped between packets seen (lost, or never sent)."""
    padding_default: int = 0
    padding_other: int = 0
    """Padding octets other than 1, 2, 3, ... (RFC 4303 §2.4)."""
    padding_minimal: int = 0
    pad_lengths: dict[int, int] = field(default_factory=dict)
    next_headers: dict[int, int] = field(default_factory=dict)
    dummy: int = 0
    outside_selectors: int = 0
    inner_flows: dict[str, int] = field(default_factory=dict)
    """``"src > dst"`` of the inner packets (at most 32 distinct pairs)."""
    problems: list[PacketProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.icv_bad == 0
            and self.decrypt_errors == 0
            and self.malformed == 0
            and self.undecrypted == 0
            and self.replays == 0
            and self.out_of_order == 0
            and self.padding_other == 0
            and self.outside_selectors == 0
        )

    def note(self, problem: PacketProblem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def summary(self) -> str:
        return (
            f"{self.protocol} {self.spi} {self.src} > {self.dst} {self.algorithms}: "
            f"{self.packets} packets, ICV {self.icv_good} good {self.icv_bad} bad, "
            f"seq {self.seq_first}..{self.seq_last} ({self.replays} replays, "
            f"{self.out_of_order} out of order, {self.gaps} gaps), "
            f"{self.outside_selectors} outside selectors"
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [p.to_json() for p in self.problems]
        out["ok"] = self.ok
        return out


@dataclass
class OracleReport:
    capture: str = ""
    ike_messages: list[IkeMessageRecord] = field(default_factory=list)
    ike_sas: list[IkeSaReport] = field(default_factory=list)
    ipsec_sas: list[IpsecSaReport] = field(default_factory=list)
    unknown_spis: dict[str, int] = field(default_factory=dict)
    """``"esp 0x12345678 > 198.18.0.2"`` -> packets on an SPI no key set or exchange named."""
    cleartext: int = 0
    """Packets in clear whose addresses fall inside some SA's selectors (RFC 4301 §5.1)."""
    nat_keepalives: int = 0
    key_mismatches: list[str] = field(default_factory=list)
    """Child SA keys derived from the IKE exchange that differ from the keys given."""
    problems: list[PacketProblem] = field(default_factory=list)
    capture_stats: dict[str, Any] = field(default_factory=dict)
    resolved_keys: KeySet | None = field(default=None, repr=False, compare=False)
    """The key set with what the wire taught (not serialised: :func:`save_evidence`)."""

    @property
    def ike_ok(self) -> bool:
        return all(m.integrity not in (ICV_BAD, MALFORMED) for m in self.ike_messages) and all(
            s.ok for s in self.ike_sas
        )

    @property
    def ipsec_ok(self) -> bool:
        return all(s.ok for s in self.ipsec_sas) and not self.unknown_spis

    @property
    def ok(self) -> bool:
        return self.ike_ok and self.ipsec_ok and not self.cleartext and not self.key_mismatches

    def sa(self, spi: int, protocol: str = "esp") -> IpsecSaReport:
        """The report of one SA by SPI (KeyError if the capture never showed it)."""
        want = f"0x{spi:08x}"
        for s in self.ipsec_sas:
            if s.spi == want and s.protocol == protocol:
                return s
        raise KeyError(want)

    def totals(self) -> dict[str, int]:
        keys = (
            "packets",
            "icv_good",
            "icv_bad",
            "decrypt_errors",
            "malformed",
            "undecrypted",
            "replays",
            "out_of_order",
            "gaps",
            "padding_other",
            "outside_selectors",
            "dummy",
        )
        return {k: sum(getattr(s, k) for s in self.ipsec_sas) for k in keys}

    def summary(self) -> str:
        t = self.totals()
        ike_good = sum(1 for m in self.ike_messages if m.integrity == ICV_GOOD)
        ike_bad = sum(1 for m in self.ike_messages if m.integrity in (ICV_BAD, MALFORMED))
        ike_enc = sum(1 for m in self.ike_messages if m.encrypted)
        parts = [
            f"{len(self.ike_messages)} IKE messages ({ike_enc} encrypted: {ike_good} verified, "
            f"{ike_bad} failed)",
            f"{len(self.ipsec_sas)} IPsec SAs, {t['packets']} packets: {t['icv_good']} ICV good, "
            f"{t['icv_bad']} bad, {t['undecrypted']} unchecked, {t['replays']} replays, "
            f"{t['out_of_order']} out of order, {t['gaps']} gaps, {t['padding_other']} bad "
            f"padding, {t['outside_selectors']} outside selectors",
            f"{sum(self.unknown_spis.values())} on unknown SPIs",
            f"{self.cleartext} cleartext in selectors",
        ]
        if self.key_mismatches:
            parts.append(f"{len(self.key_mismatches)} key mismatches")
        return f"oracle {'OK' if self.ok else 'FAIL'}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "ok": self.ok,
            "summary": self.summary(),
            "ike_messages": [m.to_json() for m in self.ike_messages],
            "ike_sas": [s.to_json() for s in self.ike_sas],
            "ipsec_sas": [s.to_json() for s in self.ipsec_sas],
            "unknown_spis": dict(self.unknown_spis),
            "cleartext": self.cleartext,
            "nat_keepalives": self.nat_keepalives,
            "key_mismatches": list(self.key_mismatches),
            "problems": [p.to_json() for p in self.problems],
            "capture_stats": dict(self.capture_stats),
        }


# --- IKEv2 --------------------------------------------------------------------------------------


@dataclass
class _V2Exchange:
    """A request seen, waiting for its response (to learn what the exchange made)."""

    src: str
    dst: str
    payloads: list[v2p.Payload]


@dataclass
class _V2Sa:
    spi_i: bytes
    spi_r: bytes
    report: IkeSaReport
    encr_alg: EncrAlgorithm | None = None
    integ_alg: IntegAlgorithm | None = None
    prf_alg: PrfAlgorithm | None = None
    dh_id: int | None = None
    ni: bytes = b""
    nr: bytes = b""
    entry: IkeSaEntry | None = None
    from_i: SkProtection | None = None
    """Opens messages sent by the original initiator."""
    from_r: SkProtection | None = None
    requests: dict[tuple[bool, int], _V2Exchange] = field(default_factory=dict)
    """By (sender is original initiator, message ID)."""
    fragments: dict[tuple[bool, bool, int], dict[int, bytes]] = field(default_factory=dict)
    frag_inner: dict[tuple[bool, bool, int], int] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    tried: set[int] = field(default_factory=set)
    """Key entries (by id) that failed to open this SA's messages."""


def _v2_algorithms(proposal: v2p.Proposal) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in proposal.transforms:
        if t.type == 1:
            out["encr_id"] = t.id
            out["encr_key_bits"] = t.key_length
        elif t.type == 2:
            out["prf_id"] = t.id
        elif t.type == 3:
            out["integ_id"] = t.id or None
        elif t.type == 4:
            out["dh_id"] = t.id
        elif t.type == 5:
            out["esn"] = t.id == 1
    return out


def _names_v2(payloads: Iterable[v2p.Payload]) -> list[str]:
    names = []
    for p in payloads:
        if isinstance(p, v2p.NotifyPayload):
            names.append(f"N({v2enums.name_of(v2enums.NotifyType, p.notify_type)})")
        elif isinstance(p, v2p.UnknownPayload):
            names.append(f"?{p.type}{'!' if p.critical else ''}")
        else:
            names.append(v2enums.name_of(v2enums.PayloadType, p.payload_type))
    return names


# --- IKEv1 --------------------------------------------------------------------------------------


@dataclass
class _V1Quick:
    """One Quick Mode (or other phase-2) exchange, by message ID."""

    iv: bytes
    count: int = 0
    initiator_addr: str = ""
    responder_addr: str = ""
    ni_b: bytes = b""
    nr_b: bytes = b""
    sa1: v1.SaPayload | None = None
    ids: tuple[v1.IdPayload, ...] = ()
    pfs: bool = False


@dataclass
class _V1Sa:
    icookie: bytes
    rcookie: bytes
    report: IkeSaReport
    initiator_addr: str = ""
    responder_addr: str = ""
    phase1: Phase1Transform | None = None
    encr_alg: EncrAlgorithm | None = None
    prf_alg: PrfAlgorithm | None = None
    sai_b: bytes = b""
    idii_b: bytes = b""
    idir_b: bytes = b""
    gxi: bytes = b""
    gxr: bytes = b""
    entry: IkeSaEntry | None = None
    cipher: BlockCipher | None = None
    iv: bytes = b""
    """The next phase-1 IV (after the first encrypted message: its last ciphertext block)."""
    last_p1_block: bytes = b""
    p1_done: bool = False
    seen: dict[bytes, bytes] = field(default_factory=dict)
    """Ciphertext -> the IV it was decrypted with (retransmissions reuse it)."""
    quick: dict[int, _V1Quick] = field(default_factory=dict)
    tried: set[int] = field(default_factory=set)
    exchange_initiators: dict[int, str] = field(default_factory=dict)
    """By message ID: the address that sent the exchange's first message."""


def _names_v1(payloads: Iterable[v1.AnyPayload]) -> list[str]:
    names = []
    for p in payloads:
        if isinstance(p, v1.NotifyPayload):
            names.append(f"N({v2enums.name_of(v1c.NotifyType, p.notify_type)})")
        else:
            names.append(v2enums.name_of(v1c.PayloadType, p.payload_type))
    return names


# --- IPsec --------------------------------------------------------------------------------------


class _EspProbe(EspInbound):
    """The driver's inbound ESP SA, keeping the plaintext of the last verified packet."""

    last_pt: bytes | None = None

    def after_decrypt(
        self, pt: bytes, d: bytes, info: IpInfo, udp: bool, seq: int, now: float
    ) -> tuple[Verdict, bytes]:
        self.last_pt = pt
        self.last_seq = seq
        return super().after_decrypt(pt, d, info, udp, seq, now)


@dataclass
class _IpsecState:
    report: IpsecSaReport
    entry: IpsecSaEntry | None
    sa: _EspProbe | AhInbound | None = None
    reason: str = ""
    """Why packets cannot be checked (no keys, algorithms unknown, ...)."""
    seen: set[int] = field(default_factory=set)
    high: int = 0
    """ESN: the high 32 bits of the last sequence number (tracked without keys too)."""
    align: int = 4


_OPTIONS = SaOptions(check_padding=False)


# --- the oracle ---------------------------------------------------------------------------------


class Oracle:
    """Feed it the packets of a capture in order, then :meth:`finish`.

    ``derive_child_keys``: derive Child SA keys from SK_d/SKEYID_d and the nonces when the
    exchange had no PFS (and compare them with the keys given).
    """

    def __init__(self, keys: KeySet, *, derive_child_keys: bool = True) -> None:
        self.keys = KeySet(list(keys.ike), list(keys.ipsec))
        self.derive = derive_child_keys
        self.report = OracleReport()
        self._v2: dict[tuple[bytes, bytes], _V2Sa] = {}
        self._v2_init: dict[bytes, tuple[bytes, v2p.SaPayload | None]] = {}
        self._v1: dict[bytes, _V1Sa] = {}
        self._ipsec: dict[tuple[int, int, str], _IpsecState] = {}
        self._ctx = DriverContext(0)
        self._bound: set[int] = set()
        """ids of IKE entries bound to an SA on the wire."""

    # --- entry points ---------------------------------------------------------------------------

    def feed(self, pkt: WirePacket) -> None:
        if pkt.kind is PacketKind.IKE:
            self._ike(pkt)
        elif pkt.kind is PacketKind.ESP:
            self._ipsec_packet(pkt, IpsecProtocol.ESP)
        elif pkt.kind is PacketKind.AH:
            self._ipsec_packet(pkt, IpsecProtocol.AH)
        elif pkt.kind is PacketKind.NAT_KEEPALIVE:
            self.report.nat_keepalives += 1
        else:
            self._cleartext(pkt)

    def finish(self) -> OracleReport:
        r = self.report
        r.ike_sas = [s.report for s in self._v2.values()] + [s.report for s in self._v1.values()]
        r.ipsec_sas = [s.report for s in self._ipsec.values()]
        r.resolved_keys = self.resolved_keys()
        return r

    def resolved_keys(self) -> KeySet:
        """The key set with what the wire taught: SPIs, algorithms, addresses, selectors,
        derived Child SA keys (for the Wireshark key table and for evidence)."""
        return KeySet(list(self.keys.ike), list(self.keys.ipsec))

    # --- helpers --------------------------------------------------------------------------------

    def _problem(self, p: PacketProblem) -> None:
        if len(self.report.problems) < MAX_PROBLEMS:
            self.report.problems.append(p)

    def _replace_ike(self, old: IkeSaEntry | None, new: IkeSaEntry) -> IkeSaEntry:
        if old is not None:
            for i, e in enumerate(self.keys.ike):
                if e is old:
                    self.keys.ike[i] = new
                    self._bound.discard(id(old))
                    self._bound.add(id(new))
                    return new
        self.keys.ike.append(new)
        self._bound.add(id(new))
        return new

    def _learn_exchanged(
        self,
        pkt: WirePacket,
        base: dict[str, Any],
        spi: int,
        src: str,
        dst: str,
        ts_src: tuple[TrafficSelector, ...],
        ts_dst: tuple[TrafficSelector, ...],
        keys: tuple[bytes, bytes],
    ) -> None:
        """An SA an exchange made (IKEv2 IKE_AUTH/CREATE_CHILD_SA, IKEv1 Quick Mode): ``base``
        (protocol, algorithms, mode, encapsulation) with one direction's SPI, addresses and
        selectors, and its keys where the oracle derived them (else empty)."""
        encr_key, integ_key = keys
        learned = IpsecSaEntry(
            spi=spi,
            src=src,
            dst=dst,
            ts_src=ts_src,
            ts_dst=ts_dst,
            encr_key=encr_key,
            integ_key=integ_key,
            source="derived" if encr_key or integ_key else "exchange",
            **base,
        )
        self._learn_ipsec(learned, pkt.frame, pkt.time)

    def _learn_ipsec(self, learned: IpsecSaEntry, frame: int, time: float) -> None:
        """Merge what an exchange said about an SA into the key set; compare derived keys."""
        matches = [
            (i, e)
            for i, e in enumerate(self.keys.ipsec)
            if e.protocol == learned.protocol and e.spi == learned.spi
        ]
        exact = [(i, e) for i, e in matches if e.dst in (None, learned.dst)]
        pick = exact[0] if exact else (matches[0] if len(matches) == 1 else None)
        if pick is None:
            self.keys.ipsec.append(learned)
            return
        i, cur = pick
        if (
            cur.has_keys
            and learned.has_keys
            and (cur.encr_key != learned.encr_key or cur.integ_key != learned.integ_key)
        ):
            msg = (
                f"{learned.protocol.name} SA 0x{learned.spi:08x}: keys given ({cur.source}) "
                f"differ from the keys derived from the exchange"
            )
            self.report.key_mismatches.append(msg)
            self._problem(PacketProblem(frame, time, "key_mismatch", msg))
        merged = fill(
            cur,
            src=learned.src,
            dst=learned.dst,
            encr_id=learned.encr_id,
            encr_key_bits=learned.encr_key_bits,
            integ_id=learned.integ_id,
            esn=learned.esn,
            mode=learned.mode,
            encap=learned.encap,
            ts_src=learned.ts_src,
            ts_dst=learned.ts_dst,
            ike_spi_i=learned.ike_spi_i,
            encr_key=learned.encr_key,
            integ_key=learned.integ_key,
            name=learned.name,
        )
        self.keys.ipsec[i] = merged

    # --- IKE dispatch ---------------------------------------------------------------------------

    def _ike(self, pkt: WirePacket) -> None:
        data = pkt.data
        if len(data) < v2msg.HEADER_LEN:
            self._ike_record(pkt, 0, "?", 0, b"", b"", False, False, error="truncated IKE header")
            return
        major = data[17] >> 4
        if major == 1:
            self._v1_message(pkt, data)
        else:
            self._v2_message(pkt, data)

    def _ike_record(
        self,
        pkt: WirePacket,
        version: int,
        exchange: str,
        mid: int,
        spi_i: bytes,
        spi_r: bytes,
        initiator: bool,
        response: bool,
        **kw: Any,
    ) -> IkeMessageRecord:
        src = f"{pkt.src}:{pkt.sport}" if pkt.sport is not None else pkt.src
        dst = f"{pkt.dst}:{pkt.dport}" if pkt.dport is not None else pkt.dst
        rec = IkeMessageRecord(
            pkt.frame,
            pkt.time,
            src,
            dst,
            version,
            exchange,
            mid,
            spi_i.hex(),
            spi_r.hex(),
            initiator,
            response,
            **kw,
        )
        self.report.ike_messages.append(rec)
        if rec.integrity in (ICV_BAD, MALFORMED) or rec.error:
            self._problem(
                PacketProblem(pkt.frame, pkt.time, "ike", f"{rec.summary()}: {rec.error}".strip())
            )
        return rec

    # --- IKEv2 ----------------------------------------------------------------------------------

    def _v2_message(self, pkt: WirePacket, data: bytes) -> None:
        try:
            msg = v2msg.decode_message(data)
        except RemoteProtocolError as e:
            h = data
            self._ike_record(
                pkt,
                2,
                v2enums.name_of(v2enums.ExchangeType, h[18]),
                int.from_bytes(h[20:24]),
                h[:8],
                h[8:16],
                bool(h[19] & 0x08),
                bool(h[19] & 0x20),
                integrity=MALFORMED,
                error=str(e),
            )
            return
        exchange = v2enums.name_of(v2enums.ExchangeType, msg.exchange_type)
        names = _names_v2(p for p in msg.payloads if p is not msg.encrypted)
        if msg.exchange_type == v2enums.ExchangeType.IKE_SA_INIT and msg.encrypted is None:
            self._v2_init_message(msg)
            self._ike_record(
                pkt,
                2,
                exchange,
                msg.message_id,
                msg.spi_i,
                msg.spi_r,
                msg.initiator,
                msg.response,
                payloads=names,
            )
            return
        sk = msg.encrypted
        sa = self._v2.get((msg.spi_i, msg.spi_r))
        rec = self._ike_record(
            pkt,
            2,
            exchange,
            msg.message_id,
            msg.spi_i,
            msg.spi_r,
            msg.initiator,
            msg.response,
            payloads=names,
            encrypted=sk is not None,
        )
        if sk is None:
            rec.integrity = UNCHECKED
            rec.error = "unprotected message outside IKE_SA_INIT"
            return
        if isinstance(sk, v2p.EncryptedFragmentPayload):
            rec.fragment = f"{sk.number}/{sk.total}"
        if sa is None:
            sa = self._v2_orphan(msg)
        sa.report.messages += 1
        if data in sa.seen:
            rec.retransmission = True
        sa.seen.add(data)
        if sa.entry is None and not self._v2_bind(sa, data, sk, msg.initiator):
            rec.integrity = NO_KEYS
            sa.report.unchecked += 1
            return
        prot = sa.from_i if msg.initiator else sa.from_r
        assert prot is not None
        try:
            inner = prot.open(data, sk)
        except RemoteProtocolError as e:
            bad_icv = e.notify is None and "integrity" in str(e)
            rec.integrity = ICV_BAD if bad_icv else MALFORMED
            rec.error = str(e)
            sa.report.failed += 1
            self._problem(PacketProblem(pkt.frame, pkt.time, "ike", f"{rec.summary()}: {e}"))
            return
        rec.integrity = ICV_GOOD
        sa.report.verified += 1
        if isinstance(sk, v2p.EncryptedFragmentPayload):
            key = (msg.initiator, msg.response, msg.message_id)
            parts = sa.fragments.setdefault(key, {})
            parts[sk.number] = inner
            if sk.number == 1:
                sa.frag_inner[key] = sk.inner_type
            if len(parts) < sk.total or key not in sa.frag_inner:
                rec.payloads.append(f"SKF{{{sk.number}/{sk.total}}}")
                return
            whole = b"".join(parts[i] for i in range(1, sk.total + 1))
            first = sa.frag_inner.pop(key)
            del sa.fragments[key]
        else:
            whole, first = inner, sk.inner_type
        try:
            inner_payloads = v2p.decode_chain(whole, 0, first)
        except RemoteProtocolError as e:
            rec.integrity = MALFORMED
            rec.error = f"inner payloads: {e}"
            sa.report.failed += 1
            sa.report.verified -= 1
            return
        tag = "SKF" if isinstance(sk, v2p.EncryptedFragmentPayload) else "SK"
        listed = " ".join(_names_v2(inner_payloads))
        rec.payloads.append(f"{tag}{{ {listed} }}" if listed else f"{tag}{{ }}")
        if not rec.retransmission:
            self._v2_learn(sa, msg, inner_payloads, pkt)

    def _v2_orphan(self, msg: v2msg.Message) -> _V2Sa:
        """An IKE SA whose IKE_SA_INIT the capture missed."""
        sa = _V2Sa(msg.spi_i, msg.spi_r, IkeSaReport(2, msg.spi_i.hex(), msg.spi_r.hex()))
        self._v2[(msg.spi_i, msg.spi_r)] = sa
        return sa

    def _v2_init_message(self, msg: v2msg.Message) -> None:
        nonce = msg.get(v2p.NoncePayload)
        sa_payload = msg.get(v2p.SaPayload)
        if not msg.response:
            self._v2_init[msg.spi_i] = (nonce.data if nonce else b"", sa_payload)
            return
        if sa_payload is None or msg.spi_r == bytes(8) or not sa_payload.proposals:
            return  # COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN
        ni = self._v2_init.get(msg.spi_i, (b"", None))[0]
        key = (msg.spi_i, msg.spi_r)
        sa = self._v2.get(key)
        if sa is None:
            sa = _V2Sa(msg.spi_i, msg.spi_r, IkeSaReport(2, msg.spi_i.hex(), msg.spi_r.hex()))
            self._v2[key] = sa
        sa.ni = ni
        sa.nr = nonce.data if nonce else b""
        self._v2_set_algorithms(sa, _v2_algorithms(sa_payload.proposals[0]))

    def _v2_set_algorithms(self, sa: _V2Sa, alg: dict[str, Any]) -> None:
        try:
            if alg.get("encr_id") is not None:
                sa.encr_alg = encr(alg["encr_id"], alg.get("encr_key_bits"))
            if alg.get("integ_id"):
                sa.integ_alg = integ(alg["integ_id"])
            if alg.get("prf_id") is not None:
                sa.prf_alg = prf(alg["prf_id"])
        except (LocalProtocolError, RemoteProtocolError) as e:
            sa.report.algorithms = f"? ({e})"
            return
        sa.dh_id = alg.get("dh_id")
        sa.report.algorithms = _alg_names(sa.encr_alg, sa.integ_alg, sa.prf_alg)

    def _v2_keys_for(
        self, sa: _V2Sa, entry: IkeSaEntry
    ) -> tuple[SkProtection, SkProtection] | None:
        e, i = sa.encr_alg, sa.integ_alg
        try:
            if e is None and entry.encr_id is not None:
                e = encr(entry.encr_id, entry.encr_key_bits)
            if i is None and entry.integ_id:
                i = integ(entry.integ_id)
            if e is None or (i is None and not e.aead):
                return None
            if len(entry.sk_ei) != e.key_len or (i is not None and len(entry.sk_ai) != i.key_len):
                return None
            keys = IkeKeys(
                entry.sk_d,
                entry.sk_ai,
                entry.sk_ar,
                entry.sk_ei,
                entry.sk_er,
                entry.sk_pi,
                entry.sk_pr,
            )
            return (
                SkProtection(e, i, keys, False, _no_rng),
                SkProtection(e, i, keys, True, _no_rng),
            )
        except (LocalProtocolError, RemoteProtocolError):
            return None

    def _v2_bind(
        self,
        sa: _V2Sa,
        data: bytes,
        sk: v2p.EncryptedPayload | v2p.EncryptedFragmentPayload,
        from_initiator: bool,
    ) -> bool:
        """Find the key set of this IKE SA: by SPIs, else by trial decryption."""
        exact = [
            e
            for e in self.keys.ike
            if e.version == 2 and e.has_keys and e.spi_i == sa.spi_i and e.spi_r in (None, sa.spi_r)
        ]
        loose = [
            e
            for e in self.keys.ike
            if e.version == 2
            and e.has_keys
            and e.spi_i is None
            and id(e) not in self._bound
            and id(e) not in sa.tried
        ]
        for entry in exact + loose:
            prots = self._v2_keys_for(sa, entry)
            if prots is None:
                sa.tried.add(id(entry))
                continue
            from_i, from_r = prots
            try:
                (from_i if from_initiator else from_r).open(data, sk)
            except RemoteProtocolError:
                if entry not in exact:
                    continue  # wrong keys, or a forged message: try again on the next one
            if sa.encr_alg is None:
                self._v2_set_algorithms(
                    sa,
                    {
                        "encr_id": entry.encr_id,
                        "encr_key_bits": entry.encr_key_bits,
                        "integ_id": entry.integ_id,
                        "prf_id": entry.prf_id,
                    },
                )
            bound = fill(
                entry,
                spi_i=sa.spi_i,
                spi_r=sa.spi_r,
                encr_id=sa.encr_alg.id if sa.encr_alg else None,
                encr_key_bits=sa.encr_alg.key_bits if sa.encr_alg else None,
                integ_id=sa.integ_alg.id if sa.integ_alg else None,
                prf_id=sa.prf_alg.id if sa.prf_alg else None,
                dh_id=sa.dh_id,
            )
            sa.entry = self._replace_ike(entry, bound)
            sa.from_i, sa.from_r = from_i, from_r
            sa.report.keys = entry.source or "given"
            return True
        return False

    def _v2_learn(
        self, sa: _V2Sa, msg: v2msg.Message, payloads: list[v2p.Payload], pkt: WirePacket
    ) -> None:
        """What an exchange made: Child SAs and rekeyed IKE SAs (RFC 7296 §1.3, §2.17)."""
        ex = msg.exchange_type
        if not msg.response:
            sa.requests[(msg.initiator, msg.message_id)] = _V2Exchange(pkt.src, pkt.dst, payloads)
            if ex == v2enums.ExchangeType.INFORMATIONAL:
                for d in (p for p in payloads if isinstance(p, v2p.DeletePayload)):
                    if d.protocol_id == IpsecProtocol.IKE:
                        sa.report.deleted = True
            return
        req = sa.requests.pop((not msg.initiator, msg.message_id), None)
        if req is None:
            return
        if ex not in (v2enums.ExchangeType.IKE_AUTH, v2enums.ExchangeType.CREATE_CHILD_SA):
            return
        rsa = _first(payloads, v2p.SaPayload)
        qsa = _first(req.payloads, v2p.SaPayload)
        if rsa is None or qsa is None or not rsa.proposals:
            return
        chosen = rsa.proposals[0]
        offered = next((p for p in qsa.proposals if p.num == chosen.num), None)
        if offered is None:
            return
        alg = _v2_algorithms(chosen)
        if ex == v2enums.ExchangeType.CREATE_CHILD_SA:
            ni_p, nr_p = _first(req.payloads, v2p.NoncePayload), _first(payloads, v2p.NoncePayload)
            ni = ni_p.data if ni_p else b""
            nr = nr_p.data if nr_p else b""
            pfs = _first(payloads, v2p.KePayload) is not None
        else:
            ni, nr, pfs = sa.ni, sa.nr, False
        if chosen.protocol_id == IpsecProtocol.IKE:
            new = _V2Sa(
                offered.spi,
                chosen.spi,
                IkeSaReport(2, offered.spi.hex(), chosen.spi.hex(), parent=sa.spi_i.hex()),
                ni=ni,
                nr=nr,
            )
            self._v2_set_algorithms(new, alg)
            self._v2[(new.spi_i, new.spi_r)] = new
            return
        if chosen.protocol_id not in (IpsecProtocol.ESP, IpsecProtocol.AH):
            return
        proto = IpsecProtocol(chosen.protocol_id)
        transport = any(
            isinstance(p, v2p.NotifyPayload)
            and p.notify_type == v2enums.NotifyType.USE_TRANSPORT_MODE
            for p in payloads
        )
        tsi = _first(payloads, v2p.TsI) or _first(req.payloads, v2p.TsI)
        tsr = _first(payloads, v2p.TsR) or _first(req.payloads, v2p.TsR)
        ts_i = tuple(tsi.selectors) if tsi else ()
        ts_r = tuple(tsr.selectors) if tsr else ()
        i_to_r_spi = int.from_bytes(chosen.spi)
        r_to_i_spi = int.from_bytes(offered.spi)
        encap = pkt.encapsulated
        base: dict[str, Any] = {
            "protocol": proto,
            "encr_id": alg.get("encr_id") if proto == IpsecProtocol.ESP else None,
            "encr_key_bits": alg.get("encr_key_bits"),
            "integ_id": alg.get("integ_id"),
            "esn": alg.get("esn", False),
            "mode": Mode.TRANSPORT if transport else Mode.TUNNEL,
            "encap": encap,
            "ike_spi_i": sa.spi_i,
        }
        keys_i = keys_r = (b"", b"")
        if self.derive and not pfs and sa.entry is not None and sa.entry.sk_d and sa.prf_alg:
            try:
                e_len = (
                    encr(base["encr_id"], base["encr_key_bits"]).key_len if base["encr_id"] else 0
                )
                i_len = integ(base["integ_id"]).key_len if base["integ_id"] else 0
                km = ikev2_child_keymat(sa.prf_alg, sa.entry.sk_d, ni, nr, e_len, i_len)
                keys_i = (km.encr_i, km.integ_i)
                keys_r = (km.encr_r, km.integ_r)
            except (LocalProtocolError, RemoteProtocolError):
                pass
        self._learn_exchanged(pkt, base, i_to_r_spi, req.src, req.dst, ts_i, ts_r, keys_i)
        self._learn_exchanged(pkt, base, r_to_i_spi, req.dst, req.src, ts_r, ts_i, keys_r)

    # --- IKEv1 ----------------------------------------------------------------------------------

    def _v1_message(self, pkt: WirePacket, data: bytes) -> None:
        try:
            msg = v1.decode_message(data)
        except RemoteProtocolError as e:
            self._ike_record(
                pkt,
                1,
                v2enums.name_of(v1c.ExchangeType, data[18]),
                int.from_bytes(data[20:24]),
                data[:8],
                data[8:16],
                False,
                False,
                integrity=MALFORMED,
                error=str(e),
            )
            return
        h = msg.header
        sa = self._v1.get(h.icookie)
        if sa is None:
            sa = _V1Sa(
                h.icookie,
                h.rcookie,
                IkeSaReport(1, h.icookie.hex(), h.rcookie.hex()),
                initiator_addr=pkt.src,
                responder_addr=pkt.dst,
            )
            self._v1[h.icookie] = sa
        if h.rcookie != bytes(8) and sa.rcookie == bytes(8):
            sa.rcookie = h.rcookie
            sa.report.spi_r = h.rcookie.hex()
        from_initiator = pkt.src == sa.initiator_addr
        exchange = v2enums.name_of(v1c.ExchangeType, h.exchange_type)
        # IKEv1 has no response flag: a response is sent by the exchange's responder (the
        # phase-1 responder, or whoever did not send the first message with this M-ID)
        first_sender = sa.exchange_initiators.setdefault(h.message_id, pkt.src)
        rec = self._ike_record(
            pkt,
            1,
            exchange,
            h.message_id,
            h.icookie,
            h.rcookie,
            from_initiator,
            pkt.src != first_sender,
            encrypted=h.encrypted,
        )
        sa.report.messages += 1
        if not h.encrypted:
            rec.payloads = _names_v1(msg.payloads)
            self._v1_clear(sa, msg, from_initiator, rec)
            return
        retransmit = msg.ciphertext in sa.seen
        rec.retransmission = retransmit
        if sa.entry is None and not self._v1_bind(sa, msg, from_initiator):
            rec.integrity = NO_KEYS
            sa.report.unchecked += 1
            return
        try:
            payloads, _iv = self._v1_decrypt(sa, msg)
        except (RemoteProtocolError, LocalProtocolError, ValueError) as e:
            rec.integrity = MALFORMED
            rec.error = f"undecryptable: {e}"
            sa.report.failed += 1
            return
        rec.payloads = ["E{", *_names_v1(payloads), "}"]
        if h.exchange_type in (v1c.ExchangeType.IDENTITY_PROTECTION, v1c.ExchangeType.AGGRESSIVE):
            idp = next((x for x in payloads if isinstance(x, v1.IdPayload)), None)
            if idp is not None and not retransmit:
                if from_initiator:
                    sa.idii_b = idp.body
                else:
                    sa.idir_b = idp.body
        verdict = self._v1_check(sa, msg, payloads, from_initiator, retransmit)
        rec.integrity = verdict
        if verdict == ICV_GOOD:
            sa.report.verified += 1
        elif verdict == ICV_BAD:
            sa.report.failed += 1
            rec.error = "HASH does not verify"
        else:
            sa.report.unchecked += 1
        if not retransmit:
            self._v1_learn(sa, msg, payloads, from_initiator, pkt)

    def _v1_clear(
        self, sa: _V1Sa, msg: v1.Message, from_initiator: bool, rec: IkeMessageRecord
    ) -> None:
        h = msg.header
        p1 = h.exchange_type in (v1c.ExchangeType.IDENTITY_PROTECTION, v1c.ExchangeType.AGGRESSIVE)
        if not p1:
            return
        sa_p = msg.find(v1.SaPayload)
        ke = msg.find(v1.KePayload)
        if from_initiator:
            if sa_p is not None:
                sa.sai_b = sa_p.body
            if ke is not None:
                sa.gxi = ke.data
            idp = msg.find(v1.IdPayload)
            if idp is not None:
                sa.idii_b = idp.body
            if h.exchange_type == v1c.ExchangeType.AGGRESSIVE and msg.find(v1.HashPayload):
                rec.integrity = self._v1_check(sa, msg, msg.payloads, True, False)
        else:
            if sa_p is not None and sa_p.proposals and sa_p.proposals[0].transforms:
                try:
                    t = Phase1Transform.from_transform(sa_p.proposals[0].transforms[0])
                    sa.phase1 = t
                    sa.encr_alg = encr(t.encr_id, t.key_bits)
                    sa.prf_alg = prf(t.prf_id)
                    sa.report.algorithms = t.algorithms()
                except (LocalProtocolError, RemoteProtocolError) as e:
                    sa.report.algorithms = f"? ({e})"
            if ke is not None:
                sa.gxr = ke.data
            idp = msg.find(v1.IdPayload)
            if idp is not None:
                sa.idir_b = idp.body
            if h.exchange_type == v1c.ExchangeType.AGGRESSIVE and msg.find(v1.HashPayload):
                rec.integrity = self._v1_check(sa, msg, msg.payloads, False, False)

    def _v1_cipher(self, sa: _V1Sa, entry: IkeSaEntry) -> BlockCipher | None:
        e = sa.encr_alg
        try:
            if e is None and entry.encr_id is not None:
                e = encr(entry.encr_id, entry.encr_key_bits)
            if e is None or len(entry.enc_key) != e.key_len:
                return None
            return e.prepare_block(entry.enc_key)
        except (LocalProtocolError, RemoteProtocolError):
            return None

    def _v1_first_iv(self, sa: _V1Sa, entry: IkeSaEntry) -> bytes | None:
        if entry.iv:
            return entry.iv
        p = sa.prf_alg
        if p is None and entry.prf_id is not None:
            p = prf(entry.prf_id)
        e = sa.encr_alg
        if p is None or e is None or not sa.gxi or not sa.gxr:
            return None
        return kdf1.ikev1_phase1_iv(p, sa.gxi, sa.gxr, e.block_size)

    def _v1_bind(self, sa: _V1Sa, msg: v1.Message, from_initiator: bool) -> bool:
        exact = [
            e for e in self.keys.ike if e.version == 1 and e.has_keys and e.spi_i == sa.icookie
        ]
        loose = [
            e
            for e in self.keys.ike
            if e.version == 1
            and e.has_keys
            and e.spi_i is None
            and id(e) not in self._bound
            and id(e) not in sa.tried
        ]
        for entry in exact + loose:
            if sa.encr_alg is None and entry.encr_id is not None:
                try:
                    sa.encr_alg = encr(entry.encr_id, entry.encr_key_bits)
                    sa.prf_alg = prf(entry.prf_id) if entry.prf_id is not None else None
                except (LocalProtocolError, RemoteProtocolError):
                    pass
            cipher = self._v1_cipher(sa, entry)
            iv = self._v1_first_iv(sa, entry)
            if cipher is None or iv is None:
                sa.tried.add(id(entry))
                continue
            sa.cipher = cipher
            sa.iv = iv
            sa.last_p1_block = iv
            saved = (
                sa.iv,
                sa.last_p1_block,
                dict(sa.seen),
                {k: replace(v) for k, v in sa.quick.items()},
            )
            sa.entry = entry
            try:
                payloads, _ = self._v1_decrypt(sa, msg)
                ok = (
                    bool(payloads)
                    and self._v1_check(sa, msg, payloads, from_initiator, False) != ICV_BAD
                )
            except (RemoteProtocolError, LocalProtocolError, ValueError):
                ok = False
            sa.iv, sa.last_p1_block, sa.seen, sa.quick = saved
            if not ok and entry not in exact:
                sa.entry = None
                sa.cipher = None
                continue
            assert sa.encr_alg is not None
            bound = fill(
                entry,
                spi_i=sa.icookie,
                spi_r=sa.rcookie,
                encr_id=sa.encr_alg.id,
                encr_key_bits=sa.encr_alg.key_bits,
                prf_id=sa.prf_alg.id if sa.prf_alg else None,
                dh_id=sa.phase1.group if sa.phase1 else None,
            )
            sa.entry = self._replace_ike(entry, bound)
            sa.report.keys = entry.source or "given"
            return True
        return False

    def _v1_decrypt(self, sa: _V1Sa, msg: v1.Message) -> tuple[tuple[v1.AnyPayload, ...], bytes]:
        """Decrypt with the right IV (RFC 2409 Appendix B) and advance the IV state."""
        assert sa.cipher is not None and sa.encr_alg is not None
        h = msg.header
        ct = msg.ciphertext
        bs = sa.encr_alg.block_size
        if len(ct) % bs:
            raise RemoteProtocolError("ciphertext is not a multiple of the block size")
        p1 = h.exchange_type in (v1c.ExchangeType.IDENTITY_PROTECTION, v1c.ExchangeType.AGGRESSIVE)
        if ct in sa.seen:
            iv = sa.seen[ct]
        elif p1:
            iv = sa.iv
        else:
            q = sa.quick.get(h.message_id)
            if q is None:
                p = sa.prf_alg
                if p is None:
                    raise LocalProtocolError("phase-1 PRF unknown")
                q = _V1Quick(kdf1.ikev1_phase2_iv(p, sa.last_p1_block, h.message_id, bs))
                sa.quick[h.message_id] = q
            iv = q.iv
        pt = sa.cipher.decrypt(iv, ct)
        payloads = v1.decode_payloads(h.next_payload, pt, padded=True)
        if ct not in sa.seen:
            sa.seen[ct] = iv
            last = ct[-bs:]
            if p1:
                sa.iv = last
                sa.last_p1_block = last
            else:
                sa.quick[h.message_id].iv = last
        return payloads, iv

    def _v1_check(
        self,
        sa: _V1Sa,
        msg: v1.Message,
        payloads: tuple[v1.AnyPayload, ...],
        from_initiator: bool,
        retransmit: bool,
    ) -> str:
        """Verify the HASH payload this message carries, when the keys allow it."""
        entry = sa.entry
        p = sa.prf_alg
        h = msg.header
        hp = next((x for x in payloads if isinstance(x, v1.HashPayload)), None)
        if entry is None or p is None or hp is None:
            return UNCHECKED
        try:
            if h.exchange_type in (
                v1c.ExchangeType.IDENTITY_PROTECTION,
                v1c.ExchangeType.AGGRESSIVE,
            ):
                idp = next((x for x in payloads if isinstance(x, v1.IdPayload)), None)
                # AM3 carries no ID: HASH_I is over the ID of AM1 (RFC 2409 §5)
                id_b = idp.body if idp is not None else (sa.idii_b if from_initiator else sa.idir_b)
                if not entry.skeyid or not id_b or not (sa.gxi and sa.gxr and sa.sai_b):
                    return UNCHECKED
                fn = kdf1.ikev1_hash_i if from_initiator else kdf1.ikev1_hash_r
                want = fn(p, entry.skeyid, sa.gxi, sa.gxr, sa.icookie, sa.rcookie, sa.sai_b, id_b)
                return ICV_GOOD if want == hp.data else ICV_BAD
            if not entry.skeyid_a:
                return UNCHECKED
            rest = b"".join(x.raw for x in payloads if x is not hp)
            mid = h.message_id
            if h.exchange_type == v1c.ExchangeType.QUICK_MODE:
                q = sa.quick.get(mid)
                nonce = next((x for x in payloads if isinstance(x, v1.NoncePayload)), None)
                if len(payloads) == 1:  # QM3: HASH only
                    if q is None or not q.ni_b or not q.nr_b:
                        return UNCHECKED
                    want = kdf1.ikev1_qm_hash3(p, entry.skeyid_a, mid, q.ni_b, q.nr_b)
                elif q is not None and q.ni_b and nonce is not None and nonce.data != q.ni_b:
                    want = kdf1.ikev1_qm_hash2(p, entry.skeyid_a, mid, q.ni_b, rest)
                else:
                    want = kdf1.ikev1_qm_hash1(p, entry.skeyid_a, mid, rest)
                return ICV_GOOD if want == hp.data else ICV_BAD
            want = kdf1.ikev1_qm_hash1(p, entry.skeyid_a, mid, rest)
            return ICV_GOOD if want == hp.data else ICV_BAD
        except (LocalProtocolError, RemoteProtocolError):
            return UNCHECKED

    def _v1_learn(
        self,
        sa: _V1Sa,
        msg: v1.Message,
        payloads: tuple[v1.AnyPayload, ...],
        from_initiator: bool,
        pkt: WirePacket,
    ) -> None:
        h = msg.header
        if h.exchange_type == v1c.ExchangeType.INFORMATIONAL:
            for d in (x for x in payloads if isinstance(x, v1.DeletePayload)):
                if d.protocol_id == v1c.ProtocolId.PROTO_ISAKMP:
                    sa.report.deleted = True
            return
        if h.exchange_type != v1c.ExchangeType.QUICK_MODE:
            return
        q = sa.quick.get(h.message_id)
        if q is None:
            return
        q.count += 1
        nonce = next((x for x in payloads if isinstance(x, v1.NoncePayload)), None)
        sa_p = next((x for x in payloads if isinstance(x, v1.SaPayload)), None)
        if q.count == 1:
            q.initiator_addr, q.responder_addr = pkt.src, pkt.dst
            q.ni_b = nonce.data if nonce else b""
            q.sa1 = sa_p
            q.ids = tuple(x for x in payloads if isinstance(x, v1.IdPayload))
            q.pfs = any(isinstance(x, v1.KePayload) for x in payloads)
            return
        if q.count != 2 or sa_p is None or q.sa1 is None or not sa_p.proposals:
            return
        q.nr_b = nonce.data if nonce else b""
        entry = sa.entry
        try:
            if len(q.ids) >= 2:
                ts_i: tuple[TrafficSelector, ...] = (selector_from_id(q.ids[0]),)
                ts_r: tuple[TrafficSelector, ...] = (selector_from_id(q.ids[1]),)
            else:
                ts_i = (host_selector(q.initiator_addr),)
                ts_r = (host_selector(q.responder_addr),)
        except RemoteProtocolError:
            ts_i = ts_r = ()
        number = sa_p.proposals[0].number
        for chosen in (pr for pr in sa_p.proposals if pr.number == number):
            offered = next(
                (
                    pr
                    for pr in q.sa1.proposals
                    if pr.number == number and pr.protocol_id == chosen.protocol_id
                ),
                None,
            )
            if offered is None or not chosen.transforms:
                continue
            try:
                choice = parse_phase2_transform(chosen.protocol_id, chosen.transforms[0])
                e_len, i_len = choice.transform.keymat_len()
                encr_id = choice.transform.encr_id
                integ_id = choice.transform.integ_id
            except (LocalProtocolError, RemoteProtocolError):
                continue
            proto = choice.transform.protocol
            base: dict[str, Any] = {
                "protocol": proto,
                "encr_id": encr_id,
                "encr_key_bits": choice.transform.key_bits if encr_id is not None else None,
                "integ_id": integ_id,
                "esn": choice.transform.esn,
                "mode": choice.mode,
                "encap": choice.udp_encap or pkt.encapsulated,
                "ike_spi_i": sa.icookie,
            }
            if encr_id is not None and base["encr_key_bits"] is None:
                base["encr_key_bits"] = encr(encr_id, None).key_bits if encr_id != 12 else None
            for spi_b, src, dst, t_src, t_dst in (
                (chosen.spi, q.initiator_addr, q.responder_addr, ts_i, ts_r),
                (offered.spi, q.responder_addr, q.initiator_addr, ts_r, ts_i),
            ):
                ek = ik = b""
                if (
                    self.derive
                    and not q.pfs
                    and entry is not None
                    and entry.skeyid_d
                    and sa.prf_alg is not None
                ):
                    km = kdf1.ikev1_quick_keymat(
                        sa.prf_alg,
                        entry.skeyid_d,
                        chosen.protocol_id,
                        spi_b,
                        q.ni_b,
                        q.nr_b,
                        e_len + i_len,
                    )
                    ek, ik = km[:e_len], km[e_len:]
                spi = int.from_bytes(spi_b)
                self._learn_exchanged(pkt, base, spi, src, dst, t_src, t_dst, (ek, ik))

    # --- ESP / AH -------------------------------------------------------------------------------

    def _state(self, pkt: WirePacket, proto: IpsecProtocol, spi: int) -> _IpsecState | None:
        key = (int(proto), spi, pkt.dst)
        st = self._ipsec.get(key)
        if st is not None:
            return st
        entry = self.keys.find_ipsec(proto, spi, pkt.dst)
        if entry is None:
            return None
        report = IpsecSaReport(
            proto.name.lower(),
            f"0x{spi:08x}",
            pkt.src,
            pkt.dst,
            encapsulated=pkt.encapsulated,
            keys=(entry.source or "given") if entry.has_keys else "missing",
            algorithms=entry.algorithms() if entry.algorithms_known else "?",
            mode=str(entry.mode) if entry.mode else "",
            selectors=_ts_text(entry),
        )
        st = _IpsecState(report, entry)
        if not entry.has_keys:
            st.reason = "no keys"
        elif not entry.algorithms_known:
            st.reason = "algorithms unknown"
        else:
            try:
                params = entry.to_params(replay_window=0)
                if proto == IpsecProtocol.ESP:
                    st.sa = _EspProbe(params, pkt.time, self._ctx, _OPTIONS)
                    assert params.encr_id is not None
                    st.align = max(encr(params.encr_id, params.encr_key_bits).block_size, 4)
                else:
                    st.sa = AhInbound(params, pkt.time, self._ctx, _OPTIONS)
            except (LocalProtocolError, RemoteProtocolError) as e:
                st.reason = str(e)
        self._ipsec[key] = st
        return st

    def _ipsec_packet(self, pkt: WirePacket, proto: IpsecProtocol) -> None:
        d = pkt.data
        if proto == IpsecProtocol.ESP:
            if len(d) < 8:
                self._problem(PacketProblem(pkt.frame, pkt.time, "malformed", "short ESP"))
                return
            spi = int.from_bytes(d[0:4])
            seql = int.from_bytes(d[4:8])
        else:
            if len(d) < 12:
                self._problem(PacketProblem(pkt.frame, pkt.time, "malformed", "short AH"))
                return
            spi = int.from_bytes(d[4:8])
            seql = int.from_bytes(d[8:12])
        st = self._state(pkt, proto, spi)
        if st is None:
            label = f"{proto.name.lower()} 0x{spi:08x} > {pkt.dst}"
            self.report.unknown_spis[label] = self.report.unknown_spis.get(label, 0) + 1
            if self.report.unknown_spis[label] == 1:
                self._problem(PacketProblem(pkt.frame, pkt.time, "unknown_spi", label, seql))
            return
        r = st.report
        r.packets += 1
        if not r.first_frame:
            r.first_frame = pkt.frame
        r.last_frame = pkt.frame
        if st.sa is None:
            r.undecrypted += 1
            if r.undecrypted == 1:
                r.note(PacketProblem(pkt.frame, pkt.time, "no_keys", st.reason, seql))
            self._sequence(st, seql, pkt, verified=True)
            return
        try:
            info = parse_ip(pkt.ip, frozenset({IPPROTO_ESP, IPPROTO_AH}))
        except MalformedPacket as e:
            r.malformed += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "malformed", str(e), seql))
            return
        off = pkt.offset
        sa = st.sa
        if r.packets == 1 and sa.params.esn and seql > 1:
            # ESN: the receive window infers the high half from the highest number seen; a
            # capture that starts mid-SA starts it at the first packet (high half 0 assumed).
            sa.window.reset_window(seql - 1)
        if isinstance(sa, _EspProbe):
            sa.last_pt = None
            verdict, inner = sa.unprotect_at(pkt.ip, info, off, pkt.encapsulated, pkt.time)
            pt = sa.last_pt
            seq = sa.last_seq if pt is not None else self._full_seq(st, seql)
        else:
            verdict, inner = sa.unprotect_at(pkt.ip, info, off, pkt.time)
            pt = None
            seq = self._full_seq(st, seql)
        if verdict == Verdict.INTEGRITY:
            r.icv_bad += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "icv", "ICV does not verify", seq))
            return
        if verdict in (Verdict.RUNT, Verdict.OUTSIDE_WINDOW) and pt is None:
            r.malformed += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "malformed", verdict.name, seq))
            return
        if verdict == Verdict.DECRYPTION:
            r.icv_good += 1
            r.decrypt_errors += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "decrypt", "not block aligned", seq))
            self._sequence(st, seq & 0xFFFFFFFF, pkt, verified=True, full=seq)
            return
        r.icv_good += 1
        self._sequence(st, seq & 0xFFFFFFFF, pkt, verified=True, full=seq)
        if proto == IpsecProtocol.ESP and pt is not None:
            self._trailer(st, pt, pkt, seq)
        elif proto == IpsecProtocol.AH:
            nh = d[0]
            r.next_headers[nh] = r.next_headers.get(nh, 0) + 1
            if nh == 59:
                r.dummy += 1
        if verdict == Verdict.SELECTOR_MISMATCH:
            r.outside_selectors += 1
            flow = _inner_flow(pt, pkt) if pt is not None else "?"
            r.note(PacketProblem(pkt.frame, pkt.time, "selectors", f"inner {flow}", seq))
        elif verdict == Verdict.MALFORMED:
            r.malformed += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "malformed", "inner packet", seq))
        elif verdict == Verdict.BAD_PADDING:
            r.malformed += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "padding", "Pad Length beyond payload", seq))
        if verdict == Verdict.DELIVERED and inner:
            flow = _flow_text(inner)
            if flow in r.inner_flows or len(r.inner_flows) < 32:
                r.inner_flows[flow] = r.inner_flows.get(flow, 0) + 1

    def _full_seq(self, st: _IpsecState, seql: int) -> int:
        entry = st.entry
        if entry is None or not entry.esn:
            return seql
        last = st.report.seq_max & 0xFFFFFFFF
        high = st.report.seq_max >> 32
        if st.report.seq_max and seql < last and last - seql > 1 << 31:
            high += 1
        elif st.report.seq_max and seql > last and seql - last > 1 << 31 and high:
            high -= 1
        return (high << 32) | seql

    def _sequence(
        self,
        st: _IpsecState,
        seql: int,
        pkt: WirePacket,
        *,
        verified: bool,
        full: int | None = None,
    ) -> None:
        """Order, gaps and duplicates (RFC 4303 §3.3.3: the sender counts up from 1)."""
        r = st.report
        seq = full if full is not None else self._full_seq(st, seql)
        if r.seq_first is None:
            r.seq_first = seq
        r.seq_last = seq
        if seq in st.seen:
            r.replays += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "replay", "sequence number seen before", seq))
            return
        if verified:
            st.seen.add(seq)
            if len(st.seen) > 2 * _SEQ_MEMORY:
                floor = r.seq_max - _SEQ_MEMORY
                st.seen = {s for s in st.seen if s > floor}
        if seq < r.seq_max:
            r.out_of_order += 1
            r.note(PacketProblem(pkt.frame, pkt.time, "order", f"after {r.seq_max}", seq))
            return
        if r.seq_max and seq > r.seq_max + 1:
            r.gaps += 1
            r.missing += seq - r.seq_max - 1
        r.seq_max = seq

    def _trailer(self, st: _IpsecState, pt: bytes, pkt: WirePacket, seq: int) -> None:
        """Padding and Next Header of a decrypted ESP payload (RFC 4303 §2.4-§2.6)."""
        r = st.report
        n = len(pt)
        if n < 2:
            return
        pad_len, nh = pt[-2], pt[-1]
        r.next_headers[nh] = r.next_headers.get(nh, 0) + 1
        r.pad_lengths[pad_len] = r.pad_lengths.get(pad_len, 0) + 1
        if nh == 59:
            r.dummy += 1
        end = n - 2 - pad_len
        if end < 0:
            return
        if pt[end : n - 2] == bytes(range(1, pad_len + 1)):
            r.padding_default += 1
        else:
            r.padding_other += 1
            r.note(
                PacketProblem(
                    pkt.frame,
                    pkt.time,
                    "padding",
                    f"{pad_len} octets {pt[end : n - 2][:16].hex()} are not 1, 2, 3, ...",
                    seq,
                )
            )
        if pad_len == (-(end + 2)) % st.align:
            r.padding_minimal += 1

    # --- cleartext ------------------------------------------------------------------------------

    def _cleartext(self, pkt: WirePacket) -> None:
        """A packet in clear whose addresses some SA's selectors cover should have been
        protected (or dropped) by an SPD that covers it (RFC 4301 §5.1)."""
        if not self.keys.ipsec:
            return
        from ipaddress import ip_address

        try:
            src = ip_address(pkt.src)
            dst = ip_address(pkt.dst)
        except ValueError:
            return
        for e in self.keys.ipsec:
            if not e.ts_src or not e.ts_dst:
                continue
            if any(t.contains(src) for t in e.ts_src) and any(t.contains(dst) for t in e.ts_dst):
                self.report.cleartext += 1
                self._problem(
                    PacketProblem(
                        pkt.frame,
                        pkt.time,
                        "cleartext",
                        f"{pkt.endpoints} protocol {pkt.protocol} inside the selectors of "
                        f"{e.protocol.name} 0x{e.spi:08x}",
                    )
                )
                return


# --- small helpers ------------------------------------------------------------------------------


def _no_rng(n: int) -> bytes:
    raise LocalProtocolError("the oracle never encrypts")


def _first(payloads: Iterable[Any], cls: type[Any]) -> Any:
    for p in payloads:
        if type(p) is cls:
            return p
    return None


def _alg_names(e: EncrAlgorithm | None, i: IntegAlgorithm | None, p: PrfAlgorithm | None) -> str:
    parts = [x.name for x in (e, i, p) if x is not None]
    return "/".join(parts) or "?"


def _ts_text(entry: IpsecSaEntry) -> str:
    if not entry.ts_src and not entry.ts_dst:
        return ""
    src = " ".join(str(t) for t in entry.ts_src) or "*"
    dst = " ".join(str(t) for t in entry.ts_dst) or "*"
    return f"{src} > {dst}"


_FLOWS: dict[bytes, str] = {}


def _flow_text(inner: bytes) -> str:
    """``"src > dst"`` of an IP packet (cached by the address octets: flows repeat)."""
    if len(inner) >= 20 and inner[0] >> 4 == 4:
        key = inner[12:20]
        text = _FLOWS.get(key)
        if text is None:
            text = f"{inet_ntop(AF_INET, key[:4])} > {inet_ntop(AF_INET, key[4:])}"
            if len(_FLOWS) < 4096:
                _FLOWS[key] = text
        return text
    if len(inner) >= 40 and inner[0] >> 4 == 6:
        return f"{inet_ntop(AF_INET6, inner[8:24])} > {inet_ntop(AF_INET6, inner[24:40])}"
    return "?"


def _inner_flow(pt: bytes, pkt: WirePacket) -> str:
    if len(pt) >= 2 and pt[-1] in (4, 41):
        return _flow_text(pt)
    return f"{pkt.src} > {pkt.dst} (transport, protocol {pt[-1] if pt else '?'})"


# --- entry points -------------------------------------------------------------------------------


def check_packets(packets: Iterable[WirePacket], keys: KeySet, **options: Any) -> Oracle:
    """Run the oracle over packets; returns the :class:`Oracle` (``.finish()`` is done)."""
    oracle = Oracle(keys, **options)
    for pkt in packets:
        oracle.feed(pkt)
    oracle.finish()
    return oracle


def check_pcap(
    path: str | Path,
    keys: KeySet,
    *,
    ike_ports: Iterable[int] = (500,),
    natt_ports: Iterable[int] = (4500,),
    **options: Any,
) -> OracleReport:
    """Decrypt and verify every IKE and ESP/AH packet of a capture (see the module doc)."""
    stats = CaptureStats()
    oracle = check_packets(
        read_packets(path, ike_ports=ike_ports, natt_ports=natt_ports, stats=stats), keys, **options
    )
    report = oracle.report
    report.capture = str(path)
    report.capture_stats = stats.to_json()
    return report


def save_evidence(directory: str | Path, report: OracleReport, keys: KeySet) -> dict[str, Path]:
    """Write ``oracle.json`` (the findings), ``keys.json`` and ``wireshark-keys.txt`` (the
    key table for tshark/Wireshark 4.0, see :mod:`harness.probes.keys`) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = {
        "oracle": d / "oracle.json",
        "keys": keys.save(d / "keys.json"),
        "wireshark": wireshark_table(keys).write(d / "wireshark-keys.txt"),
    }
    out["oracle"].write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return out


__all__ = [
    "IkeMessageRecord",
    "IkeSaReport",
    "IpsecSaReport",
    "Oracle",
    "OracleReport",
    "PacketProblem",
    "check_packets",
    "check_pcap",
    "save_evidence",
]
