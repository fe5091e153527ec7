from __future__ import annotations

from pathlib import Path

import pytest

from harness.report import RunResults, write_reports
from tests.harness.report.synthetic import build_run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A synthetic two-peer run recorded through the API, with every report written."""
    out = tmp_path / "reports"
    run = build_run(out)
    write_reports(run, out)
    return out


@pytest.fixture
def run(run_dir: Path) -> RunResults:
    return RunResults.load(run_dir / "results.json")
