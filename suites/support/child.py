"""What the ikev2-child, ikev1 and algorithms suites share (catalogue §3, §7, §11).

**IKEv2** (built on ``suites/support/ike.py``'s scripted peer: its wires, :class:`HarnessSa`,
:class:`Initiator` and :class:`Responder`): a :class:`Session` is the harness's end of one IKE
SA with the peer under test (PUT), in either IKE role, after IKE_AUTH. It sends protected
requests and answers the PUT's, creates, rekeys and deletes Child SAs and the IKE SA itself
(CREATE_CHILD_SA, RFC 7296 §1.3, §2.8, §2.18) and keeps every Child SA's keys, which it derives
itself (KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr), §2.17; SKEYSEED of a rekeyed IKE SA =
prf(SK_d old, g^ir | Ni | Nr), §2.18). :func:`responding` (the PUT responds) and
:func:`initiating` (the PUT initiates) open one.

**Data plane**: :class:`DataPlane` speaks ESP/AH on those Child SAs with the harness's own
encoder (``harness.probes.craft``) and opens what the PUT sends with the reference driver's
inbound SA code, keyed with the harness's own keys: a verified packet from the PUT is the
evidence that it derived the same keys and used the negotiated transform. Crafted packets carry
ICMP echo requests from the tester's side; a PUT with a kernel answers through its SA. A
reference PUT on the ``local`` topology has no kernel (its ``api`` data plane): there its
delivery queue shows what it accepted, and echo packets injected into it from its local stack
show what it sends. The PUT's ESP reaches the harness as raw ESP recorded by the tester node
(``record_received``), or as ESP in UDP on the harness's own IKE socket (a PUT behind a NAT
or faking one, as strongSwan's libipsec does).

**IKEv1**: :class:`V1Session` is a scripted IKEv1 peer (RFC 2408, RFC 2409: Main, Aggressive,
Quick Mode, Informational; RFC 3706 DPD; RFC 3947 NAT-T) built from the reference codec and
KDF (``reference_impl.isakmp.codec``, ``reference_impl.crypto.kdf_ikev1``), as initiator or as
responder, with every message choosable.

Helpers to configure the PUT: its *default* proposals (the algorithm cases' MUST NOT checks
are on what an implementation ships), a lifetime or rekey it starts by itself, its clock.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from harness.peers.base import NotApplicable, Peer, PeerError, Scenario
from harness.probes.craft import AhCrafter, EspCrafter, mutate_ipv4
from harness.probes.keys import IpsecSaEntry
from harness.report.model import EvidenceKind
from reference_impl.crypto import (
    dh,
    encr,
    ikev2_child_keymat,
    ikev2_ike_keys,
    ikev2_rekey_skeyseed,
    integ,
    prf,
)
from reference_impl.crypto.kdf import ChildKeys
from reference_impl.driver import AhInbound, SaOptions
from reference_impl.driver import Verdict as DriverVerdict
from reference_impl.driver.base import DriverContext
from reference_impl.driver.packet import IPPROTO_AH, IPPROTO_ESP, parse_ip
from reference_impl.ike import payloads as v2p
from reference_impl.ike.enums import NotifyType
from reference_impl.ike.messages import HEADER_LEN, Message
from reference_impl.ike.proposals import Selected
from reference_impl.ike.protection import SkProtection
from reference_impl.sa import IpsecProtocol, Mode, TrafficSelector
from suites.support.ike import (
    CREATE_CHILD_SA,
    IKE_AUTH,
    IKE_PORT,
    INFORMATIONAL,
    NATT_PORT,
    PUT,
    TESTER,
    Auth,
    HarnessSa,
    Initiator,
    Reply,
    Responder,
    Rx,
    Wire,
    first,
    flush_half_open,
    id_payload,
    in_netns,
    natd_hash,
    note,
    notify,
    payload_names,
    put_initiates,
    put_responds,
    selected_of,
    transform,
    udp4,
    virtual_clock,
)
from suites.support.ipsec import EspOpener, describe, echo_key, echo_packet

if TYPE_CHECKING:
    from harness.lab import CaseContext

N = NotifyType

# --- addresses and scenarios ---------------------------------------------------------------------

TESTER_NET = "198.19.2.0/24"
"""The tester's side of the child cases' policy (the catalogue's 10.1.0.0/24; the harness's
traffic comes from it). The PUT's side stays its inner address (``put_net``): a reference
node restarts when its own networks change, so every suite keeps the same."""


def net_host(net: str, n: int) -> str:
    """Address number ``n`` of ``net``."""
    return str(ipaddress.ip_network(net, strict=False).network_address + n)


def ts(net: str, proto: int = 0, start: int = 0, end: int = 65535) -> TrafficSelector:
    return TrafficSelector.from_network(net, proto, start, end)


def ts_text(sel: Sequence[TrafficSelector]) -> str:
    return ", ".join(describe_ts(t) for t in sel) or "-"


def describe_ts(t: TrafficSelector) -> str:
    return f"{t.start_addr}-{t.end_addr} proto {t.ip_protocol} ports {t.start_port}-{t.end_port}"


def ts_within(t: TrafficSelector, outer: Sequence[TrafficSelector]) -> bool:
    """Whether ``t`` lies inside one of ``outer`` (addresses, protocol and port range)."""
    for o in outer:
        if t.start_addr.version != o.start_addr.version:
            continue
        if not (o.start_addr <= t.start_addr and t.end_addr <= o.end_addr):  # type: ignore[operator]
            continue
        if o.ip_protocol and t.ip_protocol != o.ip_protocol:
            continue
        if not (o.start_port <= t.start_port and t.end_port <= o.end_port):
            continue
        return True
    return False


def covers_address(sel: Sequence[TrafficSelector], addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return any(t.contains(a) for t in sel)


def put_net(ctx: CaseContext) -> str:
    """The PUT's side of the child cases' policy: its inner address."""
    return f"{put_inner(ctx)}/32"


def child_scenario(
    ctx: CaseContext,
    *,
    tester_nets: Sequence[str] = (TESTER_NET,),
    **kw: Any,
) -> Scenario:
    """A scenario whose Child SAs protect ``tester_nets`` <-> the PUT's inner address (tunnel
    mode; transport mode: the outer addresses)."""
    sc = ctx.scenario(**kw)
    if sc.mode == "transport":
        return sc
    eps = tuple(
        e if e.node == PUT else replace(e, subnets=tuple(tester_nets)) for e in sc.endpoints
    )
    return sc.with_(endpoints=eps)


def put_inner(ctx: CaseContext) -> str:
    return str(ctx.topology.node(PUT).addresses.inner_v4)


def tester_inner(ctx: CaseContext) -> str:
    return str(ctx.topology.node(TESTER).addresses.inner_v4)


# --- Child SAs ---------------------------------------------------------------------------------


@dataclass
class HarnessChild:
    """One Child SA as the harness holds it: both SPIs, the negotiated transforms, the keys
    the harness derived, who created it, its mode and selectors."""

    label: str
    protocol: int
    """3 ESP, 2 AH (RFC 7296 §3.3.1)."""
    sel: Selected
    spi_in: bytes
    """The harness's inbound SPI (the PUT sends on it)."""
    spi_out: bytes
    """The PUT's inbound SPI (the harness sends on it)."""
    keys: ChildKeys
    initiator: bool
    """The harness initiated the exchange that created it (its keys are then the "i" ones)."""
    mode: Mode
    tsi: list[TrafficSelector]
    tsr: list[TrafficSelector]
    encap: bool
    nonces: tuple[bytes, bytes] = (b"", b"")
    """Ni, Nr of the exchange that created it."""
    pfs_group: int = 0
    alive: bool = True

    @property
    def spi_in_int(self) -> int:
        return int.from_bytes(self.spi_in, "big")

    @property
    def spi_out_int(self) -> int:
        return int.from_bytes(self.spi_out, "big")

    @property
    def ipsec_protocol(self) -> IpsecProtocol:
        return IpsecProtocol.AH if self.protocol == 2 else IpsecProtocol.ESP

    def entry(self, *, outbound: bool, src: str, dst: str) -> IpsecSaEntry:
        """The key entry of one direction (``outbound``: harness -> PUT)."""
        mine = self.initiator == outbound
        ek = self.keys.encr_i if mine else self.keys.encr_r
        ik = self.keys.integ_i if mine else self.keys.integ_r
        s = self.sel
        return IpsecSaEntry(
            protocol=self.ipsec_protocol,
            spi=self.spi_out_int if outbound else self.spi_in_int,
            src=src,
            dst=dst,
            encr_id=s.encr_id if self.protocol == 3 else None,
            encr_key_bits=s.encr_bits,
            encr_key=ek,
            integ_id=s.integ_id or None,
            integ_key=ik,
            esn=s.esn,
            mode=self.mode,
            encap=self.encap,
            name=self.label,
            source="harness (derived)",
        )

    @property
    def ts_ours(self) -> list[TrafficSelector]:
        """The selectors of the harness's side (TSi when the harness created it)."""
        return self.tsi if self.initiator else self.tsr

    @property
    def ts_theirs(self) -> list[TrafficSelector]:
        return self.tsr if self.initiator else self.tsi

    def describe(self) -> str:
        return (
            f"{self.label}: {self.ipsec_protocol.name} {self.sel.name()} {self.mode.name.lower()}"
            f"{' in UDP' if self.encap else ''} in {self.spi_in.hex()} out {self.spi_out.hex()}"
            f" TSi {ts_text(self.tsi)} TSr {ts_text(self.tsr)}"
            f"{f' PFS group {self.pfs_group}' if self.pfs_group else ''}"
        )


def key_lengths(sel: Selected) -> tuple[int, int]:
    """(encryption key octets incl. salt, integrity key octets) of a Child SA's transforms."""
    e = encr(sel.encr_id, sel.encr_bits).key_len if sel.encr_id else 0
    i = integ(sel.integ_id).key_len if sel.integ_id else 0
    return e, i


def child_keys(
    sa: HarnessSa, sel: Selected, ni: bytes, nr: bytes, g_ir: bytes | None = None
) -> ChildKeys:
    """KEYMAT of a Child SA (RFC 7296 §2.17), from the IKE SA's SK_d and PRF."""
    assert sa.keys is not None and sa.prf is not None
    e, i = key_lengths(sel)
    return ikev2_child_keymat(sa.prf, sa.keys.sk_d, ni, nr, e, i, g_ir)


def derive_rekeyed(new: HarnessSa, old: HarnessSa, sel: Selected, g_ir: bytes) -> None:
    """Keys of an IKE SA made by rekeying ``old`` (RFC 7296 §2.18): SKEYSEED = prf(SK_d (old),
    g^ir (new) | Ni | Nr), then prf+ with the new SA's PRF, nonces and SPIs (§2.14)."""
    assert old.keys is not None and old.prf is not None
    p = prf(sel.prf_id)
    e = encr(sel.encr_id, sel.encr_bits)
    i = integ(sel.integ_id) if sel.integ_id else None
    seed = ikev2_rekey_skeyseed(old.prf, old.keys.sk_d, g_ir, new.nonce_i, new.nonce_r)
    new.keys = ikev2_ike_keys(
        p,
        seed,
        new.nonce_i,
        new.nonce_r,
        new.spi_i,
        new.spi_r,
        e.key_len,
        i.key_len if i else 0,
    )
    new.selected = sel
    new.prf = p
    new.protection = SkProtection(e, i, new.keys, new.initiator, os.urandom)
    new.next_mid = 0
    new.established = True


def esp_proposal(
    names: Sequence[str],
    spi: bytes,
    *,
    num: int = 1,
    protocol: int = 3,
    esn: bool | None = False,
    raw: Sequence[v2p.Transform] = (),
) -> v2p.Proposal:
    """An ESP (or AH, ``protocol`` 2) proposal of canonical transform names and/or ``raw``
    transforms, with an ESN transform (``None``: none at all)."""
    ts_ = [transform(n) for n in names] + list(raw)
    if esn is not None:
        ts_.append(v2p.Transform(5, int(esn)))
    return v2p.Proposal(num, protocol, spi, ts_)


def ike_proposal(names: Sequence[str], spi: bytes = b"", *, num: int = 1) -> v2p.Proposal:
    return v2p.Proposal(num, 1, spi, [transform(n) for n in names])


def strip_dh(p: v2p.Proposal) -> v2p.Proposal:
    return v2p.Proposal(p.num, p.protocol_id, p.spi, [t for t in p.transforms if t.type != 4])


def group_of(p: v2p.Proposal) -> int:
    return next((t.id for t in p.transforms if t.type == 4), 0)


# --- the session --------------------------------------------------------------------------------


@dataclass
class Incoming:
    """A request of the PUT, decrypted: the datagram, the IKE SA it came on, its payloads."""

    rx: Rx
    sa: HarnessSa
    message: Message
    payloads: list[v2p.Payload]

    @property
    def exchange(self) -> int:
        return self.rx.exchange

    @property
    def mid(self) -> int:
        return self.rx.message_id

    def notify(self, ntype: int) -> v2p.NotifyPayload | None:
        return notify(self.payloads, ntype)

    def get(self, cls: type[Any]) -> Any:
        return first(self.payloads, cls)

    def names(self) -> list[str]:
        return payload_names(self.payloads)

    def describe(self) -> str:
        return f"{_xname(self.exchange)} request {self.mid}: {' '.join(self.names()) or '(empty)'}"


def _xname(exchange: int) -> str:
    return {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}.get(
        exchange, str(exchange)
    )


