"""Peers: the IPsec implementations the harness drives, from one neutral scenario.

:mod:`harness.peers.base` has the scenario, the capability manifest and the :class:`Peer`
interface; :mod:`harness.peers.registry` finds adapters by name (``reference``,
``strongswan``, ``libreswan``, ``external``).
"""

from harness.peers.base import (
    FAST_RETRANSMIT,
    Capabilities,
    ChildSaKeys,
    ChildSaState,
    Dpd,
    Endpoint,
    IkeSaKeys,
    IkeSaState,
    Lifetimes,
    NotApplicable,
    Peer,
    PeerError,
    Proposal,
    Retransmit,
    SaKeys,
    Scenario,
)
from harness.peers.registry import ADAPTERS, describe_peers, peer_class

__all__ = [
    "ADAPTERS",
    "FAST_RETRANSMIT",
    "Capabilities",
    "ChildSaKeys",
    "ChildSaState",
    "Dpd",
    "Endpoint",
    "IkeSaKeys",
    "IkeSaState",
    "Lifetimes",
    "NotApplicable",
    "Peer",
    "PeerError",
    "Proposal",
    "Retransmit",
    "SaKeys",
    "Scenario",
    "describe_peers",
    "peer_class",
]
