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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from harness.peers.base import NotApplicable, Peer, PeerError, Scenario
from harness.probes.craft import AhCrafter, EspCrafter
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
from reference_impl.driver import AhInbound, EspInbound, SaOptions
from reference_impl.driver import Verdict as DriverVerdict
from reference_impl.driver.base import DriverContext
from reference_impl.driver.packet import IPPROTO_AH, IPPROTO_ESP, checksum, parse_ip
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
)

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
    mid = sa.next_mid
    sa.next_mid += 1
    ini.natt = natt
    data = sa.seal(IKE_AUTH, mid, payloads, response=False)
    ini.wire.log(f"   (IKE_AUTH request {mid} inside SK: {' '.join(payload_names(payloads))})")
    ini.wire.send(data, port=NATT_PORT if natt else IKE_PORT, marker=natt)
    reply = ini._reply(sa.spi_i, IKE_AUTH, mid, timeout)
    reply.request = data
    if reply.message is not None:
        ini.wire.log(f"   (IKE_AUTH response inside SK: {reply.describe()})")
        ini.half_open = max(0, ini.half_open - 1)
        if reply.get(v2p.AuthPayload) is not None:
            sa.established = True
    return reply


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
            auth = auth_request(ini, child=payloads, natt=natt, notifies=ns)
        sa = ini.sa
        if not auth.answered or auth.get(v2p.AuthPayload) is None:
            raise SetupFailed(f"IKE_AUTH failed: {auth.describe()}")
        session = Session(ctx, scenario, ini.wire, sa, natt=natt, owner=ini)
        first_child: HarnessChild | None = None
        sa_p = auth.get(v2p.SaPayload)
        if payloads is not None and sa_p is not None and sa_p.proposals:
            chosen = sa_p.proposals[0]
            sel = selected_of(chosen)
            tsi_r, tsr_r = auth.get(v2p.TsI), auth.get(v2p.TsR)
            first_child = HarnessChild(
                label="child1",
                protocol=chosen.protocol_id,
                sel=sel,
                spi_in=props[0].spi,
                spi_out=chosen.spi,
                keys=child_keys(sa, sel, sa.nonce_i, sa.nonce_r),
                initiator=True,
                mode=Mode.TRANSPORT
                if auth.notify(N.USE_TRANSPORT_MODE) is not None
                else Mode.TUNNEL,
                tsi=list(tsi_r.selectors) if tsi_r else [],
                tsr=list(tsr_r.selectors) if tsr_r else [],
                encap=natt,
                nonces=(sa.nonce_i, sa.nonce_r),
            )
            session._n = 1
        elif payloads is not None and require_child:
            raise SetupFailed(f"the PUT made no Child SA in IKE_AUTH: {auth.describe()}")
        dp = DataPlane(session) if plane else None
        if first_child is not None:
            session.add_child(first_child)
        try:
            yield Opened(session, init, auth, first_child)
        finally:
            ini.sa = session.sa  # put_responds deletes the current IKE SA
            for old in session.old:
                if old.established:
                    with contextlib.suppress(Exception):
                        session.delete_ike(old, timeout=0.5)
            if dp is not None:
                dp.close()
            if session.log:
                note(ctx, "session", session.evidence())


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
        dp = DataPlane(session) if plane else None
        if first_child is not None:
            session._n = 1
            session.add_child(first_child)
        try:
            yield Accepted(session, request, first_child)
        finally:
            resp.sa = session.sa
            for old in session.old:
                if old.established:
                    with contextlib.suppress(Exception):
                        session.delete_ike(old, timeout=0.5)
            if dp is not None:
                dp.close()
            if session.log:
                note(ctx, "session", session.evidence())


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
            f"{' udp' if self.udp else ''}{nh} {describe_packet(self.inner) if self.inner else ''}"
        )


class _EspOpen(EspInbound):
    """The driver's inbound ESP SA keeping the last plaintext (its Next Header)."""

    last_pt: bytes | None = None

    def after_decrypt(
        self, pt: bytes, d: bytes, info: Any, udp: bool, seq: int, now: float
    ) -> tuple[DriverVerdict, bytes]:
        self.last_pt = pt
        return super().after_decrypt(pt, d, info, udp, seq, now)


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