class Session:
    """The harness's end of an established IKEv2 SA with the PUT (see the module docstring).

    ``sa`` is the current IKE SA; rekeying makes a new one (the old ones stay in ``old``
    until deleted). Every datagram from the PUT goes through :meth:`pump`: responses to our
    requests, the PUT's requests (kept in :attr:`inbox` until taken) and ESP in UDP (handed to
    the data plane)."""

    def __init__(
        self,
        ctx: CaseContext,
        scenario: Scenario,
        wire: Wire,
        sa: HarnessSa,
        *,
        natt: bool,
        owner: Initiator | Responder,
    ) -> None:
        self.ctx = ctx
        self.sc = scenario
        self.wire = wire
        self.sa = sa
        self.natt = natt
        self.owner = owner
        self.old: list[HarnessSa] = []
        self.children: list[HarnessChild] = []
        self.inbox: list[Rx] = []
        self.responses: list[Rx] = []
        self.esp_rx: list[Rx] = []
        self.cursor = len(wire.received)
        self.log: list[str] = []
        self.plane: DataPlane | None = None
        self._n = 0

    # -- wire ---------------------------------------------------------------------------------

    @property
    def put_initiated(self) -> bool:
        """The PUT is the original initiator of the first IKE SA."""
        return isinstance(self.owner, Responder)

    def known_sas(self) -> list[HarnessSa]:
        return [self.sa, *self.old]

    def _sa_for(self, data: bytes) -> HarnessSa | None:
        for s in self.known_sas():
            if data[:8] == s.spi_i and data[8:16] == s.spi_r:
                return s
        return None

    def pump(self, timeout: float = 0.0) -> None:
        """Take what arrived (waiting up to ``timeout``) and sort it."""
        self.wire.recv(lambda _rx: False, timeout)
        new = self.wire.received[self.cursor :]
        self.cursor = len(self.wire.received)
        for rx in new:
            d = rx.data
            ike = (
                len(d) >= HEADER_LEN
                and d[17] == 0x20
                and any(d[:8] == s.spi_i for s in self.known_sas())
            )
            if not ike:
                if len(d) >= 8 and d[:4] != b"\0\0\0\0":
                    self.esp_rx.append(rx)
                continue
            if rx.response:
                self.responses.append(rx)
            else:
                self.inbox.append(rx)

    def send(self, sa: HarnessSa, data: bytes) -> None:
        self.wire.send(data, port=NATT_PORT if self.natt else IKE_PORT, marker=self.natt)

    def request(
        self,
        exchange: int,
        payloads: Sequence[v2p.Payload],
        *,
        sa: HarnessSa | None = None,
        timeout: float = 3.0,
        mid: int | None = None,
    ) -> Reply:
        """A protected request on ``sa`` (default: the current IKE SA) and the PUT's answer,
        decrypted (``Reply.answered`` False when none came)."""
        sa, mid, data = self.send_request(exchange, payloads, sa=sa, mid=mid)
        return self.await_response(sa, exchange, mid, timeout, request=data)

    def send_request(
        self,
        exchange: int,
        payloads: Sequence[v2p.Payload],
        *,
        sa: HarnessSa | None = None,
        mid: int | None = None,
    ) -> tuple[HarnessSa, int, bytes]:
        """Send a protected request without waiting: (the SA, its Message ID, the octets);
        :meth:`await_response` takes the answer."""
        sa = sa or self.sa
        if mid is None:
            mid = sa.next_mid
            sa.next_mid += 1
        data = sa.seal(exchange, mid, payloads, response=False)
        self.wire.log(
            f"   ({_xname(exchange)} request {mid} on {sa.spi_i.hex()[:8]} inside SK: "
            f"{' '.join(payload_names(payloads)) or '(empty)'})"
        )
        self.send(sa, data)
        return sa, mid, data

    def await_response(
        self, sa: HarnessSa, exchange: int, mid: int, timeout: float, *, request: bytes = b""
    ) -> Reply:
        deadline = time.monotonic() + timeout
        while True:
            for rx in self.responses:
                if (
                    rx.spi_i == sa.spi_i
                    and rx.exchange == exchange
                    and rx.message_id == mid
                    and rx.data[8:16] == sa.spi_r
                ):
                    self.responses.remove(rx)
                    m, payloads = sa.open(rx.data)
                    reply = Reply(rx, m, payloads, request)
                    self.wire.log(f"   ({_xname(exchange)} response {mid}: {reply.describe()})")
                    return reply
            left = deadline - time.monotonic()
            if left <= 0:
                return Reply(None, request=request)
            self.pump(min(left, 0.05))

    def next_request(
        self,
        pred: Callable[[Incoming], bool] | None = None,
        *,
        exchange: int | None = None,
        timeout: float = 4.0,
    ) -> Incoming | None:
        """The PUT's next request (of ``exchange``, accepted by ``pred``), decrypted; others
        stay in the inbox. Retransmissions of a request already taken are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            for rx in list(self.inbox):
                sa = self._sa_for(rx.data)
                if sa is None:
                    continue
                if exchange is not None and rx.exchange != exchange:
                    continue
                try:
                    m, payloads = sa.open(rx.data)
                except Exception as exc:  # an undecryptable request is evidence, kept
                    self.wire.log(f"   (request {rx.message_id} does not open: {exc})")
                    self.inbox.remove(rx)
                    continue
                inc = Incoming(rx, sa, m, payloads)
                if pred is not None and not pred(inc):
                    continue
                self.inbox.remove(rx)
                # drop retransmissions of the same request
                self.inbox = [
                    r for r in self.inbox if not (r.data[:16] == rx.data[:16] and r.data == rx.data)
                ]
                self.wire.log(f"   (PUT's {inc.describe()})")
                return inc
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.pump(min(left, 0.05))

    def respond(self, inc: Incoming, payloads: Sequence[v2p.Payload]) -> None:
        data = inc.sa.seal(inc.exchange, inc.mid, payloads, response=True)
        self.wire.log(
            f"   (our {_xname(inc.exchange)} response {inc.mid}: "
            f"{' '.join(payload_names(payloads)) or '(empty)'})"
        )
        self.send(inc.sa, data)

    def requests_seen(
        self, exchange: int | None = None, since: float = 0.0
    ) -> list[tuple[Rx, HarnessSa]]:
        """Every request the PUT sent (taken or not) after ``since`` (monotonic time)."""
        self.pump()
        out = []
        for rx in self.wire.received:
            d = rx.data
            if rx.time < since or len(d) < HEADER_LEN or rx.response or d[17] != 0x20:
                continue
            if exchange is not None and rx.exchange != exchange:
                continue
            sa = self._sa_for(d)
            if sa is not None:
                out.append((rx, sa))
        return out

    # -- liveness -----------------------------------------------------------------------------

    def alive(self, sa: HarnessSa | None = None, timeout: float = 3.0) -> Reply:
        """An empty INFORMATIONAL request (a liveness check, RFC 7296 §2.4) and its answer."""
        return self.request(INFORMATIONAL, [], sa=sa, timeout=timeout)

    # -- Child SAs -----------------------------------------------------------------------------

    def new_label(self, what: str = "child") -> str:
        self._n += 1
        return f"{what}{self._n}"

    def create_child(
        self,
        proposals: Sequence[v2p.Proposal],
        tsi: Sequence[TrafficSelector],
        tsr: Sequence[TrafficSelector],
        *,
        ke_group: int | None = None,
        rekey: HarnessChild | None = None,
        rekey_spi: bytes | None = None,
        transport: bool = False,
        nonce: bytes | None = None,
        extra: Sequence[v2p.Payload] = (),
        label: str | None = None,
        timeout: float = 3.0,
    ) -> tuple[Reply, HarnessChild | None]:
        """CREATE_CHILD_SA for a Child SA (RFC 7296 §1.3.1) or a Child SA rekey (§1.3.3,
        ``rekey``/``rekey_spi``): [N(REKEY_SA)] [N(USE_TRANSPORT_MODE)] SA Ni [KEi] TSi TSr.
        Our inbound SPI goes into every proposal. Returns the answer and the Child SA it made
        (``None`` when refused)."""
        spi = os.urandom(4)
        props = [v2p.Proposal(p.num, p.protocol_id, spi, p.transforms) for p in proposals]
        ni = nonce or os.urandom(32)
        kex = dh(ke_group).generate() if ke_group else None
        payloads: list[v2p.Payload] = []
        old_spi = rekey.spi_in if rekey is not None else rekey_spi
        if old_spi is not None:
            proto = rekey.protocol if rekey is not None else props[0].protocol_id
            payloads.append(v2p.NotifyPayload(N.REKEY_SA, b"", proto, old_spi))
        if transport:
            payloads.append(v2p.NotifyPayload(N.USE_TRANSPORT_MODE))
        payloads += [v2p.SaPayload(props), v2p.NoncePayload(ni)]
        if kex is not None:
            assert ke_group is not None
            payloads.append(v2p.KePayload(ke_group, kex.public_value))
        payloads += [v2p.TsI(list(tsi)), v2p.TsR(list(tsr)), *extra]
        reply = self.request(CREATE_CHILD_SA, payloads, timeout=timeout)
        sa_p = reply.get(v2p.SaPayload)
        if not reply.answered or sa_p is None or not sa_p.proposals:
            return reply, None
        chosen = sa_p.proposals[0]
        sel = selected_of(chosen)
        nr_p = reply.get(v2p.NoncePayload)
        ke = reply.get(v2p.KePayload)
        g_ir = None
        if kex is not None and ke is not None:
            try:
                g_ir = kex.shared_secret(ke.data)
            except Exception as exc:
                raise AssertionError(f"cannot use the PUT's KEr: {exc}") from None
        tsi_r, tsr_r = reply.get(v2p.TsI), reply.get(v2p.TsR)
        mode = Mode.TRANSPORT if reply.notify(N.USE_TRANSPORT_MODE) is not None else Mode.TUNNEL
        child = HarnessChild(
            label=label or self.new_label("rekeyed" if rekey is not None else "child"),
            protocol=chosen.protocol_id,
            sel=sel,
            spi_in=spi,
            spi_out=chosen.spi,
            keys=child_keys(self.sa, sel, ni, nr_p.data if nr_p else b"", g_ir),
            initiator=True,
            mode=mode,
            tsi=list(tsi_r.selectors) if tsi_r else [],
            tsr=list(tsr_r.selectors) if tsr_r else [],
            encap=self.natt,
            nonces=(ni, nr_p.data if nr_p else b""),
            pfs_group=ke.dh_group if ke is not None and kex is not None else 0,
        )
        self.add_child(child)
        return reply, child

    def add_child(self, child: HarnessChild) -> None:
        self.children.append(child)
        self.log.append(child.describe())
        if self.plane is not None:
            self.plane.register(child)

    def answer_create_child(
        self,
        inc: Incoming,
        *,
        proposal: v2p.Proposal | None = None,
        nonce: bytes | None = None,
        refuse: v2p.NotifyPayload | None = None,
        label: str | None = None,
    ) -> HarnessChild | None:
        """Answer the PUT's CREATE_CHILD_SA for a Child SA (or a rekey of one): the first
        transform of each type of its first proposal (or ``proposal``), our SPI, Nr, KEr when
        it sent KEi, its selectors; or ``refuse`` (an error notify)."""
        if refuse is not None:
            self.respond(inc, [refuse])
            return None
        sa_p = inc.get(v2p.SaPayload)
        ni = inc.get(v2p.NoncePayload)
        ke = inc.get(v2p.KePayload)
        tsi, tsr = inc.get(v2p.TsI), inc.get(v2p.TsR)
        if sa_p is None or ni is None or tsi is None or tsr is None:
            raise AssertionError(f"the PUT's CREATE_CHILD_SA lacks SA/Ni/TS: {inc.describe()}")
        theirs = proposal or _choose(sa_p.proposals[0], ke.dh_group if ke is not None else None)
        sel = selected_of(theirs)
        spi = os.urandom(4)
        nr = nonce or os.urandom(32)
        payloads: list[v2p.Payload] = []
        transport = inc.notify(N.USE_TRANSPORT_MODE) is not None
        if transport:
            payloads.append(v2p.NotifyPayload(N.USE_TRANSPORT_MODE))
        payloads += [
            v2p.SaPayload([v2p.Proposal(theirs.num, theirs.protocol_id, spi, theirs.transforms)]),
            v2p.NoncePayload(nr),
        ]
        g_ir = None
        if ke is not None and sel.dh_id:
            kex = dh(ke.dh_group).generate()
            g_ir = kex.shared_secret(ke.data)
            payloads.append(v2p.KePayload(ke.dh_group, kex.public_value))
        payloads += [tsi, tsr]
        self.respond(inc, payloads)
        rekeyed = inc.notify(N.REKEY_SA)
        child = HarnessChild(
            label=label or self.new_label("put-rekeyed" if rekeyed is not None else "put-child"),
            protocol=theirs.protocol_id,
            sel=sel,
            spi_in=spi,
            spi_out=theirs.spi,
            keys=child_keys(inc.sa, sel, ni.data, nr, g_ir),
            initiator=False,
            mode=Mode.TRANSPORT if transport else Mode.TUNNEL,
            tsi=list(tsi.selectors),
            tsr=list(tsr.selectors),
            encap=self.natt,
            nonces=(ni.data, nr),
            pfs_group=ke.dh_group if g_ir is not None and ke is not None else 0,
        )
        self.add_child(child)
        return child

    def child_by_put_spi(self, spi: bytes) -> HarnessChild | None:
        """The Child SA whose PUT-inbound SPI is ``spi``."""
        return next((c for c in self.children if c.spi_out == spi), None)

    def child_by_our_spi(self, spi: bytes) -> HarnessChild | None:
        return next((c for c in self.children if c.spi_in == spi), None)

    def delete_child(self, child: HarnessChild, *, timeout: float = 3.0) -> Reply:
        """INFORMATIONAL Delete of a Child SA (our inbound SPI, RFC 7296 §1.4.1)."""
        reply = self.request(
            INFORMATIONAL, [v2p.DeletePayload(child.protocol, [child.spi_in])], timeout=timeout
        )
        child.alive = False
        return reply

    def answer_delete(self, inc: Incoming) -> list[HarnessChild]:
        """Answer the PUT's Delete of Child SAs with the paired SPIs (RFC 7296 §1.4.1); an
        IKE SA Delete is answered empty. Returns the Child SAs deleted."""
        gone: list[HarnessChild] = []
        out: list[v2p.Payload] = []
        for d in inc.payloads:
            if type(d) is not v2p.DeletePayload or d.protocol_id == 1:
                continue
            mine = []
            for spi in d.spis:
                c = self.child_by_put_spi(spi)
                if c is not None:
                    c.alive = False
                    gone.append(c)
                    mine.append(c.spi_in)
            if mine:
                out.append(v2p.DeletePayload(d.protocol_id, mine))
        self.respond(inc, out)
        return gone

    # -- IKE SA rekey ----------------------------------------------------------------------------

    def rekey_ike(
        self,
        transforms: Sequence[v2p.Transform] | None = None,
        *,
        ke_group: int | None = None,
        nonce: bytes | None = None,
        timeout: float = 3.0,
    ) -> tuple[Reply, HarnessSa | None]:
        """CREATE_CHILD_SA rekeying the current IKE SA (RFC 7296 §1.3.2): SA (our new SPI),
        Ni, KEi (``ke_group``: default the proposal's group; 0: no KE payload). On success the
        new SA becomes current (the old one is kept in :attr:`old` until deleted)."""
        old = self.sa
        assert old.selected is not None
        if transforms is None:
            transforms = _sel_transforms(old.selected)
        spi = os.urandom(8)
        ni = nonce or os.urandom(32)
        prop = v2p.Proposal(1, 1, spi, list(transforms))
        group = ke_group if ke_group is not None else group_of(prop)
        kex = dh(group).generate() if group else None
        payloads: list[v2p.Payload] = [v2p.SaPayload([prop]), v2p.NoncePayload(ni)]
        if kex is not None:
            payloads.append(v2p.KePayload(group, kex.public_value))
        reply = self.request(CREATE_CHILD_SA, payloads, timeout=timeout)
        sa_p, nr, ke = (
            reply.get(v2p.SaPayload),
            reply.get(v2p.NoncePayload),
            reply.get(v2p.KePayload),
        )
        if sa_p is None or nr is None or ke is None or kex is None or not sa_p.proposals:
            return reply, None
        chosen = sa_p.proposals[0]
        new = HarnessSa(initiator=True, spi_i=spi, spi_r=chosen.spi)
        new.nonce_i, new.nonce_r = ni, nr.data
        try:
            derive_rekeyed(new, old, selected_of(chosen), kex.shared_secret(ke.data))
        except Exception as exc:
            raise AssertionError(f"cannot derive the rekeyed IKE SA's keys: {exc}") from None
        self.old.append(old)
        self.sa = new
        self.log.append(f"IKE SA rekeyed by the harness: {spi.hex()}/{chosen.spi.hex()}")
        return reply, new

    def answer_rekey_ike(
        self, inc: Incoming, *, nonce: bytes | None = None, make_current: bool = True
    ) -> HarnessSa:
        """Answer the PUT's IKE SA rekey (its SA with its new SPI, Ni, KEi) and derive the new
        IKE SA (the PUT is its initiator, RFC 7296 §2.18)."""
        sa_p, ni, ke = inc.get(v2p.SaPayload), inc.get(v2p.NoncePayload), inc.get(v2p.KePayload)
        if sa_p is None or ni is None or ke is None:
            raise AssertionError(f"the PUT's IKE SA rekey lacks SA/Ni/KE: {inc.describe()}")
        theirs = _choose(sa_p.proposals[0], ke.dh_group)
        spi = os.urandom(8)
        nr = nonce or os.urandom(32)
        kex = dh(ke.dh_group).generate()
        self.respond(
            inc,
            [
                v2p.SaPayload([v2p.Proposal(theirs.num, 1, spi, theirs.transforms)]),
                v2p.NoncePayload(nr),
                v2p.KePayload(ke.dh_group, kex.public_value),
            ],
        )
        new = HarnessSa(initiator=False, spi_i=theirs.spi, spi_r=spi)
        new.nonce_i, new.nonce_r = ni.data, nr
        derive_rekeyed(new, inc.sa, selected_of(theirs), kex.shared_secret(ke.data))
        if make_current:
            self.old.append(self.sa)
            self.sa = new
        else:
            self.old.append(new)
        self.log.append(f"IKE SA rekeyed by the PUT: {new.spi_i.hex()}/{spi.hex()}")
        return new

    def delete_ike(self, sa: HarnessSa, *, timeout: float = 3.0) -> Reply:
        reply = self.request(INFORMATIONAL, [v2p.DeletePayload(1)], sa=sa, timeout=timeout)
        sa.established = False
        return reply

    def forget(self, sa: HarnessSa) -> None:
        sa.established = False
        if sa in self.old:
            self.old.remove(sa)

    # -- evidence ----------------------------------------------------------------------------

    def evidence(self) -> str:
        return "\n".join(self.log)

    def close(self) -> None:
        """The end of a :func:`responding` or :func:`initiating` block: the owner's current
        IKE SA is the session's (put_responds/put_initiates delete it), older IKE SAs still
        established are deleted, the data plane is closed and the exchanges are attached."""
        self.owner.sa = self.sa
        for old in self.old:
            if old.established:
                with contextlib.suppress(Exception):
                    self.delete_ike(old, timeout=0.5)
        if self.plane is not None:
            self.plane.close()
        if self.log:
            note(self.ctx, "session", self.evidence())


def _sel_transforms(sel: Selected) -> list[v2p.Transform]:
    out = [v2p.Transform(1, sel.encr_id, sel.encr_bits)]
    if sel.prf_id:
        out.append(v2p.Transform(2, sel.prf_id))
    if sel.integ_id:
        out.append(v2p.Transform(3, sel.integ_id))
    if sel.dh_id:
        out.append(v2p.Transform(4, sel.dh_id))
    return out


def _choose(p: v2p.Proposal, group: int | None) -> v2p.Proposal:
    """A responder's answer to ``p``: the first transform of each type (the KE's group for
    type 4 when offered)."""
    seen: dict[int, v2p.Transform] = {}
    for t in p.transforms:
        if t.type == 4 and group is not None and t.id == group:
            seen[4] = v2p.Transform(4, t.id)
        seen.setdefault(t.type, v2p.Transform(t.type, t.id, t.key_length))
    order = [seen[k] for k in sorted(seen)]
    return v2p.Proposal(p.num, p.protocol_id, p.spi, order)


# --- opening a session ----------------------------------------------------------------------------


def detect_put_nat(reply: Reply, sa: HarnessSa, put_addr: str) -> bool:
    """Whether the PUT's NAT_DETECTION_SOURCE_IP does not match its own address and logical
    IKE port (RFC 7296 §2.23): it is behind a NAT, or fakes one (strongSwan's libipsec)."""
    n = reply.notify(N.NAT_DETECTION_SOURCE_IP)
    if n is None:
        return False
    return bool(n.data != natd_hash(sa.spi_i, sa.spi_r, (put_addr, IKE_PORT)))


def auth_request(
    ini: Initiator,
    *,
    child: Sequence[v2p.Payload] | None,
    natt: bool,
    notifies: Sequence[v2p.Payload] = (),
    auth: Auth | None = None,
    timeout: float = 3.0,
) -> Reply:
    """IKE_AUTH with the scenario's PSK (or ``auth``) and the given child payloads (SA, TSi,
    TSr; ``None``: childless) in RFC 7296 §1.2 order: IDi AUTH [N...] SA TSi TSr."""
    sa = ini.sa
    assert sa is not None
    idi = id_payload(ini.me.identity, v2p.IdI)
    auth = auth or Auth(psk=ini.sc.psk.encode())
    octets = sa.octets(initiator_signs=True, id_payload=idi)
    ap = auth.payloads(octets, sa.prf, ini.peer_hashes)
    payloads: list[v2p.Payload] = [idi, *ap, *notifies, *(child or ())]
    return ini.send_auth(payloads, natt=natt, timeout=timeout)


@dataclass
class Opened:
    """What :func:`responding` established: the session, the IKE_SA_INIT and IKE_AUTH
    answers, and the first Child SA (if the PUT accepted one)."""

    session: Session
    init: Reply
    auth: Reply
    child: HarnessChild | None


class SetupFailed(AssertionError):
    """The IKE SA the case needs could not be set up (the PUT refused a standard exchange)."""


@contextlib.contextmanager
def responding(
    ctx: CaseContext,
    scenario: Scenario,
    *,
    esp: Sequence[v2p.Proposal] | None = None,
    tsi: Sequence[TrafficSelector] | None = None,
    tsr: Sequence[TrafficSelector] | None = None,
    child: bool = True,
    transport: bool = False,
    notifies: Sequence[v2p.Payload] = (),
    ike: Sequence[v2p.Proposal] | None = None,
    extra: Callable[[Peer], None] | None = None,
    require_child: bool = True,
    plane: bool = True,
    auth: Auth | None = None,
) -> Iterator[Opened]:
    """The PUT configured with ``scenario`` responds to the harness's IKE_SA_INIT and IKE_AUTH
    (with a Child SA for ``tsi``/``tsr``, default the scenario's networks, and ``esp``
    proposals, default the scenario's without PFS groups); yields the :class:`Opened`
    session. A PUT that fakes a NAT gets IKE_AUTH on its NAT-T port (RFC 7296 §2.23)."""
    with put_responds(ctx, scenario, extra=extra) as ini:
        with ctx.step("IKE_SA_INIT"):
            init = ini.init(offer=list(ike) if ike is not None else None)
        if ini.sa is None:
            raise SetupFailed(f"the PUT refused IKE_SA_INIT: {init.describe()}")
        put_addr = scenario.remote(TESTER).address
        natt = detect_put_nat(init, ini.sa, put_addr)
        payloads: list[v2p.Payload] | None = None
        if child:
            me, them = scenario.local(TESTER), scenario.remote(TESTER)
            if esp is None:
                from suites.support.ike import esp_offer

                esp = [strip_dh(p) for p in esp_offer(scenario.esp_proposals, b"")]
            spi = os.urandom(4)
            props = [v2p.Proposal(p.num, p.protocol_id, spi, p.transforms) for p in esp]
            if tsi is None:
                tsi = [ts(n) for n in (me.subnets if scenario.mode == "tunnel" else [me.address])]
            if tsr is None:
                tsr = [
                    ts(n) for n in (them.subnets if scenario.mode == "tunnel" else [them.address])
                ]
            payloads = [v2p.SaPayload(props), v2p.TsI(list(tsi)), v2p.TsR(list(tsr))]
        ns = list(notifies)
        if transport:
            ns.append(v2p.NotifyPayload(N.USE_TRANSPORT_MODE))
        with ctx.step("IKE_AUTH"):
            answer = auth_request(ini, child=payloads, natt=natt, notifies=ns, auth=auth)
        sa = ini.sa
        if not answer.answered or answer.get(v2p.AuthPayload) is None:
            raise SetupFailed(f"IKE_AUTH failed: {answer.describe()}")
        session = Session(ctx, scenario, ini.wire, sa, natt=natt, owner=ini)
        first_child: HarnessChild | None = None
        sa_p = answer.get(v2p.SaPayload)
        if payloads is not None and sa_p is not None and sa_p.proposals:
            chosen = sa_p.proposals[0]
            sel = selected_of(chosen)
            tsi_r, tsr_r = answer.get(v2p.TsI), answer.get(v2p.TsR)
            first_child = HarnessChild(
                label="child1",
                protocol=chosen.protocol_id,
                sel=sel,
                spi_in=props[0].spi,
                spi_out=chosen.spi,
                keys=child_keys(sa, sel, sa.nonce_i, sa.nonce_r),
                initiator=True,
                mode=Mode.TRANSPORT
                if answer.notify(N.USE_TRANSPORT_MODE) is not None
                else Mode.TUNNEL,
                tsi=list(tsi_r.selectors) if tsi_r else [],
                tsr=list(tsr_r.selectors) if tsr_r else [],
                encap=natt,
                nonces=(sa.nonce_i, sa.nonce_r),
            )
            session._n = 1
        elif payloads is not None and require_child:
            raise SetupFailed(f"the PUT made no Child SA in IKE_AUTH: {answer.describe()}")
        if plane:
            DataPlane(session)  # the session's plane: closed by session.close()
        if first_child is not None:
            session.add_child(first_child)
        try:
            yield Opened(session, init, answer, first_child)
        finally:
            session.close()


@dataclass
class Accepted:
    """What :func:`initiating` established: the session, the PUT's IKE_AUTH request and the
    Child SA (if any) the harness accepted."""

    session: Session
    auth_request: list[v2p.Payload]
    child: HarnessChild | None


@contextlib.contextmanager
def initiating(
    ctx: CaseContext,
    scenario: Scenario,
    *,
    child_answer: Callable[[list[v2p.Payload]], list[v2p.Payload] | None] | None = None,
    extra: Callable[[Peer], None] | None = None,
    plane: bool = True,
    before: Callable[[], None] | None = None,
) -> Iterator[Accepted]:
    """The PUT configured with ``scenario`` initiates towards the harness (the tester node
    silenced): the harness accepts IKE_SA_INIT and answers IKE_AUTH with AUTH and, by default,
    the PUT's first ESP/AH proposal and selectors. ``child_answer`` (the PUT's request
    payloads -> our child payloads, or ``None`` for the default) replaces that answer."""
    with put_initiates(ctx, scenario, extra=extra) as (resp, _initiation):
        if before is not None:
            before()
        with ctx.step("IKE_SA_INIT (the PUT's)"):
            rx = resp.request(timeout=8.0)
            if rx is None:
                raise SetupFailed("the PUT sent no IKE_SA_INIT")
            sa = resp.accept(rx)
        with ctx.step("IKE_AUTH (the PUT's)"):
            got = resp.auth_request(timeout=6.0)
            if got is None:
                raise SetupFailed("the PUT sent no IKE_AUTH request")
            arx, request = got
        natt = resp.natt
        idr = id_payload(resp.me.identity, v2p.IdR)
        octets = sa.octets(initiator_signs=False, id_payload=idr)
        auth = Auth(psk=scenario.psk.encode())
        payloads: list[v2p.Payload] = [idr, *auth.payloads(octets, sa.prf, resp.peer_hashes)]
        custom = child_answer(request) if child_answer is not None else None
        first_child: HarnessChild | None = None
        sa_p = first(request, v2p.SaPayload)
        tsi, tsr = first(request, v2p.TsI), first(request, v2p.TsR)
        if custom is not None:
            payloads += custom
        elif sa_p is not None and tsi is not None and tsr is not None:
            theirs = strip_dh(_choose(sa_p.proposals[0], None))
            spi = os.urandom(4)
            transport = notify(request, N.USE_TRANSPORT_MODE) is not None
            if transport:
                payloads.append(v2p.NotifyPayload(N.USE_TRANSPORT_MODE))
            payloads += [
                v2p.SaPayload(
                    [v2p.Proposal(theirs.num, theirs.protocol_id, spi, theirs.transforms)]
                ),
                tsi,
                tsr,
            ]
            sel = selected_of(theirs)
            first_child = HarnessChild(
                label="child1",
                protocol=theirs.protocol_id,
                sel=sel,
                spi_in=spi,
                spi_out=theirs.spi,
                keys=child_keys(sa, sel, sa.nonce_i, sa.nonce_r),
                initiator=False,
                mode=Mode.TRANSPORT if transport else Mode.TUNNEL,
                tsi=list(tsi.selectors),
                tsr=list(tsr.selectors),
                encap=natt,
                nonces=(sa.nonce_i, sa.nonce_r),
            )
        data = sa.seal(IKE_AUTH, arx.message_id, payloads, response=True)
        resp.wire.log(f"   (IKE_AUTH response inside SK: {' '.join(payload_names(payloads))})")
        resp.wire.send(data, port=NATT_PORT if natt else IKE_PORT, marker=natt)
        sa.established = True
        session = Session(ctx, scenario, resp.wire, sa, natt=natt, owner=resp)
        if plane:
            DataPlane(session)  # the session's plane: closed by session.close()
        if first_child is not None:
            session._n = 1
            session.add_child(first_child)
        try:
            yield Accepted(session, request, first_child)
        finally:
            session.close()


# --- the data plane -------------------------------------------------------------------------------


@dataclass
class Frame:
    """One ESP/AH datagram the PUT sent on a harness Child SA, opened with the harness's keys."""

    time: float
    child: str
    spi: int
    verdict: DriverVerdict
    inner: bytes
    udp: bool
    next_header: int | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is DriverVerdict.DELIVERED

    def line(self) -> str:
        nh = f" nh {self.next_header}" if self.next_header is not None else ""
        return (
            f"{self.time:10.3f} {self.child:<14} spi {self.spi:08x} {self.verdict.name.lower()}"
            f"{' udp' if self.udp else ''}{nh} {describe(self.inner) if self.inner else ''}"
        )


@dataclass
class Ping:
    """The outcome of :meth:`DataPlane.ping`."""

    child: str
    sent: int
    delivered: int
    """Echo requests the PUT accepted (its delivery queue, or an echo reply back)."""
    replies: list[Frame]
    """What the PUT sent back on our Child SAs carrying our echo traffic."""
    how: str

    @property
    def ok(self) -> bool:
        return self.delivered == self.sent and any(f.ok for f in self.replies)

    def text(self) -> str:
        return (
            f"{self.child}: {self.sent} sent, {self.delivered} accepted by the PUT ({self.how}); "
            f"{sum(f.ok for f in self.replies)} verified packets back"
            + (f" on {sorted({f.child for f in self.replies})}" if self.replies else "")
        )


RESEND_AFTER = 0.5
"""Seconds after which :meth:`DataPlane.ping` sends unanswered echo requests once more."""


class DataPlane:
    """ESP/AH between the harness and the PUT on the session's Child SAs (module docstring).
    ``session`` is an IKEv2 :class:`Session` or an IKEv1 :class:`V1Session` (both carry
    ``ctx``, ``sc``, ``wire``, ``children``, ``esp_rx`` and ``pump``)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        session.plane = self
        ctx = session.ctx
        self.ctx = ctx
        self.put = ctx.put
        self.backend = ctx.topology.backend
        self.tester_node = ctx.topology.node(TESTER)
        self.put_node = ctx.topology.node(PUT)
        self.tester_addr = session.sc.local(TESTER).address
        self.put_addr = session.sc.remote(TESTER).address
        client: Any = getattr(ctx.tester, "client", None)
        if client is None:
            raise NotApplicable(["the tester must be the reference node"])
        self.client: Any = client
        self.client.record_received(False)
        self.client.record_received(True)
        self.stack = self.put.kind == "reference" and getattr(self.put, "dataplane", "") == "api"
        if self.stack:
            self.put.client.delivered()
        self.ident = int.from_bytes(os.urandom(2), "big") | 0x100
        self.seq_icmp = 0
        self.frames: list[Frame] = []
        self.unknown: list[str] = []
        self.delivered: list[tuple[int | None, bytes]] = []
        self.openers: dict[int, tuple[HarnessChild, Any]] = {}
        self.crafters: dict[bytes, tuple[Any, int]] = {}
        self._raw: socket.socket | None = None
        self._udp: socket.socket | None = None
        self.sent: list[str] = []
        for c in session.children:
            self.register(c)

    # -- keys --------------------------------------------------------------------------------

    def register(self, child: HarnessChild) -> None:
        entry = child.entry(outbound=False, src=self.put_addr, dst=self.tester_addr)
        params = replace(entry.to_params(replay_window=0), ts_src=(), ts_dst=(), encap=None)
        opener: Any
        if child.protocol == 3:
            opener = EspOpener(params, 0.0, DriverContext(0), SaOptions(check_padding=False))
        else:
            opener = AhInbound(params, 0.0, DriverContext(0), SaOptions(check_padding=False))
        self.openers[child.spi_in_int] = (child, opener)

    def _crafter(self, child: HarnessChild) -> tuple[Any, int]:
        hit = self.crafters.get(child.spi_out)
        if hit is None:
            entry = child.entry(outbound=True, src=self.tester_addr, dst=self.put_addr)
            c: Any
            if child.protocol == 3:
                c = EspCrafter(entry)
            else:
                c = AhCrafter(entry)
            hit = (c, 1)
        return hit

    # -- sending ------------------------------------------------------------------------------

    def echo(self, src: str, dst: str, data: bytes = b"") -> tuple[bytes, tuple[int, int]]:
        self.seq_icmp = (self.seq_icmp + 1) & 0xFFFF
        key = (self.ident, self.seq_icmp)
        return echo4(src, dst, key, data or b"child-probe-%d" % self.seq_icmp), key

    def send(self, child: HarnessChild, inner: bytes, *, seq: int | None = None) -> int:
        """Protect ``inner`` on ``child`` (next sequence number) and send it to the PUT."""
        crafter, nxt = self._crafter(child)
        s = nxt if seq is None else seq
        self.crafters[child.spi_out] = (crafter, max(nxt, s + 1))
        d = crafter.packet(inner, s)
        if isinstance(crafter, AhCrafter) and d[0] >> 4 == 4 and d[4:6] == b"\0\0":
            # a raw socket gives an IPv4 Identification of 0 one of its own, and AH covers it
            d = crafter.resign(mutate_ipv4(d, ident=0x4A48))
        if child.encap:
            off = (d[0] & 0x0F) * 4
            self.session.wire.send(d[off:], port=NATT_PORT, marker=False)
        elif self.backend == "local":
            port = getattr(self.put, "clear_port", 0)
            if not port:
                raise NotApplicable(
                    [f"{self.put.kind}: raw ESP/AH on the local topology reaches reference nodes "
                     "only (their clear links)"]
                )  # fmt: skip
            if self._udp is None:
                self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._udp.bind((self.tester_addr, 0))
            self._udp.sendto(d, (self.put_addr, port))
        else:
            if self._raw is None:
                mark = int(((self.client.status().get("dataplane") or {}).get("mark")) or 0)
                netns = getattr(self.tester_node, "netns", None)

                def make() -> socket.socket:
                    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                    if mark:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                    return s

                self._raw = in_netns(netns, make)
            self._raw.sendto(d, (self.put_addr, 0))
        self.sent.append(f"{child.label} seq {s} {describe(inner)}")
        return s

    def inject_from_put(self, packets: Sequence[bytes]) -> None:
        """Hand packets to a reference PUT's local stack (api data plane)."""
        self.put.client.inject(list(packets), direction="out")

    # -- receiving ----------------------------------------------------------------------------

    def collect(self) -> None:
        """Take what the PUT sent (tester recordings, ESP in UDP on our IKE socket) and, on the
        api plane, what it delivered."""
        s = self.session
        s.pump()
        for rx in s.esp_rx:
            frame = udp4(rx.src[0], rx.src[1], self.tester_addr, 4500, rx.data)
            self._open(rx.time, frame, True)
        s.esp_rx.clear()
        for r in self.client.received():
            if r.udp is not None:
                frame = udp4(r.udp[0], r.udp[1], r.udp[2], r.udp[3], r.data)
                self._open(r.time, frame, True)
            else:
                self._open(r.time, r.data, False)
        if self.stack:
            for d in self.put.client.delivered():
                if d.protected:
                    self.delivered.append((d.spi, d.packet))

    def _open(self, t: float, frame: bytes, udp: bool) -> None:
        try:
            info = parse_ip(frame, frozenset({IPPROTO_ESP, IPPROTO_AH}))
        except Exception:
            return
        off = info.payload_offset + (8 if udp else 0)
        proto = frame[9] if frame[0] >> 4 == 4 else frame[6]
        if udp:
            proto = IPPROTO_ESP
        if proto == IPPROTO_ESP:
            if len(frame) < off + 8:
                return
            spi = int.from_bytes(frame[off : off + 4], "big")
        elif proto == IPPROTO_AH:
            if len(frame) < off + 12:
                return
            spi = int.from_bytes(frame[off + 4 : off + 8], "big")
        else:
            return
        hit = self.openers.get(spi)
        if hit is None:
            self.unknown.append(f"{t:.3f} spi {spi:08x} {len(frame)} octets")
            return
        child, opener = hit
        nh: int | None = None
        try:
            if isinstance(opener, EspOpener):
                opener.last_pt = None
                verdict, inner = opener.unprotect_at(frame, info, off, udp, t)
                if opener.last_pt:
                    nh = opener.last_pt[-1]
            else:
                verdict, inner = opener.unprotect_at(frame, info, off, t)
                nh = frame[off]
        except Exception as exc:
            self.unknown.append(f"{t:.3f} spi {spi:08x}: {exc}")
            return
        self.frames.append(Frame(t, child.label, spi, verdict, inner, udp, nh))

    # -- echo exchanges ------------------------------------------------------------------------

    def ping(
        self,
        child: HarnessChild,
        *,
        count: int = 1,
        src: str | None = None,
        dst: str | None = None,
        timeout: float | None = None,
        expect: bool = True,
    ) -> Ping:
        """Echo requests from ``src`` (default: the tester's inner address, or its outer one
        in transport mode) to ``dst`` (the PUT's) on ``child``; waits until each was accepted
        (an echo reply back on any of our Child SAs; on the api plane: the PUT's delivery
        queue, then echo packets injected into it must come back) or ``timeout``.
        ``expect`` False: the requests must not be accepted (waits the whole timeout)."""
        ctx = self.ctx
        if timeout is None:
            timeout = 1.5 if self.backend == "local" else 3.0
            if not expect:
                timeout = 0.3 if self.backend == "local" else 1.5
        transport = child.mode is Mode.TRANSPORT
        src = src or (self.tester_addr if transport else tester_inner(ctx))
        dst = dst or (self.put_addr if transport else put_inner(ctx))
        keys = []
        packets: dict[tuple[int, int], bytes] = {}
        for _ in range(count):
            pkt, key = self.echo(src, dst)
            keys.append(key)
            packets[key] = pkt
            self.send(child, pkt)
        start = len(self.frames)
        now = time.monotonic()
        deadline = now + timeout
        resend_at = now + RESEND_AFTER
        accepted: set[tuple[int, int]] = set()
        injected = False
        while True:
            self.collect()
            if not self.stack and time.monotonic() >= resend_at:
                # a kernel PUT may still be installing the SA (an IKEv1 Quick Mode responder
                # installs it after QM3): the same echo requests once more, new sequence numbers
                resend_at = deadline
                for k in keys:
                    if k not in accepted:
                        self.send(child, packets[k])
            if self.stack:
                for _spi, pkt in self.delivered:
                    got = echo_key(pkt, request=True)
                    if got in keys:
                        accepted.add(got)
                if accepted == set(keys) and not injected:
                    injected = True
                    self.inject_from_put(
                        [echo4(dst, src, k, b"child-reply", request=False) for k in keys]
                    )
            else:
                for f in self.frames[start:]:
                    got = echo_key(f.inner, request=False) if f.ok else None
                    if got in keys:
                        accepted.add(got)
            replies = [f for f in self.frames[start:] if _carries(f, keys)]
            done = accepted == set(keys) and (not self.stack or len(replies) >= len(keys))
            if (expect and done) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)  # polling interval of a bounded wait
        replies = [f for f in self.frames[start:] if _carries(f, keys)]
        how = "its delivery queue (api data plane)" if self.stack else "echo replies"
        return Ping(child.label, count, len(accepted), replies, how)

    def put_sends(self, packets: int = 1, *, timeout: float | None = None) -> list[Frame]:
        """Make the PUT send on its Child SAs: echo requests from its local stack on the api
        plane; elsewhere echo requests from the tester's side that it answers (the same
        thing seen from the wire). Returns the frames it sent."""
        start = len(self.frames)
        child = next(c for c in reversed(self.session.children) if c.alive)
        p = self.ping(child, count=packets, timeout=timeout)
        del p
        return self.frames[start:]

    # -- evidence ----------------------------------------------------------------------------

    def table(self) -> str:
        lines = ["# sent by the harness", *self.sent, "# sent by the PUT (opened with our keys)"]
        lines += [f.line() for f in self.frames[-200:]]
        if self.unknown:
            lines += ["# on SPIs we do not know", *self.unknown[-50:]]
        if self.delivered:
            lines += ["# delivered by the PUT (api plane)"]
            lines += [f"spi {s:08x} {describe(p)}" for s, p in self.delivered[-50:] if s]
        return "\n".join(lines)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.collect()
        if self.ctx.recording is not None and (self.frames or self.sent):
            self.ctx.recording.attach_text(
                "esp", self.table(), EvidenceKind.ORACLE, filename="esp.txt"
            )
        for s in (self._raw, self._udp):
            if s is not None:
                s.close()
        with contextlib.suppress(Exception):
            self.client.record_received(False)


