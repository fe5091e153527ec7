"""What the ikev2-negotiation and ikev2-auth suites share: a scripted IKEv2 peer on the tester's
side (catalogue §12.2, §12.3), a small PKI, and the observation helpers.

The scripted peer is built from our own IKEv2 codec and crypto (``reference_impl.ike``:
messages, payloads, SK protection, the AUTH computations; ``reference_impl.crypto``), so every
message is chosen octet by octet: proposals with unknown transforms or attributes, a KE for
another group, forged NAT-D hashes, cookies, a MITM-modified first message, an AUTH made with
the wrong key or a chosen signature scheme, chosen identities and certificates.

Two directions, one :class:`HarnessSa` (the harness end of an IKE SA: nonces, keys, SK
protection, AUTH octets):

* the peer under test (PUT) **responds**: :class:`Initiator` sends from a UDP socket of its own
  on the tester's address (created in the tester's network namespace on ``netns``; any source
  port, RFC 7296 §2.23) and reads the PUT's answers on that socket (:class:`SocketWire`);
* the PUT **initiates** towards the tester: the tester's reference node is told to ignore IKE
  (the ``silent_ike_port`` misbehaviour with the value ``all``: UDP 500 and IKE on 4500 are
  not processed but logged as ``ike_ignored`` events, the harness's received-datagram log), and
  :class:`Responder` answers from the tester's address (:class:`TapWire`: a raw socket with the
  tester's own ports on ``netns``; a socket of its own on ``local``, where the reference node
  accepts answers from any port). :class:`PutInitiation` starts the PUT's attempt without
  waiting for it and aborts it afterwards.

On the ``local`` topology the nodes share one host and the reference node maps its ports to
the logical 500/4500 (``reference_impl.node.host.PortMap``): NAT-D hashes are computed with
the logical ports there, as the PUT itself does.

Certificates come from :func:`suite_pki`: a root CA and an intermediate (P-256), RSA 2048 and
ECDSA P-256 end entities for both nodes, one issued by the intermediate, an expired one, a
self-signed one and one whose subjectAltName names another identity.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from harness.peers import algorithms
from harness.peers.base import NotApplicable, Peer, PeerError, Proposal, Scenario
from harness.report.model import EvidenceKind
from reference_impl.crypto import dh, encr, ikev2_ike_keys, ikev2_skeyseed, integ, prf
from reference_impl.driver.packet import checksum
from reference_impl.ike import payloads as v2p
from reference_impl.ike.auth import algorithm_identifier, psk_auth, signed_octets, verify_signature
from reference_impl.ike.certs import cert_der, certreq_authorities
from reference_impl.ike.enums import (
    AuthMethod,
    CertEncoding,
    ExchangeType,
    HashAlgorithm,
    IdType,
    NotifyType,
    PayloadType,
)
from reference_impl.ike.messages import HEADER_LEN, NON_ESP_MARKER, Message, decode_message
from reference_impl.ike.proposals import Selected
from reference_impl.ike.protection import SkProtection
from reference_impl.ike.types import natd_hash as natd_hash
from reference_impl.sa import TrafficSelector

if TYPE_CHECKING:
    from harness.cases import Level
    from harness.lab import CaseContext

PUT = "put"
TESTER = "tester"
IKE_PORT = 500
NATT_PORT = 4500
ZERO_SPI = bytes(8)
N = NotifyType
X = ExchangeType
IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
IKE_AUTH = int(ExchangeType.IKE_AUTH)
CREATE_CHILD_SA = int(ExchangeType.CREATE_CHILD_SA)
INFORMATIONAL = int(ExchangeType.INFORMATIONAL)
HASHES_ALL = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)
SCRIPTED_KINDS = ("reference", "strongswan")
"""Peers the harness can make initiate without waiting (:class:`PutInitiation`)."""


# --- grading and evidence ---


def grade(ctx: CaseContext, level: Level, reason: str) -> None:
    """A sub-requirement of another level than the case's was not met (the SHOULD/MAY part of
    a "MUST / SHOULD" row): fail, warning (fail with ``--strict``) or recorded, by ``level``."""
    rec = ctx.recording
    if rec is None:
        raise AssertionError(reason)
    prefix = f"[{level.value}] " if level.is_mandatory or level.value.startswith("SHOULD") else ""
    rec.not_met(prefix + reason, level=level)


def note(ctx: CaseContext, name: str, text: str) -> None:
    """Small text evidence (what was sent and seen)."""
    if ctx.recording is not None:
        ctx.recording.attach_text(name, text, EvidenceKind.ORACLE, filename=f"{name}.txt")


def recorded(ctx: CaseContext, finding: str) -> None:
    """An observation that is neither pass nor fail (a MAY, a "record" case)."""
    if ctx.recording is not None:
        ctx.recording.recorded(finding)


def known(ctx: CaseContext, anchors: dict[str, str]) -> None:
    """Mark the outcome as explained in ``suites/KNOWN_PEER_BEHAVIOUR.md`` when this peer has
    an anchor for it (``{peer kind: anchor}``)."""
    anchor = anchors.get(ctx.peer_name)
    if anchor and ctx.recording is not None:
        ctx.recording.known_behaviour(anchor)


# --- topology ---


def node_real_port(node: Any, port: int) -> int:
    """The host port standing for a node's logical ``port`` (``local`` remaps 500/4500)."""
    real = getattr(node, "real_port", None)
    return int(real(port)) if callable(real) else port


def node_logical_port(node: Any, port: int) -> int:
    """The logical port (500/4500) of one of a node's real ports, else the port itself."""
    if port == node.addresses.ike_port:
        return IKE_PORT
    if port == node.addresses.natt_port:
        return NATT_PORT
    return port


def require_scriptable(ctx: CaseContext) -> None:
    """The scripted peer needs sockets on the tester's address: ``local``, ``netns`` or
    ``host`` (an external device)."""
    backend = ctx.topology.backend
    if backend not in ("local", "netns", "host", "docker"):
        raise NotApplicable(
            [f"topology {backend}: the scripted IKE peer runs on the local, netns, docker and "
             "host topologies"]
        )  # fmt: skip
    if backend == "docker":
        from harness.topology.base import Unsupported

        try:
            ctx.topology.node("tester").netns_path()
        except Unsupported as exc:
            raise NotApplicable([f"topology docker: {exc}"]) from None


def require_put_initiation(ctx: CaseContext) -> None:
    if ctx.peer_name not in SCRIPTED_KINDS:
        raise NotApplicable(
            [
                f"{ctx.peer_name}: the harness cannot start an initiation on it without waiting "
                "for its outcome (reference and strongswan only)"
            ]
        )


_CLONE_NEWNET = 0x40000000


