"""JUnit XML, parsed back."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.report import RunResults


def _cases(root: ET.Element) -> dict[tuple[str, str], ET.Element]:
    return {(tc.get("classname", ""), tc.get("name", "")): tc for tc in root.iter("testcase")}


def _props(tc: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}


def test_junit_parses_back_with_case_ids_and_verdict_mapping(
    run_dir: Path, run: RunResults
) -> None:
    root = ET.parse(run_dir / "junit.xml").getroot()
    assert root.tag == "testsuites"
    cases = _cases(root)
    assert len(cases) == len(run.results) == int(root.get("tests", "0"))
    assert {name for _, name in cases} == set(run.cases)  # test names are the case IDs

    fail = cases[("esp.strongswan.responder", "ESP-005")]
    failure = fail.find("failure")
    assert failure is not None and failure.get("type") == "MUST"
    assert failure.get("message", "").startswith("[MUST] seq 500 with a bad ICV")
    props = _props(fail)
    assert props["verdict"] == "fail" and props["rfc"] == "4303 §3.4.3"
    assert props["rerun"] == "ipsec-interop run --case ESP-005 --peer strongswan --role R"
    assert props["evidence.pcap"] == "evidence/ESP-005/strongswan-R/capture.pcap"
    assert (run_dir / props["evidence.pcap"]).is_file()
    assert "evidence.keys" not in props  # withheld without --export-keys

    na = cases[("ah.strongswan.initiator", "AH-001")]
    skipped = na.find("skipped")
    assert skipped is not None and skipped.get("message") == "kernel-libipsec has no AH"

    rec = cases[("fallback.strongswan.initiator", "FB-03")]
    assert rec.find("failure") is None and rec.find("skipped") is None
    assert _props(rec)["verdict"] == "recorded"
    out = rec.find("system-out")
    assert out is not None and "no fallback: blocked for 165 s" in (out.text or "")

    warn = cases[("ikev2-negotiation.strongswan.initiator", "IKEV2-NEG-009")]
    assert warn.find("failure") is None and _props(warn)["verdict"] == "warning"

    err = cases[("esp.reference.initiator", "ESP-011")]
    assert err.find("error") is not None

    assert root.get("failures") == "1" and root.get("errors") == "1"
    assert root.get("skipped") == "2"
    for suite in root.iter("testsuite"):
        tcs = list(suite.iter("testcase"))
        assert int(suite.get("tests", "-1")) == len(tcs)
        assert int(suite.get("failures", "-1")) == sum(tc.find("failure") is not None for tc in tcs)
        assert int(suite.get("skipped", "-1")) == sum(tc.find("skipped") is not None for tc in tcs)


def test_control_characters_from_peer_logs_keep_the_xml_valid(run: RunResults) -> None:
    from harness.report.junit import build

    bad = run.model_copy(deep=True)
    target = next(r for r in bad.results if r.case == "ESP-005" and r.peer == "strongswan")
    target.reason = "bad\x00byte\x1b[31m"
    target.details = "trace\x07"
    xml = ET.tostring(build(bad), encoding="unicode")
    root = ET.fromstring(xml)  # parses: no raw control characters
    failure = next(tc for tc in root.iter("testcase") if tc.find("failure") is not None)
    assert "bad\ufffdbyte" in failure.find("failure").get("message", "")  # type: ignore[union-attr]
