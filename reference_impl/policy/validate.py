"""Load and validate a policy: schema, references, rules V1-V9 (policy-spec §1.3), profiles.

Every problem becomes an :class:`Issue` naming the file, the line, the field (as a path such
as ``policy.filter_actions[2].fallback.icmp_fast_fallback``), the rule broken and what to
change. All issues of a file are reported together in one :class:`PolicyValidationError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from pydantic import ValidationError

from reference_impl.errors import LocalProtocolError
from reference_impl.policy.addresses import (
    ANY_PORTS,
    ICMP_PROTOCOLS,
    PORT_PROTOCOLS,
    parse_address_token,
    parse_ports,
    parse_protocol,
)
from reference_impl.policy.model import (
    AuthMethodModel,
    FilterActionModel,
    PolicyDocument,
    PolicyModel,
    SecurityMethodModel,
)
from reference_impl.policy.profiles import PROFILES, HoldPolicy, Shunt, TimingProfile
from reference_impl.policy.resolved import (
    DEFAULT_SECURITY_METHODS,
    Action,
    AuthMethod,
    DefaultResponseRule,
    Filter,
    FilterAction,
    IkeSettings,
    MainModeProposal,
    NdMode,
    Policy,
    Rule,
    SecurityMethod,
)
from reference_impl.policy.yamlsrc import Path, SourceMap, YamlSourceError, load_yaml
from reference_impl.retransmit import RetransmitSchedule


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation problem."""

    file: str
    line: int
    path: str
    """Dotted path of the offending field, e.g. ``policy.rules[3].auth_methods``."""
    rule: str
    """``V1``..``V9`` (§1.3), ``schema``, ``reference``, ``yaml`` or another tag."""
    message: str
    hint: str = ""

    @property
    def field(self) -> str:
        """The last component of ``path`` (the field name)."""
        last = self.path.rsplit(".", 1)[-1]
        return last.split("[", 1)[0]

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.path}: {self.message} [{self.rule}]"
        return f"{text}; {self.hint}" if self.hint else text

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "field": self.field,
            "rule": self.rule,
            "message": self.message,
            "hint": self.hint,
        }