def in_netns(netns: str | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the network namespace ``netns`` (``None``: this one). Sockets created
    there stay in that namespace (setns(2) in a helper thread; the process keeps its own)."""
    if netns is None:
        return fn()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            path = netns if netns.startswith("/") else f"/run/netns/{netns}"
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
                out["value"] = fn()
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{netns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _netns_of(node: Any) -> str | None:
    """Where to open sockets for ``node``: its namespace's path, or None (ours)."""
    path = getattr(node, "netns_path", None)
    return path() if callable(path) else None


# --- PKI ---


@dataclass(frozen=True)
class Cred:
    """A certificate (with the chain sent after it) and its private key, as objects and files.
    ``path`` holds the end-entity certificate then the chain (PEM), ``key_path`` the key."""

    name: str
    cert: x509.Certificate
    key: Any
    chain: tuple[x509.Certificate, ...]
    path: Path
    key_path: Path
    ee_path: Path
    """The end-entity certificate alone (PEM)."""

    @property
    def certs(self) -> tuple[x509.Certificate, ...]:
        return (self.cert, *self.chain)


@dataclass(frozen=True)
class TestPki:
    """The suites' PKI: ``ca`` (trusted by both ends), ``creds`` by name (see :func:`suite_pki`)."""

    ca: x509.Certificate
    ca_path: Path
    intermediate: x509.Certificate
    intermediate_path: Path
    creds: dict[str, Cred]

    def scenario(
        self, base: Scenario, put: str = "put-rsa", tester: str = "tester-rsa"
    ) -> Scenario:
        """``base`` with certificate authentication: the PUT's and the tester's credentials."""
        eps = []
        for e in base.endpoints:
            c = self.creds[put if e.node == PUT else tester]
            eps.append(replace(e, cert=c.path, key=c.key_path))
        return replace(base, endpoints=(eps[0], eps[1]), auth="pubkey", ca_cert=self.ca_path)


_PKI: dict[tuple[str, str, str], TestPki] = {}


def _new_key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _alt(identity: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity.lstrip("@"))


def _cert(
    subject: str,
    key: Any,
    issuer: x509.Name | None,
    issuer_key: Any,
    *,
    ca: bool = False,
    alt: str | None = None,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    if alt is not None:
        b = b.add_extension(x509.SubjectAlternativeName([_alt(alt)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def suite_pki(ctx: CaseContext) -> TestPki:
    """The PKI for this topology (made once per worker, in the topology's scratch directory).

    Credentials: ``put-rsa``/``tester-rsa`` (RSA 2048) and ``put-ecdsa``/``tester-ecdsa``
    (P-256), identity = the node's address in subjectAltName; ``put-chain`` (RSA, ``put-rsa``'s
    key, issued by the intermediate CA, sent with it); ``tester-expired`` (validity ended
    yesterday), ``tester-selfsigned`` (not issued by the CA) and ``tester-peer-example`` (SAN
    ``peer.example``), all for the tester, each with a P-256 key of its own.
    """
    topo = ctx.topology
    put_addr, tester_addr = topo.node(PUT).addresses.v4, topo.node(TESTER).addresses.v4
    key = (str(topo.workdir), put_addr, tester_addr)
    hit = _PKI.get(key)
    if hit is None:
        hit = _PKI[key] = make_pki(topo.workdir / "ike-pki", put_addr, tester_addr)
    return hit


def make_pki(d: Path, put_addr: str, tester_addr: str) -> TestPki:
    """Write the suites' PKI under ``d`` (see :func:`suite_pki`)."""
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = _new_key("ecdsa")  # P-256 CAs: quick to make; RSA 2048 only where a case needs it
    ca = _cert("ipsec-interop IKE suites CA", ca_key, None, ca_key, ca=True, start=start, end=end)
    im_key = _new_key("ecdsa")
    im = _cert(
        "ipsec-interop IKE suites intermediate",
        im_key,
        ca.subject,
        ca_key,
        ca=True,
        start=start,
        end=end,
    )
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "intermediate.pem").write_bytes(_pem(im))
    creds: dict[str, Cred] = {}

    def make(
        name: str,
        kind: str,
        identity: str,
        *,
        issuer: tuple[x509.Certificate, Any] | None = (ca, ca_key),
        chain: tuple[x509.Certificate, ...] = (),
        expired: bool = False,
        key: Any = None,
    ) -> None:
        k = key or _new_key(kind)
        s, e = (
            (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
            if expired
            else (start, end)
        )
        if issuer is None:
            c = _cert(identity, k, None, k, alt=identity, start=s, end=e)
        else:
            c = _cert(identity, k, issuer[0].subject, issuer[1], alt=identity, start=s, end=e)
        path, ee, kp = d / f"{name}.pem", d / f"{name}-ee.pem", d / f"{name}.key"
        path.write_bytes(_pem(c) + b"".join(_pem(x) for x in chain))
        ee.write_bytes(_pem(c))
        kp.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        kp.chmod(0o600)
        creds[name] = Cred(name, c, k, chain, path, kp, ee)

    make("put-rsa", "rsa", put_addr)
    make("tester-rsa", "rsa", tester_addr)
    make("put-ecdsa", "ecdsa", put_addr)
    make("tester-ecdsa", "ecdsa", tester_addr)
    make("put-chain", "rsa", put_addr, issuer=(im, im_key), chain=(im,), key=creds["put-rsa"].key)
    # Keys of their own (P-256: quick): a key some valid certificate already binds to the
    # tester's identity would authenticate it whatever certificate comes with it (charon
    # keeps the certificates it has seen).
    make("tester-expired", "ecdsa", tester_addr, expired=True)
    make("tester-selfsigned", "ecdsa", tester_addr, issuer=None)
    make("tester-peer-example", "ecdsa", "peer.example")
    return TestPki(ca, d / "ca.pem", im, d / "intermediate.pem", creds)


# --- proposals on the wire ---


def transform(name: str) -> v2p.Transform:
    """The transform substructure of a canonical transform name (``AES_CBC_256``)."""
    a = algorithms.get(name)
    ttype = {"encr": 1, "prf": 2, "integ": 3, "dh": 4, "esn": 5}[a.kind]
    key_length = a.key_bits if a.kind == "encr" and a.iana in (12, 13, 18, 19, 20, 16) else None
    return v2p.Transform(ttype, a.iana, key_length)


def ike_offer(proposals: Sequence[Proposal]) -> list[v2p.Proposal]:
    """IKE proposals numbered from 1 (RFC 7296 §3.3.1)."""
    out = []
    for i, p in enumerate(proposals, 1):
        out.append(v2p.Proposal(i, 1, b"", [transform(n) for n in p.transforms()]))
    return out


def esp_offer(proposals: Sequence[Proposal], spi: bytes) -> list[v2p.Proposal]:
    """ESP proposals with our inbound SPI (no PFS group unless given; ESN as proposed)."""
    out = []
    for i, p in enumerate(proposals, 1):
        ts = [transform(n) for n in (*p.encr, *p.integ, *p.groups)]
        ts += [v2p.Transform(5, 1 if esn else 0) for esn in p.esn]
        out.append(v2p.Proposal(i, 3, spi, ts))
    return out


@dataclass(slots=True)
class RawSa(v2p.Payload):
    """An SA payload given as raw octets (proposals the codec would refuse to build)."""

    payload_type = PayloadType.SA
    raw: bytes

    def body(self) -> bytes:
        return self.raw


def raw_transform(ttype: int, tid: int, attrs: bytes = b"", *, last: bool = False) -> bytes:
    """One transform substructure (RFC 7296 §3.3.2) with raw attribute octets."""
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ttype, 0, tid) + attrs


def key_length_attr(bits: int) -> bytes:
    """The Key Length attribute (TV, type 14; RFC 7296 §3.3.5)."""
    return struct.pack("!HH", 0x8000 | 14, bits)


def raw_proposal(num: int, transforms: Sequence[bytes], *, last: bool, protocol: int = 1) -> bytes:
    body = b"".join(transforms)
    return (
        struct.pack(
            "!BBHBBBB", 0 if last else 2, 0, 8 + len(body), num, protocol, 0, len(transforms)
        )
        + body
    )


def selected_of(p: v2p.Proposal) -> Selected:
    """The transforms of a one-proposal answer (first of each type)."""
    first: dict[int, v2p.Transform] = {}
    for t in p.transforms:
        first.setdefault(t.type, t)
    e = first.get(1)
    return Selected(
        p.num,
        p.protocol_id,
        p.spi,
        e.id if e else 0,
        e.key_length if e else None,
        first[3].id if 3 in first else 0,
        first[2].id if 2 in first else 0,
        first[4].id if 4 in first else 0,
        bool(first[5].id) if 5 in first else False,
    )


def choose(p: v2p.Proposal) -> v2p.Proposal:
    """The first transform of each type of ``p`` (a responder's answer to it)."""
    seen: set[int] = set()
    ts = []
    for t in p.transforms:
        if t.type not in seen:
            seen.add(t.type)
            ts.append(v2p.Transform(t.type, t.id, t.key_length))
    return v2p.Proposal(p.num, p.protocol_id, p.spi, ts)


def choose_for_ke(offer: Sequence[v2p.Proposal], group: int) -> v2p.Proposal:
    """The answer a responder gives when it accepts the KE sent: the first proposal offering
    ``group``, first transform of each other type (RFC 7296 §1.2, §3.3.6)."""
    for p in offer:
        if any(t.type == 4 and t.id == group for t in p.transforms):
            mine = choose(p)
            mine.transforms = [
                v2p.Transform(4, group) if t.type == 4 else t for t in mine.transforms
            ]
            return mine
    return choose(offer[0])


def describe_proposal(p: v2p.Proposal) -> str:
    kinds = {1: "ENCR", 2: "PRF", 3: "INTEG", 4: "DH", 5: "ESN"}
    parts = []
    for t in p.transforms:
        kl = f"/{t.key_length}" if t.key_length is not None else ""
        extra = f"+attrs{[a for a, _ in t.unknown_attributes]}" if t.unknown_attributes else ""
        parts.append(f"{kinds.get(t.type, t.type)}:{t.id}{kl}{extra}")
    return f"#{p.num} proto {p.protocol_id} [" + " ".join(parts) + "]"


# --- wires ---


@dataclass(frozen=True)
class Rx:
    """One IKE datagram from the PUT: the message (non-ESP marker removed), where it came from
    (real address and port), the tester's logical port it was sent to, and the marker."""

    data: bytes
    src: tuple[str, int]
    port: int
    marker: bool
    time: float

    @property
    def spi_i(self) -> bytes:
        return self.data[:8]

    @property
    def spi_r(self) -> bytes:
        return self.data[8:16]

    @property
    def exchange(self) -> int:
        return self.data[18] if len(self.data) >= HEADER_LEN else 0

    @property
    def flags(self) -> int:
        return self.data[19] if len(self.data) >= HEADER_LEN else 0

    @property
    def response(self) -> bool:
        return bool(self.flags & 0x20)

    @property
    def message_id(self) -> int:
        return int.from_bytes(self.data[20:24], "big") if len(self.data) >= HEADER_LEN else -1

    def message(self) -> Message:
        return decode_message(self.data)

    def get(self, cls: type[Any]) -> Any:
        """The first payload of ``cls`` of the (cleartext) message, or ``None``."""
        return first(self.message().payloads, cls)


def _summary(data: bytes) -> str:
    try:
        return decode_message(data).summary()
    except Exception as exc:  # evidence only
        return f"<undecodable {len(data)} octets: {exc}>"


class Wire:
    """Datagrams between the tester's address and the PUT (see the module docstring)."""

    def __init__(self, ctx: CaseContext) -> None:
        require_scriptable(ctx)
        self.ctx = ctx
        self.put_node = ctx.topology.node(PUT)
        self.tester_node = ctx.topology.node(TESTER)
        self.put_addr = self.put_node.addresses.v4
        self.tester_addr = self.tester_node.addresses.v4
        self.transcript: list[str] = []
        self.received: list[Rx] = []
        self.t0 = time.monotonic()

    def log(self, line: str) -> None:
        self.transcript.append(f"{time.monotonic() - self.t0:7.3f} {line}")

    def put_real(self, port: int) -> int:
        return node_real_port(self.put_node, port)

    @property
    def local_port(self) -> int:
        """The source port the PUT sees our datagrams come from (as the PUT maps it)."""
        raise NotImplementedError

    def send(self, data: bytes, *, port: int = IKE_PORT, marker: bool = False) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Rx]:
        raise NotImplementedError

    def recv(self, pred: Callable[[Rx], bool], timeout: float) -> Rx | None:
        """The next datagram from the PUT that ``pred`` accepts (others are kept in
        :attr:`received` for the evidence), or ``None`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            for rx in self.poll(max(0.0, min(left, 0.05))):
                self.received.append(rx)
                self.log(
                    f"<- {rx.src[0]}:{rx.src[1]} to :{rx.port}"
                    f"{' +marker' if rx.marker else ''} {_summary(rx.data)}"
                )
                if pred(rx):
                    return rx
            if time.monotonic() >= deadline:
                return None

    def drain(self, seconds: float) -> list[Rx]:
        """Everything that arrives within ``seconds``."""
        before = len(self.received)
        self.recv(lambda rx: False, seconds)
        return self.received[before:]

    def close(self) -> None:
        pass

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _udp_socket(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((addr, port))
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


class SocketWire(Wire):
    """A UDP socket on the tester's address (in its namespace on ``netns``), any port: the
    scripted initiator's. The PUT answers to the port a request came from (RFC 7296 §2.23)."""

    def __init__(self, ctx: CaseContext, port: int = 0) -> None:
        super().__init__(ctx)
        addr = self.tester_addr
        self.sock: socket.socket = in_netns(
            _netns_of(self.tester_node), lambda: _udp_socket(addr, port)
        )
        self._port = int(self.sock.getsockname()[1])

    @property
    def local_port(self) -> int:
        return self._port

    def send(self, data: bytes, *, port: int = IKE_PORT, marker: bool = False) -> None:
        self.log(
            f"-> {self.put_addr}:{port} from :{self._port}{' +marker' if marker else ''} "
            f"{_summary(data)}"
        )
        self.sock.sendto(
            (NON_ESP_MARKER if marker else b"") + data, (self.put_addr, self.put_real(port))
        )

    def poll(self, timeout: float) -> list[Rx]:
        out: list[Rx] = []
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return out
        while True:
            try:
                data, src = self.sock.recvfrom(65535)
            except BlockingIOError:
                return out
            marker = len(data) >= 4 and data[:4] == NON_ESP_MARKER
            if marker:
                data = data[4:]
            out.append(Rx(data, (src[0], src[1]), self._port, marker, time.monotonic()))

    def close(self) -> None:
        self.sock.close()


def udp4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP datagram with checksums (for a raw socket)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = checksum(s + d + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + udp


class TapWire(Wire):
    """The PUT talks to the tester's reference node, which only logs what arrives (the
    ``silent_ike_port`` misbehaviour, value ``all``); the harness answers from the tester's
    address: from the tester's own IKE/NAT-T port through a raw socket on ``netns``, from a
    socket of its own on ``local`` (the reference node takes answers from any port)."""

    def __init__(self, ctx: CaseContext) -> None:
        super().__init__(ctx)
        tester = ctx.tester
        client = getattr(tester, "client", None)
        if client is None:
            raise NotApplicable(["the tester must be the reference node"])
        self.client = client
        self.tester = tester
        self.netns = _netns_of(self.tester_node)
        self.raw: socket.socket | None = None
        self.sock: socket.socket | None = None
        if self.netns is not None:
            self.raw = in_netns(
                self.netns,
                lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
            )
        else:
            self.sock = _udp_socket(self.tester_addr, 0)
        self.since = float(client.clock()["now"])
        self._seen: set[tuple[float, str, str]] = set()
        tester.impair("silent_ike_port", "all")  # type: ignore[attr-defined]
        self.log("tester node: silent_ike_port=all (it logs IKE datagrams, answers none)")

    @property
    def local_port(self) -> int:
        return IKE_PORT

    def send(
        self,
        data: bytes,
        *,
        port: int = IKE_PORT,
        marker: bool = False,
        src_port: int | None = None,
    ) -> None:
        """To the PUT's logical ``port``, from the tester's port of the same kind (500/4500)."""
        sport = src_port if src_port is not None else port
        if self.sock is not None:
            sport = int(self.sock.getsockname()[1])
        payload = (NON_ESP_MARKER if marker else b"") + data
        self.log(
            f"-> {self.put_addr}:{port} from :{sport}{' +marker' if marker else ''} "
            f"{_summary(data)}"
        )
        if self.raw is not None:
            dgram = udp4(self.tester_addr, sport, self.put_addr, self.put_real(port), payload)
            self.raw.sendto(dgram, (self.put_addr, 0))
        else:
            assert self.sock is not None
            self.sock.sendto(payload, (self.put_addr, self.put_real(port)))

    def poll(self, timeout: float) -> list[Rx]:
        out: list[Rx] = []
        if self.sock is not None:
            r, _, _ = select.select([self.sock], [], [], min(timeout, 0.01))
            while r:
                try:
                    data, src = self.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                marker = data[:4] == NON_ESP_MARKER
                out.append(
                    Rx(
                        data[4:] if marker else data,
                        (src[0], src[1]),
                        self.sock.getsockname()[1],
                        marker,
                        time.monotonic(),
                    )
                )
        else:
            time.sleep(min(timeout, 0.01))
        for ev in self.client.events(self.since):
            if ev.get("kind") != "ike_ignored":
                continue
            key = (float(ev["time"]), str(ev.get("src")), str(ev.get("data")))
            if key in self._seen:
                continue
            self._seen.add(key)
            self.since = max(self.since, float(ev["time"]))
            raw = bytes.fromhex(ev["data"])
            port = int(ev.get("port", IKE_PORT))
            marker = port == NATT_PORT and raw[:4] == NON_ESP_MARKER
            host, _, sport = str(ev["src"]).rpartition(":")
            out.append(
                Rx(
                    raw[4:] if marker else raw,
                    (host.strip("[]"), int(sport)),
                    port,
                    marker,
                    time.monotonic(),
                )
            )
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tester.impair("silent_ike_port", False)  # type: ignore[attr-defined]
        for s in (self.raw, self.sock):
            if s is not None:
                s.close()


# --- the harness end of an IKE SA ---


class HarnessSa:
    """Keys and state of the harness's end of one IKE SA (RFC 7296 §2.14, §2.15)."""

    def __init__(self, *, initiator: bool, spi_i: bytes, spi_r: bytes = ZERO_SPI) -> None:
        self.initiator = initiator
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.nonce_i = b""
        self.nonce_r = b""
        self.init_request = b""
        self.init_response = b""
        self.selected: Selected | None = None
        self.prf: Any = None
        self.keys: Any = None
        self.protection: SkProtection | None = None
        self.next_mid = 0
        """Message ID of our next request."""
        self.established = False

    def derive(self, sel: Selected, g_ir: bytes) -> None:
        p = prf(sel.prf_id)
        e = encr(sel.encr_id, sel.encr_bits)
        i = integ(sel.integ_id) if sel.integ_id else None
        seed = ikev2_skeyseed(p, self.nonce_i, self.nonce_r, g_ir)
        self.keys = ikev2_ike_keys(
            p,
            seed,
            self.nonce_i,
            self.nonce_r,
            self.spi_i,
            self.spi_r,
            e.key_len,
            i.key_len if i else 0,
        )
        self.selected = sel
        self.prf = p
        self.protection = SkProtection(e, i, self.keys, self.initiator, os.urandom)

    def seal(
        self, exchange: int, mid: int, payloads: Sequence[v2p.Payload], *, response: bool
    ) -> bytes:
        assert self.protection is not None
        msg = Message(exchange, mid, self.spi_i, self.spi_r, self.initiator, response)
        first, body = v2p.encode_chain(list(payloads))
        return self.protection.seal(msg, first, body)

    def open(self, data: bytes) -> tuple[Message, list[v2p.Payload]]:
        """Decode and decrypt a message of the PUT on this SA."""
        msg = decode_message(data)
        sk = msg.encrypted
        if sk is None:
            return msg, msg.payloads
        if not isinstance(sk, v2p.EncryptedPayload):
            raise AssertionError("the PUT sent IKE fragments (RFC 7383) though we offered none")
        assert self.protection is not None
        inner = self.protection.open(data, sk)
        return msg, v2p.decode_chain(inner, 0, sk.inner_type)

    def octets(self, *, initiator_signs: bool, id_payload: v2p.IdPayload) -> bytes:
        """InitiatorSignedOctets or ResponderSignedOctets (RFC 7296 §2.15)."""
        assert self.keys is not None
        if initiator_signs:
            return signed_octets(
                self.prf, self.init_request, self.nonce_r, self.keys.sk_pi, id_payload
            )
        return signed_octets(
            self.prf, self.init_response, self.nonce_i, self.keys.sk_pr, id_payload
        )


# --- authentication ---

_HASH: dict[str, Any] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class Auth:
    """How the harness authenticates: a PSK (method 2) or a key with certificates.

    ``method``: 1 (RSA PKCS#1 v1.5 with SHA-1), 9 (ECDSA P-256/SHA-256, r|s), 14 (RFC 7427,
    ``scheme`` rsa/pss/ecdsa with ``hash``), or ``None``: 14 when the PUT announced
    SIGNATURE_HASH_ALGORITHMS, else the classic method of the key. ``corrupt`` flips a bit of
    the AUTH data (a wrong AUTH with a valid SK integrity check)."""

    psk: bytes | None = None
    key: Any = None
    certs: tuple[x509.Certificate, ...] = ()
    method: int | None = None
    scheme: str | None = None
    hash: str = "sha256"
    corrupt: bool = False
    send_certs: bool = True

    @classmethod
    def of(cls, cred: Cred, **kw: Any) -> Auth:
        return cls(key=cred.key, certs=cred.certs, **kw)

    def payloads(
        self, octets: bytes, prf_alg: Any, peer_hashes: Sequence[int] | None
    ) -> list[v2p.Payload]:
        """[CERT...] AUTH over ``octets``."""
        out: list[v2p.Payload] = []
        if self.psk is not None:
            data = psk_auth(prf_alg, self.psk, octets)
            method = int(AuthMethod.SHARED_KEY_MIC)
        else:
            method, data = self._sign(octets, peer_hashes)
            if self.send_certs:
                out += [
                    v2p.CertPayload(CertEncoding.X509_CERT_SIGNATURE, cert_der(c))
                    for c in self.certs
                ]
        if self.corrupt:
            data = data[:-1] + bytes((data[-1] ^ 0x01,))
        out.append(v2p.AuthPayload(method, data))
        return out

    def _sign(self, octets: bytes, peer_hashes: Sequence[int] | None) -> tuple[int, bytes]:
        key = self.key
        method = self.method
        if method is None:
            if peer_hashes:
                method = AuthMethod.DIGITAL_SIGNATURE
            elif isinstance(key, rsa.RSAPrivateKey):
                method = AuthMethod.RSA_DIGITAL_SIGNATURE
            else:
                method = AuthMethod.ECDSA_SHA256_P256
        if method == AuthMethod.RSA_DIGITAL_SIGNATURE:
            return int(method), key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
        if method == AuthMethod.ECDSA_SHA256_P256:
            r, s = utils.decode_dss_signature(key.sign(octets, ec.ECDSA(hashes.SHA256())))
            return int(method), r.to_bytes(32, "big") + s.to_bytes(32, "big")
        scheme = self.scheme or ("ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa")
        h = _HASH[self.hash]()
        alg = algorithm_identifier(scheme, self.hash)
        if scheme == "ecdsa":
            sig = key.sign(octets, ec.ECDSA(h))
        elif scheme == "pss":
            sig = key.sign(octets, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        else:
            sig = key.sign(octets, padding.PKCS1v15(), h)
        return int(AuthMethod.DIGITAL_SIGNATURE), bytes((len(alg),)) + alg + sig


def check_auth(
    sa: HarnessSa,
    id_payload: v2p.IdPayload,
    auth: v2p.AuthPayload,
    *,
    initiator_signs: bool,
    psk: bytes | None = None,
    public_key: Any = None,
) -> tuple[bool, str]:
    """Recompute/verify the PUT's AUTH (RFC 7296 §2.15; RFC 7427 §3): (ok, what was checked)."""
    octets = sa.octets(initiator_signs=initiator_signs, id_payload=id_payload)
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        if psk is None:
            return False, "PSK AUTH where a signature was expected"
        want = psk_auth(sa.prf, psk, octets)
        return want == auth.data, f"PSK AUTH recomputed: {want.hex()} vs received {auth.data.hex()}"
    if public_key is None:
        return False, f"signature AUTH (method {auth.method}) where a PSK was expected"
    ok = verify_signature(public_key, auth.method, auth.data, octets)
    return ok, f"signature AUTH method {auth.method}, {len(auth.data)} octets: " + (
        "verifies with the certificate's key" if ok else "does NOT verify"
    )


def signature_algorithm(auth: v2p.AuthPayload) -> tuple[str, str] | None:
    """(scheme, hash) named by a method-14 AUTH's AlgorithmIdentifier (RFC 7427 §3)."""
    from reference_impl.ike.auth import parse_algorithm_identifier

    if auth.method != AuthMethod.DIGITAL_SIGNATURE or not auth.data:
        return None
    n = auth.data[0]
    try:
        scheme, h, _salt = parse_algorithm_identifier(auth.data[1 : 1 + n])
    except ValueError as exc:
        return ("unparsable", str(exc))
    return scheme, h


def id_payload(identity: str, cls: type[v2p.IdPayload] = v2p.IdI) -> v2p.IdPayload:
    """The ID payload of an identity in the scenario syntax (IP, ``@fqdn``, ``user@host``,
    ``keyid:hex``)."""
    from reference_impl.ike.config import Identity

    ident = Identity.parse(identity)
    return cls(ident.id_type, ident.data)


def first(payloads: Sequence[v2p.Payload], cls: type[Any]) -> Any:
    for p in payloads:
        if type(p) is cls:
            return p
    return None


def notifies(payloads: Sequence[v2p.Payload]) -> list[v2p.NotifyPayload]:
    return [p for p in payloads if type(p) is v2p.NotifyPayload]


def notify(payloads: Sequence[v2p.Payload], ntype: int) -> v2p.NotifyPayload | None:
    for p in notifies(payloads):
        if p.notify_type == ntype:
            return p
    return None


def payload_names(payloads: Sequence[v2p.Payload]) -> list[str]:
    out = []
    for p in payloads:
        if type(p) is v2p.NotifyPayload:
            try:
                out.append(f"N({NotifyType(p.notify_type).name})")
            except ValueError:
                out.append(f"N({p.notify_type})")
        else:
            t = int(getattr(p, "type", 0) if type(p) is v2p.UnknownPayload else p.payload_type)
            try:
                out.append(PayloadType(t).name)
            except ValueError:
                out.append(str(t))
    return out


def _hash_list(ids: Sequence[int]) -> bytes:
    return b"".join(int(i).to_bytes(2, "big") for i in ids)


def hash_ids(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]


def ts_of(subnets: Sequence[str]) -> list[TrafficSelector]:
    return [TrafficSelector.from_network(s) for s in subnets]


# --- the scripted initiator (the PUT responds) ---


@dataclass
class Reply:
    """The PUT's answer to one of our requests: the datagram and its (decrypted) payloads."""

    rx: Rx | None
    message: Message | None = None
    payloads: list[v2p.Payload] = field(default_factory=list)
    request: bytes = b""

    @property
    def answered(self) -> bool:
        return self.rx is not None

    @property
    def msg(self) -> Message:
        """The answer's message (an AssertionError when there was none)."""
        assert self.message is not None, "the PUT did not answer"
        return self.message

    @property
    def datagram(self) -> Rx:
        assert self.rx is not None, "the PUT did not answer"
        return self.rx

    def notify(self, ntype: int) -> Any:
        """The first Notify of ``ntype`` (a :class:`~v2p.NotifyPayload`), or ``None``."""
        return notify(self.payloads, ntype)

    def get(self, cls: type[Any]) -> Any:
        return first(self.payloads, cls)

    def names(self) -> list[str]:
        return payload_names(self.payloads)

    def describe(self) -> str:
        if self.rx is None:
            return "no answer"
        return f"{' '.join(self.names()) or '(empty)'}"


class Initiator:
    """The harness as IKE initiator towards the PUT (its responder), step by step.

    ``init()`` sends IKE_SA_INIT (following COOKIE and INVALID_KE_PAYLOAD answers unless told
    not to) and derives the keys; ``auth()`` does IKE_AUTH; ``create_child()``
    CREATE_CHILD_SA; ``close()`` deletes an established IKE SA (cleanup)."""

    def __init__(
        self,
        ctx: CaseContext,
        scenario: Scenario,
        *,
        wire: Wire | None = None,
        port: int = 0,
    ) -> None:
        self.ctx = ctx
        self.sc = scenario
        self.wire: Wire = wire or SocketWire(ctx, port)
        self.me = scenario.local(TESTER)
        self.put = scenario.remote(TESTER)
        self.sa: HarnessSa | None = None
        self.rounds: list[tuple[bytes, Reply]] = []
        self.offer: list[v2p.Proposal] = []
        self.peer_hashes: list[int] | None = None
        self.child_spi = os.urandom(4)
        self.half_open = 0
        """IKE SAs left half-open on the PUT (see :func:`flush_half_open`)."""
        self.last_nonce = b""
        self.natt = False
        """IKE moved to the PUT's NAT-T port (``auth(natt=True)``)."""

    # IKE_SA_INIT ---------------------------------------------------------------------------

    def init(
        self,
        *,
        offer: Sequence[v2p.Proposal] | RawSa | None = None,
        group: int | None = None,
        ke_group: int | None = None,
        nonce: bytes | None = None,
        natd: bool = True,
        forge_natd_src: bool = False,
        forge_natd_dst: bool = False,
        extra: Sequence[v2p.Payload] = (),
        hashes: Sequence[int] | None = None,
        cookie: bytes | None = None,
        follow: bool = True,
        tamper: Callable[[bytes], bytes] | None = None,
        spi_i: bytes | None = None,
        timeout: float = 4.0,
    ) -> Reply:
        """Send IKE_SA_INIT; returns the PUT's last answer (``follow``: COOKIE and
        INVALID_KE_PAYLOAD answers are followed, RFC 7296 §2.6, §1.2).

        ``offer``: proposals (default: the scenario's), or a :class:`RawSa`. ``group``: the KE
        group (default: the first group of the first proposal); ``ke_group`` the group
        number written in KE when it must differ from the data's. ``tamper``: what the PUT
        receives instead of our message 1 (AUTH still covers the original, catalogue
        IKEV2-AUTH-005)."""
        spi_i = spi_i or os.urandom(8)
        if offer is None:
            offer = ike_offer(self.sc.ike_proposals)
        sa_payload: v2p.Payload
        if isinstance(offer, RawSa):
            sa_payload = offer
            self.offer = []
        else:
            self.offer = list(offer)
            sa_payload = v2p.SaPayload(list(offer))
            if group is None:
                group = next(t.id for p in self.offer for t in p.transforms if t.type == 4)
        if group is None:
            group = 14
        nonce = nonce or os.urandom(32)
        self.last_nonce = nonce
        reply = Reply(None)
        kex: Any = None
        kex_group = 0
        for _round in range(4):
            if kex is None or kex_group != group:  # a COOKIE retry changes nothing else
                kex, kex_group = dh(group).generate(), group
            payloads: list[v2p.Payload] = []
            if cookie is not None:
                payloads.append(v2p.NotifyPayload(N.COOKIE, cookie))
            payloads += [sa_payload, v2p.KePayload(ke_group or group, kex.public_value)]
            payloads += list(extra)
            payloads.append(v2p.NoncePayload(nonce))
            if natd:
                src = (self.me.address, self.wire.local_port)
                dst = (self.put.address, IKE_PORT)
                hs = natd_hash(spi_i, ZERO_SPI, src)
                hd = natd_hash(spi_i, ZERO_SPI, dst)
                if forge_natd_src:
                    hs = bytes(b ^ 0xFF for b in hs)
                if forge_natd_dst:
                    hd = bytes(b ^ 0xFF for b in hd)
                payloads += [
                    v2p.NotifyPayload(N.NAT_DETECTION_SOURCE_IP, hs),
                    v2p.NotifyPayload(N.NAT_DETECTION_DESTINATION_IP, hd),
                ]
            if hashes:
                payloads.append(v2p.NotifyPayload(N.SIGNATURE_HASH_ALGORITHMS, _hash_list(hashes)))
            msg = Message(IKE_SA_INIT, 0, spi_i, ZERO_SPI, True, False, payloads)
            from reference_impl.ike.messages import encode_message

            request = encode_message(msg)
            self.wire.send(tamper(request) if tamper else request)
            reply = self._reply(spi_i, IKE_SA_INIT, 0, timeout)
            reply.request = request
            self.rounds.append((request, reply))
            if not follow or reply.message is None:
                break
            c = reply.notify(N.COOKIE)
            if c is not None and not reply.get(v2p.SaPayload):
                cookie = c.data
                continue
            k = reply.notify(N.INVALID_KE_PAYLOAD)
            if k is not None and len(k.data) >= 2:
                group = int.from_bytes(k.data[:2], "big")
                ke_group = None
                continue
            break
        m = reply.message
        if m is None or reply.get(v2p.SaPayload) is None or reply.get(v2p.KePayload) is None:
            return reply
        assert m is not None
        sa = HarnessSa(initiator=True, spi_i=spi_i, spi_r=m.spi_r)
        sa.nonce_i = nonce
        nr = reply.get(v2p.NoncePayload)
        sa.nonce_r = nr.data if nr else b""
        sa.init_request = reply.request
        assert reply.rx is not None
        sa.init_response = reply.rx.data
        ke = reply.get(v2p.KePayload)
        try:
            g_ir = kex.shared_secret(ke.data)
            sa.derive(selected_of(reply.get(v2p.SaPayload).proposals[0]), g_ir)
        except Exception as exc:
            raise AssertionError(f"cannot derive keys from the PUT's answer: {exc}") from None
        h = reply.notify(N.SIGNATURE_HASH_ALGORITHMS)
        self.peer_hashes = hash_ids(h.data) if h is not None else None
        sa.next_mid = 1
        self.sa = sa
        self.half_open += 1
        return reply

    def _reply(self, spi_i: bytes, exchange: int, mid: int, timeout: float) -> Reply:
        rx = self.wire.recv(
            lambda r: (
                r.spi_i == spi_i and r.response and r.exchange == exchange and r.message_id == mid
            ),
            timeout,
        )
        if rx is None:
            return Reply(None)
        if exchange == IKE_SA_INIT or self.sa is None:
            m = rx.message()
            return Reply(rx, m, list(m.payloads))
        m, payloads = self.sa.open(rx.data)
        return Reply(rx, m, payloads)

    # IKE_AUTH ------------------------------------------------------------------------------

    def auth(
        self,
        auth: Auth,
        *,
        idi: v2p.IdPayload | None = None,
        idr: v2p.IdPayload | None = None,
        child: bool = True,
        extra: Sequence[v2p.Payload] = (),
        certreq: bool = False,
        natt: bool = False,
        timeout: float = 4.0,
    ) -> Reply:
        """IKE_AUTH with our identity (default: the tester endpoint's), ``auth`` and, with
        ``child``, the scenario's ESP proposals and selectors. ``natt``: to the PUT's NAT-T
        port with the non-ESP marker."""
        sa = self.sa
        assert sa is not None, "IKE_SA_INIT did not complete"
        idi = idi or id_payload(self.me.identity, v2p.IdI)
        octets = sa.octets(initiator_signs=True, id_payload=idi)
        ap = auth.payloads(octets, sa.prf, self.peer_hashes)
        payloads: list[v2p.Payload] = [idi]
        payloads += [p for p in ap if type(p) is v2p.CertPayload]
        if certreq and self.sc.ca_cert is not None:
            ca = x509.load_pem_x509_certificate(self.sc.ca_cert.read_bytes())
            payloads.append(
                v2p.CertReqPayload(CertEncoding.X509_CERT_SIGNATURE, certreq_authorities((ca,)))
            )
        payloads += list(extra)
        if idr is not None:
            payloads.append(idr)
        payloads += [p for p in ap if type(p) is v2p.AuthPayload]
        if child:
            payloads += [
                v2p.SaPayload(esp_offer(self.sc.esp_proposals, self.child_spi)),
                v2p.TsI(ts_of(self.me.subnets)),
                v2p.TsR(ts_of(self.put.subnets)),
            ]
        return self.send_auth(payloads, natt=natt, timeout=timeout)

    def send_auth(self, payloads: list[v2p.Payload], *, natt: bool, timeout: float) -> Reply:
        """The IKE_AUTH request with these payloads inside SK (``natt``: to the PUT's NAT-T
        port with the non-ESP marker) and its answer; an answer with AUTH establishes the SA."""
        sa = self.sa
        assert sa is not None, "IKE_SA_INIT did not complete"
        mid = sa.next_mid
        sa.next_mid += 1
        self.natt = natt
        data = sa.seal(IKE_AUTH, mid, payloads, response=False)
        self.wire.log(f"   (IKE_AUTH request {mid} inside SK: {' '.join(payload_names(payloads))})")
        self.wire.send(data, port=NATT_PORT if natt else IKE_PORT, marker=natt)
        reply = self._reply(sa.spi_i, IKE_AUTH, mid, timeout)
        reply.request = data
        if reply.message is not None:
            self.wire.log(f"   (IKE_AUTH response inside SK: {reply.describe()})")
            self.half_open = max(0, self.half_open - 1)
            if reply.get(v2p.AuthPayload) is not None:
                sa.established = True
        return reply

    def verify_put(
        self, reply: Reply, *, psk: bytes | None = None, public_key: Any = None
    ) -> tuple[bool, str]:
        """Check the PUT's (responder's) AUTH in an IKE_AUTH answer."""
        assert self.sa is not None
        idr, auth = reply.get(v2p.IdR), reply.get(v2p.AuthPayload)
        if idr is None or auth is None:
            return False, f"no IDr/AUTH in the answer ({reply.describe()})"
        return check_auth(self.sa, idr, auth, initiator_signs=False, psk=psk, public_key=public_key)

    def request(
        self,
        exchange: int,
        payloads: Sequence[v2p.Payload],
        *,
        natt: bool | None = None,
        timeout: float = 4.0,
    ) -> Reply:
        """A protected request on the established SA (CREATE_CHILD_SA, INFORMATIONAL);
        ``natt`` default: where IKE_AUTH went."""
        natt = self.natt if natt is None else natt
        sa = self.sa
        assert sa is not None
        mid = sa.next_mid
        sa.next_mid += 1
        self.wire.log(
            f"   ({X(exchange).name} request {mid} inside SK: {' '.join(payload_names(payloads))})"
        )
        self.wire.send(
            sa.seal(exchange, mid, payloads, response=False),
            port=NATT_PORT if natt else IKE_PORT,
            marker=natt,
        )
        reply = self._reply(sa.spi_i, exchange, mid, timeout)
        if reply.message is not None:
            self.wire.log(f"   ({X(exchange).name} response inside SK: {reply.describe()})")
        return reply

    def finish(self) -> None:
        """Delete the current IKE SA if it was established (cleanup); the wire stays."""
        if self.sa is not None and self.sa.established:
            self.sa.established = False
            self.request(INFORMATIONAL, [v2p.DeletePayload(1)], natt=self.natt, timeout=2.0)

    def close(self) -> None:
        """:meth:`finish`, and close the wire."""
        try:
            self.finish()
        finally:
            self.wire.close()

    def transcript(self) -> str:
        return "\n".join(self.wire.transcript)


# --- the scripted responder (the PUT initiates) ---


class Responder:
    """The harness as IKE responder to the PUT's initiation (the tester node silenced)."""

    def __init__(self, ctx: CaseContext, scenario: Scenario, wire: TapWire) -> None:
        self.ctx = ctx
        self.sc = scenario
        self.wire = wire
        self.me = scenario.local(TESTER)
        self.put = scenario.remote(TESTER)
        self.sa: HarnessSa | None = None
        self.spi_i: bytes | None = None
        self.peer_hashes: list[int] | None = None
        self.natt = False
        self.requests: list[Rx] = []
        self.child_spi = b""
        """The SPI of our inbound Child SA (the PUT's outbound one), from :meth:`answer_auth`."""

    @property
    def harness_sa(self) -> HarnessSa:
        """The harness's end of the IKE SA (after :meth:`accept`)."""
        assert self.sa is not None, "no IKE_SA_INIT accepted yet"
        return self.sa

    def request(
        self,
        *,
        exchange: int = IKE_SA_INIT,
        mid: int | None = None,
        timeout: float = 6.0,
        new_spi: bool = False,
    ) -> Rx | None:
        """The PUT's next request of ``exchange`` (for IKE_SA_INIT: the first of a new SPI
        unless one is known; ``new_spi``: one with an SPI not seen before)."""
        known = {r.spi_i for r in self.requests}

        def pred(r: Rx) -> bool:
            if r.response or r.exchange != exchange or (mid is not None and r.message_id != mid):
                return False
            if exchange == IKE_SA_INIT:
                if r.spi_r != ZERO_SPI:
                    return False
                if new_spi:
                    return r.spi_i not in known
                return self.spi_i is None or r.spi_i == self.spi_i
            return r.spi_i == self.spi_i

        rx = self.wire.recv(pred, timeout)
        if rx is not None:
            self.requests.append(rx)
            if exchange == IKE_SA_INIT and (self.spi_i is None or new_spi):
                self.spi_i = rx.spi_i
        return rx

    def refuse(self, rx: Rx, ntype: int, data: bytes = b"") -> None:
        """An unprotected IKE_SA_INIT answer with one notify (COOKIE, INVALID_KE_PAYLOAD, ...)."""
        from reference_impl.ike.messages import encode_message

        msg = Message(
            IKE_SA_INIT, 0, rx.spi_i, ZERO_SPI, False, True, [v2p.NotifyPayload(ntype, data)]
        )
        self.wire.send(encode_message(msg), port=IKE_PORT)

    def accept(
        self,
        rx: Rx,
        *,
        answer: v2p.Proposal | None = None,
        forge_natd_src: bool = False,
        forge_natd_dst: bool = False,
        hashes: Sequence[int] | None = None,
        certreq: bool = False,
    ) -> HarnessSa:
        """Answer the PUT's IKE_SA_INIT with SAr1 KEr Nr N(NAT-D)x2 [CERTREQ] [N(HASHES)] and
        derive the keys. ``answer``: the proposal to return (default: the first transform of
        each type of the PUT's first proposal)."""
        from reference_impl.ike.messages import encode_message

        req = rx.message()
        sa_p, ke = req.get(v2p.SaPayload), req.get(v2p.KePayload)
        nonce = req.get(v2p.NoncePayload)
        if sa_p is None or ke is None or nonce is None:
            raise AssertionError(f"the PUT's IKE_SA_INIT lacks SA/KE/Ni: {req.summary()}")
        prop = answer or choose_for_ke(sa_p.proposals, ke.dh_group)
        sel = selected_of(prop)
        kex = dh(sel.dh_id or ke.dh_group).generate()
        sa = HarnessSa(initiator=False, spi_i=rx.spi_i, spi_r=os.urandom(8))
        sa.nonce_i = nonce.data
        sa.nonce_r = os.urandom(32)
        sa.init_request = rx.data
        h = req.notify(N.SIGNATURE_HASH_ALGORITHMS)
        self.peer_hashes = hash_ids(h.data) if h is not None else None
        # NAT-D as the PUT computes them: its source is its logical IKE port
        src = (self.me.address, IKE_PORT)
        dst = (self.put.address, IKE_PORT)
        hs = natd_hash(sa.spi_i, sa.spi_r, src)
        hd = natd_hash(sa.spi_i, sa.spi_r, dst)
        if forge_natd_src:
            hs = bytes(b ^ 0xFF for b in hs)
        if forge_natd_dst:
            hd = bytes(b ^ 0xFF for b in hd)
        payloads: list[v2p.Payload] = [
            v2p.SaPayload([prop]),
            v2p.KePayload(sel.dh_id or ke.dh_group, kex.public_value),
            v2p.NoncePayload(sa.nonce_r),
            v2p.NotifyPayload(N.NAT_DETECTION_SOURCE_IP, hs),
            v2p.NotifyPayload(N.NAT_DETECTION_DESTINATION_IP, hd),
        ]
        if certreq and self.sc.ca_cert is not None:
            ca = x509.load_pem_x509_certificate(self.sc.ca_cert.read_bytes())
            payloads.append(
                v2p.CertReqPayload(CertEncoding.X509_CERT_SIGNATURE, certreq_authorities((ca,)))
            )
        if hashes:
            payloads.append(v2p.NotifyPayload(N.SIGNATURE_HASH_ALGORITHMS, _hash_list(hashes)))
        msg = Message(IKE_SA_INIT, 0, sa.spi_i, sa.spi_r, False, True, payloads)
        sa.init_response = encode_message(msg)
        self.wire.send(sa.init_response, port=IKE_PORT)
        try:
            sa.derive(sel, kex.shared_secret(ke.data))
        except Exception as exc:
            raise AssertionError(f"cannot derive keys with the PUT's KE: {exc}") from None
        self.sa = sa
        self.spi_i = sa.spi_i
        return sa

    def auth_request(self, timeout: float = 6.0) -> tuple[Rx, list[v2p.Payload]] | None:
        """The PUT's IKE_AUTH request (any port), decrypted."""
        assert self.sa is not None
        rx = self.request(exchange=IKE_AUTH, mid=1, timeout=timeout)
        if rx is None:
            return None
        self.natt = rx.port == NATT_PORT
        _m, payloads = self.sa.open(rx.data)
        self.wire.log(f"   (IKE_AUTH request inside SK: {' '.join(payload_names(payloads))})")
        return rx, payloads

    def answer_auth(
        self,
        rx: Rx,
        request: Sequence[v2p.Payload],
        auth: Auth,
        *,
        idr: v2p.IdPayload | None = None,
        child: bool = True,
    ) -> None:
        """IKE_AUTH response: IDr [CERT] AUTH and (``child``) the PUT's first ESP proposal
        (first transform of each type) with its selectors."""
        sa = self.sa
        assert sa is not None
        idr = idr or id_payload(self.me.identity, v2p.IdR)
        octets = sa.octets(initiator_signs=False, id_payload=idr)
        payloads: list[v2p.Payload] = [idr, *auth.payloads(octets, sa.prf, self.peer_hashes)]
        sa_p = first(request, v2p.SaPayload)
        tsi, tsr = first(request, v2p.TsI), first(request, v2p.TsR)
        if child and sa_p is not None and tsi is not None and tsr is not None:
            p = choose(sa_p.proposals[0])
            self.child_spi = os.urandom(4)
            payloads += [
                v2p.SaPayload([v2p.Proposal(p.num, p.protocol_id, self.child_spi, p.transforms)]),
                tsi,
                tsr,
            ]
        data = sa.seal(IKE_AUTH, rx.message_id, payloads, response=True)
        self.wire.log(f"   (IKE_AUTH response inside SK: {' '.join(payload_names(payloads))})")
        self.wire.send(data, port=NATT_PORT if self.natt else IKE_PORT, marker=self.natt)
        if not auth.corrupt:
            sa.established = True

    def verify_put(
        self, request: Sequence[v2p.Payload], *, psk: bytes | None = None, public_key: Any = None
    ) -> tuple[bool, str]:
        """Check the PUT's (initiator's) AUTH in its IKE_AUTH request."""
        assert self.sa is not None
        idi, auth = first(request, v2p.IdI), first(request, v2p.AuthPayload)
        if idi is None or auth is None:
            return False, f"no IDi/AUTH in the request ({' '.join(payload_names(request))})"
        return check_auth(self.sa, idi, auth, initiator_signs=True, psk=psk, public_key=public_key)

    def close(self) -> None:
        """Delete an established IKE SA from our side (the PUT answers), best effort."""
        sa = self.sa
        if sa is None or not sa.established:
            return
        mid = sa.next_mid
        sa.next_mid += 1
        data = sa.seal(INFORMATIONAL, mid, [v2p.DeletePayload(1)], response=False)
        self.wire.send(data, port=NATT_PORT if self.natt else IKE_PORT, marker=self.natt)
        self.wire.recv(
            lambda r: r.spi_i == sa.spi_i and r.response and r.exchange == INFORMATIONAL, 2.0
        )
        sa.established = False


# --- the PUT's side ---


def wait_put(ctx: CaseContext, pred: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
    """Poll the PUT's SA list until ``pred`` holds (or the timeout); returns the last list."""
    deadline = time.monotonic() + timeout
    while True:
        sas = ctx.put.list_sas()
        if pred(sas) or time.monotonic() >= deadline:
            return sas
        time.sleep(0.05)


def _busy(sa: Any) -> bool:
    """An IKE SA the PUT could reuse or is still negotiating as initiator (half-open SAs it
    answered for the harness do not matter: they expire on their own)."""
    return bool(sa.established or sa.initiator)


def quiesce(ctx: CaseContext, timeout: float = 3.0) -> None:
    """No established (or initiating) IKE SA on the PUT, so that its next initiation starts
    with IKE_SA_INIT: deleted with the tester listening (both ends forget them), forced
    after ``timeout``."""
    put = ctx.put
    if not any(_busy(s) for s in put.list_sas()):
        return
    if put.kind == "reference":
        client = put.client  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            client.terminate()
        sas = wait_put(ctx, lambda ss: not any(_busy(s) for s in ss), timeout)
        for s in sas:
            if _busy(s):
                with contextlib.suppress(Exception):
                    client.terminate(s.unique_id)
    elif put.kind == "strongswan" and put.scenario is not None:
        with contextlib.suppress(PeerError):
            put.terminate(timeout=timeout)
        _sw_call(put, "terminate", {"ike": put.scenario.name, "force": "yes", "timeout": "-1"})
    wait_put(ctx, lambda ss: not any(_busy(s) for s in ss), timeout)


def _sw_call(put: Peer, what: str, request: dict[str, str]) -> None:
    s = put.session  # type: ignore[attr-defined]
    fn = getattr(s, what)
    with contextlib.suppress(PeerError):
        put._stream(fn(request), 10.0, what)  # type: ignore[attr-defined]


def configure_put(
    ctx: CaseContext, scenario: Scenario, *, extra: Callable[[Peer], None] | None = None
) -> None:
    """Load ``scenario`` into the PUT (the tester is not configured: the harness plays it)."""
    with ctx.step("configure the PUT"):
        ctx.put.configure(scenario)
        ctx.apply_misbehaviours()  # a configure that restarts the node loses them
        if extra is not None:
            extra(ctx.put)


class PutInitiation:
    """Make the PUT initiate the scenario without waiting for the outcome; abort it after.

    reference: the ``initiate`` control call (returns at once); strongSwan: vici ``initiate``
    with a negative timeout (charon does not wait, vici_control.c)."""

    def __init__(self, ctx: CaseContext, scenario: Scenario) -> None:
        require_put_initiation(ctx)
        self.ctx = ctx
        self.sc = scenario
        self.put = ctx.put
        self.ids: list[str] = []

    def start(self) -> None:
        put, sc = self.put, self.sc
        if put.kind == "reference":
            rule = f"{sc.name}-out" if sc.mode == "tunnel" else sc.name
            try:
                self.ids.append(str(put.client.initiate(rule)))  # type: ignore[attr-defined]
            except Exception as exc:
                raise PeerError(f"reference: initiate {rule}: {exc}") from None
        else:
            request = {"ike": sc.name, "child": sc.child_name, "timeout": "-1", "init-limits": "no"}
            put._stream(put.session.initiate(request), 10.0, "initiate")  # type: ignore[attr-defined]

    def abort(self) -> None:
        put = self.put
        if put.kind == "reference":
            for i in self.ids:
                with contextlib.suppress(Exception):
                    put.client.terminate(i)  # type: ignore[attr-defined]
            self.ids.clear()
        else:
            _sw_call(put, "terminate", {"ike": self.sc.name, "force": "yes", "timeout": "-1"})


@contextlib.contextmanager
def put_initiates(
    ctx: CaseContext,
    scenario: Scenario,
    *,
    start: bool = True,
    extra: Callable[[Peer], None] | None = None,
) -> Iterator[tuple[Responder, PutInitiation]]:
    """The PUT configured with ``scenario`` and (``start``) initiating towards the silenced
    tester; yields the scripted :class:`Responder` and the :class:`PutInitiation`. At the end
    the harness deletes an established IKE SA, aborts the PUT's attempt and lets the tester
    answer IKE again; the transcript is attached as evidence."""
    require_scriptable(ctx)
    require_put_initiation(ctx)
    quiesce(ctx)
    configure_put(ctx, scenario, extra=extra)
    wire = TapWire(ctx)
    responder = Responder(ctx, scenario, wire)
    initiation = PutInitiation(ctx, scenario)
    try:
        if start:
            with ctx.step("the PUT initiates"):
                initiation.start()
        yield responder, initiation
    finally:
        try:
            with contextlib.suppress(Exception):
                responder.close()
            initiation.abort()
            wait_put(ctx, lambda sas: not any(_busy(s) for s in sas), 3.0)
        finally:
            wire.close()
            note(ctx, "ike-transcript", "\n".join(wire.transcript))


@contextlib.contextmanager
def put_responds(
    ctx: CaseContext,
    scenario: Scenario,
    *,
    port: int = 0,
    extra: Callable[[Peer], None] | None = None,
) -> Iterator[Initiator]:
    """The PUT configured with ``scenario`` as responder; yields the scripted
    :class:`Initiator` (a socket on the tester's address). At the end an established IKE SA
    is deleted, half-open ones are flushed from a reference PUT, and the transcript attached."""
    require_scriptable(ctx)
    configure_put(ctx, scenario, extra=extra)
    ini = Initiator(ctx, scenario, port=port)
    try:
        yield ini
    finally:
        try:
            ini.close()
        finally:
            note(ctx, "ike-transcript", ini.transcript())
            if ini.half_open:
                flush_half_open(ctx)


_FLUSH_ADVANCE = 31.0
"""The reference node forgets half-open IKE SAs after 30 s (ServiceSettings.half_open_timeout)."""


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


def flush_half_open(ctx: CaseContext) -> None:
    """Forget the IKE SAs the harness left half-open on a reference PUT (so that its cookie
    threshold, RFC 7296 §2.6, does not carry over into later cases): its clock is advanced
    past the half-open timeout. strongSwan keeps them for 30 s under raised thresholds."""
    if ctx.put.kind != "reference":
        return
    with contextlib.suppress(Exception), virtual_clock(ctx) as advance:
        advance(_FLUSH_ADVANCE)


# --- ESP the PUT sends (RFC 3948) ---


def _inner(subnets: Sequence[str]) -> str:
    return str(ipaddress.ip_network(subnets[0], strict=False).network_address)


def put_sends_traffic(ctx: CaseContext, sc: Scenario) -> None:
    """An ICMP echo request from the PUT's protected address to the tester's, which the PUT
    protects with the scenario's Child SA: injected into a reference node (its control API),
    ``ping`` in the PUT's node otherwise."""
    from harness.probes.craft import icmp_echo

    src, dst = _inner(sc.local(PUT).subnets), _inner(sc.local(TESTER).subnets)
    put = ctx.put
    if put.kind == "reference":
        put.client.inject([icmp_echo(src, dst, ident=0x4E47)])  # type: ignore[attr-defined]
    else:
        ctx.topology.node(PUT).exec(["ping", "-c", "1", "-W", "1", "-I", src, dst], timeout=5)


def esp_from_put(
    ctx: CaseContext, sc: Scenario, wire: Wire, spi: bytes, timeout: float = 3.0
) -> str | None:
    """Make the PUT send on its Child SA with outbound SPI ``spi`` and say how the ESP arrived
    ("ESP in UDP to port N", "raw ESP"), or ``None``. Seen on the harness's socket (where the
    PUT sends after IKE moved there) or by the tester node's received-datagram log."""
    client = getattr(ctx.tester, "client", None)
    if client is not None:
        client.record_received(True)
    try:
        put_sends_traffic(ctx, sc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rx = wire.recv(lambda r: not r.marker and r.data[:4] == spi, 0.1)
            if rx is not None:
                wire.log(f"   (ESP SPI {spi.hex()} in UDP from {rx.src} to port {rx.port})")
                return f"ESP in UDP from {rx.src[0]}:{rx.src[1]} to the harness's port {rx.port}"
            for r in client.received() if client is not None else []:
                if r.udp is not None and r.data[:4] == spi:
                    port = node_logical_port(wire.tester_node, r.udp[3])
                    wire.log(f"   (ESP SPI {spi.hex()} in UDP to the tester's port {port})")
                    return f"ESP in UDP from {r.udp[0]}:{r.udp[1]} to the tester's port {port}"
                if r.udp is None and len(r.data) >= 28 and r.data[9] == 50:
                    hl = (r.data[0] & 0x0F) * 4
                    if r.data[hl : hl + 4] == spi:
                        return "raw ESP (IP protocol 50), not UDP-encapsulated"
            put_sends_traffic(ctx, sc)
        return None
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.record_received(False)


# --- cookies (RFC 7296 §2.6) ---

CHARON_DOS_DEFAULTS = {"cookie_threshold": 30, "cookie_threshold_ip": 3, "block_threshold": 5}
"""charon's own DoS thresholds (strongswan.conf(5), 5.9.8; ../shared/design/peers.md §6); the
strongSwan adapter raises them to 10000 for the rest of a run."""


@contextlib.contextmanager
def cookie_thresholds(ctx: CaseContext) -> Iterator[None]:
    """The PUT with its default cookie thresholds for the duration: charon is restarted with
    its defaults and again with the adapter's afterwards (it reads them only at start). The
    reference node's threshold is its default (10 half-open IKE SAs)."""
    put = ctx.put
    setter = getattr(put, "set_charon_options", None)
    if put.kind != "strongswan" or setter is None:
        yield
        return
    with ctx.step("restart charon with its default DoS thresholds"):
        setter(**CHARON_DOS_DEFAULTS)
    try:
        yield
    finally:
        with ctx.step("restart charon with the adapter's thresholds"):
            setter(**{k: None for k in CHARON_DOS_DEFAULTS})


class CookieLoad:
    """Half-open IKE SAs from distinct SPIs until the PUT demands a COOKIE."""

    def __init__(self, ctx: CaseContext, ini: Initiator) -> None:
        self.ctx = ctx
        self.ini = ini

    def until_cookie(self, limit: int = 16) -> tuple[Reply | None, int]:
        """(the COOKIE answer, half-open SAs opened before it); ``(None, n)`` if none came."""
        n = 0
        with self.ctx.step(f"open half-open IKE SAs until a COOKIE (at most {limit})"):
            for _ in range(limit + 1):
                reply = self.ini.init(follow=False, timeout=3.0)
                if reply.notify(N.COOKIE) is not None:
                    return reply, n
                if reply.get(v2p.SaPayload) is None:
                    raise AssertionError(f"IKE_SA_INIT refused under load: {reply.describe()}")
                n += 1
        return None, n


def proposal(text: str) -> Proposal:
    return Proposal.parse(text)


def psk_of(sc: Scenario) -> bytes:
    return sc.psk.encode()


def id_text(p: v2p.IdPayload | None) -> str:
    if p is None:
        return "-"
    try:
        kind = IdType(p.id_type).name
    except ValueError:
        kind = str(p.id_type)
    return f"{kind} {p.data!r}"
