"""The policy document (policy-spec §1.1-§1.4) as pydantic models: the schema of the YAML.

These models check shapes and single fields; rules that relate several fields or objects
(V1-V9 of §1.3, references between objects) are checked in :mod:`.validate`, which also
applies the timing profile. Fields a profile can supply default to ``None`` here
("not written"), so an explicit value always wins (§3.5).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reference_impl.policy.addresses import (
    parse_address_token,
    parse_ports,
    parse_protocol,
)
from reference_impl.policy.profiles import PROFILE_NAMES

ENCRYPTION_NAMES = (
    "aes128",
    "aes192",
    "aes256",
    "aes128gcm16",
    "aes256gcm16",
    "chacha20poly1305",
    "3des",
    "des",
    "null",
)
INTEGRITY_NAMES = ("sha1", "sha256", "sha384", "sha512", "md5", "aesxcbc")
AEAD_NAMES = frozenset({"aes128gcm16", "aes256gcm16", "chacha20poly1305"})
DH_NAMES = (
    "modp768",
    "modp1024",
    "modp1536",
    "modp2048",
    "modp3072",
    "modp4096",
    "ecp256",
    "ecp384",
    "ecp521",
    "curve25519",
)
CONSEC_ACTIONS = (
    "requireinrequireout",
    "requireinrequestout",
    "requestinrequestout",
    "requireinclearout",
    "noauthentication",
    "block",
)

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _choice(value: Any, names: tuple[str, ...], what: str) -> str:
    text = str(value).strip().lower()
    if text not in names:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(names)}")
    return text


class RetransmitModel(_Model):
    schedule: list[PositiveSeconds] | None = None
    """Gaps between transmissions; ``None`` = from the timing profile."""

    @field_validator("schedule")
    @classmethod
    def _non_empty(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v:
            raise ValueError("the schedule needs at least one gap, e.g. [0.5, 0.5, 1, 2]")
        return v


class MainModeProposalModel(_Model):
    enc: str
    integ: str
    dh: str

    @field_validator("enc")
    @classmethod
    def _enc(cls, v: Any) -> str:
        return _choice(v, ENCRYPTION_NAMES, "encryption")

    @field_validator("integ")
    @classmethod
    def _integ(cls, v: Any) -> str:
        return _choice(v, INTEGRITY_NAMES, "integrity")

    @field_validator("dh")
    @classmethod
    def _dh(cls, v: Any) -> str:
        return _choice(v, DH_NAMES, "DH group")


def _default_mm_proposals() -> list[MainModeProposalModel]:
    # RFC 8247 §3: AES-CBC with SHA2-256 and group 14 are MUST; SHA-1 stays as MUST-. The
    # spec's Windows-era example also lists 3des/modp1024, but group 2 is SHOULD NOT (RFC 8247
    # §3.4): a policy that wants it names it explicitly.
    return [
        MainModeProposalModel(enc="aes128", integ="sha256", dh="modp2048"),
        MainModeProposalModel(enc="aes128", integ="sha1", dh="modp2048"),
    ]


class MainModeModel(_Model):
    lifetime_s: Annotated[int, Field(gt=0)] = 28800
    max_quick_modes: Annotated[int, Field(ge=0)] | None = None
    """0 = unlimited; ``None`` = not written (0, or 1 when ``master_key_pfs``, V4)."""
    master_key_pfs: bool = False
    proposals: list[MainModeProposalModel] = Field(default_factory=_default_mm_proposals)


class IkeModel(_Model):
    version: Literal["ikev1", "ikev2"] = "ikev1"
    local_port: Port = 500
    remote_port: Port = 500
    nat_traversal: Literal["auto", "force_encap", "off"] = "auto"
    retransmit: RetransmitModel = Field(default_factory=RetransmitModel)
    main_mode: MainModeModel = Field(default_factory=MainModeModel)


class SettingsModel(_Model):
    ordering: Literal["auto", "explicit"] = "auto"
    default_action: Literal["bypass", "discard"] = "bypass"
    timing_profile: str = "reference"
    implicit_ike_bypass: bool = True
    on_policy_change: Literal["delete_affected_sas", "keep_sas"] = "delete_affected_sas"
    fips: bool = False
    """FIPS mode (V6): fallback to clear and the ``pass`` shunt are refused."""
    ike: IkeModel = Field(default_factory=IkeModel)

    @field_validator("timing_profile")
    @classmethod
    def _profile(cls, v: Any) -> str:
        return _choice(v, PROFILE_NAMES, "timing profile")


class LifetimeModel(_Model):
    seconds: Annotated[int, Field(gt=0)] = 3600
    kilobytes: Annotated[int, Field(gt=0)] = 100000


class SecurityMethodModel(_Model):
    protocol: Literal["esp", "ah", "ah+esp"]
    encryption: str | None = None
    integrity: str | None = None
    lifetime: LifetimeModel = Field(default_factory=LifetimeModel)

    @field_validator("encryption")
    @classmethod
    def _enc(cls, v: Any) -> str | None:
        return None if v is None else _choice(v, ENCRYPTION_NAMES, "encryption")

    @field_validator("integrity")
    @classmethod
    def _integ(cls, v: Any) -> str | None:
        if v is None or str(v).lower() == "none":
            return None
        return _choice(v, INTEGRITY_NAMES, "integrity")

    @model_validator(mode="after")
    def _shape(self) -> SecurityMethodModel:
        if self.protocol == "ah":
            if self.encryption is not None:
                raise ValueError("AH does not encrypt: remove 'encryption' or use protocol: esp")
            if self.integrity is None:
                raise ValueError("AH needs 'integrity' (e.g. integrity: sha1)")
        else:
            if self.encryption is None:
                raise ValueError(
                    f"{self.protocol} needs 'encryption' (e.g. encryption: aes128; "
                    "null only for integrity-only ESP)"
                )
            aead = self.encryption in AEAD_NAMES
            if aead and self.integrity is not None and self.protocol == "esp":
                raise ValueError(f"{self.encryption} is AEAD: remove 'integrity'")
            if not aead and self.integrity is None:
                raise ValueError(f"{self.encryption} needs 'integrity' (e.g. integrity: sha1)")
        return self

    @property
    def encrypts(self) -> bool:
        return self.protocol != "ah" and self.encryption not in (None, "null")


class FallbackModel(_Model):
    """Fallback knobs (§1.2); ``None`` = from the timing profile."""

    after_s: Seconds | None = None
    on_negotiation_failure: bool | None = None
    icmp_fast_fallback: bool | None = None
    continue_ike_after_fallback: bool | None = None
    soft_sa_idle_s: PositiveSeconds | None = None
    """Explicit ``null`` = no idle timeout (the field is then in ``model_fields_set``)."""
    soft_sa_max_lifetime_s: PositiveSeconds | None = None


class HoldQueueModel(_Model):
    length: Annotated[int, Field(ge=1, le=4096)] | None = None
    policy: Literal["keep_last", "keep_first"] | None = None


class FilterActionModel(_Model):
    name: str
    description: str = ""
    type: Literal["permit", "block", "negotiate"]
    security_methods: list[SecurityMethodModel] = Field(default_factory=list)
    session_key_pfs: bool = False
    inbound_passthrough: bool = False
    allow_fallback: bool = False
    fallback: FallbackModel = Field(default_factory=FallbackModel)
    negotiation_shunt: Literal["hold", "drop", "pass"] | None = None
    hold_queue: HoldQueueModel = Field(default_factory=HoldQueueModel)
    failure_holddown_s: Seconds | None = None
    send_icmp_on_discard: bool = False
    accept_clear_grace_s: Seconds = 0
    nd_mode: Literal["none", "secure", "boundary"] = "none"
    guarantee_encryption: bool = False


class KerberosModel(_Model):
    pass


class CertificateModel(_Model):
    ca: str
    cert_to_account_mapping: bool = False


class PresharedKeyModel(_Model):
    secret_ref: str


class AuthMethodModel(_Model):
    """One method: exactly one of ``kerberos``, ``certificate``, ``preshared_key``."""

    kerberos: KerberosModel | None = None
    certificate: CertificateModel | None = None
    preshared_key: PresharedKeyModel | None = None

    @model_validator(mode="after")
    def _one(self) -> AuthMethodModel:
        given = [n for n in ("kerberos", "certificate", "preshared_key") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "write exactly one method per list item: {kerberos: {}}, "
                "{certificate: {ca: ...}} or {preshared_key: {secret_ref: ...}}"
            )
        return self

    @property
    def kind(self) -> str:
        if self.kerberos is not None:
            return "kerberos"
        return "certificate" if self.certificate is not None else "preshared_key"


class AuthMethodSetModel(_Model):
    name: str
    methods: Annotated[list[AuthMethodModel], Field(min_length=1)]


class FilterModel(_Model):
    src: str
    dst: str
    proto: str | int = "any"
    src_port: str | int = "any"
    dst_port: str | int = "any"
    icmp_type: Annotated[int, Field(ge=0, le=255)] | None = None
    icmp_code: Annotated[int, Field(ge=0, le=255)] | None = None
    mirrored: bool = True
    description: str = ""

    @field_validator("src", "dst", mode="before")
    @classmethod
    def _addr(cls, v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"{v!r} is not an address token; quote it, e.g. '10.1.0.10'")
        parse_address_token(v)
        return v.strip()

    @field_validator("proto")
    @classmethod
    def _proto(cls, v: str | int) -> str | int:
        parse_protocol(v)
        return v

    @field_validator("src_port", "dst_port")
    @classmethod
    def _ports(cls, v: str | int) -> str | int:
        parse_ports(v)
        return v


class FilterListModel(_Model):
    name: str
    description: str = ""
    filters: Annotated[list[FilterModel], Field(min_length=1)]


class TunnelModel(_Model):
    local_endpoint: str
    remote_endpoint: str


class RuleModel(_Model):
    name: str
    filter_list: str
    filter_action: str | None = None
    action: str | None = None
    """Vista+ connection security rule shorthand (§1.4), instead of ``filter_action``."""
    security_methods: list[SecurityMethodModel] | None = None
    """Only with ``action``: the quick-mode methods of the expanded action."""
    auth_methods: str | None = None
    tunnel: TunnelModel | None = None
    connection_type: Literal["all", "lan", "remote_access"] = "all"
    enabled: bool = True

    @field_validator("action")
    @classmethod
    def _consec(cls, v: Any) -> str | None:
        return None if v is None else _choice(v, CONSEC_ACTIONS, "connection security action")


class DefaultResponseRuleModel(_Model):
    enabled: bool | None = None
    """``None`` = the timing profile decides (§1.2, §3.5)."""
    security_methods: list[SecurityMethodModel] = Field(default_factory=list)
    auth_methods: str | None = None


class PolicyModel(_Model):
    name: str
    description: str = ""
    settings: SettingsModel = Field(default_factory=SettingsModel)
    default_response_rule: DefaultResponseRuleModel = Field(
        default_factory=DefaultResponseRuleModel
    )
    auth_method_sets: list[AuthMethodSetModel] = Field(default_factory=list)
    filter_lists: list[FilterListModel] = Field(default_factory=list)
    filter_actions: list[FilterActionModel] = Field(default_factory=list)
    rules: list[RuleModel] = Field(default_factory=list)


class PolicyDocument(_Model):
    """The YAML file: one top-level ``policy:`` mapping."""

    policy: PolicyModel
