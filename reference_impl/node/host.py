"""One IPsec host as a sans-I/O object: policy agent + driver + IKEv2 + IKEv1, wired.

The :class:`Host` is what the node's asyncio runtime drives; it never touches a socket or a
clock. Inputs (each takes ``now``)::

    host.outbound_packet(packet)        # an IP packet the local stack sends (TUN, or injected)
    host.udp_received(data, src, local) # a datagram on one of our UDP ports (IKE, NAT-T, ESP)
    host.raw_received(packet)           # an IP packet from the wire: ESP/AH, or clear
    host.clear_inbound(packet) -> bool  # a clear packet the kernel holds: deliver it or not
    host.icmp_error(...)                # an ICMP error about one of our IKE datagrams
    host.handle_timer(now)              # at host.get_timer()

Outputs, drained by the runtime after each input::

    host.udp_out    # [(data, (src ip, src port), (dst ip, dst port))] with real ports
    host.ip_out     # [IP packet] to put on the wire: raw ESP/AH, and clear (bypass, fallback)
    host.delivered  # [IP packet] for the local stack (decapsulated, or accepted in clear)

Wiring (ARCHITECTURE.md, seed steps 3-8; policy-spec §2-§4):

* outbound packets go to the agent (classification, §3 state machine); an ``Acquire`` becomes
  an IKE ``initiate`` with a connection built from the node's credentials and the rule
  (:mod:`reference_impl.node.ikeconf`); ``CancelAcquire`` aborts the attempt (no further IKE
  packet for it); ``DeleteChildSa`` deletes through IKE;
* IKE events install and remove SAs in the driver first, then go to the agent (E4, E6, E8);
  a Child SA IKE made as responder is checked against the agent's responder policy (§4.5)
  and deleted if the agent refuses it;
* the driver's byte/packet/sequence lifetime events become IKE rekeys (soft) and deletes
  (hard); IKE runs its own time lifetimes, so driver ``SECONDS`` events are ignored;
* timers: the agent's run first at any instant, and its requests reach IKE before IKE's own
  timers run (the agent's E5 tie rule: a fallback due with a retransmission sends no packet).

Ports: both IKE services speak in the standard ports 500 and 4500 (IKEv1 hard-codes them,
and NAT-D hashes must agree on both ends). The :class:`PortMap` translates at this boundary
to the node's real ports and its peers' real ports, so two nodes on one loopback (each with
its own pair of unprivileged ports) see each other exactly as two hosts on 500/4500 would.

Data path: an established flow is cached (flow key -> outbound SA) after the agent has
classified its first packet, so later packets cost one dict lookup and one ``protect``; the
cache is dropped whenever anything but a data packet happens (an IKE event, a timer, a policy
or control change), so the agent's decision is never stale.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_impl.driver import OutboundSa, ReplayWindow, Sad, SaOptions, Verdict
from reference_impl.driver.events import LifetimeKind, SaExpired
from reference_impl.driver.packet import checksum
from reference_impl.errors import LocalProtocolError
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
from reference_impl.ike.config import ServiceSettings
from reference_impl.ike.service import IkeService
from reference_impl.isakmp.service import IsakmpService
from reference_impl.isakmp.settings import IsakmpSettings
from reference_impl.node import ikeconf
from reference_impl.node.ikeconf import Credentials, IkeConfigs, IkeOverrides
from reference_impl.policy import (
    Acquire,
    CancelAcquire,
    CompiledPolicy,
    CompileEnv,
    DeleteChildSa,
    IcmpHint,
    LocalIcmp,
    PolicyAgent,
)
from reference_impl.policy import Verdict as PV
from reference_impl.retransmit import RetransmitSchedule
from reference_impl.sa import Address, ChildSaPair, IpsecProtocol, Mode, TrafficSelector

log = logging.getLogger("reference_impl.node")

IKE_PORT = 500
NATT_PORT = 4500
NON_ESP_MARKER = b"\0\0\0\0"
_DELIVERED = Verdict.DELIVERED
_IPV4_UDP = struct.Struct(">BBHHHBBH4s4sHHHH")
_ESP4 = struct.Struct(">HHI4s8s")
"""A raw IPv4 ESP header: version/IHL|TOS, total length, identification|flags, TTL|protocol|
checksum (zero: nothing checks it), source|destination."""
_TTL_ESP = bytes((64, 50, 0, 0))


class PortMap:
    """Logical IKE ports (500, 4500) <-> the real ports of this node and of its peers."""

    def __init__(
        self,
        ike: int = IKE_PORT,
        natt: int = NATT_PORT,
        peers: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.ike = ike
        self.natt = natt
        self.peers = {str(ipaddress.ip_address(a)): p for a, p in (peers or {}).items()}

    def local_real(self, logical: int) -> int:
        return self.natt if logical == NATT_PORT else self.ike if logical == IKE_PORT else logical

    def local_logical(self, real: int) -> int:
        return NATT_PORT if real == self.natt else IKE_PORT if real == self.ike else real

    def peer_real(self, address: str, logical: int) -> int:
        p = self.peers.get(address)
        if p is None:
            return logical
        return p[1] if logical == NATT_PORT else p[0] if logical == IKE_PORT else logical

    def peer_logical(self, address: str, real: int) -> int:
        p = self.peers.get(address)
        if p is None:
            return real
        return NATT_PORT if real == p[1] else IKE_PORT if real == p[0] else real


@dataclass
class HostSettings:
    """What a :class:`Host` is configured with (the node configuration, resolved)."""

    addresses: tuple[str, ...]
    """Our outer (IKE and ESP) addresses; the first is the default local endpoint."""
    local_addresses: tuple[str, ...] = ()
    """Every address that is "me" for the policy (outer and inner); default: ``addresses``."""
    ports: PortMap = field(default_factory=PortMap)
    credentials: Credentials = field(default_factory=Credentials)
    overrides: IkeOverrides = field(default_factory=IkeOverrides)
    audit_capacity: int = 10000
    record_deliveries: bool = False
    """Keep (time, protected, SPI) beside every delivered packet (the api data plane)."""
    rng: Callable[[int], bytes] | None = None


@dataclass(slots=True)
class _Child:
    version: int
    pair: ChildSaPair
    inbound: Any
    outbound: OutboundSa
    installed: float
    initiator: bool


MISBEHAVIOURS = {
    "no_replay_check": "inbound SAs accept replayed packets (their replay window is off)",
    "wrong_natd": "NAT-D source hash is wrong on purpose (the peer sees a NAT; ESP is "
    "UDP-encapsulated), as strongSwan's encap=yes",
    "silent_ike_port": "datagrams to UDP 500 are ignored (the node looks like no IKE there); "
    "each one is logged as an ``ike_ignored`` event (the harness's received-datagram log); "
    "value ``all``: IKE on the NAT-T port too (the harness's scripted IKE peer answers instead)",
    "corrupt_icv": "the next N protected packets leave with their last octet (ICV) flipped",
    "drop_ike_out": "no IKE datagram leaves the node (the peer sees us as dead)",
    "no_padding_check": "inbound ESP padding octets are not checked (new SAs)",
    "tfc_pad_to": "tunnel-mode ESP pads inner packets to this length (new SAs)",
    "ike_after_fallback": "IKE goes on retransmitting after a fallback to clear (the attempt "
    "is not cancelled, so a late answer upgrades the soft SA silently)",
    "leak_while_negotiating": "packets held while an SA is negotiated also leave in clear",
    "accept_any_auth": "the peer's IKEv2 AUTH and certificates are not verified (new IKE SAs)",
    "accept_md5": "MD5 transforms are accepted and offered besides the configured ones: PRF and "
    "integrity HMAC-MD5 for IKE, AES-CBC with HMAC-MD5-96 for ESP (RFC 8247, RFC 8221 MUST NOT)",
    "rekey_without_pfs": "Child SA proposals lose their D-H groups: CREATE_CHILD_SA without "
    "a key exchange, and KEi refused (no PFS)",
    "ikev1_no_natt": "the IKEv1 responder ignores NAT traversal: no RFC 3947 Vendor ID, no NAT-D, "
    "no UDP-encapsulated modes",
    "accept_clear_inbound": "every clear inbound packet is accepted: the Policy Agent's inbound "
    "check (RFC 4301 §5.2 step 3, policy-spec §4.2) is skipped",
    "no_selector_check": "decapsulated packets are delivered whether or not they match their "
    "SA's selectors (RFC 4301 §5.2 step 4 skipped; new SAs)",
}
"""Deliberate misbehaviours for negative testing (``Host.set_misbehaviour``)."""


class Host:
    """An IPsec host (see the module docstring)."""

    def __init__(self, settings: HostSettings, now: float) -> None:
        self.settings = settings
        self.ports = settings.ports
        self.addresses = settings.addresses
        self.sad = Sad()
        env = CompileEnv(
            local_addresses=tuple(settings.local_addresses or settings.addresses),
            ike_addresses=tuple(settings.addresses),
        )
        self.agent = PolicyAgent(_DriverAdapter(self), env, audit_capacity=settings.audit_capacity)
        rng = settings.rng
        base = ServiceSettings(local_address=settings.addresses[0])
        if rng is not None:
            base = dataclasses.replace(base, rng=rng)
        self.ike2 = IkeService(base)
        self.ike1 = IsakmpService(IsakmpSettings(connections=()))
        self.credentials = settings.credentials
        self.overrides = settings.overrides
        self.cfgs: IkeConfigs | None = None
        self.udp_out: list[tuple[bytes, Address, Address]] = []
        self.ip_out: list[bytes] = []
        self.delivered: list[bytes] = []
        self.delivered_info: list[tuple[float, bool, int | None]] = []
        self.counters: dict[str, int] = {}
        self.events: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=2000)
        self.misbehaviour: dict[str, Any] = {}
        self._corrupt = 0
        self._children: dict[int, _Child] = {}
        self._child_by_out: dict[int, _Child] = {}
        self._out_by_spi: dict[int, OutboundSa] = {}
        self._attempts: dict[int, tuple[int, bytes]] = {}
        self._fast: dict[int, dict[bytes, OutboundSa]] = {6: {}, 17: {}}
        self._fast_in: set[bytes] = set()
        self._udp_routes: dict[int, tuple[Address, Address, int]] = {}
        """id(outbound SA) -> (UDP source, destination, octets before the ESP header; 0 =
        parse) for SAs whose ESP leaves over a UDP socket (RFC 3948)."""
        self._addr_pairs: dict[tuple[str, str], bytes] = {}
        self._udp_fast: set[bytes] = set()
        """SPIs (4 octets) of inbound tunnel-mode IPv4 SAs with UDP encapsulation."""
        self._v1_names: dict[tuple[object, ...], str] = {}
        self._sa_options = SaOptions()
        self._last_protect_sa: OutboundSa | None = None
        self.on_event: Callable[[float, str, dict[str, Any]], None] | None = None
        """Called with every recorded event (the runtime logs them)."""
        self.timer_dirty = True
        """Set whenever ``get_timer()`` may have changed (not by the cached data path)."""
        self.started = now

    # ============================================================================ configuration

    @property
    def policy(self) -> CompiledPolicy | None:
        return self.agent.policy

    def load_policy(self, source: str | Path, now: float, *, text: bool = False) -> CompiledPolicy:
        """Validate, compile and install a policy (file path, or YAML text with ``text``);
        the IKE configurations are rebuilt from it. Raises ``PolicyValidationError``."""
        if text:
            compiled = self.agent.load_policy_text(str(source), now)
        else:
            compiled = self.agent.load_policy(source, now)
        self._rebuild()
        self._record(now, "policy_loaded", name=compiled.policy.name)
        self._pump(now)
        return compiled

    def set_credentials(self, credentials: Credentials, now: float) -> None:
        self.credentials = credentials
        self._rebuild()
        self._record(now, "credentials_set", psks=sorted(credentials.psks))

    def set_overrides(self, overrides: IkeOverrides, now: float) -> None:
        self.overrides = overrides
        self._rebuild()

    def _effective_overrides(self) -> IkeOverrides:
        ov = self.overrides
        if self.misbehaviour.get("wrong_natd"):
            ov = dataclasses.replace(ov, force_encap=True)
        if self.misbehaviour.get("rekey_without_pfs"):
            ov = dataclasses.replace(
                ov, esp_proposals=tuple(_no_dh(t) for t in ov.esp_proposals),
                ah_proposals=tuple(_no_dh(t) for t in ov.ah_proposals),
            )  # fmt: skip
        compiled = self.agent.policy
        if self.misbehaviour.get("accept_md5") and compiled is not None:
            ike = ov.proposals or ikeconf.ike_proposal_texts(compiled.policy.ike, ov)
            esp = ov.esp_proposals
            if not esp and not ov.ah_proposals:  # the policy's own ESP methods stay
                esp = tuple(
                    t
                    for r in compiled.policy.rules
                    for proto, t in ikeconf.child_proposal_texts(
                        r.action.security_methods, None, ov
                    )
                    if proto == IpsecProtocol.ESP
                )
            ov = dataclasses.replace(
                ov,
                proposals=(*ike, "aes128-sha256-md5-prfsha256-prfmd5-modp2048"),
                esp_proposals=(*esp, "aes128-md5"),
            )
        return ov

    def _rebuild(self) -> None:
        self._invalidate()
        compiled = self.agent.policy
        if compiled is None:
            return
        self.cfgs = ikeconf.build(
            compiled, self.credentials, self._effective_overrides(), self.addresses[0]
        )
        for w in self.cfgs.warnings:
            log.warning("IKE configuration: %s", w)
        self.ike2.settings = dataclasses.replace(
            self.ike2.settings, connections=self.cfgs.v2_responders
        )
        v1 = self.cfgs.v1_responders
        if self.misbehaviour.get("ikev1_no_natt"):
            v1 = tuple(dataclasses.replace(c, nat_traversal=False) for c in v1)
        self.ike1.settings = dataclasses.replace(
            self.ike1.settings,
            connections=v1,
            retransmit=self.overrides.schedule or compiled.policy.ike.schedule,
            allow_aggressive_psk=self.overrides.allow_aggressive_psk,
        )
        self._v1_names.clear()

    def set_misbehaviour(self, name: str, value: Any, now: float) -> None:
        """Switch a deliberate misbehaviour on (truthy ``value``) or off (see MISBEHAVIOURS)."""
        if name not in MISBEHAVIOURS:
            raise LocalProtocolError(f"no misbehaviour {name!r}; known: {sorted(MISBEHAVIOURS)}")
        if value in (None, False, 0):
            self.misbehaviour.pop(name, None)
        else:
            self.misbehaviour[name] = value
        if name == "corrupt_icv":
            self._corrupt = int(value or 0)
        if name == "no_replay_check" and value:
            for sa in self.sad:
                if sa.inbound:
                    sa.window = ReplayWindow(0, sa.params.esn)  # type: ignore[attr-defined]
        if name in ("no_padding_check", "tfc_pad_to", "no_selector_check"):
            self._sa_options = SaOptions(
                check_padding=not self.misbehaviour.get("no_padding_check"),
                tfc_pad_to=int(self.misbehaviour.get("tfc_pad_to") or 0),
                check_selectors=not self.misbehaviour.get("no_selector_check"),
            )
        if name in ("wrong_natd", "accept_md5", "rekey_without_pfs", "ikev1_no_natt"):
            self._rebuild()
        if name == "accept_any_auth":
            self.ike2.settings = dataclasses.replace(
                self.ike2.settings, accept_any_auth=bool(value)
            )
        self._invalidate()
        self._record(now, "misbehaviour", name=name, value=value)

    # ================================================================================ counters

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _record(self, now: float, kind: str, **fields: Any) -> None:
        self.events.append((now, kind, fields))
        if self.on_event is not None:
            self.on_event(now, kind, fields)

    def _invalidate(self) -> None:
        for cache in self._fast.values():
            cache.clear()
        self._fast_in.clear()

    # =============================================================================== data path

    def outbound_packet(self, packet: bytes, now: float) -> None:
        """An IP packet from the local stack (TUN, or injected by the harness)."""
        if len(packet) >= 24 and packet[0] == 0x45:
            cache = self._fast.get(packet[9])
            if cache is not None:
                sa = cache.get(packet[12:24])
                if sa is not None:
                    v, out = sa.protect(packet, now)
                    if v is _DELIVERED:
                        self._emit_protected(sa, out)
                        return
                    cache.clear()
        self._last_protect_sa = None
        try:
            verdict = self.agent.outbound(packet, now)
        except Exception:  # never let one packet take the node down
            log.exception("outbound packet")
            self._count("drops.internal")
            return
        if verdict is PV.HELD and self.misbehaviour.get("leak_while_negotiating"):
            self.ip_out.append(packet)
            self._count("misbehave.leaked_clear")
        sa = self._last_protect_sa
        if sa is not None and verdict is PV.PROTECTED and len(packet) >= 24 and packet[0] == 0x45:
            cache = self._fast.get(packet[9])
            if cache is not None and len(cache) < 65536:
                cache[packet[12:24]] = sa
        self._pump(now)

    def _emit_protected(self, sa: OutboundSa, out: bytes) -> None:
        if self._corrupt:
            self._corrupt -= 1
            out = out[:-1] + bytes((out[-1] ^ 0xFF,))
            self._count("misbehave.corrupted_icv")
        route = self._udp_routes.get(id(sa))
        if route is None:
            self.ip_out.append(out)
            return
        src, dst, strip = route
        self.udp_out.append((out[strip or OutboundSa.outer_header_length(out) :], src, dst))

    def raw_received(self, d: bytes, now: float) -> None:
        """An IP packet from the wire: ESP or AH addressed to us, or a clear packet."""
        n = len(d)
        if n < 20:
            self._count("drops.runt")
            return
        version = d[0] >> 4
        if version == 4:
            proto = d[9]
        elif version == 6 and n >= 40:
            proto = d[6]
            if proto in _IPV6_OPTION_HEADERS:  # ESP/AH may follow them (RFC 4303 §3.1.1)
                proto = _ipv6_upper_protocol(d)
        else:
            self._count("drops.malformed")
            return
        if proto == 50 or proto == 51:
            self._unprotect(d, now, udp=False)
            return
        try:
            verdict = self._inbound_clear(d, now)
        except Exception:
            log.exception("inbound clear packet")
            self._count("drops.internal")
            return
        if verdict is PV.ACCEPTED:
            self._deliver(d, now, False, None)
        elif verdict is PV.IKE:
            self._count("drops.ike_on_raw")
        self._pump(now)

    def _inbound_clear(self, d: bytes, now: float) -> PV:
        if self.misbehaviour.get("accept_clear_inbound"):
            self._count("misbehave.accepted_clear")
            return PV.ACCEPTED
        return self.agent.inbound_clear(d, now)

    def clear_inbound(self, d: bytes, now: float) -> bool:
        """A clear packet for a local address that the kernel holds (the ``tun`` data plane's
        queue): whether the Policy Agent lets it through (policy-spec §4.1-§4.4). Discards
        are counted and audited by the agent; the kernel delivers or drops the packet."""
        try:
            verdict = self._inbound_clear(d, now)
        except Exception:
            log.exception("inbound clear packet")
            self._count("drops.internal")
            return False
        self._pump(now)
        return verdict is PV.ACCEPTED or verdict is PV.IKE

    def _unprotect(self, d: bytes, now: float, udp: bool) -> None:
        verdict, inner, sa = self.sad.unprotect(d, now)
        if verdict is _DELIVERED:
            assert sa is not None
            key = inner[12:24] if len(inner) >= 24 and inner[0] == 0x45 else None
            if key is not None and key in self._fast_in:
                self.delivered.append(inner)
                if self.settings.record_deliveries:
                    self.delivered_info.append((now, True, sa.spi))
                return
            encrypted = sa.params.protocol == IpsecProtocol.ESP and sa.params.encr_id not in (
                None,
                11,
            )
            try:
                av = self.agent.inbound_protected(inner, sa.spi, now, encrypted=encrypted)
            except Exception:
                log.exception("inbound protected packet")
                self._count("drops.internal")
                return
            if av is PV.ACCEPTED:
                if key is not None and len(self._fast_in) < 65536:
                    self._fast_in.add(key)
                self._deliver(inner, now, True, sa.spi)
            return
        if verdict is Verdict.NO_SA:
            spi = _spi_of(d, udp)
            src, dst = _addresses(d)
            self.agent.report_unknown_spi(spi, src, dst, 17 if udp else d[9], now)
        elif verdict is Verdict.SELECTOR_MISMATCH and sa is not None:
            self.agent.report_selector_mismatch(sa.spi, "inner packet outside the SA", now)
        elif verdict is Verdict.IKE:
            self._count("drops.ike_in_esp_path")

    def _deliver(self, packet: bytes, now: float, protected: bool, spi: int | None) -> None:
        self.delivered.append(packet)
        if self.settings.record_deliveries:
            self.delivered_info.append((now, protected, spi))

    def udp_esp_received(
        self, buf: bytes, seg: int, src: Address, local: Address, now: float
    ) -> None:
        """Several datagrams of ``seg`` octets from one source in one buffer (UDP GRO on the
        NAT-T socket): ESP-in-UDP of tunnel-mode IPv4 SAs goes to the driver's fast path, with
        the per-datagram work (port mapping, addresses) done once."""
        addrs = self._addr_pairs.get((src[0], local[0]))
        fast = self._udp_fast
        if addrs is None or not fast:
            for off in range(0, len(buf), seg):
                self.udp_received(buf[off : off + seg], src, local, now)
            return
        pack = _ESP4.pack
        unprotect = self._unprotect
        for off in range(0, len(buf), seg):
            data = buf[off : off + seg]
            if data[:4] in fast:
                unprotect(pack(0x4500, 20 + len(data), 0, _TTL_ESP, addrs) + data, now, False)
            else:
                self.udp_received(data, src, local, now)

    def udp_received(self, data: bytes, src: Address, local: Address, now: float) -> None:
        """A datagram on one of our UDP sockets (``src`` and ``local`` with real ports)."""
        if data[:4] in self._udp_fast and local[1] == self.ports.natt:
            # ESP in UDP for a tunnel-mode IPv4 SA: a raw IPv4 header in front lets the
            # driver's fast path take it (RFC 3948 §3.3: decapsulation is ESP processing of
            # the UDP payload).
            addrs = self._addr_pairs.get((src[0], local[0]))
            if addrs is None:
                addrs = _packed(src[0]) + _packed(local[0])
                if len(self._addr_pairs) < 1024:
                    self._addr_pairs[(src[0], local[0])] = addrs
            self._unprotect(_ESP4.pack(0x4500, 20 + len(data), 0, _TTL_ESP, addrs) + data,
                            now, False)  # fmt: skip
            return
        lport = self.ports.local_logical(local[1])
        if lport == NATT_PORT:
            if len(data) == 1 and data[0] == 0xFF:
                self._count("udp.nat_keepalive")  # RFC 3948 §2.3
                return
            if data[:4] == NON_ESP_MARKER:
                if self.misbehaviour.get("silent_ike_port") == "all":
                    self._count("misbehave.ignored_ike")
                    self._record(now, "ike_ignored", src=f"{src[0]}:{src[1]}", data=data.hex(),
                                 port=NATT_PORT)  # fmt: skip
                    return
                self._ike_in(data[4:], src, (local[0], NATT_PORT), now)
                return
            if len(data) < 8:
                self._count("drops.udp_runt")
                return
            esp = self.sad.inbound(IpsecProtocol.ESP, int.from_bytes(data[:4], "big"))
            if esp is not None and esp.mode is Mode.TUNNEL and ":" not in src[0]:
                # RFC 3948 §3.3: decapsulation is the ESP processing of the payload; a raw
                # IPv4 header in front lets the driver's fast path take it.
                addrs = self._addr_pairs.get((src[0], local[0]))
                if addrs is None:
                    addrs = _packed(src[0]) + _packed(local[0])
                    if len(self._addr_pairs) < 1024:
                        self._addr_pairs[(src[0], local[0])] = addrs
                self._unprotect(_ESP4.pack(0x4500, 20 + len(data), 0, _TTL_ESP, addrs) + data,
                                now, udp=False)  # fmt: skip
                return
            self._unprotect(self._udp_frame(data, src, local), now, udp=True)
            return
        if lport == IKE_PORT:
            if self.misbehaviour.get("silent_ike_port"):
                self._count("misbehave.ignored_ike")
                self._record(now, "ike_ignored", src=f"{src[0]}:{src[1]}", data=data.hex(),
                             port=IKE_PORT)  # fmt: skip
                return
            self._ike_in(data, src, (local[0], IKE_PORT), now)
            return
        self._count("drops.udp_unknown_port")

    def _udp_frame(self, esp: bytes, src: Address, local: Address) -> bytes:
        """The ESP-in-UDP datagram as the driver takes it: an IP and UDP header in front
        (RFC 3948 §2.1; the UDP checksum is zero, which receivers accept)."""
        s = ipaddress.ip_address(src[0])
        if s.version == 4:
            ulen = 8 + len(esp)
            dst = ipaddress.ip_address(local[0]).packed
            hdr = _IPV4_UDP.pack(
                0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, s.packed, dst, NATT_PORT, NATT_PORT, ulen, 0
            )  # fmt: skip
            return hdr + esp
        from reference_impl.driver.packet import ipv6_header, udp_checksum_v6

        d = ipaddress.ip_address(local[0]).packed
        udp = struct.pack(">HHHH", NATT_PORT, NATT_PORT, 8 + len(esp), 0) + esp
        c = udp_checksum_v6(s.packed, d, udp)
        udp = struct.pack(">HHHH", NATT_PORT, NATT_PORT, 8 + len(esp), c) + esp
        return (
            ipv6_header(
                traffic_class=0,
                flow_label=0,
                payload_length=len(udp),
                next_header=17,
                hop_limit=64,
                src=s.packed,
                dst=d,
            )
            + udp
        )

    def _ike_in(self, data: bytes, src: Address, local: Address, now: float) -> None:
        peer = (src[0], self.ports.peer_logical(src[0], src[1]))
        self._invalidate()
        try:
            if len(data) >= 28 and data[17] >> 4 == 1:
                if 1 in self.overrides.versions:
                    self.ike1.receive_datagram(data, peer, now, local)
                else:
                    self._count("drops.ikev1_disabled")
            elif 2 in self.overrides.versions or len(data) < 28:
                self.ike2.receive_datagram(data, peer, now, local)
            else:
                self._count("drops.ikev2_disabled")
        except Exception:
            log.exception("IKE datagram from %s", src)
            self._count("drops.ike_internal")
        self._pump(now)

    def icmp_error(
        self,
        destination: Address,
        local_port: int,
        icmp_type: int,
        icmp_code: int,
        payload: bytes,
        offender: str,
        now: float,
    ) -> None:
        """An ICMP error quoting one of our IKE datagrams (policy-spec E7: a hint only)."""
        self._count(f"icmp_errors.{icmp_type}.{icmp_code}")
        dst = (destination[0], self.ports.peer_logical(destination[0], destination[1]))
        hint = IcmpHint(dst, self.ports.local_logical(local_port), icmp_type, icmp_code,
                        payload, offender)  # fmt: skip
        self._record(now, "icmp_error", peer=f"{dst[0]}:{dst[1]}", type=icmp_type, code=icmp_code)
        self._invalidate()
        self.agent.handle_icmp_error(hint, now)
        self._pump(now)

    # =================================================================================== timers

    def get_timer(self) -> float | None:
        times = [
            t
            for t in (
                self.agent.get_timer(),
                self.ike2.get_timer(),
                self.ike1.get_timer(),
                self.sad.get_timer(),
            )
            if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._invalidate()
        self.timer_dirty = True
        t = self.agent.get_timer()
        if t is not None and t <= now:  # the agent first (E5 tie rule)
            self.agent.handle_timer(now)
            self._pump(now)
        t = self.ike2.get_timer()
        if t is not None and t <= now:
            self.ike2.handle_timer(now)
        t = self.ike1.get_timer()
        if t is not None and t <= now:
            self.ike1.handle_timer(now)
        t = self.sad.get_timer()
        if t is not None and t <= now:
            self.sad.handle_timer(now)
        self._pump(now)

    # ============================================================================ the wiring

    def poll(self, now: float) -> None:
        """After a batch of data packets: act on lifetime events the driver raised on the
        cached path (soft byte/packet limits -> rekey, hard -> delete)."""
        ev = self.sad.next_event()
        if ev is not None:
            self._invalidate()
            self._sa_expired(ev, now)
            self._pump(now)

    def _pump(self, now: float) -> None:
        """Move requests, events and packets between the components until all are quiet."""
        self.timer_dirty = True
        agent = self.agent
        for _ in range(10000):
            busy = False
            while (req := agent.next_request()) is not None:
                busy = True
                try:
                    self._ike_request(req, now)
                except Exception:
                    log.exception("IKE request %s", type(req).__name__)
                    self._count("drops.request_internal")
            for version, svc in ((2, self.ike2), (1, self.ike1)):
                while (ev := svc.next_event()) is not None:
                    busy = True
                    try:
                        self._ike_event(ev, version, now)
                    except Exception:
                        log.exception("IKE event %s", type(ev).__name__)
                        self._count("drops.event_internal")
            while (sev := self.sad.next_event()) is not None:
                busy = True
                self._sa_expired(sev, now)
            if not busy:
                break
        # IKE first: an IKEv1 Quick Mode initiator releases held packets when it sends QM3,
        # and the responder installs its SAs only when QM3 arrives (RFC 2409 §5.5).
        drop_ike = self.misbehaviour.get("drop_ike_out")
        for svc in (self.ike2, self.ike1):
            for dg in svc.datagrams_to_send(now):
                if drop_ike:
                    self._count("misbehave.dropped_ike_out")
                    continue
                data = NON_ESP_MARKER + dg.data if dg.marker else dg.data
                self.udp_out.append(
                    (
                        data,
                        (dg.src[0], self.ports.local_real(dg.src[1])),
                        (dg.dst[0], self.ports.peer_real(dg.dst[0], dg.dst[1])),
                    )
                )
        for tx in agent.packets_to_send():
            if tx.protected:
                if tx.data and tx.spi is not None:
                    sa = self._out_by_spi.get(tx.spi)
                    if sa is not None:
                        self._emit_protected(sa, tx.data)
            else:
                self.ip_out.append(tx.data)
                self._count("clear.out")
        for icmp in agent.local_icmp_to_send():
            pkt = local_icmp_packet(icmp)
            if pkt:
                self._deliver(pkt, now, False, None)

    def _ike_request(self, req: Acquire | CancelAcquire | DeleteChildSa, now: float) -> None:
        if isinstance(req, Acquire):
            self._acquire(req, now)
        elif isinstance(req, CancelAcquire):
            if self.misbehaviour.get("ike_after_fallback") and req.reason.startswith("fallback"):
                self._count("misbehave.ike_after_fallback")
                return
            self._cancel(req.acquire_id, req.reason, now)
        else:
            child = self._children.get(req.inbound_spi)
            if child is not None:
                self._delete_child(child, now, req.reason)

    def _fail_acquire(self, acq: Acquire, detail: str, now: float) -> None:
        log.warning("ACQUIRE %s (rule %s): %s", acq.acquire_id, acq.rule, detail)
        self._record(now, "acquire_failed", rule=acq.rule, detail=detail)
        self.agent.handle_event(
            NegotiationFailed(
                FailureReason.LOCAL_ERROR, detail, acq.peer, False, b"", acq.acquire_id
            ),
            now,
        )

    def _acquire(self, acq: Acquire, now: float) -> None:
        """Policy-spec E1: the agent asks for an SA; IKE sends its first message now."""
        cfgs = self.cfgs
        r = cfgs.rules.get(acq.rule) if cfgs is not None else None
        if cfgs is None or r is None:
            self._fail_acquire(acq, f"no IKE configuration for rule {acq.rule!r}", now)
            return
        version = self.overrides.version or acq.ike_version
        local, peer = acq.local[0], acq.peer[0]
        lts, rts = acq.sa_selectors
        self._record(now, "acquire", rule=acq.rule, peer=peer, version=version)
        try:
            if version == 2:
                cfg = cfgs.v2_peer(r)
                child = cfgs.v2_child(r, [lts], [rts])
                port = acq.peer[1]
                ike_sa_id = self.ike2.initiate(
                    cfg,
                    now,
                    child=child,
                    acquire_id=acq.acquire_id,
                    packet_ts=acq.packet_selectors if self.overrides.packet_selectors else None,
                    remote=(peer, port),
                    local=(local, NATT_PORT if port == NATT_PORT else IKE_PORT),
                )
            else:
                name = self._v1_connection(r, local, peer, lts, rts)
                ike_sa_id = self.ike1.initiate(name, now, child=r.rule, acquire_id=acq.acquire_id)
        except LocalProtocolError as exc:
            self._fail_acquire(acq, str(exc), now)
            return
        self._attempts[acq.acquire_id] = (version, ike_sa_id[:8])
        self.agent.note_initiator_spi(acq.acquire_id, ike_sa_id[:8])

    def _v1_connection(
        self, r: ikeconf.RuleIke, local: str, peer: str, lts: TrafficSelector, rts: TrafficSelector
    ) -> str:
        """The IKEv1 initiator connection for a rule, peer and selectors (one per key, so a
        second Quick Mode to the same peer reuses the ISAKMP SA)."""
        assert self.cfgs is not None
        key: tuple[object, ...] = (r.rule, r.auth.key, local, peer, lts, rts)
        name = self._v1_names.get(key)
        if name is None:
            name = f"{r.rule}@{peer}#{len(self._v1_names) + 1}"
            conn = dataclasses.replace(self.cfgs.v1_connection(r, local, peer, lts, rts), name=name)
            self._v1_names[key] = name
            settings = self.ike1.settings
            # After the responder connections: a peer's first message is matched to a
            # responder connection (by address) first.
            self.ike1.settings = dataclasses.replace(
                settings, connections=(*settings.connections, conn)
            )
        return name

    def _cancel(self, acquire_id: int, reason: str, now: float) -> None:
        """Stop an IKE attempt (policy-spec E5/E11): nothing more is sent for it."""
        attempt = self._attempts.pop(acquire_id, None)
        if attempt is None:
            return
        version, spi = attempt
        self._record(now, "acquire_cancelled", acquire_id=acquire_id, reason=reason)
        # Only an attempt the peer never answered is abandoned: once it replied, the peer may
        # already hold the SAs (a crossing peer-initiated negotiation, E8), and dropping our
        # half would leave it sending on SPIs we forgot. Such an attempt completes and the
        # agent binds whichever pair arrives last.
        if version == 2:
            sa = self.ike2.find(spi)
            if sa is not None and not sa.established and not sa.replied:
                self.ike2.delete_ike(sa.ike_sa_id, now)
        else:
            for ike_sa_id in self.ike1.ike_sa_ids():
                if ike_sa_id[:8] == spi:
                    state = self.ike1.ike_sa_state(ike_sa_id)
                    if state is not None and state.value in ("MM_I1", "AM_I1"):
                        self.ike1.delete_ike_sa(ike_sa_id, now, reason)

    def _ike_event(self, ev: Event, version: int, now: float) -> None:
        self._invalidate()
        if isinstance(ev, ChildSaEstablished | ChildSaRekeyed):
            if not self._install(ev.pair, version, now):
                return
            pair = ev.pair
            if isinstance(ev, ChildSaEstablished) and pair.acquire_id is None:
                peer = pair.outbound.dst
                ok = self.agent.responder_policy(
                    peer, pair.outbound.ts_src, pair.outbound.ts_dst, now
                )
                if ok is None:
                    self._count("child_sa.refused_by_policy")
                    self._record(now, "child_sa_refused", spi=f"{pair.inbound.spi:08x}")
                    self._delete_child(self._children[pair.inbound.spi], now, "refused by policy")
                    return
            self._record(
                now,
                "child_sa_" + ("established" if isinstance(ev, ChildSaEstablished) else "rekeyed"),
                version=version,
                inbound_spi=f"{pair.inbound.spi:08x}",
                outbound_spi=f"{pair.outbound.spi:08x}",
                name=pair.name,
            )
        elif isinstance(ev, ChildSaDeleted):
            child = self._children.pop(ev.inbound_spi, None)
            if child is not None:
                self._child_by_out.pop(child.pair.outbound.spi, None)
                self._out_by_spi.pop(child.pair.outbound.spi, None)
                self._udp_routes.pop(id(child.outbound), None)
                self._udp_fast.discard(child.pair.inbound.spi.to_bytes(4, "big"))
                self.sad.remove(child.inbound)
                self.sad.remove(child.outbound)
            self._record(now, "child_sa_deleted", inbound_spi=f"{ev.inbound_spi:08x}",
                         reason=ev.reason)  # fmt: skip
        elif isinstance(ev, IkeSaEstablished):
            self._record(now, "ike_sa_established", version=version, peer=f"{ev.peer[0]}",
                         initiator=ev.initiator, algorithms=ev.algorithms)  # fmt: skip
        elif isinstance(ev, IkeSaDeleted):
            self._record(now, "ike_sa_deleted", version=version, ike_sa_id=ev.ike_sa_id.hex(),
                         reason=ev.reason)  # fmt: skip
        elif isinstance(ev, IkeSaRekeyed):
            self._record(now, "ike_sa_rekeyed", version=version, old=ev.old_ike_sa_id.hex(),
                         new=ev.new_ike_sa_id.hex())  # fmt: skip
        elif isinstance(ev, NegotiationFailed):
            self._record(now, "negotiation_failed", version=version, reason=ev.reason.value,
                         detail=ev.detail, peer=ev.peer[0])  # fmt: skip
        elif isinstance(ev, PeerReplied):
            self._record(now, "peer_replied", version=version, peer=ev.peer[0])
        self.agent.handle_event(ev, now)

    def _install(self, pair: ChildSaPair, version: int, now: float) -> bool:
        inbound = dataclasses.replace(
            pair.inbound,
            ts_src=_simplify(pair.inbound.ts_src),
            ts_dst=_simplify(pair.inbound.ts_dst),
        )
        outbound = dataclasses.replace(
            pair.outbound,
            ts_src=_simplify(pair.outbound.ts_src),
            ts_dst=_simplify(pair.outbound.ts_dst),
        )
        if self.misbehaviour.get("no_replay_check"):
            inbound = dataclasses.replace(inbound, replay_window=0)
        encap = outbound.encap
        strip = 0
        if encap is not None and outbound.mode == Mode.TUNNEL and ":" not in outbound.src:
            # The UDP header is the socket's business: the driver makes raw ESP (its fast
            # path) and the node sends what follows the 20-octet IPv4 header; inbound, the
            # node puts a raw IPv4 header in front of what the socket received (RFC 3948 §3.3:
            # decapsulation is ESP processing of the UDP payload).
            outbound = dataclasses.replace(outbound, encap=None)
            inbound = dataclasses.replace(inbound, encap=None)
            strip = 20
        try:
            sa_in, sa_out = self.sad.install_pair(
                dataclasses.replace(pair, inbound=inbound, outbound=outbound),
                now,
                self._sa_options,
            )
        except LocalProtocolError as exc:
            log.error("cannot install Child SA %08x: %s", pair.inbound.spi, exc)
            self._count("child_sa.install_failed")
            self._record(now, "child_sa_install_failed", spi=f"{pair.inbound.spi:08x}",
                         error=str(exc))  # fmt: skip
            self._delete_in_ike(version, pair.inbound.spi, now, "install failed")
            return False
        if strip:
            self._udp_fast.add(inbound.spi.to_bytes(4, "big"))
        if encap is not None:
            self._udp_routes[id(sa_out)] = (
                (pair.outbound.src, self.ports.local_real(encap[0])),
                (pair.outbound.dst, self.ports.peer_real(pair.outbound.dst, encap[1])),
                strip,
            )
        child = _Child(version, pair, sa_in, sa_out, now, pair.acquire_id is not None)
        self._children[pair.inbound.spi] = child
        self._child_by_out[pair.outbound.spi] = child
        self._out_by_spi[pair.outbound.spi] = sa_out
        return True

    def _delete_child(self, child: _Child, now: float, reason: str) -> None:
        self._delete_in_ike(child.version, child.pair.inbound.spi, now, reason)

    def _delete_in_ike(self, version: int, inbound_spi: int, now: float, reason: str) -> None:
        try:
            if version == 2:
                self.ike2.delete_child(inbound_spi, now)
            else:
                self.ike1.delete_child_sa(inbound_spi, now, reason)
        except LocalProtocolError as exc:
            log.info("delete Child SA %08x: %s", inbound_spi, exc)

    def _sa_expired(self, ev: SaExpired, now: float) -> None:
        """RFC 4301 §4.4.2.1: soft -> rekey, hard -> delete (IKE owns the time lifetimes)."""
        if ev.kind is LifetimeKind.SECONDS:
            return
        child = self._children.get(ev.spi) if ev.inbound else self._child_by_out.get(ev.spi)
        if child is None:
            return
        spi = child.pair.inbound.spi
        self._record(now, "sa_expired", spi=f"{ev.spi:08x}", hard=ev.hard, lifetime=ev.kind.value)
        try:
            if child.version == 2:
                self.ike2.expire_child(spi, now, hard=ev.hard)
            elif ev.hard:
                self.ike1.delete_child_sa(spi, now, f"{ev.kind.value} lifetime expired")
            else:
                self.ike1.rekey_child_sa(spi, now)
        except LocalProtocolError as exc:
            log.info("lifetime of Child SA %08x: %s", spi, exc)

    # ========================================================================= control calls

    def _rule(self, name: str) -> ikeconf.RuleIke:
        if self.cfgs is None:
            raise LocalProtocolError("no policy loaded")
        r = self.cfgs.rules.get(name)
        if r is None:
            known = sorted(self.cfgs.rules)
            raise LocalProtocolError(
                f"no negotiate rule {name!r} with usable credentials; rules: {known}"
            )
        return r

    def initiate(
        self, rule: str, now: float, *, peer: str | None = None, version: int | None = None
    ) -> bytes:
        """Bring up a Child SA for ``rule`` now (without traffic), or only the IKE SA with the
        ``childless`` override (IKEv2 RFC 6023; IKEv1 phase 1 alone); returns its ID."""
        r = self._rule(rule)
        assert self.cfgs is not None and self.policy is not None
        entry = next(
            e
            for e in self.policy.spd.entries()
            if e.rule is not None and e.rule.name == rule and e.action.value == "protect"
        )
        if entry.tunnel is not None:
            local, remote = entry.tunnel
            lts, rts = r.selectors[0]
        else:
            if peer is None:
                if entry.r_lo != entry.r_hi:
                    raise LocalProtocolError(f"rule {rule!r} has no single peer: name one")
                peer = str(entry.remote.first)
            remote = peer
            peer_ip = ipaddress.ip_address(peer)
            local = next(
                (a for a in self.addresses if ipaddress.ip_address(a).version == peer_ip.version),
                self.addresses[0],
            )
            sel = entry.sa_selector(int(ipaddress.ip_address(local)), int(peer_ip))
            lts, rts = sel.traffic_selectors()
        v = version or self.overrides.version or self.policy.policy.ike.version
        self._invalidate()
        if v == 2:
            port = self.policy.policy.ike.remote_port
            ike_sa_id = self.ike2.initiate(
                self.cfgs.v2_peer(r),
                now,
                child=None if self.overrides.childless else self.cfgs.v2_child(r, [lts], [rts]),
                remote=(remote, port),
                local=(local, NATT_PORT if port == NATT_PORT else IKE_PORT),
            )
        else:
            name = self._v1_connection(r, local, remote, lts, rts)
            # childless: the ISAKMP SA alone, no Quick Mode (IKE-only peers)
            ike_sa_id = self.ike1.initiate(
                name, now, child=r.rule, phase1_only=self.overrides.childless
            )
        self._pump(now)
        return ike_sa_id

    def _find_ike(self, ike_sa_id: bytes) -> int:
        if self.ike2.find(ike_sa_id) is not None or self.ike2.find(ike_sa_id[:8]) is not None:
            return 2
        if any(i == ike_sa_id or i[:8] == ike_sa_id[:8] for i in self.ike1.ike_sa_ids()):
            return 1
        raise LocalProtocolError(f"no IKE SA {ike_sa_id.hex()}")

    def _v1_id(self, ike_sa_id: bytes) -> bytes:
        for i in self.ike1.ike_sa_ids():
            if i == ike_sa_id or i[:8] == ike_sa_id[:8]:
                return i
        raise LocalProtocolError(f"no IKE SA {ike_sa_id.hex()}")

    def terminate(self, now: float, ike_sa_id: bytes | None = None) -> int:
        """Delete one IKE SA (or all) with its Child SAs, telling the peer; returns how many."""
        self._invalidate()
        n = 0
        if ike_sa_id is None:
            for sa in self.ike2.ike_sas():
                if sa.established:
                    self.ike2.delete_ike(sa.ike_sa_id, now)
                    n += 1
            for i in self.ike1.ike_sa_ids():
                self.ike1.delete_ike_sa(i, now, "terminated")
                n += 1
        elif self._find_ike(ike_sa_id) == 2:
            found = self.ike2.find(ike_sa_id) or self.ike2.find(ike_sa_id[:8])
            assert found is not None
            self.ike2.delete_ike(found.ike_sa_id, now)
            n = 1
        else:
            self.ike1.delete_ike_sa(self._v1_id(ike_sa_id), now, "terminated")
            n = 1
        self._pump(now)
        return n

    def _child_by_spi(self, spi: int) -> _Child:
        child = self._children.get(spi) or self._child_by_out.get(spi)
        if child is None:
            raise LocalProtocolError(f"no Child SA with SPI {spi:08x}")
        return child

    def rekey_child(self, spi: int, now: float) -> None:
        child = self._child_by_spi(spi)
        self._invalidate()
        if child.version == 2:
            self.ike2.rekey_child(child.pair.inbound.spi, now)
        else:
            self.ike1.rekey_child_sa(child.pair.inbound.spi, now)
        self._pump(now)

    def delete_child(self, spi: int, now: float) -> None:
        child = self._child_by_spi(spi)
        self._invalidate()
        self._delete_child(child, now, "deleted")
        self._pump(now)

    def rekey_ike(self, ike_sa_id: bytes, now: float) -> None:
        if self._find_ike(ike_sa_id) != 2:
            raise LocalProtocolError("IKEv1 ISAKMP SAs are rekeyed by their lifetime only")
        sa = self.ike2.find(ike_sa_id) or self.ike2.find(ike_sa_id[:8])
        assert sa is not None
        self.ike2.rekey_ike(sa.ike_sa_id, now)
        self._pump(now)

    def liveness_check(self, ike_sa_id: bytes, now: float) -> None:
        if self._find_ike(ike_sa_id) != 2:
            raise LocalProtocolError("liveness checks are IKEv2 (IKEv1 DPD runs on its timer)")
        sa = self.ike2.find(ike_sa_id) or self.ike2.find(ike_sa_id[:8])
        assert sa is not None
        self.ike2.liveness_check(sa.ike_sa_id, now)
        self._pump(now)

    def child_sas(self) -> list[_Child]:
        return list(self._children.values())

    def out_sa(self, spi: int) -> OutboundSa | None:
        return self._out_by_spi.get(spi)

    def shutdown(self, now: float) -> None:
        """Delete every IKE SA, telling the peers (graceful stop)."""
        try:
            self.terminate(now)
        except LocalProtocolError:
            pass

    def all_counters(self) -> dict[str, Any]:
        return {
            "node": dict(sorted(self.counters.items())),
            "driver": {v.name.lower(): n for v, n in self.sad.drops.items()},
            "driver_audit_lost": self.sad.audit_lost,
            "agent": self.agent.counters.to_json(),
            "ikev2": dict(self.ike2.stats),
            "ikev1": {
                "received": self.ike1.counters.received,
                "dropped": dict(self.ike1.counters.dropped),
                "last_error": self.ike1.counters.last_error,
            },
        }


class _DriverAdapter:
    """The agent's view of the driver (``OutboundSad``): protect with an outbound SPI."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def protect(self, spi: int, packet: bytes, now: float) -> bytes | None:
        sa = self.host._out_by_spi.get(spi)
        if sa is None:
            return None
        v, out = sa.protect(packet, now)
        if v is _DELIVERED:
            self.host._last_protect_sa = sa
            return out
        if v in (Verdict.LIFETIME_EXPIRED, Verdict.SEQUENCE_EXHAUSTED, Verdict.NO_SA):
            return None
        return b""  # a per-packet failure (e.g. malformed): dropped, the SA stays usable