def _carries(f: Frame, keys: Sequence[tuple[int, int]]) -> bool:
    if not f.ok:
        return False
    return echo_key(f.inner, request=False) in keys or echo_key(f.inner, request=True) in keys


# --- packets --------------------------------------------------------------------------------------


def echo4(src: str, dst: str, key: tuple[int, int], data: bytes, *, request: bool = True) -> bytes:
    """An IPv4 ICMP echo request/reply (RFC 792) with identifier and sequence number ``key``."""
    return echo_packet(src, dst, key, data, request=request)


# --- the PUT: rekeys, defaults ------------------------------------------------------------------


def trigger_child_rekey(ctx: CaseContext, put_inbound_spi: bytes) -> None:
    """Make the PUT start rekeying a Child SA now, without waiting for the outcome
    (reference: its control API; strongSwan: vici ``rekey``)."""
    put = ctx.put
    spi = int.from_bytes(put_inbound_spi, "big")
    # the PUT installs the Child SA after it has read our answer: wait for it to be listed
    wait_for(lambda: spi in {c.spi_in for c in put_children(ctx)}, 2.0)
    if put.kind == "reference":
        put.client.rekey_child(spi)  # type: ignore[attr-defined]
    elif put.kind == "strongswan":
        sc = put.scenario
        assert sc is not None
        deadline = time.monotonic() + 2.0
        while True:
            try:
                put.session.rekey({"child": sc.child_name})  # type: ignore[attr-defined]
                break
            except Exception as exc:  # vici: "no matching SAs to rekey found" while installing
                if time.monotonic() >= deadline:
                    raise PeerError(f"strongSwan: vici rekey: {exc}") from None
                time.sleep(0.1)  # retry interval of a bounded wait
    else:
        raise NotApplicable([f"{put.kind}: the harness cannot make it rekey a Child SA at once"])


