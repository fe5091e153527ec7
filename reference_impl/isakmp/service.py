"""The IKEv1 service: Main, Aggressive, Quick Mode and Informational exchanges, sans-I/O.

Same shape as the IKEv2 service (ARCHITECTURE.md "Sans-I/O core"): feed it
``receive_datagram(data, addr, now, local_port=...)``, ``handle_timer(now)`` and
``initiate(...)``; collect ``datagrams_to_send(now)``, ``get_timer()`` and ``next_event()``.
Events are those of :mod:`reference_impl.events`, so the policy agent does not care which IKE
version negotiated an SA.

RFC map:

* Main Mode (RFC 2409 §5, §5.1 signatures, §5.4 pre-shared keys), Aggressive Mode (same
  sections; refused with PSK as responder unless allowed, as strongSwan does);
* key derivation and CBC IV chaining (RFC 2409 §5, Appendix B) through the crypto registry;
* Quick Mode (RFC 2409 §5.5) with PFS, client IDs and KEYMAT per SA; the commit bit
  (RFC 2408 §3.1) is never set by us and, when a peer sets it, ignored (no CONNECTED notify
  is sent, one received is accepted);
* Informational exchanges (RFC 2408 §4.8, RFC 2409 §5.7): Delete, notifications,
  INITIAL-CONTACT (RFC 2407 §4.6.3.3);
* DPD (RFC 3706) and NAT-T (RFC 3947: vendor IDs, NAT-D, floating to 4500, UDP-encapsulated
  modes and NAT-OA);
* retransmission with the shared :mod:`reference_impl.retransmit` schedule. IKEv1 has no
  request/response message IDs in phase 1, so a side retransmits while it waits for the next
  message, and answers a repeated message by repeating its own reply (strongSwan's behaviour);
  the responder of Quick Mode and Aggressive Mode retransmits its reply until the third
  message arrives, since the initiator's last message is never answered.

Datagrams carry the local port they must leave from (500 or 4500); on 4500 the node adds
the non-ESP marker (RFC 3948 §2.2) and strips it from what it hands in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from reference_impl.crypto import BlockCipher, KeyExchange, PrfAlgorithm, dh, encr, prf
from reference_impl.crypto import kdf_ikev1 as kdf1
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    Event,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
    NegotiationFailed,
    PeerReplied,
)
from reference_impl.isakmp import auth as authn
from reference_impl.isakmp.codec import (
    AnyPayload,
    Attribute,
    CertPayload,
    CrPayload,
    DeletePayload,
    HashPayload,
    IdPayload,
    KePayload,
    Message,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    SigPayload,
    VendorIdPayload,
    decode_attributes,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
    encode_raw,
    first_payload_type,
)
from reference_impl.isakmp.constants import (
    CertEncoding,
    ExchangeType,
    Flags,
    IpsecAttr,
    LifeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    VendorId,
)
from reference_impl.isakmp.identity import (
    Identity,
    host_selector,
    id_from_selector,
    selector_from_id,
)
from reference_impl.isakmp.proposals import (
    Phase1Transform,
    Phase2Choice,
    Phase2Offer,
    accept_phase1_reply,
    lifetime_min,
    parse_phase2_transform,
    phase1_sa,
    phase2_sa,
    select_phase1,
    select_phase2,
)
from reference_impl.isakmp.settings import (
    ChildConfig,
    ConnectionConfig,
    IsakmpSettings,
    PskAuth,
    RsaAuth,
)
from reference_impl.retransmit import Retransmitter
from reference_impl.sa import (
    Address,
    ChildSaPair,
    ChildSaParams,
    IpsecProtocol,
    Lifetime,
    Mode,
    TrafficSelector,
)

_T = TypeVar("_T", bound=Payload)

IKE_PORT = 500
NATT_PORT = 4500
ZERO_COOKIE = bytes(8)
NONCE_LEN = 32


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram to send (the same shape as the IKEv2 service's).

    ``src`` is the local (address, port) to send from: the port says which socket (500 or
    4500). ``marker``: prefix the non-ESP marker (RFC 3948 §2.2); true for IKE messages on
    4500, false for NAT-T keepalives (one octet 0xFF, RFC 3948 §2.3).
    """

    data: bytes
    src: Address
    dst: Address
    marker: bool = False


class Phase1State(Enum):
    MM_I1 = "MM_I1"  # sent MM1, wait MM2
    MM_I2 = "MM_I2"  # sent MM3, wait MM4
    MM_I3 = "MM_I3"  # sent MM5, wait MM6
    MM_R1 = "MM_R1"  # sent MM2, wait MM3
    MM_R2 = "MM_R2"  # sent MM4, wait MM5
    AM_I1 = "AM_I1"  # sent AM1, wait AM2
    AM_R1 = "AM_R1"  # sent AM2, wait AM3
    ESTABLISHED = "ESTABLISHED"
    DEAD = "DEAD"


@dataclass(slots=True)
class Counters:
    """Dropped input by reason (bad input is a counted drop, never a crash). The keys are a
    bounded set (the notify type or ``"silent"``/``"local"``); ``last_error`` says more."""

    received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def drop(self, key: str, detail: str) -> None:
        self.dropped[key] = self.dropped.get(key, 0) + 1
        self.last_error = detail


@dataclass(slots=True)
class _Child:
    cfg: ChildConfig
    pair: ChildSaPair
    protocol: IpsecProtocol
    initiator: bool
    established_at: float
    rekey_at: float | None
    expire_at: float
    rekeying: bool = False

    @property
    def in_spi(self) -> int:
        return self.pair.inbound.spi

    @property
    def out_spi(self) -> int:
        return self.pair.outbound.spi


@dataclass(slots=True)
class _Quick:
    msgid: int
    initiator: bool
    iv: bytes
    cfg: ChildConfig | None = None
    acquire_id: int | None = None
    ni: bytes = b""
    nr: bytes = b""
    kex: KeyExchange | None = None
    g_qm: bytes | None = None
    my_spis: dict[IpsecProtocol, bytes] = field(default_factory=dict)
    choice: Phase2Choice | None = None
    peer_spi: bytes = b""
    id_ci: IdPayload | None = None
    id_cr: IdPayload | None = None
    local_ts: TrafficSelector | None = None
    remote_ts: TrafficSelector | None = None
    retx: Retransmitter | None = None
    last_sent: bytes = b""
    last_rcvd: bytes = b""
    rekey_of: _Child | None = None
    done: bool = False
    done_at: float = 0.0


@dataclass(slots=True)
class _Phase1:
    conn: ConnectionConfig
    initiator: bool
    icookie: bytes
    rcookie: bytes
    state: Phase1State
    aggressive: bool
    local_addr: str
    peer: Address
    created: float
    local_port: int = IKE_PORT
    acquire_id: int | None = None
    pending: list[tuple[ChildConfig, int | None]] = field(default_factory=list)
    offered: tuple[Phase1Transform, ...] = ()
    chosen: Phase1Transform | None = None
    sai_b: bytes = b""
    kex: KeyExchange | None = None
    gxi: bytes = b""
    gxr: bytes = b""
    ni: bytes = b""
    nr: bytes = b""
    g_xy: bytes = b""
    id_i_b: bytes = b""
    id_r_b: bytes = b""
    prf_alg: PrfAlgorithm | None = None
    skeyid: bytes = b""
    skeyid_d: bytes = b""
    skeyid_a: bytes = b""
    skeyid_e: bytes = b""
    cipher: BlockCipher | None = None
    block_size: int = 16
    iv: bytes = b""
    last_p1_block: bytes = b""
    natt: bytes | None = None
    """The NAT-T vendor ID both sides support (RFC 3947 or the draft), or None."""
    peer_dpd: bool = False
    nat_local: bool = False
    nat_peer: bool = False
    peer_identity: Identity | None = None
    peer_cert: bytes | None = None
    retx: Retransmitter | None = None
    last_sent: bytes = b""
    last_rcvd: bytes = b""
    peer_replied: bool = False
    quick: dict[int, _Quick] = field(default_factory=dict)
    children: list[_Child] = field(default_factory=list)
    established_at: float = 0.0
    rekey_at: float | None = None
    expire_at: float | None = None
    deadline: float | None = None
    rekey_of: _Phase1 | None = None
    rekeying: bool = False
    last_activity: float = 0.0
    dpd_seq: int = 0
    dpd_retx: Retransmitter | None = None
    dpd_waiting: int | None = None
    keepalive_at: float | None = None
    info_seen: deque[int] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def ike_sa_id(self) -> bytes:
        return self.icookie + self.rcookie

    @property
    def established(self) -> bool:
        return self.state == Phase1State.ESTABLISHED

    @property
    def floated(self) -> bool:
        return self.local_port == NATT_PORT

    @property
    def nat(self) -> bool:
        return self.nat_local or self.nat_peer


def _rand(n: int) -> bytes:
    return os.urandom(n)


def _msgid() -> int:
    while True:
        m = int.from_bytes(os.urandom(4), "big")
        if m:
            return m


