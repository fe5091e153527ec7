"""The results model: one JSON document per run (``reports/results.json``), versioned.

This is the contract between the suites (which record into it through
:class:`harness.report.recorder.Recorder`) and every report (HTML matrix, JUnit, Allure,
baselines, merges). ``results.schema.json`` next to this module is its JSON Schema, generated
from these classes (``ipsec-interop report schema``) and checked in tests.

Versioning: ``schema_version`` is an integer bumped on any change a reader of the previous
version would misread (a field renamed or removed, a new verdict). Adding an optional field is
not such a change, but the schema forbids unknown fields, so a newer writer's file fails
validation with an older schema: readers are expected to match versions, and the loader says
which version it got when it refuses a file.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.cases import CaseInfo, Level, Role

SCHEMA_ID = "ipsec-interop/results"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


class Verdict(StrEnum):
    """The graded verdict of one case for one peer in one role (issue 11).

    - ``pass``: the requirement is met.
    - ``fail``: a MUST (or MUST NOT) is not met, or a SHOULD is not met under ``--strict``.
    - ``warning``: a SHOULD (or SHOULD NOT) is not met; not a failure unless ``--strict``.
    - ``not_applicable``: the peer lacks a capability the case needs (reason says which).
    - ``recorded``: an observation, neither pass nor fail (a MAY, or behaviour the peer has no
      notion of, such as "no fallback: blocked for 165 s").
    - ``error``: the harness could not evaluate the case (a peer did not start, a tool
      crashed); says nothing about conformance, and makes the run exit with code 3.
    """

    PASS = "pass"
    FAIL = "fail"
    WARNING = "warning"
    NOT_APPLICABLE = "not_applicable"
    RECORDED = "recorded"
    ERROR = "error"

    @property
    def label(self) -> str:
        return _VERDICT_LABELS[self]

    @property
    def rank(self) -> int:
        """Badness, for combining several findings and resolving merge conflicts."""
        return _VERDICT_RANK[self]


_VERDICT_LABELS = {
    Verdict.PASS: "pass",
    Verdict.FAIL: "FAIL",
    Verdict.WARNING: "warning",
    Verdict.NOT_APPLICABLE: "n/a",
    Verdict.RECORDED: "recorded",
    Verdict.ERROR: "error",
}
_VERDICT_RANK = {
    Verdict.NOT_APPLICABLE: 0,
    Verdict.PASS: 1,
    Verdict.RECORDED: 2,
    Verdict.WARNING: 3,
    Verdict.FAIL: 4,
    Verdict.ERROR: 5,
}


def grade_unmet(level: Level, *, strict: bool) -> Verdict:
    """The verdict of a requirement that was not met, by its RFC 2119 level (issue 11).

    MUST / MUST NOT: fail. SHOULD / SHOULD NOT: warning, or fail with ``--strict``.
    MAY: recorded (an optional behaviour the peer does not have is an observation).
    """
    if level.is_mandatory:
        return Verdict.FAIL
    if level in (Level.SHOULD, Level.SHOULD_NOT):
        return Verdict.FAIL if strict else Verdict.WARNING
    return Verdict.RECORDED


def level_group(level: Level) -> str:
    """MUST, SHOULD or MAY: the three columns of the per-peer summary and the level filter."""
    if level.is_mandatory:
        return "MUST"
    if level in (Level.SHOULD, Level.SHOULD_NOT):
        return "SHOULD"
    return "MAY"


class EvidenceKind(StrEnum):
    """What an evidence file is (drives its icon, its Allure type and the secrets policy)."""

    PCAP = "pcap"
    KEYS = "keys"
    """Wireshark key tables (esp_sa, ikev2_decryption_table): written only with export-keys."""
    LOG = "log"
    SA_DUMP = "sa_dump"
    ORACLE = "oracle"
    CONFIG = "config"
    RERUN = "rerun"
    OTHER = "other"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class Evidence(_Model):
    """One evidence file of a result, stored under the run directory."""

    kind: EvidenceKind
    name: str = Field(description="Human name, e.g. 'capture on the PUT side'.")
    path: str | None = Field(
        default=None,
        description="POSIX path relative to the directory of results.json; null when withheld.",
    )
    media_type: str = "application/octet-stream"
    size: int | None = Field(default=None, ge=0)
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    withheld: bool = Field(
        default=False, description="Not written, for example keys without --export-keys."
    )
    note: str | None = Field(default=None, description="Why it was withheld or redacted.")
    redacted: bool = Field(default=False, description="Secrets were replaced in this file.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or ".." in parts or ":" in parts[0]:
            raise ValueError(f"evidence path must be relative and inside the run: {value!r}")
        return value


class StepStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    BROKEN = "broken"
    SKIPPED = "skipped"


class Step(_Model):
    """A step of a case, typically one exchange (IKE_SA_INIT, IKE_AUTH, an ESP probe)."""

    name: str
    status: StepStatus = StepStatus.PASSED
    start: AwareDatetime
    duration: float = Field(ge=0, description="Seconds.")
    message: str | None = None
    steps: list[Step] = Field(default_factory=list)


class CaseMeta(_Model):
    """A case's catalogue metadata (the registry's :class:`harness.cases.CaseInfo`)."""

    id: str
    suite: str
    rfc: str = Field(description="RFC and section(s) as the catalogue writes them: '4303 §3.4.3'.")
    level: Level
    roles: list[Role]
    title: str
    needs: list[str] = Field(default_factory=list)

    @classmethod
    def from_info(cls, info: CaseInfo) -> CaseMeta:
        return cls(
            id=info.id,
            suite=info.suite,
            rfc=info.rfc,
            level=info.level,
            roles=list(info.roles),
            title=info.title,
            needs=list(info.needs),
        )


class CaseResult(_Model):
    """The verdict of one case for one peer under test in one role, with its evidence."""

    case: str = Field(description="Catalogue ID, a key of the document's 'cases'.")
    peer: str = Field(description="Name of the peer under test, a 'name' in run.peers.")
    role: Role = Field(description="Role of the peer under test: I(nitiator) or R(esponder).")
    verdict: Verdict
    level: Level
    rfc: str
    reason: str = Field(default="", description="One line: why this verdict.")
    details: str | None = Field(default=None, description="Longer text (findings, traceback).")
    known_behaviour: str | None = Field(
        default=None,
        description="Reference to the entry in suites/KNOWN_PEER_BEHAVIOUR.md explaining it.",
    )
    start: AwareDatetime
    duration: float = Field(ge=0, description="Seconds.")
    parameters: dict[str, str] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    rerun: str | None = Field(default=None, description="One command that reruns exactly this.")
    worker: str | None = Field(default=None, description="pytest-xdist worker or CI job.")

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.case, self.peer, self.role.value)

    @property
    def anchor(self) -> str:
        """A stable, URL-safe identifier of this result (HTML anchors, file names)."""
        return f"r-{self.case}--{self.peer}--{self.role.value}"


class PeerInfo(_Model):
    """An implementation taking part in the run."""

    name: str = Field(description="Column name in the matrix: 'strongswan', 'reference'.")
    implementation: str = Field(description="'strongSwan', 'libreswan', 'reference', ...")
    version: str | None = None
    under_test: bool = True
    address: str | None = None
    details: dict[str, str] = Field(default_factory=dict)


class HostInfo(_Model):
    hostname: str
    platform: str
    python: str

    @classmethod
    def current(cls) -> HostInfo:
        import platform

        return cls(
            hostname=socket.gethostname(),
            platform=platform.platform(),
            python=sys.version.split()[0],
        )


class SourceRun(_Model):
    """A run that a merged document was made of."""

    id: str
    harness_version: str
    topology: str
    host: HostInfo
    started: AwareDatetime
    finished: AwareDatetime | None = None
    job: str | None = None
    file: str | None = None


class RunInfo(_Model):
    """Metadata of the run."""

    id: str
    harness_version: str
    started: AwareDatetime
    finished: AwareDatetime | None = None
    topology: str
    host: HostInfo
    peers: list[PeerInfo]
    command: str | None = None
    strict: bool = False
    export_keys: bool = False
    job: str | None = Field(default=None, description="CI job name, when run in CI.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form (CI URL, ...).")
    sources: list[SourceRun] = Field(
        default_factory=list, description="For a merged run: the runs it was made of."
    )
    notes: list[str] = Field(default_factory=list)

    @staticmethod
    def new_id(now: datetime) -> str:
        return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)

    def peer(self, name: str) -> PeerInfo | None:
        return next((p for p in self.peers if p.name == name), None)

    @property
    def duration(self) -> float | None:
        if self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()


class RunResults(_Model):
    """The whole document: ``reports/results.json``."""

    schema_: Literal["ipsec-interop/results"] = Field(
        default="ipsec-interop/results", alias="schema"
    )
    schema_version: Literal[1] = 1
    run: RunInfo
    cases: dict[str, CaseMeta] = Field(
        default_factory=dict, description="Catalogue metadata of every case in the results."
    )
    results: list[CaseResult] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> RunResults:
        seen: set[tuple[str, str, str]] = set()
        peers = {p.name for p in self.run.peers}
        for r in self.results:
            meta = self.cases.get(r.case)
            if meta is None:
                raise ValueError(f"result for {r.case} but no such case in 'cases'")
            if r.level != meta.level or r.rfc != meta.rfc:
                raise ValueError(f"result for {r.case}: level/rfc differ from its case metadata")
            if r.peer not in peers:
                raise ValueError(f"result for {r.case}: peer {r.peer!r} is not in run.peers")
            if r.key in seen:
                raise ValueError(f"two results for {r.case} / {r.peer} / {r.role.value}")
            seen.add(r.key)
        return self

    # -- reading and writing ------------------------------------------------------------

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True) + "\n"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunResults:
        """Read and validate a results file; :class:`ResultsFileError` says what is wrong."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResultsFileError(f"{path}: cannot read results: {exc}") from exc
        return cls.from_data(data, source=str(path))

    @classmethod
    def from_data(cls, data: Any, *, source: str = "results") -> RunResults:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
            raise ResultsFileError(f"{source}: not an ipsec-interop results file")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultsFileError(
                f"{source}: results schema version {version}, this harness reads "
                f"version {SCHEMA_VERSION}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ResultsFileError(f"{source}: invalid results: {exc}") from exc

    # -- views --------------------------------------------------------------------------

    def sorted_results(self) -> list[CaseResult]:
        peer_order = {p.name: i for i, p in enumerate(self.run.peers)}
        return sorted(
            self.results,
            key=lambda r: (
                self.cases[r.case].suite,
                r.case,
                peer_order.get(r.peer, 99),
                r.role.value,
            ),
        )

    def peers_under_test(self) -> list[PeerInfo]:
        """Peers that have results (the matrix columns), in run order."""
        with_results = {r.peer for r in self.results}
        return [p for p in self.run.peers if p.name in with_results or p.under_test]

    def counts(self, results: Iterable[CaseResult] | None = None) -> dict[Verdict, int]:
        out = dict.fromkeys(Verdict, 0)
        for r in self.results if results is None else results:
            out[r.verdict] += 1
        return out


class ResultsFileError(ValueError):
    """A results file that cannot be used (unreadable, wrong schema or version, invalid)."""


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a results file, as shipped in results.schema.json."""
    schema = RunResults.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://ipsec-interop.invalid/schema/results-v{SCHEMA_VERSION}.json"
    schema["title"] = "ipsec-interop results"
    schema["required"] = sorted({*schema.get("required", []), "schema", "schema_version"})
    return schema


SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


def utcnow() -> datetime:
    return datetime.now(UTC)