def trigger_ike_rekey(ctx: CaseContext) -> None:
    """Make the PUT start rekeying its IKE SA now (no reauthentication), without waiting."""
    put = ctx.put
    wait_for(lambda: any(x.established for x in put.list_sas()), 2.0)
    if put.kind == "reference":
        client = put.client  # type: ignore[attr-defined]
        dump = client.list_sas()
        ikes = [s for s in dump["ike_sas"] if s["established"]]
        if not ikes:
            raise PeerError("reference: no IKE SA to rekey")
        client.rekey_ike(ikes[-1]["ike_sa_id"])
    elif put.kind == "strongswan":
        sc = put.scenario
        assert sc is not None
        put.session.rekey({"ike": sc.name, "reauth": "no"})  # type: ignore[attr-defined]
    elif put.kind == "libreswan":
        # pluto answers IKE_AUTH before it records the IKE SA as its connection's newest; a
        # rekey asked for in between finds none ("connection does not have IKE SA")
        sc = put.scenario
        assert sc is not None
        r = put._whack("--name", sc.name, "--rekey-ike", "--asynchronous")  # type: ignore[attr-defined]
        if not r.ok:
            raise PeerError(f"libreswan: whack --rekey-ike: {r.stdout or r.stderr}")
    else:
        raise NotApplicable([f"{put.kind}: the harness cannot make it rekey an IKE SA at once"])


