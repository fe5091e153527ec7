"""An in-memory network of IKE services on a virtual clock, with loss, duplication, reordering
and an optional NAT, for two-endpoint tests (no sockets, no sleeps)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reference_impl.events import Event
from reference_impl.ike.config import (
    AuthClass,
    ChildConfig,
    Identity,
    LocalAuth,
    PeerConfig,
    RemoteAuth,
    ServiceSettings,
    esp_proposals,
    ike_proposals,
)
from reference_impl.ike.messages import decode_message
from reference_impl.ike.service import IkeService
from reference_impl.ike.types import Datagram
from reference_impl.retransmit import RetransmitSchedule
from reference_impl.sa import TrafficSelector

E = TypeVar("E", bound=Event)
PSK = b"rx-test-psk-0123456789"
A_IP = "198.51.100.1"
B_IP = "198.51.100.2"
FAST = RetransmitSchedule((0.5, 0.5, 1.0, 2.0))


@dataclass
class Sent:
    """A datagram as it went over the wire, decoded for assertions."""

    at: float
    d: Datagram

    @property
    def summary(self) -> str:
        try:
            return decode_message(self.d.data).summary()
        except Exception:
            return f"<{len(self.d.data)} octets>"


@dataclass
class Node:
    name: str
    ip: str
    service: IkeService
    events: list[Event] = field(default_factory=list)

    def drain(self) -> list[Event]:
        while (ev := self.service.next_event()) is not None:
            self.events.append(ev)
        return self.events

    def of(self, cls: type[E]) -> list[E]:
        self.drain()
        return [e for e in self.events if isinstance(e, cls)]


Filter = Callable[[int, Datagram], list[Datagram]]
"""(index of the datagram on the wire, datagram) -> what to deliver (drop: [], dup: [d, d])."""


class Net:
    """Delivers each service's datagrams to the service owning the destination address."""

    def __init__(self, *nodes: Node, now: float = 1000.0) -> None:
        self.nodes = {n.ip: n for n in nodes}
        self.now = now
        self.wire: list[Sent] = []
        self.filter: Filter | None = None
        self.held: list[Datagram] = []
        self.nat: dict[str, tuple[str, int]] = {}
        """Source NAT: datagrams from this IP leave with this (address, port base)."""
        self._nat_map: dict[tuple[str, int], tuple[str, int]] = {}
        self._nat_rev: dict[tuple[str, int], tuple[str, int]] = {}

    def _translate(self, d: Datagram) -> Datagram:
        if d.src[0] in self.nat:
            pub_ip, base = self.nat[d.src[0]]
            out = self._nat_map.get(d.src)
            if out is None:
                out = (pub_ip, base + len(self._nat_map))
                self._nat_map[d.src] = out
                self._nat_rev[out] = d.src
            d = d._replace(src=out)
        if d.dst in self._nat_rev:
            d = d._replace(dst=self._nat_rev[d.dst])
        return d

    def step(self) -> bool:
        """Deliver everything currently queued; True if anything moved."""
        moved = False
        for node in list(self.nodes.values()):
            for d in node.service.datagrams_to_send(self.now):
                index = len(self.wire)
                self.wire.append(Sent(self.now, d))
                moved = True
                if d.data != b"\xff":
                    # IKE on the NAT-T port always carries the non-ESP marker (RFC 3948 §2.2)
                    assert d.marker == (d.src[1] == 4500), d
                todo = self.filter(index, d) if self.filter else [d]
                for item in todo:
                    self._deliver(item)
        return moved

    def _deliver(self, d: Datagram) -> None:
        d = self._translate(d)
        target = self.nodes.get(d.dst[0])
        if target is None or d.data == b"\xff":
            return
        target.service.receive_datagram(d.data, d.src, self.now, local=d.dst)

    def release_held(self) -> None:
        held, self.held = self.held, []
        for d in held:
            self._deliver(d)

    def settle(self) -> None:
        while self.step():
            pass
        for n in self.nodes.values():
            n.drain()

    def run(self, seconds: float) -> None:
        """Deliver and fire timers until ``seconds`` of virtual time have passed."""
        end = self.now + seconds
        while True:
            self.settle()
            timers = [t for n in self.nodes.values() if (t := n.service.get_timer()) is not None]
            if not timers or min(timers) > end:
                break
            self.now = max(self.now, min(timers))
            for n in self.nodes.values():
                t = n.service.get_timer()
                if t is not None and t <= self.now:
                    n.service.handle_timer(self.now)
        self.now = end
        self.settle()

    def summaries(self) -> list[str]:
        return [s.summary for s in self.wire]


def rng(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return r.randbytes


def ts(net: str) -> TrafficSelector:
    return TrafficSelector.from_network(net)


def psk_config(
    name: str,
    me: str,
    peer: str,
    *,
    local_ts: str = "10.1.0.1/32",
    remote_ts: str = "10.2.0.1/32",
    proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-x25519", "aes256-sha256-modp2048"),
    esp: tuple[str, ...] = ("aes128gcm16", "aes256-sha256"),
    child: Mapping[str, Any] | None = None,
    **kw: object,
) -> PeerConfig:
    c = ChildConfig(
        name="c",
        local_ts=(ts(local_ts),) if local_ts else (),
        remote_ts=(ts(remote_ts),) if remote_ts else (),
        proposals=esp_proposals(*esp),
        **(child or {}),
    )
    return PeerConfig(
        name=name,
        local=LocalAuth(Identity.parse(me), AuthClass.PSK, PSK),
        remote=RemoteAuth(Identity.parse(peer), AuthClass.PSK),
        remote_addrs=(peer,),
        proposals=ike_proposals(*proposals),
        children=(c,),
        retransmit=FAST,
        **kw,
    )


def pair(
    a_cfg: Mapping[str, Any] | None = None,
    b_cfg: Mapping[str, Any] | None = None,
    a_settings: Mapping[str, Any] | None = None,
    b_settings: Mapping[str, Any] | None = None,
    seed: int = 1,
) -> tuple[Net, Node, Node]:
    """Two services, A (10.1.0.1/32 behind it) and B (10.2.0.1/32), configured for each other."""
    a_conf = psk_config("ab", A_IP, B_IP, **(a_cfg or {}))
    b_kw: dict[str, Any] = {"local_ts": "10.2.0.1/32", "remote_ts": "10.1.0.1/32"}
    b_kw.update(b_cfg or {})
    b_conf = psk_config("ba", B_IP, A_IP, **b_kw)
    a = Node(
        "A",
        A_IP,
        IkeService(
            ServiceSettings(
                connections=(a_conf,),
                local_address=A_IP,
                rng=rng(seed),
                **(a_settings or {}),
            )
        ),
    )
    b = Node(
        "B",
        B_IP,
        IkeService(
            ServiceSettings(
                connections=(b_conf,),
                local_address=B_IP,
                rng=rng(seed + 1000),
                **(b_settings or {}),
            )
        ),
    )
    return Net(a, b), a, b
