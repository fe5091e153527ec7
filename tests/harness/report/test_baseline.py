"""Baselines: written from a run, read back, compared, and the exit code they give."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.exitcodes import ExitCode
from harness.report import RunResults, Verdict
from harness.report import baseline as bl
from harness.report.baseline import DeviationKind
from tests.harness.report.synthetic import PLAN, build_run


def test_round_trip(tmp_path: Path, run: RunResults) -> None:
    text = bl.dump(run)
    path = tmp_path / "expected.yaml"
    path.write_text(text)
    loaded = bl.load(path)
    assert loaded == bl.from_run(run)
    assert loaded.expected("strongswan", "ESP-005", "R") is Verdict.FAIL
    assert loaded.expected("strongswan", "AH-001", "I") is Verdict.NOT_APPLICABLE
    # reasons are kept as comments for the reviewer of the file
    assert "    ESP-005: {R: fail}  # seq 500 with a bad ICV moved the replay window" in text
    comparison = bl.compare(run, loaded)
    assert comparison.deviations == []
    assert comparison.matched == len(run.results) - 1  # the error is not compared
    assert bl.exit_code(comparison) is ExitCode.ENVIRONMENT_ERROR  # the harness error


def test_only_one_peer(run: RunResults) -> None:
    data = yaml.safe_load(bl.dump(run, peers=["strongswan"]))
    assert list(data["peers"]) == ["strongswan"]


def _plan(**changes: tuple[str, str]) -> dict[tuple[str, str, str], tuple[str, str]]:
    plan = {k: v for k, v in PLAN.items() if k[0] != "ESP-011"}  # no harness error
    for key, value in changes.items():
        case, peer, role = key.split("__")
        plan[(case.replace("_", "-"), peer, role)] = value
    return plan


def test_deviations_decide_the_exit_code(tmp_path: Path) -> None:
    base_run = build_run(tmp_path / "a", plan=_plan())
    baseline = bl.parse(yaml.safe_load(bl.dump(base_run)))
    assert bl.exit_code(bl.compare(base_run, baseline)) is ExitCode.OK

    # strongSwan got fixed (new pass) and reference broke (new failure), a warning went away
    changed = build_run(
        tmp_path / "b",
        plan=_plan(
            ESP_005__strongswan__R=("pass", ""),
            ESP_002__reference__I=("fail", "duplicate delivered"),
            IKEV2_NEG_009__strongswan__I=("pass", ""),
        ),
    )
    comparison = bl.compare(changed, baseline)
    kinds = {(d.case, d.peer, d.role): d.kind for d in comparison.deviations}
    assert kinds == {
        ("ESP-005", "strongswan", "R"): DeviationKind.NEW_PASS,
        ("ESP-002", "reference", "I"): DeviationKind.NEW_FAILURE,
        ("IKEV2-NEG-009", "strongswan", "I"): DeviationKind.CHANGED,
    }
    assert bl.exit_code(comparison) is ExitCode.CONFORMANCE_FAILURE

    # only a change that is neither a new failure nor a new pass: exit 0, still reported
    soft = build_run(tmp_path / "c", plan=_plan(IKEV2_NEG_009__strongswan__I=("pass", "")))
    soft_cmp = bl.compare(soft, baseline)
    assert [d.kind for d in soft_cmp.deviations] == [DeviationKind.CHANGED]
    assert bl.exit_code(soft_cmp) is ExitCode.OK


def test_new_and_missing_cases(tmp_path: Path) -> None:
    run = build_run(tmp_path, plan=_plan())
    data = yaml.safe_load(bl.dump(run))
    del data["peers"]["strongswan"]["ESP-005"]  # new to the baseline, and it fails
    del data["peers"]["strongswan"]["ESP-001"]  # new to the baseline, passes
    data["peers"]["strongswan"]["ESP-002"]["X"] = "pass"
    with pytest.raises(bl.BaselineError, match="unknown role"):
        bl.parse(data)
    del data["peers"]["strongswan"]["ESP-002"]["X"]
    data["peers"]["strongswan"]["ESP-002"]["R"] = "pass"
    data["peers"]["libreswan"] = {"ESP-001": {"I": "pass"}}  # not tested in this run: ignored
    run_less = RunResults.model_validate(
        run.model_copy(
            update={"results": [r for r in run.results if r.key != ("ESP-002", "strongswan", "R")]}
        ).model_dump()
    )
    comparison = bl.compare(run_less, bl.parse(data))
    kinds = sorted((d.kind.value, d.case, d.role) for d in comparison.deviations)
    assert kinds == [
        ("missing from run", "ESP-002", "R"),
        ("new failure", "ESP-005", "R"),
        ("not in baseline", "ESP-001", "I"),
        ("not in baseline", "ESP-001", "R"),
    ]
    assert bl.exit_code(comparison) is ExitCode.CONFORMANCE_FAILURE


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"baseline": 2},
        {"baseline": 1, "peers": []},
        {"baseline": 1, "peers": {"p": {"C": {"I": "great"}}}},
    ],
)
def test_bad_baselines_are_refused(data: object) -> None:
    with pytest.raises(bl.BaselineError):
        bl.parse(data)


def test_run_exit_code_without_baseline(tmp_path: Path) -> None:
    assert bl.run_exit_code(build_run(tmp_path / "a")) is ExitCode.ENVIRONMENT_ERROR
    assert bl.run_exit_code(build_run(tmp_path / "b", plan=_plan())) is (
        ExitCode.CONFORMANCE_FAILURE
    )
    only_pass = {k: v for k, v in _plan().items() if v[0] not in ("fail", "not_met")}
    only_pass[("IKEV2-NEG-009", "strongswan", "I")] = ("not_met", "SHOULD: a warning")
    assert bl.run_exit_code(build_run(tmp_path / "c", plan=only_pass)) is ExitCode.OK