TRIGGERS = {
    "rekey": ("reference", "strongswan"),
    "rekey IKE": ("reference", "strongswan", "libreswan"),
    "initiate": ("reference", "strongswan"),
    "initiate IKEv1": ("reference", "strongswan", "libreswan"),
}
"""Peers the harness can make start something without waiting for the outcome."""


def require_trigger(ctx: CaseContext, what: str = "rekey") -> None:
    if ctx.put.kind not in TRIGGERS[what]:
        raise NotApplicable(
            [f"{ctx.put.kind}: the harness cannot make it {what} without waiting for the outcome"]
        )


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


DEFAULT = "default"
"""Keyword: the implementation's own default proposals."""


def proposals_as(
    scenario: Scenario, *, ike: str | None = None, esp: str | None = None
) -> Callable[[Peer], None]:
    """A ``configure_put`` extra that loads ``scenario`` into the PUT again with its IKE and/or
    ESP proposals given as one strongSwan-syntax keyword string (``aes128ccm8``, transforms the
    neutral scenario cannot name) or :data:`DEFAULT` (what the implementation ships, for the
    MUST NOT cases of RFC 8247/8221). reference: node IKE settings; strongSwan: the vici
    proposal strings; libreswan: the ``ike=``/``esp=`` lines (omitted for the default)."""

    def extra(put: Peer) -> None:
        if put.kind == "reference":
            from harness.peers.reference import scenario_ike

            cfg = scenario_ike(scenario)
            if ike is not None:
                cfg["proposals"] = [] if ike == DEFAULT else [ike]
            if esp is not None:
                cfg["esp_proposals"] = [] if esp == DEFAULT else [esp]
                cfg["ah_proposals"] = []
            put.client.set_ike(**cfg)  # type: ignore[attr-defined]
            return
        if put.kind == "strongswan":
            import harness.peers.strongswan as sw

            with contextlib.ExitStack() as stack:
                if ike is not None:
                    stack.enter_context(_patched(sw, "ike_proposal", lambda _p, _v: ike))
                if esp is not None:
                    stack.enter_context(_patched(sw, "child_proposal", lambda _p: esp))
                put.configure(scenario)
            return
        if put.kind == "libreswan":
            import harness.peers.libreswan as lsw

            cls = type(put)
            orig = cls._conn  # type: ignore[attr-defined]

            def conn(self: Any, sc: Scenario) -> list[str]:
                out = []
                for line in orig(self, sc):
                    if ike is not None and line.startswith("    ike="):
                        if ike == DEFAULT:
                            continue
                        line = f"    ike={ike}"
                    if esp is not None and line.startswith("    esp="):
                        if esp == DEFAULT:
                            continue
                        line = f"    esp={esp}"
                    out.append(line)
                return out

            del lsw
            with _patched(cls, "_conn", conn):
                put.configure(scenario)
            return
        raise NotApplicable([f"{put.kind}: the harness cannot set its proposals by keyword"])

    return extra


def sa_init_probe(
    ctx: CaseContext,
    wire: Wire,
    proposals: Sequence[v2p.Proposal],
    ke_group: int,
    *,
    timeout: float = 2.0,
) -> Reply:
    """One IKE_SA_INIT offering ``proposals`` with a KE of ``ke_group`` (random octets of the
    group's length when the registry cannot make one: MODP 22-24 of RFC 5114) and the answer;
    no keys are derived (acceptance probes, RFC 8247)."""
    from reference_impl.ike.messages import encode_message

    sc_len = {22: 128, 23: 256, 24: 256}
    try:
        ke_data = dh(ke_group).generate().public_value
    except Exception:
        ke_data = os.urandom(sc_len.get(ke_group, 256))
    spi_i = os.urandom(8)
    put = ctx.topology.node(PUT).addresses.v4
    me = ctx.topology.node(TESTER).addresses.v4
    payloads: list[v2p.Payload] = [
        v2p.SaPayload(list(proposals)),
        v2p.KePayload(ke_group, ke_data),
        v2p.NoncePayload(os.urandom(32)),
        v2p.NotifyPayload(
            N.NAT_DETECTION_SOURCE_IP, natd_hash(spi_i, bytes(8), (me, wire.local_port))
        ),
        v2p.NotifyPayload(N.NAT_DETECTION_DESTINATION_IP, natd_hash(spi_i, bytes(8), (put, 500))),
    ]
    from reference_impl.ike.messages import Message as V2Message

    data = encode_message(V2Message(34, 0, spi_i, bytes(8), True, False, payloads))
    wire.send(data, port=IKE_PORT)
    rx = wire.recv(lambda r: r.spi_i == spi_i and r.response and r.exchange == 34, timeout)
    if rx is None:
        return Reply(None, request=data)
    m = rx.message()
    return Reply(rx, m, list(m.payloads), data)


def put_delete_child(ctx: CaseContext, put_inbound_spi: bytes) -> None:
    """The operator deletes one Child SA on the PUT (it sends the Delete itself)."""
    put = ctx.put
    spi = int.from_bytes(put_inbound_spi, "big")
    if put.kind == "reference":
        put.client.delete_child(spi)  # type: ignore[attr-defined]
    elif put.kind == "strongswan":
        uid = next((c.unique_id for c in put_children(ctx) if c.spi_in == spi), None)
        if uid is None:
            raise PeerError(f"strongSwan lists no Child SA with inbound SPI {spi:08x}")
        session = put.session  # type: ignore[attr-defined]
        for _ in session.terminate({"child-id": uid, "timeout": "-1"}):
            pass
    else:
        raise NotApplicable([f"{put.kind}: the harness cannot delete one of its Child SAs"])


def put_children(ctx: CaseContext) -> list[Any]:
    """The PUT's Child SAs as it lists them."""
    return [c for sa in ctx.put.list_sas() for c in sa.children]


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # polling interval of a bounded wait


def put_state(ctx: CaseContext) -> str:
    lines = []
    try:
        for sa in ctx.put.list_sas():
            lines.append(
                f"IKE {sa.state} {sa.spi_i.hex()}/{sa.spi_r.hex()} {sa.proposal} "
                f"initiator={sa.initiator}"
            )
            for c in sa.children:
                lines.append(
                    f"  child {c.name} {c.state} {c.protocol} {c.mode} in {c.spi_in:08x} "
                    f"out {c.spi_out:08x} {c.proposal} {list(c.local_ts)} === {list(c.remote_ts)}"
                )
    except (PeerError, OSError) as exc:
        lines.append(f"(PUT state unavailable: {exc})")
    return "\n".join(lines) or "(no SAs)"


def attach_put_state(ctx: CaseContext, name: str = "put-sas") -> str:
    text = put_state(ctx)
    if ctx.recording is not None:
        ctx.recording.attach_text(name, text, EvidenceKind.SA_DUMP, filename=f"{name}.txt")
    return text


# --- IKEv1 (RFC 2408, RFC 2409, RFC 3706, RFC 3947) ---------------------------------------------

V1_MM = 2
"""Identity Protection (Main Mode) exchange type (RFC 2408 §4.5)."""
V1_AM = 4
V1_INFO = 5
V1_QM = 32
_QM1_RETRANSMIT = 1.0
"""Seconds of silence after which the harness sends its QM1 again."""
V1_E = 0x01
"""The Encryption flag (RFC 2408 §3.1)."""


@dataclass
class V1Rx:
    """One IKEv1 message from the PUT: the datagram and, for encrypted ones, what it held."""

    rx: Rx
    header: Any
    payloads: tuple[Any, ...] = ()
    label: str = ""

    @property
    def exchange(self) -> int:
        return int(self.header.exchange_type)

    @property
    def encrypted(self) -> bool:
        return bool(self.header.flags & V1_E)

    def find(self, cls: type[Any]) -> Any:
        return next((p for p in self.payloads if isinstance(p, cls)), None)

    def find_all(self, cls: type[Any]) -> list[Any]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def names(self) -> str:
        return " ".join(type(p).__name__.removesuffix("Payload") for p in self.payloads)

    def header_text(self) -> str:
        h = self.header
        return (
            f"{self.label or _v1name(h.exchange_type)}: version {h.version >> 4}.{h.version & 15} "
            f"CKY-I {h.icookie.hex()} CKY-R {h.rcookie.hex()} flags {h.flags:#04x} "
            f"M-ID {h.message_id:#010x} [{self.names()}]"
        )


def _v1name(x: int) -> str:
    return {2: "Main Mode", 4: "Aggressive", 5: "Informational", 32: "Quick Mode"}.get(x, str(x))


