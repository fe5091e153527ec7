"""Compile a validated policy into an ordered SPD and a PAD (policy-spec §2.1, §2.2).

C1 drop disabled rules; C2 resolve address tokens; C3 expand filters into directional
entries (the mirror adds the reverse pattern); C4 attach actions and PFP flags; C5 step-0
IKE bypass; C6 order (``auto`` specificity key or ``explicit`` list order); C7 final
``default_action`` entries; C8 PAD, with the default response rule as a responder-only entry.
"""

from __future__ import annotations

import ipaddress

from reference_impl.policy.addresses import (
    ANY_PORTS,
    ICMP,
    AddressRange,
    CompileEnv,
    resolve_token,
)
from reference_impl.policy.resolved import Action, Filter, Policy, Rule
from reference_impl.policy.spd import CompiledPolicy, Direction, Pad, PadEntry, Spd, SpdEntry

IKE_PORTS = (500, 4500)


def auto_key(entry: SpdEntry, rule_index: int) -> tuple[int, ...]:
    """The ``auto`` ordering key of policy-spec §2.2 (ascending, lexicographic)."""
    wild_ports = (entry.local_ports == ANY_PORTS) + (entry.remote_ports == ANY_PORTS)
    wild_proto = 1 if entry.proto == 0 else 0
    rank = entry.params.rank(entry.action) if entry.params is not None else 3
    return (
        wild_ports,
        wild_proto,
        128 - entry.local.prefix_bits,
        128 - entry.remote.prefix_bits,
        rank,
        rule_index,
        entry.filter_index,
        entry.expansion,
    )


def explicit_key(entry: SpdEntry, rule_index: int) -> tuple[int, ...]:
    return (rule_index, entry.filter_index, entry.expansion)


def compile_policy(policy: Policy, env: CompileEnv | None = None) -> CompiledPolicy:
    """Compile ``policy`` for a node described by ``env`` (local addresses, resolvers)."""
    env = env or CompileEnv()
    warnings = list(policy.warnings)
    locals_ = env.local_ranges()
    static: list[SpdEntry] = []
    for rule in policy.rules:
        if not rule.enabled:  # C1
            continue
        static.extend(_rule_entries(rule, env, locals_, warnings))
    keyfn = auto_key if policy.ordering == "auto" else explicit_key
    for e in static:
        assert e.rule is not None
        e.key = keyfn(e, e.rule.index)
    static.sort(key=lambda e: e.key)  # C6
    outbound = [e for e in static if e.direction is Direction.OUT]
    inbound = [e for e in static if e.direction is Direction.IN]

    ike_ports = sorted({*IKE_PORTS, policy.ike.local_port})
    ike_locals = env.ike_ranges()
    bypass = _ike_bypass(ike_locals, ike_ports)  # C5
    defaults_out = [
        SpdEntry(
            direction=Direction.OUT,
            local=AddressRange.any(v),
            remote=AddressRange.any(v),
            proto=0,
            local_ports=ANY_PORTS,
            remote_ports=ANY_PORTS,
            action=policy.default_action,
            origin="default",
        )
        for v in (4, 6)
    ]
    defaults_in = [
        SpdEntry(
            direction=Direction.IN,
            local=AddressRange.any(v),
            remote=AddressRange.any(v),
            proto=0,
            local_ports=ANY_PORTS,
            remote_ports=ANY_PORTS,
            action=policy.default_action,
            origin="default",
        )
        for v in (4, 6)
    ]
    spd = Spd(
        ordering=policy.ordering,
        ike_bypass=bypass,
        outbound=outbound,
        inbound=inbound,
        default_out=defaults_out,
        default_in=defaults_in,
        ike_ports=ike_ports,
        ike_locals=ike_locals,
    )
    return CompiledPolicy(
        policy=policy,
        spd=spd,
        pad=_pad(policy, outbound, inbound),
        warnings=tuple(warnings),
        local_addresses=env.local_addresses,
    )


def _ike_bypass(ike_locals: tuple[AddressRange, ...], ports: list[int]) -> list[SpdEntry]:
    locals_ = ike_locals or (AddressRange.any(4), AddressRange.any(6))
    out: list[SpdEntry] = []
    for direction in (Direction.OUT, Direction.IN):
        for local in locals_:
            for port in ports:
                out.append(
                    SpdEntry(
                        direction=direction,
                        local=local,
                        remote=AddressRange.any(local.version),
                        proto=17,
                        local_ports=(port, port),
                        remote_ports=ANY_PORTS,
                        action=Action.BYPASS,
                        origin="ike-bypass",
                    )
                )
    return out


