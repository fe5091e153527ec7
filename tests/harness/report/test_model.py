"""The results model and its JSON Schema (the contract with the suites)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from harness.cases import Level
from harness.report import ResultsFileError, RunResults, Verdict, grade_unmet
from harness.report.model import SCHEMA_PATH, json_schema
from harness.report.rfc import RfcRef, parse_refs, primary_ref
from tests.harness.report.jsonschema_mini import SchemaError, validate


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def test_shipped_schema_is_the_models_schema() -> None:
    # If this fails, regenerate: ipsec-interop report schema > harness/report/results.schema.json
    assert _schema() == json.loads(json.dumps(json_schema()))


def test_synthetic_run_validates_against_the_schema_file(run_dir: Path) -> None:
    doc = json.loads((run_dir / "results.json").read_text())
    validate(doc, _schema())
    assert doc["schema"] == "ipsec-interop/results" and doc["schema_version"] == 1
    assert {r["verdict"] for r in doc["results"]} == {v.value for v in Verdict}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["results"][0].update(verdict="maybe"),
        lambda d: d["results"][0].pop("level"),
        lambda d: d["results"][0].update(surprise=1),
        lambda d: d["run"].update(started="yesterday"),
        lambda d: d["results"][0].update(duration=-1),
        lambda d: d["results"][0].update(role="X"),
        lambda d: d.update(schema_version=2),
        lambda d: d["results"][0]["evidence"][0].update(sha256="xyz"),
    ],
)
def test_schema_rejects_broken_documents(run_dir: Path, mutate: Any) -> None:
    doc = json.loads((run_dir / "results.json").read_text())
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(SchemaError):
        validate(bad, _schema())
    with pytest.raises(ResultsFileError):
        RunResults.from_data(bad)


def test_load_round_trip(run_dir: Path, run: RunResults) -> None:
    again = RunResults.model_validate_json(run.to_json())
    assert again == run
    assert len(run.results) == 36
    assert (run_dir / "results.json").read_text() == run.to_json()


def test_wrong_version_is_refused_with_the_version(tmp_path: Path, run: RunResults) -> None:
    data = json.loads(run.to_json())
    data["schema_version"] = 7
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(ResultsFileError, match="version 7"):
        RunResults.load(tmp_path / "r.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ResultsFileError, match="not an ipsec-interop results file"):
        RunResults.load(tmp_path / "x.json")


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b", "C:/x"])
def test_evidence_paths_stay_inside_the_run(run: RunResults, path: str) -> None:
    data = json.loads(run.to_json())
    data["results"][0]["evidence"][0]["path"] = path
    with pytest.raises(ResultsFileError, match="evidence path"):
        RunResults.from_data(data)


def test_results_must_agree_with_their_case(run: RunResults) -> None:
    data = json.loads(run.to_json())
    data["results"][0]["level"] = "MAY"
    with pytest.raises(ResultsFileError, match="level/rfc differ"):
        RunResults.from_data(data)
    data = json.loads(run.to_json())
    data["results"].append(data["results"][0])
    with pytest.raises(ResultsFileError, match="two results"):
        RunResults.from_data(data)
    data = json.loads(run.to_json())
    data["results"][0]["peer"] = "nobody"
    with pytest.raises(ResultsFileError, match=r"not in run\.peers"):
        RunResults.from_data(data)


@pytest.mark.parametrize(
    ("level", "strict", "verdict"),
    [
        (Level.MUST, False, Verdict.FAIL),
        (Level.MUST_NOT, False, Verdict.FAIL),
        (Level.SHOULD, False, Verdict.WARNING),
        (Level.SHOULD_NOT, False, Verdict.WARNING),
        (Level.SHOULD, True, Verdict.FAIL),
        (Level.MAY, False, Verdict.RECORDED),
        (Level.MAY, True, Verdict.RECORDED),
    ],
)
def test_grading_of_an_unmet_requirement(level: Level, strict: bool, verdict: Verdict) -> None:
    # Issue 11: a SHOULD not met is a warning unless --strict.
    assert grade_unmet(level, strict=strict) is verdict


def test_rfc_references_as_the_catalogue_writes_them() -> None:
    assert parse_refs("7296 §2.7, §3.3.6") == [RfcRef("7296", "2.7"), RfcRef("7296", "3.3.6")]
    assert parse_refs("7296 §2.21.2; 4301 §4.4.3") == [
        RfcRef("7296", "2.21.2"),
        RfcRef("4301", "4.4.3"),
    ]
    assert parse_refs("7296 §3.1 (R flag)") == [RfcRef("7296", "3.1")]
    assert parse_refs("8247 §3.1-§3.4")[0] == RfcRef("8247", "3.1")
    assert parse_refs("4303 §3.4.3, App. A") == [RfcRef("4303", "3.4.3")]
    assert primary_ref("7427 §4").url == "https://www.rfc-editor.org/rfc/rfc7427#section-4"
    assert RfcRef("4303").url == "https://www.rfc-editor.org/rfc/rfc4303"
    assert str(RfcRef("4302", "3.3.3.1.1.1")) == "RFC 4302 §3.3.3.1.1.1"
