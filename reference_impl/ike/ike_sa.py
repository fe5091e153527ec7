"""One IKE SA as a sans-I/O state machine (RFC 7296), both roles.

An :class:`IkeSa` takes decoded datagrams (``receive``), timer ticks (``handle_timer``) and
API calls (create/rekey/delete a Child SA, rekey/delete itself) with an explicit ``now``. It
appends datagrams to send and events to its context's queues (the service owns them), and
says when it next needs ``handle_timer`` (``get_timer``). It never reads a clock.

Locally initiated exchanges are :class:`Task` objects queued on the SA and sent as the
peer's Message ID window allows (§2.3); each outstanding request has its own
:class:`~reference_impl.retransmit.Retransmitter` (§2.1, byte-identical retransmits). Requests
from the peer are answered once and the answer is cached for retransmitted requests.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol, TypeVar, cast

from reference_impl.crypto import (
    EncrAlgorithm,
    IkeKeys,
    IntegAlgorithm,
    KeyExchange,
    PrfAlgorithm,
    dh,
    encr,
    ikev2_child_keymat,
    ikev2_ike_keys,
    ikev2_rekey_skeyseed,
    ikev2_skeyseed,
    integ,
    prf,
)
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
from reference_impl.ike.auth import psk_auth, sign, signed_octets, verify_auth
from reference_impl.ike.certs import cert_der, certreq_authorities
from reference_impl.ike.config import (
    AuthClass,
    ChildConfig,
    Identity,
    PeerConfig,
    ProposalConfig,
    ServiceSettings,
)
from reference_impl.ike.enums import (
    AuthMethod,
    CertEncoding,
    ExchangeType,
    NotifyType,
)
from reference_impl.ike.messages import HEADER_LEN, Message, encode_message
from reference_impl.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    IdI,
    IdPayload,
    IdR,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TsI,
    TsR,
    decode_chain,
    encode_chain,
)
from reference_impl.ike.proposals import Selected, check_answer, covered, narrow, select
from reference_impl.ike.protection import SkProtection
from reference_impl.ike.types import ChildSa, ChildState, Datagram, IkeState, natd_hash
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

ZERO_SPI = b"\0" * 8
_PROXY = weakref.ProxyType
_NATD_SRC = int(NotifyType.NAT_DETECTION_SOURCE_IP)
_NATD_DST = int(NotifyType.NAT_DETECTION_DESTINATION_IP)
P = TypeVar("P", bound=Payload)
N = NotifyType
_IKE_SA_INIT = ExchangeType.IKE_SA_INIT
_IKE_AUTH = ExchangeType.IKE_AUTH
_CREATE_CHILD_SA = ExchangeType.CREATE_CHILD_SA
_INFORMATIONAL = ExchangeType.INFORMATIONAL

CHILD_ERRORS = {
    N.NO_PROPOSAL_CHOSEN: FailureReason.NO_PROPOSAL_CHOSEN,
    N.TS_UNACCEPTABLE: FailureReason.TS_UNACCEPTABLE,
    N.INVALID_KE_PAYLOAD: FailureReason.INVALID_KE_PAYLOAD,
    N.SINGLE_PAIR_REQUIRED: FailureReason.TS_UNACCEPTABLE,
    N.INVALID_SELECTORS: FailureReason.TS_UNACCEPTABLE,
    N.INTERNAL_ADDRESS_FAILURE: FailureReason.PROTOCOL_ERROR,
    N.FAILED_CP_REQUIRED: FailureReason.PROTOCOL_ERROR,
    N.NO_ADDITIONAL_SAS: FailureReason.PROTOCOL_ERROR,
    N.TEMPORARY_FAILURE: FailureReason.PROTOCOL_ERROR,
    N.CHILD_SA_NOT_FOUND: FailureReason.PROTOCOL_ERROR,
    N.AUTHENTICATION_FAILED: FailureReason.AUTHENTICATION_FAILED,
    N.INVALID_SYNTAX: FailureReason.INVALID_SYNTAX,
}
TEMPORARY_FAILURE_RETRY = (2.0, 8.0)
"""Retry delay range after TEMPORARY_FAILURE (RFC 7296 §2.25: "retry after a short delay")."""
KEEPALIVE_INTERVAL = 20.0
"""NAT-T keepalive interval (RFC 3948 §2.3; strongSwan's default)."""


class SaContext(Protocol):
    """What an IKE SA needs from the service that owns it."""

    settings: ServiceSettings
    outbox: list[Datagram]
    events: deque[Event]
    stats: dict[str, int]

    def new_ike_spi(self) -> bytes: ...

    def new_child_spi(self) -> int: ...

    def release_child_spi(self, spi: int) -> None: ...

    def register(self, sa: IkeSa) -> None: ...

    def touch(self, sa: IkeSa) -> None: ...

    def unregister(self, sa: IkeSa) -> None: ...

    def cert_time(self) -> datetime: ...

    def configs_for(self, local: Address, remote: Address) -> list[PeerConfig]: ...

    def initial_contact(self, sa: IkeSa) -> None: ...

    def established(self, sa: IkeSa) -> None: ...

    def sa_closed(self, sa: IkeSa) -> None: ...


# --- tasks: locally initiated exchanges -----------------------------------------------------------


class Task:
    """A locally initiated exchange: builds the request, processes the response."""

    exchange: int = _INFORMATIONAL
    acquire_id: int | None = None

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        raise NotImplementedError

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        raise NotImplementedError

    def failed(self, sa: IkeSa, now: float, detail: str) -> None:
        """The exchange timed out (the SA is being torn down anyway)."""

    def blocks_ike_rekey(self) -> bool:
        return False


@dataclass(slots=True)
class _Outstanding:
    task: Task
    rt: Retransmitter
    message_id: int


@dataclass(slots=True)
class _Fragments:
    total: int
    inner_type: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _ChildRequest:
    """Our side of a Child SA negotiation in flight."""

    config: ChildConfig
    spi: int
    proposals: list[Proposal]
    tsi: list[TrafficSelector]
    tsr: list[TrafficSelector]
    nonce: bytes = b""
    kex: KeyExchange | None = None
    dh_group: int = 0
    rekey: ChildSa | None = None
    acquire_id: int | None = None


class IkeSa:
    """One IKE SA (RFC 7296), from IKE_SA_INIT to its deletion, either role."""

    __slots__ = (
        "_after_close",
        "_after_close_silent",
        "_closed_reason",
        "_first_child",
        "_frags",
        "_init_rt",
        "_peer_done",
        "_rekey_collision",
        "_rekey_task",
        "_retry_tasks",
        "acquire_id",
        "candidates",
        "children",
        "config",
        "cookie",
        "created",
        "ctx",
        "dh_group",
        "encr_alg",
        "expire_at",
        "half_open_until",
        "init_request",
        "init_response",
        "initiator",
        "integ_alg",
        "kex",
        "keys",
        "last_seen",
        "last_sent",
        "linger_until",
        "local",
        "local_id",
        "nat_local",
        "nat_remote",
        "next_mid",
        "nonce_i",
        "nonce_r",
        "outstanding",
        "peer_certreq",
        "peer_frag",
        "peer_hashes",
        "peer_id",
        "peer_next_mid",
        "peer_window",
        "prf",
        "protection",
        "queue",
        "rekey_at",
        "rekeyed_into",
        "remote",
        "replied",
        "responses",
        "retry_at",
        "rng",
        "selected",
        "settings",
        "spi_i",
        "spi_r",
        "state",
    )

    def __init__(
        self,
        ctx: SaContext,
        *,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        local: Address,
        remote: Address,
        config: PeerConfig | None,
        now: float,
    ) -> None:
        # A weak reference: the service owns its SAs (``_sas``), so a strong one would make
        # every SA and its state a reference cycle that only the cyclic garbage collector
        # frees once the service is dropped; with it the service's graph is freed at once
        # and the collector has fewer long-lived objects to traverse. Only the service
        # creates IkeSa objects (an IKE SA rekey passes its own proxy on) and it outlives them.
        self.ctx = cast(SaContext, ctx if type(ctx) is _PROXY else weakref.proxy(ctx))
        self.settings = ctx.settings
        self.rng: Callable[[int], bytes] = ctx.settings.rng
        self.initiator = initiator
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.local = local
        self.remote = remote
        self.config = config
        self.state = IkeState.INIT_SENT if initiator else IkeState.HALF_OPEN
        self.created = now
        self.last_seen = now
        self.last_sent = now
        self.children: list[ChildSa] = []
        self.acquire_id: int | None = None
        # negotiation
        self.selected: Selected | None = None
        self.prf: PrfAlgorithm | None = None
        self.keys: IkeKeys | None = None
        self.protection: SkProtection | None = None
        self.nonce_i = b""
        self.nonce_r = b""
        self.kex: KeyExchange | None = None
        self.dh_group = 0
        self.init_request = b""
        self.init_response = b""
        self.cookie = b""
        self.peer_frag = False
        self.peer_hashes: tuple[int, ...] | None = None
        self.peer_certreq = False
        self.peer_id: IdPayload | None = None
        self.local_id: IdPayload | None = None
        self.nat_local = False
        self.nat_remote = False
        self.replied = False
        self.peer_window = 1
        # message IDs and reliability
        self.next_mid = 0
        self.peer_next_mid = 0
        self._peer_done: set[int] = set()
        self.outstanding: dict[int, _Outstanding] = {}
        self.queue: deque[Task] = deque()
        self.responses: dict[int, tuple[bytes, ...]] = {}
        self._frags: dict[tuple[bool, int], _Fragments] = {}
        self._init_rt: Retransmitter | None = None
        # timers
        self.half_open_until: float | None = None
        self.linger_until: float | None = None
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.retry_at: float | None = None
        self._retry_tasks: list[Task] = []
        # pending first child (initiator) and IKE rekey bookkeeping
        self._first_child: _ChildRequest | None = None
        self._rekey_task: RekeyIkeTask | None = None
        self._rekey_collision: tuple[IkeSa, bytes, bytes] | None = None
        self.rekeyed_into: IkeSa | None = None
        self._closed_reason = ""
        self.candidates: list[PeerConfig] = []
        self._after_close = ""
        self._after_close_silent = False
        self.encr_alg: EncrAlgorithm | None = None
        self.integ_alg: IntegAlgorithm | None = None

    # --- identity ---------------------------------------------------------------------------------

    @property
    def ike_sa_id(self) -> bytes:
        return self.spi_i + self.spi_r

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state in (IkeState.ESTABLISHED, IkeState.REKEYED, IkeState.DELETING)

    @property
    def peer(self) -> Address:
        return self.remote

    def __repr__(self) -> str:
        role = "I" if self.initiator else "R"
        return f"<IkeSa {self.spi_i.hex()}_{self.spi_r.hex()} {role} {self.state.name}>"

    # --- emitting ---------------------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        self.ctx.events.append(event)

    def _send(self, datagrams: tuple[bytes, ...] | list[bytes], now: float) -> None:
        marker = self.local[1] == self.settings.natt_port
        out = self.ctx.outbox
        for d in datagrams:
            out.append(Datagram(d, self.local, self.remote, marker))
        self.last_sent = now

    # --- creation ---------------------------------------------------------------------------------

    @classmethod
    def start_initiator(
        cls,
        ctx: SaContext,
        config: PeerConfig,
        remote: Address,
        local: Address,
        now: float,
        child: ChildConfig | None,
        acquire_id: int | None = None,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None = None,
    ) -> IkeSa:
        sa = cls(
            ctx,
            initiator=True,
            spi_i=ctx.new_ike_spi(),
            spi_r=ZERO_SPI,
            local=local,
            remote=remote,
            config=config,
            now=now,
        )
        sa.acquire_id = acquire_id
        if not config.proposals:
            raise LocalProtocolError(f"connection {config.name} has no IKE proposals")
        sa.dh_group = config.proposals[0].dh[0]
        sa.kex = dh(sa.dh_group).generate()
        sa.nonce_i = sa.rng(config.nonce_size)
        if child is not None:
            sa._first_child = sa._child_request(child, None, True, packet_ts, acquire_id)
        ctx.register(sa)
        sa._send_init(now)
        return sa

    # --- IKE_SA_INIT, initiator -------------------------------------------------------------------

    def _send_init(self, now: float) -> None:
        """RFC 7296 §1.2: HDR, SA, KEi, Ni, N(NAT-D)x2, N(FRAG), N(HASHES) [after N(COOKIE)]."""
        cfg = self.config
        assert cfg is not None and self.kex is not None
        payloads: list[Payload] = []
        if self.cookie:
            payloads.append(NotifyPayload(N.COOKIE, self.cookie))
        payloads.append(SaPayload(_ike_offer(cfg)))
        payloads.append(KePayload(self.dh_group, self.kex.public_value))
        payloads.append(NoncePayload(self.nonce_i))
        payloads.extend(self._natd_payloads(self.spi_i, ZERO_SPI))
        if cfg.fragmentation:
            payloads.append(NotifyPayload(N.IKEV2_FRAGMENTATION_SUPPORTED))
        if cfg.signature_hashes:
            payloads.append(
                NotifyPayload(N.SIGNATURE_HASH_ALGORITHMS, _hash_list(cfg.signature_hashes))
            )
        msg = Message(_IKE_SA_INIT, 0, self.spi_i, ZERO_SPI, True, False, payloads)
        self.init_request = encode_message(msg)
        rt = Retransmitter(cfg.retransmit)
        rt.start((self.init_request,), now)
        self._init_rt = rt
        self.state = IkeState.INIT_SENT
        self._send((self.init_request,), now)

    def _natd_payloads(self, spi_i: bytes, spi_r: bytes) -> list[Payload]:
        force = self.config is not None and self.config.force_encap
        src = self.rng(20) if force else natd_hash(spi_i, spi_r, self.local)
        dst = natd_hash(spi_i, spi_r, self.remote)
        return [
            NotifyPayload(N.NAT_DETECTION_SOURCE_IP, src),
            NotifyPayload(N.NAT_DETECTION_DESTINATION_IP, dst),
        ]

    def _check_natd(self, msg: Message, spi_r_for_hash: bytes) -> None:
        srcs: list[bytes] = []
        dsts: list[bytes] = []
        for p in msg.payloads:
            if type(p) is NotifyPayload:
                if p.notify_type == _NATD_SRC:
                    srcs.append(p.data)
                elif p.notify_type == _NATD_DST:
                    dsts.append(p.data)
        if not srcs or not dsts:
            return
        self.nat_remote = natd_hash(self.spi_i, spi_r_for_hash, self.remote) not in srcs
        self.nat_local = natd_hash(self.spi_i, spi_r_for_hash, self.local) not in dsts
        if self.config is not None and self.config.force_encap:
            self.nat_local = True

    @property
    def nat(self) -> bool:
        """A NAT was detected (or faked) on either side: UDP encapsulation (RFC 3948)."""
        return self.nat_local or self.nat_remote

    def _peer_replied(self) -> None:
        if not self.replied:
            self.replied = True
            self._event(PeerReplied(self.ike_sa_id, self.remote, self.acquire_id))

    def _on_init_response(self, msg: Message, data: bytes, src: Address, now: float) -> None:
        if self.state != IkeState.INIT_SENT or self._init_rt is None or msg.message_id != 0:
            return
        cfg = self.config
        assert cfg is not None
        self._peer_replied()
        cookie = msg.notify(N.COOKIE)
        if cookie is not None:
            if self.cookie == cookie.data:
                self._fail_init(FailureReason.PROTOCOL_ERROR, "responder repeats its COOKIE", None)
                return
            self.cookie = cookie.data
            self._send_init(now)
            return
        invalid_ke = msg.notify(N.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            groups = {g for p in cfg.proposals for g in p.dh}
            if group not in groups or group == self.dh_group:
                self._fail_init(
                    FailureReason.INVALID_KE_PAYLOAD,
                    f"responder wants group {group}, which we did not offer",
                    N.INVALID_KE_PAYLOAD,
                )
                return
            self.dh_group = group
            self.kex = dh(group).generate()
            self._send_init(now)
            return
        for n in msg.notifies():
            if n.notify_type <= 16383:
                reason = _reason(n.notify_type)
                self._fail_init(
                    reason, f"IKE_SA_INIT answered with {_nname(n.notify_type)}", n.notify_type
                )
                return
        sa = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa is None or ke is None or nonce is None or msg.spi_r == ZERO_SPI:
            self._fail_init(
                FailureReason.INVALID_SYNTAX, "IKE_SA_INIT response lacks SA/KE/Nr", None
            )
            return
        offered = _ike_offer(cfg)
        sel = check_answer(offered, sa.proposals)
        if sel is None or sel.dh_id != self.dh_group or ke.dh_group != self.dh_group:
            self._fail_init(
                FailureReason.NO_PROPOSAL_CHOSEN,
                "responder chose a proposal we did not offer",
                None,
            )
            return
        self._init_rt.stop()
        self._init_rt = None
        self.spi_r = msg.spi_r
        self.init_response = data
        self.nonce_r = nonce.data
        self.peer_frag = (
            msg.notify(N.IKEV2_FRAGMENTATION_SUPPORTED) is not None and cfg.fragmentation
        )
        hashes = msg.notify(N.SIGNATURE_HASH_ALGORITHMS)
        if hashes is not None:
            self.peer_hashes = tuple(
                int.from_bytes(hashes.data[i : i + 2], "big")
                for i in range(0, len(hashes.data) - 1, 2)
            )
        self.peer_certreq = msg.get(CertReqPayload) is not None
        self._check_natd(msg, self.spi_r)
        try:
            g_ir = self.kex.shared_secret(ke.data) if self.kex else b""
            self._derive_keys(sel, g_ir)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self._fail_init(FailureReason.PROTOCOL_ERROR, f"key exchange failed: {exc}", None)
            return
        self.kex = None
        if self.nat or cfg.float_always:
            self.local = (self.local[0], self.settings.natt_port)
            self.remote = (self.remote[0], _natt_port_of(cfg, self.settings))
        self.last_seen = now
        self.state = IkeState.AUTH_SENT
        self.next_mid = 1
        self.queue.appendleft(IkeAuthTask())
        self._kick(now)

    def _fail_init(self, reason: FailureReason, detail: str, notify: int | None) -> None:
        if self._init_rt is not None:
            self._init_rt.stop()
            self._init_rt = None
        self._event(
            NegotiationFailed(
                reason, detail, self.remote, self.replied, self.ike_sa_id, self.acquire_id, notify
            )
        )
        self._fail_waiting_children(reason, detail, notify)
        self._close("negotiation failed", linger=False)

    def _fail_waiting_children(
        self, reason: FailureReason, detail: str, notify: int | None = None
    ) -> None:
        """Child SAs queued behind an IKE SA that failed: their acquires fail too."""
        seen = {self.acquire_id}
        for task in list(self.queue) + self._retry_tasks:
            if isinstance(task, CreateChildTask) and task.req.acquire_id not in seen:
                seen.add(task.req.acquire_id)
                self._event(
                    NegotiationFailed(
                        reason,
                        detail,
                        self.remote,
                        self.replied,
                        self.ike_sa_id,
                        task.req.acquire_id,
                        notify,
                    )
                )

    def fail_locally(self, detail: str) -> None:
        """Our own configuration or state made the SA unusable (e.g. a PSK connection
        without a PSK): report it and drop the SA instead of crashing the service."""
        self._event(
            NegotiationFailed(
                FailureReason.LOCAL_ERROR,
                detail,
                self.remote,
                self.replied,
                self.ike_sa_id,
                self.acquire_id,
            )
        )
        if self.established:
            self._teardown(f"local error: {detail}")
        else:
            self._fail_waiting_children(FailureReason.LOCAL_ERROR, detail)
            self._close("local error", linger=False)

    # --- IKE_SA_INIT, responder -------------------------------------------------------------------

    @classmethod
    def respond_init(
        cls,
        ctx: SaContext,
        configs: list[PeerConfig],
        msg: Message,
        data: bytes,
        src: Address,
        local: Address,
        now: float,
    ) -> IkeSa | None:
        """Answer an IKE_SA_INIT request (RFC 7296 §1.2, §2.7); ``None`` when the answer was
        an error notify and no state was kept."""
        settings = ctx.settings

        def refuse(notify: int, ndata: bytes = b"") -> None:
            reply = Message(
                _IKE_SA_INIT, 0, msg.spi_i, ZERO_SPI, False, True, [NotifyPayload(notify, ndata)]
            )
            marker = local[1] == settings.natt_port
            ctx.outbox.append(Datagram(encode_message(reply), local, src, marker))

        sa_p = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_p is None or ke is None or nonce is None:
            refuse(N.INVALID_SYNTAX)
            return None
        proposals = _all_proposals(tuple(configs))
        sel = select(proposals, sa_p.proposals, prefer_local=settings.prefer_local_proposals)
        if sel is None or not sel.prf_id or not sel.dh_id:
            ctx.stats["no_proposal_chosen"] = ctx.stats.get("no_proposal_chosen", 0) + 1
            refuse(N.NO_PROPOSAL_CHOSEN)
            return None
        if ke.dh_group != sel.dh_id:
            refuse(N.INVALID_KE_PAYLOAD, sel.dh_id.to_bytes(2, "big"))
            return None
        config = configs[0]
        if len(configs) > 1:
            config = next(
                (c for c in configs if any(_match_cfg(p, sel) for p in c.proposals)), config
            )
        sa = cls(
            ctx,
            initiator=False,
            spi_i=msg.spi_i,
            spi_r=ctx.new_ike_spi(),
            local=local,
            remote=src,
            config=config,
            now=now,
        )
        sa.candidates = configs
        try:
            kex = dh(sel.dh_id).generate()
            g_ir = kex.shared_secret(ke.data)
        except RemoteProtocolError:
            refuse(N.INVALID_SYNTAX)
            return None
        sa.nonce_i = nonce.data
        sa.nonce_r = sa.rng(config.nonce_size)
        sa.dh_group = sel.dh_id
        sa.init_request = data
        sa.peer_frag = msg.notify(N.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        hashes = msg.notify(N.SIGNATURE_HASH_ALGORITHMS)
        if hashes is not None:
            sa.peer_hashes = tuple(
                int.from_bytes(hashes.data[i : i + 2], "big")
                for i in range(0, len(hashes.data) - 1, 2)
            )
        sa._check_natd(msg, ZERO_SPI)
        payloads: list[Payload] = [
            SaPayload([sel.to_proposal()]),
            KePayload(sel.dh_id, kex.public_value),
            NoncePayload(sa.nonce_r),
        ]
        payloads.extend(sa._natd_payloads(sa.spi_i, sa.spi_r))
        certreq = _init_certreq(tuple(configs))
        if certreq:
            payloads.append(CertReqPayload(CertEncoding.X509_CERT_SIGNATURE, certreq))
        if sa.peer_frag and (config.fragmentation or any(c.fragmentation for c in configs)):
            payloads.append(NotifyPayload(N.IKEV2_FRAGMENTATION_SUPPORTED))
        else:
            sa.peer_frag = False
        if hashes is not None and config.signature_hashes:
            payloads.append(
                NotifyPayload(N.SIGNATURE_HASH_ALGORITHMS, _hash_list(config.signature_hashes))
            )
        reply = Message(_IKE_SA_INIT, 0, sa.spi_i, sa.spi_r, False, True, payloads)
        sa.init_response = encode_message(reply)
        sa._derive_keys(sel, g_ir)
        sa.peer_next_mid = 1
        sa.next_mid = 0
        sa.half_open_until = now + settings.half_open_timeout
        ctx.register(sa)
        sa._send((sa.init_response,), now)
        return sa

    def resend_init_response(self, data: bytes, now: float) -> None:
        """A retransmitted IKE_SA_INIT request (same octets): the same answer (§2.1)."""
        if data == self.init_request and self.state == IkeState.HALF_OPEN and self.init_response:
            self._send((self.init_response,), now)

    # --- keys -------------------------------------------------------------------------------------

    def _derive_keys(self, sel: Selected, g_ir: bytes, skeyseed: bytes | None = None) -> None:
        """SKEYSEED and SK_* (RFC 7296 §2.14), and the prepared SK protection."""
        p = prf(sel.prf_id)
        e = encr(sel.encr_id, sel.encr_bits)
        i = integ(sel.integ_id) if sel.integ_id else None
        if skeyseed is None:
            skeyseed = ikev2_skeyseed(p, self.nonce_i, self.nonce_r, g_ir)
        self.keys = ikev2_ike_keys(
            p,
            skeyseed,
            self.nonce_i,
            self.nonce_r,
            self.spi_i,
            self.spi_r,
            e.key_len,
            i.key_len if i else 0,
        )
        self.selected = sel
        self.prf = p
        self.encr_alg = e
        self.integ_alg = i
        self.protection = SkProtection(e, i, self.keys, self.initiator, self.rng)

    # --- receiving --------------------------------------------------------------------------------

    def receive(self, data: bytes, msg: Message, src: Address, local: Address, now: float) -> None:
        """A decoded datagram for this SA (the service demultiplexed it by SPI)."""
        if msg.exchange_type == _IKE_SA_INIT:
            if msg.response and self.initiator:
                self._on_init_response(msg, data, src, now)
            elif not msg.response and not self.initiator:
                self.resend_init_response(data, now)
            return
        sk = msg.encrypted
        if sk is None or self.protection is None:
            self._count("unprotected_dropped")
            return
        if msg.initiator == self.initiator:
            self._count("wrong_role_dropped")
            return
        if msg.response:
            self._receive_response(data, msg, sk, src, local, now)
        else:
            self._receive_request(data, msg, sk, src, local, now)

    def _count(self, what: str) -> None:
        self.ctx.stats[what] = self.ctx.stats.get(what, 0) + 1

    def _open(
        self, data: bytes, msg: Message, sk: EncryptedPayload | EncryptedFragmentPayload
    ) -> list[Payload] | None:
        """Decrypt (and reassemble, RFC 7383 §2.6) the message; ``None`` until complete."""
        assert self.protection is not None
        inner = self.protection.open(data, sk)
        if isinstance(sk, EncryptedPayload):
            return decode_chain(inner, 0, sk.inner_type)
        key = (msg.response, msg.message_id)
        buf = self._frags.get(key)
        if sk.total > self.settings.max_fragments:
            raise RemoteProtocolError(f"message in {sk.total} fragments")
        if buf is None or sk.total > buf.total:
            buf = self._frags[key] = _Fragments(sk.total)
        elif sk.total < buf.total:
            return None
        if sk.number == 1:
            buf.inner_type = sk.inner_type
        buf.parts[sk.number] = inner
        if len(buf.parts) < buf.total:
            return None
        del self._frags[key]
        whole = b"".join(buf.parts[i] for i in range(1, buf.total + 1))
        return decode_chain(whole, 0, buf.inner_type)

    def _update_peer_address(self, src: Address, local: Address) -> None:
        if src != self.remote and (self.nat or local[1] == self.settings.natt_port):
            self.remote = src  # a NAT mapping moved (RFC 7296 §2.23)
        if local[1] != self.local[1]:
            self.local = local

    def _receive_response(
        self,
        data: bytes,
        msg: Message,
        sk: EncryptedPayload | EncryptedFragmentPayload,
        src: Address,
        local: Address,
        now: float,
    ) -> None:
        out = self.outstanding.get(msg.message_id)
        if out is None or out.task.exchange != msg.exchange_type:
            self._count("unexpected_response_dropped")
            return
        try:
            payloads = self._open(data, msg, sk)
        except RemoteProtocolError as exc:
            if exc.notify is None:
                self._count("integrity_failed")
                return
            payloads = [NotifyPayload(exc.notify, exc.data)]
        if payloads is None:
            return
        out.rt.stop()
        del self.outstanding[msg.message_id]
        self.last_seen = now
        self._update_peer_address(src, local)
        if self.state != IkeState.CLOSED:
            out.task.done(self, payloads, now)
        self._kick(now)

    def _receive_request(
        self,
        data: bytes,
        msg: Message,
        sk: EncryptedPayload | EncryptedFragmentPayload,
        src: Address,
        local: Address,
        now: float,
    ) -> None:
        mid = msg.message_id
        if mid < self.peer_next_mid or mid in self._peer_done:
            cached = self.responses.get(mid)
            if cached is not None and (isinstance(sk, EncryptedPayload) or sk.number == 1):
                self._count("retransmitted_responses")
                self._send(cached, now)
            return
        if self.state == IkeState.CLOSED:
            return
        window = self.config.window_size if self.config else 1
        if mid >= self.peer_next_mid + window:
            self._count("outside_window_dropped")
            return
        try:
            payloads = self._open(data, msg, sk)
        except RemoteProtocolError as exc:
            if exc.notify is None:
                self._count("integrity_failed")
                return
            self.last_seen = now
            self._respond(msg, [NotifyPayload(exc.notify, exc.data)], now)
            return
        if payloads is None:
            return
        self.last_seen = now
        self._update_peer_address(src, local)
        ex = msg.exchange_type
        if ex == _IKE_AUTH:
            response = self._handle_ike_auth(payloads, now)
        elif self.state == IkeState.HALF_OPEN or not self.established:
            response = None
        elif ex == _CREATE_CHILD_SA:
            response = self._handle_create_child_sa(payloads, now)
        elif ex == _INFORMATIONAL:
            response = self._handle_informational(payloads, now)
        else:
            response = None
        if response is None:
            self._count("request_dropped")
            return
        self._respond(msg, response, now)
        self._after_response(now)

    def _respond(self, req: Message, payloads: list[Payload], now: float) -> None:
        mid = req.message_id
        msg = Message(req.exchange_type, mid, self.spi_i, self.spi_r, self.initiator, True)
        datagrams = self._protect(msg, payloads)
        self.responses[mid] = datagrams
        window = self.config.window_size if self.config else 1
        self.responses.pop(mid - window - 1, None)  # out of the window: never asked again
        if mid == self.peer_next_mid:
            self.peer_next_mid += 1
            while self.peer_next_mid in self._peer_done:
                self._peer_done.discard(self.peer_next_mid)
                self.peer_next_mid += 1
        else:
            self._peer_done.add(mid)
        self._send(datagrams, now)

    def _protect(self, msg: Message, payloads: list[Payload]) -> tuple[bytes, ...]:
        """SK-protect ``payloads``; fragment when negotiated and too big (RFC 7383 §2.5)."""
        assert self.protection is not None
        first, inner = encode_chain(payloads)
        cfg = self.config
        # (the quick test: an inner size far below the limit never needs the exact one)
        if self.peer_frag and cfg is not None and len(inner) + 160 > cfg.fragment_size:
            ip_overhead = (20 if ":" not in self.remote[0] else 40) + 8
            if self.local[1] == self.settings.natt_port:
                ip_overhead += 4
            limit = cfg.fragment_size - ip_overhead
            size = HEADER_LEN + self.protection.overhead() + len(inner) + self.protection._block
            if size > limit:
                return tuple(self.protection.seal_fragments(msg, first, inner, limit))
        return (self.protection.seal(msg, first, inner),)

    # --- sending requests -------------------------------------------------------------------------

    def _kick(self, now: float) -> None:
        """Send queued requests while the peer's window allows (RFC 7296 §2.3)."""
        if self.state in (IkeState.CLOSED, IkeState.INIT_SENT, IkeState.HALF_OPEN):
            return
        while self.queue and len(self.outstanding) < self.peer_window:
            task = self.queue.popleft()
            if self.state == IkeState.AUTH_SENT and not isinstance(task, IkeAuthTask):
                self.queue.appendleft(task)
                return
            self._send_request(task, now)

    def _send_request(self, task: Task, now: float) -> None:
        payloads = task.build(self, now)
        mid = self.next_mid
        self.next_mid += 1
        msg = Message(task.exchange, mid, self.spi_i, self.spi_r, self.initiator, False)
        datagrams = self._protect(msg, payloads)
        assert self.config is not None
        rt = Retransmitter(self.config.retransmit)
        rt.start(datagrams, now)
        self.outstanding[mid] = _Outstanding(task, rt, mid)
        self._send(datagrams, now)

    def queue_task(self, task: Task, now: float, front: bool = False) -> None:
        if front:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)
        self._kick(now)

    # --- timers -----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        times: list[float] = []
        if self._init_rt is not None and (t := self._init_rt.get_timer()) is not None:
            times.append(t)
        for out in self.outstanding.values():
            t = out.rt.get_timer()
            if t is not None:
                times.append(t)
        if self.state == IkeState.CLOSED:
            if self.linger_until is not None:
                times.append(self.linger_until)
            return min(times) if times else None
        for t2 in (self.half_open_until, self.rekey_at, self.expire_at, self.retry_at):
            if t2 is not None:
                times.append(t2)
        for c in self.children:
            if c.rekey_at is not None and c.state == ChildState.INSTALLED:
                times.append(c.rekey_at)
            if c.expire_at is not None:
                times.append(c.expire_at)
        if self.state == IkeState.ESTABLISHED and self.config is not None:
            if self.config.dpd_delay and not self.outstanding and not self.queue:
                times.append(self.last_seen + self.config.dpd_delay)
            if self.nat_local:
                times.append(self.last_sent + KEEPALIVE_INTERVAL)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._init_rt is not None:
            verdict = self._init_rt.handle_timer(now)
            if verdict == "resend":
                self._send(self._init_rt.datagrams, now)
            elif verdict == "failed":
                self._init_rt = None
                self._fail_init(
                    FailureReason.PEER_SILENT if not self.replied else FailureReason.PROTOCOL_ERROR,
                    "no IKE_SA_INIT response after the retransmission schedule",
                    None,
                )
                return
        for out in list(self.outstanding.values()):
            verdict = out.rt.handle_timer(now)
            if verdict == "resend":
                self._count("retransmissions")
                self._send(out.rt.datagrams, now)
            elif verdict == "failed":
                self._exchange_timed_out(out, now)
                return
        if self.state == IkeState.CLOSED:
            if self.linger_until is not None and now >= self.linger_until:
                self.linger_until = None
                self.ctx.unregister(self)
            return
        if self.half_open_until is not None and now >= self.half_open_until:
            self.half_open_until = None
            if self.state == IkeState.HALF_OPEN:
                self._count("half_open_expired")
                self._close("half-open timeout", linger=False)
                return
        if self.expire_at is not None and now >= self.expire_at:
            self.expire_at = None
            self.delete(now, reason="IKE SA lifetime expired")
            return
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = None
            if self.state == IkeState.ESTABLISHED:
                self.rekey(now)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            tasks, self._retry_tasks = self._retry_tasks, []
            for task in tasks:
                self.queue_task(task, now)
        for c in list(self.children):
            if c.expire_at is not None and now >= c.expire_at:
                c.expire_at = None
                if c.state != ChildState.DELETED:
                    self.delete_child(c.inbound_spi, now, reason="lifetime expired")
            elif c.rekey_at is not None and now >= c.rekey_at and c.state == ChildState.INSTALLED:
                c.rekey_at = None
                self.rekey_child(c.inbound_spi, now)
        if self.state == IkeState.ESTABLISHED and self.config is not None:
            if (
                self.config.dpd_delay
                and not self.outstanding
                and not self.queue
                and now >= self.last_seen + self.config.dpd_delay
            ):
                self.queue_task(InformationalTask([]), now)
            if self.nat_local and now >= self.last_sent + KEEPALIVE_INTERVAL:
                marker_free = Datagram(
                    b"\xff", (self.local[0], self.settings.natt_port), self.remote
                )
                self.ctx.outbox.append(marker_free)
                self.last_sent = now

    def _exchange_timed_out(self, out: _Outstanding, now: float) -> None:
        """No reply within the schedule: the IKE SA is dead (RFC 7296 §2.4)."""
        self.outstanding.pop(out.message_id, None)
        detail = f"no response to {_xname(out.task.exchange)} request {out.message_id}"
        if not self.established:
            self._event(
                NegotiationFailed(
                    FailureReason.PEER_SILENT,
                    detail,
                    self.remote,
                    self.replied,
                    self.ike_sa_id,
                    self.acquire_id,
                )
            )
            self._fail_waiting_children(FailureReason.PEER_SILENT, detail)
            self._close("peer not responding", linger=False)
            return
        self._teardown("peer not responding", failure=FailureReason.PEER_SILENT, extra=[out.task])

    # --- closing ----------------------------------------------------------------------------------

    def _teardown(
        self,
        reason: str,
        *,
        silent_ike: bool = False,
        failure: FailureReason = FailureReason.PROTOCOL_ERROR,
        extra: list[Task] | None = None,
    ) -> None:
        """Delete every Child SA and the IKE SA itself locally, with events; acquires still
        waiting for a Child SA on it fail with ``failure``."""
        pending = [*(extra or ()), *self.queue, *(o.task for o in self.outstanding.values())]
        pending += self._retry_tasks
        for task in pending:
            if isinstance(task, CreateChildTask) and task.req.acquire_id is not None:
                self._event(
                    NegotiationFailed(
                        failure,
                        f"IKE SA gone: {reason}",
                        self.remote,
                        True,
                        self.ike_sa_id,
                        task.req.acquire_id,
                    )
                )
        self._retry_tasks = []
        for c in self.children:
            if c.state != ChildState.DELETED:
                c.state = ChildState.DELETED
                self.ctx.release_child_spi(c.inbound_spi)
                self._event(ChildSaDeleted(c.protocol, c.inbound_spi, c.outbound_spi, reason))
        self.children.clear()
        if self.established and not silent_ike:
            self._event(IkeSaDeleted(self.ike_sa_id, reason))
        self._close(reason)

    def _close(self, reason: str, linger: bool = True) -> None:
        self.state = IkeState.CLOSED
        self.ctx.sa_closed(self)
        self._closed_reason = reason
        for out in self.outstanding.values():
            out.rt.stop()
        self.outstanding.clear()
        self.queue.clear()
        if self._init_rt is not None:
            self._init_rt.stop()
            self._init_rt = None
        self.kex = None
        if linger and self.responses:
            # Keep answering retransmissions of the last request for a while (§2.1).
            self.linger_until = self.last_seen + self.settings.half_open_timeout
        else:
            self.linger_until = None
            self.ctx.unregister(self)

    # --- IKE_AUTH ---------------------------------------------------------------------------------

    def _id_payload(self, cls: type[IdPayload]) -> IdPayload:
        assert self.config is not None
        ident = self.config.local.identity
        return cls(ident.id_type, ident.data)

    def _auth_payloads(
        self, id_payload: IdPayload, real_message: bytes, peer_nonce: bytes
    ) -> list[Payload]:
        """[CERT...] AUTH for our side (RFC 7296 §2.15)."""
        cfg = self.config
        assert cfg is not None and self.prf is not None and self.keys is not None
        sk_p = self.keys.sk_pi if self.initiator else self.keys.sk_pr
        octets = signed_octets(self.prf, real_message, peer_nonce, sk_p, id_payload)
        local = cfg.local
        out: list[Payload] = []
        if local.auth == AuthClass.PSK:
            if local.psk is None:
                raise LocalProtocolError(f"connection {cfg.name}: PSK authentication without a PSK")
            out.append(
                AuthPayload(AuthMethod.SHARED_KEY_MIC, psk_auth(self.prf, local.psk, octets))
            )
            return out
        if local.send_cert:
            for cert in local.certificates:
                out.append(CertPayload(CertEncoding.X509_CERT_SIGNATURE, cert_der(cert)))
        out.append(sign(local, octets, self.peer_hashes, cfg.signature_hashes))
        return out

    def _verify_peer(
        self, cfg: PeerConfig, id_payload: IdPayload, auth: AuthPayload, certs: list[CertPayload]
    ) -> str | None:
        """The reason the peer's AUTH fails, or ``None`` when it verifies."""
        assert self.prf is not None and self.keys is not None
        want = cfg.remote.identity
        if want is not None and (want.id_type, want.data) != (id_payload.id_type, id_payload.data):
            return "peer identity does not match the configuration"
        if self.settings.accept_any_auth:
            return None
        sk_p = self.keys.sk_pr if self.initiator else self.keys.sk_pi
        real = self.init_response if self.initiator else self.init_request
        my_nonce = self.nonce_i if self.initiator else self.nonce_r
        octets = signed_octets(self.prf, real, my_nonce, sk_p, id_payload)
        res = verify_auth(
            cfg.remote, cfg.local, auth, octets, self.prf, id_payload, certs, self.ctx.cert_time
        )
        return None if res.ok else res.reason

    def _build_ike_auth(self, now: float) -> list[Payload]:
        cfg = self.config
        assert cfg is not None
        idi = self._id_payload(IdI)
        self.local_id = idi
        payloads: list[Payload] = [idi]
        auth = self._auth_payloads(idi, self.init_request, self.nonce_r)
        payloads.extend(p for p in auth if isinstance(p, CertPayload))
        if (
            cfg.remote.auth != AuthClass.PSK
            and cfg.remote.trust_anchors
            and cfg.remote.send_certreq
        ):
            payloads.append(
                CertReqPayload(
                    CertEncoding.X509_CERT_SIGNATURE, certreq_authorities(cfg.remote.trust_anchors)
                )
            )
        if cfg.send_initial_contact:
            payloads.append(NotifyPayload(N.INITIAL_CONTACT))
        if cfg.remote.identity is not None:
            payloads.append(IdR(cfg.remote.identity.id_type, cfg.remote.identity.data))
        payloads.extend(p for p in auth if isinstance(p, AuthPayload))
        if cfg.window_size > 1:
            payloads.append(NotifyPayload(N.SET_WINDOW_SIZE, cfg.window_size.to_bytes(4, "big")))
        if self._first_child is not None:
            payloads.extend(self._child_request_payloads(self._first_child, ike_auth=True))
        return payloads

    def _on_ike_auth_response(self, payloads: list[Payload], now: float) -> None:
        cfg = self.config
        assert cfg is not None
        idr = _first(payloads, IdR)
        auth = _first(payloads, AuthPayload)
        notifies = [p for p in payloads if isinstance(p, NotifyPayload)]
        if idr is None or auth is None:
            err = next((n for n in notifies if n.notify_type <= 16383), None)
            ntype = err.notify_type if err else None
            reason = (
                FailureReason.AUTHENTICATION_FAILED
                if ntype == N.AUTHENTICATION_FAILED
                else FailureReason.PROTOCOL_ERROR
            )
            self._event(
                NegotiationFailed(
                    reason,
                    f"IKE_AUTH answered with {_nname(ntype) if ntype else 'no AUTH'}",
                    self.remote,
                    True,
                    self.ike_sa_id,
                    self.acquire_id,
                    ntype,
                )
            )
            self._close("authentication failed", linger=False)
            return
        certs = [p for p in payloads if isinstance(p, CertPayload)]
        why = self._verify_peer(cfg, idr, auth, certs)
        if why is not None:
            self._event(
                NegotiationFailed(
                    FailureReason.AUTHENTICATION_FAILED,
                    why,
                    self.remote,
                    True,
                    self.ike_sa_id,
                    self.acquire_id,
                    N.AUTHENTICATION_FAILED,
                )
            )
            # RFC 7296 §2.21.2: tell the responder in a separate INFORMATIONAL exchange.
            self.state = IkeState.DELETING
            self.queue_task(
                InformationalTask([NotifyPayload(N.AUTHENTICATION_FAILED)], close=True), now
            )
            return
        self.peer_id = idr
        self._established(notifies, now)
        req = self._first_child
        self._first_child = None
        if req is not None:
            self._child_response(req, payloads, now, ike_auth=True)

    def _established(self, notifies: list[NotifyPayload], now: float) -> None:
        cfg = self.config
        assert cfg is not None and self.selected is not None
        self.state = IkeState.ESTABLISHED
        self.half_open_until = None
        for n in notifies:
            if n.notify_type == N.SET_WINDOW_SIZE and len(n.data) == 4:
                self.peer_window = max(1, min(int.from_bytes(n.data, "big"), 64))
        if cfg.rekey_time is not None:
            self.rekey_at = now + cfg.rekey_time
            self.expire_at = now + cfg.rekey_time + cfg.over_time
        local_id = self.local_id
        peer_id = self.peer_id
        self.ctx.established(self)
        self._event(
            IkeSaEstablished(
                self.ike_sa_id,
                2,
                self.local,
                self.remote,
                _id_text(local_id),
                _id_text(peer_id),
                self.selected.name(),
                self.initiator,
            )
        )

    def _handle_ike_auth(self, payloads: list[Payload], now: float) -> list[Payload] | None:
        if self.state != IkeState.HALF_OPEN:
            return None
        idi = _first(payloads, IdI)
        auth = _first(payloads, AuthPayload)
        if idi is None or auth is None:
            return [NotifyPayload(N.INVALID_SYNTAX)]
        want_idr = _first(payloads, IdR)
        certs = [p for p in payloads if isinstance(p, CertPayload)]
        notifies = [p for p in payloads if isinstance(p, NotifyPayload)]
        cfg, why = self._pick_config(idi, want_idr, auth, certs)
        if cfg is None:
            self._count("authentication_failed")
            self._event(
                NegotiationFailed(
                    FailureReason.AUTHENTICATION_FAILED,
                    why,
                    self.remote,
                    True,
                    self.ike_sa_id,
                    None,
                    N.AUTHENTICATION_FAILED,
                )
            )
            self.state = IkeState.CLOSED
            self.ctx.sa_closed(self)
            self.half_open_until = None
            self.linger_until = now + self.settings.half_open_timeout
            return [NotifyPayload(N.AUTHENTICATION_FAILED)]
        self.config = cfg
        self.peer_id = idi
        idr = self._id_payload(IdR)
        self.local_id = idr
        response: list[Payload] = [idr]
        response.extend(self._auth_payloads(idr, self.init_response, self.nonce_i))
        if cfg.window_size > 1:
            response.append(NotifyPayload(N.SET_WINDOW_SIZE, cfg.window_size.to_bytes(4, "big")))
        self._established(notifies, now)
        if any(n.notify_type == N.INITIAL_CONTACT for n in notifies):
            self.ctx.initial_contact(self)
        sa_p = _first(payloads, SaPayload)
        tsi = _first(payloads, TsI)
        tsr = _first(payloads, TsR)
        if sa_p is not None and tsi is not None and tsr is not None:
            response.extend(
                self._child_respond(sa_p, tsi, tsr, notifies, None, None, now, ike_auth=True)
            )
        return response

    def _pick_config(
        self, idi: IdI, idr: IdR | None, auth: AuthPayload, certs: list[CertPayload]
    ) -> tuple[PeerConfig | None, str]:
        """The connection whose remote identity is ``idi`` (and local one ``idr``, if given)
        and whose authentication verifies (strongSwan's config lookup in IKE_AUTH)."""
        why = "no connection matches the peer's identity"
        cands = self.candidates or ([self.config] if self.config else [])
        for cfg in cands:
            rid = cfg.remote.identity
            if rid is not None and (rid.id_type, rid.data) != (idi.id_type, idi.data):
                continue
            lid = cfg.local.identity
            if idr is not None and (lid.id_type, lid.data) != (idr.id_type, idr.data):
                continue
            reason = self._verify_peer(cfg, idi, auth, certs)
            if reason is None:
                return cfg, ""
            why = reason
        return None, why

    # --- Child SAs: shared pieces ---------------------------------------------------------------

    def _dynamic_ts(self, address: str) -> tuple[TrafficSelector, ...]:
        return (TrafficSelector.from_network(address),)

    def _child_request(
        self,
        cfg: ChildConfig,
        rekey: ChildSa | None,
        ike_auth: bool,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None,
        acquire_id: int | None,
        dh_group: int | None = None,
    ) -> _ChildRequest:
        spi = self.ctx.new_child_spi()
        spi_b = spi.to_bytes(4, "big")
        proposals = [
            p.to_proposal(i + 1, spi_b, with_dh=not ike_auth) for i, p in enumerate(cfg.proposals)
        ]
        if rekey is not None:
            tsi, tsr = list(rekey.ts_local), list(rekey.ts_remote)
        else:
            tsi = list(cfg.local_ts or self._dynamic_ts(self.local[0]))
            tsr = list(cfg.remote_ts or self._dynamic_ts(self.remote[0]))
            if packet_ts is not None:  # RFC 7296 §2.9: the triggering packet first
                tsi.insert(0, packet_ts[0])
                tsr.insert(0, packet_ts[1])
        req = _ChildRequest(cfg, spi, proposals, tsi, tsr, rekey=rekey, acquire_id=acquire_id)
        if not ike_auth:
            req.nonce = self.rng(self.config.nonce_size if self.config else 32)
            groups = cfg.pfs_groups
            if groups:
                req.dh_group = dh_group or groups[0]
                req.kex = dh(req.dh_group).generate()
        return req

    def _child_request_payloads(self, req: _ChildRequest, ike_auth: bool) -> list[Payload]:
        out: list[Payload] = []
        if req.rekey is not None:
            out.append(
                NotifyPayload(
                    N.REKEY_SA, b"", req.rekey.protocol, req.rekey.inbound_spi.to_bytes(4, "big")
                )
            )
        if req.config.mode == Mode.TRANSPORT:
            out.append(NotifyPayload(N.USE_TRANSPORT_MODE))
        if not req.config.tfc_padding:
            out.append(NotifyPayload(N.ESP_TFC_PADDING_NOT_SUPPORTED))
        out.append(SaPayload(req.proposals))
        if not ike_auth:
            out.append(NoncePayload(req.nonce))
            if req.kex is not None:
                out.append(KePayload(req.dh_group, req.kex.public_value))
        out.append(TsI(list(req.tsi)))
        out.append(TsR(list(req.tsr)))
        return out

    def _make_child(
        self,
        cfg: ChildConfig,
        sel: Selected,
        in_spi: int,
        out_spi: int,
        mode: Mode,
        ts_local: list[TrafficSelector],
        ts_remote: list[TrafficSelector],
        ni: bytes,
        nr: bytes,
        g_ir: bytes | None,
        we_initiated: bool,
        peer_tfc_ok: bool,
        now: float,
        acquire_id: int | None,
    ) -> ChildSa:
        """KEYMAT (RFC 7296 §2.17) and the two SAs for the driver."""
        assert self.prf is not None and self.keys is not None
        e = encr(sel.encr_id, sel.encr_bits) if sel.encr_id else None
        i = integ(sel.integ_id) if sel.integ_id else None
        keys = ikev2_child_keymat(
            self.prf,
            self.keys.sk_d,
            ni,
            nr,
            e.key_len if e else 0,
            i.key_len if i else 0,
            g_ir,
        )
        if we_initiated:
            out_e, out_a, in_e, in_a = keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r
        else:
            out_e, out_a, in_e, in_a = keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i
        lifetime = _lifetime(cfg)
        protocol = IpsecProtocol(sel.protocol)
        natt = self.nat
        peer_port = self.remote[1]
        local_port = self.settings.natt_port if natt else self.local[1]
        encr_id = sel.encr_id or None
        integ_id = sel.integ_id or None
        # One tuple per side, shared by both directions' parameters and the ChildSa.
        ts_l = tuple(ts_local)
        ts_r = tuple(ts_remote)
        inbound = ChildSaParams(
            in_spi,
            protocol,
            mode,
            self.remote[0],
            self.local[0],
            encr_id,
            sel.encr_bits,
            in_e,
            integ_id,
            in_a,
            sel.esn,
            (peer_port, local_port) if natt else None,
            ts_r,
            ts_l,
            lifetime,
            cfg.replay_window,
        )
        outbound = ChildSaParams(
            out_spi,
            protocol,
            mode,
            self.local[0],
            self.remote[0],
            encr_id,
            sel.encr_bits,
            out_e,
            integ_id,
            out_a,
            sel.esn,
            (local_port, peer_port) if natt else None,
            ts_l,
            ts_r,
            lifetime,
            cfg.replay_window,
            peer_tfc_ok,
        )
        pair = ChildSaPair(inbound, outbound, self.ike_sa_id, 2, cfg.name, acquire_id)
        child = ChildSa(
            cfg,
            sel,
            in_spi,
            out_spi,
            protocol,
            mode,
            ts_l,
            ts_r,
            pair,
            now,
            (ni, nr),
            we_initiated,
            acquire_id=acquire_id,
        )
        if cfg.rekey_time is not None:
            child.rekey_at = now + cfg.rekey_time
        if cfg.life_time is not None:
            child.expire_at = now + cfg.life_time
        return child

    def _child_respond(
        self,
        sa_p: SaPayload,
        tsi: TsI,
        tsr: TsR,
        notifies: list[NotifyPayload],
        nonce_i: bytes | None,
        ke: KePayload | None,
        now: float,
        *,
        ike_auth: bool,
        rekey: ChildSa | None = None,
    ) -> list[Payload]:
        """Responder side of a Child SA (IKE_AUTH or CREATE_CHILD_SA): proposal, selectors
        (§2.9 narrowing), mode, keys; an error notify instead when it cannot be made."""
        cfg_all = self.config
        assert cfg_all is not None
        candidates = [rekey.config] if rekey is not None else list(cfg_all.children)
        chosen: tuple[ChildConfig, list[TrafficSelector], list[TrafficSelector]] | None = None
        for cfg in candidates:
            remote_ts = cfg.remote_ts or self._dynamic_ts(self.remote[0])
            local_ts = cfg.local_ts or self._dynamic_ts(self.local[0])
            n_tsi = narrow(tsi.selectors, remote_ts)
            n_tsr = narrow(tsr.selectors, local_ts)
            if n_tsi and n_tsr:
                chosen = (cfg, n_tsi, n_tsr)
                break
        if chosen is None:
            return self._child_refused(
                N.TS_UNACCEPTABLE, "no child configuration matches the selectors"
            )
        cfg, n_tsi, n_tsr = chosen
        sel = select(
            cfg.proposals,
            sa_p.proposals,
            ignore_dh=ike_auth,
            prefer_local=self.settings.prefer_local_proposals,
        )
        if sel is None or len(sel.spi) != 4:
            return self._child_refused(N.NO_PROPOSAL_CHOSEN, "no acceptable ESP/AH proposal")
        transport = any(n.notify_type == N.USE_TRANSPORT_MODE for n in notifies)
        if cfg.mode == Mode.TRANSPORT and not transport:
            return self._child_refused(N.NO_PROPOSAL_CHOSEN, "peer wants tunnel mode, we transport")
        mode = Mode.TRANSPORT if transport and cfg.mode == Mode.TRANSPORT else Mode.TUNNEL
        g_ir: bytes | None = None
        kex: KeyExchange | None = None
        if not ike_auth and sel.dh_id:
            if ke is None or ke.dh_group != sel.dh_id:
                return [NotifyPayload(N.INVALID_KE_PAYLOAD, sel.dh_id.to_bytes(2, "big"))]
            kex = dh(sel.dh_id).generate()
            try:
                g_ir = kex.shared_secret(ke.data)
            except RemoteProtocolError:
                return [NotifyPayload(N.INVALID_SYNTAX)]
        if ike_auth:
            ni, nr = self.nonce_i, self.nonce_r
            nr_payload: list[Payload] = []
        else:
            assert nonce_i is not None
            ni, nr = nonce_i, self.rng(cfg_all.nonce_size)
            nr_payload = [NoncePayload(nr)]
        spi = self.ctx.new_child_spi()
        peer_tfc_ok = not any(n.notify_type == N.ESP_TFC_PADDING_NOT_SUPPORTED for n in notifies)
        child = self._make_child(
            cfg,
            sel,
            spi,
            int.from_bytes(sel.spi, "big"),
            mode,
            n_tsr,
            n_tsi,
            ni,
            nr,
            g_ir,
            False,
            peer_tfc_ok,
            now,
            None,
        )
        out: list[Payload] = []
        if mode == Mode.TRANSPORT:
            out.append(NotifyPayload(N.USE_TRANSPORT_MODE))
        if not cfg.tfc_padding:
            out.append(NotifyPayload(N.ESP_TFC_PADDING_NOT_SUPPORTED))
        out.append(SaPayload([sel.to_proposal(spi=spi.to_bytes(4, "big"))]))
        out.extend(nr_payload)
        if kex is not None:
            out.append(KePayload(sel.dh_id, kex.public_value))
        out.append(TsI(n_tsi))
        out.append(TsR(n_tsr))
        self.children.append(child)
        if rekey is not None:
            if rekey.state == ChildState.REKEYING:
                rekey.collision = child  # simultaneous rekey (§2.8.1), resolved later
            else:
                rekey.state = ChildState.REKEYED
            self._event(ChildSaRekeyed(child.pair, rekey.inbound_spi, rekey.outbound_spi))
        else:
            self._event(ChildSaEstablished(child.pair))
        return out

    def _child_refused(self, notify: int, detail: str) -> list[Payload]:
        self._event(
            NegotiationFailed(
                _reason(notify),
                detail,
                self.remote,
                True,
                self.ike_sa_id,
                None,
                notify,
            )
        )
        return [NotifyPayload(notify)]

    def _child_response(
        self, req: _ChildRequest, payloads: list[Payload], now: float, *, ike_auth: bool
    ) -> ChildSa | None:
        """Initiator side: check the responder's answer and make the Child SA."""
        notifies = [p for p in payloads if isinstance(p, NotifyPayload)]
        err = next((n for n in notifies if n.notify_type <= 16383), None)
        sa_p = _first(payloads, SaPayload)
        tsi = _first(payloads, TsI)
        tsr = _first(payloads, TsR)
        if err is not None or sa_p is None or tsi is None or tsr is None:
            ntype = err.notify_type if err is not None else None
            if ntype == N.INVALID_KE_PAYLOAD and not ike_auth and err is not None:
                group = int.from_bytes(err.data[:2], "big") if len(err.data) >= 2 else 0
                if group in req.config.pfs_groups and group != req.dh_group:
                    retry = self._child_request(
                        req.config, req.rekey, False, None, req.acquire_id, dh_group=group
                    )
                    retry.tsi, retry.tsr = req.tsi, req.tsr
                    self.queue_task(CreateChildTask(retry), now, front=True)
                    return None
            if ntype == N.TEMPORARY_FAILURE and not ike_auth:
                self._child_retry_later(req, now)
                return None
            if req.rekey is not None:
                self._rekey_failed(req, ntype, now)
                return None
            self._event(
                NegotiationFailed(
                    _reason(ntype),
                    f"Child SA {req.config.name} refused: {_nname(ntype) if ntype else 'no SA/TS'}",
                    self.remote,
                    True,
                    self.ike_sa_id,
                    req.acquire_id,
                    ntype,
                )
            )
            return None
        sel = check_answer(req.proposals, sa_p.proposals, ignore_dh=ike_auth)
        problem = None
        if sel is None or len(sel.spi) != 4:
            problem = "responder chose an ESP/AH proposal we did not offer"
        elif not all(covered(t, req.tsi) for t in tsi.selectors) or not all(
            covered(t, req.tsr) for t in tsr.selectors
        ):
            problem = "responder's selectors are not within ours"
        transport = any(n.notify_type == N.USE_TRANSPORT_MODE for n in notifies)
        if problem is None and req.config.mode == Mode.TRANSPORT and not transport:
            problem = "responder refused transport mode"
        g_ir = None
        ke = _first(payloads, KePayload)
        nonce = _first(payloads, NoncePayload)
        if problem is None and not ike_auth:
            assert sel is not None
            if nonce is None:
                problem = "CREATE_CHILD_SA response without Nr"
            elif sel.dh_id:
                if (
                    req.kex is None
                    or ke is None
                    or ke.dh_group != req.dh_group
                    or sel.dh_id != req.dh_group
                ):
                    problem = "responder's key exchange does not match ours"
                else:
                    try:
                        g_ir = req.kex.shared_secret(ke.data)
                    except RemoteProtocolError as exc:
                        problem = f"bad KEr: {exc}"
        if problem is not None or sel is None:
            # The responder installed its SAs: delete them (RFC 7296 §1.4.1).
            if sa_p.proposals and len(sa_p.proposals[0].spi) == 4:
                self.queue_task(
                    DeleteChildTask(
                        [], raw=(sa_p.proposals[0].protocol_id, [req.spi.to_bytes(4, "big")])
                    ),
                    now,
                )
            self._event(
                NegotiationFailed(
                    FailureReason.PROTOCOL_ERROR
                    if sel is not None
                    else FailureReason.NO_PROPOSAL_CHOSEN,
                    problem or "bad answer",
                    self.remote,
                    True,
                    self.ike_sa_id,
                    req.acquire_id,
                )
            )
            if req.rekey is not None and req.rekey.state == ChildState.REKEYING:
                req.rekey.state = ChildState.INSTALLED
            return None
        if ike_auth:
            ni, nr = self.nonce_i, self.nonce_r
        else:
            assert nonce is not None
            ni, nr = req.nonce, nonce.data
        peer_tfc_ok = not any(n.notify_type == N.ESP_TFC_PADDING_NOT_SUPPORTED for n in notifies)
        mode = Mode.TRANSPORT if transport else Mode.TUNNEL
        child = self._make_child(
            req.config,
            sel,
            req.spi,
            int.from_bytes(sel.spi, "big"),
            mode,
            list(tsi.selectors),
            list(tsr.selectors),
            ni,
            nr,
            g_ir,
            True,
            peer_tfc_ok,
            now,
            req.acquire_id,
        )
        self.children.append(child)
        old = req.rekey
        if old is None:
            self._event(ChildSaEstablished(child.pair))
            return child
        self._event(ChildSaRekeyed(child.pair, old.inbound_spi, old.outbound_spi))
        peer_new = old.collision
        if peer_new is not None and peer_new.state != ChildState.DELETED:
            # RFC 7296 §2.8.1: the SA made with the lowest of the four nonces is redundant and
            # is deleted by whoever created it; the other side then deletes the old SA.
            mine_low = min(ni, nr)
            theirs_low = min(peer_new.nonces)
            old.state = ChildState.REKEYED
            if mine_low < theirs_low:
                child.state = ChildState.DELETING
                self.queue_task(
                    DeleteChildTask([child], reason="redundant (simultaneous rekey)"), now
                )
                return child
        if old.state != ChildState.DELETED:
            old.state = ChildState.DELETING
            self.queue_task(DeleteChildTask([old], reason="rekeyed"), now)
        return child

    def _child_retry_later(self, req: _ChildRequest, now: float) -> None:
        lo, hi = TEMPORARY_FAILURE_RETRY
        delay = lo + (hi - lo) * (self.rng(1)[0] / 255)
        self.retry_at = min(self.retry_at or now + delay, now + delay)
        if req.rekey is not None:
            if req.rekey.collision is not None:
                req.rekey.state = ChildState.REKEYED  # the peer's rekey won; it deletes the old SA
                return None
            req.rekey.state = ChildState.INSTALLED
            req.rekey.rekey_at = now + delay
            return None
        retry = self._child_request(req.config, None, False, None, req.acquire_id)
        retry.tsi, retry.tsr = req.tsi, req.tsr
        self._retry_tasks.append(CreateChildTask(retry))
        return None

    def _rekey_failed(self, req: _ChildRequest, ntype: int | None, now: float) -> None:
        old = req.rekey
        assert old is not None
        if old.collision is not None:
            old.state = ChildState.REKEYED  # the peer's replacement stands; it deletes the old SA
            return
        if ntype == N.CHILD_SA_NOT_FOUND:
            # The peer no longer has it (RFC 7296 §2.25): drop it locally.
            self._remove_child(old, "not found at peer")
            return
        old.state = ChildState.INSTALLED
        self._event(
            NegotiationFailed(
                _reason(ntype),
                f"rekey of Child SA {old.inbound_spi:08x} refused: {_nname(ntype)}",
                self.remote,
                True,
                self.ike_sa_id,
                None,
                ntype,
            )
        )

    def _remove_child(self, child: ChildSa, reason: str) -> None:
        if child.state == ChildState.DELETED:
            return
        child.state = ChildState.DELETED
        self.ctx.release_child_spi(child.inbound_spi)
        if child in self.children:
            self.children.remove(child)
        self._event(ChildSaDeleted(child.protocol, child.inbound_spi, child.outbound_spi, reason))

    def child_by_inbound(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children if c.inbound_spi == spi), None)

    def child_by_outbound(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children if c.outbound_spi == spi), None)

    # --- CREATE_CHILD_SA responder ----------------------------------------------------------------

    def _busy_with_child(self) -> bool:
        return any(isinstance(o.task, CreateChildTask) for o in self.outstanding.values())

    def _handle_create_child_sa(self, payloads: list[Payload], now: float) -> list[Payload]:
        sa_p = _first(payloads, SaPayload)
        nonce = _first(payloads, NoncePayload)
        ke = _first(payloads, KePayload)
        tsi = _first(payloads, TsI)
        tsr = _first(payloads, TsR)
        notifies = [p for p in payloads if isinstance(p, NotifyPayload)]
        if sa_p is None or nonce is None:
            return [NotifyPayload(N.INVALID_SYNTAX)]
        if self.state != IkeState.ESTABLISHED:
            return [NotifyPayload(N.TEMPORARY_FAILURE)]
        if sa_p.proposals and sa_p.proposals[0].protocol_id == IpsecProtocol.IKE:
            return self._respond_ike_rekey(sa_p, nonce, ke, now)
        if tsi is None or tsr is None:
            return [NotifyPayload(N.INVALID_SYNTAX)]
        if self._rekey_task is not None:
            return [NotifyPayload(N.TEMPORARY_FAILURE)]  # §2.25.2: we are rekeying the IKE SA
        rekey_n = next((n for n in notifies if n.notify_type == N.REKEY_SA), None)
        old: ChildSa | None = None
        if rekey_n is not None:
            spi = int.from_bytes(rekey_n.spi, "big") if len(rekey_n.spi) == 4 else -1
            old = self.child_by_outbound(spi)
            if old is None or old.state == ChildState.DELETED:
                return [NotifyPayload(N.CHILD_SA_NOT_FOUND, b"", rekey_n.protocol_id, rekey_n.spi)]
            if old.state in (ChildState.DELETING, ChildState.REKEYED):
                return [NotifyPayload(N.TEMPORARY_FAILURE)]  # §2.25.1
        return self._child_respond(
            sa_p, tsi, tsr, notifies, nonce.data, ke, now, ike_auth=False, rekey=old
        )

    # --- IKE SA rekey (RFC 7296 §2.18, §2.8.2) --------------------------------------------------

    def _respond_ike_rekey(
        self, sa_p: SaPayload, nonce: NoncePayload, ke: KePayload | None, now: float
    ) -> list[Payload]:
        cfg = self.config
        assert cfg is not None and self.selected is not None
        if self._busy_with_child():
            return [NotifyPayload(N.TEMPORARY_FAILURE)]  # §2.25.2
        sel = select(
            cfg.proposals, sa_p.proposals, prefer_local=self.settings.prefer_local_proposals
        )
        if sel is None or len(sel.spi) != 8 or not sel.dh_id:
            return [NotifyPayload(N.NO_PROPOSAL_CHOSEN)]
        if ke is None or ke.dh_group != sel.dh_id:
            return [NotifyPayload(N.INVALID_KE_PAYLOAD, sel.dh_id.to_bytes(2, "big"))]
        kex = dh(sel.dh_id).generate()
        try:
            g_ir = kex.shared_secret(ke.data)
        except RemoteProtocolError:
            return [NotifyPayload(N.INVALID_SYNTAX)]
        nr = self.rng(cfg.nonce_size)
        new_spi = self.ctx.new_ike_spi()
        new = self._rekeyed_sa(
            initiator=False,
            spi_i=sel.spi,
            spi_r=new_spi,
            sel=sel,
            g_ir=g_ir,
            ni=nonce.data,
            nr=nr,
            now=now,
        )
        if self._rekey_task is not None:
            self._rekey_collision = (new, nonce.data, nr)
        else:
            self._adopt(new, now)
        return [
            SaPayload([sel.to_proposal(spi=new_spi)]),
            NoncePayload(nr),
            KePayload(sel.dh_id, kex.public_value),
        ]

    def _rekeyed_sa(
        self,
        *,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        sel: Selected,
        g_ir: bytes,
        ni: bytes,
        nr: bytes,
        now: float,
    ) -> IkeSa:
        assert self.prf is not None and self.keys is not None
        new = IkeSa(
            self.ctx,
            initiator=initiator,
            spi_i=spi_i,
            spi_r=spi_r,
            local=self.local,
            remote=self.remote,
            config=self.config,
            now=now,
        )
        new.nonce_i, new.nonce_r = ni, nr
        skeyseed = ikev2_rekey_skeyseed(self.prf, self.keys.sk_d, g_ir, ni, nr)
        new._derive_keys(sel, g_ir, skeyseed)
        new.state = IkeState.ESTABLISHED
        new.peer_frag = self.peer_frag
        new.peer_hashes = self.peer_hashes
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.peer_id, new.local_id = self.peer_id, self.local_id
        new.peer_window = self.peer_window
        new.next_mid = 0
        new.peer_next_mid = 0
        new.last_seen = now
        cfg = self.config
        if cfg is not None and cfg.rekey_time is not None:
            new.rekey_at = now + cfg.rekey_time
            new.expire_at = now + cfg.rekey_time + cfg.over_time
        self.ctx.register(new)
        self.ctx.established(new)
        return new

    def _adopt(self, new: IkeSa, now: float) -> None:
        """Hand our Child SAs to the new IKE SA that replaces us."""
        moved = [c for c in self.children if c.state != ChildState.DELETED]
        for c in moved:
            c.pair = ChildSaPair(
                c.pair.inbound, c.pair.outbound, new.ike_sa_id, 2, c.pair.name, c.pair.acquire_id
            )
        new.children.extend(moved)
        self.children.clear()
        # Child SA work waiting on this IKE SA continues on the new one.
        pending = [t for t in self.queue if isinstance(t, CreateChildTask)]
        self.queue = deque(t for t in self.queue if not isinstance(t, CreateChildTask))
        for t in pending:
            new.queue.append(t)
        if self._retry_tasks:
            new._retry_tasks.extend(self._retry_tasks)
            new.retry_at = self.retry_at
            self._retry_tasks = []
            self.retry_at = None
        new._kick(now)
        self.ctx.touch(new)
        self.state = IkeState.REKEYED
        self.rekeyed_into = new
        self.rekey_at = None
        self.expire_at = now + self.settings.half_open_timeout
        self._event(IkeSaRekeyed(self.ike_sa_id, new.ike_sa_id))

    def _ike_rekey_done(self, task: RekeyIkeTask, payloads: list[Payload], now: float) -> None:
        self._rekey_task = None
        notifies = [p for p in payloads if isinstance(p, NotifyPayload)]
        err = next((n for n in notifies if n.notify_type <= 16383), None)
        collision = self._rekey_collision
        self._rekey_collision = None
        if err is not None:
            if collision is not None:
                self._adopt(collision[0], now)
                return
            if err.notify_type == N.INVALID_KE_PAYLOAD and len(err.data) >= 2:
                group = int.from_bytes(err.data[:2], "big")
                assert self.config is not None
                if (
                    group in {g for p in self.config.proposals for g in p.dh}
                    and group != task.dh_group
                ):
                    self.queue_task(RekeyIkeTask(group), now, front=True)
                    return
            if err.notify_type == N.TEMPORARY_FAILURE:
                lo, hi = TEMPORARY_FAILURE_RETRY
                self.rekey_at = now + lo + (hi - lo) * (self.rng(1)[0] / 255)
            return
        sa_p = _first(payloads, SaPayload)
        nonce = _first(payloads, NoncePayload)
        ke = _first(payloads, KePayload)
        sel = check_answer(task.proposals, sa_p.proposals) if sa_p else None
        if (
            sel is None
            or nonce is None
            or ke is None
            or task.kex is None
            or ke.dh_group != task.dh_group
            or len(sel.spi) != 8
        ):
            if collision is not None:
                self._adopt(collision[0], now)
            return
        try:
            g_ir = task.kex.shared_secret(ke.data)
        except RemoteProtocolError:
            return
        new = self._rekeyed_sa(
            initiator=True,
            spi_i=task.spi,
            spi_r=sel.spi,
            sel=sel,
            g_ir=g_ir,
            ni=task.nonce,
            nr=nonce.data,
            now=now,
        )
        if collision is not None:
            peer_new, pni, pnr = collision
            if min(task.nonce, nonce.data) < min(pni, pnr):
                # Ours is redundant (§2.8.2): delete it; the peer deletes the old IKE SA.
                self._adopt(peer_new, now)
                new.queue_task(DeleteIkeTask("redundant (simultaneous rekey)", silent=True), now)
                return
            # Ours survives: the peer deletes its new SA; we delete the old one.
            self._adopt(new, now)
            self.queue_task(DeleteIkeTask("rekeyed", silent=True), now)
            return
        self._adopt(new, now)
        self.queue_task(DeleteIkeTask("rekeyed", silent=True), now)

    # --- INFORMATIONAL ----------------------------------------------------------------------------

    def _handle_informational(self, payloads: list[Payload], now: float) -> list[Payload]:
        response: list[Payload] = []
        for p in payloads:
            if isinstance(p, DeletePayload):
                if p.protocol_id == IpsecProtocol.IKE:
                    self._on_delete_ike(now)
                    return []
                ours: list[bytes] = []
                for spi_b in p.spis:
                    child = self.child_by_outbound(int.from_bytes(spi_b, "big"))
                    if child is None or child.state == ChildState.DELETED:
                        continue
                    if child.state != ChildState.DELETING:
                        ours.append(child.inbound_spi.to_bytes(4, "big"))
                    self._remove_child(child, "deleted by peer")
                if ours:
                    response.append(DeletePayload(p.protocol_id, ours))
            elif isinstance(p, NotifyPayload):
                if p.notify_type == N.AUTHENTICATION_FAILED:
                    self._event(
                        NegotiationFailed(
                            FailureReason.AUTHENTICATION_FAILED,
                            "peer could not authenticate us",
                            self.remote,
                            True,
                            self.ike_sa_id,
                            self.acquire_id,
                            N.AUTHENTICATION_FAILED,
                        )
                    )
                    self._after_close = "authentication failed at peer"
                elif p.notify_type == N.INVALID_SPI:
                    raw = p.data if len(p.data) == 4 else p.spi
                    child = (
                        self.child_by_outbound(int.from_bytes(raw, "big"))
                        if len(raw) == 4
                        else None
                    )
                    if child is not None and child.state == ChildState.INSTALLED:
                        child.state = ChildState.DELETING
                        self.queue_task(
                            DeleteChildTask([child], reason="peer reported INVALID_SPI"), now
                        )
        return response

    def _after_response(self, now: float) -> None:
        if self._after_close:
            reason, self._after_close = self._after_close, ""
            self._teardown(reason, silent_ike=self._after_close_silent)

    def _on_delete_ike(self, now: float) -> None:
        """The peer deletes this IKE SA (and so every Child SA of it, RFC 7296 §1.4.1)."""
        if self.state == IkeState.REKEYED:
            self._after_close = "rekeyed"
            self.children.clear()
            self._after_close_silent = True
            return
        self._after_close = "deleted by peer"

    # --- public operations ------------------------------------------------------------------------

    def create_child(
        self,
        cfg: ChildConfig,
        now: float,
        acquire_id: int | None = None,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None = None,
    ) -> None:
        """Add a Child SA with CREATE_CHILD_SA (RFC 7296 §1.3.1)."""
        if self.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT) and self._first_child is None:
            self._first_child = self._child_request(cfg, None, True, packet_ts, acquire_id)
            return
        req = self._child_request(cfg, None, False, packet_ts, acquire_id)
        self.queue_task(CreateChildTask(req), now)

    def rekey_child(self, inbound_spi: int, now: float) -> bool:
        """Rekey a Child SA (RFC 7296 §1.3.3, §2.8)."""
        child = self.child_by_inbound(inbound_spi)
        if (
            child is None
            or child.state != ChildState.INSTALLED
            or self.state != IkeState.ESTABLISHED
        ):
            return False
        child.state = ChildState.REKEYING
        req = self._child_request(child.config, child, False, None, None)
        self.queue_task(CreateChildTask(req), now)
        return True

    def delete_child(self, inbound_spi: int, now: float, reason: str = "deleted") -> bool:
        """Delete a Child SA pair with an INFORMATIONAL Delete (RFC 7296 §1.4.1)."""
        child = self.child_by_inbound(inbound_spi)
        if child is None or child.state in (ChildState.DELETING, ChildState.DELETED):
            return False
        child.state = ChildState.DELETING
        self.queue_task(DeleteChildTask([child], reason=reason), now)
        return True

    def rekey(self, now: float) -> bool:
        """Rekey this IKE SA with CREATE_CHILD_SA (RFC 7296 §1.3.2)."""
        if self.state != IkeState.ESTABLISHED or self._rekey_task is not None:
            return False
        assert self.selected is not None
        self.queue_task(RekeyIkeTask(self.selected.dh_id), now)
        return True

    def delete(self, now: float, reason: str = "deleted") -> None:
        """Delete this IKE SA and its Child SAs (RFC 7296 §1.4.1)."""
        if self.state == IkeState.CLOSED:
            return
        if not self.established or self.protection is None:
            if self.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT):
                self._event(
                    NegotiationFailed(
                        FailureReason.LOCAL_ERROR,
                        f"aborted: {reason}",
                        self.remote,
                        self.replied,
                        self.ike_sa_id,
                        self.acquire_id,
                    )
                )
            self._close(reason, linger=False)
            return
        self.state = IkeState.DELETING
        self.queue.clear()
        self.queue_task(DeleteIkeTask(reason), now)

    def liveness_check(self, now: float) -> None:
        """An empty INFORMATIONAL request (DPD, RFC 7296 §1.4)."""
        if self.state == IkeState.ESTABLISHED:
            self.queue_task(InformationalTask([]), now)

    def send_invalid_spi(self, spi: int, now: float) -> None:
        """Tell the peer we got ESP/AH for an SPI we do not know (RFC 7296 §3.10.1)."""
        if self.state == IkeState.ESTABLISHED:
            self.queue_task(
                InformationalTask([NotifyPayload(N.INVALID_SPI, spi.to_bytes(4, "big"), 3)]), now
            )

    def drop_silently(self) -> None:
        """INITIAL_CONTACT from the same peer identity: forget this SA without a Delete."""
        self._teardown("replaced (INITIAL_CONTACT)")


