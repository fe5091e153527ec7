"""A neutral key set for the wire oracle, and the Wireshark key table.

:class:`KeySet` holds what the oracle needs to open every protected packet of a capture:

* :class:`IkeSaEntry`: one IKE SA (IKEv2: SPIs, algorithms, SK_d/SK_ai/SK_ar/SK_ei/SK_er/
  SK_pi/SK_pr, RFC 7296 §2.14; IKEv1: cookies, algorithms, SKEYID/SKEYID_d/_a/_e and the
  encryption key, RFC 2409 §5 and Appendix B);
* :class:`IpsecSaEntry`: one direction of one Child SA / IPsec SA (protocol, SPI, outer
  addresses, algorithms, keys with the salt at the end for AEAD and counter modes, ESN,
  mode, traffic selectors).

Any field may be unknown (``None``/empty): the oracle fills SPIs, algorithms, addresses and
selectors from the IKE exchanges it decrypts, and binds IKE key sets without SPIs to IKE SAs
by trial decryption. Sources:

* :meth:`KeySet.from_node_sas`: a reference node's ``list_sas`` answer with keys (the JSON
  shape is documented in ``/work/notes/oracle-keys.md``);
* :meth:`KeySet.from_charon_log` / :meth:`KeySet.from_sa_keys`: strongSwan's log at
  ``ike=4, chd=4`` (through the adapter's parser, :func:`harness.peers.charon_log.parse_keys`),
  plus the proposal, address and selector lines of the same log;
* :meth:`KeySet.from_json`: what :meth:`KeySet.to_json` wrote;
* :func:`parse_wireshark`: a Wireshark 4.0 key table (``uat:`` preference lines).

:func:`wireshark_table` writes the Wireshark 4.0 UAT lines (``esp_sa``,
``ikev2_decryption_table``, ``ikev1_decryption_table``) exactly as tshark 4.0.17 accepts them
(../shared/design/peers.md §5), so a person can open the capture decrypted::

    tshark -r x.pcap $(…each line as -o "line"…) -o esp.enable_encryption_decode:TRUE \\
        -o esp.enable_authentication_check:TRUE
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from reference_impl.crypto import encr, integ
from reference_impl.crypto.ids import DhId, EncrId, IntegId, PrfId
from reference_impl.errors import LocalProtocolError
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode, TrafficSelector

# --- entries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IkeSaEntry:
    """Keys of one IKE SA. ``spi_i``/``spi_r`` are the IKEv2 SPIs or the IKEv1 cookies.

    Algorithms are IANA IKEv2 transform IDs (IKEv1 suites are mapped onto them, as the
    crypto registry does): ``encr_id``/``encr_key_bits``, ``integ_id`` (IKEv2 only; IKEv1
    hashes give ``prf_id``), ``prf_id``, ``dh_id``.
    """

    version: int
    spi_i: bytes | None = None
    spi_r: bytes | None = None
    encr_id: int | None = None
    encr_key_bits: int | None = None
    integ_id: int | None = None
    prf_id: int | None = None
    dh_id: int | None = None
    # IKEv2 (RFC 7296 §2.14)
    sk_d: bytes = b""
    sk_ai: bytes = b""
    sk_ar: bytes = b""
    sk_ei: bytes = b""
    sk_er: bytes = b""
    sk_pi: bytes = b""
    sk_pr: bytes = b""
    # IKEv1 (RFC 2409 §5, Appendix B)
    skeyid: bytes = b""
    skeyid_d: bytes = b""
    skeyid_a: bytes = b""
    skeyid_e: bytes = b""
    enc_key: bytes = b""
    """The phase-1 encryption key (strongSwan's "Ka"): SKEYID_e expanded per Appendix B."""
    iv: bytes = b""
    """IKEv1 phase-1 IV; the oracle computes it from the KE payloads when empty."""
    name: str = ""
    source: str = ""
    """Where the keys came from: ``strongswan:<node>``, ``reference:<node>``, ``wireshark``."""

    @property
    def has_keys(self) -> bool:
        if self.version == 1:
            return bool(self.enc_key)
        return bool(self.sk_ei and self.sk_er)

    @property
    def algorithms_known(self) -> bool:
        if self.encr_id is None:
            return False
        if self.version == 1:
            return self.prf_id is not None
        return encr(self.encr_id, self.encr_key_bits).aead or self.integ_id is not None

    def algorithms(self) -> str:
        """strongSwan notation, e.g. ``AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256``."""
        return _suite(self.encr_id, self.encr_key_bits, self.integ_id, self.prf_id, self.dh_id)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> IkeSaEntry:
        return _from_json(cls, obj)


@dataclass(frozen=True)
class IpsecSaEntry:
    """One direction of an IPsec SA (RFC 4301 §4.4.2): packets from ``src`` to ``dst``
    carrying ``spi``. ``ts_src``/``ts_dst`` select the inner source/destination addresses.
    ``encr_key`` includes the salt/nonce at its end (RFC 4106 §8.1, RFC 3686 §5.1)."""

    protocol: IpsecProtocol
    spi: int
    src: str | None = None
    dst: str | None = None
    encr_id: int | None = None
    encr_key_bits: int | None = None
    encr_key: bytes = b""
    integ_id: int | None = None
    integ_key: bytes = b""
    esn: bool | None = None
    mode: Mode | None = None
    encap: bool | None = None
    """ESP in UDP (RFC 3948); the oracle handles both, this is informative."""
    ts_src: tuple[TrafficSelector, ...] = ()
    ts_dst: tuple[TrafficSelector, ...] = ()
    ike_spi_i: bytes | None = None
    """The IKE SA (its initiator SPI / CKY-I) that negotiated this SA, when known."""
    name: str = ""
    source: str = ""

    @property
    def has_keys(self) -> bool:
        if self.protocol == IpsecProtocol.AH:
            return bool(self.integ_key)
        return bool(self.encr_key) or (self.encr_id == EncrId.ENCR_NULL and bool(self.integ_key))

    @property
    def algorithms_known(self) -> bool:
        if self.protocol == IpsecProtocol.AH:
            return self.integ_id not in (None, IntegId.NONE)
        if self.encr_id is None:
            return False
        return encr(self.encr_id, self.encr_key_bits).aead or self.integ_id is not None

    def algorithms(self) -> str:
        s = _suite(self.encr_id, self.encr_key_bits, self.integ_id, None, None)
        return s + ("/ESN" if self.esn else "")

    def to_params(self, *, replay_window: int = 0) -> ChildSaParams:
        """The driver's view of this SA (for the oracle's unprotect and for craft)."""
        if not self.algorithms_known:
            raise LocalProtocolError(f"SPI {self.spi:#010x}: algorithms unknown")
        return ChildSaParams(
            spi=self.spi,
            protocol=self.protocol,
            mode=self.mode or Mode.TUNNEL,
            src=self.src or ("::" if self.dst and ":" in self.dst else "0.0.0.0"),
            dst=self.dst or ("::" if self.src and ":" in self.src else "0.0.0.0"),
            encr_id=self.encr_id if self.protocol == IpsecProtocol.ESP else None,
            encr_key_bits=self.encr_key_bits,
            encr_key=self.encr_key,
            integ_id=None if self.integ_id == IntegId.NONE else self.integ_id,
            integ_key=self.integ_key,
            esn=bool(self.esn),
            ts_src=self.ts_src,
            ts_dst=self.ts_dst,
            replay_window=replay_window,
        )

    @classmethod
    def from_params(cls, p: ChildSaParams, *, source: str = "", name: str = "") -> IpsecSaEntry:
        return cls(
            protocol=IpsecProtocol(p.protocol),
            spi=p.spi,
            src=p.src,
            dst=p.dst,
            encr_id=p.encr_id,
            encr_key_bits=p.encr_key_bits,
            encr_key=p.encr_key,
            integ_id=p.integ_id,
            integ_key=p.integ_key,
            esn=p.esn,
            mode=Mode(p.mode),
            encap=p.encap is not None,
            ts_src=p.ts_src,
            ts_dst=p.ts_dst,
            name=name,
            source=source,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> IpsecSaEntry:
        return _from_json(cls, obj)


_E = TypeVar("_E", "IkeSaEntry", "IpsecSaEntry")


def fill(entry: _E, **values: Any) -> _E:
    """``entry`` with the fields that are unknown (None, empty) set from ``values``."""
    changes = {}
    for k, v in values.items():
        cur = getattr(entry, k)
        if (cur is None or cur == b"" or cur == () or cur == "") and v not in (None, b"", ()):
            changes[k] = v
    return replace(entry, **changes) if changes else entry


# --- the set ------------------------------------------------------------------------------------


@dataclass
class KeySet:
    """Keys of both ends of a test (or of several nodes): IKE SAs and IPsec SAs."""

    ike: list[IkeSaEntry] = field(default_factory=list)
    ipsec: list[IpsecSaEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ike) + len(self.ipsec)

    def merge(self, *others: KeySet) -> KeySet:
        """A new set with every entry of ``self`` and ``others``; an IPsec SA known to
        several sources (same protocol, SPI and destination) is kept once, its unknown
        fields filled from the others; likewise IKE SAs with the same keys."""
        out = KeySet(list(self.ike), list(self.ipsec))
        for other in others:
            for e in other.ike:
                out.add_ike(e)
            for s in other.ipsec:
                out.add_ipsec(s)
        return out

    def add_ike(self, entry: IkeSaEntry) -> IkeSaEntry:
        for i, cur in enumerate(self.ike):
            if _same_ike(cur, entry):
                merged = fill(cur, **{f.name: getattr(entry, f.name) for f in fields(entry)})
                self.ike[i] = merged
                return merged
        self.ike.append(entry)
        return entry

    def add_ipsec(self, entry: IpsecSaEntry) -> IpsecSaEntry:
        for i, cur in enumerate(self.ipsec):
            if (
                cur.protocol == entry.protocol
                and cur.spi == entry.spi
                and (cur.dst is None or entry.dst is None or cur.dst == entry.dst)
            ):
                merged = fill(cur, **{f.name: getattr(entry, f.name) for f in fields(entry)})
                self.ipsec[i] = merged
                return merged
        self.ipsec.append(entry)
        return entry

    def find_ipsec(
        self, protocol: IpsecProtocol, spi: int, dst: str | None = None
    ) -> IpsecSaEntry | None:
        found = None
        for e in self.ipsec:
            if e.protocol != protocol or e.spi != spi:
                continue
            if e.dst == dst:
                return e
            found = found or e
        return found

    def find_ike(self, spi_i: bytes, spi_r: bytes | None = None) -> IkeSaEntry | None:
        for e in self.ike:
            if e.spi_i == spi_i and (spi_r is None or e.spi_r in (None, spi_r)):
                return e
        return None

    # --- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "ike_sas": [e.to_json() for e in self.ike],
            "ipsec_sas": [e.to_json() for e in self.ipsec],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> KeySet:
        return cls(
            [IkeSaEntry.from_json(e) for e in obj.get("ike_sas", [])],
            [IpsecSaEntry.from_json(e) for e in obj.get("ipsec_sas", [])],
        )

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> KeySet:
        return cls.from_json(json.loads(Path(path).read_text()))

    # --- sources ------------------------------------------------------------------------------

    @classmethod
    def from_node_sas(
        cls, dump: Mapping[str, Any] | Iterable[Mapping[str, Any]], *, source: str = "reference"
    ) -> KeySet:
        """From a reference node's ``list_sas`` answer with ``keys: true``
        (``reference_impl/node/sadump.py``; the shape is in ``/work/notes/oracle-keys.md``).

        ``dump`` is the whole answer (``{"ike_sas": [...], "child_sas": [...]}``) or a list of
        IKE SA entries. IKE SA: ``version``, ``spi_i``, ``spi_r`` (hex), ``encr``
        (``{"id", "key_bits"}``), ``integ``/``prf``/``dh`` (``{"id"}``, an id, a name or null),
        ``keys`` (hex: IKEv2 ``sk_d`` .. ``sk_pr``; IKEv1 ``skeyid``, ``skeyid_d``,
        ``skeyid_a``, ``skeyid_e``, ``enc_key``, optional ``iv``), ``child_sas`` (nested).
        Child SA: ``name``, ``protocol`` (``esp``/``ah``), ``mode``, ``esn``, ``encap``,
        ``encr``, ``integ``, ``ike_sa_id`` and ``inbound``/``outbound``: ``spi``, ``src``,
        ``dst``, ``encr``/``integ`` (with ``key``) or ``encr_key``/``integ_key``, ``encap``,
        ``ts_src``, ``ts_dst``.
        """
        out = cls()
        if isinstance(dump, Mapping):
            ike_list = list(dump.get("ike_sas", []) or [])
            flat = list(dump.get("child_sas", []) or [])
        else:
            ike_list, flat = list(dump), []
        for sa in ike_list:
            version = int(sa.get("version", 2))
            keys = sa.get("keys") or {}
            e_id, e_bits = _alg(sa.get("encr"))
            i_id, _ = _alg(sa.get("integ"))
            p_id, _ = _alg(sa.get("prf"))
            d_id, _ = _alg(sa.get("dh"))
            spi_i = _bytes(sa.get("spi_i")) or None
            secrets = {k: _bytes(keys.get(k)) for k in _KEY_FIELDS if keys.get(k)}
            if version == 1 and "enc_key" not in secrets and keys.get("encryption_key"):
                secrets["enc_key"] = _bytes(keys["encryption_key"])
            out.add_ike(
                IkeSaEntry(
                    version=version,
                    spi_i=spi_i,
                    spi_r=_bytes(sa.get("spi_r")) or None,
                    encr_id=e_id,
                    encr_key_bits=e_bits,
                    integ_id=i_id or None,
                    prf_id=p_id,
                    dh_id=d_id,
                    name=str(sa.get("name") or sa.get("config") or ""),
                    source=source,
                    **secrets,
                )
            )
            for child in sa.get("child_sas", []) or []:
                out._add_node_child(child, spi_i, source)
        for child in flat:
            ike_id = _bytes(child.get("ike_sa_id"))
            out._add_node_child(child, ike_id[:8] or None, source)
        return out

    def _add_node_child(
        self, child: Mapping[str, Any], ike_spi_i: bytes | None, source: str
    ) -> None:
        proto = IpsecProtocol[str(child.get("protocol", "esp")).upper()]
        mode = Mode(child["mode"]) if child.get("mode") else None
        for direction in ("inbound", "outbound"):
            d = child.get(direction)
            if not d:
                continue
            e_obj = d.get("encr") or child.get("encr")
            i_obj = d.get("integ") or child.get("integ")
            e_id, e_bits = _alg(e_obj)
            i_id, _ = _alg(i_obj)
            ekey = d.get("encr_key") or (e_obj.get("key") if isinstance(e_obj, Mapping) else None)
            ikey = d.get("integ_key") or (i_obj.get("key") if isinstance(i_obj, Mapping) else None)
            encap = d.get("encap", child.get("encap"))
            self.add_ipsec(
                IpsecSaEntry(
                    protocol=proto,
                    spi=_spi(d["spi"]),
                    src=_host(d.get("src")),
                    dst=_host(d.get("dst")),
                    encr_id=e_id if proto == IpsecProtocol.ESP else None,
                    encr_key_bits=e_bits,
                    encr_key=_bytes(ekey),
                    integ_id=i_id or None,
                    integ_key=_bytes(ikey),
                    esn=d.get("esn", child.get("esn")),
                    mode=mode,
                    encap=None if encap is None else bool(encap),
                    ts_src=_selectors(d.get("ts_src")),
                    ts_dst=_selectors(d.get("ts_dst")),
                    ike_spi_i=ike_spi_i,
                    name=str(child.get("name") or ""),
                    source=source,
                )
            )

    @classmethod
    def from_sa_keys(
        cls, keys: Any, *, log_text: str | None = None, source: str = "strongswan"
    ) -> KeySet:
        """From the adapter's :class:`harness.peers.base.SaKeys` (strongSwan's
        ``peer.keys()``); ``log_text`` (the same log) adds algorithms, outer addresses and
        selectors from its ``selected proposal``, ``adding inbound|outbound ESP SA`` and
        ``CHILD_SA ... established`` lines."""
        meta = _LogMeta.scan(log_text) if log_text else _LogMeta()
        out = cls()
        for k in keys.ike:
            s = k.secrets
            if k.version == 2:
                entry = IkeSaEntry(
                    version=2,
                    spi_i=k.spi_i,
                    spi_r=k.spi_r,
                    sk_d=s.get("SK_d", b""),
                    sk_ai=s.get("SK_ai", b""),
                    sk_ar=s.get("SK_ar", b""),
                    sk_ei=s.get("SK_ei", b""),
                    sk_er=s.get("SK_er", b""),
                    sk_pi=s.get("SK_pi", b""),
                    sk_pr=s.get("SK_pr", b""),
                    source=source,
                )
                marker = entry.sk_pr
            else:
                entry = IkeSaEntry(
                    version=1,
                    spi_i=k.spi_i,
                    spi_r=k.spi_r,
                    skeyid=s.get("SKEYID", b""),
                    skeyid_d=s.get("SKEYID_d", b""),
                    skeyid_a=s.get("SKEYID_a", b""),
                    skeyid_e=s.get("SKEYID_e", b""),
                    enc_key=s.get("Ka", b""),
                    source=source,
                )
                marker = entry.enc_key
            suite = meta.ike_suites.get(marker)
            if suite:
                entry = fill(entry, **suite)
            out.add_ike(entry)
        for c in keys.child:
            spi_out, ek_out, ik_out = c.outbound()
            spi_in, ek_in, ik_in = c.inbound()
            info = meta.children.get((spi_in, spi_out), {})
            alg = info.get("algorithms", {})
            local_ts = info.get("local_ts", ())
            remote_ts = info.get("remote_ts", ())
            for spi, ek, ik, ts_src, ts_dst in (
                (spi_out, ek_out, ik_out, local_ts, remote_ts),
                (spi_in, ek_in, ik_in, remote_ts, local_ts),
            ):
                proto, src, dst = meta.sa_addresses.get(spi, (IpsecProtocol.ESP, None, None))
                out.add_ipsec(
                    IpsecSaEntry(
                        protocol=proto,
                        spi=spi,
                        src=src,
                        dst=dst,
                        encr_key=ek,
                        integ_key=ik,
                        ts_src=ts_src,
                        ts_dst=ts_dst,
                        name=c.name,
                        source=source,
                        **alg,
                    )
                )
        return out

    @classmethod
    def from_charon_log(cls, text: str, *, source: str = "strongswan") -> KeySet:
        """Every key set in a charon log at ``ike=4, chd=4`` (IKE SPIs stay unknown: the
        oracle binds those keys to IKE SAs on the wire by trial decryption)."""
        from harness.peers.charon_log import parse_keys

        return cls.from_sa_keys(parse_keys(text), log_text=text, source=source)


# --- helpers: JSON ------------------------------------------------------------------------------

_KEY_FIELDS = (
    "sk_d",
    "sk_ai",
    "sk_ar",
    "sk_ei",
    "sk_er",
    "sk_pi",
    "sk_pr",
    "skeyid",
    "skeyid_d",
    "skeyid_a",
    "skeyid_e",
    "enc_key",
    "iv",
)


def _bytes(v: Any) -> bytes:
    if v is None:
        return b""
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    s = str(v).strip()
    if s.lower().startswith("0x"):
        s = s[2:]
    return bytes.fromhex(s.replace(":", "").replace(" ", ""))


def _spi(v: Any) -> int:
    if isinstance(v, int):
        return v
    s = str(v).strip()
    return int(s, 16) if s.lower().startswith("0x") or re.search("[a-fA-F]", s) else int(s)


def _host(v: Any) -> str | None:
    """``"addr"``, ``"addr:port"`` or ``"[v6]:port"`` -> the address."""
    if not v:
        return None
    s = str(v)
    if s.startswith("["):
        return s[1 : s.index("]")]
    if s.count(":") == 1:
        return s.split(":")[0]
    return s


def _alg(v: Any) -> tuple[int | None, int | None]:
    if v is None:
        return None, None
    if isinstance(v, int):
        return v, None
    if isinstance(v, Mapping):
        bits = v.get("key_bits")
        return int(v["id"]), int(bits) if bits is not None else None
    parsed = parse_algorithm(str(v))
    if parsed is None:
        raise LocalProtocolError(f"unknown algorithm {v!r}")
    return parsed[1], parsed[2]


def selector_to_json(ts: TrafficSelector) -> dict[str, Any]:
    return {
        "start": str(ts.start_addr),
        "end": str(ts.end_addr),
        "protocol": ts.ip_protocol,
        "start_port": ts.start_port,
        "end_port": ts.end_port,
    }


def parse_selector(v: Any) -> TrafficSelector:
    """A selector from JSON (``{"start", "end", "protocol", "start_port", "end_port"}``) or
    text: ``10.1.0.0/24``, ``10.1.0.1``, ``10.1.0.1-10.1.0.9``, optionally followed by
    ``[proto]`` or ``[proto/port]`` or ``[proto/lo-hi]`` (strongSwan's notation)."""
    if isinstance(v, TrafficSelector):
        return v
    if isinstance(v, Mapping):
        return TrafficSelector(
            ipaddress.ip_address(v["start"]),
            ipaddress.ip_address(v.get("end", v["start"])),
            int(v.get("protocol", 0)),
            int(v.get("start_port", 0)),
            int(v.get("end_port", 65535)),
        )
    s = str(v).strip()
    proto, lo, hi = 0, 0, 65535
    m = re.fullmatch(r"(.+?)\[([^\]]*)\]", s)
    if m:
        s, spec = m.group(1), m.group(2)
        p, _, ports = spec.partition("/")
        proto = int(p) if p.isdigit() else {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}.get(p, 0)
        if ports:
            a, _, b = ports.partition("-")
            lo = int(a)
            hi = int(b) if b else lo
    if "-" in s:
        a, b = s.split("-", 1)
        return TrafficSelector(ipaddress.ip_address(a), ipaddress.ip_address(b), proto, lo, hi)
    if "/" not in s:
        s += "/32" if ":" not in s else "/128"
    return TrafficSelector.from_network(s, proto, lo, hi)


def _selectors(v: Any) -> tuple[TrafficSelector, ...]:
    if not v:
        return ()
    if isinstance(v, str):
        v = v.split()
    return tuple(parse_selector(x) for x in v)


def _to_json(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None or v == b"" or v == () or v == "":
            continue
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, IpsecProtocol):
            v = v.name.lower()
        elif isinstance(v, Mode):
            v = str(v)
        elif f.name == "spi":
            v = f"0x{v:08x}"
        elif f.name in ("ts_src", "ts_dst"):
            v = [selector_to_json(t) for t in v]
        out[f.name] = v
    return out


def _from_json(cls: type[_E], obj: Mapping[str, Any]) -> _E:
    kw: dict[str, Any] = {}
    names = {f.name: f for f in fields(cls)}
    for k, v in obj.items():
        if k not in names:
            continue
        t = str(names[k].type)
        if k == "protocol":
            v = IpsecProtocol[str(v).upper()] if isinstance(v, str) else IpsecProtocol(v)
        elif k == "mode":
            v = Mode(v)
        elif k == "spi":
            v = _spi(v)
        elif k in ("ts_src", "ts_dst"):
            v = _selectors(v)
        elif "bytes" in t:
            v = _bytes(v) or (None if "None" in t else b"")
        kw[k] = v
    return cls(**kw)


def _same_ike(a: IkeSaEntry, b: IkeSaEntry) -> bool:
    if a.version != b.version:
        return False
    if (
        a.spi_i
        and b.spi_i
        and a.spi_i == b.spi_i
        and (a.spi_r in (None, b.spi_r) or b.spi_r is None)
    ):
        return True
    if a.version == 2:
        return bool(a.sk_ei) and a.sk_ei == b.sk_ei and a.sk_er == b.sk_er
    return bool(a.enc_key) and a.enc_key == b.enc_key


# --- helpers: algorithm names -----------------------------------------------------------------


@cache
def _names() -> dict[str, tuple[str, int, int | None]]:
    """strongSwan/registry names -> (kind, IANA id, key bits)."""
    out: dict[str, tuple[str, int, int | None]] = {}
    for e in EncrId:
        for bits in (None, 128, 192, 256):
            try:
                a = encr(e, bits)
            except LocalProtocolError:
                continue
            if not a.supported:
                continue
            out.setdefault(a.name, ("encr", int(e), a.key_bits if bits else None))
    out["NULL_AES_GMAC_128"] = ("encr", int(EncrId.ENCR_NULL_AUTH_AES_GMAC), 128)
    out["NULL_AES_GMAC_192"] = ("encr", int(EncrId.ENCR_NULL_AUTH_AES_GMAC), 192)
    out["NULL_AES_GMAC_256"] = ("encr", int(EncrId.ENCR_NULL_AUTH_AES_GMAC), 256)
    for i in IntegId:
        try:
            out.setdefault(integ(i).name, ("integ", int(i), None))
        except LocalProtocolError:
            continue
    from reference_impl.crypto import dh, prf

    for p in PrfId:
        try:
            out.setdefault(prf(p).name, ("prf", int(p), None))
        except LocalProtocolError:
            continue
    for d in DhId:
        try:
            out.setdefault(dh(d).name, ("dh", int(d), None))
        except LocalProtocolError:
            continue
    out["NO_EXT_SEQ"] = ("esn", 0, None)
    out["EXT_SEQ"] = ("esn", 1, None)
    out["ESN"] = ("esn", 1, None)
    return out


def parse_algorithm(name: str) -> tuple[str, int, int | None] | None:
    """``(kind, IANA id, key bits)`` of a strongSwan/registry transform name."""
    return _names().get(name.strip())


def parse_suite(text: str) -> dict[str, Any]:
    """Entry fields of a proposal such as ``AES_CBC_256/HMAC_SHA2_256_128/NO_EXT_SEQ``."""
    out: dict[str, Any] = {}
    for part in text.split("/"):
        parsed = parse_algorithm(part)
        if parsed is None:
            continue
        kind, iana, bits = parsed
        if kind == "encr":
            out["encr_id"] = iana
            out["encr_key_bits"] = bits
        elif kind == "integ":
            out["integ_id"] = iana
        elif kind == "prf":
            out["prf_id"] = iana
        elif kind == "dh":
            out["dh_id"] = iana
        elif kind == "esn":
            out["esn"] = bool(iana)
    return out


def _suite(
    encr_id: int | None,
    bits: int | None,
    integ_id: int | None,
    prf_id: int | None,
    dh_id: int | None,
) -> str:
    from reference_impl.crypto import dh, prf

    parts = []
    try:
        if encr_id is not None:
            parts.append(encr(encr_id, bits).name)
        if integ_id not in (None, IntegId.NONE):
            parts.append(integ(integ_id).name)
        if prf_id is not None:
            parts.append(prf(prf_id).name)
        if dh_id:
            parts.append(dh(dh_id).name)
    except LocalProtocolError as e:
        parts.append(f"?({e})")
    return "/".join(parts) or "?"


# --- helpers: charon log metadata ---------------------------------------------------------------

_LINE = re.compile(r"^\S+ (\d+)\[(\w+)\] (?:<(?:[^>|]*\|)?(\d+)> )?(.*)$")
_HEADER = re.compile(r"^(.+?) => (\d+) bytes @ 0x[0-9a-fA-F]+$")
_DUMP = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} )+)")
_SELECTED = re.compile(r"^selected proposal: (IKE|ESP|AH):(\S+)")
_ADDING = re.compile(r"^adding (inbound|outbound) (ESP|AH) SA")
_SPI_LINE = re.compile(r"^\s*SPI 0x([0-9a-f]+), src (\S+) dst (\S+)")
_ESTABLISHED = re.compile(
    r"^(?:inbound |outbound )?CHILD_SA (\S+)\{(\d+)\} established with SPIs "
    r"([0-9a-f]+)_i ([0-9a-f]+)_o and TS (.*?) === (.*)$"
)