def _simplify(ts: Sequence[TrafficSelector]) -> tuple[TrafficSelector, ...]:
    """Selectors without those another one covers (an IKEv2 narrowing answer repeats the
    triggering packet's selector beside the rule's, RFC 7296 §2.9); the driver's fast paths
    want one range per side."""
    out = []
    for i, t in enumerate(ts):
        covered = False
        for j, u in enumerate(ts):
            if i == j or t.start_addr.version != u.start_addr.version:
                continue
            if (
                u.start_addr <= t.start_addr  # type: ignore[operator]
                and t.end_addr <= u.end_addr  # type: ignore[operator]
                and (u.ip_protocol == 0 or u.ip_protocol == t.ip_protocol)
                and u.start_port <= t.start_port
                and t.end_port <= u.end_port
                and (t != u or j < i)
            ):
                covered = True
                break
        if not covered:
            out.append(t)
    return tuple(out)


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


_IPV6_OPTION_HEADERS = frozenset({0, 43, 60})
"""Hop-by-hop options, routing, destination options (RFC 8200 §4)."""


def _ipv6_upper_protocol(d: bytes) -> int:
    """The Next Header after an IPv6 datagram's hop-by-hop/routing/destination options."""
    nh, off, n = d[6], 40, len(d)
    while nh in _IPV6_OPTION_HEADERS and off + 2 <= n:
        nh, off = d[off], off + (d[off + 1] + 1) * 8
    return nh


