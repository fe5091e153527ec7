"""The IPsec Policy Agent: classification, the per-SA-selector state machine, inbound checks.

Policy-spec §2.3 (outbound lookup), §3 (states NO_SA, ACQUIRING, NEGOTIATING, ESTABLISHED,
SOFT, FAILED; events E1-E11), §4 (inbound). Sans-I/O: every method takes ``now``; outputs
are queued and drained by the node:

* ``next_request()`` → :class:`Acquire` / :class:`CancelAcquire` / :class:`DeleteChildSa`
  for IKE (either version);
* ``packets_to_send()`` → :class:`Transmit` (clear, or protected by the driver);
* ``local_icmp_to_send()`` → :class:`LocalIcmp` (RFC 4301 §5.1.1, when enabled);
* ``get_timer()`` / ``handle_timer(now)`` for fallback, soft-SA and hold-down timers.

IKE answers through ``handle_event`` with the events of :mod:`reference_impl.events`
(``PeerReplied`` = E4, ``ChildSaEstablished`` = E8, ``NegotiationFailed`` = E6, ...); ICMP
errors about our IKE datagrams arrive through ``handle_icmp_error`` (E7).

Node wiring rule (the E5 tie rule): when the agent's timer and an IKE retransmission timer are
due at the same instant, run ``agent.handle_timer`` first and deliver the requests it queued
(``CancelAcquire``) to IKE before running IKE's timer, so a fallback due at the same instant as
a retransmission sends no extra IKE packet.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from reference_impl.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    Event,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PeerReplied,
)
from reference_impl.policy.addresses import AddressRange, CompileEnv, ip_from_int
from reference_impl.policy.audit import AuditLog, Counters
from reference_impl.policy.compiler import compile_policy
from reference_impl.policy.packet import TCP_FIN, TCP_RST, PacketMeta, parse_ip_packet
from reference_impl.policy.profiles import HoldPolicy, Shunt
from reference_impl.policy.requests import (
    Acquire,
    CancelAcquire,
    ChildSettings,
    DeleteChildSa,
    IcmpHint,
    IkeRequest,
    LocalIcmp,
    OutboundSad,
    ResponderPolicy,
    Transmit,
    Verdict,
)
from reference_impl.policy.resolved import Action, FilterAction, NdMode, Policy
from reference_impl.policy.spd import CompiledPolicy, Direction, SaSelector, SpdEntry
from reference_impl.policy.validate import (
    PolicyValidationError,
    load_policy_file,
    load_policy_text,
)
from reference_impl.sa import ChildSaPair, Mode, TrafficSelector


class SaState(StrEnum):
    """Policy-spec §3.1."""

    NO_SA = "NO_SA"
    ACQUIRING = "ACQUIRING"
    NEGOTIATING = "NEGOTIATING"
    ESTABLISHED = "ESTABLISHED"
    SOFT = "SOFT"
    FAILED = "FAILED"


FAILURE_CATEGORY = {
    FailureReason.PEER_SILENT: "peer_silent",
    FailureReason.NO_PROPOSAL_CHOSEN: "proposal",
    FailureReason.INVALID_KE_PAYLOAD: "proposal",
    FailureReason.AUTHENTICATION_FAILED: "auth",
    FailureReason.TS_UNACCEPTABLE: "selectors",
    FailureReason.INVALID_SYNTAX: "protocol",
    FailureReason.PROTOCOL_ERROR: "protocol",
    FailureReason.LOCAL_ERROR: "local",
}

FLOW_IDLE_S = 60.0
"""Idle timeout of non-TCP flows (policy-spec §4.4, our choice)."""
TCP_FLOW_IDLE_S = 7200.0
"""TCP flows "live with the connection": long idle timeout, shortened by FIN/RST."""
TCP_CLOSING_IDLE_S = 10.0


class Flow:
    """One 5-tuple (MS-IKEE §3.7 flow state): ``secure`` is sticky (never downgrade)."""

    __slots__ = ("entry", "gen", "guarantee_encryption", "idle_s", "last_seen", "sa_sel", "secure")

    def __init__(self, now: float, idle_s: float) -> None:
        self.secure = False
        self.guarantee_encryption = False
        self.last_seen = now
        self.idle_s = idle_s
        self.gen = -1
        self.entry: SpdEntry | None = None
        self.sa_sel: SaSelector | None = None


class _Held(NamedTuple):
    data: bytes
    meta: PacketMeta
    flow: Flow


class Machine:
    """The §3 state machine of one SA selector."""

    __slots__ = (
        "acquire_id",
        "acquire_ids",
        "alive",
        "deadlines",
        "entry",
        "established_at",
        "failure_replied",
        "hold",
        "ike_active",
        "initiator_spis",
        "pair",
        "params",
        "peer_replied",
        "sa_sel",
        "soft_last_used",
        "soft_since",
        "started_at",
        "state",
    )

    def __init__(self, sa_sel: SaSelector, entry: SpdEntry, params: FilterAction) -> None:
        self.sa_sel = sa_sel
        self.entry = entry
        self.params = params
        self.state = SaState.NO_SA
        self.acquire_id: int | None = None
        self.acquire_ids: list[int] = []
        self.initiator_spis: list[bytes] = []
        self.ike_active = False
        self.peer_replied = False
        self.hold: deque[_Held] = deque()
        self.deadlines: dict[str, float] = {}
        self.soft_since = 0.0
        self.soft_last_used = 0.0
        self.pair: ChildSaPair | None = None
        self.established_at = 0.0
        self.failure_replied = False
        self.started_at = 0.0
        self.alive = True

    @property
    def out_spi(self) -> int:
        assert self.pair is not None
        return self.pair.outbound.spi

    def to_json(self) -> dict[str, object]:
        return {
            "sa_selector": str(self.sa_sel),
            "rule": self.entry.rule_name,
            "state": self.state.value,
            "acquire_id": self.acquire_id,
            "peer_replied": self.peer_replied,
            "held": len(self.hold),
            "timers": dict(self.deadlines),
            "outbound_spi": self.pair.outbound.spi if self.pair is not None else None,
        }


_DRR_ACTION_NAME = "<default response rule>"


class PolicyAgent:
    """The policy agent of one node. See the module docstring for the I/O contract."""

    def __init__(
        self,
        driver: OutboundSad,
        env: CompileEnv | None = None,
        *,
        audit_capacity: int = 10000,
        flow_capacity: int = 65536,
    ) -> None:
        self.driver = driver
        self.env = env or CompileEnv()
        self.audit = AuditLog(audit_capacity)
        self.counters = Counters()
        self._compiled: CompiledPolicy | None = None
        self._gen = 0
        self._machines: dict[SaSelector, Machine] = {}
        self._by_acquire: dict[int, Machine] = {}
        self._by_out_spi: dict[int, Machine] = {}
        self._by_in_spi: dict[int, Machine] = {}
        self._rekeyed_pairs: dict[int, ChildSaPair] = {}
        """Pairs made by rekeys, by outbound SPI: after a simultaneous rekey (RFC 7296
        §2.8.1) the machine keeps the survivor when the redundant pair it last bound goes."""
        self._by_initiator_spi: dict[bytes, Machine] = {}
        self._flows: dict[tuple[int, ...], Flow] = {}
        self._flow_capacity = flow_capacity
        self._dynamic: list[SpdEntry] = []
        self._timers: list[tuple[float, int, Machine, str]] = []
        self._seq = 0
        self._requests: deque[IkeRequest] = deque()
        self._tx: list[Transmit] = []
        self._icmp_out: list[LocalIcmp] = []
        self._icmp_last: dict[tuple[int, int], float] = {}
        self._next_acquire_id = 1

    # ==================================================================== policy (§2.1, E11)

    @property
    def policy(self) -> CompiledPolicy | None:
        """The policy in force (``None`` before the first successful load)."""
        return self._compiled

    def load_policy(
        self, source: Policy | CompiledPolicy | str | Path, now: float
    ) -> CompiledPolicy:
        """Validate, compile and atomically install a policy (policy-spec §2.1 C6, E11).

        ``source`` is a file path, a validated :class:`Policy` or a compiled one. On any
        validation error nothing changes: the policy in force stays (V1-V9, §1.3) and the
        error is audited and raised.
        """
        try:
            if isinstance(source, str | Path):
                source = load_policy_file(source)
            compiled = (
                source if isinstance(source, CompiledPolicy) else compile_policy(source, self.env)
            )
        except PolicyValidationError as exc:
            self._rejected(exc, now)
            raise
        return self._install(compiled, now)

    def load_policy_text(self, text: str, now: float, file: str = "<policy>") -> CompiledPolicy:
        try:
            compiled = compile_policy(load_policy_text(text, file), self.env)
        except PolicyValidationError as exc:
            self._rejected(exc, now)
            raise
        return self._install(compiled, now)

    def _rejected(self, exc: PolicyValidationError, now: float) -> None:
        self.counters.inc("policy.rejected")
        self.audit.record(
            now,
            "policy_rejected",
            issues=[str(i) for i in exc.issues],
            rules=sorted({i.rule for i in exc.issues}),
            in_force=self._compiled.policy.name if self._compiled is not None else None,
        )

    def _install(self, compiled: CompiledPolicy, now: float) -> CompiledPolicy:
        old = self._compiled
        self._compiled = compiled  # one assignment: the atomic swap (make-before-break)
        self._gen += 1
        self.counters.inc("policy.loaded")
        self.audit.record(
            now,
            "policy_loaded",
            name=compiled.policy.name,
            source=compiled.policy.source,
            entries=len(compiled.spd.entries()),
            warnings=list(compiled.warnings),
        )
        if old is not None:
            self._reconcile(compiled, now)
        return compiled

    def _reconcile(self, compiled: CompiledPolicy, now: float) -> None:
        """E11: state machines whose SPD entry changed or vanished (per ``on_policy_change``)."""
        keep = compiled.policy.on_policy_change == "keep_sas"
        spd = compiled.spd
        for mach in list(self._machines.values()):
            if mach.entry.origin == "dynamic":
                continue
            sel = mach.sa_sel
            direction = mach.entry.direction
            new = spd.lookup(
                direction,
                sel.version,
                sel.local_lo,
                sel.remote_lo,
                sel.proto,
                sel.lport_lo,
                sel.rport_lo,
            )
            if (
                new.action is Action.PROTECT
                and new.params == mach.params
                and new.sa_selector(sel.local_lo, sel.remote_lo) == sel
                and (new.rule.auth_methods if new.rule else ())
                == (mach.entry.rule.auth_methods if mach.entry.rule else ())
            ):
                mach.entry = new
                continue
            if keep and mach.state is SaState.ESTABLISHED:
                self.audit.record(
                    now, "policy_change", str(sel), action="kept", state="ESTABLISHED"
                )
                continue
            self._destroy_for_policy(mach, now)

    def _destroy_for_policy(self, mach: Machine, now: float) -> None:
        n = len(mach.hold)
        if n:
            self.counters.inc("drops.policy_change", n)
        state = mach.state
        if state is SaState.ESTABLISHED and mach.pair is not None:
            self._requests.append(
                DeleteChildSa(
                    mach.pair.ike_sa_id,
                    mach.pair.inbound.spi,
                    mach.pair.outbound.spi,
                    "policy change",
                )
            )
        elif mach.ike_active and mach.acquire_id is not None:
            self._requests.append(CancelAcquire(mach.acquire_id, "policy change"))
        self._destroy(mach)
        self.audit.record(
            now, "policy_change", str(mach.sa_sel), action="deleted", state=state.value, discarded=n
        )

    # ======================================================================== outbound (§2.3)

    def outbound(self, packet: bytes, now: float, meta: PacketMeta | None = None) -> Verdict:
        """Classify one outbound packet and act on it (O1-O4); output via the queues."""
        m = meta if meta is not None else parse_ip_packet(packet)
        if m is None:
            self.counters.inc("drops.malformed")
            return Verdict.DISCARDED
        compiled = self._compiled
        if compiled is None:
            self._tx.append(Transmit(packet, False))
            return Verdict.BYPASS
        spd = compiled.spd
        counters = self.counters
        if m.proto == 17 and spd.is_ike(m.version, m.src, 17, m.sport):  # O1
            self._tx.append(Transmit(packet, False))
            counters["bypass.ike"] += 1
            return Verdict.IKE
        flow = self._flow((m.version, m.src, m.dst, m.proto, m.sport, m.dport), m, now)  # O2
        entry = flow.entry
        if flow.gen != self._gen or entry is None:  # O3
            entry = spd.lookup(
                Direction.OUT, m.version, m.src, m.dst, m.proto, m.sport, m.dport, self._dynamic
            )
            flow.entry = entry
            flow.gen = self._gen
            flow.sa_sel = (
                entry.sa_selector(m.src, m.dst) if entry.action is Action.PROTECT else None
            )
        action = entry.action
        if action is Action.BYPASS:
            self._tx.append(Transmit(packet, False))
            counters["bypass.out"] += 1
            return Verdict.BYPASS
        if action is Action.DISCARD:
            counters["drops.policy"] += 1
            if (sup := self.audit.allow(now, "discard", entry.position)) is not None:
                self._audit_packet(now, "discard", sup, m, direction="out", rule=entry.rule_name)
            if entry.params is not None and entry.params.send_icmp_on_discard:
                self._local_icmp(packet, m, prohibited=True, now=now)
            return Verdict.DISCARDED
        sel = flow.sa_sel
        assert sel is not None and entry.params is not None
        mach = self._machines.get(sel)
        if mach is not None:
            state = mach.state
            if state is SaState.ESTABLISHED:
                data = self.driver.protect(mach.out_spi, packet, now)
                if data is not None:
                    flow.secure = True
                    self._tx.append(Transmit(data, True, mach.out_spi))
                    counters["protected.out"] += 1
                    return Verdict.PROTECTED
                self._sa_lost(mach, now, "driver has no usable outbound SA")
                if entry.origin == "dynamic":  # its filter went with the SA: classify again
                    return self.outbound(packet, now, m)
                mach = None
            elif state is SaState.SOFT:
                mach.soft_last_used = now
                if not flow.secure:
                    self._tx.append(Transmit(packet, False))
                    counters["bypass.soft_sa"] += 1
                    return Verdict.BYPASS
                return self._never_downgrade(m, mach, now)
            elif state is SaState.FAILED:
                counters["drops.holddown"] += 1
                if (sup := self.audit.allow(now, "discard", sel)) is not None:
                    self._audit_packet(now, "discard", sup, m, direction="out", reason="failed")
                if mach.params.send_icmp_on_discard:
                    self._local_icmp(packet, m, prohibited=mach.failure_replied, now=now)
                return Verdict.DISCARDED
            else:
                return self._shunt(mach, packet, m, flow, now)  # E2
        mach = self._start(sel, entry, entry.params, m, now)  # E1
        verdict = self._shunt(mach, packet, m, flow, now)
        if mach.params.allow_fallback and mach.params.fallback_after_s <= 0:
            self._fallback(mach, "peer_silent", now)  # fallback after 0 s: "parallel" (ND)
            if verdict is Verdict.HELD:
                verdict = Verdict.BYPASS if not flow.secure else Verdict.DISCARDED
        return verdict

    def _audit_packet(
        self, now: float, kind: str, suppressed: int, m: PacketMeta, **fields: object
    ) -> None:
        """A per-packet audit record, formatted only once the rate limit allowed it."""
        if suppressed:
            fields["suppressed"] = suppressed
        self.audit.record(now, kind, m.describe(), **fields)

    def _never_downgrade(self, m: PacketMeta, mach: Machine, now: float) -> Verdict:
        self.counters["drops.never_downgrade"] += 1
        if (sup := self.audit.allow(now, "discard", ("nd", mach.sa_sel))) is not None:
            self._audit_packet(now, "discard", sup, m, direction="out", reason="flow_secure")
        return Verdict.DISCARDED

    def _shunt(
        self, mach: Machine, packet: bytes, m: PacketMeta, flow: Flow, now: float
    ) -> Verdict:
        """E2: ``negotiation_shunt`` for a packet while ACQUIRING/NEGOTIATING."""
        p = mach.params
        shunt = p.negotiation_shunt
        if shunt is Shunt.PASS and flow.secure:
            shunt = Shunt.HOLD  # §2.3: a secure flow is handled as allow_fallback=false
        if shunt is Shunt.PASS:
            self._tx.append(Transmit(packet, False))
            self.counters.inc("bypass.negotiating")
            return Verdict.BYPASS
        if shunt is Shunt.DROP:
            self.counters.inc("drops.negotiating")
            return Verdict.DISCARDED
        q = mach.hold
        if len(q) >= p.hold_length:
            self.counters.inc("drops.hold_overflow")
            if p.hold_policy is HoldPolicy.KEEP_FIRST:
                return Verdict.DISCARDED
            q.popleft()
        q.append(_Held(packet, m, flow))
        return Verdict.HELD

    def _start(
        self, sel: SaSelector, entry: SpdEntry, params: FilterAction, m: PacketMeta, now: float
    ) -> Machine:
        """E1: first packet in NO_SA → ACQUIRE, fallback timer, → ACQUIRING."""
        assert self._compiled is not None and entry.rule is not None
        policy = self._compiled.policy
        mach = Machine(sel, entry, params)
        self._machines[sel] = mach
        acquire_id = self._next_acquire_id
        self._next_acquire_id += 1
        mach.acquire_id = acquire_id
        mach.started_at = now
        mach.ike_active = True
        mach.state = SaState.ACQUIRING
        self._by_acquire[acquire_id] = mach
        mach.acquire_ids.append(acquire_id)
        ike = policy.ike
        local_pkt, remote_pkt = _packet_selectors(m)
        acq = Acquire(
            acquire_id=acquire_id,
            rule=entry.rule.name,
            sa_selector=sel,
            sa_selectors=sel.traffic_selectors(),
            packet_selectors=(local_pkt, remote_pkt),
            local=(sel.local_address, ike.local_port),
            peer=(sel.peer_address, ike.remote_port),
            ike_version=ike.version,
            ike=ike,
            child=ChildSettings(
                Mode.TUNNEL if sel.is_tunnel else Mode.TRANSPORT,
                params.security_methods,
                params.session_key_pfs,
                params.guarantee_encryption,
            ),
            auth_methods=entry.rule.auth_methods,
            auth_set=entry.rule.auth_set or "",
            time=now,
        )
        self._requests.append(acq)
        self.counters.inc("acquires")
        self.audit.record(
            now,
            "acquire",
            str(sel),
            acquire_id=acquire_id,
            rule=entry.rule.name,
            peer=f"{acq.peer[0]}:{acq.peer[1]}",
            ike_version=ike.version,
            packet=m.describe(),
        )
        if params.allow_fallback and params.fallback_after_s > 0:
            self._set_timer(mach, "fallback", now + params.fallback_after_s)
        return mach

    # ========================================================================= IKE events

    def handle_event(self, event: Event, now: float) -> None:
        """An event from IKE (either version)."""
        if isinstance(event, PeerReplied):
            self._peer_replied(event, now)
        elif isinstance(event, ChildSaEstablished):
            self._child_sa(event.pair, now)
        elif isinstance(event, NegotiationFailed):
            self._negotiation_failed(event, now)
        elif isinstance(event, ChildSaRekeyed):
            mach = self._by_out_spi.get(event.old_outbound_spi)
            if mach is not None and mach.alive:
                mach.pair = event.pair
                self._rekeyed_pairs[event.pair.outbound.spi] = event.pair
                self._by_out_spi[event.pair.outbound.spi] = mach
                self._by_in_spi[event.pair.inbound.spi] = mach
                self.audit.record(
                    now,
                    "child_sa_rekeyed",
                    str(mach.sa_sel),
                    old_outbound_spi=f"{event.old_outbound_spi:08x}",
                    outbound_spi=f"{event.pair.outbound.spi:08x}",
                )
        elif isinstance(event, ChildSaDeleted):
            self._child_sa_deleted(event, now)
        elif isinstance(event, IkeSaEstablished):
            self.audit.record(
                now,
                "ike_sa_established",
                peer=f"{event.peer[0]}:{event.peer[1]}",
                initiator=event.initiator,
                ike_version=event.ike_version,
                algorithms=event.algorithms,
            )
        elif isinstance(event, IkeSaDeleted):
            self.audit.record(
                now, "ike_sa_deleted", ike_sa_id=event.ike_sa_id.hex(), reason=event.reason
            )

    def note_initiator_spi(self, acquire_id: int, spi: bytes) -> None:
        """Tell the agent the initiator SPI/cookie IKE chose for an ACQUIRE (for E7 matching)."""
        mach = self._by_acquire.get(acquire_id)
        if mach is not None and mach.alive and len(spi) >= 8:
            self._remember_spi(mach, bytes(spi[:8]))

    def _remember_spi(self, mach: Machine, spi: bytes) -> None:
        if self._by_initiator_spi.get(spi) is not mach:
            self._by_initiator_spi[spi] = mach
            mach.initiator_spis.append(spi)

    def _current(self, acquire_id: int | None) -> Machine | None:
        if acquire_id is None:
            return None
        mach = self._by_acquire.get(acquire_id)
        return mach if mach is not None and mach.alive else None

    def _peer_replied(self, ev: PeerReplied, now: float) -> None:
        """E4: any IKE reply carrying our SPI/cookie: no fallback for this attempt."""
        mach = self._current(ev.acquire_id)
        if mach is None and len(ev.ike_sa_id) >= 8:
            mach = self._by_initiator_spi.get(ev.ike_sa_id[:8])
        if mach is None or not mach.alive:
            return
        if len(ev.ike_sa_id) >= 8:
            self._remember_spi(mach, ev.ike_sa_id[:8])
        if ev.acquire_id is not None and ev.acquire_id != mach.acquire_id:
            return  # a reply to an earlier attempt
        mach.peer_replied = True
        if mach.state is SaState.ACQUIRING:
            mach.state = SaState.NEGOTIATING
            mach.deadlines.pop("fallback", None)
            self.audit.record(
                now,
                "peer_replied",
                str(mach.sa_sel),
                acquire_id=mach.acquire_id,
                peer=f"{ev.peer[0]}:{ev.peer[1]}",
            )

    def _negotiation_failed(self, ev: NegotiationFailed, now: float) -> None:
        """E6."""
        category = FAILURE_CATEGORY.get(ev.reason, "protocol")
        mach = self._current(ev.acquire_id)
        if mach is None or ev.acquire_id != mach.acquire_id:
            self.audit.record(
                now,
                "negotiation_failed",
                peer=f"{ev.peer[0]}:{ev.peer[1]}",
                reason=ev.reason.value,
                category=category,
                detail=ev.detail,
                acquire_id=ev.acquire_id,
                state=None,
            )
            return
        mach.ike_active = False
        replied = ev.peer_replied or mach.peer_replied
        state = mach.state
        self.audit.record(
            now,
            "negotiation_failed",
            str(mach.sa_sel),
            reason=ev.reason.value,
            category=category,
            detail=ev.detail,
            peer_replied=replied,
            acquire_id=mach.acquire_id,
            state=state.value,
            notify=ev.notify,
        )
        if state not in (SaState.ACQUIRING, SaState.NEGOTIATING):
            return  # SOFT (IKE continued after fallback) or already ESTABLISHED/FAILED: no change
        p = mach.params
        if p.allow_fallback:
            if not replied and ev.reason is FailureReason.PEER_SILENT:
                self._fallback(mach, "peer_silent", now)
                return
            if p.on_negotiation_failure:
                self._fallback(mach, "negotiation_failed", now)
                return
        self._fail(mach, category, replied, now)

    def _fail(self, mach: Machine, category: str, replied: bool, now: float) -> None:
        """E6 otherwise: discard the hold queue, optional ICMP, hold-down, → FAILED."""
        n = len(mach.hold)
        if n:
            self.counters.inc("drops.failed", n)
        if mach.params.send_icmp_on_discard:
            for held in mach.hold:
                self._local_icmp(held.data, held.meta, prohibited=replied, now=now)
        mach.hold.clear()
        mach.deadlines.clear()
        mach.state = SaState.FAILED
        mach.failure_replied = replied
        self.counters.inc("failures")
        self._set_timer(mach, "holddown", now + mach.params.failure_holddown_s)
        self.audit.record(
            now,
            "failed",
            str(mach.sa_sel),
            category=category,
            peer_replied=replied,
            discarded=n,
            holddown_until=now + mach.params.failure_holddown_s,
        )

    def _fallback(self, mach: Machine, reason: str, now: float) -> None:
        """E5: install the soft SA, flush the hold queue in clear, stop IKE, → SOFT."""
        p = mach.params
        was = mach.state
        mach.state = SaState.SOFT
        mach.soft_since = now
        mach.soft_last_used = now
        mach.deadlines.clear()
        if p.soft_sa_idle_s is not None:
            self._set_timer(mach, "soft_idle", now + p.soft_sa_idle_s)
        if p.soft_sa_max_lifetime_s is not None:
            self._set_timer(mach, "soft_max", now + p.soft_sa_max_lifetime_s)
        if mach.ike_active and not p.continue_ike_after_fallback and mach.acquire_id is not None:
            self._requests.append(CancelAcquire(mach.acquire_id, f"fallback ({reason})"))
            mach.ike_active = False
        released = dropped = 0
        for held in mach.hold:
            if held.flow.secure:
                dropped += 1
            else:
                self._tx.append(Transmit(held.data, False))
                released += 1
        if dropped:
            self.counters.inc("drops.never_downgrade", dropped)
        mach.hold.clear()
        self.counters.inc("fallbacks")
        self.counters.inc(f"fallbacks.{reason}")
        self.audit.record(
            now,
            "fallback",
            str(mach.sa_sel),
            reason=reason,
            acquire_id=mach.acquire_id,
            from_state=was.value,
            after_s=now - mach.started_at,
            released=released,
            ike_continues=mach.ike_active,
        )

    def _child_sa(self, pair: ChildSaPair, now: float) -> None:
        """E8: an SA pair from IKE (our ACQUIRE, or peer-initiated)."""
        mach = self._current(pair.acquire_id)
        if mach is None:
            mach = self._peer_initiated(pair, now)
        if mach is None:
            self.counters.inc("child_sa.unbound")
            self.audit.record(
                now,
                "child_sa_unbound",
                outbound_spi=f"{pair.outbound.spi:08x}",
                ts_local=[str(t) for t in pair.outbound.ts_src],
                ts_remote=[str(t) for t in pair.outbound.ts_dst],
            )
            return
        was = mach.state
        if mach.ike_active and mach.acquire_id is not None and pair.acquire_id != mach.acquire_id:
            self._requests.append(CancelAcquire(mach.acquire_id, "peer-initiated SA installed"))
        mach.deadlines.clear()
        mach.ike_active = False
        mach.state = SaState.ESTABLISHED
        mach.pair = pair
        mach.established_at = now
        self._machines[mach.sa_sel] = mach
        self._by_out_spi[pair.outbound.spi] = mach
        self._by_in_spi[pair.inbound.spi] = mach
        spi = pair.outbound.spi
        flushed = lost = 0
        for held in mach.hold:
            data = self.driver.protect(spi, held.data, now)
            if data is None:
                lost += 1
                continue
            held.flow.secure = True
            self._tx.append(Transmit(data, True, spi))
            flushed += 1
        if lost:
            self.counters.inc("drops.sa_unavailable", lost)
        mach.hold.clear()
        self.counters.inc("established")
        self.audit.record(
            now,
            "established",
            str(mach.sa_sel),
            from_state=was.value,
            acquire_id=pair.acquire_id,
            outbound_spi=f"{pair.outbound.spi:08x}",
            inbound_spi=f"{pair.inbound.spi:08x}",
            ike_version=pair.ike_version,
            released=flushed,
            soft_sa_removed=was is SaState.SOFT,
        )

    def _child_sa_deleted(self, ev: ChildSaDeleted, now: float) -> None:
        mach = self._by_out_spi.pop(ev.outbound_spi, None)
        self._by_in_spi.pop(ev.inbound_spi, None)
        self._rekeyed_pairs.pop(ev.outbound_spi, None)
        self._drop_dynamic(ev.outbound_spi)
        if mach is None or not mach.alive:
            return
        if mach.pair is not None and mach.pair.outbound.spi == ev.outbound_spi:
            other = [
                p for spi, p in self._rekeyed_pairs.items() if self._by_out_spi.get(spi) is mach
            ]
            if other:  # a redundant pair of a simultaneous rekey: the survivor carries on
                mach.pair = other[-1]
                return
            self._sa_lost(mach, now, ev.reason)

    def _sa_lost(self, mach: Machine, now: float, reason: str) -> None:
        """§3.2 "SA loss → NO_SA; flows already secure stay secure"."""
        if mach.pair is not None:
            self._drop_dynamic(mach.pair.outbound.spi)
        self._destroy(mach)
        self.counters.inc("sa_lost")
        self.audit.record(now, "sa_lost", str(mach.sa_sel), reason=reason)

    def _peer_initiated(self, pair: ChildSaPair, now: float) -> Machine | None:
        """E8 for an SA IKE negotiated as responder: bind it to a selector (§4.5)."""
        compiled = self._compiled
        if compiled is None:
            return None
        out = pair.outbound
        lts = out.ts_src[0] if out.ts_src else TrafficSelector.from_network(out.src)
        rts = out.ts_dst[0] if out.ts_dst else TrafficSelector.from_network(out.dst)
        v = lts.start_addr.version
        local, remote = int(lts.start_addr), int(rts.start_addr)
        entry = self._protect_entry(compiled, v, local, remote, lts, rts)
        if entry is not None and entry.params is not None:
            sel = entry.sa_selector(local, remote)
            mach = self._machines.get(sel)
            if mach is None or not mach.alive:
                mach = Machine(sel, entry, entry.params)
            return mach
        drr = compiled.policy.default_response_rule
        if drr is None:
            return None
        params = FilterAction(
            _DRR_ACTION_NAME, Action.PROTECT, Action.PROTECT, drr.security_methods
        )
        entries = []
        for direction in (Direction.OUT, Direction.IN):
            e = SpdEntry(
                direction=direction,
                local=AddressRange(v, int(lts.start_addr), int(lts.end_addr)),
                remote=AddressRange(v, int(rts.start_addr), int(rts.end_addr)),
                proto=lts.ip_protocol,
                local_ports=(lts.start_port, lts.end_port),
                remote_ports=(rts.start_port, rts.end_port),
                action=Action.PROTECT,
                origin="dynamic",
                params=params,
                pfp=False,
            )
            e.dynamic_spi = out.spi
            entries.append(e)
        self._dynamic[:0] = entries
        self._gen += 1
        self.audit.record(
            now,
            "dynamic_filter_added",
            f"{lts} <-> {rts}",
            outbound_spi=f"{out.spi:08x}",
            reason="default response rule",
        )
        sel = entries[0].sa_selector(local, remote)
        return Machine(sel, entries[0], params)

    def _protect_entry(
        self,
        compiled: CompiledPolicy,
        v: int,
        local: int,
        remote: int,
        lts: TrafficSelector,
        rts: TrafficSelector,
    ) -> SpdEntry | None:
        spd = compiled.spd
        for direction in (Direction.OUT, Direction.IN):
            e = spd.lookup(
                direction, v, local, remote, lts.ip_protocol, lts.start_port, rts.start_port
            )
            if e.action is Action.PROTECT and e.origin == "rule":
                return e
        return None

    def _drop_dynamic(self, spi: int) -> None:
        before = len(self._dynamic)
        self._dynamic = [e for e in self._dynamic if e.dynamic_spi != spi]
        if len(self._dynamic) != before:
            self._gen += 1

    # ========================================================================= ICMP (E7)

    def handle_icmp_error(self, hint: IcmpHint, now: float) -> None:
        """E7: an ICMP error quoting one of our IKE datagrams. Recorded, never trusted.

        RFC 7296 §2.4: no conclusion from unauthenticated information. Only a rule with
        ``allow_fallback`` and ``icmp_fast_fallback`` lets a port unreachable that quotes our
        ports and our initiator SPI/cookie fire E5 at once (``reason: icmp_hint``).
        """
        self.counters.inc(f"icmp_errors.{hint.icmp_type}.{hint.icmp_code}")
        spi = hint.initiator_spi
        mach = self._by_initiator_spi.get(spi) if spi else None
        if mach is not None and not mach.alive:
            mach = None
        used = False
        if (
            mach is not None
            and mach.state is SaState.ACQUIRING
            and mach.params.allow_fallback
            and mach.params.icmp_fast_fallback
            and hint.port_unreachable
            and self._quotes_attempt(mach, hint)
        ):
            used = True
        self.audit.record(
            now,
            "icmp_error",
            str(mach.sa_sel) if mach is not None else "",
            authenticated=False,
            icmp_type=hint.icmp_type,
            icmp_code=hint.icmp_code,
            peer=f"{hint.peer[0]}:{hint.peer[1]}",
            offender=hint.offender,
            initiator_spi=spi.hex(),
            matched_attempt=mach is not None,
            used_for_fallback=used,
        )
        if used and mach is not None:
            self._fallback(mach, "icmp_hint", now)

    def _quotes_attempt(self, mach: Machine, hint: IcmpHint) -> bool:
        assert self._compiled is not None
        ike = self._compiled.policy.ike
        peer = mach.sa_sel.peer_address
        try:
            same_peer = ipaddress.ip_address(hint.peer[0]) == ipaddress.ip_address(peer)
        except ValueError:
            return False
        return same_peer and hint.peer[1] == ike.remote_port and hint.local_port == ike.local_port

    # ======================================================================= timers (E5, E9, E10)

    def _set_timer(self, mach: Machine, kind: str, when: float) -> None:
        mach.deadlines[kind] = when
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, mach, kind))

    def _valid(self, item: tuple[float, int, Machine, str]) -> bool:
        when, _, mach, kind = item
        return mach.alive and mach.deadlines.get(kind) == when

    def get_timer(self) -> float | None:
        timers = self._timers
        while timers and not self._valid(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            item = heapq.heappop(timers)
            if not self._valid(item):
                continue
            when, _, mach, kind = item
            del mach.deadlines[kind]
            if kind == "fallback":
                if mach.state is SaState.ACQUIRING:
                    self._fallback(mach, "peer_silent", when)
            elif kind == "soft_idle":
                idle = mach.params.soft_sa_idle_s
                if mach.state is SaState.SOFT and idle is not None:
                    due = mach.soft_last_used + idle
                    if due <= when:
                        self._expire_soft(mach, "idle", when)
                    else:
                        self._set_timer(mach, "soft_idle", due)
            elif kind == "soft_max":
                if mach.state is SaState.SOFT:
                    self._expire_soft(mach, "max_lifetime", when)
            elif kind == "holddown" and mach.state is SaState.FAILED:
                self._destroy(mach)
                self.audit.record(when, "holddown_expired", str(mach.sa_sel))

    def _expire_soft(self, mach: Machine, why: str, now: float) -> None:
        """E9: soft SA removed → NO_SA (the next packet re-acquires)."""
        if mach.ike_active and mach.acquire_id is not None:
            self._requests.append(CancelAcquire(mach.acquire_id, "soft SA expired"))
        self._destroy(mach)
        self.counters.inc(f"soft_sa_expired.{why}")
        self.audit.record(
            now, "soft_sa_expired", str(mach.sa_sel), reason=why, installed_at=mach.soft_since
        )

    def _destroy(self, mach: Machine) -> None:
        mach.alive = False
        mach.deadlines.clear()
        mach.hold.clear()
        if self._machines.get(mach.sa_sel) is mach:
            del self._machines[mach.sa_sel]
        if mach.pair is not None:
            if self._by_out_spi.get(mach.pair.outbound.spi) is mach:
                del self._by_out_spi[mach.pair.outbound.spi]
            if self._by_in_spi.get(mach.pair.inbound.spi) is mach:
                del self._by_in_spi[mach.pair.inbound.spi]
        for aid in mach.acquire_ids:
            if self._by_acquire.get(aid) is mach:
                del self._by_acquire[aid]
        for spi in mach.initiator_spis:
            if self._by_initiator_spi.get(spi) is mach:
                del self._by_initiator_spi[spi]

    # ========================================================================= inbound (§4)

    def inbound_clear(self, packet: bytes, now: float, meta: PacketMeta | None = None) -> Verdict:
        """I1/I3: a clear (not ESP/AH) packet addressed to us. ACCEPTED, IKE or DISCARDED."""
        m = meta if meta is not None else parse_ip_packet(packet)
        if m is None:
            self.counters.inc("drops.malformed")
            return Verdict.DISCARDED
        compiled = self._compiled
        if compiled is None:
            return Verdict.ACCEPTED
        spd = compiled.spd
        if spd.is_ike(m.version, m.dst, m.proto, m.dport):  # I1
            self.counters.inc("bypass.ike")
            return Verdict.IKE
        entry = spd.lookup(
            Direction.IN, m.version, m.dst, m.src, m.proto, m.dport, m.sport, self._dynamic
        )
        action = entry.action
        if action is Action.BYPASS:  # §4.1
            self.counters.inc("bypass.in")
            return Verdict.ACCEPTED
        if action is Action.DISCARD:
            self.counters["drops.inbound_policy"] += 1
            if (sup := self.audit.allow(now, "discard", entry.position)) is not None:
                self._audit_packet(now, "discard", sup, m, direction="in", rule=entry.rule_name)
            return Verdict.DISCARDED
        p = entry.params
        assert p is not None
        sel = entry.sa_selector(m.dst, m.src)
        mach = self._machines.get(sel)
        key = (m.version, m.dst, m.src, m.proto, m.dport, m.sport)
        flow = self._existing_flow(key, now)
        if (
            mach is not None
            and mach.state is SaState.ESTABLISHED
            and now - mach.established_at < p.accept_clear_grace_s
        ):
            return self._accept_clear(key, m, now, "grace")
        if flow is not None and flow.secure:
            return self._discard_clear(m, sel, now, "flow_secure")
        if p.inbound_passthrough:  # §4.3
            if mach is not None and mach.state is SaState.SOFT:
                mach.soft_last_used = now
            return self._accept_clear(key, m, now, "inbound_passthrough")
        if p.nd_mode is NdMode.NONE:  # §4.2
            if mach is not None and mach.state is SaState.SOFT:
                mach.soft_last_used = now
                return self._accept_clear(key, m, now, "soft_sa")
            return self._discard_clear(m, sel, now, "require")
        if flow is not None:  # §4.4: existing flow, not secure
            return self._accept_clear(key, m, now, "nd_flow")
        if p.nd_mode is NdMode.BOUNDARY:
            return self._accept_clear(key, m, now, "nd_boundary")
        return self._discard_clear(m, sel, now, "nd_secure_new_flow")

    def _accept_clear(self, key: tuple[int, ...], m: PacketMeta, now: float, why: str) -> Verdict:
        self._flow(key, m, now)
        self.counters.inc(f"accepted_clear.{why}")
        return Verdict.ACCEPTED

    def _discard_clear(self, m: PacketMeta, sel: SaSelector, now: float, why: str) -> Verdict:
        self.counters["drops.clear_inbound"] += 1
        if (sup := self.audit.allow(now, "clear_inbound_discarded", (sel, why))) is not None:
            self._audit_packet(now, "clear_inbound_discarded", sup, m, reason=why, sa=str(sel))
        return Verdict.DISCARDED

    def inbound_protected(
        self,
        packet: bytes,
        spi: int,
        now: float,
        *,
        encrypted: bool = True,
        meta: PacketMeta | None = None,
    ) -> Verdict:
        """I2 after the driver decrypted/verified ``packet`` (the inner packet) with SA ``spi``.

        Marks the flow secure (MS-IKEE §3.7.4.2) and refuses integrity-only traffic where the
        rule demands guaranteed encryption.
        """
        m = meta if meta is not None else parse_ip_packet(packet)
        if m is None:
            self.counters.inc("drops.malformed")
            return Verdict.DISCARDED
        compiled = self._compiled
        if compiled is not None and not encrypted:
            entry = compiled.spd.lookup(
                Direction.IN, m.version, m.dst, m.src, m.proto, m.dport, m.sport, self._dynamic
            )
            if entry.params is not None and entry.params.guarantee_encryption:
                self.counters["drops.not_encrypted"] += 1
                if (sup := self.audit.allow(now, "discard", ("ge", spi))) is not None:
                    self._audit_packet(now, "discard", sup, m, reason="guarantee_encryption")
                return Verdict.DISCARDED
        flow = self._flow((m.version, m.dst, m.src, m.proto, m.dport, m.sport), m, now)
        flow.secure = True
        if encrypted:
            flow.guarantee_encryption = True
        self.counters.inc("protected.in")
        return Verdict.ACCEPTED

    def report_unknown_spi(self, spi: int, src: str, dst: str, protocol: int, now: float) -> None:
        """RFC 4301 §5.2 step 3a audit: the driver found no SA for an inbound ESP/AH SPI."""
        self.counters.inc("drops.unknown_spi")
        self.audit.record_limited(
            now,
            "unknown_spi",
            (spi, src),
            f"{src} -> {dst}",
            spi=f"{spi:08x}",
            src=src,
            dst=dst,
            protocol=protocol,
        )

    def report_selector_mismatch(self, spi: int, description: str, now: float) -> None:
        """RFC 4301 §5.2 step 5 audit: the inner packet does not match its SA's selectors."""
        self.counters.inc("drops.selector_mismatch")
        self.audit.record_limited(now, "selector_mismatch", spi, description, spi=f"{spi:08x}")

    # ======================================================================== responder (§4.5)

    def responder_policy(
        self,
        peer: str,
        local_ts: Sequence[TrafficSelector],
        remote_ts: Sequence[TrafficSelector],
        now: float,
    ) -> ResponderPolicy | None:
        """What IKE as responder may accept for these proposed selectors (or ``None``: reject
        with TS_UNACCEPTABLE / IKEv1 no proposal). Independent of the §3 state: a peer for
        which we hold a soft SA or a FAILED hold-down is still answered (E9/E10)."""
        compiled = self._compiled
        if compiled is None or not local_ts or not remote_ts:
            return None
        lts, rts = local_ts[0], remote_ts[0]
        if lts.start_addr.version != rts.start_addr.version:
            return None
        v = lts.start_addr.version
        local, remote = int(lts.start_addr), int(rts.start_addr)
        spd = compiled.spd
        firsts = [
            spd.lookup(d, v, local, remote, lts.ip_protocol, lts.start_port, rts.start_port)
            for d in (Direction.IN, Direction.OUT)
        ]
        drr = compiled.policy.default_response_rule
        reason = ""
        if any(e.action is Action.DISCARD for e in firsts):
            reason = "discard rule"
        else:
            entry = next(
                (e for e in firsts if e.action is Action.PROTECT and e.origin == "rule"), None
            )
            if entry is None:
                # A wide proposal (RFC 7296 §2.9): narrow to the first PROTECT entry it meets.
                entry = _first_intersecting(compiled, lts, rts)
            if entry is not None and entry.params is not None and entry.rule is not None:
                lo = _narrow(lts, entry.local, entry.local_ports, entry.proto)
                re = _narrow(rts, entry.remote, entry.remote_ports, entry.proto)
                if lo is not None and re is not None:
                    return ResponderPolicy(
                        rule=entry.rule.name,
                        local=lo,
                        remote=re,
                        mode=Mode.TUNNEL if entry.tunnel is not None else Mode.TRANSPORT,
                        security_methods=entry.params.security_methods,
                        pfs=entry.params.session_key_pfs,
                        auth_methods=entry.rule.auth_methods,
                        tunnel=entry.tunnel,
                    )
                reason = "selectors outside the rule"
            elif drr is not None:
                return ResponderPolicy(
                    rule=_DRR_ACTION_NAME,
                    local=lts,
                    remote=rts,
                    mode=Mode.TRANSPORT,
                    security_methods=drr.security_methods,
                    pfs=False,
                    auth_methods=drr.auth_methods,
                    default_response_rule=True,
                )
            else:
                reason = "no matching rule"
        self.counters.inc("responder.rejected")
        self.audit.record(now, "responder_rejected", f"{lts} <-> {rts}", peer=peer, reason=reason)
        return None

    # ============================================================================== outputs

    def next_request(self) -> IkeRequest | None:
        return self._requests.popleft() if self._requests else None

    def packets_to_send(self) -> list[Transmit]:
        out, self._tx = self._tx, []
        return out

    def local_icmp_to_send(self) -> list[LocalIcmp]:
        out, self._icmp_out = self._icmp_out, []
        return out

    def _local_icmp(self, packet: bytes, m: PacketMeta, *, prohibited: bool, now: float) -> None:
        """RFC 4301 §5.1.1: at most one ICMP per second per destination."""
        key = (m.version, m.dst)
        last = self._icmp_last.get(key)
        if last is not None and now - last < 1.0:
            self.counters.inc("local_icmp.suppressed")
            return
        if len(self._icmp_last) > 4096:
            self._icmp_last.clear()
        self._icmp_last[key] = now
        if m.version == 4:
            t, c = (3, 13) if prohibited else (3, 1)
        else:
            t, c = (1, 1) if prohibited else (1, 3)
        self._icmp_out.append(LocalIcmp(t, c, packet, m, now))
        self.counters.inc("local_icmp.sent")

    # ================================================================================ flows

    def _flow(self, key: tuple[int, ...], m: PacketMeta, now: float) -> Flow:
        flow = self._flows.get(key)
        if flow is not None and now - flow.last_seen <= flow.idle_s:
            flow.last_seen = now
        else:
            if flow is None and len(self._flows) >= self._flow_capacity:
                self._evict_flows(now)
            flow = Flow(now, TCP_FLOW_IDLE_S if m.proto == 6 else FLOW_IDLE_S)
            self._flows[key] = flow
        if m.proto == 6 and m.tcp_flags & (TCP_FIN | TCP_RST):
            flow.idle_s = TCP_CLOSING_IDLE_S
        return flow

    def _existing_flow(self, key: tuple[int, ...], now: float) -> Flow | None:
        flow = self._flows.get(key)
        if flow is None or now - flow.last_seen > flow.idle_s:
            return None
        return flow

    def _evict_flows(self, now: float) -> None:
        expired = [k for k, f in self._flows.items() if now - f.last_seen > f.idle_s]
        for k in expired:
            del self._flows[k]
        excess = len(self._flows) - self._flow_capacity + 1
        if excess > 0:
            # Oldest first; insecure flows before secure ones (a secure bit is what
            # "never downgrade" rests on, so it is the last thing to forget).
            order = sorted(self._flows.items(), key=lambda kv: (kv[1].secure, kv[1].last_seen))
            for k, _ in order[:excess]:
                del self._flows[k]
            self.counters.inc("flows.evicted", excess)

    # =============================================================================== debug

    def state_of(self, sa_sel: SaSelector) -> SaState:
        mach = self._machines.get(sa_sel)
        return mach.state if mach is not None else SaState.NO_SA

    def state_for(
        self, src: str, dst: str, proto: int = 0, sport: int = 0, dport: int = 0
    ) -> SaState:
        """State of the machine an outbound packet with these fields would use."""
        compiled = self._compiled
        if compiled is None:
            return SaState.NO_SA
        m = PacketMeta.make(src, dst, proto, sport, dport)
        entry = compiled.spd.lookup(
            Direction.OUT, m.version, m.src, m.dst, m.proto, m.sport, m.dport, self._dynamic
        )
        if entry.action is not Action.PROTECT:
            return SaState.NO_SA
        return self.state_of(entry.sa_selector(m.src, m.dst))

    def machines(self) -> list[Machine]:
        return list(self._machines.values())

    def flow_secure(self, src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> bool:
        m = PacketMeta.make(src, dst, proto, sport, dport)
        flow = self._flows.get((m.version, m.src, m.dst, m.proto, m.sport, m.dport))
        return bool(flow is not None and flow.secure)

    def status(self) -> dict[str, object]:
        """Snapshot for the node's control API: policy, machines, counters."""
        compiled = self._compiled
        return {
            "policy": compiled.policy.name if compiled is not None else None,
            "machines": [m.to_json() for m in self._machines.values()],
            "flows": len(self._flows),
            "dynamic_entries": len(self._dynamic),
            "counters": self.counters.to_json(),
        }


def _packet_selectors(m: PacketMeta) -> tuple[TrafficSelector, TrafficSelector]:
    """The triggering packet as (local, remote) selectors (RFC 7296 §2.9 first TS)."""
    src, dst = ip_from_int(m.version, m.src), ip_from_int(m.version, m.dst)
    if m.sport >= 0 and m.proto in (6, 17, 132, 1, 58):
        return (
            TrafficSelector(src, src, m.proto, m.sport, m.sport),
            TrafficSelector(dst, dst, m.proto, m.dport, m.dport),
        )
    return TrafficSelector(src, src, m.proto), TrafficSelector(dst, dst, m.proto)


def _first_intersecting(
    compiled: CompiledPolicy, lts: TrafficSelector, rts: TrafficSelector
) -> SpdEntry | None:
    """The first static PROTECT entry whose selectors intersect a proposal (§4.5, wide TS)."""
    v = lts.start_addr.version
    lr = AddressRange(v, int(lts.start_addr), int(lts.end_addr))
    rr = AddressRange(v, int(rts.start_addr), int(rts.end_addr))
    for table in (compiled.spd.inbound, compiled.spd.outbound):
        for e in table:
            if e.action is not Action.PROTECT or e.origin != "rule" or e.version != v:
                continue
            if e.local.intersect(lr) is None or e.remote.intersect(rr) is None:
                continue
            if e.proto and lts.ip_protocol and e.proto != lts.ip_protocol:
                continue
            if max(lts.start_port, e.lp_lo) > min(lts.end_port, e.lp_hi):
                continue
            if max(rts.start_port, e.rp_lo) > min(rts.end_port, e.rp_hi):
                continue
            return e
    return None


def _narrow(
    ts: TrafficSelector, rng: AddressRange, ports: tuple[int, int], proto: int
) -> TrafficSelector | None:
    """``ts`` ∩ an entry side (RFC 7296 §2.9 narrowing)."""
    v = ts.start_addr.version
    got = rng.intersect(AddressRange(v, int(ts.start_addr), int(ts.end_addr)))
    if got is None:
        return None
    if proto and ts.ip_protocol and proto != ts.ip_protocol:
        return None
    lo, hi = max(ts.start_port, ports[0]), min(ts.end_port, ports[1])
    if lo > hi:
        return None
    return TrafficSelector(got.first, got.last, proto or ts.ip_protocol, lo, hi)
