"""Conformance reports: the results model and everything written from it.

The contract is :mod:`harness.report.model` (one ``results.json`` per run, JSON Schema in
``results.schema.json``). Suites record into it with :class:`Recorder`; the reports are
written by :func:`write_reports` (HTML matrix, JUnit XML, Allure results); baselines and
merges work on the same model. See ``notes/results-model.md`` for the suites' side.
"""

from __future__ import annotations

from harness.report.baseline import Baseline, Comparison, Deviation, compare, run_exit_code
from harness.report.model import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    CaseMeta,
    CaseResult,
    Evidence,
    EvidenceKind,
    HostInfo,
    PeerInfo,
    ResultsFileError,
    RunInfo,
    RunResults,
    Step,
    StepStatus,
    Verdict,
    grade_unmet,
)
from harness.report.outputs import write_reports
from harness.report.recorder import CaseRecording, HarnessError, Recorder, new_run_info

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Baseline",
    "CaseMeta",
    "CaseRecording",
    "CaseResult",
    "Comparison",
    "Deviation",
    "Evidence",
    "EvidenceKind",
    "HarnessError",
    "HostInfo",
    "PeerInfo",
    "Recorder",
    "ResultsFileError",
    "RunInfo",
    "RunResults",
    "Step",
    "StepStatus",
    "Verdict",
    "compare",
    "grade_unmet",
    "new_run_info",
    "run_exit_code",
    "write_reports",
]
