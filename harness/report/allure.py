"""Allure results, following allure-pytest's conventions.

Two ways in, the same labels out:

- *live*, inside a pytest run with allure-pytest (``--alluredir reports/allure-results``):
  :class:`harness.report.recorder.CaseRecording` calls the ``live_*`` functions, which go
  through ``allure.dynamic``/``allure.step``/``allure.attach`` so that allure-pytest's own
  result for the test carries our labels, steps and attachments;
- *offline*, for merged runs and runs made outside pytest: :func:`write_results` builds
  allure-python-commons model objects from a :class:`RunResults` and writes them with its
  file logger.

Labels: ``epic`` = suite, ``feature`` = RFC, ``story`` = RFC section, ``severity`` from the
level (MUST critical, SHOULD normal, MAY minor), ``tag``s for the peer, the role and the
level; a ``link`` per RFC section to rfc-editor.org; parameters peer, role and the case's own.
:func:`write_metadata` adds ``environment.properties`` and ``categories.json``.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

from harness.cases import Level, Role
from harness.report.model import CaseMeta, CaseResult, Evidence, RunResults, Step, Verdict
from harness.report.recorder import failure_message
from harness.report.rfc import parse_refs, primary_ref

ROLE_NAMES = {Role.INITIATOR: "initiator", Role.RESPONDER: "responder"}

SEVERITY = {
    Level.MUST: "critical",
    Level.MUST_NOT: "critical",
    Level.SHOULD: "normal",
    Level.SHOULD_NOT: "normal",
    Level.MAY: "minor",
}

STATUS = {
    Verdict.PASS: "passed",
    Verdict.FAIL: "failed",
    Verdict.WARNING: "passed",
    Verdict.RECORDED: "passed",
    Verdict.NOT_APPLICABLE: "skipped",
    Verdict.ERROR: "broken",
}

# Allure matches messageRegex against the whole message (Java's matches()), hence (?s) and .*;
# allure-pytest prefixes pytest.fail()'s message with "Failed: ".
CATEGORIES: list[dict[str, object]] = [
    {
        "name": "Known peer behaviour",
        "description": "Explained in suites/KNOWN_PEER_BEHAVIOUR.md",
        "matchedStatuses": ["failed", "broken", "passed", "skipped"],
        "messageRegex": r"(?s).*\[known peer behaviour: .*",
    },
    {
        "name": "MUST not met",
        "matchedStatuses": ["failed"],
        "messageRegex": r"(?s)(Failed: )?\[MUST( NOT)?\].*",
    },
    {
        "name": "SHOULD not met (--strict)",
        "matchedStatuses": ["failed"],
        "messageRegex": r"(?s)(Failed: )?\[(SHOULD|SHOULD NOT|MAY)\].*",
    },
    {
        "name": "SHOULD not met (warnings)",
        "matchedStatuses": ["passed"],
        "messageRegex": r"(?s)\[warning: .*",
    },
    {
        "name": "Recorded findings",
        "matchedStatuses": ["passed"],
        "messageRegex": r"(?s)\[recorded\].*",
    },
    {"name": "Not applicable to the peer", "matchedStatuses": ["skipped"]},
    {"name": "Harness or environment errors", "matchedStatuses": ["broken"]},
]


def labels(meta: CaseMeta, peer: str, role: Role) -> list[tuple[str, str]]:
    """The Allure labels of one case x peer x role."""
    ref = primary_ref(meta.rfc)
    return [
        ("epic", meta.suite),
        ("feature", ref.feature),
        ("story", str(ref)),
        ("severity", SEVERITY[meta.level]),
        ("tag", peer),
        ("tag", ROLE_NAMES[role]),
        ("tag", meta.level.value),
        ("parentSuite", meta.suite),
        ("suite", peer),
        ("subSuite", ROLE_NAMES[role]),
        ("as_id", meta.id),
        ("framework", "ipsec-interop"),
        ("language", "python"),
    ]


def links(meta: CaseMeta) -> list[tuple[str, str]]:
    """(name, url) of every RFC section the case cites."""
    return [(str(ref), ref.url) for ref in parse_refs(meta.rfc)]


def title(meta: CaseMeta, peer: str, role: Role) -> str:
    return f"{meta.id} {meta.title} [{peer}, {ROLE_NAMES[role]}]"


def description(meta: CaseMeta, result: CaseResult | None = None) -> str:
    lines = [f"**{meta.level.value}** — RFC {meta.rfc}: {meta.title}"]
    if result is not None:
        lines.append(
            f"**Verdict:** {result.verdict.label}"
            + (f" — {result.reason}" if result.reason else "")
        )
        if result.known_behaviour:
            lines.append(f"**Known peer behaviour:** {result.known_behaviour}")
        if result.rerun:
            lines.append(f"**Rerun:** `{result.rerun}`")
    return "\n\n".join(lines)


# -- live, through allure-pytest -----------------------------------------------------------


def live_active() -> bool:
    """Whether allure-pytest is listening in this process (``--alluredir`` was given)."""
    try:
        from allure_commons import plugin_manager
    except ImportError:  # pragma: no cover - allure-pytest is a dependency
        return False
    return any(hasattr(p, "add_label") for p in plugin_manager.get_plugins())


def _allure() -> Any:
    """The ``allure`` module (untyped: held as Any)."""
    return importlib.import_module("allure")


def live_start(meta: CaseMeta, peer: str, role: Role, parameters: Mapping[str, str]) -> None:
    allure = _allure()

    allure.dynamic.title(title(meta, peer, role))
    allure.dynamic.description(description(meta))
    for name, value in labels(meta, peer, role):
        allure.dynamic.label(name, value)
    for name, url in links(meta):
        allure.dynamic.link(url, name=name)
    allure.dynamic.parameter("peer", peer)
    allure.dynamic.parameter("role", ROLE_NAMES[role])
    for name, value in parameters.items():
        allure.dynamic.parameter(name, value)


def live_parameter(name: str, value: str) -> None:
    _allure().dynamic.parameter(name, value)


def live_step(name: str) -> AbstractContextManager[object]:
    return cast(AbstractContextManager[object], _allure().step(name))


def live_attach(path: Path, ev: Evidence) -> None:
    _allure().attach.file(
        str(path), name=ev.name, attachment_type=ev.media_type, extension=_extension(path)
    )


def live_finish(result: CaseResult) -> None:
    allure = _allure()

    if result.verdict in (Verdict.WARNING, Verdict.RECORDED):
        allure.dynamic.tag(result.verdict.value)
    if result.rerun:
        allure.attach(
            result.rerun, name="rerun command", attachment_type="text/plain", extension="txt"
        )
    if result.verdict is not Verdict.PASS and result.details:
        allure.attach(result.details, name="details", attachment_type="text/plain", extension="txt")


# -- offline, from a results document ------------------------------------------------------


def _ms(dt_seconds: float) -> int:
    return round(dt_seconds * 1000)


def _steps(steps: list[Step]) -> list[object]:
    from allure_commons.model2 import StatusDetails, TestStepResult

    out: list[object] = []
    for s in steps:
        start = _ms(s.start.timestamp())
        out.append(
            TestStepResult(
                name=s.name,
                status=s.status.value,
                statusDetails=StatusDetails(message=s.message) if s.message else None,
                stage="finished",
                start=start,
                stop=start + _ms(s.duration),
                steps=_steps(s.steps),
            )
        )
    return out


def _extension(path: Path) -> str:
    return path.suffix.lstrip(".") or "bin"


def write_results(run: RunResults, run_dir: Path, out_dir: Path, *, clean: bool = True) -> int:
    """Write Allure result files for every result of ``run``; returns how many.

    ``run_dir`` is where the run's evidence paths point from (the directory of its
    results.json). ``out_dir`` is the allure-results directory.
    """
    from allure_commons.model2 import (
        Attachment,
        Label,
        Link,
        Parameter,
        StatusDetails,
        TestResult,
    )

    md5: Any = importlib.import_module("allure_commons.utils").md5
    logger: Any = importlib.import_module("allure_commons.logger").AllureFileLogger(
        str(out_dir), clean=clean
    )
    count = 0
    for r in run.results:
        meta = run.cases[r.case]
        test_uuid = str(uuid.uuid4())
        attachments: list[Attachment] = []
        for ev in r.evidence:
            if ev.withheld or ev.path is None:
                continue
            src = run_dir / ev.path
            if not src.is_file():
                continue
            source = f"{uuid.uuid4()}-attachment.{_extension(src)}"
            logger.report_attached_file(str(src), source)
            attachments.append(Attachment(name=ev.name, source=source, type=ev.media_type))
        for name, text in (("rerun command", r.rerun), ("details", r.details)):
            if text and (name == "rerun command" or r.verdict is not Verdict.PASS):
                source = f"{uuid.uuid4()}-attachment.txt"
                logger.report_attached_data(text, source)
                attachments.append(Attachment(name=name, source=source, type="text/plain"))
        status_details = None
        if r.verdict is not Verdict.PASS or r.known_behaviour:
            status_details = StatusDetails(
                message=failure_message(r.level, r.verdict, r.reason, r.known_behaviour),
                trace=r.details,
                known=True if r.known_behaviour else None,
            )
        label_list = [Label(name=n, value=v) for n, v in labels(meta, r.peer, r.role)]
        label_list.append(Label(name="host", value=run.run.host.hostname))
        if r.verdict in (Verdict.WARNING, Verdict.RECORDED):
            label_list.append(Label(name="tag", value=r.verdict.value))
        params = [
            Parameter(name="peer", value=r.peer),
            Parameter(name="role", value=ROLE_NAMES[r.role]),
            *(Parameter(name=k, value=v) for k, v in r.parameters.items()),
        ]
        start = _ms(r.start.timestamp())
        result = TestResult(
            uuid=test_uuid,
            historyId=md5(r.case, r.peer, r.role.value),
            testCaseId=md5(r.case),
            fullName=f"{meta.suite}.{r.case}[{r.peer}-{r.role.value}]",
            name=title(meta, r.peer, r.role),
            status=STATUS[r.verdict],
            statusDetails=status_details,
            stage="finished",
            description=description(meta, r),
            start=start,
            stop=start + _ms(r.duration),
            labels=label_list,
            links=[Link(type="link", url=url, name=name) for name, url in links(meta)],
            parameters=params,
            steps=_steps(r.steps),
            attachments=attachments,
            titlePath=[meta.suite, r.peer, ROLE_NAMES[r.role]],
        )
        logger.report_result(result)
        count += 1
    write_metadata(run, out_dir)
    return count


def environment(run: RunResults) -> dict[str, str]:
    """What environment.properties holds: the run metadata (never a secret)."""
    info = run.run
    env = {
        "ipsec-interop.version": info.harness_version,
        "run.id": info.id,
        "run.started": info.started.isoformat(),
        "topology": info.topology,
        "host": f"{info.host.hostname} ({info.host.platform})",
        "strict": str(info.strict).lower(),
        "export_keys": str(info.export_keys).lower(),
    }
    if info.finished is not None:
        env["run.finished"] = info.finished.isoformat()
    if info.job:
        env["job"] = info.job
    if info.command:
        env["command"] = info.command
    for p in info.peers:
        version = f" {p.version}" if p.version else ""
        role = "under test" if p.under_test else "counterpart"
        env[f"peer.{p.name}"] = f"{p.implementation}{version} ({role})"
    for s in info.sources:
        env[f"source.{s.id}"] = f"{s.job or s.host.hostname}, {s.topology}"
    for k, v in info.labels.items():
        env[f"label.{k}"] = v
    return env


def _prop_escape(text: str, *, key: bool) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif key and ch in "=: ":
            out.append("\\" + ch)
        elif ord(ch) > 0x7E or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def write_metadata(run: RunResults, out_dir: Path) -> None:
    """environment.properties and categories.json for an allure-results directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    props = "".join(
        f"{_prop_escape(k, key=True)}={_prop_escape(v, key=False)}\n"
        for k, v in environment(run).items()
    )
    (out_dir / "environment.properties").write_text(props, encoding="ascii")
    (out_dir / "categories.json").write_text(json.dumps(CATEGORIES, indent=2), encoding="utf-8")


def read_properties(text: str) -> dict[str, str]:
    """Parse what :func:`write_metadata` wrote (for tests and ``report`` tools)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key_chars: list[str] = []
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "\\" and i + 1 < len(line):
                key_chars.append(line[i : i + 2])
                i += 2
                continue
            if ch == "=":
                break
            key_chars.append(ch)
            i += 1
        out[_unescape("".join(key_chars))] = _unescape(line[i + 1 :])
    return out


def _unescape(text: str) -> str:
    return text.encode("ascii").decode("unicode_escape")


def iter_result_files(allure_dir: Path) -> Iterator[Path]:
    yield from sorted(allure_dir.glob("*-result.json"))
