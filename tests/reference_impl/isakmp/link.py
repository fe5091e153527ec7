"""Two IKEv1 services over an in-memory link with loss, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reference_impl.events import Event
from reference_impl.isakmp.identity import Identity
from reference_impl.isakmp.proposals import Phase1Transform
from reference_impl.isakmp.service import Datagram, IsakmpService
from reference_impl.isakmp.settings import (
    ChildConfig,
    ConnectionConfig,
    IsakmpSettings,
    PskAuth,
    RsaAuth,
)
from reference_impl.retransmit import RetransmitSchedule
from reference_impl.sa import TrafficSelector
from tests.reference_impl.isakmp.algs import ESP_CBC, P1_AES256

A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"
PSK = b"in-memory test psk 0123456789"
FAST = RetransmitSchedule((0.5, 0.5, 1.0, 2.0))


def child(
    name: str = "c", local: str = "10.1.0.0/24", remote: str = "10.2.0.0/24", **kw: object
) -> ChildConfig:
    kw.setdefault("transforms", (ESP_CBC,))
    return ChildConfig(
        name, TrafficSelector.from_network(local), TrafficSelector.from_network(remote), **kw
    )  # type: ignore[arg-type]


def conn_pair(
    auth_a: PskAuth | RsaAuth | None = None,
    auth_b: PskAuth | RsaAuth | None = None,
    id_a: str = A_ADDR,
    id_b: str = B_ADDR,
    props_a: tuple[Phase1Transform, ...] = (P1_AES256,),
    props_b: tuple[Phase1Transform, ...] = (P1_AES256,),
    child_a: ChildConfig | None = None,
    child_b: ChildConfig | None = None,
    **kw: object,
) -> tuple[ConnectionConfig, ConnectionConfig]:
    a = ConnectionConfig(
        "t", A_ADDR, B_ADDR, Identity.parse(id_a), auth_a or PskAuth(PSK), props_a,
        (child_a or child(),), remote_id=Identity.parse(id_b), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    b = ConnectionConfig(
        "t", B_ADDR, A_ADDR, Identity.parse(id_b), auth_b or PskAuth(PSK), props_b,
        (child_b or child("c", "10.2.0.0/24", "10.1.0.0/24"),), remote_id=Identity.parse(id_a),
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return a, b


@dataclass
class Link:
    a: IsakmpService
    b: IsakmpService
    now: float = 0.0
    drop: Callable[[int, str, Datagram], bool] = lambda n, side, d: False
    """Called for each datagram with its running number and sender ('a'/'b')."""
    mutate: Callable[[int, str, bytes], bytes] = lambda n, side, data: data
    """Rewrites a datagram in flight (after ``drop``)."""
    sent: list[tuple[float, str, Datagram]] = field(default_factory=list)
    events_a: list[Event] = field(default_factory=list)
    events_b: list[Event] = field(default_factory=list)
    duplicate: bool = False
    """Deliver every datagram twice (libreswan's ``jacob-two-two`` impairment)."""
    nat: tuple[str, dict[int, int]] | None = None
    """A NAPT in front of A: its public address and the port mapping of A's ports."""

    def pump(self, until: float = 600.0, max_steps: int = 10000) -> None:
        """Deliver datagrams and fire timers until nothing is left or ``until``."""
        for _ in range(max_steps):
            progressed = self._deliver()
            self._collect()
            if progressed:
                continue
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not timers or min(timers) > until:
                return
            self.now = max(self.now, min(timers))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self._collect()
        raise AssertionError("link did not settle")

    def _collect(self) -> None:
        for svc, evs in ((self.a, self.events_a), (self.b, self.events_b)):
            while (e := svc.next_event()) is not None:
                evs.append(e)

    def _deliver(self) -> bool:
        moved = False
        for side, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
            for d in src.datagrams_to_send(self.now):
                n = len(self.sent)
                self.sent.append((self.now, side, d))
                moved = True
                if self.drop(n, side, d):
                    continue
                src_addr = A_ADDR if side == "a" else B_ADDR
                sport, dport = d.src[1], d.dst[1]
                if self.nat is not None:
                    public, ports = self.nat
                    if side == "a":
                        src_addr, sport = public, ports[sport]
                    else:
                        assert d.dst[0] == public, d
                        dport = {v: k for k, v in ports.items()}[dport]
                data = self.mutate(n, side, d.data)
                if data == b"\xff":  # NAT-T keepalive: the node drops it (RFC 3948 §2.3)
                    continue
                assert d.marker == (d.src[1] == 4500)
                dst_addr = B_ADDR if side == "a" else A_ADDR
                for _ in range(2 if self.duplicate else 1):
                    dst.receive_datagram(data, (src_addr, sport), self.now, local=(dst_addr, dport))
        return moved

    def of(self, side: str, cls: type) -> list:  # type: ignore[type-arg]
        evs = self.events_a if side == "a" else self.events_b
        return [e for e in evs if isinstance(e, cls)]


def make_link(
    conns: tuple[ConnectionConfig, ConnectionConfig],
    schedule: RetransmitSchedule = FAST,
    **kw: object,
) -> Link:
    sa = IsakmpSettings((conns[0],), retransmit=schedule, **kw)  # type: ignore[arg-type]
    sb = IsakmpSettings((conns[1],), retransmit=schedule, **kw)  # type: ignore[arg-type]
    return Link(IsakmpService(sa), IsakmpService(sb))