def v1_transform(
    *,
    encr_id: int = 7,
    key_bits: int | None = 256,
    hash_id: int = 4,
    auth: int = 1,
    group: int = 14,
    life: int | None = 28800,
) -> Any:
    """A phase-1 suite (RFC 2409 Appendix A numbers): AES-CBC-256, SHA2-256, PSK, group 14 by
    default."""
    from reference_impl.isakmp.proposals import Phase1Transform

    return Phase1Transform(encr_id, key_bits, hash_id, auth, group, life)


def v1_transforms_of(sc: Scenario, auth: int = 1) -> list[Any]:
    """The scenario's IKE proposals as phase-1 suites (one per combination)."""
    from reference_impl.crypto.ids import Ikev1HashId

    hashes = {
        "HMAC_SHA1_96": Ikev1HashId.SHA,
        "HMAC_SHA2_256_128": Ikev1HashId.SHA2_256,
        "HMAC_SHA2_384_192": Ikev1HashId.SHA2_384,
        "HMAC_SHA2_512_256": Ikev1HashId.SHA2_512,
        "HMAC_MD5_96": Ikev1HashId.MD5,
    }
    from harness.peers import algorithms

    out = []
    for p in sc.ike_proposals:
        for e in p.encr:
            a = algorithms.get(e)
            enc = {12: 7, 3: 5}.get(a.iana)
            if enc is None:
                continue
            for i in p.integ:
                for g in p.groups:
                    out.append(
                        v1_transform(
                            encr_id=enc,
                            key_bits=a.key_bits if enc == 7 else None,
                            hash_id=int(hashes[i]),
                            auth=auth,
                            group=algorithms.get(g).iana,
                        )
                    )
    return out


@dataclass
class V1Quick:
    """One Quick Mode exchange (RFC 2409 §5.5) as the harness saw it."""

    msgid: int
    initiator: bool
    iv: bytes
    ni: bytes = b""
    nr: bytes = b""
    messages: list[V1Rx] = field(default_factory=list)
    child: HarnessChild | None = None
    hash_ok: bool | None = None
    """HASH(2) (we initiated) or HASH(1)/HASH(3) (the PUT did) verified."""
    refused: Any = None
    """The Notify the PUT answered with instead (an encrypted Informational)."""


