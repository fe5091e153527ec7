"""Timing profiles (policy-spec §3.5): per-profile defaults, each field overridable in YAML.

A profile only supplies defaults: any field written in the policy wins, field by field
(``settings.ike.retransmit.schedule``, ``filter_actions[].fallback.*``,
``negotiation_shunt``, ``hold_queue.*``, ``failure_holddown_s``, ``default_response_rule.enabled``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from reference_impl.retransmit import REFERENCE_SCHEDULE, RetransmitSchedule


class Shunt(StrEnum):
    """What data packets do while ACQUIRING/NEGOTIATING (policy-spec §3.3 E2)."""

    HOLD = "hold"
    DROP = "drop"
    PASS = "pass"


class HoldPolicy(StrEnum):
    KEEP_LAST = "keep_last"
    KEEP_FIRST = "keep_first"


@dataclass(frozen=True, slots=True)
class TimingProfile:
    name: str
    schedule: RetransmitSchedule
    fallback_after_s: float
    on_negotiation_failure: bool
    shunt_require: Shunt
    """``negotiation_shunt`` of actions without ``allow_fallback``."""
    shunt_request: Shunt
    """``negotiation_shunt`` of actions with ``allow_fallback``."""
    hold_length: int
    hold_policy: HoldPolicy
    soft_sa_idle_s: float | None
    """``None``: the soft SA has no idle timeout (libreswan shunts are not idle-based)."""
    soft_sa_max_lifetime_s: float | None
    failure_holddown_s: float
    continue_ike_after_fallback: bool
    icmp_fast_fallback: bool
    default_response_rule: bool


_REF = TimingProfile(
    name="reference",
    schedule=REFERENCE_SCHEDULE,
    fallback_after_s=3.0,
    on_negotiation_failure=False,
    shunt_require=Shunt.HOLD,
    shunt_request=Shunt.HOLD,
    hold_length=1,
    hold_policy=HoldPolicy.KEEP_LAST,
    soft_sa_idle_s=300.0,
    soft_sa_max_lifetime_s=900.0,
    failure_holddown_s=30.0,
    continue_ike_after_fallback=False,
    icmp_fast_fallback=False,
    default_response_rule=True,
)

PROFILES: dict[str, TimingProfile] = {
    "reference": _REF,
    "windows-legacy": replace(_REF, name="windows-legacy"),
    "windows-spu": replace(
        _REF, name="windows-spu", fallback_after_s=0.5, on_negotiation_failure=True
    ),
    # Vista+ negotiation discovery: clear at once and IKE in parallel (fallback after 0 s,
    # IKE continues, upgrade on success). "flow-based" soft SA state is approximated by the
    # reference soft-SA timers plus the per-flow secure bits (see the report of issue 7).
    "windows-nd": replace(
        _REF,
        name="windows-nd",
        fallback_after_s=0.0,
        on_negotiation_failure=True,
        shunt_request=Shunt.PASS,
        continue_ike_after_fallback=True,
        default_response_rule=False,
    ),
    "libreswan": replace(
        _REF,
        name="libreswan",
        shunt_require=Shunt.DROP,
        shunt_request=Shunt.DROP,
        failure_holddown_s=0.0,
        default_response_rule=False,
    ),
    # private-or-clear: keyingtries=1, retransmit-timeout=2s; failureshunt=passthrough for
    # shuntlifetime (15 min) measured from installation, no idle timer.
    "libreswan-oe": replace(
        _REF,
        name="libreswan-oe",
        schedule=RetransmitSchedule((0.5, 0.5, 1.0)),
        fallback_after_s=2.0,
        on_negotiation_failure=True,
        shunt_require=Shunt.DROP,
        shunt_request=Shunt.PASS,
        soft_sa_idle_s=None,
        soft_sa_max_lifetime_s=900.0,
        failure_holddown_s=900.0,
        default_response_rule=False,
    ),
    # charon retransmit_timeout 4.0, retransmit_base 1.8, retransmit_tries 5.
    "strongswan": replace(
        _REF,
        name="strongswan",
        schedule=RetransmitSchedule.exponential(4.0, 1.8, 5),
        shunt_require=Shunt.DROP,
        shunt_request=Shunt.DROP,
        failure_holddown_s=0.0,
        default_response_rule=False,
    ),
}

PROFILE_NAMES = tuple(PROFILES)
