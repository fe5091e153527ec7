"""IKEv2 (RFC 7296) as a sans-I/O state machine: codec, IKE SAs and the service owning them.

Public API (aioquic style; see ``service.IkeService`` for the calling sequence)::

    svc = IkeService(ServiceSettings(connections=(PeerConfig(...),), local_address="192.0.2.1"))
    ike_sa_id = svc.initiate("conn", now, acquire_id=7)
    svc.receive_datagram(data, ("192.0.2.2", 500), now, local=("192.0.2.1", 500))
    svc.handle_timer(now)                      # at svc.get_timer()
    for d in svc.datagrams_to_send(now): ...   # Datagram(data, src, dst, marker)
    while (ev := svc.next_event()) is not None: ...   # reference_impl.events

Modules: ``enums`` (IANA numbers), ``payloads``/``messages`` (codec), ``protection`` (SK and
SKF payloads), ``proposals`` (selection, selector narrowing), ``auth``/``certs`` (AUTH and
X.509), ``config`` (settings), ``ike_sa`` (one IKE SA), ``service`` (many of them).
"""

from reference_impl.ike.config import (
    AuthClass,
    ChildConfig,
    Identity,
    LocalAuth,
    PeerConfig,
    ProposalConfig,
    RemoteAuth,
    ServiceSettings,
    esp_proposals,
    ike_proposals,
)
from reference_impl.ike.service import IkeService
from reference_impl.ike.types import Datagram

__all__ = [
    "AuthClass",
    "ChildConfig",
    "Datagram",
    "Identity",
    "IkeService",
    "LocalAuth",
    "PeerConfig",
    "ProposalConfig",
    "RemoteAuth",
    "ServiceSettings",
    "esp_proposals",
    "ike_proposals",
]