def _rule_entries(
    rule: Rule, env: CompileEnv, locals_: tuple[AddressRange, ...], warnings: list[str]
) -> list[SpdEntry]:
    directions: list[tuple[Direction, tuple[str, str] | None]]
    if rule.tunnel is not None:
        a, b = rule.tunnel
        a_local, b_local = env.is_local(a), env.is_local(b)
        if not env.local_addresses:
            a_local = True  # unknown node: read the rule from its local_endpoint's side
        directions = []
        if a_local:
            directions.append((Direction.OUT, (str(a), str(b))))
        if b_local:
            directions.append((Direction.IN, (str(b), str(a))))
        if not directions:
            warnings.append(
                f"rule {rule.name!r}: neither tunnel endpoint ({a}, {b}) is a local address; "
                "the rule does not apply to this node"
            )
            return []
    else:
        directions = [(Direction.OUT, None), (Direction.IN, None)]
    entries: list[SpdEntry] = []
    for f in rule.filters:
        src, w1 = resolve_token(f.src, env)
        dst, w2 = resolve_token(f.dst, env)
        for w in (w1, w2):
            if w:
                warnings.append(f"rule {rule.name!r} filter {f.index} ({f}): {w}")
        patterns = [(src, dst, f.src_ports, f.dst_ports)]
        if f.mirrored and rule.tunnel is None:
            patterns.append((dst, src, f.dst_ports, f.src_ports))
        seen: set[tuple[object, ...]] = set()
        expansion = 0
        made = 0
        for ps, pd, psp, pdp in patterns:
            for direction, tunnel in directions:
                if direction is Direction.OUT:
                    lset, rset, lports, rports = ps, pd, psp, pdp
                else:
                    lset, rset, lports, rports = pd, ps, pdp, psp
                for lr in lset:
                    for rr in rset:
                        if lr.version != rr.version:
                            continue
                        if tunnel is None and locals_ and _foreign(lr, rr, locals_):
                            continue
                        entry = _entry(rule, f, direction, lr, rr, lports, rports, tunnel)
                        ident = (
                            direction,
                            lr,
                            rr,
                            entry.proto,
                            entry.local_ports,
                            entry.remote_ports,
                        )
                        expansion += 1
                        if ident in seen:
                            continue
                        seen.add(ident)
                        entry.expansion = expansion
                        entries.append(entry)
                        made += 1
        if not made:
            warnings.append(
                f"rule {rule.name!r} filter {f.index} ({f}): compiles to no SPD entry on this "
                "node (its local side has none of our addresses, its remote side is only our "
                "own, or no address of a matching family)"
            )
    return entries


def _foreign(local: AddressRange, remote: AddressRange, locals_: tuple[AddressRange, ...]) -> bool:
    """A transport entry that cannot match on this node: no local address on its local
    side, or a remote side that is one of our own addresses (traffic to ourselves)."""
    if not any(local.covers(a) for a in locals_):
        return True
    return remote.lo == remote.hi and any(remote == a for a in locals_)


def _entry(
    rule: Rule,
    f: Filter,
    direction: Direction,
    local: AddressRange,
    remote: AddressRange,
    lports: tuple[int, int],
    rports: tuple[int, int],
    tunnel: tuple[str, str] | None,
) -> SpdEntry:
    fa = rule.action
    proto = f.proto
    if proto == ICMP:
        proto = 1 if local.version == 4 else 58
    if f.icmp is not None:
        # ICMP type/code is one 16-bit selector (RFC 7296 §3.13.1); kept on the remote side
        # in both directions so a mirrored filter matches echo requests and replies alike.
        lports, rports = ANY_PORTS, f.icmp
    action = fa.outbound if direction is Direction.OUT else fa.inbound
    return SpdEntry(
        direction=direction,
        local=local,
        remote=remote,
        proto=proto,
        local_ports=lports,
        remote_ports=rports,
        action=action,
        origin="rule",
        rule=rule,
        params=fa,
        filter_index=f.index,
        tunnel=tunnel,
        pfp=tunnel is None,
    )


def _pad(policy: Policy, outbound: list[SpdEntry], inbound: list[SpdEntry]) -> Pad:
    """C8: one PAD entry per PROTECT rule (peer = its remote selector or tunnel peer)."""
    by_rule: dict[str, list[SpdEntry]] = {}
    order: list[str] = []
    for e in outbound:
        if e.action is not Action.PROTECT or e.rule is None:
            continue
        if e.rule.name not in by_rule:
            by_rule[e.rule.name] = []
            order.append(e.rule.name)
        by_rule[e.rule.name].append(e)
    # Inbound-only PROTECT rules (tunnel "in" rules, requireinclearout) authorize peers too.
    entries: list[PadEntry] = []
    rules = {r.name: r for r in policy.rules}
    for name in order:
        es = by_rule[name]
        rule = rules[name]
        tunnel_peer = es[0].tunnel[1] if es[0].tunnel is not None else ""
        if tunnel_peer:
            ip = ipaddress.ip_address(tunnel_peer)
            remote: tuple[AddressRange, ...] = (AddressRange.host(ip),)
        else:
            remote = tuple(dict.fromkeys(e.remote for e in es))
        entries.append(PadEntry(remote, rule.auth_methods, rule.auth_set or "", name, tunnel_peer))
    for e in inbound:
        if e.action is not Action.PROTECT or e.rule is None or e.rule.name in by_rule:
            continue
        rule = e.rule
        by_rule[rule.name] = [e]
        if e.tunnel is not None:
            remote = (AddressRange.host(ipaddress.ip_address(e.tunnel[1])),)
        else:
            remote = (e.remote,)
        entries.append(
            PadEntry(
                remote,
                rule.auth_methods,
                rule.auth_set or "",
                rule.name,
                e.tunnel[1] if e.tunnel is not None else "",
            )
        )
    drr = policy.default_response_rule
    if drr is not None:
        entries.append(
            PadEntry(
                (AddressRange.any(4), AddressRange.any(6)),
                drr.auth_methods,
                drr.auth_set,
                "<default response rule>",
                responder_only=True,
            )
        )
    return Pad(tuple(entries))