@dataclass
class _LogMeta:
    ike_suites: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    """By SK_pr (IKEv2) or Ka (IKEv1): the IKE proposal selected before they were derived."""
    children: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    """By (SPI in, SPI out): algorithms and the local/remote selectors."""
    sa_addresses: dict[int, tuple[IpsecProtocol, str, str]] = field(default_factory=dict)

    @classmethod
    def scan(cls, text: str) -> _LogMeta:
        meta = cls()
        ike_prop: dict[str, dict[str, Any]] = {}
        child_prop: dict[str, dict[str, Any]] = {}
        adding: dict[str, IpsecProtocol] = {}  # by thread: the last "adding ... SA" line
        dumps: dict[str, tuple[str, int, bytearray]] = {}  # by thread
        for line in text.splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            thread, _group, uid, msg = m.groups()
            ctx = uid or ""
            pending = dumps.get(thread)
            if pending is not None:
                d = _DUMP.match(msg)
                if d:
                    pending[2].extend(bytes.fromhex(d.group(1)))
                    if len(pending[2]) >= pending[1]:
                        value = bytes(pending[2][: pending[1]])
                        meta.ike_suites[value] = dict(ike_prop.get(pending[0], {}))
                        del dumps[thread]
                    continue
                del dumps[thread]
            h = _HEADER.match(msg)
            if h:
                if h.group(1) in ("Sk_pr secret", "encryption key Ka") and int(h.group(2)):
                    dumps[thread] = (ctx, int(h.group(2)), bytearray())
                continue
            s = _SELECTED.match(msg)
            if s:
                target = ike_prop if s.group(1) == "IKE" else child_prop
                suite = parse_suite(s.group(2))
                if s.group(1) != "IKE":
                    suite.pop("prf_id", None)
                    suite.pop("dh_id", None)
                target[ctx] = suite
                continue
            a = _ADDING.match(msg)
            if a:
                adding[thread] = IpsecProtocol[a.group(2)]
                continue
            sl = _SPI_LINE.match(msg)
            if sl and thread in adding:
                meta.sa_addresses[int(sl.group(1), 16)] = (
                    adding.pop(thread),
                    sl.group(2),
                    sl.group(3),
                )
                continue
            e = _ESTABLISHED.match(msg)
            if e:
                meta.children[(int(e.group(3), 16), int(e.group(4), 16))] = {
                    "algorithms": dict(child_prop.get(ctx, {})),
                    "local_ts": _selectors(e.group(5)),
                    "remote_ts": _selectors(e.group(6)),
                }
        return meta


