"""Merging runs from parallel CI jobs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.report import RunResults, Verdict, write_reports
from harness.report.merge import MergeError, merge, merge_files
from tests.harness.report.synthetic import build_run


def _two_jobs(tmp_path: Path) -> tuple[Path, Path]:
    # Job A tests strongSwan, job B libreswan; both also run the reference column, and they
    # disagree on one reference result (a flaky case): the overlap a merge must resolve.
    a = tmp_path / "job-a"
    b = tmp_path / "job-b"
    build_run(a, peers=("reference", "strongswan"), job="strongswan")
    plan_b = {
        ("ESP-002", "reference", "I"): ("fail", "duplicate delivered"),
        ("ESP-005", "libreswan", "R"): ("pass", ""),
        ("AH-001", "libreswan", "I"): ("pass", ""),
    }
    build_run(b, peers=("reference", "libreswan"), job="libreswan", plan=plan_b)
    return a / "results.json", b / "results.json"


def test_merge_two_runs_with_overlapping_cases(tmp_path: Path) -> None:
    ra, rb = _two_jobs(tmp_path)
    out = tmp_path / "merged"
    merged = merge_files([ra, rb], out)
    run_a, run_b = RunResults.load(ra), RunResults.load(rb)
    peers = [p.name for p in merged.run.peers]
    assert peers == ["reference", "strongswan", "libreswan"]
    keys = {r.key for r in merged.results}
    assert keys == {r.key for r in run_a.results} | {r.key for r in run_b.results}
    assert len(merged.results) == 36 + 36 - 18  # the 18 reference results overlap
    by_key = {r.key: r for r in merged.results}
    # worst wins: B's failure shows although A passed
    assert by_key[("ESP-002", "reference", "I")].verdict is Verdict.FAIL
    assert any("ESP-002/reference/I" in n and "kept fail" in n for n in merged.run.notes)
    assert [s.job for s in merged.run.sources] == ["strongswan", "libreswan"]
    assert merged.run.started == min(run_a.run.started, run_b.run.started)
    # evidence of every kept result is in the merged directory
    for r in merged.results:
        for ev in r.evidence:
            if ev.path:
                assert (out / ev.path).is_file(), ev.path
    assert RunResults.load(out / "results.json") == merged

    # and one matrix, JUnit and Allure results from the merged run
    write_reports(merged, out)
    html = (out / "index.html").read_text()
    for peer in ("reference", "strongswan", "libreswan"):
        assert f'data-peer="{peer}"' in html
    root = ET.parse(out / "junit.xml").getroot()
    assert int(root.get("tests", "0")) == len(merged.results)
    allure = list((out / "allure-results").glob("*-result.json"))
    assert len(allure) == len(merged.results)
    env = (out / "allure-results" / "environment.properties").read_text()
    assert "source." in env


def test_conflict_policies(tmp_path: Path) -> None:
    ra, rb = _two_jobs(tmp_path)
    runs = [RunResults.load(ra), RunResults.load(rb)]
    latest, _ = merge(runs, on_conflict="latest")
    by_key = {r.key: r for r in latest.results}
    # B recorded later (it was built second), so its failure is kept
    assert by_key[("ESP-002", "reference", "I")].verdict is Verdict.FAIL
    latest_rev, _ = merge(runs[::-1], on_conflict="latest")
    assert {r.key: r.verdict for r in latest_rev.results}[("ESP-002", "reference", "I")] is (
        Verdict.FAIL
    )
    with pytest.raises(MergeError, match="ESP-002/reference/I"):
        merge(runs, on_conflict="error")
    with pytest.raises(MergeError):
        merge([])


def test_merging_a_merged_run_keeps_its_sources(tmp_path: Path) -> None:
    ra, rb = _two_jobs(tmp_path)
    first = merge_files([ra, rb], tmp_path / "m1")
    again = merge_files([tmp_path / "m1" / "results.json"], tmp_path / "m2")
    assert [s.id for s in again.run.sources] == [s.id for s in first.run.sources]
    assert json.loads((tmp_path / "m2" / "results.json").read_text())["schema_version"] == 1
