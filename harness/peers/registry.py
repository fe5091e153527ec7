"""Peer adapters by name, imported only when used.

The ``reference`` adapter (our own node, through its control API) is written by the node
engineer in ``harness/peers/reference.py`` as ``ReferencePeer(Peer)``; until that module exists
it is listed as not available.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from harness.peers.base import Availability, Capabilities, Peer

ADAPTERS: dict[str, str] = {
    "reference": "harness.peers.reference:ReferencePeer",
    "strongswan": "harness.peers.strongswan:StrongSwanPeer",
    "libreswan": "harness.peers.libreswan:LibreswanPeer",
    "external": "harness.peers.external:ExternalPeer",
}


class AdapterMissing(LookupError):
    """The adapter's module is not built yet."""


def peer_class(kind: str) -> type[Peer]:
    try:
        target = ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown peer {kind!r}; peers are {sorted(ADAPTERS)}") from None
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise AdapterMissing(f"the {kind} adapter is not built yet ({module})") from None
        raise
    cls: type[Peer] = getattr(mod, attr)
    return cls


@dataclass(frozen=True)
class PeerReport:
    """One line of ``ipsec-interop peers``."""

    kind: str
    availability: Availability
    capabilities: Capabilities | None

    def to_json(self) -> dict[str, object]:
        return {
            "peer": self.kind,
            "available": self.availability.available,
            "detail": self.availability.detail,
            "capabilities": self.capabilities.to_json() if self.capabilities else None,
        }


def describe_peers() -> list[PeerReport]:
    """Every adapter with its availability and capability manifest on this host."""
    reports = []
    for kind in ADAPTERS:
        try:
            cls = peer_class(kind)
        except AdapterMissing as exc:
            reports.append(PeerReport(kind, Availability(False, str(exc)), None))
            continue
        try:
            avail = cls.availability()
            caps = cls.capabilities()
        except Exception as exc:  # a broken probe must not hide the other peers
            reports.append(PeerReport(kind, Availability(False, f"probe error: {exc}"), None))
            continue
        reports.append(PeerReport(kind, avail, caps))
    return reports
