"""The exit codes of ``ipsec-interop``: distinct, stable, documented in ``--help`` and README."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    """All selected cases pass (or match the baseline)."""
    CONFORMANCE_FAILURE = 1
    """At least one case failed (or deviated from the baseline)."""
    USAGE_ERROR = 2
    """Bad command line, configuration, policy or peer file."""
    ENVIRONMENT_ERROR = 3
    """Environment or harness error: a peer could not start, a namespace could not be made."""
    NOTHING_SELECTED = 4
    """The selection matched no case."""


EXIT_CODES_HELP = "\n".join(f"  {code.value}  {(code.__doc__ or '').strip()}" for code in ExitCode)