class DataPlane:
    """ESP/AH between the harness and the PUT on the session's Child SAs (module docstring)."""

    def __init__(self, session: Session) -> None:
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
            self.put.client.delivered()  # type: ignore[attr-defined]
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
            opener = _EspOpen(params, 0.0, DriverContext(0), SaOptions(check_padding=False))
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
        self.sent.append(f"{child.label} seq {s} {describe_packet(inner)}")
        return s

    def inject_from_put(self, packets: Sequence[bytes]) -> None:
        """Hand packets to a reference PUT's local stack (api data plane)."""
        self.put.client.inject(list(packets), direction="out")  # type: ignore[attr-defined]

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
            for d in self.put.client.delivered():  # type: ignore[attr-defined]
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
            if isinstance(opener, _EspOpen):
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
                timeout = 0.6 if self.backend == "local" else 1.5
        transport = child.mode is Mode.TRANSPORT
        src = src or (self.tester_addr if transport else tester_inner(ctx))
        dst = dst or (self.put_addr if transport else put_inner(ctx))
        keys = []
        for _ in range(count):
            pkt, key = self.echo(src, dst)
            keys.append(key)
            self.send(child, pkt)
        start = len(self.frames)
        deadline = time.monotonic() + timeout
        accepted: set[tuple[int, int]] = set()
        injected = False
        while True:
            self.collect()
            if self.stack:
                for _spi, pkt in self.delivered:
                    k = echo_key(pkt, request=True)
                    if k in keys:
                        accepted.add(k)
                if accepted == set(keys) and not injected:
                    injected = True
                    self.inject_from_put(
                        [echo4(dst, src, k, b"child-reply", request=False) for k in keys]
                    )
            else:
                for f in self.frames[start:]:
                    k = echo_key(f.inner, request=False) if f.ok else None
                    if k in keys:
                        accepted.add(k)
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
            lines += [f"spi {s:08x} {describe_packet(p)}" for s, p in self.delivered[-50:] if s]
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
    ident, seq = key
    icmp = struct.pack("!BBHHH", 8 if request else 0, 0, 0, ident, seq) + data
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + icmp


def echo_key(packet: bytes, *, request: bool) -> tuple[int, int] | None:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    off = (packet[0] & 0x0F) * 4
    if len(packet) < off + 8 or packet[off] != (8 if request else 0):
        return None
    ident, seq = struct.unpack_from("!HH", packet, off + 4)
    return ident, seq


def describe_packet(packet: bytes) -> str:
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        s, d = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        return f"{s} > {d} proto {packet[9]} len {len(packet)}"
    return f"{len(packet)} octets"


# --- the PUT: clock, rekeys, defaults -----------------------------------------------------------


@contextlib.contextmanager
def virtual_clock(ctx: CaseContext) -> Iterator[Callable[[float], None]]:
    """A reference PUT on its virtual clock for the duration; yields ``advance(seconds)``
    (other peers: a real wait). The real clock is restored afterwards."""
    put = ctx.put
    client = getattr(put, "client", None)
    if put.kind != "reference" or client is None:

        def wait(seconds: float) -> None:
            time.sleep(seconds)

        yield wait
        return
    mode = client.clock()["mode"]
    client.clock("virtual")

    def advance(seconds: float) -> None:
        client.advance(seconds)

    try:
        yield advance
    finally:
        if mode == "real":
            with contextlib.suppress(Exception):
                client.clock("real")


def trigger_child_rekey(ctx: CaseContext, put_inbound_spi: bytes) -> None:
    """Make the PUT start rekeying a Child SA now, without waiting for the outcome
    (reference: its control API; strongSwan: vici ``rekey``)."""
    put = ctx.put
    if put.kind == "reference":
        put.client.rekey_child(int.from_bytes(put_inbound_spi, "big"))  # type: ignore[attr-defined]
    elif put.kind == "strongswan":
        sc = put.scenario
        assert sc is not None
        put.session.rekey({"child": sc.child_name})  # type: ignore[attr-defined]
    else:
        raise NotApplicable([f"{put.kind}: the harness cannot make it rekey a Child SA at once"])


def trigger_ike_rekey(ctx: CaseContext) -> None:
    """Make the PUT start rekeying its IKE SA now (no reauthentication), without waiting."""
    put = ctx.put
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
        sc = put.scenario
        assert sc is not None
        # pluto answers IKE_AUTH before it records the IKE SA as its connection's newest; a
        # rekey asked for in between finds none ("connection does not have IKE SA")
        wait_for(lambda: any(x.established for x in put.list_sas()), 2.0)
        r = put._whack("--name", sc.name, "--rekey-ike", "--asynchronous")  # type: ignore[attr-defined]
        if not r.ok:
            raise PeerError(f"libreswan: whack --rekey-ike: {r.stdout or r.stderr}")
    else:
        raise NotApplicable([f"{put.kind}: the harness cannot make it rekey an IKE SA at once"])


TRIGGERS = {
    "rekey": ("reference", "strongswan"),
    "rekey IKE": ("reference", "strongswan", "libreswan"),
    "initiate": ("reference", "strongswan"),
}
"""Peers the harness can make start something without waiting for the outcome."""


def require_trigger(ctx: CaseContext, what: str = "rekey") -> None:
    if ctx.put.kind not in TRIGGERS[what]:
        raise NotApplicable(
            [f"{ctx.put.kind}: the harness cannot make it {what} without waiting for the outcome"]
        )


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


__all__ = [
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
    "attach_put_state",
    "child_scenario",
    "covers_address",
    "describe_ts",
    "echo4",
    "esp_proposal",
    "ike_proposal",
    "initiating",
    "net_host",
    "put_children",
    "put_inner",
    "put_net",
    "require_trigger",
    "responding",
    "strip_dh",
    "tester_inner",
    "trigger_child_rekey",
    "trigger_ike_rekey",
    "ts",
    "ts_text",
    "ts_within",
    "virtual_clock",
    "wait_for",
]