# --- Wireshark 4.0 UAT --------------------------------------------------------------------------

_WS_IKEV2_ENCR_CBC = {
    128: "AES-CBC-128 [RFC3602]",
    192: "AES-CBC-192 [RFC3602]",
    256: "AES-CBC-256 [RFC3602]",
}
_WS_IKEV2_ENCR_CTR = {
    128: "AES-CTR-128 [RFC5930]",
    192: "AES-CTR-192 [RFC5930]",
    256: "AES-CTR-256 [RFC5930]",
}
_AEAD_ICV = {
    EncrId.ENCR_AES_GCM_8: ("GCM", 8),
    EncrId.ENCR_AES_GCM_12: ("GCM", 12),
    EncrId.ENCR_AES_GCM_16: ("GCM", 16),
    EncrId.ENCR_AES_CCM_8: ("CCM", 8),
    EncrId.ENCR_AES_CCM_12: ("CCM", 12),
    EncrId.ENCR_AES_CCM_16: ("CCM", 16),
}
_WS_IKEV2_INTEG = {
    IntegId.NONE: "NONE [RFC4306]",
    IntegId.AUTH_HMAC_MD5_96: "HMAC_MD5_96 [RFC2403]",
    IntegId.AUTH_HMAC_SHA1_96: "HMAC_SHA1_96 [RFC2404]",
    IntegId.AUTH_HMAC_MD5_128: "HMAC_MD5_128 [RFC4595]",
    IntegId.AUTH_HMAC_SHA1_160: "HMAC_SHA1_160 [RFC4595]",
    IntegId.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}
