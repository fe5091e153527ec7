"""A virtual-clock world for policy-agent tests: agent + fake driver + scripted IKE endpoint.

No sockets, no sleeps. The scripted IKE endpoint stands in for either IKE version: it turns
each ACQUIRE into an "exchange" whose request is (re)transmitted on the shared schedule of
``reference_impl.retransmit`` (byte-identical), and it reacts to what the path to the peer
does at that instant (``filtered``, ``closed-icmp``, ``open``), emitting only the events of
``reference_impl.events``. Everything that leaves the node is recorded on ``world.wire``.

Event order at one instant (the node's contract, agent docstring): agent timers first, then
IKE timers, then network deliveries and stimuli, pumping requests/events after each step.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from reference_impl.events import (
    ChildSaEstablished,
    Event,
    FailureReason,
    NegotiationFailed,
    PeerReplied,
)
from reference_impl.policy import (
    Acquire,
    CancelAcquire,
    CompileEnv,
    DeleteChildSa,
    IcmpHint,
    LocalIcmp,
    PolicyAgent,
    Transmit,
)
from reference_impl.policy.packet import PacketMeta, build_ipv4_udp, parse_ip_packet
from reference_impl.retransmit import Retransmitter
from reference_impl.sa import (
    ChildSaPair,
    ChildSaParams,
    IpsecProtocol,
    Mode,
    TrafficSelector,
)

I = "10.1.0.1"  # noqa: E741 - the initiator under test, as in policy-spec §5.1
R = "10.1.0.10"
R2 = "10.1.0.11"
RTT = 0.015625  # 1/64 s: exact in binary, so virtual times compare exactly


class FakeDriver:
    """The driver as the agent sees it (``OutboundSad``): protect with an outbound SPI."""

    def __init__(self) -> None:
        self.sas: dict[int, ChildSaPair] = {}
        self.protected = 0

    def install(self, pair: ChildSaPair) -> None:
        self.sas[pair.outbound.spi] = pair

    def remove(self, spi: int) -> None:
        self.sas.pop(spi, None)

    def protect(self, spi: int, packet: bytes, now: float) -> bytes | None:
        if spi not in self.sas:
            return None
        self.protected += 1
        return b"ESP" + spi.to_bytes(4, "big") + packet


@dataclass
class WireRecord:
    t: float
    kind: str
    """``ike`` (an IKE datagram), ``clear`` (a data packet in clear), ``esp`` (protected)."""
    dst: str
    dport: int
    data: bytes
    sport: int = 0
    seq: int | None = None
    """Probe sequence number (data packets built by ``World.probe``)."""
    spi: bytes = b""
    """IKE: initiator SPI/cookie of the datagram."""


@dataclass
class Attempt:
    acquire: Acquire
    spi: bytes
    rtx: Retransmitter
    exchange: int = 1
    port: int = 500
    replied: bool = False
    done: bool = False


@dataclass
class Path:
    """What the path to one peer does; ``mode(port, t)`` may change over time."""

    mode: Callable[[int, float], str] = lambda port, t: "filtered"
    responder: str = "ok"
    """``ok``, ``auth-fail`` (fails at the second exchange), ``no-proposal`` (answers the
    first request with NO_PROPOSAL_CHOSEN)."""
    nat: bool = False
    """IKEv2 floats to 4500 for the second exchange (NAT detected)."""
    forged_icmp: bool = False
    """ICMP errors quote a different initiator SPI (an off-path forgery)."""


def const(mode: str) -> Callable[[int, float], str]:
    return lambda port, t: mode


class ScriptedIke:
    """Stand-in for IKEv1/IKEv2: turns ACQUIREs into retransmitted exchanges."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rng = random.Random(7)
        self.attempts: dict[int, Attempt] = {}
        self.events: list[Event] = []
        self.cancelled: list[CancelAcquire] = []
        self.deleted: list[DeleteChildSa] = []
        self.acquires: list[Acquire] = []
        self._spi = 0x1000

    def handle_request(self, req: object, now: float) -> None:
        if isinstance(req, Acquire):
            self.acquires.append(req)
            spi = self.rng.randbytes(8)
            att = Attempt(req, spi, Retransmitter(req.ike.schedule), port=req.peer[1])
            self.attempts[req.acquire_id] = att
            self.world.agent.note_initiator_spi(req.acquire_id, spi)  # the node's job
            self._send_new(att, now)
        elif isinstance(req, CancelAcquire):
            self.cancelled.append(req)
            att = self.attempts.get(req.acquire_id)
            if att is not None:
                att.rtx.stop()
                att.done = True
        elif isinstance(req, DeleteChildSa):
            self.deleted.append(req)

    def _datagram(self, att: Attempt) -> bytes:
        body = att.spi + bytes(8) + struct.pack("!BI", att.exchange, att.acquire.acquire_id)
        return (b"\0\0\0\0" + body) if att.port == 4500 else body

    def _send_new(self, att: Attempt, now: float) -> None:
        dg = self._datagram(att)
        att.rtx.start((dg,), now)
        self._transmit(att, dg, now)

    def _transmit(self, att: Attempt, dg: bytes, now: float) -> None:
        peer = att.acquire.peer[0]
        local_port = 4500 if att.port == 4500 else att.acquire.local[1]
        self.world.wire.append(WireRecord(now, "ike", peer, att.port, dg, local_port, spi=att.spi))
        path = self.world.path(peer)
        mode = path.mode(att.port, now)
        exchange = att.exchange
        if mode == "open":
            self.world.at(now + RTT, lambda: self._reply(att, exchange))
        elif mode == "closed-icmp":
            spi = att.spi if not path.forged_icmp else bytes(8)
            payload = (b"\0\0\0\0" if att.port == 4500 else b"") + spi + dg[-13:]
            hint = IcmpHint((peer, att.port), local_port, 3, 3, payload, offender=peer)
            self.world.at(
                now + 0.001, lambda: self.world.agent.handle_icmp_error(hint, self.world.now)
            )

    def get_timer(self) -> float | None:
        times = [a.rtx.get_timer() for a in self.attempts.values() if not a.done]
        ts = [t for t in times if t is not None]
        return min(ts) if ts else None

    def handle_timer(self, now: float) -> None:
        for att in list(self.attempts.values()):
            t = att.rtx.get_timer()
            if att.done or t is None or t > now:
                continue
            verdict = att.rtx.handle_timer(now)
            if verdict == "resend":
                for dg in att.rtx.datagrams:
                    self._transmit(att, dg, now)
            elif verdict == "failed":
                att.done = True
                self.events.append(
                    NegotiationFailed(
                        FailureReason.PEER_SILENT,
                        f"no reply to exchange {att.exchange}",
                        att.acquire.peer,
                        att.replied,
                        att.spi,
                        att.acquire.acquire_id,
                    )
                )

    def _reply(self, att: Attempt, exchange: int) -> None:
        if att.done or att.exchange != exchange:
            return
        att.rtx.stop()
        now = self.world.now
        path = self.world.path(att.acquire.peer[0])
        if not att.replied:
            att.replied = True
            self.events.append(
                PeerReplied(att.spi + bytes(8), att.acquire.peer, att.acquire.acquire_id)
            )
        if exchange == 1 and path.responder == "no-proposal":
            att.done = True
            self.events.append(
                NegotiationFailed(
                    FailureReason.NO_PROPOSAL_CHOSEN,
                    "NO_PROPOSAL_CHOSEN",
                    att.acquire.peer,
                    True,
                    att.spi,
                    att.acquire.acquire_id,
                    14,
                )
            )
            return
        if exchange == 1:
            att.exchange = 2
            if path.nat and att.acquire.ike_version == 2:
                att.port = 4500
            self._send_new(att, now)
            return
        att.done = True
        if path.responder == "auth-fail":
            self.events.append(
                NegotiationFailed(
                    FailureReason.AUTHENTICATION_FAILED,
                    "AUTHENTICATION_FAILED",
                    att.acquire.peer,
                    True,
                    att.spi,
                    att.acquire.acquire_id,
                    24,
                )
            )
            return
        self.events.append(ChildSaEstablished(self.make_pair(att.acquire, att.spi)))

    def make_pair(
        self,
        acq: Acquire | None,
        ike_spi: bytes,
        *,
        local_ts: TrafficSelector | None = None,
        remote_ts: TrafficSelector | None = None,
        local: str = "",
        peer: str = "",
    ) -> ChildSaPair:
        self._spi += 2
        if acq is not None:
            local_ts, remote_ts = acq.sa_selectors
            local, peer = acq.local[0], acq.peer[0]
        assert local_ts is not None and remote_ts is not None
        mode = Mode.TUNNEL if acq is not None and acq.sa_selector.is_tunnel else Mode.TRANSPORT
        out = ChildSaParams(
            self._spi, IpsecProtocol.ESP, mode, local, peer, ts_src=(local_ts,), ts_dst=(remote_ts,)
        )
        inb = ChildSaParams(
            self._spi + 1,
            IpsecProtocol.ESP,
            mode,
            peer,
            local,
            ts_src=(remote_ts,),
            ts_dst=(local_ts,),
        )
        return ChildSaPair(
            inb, out, ike_spi + bytes(8), 2, acquire_id=acq.acquire_id if acq else None
        )