# --- concrete tasks -------------------------------------------------------------------------------


class IkeAuthTask(Task):
    exchange = _IKE_AUTH

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        return sa._build_ike_auth(now)

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        sa._on_ike_auth_response(payloads, now)


class CreateChildTask(Task):
    exchange = _CREATE_CHILD_SA

    def __init__(self, req: _ChildRequest) -> None:
        self.req = req
        self.acquire_id = req.acquire_id

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        return sa._child_request_payloads(self.req, ike_auth=False)

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        sa._child_response(self.req, payloads, now, ike_auth=False)


class RekeyIkeTask(Task):
    exchange = _CREATE_CHILD_SA

    def __init__(self, dh_group: int) -> None:
        self.dh_group = dh_group
        self.spi = b""
        self.nonce = b""
        self.kex: KeyExchange | None = None
        self.proposals: list[Proposal] = []

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        cfg = sa.config
        assert cfg is not None
        sa._rekey_task = self
        self.spi = sa.ctx.new_ike_spi()
        self.nonce = sa.rng(cfg.nonce_size)
        self.kex = dh(self.dh_group).generate()
        props = list(cfg.proposals)
        self.proposals = [p.to_proposal(i + 1, self.spi) for i, p in enumerate(props)]
        return [
            SaPayload(self.proposals),
            NoncePayload(self.nonce),
            KePayload(self.dh_group, self.kex.public_value),
        ]

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        sa._ike_rekey_done(self, payloads, now)