_WS_ESP_ENCR = {
    EncrId.ENCR_NULL: "NULL",
    EncrId.ENCR_3DES: "TripleDES-CBC [RFC2451]",
    EncrId.ENCR_AES_CBC: "AES-CBC [RFC3602]",
    EncrId.ENCR_AES_CTR: "AES-CTR [RFC3686]",
    EncrId.ENCR_AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EncrId.ENCR_AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EncrId.ENCR_AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}
_WS_ESP_AUTH = {
    IntegId.NONE: "NULL",
    IntegId.AUTH_HMAC_SHA1_96: "HMAC-SHA-1-96 [RFC2404]",
    IntegId.AUTH_HMAC_SHA2_256_128: "HMAC-SHA-256-128 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_384_192: "HMAC-SHA-384-192 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_512_256: "HMAC-SHA-512-256 [RFC4868]",
    IntegId.AUTH_HMAC_MD5_96: "HMAC-MD5-96 [RFC2403]",
}
_WS_ESP_AUTH_UNCHECKED = {
    8: "ANY 64 bit authentication [no checking]",
    12: "ANY 96 bit authentication [no checking]",
    16: "ANY 128 bit authentication [no checking]",
    24: "ANY 192 bit authentication [no checking]",
    32: "ANY 256 bit authentication [no checking]",
}