def _spi_of(d: bytes, udp: bool) -> int:
    off = ((d[0] & 0x0F) * 4 if d[0] >> 4 == 4 else 40) + (8 if udp else 0)
    proto = d[9] if d[0] >> 4 == 4 else d[6]
    if proto == 51:
        off += 4
    if len(d) < off + 4:
        return 0
    return int.from_bytes(d[off : off + 4], "big")


def _addresses(d: bytes) -> tuple[str, str]:
    if d[0] >> 4 == 4:
        return str(ipaddress.IPv4Address(d[12:16])), str(ipaddress.IPv4Address(d[16:20]))
    return str(ipaddress.IPv6Address(d[8:24])), str(ipaddress.IPv6Address(d[24:40]))


def local_icmp_packet(icmp: LocalIcmp) -> bytes:
    """The ICMP error for the local sender of a discarded packet (RFC 4301 §5.1.1), from
    the original destination, quoting the original header and the first 8 octets past it
    (RFC 792; RFC 4443 §3.1 as much as fits in 1280 octets)."""
    o = icmp.original
    if len(o) < 20:
        return b""
    if o[0] >> 4 == 4:
        ihl = (o[0] & 0x0F) * 4
        quote = o[: ihl + 8]
        body = bytearray(struct.pack(">BBHI", icmp.icmp_type, icmp.icmp_code, 0, 0) + quote)
        body[2:4] = checksum(bytes(body)).to_bytes(2, "big")
        total = 20 + len(body)
        hdr = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 1, 0, o[16:20],
                                    o[12:16]))  # fmt: skip
        hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
        return bytes(hdr) + bytes(body)
    if len(o) < 40:
        return b""
    quote = o[: 1280 - 48]
    src, dst = o[24:40], o[8:24]
    body = bytearray(struct.pack(">BBHI", icmp.icmp_type, icmp.icmp_code, 0, 0) + quote)
    pseudo = src + dst + struct.pack(">I3xB", len(body), 58)
    body[2:4] = checksum(pseudo + bytes(body)).to_bytes(2, "big")
    hdr6 = struct.pack(">IHBB16s16s", 6 << 28, len(body), 58, 64, src, dst)
    return hdr6 + bytes(body)


__all__ = [
    "MISBEHAVIOURS",
    "Host",
    "HostSettings",
    "PortMap",
    "RetransmitSchedule",
    "local_icmp_packet",
]


def _no_dh(text: str) -> str:
    """A child proposal (strongSwan syntax) without its D-H groups (misbehaviour
    ``rekey_without_pfs``)."""
    from reference_impl.ike.config import ProposalConfig

    keep = []
    for word in text.split("-"):
        try:
            is_dh = bool(ProposalConfig.parse(f"aes128-sha256-{word}").dh)
        except LocalProtocolError:
            is_dh = False
        if not is_dh:
            keep.append(word)
    return "-".join(keep)
