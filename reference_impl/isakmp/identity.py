"""Identification payloads (RFC 2407 §4.6.2): phase-1 identities and Quick Mode client IDs.

Phase 1 carries who we are (IDii/IDir, RFC 2409 §5); Quick Mode carries the traffic the SA
protects (IDci/IDcr, RFC 2409 §5.5), which maps onto :class:`~reference_impl.sa.TrafficSelector`
so the driver sees the same selectors as from IKEv2.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from reference_impl.isakmp.codec import IdPayload
from reference_impl.isakmp.constants import IdType, NotifyType
from reference_impl.sa import IPAddress, TrafficSelector


@dataclass(frozen=True, slots=True)
class Identity:
    """A phase-1 identity: an ID type and its data (RFC 2407 §4.6.2.1)."""

    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan-like notation: an IP address, ``user@fqdn``, ``fqdn``, ``keyid:...``,
        or an X.500 DN with ``=`` (``CN=moon, O=org``), the latter DER-encoded."""
        if text.startswith("keyid:"):
            return cls(IdType.ID_KEY_ID, text[6:].encode())
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            t = IdType.ID_IPV4_ADDR if ip.version == 4 else IdType.ID_IPV6_ADDR
            return cls(t, ip.packed)
        if "=" in text:
            from cryptography import x509

            try:
                name = x509.Name.from_rfc4514_string(text)
            except ValueError as e:
                raise LocalProtocolError(f"bad distinguished name {text!r}: {e}") from None
            return cls(IdType.ID_DER_ASN1_DN, name.public_bytes())
        if "@" in text:
            return cls(IdType.ID_USER_FQDN, text.encode())
        return cls(IdType.ID_FQDN, text.encode())

    @classmethod
    def from_payload(cls, p: IdPayload) -> Identity:
        return cls(p.id_type, p.data)

    def to_payload(self) -> IdPayload:
        # strongSwan sends protocol 0 and port 0; RFC 2407 §4.6.2 allows it (500/17 too).
        return IdPayload(self.id_type, self.data)

    def __str__(self) -> str:
        t = self.id_type
        try:
            if t in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
                return str(ipaddress.ip_address(self.data))
            if t in (IdType.ID_FQDN, IdType.ID_USER_FQDN):
                return self.data.decode("ascii", "replace")
            if t == IdType.ID_KEY_ID:
                return "keyid:" + self.data.decode("ascii", "replace")
        except (ValueError, UnicodeError):
            pass
        return f"{t}:{self.data.hex()}"


def _addr(data: bytes, version: int) -> IPAddress:
    n = 4 if version == 4 else 16
    if len(data) != n:
        raise RemoteProtocolError(
            f"ID data of {len(data)} octets for an IPv{version} address",
            notify=NotifyType.INVALID_ID_INFORMATION,
        )
    return ipaddress.IPv4Address(data) if version == 4 else ipaddress.IPv6Address(data)


def selector_from_id(p: IdPayload) -> TrafficSelector:
    """IDci/IDcr (RFC 2407 §4.6.2) to a selector. Port 0 means any port."""
    t = p.id_type
    d = p.data
    if t in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        a = _addr(d, 4 if t == IdType.ID_IPV4_ADDR else 6)
        start, end = a, a
    elif t in (IdType.ID_IPV4_ADDR_SUBNET, IdType.ID_IPV6_ADDR_SUBNET):
        v = 4 if t == IdType.ID_IPV4_ADDR_SUBNET else 6
        half = len(d) // 2
        if len(d) % 2:
            raise RemoteProtocolError("odd subnet ID", notify=NotifyType.INVALID_ID_INFORMATION)
        net_a, mask = _addr(d[:half], v), _addr(d[half:], v)
        bits = 32 if v == 4 else 128
        m = int(mask)
        prefix = bits - (((~m) & ((1 << bits) - 1)).bit_length())
        if m != ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1):
            raise RemoteProtocolError(
                "non-contiguous subnet mask", notify=NotifyType.INVALID_ID_INFORMATION
            )
        net = ipaddress.ip_network(f"{net_a}/{prefix}", strict=False)
        start, end = net.network_address, net.broadcast_address
    elif t in (IdType.ID_IPV4_ADDR_RANGE, IdType.ID_IPV6_ADDR_RANGE):
        v = 4 if t == IdType.ID_IPV4_ADDR_RANGE else 6
        half = len(d) // 2
        if len(d) % 2:
            raise RemoteProtocolError("odd range ID", notify=NotifyType.INVALID_ID_INFORMATION)
        start, end = _addr(d[:half], v), _addr(d[half:], v)
        if start > end:  # type: ignore[operator]
            raise RemoteProtocolError("inverted range", notify=NotifyType.INVALID_ID_INFORMATION)
    else:
        raise RemoteProtocolError(
            f"ID type {t} is not a traffic selector", notify=NotifyType.INVALID_ID_INFORMATION
        )
    if p.port:
        return TrafficSelector(start, end, p.protocol_id, p.port, p.port)
    return TrafficSelector(start, end, p.protocol_id)


def id_from_selector(ts: TrafficSelector) -> IdPayload:
    """A selector as IDci/IDcr: a host as ID_IPVx_ADDR, a prefix as a subnet, else a range
    (strongSwan's choice). IKEv1 carries one port or all ports."""
    if (ts.start_port, ts.end_port) == (0, 65535):
        port = 0
    elif ts.start_port == ts.end_port:
        port = ts.start_port
    else:
        raise LocalProtocolError(f"IKEv1 cannot express the port range of {ts}")
    v4 = ts.start_addr.version == 4
    if ts.start_addr == ts.end_addr:
        t = IdType.ID_IPV4_ADDR if v4 else IdType.ID_IPV6_ADDR
        return IdPayload(t, ts.start_addr.packed, ts.ip_protocol, port)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(
        ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)
    )
    if len(nets) == 1:
        net = nets[0]
        t = IdType.ID_IPV4_ADDR_SUBNET if v4 else IdType.ID_IPV6_ADDR_SUBNET
        return IdPayload(t, net.network_address.packed + net.netmask.packed, ts.ip_protocol, port)
    t = IdType.ID_IPV4_ADDR_RANGE if v4 else IdType.ID_IPV6_ADDR_RANGE
    return IdPayload(t, ts.start_addr.packed + ts.end_addr.packed, ts.ip_protocol, port)


def host_selector(address: str) -> TrafficSelector:
    """The selector for one host (the implied IDci/IDcr when Quick Mode carries none)."""
    a = ipaddress.ip_address(address)
    return TrafficSelector(a, a)