class PolicyValidationError(LocalProtocolError):
    """A policy was rejected; ``issues`` lists every problem found (never empty)."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(issues)
        head = f"policy rejected ({len(self.issues)} problem{'s' if len(self.issues) > 1 else ''})"
        super().__init__(head + ":\n" + "\n".join(f"  {i}" for i in self.issues))


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_policy_file(path: str | FsPath) -> Policy:
    p = FsPath(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyValidationError(
            [Issue(str(p), 0, "policy", "file", f"cannot read the policy: {exc}")]
        ) from None
    return load_policy_text(text, str(p))


def load_policy_text(text: str, file: str = "<policy>") -> Policy:
    """Parse, validate and resolve a policy; raise :class:`PolicyValidationError` if invalid."""
    try:
        data, smap = load_yaml(text, file)
    except YamlSourceError as exc:
        raise PolicyValidationError(
            [Issue(file, exc.line, "policy", "yaml", exc.message)]
        ) from None
    return load_policy_data(data, smap)


def load_policy_data(data: Any, smap: SourceMap) -> Policy:
    if not isinstance(data, dict) or "policy" not in data:
        raise PolicyValidationError(
            [
                Issue(
                    smap.file,
                    smap.line_of(()),
                    "policy",
                    "schema",
                    "the file has no top-level 'policy:' mapping",
                    "start the file with 'policy:' and indent the policy under it",
                )
            ]
        )
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise PolicyValidationError(_schema_issues(exc, smap)) from None
    return _Checker(doc.policy, smap).run()


# -- schema errors -------------------------------------------------------------------------

_PYDANTIC_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "is-instance"}


def _schema_issues(exc: ValidationError, smap: SourceMap) -> list[Issue]:
    issues: list[Issue] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        path: list[str | int] = []
        for part in err["loc"]:
            if (
                isinstance(part, str)
                and ("[" in part or part in _PYDANTIC_TAGS)
                and (*path, part) not in smap.lines
            ):
                continue
            path.append(part)
        tpath = tuple(path)
        etype = err["type"]
        field = next((p for p in reversed(tpath) if isinstance(p, str)), "policy")
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        hint = ""
        if etype == "missing":
            msg = f"required field '{field}' is missing"
            hint = f"add '{field}:' here"
        elif etype == "extra_forbidden":
            msg = f"unknown field '{field}'"
            hint = "remove it or fix its spelling (see policy-spec §1.2 for the fields)"
        elif etype == "literal_error":
            msg = f"invalid value {err.get('input')!r}: {msg}"
            hint = "use one of the listed values"
        elif etype.endswith("_parsing") or etype.endswith("_type"):
            msg = f"invalid value {err.get('input')!r}: {msg}"
        key = (format_path(tpath), msg)
        if key in seen:
            continue
        seen.add(key)
        issues.append(Issue(smap.file, smap.line_of(tpath), key[0], "schema", msg, hint))
    return issues


# -- semantic checks -----------------------------------------------------------------------


def _methods(models: Sequence[SecurityMethodModel]) -> tuple[SecurityMethod, ...]:
    return tuple(
        SecurityMethod(
            m.protocol, m.encryption, m.integrity, m.lifetime.seconds, m.lifetime.kilobytes
        )
        for m in models
    )


def _auth(models: Sequence[AuthMethodModel]) -> tuple[AuthMethod, ...]:
    out: list[AuthMethod] = []
    for m in models:
        if m.certificate is not None:
            out.append(
                AuthMethod("certificate", m.certificate.ca, m.certificate.cert_to_account_mapping)
            )
        elif m.preshared_key is not None:
            out.append(AuthMethod("preshared_key", secret_ref=m.preshared_key.secret_ref))
        else:
            out.append(AuthMethod("kerberos"))
    return tuple(out)


class _Checker:
    def __init__(self, model: PolicyModel, smap: SourceMap) -> None:
        self.m = model
        self.smap = smap
        self.issues: list[Issue] = []
        self.warnings: list[str] = []

    def err(self, path: Path, rule: str, message: str, hint: str = "") -> None:
        full = ("policy", *path)
        self.issues.append(
            Issue(self.smap.file, self.smap.line_of(full), format_path(full), rule, message, hint)
        )

    def warn(self, path: Path, message: str) -> None:
        full = ("policy", *path)
        self.warnings.append(
            f"{self.smap.file}:{self.smap.line_of(full)}: {format_path(full)}: {message}"
        )

    def written(self, path: Path) -> bool:
        return ("policy", *path) in self.smap.lines

    # -- main -----------------------------------------------------------------------------

    def run(self) -> Policy:
        m = self.m
        s = m.settings
        profile = PROFILES[s.timing_profile]
        self._unique("filter_lists", [x.name for x in m.filter_lists])
        self._unique("filter_actions", [x.name for x in m.filter_actions])
        self._unique("auth_method_sets", [x.name for x in m.auth_method_sets])
        self._unique("rules", [x.name for x in m.rules])

        if not s.implicit_ike_bypass:
            self.err(
                ("settings", "implicit_ike_bypass"),
                "C5",
                "implicit_ike_bypass MUST NOT be false (RFC 4301 §5.2: IKE traffic needs a "
                "BYPASS entry)",
                "remove the field or set it to true",
            )
        ike = self._ike(profile)
        actions = {
            a.name: self._action(i, a, profile, ike.schedule)
            for i, a in enumerate(m.filter_actions)
        }
        auth_sets = {a.name: (i, _auth(a.methods)) for i, a in enumerate(m.auth_method_sets)}
        lists = {fl.name: i for i, fl in enumerate(m.filter_lists)}
        filters_by_list = {
            fl.name: tuple(self._filter(i, j, f) for j, f in enumerate(fl.filters))
            for i, fl in enumerate(m.filter_lists)
        }
        rules = [
            self._rule(i, r, actions, auth_sets, lists, filters_by_list, profile, ike.schedule)
            for i, r in enumerate(m.rules)
        ]
        built = [r for r in rules if r is not None]
        self._tunnel_pairs(built)
        drr = self._drr(profile, auth_sets)
        if self.issues:
            raise PolicyValidationError(self.issues)
        return Policy(
            name=m.name,
            source=self.smap.file,
            ordering=s.ordering,
            default_action=Action.BYPASS if s.default_action == "bypass" else Action.DISCARD,
            profile=profile,
            on_policy_change=s.on_policy_change,
            fips=s.fips,
            ike=ike,
            rules=tuple(built),
            default_response_rule=drr,
            warnings=tuple(self.warnings),
        )

    def _unique(self, section: str, names: list[str]) -> None:
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                self.err(
                    (section, i, "name"),
                    "reference",
                    f"duplicate name {name!r} (also {section}[{seen[name]}])",
                    "give every object of a section its own name",
                )
            else:
                seen[name] = i

    # -- settings -------------------------------------------------------------------------

    def _ike(self, profile: TimingProfile) -> IkeSettings:
        ike = self.m.settings.ike
        version = 1 if ike.version == "ikev1" else 2
        if version == 1 and ike.remote_port == 4500:
            self.err(
                ("settings", "ike", "remote_port"),
                "N1",
                "remote_port: 4500 is for IKEv2 only (policy-spec §3.6 N1/N2): IKEv1 always "
                "starts on UDP 500 and floats to 4500 after NAT detection",
                "use remote_port: 500, or ike.version: ikev2",
            )
        gaps = ike.retransmit.schedule
        schedule = RetransmitSchedule(tuple(gaps)) if gaps is not None else profile.schedule
        mm = ike.main_mode
        max_qm = mm.max_quick_modes if mm.max_quick_modes is not None else 0
        if mm.master_key_pfs:
            if mm.max_quick_modes is not None and mm.max_quick_modes != 1:
                self.err(
                    ("settings", "ike", "main_mode", "max_quick_modes"),
                    "V4",
                    f"master_key_pfs: true forces max_quick_modes to 1, but it is "
                    f"{mm.max_quick_modes}",
                    "remove max_quick_modes (it becomes 1) or set master_key_pfs: false",
                )
            max_qm = 1
        return IkeSettings(
            version=version,
            local_port=ike.local_port,
            remote_port=ike.remote_port,
            nat_traversal=ike.nat_traversal,
            schedule=schedule,
            mm_lifetime_s=mm.lifetime_s,
            max_quick_modes=max_qm,
            master_key_pfs=mm.master_key_pfs,
            proposals=tuple(MainModeProposal(p.enc, p.integ, p.dh) for p in mm.proposals),
        )

    # -- filter actions -------------------------------------------------------------------

    def _action(
        self,
        i: int,
        a: FilterActionModel,
        profile: TimingProfile,
        schedule: RetransmitSchedule,
    ) -> FilterAction:
        base: Path = ("filter_actions", i)
        if a.type == "negotiate" and not a.security_methods:
            self.err(
                (*base, "security_methods"),
                "V1",
                f"negotiate action {a.name!r} has no security method",
                "add at least one, e.g. security_methods: "
                "[{protocol: esp, encryption: aes128, integrity: sha1}]",
            )
        kind = {"permit": Action.BYPASS, "block": Action.DISCARD, "negotiate": Action.PROTECT}
        fa = self._resolve_knobs(
            name=a.name,
            outbound=kind[a.type],
            inbound=kind[a.type],
            model=a,
            profile=profile,
            methods=_methods(a.security_methods),
        )
        if a.type == "negotiate":
            self._check_knobs(base, fa, a, schedule, shorthand="")
        if a.guarantee_encryption:
            for k, sm in enumerate(a.security_methods):
                if not sm.encrypts:
                    self.err(
                        (*base, "security_methods", k),
                        "GE",
                        "guarantee_encryption: true refuses methods without encryption "
                        f"({sm.protocol} {sm.encryption or ''})",
                        "remove this method or use ESP with a cipher",
                    )
        return fa

    def _resolve_knobs(
        self,
        *,
        name: str,
        outbound: Action,
        inbound: Action,
        model: FilterActionModel | None,
        profile: TimingProfile,
        methods: tuple[SecurityMethod, ...],
        allow_fallback: bool | None = None,
        nd_mode: NdMode | None = None,
        shorthand: str = "",
    ) -> FilterAction:
        fb = model.fallback if model is not None else None
        hq = model.hold_queue if model is not None else None
        allow = model.allow_fallback if model is not None else bool(allow_fallback)

        def pick(obj: Any, field: str, default: Any) -> Any:
            if obj is not None and field in obj.model_fields_set:
                return getattr(obj, field)
            return default

        shunt = pick(
            model,
            "negotiation_shunt",
            profile.shunt_request if allow else profile.shunt_require,
        )
        holddown = pick(model, "failure_holddown_s", profile.failure_holddown_s)
        return FilterAction(
            name=name,
            outbound=outbound,
            inbound=inbound,
            security_methods=methods,
            session_key_pfs=model.session_key_pfs if model is not None else False,
            inbound_passthrough=model.inbound_passthrough if model is not None else False,
            allow_fallback=allow,
            fallback_after_s=float(pick(fb, "after_s", profile.fallback_after_s)),
            on_negotiation_failure=bool(
                pick(fb, "on_negotiation_failure", profile.on_negotiation_failure)
            ),
            icmp_fast_fallback=bool(pick(fb, "icmp_fast_fallback", profile.icmp_fast_fallback)),
            continue_ike_after_fallback=bool(
                pick(fb, "continue_ike_after_fallback", profile.continue_ike_after_fallback)
            ),
            soft_sa_idle_s=pick(fb, "soft_sa_idle_s", profile.soft_sa_idle_s),
            soft_sa_max_lifetime_s=pick(
                fb, "soft_sa_max_lifetime_s", profile.soft_sa_max_lifetime_s
            ),
            negotiation_shunt=Shunt(shunt),
            hold_length=int(pick(hq, "length", profile.hold_length)),
            hold_policy=HoldPolicy(pick(hq, "policy", profile.hold_policy)),
            failure_holddown_s=float(holddown),
            send_icmp_on_discard=model.send_icmp_on_discard if model is not None else False,
            accept_clear_grace_s=float(model.accept_clear_grace_s) if model is not None else 0.0,
            nd_mode=NdMode(model.nd_mode) if model is not None else (nd_mode or NdMode.NONE),
            guarantee_encryption=model.guarantee_encryption if model is not None else False,
            shorthand=shorthand,
        )

    def _check_knobs(
        self,
        base: Path,
        fa: FilterAction,
        a: FilterActionModel | None,
        schedule: RetransmitSchedule,
        shorthand: str,
    ) -> None:
        """V3, V6, V7, V8, V9 on the effective values of one negotiate action."""
        fb = a.fallback if a is not None else None
        written_fb = fb.model_fields_set if fb is not None else set()
        written = a.model_fields_set if a is not None else set()
        where = f"action {fa.name!r}"
        if a is None:
            base = (*base, "action")
        if fa.allow_fallback and fa.guarantee_encryption:
            self.err(
                base if a is None else (*base, "allow_fallback"),
                "V3",
                f"{where}: allow_fallback: true cannot go with guarantee_encryption: true",
                "set allow_fallback: false or guarantee_encryption: false",
            )
        if self.m.settings.fips:
            if fa.allow_fallback:
                self.err(
                    base if a is None else (*base, "allow_fallback"),
                    "V6",
                    f"{where}: FIPS mode (settings.fips) refuses fallback to clear",
                    f"{shorthand} implies fallback: use requireinrequireout, or fips: false"
                    if shorthand
                    else "set allow_fallback: false, or settings.fips: false",
                )
            if fa.negotiation_shunt is Shunt.PASS:
                self.err(
                    base if "negotiation_shunt" not in written else (*base, "negotiation_shunt"),
                    "V6",
                    f"{where}: FIPS mode refuses negotiation_shunt: pass",
                    "use negotiation_shunt: hold or drop",
                )
        if fa.allow_fallback:
            t_ex = schedule.failure_after
            if fa.fallback_after_s > t_ex + 1e-9:
                if "after_s" in written_fb:
                    path: Path = (*base, "fallback", "after_s")
                elif self.written(("settings", "ike", "retransmit", "schedule")):
                    path = ("settings", "ike", "retransmit", "schedule")
                else:
                    path = ("settings", "timing_profile")
                self.err(
                    path,
                    "V7",
                    f"{where}: fallback.after_s ({fa.fallback_after_s:g} s) must not exceed the "
                    f"exchange timeout sum(ike.retransmit.schedule) = {t_ex:g} s: the peer-silent "
                    "verdict must come before the exchange fails",
                    f"lower fallback.after_s below {t_ex:g} or lengthen the schedule",
                )
        if fa.icmp_fast_fallback and not fa.allow_fallback:
            self.err(
                (*base, "fallback", "icmp_fast_fallback") if a is not None else base,
                "V8",
                f"{where}: fallback.icmp_fast_fallback: true requires allow_fallback: true",
                "remove icmp_fast_fallback (ICMP is never a reason to give up a require rule) "
                "or set allow_fallback: true",
            )
        if fa.negotiation_shunt is Shunt.PASS and not fa.allow_fallback:
            self.err(
                (*base, "negotiation_shunt") if a is not None else base,
                "V9",
                f"{where}: negotiation_shunt: pass requires allow_fallback: true (clear "
                "traffic during negotiation is a fallback by another name)",
                "use negotiation_shunt: hold or drop, or set allow_fallback: true",
            )

    # -- filters ---------------------------------------------------------------------------

    def _filter(self, i: int, j: int, f: Any) -> Filter:
        base: Path = ("filter_lists", i, "filters", j)
        src, dst = parse_address_token(f.src), parse_address_token(f.dst)
        if (
            src.kind == "literal"
            and dst.kind == "literal"
            and not src.literal_versions & dst.literal_versions
        ):
            self.err(
                (*base, "dst"),
                "V5",
                f"src {f.src} and dst {f.dst} are different address families; an SPD "
                "entry's local and remote must be one family (RFC 4301 §4.4.1.1)",
                "use two filters, one per family",
            )
        proto = parse_protocol(f.proto)
        src_ports, dst_ports = parse_ports(f.src_port), parse_ports(f.dst_port)
        for name, ports in (("src_port", src_ports), ("dst_port", dst_ports)):
            if ports != ANY_PORTS and proto not in PORT_PROTOCOLS:
                self.err(
                    (*base, name),
                    "schema",
                    f"{name} needs proto tcp, udp or sctp (proto is {f.proto})",
                    "set proto, or use icmp_type/icmp_code for ICMP",
                )
        icmp: tuple[int, int] | None = None
        if f.icmp_code is not None and f.icmp_type is None:
            self.err((*base, "icmp_code"), "schema", "icmp_code without icmp_type", "add icmp_type")
        if f.icmp_type is not None:
            if proto not in ICMP_PROTOCOLS:
                self.err(
                    (*base, "icmp_type"),
                    "schema",
                    f"icmp_type needs proto icmp or icmpv6 (proto is {f.proto})",
                    "set proto: icmp",
                )
            t = f.icmp_type << 8
            icmp = (t | f.icmp_code, t | f.icmp_code) if f.icmp_code is not None else (t, t | 255)
        return Filter(j, src, dst, proto, src_ports, dst_ports, icmp, f.mirrored)

    # -- rules ----------------------------------------------------------------------------

    def _rule(
        self,
        i: int,
        r: Any,
        actions: dict[str, FilterAction],
        auth_sets: dict[str, tuple[int, tuple[AuthMethod, ...]]],
        lists: dict[str, int],
        filters_by_list: dict[str, tuple[Filter, ...]],
        profile: TimingProfile,
        schedule: RetransmitSchedule,
    ) -> Rule | None:
        base: Path = ("rules", i)
        ok = True
        if r.filter_list not in lists:
            self.err(
                (*base, "filter_list"),
                "reference",
                f"no filter list named {r.filter_list!r}",
                "define it under filter_lists or use one of: " + _names(lists),
            )
            ok = False
        if (r.filter_action is None) == (r.action is None):
            self.err(
                base if r.filter_action is None else (*base, "action"),
                "schema",
                "a rule needs exactly one of filter_action (a named action) or action "
                "(a connection security shorthand)",
                "keep one of the two",
            )
            return None
        if r.filter_action is not None:
            if r.security_methods is not None:
                self.err(
                    (*base, "security_methods"),
                    "schema",
                    "security_methods belong to the filter action, not to the rule",
                    "move them to the filter action (or use action: with a shorthand)",
                )
            if r.filter_action not in actions:
                self.err(
                    (*base, "filter_action"),
                    "reference",
                    f"no filter action named {r.filter_action!r}",
                    "define it under filter_actions or use one of: " + _names(actions),
                )
                return None
            fa = actions[r.filter_action]
        else:
            fa = self._shorthand(i, r, profile, schedule)
        needs_auth = Action.PROTECT in (fa.outbound, fa.inbound)
        auth_methods: tuple[AuthMethod, ...] = ()
        if r.auth_methods is not None:
            if r.auth_methods not in auth_sets:
                self.err(
                    (*base, "auth_methods"),
                    "reference",
                    f"no auth method set named {r.auth_methods!r}",
                    "define it under auth_method_sets or use one of: " + _names(auth_sets),
                )
                ok = False
            else:
                auth_methods = auth_sets[r.auth_methods][1]
        elif needs_auth:
            self.err(
                (*base, "auth_methods"),
                "V1",
                f"rule {r.name!r} negotiates ({fa.name}) but has no auth_methods",
                "add auth_methods: <name of an auth_method_sets entry>",
            )
            ok = False
        tunnel = None
        if r.tunnel is not None:
            tunnel = self._tunnel(i, r)
        if fa.shorthand == "requireinclearout" and r.tunnel is None:
            self.err(
                (*base, "action"),
                "schema",
                "requireinclearout applies to tunnel rules only (policy-spec §1.4)",
                "add a tunnel, or use requireinrequireout",
            )
        if not ok or r.filter_list not in lists:
            return None
        filters = filters_by_list[r.filter_list]
        if r.tunnel is not None:
            li = lists[r.filter_list]
            for f in filters:
                fpath: Path = ("filter_lists", li, "filters", f.index)
                if f.mirrored:
                    self.err(
                        (*fpath, "mirrored"),
                        "V2",
                        f"filter list {r.filter_list!r} is used by tunnel rule {r.name!r}, so "
                        "its filters must not be mirrored (one rule per direction)",
                        "set mirrored: false and add a rule for the reverse direction",
                    )
                if f.proto != 0 or f.src_ports != ANY_PORTS or f.dst_ports != ANY_PORTS:
                    self.warn(
                        fpath,
                        f"V2: tunnel rule {r.name!r}: filters of tunnel rules should not "
                        "specify protocol or ports",
                    )
        return Rule(
            name=r.name,
            index=i,
            filter_list=r.filter_list,
            filters=filters,
            action=fa,
            auth_set=r.auth_methods,
            auth_methods=auth_methods,
            tunnel=tunnel,
            connection_type=r.connection_type,
            enabled=r.enabled,
        )

    def _shorthand(
        self, i: int, r: Any, profile: TimingProfile, schedule: RetransmitSchedule
    ) -> FilterAction:
        """Expand a Vista+ consec action (§1.4)."""
        methods = _methods(r.security_methods) if r.security_methods else DEFAULT_SECURITY_METHODS
        act = r.action
        name = f"{r.name}:{act}"
        if act == "noauthentication":
            return FilterAction(name, Action.BYPASS, Action.BYPASS, shorthand=act)
        if act == "block":
            return FilterAction(name, Action.DISCARD, Action.DISCARD, shorthand=act)
        table = {
            "requireinrequireout": (Action.PROTECT, False, NdMode.NONE),
            "requireinrequestout": (Action.PROTECT, True, NdMode.SECURE),
            "requestinrequestout": (Action.PROTECT, True, NdMode.BOUNDARY),
            "requireinclearout": (Action.BYPASS, False, NdMode.NONE),
        }
        outbound, allow, nd = table[act]
        fa = self._resolve_knobs(
            name=name,
            outbound=outbound,
            inbound=Action.PROTECT,
            model=None,
            profile=profile,
            methods=methods,
            allow_fallback=allow,
            nd_mode=nd,
            shorthand=act,
        )
        self._check_knobs(("rules", i), fa, None, schedule, shorthand=act)
        return fa

    def _tunnel(self, i: int, r: Any) -> tuple[Any, Any] | None:
        base: Path = ("rules", i, "tunnel")
        eps = []
        for field in ("local_endpoint", "remote_endpoint"):
            text = getattr(r.tunnel, field)
            try:
                eps.append(ipaddress.ip_address(str(text).strip()))
            except ValueError:
                self.err(
                    (*base, field),
                    "V2",
                    f"{field} {text!r} is not an IP address",
                    "a tunnel endpoint is one IP address (no prefix, range or token)",
                )
        if len(eps) != 2:
            return None
        local, remote = eps
        if local.version != remote.version:
            self.err(
                (*base, "remote_endpoint"),
                "V5",
                f"tunnel endpoints {local} and {remote} are different address families",
                "use endpoints of one family",
            )
            return None
        if local == remote:
            self.err(
                (*base, "remote_endpoint"),
                "V2",
                "local_endpoint and remote_endpoint are the same address",
                "each direction needs its own tunnel endpoint",
            )
            return None
        return (local, remote)

    def _tunnel_pairs(self, rules: list[Rule]) -> None:
        """V2: one rule per direction: every tunnel filter S->D via A->B has a D->S via B->A."""
        tunnel_rules = [r for r in self.m.rules if r.tunnel is not None]
        index = {r.name: r for r in rules}
        seen: set[tuple[str, str, str, str]] = set()
        for r in rules:
            if r.tunnel is not None:
                a, b = r.tunnel
                for f in r.filters:
                    seen.add((f.src.text, f.dst.text, str(a), str(b)))
        for rm in tunnel_rules:
            r2 = index.get(rm.name)
            if r2 is None or r2.tunnel is None:
                continue
            a, b = r2.tunnel
            for f in r2.filters:
                if (f.dst.text, f.src.text, str(b), str(a)) not in seen:
                    self.err(
                        ("rules", r2.index, "tunnel"),
                        "V2",
                        f"tunnel rule {r2.name!r} has no rule for the reverse direction "
                        f"({f.dst.text} -> {f.src.text} via {b} -> {a})",
                        "add a tunnel rule with the reversed filter (mirrored: false) and "
                        f"tunnel {{local_endpoint: {b}, remote_endpoint: {a}}}",
                    )
                    break

    def _drr(
        self, profile: TimingProfile, auth_sets: dict[str, tuple[int, tuple[AuthMethod, ...]]]
    ) -> DefaultResponseRule | None:
        d = self.m.default_response_rule
        explicit = d.enabled is not None
        enabled = d.enabled if d.enabled is not None else profile.default_response_rule
        if not enabled:
            return None
        base: Path = ("default_response_rule",)
        if d.auth_methods is None:
            if explicit:
                self.err(
                    (*base, "auth_methods"),
                    "V1",
                    "the default response rule is enabled but has no auth_methods",
                    "add auth_methods: <auth method set>, or set enabled: false",
                )
            else:
                self.warn(
                    base,
                    f"the default response rule (on in profile {profile.name}) is left off: "
                    "it has no auth_methods",
                )
            return None
        if d.auth_methods not in auth_sets:
            self.err(
                (*base, "auth_methods"),
                "reference",
                f"no auth method set named {d.auth_methods!r}",
                "use one of: " + _names(auth_sets),
            )
            return None
        methods = _methods(d.security_methods) or DEFAULT_SECURITY_METHODS
        return DefaultResponseRule(methods, d.auth_methods, auth_sets[d.auth_methods][1])


def _names(d: dict[str, Any]) -> str:
    return ", ".join(sorted(d)) or "(none defined)"
