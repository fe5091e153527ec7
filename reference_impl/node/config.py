"""The node configuration file (YAML), validated with pydantic before anything is bound.

Example (every key but ``addresses`` and ``control.socket`` is optional)::

    name: a
    addresses: [198.18.0.1]            # our IKE/ESP addresses (the first is the default)
    inner_addresses: [198.19.1.1]      # more addresses that are "me" for the policy
    policy: /etc/ipsec-interop/policy.yaml
    ike:
      port: 500                        # our IKE and NAT-T ports (distinct per node on loopback)
      natt_port: 4500
      listen: [ike, natt]              # which of them to bind ([natt] leaves 500 closed)
      peers: {127.0.0.3: [40001, 40002]}   # peers whose ports are not 500/4500
      version: 2                       # initiate with this version (default: the policy's)
      versions: [1, 2]                 # answered as responder
      proposals: [aes128gcm16-prfsha256-x25519]   # strongSwan syntax; default: the policy's
      esp_proposals: [aes128gcm16]
      retransmit: {schedule: [0.5, 0.5, 1, 2]}    # or {timeout: 1, base: 1.5, tries: 3}
      dpd_delay_s: 30
    credentials:
      identity: 198.18.0.1
      psk:
        lab: {value: "secret"}          # or {file: path} or {env: VARIABLE}
      certificate: a.pem                # with private_key and trust_anchors for pubkey auth
      private_key: a.key
      trust_anchors: [ca.pem]
    dataplane:
      mode: api                        # or tun
      clear_port: 40003                # api: our end of the simulated wire
      clear_peers: {0.0.0.0/0: "127.0.0.3:40006"}
      inbound_clear_check: true        # tun: clear packets for us go through the policy first
    logging: {level: info, file: node.log, format: json}
    control: {socket: /run/node-a.sock}
    clock: real                        # or virtual (the harness advances time)

An invalid file is refused with every problem named by its path (``ike.port: ...``) and exit
code 2 (:func:`load`).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reference_impl.errors import LocalProtocolError
from reference_impl.retransmit import RetransmitSchedule

Port = Annotated[int, Field(ge=0, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """A secret given inline, in a file (first line, whitespace stripped), or in a variable."""

    value: str | None = None
    file: Path | None = None
    env: str | None = None
    hex: bool = False
    """The secret is hex (``0x...`` allowed) rather than text."""

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        n = sum(x is not None for x in (self.value, self.file, self.env))
        if n != 1:
            raise ValueError("give exactly one of value, file, env")
        return self

    def resolve(self, where: str) -> bytes:
        if self.value is not None:
            text = self.value
        elif self.file is not None:
            try:
                text = self.file.read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ConfigError(f"{where}.file: cannot read {self.file}: {exc}") from None
        else:
            assert self.env is not None
            got = os.environ.get(self.env)
            if got is None:
                raise ConfigError(f"{where}.env: the variable {self.env} is not set")
            text = got
        if not text:
            raise ConfigError(f"{where}: the secret is empty")
        if self.hex:
            try:
                return bytes.fromhex(text.removeprefix("0x").replace(":", ""))
            except ValueError:
                raise ConfigError(f"{where}: not hex") from None
        return text.encode()


class RetransmitModel(_Model):
    schedule: list[Annotated[float, Field(gt=0)]] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    base: Annotated[float, Field(ge=1)] | None = None
    tries: Annotated[int, Field(ge=0, le=30)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> RetransmitModel:
        strongswan = (self.timeout, self.base, self.tries)
        if self.schedule is not None and any(x is not None for x in strongswan):
            raise ValueError("give either schedule or timeout/base/tries")
        if any(x is None for x in strongswan) and any(x is not None for x in strongswan):
            raise ValueError("timeout, base and tries go together")
        if self.schedule is not None and not self.schedule:
            raise ValueError("schedule needs at least one gap")
        return self

    def to_schedule(self) -> RetransmitSchedule | None:
        if self.schedule:
            return RetransmitSchedule(tuple(self.schedule))
        if self.timeout is not None and self.base is not None and self.tries is not None:
            return RetransmitSchedule.exponential(self.timeout, self.base, self.tries)
        return None


def _both_ports() -> list[Literal["ike", "natt"]]:
    return ["ike", "natt"]


def _both_versions() -> list[Literal[1, 2]]:
    return [1, 2]


class IkeModel(_Model):
    port: Port = 500
    natt_port: Port = 4500
    listen: list[Literal["ike", "natt"]] = Field(default_factory=_both_ports)
    peers: dict[str, tuple[Port, Port]] = Field(default_factory=dict)
    version: Literal[1, 2] | None = None
    versions: list[Literal[1, 2]] = Field(default_factory=_both_versions)
    proposals: list[str] = Field(default_factory=list)
    esp_proposals: list[str] = Field(default_factory=list)
    ah_proposals: list[str] = Field(default_factory=list)
    retransmit: RetransmitModel | None = None
    ike_rekey_s: Annotated[float, Field(gt=0)] | None = None
    ike_over_s: Annotated[float, Field(ge=0)] | None = None
    child_rekey_s: Annotated[float, Field(gt=0)] | None = None
    child_life_s: Annotated[float, Field(gt=0)] | None = None
    child_life_bytes: Annotated[int, Field(ge=0)] | None = None
    """Hard byte lifetime of Child SAs (rekey at 90 %); 0: none (default: the policy's)."""
    child_life_packets: Annotated[int, Field(ge=0)] | None = None
    dpd_delay_s: Annotated[float, Field(gt=0)] | None = None
    force_encap: bool = False
    fragmentation: bool = True
    aggressive: bool = False
    allow_aggressive_psk: bool = False
    childless: bool = False
    packet_selectors: bool = True
    replay_window: Annotated[int, Field(ge=0, le=4096)] = 64

    @field_validator("peers")
    @classmethod
    def _peer_addresses(cls, v: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for addr in v:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"{addr!r} is not an IP address") from None
        return v

    @field_validator("proposals")
    @classmethod
    def _ike_proposals(cls, v: list[str]) -> list[str]:
        from reference_impl.ike.config import ProposalConfig

        for text in v:
            try:
                ProposalConfig.parse(text)
            except LocalProtocolError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("esp_proposals", "ah_proposals")
    @classmethod
    def _child_proposals(cls, v: list[str], info: Any) -> list[str]:
        from reference_impl.ike.config import ProposalConfig
        from reference_impl.sa import IpsecProtocol

        proto = IpsecProtocol.AH if info.field_name == "ah_proposals" else IpsecProtocol.ESP
        for text in v:
            try:
                ProposalConfig.parse(text, proto)
            except LocalProtocolError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _ports(self) -> IkeModel:
        if self.port and self.port == self.natt_port:
            raise ValueError("port and natt_port must differ")
        if self.child_rekey_s and self.child_life_s and self.child_rekey_s >= self.child_life_s:
            raise ValueError("child_rekey_s must be shorter than child_life_s")
        return self


class CredentialsModel(_Model):
    identity: str | None = None
    remote_identities: dict[str, str] = Field(default_factory=dict)
    psk: dict[str, SecretRef | str] = Field(default_factory=dict)
    certificate: Path | None = None
    private_key: Path | None = None
    trust_anchors: list[Path] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cert_pair(self) -> CredentialsModel:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class DataplaneModel(_Model):
    mode: Literal["api", "tun"] = "api"
    tun_name: Annotated[str, Field(min_length=1, max_length=15)] = "ipsec0"
    mtu: Annotated[int, Field(ge=576, le=65535)] = 1400
    table: Annotated[int, Field(ge=1, le=0xFFFFFFF0)] = 2220
    mark: Annotated[int, Field(ge=1, le=0xFFFFFFFF)] = 0x2220
    rule_priority: Annotated[int, Field(ge=1, le=32765)] = 2220
    routes: Literal["auto"] | list[str] = "auto"
    raw_esp: bool = True
    offload: bool = True
    """tun: coalesce received TCP segments into one device write (GRO, virtio-net header)."""
    udp_offload: bool = True
    """ESP-in-UDP: send runs of equal-sized datagrams with one system call (UDP GSO) and
    receive coalesced ones (UDP GRO)."""
    tso: bool = False
    """tun: let the kernel hand over TCP super-packets the node segments (costs checksums
    computed in Python: slower than it saves on this implementation)."""
    inbound_clear_check: bool = True
    """tun: clear packets arriving for a local address are queued (NFQUEUE, iptables) to the
    Policy Agent, which accepts them or discards and audits them (policy-spec §4.2); off, the
    kernel delivers them unchecked."""
    clear_port: Port = 0
    clear_peers: dict[str, str] = Field(default_factory=dict)
    delivered_capacity: Annotated[int, Field(ge=0)] = 10000

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            for r in v:
                try:
                    ipaddress.ip_network(r, strict=False)
                except ValueError:
                    raise ValueError(f"{r!r} is not a prefix") from None
        return v

    @field_validator("clear_peers")
    @classmethod
    def _clear_peers(cls, v: dict[str, str]) -> dict[str, str]:
        for prefix, endpoint in v.items():
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ValueError(f"{prefix!r} is not a prefix") from None
            parse_endpoint(endpoint)
        return v


class LoggingModel(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: Path | None = None
    format: Literal["json", "text"] = "json"


class ControlModel(_Model):
    socket: Path


class NodeConfig(_Model):
    name: Annotated[str, Field(min_length=1, max_length=64)] = "node"
    addresses: Annotated[list[str], Field(min_length=1)]
    inner_addresses: list[str] = Field(default_factory=list)
    policy: Path | None = None
    ike: IkeModel = Field(default_factory=IkeModel)
    credentials: CredentialsModel = Field(default_factory=CredentialsModel)
    dataplane: DataplaneModel = Field(default_factory=DataplaneModel)
    logging: LoggingModel = Field(default_factory=LoggingModel)
    control: ControlModel
    clock: Literal["real", "virtual"] = "real"

    @field_validator("addresses", "inner_addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out = []
        for a in v:
            try:
                out.append(str(ipaddress.ip_address(a)))
            except ValueError:
                raise ValueError(f"{a!r} is not an IP address") from None
        return out


class ConfigError(Exception):
    """An invalid node configuration: the message names every problem by its path."""

    exit_code = 2


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"127.0.0.3:4000"`` or ``"[::1]:4000"`` -> (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r}: want address:port")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        p = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: want address:port") from None
    if not 0 < p < 65536:
        raise ValueError(f"{text!r}: port out of range")
    return host, p


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def parse(data: Any, source: str = "<config>") -> NodeConfig:
    """Validate a mapping; :class:`ConfigError` names each invalid field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a node configuration is a YAML mapping")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid node configuration\n{_format(exc)}") from None


def load(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the node configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not YAML: {exc}") from None
    cfg = parse(data, str(p))
    base = p.parent
    return _relative_to(cfg, base)


def _relative_to(cfg: NodeConfig, base: Path) -> NodeConfig:
    """Relative file names in the configuration are relative to its directory."""

    def fix(x: Path | None) -> Path | None:
        return x if x is None or x.is_absolute() else base / x

    creds = cfg.credentials
    psk: dict[str, SecretRef | str] = {}
    for k, v in creds.psk.items():
        if isinstance(v, SecretRef) and v.file is not None:
            v = v.model_copy(update={"file": fix(v.file)})
        psk[k] = v
    creds = creds.model_copy(
        update={
            "psk": psk,
            "certificate": fix(creds.certificate),
            "private_key": fix(creds.private_key),
            "trust_anchors": [fix(t) for t in creds.trust_anchors],
        }
    )
    return cfg.model_copy(
        update={
            "policy": fix(cfg.policy),
            "credentials": creds,
            "logging": cfg.logging.model_copy(update={"file": fix(cfg.logging.file)}),
        }
    )


def credentials(cfg: CredentialsModel) -> Any:
    """The :class:`~reference_impl.node.ikeconf.Credentials` the configuration names (files
    read now, so a missing key is a configuration error before anything is bound)."""
    from reference_impl.node.ikeconf import Credentials

    psks: dict[str, bytes] = {}
    for ref, secret in cfg.psk.items():
        where = f"credentials.psk.{ref}"
        psks[ref] = secret.encode() if isinstance(secret, str) else secret.resolve(where)
    key = None
    certs: tuple[Any, ...] = ()
    anchors: list[Any] = []
    if cfg.certificate is not None and cfg.private_key is not None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            certs = tuple(x509.load_pem_x509_certificates(cfg.certificate.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"credentials.certificate: {cfg.certificate}: {exc}") from None
        try:
            key = serialization.load_pem_private_key(cfg.private_key.read_bytes(), None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"credentials.private_key: {cfg.private_key}: {exc}") from None
    for i, path in enumerate(cfg.trust_anchors):
        from cryptography import x509

        try:
            anchors += x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"credentials.trust_anchors.{i}: {path}: {exc}") from None
    return Credentials(
        psks=psks,
        identity=cfg.identity,
        remote_identities=dict(cfg.remote_identities),
        private_key=key,
        certificates=certs,
        trust_anchors=tuple(anchors),
    )


def overrides(cfg: IkeModel) -> Any:
    from reference_impl.node.ikeconf import IkeOverrides

    return IkeOverrides(
        version=cfg.version,
        versions=frozenset(cfg.versions),
        proposals=tuple(cfg.proposals),
        esp_proposals=tuple(cfg.esp_proposals),
        ah_proposals=tuple(cfg.ah_proposals),
        schedule=cfg.retransmit.to_schedule() if cfg.retransmit is not None else None,
        ike_rekey_s=cfg.ike_rekey_s,
        ike_over_s=cfg.ike_over_s,
        child_rekey_s=cfg.child_rekey_s,
        child_life_s=cfg.child_life_s,
        child_life_bytes=cfg.child_life_bytes,
        child_life_packets=cfg.child_life_packets,
        dpd_delay_s=cfg.dpd_delay_s,
        force_encap=cfg.force_encap,
        fragmentation=cfg.fragmentation,
        aggressive=cfg.aggressive,
        allow_aggressive_psk=cfg.allow_aggressive_psk,
        childless=cfg.childless,
        packet_selectors=cfg.packet_selectors,
        replay_window=cfg.replay_window,
    )
