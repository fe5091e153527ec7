"""The IKEv2 service: many IKE SAs behind one pair of UDP ports, sans-I/O (aioquic style).

The I/O layer (``reference_impl/node``) calls::

    service.receive_datagram(data, addr, now, local=(ip, port))   # marker already stripped
    service.handle_timer(now)                                      # at service.get_timer()
    for d in service.datagrams_to_send(now): send d.data from d.src to d.dst (marker if d.marker)
    while (ev := service.next_event()) is not None: hand ev to the driver / policy agent

and the policy agent or harness calls ``initiate``, ``create_child``, ``rekey_child``,
``delete_child``, ``rekey_ike``, ``delete_ike``, ``liveness_check``.

The service demultiplexes by our IKE SPI, answers IKE_SA_INIT requests (RFC 7296 §1.2),
counts half-open SAs and demands stateless cookies above a threshold (§2.6).
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
from collections import deque
from datetime import UTC, datetime

from reference_impl.crypto import PrfId, prf
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.events import Event
from reference_impl.ike.config import ChildConfig, PeerConfig, ServiceSettings
from reference_impl.ike.enums import ExchangeType, NotifyType
from reference_impl.ike.ike_sa import ZERO_SPI, IkeSa
from reference_impl.ike.messages import (
    HEADER,
    HEADER_LEN,
    Message,
    decode_header,
    decode_message,
    encode_message,
)
from reference_impl.ike.payloads import NoncePayload, NotifyPayload
from reference_impl.ike.types import Datagram, IkeState
from reference_impl.sa import Address, TrafficSelector

_IKE_SA_INIT = ExchangeType.IKE_SA_INIT
_COOKIE_PRF = prf(PrfId.PRF_HMAC_SHA2_256)
_log = logging.getLogger(__name__)


class IkeService:
    """Owns every IKE SA of one node and routes datagrams, timers and API calls to them."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.outbox: list[Datagram] = []
        self.events: deque[Event] = deque()
        self.stats: dict[str, int] = {}
        self._sas: dict[bytes, IkeSa] = {}
        self._by_init: dict[tuple[bytes, Address], IkeSa] = {}
        self._half_open: set[IkeSa] = set()
        self._by_peer_id: dict[tuple[int, bytes, str], list[IkeSa]] = {}
        self._child_spis: set[int] = set()
        self._heap: list[tuple[float, int, IkeSa]] = []
        self._heap_seq = 0
        self._timer_of: dict[int, float] = {}
        self._dirty: list[IkeSa] = []
        self._secret = b""
        self._secret_version = 0
        self._old_secret = b""
        self._secret_until: float | None = None

    # --- SaContext ------------------------------------------------------------------------------

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.settings.rng(8)
            if spi != ZERO_SPI and spi not in self._sas:
                return spi

    def new_child_spi(self) -> int:
        while True:
            spi = int.from_bytes(self.settings.rng(4), "big")
            if spi > 255 and spi not in self._child_spis:  # 1-255 are reserved (RFC 4303 §2.1)
                self._child_spis.add(spi)
                return spi

    def release_child_spi(self, spi: int) -> None:
        self._child_spis.discard(spi)

    def register(self, sa: IkeSa) -> None:
        self._sas[sa.local_spi] = sa
        self._dirty.append(sa)

    def touch(self, sa: IkeSa) -> None:
        self._dirty.append(sa)

    def unregister(self, sa: IkeSa) -> None:
        if self._sas.get(sa.local_spi) is sa:
            del self._sas[sa.local_spi]
        key = (sa.spi_i, sa.remote)
        if self._by_init.get(key) is sa:
            del self._by_init[key]
        for c in sa.children:
            self._child_spis.discard(c.inbound_spi)
        self._timer_of.pop(id(sa), None)
        self.sa_closed(sa)

    def cert_time(self) -> datetime:
        clock = self.settings.cert_clock
        return clock() if clock is not None else datetime.now(UTC)

    def configs_for(self, local: Address, remote: Address) -> list[PeerConfig]:
        out = []
        for c in self.settings.connections:
            if (
                c.remote_addrs
                and "%any" not in c.remote_addrs
                and remote[0] not in c.remote_addrs
                and not any(_in_net(remote[0], a) for a in c.remote_addrs)
            ):
                continue
            if (
                c.local_addrs
                and local[0] not in c.local_addrs
                and local[0] not in ("0.0.0.0", "::")
            ):
                continue
            out.append(c)
        return out

    def established(self, sa: IkeSa) -> None:
        """An IKE SA authenticated its peer: index it by the peer's identity."""
        self._half_open.discard(sa)
        if sa.peer_id is not None and sa.config is not None:
            self._by_peer_id.setdefault(_peer_key(sa), []).append(sa)

    def initial_contact(self, sa: IkeSa) -> None:
        """RFC 7296 §2.4: INITIAL_CONTACT from a peer identity makes its older SAs stale."""
        if sa.peer_id is None or sa.config is None:
            return
        for other in list(self._by_peer_id.get(_peer_key(sa), ())):
            if other is not sa and other.state == IkeState.ESTABLISHED:
                other.drop_silently()
                self._dirty.append(other)

    # --- timers ---------------------------------------------------------------------------------

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        if len(dirty) > 1:
            dirty = list(dict.fromkeys(dirty))
        timer_of = self._timer_of
        for sa in dirty:
            key = id(sa)
            t = sa.get_timer()
            if t is None:
                timer_of.pop(key, None)
                continue
            if timer_of.get(key) == t:
                continue
            if self._sas.get(sa.local_spi) is not sa and sa.state != IkeState.CLOSED:
                continue
            self._timer_of[key] = t
            self._heap_seq += 1
            heapq.heappush(self._heap, (t, self._heap_seq, sa))
        if len(self._heap) > 4 * len(self._timer_of) + 1024:
            # Entries are invalidated lazily; drop the stale ones before they pile up.
            timer_of = self._timer_of
            self._heap = [e for e in self._heap if timer_of.get(id(e[2])) == e[0]]
            heapq.heapify(self._heap)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: nothing pending)."""
        self._flush_dirty()
        heap = self._heap
        while heap:
            t, _, sa = heap[0]
            if self._timer_of.get(id(sa)) == t:
                times = [t]
                if self._secret_until is not None:
                    times.append(self._secret_until)
                return min(times)
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        self._flush_dirty()
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, sa = heapq.heappop(heap)
            if self._timer_of.get(id(sa)) != t:
                continue
            del self._timer_of[id(sa)]
            try:
                sa.handle_timer(now)
            except LocalProtocolError as exc:
                self._count("local_errors")
                _log.warning("IKE SA %s: %s", sa.ike_sa_id.hex(), exc)
                sa.fail_locally(str(exc))
            except Exception:
                self._count("internal_errors")
                _log.exception("IKE SA %s: timer failed", sa.ike_sa_id.hex())
            self._dirty.append(sa)
        self._flush_dirty()

    # --- output ---------------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self.outbox = self.outbox, []
        return out

    def next_event(self) -> Event | None:
        return self.events.popleft() if self.events else None

    # --- input ----------------------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, local: Address | None = None
    ) -> None:
        """One IKE datagram from ``addr`` (without the non-ESP marker) received on ``local``."""
        if local is None:
            local = (self.settings.local_address, self.settings.ike_port)
        if len(data) < HEADER_LEN:
            self._count("malformed_dropped")
            return
        spi_i, spi_r, _, version, exchange, flags, _, length = HEADER.unpack_from(data)
        if version >> 4 != 2 or length != len(data):
            try:
                decode_header(data)
            except RemoteProtocolError as exc:
                self._count("malformed_dropped")
                if exc.notify == NotifyType.INVALID_MAJOR_VERSION:
                    self._answer_version(data, addr, local)
            return
        if exchange == _IKE_SA_INIT and not flags & 0x20:
            self._init_request(data, spi_i, spi_r, addr, local, now)
            return
        local_spi = spi_r if flags & 0x08 else spi_i
        sa = self._sas.get(local_spi)
        if sa is None:
            self._count("unknown_spi_dropped")
            return
        try:
            msg = decode_message(data)
        except RemoteProtocolError:
            self._count("malformed_dropped")
            return
        try:
            sa.receive(data, msg, addr, local, now)
        except LocalProtocolError as exc:
            self._count("local_errors")
            _log.warning("IKE SA %s: %s", sa.ike_sa_id.hex(), exc)
            sa.fail_locally(str(exc))
        except Exception:  # a bug must not take the node down: count, log, drop (ARCHITECTURE)
            self._count("internal_errors")
            _log.exception("IKE SA %s: datagram from %s dropped", sa.ike_sa_id.hex(), addr)
        self._dirty.append(sa)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _answer_version(self, data: bytes, addr: Address, local: Address) -> None:
        """RFC 7296 §2.5: INVALID_MAJOR_VERSION, with our version in the header."""
        if data[19] & 0x20:  # never answer a response
            return
        reply = Message(
            data[18],
            int.from_bytes(data[20:24], "big"),
            data[:8],
            data[8:16],
            False,
            True,
            [NotifyPayload(NotifyType.INVALID_MAJOR_VERSION)],
        )
        self.outbox.append(
            Datagram(encode_message(reply), local, addr, local[1] == self.settings.natt_port)
        )

    @property
    def half_open(self) -> int:
        """Responder IKE SAs between IKE_SA_INIT and IKE_AUTH (RFC 7296 §2.6)."""
        return len(self._half_open)

    def sa_closed(self, sa: IkeSa) -> None:
        """The SA left service (it may linger to answer retransmissions)."""
        self._half_open.discard(sa)
        if sa.peer_id is not None and sa.config is not None:
            peers = self._by_peer_id.get(_peer_key(sa))
            if peers is not None and sa in peers:
                peers.remove(sa)
                if not peers:
                    del self._by_peer_id[_peer_key(sa)]

    def _cookie(self, version: int, secret: bytes, ni: bytes, ip: str, spi_i: bytes) -> bytes:
        """RFC 7296 §2.6: <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)."""
        mac = _COOKIE_PRF.prepare(secret)(ni + ipaddress.ip_address(ip).packed + spi_i)
        return version.to_bytes(2, "big") + mac[:16]

    def _current_secret(self, now: float) -> None:
        if self._secret_until is None or now >= self._secret_until:
            self._old_secret = self._secret
            self._secret = self.settings.rng(32)
            self._secret_version = (self._secret_version + 1) & 0xFFFF
            self._secret_until = now + self.settings.cookie_secret_lifetime

    def _cookie_ok(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes) -> bool:
        if len(cookie) != 18:
            return False
        version = int.from_bytes(cookie[:2], "big")
        if version == self._secret_version:
            secret = self._secret
        elif version == (self._secret_version - 1) & 0xFFFF and self._old_secret:
            secret = self._old_secret
        else:
            return False
        return cookie == self._cookie(version, secret, ni, ip, spi_i)

    def _init_request(
        self, data: bytes, spi_i: bytes, spi_r: bytes, addr: Address, local: Address, now: float
    ) -> None:
        existing = self._by_init.get((spi_i, addr))
        if existing is not None:
            existing.resend_init_response(data, now)
            self._dirty.append(existing)
            return
        if spi_r != ZERO_SPI:
            self._count("init_with_spi_r_dropped")
            return
        try:
            msg = decode_message(data)
        except RemoteProtocolError as exc:
            self._count("malformed_dropped")
            if exc.notify is not None:
                reply = Message(
                    _IKE_SA_INIT,
                    0,
                    spi_i,
                    ZERO_SPI,
                    False,
                    True,
                    [NotifyPayload(exc.notify, exc.data)],
                )
                self.outbox.append(
                    Datagram(
                        encode_message(reply), local, addr, local[1] == self.settings.natt_port
                    )
                )
            return
        if msg.message_id != 0:
            self._count("init_bad_message_id_dropped")
            return
        half_open = self.half_open
        if half_open >= self.settings.block_threshold:
            self._count("half_open_blocked")
            return
        if half_open >= self.settings.cookie_threshold:
            self._current_secret(now)
            nonce = msg.get(NoncePayload)
            ni = nonce.data if nonce is not None else b""
            first = msg.payloads[0] if msg.payloads else None
            cookie = (
                first.data
                if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE
                else None
            )
            if cookie is None or not self._cookie_ok(cookie, ni, addr[0], spi_i):
                self._count("cookies_sent")
                value = self._cookie(self._secret_version, self._secret, ni, addr[0], spi_i)
                reply = Message(
                    _IKE_SA_INIT,
                    0,
                    spi_i,
                    ZERO_SPI,
                    False,
                    True,
                    [NotifyPayload(NotifyType.COOKIE, value)],
                )
                self.outbox.append(
                    Datagram(
                        encode_message(reply), local, addr, local[1] == self.settings.natt_port
                    )
                )
                return
        configs = self.configs_for(local, addr)
        if not configs:
            self._count("no_config")
            reply = Message(
                _IKE_SA_INIT,
                0,
                spi_i,
                ZERO_SPI,
                False,
                True,
                [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)],
            )
            self.outbox.append(
                Datagram(encode_message(reply), local, addr, local[1] == self.settings.natt_port)
            )
            return
        try:
            sa = IkeSa.respond_init(self, configs, msg, data, addr, local, now)
        except Exception:  # as above: a configuration or code error never crashes the service
            self._count("internal_errors")
            _log.exception("IKE_SA_INIT from %s dropped", addr)
            return
        if sa is not None:
            self._by_init[(spi_i, addr)] = sa
            self._half_open.add(sa)
            self._dirty.append(sa)
        self._flush_dirty()

    # --- API ------------------------------------------------------------------------------------

    def config(self, name: str) -> PeerConfig:
        """The connection ``name`` of the current settings (which may be replaced at any
        time: the policy agent recompiles them)."""
        for c in self.settings.connections:
            if c.name == name:
                return c
        raise LocalProtocolError(f"no connection named {name!r}")

    def initiate(
        self,
        config: str | PeerConfig,
        now: float,
        *,
        child: str | ChildConfig | None = None,
        acquire_id: int | None = None,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None = None,
        remote: Address | None = None,
        local: Address | None = None,
        reuse: bool = True,
    ) -> bytes:
        """Bring up a Child SA of ``config`` (its first child by default), over an existing
        IKE SA of that connection when there is one, else with a new IKE SA. Returns the
        IKE SA's ID (SPIi | SPIr; SPIr zero until the responder answers)."""
        cfg = self.config(config) if isinstance(config, str) else config
        if isinstance(child, str):
            child_cfg: ChildConfig | None = next((c for c in cfg.children if c.name == child), None)
            if child_cfg is None:
                raise LocalProtocolError(f"connection {cfg.name} has no child {child!r}")
        elif child is None:
            child_cfg = cfg.children[0] if cfg.children and cfg.initial_child else None
        else:
            child_cfg = child
        if remote is None:
            if not cfg.remote_addrs or cfg.remote_addrs[0] == "%any":
                raise LocalProtocolError(f"connection {cfg.name} has no remote address")
            remote = (cfg.remote_addrs[0], cfg.remote_port)
        if reuse:
            for sa in self._sas.values():
                if (
                    sa.config is cfg
                    and sa.initiator
                    and sa.remote[0] == remote[0]
                    and sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.ESTABLISHED)
                ):
                    if child_cfg is not None:
                        sa.create_child(child_cfg, now, acquire_id, packet_ts)
                    self._dirty.append(sa)
                    self._flush_dirty()
                    return sa.ike_sa_id
        if local is None:
            addr = cfg.local_addrs[0] if cfg.local_addrs else self.settings.local_address
            local = (addr, self.settings.ike_port)
        sa = IkeSa.start_initiator(self, cfg, remote, local, now, child_cfg, acquire_id, packet_ts)
        self._flush_dirty()
        return sa.ike_sa_id

    def find(self, ike_sa_id: bytes) -> IkeSa | None:
        """An IKE SA by its 16-octet ID or by our 8-octet SPI."""
        if len(ike_sa_id) == 8:
            return self._sas.get(ike_sa_id)
        for spi in (ike_sa_id[:8], ike_sa_id[8:]):
            sa = self._sas.get(spi)
            if sa is not None and sa.spi_i == ike_sa_id[:8]:
                return sa
        return None

    def _sa(self, ike_sa_id: bytes) -> IkeSa:
        sa = self.find(ike_sa_id)
        if sa is None:
            raise LocalProtocolError(f"no IKE SA {ike_sa_id.hex()}")
        return sa

    def _child_owner(self, inbound_spi: int) -> IkeSa:
        for sa in self._sas.values():
            if sa.child_by_inbound(inbound_spi) is not None:
                return sa
        raise LocalProtocolError(f"no Child SA with inbound SPI {inbound_spi:08x}")

    def ike_sas(self) -> list[IkeSa]:
        return [sa for sa in self._sas.values() if sa.state != IkeState.CLOSED]

    def create_child(
        self, ike_sa_id: bytes, child: str | ChildConfig, now: float, acquire_id: int | None = None
    ) -> None:
        sa = self._sa(ike_sa_id)
        assert sa.config is not None
        cfg = (
            child
            if isinstance(child, ChildConfig)
            else next((c for c in sa.config.children if c.name == child), None)
        )
        if cfg is None:
            raise LocalProtocolError(f"no child {child!r}")
        sa.create_child(cfg, now, acquire_id)
        self._dirty.append(sa)
        self._flush_dirty()

    def rekey_child(self, inbound_spi: int, now: float) -> bool:
        sa = self._child_owner(inbound_spi)
        ok = sa.rekey_child(inbound_spi, now)
        self._dirty.append(sa)
        self._flush_dirty()
        return ok

    def delete_child(self, inbound_spi: int, now: float) -> bool:
        sa = self._child_owner(inbound_spi)
        ok = sa.delete_child(inbound_spi, now)
        self._dirty.append(sa)
        self._flush_dirty()
        return ok

    def expire_child(self, inbound_spi: int, now: float, hard: bool = False) -> None:
        """The driver reports a byte/packet lifetime reached (RFC 4301 §4.4.2.1)."""
        sa = self._child_owner(inbound_spi)
        if hard:
            sa.delete_child(inbound_spi, now, reason="lifetime expired")
        else:
            sa.rekey_child(inbound_spi, now)
        self._dirty.append(sa)
        self._flush_dirty()

    def rekey_ike(self, ike_sa_id: bytes, now: float) -> bool:
        sa = self._sa(ike_sa_id)
        ok = sa.rekey(now)
        self._dirty.append(sa)
        self._flush_dirty()
        return ok

    def delete_ike(self, ike_sa_id: bytes, now: float) -> None:
        sa = self._sa(ike_sa_id)
        sa.delete(now)
        self._dirty.append(sa)
        self._flush_dirty()

    def liveness_check(self, ike_sa_id: bytes, now: float) -> None:
        sa = self._sa(ike_sa_id)
        sa.liveness_check(now)
        self._dirty.append(sa)
        self._flush_dirty()

    def report_invalid_spi(self, peer: str, spi: int, now: float) -> bool:
        """ESP/AH arrived from ``peer`` for an unknown SPI: send INVALID_SPI on an IKE SA
        with that peer, if there is one (RFC 7296 §3.10.1)."""
        for sa in self._sas.values():
            if sa.remote[0] == peer and sa.state == IkeState.ESTABLISHED:
                sa.send_invalid_spi(spi, now)
                self._dirty.append(sa)
                self._flush_dirty()
                return True
        return False


def _peer_key(sa: IkeSa) -> tuple[int, bytes, str]:
    assert sa.peer_id is not None and sa.config is not None
    return (sa.peer_id.id_type, sa.peer_id.data, sa.config.name)


def _in_net(ip: str, spec: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return False
