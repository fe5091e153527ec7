"""JUnit XML (``reports/junit.xml``) from a results document.

One ``<testsuite>`` per conformance suite and peer; one ``<testcase>`` per result with the
case ID as its name and ``<suite>.<peer>.<role>`` as its classname. Verdicts map to what
every JUnit consumer understands:

- pass: a plain passed testcase;
- fail: ``<failure>`` (message ``[MUST] reason``, type = the level);
- error: ``<error>`` (a harness problem, not a conformance failure);
- not applicable: ``<skipped>`` with the reason;
- recorded and warning: passed, with a ``verdict`` property and the finding in
  ``<system-out>``.

Every testcase carries properties: verdict, level, rfc, peer, role, the reason, the rerun
command and its evidence paths (relative to the report directory).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from harness.report.allure import ROLE_NAMES
from harness.report.model import CaseResult, RunResults, Verdict
from harness.report.recorder import failure_message

# Characters XML 1.0 cannot hold (a peer's log line can contain anything).
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: str) -> str:
    return _INVALID_XML.sub("\ufffd", text)


def _props(parent: ET.Element, items: list[tuple[str, str]]) -> None:
    if not items:
        return
    props = ET.SubElement(parent, "properties")
    for name, value in items:
        ET.SubElement(props, "property", name=_x(name), value=_x(value))


def _testcase(suite_el: ET.Element, run: RunResults, r: CaseResult) -> None:
    meta = run.cases[r.case]
    tc = ET.SubElement(
        suite_el,
        "testcase",
        name=r.case,
        classname=f"{meta.suite}.{r.peer}.{ROLE_NAMES[r.role]}",
        time=f"{r.duration:.3f}",
    )
    items = [
        ("verdict", r.verdict.value),
        ("level", r.level.value),
        ("rfc", r.rfc),
        ("title", meta.title),
        ("peer", r.peer),
        ("role", ROLE_NAMES[r.role]),
    ]
    if r.reason:
        items.append(("reason", r.reason))
    if r.known_behaviour:
        items.append(("known_behaviour", r.known_behaviour))
    if r.rerun:
        items.append(("rerun", r.rerun))
    for ev in r.evidence:
        if ev.path:
            items.append((f"evidence.{ev.kind.value}", ev.path))
    _props(tc, items)
    message = failure_message(r.level, r.verdict, r.reason, r.known_behaviour)
    if r.verdict is Verdict.FAIL:
        el = ET.SubElement(tc, "failure", message=_x(message), type=r.level.value)
        el.text = _x(r.details or message)
    elif r.verdict is Verdict.ERROR:
        el = ET.SubElement(tc, "error", message=_x(message), type="harness")
        el.text = _x(r.details or message)
    elif r.verdict is Verdict.NOT_APPLICABLE:
        ET.SubElement(tc, "skipped", message=_x(r.reason or "not applicable"))
    elif r.verdict in (Verdict.RECORDED, Verdict.WARNING):
        out = ET.SubElement(tc, "system-out")
        out.text = _x(message + (f"\n\n{r.details}" if r.details else ""))


def build(run: RunResults) -> ET.Element:
    """The ``<testsuites>`` element of a run."""
    groups: dict[tuple[str, str], list[CaseResult]] = defaultdict(list)
    for r in run.sorted_results():
        groups[(run.cases[r.case].suite, r.peer)].append(r)
    root = ET.Element("testsuites", name=f"ipsec-interop {run.run.id}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    timestamp = run.run.started.replace(microsecond=0).isoformat()
    for (suite, peer), results in groups.items():
        counts = run.counts(results)
        suite_time = sum(r.duration for r in results)
        attrs = {
            "tests": len(results),
            "failures": counts[Verdict.FAIL],
            "errors": counts[Verdict.ERROR],
            "skipped": counts[Verdict.NOT_APPLICABLE],
        }
        suite_attrs = {
            "name": f"{suite} [{peer}]",
            "timestamp": timestamp,
            "hostname": run.run.host.hostname,
            "time": f"{suite_time:.3f}",
            **{k: str(v) for k, v in attrs.items()},
        }
        suite_el = ET.SubElement(root, "testsuite", suite_attrs)
        peer_info = run.run.peer(peer)
        _props(
            suite_el,
            [
                ("run.id", run.run.id),
                ("harness.version", run.run.harness_version),
                ("topology", run.run.topology),
                ("peer", peer),
                ("peer.implementation", peer_info.implementation if peer_info else peer),
                ("peer.version", (peer_info.version or "") if peer_info else ""),
                ("strict", str(run.run.strict).lower()),
            ],
        )
        for r in results:
            _testcase(suite_el, run, r)
        for k, v in attrs.items():
            totals[k] += v
        total_time += suite_time
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{total_time:.3f}")
    return root


def write(run: RunResults, path: Path) -> None:
    root = build(run)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
