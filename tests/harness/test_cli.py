"""The exit-code contract of the ``ipsec-interop`` command."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.exitcodes import MEANING, ExitCode


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_exit_codes_are_stable() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]


def test_help_documents_exit_codes() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for code in ExitCode:
        assert f"{code.value}  {MEANING[code]}" in proc.stdout


def test_version() -> None:
    proc = run_cli("version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("ipsec-interop ")


def test_unknown_command_is_usage_error() -> None:
    assert run_cli("no-such-command").returncode == ExitCode.USAGE_ERROR


def test_bad_option_is_usage_error() -> None:
    assert run_cli("cases", "--level", "PERHAPS").returncode == ExitCode.USAGE_ERROR


def test_cases_json() -> None:
    proc = run_cli("cases", "--json")
    assert proc.returncode in (ExitCode.OK, ExitCode.NOTHING_SELECTED)
    assert isinstance(json.loads(proc.stdout)["cases"], list)