class V1Session:
    """The harness's end of one ISAKMP SA with the PUT (module docstring), as initiator
    (``wire``: a :class:`SocketWire`) or responder (a :class:`TapWire`, the PUT initiating).

    The methods follow the exchanges message by message so that cases can change any of
    them; every message of the PUT is kept (:attr:`messages`) with its decrypted payloads."""

    def __init__(
        self,
        ctx: CaseContext,
        scenario: Scenario,
        wire: Wire,
        *,
        initiator: bool,
        psk: bytes | None = None,
        cred: Any = None,
        peer_cert: Any = None,
    ) -> None:
        self.ctx = ctx
        self.sc = scenario
        self.wire = wire
        self.initiator = initiator
        self.psk = psk if psk is not None else scenario.psk.encode()
        self.cred = cred
        """``suites.support.ike.Cred`` for RSA signature authentication (RFC 2409 §5.1)."""
        self.peer_cert = peer_cert
        self.me = scenario.local(TESTER)
        self.put = scenario.remote(TESTER)
        self.icky = os.urandom(8) if initiator else b""
        self.rcky = bytes(8) if initiator else os.urandom(8)
        self.chosen: Any = None
        self.prf: Any = None
        self.cipher: Any = None
        self.block = 16
        self.iv = b""
        self.last_p1 = b""
        self.ni = self.nr = self.gxi = self.gxr = self.g_xy = b""
        self.skeyid = self.skeyid_d = self.skeyid_a = self.skeyid_e = b""
        self.sai_b = self.id_i_b = self.id_r_b = b""
        self.kex: Any = None
        self.peer_vids: list[bytes] = []
        self.peer_natt = False
        self.floated = False
        """IKE moved to the NAT-T ports (RFC 3947 §4)."""
        self.put_nat = False
        self.our_nat = False
        self.established = False
        self.aggressive = False
        self.messages: list[V1Rx] = []
        self.quick: dict[int, V1Quick] = {}
        self.children: list[HarnessChild] = []
        self.esp_rx: list[Rx] = []
        self.inbox: list[Rx] = []
        self.cursor = len(wire.received)
        self.plane: DataPlane | None = None
        self.log: list[str] = []
        self._n = 0

    # -- transport ------------------------------------------------------------------------

    @property
    def cookies(self) -> bytes:
        return self.icky + self.rcky

    def _port(self) -> int:
        """Our port as the PUT sees it (its NAT-D hash of us)."""
        return self.wire.local_port

    def send(self, data: bytes, *, what: str = "") -> None:
        if what:
            self.wire.log(f"   ({what})")
        self.wire.send(data, port=NATT_PORT if self.floated else IKE_PORT, marker=self.floated)

    def pump(self, timeout: float = 0.0) -> None:
        self.wire.recv(lambda _rx: False, timeout)
        new = self.wire.received[self.cursor :]
        self.cursor = len(self.wire.received)
        for rx in new:
            d = rx.data
            if len(d) >= 28 and d[17] >> 4 == 1 and (not self.icky or d[:8] == self.icky):
                self.inbox.append(rx)
            elif len(d) >= 8 and d[:4] != b"\0\0\0\0":
                self.esp_rx.append(rx)

    def next_message(
        self,
        pred: Callable[[V1Rx], bool] | None = None,
        *,
        exchange: int | None = None,
        timeout: float = 3.0,
        label: str = "",
    ) -> V1Rx | None:
        """The PUT's next message (header decoded, payloads if in clear), others kept."""
        from reference_impl.isakmp.codec import decode_message as v1_decode

        deadline = time.monotonic() + timeout
        while True:
            for rx in list(self.inbox):
                try:
                    m = v1_decode(rx.data)
                except Exception as exc:
                    self.inbox.remove(rx)
                    self.wire.log(f"   (undecodable ISAKMP message: {exc})")
                    continue
                if exchange is not None and m.header.exchange_type != exchange:
                    continue
                if (
                    self.rcky != bytes(8)
                    and self.rcky
                    and m.header.rcookie
                    not in (
                        self.rcky,
                        bytes(8),
                    )
                ):
                    continue
                v = V1Rx(rx, m.header, m.payloads, label)
                if pred is not None and not pred(v):
                    continue
                self.inbox.remove(rx)
                self.messages.append(v)
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.pump(min(left, 0.05))

    # -- crypto ------------------------------------------------------------------------------

    def _encrypt(self, iv: bytes, payloads: Sequence[Any]) -> bytes:
        from reference_impl.isakmp.codec import encode_payloads

        body = encode_payloads(list(payloads))
        return bytes(self.cipher.encrypt(iv, body + bytes(-len(body) % self.block)))

    def protected(
        self, exchange: int, msgid: int, payloads: Sequence[Any], iv: bytes
    ) -> tuple[bytes, bytes]:
        """An encrypted message and the IV that follows it (RFC 2409 Appendix B)."""
        from reference_impl.isakmp.codec import encode_raw, first_payload_type

        ct = self._encrypt(iv, payloads)
        data = encode_raw(
            self.icky, self.rcky, first_payload_type(list(payloads)), exchange, V1_E, msgid, ct
        )
        return data, ct[-self.block :]

    def open(self, v: V1Rx, iv: bytes) -> bytes:
        """Decrypt ``v`` with ``iv`` (its payloads are filled in); returns the next IV."""
        from reference_impl.isakmp.codec import decode_message as v1_decode
        from reference_impl.isakmp.codec import decode_payloads

        m = v1_decode(v.rx.data)
        pt = self.cipher.decrypt(iv, m.ciphertext)
        v.payloads = decode_payloads(m.header.next_payload, pt, padded=True)
        return bytes(m.ciphertext[-self.block :])

    def natd(self, address: str, port: int) -> bytes:
        """RFC 3947 §3.2: HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash."""
        return bytes(
            self.prf.hash(
                self.icky
                + self.rcky
                + ipaddress.ip_address(address).packed
                + struct.pack("!H", port)
            )
        )

    def natd_payloads(self, *, forge: bool = False) -> list[Any]:
        """NAT-D of the PUT's address and port first, then ours (RFC 3947 §3.2); ``forge``: a
        wrong hash of ours (the PUT then sees us behind a NAT)."""
        from reference_impl.isakmp.codec import NatDPayload

        theirs = self.natd(self.put.address, IKE_PORT)
        mine = self.natd(self.me.address, self._port())
        if forge:
            mine = bytes(b ^ 0xA5 for b in mine)
        return [NatDPayload(theirs), NatDPayload(mine)]

    def check_natd(self, natds: Sequence[Any]) -> None:
        """The PUT's NAT-D: the first must be our address and port, the others its own."""
        if len(natds) < 2:
            return
        self.our_nat = natds[0].hash != self.natd(self.me.address, self._port())
        self.put_nat = all(n.hash != self.natd(self.put.address, IKE_PORT) for n in natds[1:])

    def derive(self, g_xy: bytes | None = None) -> None:
        """SKEYID (PSK or signatures), SKEYID_d/a/e, Ka and the phase-1 IV (RFC 2409 §5,
        Appendix B); ``g_xy``: the shared secret when not computed from our own KE (tests)."""
        from reference_impl.crypto import kdf_ikev1 as kdf1

        if g_xy is None:
            g_xy = self.kex.shared_secret(self.gxr if self.initiator else self.gxi)
        self.g_xy = g_xy
        p = prf(self.chosen.prf_id)
        self.prf = p
        if self.chosen.auth_method == 1:
            self.skeyid = kdf1.ikev1_skeyid_psk(p, self.psk, self.ni, self.nr)
        else:
            self.skeyid = kdf1.ikev1_skeyid_sig(p, self.ni, self.nr, self.g_xy)
        self.skeyid_d, self.skeyid_a, self.skeyid_e = kdf1.ikev1_skeyid_dae(
            p, self.skeyid, self.g_xy, self.icky, self.rcky
        )
        alg = encr(self.chosen.encr_id, self.chosen.key_bits)
        self.cipher = alg.prepare(kdf1.ikev1_encryption_key(p, self.skeyid_e, alg.key_len))
        self.block = alg.block_size
        self.iv = kdf1.ikev1_phase1_iv(p, self.gxi, self.gxr, alg.block_size)

    def hash_i(self, psk: bytes | None = None) -> bytes:
        from reference_impl.crypto import kdf_ikev1 as kdf1

        skeyid = self.skeyid
        if psk is not None:
            skeyid = kdf1.ikev1_skeyid_psk(self.prf, psk, self.ni, self.nr)
        return bytes(
            kdf1.ikev1_hash_i(
                self.prf, skeyid, self.gxi, self.gxr, self.icky, self.rcky, self.sai_b,
                self.id_i_b,
            )
        )  # fmt: skip

    def hash_r(self) -> bytes:
        from reference_impl.crypto import kdf_ikev1 as kdf1

        return bytes(
            kdf1.ikev1_hash_r(
                self.prf, self.skeyid, self.gxi, self.gxr, self.icky, self.rcky, self.sai_b,
                self.id_r_b,
            )
        )  # fmt: skip

    def my_id(self) -> Any:
        from reference_impl.isakmp.identity import Identity

        return Identity.parse(self.me.identity).to_payload()

    def vids(self, *, natt: bool = True, dpd: bool = True) -> list[Any]:
        from reference_impl.isakmp.codec import VendorIdPayload
        from reference_impl.isakmp.constants import VendorId

        out = []
        if dpd:
            out.append(VendorIdPayload(VendorId.DPD))
        if natt:
            out.append(VendorIdPayload(VendorId.NAT_T_RFC3947))
        return out

    def _read_vids(self, v: V1Rx) -> None:
        from reference_impl.isakmp.codec import VendorIdPayload
        from reference_impl.isakmp.constants import NAT_T_VENDOR_IDS

        self.peer_vids += [p.data for p in v.payloads if isinstance(p, VendorIdPayload)]
        self.peer_natt = any(x in NAT_T_VENDOR_IDS for x in self.peer_vids)

    def _certreq(self) -> list[Any]:
        """CR for X.509 signature certificates when we authenticate with one (RFC 2408 §3.10)."""
        from reference_impl.isakmp.codec import CrPayload
        from reference_impl.isakmp.constants import CertEncoding

        return [CrPayload(CertEncoding.X509_SIGNATURE)] if self.cred is not None else []

    def _auth(self, h: bytes) -> list[Any]:
        """HASH_x (PSK) or CERT + SIG_x (RFC 2409 §5.1: the signature over HASH_x)."""
        from reference_impl.isakmp import auth as authn
        from reference_impl.isakmp.codec import CertPayload, HashPayload, SigPayload
        from reference_impl.isakmp.constants import CertEncoding

        if self.cred is None:
            return [HashPayload(h)]
        from cryptography.hazmat.primitives import serialization

        der = self.cred.cert.public_bytes(serialization.Encoding.DER)
        key = self.cred.key_path.read_bytes()
        return [CertPayload(CertEncoding.X509_SIGNATURE, der), SigPayload(authn.rsa_sign(key, h))]

    def verify_auth(self, payloads: Sequence[Any], expected: bytes) -> tuple[bool, str]:
        """The PUT's HASH_x, or its SIG_x with the certificate it sent (RFC 2409 §5, §5.1)."""
        from reference_impl.isakmp import auth as authn
        from reference_impl.isakmp.codec import CertPayload, HashPayload, SigPayload

        h = next((p for p in payloads if isinstance(p, HashPayload)), None)
        sig = next((p for p in payloads if isinstance(p, SigPayload)), None)
        if sig is None:
            if h is None:
                return False, "neither HASH nor SIG"
            return h.data == expected, f"HASH {h.data.hex()} vs recomputed {expected.hex()}"
        certs = [p.data for p in payloads if isinstance(p, CertPayload)]
        if not certs and self.peer_cert is None:
            return False, "SIG without a certificate"
        from cryptography.hazmat.primitives import serialization

        cert = certs[0] if certs else self.peer_cert.public_bytes(serialization.Encoding.DER)
        ok = authn.rsa_verify(cert, expected, sig.data)
        return ok, f"SIG ({len(sig.data)} octets) over {expected.hex()}: " + (
            "verifies" if ok else "does NOT verify"
        )

    # -- Main Mode, initiator -------------------------------------------------------------------

    def mm1(
        self,
        transforms: Sequence[Any] | None = None,
        *,
        raw: bytes | None = None,
        vids: Sequence[Any] | None = None,
        timeout: float = 3.0,
    ) -> V1Rx | None:
        """MM1: SA (one proposal, ``transforms``) and Vendor IDs; returns MM2 (or a Notify).
        ``raw``: the whole datagram instead (malformed headers)."""
        from reference_impl.isakmp.codec import encode_message
        from reference_impl.isakmp.proposals import phase1_sa

        if raw is not None:
            self.wire.send(raw, port=IKE_PORT)
            return self.next_message(timeout=timeout, label="answer")
        sa = phase1_sa(list(transforms or v1_transforms_of(self.sc)))
        self.offered = list(transforms or v1_transforms_of(self.sc))
        self.sai_b = sa.encode_body()
        payloads = [sa, *(self.vids() if vids is None else vids)]
        self.send(encode_message(self.icky, bytes(8), V1_MM, 0, 0, payloads), what="MM1")
        v = self.next_message(timeout=timeout, label="MM2")
        if v is None:
            return None
        from reference_impl.isakmp.codec import SaPayload

        sa_p = v.find(SaPayload)
        if v.exchange == V1_MM and sa_p is not None:
            from reference_impl.isakmp.proposals import Phase1Transform

            self.rcky = v.header.rcookie
            self.chosen = Phase1Transform.from_transform(sa_p.proposals[0].transforms[0])
            self._read_vids(v)
        return v

    def mm3(
        self, *, natd: bool = True, forge_natd: bool = False, timeout: float = 3.0
    ) -> V1Rx | None:
        """MM3: KE, Ni [NAT-D x2]; returns MM4 and derives the keys."""
        from reference_impl.isakmp.codec import KePayload, NatDPayload, NoncePayload, encode_message

        assert self.chosen is not None
        self.prf = prf(self.chosen.prf_id)
        self.kex = dh(self.chosen.group).generate()
        self.gxi = self.kex.public_value
        self.ni = os.urandom(32)
        payloads: list[Any] = [KePayload(self.gxi), NoncePayload(self.ni), *self._certreq()]
        if natd and self.peer_natt:
            payloads += self.natd_payloads(forge=forge_natd)
        if forge_natd:
            self.our_nat = True  # the PUT sees us behind a NAT: act as if we were
        self.send(encode_message(self.icky, self.rcky, V1_MM, 0, 0, payloads), what="MM3")
        v = self.next_message(exchange=V1_MM, timeout=timeout, label="MM4")
        if v is None:
            return None
        ke, nr = v.find(KePayload), v.find(NoncePayload)
        if ke is None or nr is None:
            return v
        self.gxr, self.nr = ke.data, nr.data
        self.check_natd(v.find_all(NatDPayload))
        self.derive()
        return v

    def mm5(
        self, *, psk: bytes | None = None, timeout: float = 3.0
    ) -> tuple[V1Rx | None, bool, str]:
        """MM5: IDii and HASH_I (``psk``: computed with another key) or CERT/SIG_I, encrypted;
        floats to 4500 when a NAT was detected. Returns MM6, whether its HASH_R/SIG_R verified,
        and what was checked."""
        idp = self.my_id()
        self.id_i_b = idp.encode_body()
        h = self.hash_i(psk)
        if self.peer_natt and (self.put_nat or self.our_nat):
            self.floated = True
        data, self.iv = self.protected(V1_MM, 0, [idp, *self._auth(h)], self.iv)
        self.send(data, what="MM5 (encrypted)")
        v = self.next_message(exchange=V1_MM, timeout=timeout, label="MM6")
        if v is None or not v.encrypted:
            return v, False, "no encrypted MM6"
        iv_next = self.open(v, self.iv)
        from reference_impl.isakmp.codec import IdPayload

        idr = v.find(IdPayload)
        if idr is None:
            return v, False, f"MM6 without IDir: {v.names()}"
        self.id_r_b = idr.body
        ok, what = self.verify_auth(v.payloads, self.hash_r())
        if ok:
            self.iv = iv_next
            self.last_p1 = iv_next
            self.established = True
        return v, ok, what

    def main_mode(self, transforms: Sequence[Any] | None = None) -> None:
        """A whole Main Mode as initiator; :class:`SetupFailed` unless it completes."""
        v = self.mm1(transforms)
        if v is None or self.chosen is None:
            raise SetupFailed(f"no MM2: {v.names() if v else 'no answer'}")
        if self.mm3() is None:
            raise SetupFailed("no MM4")
        _v6, ok, what = self.mm5()
        if not ok:
            raise SetupFailed(f"MM6 does not verify: {what}")

    # -- Aggressive Mode, initiator ------------------------------------------------------------

    def aggressive_mode(
        self, transform: Any, *, timeout: float = 3.0
    ) -> tuple[V1Rx | None, bool, str]:
        """AM1 (SA with one suite, KE, Ni, IDii, VIDs) -> AM2 (HASH_R verified) -> AM3
        (HASH_I [NAT-D], encrypted as strongSwan and libreswan do, RFC 2409 §5)."""
        from reference_impl.isakmp.codec import (
            IdPayload,
            KePayload,
            NatDPayload,
            NoncePayload,
            SaPayload,
            encode_message,
        )
        from reference_impl.isakmp.proposals import Phase1Transform, phase1_sa

        self.aggressive = True
        sa = phase1_sa([transform])
        self.sai_b = sa.encode_body()
        self.kex = dh(transform.group).generate()
        self.gxi = self.kex.public_value
        self.ni = os.urandom(32)
        idp = self.my_id()
        self.id_i_b = idp.encode_body()
        payloads = [sa, KePayload(self.gxi), NoncePayload(self.ni), idp, *self.vids()]
        self.send(encode_message(self.icky, bytes(8), V1_AM, 0, 0, payloads), what="AM1")
        v = self.next_message(timeout=timeout, label="AM2")
        if v is None:
            return None, False, "no AM2"
        sa_p, ke, nr, idr = (
            v.find(SaPayload),
            v.find(KePayload),
            v.find(NoncePayload),
            v.find(IdPayload),
        )
        if v.exchange != V1_AM or sa_p is None or ke is None or nr is None or idr is None:
            return v, False, f"AM2 incomplete: {v.names()}"
        self.rcky = v.header.rcookie
        self.chosen = Phase1Transform.from_transform(sa_p.proposals[0].transforms[0])
        self._read_vids(v)
        self.gxr, self.nr, self.id_r_b = ke.data, nr.data, idr.body
        self.derive()
        ok, what = self.verify_auth(v.payloads, self.hash_r())
        if not ok:
            return v, False, what
        out: list[Any] = []
        natds = v.find_all(NatDPayload)
        if natds and self.peer_natt:
            self.check_natd(natds)
            out += self.natd_payloads()
        out += self._auth(self.hash_i())
        if self.put_nat or self.our_nat:
            self.floated = True
        data, self.iv = self.protected(V1_AM, 0, out, self.iv)
        self.send(data, what="AM3 (encrypted)")
        self.last_p1 = self.iv
        self.established = True
        return v, True, what

    # -- Main Mode, responder -------------------------------------------------------------------

    def answer_main_mode(
        self,
        mm1: V1Rx,
        *,
        forge_natd: bool = False,
        timeout: float = 6.0,
    ) -> tuple[bool, str]:
        """Answer the PUT's Main Mode: MM2 (its first transform, attributes echoed), MM4 (KE,
        Nr, NAT-D), then check HASH_I/SIG_I in MM5 and send MM6. Returns (MM5 verified, what
        was checked)."""
        from reference_impl.isakmp.codec import (
            KePayload,
            NatDPayload,
            NoncePayload,
            SaPayload,
            encode_message,
        )
        from reference_impl.isakmp.proposals import Phase1Transform

        self.icky = mm1.header.icookie
        self._read_vids(mm1)
        sa_p = mm1.find(SaPayload)
        if sa_p is None:
            raise SetupFailed(f"MM1 without SA: {mm1.names()}")
        prop = sa_p.proposals[0]
        t = prop.transforms[0]
        self.chosen = Phase1Transform.from_transform(t)
        self.sai_b = sa_p.body
        reply = SaPayload((type(prop)(prop.number, prop.protocol_id, prop.spi, (t,)),))
        self.send(
            encode_message(self.icky, self.rcky, V1_MM, 0, 0, [reply, *self.vids()]), what="MM2"
        )
        mm3 = self.next_message(exchange=V1_MM, timeout=timeout, label="MM3")
        if mm3 is None:
            raise SetupFailed("the PUT sent no MM3")
        ke, ni = mm3.find(KePayload), mm3.find(NoncePayload)
        if ke is None or ni is None:
            raise SetupFailed(f"MM3 incomplete: {mm3.names()}")
        self.gxi, self.ni = ke.data, ni.data
        self.kex = dh(self.chosen.group).generate()
        self.gxr = self.kex.public_value
        self.nr = os.urandom(32)
        self.prf = prf(self.chosen.prf_id)
        out: list[Any] = [KePayload(self.gxr), NoncePayload(self.nr), *self._certreq()]
        natds = mm3.find_all(NatDPayload)
        if natds and self.peer_natt:
            self.check_natd(natds)
            out += self.natd_payloads(forge=forge_natd)
        self.send(encode_message(self.icky, self.rcky, V1_MM, 0, 0, out), what="MM4")
        self.derive()
        mm5 = self.next_message(exchange=V1_MM, timeout=timeout, label="MM5")
        if mm5 is None:
            raise SetupFailed("the PUT sent no MM5")
        if mm5.rx.port == NATT_PORT:
            self.floated = True
        if not mm5.encrypted:
            return False, f"MM5 not encrypted: {mm5.names()}"
        self.iv = self.open(mm5, self.iv)
        from reference_impl.isakmp.codec import IdPayload

        idi = mm5.find(IdPayload)
        if idi is None:
            return False, f"MM5 without IDii: {mm5.names()}"
        self.id_i_b = idi.body
        ok, what = self.verify_auth(mm5.payloads, self.hash_i())
        idp = self.my_id()
        self.id_r_b = idp.encode_body()
        data, self.iv = self.protected(V1_MM, 0, [idp, *self._auth(self.hash_r())], self.iv)
        self.send(data, what="MM6 (encrypted)")
        self.last_p1 = self.iv
        self.established = ok
        return ok, what

    # -- Quick Mode ---------------------------------------------------------------------------

    def _qm_iv(self, msgid: int) -> bytes:
        from reference_impl.crypto import kdf_ikev1 as kdf1

        return bytes(kdf1.ikev1_phase2_iv(self.prf, self.last_p1, msgid, self.block))

    def _hash1(self, msgid: int, rest: bytes) -> bytes:
        from reference_impl.crypto import kdf_ikev1 as kdf1

        return bytes(kdf1.ikev1_qm_hash1(self.prf, self.skeyid_a, msgid, rest))

    def quick_mode(
        self,
        transforms: Sequence[Any],
        local: TrafficSelector,
        remote: TrafficSelector,
        *,
        mode: Mode = Mode.TUNNEL,
        pfs_group: int | None = None,
        encap: bool | None = None,
        nat_oa: bool = False,
        msgid: int | None = None,
        label: str | None = None,
        timeout: float = 3.0,
    ) -> V1Quick:
        """QM1 (HASH(1) SA Ni [KE] IDci IDcr [NAT-OA]) -> QM2 (HASH(2) verified) -> QM3
        (HASH(3)); the Child SA with KEYMAT = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b
        | Nr_b) for each direction (RFC 2409 §5.5)."""
        from reference_impl.crypto import kdf_ikev1 as kdf1
        from reference_impl.isakmp.codec import (
            HashPayload,
            KePayload,
            NatOaPayload,
            NoncePayload,
            NotifyPayload,
            SaPayload,
            encode_payloads,
        )
        from reference_impl.isakmp.identity import id_from_selector
        from reference_impl.isakmp.proposals import (
            Phase2Offer,
            parse_phase2_transform,
            phase2_sa,
        )

        msgid = msgid if msgid is not None else int.from_bytes(os.urandom(4), "big") | 1
        q = V1Quick(msgid, True, self._qm_iv(msgid))
        self.quick[msgid] = q
        q.ni = os.urandom(32)
        spi = os.urandom(4)
        udp = (self.put_nat or self.our_nat) if encap is None else encap
        offer = Phase2Offer(mode, udp, False, pfs_group, 3600, None)
        proto = transforms[0].protocol
        rest: list[Any] = [phase2_sa(list(transforms), {proto: spi}, offer), NoncePayload(q.ni)]
        kex = None
        if pfs_group:
            kex = dh(pfs_group).generate()
            rest.append(KePayload(kex.public_value))
        rest += [id_from_selector(local), id_from_selector(remote)]
        if nat_oa:
            rest += [
                NatOaPayload(ipaddress.ip_address(self.me.address)),
                NatOaPayload(ipaddress.ip_address(self.put.address)),
            ]
        h1 = self._hash1(msgid, encode_payloads(rest))
        data, q.iv = self.protected(V1_QM, msgid, [HashPayload(h1), *rest], q.iv)
        self.send(data, what=f"QM1 M-ID {msgid:#010x}")
        info_iv = self._qm_iv  # Informational answers use their own M-ID's IV
        # QM1 is sent again after a second of silence, as an initiator's retransmission timer
        # would (RFC 2408 §5): right after Aggressive Mode's AM3 a responder may still be
        # finishing phase 1 and drop the QM1 that overtook it (strongSwan: "ignoring
        # QUICK_MODE request while phase 1 is incomplete"). An answer ends the wait at once.
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            v = self.next_message(
                lambda m: m.header.message_id == msgid or m.exchange == V1_INFO,
                timeout=max(0.0, min(left, _QM1_RETRANSMIT)),
                label="QM2",
            )
            if v is not None or left <= _QM1_RETRANSMIT:
                break
            self.send(data, what=f"QM1 M-ID {msgid:#010x} (retransmitted)")
        if v is None:
            return q
        if v.exchange == V1_INFO:
            v.label = "Informational"
            if v.encrypted:
                self.open(v, info_iv(v.header.message_id))
            q.refused = next((p for p in v.payloads if isinstance(p, NotifyPayload)), None)
            q.messages.append(v)
            return q
        q.messages.append(v)
        q.iv = self.open(v, q.iv)
        if not v.payloads or not isinstance(v.payloads[0], HashPayload):
            q.hash_ok = False
            return q
        nr = v.find(NoncePayload)
        q.nr = nr.data if nr else b""
        rest2 = b"".join(p.raw for p in v.payloads[1:])
        want = kdf1.ikev1_qm_hash2(self.prf, self.skeyid_a, msgid, q.ni, rest2)
        q.hash_ok = want == v.payloads[0].data
        sa_p = v.find(SaPayload)
        if sa_p is None or not q.hash_ok:
            return q
        prop = sa_p.proposals[0]
        choice = parse_phase2_transform(prop.protocol_id, prop.transforms[0])
        g_qm = None
        ke = v.find(KePayload)
        if kex is not None and ke is not None:
            g_qm = kex.shared_secret(ke.data)
        h3 = kdf1.ikev1_qm_hash3(self.prf, self.skeyid_a, msgid, q.ni, q.nr)
        data, q.iv = self.protected(V1_QM, msgid, [HashPayload(h3)], q.iv)
        self.send(data, what=f"QM3 M-ID {msgid:#010x}")
        q.child = self._v1_child(
            label or self.new_label(), prop.protocol_id, choice, spi, prop.spi, q.ni, q.nr, g_qm,
            local, remote,
        )  # fmt: skip
        return q

    def answer_quick(self, qm1: V1Rx, *, timeout: float = 3.0) -> V1Quick:
        """Answer the PUT's QM1 (HASH(1) checked): its first transform, our SPI, Nr, KE if it
        sent one, its IDs; HASH(3) checked when it comes."""
        from reference_impl.crypto import kdf_ikev1 as kdf1
        from reference_impl.isakmp.codec import (
            HashPayload,
            IdPayload,
            KePayload,
            NoncePayload,
            SaPayload,
            encode_payloads,
        )
        from reference_impl.isakmp.identity import selector_from_id
        from reference_impl.isakmp.proposals import parse_phase2_transform

        msgid = qm1.header.message_id
        q = V1Quick(msgid, False, self._qm_iv(msgid))
        self.quick[msgid] = q
        q.messages.append(qm1)
        q.iv = self.open(qm1, q.iv)
        rest1 = b"".join(p.raw for p in qm1.payloads[1:])
        q.hash_ok = bool(qm1.payloads) and self._hash1(msgid, rest1) == qm1.payloads[0].data
        sa_p, ni, ke = qm1.find(SaPayload), qm1.find(NoncePayload), qm1.find(KePayload)
        ids = qm1.find_all(IdPayload)
        if sa_p is None or ni is None:
            raise SetupFailed(f"QM1 incomplete: {qm1.names()}")
        q.ni = ni.data
        prop = sa_p.proposals[0]
        t = prop.transforms[0]
        choice = parse_phase2_transform(prop.protocol_id, t)
        spi = os.urandom(4)
        q.nr = os.urandom(32)
        reply_sa = SaPayload((type(prop)(prop.number, prop.protocol_id, spi, (t,)),))
        rest: list[Any] = [reply_sa, NoncePayload(q.nr)]
        g_qm = None
        if ke is not None and choice.pfs_group:
            kex = dh(choice.pfs_group).generate()
            g_qm = kex.shared_secret(ke.data)
            rest.append(KePayload(kex.public_value))
        rest += list(ids)
        h2 = kdf1.ikev1_qm_hash2(self.prf, self.skeyid_a, msgid, q.ni, encode_payloads(rest))
        data, q.iv = self.protected(V1_QM, msgid, [HashPayload(h2), *rest], q.iv)
        self.send(data, what=f"QM2 M-ID {msgid:#010x}")
        if len(ids) >= 2:
            remote, local = selector_from_id(ids[0]), selector_from_id(ids[1])
        else:
            remote, local = ts(f"{self.put.address}/32"), ts(f"{self.me.address}/32")
        q.child = self._v1_child(
            self.new_label("put-qm"), prop.protocol_id, choice, spi, prop.spi, q.ni, q.nr, g_qm,
            local, remote,
        )  # fmt: skip
        v3 = self.next_message(lambda m: m.header.message_id == msgid, timeout=timeout, label="QM3")
        if v3 is not None:
            q.messages.append(v3)
            self.open(v3, q.iv)
            h3 = kdf1.ikev1_qm_hash3(self.prf, self.skeyid_a, msgid, q.ni, q.nr)
            q.hash_ok = bool(q.hash_ok) and bool(v3.payloads) and v3.payloads[0].data == h3
        return q

    def new_label(self, what: str = "qm") -> str:
        self._n += 1
        return f"{what}{self._n}"

    def _v1_child(
        self,
        label: str,
        protocol: int,
        choice: Any,
        spi_in: bytes,
        spi_out: bytes,
        ni: bytes,
        nr: bytes,
        g_qm: bytes | None,
        local: TrafficSelector,
        remote: TrafficSelector,
    ) -> HarnessChild:
        from reference_impl.crypto import kdf_ikev1 as kdf1

        t = choice.transform
        elen, ilen = t.keymat_len()

        def keymat(spi: bytes) -> bytes:
            return bytes(
                kdf1.ikev1_quick_keymat(
                    self.prf, self.skeyid_d, protocol, spi, ni, nr, elen + ilen, g_qm
                )
            )

        k_out, k_in = keymat(spi_out), keymat(spi_in)
        sel = Selected(1, protocol, spi_out, t.encr_id or 0, t.key_bits, t.integ_id or 0, 0,
                       choice.pfs_group or 0, t.esn)  # fmt: skip
        child = HarnessChild(
            label=label,
            protocol=protocol,
            sel=sel,
            spi_in=spi_in,
            spi_out=spi_out,
            keys=ChildKeys(k_out[:elen], k_out[elen:], k_in[:elen], k_in[elen:]),
            initiator=True,
            mode=choice.mode,
            tsi=[local],
            tsr=[remote],
            encap=choice.udp_encap,
            nonces=(ni, nr),
            pfs_group=choice.pfs_group or 0,
        )
        self.children.append(child)
        self.log.append(child.describe())
        if self.plane is not None:
            self.plane.register(child)
        return child

    # -- Informational ------------------------------------------------------------------------

    def info(self, payloads: Sequence[Any], *, msgid: int | None = None) -> int:
        """A protected Informational: HASH(1) = prf(SKEYID_a, M-ID | N/D) (RFC 2409 §5.7)."""
        from reference_impl.isakmp.codec import HashPayload, encode_payloads

        msgid = msgid if msgid is not None else int.from_bytes(os.urandom(4), "big") | 1
        h = self._hash1(msgid, encode_payloads(list(payloads)))
        data, _ = self.protected(V1_INFO, msgid, [HashPayload(h), *payloads], self._qm_iv(msgid))
        self.send(data, what=f"Informational M-ID {msgid:#010x}")
        return msgid

    def next_info(
        self, pred: Callable[[V1Rx], bool] | None = None, *, timeout: float = 3.0
    ) -> tuple[V1Rx | None, bool]:
        """The PUT's next protected Informational (decrypted) and whether its HASH(1)
        verified."""

        def want(m: V1Rx) -> bool:
            if m.exchange != V1_INFO or not m.encrypted:
                return False
            try:
                self.open(m, self._qm_iv(m.header.message_id))
            except Exception as exc:  # evidence: a protected message we cannot open
                self.log.append(f"Informational {m.header.message_id:#x} does not open: {exc}")
                return False
            return pred is None or pred(m)

        v = self.next_message(want, timeout=timeout, label="Informational")
        if v is None:
            return None, False
        rest = b"".join(p.raw for p in v.payloads[1:])
        ok = bool(v.payloads) and self._hash1(v.header.message_id, rest) == v.payloads[0].data
        return v, ok

    def delete_ike(self) -> None:
        """A protected Delete of the ISAKMP SA (cleanup), best effort."""
        from reference_impl.isakmp.codec import DeletePayload

        if self.established:
            with contextlib.suppress(Exception):
                self.info([DeletePayload(1, (self.cookies,), 16)])
            self.established = False

    def evidence(self) -> str:
        lines = [v.header_text() for v in self.messages]
        return "\n".join(lines + self.log)


