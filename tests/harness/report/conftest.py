from __future__ import annotations

from pathlib import Path

import pytest

from harness.report import RunResults, write_reports
from tests.harness.report.synthetic import build_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic two-peer run recorded through the API, with every report written.

    Shared by the tests of a session (they read it; some add files such as screenshots).
    """
    out = tmp_path_factory.mktemp("synthetic") / "reports"
    run = build_run(out)
    write_reports(run, out)
    return out


@pytest.fixture
def run(run_dir: Path) -> RunResults:
    return RunResults.load(run_dir / "results.json")
