"""What happened to one packet: delivered, absorbed, or dropped with a reason.

Every ``protect``/``unprotect`` returns one of these as the first element of its result. Drop
reasons are the auditable events of RFC 4301 §5.2 (and §5.1 for the outbound side); each is
counted per SA and globally, indexed by the verdict's integer value.
"""

from __future__ import annotations

from enum import IntEnum


class Verdict(IntEnum):
    """Outcome of processing one packet (values are stable: counters are indexed by them)."""

    DELIVERED = 0
    """protect: the datagram is ready to send. unprotect: the inner packet is ready to deliver."""

    # Absorbed: not errors, counted but not audited.
    DUMMY = 1
    """A dummy packet (Next Header 59, RFC 4303 §2.6), discarded silently after verification."""
    NAT_KEEPALIVE = 2
    """A NAT-keepalive (a single 0xFF octet on the ESP-in-UDP port, RFC 3948 §2.3)."""
    IKE = 3
    """A datagram on the ESP-in-UDP port starting with the non-ESP marker (RFC 3948 §2.2): the
    data returned is the IKE message with the marker removed, for the IKE service."""

    # Drops (RFC 4301 §5.2 "auditable event").
    NO_SA = 10
    """No SA: unknown SPI inbound (RFC 4303 §3.4.2), no outbound SA for the packet."""
    REPLAY = 11
    """A sequence number already received inside the window (RFC 4303 §3.4.3)."""
    OUTSIDE_WINDOW = 12
    """A sequence number left of the window (RFC 4303 §3.4.3, Appendix A)."""
    INTEGRITY = 13
    """ICV verification failed (RFC 4303 §3.4.4, RFC 4302 §3.4.4)."""
    DECRYPTION = 14
    """The ciphertext could not be decrypted (length not a multiple of the block size)."""
    BAD_PADDING = 15
    """Pad Length beyond the payload, or padding octets not 1, 2, 3, ... (RFC 4303 §2.4)."""
    RUNT = 16
    """Too short to hold the headers, IV and ICV the SA needs."""
    SELECTOR_MISMATCH = 17
    """The decapsulated packet is outside the SA's traffic selectors (RFC 4301 §5.2 step 4)."""
    LIFETIME_EXPIRED = 18
    """The SA reached a hard lifetime (RFC 4301 §4.4.2.1)."""
    SEQUENCE_EXHAUSTED = 19
    """Sending would cycle the sequence number (RFC 4303 §3.3.3)."""
    MALFORMED = 20
    """A header that does not parse: IP header, AH length, inner packet, Next Header."""
    FRAGMENT = 21
    """ESP or AH on an IP fragment: reassembly must happen first (RFC 4303 §3.4.1)."""
    ECN = 22
    """Outer CE on a Not-ECT inner packet (RFC 6040 §4.2: the packet is dropped)."""
    NOT_IPSEC = 23
    """unprotect was given a packet that is neither ESP, AH nor ESP-in-UDP on our port."""

    @property
    def is_drop(self) -> bool:
        return self >= Verdict.NO_SA


VERDICT_COUNT = max(Verdict) + 1
"""Length of a counter list indexed by ``Verdict``."""
