"""IKEv1: ISAKMP (RFC 2408) with Oakley key determination (RFC 2409) as sans-I/O state machines.

Quick reference (same shape as the IKEv2 service; everything takes ``now``)::

    from reference_impl.isakmp import (IsakmpService, IsakmpSettings, ConnectionConfig,
        ChildConfig, PskAuth, RsaAuth, Identity, Phase1Transform, Phase2Transform)

    svc = IsakmpService(IsakmpSettings(connections=(conn,)))
    svc.initiate("conn-name", now, child="c", acquire_id=7)     # Main/Aggressive + Quick Mode
    svc.receive_datagram(data, peer_addr, now, local=(ip, 500 or 4500))   # marker stripped
    svc.handle_timer(now)                                         # at svc.get_timer()
    for d in svc.datagrams_to_send(now): ...  # d.src (local ip, port), d.dst, d.marker
    while (ev := svc.next_event()) is not None: ...   # reference_impl.events, ike_version=1

Modules: ``codec`` (every RFC 2408 §3 payload, NAT-D/NAT-OA), ``constants`` (IANA numbers not
already in ``reference_impl.crypto.ids``), ``proposals`` (Oakley and IPsec DOI attributes,
mapped to the registry's IKEv2 transform IDs), ``identity`` (ID payloads as identities and
traffic selectors), ``auth`` (certificates and IKEv1 RSA signatures), ``settings``,
``service`` (the exchanges).
"""

from reference_impl.isakmp.identity import Identity
from reference_impl.isakmp.proposals import Phase1Transform, Phase2Transform
from reference_impl.isakmp.service import Datagram, IsakmpService, Phase1State
from reference_impl.isakmp.settings import (
    ChildConfig,
    ConnectionConfig,
    IsakmpSettings,
    PskAuth,
    RsaAuth,
)

__all__ = [
    "ChildConfig",
    "ConnectionConfig",
    "Datagram",
    "Identity",
    "IsakmpService",
    "IsakmpSettings",
    "Phase1State",
    "Phase1Transform",
    "Phase2Transform",
    "PskAuth",
    "RsaAuth",
]
