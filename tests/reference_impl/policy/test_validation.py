"""Policy validation (policy-spec §1.3 V1-V9 and the schema): one invalid policy per rule.

Every error must name the file, the line and the field, and say what to change.
"""

from __future__ import annotations

import textwrap

import pytest

from reference_impl.policy import (
    CompileEnv,
    Issue,
    PolicyAgent,
    PolicyValidationError,
    load_policy_text,
)
from reference_impl.policy.profiles import HoldPolicy, Shunt

BASE = """\
policy:
  name: base
  settings:
    timing_profile: reference
    ike:
      version: ikev1
      main_mode: {lifetime_s: 28800}
  default_response_rule: {enabled: false}
  auth_method_sets:
    - name: psk
      methods:
        - preshared_key: {secret_ref: k1}
  filter_lists:
    - name: all
      filters:
        - {src: me, dst: any, proto: any}
    - name: tun-out
      filters:
        - {src: 10.2.0.0/16, dst: 10.9.0.0/16, mirrored: false}
    - name: tun-in
      filters:
        - {src: 10.9.0.0/16, dst: 10.2.0.0/16, mirrored: false}
  filter_actions:
    - name: request
      type: negotiate
      security_methods:
        - {protocol: esp, encryption: aes128, integrity: sha1}
      allow_fallback: true
    - name: require
      type: negotiate
      security_methods:
        - {protocol: esp, encryption: aes128, integrity: sha1}
  rules:
    - {name: everything, filter_list: all, filter_action: request, auth_methods: psk}
    - name: t-out
      filter_list: tun-out
      filter_action: require
      auth_methods: psk
      tunnel: {local_endpoint: 198.51.100.2, remote_endpoint: 203.0.113.9}
    - name: t-in
      filter_list: tun-in
      filter_action: require
      auth_methods: psk
      tunnel: {local_endpoint: 203.0.113.9, remote_endpoint: 198.51.100.2}
"""


