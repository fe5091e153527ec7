"""Recording results and evidence into a run directory (the API the suites call).

One run = one directory (``reports/`` by default). The controlling process calls
:meth:`Recorder.begin`; each process that runs cases (the same one, or pytest-xdist workers
through :meth:`Recorder.join`) opens one :class:`CaseRecording` per case x peer x role::

    with recorder.case(info, peer="strongswan", role="R", parameters={"proposal": p}) as rec:
        with rec.step("IKE_SA_INIT"):
            ...
        rec.attach_file(pcap, EvidenceKind.PCAP)
        assert ok, "SAr1 carries two proposals"   # graded by the case's level
        rec.recorded("no fallback: blocked for 165 s")

Each finished recording is written at once as a fragment file (so parallel workers never
share a file); :meth:`Recorder.finish` gathers the fragments into ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import shutil
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from harness import __version__
from harness.cases import CaseInfo, Level, Role
from harness.report.model import (
    RESULTS_FILE,
    CaseMeta,
    CaseResult,
    Evidence,
    EvidenceKind,
    HostInfo,
    PeerInfo,
    RunInfo,
    RunResults,
    Step,
    StepStatus,
    Verdict,
    grade_unmet,
    utcnow,
)
from harness.report.redact import Redactor

FRAGMENTS_DIR = ".results.d"
EVIDENCE_DIR = "evidence"
_SESSION = "run.json"

KEYS_WITHHELD = "SA keys are written only with --export-keys"
SECRET_WITHHELD = "withheld: the file contains a secret (PSK or private key)"

_TEXT_KINDS = {
    EvidenceKind.LOG,
    EvidenceKind.SA_DUMP,
    EvidenceKind.ORACLE,
    EvidenceKind.CONFIG,
    EvidenceKind.RERUN,
    EvidenceKind.KEYS,
}
_MEDIA_TYPES = {
    ".pcap": "application/vnd.tcpdump.pcap",
    ".pcapng": "application/vnd.tcpdump.pcap",
    ".log": "text/plain",
    ".txt": "text/plain",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".json": "application/json",
    ".conf": "text/plain",
    ".secrets": "text/plain",
}


def new_run_info(
    *,
    topology: str,
    peers: Iterable[PeerInfo],
    strict: bool = False,
    export_keys: bool | None = None,
    command: str | None = None,
    job: str | None = None,
    labels: Mapping[str, str] | None = None,
    started: datetime | None = None,
) -> RunInfo:
    """Run metadata for a run starting now, on this host.

    ``export_keys=None`` picks the default: on when every peer is our reference node (its
    keys are test keys), off otherwise.
    """
    peer_list = list(peers)
    if export_keys is None:
        export_keys = all(p.implementation == "reference" for p in peer_list)
    start = started or utcnow()
    return RunInfo(
        id=RunInfo.new_id(start),
        harness_version=__version__,
        started=start,
        topology=topology,
        host=HostInfo.current(),
        peers=peer_list,
        command=command,
        strict=strict,
        export_keys=export_keys,
        job=job or os.environ.get("GITHUB_JOB") or None,
        labels=dict(labels or {}),
    )


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned[:80] or "evidence"


class HarnessError(Exception):
    """Raised (under pytest) for a case whose verdict is ``error``: Allure shows it broken."""


class Recorder:
    """Writes the results of one run into ``out_dir``; see the module docstring."""

    def __init__(
        self,
        out_dir: Path | str,
        run: RunInfo,
        *,
        secrets: Iterable[str | bytes] = (),
        pytest_outcomes: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.run = run
        self.redactor = Redactor(export_keys=run.export_keys, secrets=secrets)
        self.pytest_outcomes = pytest_outcomes
        """Turn verdicts into pytest outcomes (fail, skip, error) so that pytest's own
        reporting and allure-pytest agree with the verdict; set by the pytest plugin."""
        self.worker = os.environ.get("PYTEST_XDIST_WORKER") or run.job

    # -- run lifecycle -------------------------------------------------------------------

    @classmethod
    def begin(
        cls,
        out_dir: Path | str,
        run: RunInfo,
        *,
        secrets: Iterable[str | bytes] = (),
        pytest_outcomes: bool = False,
        clean: bool = True,
    ) -> Recorder:
        """Start a run: clear old fragments and evidence, write the session file."""
        out = Path(out_dir)
        if clean:
            for sub in (FRAGMENTS_DIR, EVIDENCE_DIR):
                shutil.rmtree(out / sub, ignore_errors=True)
        (out / FRAGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        (out / FRAGMENTS_DIR / _SESSION).write_text(run.model_dump_json(), encoding="utf-8")
        return cls(out, run, secrets=secrets, pytest_outcomes=pytest_outcomes)

    @classmethod
    def join(
        cls,
        out_dir: Path | str,
        *,
        secrets: Iterable[str | bytes] = (),
        pytest_outcomes: bool = False,
    ) -> Recorder:
        """Attach to a run begun by another process (a pytest-xdist worker)."""
        out = Path(out_dir)
        session = out / FRAGMENTS_DIR / _SESSION
        run = RunInfo.model_validate_json(session.read_text(encoding="utf-8"))
        return cls(out, run, secrets=secrets, pytest_outcomes=pytest_outcomes)

    def add_secret(self, secret: str | bytes) -> None:
        """Register a PSK or password: it is replaced in every text this recorder writes."""
        self.redactor.add_secret(secret)

    def declare_cases(self, cases: Iterable[CaseInfo | CaseMeta]) -> None:
        """Make selected cases known to the report even if no result arrives for them."""
        metas = [_meta(c).model_dump(mode="json") for c in cases]
        self._write_fragment({"cases": metas})

    def case(
        self,
        info: CaseInfo | CaseMeta,
        peer: str,
        role: Role | str,
        *,
        parameters: Mapping[str, object] | None = None,
        rerun: str | None = None,
    ) -> CaseRecording:
        """Open the recording of one case for one peer in one role (a context manager)."""
        return CaseRecording(self, _meta(info), peer, Role(role), parameters or {}, rerun)

    def record(self, meta: CaseInfo | CaseMeta, result: CaseResult) -> None:
        """Store a finished result built elsewhere (a runner outside pytest, an importer)."""
        self._write_fragment(
            {"case": _meta(meta).model_dump(mode="json"), "result": result.model_dump(mode="json")}
        )

    def finish(self, finished: datetime | None = None, *, write: bool = True) -> RunResults:
        """Gather every fragment into the run's results; write ``results.json``."""
        results = collect(self.out_dir, self.run.model_copy(update={"finished": finished}))
        if results.run.finished is None:
            results.run.finished = utcnow()
        if write:
            results.write(self.out_dir / RESULTS_FILE)
            shutil.rmtree(self.out_dir / FRAGMENTS_DIR, ignore_errors=True)
        return results

    # -- internals -------------------------------------------------------------------------

    def _write_fragment(self, data: dict[str, Any]) -> None:
        frag_dir = self.out_dir / FRAGMENTS_DIR
        frag_dir.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.json"
        tmp = frag_dir / (name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(frag_dir / name)

    def _evidence_dir(self, case_id: str, peer: str, role: Role) -> Path:
        return Path(EVIDENCE_DIR) / safe_name(case_id) / f"{safe_name(peer)}-{role.value}"


def collect(out_dir: Path, run: RunInfo) -> RunResults:
    """Build the run's results from the fragment files under ``out_dir``."""
    frag_dir = out_dir / FRAGMENTS_DIR
    cases: dict[str, CaseMeta] = {}
    by_key: dict[tuple[str, str, str], CaseResult] = {}
    notes = list(run.notes)
    for path in sorted(frag_dir.glob("*.json")) if frag_dir.is_dir() else []:
        if path.name == _SESSION:
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for meta_data in data.get("cases", []):
            meta = CaseMeta.model_validate(meta_data)
            cases.setdefault(meta.id, meta)
        if "result" in data:
            meta = CaseMeta.model_validate(data["case"])
            cases[meta.id] = meta
            result = CaseResult.model_validate(data["result"])
            old = by_key.get(result.key)
            if old is not None:
                notes.append(
                    f"{'/'.join(result.key)} was recorded twice ({old.verdict.value}, "
                    f"{result.verdict.value}); the later one is kept"
                )
                if old.start > result.start:
                    continue
            by_key[result.key] = result
    peers = list(run.peers)
    known = {p.name for p in peers}
    for r in by_key.values():
        if r.peer not in known:
            peers.append(PeerInfo(name=r.peer, implementation=r.peer))
            known.add(r.peer)
    info = run.model_copy(update={"peers": peers, "notes": notes})
    out = RunResults(run=info, cases=dict(sorted(cases.items())), results=list(by_key.values()))
    out.results = out.sorted_results()
    return out


def _meta(info: CaseInfo | CaseMeta) -> CaseMeta:
    return info if isinstance(info, CaseMeta) else CaseMeta.from_info(info)


def failure_message(level: Level, verdict: Verdict, reason: str, known: str | None) -> str:
    """The message of a non-passing result in pytest and Allure: ``[MUST] reason``.

    The bracketed prefix is what Allure's categories (:mod:`.allure`) match on.
    """
    prefix = {
        Verdict.FAIL: f"[{level.value}]",
        Verdict.WARNING: f"[warning: {level.value}]",
        Verdict.ERROR: "[harness error]",
        Verdict.RECORDED: "[recorded]",
        Verdict.NOT_APPLICABLE: "[not applicable]",
        Verdict.PASS: "",
    }[verdict]
    text = f"{prefix} {reason}".strip()
    if known:
        text += f" [known peer behaviour: {known}]"
    return text


class CaseRecording:
    """The recording of one case x peer x role; use as a context manager."""

    def __init__(
        self,
        recorder: Recorder,
        meta: CaseMeta,
        peer: str,
        role: Role,
        parameters: Mapping[str, object],
        rerun: str | None,
    ) -> None:
        self.recorder = recorder
        self.meta = meta
        self.peer = peer
        self.role = role
        self.parameters = {str(k): str(v) for k, v in parameters.items()}
        self.rerun_command = rerun
        self.verdict: Verdict | None = None
        self.reason = ""
        self.details: list[str] = []
        self.known: str | None = None
        self.evidence: list[Evidence] = []
        self.steps: list[Step] = []
        self._step_stack: list[list[Step]] = [self.steps]
        self._start = utcnow()
        self._t0 = time.monotonic()
        self._names: set[str] = set()
        self.result: CaseResult | None = None
        self._live = False

    # -- verdicts ------------------------------------------------------------------------

    def _set(self, verdict: Verdict, reason: str, details: str | None = None) -> None:
        if details:
            self.details.append(details)
        line = one_line(self.recorder.redactor.text(reason))
        if self.verdict is None or verdict.rank > self.verdict.rank:
            self.verdict, self.reason = verdict, line
        elif verdict == self.verdict and line and line not in self.reason:
            self.reason = one_line(f"{self.reason}; {line}" if self.reason else line)

    def passed(self, reason: str = "") -> None:
        """The requirement is met (also the verdict when the body ends without one)."""
        self._set(Verdict.PASS, reason)

    def not_met(
        self, reason: str, details: str | None = None, *, level: Level | str | None = None
    ) -> None:
        """The requirement is not met: fail, warning or recorded by level and ``--strict``.

        ``level`` grades one part of a case by its own level (a row of the catalogue that
        mixes a MUST and a SHOULD, "MUST / SHOULD"); by default the case's level.
        """
        graded = Level(level) if level is not None else self.meta.level
        self._set(grade_unmet(graded, strict=self.recorder.run.strict), reason, details)

    def warning(self, reason: str, details: str | None = None) -> None:
        """A SHOULD that is not met: a warning, or a failure under ``--strict``."""
        self.not_met(reason, details, level=Level.SHOULD)

    def failed(self, reason: str, details: str | None = None) -> None:
        """A failure whatever the level (use :meth:`not_met` to grade by level)."""
        self._set(Verdict.FAIL, reason, details)

    def not_applicable(self, reason: str) -> None:
        self._set(Verdict.NOT_APPLICABLE, reason)

    def recorded(self, finding: str, details: str | None = None) -> None:
        """An observation that is neither pass nor fail ("no fallback: blocked for 165 s")."""
        self._set(Verdict.RECORDED, finding, details)

    def error(self, reason: str, details: str | None = None) -> None:
        self._set(Verdict.ERROR, reason, details)

    def known_behaviour(self, reference: str) -> None:
        """Mark the outcome as explained in suites/KNOWN_PEER_BEHAVIOUR.md (an anchor)."""
        self.known = reference

    def parameter(self, name: str, value: object) -> None:
        self.parameters[name] = str(value)
        if self._live:
            from harness.report import allure as allure_out

            allure_out.live_parameter(name, self.recorder.redactor.text(str(value)))

    def rerun(self, command: str) -> None:
        self.rerun_command = command

    # -- steps ---------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A named step (an exchange); nested steps nest. Shown in Allure and the matrix."""
        from harness.report import allure as allure_out

        start, t0 = utcnow(), time.monotonic()
        step = Step(name=name, start=start, duration=0.0)
        self._step_stack[-1].append(step)
        self._step_stack.append(step.steps)
        try:
            with allure_out.live_step(name) if self._live else _nothing():
                yield
        except AssertionError as exc:
            step.status, step.message = StepStatus.FAILED, one_line(str(exc)) or "assertion"
            raise
        except BaseException as exc:
            if _is_skip(exc):
                step.status = StepStatus.SKIPPED
            else:
                step.status, step.message = StepStatus.BROKEN, one_line(repr(exc))
            raise
        finally:
            step.duration = round(time.monotonic() - t0, 6)
            self._step_stack.pop()

    # -- evidence --------------------------------------------------------------------------

    def attach_file(
        self,
        path: Path | str,
        kind: EvidenceKind | str,
        name: str | None = None,
        *,
        media_type: str | None = None,
    ) -> Evidence:
        """Copy a file into the run's evidence (redacted if text)."""
        src = Path(path)
        return self._store(
            name or src.name, src.read_bytes(), EvidenceKind(kind), src.name, media_type
        )

    def attach_text(
        self,
        name: str,
        text: str,
        kind: EvidenceKind | str = EvidenceKind.OTHER,
        *,
        filename: str | None = None,
        media_type: str = "text/plain",
    ) -> Evidence:
        filename = filename or (safe_name(name) + ".txt")
        return self._store(name, text.encode("utf-8"), EvidenceKind(kind), filename, media_type)

    def attach_bytes(
        self,
        name: str,
        data: bytes,
        kind: EvidenceKind | str,
        *,
        filename: str,
        media_type: str | None = None,
    ) -> Evidence:
        return self._store(name, data, EvidenceKind(kind), filename, media_type)

    def _store(
        self, name: str, data: bytes, kind: EvidenceKind, filename: str, media_type: str | None
    ) -> Evidence:
        redactor = self.recorder.redactor
        media = media_type or _guess_media_type(filename)
        if kind is EvidenceKind.KEYS and not redactor.export_keys:
            ev = Evidence(kind=kind, name=name, media_type=media, withheld=True, note=KEYS_WITHHELD)
            self.evidence.append(ev)
            return ev
        redacted = False
        if kind in _TEXT_KINDS or _is_text_media(media):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None:
                clean = redactor.text(text)
                redacted = clean != text
                data = clean.encode("utf-8")
            elif redactor.binary_has_secret(data):
                return self._withhold(kind, name, media)
        elif redactor.binary_has_secret(data):
            return self._withhold(kind, name, media)
        rel_dir = self.recorder._evidence_dir(self.meta.id, self.peer, self.role)
        fname = self._unique(safe_name(filename))
        rel = rel_dir / fname
        dest = self.recorder.out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        ev = Evidence(
            kind=kind,
            name=name,
            path=rel.as_posix(),
            media_type=media,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            redacted=redacted,
            note="secrets replaced by «redacted»" if redacted else None,
        )
        self.evidence.append(ev)
        if self._live:
            from harness.report import allure as allure_out

            allure_out.live_attach(dest, ev)
        return ev

    def _withhold(self, kind: EvidenceKind, name: str, media: str) -> Evidence:
        ev = Evidence(kind=kind, name=name, media_type=media, withheld=True, note=SECRET_WITHHELD)
        self.evidence.append(ev)
        return ev

    def _unique(self, fname: str) -> str:
        stem, dot, ext = fname.rpartition(".")
        if not dot:
            stem, ext = fname, ""
        candidate, n = fname, 2
        while candidate in self._names:
            candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
            n += 1
        self._names.add(candidate)
        return candidate

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> CaseRecording:
        from harness.report import allure as allure_out

        self._live = allure_out.live_active()
        if self._live:
            redact = self.recorder.redactor.text
            allure_out.live_start(
                self.meta, self.peer, self.role, {k: redact(v) for k, v in self.parameters.items()}
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None:
            trace = "".join(traceback.format_exception(exc_type, exc, tb))
            if _is_skip(exc):
                self._set(Verdict.NOT_APPLICABLE, _outcome_msg(exc) or "skipped")
            elif isinstance(exc, AssertionError) or _is_pytest_fail(exc):
                reason = _outcome_msg(exc) or str(exc) or "assertion failed"
                self.not_met(reason, details=self.recorder.redactor.text(trace))
            elif isinstance(exc, Exception):
                self.error(
                    f"{type(exc).__name__}: {exc}", details=self.recorder.redactor.text(trace)
                )
            else:  # KeyboardInterrupt, SystemExit: the run is ending, record nothing
                return False
        verdict = self.verdict or Verdict.PASS
        self.result = CaseResult(
            case=self.meta.id,
            peer=self.peer,
            role=self.role,
            verdict=verdict,
            level=self.meta.level,
            rfc=self.meta.rfc,
            reason=self.reason,
            details="\n\n".join(self.details) or None,
            known_behaviour=self.known,
            start=self._start,
            duration=round(time.monotonic() - self._t0, 6),
            parameters={k: self.recorder.redactor.text(v) for k, v in self.parameters.items()},
            steps=self.steps,
            evidence=self.evidence,
            rerun=self.rerun_command,
            worker=self.recorder.worker,
        )
        self.recorder.record(self.meta, self.result)
        if self._live:
            from harness.report import allure as allure_out

            allure_out.live_finish(self.result)
        if not self.recorder.pytest_outcomes:
            return exc is None or isinstance(exc, Exception) or _is_outcome(exc)
        return self._raise_pytest_outcome(verdict, exc)

    def _raise_pytest_outcome(self, verdict: Verdict, exc: BaseException | None) -> bool:
        """Make pytest's outcome match the verdict; returns whether ``exc`` is swallowed."""
        assert self.result is not None
        message = failure_message(self.meta.level, verdict, self.reason, self.known)
        if verdict in (Verdict.PASS, Verdict.RECORDED, Verdict.WARNING):
            return True  # a graded SHOULD/MAY assertion does not fail the test
        if verdict is Verdict.NOT_APPLICABLE:
            if exc is not None and _is_skip(exc):
                return False
            pytest.skip(self.reason or "not applicable")
        if verdict is Verdict.FAIL:
            # The bracketed message is what Allure's categories match; the traceback of the
            # assertion (if any) follows it, and is in the result's details as well.
            details = f"\n\n{self.result.details}" if self.result.details else ""
            pytest.fail(message + details, pytrace=False)
        if exc is not None:
            return False
        raise HarnessError(message)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _outcome_msg(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None)
    return str(msg) if msg else ""


def _is_outcome(exc: BaseException) -> bool:
    from _pytest.outcomes import OutcomeException

    return isinstance(exc, OutcomeException)


def _is_skip(exc: BaseException) -> bool:
    return isinstance(exc, pytest.skip.Exception)


def _is_pytest_fail(exc: BaseException) -> bool:
    return isinstance(exc, pytest.fail.Exception)


def _is_text_media(media: str) -> bool:
    return media.startswith("text/") or media in (
        "application/json",
        "application/yaml",
        "application/xml",
    )


def _guess_media_type(filename: str) -> str:
    ext = Path(filename).suffix.lower()
    if ext in _MEDIA_TYPES:
        return _MEDIA_TYPES[ext]
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"