def _addr_bytes(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def _spi_int(b: bytes) -> int:
    return int.from_bytes(b, "big")


class IsakmpService:
    """All IKEv1 SAs of one node (both roles)."""

    def __init__(self, settings: IsakmpSettings) -> None:
        self.settings = settings
        self.counters = Counters()
        self._sas: dict[bytes, _Phase1] = {}
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()

    # ---------------------------------------------------------------- public API

    def initiate(
        self,
        connection: str,
        now: float,
        *,
        child: str | None = None,
        acquire_id: int | None = None,
        phase1_only: bool = False,
    ) -> bytes:
        """Start phase 1 for ``connection`` (or reuse an established ISAKMP SA) and then a
        Quick Mode for ``child`` (default: every child of the connection; none with
        ``phase1_only``: the ISAKMP SA alone). Returns the ISAKMP SA id (CKY-I | CKY-R;
        CKY-R is zero until the responder answers)."""
        conn = self.settings.connection(connection)
        if phase1_only:
            children = []
        else:
            children = [conn.child(child)] if child is not None else list(conn.children)
        sa = self._established_for(conn)
        if sa is not None:
            for c in children:
                self._start_quick(sa, c, now, acquire_id)
            return sa.ike_sa_id
        for pending in self._sas.values():
            # phase 1 already under way for this connection: queue the Quick Modes on it
            if (
                pending.conn is conn
                and pending.initiator
                and pending.rekey_of is None
                and pending.state not in (Phase1State.ESTABLISHED, Phase1State.DEAD)
            ):
                pending.pending += [(c, acquire_id) for c in children]
                return pending.ike_sa_id
        sa = self._start_phase1(conn, now, acquire_id)
        sa.pending = [(c, acquire_id) for c in children]
        return sa.ike_sa_id

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, local: Address | None = None
    ) -> None:
        """One IKE datagram from ``addr`` received on ``local`` (address, port), the non-ESP
        marker already stripped. ``local`` defaults to port 500 of the configured address."""
        self.counters.received += 1
        local_port = local[1] if local is not None else IKE_PORT
        local_addr = local[0] if local is not None else ""
        try:
            self._receive(bytes(data), addr, now, local_port, local_addr)
        except RemoteProtocolError as e:
            self.counters.drop(_notify_name(e.notify) if e.notify else "silent", str(e))
        except LocalProtocolError as e:  # a bug or config problem; never crash the node
            self.counters.drop("local", str(e))

    def handle_timer(self, now: float) -> None:
        for sa in list(self._sas.values()):
            self._timers(sa, now)

    def get_timer(self) -> float | None:
        times: list[float] = []
        for sa in self._sas.values():
            times.extend(self._sa_timers(sa))
        return min(times) if times else None

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def delete_ike_sa(self, ike_sa_id: bytes, now: float, reason: str = "deleted") -> None:
        """Delete an ISAKMP SA and its IPsec SAs, telling the peer (RFC 2408 §3.15)."""
        sa = self._sas.get(ike_sa_id)
        if sa is None:
            raise LocalProtocolError("no such ISAKMP SA")
        self._delete_phase1(sa, now, reason, notify_peer=True)

    def delete_child_sa(self, inbound_spi: int, now: float, reason: str = "deleted") -> None:
        """Delete one IPsec SA pair, telling the peer with a Delete payload."""
        for sa in self._sas.values():
            for ch in sa.children:
                if ch.in_spi == inbound_spi:
                    self._delete_child(sa, ch, now, reason, notify_peer=True)
                    return
        raise LocalProtocolError("no such IPsec SA")

    def rekey_child_sa(self, inbound_spi: int, now: float) -> None:
        """Start a Quick Mode replacing one IPsec SA (e.g. on a soft byte lifetime)."""
        for sa in self._sas.values():
            for ch in sa.children:
                if ch.in_spi == inbound_spi:
                    self._rekey_child(sa, ch, now)
                    return
        raise LocalProtocolError("no such IPsec SA")

    def ike_sa_ids(self) -> list[bytes]:
        return list(self._sas)

    def ike_sa_state(self, ike_sa_id: bytes) -> Phase1State | None:
        sa = self._sas.get(ike_sa_id)
        return sa.state if sa else None

    def child_sas(self) -> list[ChildSaPair]:
        return [ch.pair for sa in self._sas.values() for ch in sa.children]

    def phase1_keys(self, ike_sa_id: bytes) -> dict[str, bytes]:
        """SKEYID and friends, for the oracle (Wireshark's ikev1_decryption_table wants
        CKY-I and the encryption key)."""
        sa = self._sas[ike_sa_id]
        key = self._enc_key(sa) if sa.chosen else b""
        return {
            "skeyid": sa.skeyid,
            "skeyid_d": sa.skeyid_d,
            "skeyid_a": sa.skeyid_a,
            "skeyid_e": sa.skeyid_e,
            "encryption_key": key,
        }

    # ---------------------------------------------------------------- output helpers

    def _dgram(self, sa: _Phase1, data: bytes) -> Datagram:
        return Datagram(data, (sa.local_addr, sa.local_port), sa.peer, sa.local_port == NATT_PORT)

    def _send(self, sa: _Phase1, data: bytes, now: float, request: bool) -> None:
        sa.last_sent = data
        self._out.append(self._dgram(sa, data))
        if request:
            if sa.retx is None:
                sa.retx = Retransmitter(self.settings.retransmit)
            sa.retx.start((data,), now)
        elif sa.retx is not None:
            sa.retx.stop()

    def _emit(self, ev: Event) -> None:
        self._events.append(ev)

    def _fail(
        self, sa: _Phase1, reason: FailureReason, detail: str, now: float, notify: int | None = None
    ) -> None:
        acquire_ids: list[int | None] = []
        for acq in [sa.acquire_id, *(a for _, a in sa.pending)]:
            if acq not in acquire_ids:
                acquire_ids.append(acq)
        if sa.rekey_of is not None:
            sa.rekey_of.rekeying = False
            sa.rekey_of.rekey_at = None  # no retry storm: it expires at its hard lifetime
        for acq in acquire_ids:
            self._emit(
                NegotiationFailed(
                    reason, detail, sa.peer, sa.peer_replied, sa.ike_sa_id, acq, notify
                )
            )
        self._remove(sa)

    def _remove(self, sa: _Phase1) -> None:
        sa.state = Phase1State.DEAD
        self._sas.pop(sa.ike_sa_id, None)
        self._sas.pop(sa.icookie + ZERO_COOKIE, None)

    # ---------------------------------------------------------------- keys and crypto

    def _enc_key(self, sa: _Phase1) -> bytes:
        assert sa.chosen is not None and sa.prf_alg is not None
        alg = encr(sa.chosen.encr_id, sa.chosen.key_bits)
        return kdf1.ikev1_encryption_key(sa.prf_alg, sa.skeyid_e, alg.key_len)

    def _derive_phase1(self, sa: _Phase1) -> None:
        """RFC 2409 §5: SKEYID, SKEYID_d/a/e, the encryption key and the phase-1 IV."""
        assert sa.chosen is not None and sa.kex is not None
        peer_pub = sa.gxr if sa.initiator else sa.gxi
        sa.g_xy = _dh_secret(sa.kex, peer_pub)
        p = prf(sa.chosen.prf_id)
        sa.prf_alg = p
        auth = sa.conn.auth
        if isinstance(auth, PskAuth):
            sa.skeyid = kdf1.ikev1_skeyid_psk(p, auth.psk, sa.ni, sa.nr)
        else:
            sa.skeyid = kdf1.ikev1_skeyid_sig(p, sa.ni, sa.nr, sa.g_xy)
        sa.skeyid_d, sa.skeyid_a, sa.skeyid_e = kdf1.ikev1_skeyid_dae(
            p, sa.skeyid, sa.g_xy, sa.icookie, sa.rcookie
        )
        alg = encr(sa.chosen.encr_id, sa.chosen.key_bits)
        if alg.aead or alg.block_size < 2:
            raise LocalProtocolError(f"{alg.name} cannot protect IKEv1 (CBC needed)")
        cipher = alg.prepare(self._enc_key(sa))
        assert isinstance(cipher, BlockCipher)
        sa.cipher = cipher
        sa.block_size = alg.block_size
        sa.iv = kdf1.ikev1_phase1_iv(p, sa.gxi, sa.gxr, alg.block_size)

    def _hash_i(self, sa: _Phase1) -> bytes:
        assert sa.prf_alg is not None
        return kdf1.ikev1_hash_i(
            sa.prf_alg, sa.skeyid, sa.gxi, sa.gxr, sa.icookie, sa.rcookie, sa.sai_b, sa.id_i_b
        )

    def _hash_r(self, sa: _Phase1) -> bytes:
        assert sa.prf_alg is not None
        return kdf1.ikev1_hash_r(
            sa.prf_alg, sa.skeyid, sa.gxi, sa.gxr, sa.icookie, sa.rcookie, sa.sai_b, sa.id_r_b
        )

    def _hash1(self, sa: _Phase1, msgid: int, rest: bytes) -> bytes:
        assert sa.prf_alg is not None
        return kdf1.ikev1_qm_hash1(sa.prf_alg, sa.skeyid_a, msgid, rest)

    def _hash2(self, sa: _Phase1, msgid: int, ni: bytes, rest: bytes) -> bytes:
        assert sa.prf_alg is not None
        return kdf1.ikev1_qm_hash2(sa.prf_alg, sa.skeyid_a, msgid, ni, rest)

    def _hash3(self, sa: _Phase1, q: _Quick) -> bytes:
        assert sa.prf_alg is not None
        return kdf1.ikev1_qm_hash3(sa.prf_alg, sa.skeyid_a, q.msgid, q.ni, q.nr)

    def _encrypt(self, sa: _Phase1, iv: bytes, body: bytes) -> bytes:
        """RFC 2409 Appendix B: CBC over the payloads, zero-padded to the block size."""
        assert sa.cipher is not None
        pad = -len(body) % sa.block_size
        return sa.cipher.encrypt(iv, body + bytes(pad))

    def _decrypt(self, sa: _Phase1, iv: bytes, ct: bytes) -> bytes:
        assert sa.cipher is not None
        if not ct or len(ct) % sa.block_size:
            raise RemoteProtocolError(
                "ciphertext is not a whole number of blocks", notify=NotifyType.PAYLOAD_MALFORMED
            )
        return sa.cipher.decrypt(iv, ct)

    def _protected(
        self, sa: _Phase1, xchg: int, msgid: int, payloads: list[AnyPayload], iv: bytes
    ) -> tuple[bytes, bytes]:
        """An encrypted message and the IV that follows it (its last ciphertext block)."""
        ct = self._encrypt(sa, iv, encode_payloads(payloads))
        data = encode_raw(
            sa.icookie,
            sa.rcookie,
            first_payload_type(payloads),
            xchg,
            Flags.ENCRYPTION,
            msgid,
            ct,
        )
        return data, ct[-sa.block_size :]

    def _open(self, sa: _Phase1, msg: Message, iv: bytes) -> tuple[tuple[AnyPayload, ...], bytes]:
        """Decrypt and decode; returns the payloads and the IV that follows this message."""
        pt = self._decrypt(sa, iv, msg.ciphertext)
        payloads = decode_payloads(msg.header.next_payload, pt, padded=True)
        return payloads, msg.ciphertext[-sa.block_size :]

    def _natd(self, sa: _Phase1, address: str, port: int) -> bytes:
        """RFC 3947 §3.2: HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash."""
        assert sa.chosen is not None
        p = prf(sa.chosen.prf_id)
        return p.hash(sa.icookie + sa.rcookie + _addr_bytes(address) + struct.pack("!H", port))

    def _natd_payloads(self, sa: _Phase1) -> list[AnyPayload]:
        """NAT-D of the peer's address first, then ours (RFC 3947 §3.2)."""
        ptype = PayloadType.NAT_D if sa.natt == VendorId.NAT_T_RFC3947 else PayloadType.NAT_D_DRAFT
        dst = self._natd(sa, sa.peer[0], sa.peer[1])
        if sa.conn.force_encap:
            src = _rand(len(dst))  # strongSwan's "faking NAT situation"
        else:
            src = self._natd(sa, sa.local_addr, sa.local_port)
        return [NatDPayload(dst, ptype), NatDPayload(src, ptype)]

    def _check_natd(self, sa: _Phase1, natds: list[NatDPayload]) -> None:
        """RFC 3947 §3.2: the first hash is of our address as the peer sees it; the others of
        the peer's own. A mismatch means a NAT in front of that side."""
        if len(natds) < 2:
            raise RemoteProtocolError(
                "NAT-D needs at least two payloads", notify=NotifyType.PAYLOAD_MALFORMED
            )
        mine = self._natd(sa, sa.local_addr, sa.local_port)
        theirs = self._natd(sa, sa.peer[0], sa.peer[1])
        sa.nat_local = natds[0].hash != mine or sa.conn.force_encap
        sa.nat_peer = all(n.hash != theirs for n in natds[1:])

    # ---------------------------------------------------------------- vendor IDs

    def _vendor_ids(self, conn: ConnectionConfig) -> list[AnyPayload]:
        vids: list[AnyPayload] = [VendorIdPayload(VendorId.DPD)]
        if conn.nat_traversal:
            vids += [
                VendorIdPayload(VendorId.NAT_T_RFC3947),
                VendorIdPayload(VendorId.NAT_T_DRAFT_02_N),
            ]
        vids += [VendorIdPayload(v) for v in self.settings.send_vendor_ids]
        return vids

    def _read_vendor_ids(self, sa: _Phase1, payloads: tuple[AnyPayload, ...]) -> None:
        vids = {p.data for p in payloads if isinstance(p, VendorIdPayload)}
        sa.peer_dpd = VendorId.DPD in vids
        if not sa.conn.nat_traversal:
            sa.natt = None
        elif VendorId.NAT_T_RFC3947 in vids:
            sa.natt = VendorId.NAT_T_RFC3947
        elif VendorId.NAT_T_DRAFT_02_N in vids or VendorId.NAT_T_DRAFT_02 in vids:
            sa.natt = VendorId.NAT_T_DRAFT_02_N
        else:
            sa.natt = None

    # ---------------------------------------------------------------- lookup

    def _established_for(self, conn: ConnectionConfig) -> _Phase1 | None:
        for sa in self._sas.values():
            if sa.conn is conn and sa.established and not sa.rekeying:
                return sa
        return None

    def _find_conn(self, local_addr: str, peer: Address, aggressive: bool) -> ConnectionConfig:
        for c in self.settings.connections:
            if c.remote_addr not in ("%any", peer[0]):
                continue
            if c.local_addr not in ("%any", local_addr):
                continue
            return c
        raise RemoteProtocolError(
            f"no connection for {peer[0]}", notify=NotifyType.NO_PROPOSAL_CHOSEN
        )

    # ---------------------------------------------------------------- phase 1: initiator

    def _start_phase1(
        self,
        conn: ConnectionConfig,
        now: float,
        acquire_id: int | None,
        rekey_of: _Phase1 | None = None,
    ) -> _Phase1:
        icky = _rand(8)
        offered = tuple(p for p in conn.proposals if p.usable())
        if not offered:
            raise LocalProtocolError(f"connection {conn.name!r}: no usable phase-1 proposal")
        sa = _Phase1(
            conn=conn,
            initiator=True,
            icookie=icky,
            rcookie=ZERO_COOKIE,
            state=Phase1State.AM_I1 if conn.aggressive else Phase1State.MM_I1,
            aggressive=conn.aggressive,
            local_addr=conn.local_addr,
            peer=(conn.remote_addr, conn.port),
            created=now,
            acquire_id=acquire_id,
            offered=offered,
            rekey_of=rekey_of,
            last_activity=now,
        )
        sa_payload = phase1_sa(offered)
        sa.sai_b = sa_payload.encode_body()
        self._sas[sa.ike_sa_id] = sa
        if conn.aggressive:
            group = offered[0].group
            sa.kex = dh(group).generate()
            sa.gxi = sa.kex.public_value
            sa.ni = _rand(NONCE_LEN)
            idp = conn.local_id.to_payload()
            sa.id_i_b = idp.encode_body()
            payloads: list[AnyPayload] = [
                sa_payload,
                KePayload(sa.gxi),
                NoncePayload(sa.ni),
                idp,
                *self._vendor_ids(conn),
            ]
            data = encode_message(icky, ZERO_COOKIE, ExchangeType.AGGRESSIVE, 0, 0, payloads)
        else:
            payloads = [sa_payload, *self._vendor_ids(conn)]
            data = encode_message(
                icky, ZERO_COOKIE, ExchangeType.IDENTITY_PROTECTION, 0, 0, payloads
            )
        self._send(sa, data, now, request=True)
        return sa

    def _mm_i_got_mm2(self, sa: _Phase1, msg: Message, now: float) -> None:
        sa_p = msg.find(SaPayload)
        if sa_p is None:
            raise RemoteProtocolError("MM2 without SA", notify=NotifyType.PAYLOAD_MALFORMED)
        sa.chosen = accept_phase1_reply(sa_p, sa.offered)
        sa.rcookie = msg.header.rcookie
        self._rekey_dict(sa)
        self._read_vendor_ids(sa, msg.payloads)
        sa.kex = dh(sa.chosen.group).generate()
        sa.gxi = sa.kex.public_value
        sa.ni = _rand(NONCE_LEN)
        payloads: list[AnyPayload] = [KePayload(sa.gxi), NoncePayload(sa.ni)]
        if isinstance(sa.conn.auth, RsaAuth):
            payloads.append(CrPayload(CertEncoding.X509_SIGNATURE))
        if sa.natt:
            payloads += self._natd_payloads(sa)
        data = encode_message(
            sa.icookie, sa.rcookie, ExchangeType.IDENTITY_PROTECTION, 0, 0, payloads
        )
        sa.state = Phase1State.MM_I2
        self._send(sa, data, now, request=True)

    def _mm_i_got_mm4(self, sa: _Phase1, msg: Message, now: float) -> None:
        ke = msg.find(KePayload)
        nonce = msg.find(NoncePayload)
        if ke is None or nonce is None:
            raise RemoteProtocolError("MM4 lacks KE or Nonce", notify=NotifyType.PAYLOAD_MALFORMED)
        self._check_nonce(nonce)
        sa.gxr = ke.data
        sa.nr = nonce.data
        natds = msg.find_all(NatDPayload)
        if sa.natt and natds:
            self._check_natd(sa, natds)
        self._derive_phase1(sa)
        if sa.natt and sa.nat:
            sa.local_port = NATT_PORT  # RFC 3947 §4: float with message 5
            sa.peer = (sa.peer[0], NATT_PORT)
        idp = sa.conn.local_id.to_payload()
        sa.id_i_b = idp.encode_body()
        payloads: list[AnyPayload] = [idp, *self._auth_payloads(sa, self._hash_i(sa))]
        if sa.conn.send_initial_contact and not self._other_sa_with(sa):
            payloads.append(
                NotifyPayload(
                    NotifyType.INITIAL_CONTACT,
                    ProtocolId.PROTO_ISAKMP,
                    sa.icookie + sa.rcookie,
                )
            )
        data, sa.iv = self._protected(sa, ExchangeType.IDENTITY_PROTECTION, 0, payloads, sa.iv)
        sa.state = Phase1State.MM_I3
        self._send(sa, data, now, request=True)

    def _mm_i_got_mm6(self, sa: _Phase1, msg: Message, now: float) -> None:
        payloads, next_iv = self._open(sa, msg, sa.iv)
        idp = _find(payloads, IdPayload)
        if idp is None:
            raise RemoteProtocolError("MM6 without ID", notify=NotifyType.PAYLOAD_MALFORMED)
        sa.id_r_b = idp.body
        self._verify_peer(sa, idp, payloads, self._hash_r(sa))
        sa.iv = next_iv
        self._established(sa, now)

    def _am_i_got_am2(self, sa: _Phase1, msg: Message, now: float) -> None:
        sa_p = msg.find(SaPayload)
        ke = msg.find(KePayload)
        nonce = msg.find(NoncePayload)
        idp = msg.find(IdPayload)
        if sa_p is None or ke is None or nonce is None or idp is None:
            raise RemoteProtocolError("AM2 incomplete", notify=NotifyType.PAYLOAD_MALFORMED)
        sa.chosen = accept_phase1_reply(sa_p, sa.offered)
        if sa.chosen.group != sa.offered[0].group:
            raise RemoteProtocolError("AM2 changed the group", notify=NotifyType.NO_PROPOSAL_CHOSEN)
        self._check_nonce(nonce)
        sa.rcookie = msg.header.rcookie
        self._rekey_dict(sa)
        self._read_vendor_ids(sa, msg.payloads)
        sa.gxr = ke.data
        sa.nr = nonce.data
        self._derive_phase1(sa)
        sa.id_r_b = idp.body
        self._verify_peer(sa, idp, msg.payloads, self._hash_r(sa))
        natds = msg.find_all(NatDPayload)
        payloads: list[AnyPayload] = []
        if sa.natt and natds:
            self._check_natd(sa, natds)
            payloads += self._natd_payloads(sa)
            if sa.nat:
                sa.local_port = NATT_PORT
                sa.peer = (sa.peer[0], NATT_PORT)
        payloads += self._auth_payloads(sa, self._hash_i(sa), with_cert=True)
        if sa.conn.send_initial_contact and not self._other_sa_with(sa):
            payloads.append(
                NotifyPayload(
                    NotifyType.INITIAL_CONTACT, ProtocolId.PROTO_ISAKMP, sa.icookie + sa.rcookie
                )
            )
        # AM3 is encrypted as strongSwan and libreswan do (RFC 2409 §5 allows HDR*)
        data, sa.iv = self._protected(sa, ExchangeType.AGGRESSIVE, 0, payloads, sa.iv)
        self._send(sa, data, now, request=False)
        self._established(sa, now)

    # ---------------------------------------------------------------- phase 1: responder

    def _responder_new(
        self, msg: Message, addr: Address, now: float, local_port: int, local_addr: str
    ) -> None:
        aggressive = msg.header.exchange_type == ExchangeType.AGGRESSIVE
        conn = self._find_conn(local_addr, addr, aggressive)
        sa_p = msg.find(SaPayload)
        if sa_p is None:
            raise RemoteProtocolError(
                "first message without SA", notify=NotifyType.PAYLOAD_MALFORMED
            )
        ours = [p for p in conn.proposals if p.usable()]
        try:
            prop, transform, chosen = select_phase1(sa_p, ours)
        except RemoteProtocolError as e:
            self._send_plain_notify(msg, addr, local_port, local_addr, e.notify or 14)
            raise
        sa = _Phase1(
            conn=conn,
            initiator=False,
            icookie=msg.header.icookie,
            rcookie=_rand(8),
            state=Phase1State.MM_R1,
            aggressive=aggressive,
            local_addr=local_addr if local_addr else conn.local_addr,
            peer=addr,
            created=now,
            local_port=local_port,
            chosen=chosen,
            sai_b=sa_p.body,
            last_activity=now,
        )
        sa.deadline = now + self.settings.half_open_timeout
        self._read_vendor_ids(sa, msg.payloads)
        reply_sa = SaPayload((type(prop)(prop.number, prop.protocol_id, prop.spi, (transform,)),))
        if not aggressive:
            self._sas[sa.ike_sa_id] = sa
            sa.last_rcvd = msg_bytes(msg)
            payloads: list[AnyPayload] = [reply_sa, *self._vendor_ids(conn)]
            data = encode_message(
                sa.icookie, sa.rcookie, ExchangeType.IDENTITY_PROTECTION, 0, 0, payloads
            )
            self._send(sa, data, now, request=False)
            return
        # Aggressive Mode (RFC 2409 §5.4): refuse PSK unless allowed, like strongSwan
        if isinstance(conn.auth, PskAuth) and not self.settings.allow_aggressive_psk:
            self._send_plain_notify(
                msg, addr, local_port, local_addr, NotifyType.AUTHENTICATION_FAILED
            )
            raise RemoteProtocolError("Aggressive Mode PSK disabled for security reasons")
        ke = msg.find(KePayload)
        nonce = msg.find(NoncePayload)
        idp = msg.find(IdPayload)
        if ke is None or nonce is None or idp is None:
            raise RemoteProtocolError("AM1 incomplete", notify=NotifyType.PAYLOAD_MALFORMED)
        self._check_nonce(nonce)
        sa.gxi = ke.data
        sa.ni = nonce.data
        sa.id_i_b = idp.body
        sa.peer_identity = Identity.from_payload(idp)
        if conn.remote_id is not None and sa.peer_identity != conn.remote_id:
            self._send_plain_notify(
                msg, addr, local_port, local_addr, NotifyType.INVALID_ID_INFORMATION
            )
            raise RemoteProtocolError("unexpected peer identity")
        sa.kex = dh(chosen.group).generate()
        sa.gxr = sa.kex.public_value
        sa.nr = _rand(NONCE_LEN)
        self._sas[sa.ike_sa_id] = sa
        sa.last_rcvd = msg_bytes(msg)
        self._derive_phase1(sa)
        my_id = conn.local_id.to_payload()
        sa.id_r_b = my_id.encode_body()
        payloads = [
            reply_sa,
            KePayload(sa.gxr),
            NoncePayload(sa.nr),
            my_id,
            *self._vendor_ids(conn),
        ]
        if sa.natt:
            payloads += self._natd_payloads(sa)
        payloads += self._auth_payloads(sa, self._hash_r(sa), with_cert=True)
        data = encode_message(sa.icookie, sa.rcookie, ExchangeType.AGGRESSIVE, 0, 0, payloads)
        sa.state = Phase1State.AM_R1
        # the responder retransmits AM2 until AM3 arrives: AM3 is never answered
        self._send(sa, data, now, request=True)

    def _mm_r_got_mm3(self, sa: _Phase1, msg: Message, now: float) -> None:
        assert sa.chosen is not None
        ke = msg.find(KePayload)
        nonce = msg.find(NoncePayload)
        if ke is None or nonce is None:
            raise RemoteProtocolError("MM3 lacks KE or Nonce", notify=NotifyType.PAYLOAD_MALFORMED)
        self._check_nonce(nonce)
        sa.gxi = ke.data
        sa.ni = nonce.data
        sa.kex = dh(sa.chosen.group).generate()
        sa.gxr = sa.kex.public_value
        sa.nr = _rand(NONCE_LEN)
        natds = msg.find_all(NatDPayload)
        payloads: list[AnyPayload] = [KePayload(sa.gxr), NoncePayload(sa.nr)]
        if isinstance(sa.conn.auth, RsaAuth):
            payloads.append(CrPayload(CertEncoding.X509_SIGNATURE))
        if sa.natt and natds:
            self._check_natd(sa, natds)
            payloads += self._natd_payloads(sa)
        else:
            sa.natt = None if not natds else sa.natt
        self._derive_phase1(sa)
        data = encode_message(
            sa.icookie, sa.rcookie, ExchangeType.IDENTITY_PROTECTION, 0, 0, payloads
        )
        sa.state = Phase1State.MM_R2
        sa.last_rcvd = msg_bytes(msg)
        self._send(sa, data, now, request=False)

    def _mm_r_got_mm5(
        self, sa: _Phase1, msg: Message, addr: Address, lport: int, now: float
    ) -> None:
        payloads, next_iv = self._open(sa, msg, sa.iv)
        idp = _find(payloads, IdPayload)
        if idp is None:
            raise RemoteProtocolError("MM5 without ID", notify=NotifyType.PAYLOAD_MALFORMED)
        sa.id_i_b = idp.body
        sa.iv = next_iv  # before verifying: an error notify derives its IV from it
        self._verify_peer(sa, idp, payloads, self._hash_i(sa))
        sa.last_rcvd = msg_bytes(msg)
        if lport == NATT_PORT:  # the initiator floated (RFC 3947 §4)
            sa.local_port = NATT_PORT
        sa.peer = addr
        my_id = sa.conn.local_id.to_payload()
        sa.id_r_b = my_id.encode_body()
        out: list[AnyPayload] = [my_id, *self._auth_payloads(sa, self._hash_r(sa))]
        data, sa.iv = self._protected(sa, ExchangeType.IDENTITY_PROTECTION, 0, out, sa.iv)
        self._send(sa, data, now, request=False)
        self._initial_contact(sa, payloads, now)
        self._established(sa, now)

    def _am_r_got_am3(
        self, sa: _Phase1, msg: Message, addr: Address, lport: int, now: float
    ) -> None:
        if msg.header.encrypted:
            payloads, next_iv = self._open(sa, msg, sa.iv)
        else:
            payloads, next_iv = msg.payloads, sa.iv
        assert sa.id_i_b
        idp = IdPayload(0, b"", raw=b"\0\0\0\0" + sa.id_i_b)
        natds = _find_all(payloads, NatDPayload)
        if sa.natt and natds:
            self._check_natd(sa, natds)
        self._verify_peer(sa, idp, payloads, self._hash_i(sa), id_checked=True)
        sa.iv = next_iv
        # last_rcvd stays AM1: AM3 is final, a repeated AM3 must not be answered
        if lport == NATT_PORT:
            sa.local_port = NATT_PORT
        sa.peer = addr
        if sa.retx:
            sa.retx.stop()
        self._initial_contact(sa, payloads, now)
        self._established(sa, now)

    # ---------------------------------------------------------------- authentication

    def _auth_payloads(self, sa: _Phase1, h: bytes, with_cert: bool = True) -> list[AnyPayload]:
        auth = sa.conn.auth
        if isinstance(auth, PskAuth):
            return [HashPayload(h)]
        out: list[AnyPayload] = []
        if with_cert and auth.send_cert:
            out.append(CertPayload(CertEncoding.X509_SIGNATURE, authn.cert_der(auth.certificate)))
        out.append(SigPayload(authn.rsa_sign(auth.private_key, h)))
        return out

    def _verify_peer(
        self,
        sa: _Phase1,
        idp: IdPayload,
        payloads: tuple[AnyPayload, ...] | list[AnyPayload],
        expected: bytes,
        id_checked: bool = False,
    ) -> None:
        """HASH_I/HASH_R or SIG_I/SIG_R (RFC 2409 §5.1, §5.4) and the peer's identity."""
        if not id_checked:
            ident = Identity.from_payload(idp)
            if sa.conn.remote_id is not None and ident != sa.conn.remote_id:
                raise RemoteProtocolError(
                    f"peer identity {ident} is not {sa.conn.remote_id}",
                    notify=NotifyType.INVALID_ID_INFORMATION,
                )
            sa.peer_identity = ident
        auth = sa.conn.auth
        if isinstance(auth, PskAuth):
            hp = _find(payloads, HashPayload)
            if hp is None:
                raise RemoteProtocolError("no HASH payload", notify=NotifyType.PAYLOAD_MALFORMED)
            if not authn.equal(hp.data, expected):
                raise RemoteProtocolError(
                    "HASH does not verify", notify=NotifyType.AUTHENTICATION_FAILED
                )
            return
        sig = _find(payloads, SigPayload)
        if sig is None:
            raise RemoteProtocolError("no SIG payload", notify=NotifyType.PAYLOAD_MALFORMED)
        certs = [
            p.data
            for p in payloads
            if isinstance(p, CertPayload) and p.encoding == CertEncoding.X509_SIGNATURE
        ]
        cert = authn.choose_peer_certificate(auth, certs)
        if sa.peer_identity is not None:
            authn.check_identity(cert, sa.peer_identity)
        if not authn.rsa_verify(cert, expected, sig.data):
            raise RemoteProtocolError(
                "signature does not verify", notify=NotifyType.INVALID_SIGNATURE
            )
        sa.peer_cert = cert

    def _check_nonce(self, n: NoncePayload) -> None:
        # RFC 2409 §5: nonces are 8 to 256 octets
        if not 8 <= len(n.data) <= 256:
            raise RemoteProtocolError(
                "nonce length out of range", notify=NotifyType.PAYLOAD_MALFORMED
            )

    # ---------------------------------------------------------------- established

    def _established(self, sa: _Phase1, now: float) -> None:
        assert sa.chosen is not None
        sa.state = Phase1State.ESTABLISHED
        if sa.retx is not None:
            sa.retx.stop()
        sa.established_at = now
        sa.last_activity = now
        sa.deadline = None
        sa.last_p1_block = sa.iv
        if sa.nat_local and sa.floated and self.settings.natt_keepalive is not None:
            sa.keepalive_at = now + self.settings.natt_keepalive
        life = lifetime_min(sa.chosen.life_seconds, sa.conn.life_seconds) or sa.conn.life_seconds
        sa.expire_at = now + life
        if sa.initiator:
            sa.rekey_at = now + life - _margin(sa.conn.rekey_margin, life)
        self._emit(
            IkeSaEstablished(
                ike_sa_id=sa.ike_sa_id,
                ike_version=1,
                local=(sa.local_addr, sa.local_port),
                peer=sa.peer,
                local_id=str(sa.conn.local_id),
                peer_id=str(sa.peer_identity) if sa.peer_identity else "",
                algorithms=sa.chosen.algorithms(),
                initiator=sa.initiator,
            )
        )
        old = sa.rekey_of
        if old is not None:
            sa.rekey_of = None
            # IPsec SAs are independent of their ISAKMP SA (RFC 2409 §5.5): move them over
            sa.children.extend(old.children)
            old.children.clear()
            self._emit(IkeSaRekeyed(old.ike_sa_id, sa.ike_sa_id))
            self._delete_phase1(old, now, "rekeyed", notify_peer=True, quiet=True)
        for cfg, acq in sa.pending:
            self._start_quick(sa, cfg, now, acq)
        sa.pending = []

    def _other_sa_with(self, sa: _Phase1) -> bool:
        return any(
            o is not sa and o.established and o.peer[0] == sa.peer[0] for o in self._sas.values()
        )

    def _initial_contact(
        self, sa: _Phase1, payloads: tuple[AnyPayload, ...] | list[AnyPayload], now: float
    ) -> None:
        """RFC 2407 §4.6.3.3: the peer lost its state; drop every other SA with it."""
        if not any(
            isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INITIAL_CONTACT
            for p in payloads
        ):
            return
        for other in list(self._sas.values()):
            if other is sa or not other.established:
                continue
            if other.peer[0] == sa.peer[0] and other.peer_identity == sa.peer_identity:
                self._delete_phase1(other, now, "initial contact", notify_peer=False)

    # ---------------------------------------------------------------- Quick Mode

    def _start_quick(
        self,
        sa: _Phase1,
        cfg: ChildConfig,
        now: float,
        acquire_id: int | None,
        rekey_of: _Child | None = None,
    ) -> None:
        assert sa.prf_alg is not None
        msgid = _msgid()
        q = _Quick(
            msgid=msgid,
            initiator=True,
            iv=kdf1.ikev1_phase2_iv(sa.prf_alg, sa.last_p1_block, msgid, sa.block_size),
            cfg=cfg,
            acquire_id=acquire_id,
            rekey_of=rekey_of,
        )
        sa.quick[msgid] = q
        q.ni = _rand(NONCE_LEN)
        protocols = {t.protocol for t in cfg.transforms}
        q.my_spis = {p: self._new_spi() for p in protocols}
        offer = Phase2Offer(
            cfg.mode,
            udp_encap=sa.natt is not None and sa.nat,
            draft_encap=sa.natt == VendorId.NAT_T_DRAFT_02_N,
            pfs_group=cfg.pfs_group,
            life_seconds=cfg.life_seconds,
            life_kilobytes=cfg.life_kilobytes,
        )
        usable = [t for t in cfg.transforms if t.usable()]
        if not usable:
            raise LocalProtocolError(f"child {cfg.name!r}: no usable transform")
        rest: list[AnyPayload] = [phase2_sa(usable, q.my_spis, offer), NoncePayload(q.ni)]
        if cfg.pfs_group is not None:
            q.kex = dh(cfg.pfs_group).generate()
            rest.append(KePayload(q.kex.public_value))
        q.local_ts, q.remote_ts = cfg.local_ts, cfg.remote_ts
        q.id_ci, q.id_cr = id_from_selector(cfg.local_ts), id_from_selector(cfg.remote_ts)
        rest += [q.id_ci, q.id_cr]
        if offer.udp_encap and cfg.mode == Mode.TRANSPORT:
            rest += self._nat_oa(sa, qm_initiator=True)
        self._send_quick(sa, q, rest, now, hash_prefix=b"", request=True)

    def _nat_oa(self, sa: _Phase1, qm_initiator: bool) -> list[AnyPayload]:
        """RFC 3947 §5.2: NAT-OAi and NAT-OAr (of the Quick Mode's initiator and responder)
        in transport mode."""
        t = PayloadType.NAT_OA if sa.natt == VendorId.NAT_T_RFC3947 else PayloadType.NAT_OA_DRAFT
        mine = ipaddress.ip_address(sa.local_addr)
        theirs = ipaddress.ip_address(sa.peer[0])
        first, second = (mine, theirs) if qm_initiator else (theirs, mine)
        return [NatOaPayload(first, t), NatOaPayload(second, t)]

    def _send_quick(
        self,
        sa: _Phase1,
        q: _Quick,
        rest: list[AnyPayload],
        now: float,
        hash_prefix: bytes,
        request: bool,
    ) -> None:
        """HASH(1)/HASH(2) = prf(SKEYID_a, M-ID | [Ni_b |] the rest of the message)."""
        body = encode_payloads(rest)
        if hash_prefix:
            h = self._hash2(sa, q.msgid, hash_prefix, body)
        else:
            h = self._hash1(sa, q.msgid, body)
        payloads: list[AnyPayload] = [HashPayload(h), *rest]
        data, q.iv = self._protected(sa, ExchangeType.QUICK_MODE, q.msgid, payloads, q.iv)
        q.last_sent = data
        self._out.append(self._dgram(sa, data))
        if request:
            q.retx = Retransmitter(self.settings.retransmit)
            q.retx.start((data,), now)

    def _responder_lifetime(
        self, cfg: ChildConfig, choice: Phase2Choice, protocol_id: int, spi: bytes
    ) -> list[AnyPayload]:
        """RFC 2407 §4.6.3.1: tell the initiator when we keep the SA for less than it asked."""
        attrs: list[Attribute] = []
        if choice.life_seconds is None or cfg.life_seconds < choice.life_seconds:
            attrs += [
                Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
                Attribute.integer(IpsecAttr.SA_LIFE_DURATION, cfg.life_seconds),
            ]
        if cfg.life_kilobytes is not None and (
            choice.life_kilobytes is None or cfg.life_kilobytes < choice.life_kilobytes
        ):
            attrs += [
                Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES),
                Attribute.integer(IpsecAttr.SA_LIFE_DURATION, cfg.life_kilobytes),
            ]
        if not attrs:
            return []
        data = b"".join(a.encode() for a in attrs)
        return [NotifyPayload(NotifyType.RESPONDER_LIFETIME, protocol_id, spi, data)]

    def _new_spi(self) -> bytes:
        while True:
            spi = os.urandom(4)
            if int.from_bytes(spi, "big") >= 256:  # 1-255 are reserved (RFC 4303 §2.1)
                return spi

    def _quick_received(self, sa: _Phase1, msg: Message, data: bytes, now: float) -> None:
        msgid = msg.header.message_id
        if msgid == 0:
            raise RemoteProtocolError(
                "Quick Mode with M-ID 0", notify=NotifyType.INVALID_MESSAGE_ID
            )
        q = sa.quick.get(msgid)
        if q is not None and data == q.last_rcvd:
            # a retransmission of what we answered: repeat our answer (if we have one)
            if q.last_sent and q.initiator == q.done:
                self._out.append(self._dgram(sa, q.last_sent))
            return
        if q is None:
            assert sa.prf_alg is not None
            q = _Quick(
                msgid=msgid,
                initiator=False,
                iv=kdf1.ikev1_phase2_iv(sa.prf_alg, sa.last_p1_block, msgid, sa.block_size),
            )
            payloads, next_iv = self._open(sa, msg, q.iv)
            self._quick_r1(sa, q, payloads, next_iv, data, now)
            return
        if q.done:
            raise RemoteProtocolError("message for a finished Quick Mode")
        payloads, next_iv = self._open(sa, msg, q.iv)
        if q.initiator:
            self._quick_i2(sa, q, payloads, next_iv, data, now)
        else:
            self._quick_r3(sa, q, payloads, next_iv, data, now)

    def _quick_r1(
        self,
        sa: _Phase1,
        q: _Quick,
        payloads: tuple[AnyPayload, ...],
        next_iv: bytes,
        data: bytes,
        now: float,
    ) -> None:
        if not payloads or not isinstance(payloads[0], HashPayload):
            raise RemoteProtocolError(
                "QM1 must start with HASH(1)", notify=NotifyType.INVALID_HASH_INFORMATION
            )
        rest_raw = b"".join(p.raw for p in payloads[1:])
        h = self._hash1(sa, q.msgid, rest_raw)
        if not authn.equal(h, payloads[0].data):
            raise RemoteProtocolError(
                "HASH(1) mismatch", notify=NotifyType.INVALID_HASH_INFORMATION
            )
        try:
            self._quick_r1_accept(sa, q, payloads, next_iv, data, now)
        except RemoteProtocolError as e:
            # refuse in a protected Informational naming the initiator's SA, as strongSwan does
            sa_p = _find(payloads, SaPayload)
            proto: int = ProtocolId.PROTO_ISAKMP
            spi = sa.ike_sa_id
            if sa_p is not None and sa_p.proposals:
                proto, spi = sa_p.proposals[0].protocol_id, sa_p.proposals[0].spi
            if e.notify is not None:
                self._send_info(sa, [NotifyPayload(e.notify, proto, spi)], now)
            raise

    def _quick_r1_accept(
        self,
        sa: _Phase1,
        q: _Quick,
        payloads: tuple[AnyPayload, ...],
        next_iv: bytes,
        data: bytes,
        now: float,
    ) -> None:
        sa_p = _find(payloads, SaPayload)
        nonce = _find(payloads, NoncePayload)
        if sa_p is None or nonce is None:
            raise RemoteProtocolError("QM1 lacks SA or Nonce", notify=NotifyType.PAYLOAD_MALFORMED)
        self._check_nonce(nonce)
        ke = _find(payloads, KePayload)
        ids = _find_all(payloads, IdPayload)
        if len(ids) not in (0, 2):
            raise RemoteProtocolError(
                "QM1 needs two IDs or none", notify=NotifyType.INVALID_ID_INFORMATION
            )
        # RFC 2409 §5.5: without IDs the selectors are the ISAKMP peers' addresses
        if ids:
            ts_i, ts_r = selector_from_id(ids[0]), selector_from_id(ids[1])
        else:
            ts_i, ts_r = host_selector(sa.peer[0]), host_selector(sa.local_addr)
        cfg = self._find_child(sa.conn, local=ts_r, remote=ts_i)
        udp_encap = sa.natt is not None and sa.nat
        prop, transform, choice = select_phase2(
            sa_p, cfg.transforms, cfg.mode, udp_encap, cfg.pfs_group
        )
        if (ke is None) != (choice.pfs_group is None):
            raise RemoteProtocolError(
                "KE presence does not match the PFS group",
                notify=NotifyType.INVALID_KEY_INFORMATION,
            )
        q.cfg = cfg
        q.choice = choice
        q.ni = nonce.data
        q.nr = _rand(NONCE_LEN)
        q.peer_spi = prop.spi
        q.my_spis = {choice.transform.protocol: self._new_spi()}
        q.local_ts, q.remote_ts = ts_r, ts_i
        q.last_rcvd = data
        q.iv = next_iv
        reply_sa = SaPayload(
            (
                type(prop)(
                    prop.number,
                    prop.protocol_id,
                    q.my_spis[choice.transform.protocol],
                    (transform,),
                ),
            )
        )
        rest: list[AnyPayload] = [reply_sa, NoncePayload(q.nr)]
        rest += self._responder_lifetime(cfg, choice, prop.protocol_id, prop.spi)
        if ke is not None:
            assert choice.pfs_group is not None
            q.kex = dh(choice.pfs_group).generate()
            q.g_qm = _dh_secret(q.kex, ke.data)
            rest.append(KePayload(q.kex.public_value))
        if ids:
            q.id_ci, q.id_cr = ids[0], ids[1]
            rest += [
                IdPayload(ids[0].id_type, ids[0].data, ids[0].protocol_id, ids[0].port),
                IdPayload(ids[1].id_type, ids[1].data, ids[1].protocol_id, ids[1].port),
            ]
        if udp_encap and choice.mode == Mode.TRANSPORT:
            rest += self._nat_oa(sa, qm_initiator=False)
        sa.quick[q.msgid] = q
        # HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [| KE] [| IDci | IDcr])
        self._send_quick(sa, q, rest, now, hash_prefix=q.ni, request=True)

    def _quick_i2(
        self,
        sa: _Phase1,
        q: _Quick,
        payloads: tuple[AnyPayload, ...],
        next_iv: bytes,
        data: bytes,
        now: float,
    ) -> None:
        assert q.cfg is not None
        if not payloads or not isinstance(payloads[0], HashPayload):
            raise RemoteProtocolError(
                "QM2 must start with HASH(2)", notify=NotifyType.INVALID_HASH_INFORMATION
            )
        rest_raw = b"".join(p.raw for p in payloads[1:])
        h = self._hash2(sa, q.msgid, q.ni, rest_raw)
        if not authn.equal(h, payloads[0].data):
            raise RemoteProtocolError(
                "HASH(2) mismatch", notify=NotifyType.INVALID_HASH_INFORMATION
            )
        sa_p = _find(payloads, SaPayload)
        nonce = _find(payloads, NoncePayload)
        if sa_p is None or nonce is None:
            raise RemoteProtocolError("QM2 lacks SA or Nonce", notify=NotifyType.PAYLOAD_MALFORMED)
        self._check_nonce(nonce)
        if len(sa_p.proposals) != 1 or len(sa_p.proposals[0].transforms) != 1:
            raise RemoteProtocolError(
                "QM2 must carry one transform", notify=NotifyType.BAD_PROPOSAL_SYNTAX
            )
        prop = sa_p.proposals[0]
        choice = parse_phase2_transform(prop.protocol_id, prop.transforms[0])
        if choice.transform not in q.cfg.transforms or choice.pfs_group != q.cfg.pfs_group:
            raise RemoteProtocolError(
                "QM2 chose what we did not offer", notify=NotifyType.NO_PROPOSAL_CHOSEN
            )
        if len(prop.spi) != 4:
            raise RemoteProtocolError("SPI must be 4 octets", notify=NotifyType.INVALID_SPI)
        ids = _find_all(payloads, IdPayload)
        if ids and (
            q.id_ci is None
            or ids[0].body != q.id_ci.encode_body()
            or q.id_cr is None
            or ids[1].body != q.id_cr.encode_body()
        ):
            raise RemoteProtocolError(
                "QM2 changed the IDs", notify=NotifyType.INVALID_ID_INFORMATION
            )
        ke = _find(payloads, KePayload)
        if q.kex is not None:
            if ke is None:
                raise RemoteProtocolError(
                    "QM2 without KE for PFS", notify=NotifyType.INVALID_KEY_INFORMATION
                )
            q.g_qm = _dh_secret(q.kex, ke.data)
        q.nr = nonce.data
        choice = _apply_responder_lifetime(choice, payloads)
        q.choice = choice
        q.peer_spi = prop.spi
        q.last_rcvd = data
        q.iv = next_iv
        if q.retx:
            q.retx.stop()
        # HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)
        h3 = self._hash3(sa, q)
        out, q.iv = self._protected(sa, ExchangeType.QUICK_MODE, q.msgid, [HashPayload(h3)], q.iv)
        q.last_sent = out
        self._out.append(self._dgram(sa, out))
        self._quick_done(sa, q, now)

    def _quick_r3(
        self,
        sa: _Phase1,
        q: _Quick,
        payloads: tuple[AnyPayload, ...],
        next_iv: bytes,
        data: bytes,
        now: float,
    ) -> None:
        h3 = self._hash3(sa, q)
        if (
            not payloads
            or not isinstance(payloads[0], HashPayload)
            or not authn.equal(payloads[0].data, h3)
        ):
            raise RemoteProtocolError(
                "HASH(3) mismatch", notify=NotifyType.INVALID_HASH_INFORMATION
            )
        q.last_rcvd = data
        q.iv = next_iv
        if q.retx:
            q.retx.stop()
        self._quick_done(sa, q, now)

    def _quick_done(self, sa: _Phase1, q: _Quick, now: float) -> None:
        """Derive KEYMAT for both SAs (RFC 2409 §5.5) and hand the pair to the driver."""
        assert q.cfg is not None and q.choice is not None and sa.prf_alg is not None
        q.done = True
        q.done_at = now
        sa.last_activity = now
        t = q.choice.transform
        proto = t.protocol
        elen, ilen = t.keymat_len()
        my_spi = q.my_spis[proto]

        def keymat(spi: bytes) -> bytes:
            assert sa.prf_alg is not None
            return kdf1.ikev1_quick_keymat(
                sa.prf_alg, sa.skeyid_d, int(proto), spi, q.ni, q.nr, elen + ilen, q.g_qm
            )

        k_in, k_out = keymat(my_spi), keymat(q.peer_spi)
        life_s = lifetime_min(q.choice.life_seconds, q.cfg.life_seconds) or q.cfg.life_seconds
        life_kb = lifetime_min(q.choice.life_kilobytes, q.cfg.life_kilobytes)
        initiator_rekeys = q.initiator
        soft = life_s - _margin(q.cfg.rekey_margin, life_s) if initiator_rekeys else None
        lifetime = Lifetime(
            soft_seconds=soft,
            hard_seconds=float(life_s),
            hard_bytes=life_kb * 1024 if life_kb else None,
        )
        encap = None
        if q.choice.udp_encap:
            encap_in: tuple[int, int] | None = (sa.peer[1], sa.local_port)
            encap_out: tuple[int, int] | None = (sa.local_port, sa.peer[1])
        else:
            encap_in = encap_out = encap
        assert q.local_ts is not None and q.remote_ts is not None
        common = {
            "protocol": proto,
            "mode": q.choice.mode,
            "encr_id": t.encr_id,
            "encr_key_bits": t.key_bits,
            "integ_id": t.integ_id,
            "esn": t.esn,
            "lifetime": lifetime,
            "replay_window": q.cfg.replay_window,
        }
        inbound = ChildSaParams(
            spi=_spi_int(my_spi),
            src=sa.peer[0],
            dst=sa.local_addr,
            encr_key=k_in[:elen],
            integ_key=k_in[elen:],
            encap=encap_in,
            ts_src=(q.remote_ts,),
            ts_dst=(q.local_ts,),
            **common,  # type: ignore[arg-type]
        )
        outbound = ChildSaParams(
            spi=_spi_int(q.peer_spi),
            src=sa.local_addr,
            dst=sa.peer[0],
            encr_key=k_out[:elen],
            integ_key=k_out[elen:],
            encap=encap_out,
            ts_src=(q.local_ts,),
            ts_dst=(q.remote_ts,),
            **common,  # type: ignore[arg-type]
        )
        pair = ChildSaPair(inbound, outbound, sa.ike_sa_id, 1, q.cfg.name, q.acquire_id)
        child = _Child(
            cfg=q.cfg,
            pair=pair,
            protocol=proto,
            initiator=q.initiator,
            established_at=now,
            rekey_at=now + soft if soft is not None else None,
            expire_at=now + life_s,
        )
        sa.children.append(child)
        old = q.rekey_of
        if old is not None:
            self._emit(ChildSaRekeyed(pair, old.in_spi, old.out_spi))
            self._delete_child(sa, old, now, "rekeyed", notify_peer=True)
        elif not q.initiator and (old := self._replaced_child(sa, child)) is not None:
            # the peer rekeyed: same selectors and config; report it as a rekey
            self._emit(ChildSaRekeyed(pair, old.in_spi, old.out_spi))
        else:
            self._emit(ChildSaEstablished(pair))

    def _replaced_child(self, sa: _Phase1, new: _Child) -> _Child | None:
        for ch in sa.children:
            if ch is new or ch.cfg is not new.cfg or ch.rekeying:
                continue
            if (
                ch.pair.inbound.ts_src == new.pair.inbound.ts_src
                and ch.pair.inbound.ts_dst == new.pair.inbound.ts_dst
            ):
                ch.rekeying = True  # the peer will delete it
                return ch
        return None

    def _find_child(
        self, conn: ConnectionConfig, local: TrafficSelector, remote: TrafficSelector
    ) -> ChildConfig:
        """The child whose selectors contain the proposed ones (IKEv1 has no narrowing)."""
        for c in conn.children:
            if _ts_within(local, c.local_ts) and _ts_within(remote, c.remote_ts):
                return c
        raise RemoteProtocolError(
            f"no child for {remote} === {local}", notify=NotifyType.INVALID_ID_INFORMATION
        )

    def _rekey_child(self, sa: _Phase1, ch: _Child, now: float) -> None:
        if ch.rekeying:
            return
        target = self._established_for(sa.conn) or sa
        if not target.established:
            return
        ch.rekeying = True
        self._start_quick(target, ch.cfg, now, None, rekey_of=ch)

    # ---------------------------------------------------------------- Informational

    def _send_info(self, sa: _Phase1, payloads: list[AnyPayload], now: float) -> int:
        """A protected Informational exchange (RFC 2409 §5.7):
        HDR*, HASH(1), N/D with HASH(1) = prf(SKEYID_a, M-ID | N/D)."""
        assert sa.prf_alg is not None
        msgid = _msgid()
        body = encode_payloads(payloads)
        h = self._hash1(sa, msgid, body)
        iv = kdf1.ikev1_phase2_iv(sa.prf_alg, self._info_base(sa), msgid, sa.block_size)
        data, _ = self._protected(
            sa, ExchangeType.INFORMATIONAL, msgid, [HashPayload(h), *payloads], iv
        )
        self._out.append(self._dgram(sa, data))
        return msgid

    def _info_base(self, sa: _Phase1) -> bytes:
        """The CBC block Informational IVs derive from (RFC 2409 Appendix B): the last one of
        phase 1, or during phase 1 the current phase-1 IV (as strongSwan does for errors)."""
        return sa.last_p1_block if sa.established else sa.iv

    def _send_plain_notify(
        self, msg: Message, addr: Address, local_port: int, local_addr: str, notify: int
    ) -> None:
        """An unprotected notify for a phase-1 failure before keys exist (RFC 2408 §5)."""
        h = msg.header
        rcky = h.rcookie if h.rcookie != ZERO_COOKIE else _rand(8)
        payloads: list[AnyPayload] = [
            NotifyPayload(notify, ProtocolId.PROTO_ISAKMP, h.icookie + rcky)
        ]
        data = encode_message(h.icookie, rcky, ExchangeType.INFORMATIONAL, 0, 0, payloads)
        self._out.append(Datagram(data, (local_addr, local_port), addr, local_port == NATT_PORT))

    def _info_received(self, sa: _Phase1, msg: Message, now: float) -> None:
        if not msg.header.encrypted:
            self._plain_info(sa, msg, now)
            return
        if sa.prf_alg is None or sa.cipher is None:
            raise RemoteProtocolError("encrypted Informational before keys exist")
        msgid = msg.header.message_id
        if msgid in sa.info_seen:
            return  # a retransmission (RFC 3706 §5.5 allows resending R-U-THERE)
        iv = kdf1.ikev1_phase2_iv(sa.prf_alg, self._info_base(sa), msgid, sa.block_size)
        payloads, _ = self._open(sa, msg, iv)
        if not payloads or not isinstance(payloads[0], HashPayload):
            raise RemoteProtocolError("Informational without HASH(1)")
        rest = b"".join(p.raw for p in payloads[1:])
        if not authn.equal(self._hash1(sa, msgid, rest), payloads[0].data):
            raise RemoteProtocolError("Informational HASH(1) mismatch")
        sa.info_seen.append(msgid)
        sa.last_activity = now
        if not sa.established:
            if sa.initiator:
                self._phase1_refused(sa, payloads[1:], now)
            return
        for p in payloads[1:]:
            if isinstance(p, DeletePayload):
                self._delete_received(sa, p, now)
                if sa.state == Phase1State.DEAD:
                    return
            elif isinstance(p, NotifyPayload):
                self._notify_received(sa, p, now)

    def _plain_info(self, sa: _Phase1, msg: Message, now: float) -> None:
        """Unauthenticated notifies are only believed while phase 1 is being set up by us
        (a refusal such as NO-PROPOSAL-CHOSEN); afterwards they are dropped."""
        if sa.established or not sa.initiator:
            raise RemoteProtocolError("unprotected Informational ignored")
        self._phase1_refused(sa, msg.payloads, now)

    def _phase1_refused(
        self, sa: _Phase1, payloads: tuple[AnyPayload, ...] | list[AnyPayload], now: float
    ) -> None:
        for p in payloads:
            if isinstance(p, NotifyPayload) and p.notify_type < 16384:
                sa.peer_replied = True
                reasons: dict[int, FailureReason] = {
                    NotifyType.NO_PROPOSAL_CHOSEN: FailureReason.NO_PROPOSAL_CHOSEN,
                    NotifyType.AUTHENTICATION_FAILED: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.INVALID_ID_INFORMATION: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.INVALID_SIGNATURE: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.INVALID_CERTIFICATE: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.INVALID_CERT_AUTHORITY: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.CERTIFICATE_UNAVAILABLE: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.INVALID_HASH_INFORMATION: FailureReason.AUTHENTICATION_FAILED,
                    NotifyType.INVALID_KEY_INFORMATION: FailureReason.INVALID_KE_PAYLOAD,
                    NotifyType.PAYLOAD_MALFORMED: FailureReason.INVALID_SYNTAX,
                }
                reason = reasons.get(p.notify_type, FailureReason.PROTOCOL_ERROR)
                self._fail(
                    sa,
                    reason,
                    f"peer sent notify {_notify_name(p.notify_type)}",
                    now,
                    p.notify_type,
                )
                return

    def _notify_received(self, sa: _Phase1, n: NotifyPayload, now: float) -> None:
        if n.notify_type == NotifyType.R_U_THERE:
            if n.spi != sa.ike_sa_id or len(n.data) != 4:
                raise RemoteProtocolError("R-U-THERE for another SA")
            # RFC 3706 §5.4: answer with the same sequence number
            self._send_info(
                sa,
                [
                    NotifyPayload(
                        NotifyType.R_U_THERE_ACK, ProtocolId.PROTO_ISAKMP, sa.ike_sa_id, n.data
                    )
                ],
                now,
            )
        elif n.notify_type == NotifyType.R_U_THERE_ACK:
            if len(n.data) == 4 and sa.dpd_waiting == int.from_bytes(n.data, "big"):
                sa.dpd_waiting = None
                if sa.dpd_retx:
                    sa.dpd_retx.stop()
        elif n.notify_type < 16384:
            # an error about one of our Quick Modes: the one whose SPI it names, else all
            pending = [q for q in sa.quick.values() if q.initiator and not q.done]
            named = [q for q in pending if len(n.spi) == 4 and n.spi in q.my_spis.values()]
            for q in named or pending:
                reason = (
                    FailureReason.NO_PROPOSAL_CHOSEN
                    if n.notify_type == NotifyType.NO_PROPOSAL_CHOSEN
                    else FailureReason.TS_UNACCEPTABLE
                    if n.notify_type == NotifyType.INVALID_ID_INFORMATION
                    else FailureReason.INVALID_KE_PAYLOAD
                    if n.notify_type == NotifyType.INVALID_KEY_INFORMATION
                    else FailureReason.PROTOCOL_ERROR
                )
                self._emit(
                    NegotiationFailed(
                        reason,
                        f"peer sent {_notify_name(n.notify_type)}",
                        sa.peer,
                        True,
                        sa.ike_sa_id,
                        q.acquire_id,
                        n.notify_type,
                    )
                )
                if q.rekey_of is not None:
                    q.rekey_of.rekeying = False
                del sa.quick[q.msgid]
        # CONNECTED (commit bit), RESPONDER-LIFETIME, INITIAL-CONTACT here: nothing to do

    def _delete_received(self, sa: _Phase1, d: DeletePayload, now: float) -> None:
        if d.protocol_id == ProtocolId.PROTO_ISAKMP:
            for spi in d.spis:
                target = self._sas.get(spi)
                if target is None or target.peer[0] != sa.peer[0]:
                    continue
                heir = next(
                    (
                        o
                        for o in self._sas.values()
                        if o is not target
                        and o.established
                        and o.conn is target.conn
                        and o.peer[0] == target.peer[0]
                    ),
                    None,
                )
                if heir is not None:
                    # the peer replaced its ISAKMP SA (phase-1 rekey): the IPsec SAs live on
                    heir.children.extend(target.children)
                    target.children.clear()
                    self._emit(IkeSaRekeyed(target.ike_sa_id, heir.ike_sa_id))
                    self._remove(target)
                else:
                    self._delete_phase1(target, now, "deleted by peer", notify_peer=False)
            return
        for spi in d.spis:
            value = _spi_int(spi)
            for ch in list(sa.children):
                if ch.protocol == d.protocol_id and ch.out_spi == value:
                    self._delete_child(sa, ch, now, "deleted by peer", notify_peer=False)

    def _delete_child(
        self, sa: _Phase1, ch: _Child, now: float, reason: str, notify_peer: bool
    ) -> None:
        if ch not in sa.children:
            return
        sa.children.remove(ch)
        if notify_peer and sa.established:
            spi = ch.in_spi.to_bytes(4, "big")
            self._send_info(sa, [DeletePayload(int(ch.protocol), (spi,), 4)], now)
        self._emit(ChildSaDeleted(ch.protocol, ch.in_spi, ch.out_spi, reason))

    def _delete_phase1(
        self, sa: _Phase1, now: float, reason: str, notify_peer: bool, quiet: bool = False
    ) -> None:
        for ch in list(sa.children):
            self._delete_child(sa, ch, now, reason, notify_peer)
        if notify_peer and sa.established:
            self._send_info(sa, [DeletePayload(ProtocolId.PROTO_ISAKMP, (sa.ike_sa_id,), 16)], now)
        if not quiet:
            self._emit(IkeSaDeleted(sa.ike_sa_id, reason))
        self._remove(sa)

    # ---------------------------------------------------------------- receive dispatch

    def _rekey_dict(self, sa: _Phase1) -> None:
        self._sas.pop(sa.icookie + ZERO_COOKIE, None)
        self._sas[sa.ike_sa_id] = sa

    def _receive(
        self, data: bytes, addr: Address, now: float, local_port: int, local_addr: str
    ) -> None:
        msg = decode_message(data)
        h = msg.header
        key = h.icookie + h.rcookie
        sa = self._sas.get(key)
        xchg = h.exchange_type
        if sa is None and h.rcookie != ZERO_COOKIE:
            # the responder's first answer to us: we know only our cookie
            sa = self._sas.get(h.icookie + ZERO_COOKIE)
            if sa is None or not sa.initiator:
                raise RemoteProtocolError("unknown cookies", notify=None)
        if sa is None:
            if xchg not in (ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE):
                raise RemoteProtocolError("no ISAKMP SA for these cookies")
            if any(s.icookie == h.icookie and not s.initiator for s in self._sas.values()):
                # a repeated first message: repeat our reply
                for s in self._sas.values():
                    if s.icookie == h.icookie and s.last_rcvd == data and s.last_sent:
                        self._out.append(self._dgram(s, s.last_sent))
                return
            local_addr = local_addr or self._local_addr_for(addr)
            self._responder_new(msg, addr, now, local_port, local_addr)
            return
        if data == sa.last_rcvd:
            # A repeat of the message we last answered: answer again. The initiator only does
            # so for AM2 (its AM3 is final and never answered); in Main Mode it retransmits on
            # its own schedule, and answering repeats there could ping-pong forever.
            if sa.last_sent and (not sa.initiator or (sa.aggressive and sa.established)):
                self._out.append(self._dgram(sa, sa.last_sent))
            return
        if not sa.peer_replied and sa.initiator:
            sa.peer_replied = True
            self._emit(PeerReplied(sa.icookie + h.rcookie, addr, sa.acquire_id))
        try:
            self._dispatch(sa, msg, data, addr, local_port, now)
        except RemoteProtocolError as e:
            self._phase1_error(sa, e, now)
            raise

    def _phase1_error(self, sa: _Phase1, e: RemoteProtocolError, now: float) -> None:
        """A fatal negotiation error: fail the attempt (authentication and proposal failures);
        other errors are counted drops and the exchange goes on (retransmissions)."""
        fatal: dict[int, FailureReason] = {
            NotifyType.NO_PROPOSAL_CHOSEN: FailureReason.NO_PROPOSAL_CHOSEN,
            NotifyType.AUTHENTICATION_FAILED: FailureReason.AUTHENTICATION_FAILED,
            NotifyType.INVALID_SIGNATURE: FailureReason.AUTHENTICATION_FAILED,
            NotifyType.INVALID_ID_INFORMATION: FailureReason.AUTHENTICATION_FAILED,
            NotifyType.INVALID_CERTIFICATE: FailureReason.AUTHENTICATION_FAILED,
            NotifyType.INVALID_CERT_AUTHORITY: FailureReason.AUTHENTICATION_FAILED,
            NotifyType.CERTIFICATE_UNAVAILABLE: FailureReason.AUTHENTICATION_FAILED,
            NotifyType.INVALID_KEY_INFORMATION: FailureReason.INVALID_KE_PAYLOAD,
        }
        if sa.established or e.notify not in fatal:
            return
        if sa.cipher is not None and sa.prf_alg is not None and not sa.initiator:
            # tell the initiator why, protected with the keys it already has
            notify = NotifyPayload(e.notify, ProtocolId.PROTO_ISAKMP, sa.ike_sa_id)
            self._send_info(sa, [notify], now)
        if sa.initiator:
            self._fail(sa, fatal[e.notify], str(e), now, e.notify)
        else:
            self._remove(sa)

    def _local_addr_for(self, addr: Address) -> str:
        for c in self.settings.connections:
            if c.remote_addr in ("%any", addr[0]):
                return c.local_addr
        return ""

    def _dispatch(
        self, sa: _Phase1, msg: Message, data: bytes, addr: Address, lport: int, now: float
    ) -> None:
        xchg = msg.header.exchange_type
        st = sa.state
        if xchg == ExchangeType.INFORMATIONAL:
            self._info_received(sa, msg, now)
            return
        if xchg == ExchangeType.QUICK_MODE:
            if not sa.established:
                raise RemoteProtocolError("Quick Mode before phase 1", notify=None)
            self._quick_received(sa, msg, data, now)
            return
        if xchg == ExchangeType.IDENTITY_PROTECTION and not sa.aggressive:
            if st == Phase1State.MM_I1 and not msg.header.encrypted:
                self._mm_i_got_mm2(sa, msg, now)
            elif st == Phase1State.MM_I2 and not msg.header.encrypted:
                self._mm_i_got_mm4(sa, msg, now)
            elif st == Phase1State.MM_I3 and msg.header.encrypted:
                self._mm_i_got_mm6(sa, msg, now)
            elif st == Phase1State.MM_R1 and not msg.header.encrypted:
                self._mm_r_got_mm3(sa, msg, now)
            elif st == Phase1State.MM_R2 and msg.header.encrypted:
                self._mm_r_got_mm5(sa, msg, addr, lport, now)
            else:
                raise RemoteProtocolError(f"unexpected Main Mode message in {st.value}")
            sa.last_rcvd = data if sa.state != Phase1State.DEAD else sa.last_rcvd
            return
        if xchg == ExchangeType.AGGRESSIVE and sa.aggressive:
            if st == Phase1State.AM_I1 and not msg.header.encrypted:
                self._am_i_got_am2(sa, msg, now)
                sa.last_rcvd = data
            elif st == Phase1State.AM_R1:
                self._am_r_got_am3(sa, msg, addr, lport, now)
            else:
                raise RemoteProtocolError(f"unexpected Aggressive Mode message in {st.value}")
            return
        raise RemoteProtocolError(
            f"exchange {xchg} not supported here", notify=NotifyType.UNSUPPORTED_EXCHANGE_TYPE
        )

    # ---------------------------------------------------------------- timers

    def _sa_timers(self, sa: _Phase1) -> list[float]:
        out: list[float] = []
        for r in (sa.retx, sa.dpd_retx):
            if r is not None and (t := r.get_timer()) is not None:
                out.append(t)
        for t2 in (
            sa.deadline,
            sa.rekey_at if not sa.rekeying else None,
            sa.expire_at,
            sa.keepalive_at,
        ):
            if t2 is not None:
                out.append(t2)
        if sa.established and self._dpd_enabled(sa) and sa.dpd_waiting is None:
            assert sa.conn.dpd_delay is not None
            out.append(sa.last_activity + sa.conn.dpd_delay)
        for q in sa.quick.values():
            if q.retx is not None and (t := q.retx.get_timer()) is not None:
                out.append(t)
            if q.done:
                out.append(q.done_at + self.settings.retransmit.failure_after)
        for ch in sa.children:
            if ch.rekey_at is not None and not ch.rekeying:
                out.append(ch.rekey_at)
            out.append(ch.expire_at)
        return out

    def _dpd_enabled(self, sa: _Phase1) -> bool:
        return sa.peer_dpd and sa.conn.dpd_delay is not None

    def _timers(self, sa: _Phase1, now: float) -> None:
        if sa.retx is not None:
            verdict = sa.retx.handle_timer(now)
            if verdict == "resend":
                self._out.append(self._dgram(sa, sa.retx.datagrams[0]))
            elif verdict == "failed":
                if sa.initiator:
                    self._fail(sa, FailureReason.PEER_SILENT, f"no answer in {sa.state.value}", now)
                else:
                    self._remove(sa)
                return
        if sa.deadline is not None and now >= sa.deadline and not sa.established:
            if sa.initiator:
                self._fail(sa, FailureReason.PEER_SILENT, "phase 1 timed out", now)
            else:
                self._remove(sa)
            return
        if not sa.established:
            return
        for q in list(sa.quick.values()):
            if q.done:
                if now >= q.done_at + self.settings.retransmit.failure_after:
                    del sa.quick[q.msgid]  # kept this long to answer retransmissions
                continue
            if q.retx is None:
                continue
            verdict = q.retx.handle_timer(now)
            if verdict == "resend":
                self._out.append(self._dgram(sa, q.retx.datagrams[0]))
            elif verdict == "failed":
                del sa.quick[q.msgid]
                if q.rekey_of is not None:
                    q.rekey_of.rekeying = False
                if q.initiator:
                    self._emit(
                        NegotiationFailed(
                            FailureReason.PEER_SILENT,
                            "Quick Mode unanswered",
                            sa.peer,
                            True,
                            sa.ike_sa_id,
                            q.acquire_id,
                        )
                    )
        if sa.keepalive_at is not None and now >= sa.keepalive_at:
            # NAT-T keepalive (RFC 3948 §2.3): one 0xFF octet, no marker, keeps the NAT open
            self._out.append(Datagram(b"\xff", (sa.local_addr, sa.local_port), sa.peer, False))
            assert self.settings.natt_keepalive is not None
            sa.keepalive_at = now + self.settings.natt_keepalive
        # DPD (RFC 3706 §5.3): probe when idle; the peer is dead when probes go unanswered
        if sa.dpd_retx is not None:
            verdict = sa.dpd_retx.handle_timer(now)
            if verdict == "resend":
                self._dpd_probe(sa, now, resend=True)
            elif verdict == "failed":
                self._delete_phase1(sa, now, "dead peer", notify_peer=False)
                return
        if (
            self._dpd_enabled(sa)
            and sa.dpd_waiting is None
            and sa.conn.dpd_delay is not None
            and now >= sa.last_activity + sa.conn.dpd_delay
        ):
            self._dpd_probe(sa, now, resend=False)
        for ch in list(sa.children):
            if now >= ch.expire_at:
                self._delete_child(sa, ch, now, "expired", notify_peer=True)
            elif ch.rekey_at is not None and now >= ch.rekey_at and not ch.rekeying:
                self._rekey_child(sa, ch, now)
        if sa.expire_at is not None and now >= sa.expire_at:
            self._delete_phase1(sa, now, "expired", notify_peer=True)
            return
        if sa.rekey_at is not None and now >= sa.rekey_at and not sa.rekeying:
            sa.rekeying = True
            self._start_phase1(sa.conn, now, None, rekey_of=sa)

    def _dpd_probe(self, sa: _Phase1, now: float, resend: bool) -> None:
        """R-U-THERE with a fresh sequence number each time (RFC 3706 §5.5, §7)."""
        if sa.dpd_seq == 0:
            sa.dpd_seq = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF or 1
        else:
            sa.dpd_seq = (sa.dpd_seq + 1) & 0xFFFFFFFF
        sa.dpd_waiting = sa.dpd_seq
        n = NotifyPayload(
            NotifyType.R_U_THERE,
            ProtocolId.PROTO_ISAKMP,
            sa.ike_sa_id,
            struct.pack("!I", sa.dpd_seq),
        )
        self._send_info(sa, [n], now)
        if not resend:
            sa.dpd_retx = Retransmitter(self.settings.retransmit)
            sa.dpd_retx.start((b"",), now)


