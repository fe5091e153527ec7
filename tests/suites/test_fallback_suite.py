"""The ``fallback`` and ``spd`` suites against the reference on the local topology: every case
passes (FB-28 needs a NAT router: not applicable there), and each suite notices a deliberate
misbehaviour of the peer under test in exactly the cases that check that behaviour.

Also the support module's packet builders and the policy shapes it loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reference_impl.driver.packet import checksum
from reference_impl.policy.validate import load_policy_text
from suites.support.fallback import (
    Ip4,
    icmp4_echo,
    icmp4_port_unreachable,
    policy_yaml,
    request_action,
    require_action,
    swan_schedule,
    tcp4,
    udp4,
)
from tests.suites.runs import ROOT, run_results, verdicts_by_case

# Cases that fail when IKE keeps retransmitting after the fallback (misbehaviour
# ike_after_fallback): those asserting "no IKE after the fallback" or a fresh schedule later.
IKE_AFTER_FALLBACK = {"FB-09", "FB-10", "FB-13", "FB-20", "FB-21", "FB-23", "FB-26"}
# Cases that fail when held packets also leave in clear (leak_while_negotiating): every case
# that sends while ACQUIRING/NEGOTIATING and checks the wire stays clean until the verdict.
LEAK = {
    "FB-01", "FB-02", "FB-05", "FB-06", "FB-07", "FB-09", "FB-10", "FB-11", "FB-13", "FB-14",
    "FB-17", "FB-18", "FB-21", "FB-22", "FB-23", "FB-25", "FB-26", "FB-29", "SPD-001",
}  # fmt: skip


def run(tmp_path: Path, *args: str, jobs: int = 1) -> dict[tuple[str, str], str]:
    rows = run_results(
        tmp_path, "--topology", "local", "--jobs", str(jobs), *args, suites=("fallback", "spd")
    )
    return verdicts_by_case(rows)


def failing(verdicts: dict[tuple[str, str], str]) -> set[str]:
    return {case for (case, _), v in verdicts.items() if v in ("fail", "error")}


@pytest.mark.slow
def test_reference_passes_everything_on_local(tmp_path: Path) -> None:
    verdicts = run(tmp_path, jobs=2)
    assert len({c for c, _ in verdicts}) == 38, sorted(verdicts)
    bad = {k: v for k, v in verdicts.items() if v not in ("pass", "recorded", "not_applicable")}
    assert not bad, bad
    assert verdicts[("FB-28", "I")] == "not_applicable"  # no NAT router on local
    assert {k for k, v in verdicts.items() if v == "recorded"} == {
        ("SPD-003", "I"),
        ("SPD-003", "R"),
        ("SPD-008", "R"),
    }
    assert sum(v == "pass" for v in verdicts.values()) == 40  # 44 results: 3 recorded, 1 n/a


@pytest.mark.slow
def test_ike_after_fallback_is_noticed_exactly(tmp_path: Path) -> None:
    verdicts = run(tmp_path, "--put-misbehave", "ike_after_fallback")
    assert failing(verdicts) == IKE_AFTER_FALLBACK


@pytest.mark.slow
def test_leak_while_negotiating_is_noticed_exactly(tmp_path: Path) -> None:
    verdicts = run(tmp_path, "--put-misbehave", "leak_while_negotiating")
    assert failing(verdicts) == LEAK


@pytest.mark.slow
def test_accepting_clear_inbound_is_noticed_exactly(tmp_path: Path) -> None:
    """The inbound check of RFC 4301 §5.2 step 3 skipped: SPD-004 fails in both roles, SPD-008
    (the catch-all DISCARD, a SHOULD) warns, and the fallback cases whose verdict rests on
    that check fail (FB-19: clear accepted *because of* the soft SA; FB-24: clear on a secure
    flow discarded)."""
    verdicts = run(tmp_path, "--put-misbehave", "accept_clear_inbound")
    assert failing(verdicts) == {"SPD-004", "FB-19", "FB-24"}
    assert verdicts[("SPD-004", "I")] == verdicts[("SPD-004", "R")] == "fail"
    assert verdicts[("SPD-008", "R")] == "warning"  # a SHOULD: graded, not failed


@pytest.mark.slow
def test_skipping_the_selector_check_is_noticed_exactly(tmp_path: Path) -> None:
    """RFC 4301 §5.2 step 4 skipped (decapsulated packets delivered whatever their inner
    addresses): SPD-005 fails in both roles, nothing else in these suites."""
    verdicts = run(tmp_path, "--put-misbehave", "no_selector_check")
    assert failing(verdicts) == {"SPD-005"}
    assert verdicts[("SPD-005", "I")] == verdicts[("SPD-005", "R")] == "fail"


@pytest.mark.slow
@pytest.mark.needs_root
def test_strongswan_default_schedule_gives_up_after_165_s(tmp_path: Path) -> None:
    """Policy-spec §5.3: charon with its default timers (4.0 / 1.8 / 5) sends at 0, 4, 11.2,
    24.16, 47.49, 89.48 and gives up at 165.06 s (FB-03 with DEFAULT_TIMERS_ENV)."""
    from harness.peers.strongswan import StrongSwanPeer
    from suites.support.fallback import DEFAULT_TIMERS_ENV

    avail = StrongSwanPeer.availability()
    if not avail.available:
        pytest.skip(avail.detail)
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--case", "FB-03", "--peer", "strongswan",
         "--topology", "netns", "--no-progress", "--reports", str(reports)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", DEFAULT_TIMERS_ENV: "1"},
    )  # fmt: skip
    data = json.loads((reports / "results.json").read_text())
    (result,) = data["results"]
    assert result["verdict"] == "pass", (result["reason"], proc.stdout[-2000:])
    assert result["duration"] > 160, result["duration"]


# --- the support module -------------------------------------------------------------------------


def test_packets_have_valid_checksums_and_parse_back() -> None:
    u = udp4("192.0.2.1", "192.0.2.2", 40000, 9, b"FBPROBE:x")
    assert checksum(u[:20]) == 0  # RFC 791 header checksum
    p = Ip4.parse(u)
    assert p is not None and (p.sport, p.dport, p.probe) == (40000, 9, b"x")
    t = tcp4("192.0.2.1", "192.0.2.2", 1, 80, payload=b"FBPROBE:t")
    assert Ip4.parse(t) == Ip4("192.0.2.1", "192.0.2.2", 6, 1, 80, b"FBPROBE:t")
    e = icmp4_echo("192.0.2.1", "192.0.2.2", 7, 1, b"x")
    assert checksum(e[20:]) == 0  # RFC 792 ICMP checksum
    q = icmp4_port_unreachable("192.0.2.2", "192.0.2.1", "192.0.2.1", "192.0.2.2", 500, 500,
                               b"\x11" * 8 + bytes(20))  # fmt: skip
    ip = Ip4.parse(q)
    assert ip is not None and ip.icmp == (3, 3) and checksum(q[20:]) == 0
    quoted = ip.payload[8:]  # the quoted datagram: IPv4 header, UDP header, IKE SPI
    assert quoted[9] == 17 and quoted[28:36] == b"\x11" * 8


def test_policies_validate() -> None:
    for action in (require_action(), request_action(after_s=3.0, soft_sa_idle_s=10)):
        text = policy_yaml("t", ["192.0.2.2"], action)
        load_policy_text(text, "t")
    load_policy_text(policy_yaml("t", ["192.0.2.2"], None, consec="requireinrequestout"), "t")
    load_policy_text(policy_yaml("t", [], require_action(), all_traffic=True), "t")
    load_policy_text(policy_yaml("t", ["192.0.2.2"], None, block=["192.0.2.9"]), "t")


def test_strongswan_schedule_matches_peers_md() -> None:
    # ../shared/design/peers.md §6: deltas 0, +1.00, +1.50, +2.25, give up 3.375 s later
    assert swan_schedule(1.0, 1.5, 3) == ([0.0, 1.0, 2.5, 4.75], 8.125)
    # policy-spec §3.4 [S] defaults: 0, 4, 11.2, 24.16, 47.49, 89.48; give up 165.06
    sends, fail = swan_schedule(4.0, 1.8, 5)
    assert [round(s, 2) for s in sends] == [0.0, 4.0, 11.2, 24.16, 47.49, 89.48]
    assert round(fail, 2) == 165.06
