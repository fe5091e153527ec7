"""The exit codes of ``ipsec-interop``: distinct, stable, documented in ``--help`` and README."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CONFORMANCE_FAILURE = 1
    USAGE_ERROR = 2
    ENVIRONMENT_ERROR = 3
    NOTHING_SELECTED = 4


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "all selected cases pass (or match the baseline)",
    ExitCode.CONFORMANCE_FAILURE: "conformance failures (or deviations from the baseline)",
    ExitCode.USAGE_ERROR: "usage or configuration error (command line, policy, peer file)",
    ExitCode.ENVIRONMENT_ERROR: "environment or harness error (a peer could not start, ...)",
    ExitCode.NOTHING_SELECTED: "nothing was selected to run",
}

EXIT_CODES_HELP = "\n".join(f"  {code.value}  {MEANING[code]}" for code in ExitCode)
