"""Writing every report of a run into its directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.report import allure, html, junit
from harness.report.model import RESULTS_FILE, RunResults

INDEX_FILE = "index.html"
JUNIT_FILE = "junit.xml"
ALLURE_DIR = "allure-results"

AllureMode = Literal["offline", "metadata", "none"]


@dataclass(frozen=True)
class Written:
    results: Path
    html: Path
    junit: Path
    allure: Path | None


def write_reports(
    run: RunResults,
    out_dir: Path | str,
    *,
    allure_mode: AllureMode = "offline",
    write_results: bool = True,
) -> Written:
    """Write results.json, index.html, junit.xml and allure-results/ into ``out_dir``.

    ``allure_mode``: ``offline`` writes Allure results from the model (merged runs, runs
    outside pytest); ``metadata`` only adds environment.properties and categories.json to
    the results allure-pytest wrote during the run; ``none`` leaves Allure alone.
    Evidence paths in ``run`` are relative to ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    if write_results:
        run.write(results_path)
    html.write(run, out / INDEX_FILE)
    junit.write(run, out / JUNIT_FILE)
    allure_dir = out / ALLURE_DIR
    if allure_mode == "offline":
        allure.write_results(run, out, allure_dir, clean=True)
    elif allure_mode == "metadata":
        allure.write_metadata(run, allure_dir)
    written_allure = None if allure_mode == "none" else allure_dir
    return Written(results_path, out / INDEX_FILE, out / JUNIT_FILE, written_allure)