class World:
    """One node under test (I) and the network towards its peers."""

    def __init__(self, policy_text: str, local: str = I) -> None:
        self.now = 0.0
        self.driver = FakeDriver()
        self.agent = PolicyAgent(self.driver, CompileEnv(local_addresses=(local,)))
        self.agent.load_policy_text(policy_text, 0.0, "test.yaml")
        self.local = local
        self.ike = ScriptedIke(self)
        self.wire: list[WireRecord] = []
        self.local_icmp: list[LocalIcmp] = []
        self.paths: dict[str, Path] = {}
        self._queue: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = 0
        self.probe_seq = 0
        self.verdicts: dict[int, str] = {}

    # -- network ---------------------------------------------------------------------------

    def path(self, peer: str) -> Path:
        return self.paths.setdefault(peer, Path())

    def set_path(self, peer: str, mode: str | Callable[[int, float], str], **kw: object) -> None:
        fn = const(mode) if isinstance(mode, str) else mode
        self.paths[peer] = Path(fn, **kw)  # type: ignore[arg-type]

    # -- scheduling ------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], object]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, fn))

    def run_until(self, t_end: float) -> None:
        while True:
            ta = self.agent.get_timer()
            ti = self.ike.get_timer()
            tq = self._queue[0][0] if self._queue else None
            cands = [t for t in (ta, ti, tq) if t is not None]
            if not cands:
                break
            t = min(cands)
            if t > t_end:
                break
            self.now = t
            if ta is not None and ta == t:
                self.agent.handle_timer(t)
            elif ti is not None and ti == t:
                self.ike.handle_timer(t)
            else:
                _, _, fn = heapq.heappop(self._queue)
                fn()
            self.pump()
        self.now = t_end

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            while (req := self.agent.next_request()) is not None:
                self.ike.handle_request(req, self.now)
                moved = True
            for tx in self.agent.packets_to_send():
                self._wire_data(tx)
                moved = True
            events, self.ike.events = self.ike.events, []
            for ev in events:
                if isinstance(ev, ChildSaEstablished):
                    self.driver.install(ev.pair)  # the node installs, then tells the agent
                self.agent.handle_event(ev, self.now)
                moved = True
            self.local_icmp.extend(self.agent.local_icmp_to_send())

    def _wire_data(self, tx: Transmit) -> None:
        data = tx.data[7:] if tx.protected else tx.data
        meta = parse_ip_packet(data)
        assert meta is not None
        dst = str(_ip(meta.version, meta.dst))
        seq = _probe_seq(data)
        self.wire.append(
            WireRecord(
                self.now, "esp" if tx.protected else "clear", dst, meta.dport, data, meta.sport, seq
            )
        )

    # -- stimuli ---------------------------------------------------------------------------

    def probe(self, dst: str = R, *, sport: int = 40000, dport: int = 7000, proto: int = 17) -> int:
        """Send one sequence-numbered probe from I now; returns its sequence number."""
        self.probe_seq += 1
        seq = self.probe_seq
        pkt = build_ipv4_udp(self.local, dst, sport, dport, struct.pack("!4sI", b"PRB!", seq))
        if proto != 17:
            meta = PacketMeta.make(self.local, dst, proto, sport, dport)
            self.verdicts[seq] = self.agent.outbound(pkt, self.now, meta)
        else:
            self.verdicts[seq] = self.agent.outbound(pkt, self.now)
        return seq

    def probes(
        self, start: float, stop: float, dst: str = R, interval_ms: int = 100, **kw: int
    ) -> None:
        """A probe every ``interval_ms`` in [start, stop), at exact instants k/10 s."""
        k0 = round(start * 1000)
        k1 = round(stop * 1000)
        for k in range(k0, k1, interval_ms):
            self.at(k / 1000, lambda dst=dst: self.probe(dst, **kw))

    # -- observations ----------------------------------------------------------------------

    def ike_times(self, peer: str = R) -> list[float]:
        return [w.t for w in self.wire if w.kind == "ike" and w.dst == peer]

    def ike_packets(self, peer: str = R) -> list[WireRecord]:
        return [w for w in self.wire if w.kind == "ike" and w.dst == peer]

    def clear(self, dst: str = R) -> list[WireRecord]:
        return [w for w in self.wire if w.kind == "clear" and w.dst == dst]

    def esp(self, dst: str = R) -> list[WireRecord]:
        return [w for w in self.wire if w.kind == "esp" and w.dst == dst]

    def audit(self, kind: str) -> list[object]:
        return list(self.agent.audit.of_kind(kind))


