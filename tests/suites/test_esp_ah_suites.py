"""The ``esp`` and ``ah`` suites against the reference on the local topology: every applicable
case passes, and a deliberate misbehaviour of the peer under test fails exactly the cases that
check that behaviour (``--put-misbehave``, ``reference_impl/node/host.py`` MISBEHAVIOURS).

On ``local`` the cases that need real IP links are not applicable: IPv6 (ESP-014, AH-004,
AH-005) and IP fragmentation (ESP-016); AH-006 checks its IPv4 half there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.suites.runs import run_results

ESP = {f"ESP-{n:03d}" for n in range(1, 17)}
AH = {f"AH-{n:03d}" for n in range(1, 9)}
NOT_ON_LOCAL = {"ESP-014", "ESP-016", "AH-004", "AH-005"}
REPLAY = {"ESP-002", "ESP-003", "ESP-004", "ESP-005", "AH-008"}
"""The cases that check the receiver's anti-replay window (AH-008 in its part (b))."""
PUT_AH_ICV = {"AH-001", "AH-008"}
"""The AH cases (on local) that verify the ICV of what the PUT sends: AH-001 (b) (mutable
fields zeroed), AH-008 (a) (its first packets)."""


def run(tmp_path: Path, *args: str, jobs: int = 2) -> dict[tuple[str, str], dict[str, str]]:
    rows = run_results(tmp_path, "--topology", "local", "--jobs", str(jobs), *args)
    return {(r["case"], r["role"]): r for r in rows}


def verdicts(results: dict[tuple[str, str], dict[str, str]], *which: str) -> set[str]:
    return {case for (case, _), r in results.items() if r["verdict"] in which}


@pytest.mark.slow
def test_reference_passes_everything_on_local(tmp_path: Path) -> None:
    results = run(tmp_path, "--suite", "esp", "--suite", "ah")
    assert {c for c, _ in results} == ESP | AH
    assert len(results) == 2 * len(ESP | AH)  # both roles of every case
    assert verdicts(results, "not_applicable") == NOT_ON_LOCAL
    assert verdicts(results, "pass") == (ESP | AH) - NOT_ON_LOCAL
    assert not verdicts(results, "fail", "error", "warning", "recorded")
    window = {r["parameters"].get("effective default window") for (c, _), r in results.items()
              if c == "ESP-006"}  # fmt: skip
    assert window == {"64..127"}  # the reference node's default window is 64


@pytest.mark.slow
def test_no_replay_check_fails_exactly_the_replay_cases(tmp_path: Path) -> None:
    results = run(tmp_path, "--suite", "esp", "--suite", "ah", "--put-misbehave",
                  "no_replay_check")  # fmt: skip
    assert verdicts(results, "fail") == REPLAY
    assert verdicts(results, "pass") == (ESP | AH) - NOT_ON_LOCAL - REPLAY
    assert not verdicts(results, "error", "warning", "recorded")
    reason = results[("AH-008", "I")]["reason"]
    assert "(b)" in reason and "(c)" not in reason  # the ESN wrap still works without a window


@pytest.mark.slow
def test_no_padding_check_is_a_should_of_esp_010(tmp_path: Path) -> None:
    results = run(tmp_path, "--suite", "esp", "--put-misbehave", "no_padding_check")
    assert verdicts(results, "warning") == {"ESP-010"}
    assert verdicts(results, "pass") == ESP - NOT_ON_LOCAL - {"ESP-010"}
    assert not verdicts(results, "fail", "error", "recorded")
    assert "(b)" in results[("ESP-010", "R")]["reason"]
    strict = run(tmp_path / "strict", "--case", "ESP-010", "--strict", "--put-misbehave",
                 "no_padding_check", jobs=1)  # fmt: skip
    assert {r["verdict"] for r in strict.values()} == {"fail"}


@pytest.mark.slow
def test_corrupted_ah_from_the_put_is_noticed_exactly(tmp_path: Path) -> None:
    results = run(tmp_path, "--suite", "ah", "--put-misbehave", "corrupt_icv=1000000")
    assert verdicts(results, "fail") == PUT_AH_ICV
    assert verdicts(results, "pass") == AH - NOT_ON_LOCAL - PUT_AH_ICV
    assert not verdicts(results, "error", "warning", "recorded")
    assert "(b)" in results[("AH-001", "I")]["reason"]
