"""Allure results, checked against allure-python-commons' model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from allure_commons import model2 as am

from harness.report import RunResults
from harness.report.allure import CATEGORIES, read_properties


def _load(allure_dir: Path) -> list[am.TestResult]:
    """Rebuild every result file as the model's objects (unknown fields raise TypeError)."""

    def step(d: dict[str, Any]) -> am.TestStepResult:
        d = dict(d)
        d["steps"] = [step(s) for s in d.get("steps", [])]
        if "statusDetails" in d:
            d["statusDetails"] = am.StatusDetails(**d["statusDetails"])
        return am.TestStepResult(**d)

    out = []
    for path in sorted(allure_dir.glob("*-result.json")):
        d = json.loads(path.read_text())
        d["labels"] = [am.Label(**x) for x in d.get("labels", [])]
        d["links"] = [am.Link(**x) for x in d.get("links", [])]
        d["parameters"] = [am.Parameter(**x) for x in d.get("parameters", [])]
        d["attachments"] = [am.Attachment(**x) for x in d.get("attachments", [])]
        d["steps"] = [step(s) for s in d.get("steps", [])]
        if "statusDetails" in d:
            d["statusDetails"] = am.StatusDetails(**d["statusDetails"])
        out.append(am.TestResult(**d))
    return out


def _category(tr: am.TestResult) -> str | None:
    """The first of our categories matching the result, as Allure decides (full match)."""
    message = tr.statusDetails.message if tr.statusDetails else ""
    for cat in CATEGORIES:
        statuses = cat.get("matchedStatuses")
        regex = cat.get("messageRegex")
        if isinstance(statuses, list) and tr.status not in statuses:
            continue
        if isinstance(regex, str) and not re.fullmatch(regex, message or ""):
            continue
        return str(cat["name"])
    return None


def _labels(tr: am.TestResult, name: str) -> list[str]:
    return [lb.value for lb in tr.labels if lb.name == name]


def test_offline_results_follow_allure_pytest_conventions(run_dir: Path, run: RunResults) -> None:
    allure_dir = run_dir / "allure-results"
    results = _load(allure_dir)
    assert len(results) == len(run.results)
    by_name = {
        (_labels(t, "as_id")[0], _labels(t, "suite")[0], _labels(t, "subSuite")[0]): t
        for t in results
    }
    t = by_name[("ESP-005", "strongswan", "responder")]
    assert t.status == "failed" and t.stage == "finished"
    assert t.statusDetails.message.startswith("[MUST] seq 500")
    assert _labels(t, "epic") == ["esp"]
    assert _labels(t, "feature") == ["RFC 4303"]
    assert _labels(t, "story") == ["RFC 4303 §3.4.3"]
    assert _labels(t, "severity") == ["critical"]
    assert {"strongswan", "responder", "MUST"} <= set(_labels(t, "tag"))
    assert [(lk.name, lk.url) for lk in t.links] == [
        ("RFC 4303 §3.4.3", "https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3")
    ]
    assert {(p.name, p.value) for p in t.parameters} >= {
        ("peer", "strongswan"),
        ("role", "responder"),
        ("proposal", "aes128-sha256-modp2048"),
    }
    assert [s.name for s in t.steps] == ["IKE_SA_INIT", "IKE_AUTH"]
    names = {a.name for a in t.attachments}
    assert {"capture", "charon log", "oracle findings", "rerun command"} <= names
    assert "Wireshark ESP SA table" not in names  # keys withheld
    for a in t.attachments:
        assert (allure_dir / a.source).is_file()
    pcap = next(a for a in t.attachments if a.name == "capture")
    assert pcap.type == "application/vnd.tcpdump.pcap" and pcap.source.endswith(".pcap")

    status = {
        (_labels(x, "as_id")[0], _labels(x, "suite")[0], _labels(x, "subSuite")[0]): x.status
        for x in results
    }
    cats = {k: _category(x) for k, x in by_name.items()}
    assert cats[("ESP-005", "strongswan", "responder")] == "MUST not met"
    assert cats[("FB-03", "strongswan", "initiator")] == "Known peer behaviour"
    assert cats[("IKEV2-NEG-009", "strongswan", "initiator")] == "SHOULD not met (warnings)"
    assert cats[("NATT-009", "strongswan", "initiator")] == "Recorded findings"
    assert cats[("AH-001", "strongswan", "initiator")] == "Not applicable to the peer"
    assert cats[("ESP-011", "reference", "initiator")] == "Harness or environment errors"
    assert cats[("ESP-001", "strongswan", "initiator")] is None
    assert status[("AH-001", "strongswan", "initiator")] == "skipped"
    assert status[("FB-03", "strongswan", "initiator")] == "passed"
    assert status[("ESP-011", "reference", "initiator")] == "broken"
    assert status[("IKEV2-NEG-009", "strongswan", "initiator")] == "passed"
    assert _labels(by_name[("IKEV2-NEG-009", "strongswan", "initiator")], "severity") == ["normal"]
    assert _labels(by_name[("NATT-009", "strongswan", "initiator")], "severity") == ["minor"]
    # history: one id per case x peer x role, stable across runs
    assert len({x.historyId for x in results}) == len(results)


