"""SPD ordering (policy-spec §2.2): random rule sets, compiled SPD vs a brute-force matcher.

The brute-force matcher works from the filters as written (no compiled entries): it finds
every filter pattern (and its mirror) that matches a packet and picks the winner by the
§2.2 key computed independently (``math.log2`` for ranges), or by list order for
``explicit``. The compiled SPD's first match must agree, and ``auto`` must be deterministic
and total.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import random
from dataclasses import dataclass

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_impl.policy import CompileEnv, Direction, compile_policy, load_policy_text

ME = "10.0.0.1"
UNIVERSE = ipaddress.ip_network("10.0.0.0/28")
PORTS = [5, 80, 443, 1000, 1500, 3000]
PROTOS = {"any": 0, "tcp": 6, "udp": 17, "icmp": 1, "esp": 50}


@st.composite
def address(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["me", "any", "cidr", "host", "range"]))
    if kind in ("me", "any"):
        return kind
    if kind == "host":
        return str(UNIVERSE[draw(st.integers(0, 15))])
    if kind == "range":
        a = draw(st.integers(0, 15))
        b = draw(st.integers(a, 15))
        return f"{UNIVERSE[a]}-{UNIVERSE[b]}"
    plen = draw(st.integers(28, 32))
    net = ipaddress.ip_network(f"{UNIVERSE[draw(st.integers(0, 15))]}/{plen}", strict=False)
    return str(net)


@st.composite
def a_filter(draw: st.DrawFn) -> dict[str, object]:
    proto = draw(st.sampled_from(list(PROTOS)))
    f: dict[str, object] = {
        "src": draw(address()),
        "dst": draw(address()),
        "proto": proto,
        "mirrored": draw(st.booleans()),
    }
    if proto in ("tcp", "udp"):
        for side in ("src_port", "dst_port"):
            choice = draw(st.sampled_from(["any", "one", "range"]))
            if choice == "one":
                f[side] = draw(st.sampled_from(PORTS))
            elif choice == "range":
                f[side] = "1000-2000"
    return f


ACTIONS = ["permit", "block", "require", "request"]


@st.composite
def a_policy(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 7))
    rules = []
    lists = []
    for i in range(n):
        filters = draw(st.lists(a_filter(), min_size=1, max_size=3))
        lists.append({"name": f"fl{i}", "filters": filters})
        rule: dict[str, object] = {
            "name": f"r{i}",
            "filter_list": f"fl{i}",
            "filter_action": draw(st.sampled_from(ACTIONS)),
            "enabled": draw(st.sampled_from([True, True, True, False])),
        }
        if rule["filter_action"] in ("require", "request"):
            rule["auth_methods"] = "psk"
        rules.append(rule)
    method = [{"protocol": "esp", "encryption": "aes128", "integrity": "sha1"}]
    return {
        "policy": {
            "name": "random",
            "settings": {
                "ordering": draw(st.sampled_from(["auto", "explicit"])),
                "default_action": draw(st.sampled_from(["bypass", "discard"])),
            },
            "default_response_rule": {"enabled": False},
            "auth_method_sets": [
                {"name": "psk", "methods": [{"preshared_key": {"secret_ref": "k"}}]}
            ],
            "filter_lists": lists,
            "filter_actions": [
                {"name": "permit", "type": "permit"},
                {"name": "block", "type": "block"},
                {"name": "require", "type": "negotiate", "security_methods": method},
                {
                    "name": "request",
                    "type": "negotiate",
                    "security_methods": method,
                    "allow_fallback": True,
                },
            ],
            "rules": rules,
        }
    }


# ------------------------------------------------------------------------ brute-force matcher


@dataclass(frozen=True)
class Pkt:
    src: int
    dst: int
    proto: int
    sport: int
    dport: int


@functools.cache
def addr_range(token: str) -> tuple[int, int]:
    if token == "me":
        v = int(ipaddress.ip_address(ME))
        return v, v
    if token == "any":
        return 0, 2**32 - 1
    if "-" in token:
        a, b = token.split("-")
        return int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))
    net = ipaddress.ip_network(token)
    return int(net.network_address), int(net.broadcast_address)


def prefix_bits(lo: int, hi: int) -> int:
    """§2.2 for IPv4: a range counts as floor(32 - log2(size)) prefix bits (+96 in the key)."""
    return math.floor(32 - math.log2(hi - lo + 1))


def port_range(value: object) -> tuple[int, int]:
    if value in (None, "any"):
        return 0, 65535
    if isinstance(value, int):
        return value, value
    a, b = str(value).split("-")
    return int(a), int(b)


RANK = {"block": 0, "require": 1, "request": 2, "permit": 3}
OUTCOME = {"permit": "bypass", "block": "discard", "require": "protect", "request": "protect"}


def brute_force(doc: dict, pkt: Pkt, direction: str) -> tuple[str, str]:
    """(rule name or '<default>', action) of the winning filter for a packet.

    ``direction`` "out": src is ours (local); "in": dst is ours. A filter pattern src->dst
    matches a packet going src->dst, in either direction (policy-spec §2.1 C3).
    """
    pol = doc["policy"]
    explicit = pol["settings"]["ordering"] == "explicit"
    lists = {fl["name"]: fl["filters"] for fl in pol["filter_lists"]}
    best: tuple | None = None
    winner = ("<default>", pol["settings"]["default_action"])
    for ri, rule in enumerate(pol["rules"]):
        if not rule["enabled"]:
            continue
        for fi, f in enumerate(lists[rule["filter_list"]]):
            sp, dp = port_range(f.get("src_port")), port_range(f.get("dst_port"))
            patterns = [(f["src"], f["dst"], sp, dp)]
            if f["mirrored"]:
                patterns.append((f["dst"], f["src"], dp, sp))
            proto = PROTOS[f["proto"]]
            for ps, pd, psp, pdp in patterns:
                slo, shi = addr_range(ps)
                dlo, dhi = addr_range(pd)
                if not (slo <= pkt.src <= shi and dlo <= pkt.dst <= dhi):
                    continue
                if proto and proto != pkt.proto:
                    continue
                if not (psp[0] <= pkt.sport <= psp[1] and pdp[0] <= pkt.dport <= pdp[1]):
                    continue
                # local/remote form
                if direction == "out":
                    local, remote, lports, rports = (slo, shi), (dlo, dhi), psp, pdp
                else:
                    local, remote, lports, rports = (dlo, dhi), (slo, shi), pdp, psp
                if explicit:
                    key: tuple = (ri, fi)
                else:
                    key = (
                        (lports == (0, 65535)) + (rports == (0, 65535)),
                        1 if proto == 0 else 0,
                        128 - (prefix_bits(*local) + 96),
                        128 - (prefix_bits(*remote) + 96),
                        RANK[rule["filter_action"]],
                        ri,
                        fi,
                    )
                if best is None or key < best:
                    best = key
                    winner = (rule["name"], OUTCOME[rule["filter_action"]])
    return winner


def packets(seed: int) -> list[tuple[str, Pkt]]:
    rng = random.Random(seed)
    me = int(ipaddress.ip_address(ME))
    out = []
    for _ in range(60):
        other = int(UNIVERSE[rng.choice([i for i in range(16) if i != 1])])
        proto = rng.choice([6, 17, 1, 50])
        sport = rng.choice(PORTS) if proto in (6, 17) else 0
        dport = rng.choice(PORTS) if proto in (6, 17) else 0
        out.append(("out", Pkt(me, other, proto, sport, dport)))
        out.append(("in", Pkt(other, me, proto, sport, dport)))
    return out


def compile_doc(doc: dict):  # type: ignore[no-untyped-def]
    text = yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
    return compile_policy(load_policy_text(text, "random.yaml"), CompileEnv(local_addresses=(ME,)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=a_policy(), seed=st.integers(0, 2**16))
def test_first_match_agrees_with_brute_force(doc: dict, seed: int) -> None:
    compiled = compile_doc(doc)
    spd = compiled.spd
    for direction, p in packets(seed):
        if direction == "out":
            e = spd.lookup(Direction.OUT, 4, p.src, p.dst, p.proto, p.sport, p.dport)
        else:
            e = spd.lookup(Direction.IN, 4, p.dst, p.src, p.proto, p.dport, p.sport)
        got = (e.rule.name if e.rule is not None else "<default>", e.action.value)
        assert got == brute_force(doc, p, direction), (direction, p, e)


@settings(max_examples=100, deadline=None)
@given(doc=a_policy())
def test_auto_ordering_is_deterministic_and_total(doc: dict) -> None:
    doc["policy"]["settings"]["ordering"] = "auto"
    a, b = compile_doc(doc), compile_doc(doc)
    ea = [(repr(e), e.key) for e in a.spd.entries()]
    eb = [(repr(e), e.key) for e in b.spd.entries()]
    assert ea == eb  # deterministic
    for table in (a.spd.outbound, a.spd.inbound):
        keys = [e.key for e in table]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)  # total: no two entries tie


@settings(max_examples=60, deadline=None)
@given(doc=a_policy(), perm_seed=st.integers(0, 1000))
def test_auto_ordering_depends_on_rule_order_only_for_ties(doc: dict, perm_seed: int) -> None:
    doc["policy"]["settings"]["ordering"] = "auto"
    a = compile_doc(doc)
    rules = list(doc["policy"]["rules"])
    random.Random(perm_seed).shuffle(rules)
    doc["policy"]["rules"] = rules
    b = compile_doc(doc)

    def spec(e) -> tuple:  # type: ignore[no-untyped-def]
        return e.key[:4]

    for ta, tb in ((a.spd.outbound, b.spd.outbound), (a.spd.inbound, b.spd.inbound)):
        assert sorted(repr(e) for e in ta) == sorted(repr(e) for e in tb)
        assert [spec(e) for e in ta] == [spec(e) for e in tb]


def test_spec_worked_example_order() -> None:
    """§1.5: TCP/445 to the file server beats ICMP-exempt, quarantine beats request-all."""
    from pathlib import Path

    import reference_impl.policy as pkg

    path = Path(pkg.__file__).parent / "examples" / "server-isolation.yaml"
    from reference_impl.policy import load_policy_file

    c = compile_policy(load_policy_file(path), CompileEnv(local_addresses=("198.51.100.2",)))
    names = [e.rule.name for e in c.spd.outbound if e.rule is not None]
    assert names.index("file-servers") < names.index("exempt-icmp") < names.index("quarantine")
    assert names.index("quarantine") < names.index("everything")