class DeleteChildTask(Task):
    exchange = _INFORMATIONAL

    def __init__(
        self,
        children: list[ChildSa],
        reason: str = "deleted",
        raw: tuple[int, list[bytes]] | None = None,
    ) -> None:
        self.children = children
        self.reason = reason
        self.raw = raw

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        if self.raw is not None:
            return [DeletePayload(self.raw[0], self.raw[1])]
        by_proto: dict[int, list[bytes]] = {}
        for c in self.children:
            by_proto.setdefault(c.protocol, []).append(c.inbound_spi.to_bytes(4, "big"))
        return [DeletePayload(p, spis) for p, spis in by_proto.items()]

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        for c in self.children:
            sa._remove_child(c, self.reason)


class DeleteIkeTask(Task):
    exchange = _INFORMATIONAL

    def __init__(self, reason: str = "deleted", silent: bool = False) -> None:
        self.reason = reason
        self.silent = silent

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        return [DeletePayload(IpsecProtocol.IKE, [])]

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        sa._teardown(self.reason, silent_ike=self.silent)


class InformationalTask(Task):
    """An INFORMATIONAL request with notifies only (or nothing: a liveness check)."""

    exchange = _INFORMATIONAL

    def __init__(self, payloads: list[Payload], close: bool = False) -> None:
        self.payloads = payloads
        self.close = close

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        return list(self.payloads)

    def done(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        if self.close:
            sa._teardown("authentication failed")


# --- helpers --------------------------------------------------------------------------------------


def _first(payloads: list[Payload], cls: type[P]) -> P | None:
    for p in payloads:
        if type(p) is cls:
            return p
    return None


def _reason(ntype: int | None) -> FailureReason:
    if ntype is None:
        return FailureReason.PROTOCOL_ERROR
    reasons: dict[int, FailureReason] = CHILD_ERRORS  # type: ignore[assignment]
    return reasons.get(ntype, FailureReason.PROTOCOL_ERROR)


def _nname(ntype: int | None) -> str:
    if ntype is None:
        return "nothing"
    try:
        return NotifyType(ntype).name
    except ValueError:
        return str(ntype)


def _xname(ex: int) -> str:
    try:
        return ExchangeType(ex).name
    except ValueError:
        return str(ex)


_BY_CONFIG: dict[tuple[str, int], tuple[object, object]] = {}


def _per_config(kind: str, obj: object, make: Callable[[], object]) -> object:
    """A value derived from a long-lived configuration object, computed once (the key is the
    object's identity; the object is kept alive with the value, so the id cannot be reused)."""
    key = (kind, id(obj))
    hit = _BY_CONFIG.get(key)
    if hit is not None and hit[0] is obj:
        return hit[1]
    if len(_BY_CONFIG) > 4096:
        _BY_CONFIG.clear()
    value = make()
    _BY_CONFIG[key] = (obj, value)
    return value


def _ike_offer(cfg: PeerConfig) -> list[Proposal]:
    """The SA payload proposals of our IKE_SA_INIT request (no SPI: the same every time; the
    list is shared and only read)."""
    return cast(
        list[Proposal],
        _per_config(
            "ike_offer", cfg, lambda: [p.to_proposal(i + 1) for i, p in enumerate(cfg.proposals)]
        ),
    )


def _all_proposals(configs: tuple[PeerConfig, ...]) -> list[ProposalConfig]:
    if len(configs) == 1:
        return list(configs[0].proposals)
    return [p for c in configs for p in c.proposals]


def _init_certreq(configs: tuple[PeerConfig, ...]) -> bytes:
    """The CA hashes for the CERTREQ of an IKE_SA_INIT response (RFC 7296 §3.7)."""
    if len(configs) == 1:
        hit = _BY_CONFIG.get(("certreq", id(configs[0])))
        if hit is not None and hit[0] is configs[0]:
            return cast(bytes, hit[1])
        return cast(bytes, _per_config("certreq", configs[0], lambda: _certreq_of(configs)))
    return _certreq_of(configs)


def _certreq_of(configs: tuple[PeerConfig, ...]) -> bytes:
    anchors = tuple(a for c in configs for a in c.remote.trust_anchors)
    if anchors and any(c.remote.send_certreq for c in configs):
        return certreq_authorities(anchors)
    return b""


@lru_cache(maxsize=64)
def _hash_list(hashes: tuple[int, ...]) -> bytes:
    return b"".join(h.to_bytes(2, "big") for h in hashes)


def _lifetime(cfg: ChildConfig) -> Lifetime:
    return cast(Lifetime, _per_config("lifetime", cfg, lambda: _make_lifetime(cfg)))


def _make_lifetime(cfg: ChildConfig) -> Lifetime:
    return Lifetime(
        soft_seconds=cfg.rekey_time,
        hard_seconds=cfg.life_time,
        hard_bytes=cfg.lifetime_bytes,
        soft_bytes=int(cfg.lifetime_bytes * 0.9) if cfg.lifetime_bytes else None,
        hard_packets=cfg.lifetime_packets,
        soft_packets=int(cfg.lifetime_packets * 0.9) if cfg.lifetime_packets else None,
    )


def _id_text(p: IdPayload | None) -> str:
    if p is None:
        return ""
    return _identity_text(p.id_type, p.data)


@lru_cache(maxsize=1024)
def _identity_text(id_type: int, data: bytes) -> str:
    return str(Identity(id_type, data))


def _match_cfg(p: ProposalConfig, sel: Selected) -> bool:
    return (
        (sel.encr_id, sel.encr_bits) in p.encr
        and sel.prf_id in p.prf
        and sel.dh_id in p.dh
        and (not sel.integ_id or sel.integ_id in p.integ)
    )


def _natt_port_of(cfg: PeerConfig, settings: ServiceSettings) -> int:
    return cfg.remote_natt_port or settings.natt_port