@contextlib.contextmanager
def v1_responding(
    ctx: CaseContext,
    scenario: Scenario,
    *,
    plane: bool = False,
    cred: Any = None,
    peer_cert: Any = None,
    extra: Callable[[Peer], None] | None = None,
) -> Iterator[V1Session]:
    """The PUT configured with ``scenario`` (IKEv1) answers the harness's :class:`V1Session`
    (initiator, a socket of its own on the tester's address)."""
    from suites.support.ike import SocketWire, configure_put, require_scriptable

    require_scriptable(ctx)
    configure_put(ctx, scenario, extra=extra)
    wire = SocketWire(ctx)
    s = V1Session(ctx, scenario, wire, initiator=True, cred=cred, peer_cert=peer_cert)
    dp = DataPlane(s) if plane else None
    try:
        yield s
    finally:
        try:
            s.delete_ike()
            if dp is not None:
                dp.close()
        finally:
            wire.close()
            note(ctx, "ike-transcript", "\n".join(wire.transcript))
            note(ctx, "isakmp", s.evidence())
            flush_half_open(ctx)


class _WhackInitiation:
    """libreswan starts a connection without waiting for it (``whack --initiate
    --asynchronous``) and drops it afterwards (``--terminate``)."""

    def __init__(self, ctx: CaseContext, scenario: Scenario) -> None:
        self.put = ctx.put
        self.name = scenario.name

    def start(self) -> None:
        r = self.put._whack("--name", self.name, "--initiate", "--asynchronous")  # type: ignore[attr-defined]
        if not r.ok:
            raise PeerError(f"libreswan: whack --initiate: {r.stdout or r.stderr}")

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.put._whack("--name", self.name, "--terminate")  # type: ignore[attr-defined]


@contextlib.contextmanager
def v1_initiating(
    ctx: CaseContext,
    scenario: Scenario,
    *,
    plane: bool = False,
    cred: Any = None,
    peer_cert: Any = None,
    extra: Callable[[Peer], None] | None = None,
) -> Iterator[V1Session]:
    """The PUT configured with ``scenario`` (IKEv1) initiates towards the silenced tester;
    yields the harness's :class:`V1Session` (responder; nothing answered yet: take the PUT's
    MM1/AM1 with :meth:`V1Session.next_message`)."""
    from suites.support.ike import (
        PutInitiation,
        TapWire,
        configure_put,
        quiesce,
        require_scriptable,
    )

    require_scriptable(ctx)
    require_trigger(ctx, "initiate IKEv1")
    quiesce(ctx)
    configure_put(ctx, scenario, extra=extra)
    wire = TapWire(ctx)
    s = V1Session(ctx, scenario, wire, initiator=False, cred=cred, peer_cert=peer_cert)
    s.icky = b""
    initiation: Any = (
        _WhackInitiation(ctx, scenario)
        if ctx.put.kind == "libreswan"
        else PutInitiation(ctx, scenario)
    )
    dp = DataPlane(s) if plane else None
    try:
        with ctx.step("the PUT initiates"):
            initiation.start()
        yield s
    finally:
        try:
            s.delete_ike()
            if dp is not None:
                dp.close()
            initiation.abort()
        finally:
            wire.close()
            note(ctx, "ike-transcript", "\n".join(wire.transcript))
            note(ctx, "isakmp", s.evidence())


__all__ = [
    "DEFAULT",
    "TESTER_NET",
    "Accepted",
    "DataPlane",
    "Frame",
    "HarnessChild",
    "Incoming",
    "Opened",
    "Ping",
    "Session",
    "SetupFailed",
    "V1Session",
    "attach_put_state",
    "child_scenario",
    "covers_address",
    "describe_ts",
    "echo4",
    "esp_proposal",
    "ike_proposal",
    "initiating",
    "net_host",
    "proposals_as",
    "put_children",
    "put_delete_child",
    "put_inner",
    "put_net",
    "require_trigger",
    "responding",
    "sa_init_probe",
    "strip_dh",
    "tester_inner",
    "trigger_child_rekey",
    "trigger_ike_rekey",
    "ts",
    "ts_text",
    "ts_within",
    "v1_initiating",
    "v1_responding",
    "v1_transform",
    "v1_transforms_of",
    "virtual_clock",
    "wait_for",
]