def _ws_ikev2_encr(e: IkeSaEntry) -> str | None:
    if e.encr_id == EncrId.ENCR_NULL:
        return "NULL [RFC2410]"
    if e.encr_id == EncrId.ENCR_3DES:
        return "3DES [RFC2451]"
    bits = e.encr_key_bits
    if e.encr_id == EncrId.ENCR_AES_CBC and bits:
        return _WS_IKEV2_ENCR_CBC.get(bits)
    if e.encr_id == EncrId.ENCR_AES_CTR and bits:
        return _WS_IKEV2_ENCR_CTR.get(bits)
    if e.encr_id in _AEAD_ICV and bits:
        mode, icv = _AEAD_ICV[EncrId(e.encr_id)]
        return f"AES-{mode}-{bits} with {icv} octet ICV [RFC5282]"
    return None


@dataclass
class WiresharkTable:
    """Wireshark 4.0 UAT preference lines, and the SAs it cannot express (with why)."""

    lines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.text())
        return p

    def tshark_args(self) -> list[str]:
        """``-o`` arguments for tshark, with ESP decryption and ICV checking on."""
        args: list[str] = []
        for line in self.lines:
            args += ["-o", line]
        return [
            *args,
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
        ]

    def write_profile(self, directory: str | Path) -> Path:
        """A Wireshark configuration directory (``WIRESHARK_CONFIG_DIR=<dir> wireshark -r
        x.pcap``) with the three UAT files and ESP decryption turned on."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tables: dict[str, list[str]] = {}
        for line in self.lines:
            _, name, rest = line.split(":", 2)
            tables.setdefault(name, []).append(rest)
        for name in ("esp_sa", "ikev2_decryption_table", "ikev1_decryption_table"):
            body = "".join(r + "\n" for r in tables.get(name, []))
            (d / name).write_text("# This file is automatically generated, DO NOT MODIFY.\n" + body)
        (d / "preferences").write_text(
            "esp.enable_encryption_decode: TRUE\nesp.enable_authentication_check: TRUE\n"
        )
        return d


def wireshark_table(keys: KeySet) -> WiresharkTable:
    """The key table for Wireshark/tshark 4.0.17 (formats measured, peers.md §5).

    IKEv2 lines: ``ispi,rspi,SK_ei,SK_er,"EncAlg",SK_ai,SK_ar,"IntegAlg"`` (buffers
    unquoted hex); IKEv1: ``icookie,Ka``; ESP: ``"IPv4","src","dst","0xSPI","Enc","0xkey",
    "Auth","0xkey"`` (addresses and SPI may be ``*``). Wireshark 4.0 has no ChaCha20-
    Poly1305, CCM or GMAC for ESP, no ChaCha20 for IKEv2, no ESN and no AH keys: such SAs
    are listed in ``skipped``. AES-XCBC/CMAC ESP integrity is written as "ANY 96 bit
    authentication [no checking]" so the payload still decrypts.
    """
    t = WiresharkTable()
    for e in keys.ike:
        label = f"IKEv{e.version} SA {e.spi_i.hex() if e.spi_i else '?'}"
        if not e.has_keys:
            t.skipped.append(f"{label}: no keys")
            continue
        if not e.spi_i or (e.version == 2 and not e.spi_r):
            t.skipped.append(f"{label}: SPIs unknown")
            continue
        if e.version == 1:
            t.lines.append(f"uat:ikev1_decryption_table:{e.spi_i.hex()},{e.enc_key.hex()}")
            continue
        enc = _ws_ikev2_encr(e)
        aead = e.encr_id is not None and encr(e.encr_id, e.encr_key_bits).aead
        auth = _WS_IKEV2_INTEG.get(IntegId(IntegId.NONE if aead else (e.integ_id or 0)))
        if enc is None or auth is None or (not aead and e.integ_id is None):
            t.skipped.append(f"{label}: {e.algorithms()} not in Wireshark 4.0")
            continue
        assert e.spi_r is not None
        t.lines.append(
            "uat:ikev2_decryption_table:"
            f'{e.spi_i.hex()},{e.spi_r.hex()},{e.sk_ei.hex()},{e.sk_er.hex()},"{enc}",'
            f'{"" if aead else e.sk_ai.hex()},{"" if aead else e.sk_ar.hex()},"{auth}"'
        )
    for s in keys.ipsec:
        label = f"{s.protocol.name} SA {s.spi:#010x}"
        if s.protocol != IpsecProtocol.ESP:
            t.skipped.append(f"{label}: Wireshark 4.0 takes no AH keys")
            continue
        if not s.has_keys or not s.algorithms_known:
            t.skipped.append(f"{label}: keys or algorithms unknown")
            continue
        if s.esn:
            t.skipped.append(f"{label}: Wireshark 4.0 has no ESN in esp_sa")
            continue
        assert s.encr_id is not None
        enc = _WS_ESP_ENCR.get(EncrId(s.encr_id)) if s.encr_id in set(EncrId) else None
        if enc is None:
            t.skipped.append(f"{label}: {s.algorithms()} not in Wireshark 4.0")
            continue
        aead = encr(s.encr_id, s.encr_key_bits).aead
        integ_id = IntegId.NONE if aead else IntegId(s.integ_id or 0)
        auth = _WS_ESP_AUTH.get(integ_id)
        if auth is None:
            auth = _WS_ESP_AUTH_UNCHECKED.get(integ(integ_id).icv_len)
        if auth is None:
            t.skipped.append(f"{label}: {s.algorithms()} not in Wireshark 4.0")
            continue
        family = "IPv6" if ":" in (s.src or s.dst or "") else "IPv4"
        akey = "" if integ_id == IntegId.NONE else "0x" + s.integ_key.hex()
        t.lines.append(
            f'uat:esp_sa:"{family}","{s.src or "*"}","{s.dst or "*"}","0x{s.spi:08x}",'
            f'"{enc}","0x{s.encr_key.hex()}","{auth}","{akey}"'
        )
    return t


def _uat_fields(rest: str) -> list[str]:
    """Split a UAT record: comma-separated, fields optionally double-quoted."""
    out: list[str] = []
    for m in re.finditer(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*))\s*(?:,|$)', rest):
        if m.end() == m.start():
            break
        out.append(m.group(1) if m.group(1) is not None else (m.group(2) or ""))
        if m.end() >= len(rest):
            break
    return out


def parse_wireshark(text: str) -> KeySet:
    """A key set from Wireshark 4.0 UAT preference lines (``uat:<table>:<record>``), e.g.
    the ``*.wireshark-keys.txt`` files of the shared captures or :func:`wireshark_table`."""
    v2_encr = {v: k for k, v in _WS_IKEV2_ENCR_CBC.items()}
    v2_ctr = {v: k for k, v in _WS_IKEV2_ENCR_CTR.items()}
    v2_integ = {v: k for k, v in _WS_IKEV2_INTEG.items()}
    esp_encr = {v: k for k, v in _WS_ESP_ENCR.items()}
    esp_auth = {v: k for k, v in _WS_ESP_AUTH.items()}
    out = KeySet()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or not line.startswith("uat:"):
            continue
        _, table, rest = line.split(":", 2)
        f = _uat_fields(rest)
        if table == "ikev1_decryption_table" and len(f) >= 2:
            out.add_ike(IkeSaEntry(1, spi_i=_bytes(f[0]), enc_key=_bytes(f[1]), source="wireshark"))
        elif table == "ikev2_decryption_table" and len(f) >= 8:
            kw: dict[str, Any] = {}
            name = f[4]
            if name in v2_encr:
                kw = {"encr_id": EncrId.ENCR_AES_CBC, "encr_key_bits": v2_encr[name]}
            elif name in v2_ctr:
                kw = {"encr_id": EncrId.ENCR_AES_CTR, "encr_key_bits": v2_ctr[name]}
            elif name == "3DES [RFC2451]":
                kw = {"encr_id": EncrId.ENCR_3DES, "encr_key_bits": None}
            elif name == "NULL [RFC2410]":
                kw = {"encr_id": EncrId.ENCR_NULL}
            else:
                m = re.fullmatch(r"AES-(GCM|CCM)-(\d+) with (\d+) octet ICV \[RFC5282\]", name)
                if m:
                    ids = {v: k for k, v in _AEAD_ICV.items()}
                    kw = {
                        "encr_id": ids[(m.group(1), int(m.group(3)))],
                        "encr_key_bits": int(m.group(2)),
                    }
            integ_id = v2_integ.get(f[7])
            out.add_ike(
                IkeSaEntry(
                    2,
                    spi_i=_bytes(f[0]),
                    spi_r=_bytes(f[1]),
                    sk_ei=_bytes(f[2]),
                    sk_er=_bytes(f[3]),
                    sk_ai=_bytes(f[5]),
                    sk_ar=_bytes(f[6]),
                    integ_id=None if integ_id == IntegId.NONE else integ_id,
                    source="wireshark",
                    **kw,
                )
            )
        elif table == "esp_sa" and len(f) >= 8:
            ekey = _bytes(f[5])
            enc_id = esp_encr.get(f[4])
            bits = None
            if enc_id is not None and enc_id not in (EncrId.ENCR_NULL, EncrId.ENCR_3DES):
                salt = encr(enc_id, 128).salt_len
                bits = (len(ekey) - salt) * 8
            auth_id = esp_auth.get(f[6])
            out.add_ipsec(
                IpsecSaEntry(
                    IpsecProtocol.ESP,
                    spi=_spi(f[3]) if f[3] != "*" else 0,
                    src=None if f[1] == "*" else f[1],
                    dst=None if f[2] == "*" else f[2],
                    encr_id=enc_id,
                    encr_key_bits=bits,
                    encr_key=ekey,
                    integ_id=None if auth_id == IntegId.NONE else auth_id,
                    integ_key=_bytes(f[7]),
                    source="wireshark",
                )
            )
    return out


def iter_entries(keys: KeySet) -> Iterator[IkeSaEntry | IpsecSaEntry]:
    yield from keys.ike
    yield from keys.ipsec