def line_of(text: str, needle: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in text")


def reject(text: str) -> list[Issue]:
    with pytest.raises(PolicyValidationError) as exc:
        load_policy_text(text, "policies/test.yaml")
    issues = list(exc.value.issues)
    assert issues
    for i in issues:
        assert i.file == "policies/test.yaml"
        assert i.line >= 1
        assert str(i).startswith(f"policies/test.yaml:{i.line}: policy")
    return issues


def one(text: str, rule: str) -> Issue:
    issues = [i for i in reject(text) if i.rule == rule]
    assert len(issues) == 1, issues
    return issues[0]


def test_base_policy_is_valid() -> None:
    p = load_policy_text(BASE, "base.yaml")
    assert [r.name for r in p.rules] == ["everything", "t-out", "t-in"]
    assert p.warnings == ()


def test_V1_negotiate_action_needs_a_security_method() -> None:
    text = BASE.replace(
        """    - name: require
      type: negotiate
      security_methods:
        - {protocol: esp, encryption: aes128, integrity: sha1}
""",
        """    - name: require
      type: negotiate
""",
    )
    i = one(text, "V1")
    assert i.path == "policy.filter_actions[1].security_methods"
    assert i.field == "security_methods"
    assert i.line == line_of(text, "- name: require")
    assert "require" in i.message and "add at least one" in i.hint


def test_V1_negotiate_rule_needs_auth_methods() -> None:
    text = BASE.replace(
        "{name: everything, filter_list: all, filter_action: request, auth_methods: psk}",
        "{name: everything, filter_list: all, filter_action: request}",
    )
    i = one(text, "V1")
    assert i.path == "policy.rules[0].auth_methods" and i.field == "auth_methods"
    assert i.line == line_of(text, "name: everything")
    assert "auth_methods:" in i.hint


def test_V1_enabled_default_response_rule_needs_auth_methods() -> None:
    text = BASE.replace(
        "default_response_rule: {enabled: false}", "default_response_rule: {enabled: true}"
    )
    i = one(text, "V1")
    assert i.field == "auth_methods" and i.path.startswith("policy.default_response_rule")


def test_V2_tunnel_filters_must_not_be_mirrored() -> None:
    text = BASE.replace(
        "- {src: 10.2.0.0/16, dst: 10.9.0.0/16, mirrored: false}",
        "- {src: 10.2.0.0/16, dst: 10.9.0.0/16}",
    )
    i = one(text, "V2")
    assert i.path == "policy.filter_lists[1].filters[0].mirrored" and i.field == "mirrored"
    assert i.line == line_of(text, "{src: 10.2.0.0/16, dst: 10.9.0.0/16}")
    assert "mirrored: false" in i.hint


def test_V2_tunnel_rule_needs_the_reverse_direction() -> None:
    start = BASE.index("    - name: t-in")
    text = BASE[:start]
    i = one(text, "V2")
    assert i.path == "policy.rules[1].tunnel" and i.field == "tunnel"
    assert "reverse" in i.message and "local_endpoint: 203.0.113.9" in i.hint


def test_V2_tunnel_filters_with_ports_are_a_warning() -> None:
    text = BASE.replace(
        "- {src: 10.2.0.0/16, dst: 10.9.0.0/16, mirrored: false}",
        "- {src: 10.2.0.0/16, dst: 10.9.0.0/16, mirrored: false, proto: tcp, dst_port: 80}",
    )
    p = load_policy_text(text, "w.yaml")
    assert any("should not specify protocol or ports" in w for w in p.warnings)


def test_V3_fallback_and_guarantee_encryption() -> None:
    text = BASE.replace(
        "      allow_fallback: true\n",
        "      allow_fallback: true\n      guarantee_encryption: true\n",
    )
    i = one(text, "V3")
    assert i.path == "policy.filter_actions[0].allow_fallback" and i.field == "allow_fallback"
    assert i.line == line_of(text, "allow_fallback: true")


def test_V4_master_key_pfs_forces_one_quick_mode() -> None:
    text = BASE.replace(
        "main_mode: {lifetime_s: 28800}",
        "main_mode: {lifetime_s: 28800, master_key_pfs: true, max_quick_modes: 5}",
    )
    i = one(text, "V4")
    assert i.field == "max_quick_modes"
    assert i.path == "policy.settings.ike.main_mode.max_quick_modes"
    assert i.line == line_of(text, "master_key_pfs")
    # not written: coerced to 1
    ok = BASE.replace(
        "main_mode: {lifetime_s: 28800}", "main_mode: {lifetime_s: 28800, master_key_pfs: true}"
    )
    assert load_policy_text(ok).ike.max_quick_modes == 1


def test_V5_one_address_family_per_entry() -> None:
    text = BASE.replace(
        "- {src: me, dst: any, proto: any}", "- {src: 192.0.2.1, dst: '2001:db8::1', proto: any}"
    )
    i = one(text, "V5")
    assert i.path == "policy.filter_lists[0].filters[0].dst" and i.field == "dst"
    assert "one per family" in i.hint


def test_V5_tunnel_endpoint_families() -> None:
    text = BASE.replace(
        "{local_endpoint: 198.51.100.2, remote_endpoint: 203.0.113.9}",
        "{local_endpoint: 198.51.100.2, remote_endpoint: '2001:db8::9'}",
    )
    issues = reject(text)
    assert any(i.rule == "V5" and i.field == "remote_endpoint" for i in issues)


def test_V6_fips_refuses_fallback() -> None:
    text = BASE.replace(
        "    timing_profile: reference\n", "    timing_profile: reference\n    fips: true\n"
    )
    i = one(text, "V6")
    assert i.path == "policy.filter_actions[0].allow_fallback" and i.field == "allow_fallback"
    assert "FIPS" in i.message


def test_V6_fips_refuses_pass_shunt_of_shorthand() -> None:
    text = BASE.replace(
        "    timing_profile: reference\n", "    timing_profile: reference\n    fips: true\n"
    )
    text = text.replace(
        "{name: everything, filter_list: all, filter_action: request, auth_methods: psk}",
        "{name: everything, filter_list: all, action: requestinrequestout, auth_methods: psk}",
    )
    issues = [i for i in reject(text) if i.rule == "V6" and i.path.startswith("policy.rules")]
    (i,) = issues
    assert i.path == "policy.rules[0].action" and i.field == "action"
    assert "requireinrequireout" in i.hint


def test_V7_fallback_must_come_before_exchange_failure() -> None:
    text = BASE.replace(
        "      allow_fallback: true\n",
        "      allow_fallback: true\n      fallback: {after_s: 70}\n",
    )
    i = one(text, "V7")
    assert i.path == "policy.filter_actions[0].fallback.after_s" and i.field == "after_s"
    assert "64" in i.message and i.line == line_of(text, "after_s: 70")
    # a short schedule written in settings is blamed when after_s is the profile default
    text = BASE.replace(
        "      main_mode: {lifetime_s: 28800}\n",
        "      main_mode: {lifetime_s: 28800}\n      retransmit: {schedule: [0.5, 0.5, 1]}\n",
    )
    i = one(text, "V7")
    assert i.path == "policy.settings.ike.retransmit.schedule" and i.field == "schedule"


def test_V8_icmp_fast_fallback_requires_allow_fallback() -> None:
    text = BASE.replace(
        """    - name: require
      type: negotiate
""",
        """    - name: require
      type: negotiate
      fallback: {icmp_fast_fallback: true}
""",
    )
    i = one(text, "V8")
    assert i.path == "policy.filter_actions[1].fallback.icmp_fast_fallback"
    assert i.field == "icmp_fast_fallback" and i.line == line_of(text, "icmp_fast_fallback")
    assert "allow_fallback" in i.message


def test_V9_pass_shunt_requires_allow_fallback() -> None:
    text = BASE.replace(
        """    - name: require
      type: negotiate
""",
        """    - name: require
      type: negotiate
      negotiation_shunt: pass
""",
    )
    i = one(text, "V9")
    assert i.path == "policy.filter_actions[1].negotiation_shunt" and i.field == "negotiation_shunt"
    assert i.line == line_of(text, "negotiation_shunt: pass")


# ------------------------------------------------------------------------- schema and references


@pytest.mark.parametrize(
    ("old", "new", "field", "needle"),
    [
        ("version: ikev1", "version: ikev3", "version", "version: ikev3"),
        ("timing_profile: reference", "timing_profile: windows-95", "timing_profile", "windows-95"),
        ("proto: any}", "proto: tcpp}", "proto", "tcpp"),
        ("dst: any, proto: any}", "dst: 10.0.0.300, proto: any}", "dst", "10.0.0.300"),
        ("secret_ref: k1", "secret: k1", "secret", "secret: k1"),
        ("allow_fallback: true", "allow_fallbak: true", "allow_fallbak", "allow_fallbak"),
    ],
)
def test_schema_errors_name_the_field(old: str, new: str, field: str, needle: str) -> None:
    text = BASE.replace(old, new, 1)
    (i,) = [i for i in reject(text) if i.field == field]
    assert i.rule == "schema"
    assert i.line == line_of(text, needle or new)
    assert field in str(i)


def test_unknown_reference_lists_the_defined_names() -> None:
    text = BASE.replace("filter_action: request,", "filter_action: requets,")
    (i,) = reject(text)
    assert i.rule == "reference" and i.field == "filter_action"
    assert "request" in i.hint and "require" in i.hint


def test_yaml_syntax_error_has_a_line() -> None:
    text = BASE.replace("  rules:\n", "  rules:\n    - {name: x,\n", 1)
    (i,) = reject(text)
    assert i.rule == "yaml" and i.line >= line_of(BASE, "  rules:")


def test_duplicate_keys_are_refused() -> None:
    text = BASE.replace(
        "      allow_fallback: true\n", "      allow_fallback: true\n      allow_fallback: false\n"
    )
    (i,) = reject(text)
    assert "duplicate key 'allow_fallback'" in i.message
    assert i.line == line_of(text, "allow_fallback: false")


def test_all_problems_are_reported_together() -> None:
    text = BASE.replace(
        "      allow_fallback: true\n",
        "      allow_fallback: true\n      fallback: {after_s: 99}\n",
    )
    text = text.replace(
        """    - name: require
      type: negotiate
""",
        """    - name: require
      type: negotiate
      negotiation_shunt: pass
""",
    )
    assert {i.rule for i in reject(text)} == {"V7", "V9"}


def test_implicit_ike_bypass_cannot_be_disabled() -> None:
    text = BASE.replace(
        "    timing_profile: reference\n",
        "    timing_profile: reference\n    implicit_ike_bypass: false\n",
    )
    (i,) = reject(text)
    assert i.field == "implicit_ike_bypass"


def test_rejected_policy_never_replaces_the_one_in_force() -> None:
    class NoDriver:
        def protect(self, spi: int, packet: bytes, now: float) -> bytes | None:
            return None

    agent = PolicyAgent(NoDriver(), CompileEnv(local_addresses=("10.1.0.1",)))
    good = agent.load_policy_text(BASE, 0.0, "good.yaml")
    bad = BASE.replace("allow_fallback: true", "allow_fallback: maybe")
    with pytest.raises(PolicyValidationError):
        agent.load_policy_text(bad, 1.0, "bad.yaml")
    assert agent.policy is good
    (rec,) = agent.audit.of_kind("policy_rejected")
    assert rec.get("in_force") == "base" and rec.time == 1.0


# ----------------------------------------------------------------------------- profiles (§3.5)


def test_profile_defaults_and_field_overrides() -> None:
    spu = load_policy_text(BASE.replace("timing_profile: reference", "timing_profile: windows-spu"))
    request = spu.rules[0].action
    assert request.fallback_after_s == 0.5 and request.on_negotiation_failure is True
    text = BASE.replace("timing_profile: reference", "timing_profile: windows-spu").replace(
        "      allow_fallback: true\n",
        "      allow_fallback: true\n      fallback: {after_s: 1.5, soft_sa_idle_s: null}\n"
        "      hold_queue: {length: 4}\n",
    )
    p = load_policy_text(text)
    a = p.rules[0].action
    assert a.fallback_after_s == 1.5  # overridden
    assert a.on_negotiation_failure is True  # still the profile's
    assert a.soft_sa_idle_s is None  # explicit null: no idle timeout
    assert (a.hold_length, a.hold_policy) == (4, HoldPolicy.KEEP_LAST)


@pytest.mark.parametrize(
    ("profile", "gaps_sum", "after", "shunts", "holddown", "drr"),
    [
        ("reference", 64.0, 3.0, (Shunt.HOLD, Shunt.HOLD), 30.0, True),
        ("windows-legacy", 64.0, 3.0, (Shunt.HOLD, Shunt.HOLD), 30.0, True),
        ("windows-spu", 64.0, 0.5, (Shunt.HOLD, Shunt.HOLD), 30.0, True),
        ("windows-nd", 64.0, 0.0, (Shunt.HOLD, Shunt.PASS), 30.0, False),
        ("libreswan", 64.0, 3.0, (Shunt.DROP, Shunt.DROP), 0.0, False),
        ("libreswan-oe", 2.0, 2.0, (Shunt.DROP, Shunt.PASS), 900.0, False),
        ("strongswan", 165.06, 3.0, (Shunt.DROP, Shunt.DROP), 0.0, False),
    ],
)
def test_timing_profiles_by_name(
    profile: str,
    gaps_sum: float,
    after: float,
    shunts: tuple[Shunt, Shunt],
    holddown: float,
    drr: bool,
) -> None:
    text = BASE.replace("timing_profile: reference", f"timing_profile: {profile}").replace(
        "default_response_rule: {enabled: false}", "default_response_rule: {auth_methods: psk}"
    )
    p = load_policy_text(text)
    assert p.ike.schedule.failure_after == pytest.approx(gaps_sum, abs=0.005)
    request, require = p.rules[0].action, p.rules[1].action
    assert request.fallback_after_s == after
    assert (require.negotiation_shunt, request.negotiation_shunt) == shunts
    assert require.failure_holddown_s == holddown
    assert (p.default_response_rule is not None) == drr


def test_libreswan_oe_schedule() -> None:
    p = load_policy_text(BASE.replace("timing_profile: reference", "timing_profile: libreswan-oe"))
    assert p.ike.schedule.send_times() == (0.0, 0.5, 1.0)
    a = p.rules[0].action
    assert a.soft_sa_idle_s is None and a.soft_sa_max_lifetime_s == 900.0


def test_shorthand_actions_expand() -> None:
    text = textwrap.dedent(
        """\
        policy:
          name: consec
          auth_method_sets: [{name: psk, methods: [{preshared_key: {secret_ref: k}}]}]
          filter_lists:
            - {name: a, filters: [{src: me, dst: 10.0.0.0/8}]}
            - {name: b, filters: [{src: me, dst: 10.1.0.0/16}]}
            - {name: c, filters: [{src: me, dst: 10.2.0.0/16}]}
            - {name: d, filters: [{src: me, dst: 10.3.0.0/16}]}
            - {name: e, filters: [{src: me, dst: 10.4.0.0/16}]}
          rules:
            - {name: r1, filter_list: a, action: requireinrequireout, auth_methods: psk}
            - {name: r2, filter_list: b, action: requireinrequestout, auth_methods: psk}
            - {name: r3, filter_list: c, action: requestinrequestout, auth_methods: psk}
            - {name: r4, filter_list: d, action: noauthentication}
            - {name: r5, filter_list: e, action: block}
        """
    )
    p = load_policy_text(text)
    acts = {r.name: r.action for r in p.rules}
    assert acts["r1"].allow_fallback is False and acts["r1"].nd_mode == "none"
    assert acts["r2"].allow_fallback is True and acts["r2"].nd_mode == "secure"
    assert acts["r3"].nd_mode == "boundary"
    assert (acts["r4"].outbound, acts["r4"].inbound) == ("bypass", "bypass")
    assert (acts["r5"].outbound, acts["r5"].inbound) == ("discard", "discard")
    assert acts["r1"].security_methods  # default methods


def test_requireinclearout_needs_a_tunnel() -> None:
    text = BASE.replace(
        "{name: everything, filter_list: all, filter_action: request, auth_methods: psk}",
        "{name: everything, filter_list: all, action: requireinclearout, auth_methods: psk}",
    )
    (i,) = reject(text)
    assert i.field == "action" and "tunnel" in i.message
