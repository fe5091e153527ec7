"""Baselines: the expected verdicts of a peer, and comparing a run with them.

``ipsec-interop report baseline --from RUN.json > expected.yaml`` writes::

    # ipsec-interop baseline ... (comments: where it came from, the reasons)
    baseline: 1
    peers:
      strongswan:
        AH-001: {I: not_applicable, R: not_applicable}   # kernel-libipsec has no AH
        ESP-005: {R: fail}                                # ICV not checked ...

``run --baseline expected.yaml`` then reports only deviations and takes its exit code from
:func:`exit_code` of :func:`compare`: a *new failure* (expected anything but fail/error, got
fail) or a *new pass* (expected fail, got pass) sets exit code 1, so the baseline is kept
up to date in both directions. Other changes (pass to warning, a case missing from the run,
a case the baseline does not know that passes) are listed but do not change the exit code.
A harness error is exit code 3 whatever the baseline says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml

from harness.exitcodes import ExitCode
from harness.report.model import RunResults, Verdict

BASELINE_VERSION = 1
_ROLE_ORDER = ("I", "R")


@dataclass(frozen=True)
class Baseline:
    """Expected verdicts: peer -> case -> role -> verdict."""

    peers: dict[str, dict[str, dict[str, Verdict]]]

    def expected(self, peer: str, case: str, role: str) -> Verdict | None:
        return self.peers.get(peer, {}).get(case, {}).get(role)

    def entries(self) -> Iterable[tuple[str, str, str]]:
        for peer, cases in self.peers.items():
            for case, roles in cases.items():
                for role in roles:
                    yield (case, peer, role)


class BaselineError(ValueError):
    """A baseline file that cannot be used."""


def from_run(run: RunResults, peers: Iterable[str] | None = None) -> Baseline:
    wanted = set(peers) if peers else None
    out: dict[str, dict[str, dict[str, Verdict]]] = {}
    for r in run.sorted_results():
        if (wanted is not None and r.peer not in wanted) or r.verdict is Verdict.ERROR:
            continue  # a harness error is never an expected result
        out.setdefault(r.peer, {}).setdefault(r.case, {})[r.role.value] = r.verdict
    return Baseline(out)


def _yaml_key(text: str) -> str:
    return yaml.safe_dump(text, default_style=None).strip().removesuffix("\n...").strip()


def dump(run: RunResults, peers: Iterable[str] | None = None) -> str:
    """The YAML text of the run's verdicts as a baseline, with the reasons as comments."""
    baseline = from_run(run, peers)
    reasons = {r.key: r.reason for r in run.results}
    info = run.run
    lines = [
        f"# ipsec-interop baseline: expected verdicts, from run {info.id}",
        f"# harness {info.harness_version}, topology {info.topology}, "
        f"started {info.started.replace(microsecond=0).isoformat()}",
    ]
    for peer in baseline.peers:
        p = info.peer(peer)
        if p is not None:
            lines.append(f"# {peer}: {p.implementation} {p.version or '(version unknown)'}")
    for r in run.sorted_results():
        if r.verdict is Verdict.ERROR and (peers is None or r.peer in set(peers)):
            lines.append(f"# not included: {r.case} {r.peer} {r.role.value}: harness error")
    lines += [
        "# Verdicts: pass, fail, warning, not_applicable, recorded.",
        "# A new failure or a new pass against this file makes `run --baseline` exit 1.",
        f"baseline: {BASELINE_VERSION}",
        "peers:" + ("" if baseline.peers else " {}"),
    ]
    for peer, cases in baseline.peers.items():
        lines.append(f"  {_yaml_key(peer)}:")
        for case, roles in cases.items():
            inner = ", ".join(
                f"{role}: {roles[role].value}" for role in _ROLE_ORDER if role in roles
            )
            line = f"    {_yaml_key(case)}: {{{inner}}}"
            notes = sorted(
                {
                    reasons[(case, peer, role)]
                    for role in roles
                    if roles[role] is not Verdict.PASS and reasons.get((case, peer, role))
                }
            )
            if notes:
                note = "; ".join(notes).replace("\n", " ")
                line += "  # " + (note if len(note) <= 120 else note[:119] + "…")
            lines.append(line)
    return "\n".join(lines) + "\n"


def load(path: Path) -> Baseline:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BaselineError(f"{path}: cannot read baseline: {exc}") from exc
    return parse(data, source=str(path))