def msg_bytes(msg: Message) -> bytes:
    """The wire form of a decoded plaintext message (header and raw payloads)."""
    if msg.header.encrypted:
        return msg.header.encode() + msg.ciphertext
    return msg.header.encode() + b"".join(p.raw for p in msg.payloads)


def _find(payloads: tuple[AnyPayload, ...] | list[AnyPayload], cls: type[_T]) -> _T | None:
    for p in payloads:
        if isinstance(p, cls):
            return p
    return None


def _find_all(payloads: tuple[AnyPayload, ...] | list[AnyPayload], cls: type[_T]) -> list[_T]:
    return [p for p in payloads if isinstance(p, cls)]


def _ts_within(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    if inner.start_addr.version != outer.start_addr.version:
        return False
    if not (outer.start_addr <= inner.start_addr and inner.end_addr <= outer.end_addr):  # type: ignore[operator]
        return False
    if outer.ip_protocol and inner.ip_protocol != outer.ip_protocol:
        return False
    return outer.start_port <= inner.start_port and inner.end_port <= outer.end_port


def _margin(configured: float, lifetime: float) -> float:
    """The rekey margin, shrunk to a tenth of the lifetime when the negotiated lifetime is
    shorter than the configured margin (a peer's shorter lifetime must not cause a rekey loop)."""
    return configured if configured < lifetime / 2 else lifetime / 10


def _apply_responder_lifetime(
    choice: Phase2Choice, payloads: tuple[AnyPayload, ...] | list[AnyPayload]
) -> Phase2Choice:
    """Adopt the shorter lifetimes of a RESPONDER-LIFETIME notify (RFC 2407 §4.6.3.1)."""
    for p in payloads:
        if not (isinstance(p, NotifyPayload) and p.notify_type == NotifyType.RESPONDER_LIFETIME):
            continue
        life_type = None
        seconds, kilobytes = choice.life_seconds, choice.life_kilobytes
        for a in decode_attributes(p.data):
            if a.type == IpsecAttr.SA_LIFE_TYPE:
                life_type = a.as_int()
            elif a.type == IpsecAttr.SA_LIFE_DURATION and life_type == LifeType.SECONDS:
                seconds = lifetime_min(seconds, a.as_int())
            elif a.type == IpsecAttr.SA_LIFE_DURATION and life_type == LifeType.KILOBYTES:
                kilobytes = lifetime_min(kilobytes, a.as_int())
        choice = dataclasses.replace(choice, life_seconds=seconds, life_kilobytes=kilobytes)
    return choice


def _dh_secret(kex: KeyExchange, peer_public: bytes) -> bytes:
    """g^xy; a bad public value is INVALID-KEY-INFORMATION in ISAKMP (the registry raises
    with the IKEv2 notify number)."""
    try:
        return kex.shared_secret(peer_public)
    except RemoteProtocolError as e:
        raise RemoteProtocolError(
            f"bad KE payload: {e}", notify=NotifyType.INVALID_KEY_INFORMATION
        ) from None


def _notify_name(n: int) -> str:
    try:
        return NotifyType(n).name
    except ValueError:
        return str(n)


__all__ = ["Datagram", "IsakmpService", "Phase1State"]