def _ip(version: int, value: int) -> object:
    import ipaddress

    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _probe_seq(packet: bytes) -> int | None:
    idx = packet.find(b"PRB!")
    if idx < 0 or len(packet) < idx + 8:
        return None
    return int(struct.unpack_from("!I", packet, idx + 4)[0])


@dataclass
class PolicyKnobs:
    """Builds the test policy: §1.5's require-security and request-security actions."""

    profile: str = "reference"
    ike_version: str = "ikev1"
    remote_port: int = 500
    require: dict[str, object] = field(default_factory=dict)
    request: dict[str, object] = field(default_factory=dict)
    targets_require: tuple[str, ...] = (R,)


def policy_text(k: PolicyKnobs | None = None) -> str:
    """Host-to-host policy: everything to R (and R2 if listed) requires IPsec, anything else
    requests it with fallback to clear (§1.5 actions)."""
    k = k or PolicyKnobs()
    require = {
        "name": "require-security",
        "type": "negotiate",
        "security_methods": "[{protocol: esp, encryption: aes128, integrity: sha1}]",
        "session_key_pfs": True,
        "inbound_passthrough": False,
        "allow_fallback": False,
        **k.require,
    }
    request = {
        "name": "request-security",
        "type": "negotiate",
        "security_methods": "[{protocol: esp, encryption: aes128, integrity: sha1}]",
        "inbound_passthrough": True,
        "allow_fallback": True,
        **k.request,
    }
    req_filters = "\n".join(
        f"        - {{src: me, dst: {t}, proto: any, mirrored: true}}" for t in k.targets_require
    )
    text = f"""policy:
  name: fallback-test
  settings:
    timing_profile: {k.profile}
    ike:
      version: {k.ike_version}
      remote_port: {k.remote_port}
  default_response_rule: {{enabled: false}}
  auth_method_sets:
    - name: psk
      methods: [{{preshared_key: {{secret_ref: test-psk}}}}]
  filter_lists:
    - name: to-r
      filters:
{req_filters}
    - name: all-ip
      filters: [{{src: me, dst: any, proto: any, mirrored: true}}]
  filter_actions:
    - {_flow(require)}
    - {_flow(request)}
  rules:
    - {{name: require-r, filter_list: to-r, filter_action: require-security, auth_methods: psk}}
    - {{name: everything, filter_list: all-ip, filter_action: request-security, auth_methods: psk}}
"""
    return text


def _flow(d: dict[str, object]) -> str:
    parts = []
    for key, v in d.items():
        if isinstance(v, dict):
            parts.append(f"{key}: {_flow(v)}")
        elif isinstance(v, bool):
            parts.append(f"{key}: {'true' if v else 'false'}")
        elif v is None:
            parts.append(f"{key}: null")
        else:
            parts.append(f"{key}: {v}")
    return "{" + ", ".join(parts) + "}"