def parse(data: object, *, source: str = "baseline") -> Baseline:
    if not isinstance(data, dict) or data.get("baseline") != BASELINE_VERSION:
        raise BaselineError(f"{source}: not an ipsec-interop baseline (version {BASELINE_VERSION})")
    peers_data = data.get("peers")
    if peers_data is None:
        peers_data = {}
    if not isinstance(peers_data, dict):
        raise BaselineError(f"{source}: 'peers' must be a mapping")
    out: dict[str, dict[str, dict[str, Verdict]]] = {}
    for peer, cases in peers_data.items():
        if not isinstance(cases, dict):
            raise BaselineError(f"{source}: peer {peer}: expected a mapping of cases")
        for case, roles in cases.items():
            if not isinstance(roles, dict):
                raise BaselineError(f"{source}: {peer} {case}: expected {{I: ..., R: ...}}")
            for role, verdict in roles.items():
                if role not in _ROLE_ORDER:
                    raise BaselineError(f"{source}: {peer} {case}: unknown role {role!r}")
                try:
                    v = Verdict(verdict)
                except ValueError:
                    raise BaselineError(
                        f"{source}: {peer} {case} {role}: unknown verdict {verdict!r}"
                    ) from None
                out.setdefault(str(peer), {}).setdefault(str(case), {})[role] = v
    return Baseline(out)


class DeviationKind(StrEnum):
    NEW_FAILURE = "new failure"
    NEW_PASS = "new pass"
    CHANGED = "changed"
    NOT_IN_BASELINE = "not in baseline"
    MISSING = "missing from run"


@dataclass(frozen=True)
class Deviation:
    kind: DeviationKind
    case: str
    peer: str
    role: str
    expected: Verdict | None
    actual: Verdict | None
    reason: str = ""

    @property
    def sets_exit_code(self) -> bool:
        return self.kind in (DeviationKind.NEW_FAILURE, DeviationKind.NEW_PASS)


@dataclass(frozen=True)
class Comparison:
    deviations: list[Deviation]
    matched: int
    errors: int

    @property
    def blocking(self) -> list[Deviation]:
        return [d for d in self.deviations if d.sets_exit_code]


_BAD = {Verdict.FAIL, Verdict.ERROR}


def compare(run: RunResults, baseline: Baseline) -> Comparison:
    """The deviations of ``run`` from ``baseline``, for the peers the baseline covers.

    Results of a peer the baseline has no entry for are not compared (a baseline is the
    expected results of the peers it names); harness errors count whatever the peer.
    """
    deviations: list[Deviation] = []
    matched = 0
    seen: set[tuple[str, str, str]] = set()
    for r in run.sorted_results():
        if r.peer not in baseline.peers and r.verdict is not Verdict.ERROR:
            continue  # the baseline says nothing about this peer
        key = r.key
        seen.add(key)
        expected = baseline.expected(r.peer, r.case, r.role.value)
        actual = r.verdict
        if actual is Verdict.ERROR:
            continue  # counted in errors: exit code 3 whatever the baseline says
        if expected is None:
            kind = DeviationKind.NEW_FAILURE if actual is Verdict.FAIL else None
            kind = kind or DeviationKind.NOT_IN_BASELINE
        elif expected == actual:
            matched += 1
            continue
        elif actual is Verdict.FAIL:
            kind = DeviationKind.NEW_FAILURE
        elif expected in _BAD and actual is Verdict.PASS:
            kind = DeviationKind.NEW_PASS
        else:
            kind = DeviationKind.CHANGED
        deviations.append(Deviation(kind, r.case, r.peer, r.role.value, expected, actual, r.reason))
    tested_peers = {r.peer for r in run.results}
    run_cases = set(run.cases)
    for case, peer, role in baseline.entries():
        if peer in tested_peers and case in run_cases and (case, peer, role) not in seen:
            deviations.append(
                Deviation(
                    DeviationKind.MISSING,
                    case,
                    peer,
                    role,
                    baseline.expected(peer, case, role),
                    None,
                )
            )
    errors = run.counts()[Verdict.ERROR]
    return Comparison(deviations, matched, errors)


def exit_code(comparison: Comparison) -> ExitCode:
    """The exit code of a run compared with a baseline."""
    if comparison.errors:
        return ExitCode.ENVIRONMENT_ERROR
    if comparison.blocking:
        return ExitCode.CONFORMANCE_FAILURE
    return ExitCode.OK


def run_exit_code(run: RunResults) -> ExitCode:
    """The exit code of a run without a baseline: errors 3, failures 1, nothing run 4."""
    counts = run.counts()
    if not run.results:
        return ExitCode.NOTHING_SELECTED
    if counts[Verdict.ERROR]:
        return ExitCode.ENVIRONMENT_ERROR
    if counts[Verdict.FAIL]:
        return ExitCode.CONFORMANCE_FAILURE
    return ExitCode.OK
