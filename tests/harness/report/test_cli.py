"""The ``ipsec-interop report`` commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.exitcodes import ExitCode
from harness.report import RunResults
from harness.system import which
from tests.harness.report.synthetic import PLAN, build_run


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_baseline_then_compare(tmp_path: Path, run_dir: Path) -> None:
    results = str(run_dir / "results.json")
    proc = cli("baseline", "--from", results, "--peer", "strongswan")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert list(data["peers"]) == ["strongswan"]
    expected = tmp_path / "expected.yaml"
    expected.write_text(proc.stdout)

    fixed = build_run(
        tmp_path / "fixed",
        plan={k: v for k, v in PLAN.items() if k != ("ESP-005", "strongswan", "R")}
        | {("ESP-011", "reference", "I"): ("pass", "")},
    )
    assert fixed.results
    same = cli("compare", results, "--baseline", str(expected), "--json")
    assert same.returncode == ExitCode.ENVIRONMENT_ERROR  # the synthetic run's harness error
    assert json.loads(same.stdout)["deviations"] == []
    new_pass = cli("compare", str(tmp_path / "fixed/results.json"), "--baseline", str(expected))
    assert new_pass.returncode == ExitCode.CONFORMANCE_FAILURE
    assert "new pass" in new_pass.stdout and "ESP-005" in new_pass.stdout
    assert cli("baseline", "--from", results, "--peer", "nobody").returncode == 2


def test_merge_validate_render_schema(tmp_path: Path) -> None:
    build_run(tmp_path / "a", peers=("reference", "strongswan"), job="a")
    build_run(tmp_path / "b", peers=("reference", "libreswan"), job="b")
    out = tmp_path / "merged"
    proc = cli(
        "merge",
        str(tmp_path / "a/results.json"),
        str(tmp_path / "b/results.json"),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("results.json", "index.html", "junit.xml", "allure-results/categories.json"):
        assert (out / name).is_file(), name
    assert "3 peers" in proc.stdout
    assert cli("validate", str(out / "results.json")).returncode == 0
    rendered = tmp_path / "rendered"
    assert cli("render", str(out / "results.json"), "--out", str(rendered)).returncode == 0
    assert RunResults.load(rendered / "results.json") == RunResults.load(out / "results.json")
    schema = json.loads(cli("schema").stdout)
    assert schema["properties"]["schema_version"]["const"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "ipsec-interop/results", "schema_version": 9}')
    proc = cli("validate", str(bad))
    assert proc.returncode == ExitCode.USAGE_ERROR and "version 9" in proc.stderr


def test_summary_exit_code(run_dir: Path) -> None:
    proc = cli("summary", str(run_dir / "results.json"))
    assert proc.returncode == ExitCode.ENVIRONMENT_ERROR
    assert "Results per suite" in proc.stdout and "strongswan MUST" in proc.stdout


def test_allure_without_the_command_line_says_how_to_get_it(run_dir: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no allure, no java
    proc = cli(
        "allure",
        "--results",
        str(run_dir / "allure-results"),
        "--out",
        str(run_dir / "allure-report"),
        env=env,
    )
    assert proc.returncode == ExitCode.ENVIRONMENT_ERROR
    assert "npm install -g allure-commandline" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    which("allure") is None,
    reason="Allure CLI not installed (scripts/install-report-tools installs it)",
)
def test_allure_renders_a_report_with_our_cases(run_dir: Path) -> None:
    out = run_dir / "allure-report"
    proc = cli("allure", "--results", str(run_dir / "allure-results"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "widgets/summary.json").read_text())
    assert summary["statistic"] == {
        "failed": 1,
        "broken": 1,
        "skipped": 2,
        "passed": 32,
        "unknown": 0,
        "total": 36,
    }
    names = {json.loads(p.read_text())["name"] for p in (out / "data/test-cases").glob("*.json")}
    assert (
        "ESP-005 The window is updated only after successful integrity verification "
        "[strongswan, responder]" in names
    )
    behaviors = json.loads((out / "data/behaviors.json").read_text())
    assert {c["name"] for c in behaviors["children"]} >= {"esp", "ah", "ikev2-negotiation"}
    categories = json.loads((out / "data/categories.json").read_text())
    assert {c["name"] for c in categories["children"]} >= {
        "MUST not met",
        "Known peer behaviour",
        "Not applicable to the peer",
    }
