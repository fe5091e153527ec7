"""The IPsec driver: SAD, ESP (RFC 4303) and AH (RFC 4302), anti-replay with ESN, tunnel and
transport mode over IPv4 and IPv6, UDP encapsulation (RFC 3948), lifetimes — sans-I/O.

Quick reference (everything takes ``now``, seconds on any clock; nothing reads a clock)::

    from reference_impl.driver import Sad, Verdict

    sad = Sad()                                     # audit_limit=4096, udp_encap_ports=(4500,)
    sa_in, sa_out = sad.install_pair(pair, now)     # a ChildSaPair from IKE
    # or one direction: sad.install(params, inbound=True, now=now, options=SaOptions(...))

    verdict, datagram = sa_out.protect(packet, now)          # by handle: the fast way
    verdict, datagram = sad.protect(packet, now)             # by selectors (newest SA first)
    verdict, data, sa = sad.unprotect(datagram, now)         # ESP, AH or UDP/4500

    sad.next_event()          # SaExpired(protocol, spi, inbound, hard, kind, time) or None
    sad.get_timer()           # next lifetime deadline, then sad.handle_timer(now)
    sad.drops, sad.audit      # global counters by Verdict; bounded audit log (PacketDropped)
    sa.drops, sa.packets, sa.octets, sa.expired, sa.soft_expired     # per SA

Packets are whole IP datagrams both ways: ``protect`` takes the packet to protect (the inner
packet in tunnel mode) and returns the datagram to send (outer header, UDP header when
encapsulated: ``OutboundSa.outer_header_length`` finds the ESP for a UDP socket);
``unprotect`` takes what arrived (as a raw socket delivers it) and returns the inner packet.

Verdicts (``Verdict``): ``DELIVERED``; absorbed ``DUMMY`` (Next Header 59), ``NAT_KEEPALIVE``,
``IKE`` (non-ESP marker: ``data`` is the IKE message for the IKE service); drops ``NO_SA``,
``REPLAY``, ``OUTSIDE_WINDOW``, ``INTEGRITY``, ``DECRYPTION``, ``BAD_PADDING``, ``RUNT``,
``SELECTOR_MISMATCH``, ``LIFETIME_EXPIRED``, ``SEQUENCE_EXHAUSTED``, ``MALFORMED``,
``FRAGMENT``, ``ECN``, ``NOT_IPSEC``. Every verdict other than ``DELIVERED`` is counted per SA
(when there is one) and globally; drops also append an audit record.

SAD lookups (for the policy agent and IKE):

* ``sad.inbound(protocol, spi)`` -> the inbound SA (RFC 4301 §4.1: SPI + protocol);
* ``sad.outbound(protocol, spi, dst=None)`` -> an outbound SA by the SPI the peer chose;
* ``sad.outbound_for(packet)`` -> the newest live outbound SA whose selectors cover the
  packet (linear scan; cache the handle per flow);
* ``sad.remove(sa)``, ``sad.remove_inbound(protocol, spi)``, ``sad.remove_outbound(...)``.

Rekeying: install the new pair, keep the old one until IKE deletes it; both inbound SAs
accept packets meanwhile (RFC 7296 §2.8) and ``outbound_for`` prefers the new outbound SA.

Lifetimes (``ChildSaParams.lifetime``): soft raises one ``SaExpired(hard=False)`` (rekey);
hard raises ``SaExpired(hard=True)`` and the SA then drops everything until removed. The
outbound sequence number raises a soft ``SEQUENCE`` event ``SaOptions.seq_rekey_margin``
numbers before it would cycle and expires after the last one (RFC 4303 §3.3.3).

Drops are audited in ``sad.audit`` (bounded; RFC 4301 §5.2 fields: time, SPI, addresses,
protocol, sequence number), not in the event queue.

``HoldQueue`` is the bounded packet queue the policy agent uses while an SA is negotiated.

Performance. Outbound SAs have a specialised ``protect`` for AEAD transforms with a 16-octet
ICV (AES-GCM-16, AES-CCM-16, ChaCha20-Poly1305) without ESN or UDP encapsulation over IPv4:
tunnel mode with default ``SaOptions``, and transport mode. ``unprotect`` has the matching
inbound fast path (IPv4 outer header without options, prefix selectors, replay window on).
Everything else takes the general path, which makes the same decisions (tests compare the
two octet for octet). Crypto state is prepared lazily on an SA's first packet: a prepared
AES-GCM context costs about 2.5 KB, an installed SA about 0.7 KB (plus its ChildSaParams),
so 100,000 installed SAs fit in well under 200 MB (``bench/sad_memory.py``).
"""

from reference_impl.driver.ah import AhInbound, AhOutbound
from reference_impl.driver.base import SaOptions, SecurityAssociation
from reference_impl.driver.esp import EspInbound, EspOutbound, OutboundSa
from reference_impl.driver.events import DriverEvent, LifetimeKind, PacketDropped, SaExpired
from reference_impl.driver.holdqueue import HoldPolicy, HoldQueue
from reference_impl.driver.replay import ReplayWindow
from reference_impl.driver.sad import (
    InboundSa,
    ProtectResult,
    Sad,
    SecurityAssociationDatabase,
    UnprotectResult,
    nat_keepalive,
)
from reference_impl.driver.verdict import Verdict

__all__ = [
    "AhInbound",
    "AhOutbound",
    "DriverEvent",
    "EspInbound",
    "EspOutbound",
    "HoldPolicy",
    "HoldQueue",
    "InboundSa",
    "LifetimeKind",
    "OutboundSa",
    "PacketDropped",
    "ProtectResult",
    "ReplayWindow",
    "SaExpired",
    "SaOptions",
    "Sad",
    "SecurityAssociation",
    "SecurityAssociationDatabase",
    "UnprotectResult",
    "Verdict",
    "nat_keepalive",
]