def test_environment_and_categories(run_dir: Path, run: RunResults) -> None:
    allure_dir = run_dir / "allure-results"
    env = read_properties((allure_dir / "environment.properties").read_text("ascii"))
    assert env["run.id"] == run.run.id
    assert env["peer.strongswan"] == "strongSwan 5.9.8 (under test)"
    assert env["topology"] == "netns"
    cats = json.loads((allure_dir / "categories.json").read_text())
    assert cats == CATEGORIES
    assert [c["name"] for c in cats][:2] == ["Known peer behaviour", "MUST not met"]


LIVE_TEST = """
import pytest
from harness.cases import CaseInfo, Level, Role
from harness.report import EvidenceKind, PeerInfo, Recorder, new_run_info

OUT = {out!r}
MUST = CaseInfo("ESP-005", "esp", "4303 §3.4.3", Level.MUST, (Role.RESPONDER,), "window")
SHOULD = CaseInfo("IKEV2-AUTH-003", "ikev2-auth", "7296 §2.21.2", Level.SHOULD,
                  (Role.RESPONDER,), "auth failed")


@pytest.fixture(scope="session")
def recorder():
    run = new_run_info(topology="local",
                       peers=[PeerInfo(name="strongswan", implementation="strongSwan")])
    rec = Recorder.begin(OUT, run, pytest_outcomes=True)
    yield rec
    rec.finish()


@pytest.mark.parametrize("case_id", ["ESP-005", "IKEV2-AUTH-003", "NA", "ERR", "OK"])
def test_case(recorder, case_id, tmp_path):
    info = SHOULD if case_id == "IKEV2-AUTH-003" else MUST
    if case_id in ("NA", "ERR", "OK"):
        info = CaseInfo(case_id, "esp", "4303 §3.4.3", Level.MUST, (Role.RESPONDER,), "w")
    with recorder.case(info, "strongswan", "R", parameters={{"id": case_id}},
                       rerun="ipsec-interop run --case " + info.id) as cr:
        with cr.step("IKE_SA_INIT"):
            pass
        cr.attach_text("charon log", "log line", EvidenceKind.LOG)
        if case_id == "NA":
            cr.not_applicable("no AH")
        elif case_id == "ERR":
            raise OSError("namespace could not be made")
        elif case_id != "OK":
            assert False, "requirement not met"
"""


def test_live_results_through_allure_pytest(tmp_path: Path) -> None:
    """A pytest run with --alluredir: allure-pytest's results carry our labels and outcome."""
    out = tmp_path / "reports"
    (tmp_path / "test_live.py").write_text(textwrap.dedent(LIVE_TEST.format(out=str(out))))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--rootdir",
            str(tmp_path),
            "--alluredir",
            str(out / "allure-results"),
            str(tmp_path / "test_live.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # the SHOULD assertion is a warning: the test passes; the harness error fails it in pytest
    assert "2 failed, 2 passed, 1 skipped" in proc.stdout, proc.stdout
    results = _load(out / "allure-results")
    by_param = {
        next(p.value for p in t.parameters if p.name == "id").strip("'"): t for t in results
    }
    assert {k: v.status for k, v in by_param.items()} == {
        "ESP-005": "failed",
        "IKEV2-AUTH-003": "passed",
        "NA": "skipped",
        "ERR": "broken",
        "OK": "passed",
    }
    t = by_param["ESP-005"]
    assert _labels(t, "epic") == ["esp"] and _labels(t, "story") == ["RFC 4303 §3.4.3"]
    assert _labels(t, "severity") == ["critical"]
    assert "strongswan" in _labels(t, "tag")
    assert t.name == "ESP-005 window [strongswan, responder]"
    assert t.statusDetails.message.startswith("Failed: [MUST] requirement not met")
    assert _category(t) == "MUST not met"
    assert any(s.name == "IKE_SA_INIT" for s in t.steps)
    assert {"charon log", "rerun command"} <= {a.name for a in t.attachments}
    assert t.links[0].url.endswith("rfc4303#section-3.4.3")
    # the results model saw the same verdicts
    run = RunResults.load(out / "results.json")
    verdicts = sorted(r.verdict.value for r in run.results)
    assert verdicts == ["error", "fail", "not_applicable", "pass", "warning"]
