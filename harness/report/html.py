"""The HTML conformance matrix (``reports/index.html``): one self-contained file.

Rows are cases grouped by suite, then by RFC section; columns are peers x roles; each cell
is a colour-coded verdict linking to the result's detail panel, which links to the evidence
files (relative paths, so the report directory can be moved or published as a CI artifact).
A summary per peer (MUST / SHOULD / MAY passed x of y), filters by suite, level, verdict and
text, and the run metadata. No external CSS, script or font: it renders offline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2

from harness.cases import Role
from harness.report.allure import ROLE_NAMES
from harness.report.model import (
    CaseMeta,
    CaseResult,
    EvidenceKind,
    PeerInfo,
    RunResults,
    Verdict,
    level_group,
)
from harness.report.rfc import RfcRef, parse_refs, primary_ref, section_sort_key

TEMPLATE = "matrix.html.j2"
LEVEL_GROUPS = ("MUST", "SHOULD", "MAY")
EVIDENCE_LABELS = {
    EvidenceKind.PCAP: "pcap",
    EvidenceKind.KEYS: "Wireshark keys",
    EvidenceKind.LOG: "log",
    EvidenceKind.SA_DUMP: "SA dump",
    EvidenceKind.ORACLE: "oracle",
    EvidenceKind.CONFIG: "config",
    EvidenceKind.RERUN: "rerun",
    EvidenceKind.OTHER: "file",
}


@dataclass
class Column:
    peer: PeerInfo
    role: Role
    first_of_peer: bool = False

    @property
    def role_name(self) -> str:
        return ROLE_NAMES[self.role]


@dataclass
class Cell:
    column: Column
    result: CaseResult | None
    allowed: bool

    @property
    def css(self) -> str:
        if self.result is not None:
            return "v-" + self.result.verdict.value
        return "v-none" if self.allowed else "v-role"


@dataclass
class Row:
    meta: CaseMeta
    refs: list[RfcRef]
    section: RfcRef
    new_section: bool
    cells: list[Cell]

    @property
    def level_group(self) -> str:
        return level_group(self.meta.level)

    @property
    def verdicts(self) -> str:
        return " ".join(sorted({c.result.verdict.value for c in self.cells if c.result}))


@dataclass
class SuiteGroup:
    name: str
    rows: list[Row] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class PeerSummary:
    peer: PeerInfo
    levels: list[tuple[str, int, int]]
    """(level group, passed, evaluated): evaluated = pass + fail + warning + error."""
    counts: dict[Verdict, int]
    total: int

    @property
    def ok(self) -> bool:
        return self.counts[Verdict.FAIL] == 0 and self.counts[Verdict.ERROR] == 0


def _columns(run: RunResults) -> list[Column]:
    cols: list[Column] = []
    for peer in run.peers_under_test():
        roles = {r.role for r in run.results if r.peer == peer.name}
        first = True
        for role in (Role.INITIATOR, Role.RESPONDER):
            if role in roles or not roles:
                cols.append(Column(peer, role, first))
                first = False
    return cols


def summaries(run: RunResults) -> list[PeerSummary]:
    out = []
    for peer in run.peers_under_test():
        results = [r for r in run.results if r.peer == peer.name]
        levels = []
        for group in LEVEL_GROUPS:
            evaluated = [
                r
                for r in results
                if level_group(r.level) == group
                and r.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.WARNING, Verdict.ERROR)
            ]
            passed = sum(1 for r in evaluated if r.verdict is Verdict.PASS)
            levels.append((group, passed, len(evaluated)))
        out.append(PeerSummary(peer, levels, run.counts(results), len(results)))
    return out


def build_rows(run: RunResults) -> tuple[list[Column], list[SuiteGroup]]:
    columns = _columns(run)
    by_key = {r.key: r for r in run.results}
    suites: dict[str, SuiteGroup] = {}
    metas = sorted(
        run.cases.values(),
        key=lambda m: (m.suite, section_sort_key(primary_ref(m.rfc)), m.id),
    )
    for meta in metas:
        group = suites.setdefault(meta.suite, SuiteGroup(meta.suite))
        cells = []
        for col in columns:
            result = by_key.get((meta.id, col.peer.name, col.role.value))
            cells.append(Cell(col, result, col.role in meta.roles))
            if result is not None:
                group.counts[result.verdict.value] += 1
        section = primary_ref(meta.rfc)
        new_section = not group.rows or group.rows[-1].section != section
        group.rows.append(Row(meta, parse_refs(meta.rfc), section, new_section, cells))
    return columns, list(suites.values())


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec:02d} s"


def _fmt_size(size: int | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return ""


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = _fmt_time
    env.filters["duration"] = _fmt_duration
    env.filters["size"] = _fmt_size
    env.filters["rfc_refs"] = parse_refs
    env.filters["level_group"] = level_group
    return env


def render(run: RunResults) -> str:
    columns, suites = build_rows(run)
    peers: list[tuple[PeerInfo, int]] = []
    for col in columns:
        if not peers or peers[-1][0] is not col.peer:
            peers.append((col.peer, 0))
        peers[-1] = (col.peer, peers[-1][1] + 1)
    counts = run.counts()
    template = environment().get_template(TEMPLATE)
    return template.render(
        run=run,
        info=run.run,
        columns=columns,
        peer_headers=peers,
        suites=suites,
        summaries=summaries(run),
        counts=counts,
        total=len(run.results),
        case_count=len(run.cases),
        verdicts=list(Verdict),
        level_groups=LEVEL_GROUPS,
        role_names=ROLE_NAMES,
        evidence_labels=EVIDENCE_LABELS,
        results=run.sorted_results(),
        cases=run.cases,
        Verdict=Verdict,
    )


def write(run: RunResults, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(run), encoding="utf-8")
    tmp.replace(path)
