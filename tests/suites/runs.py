"""``ipsec-interop run`` in a subprocess, as the suites' own tests start it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_results(
    tmp_path: Path,
    *args: str,
    suites: Sequence[str] = (),
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of ``results.json`` of ``ipsec-interop run ARGS --suite S...`` (reports under
    ``tmp_path``), run from the repository root; without a ``results.json`` the test fails
    with the end of the run's output."""
    reports = tmp_path / "reports"
    argv = [sys.executable, "-m", "harness.cli", "run", "--no-progress", "--reports",
            str(reports), *args]  # fmt: skip
    for s in suites:
        argv += ["--suite", s]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )  # fmt: skip
    results = reports / "results.json"
    assert results.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rows: list[dict[str, Any]] = json.loads(results.read_text())["results"]
    return rows


def verdicts_by_case(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """``{(case, role): verdict}``."""
    return {(r["case"], r["role"]): r["verdict"] for r in rows}
