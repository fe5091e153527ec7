"""Recording results and evidence through the API the suites call."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases import Level
from harness.report import EvidenceKind, PeerInfo, Recorder, RunResults, Verdict, new_run_info
from harness.report.recorder import KEYS_WITHHELD, SECRET_WITHHELD
from harness.report.redact import MARK, Redactor
from tests.harness.report.synthetic import BY_ID, PEM_KEY, PSK, build_run, info

SA_KEY_HEX = "00112233445566778899aabbccddeeff"


def _recorder(out: Path, *, strict: bool = False, export_keys: bool = False) -> Recorder:
    run = new_run_info(
        topology="local",
        peers=[PeerInfo(name="strongswan", implementation="strongSwan", version="5.9.8")],
        strict=strict,
        export_keys=export_keys,
    )
    return Recorder.begin(out, run, secrets=[PSK])


def _one(rec: Recorder) -> RunResults:
    return rec.finish()


@pytest.mark.parametrize(
    ("level", "strict", "verdict"),
    [
        ("MUST", False, "fail"),
        ("SHOULD", False, "warning"),
        ("SHOULD", True, "fail"),
        ("MAY", False, "recorded"),
    ],
)
def test_an_assertion_is_graded_by_level(
    tmp_path: Path, level: str, strict: bool, verdict: str
) -> None:
    rec = _recorder(tmp_path, strict=strict)
    case = info("X-001", "esp", "4303 §3.4.3", level, "R", "t")
    with rec.case(case, "strongswan", "R") as cr, cr.step("probe"):
        assert 1 + 1 == 3, "seq 6 was dropped after a bad ICV"
    run = _one(rec)
    (r,) = run.results
    assert r.verdict.value == verdict
    assert r.reason == "seq 6 was dropped after a bad ICV"
    assert r.steps[0].status.value == "failed"
    assert r.details is not None and "AssertionError" in r.details


def test_exceptions_skips_and_plain_exit(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    case = BY_ID["ESP-001"]
    with rec.case(case, "strongswan", "I"):
        raise RuntimeError("charon exited with 1")
    with rec.case(case, "strongswan", "R"):
        pytest.skip("kernel-libipsec has no ESN")
    ok = BY_ID["ESP-002"]
    with rec.case(ok, "strongswan", "I"):
        pass
    with pytest.raises(KeyboardInterrupt), rec.case(ok, "strongswan", "R"):
        raise KeyboardInterrupt
    run = _one(rec)
    got = {(r.case, r.role.value): (r.verdict, r.reason) for r in run.results}
    assert got == {
        ("ESP-001", "I"): (Verdict.ERROR, "RuntimeError: charon exited with 1"),
        ("ESP-001", "R"): (Verdict.NOT_APPLICABLE, "kernel-libipsec has no ESN"),
        ("ESP-002", "I"): (Verdict.PASS, ""),
    }


def test_the_worst_finding_wins(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    with rec.case(BY_ID["ESP-002"], "strongswan", "R") as cr:
        cr.passed("first packet ok")
        cr.recorded("counter not visible")
        cr.not_met("duplicate delivered")
        cr.not_met("second duplicate delivered")
        cr.passed("later packet ok")
    (r,) = _one(rec).results
    assert r.verdict is Verdict.FAIL
    assert r.reason == "duplicate delivered; second duplicate delivered"


def test_a_second_process_joins_the_run(tmp_path: Path) -> None:
    controller = _recorder(tmp_path)
    worker = Recorder.join(tmp_path, secrets=[PSK])
    assert worker.run == controller.run
    with worker.case(BY_ID["ESP-001"], "strongswan", "I"):
        pass
    with controller.case(BY_ID["ESP-001"], "strongswan", "R"):
        pass
    controller.declare_cases([BY_ID["AH-001"]])
    run = controller.finish()
    assert [(r.case, r.role.value) for r in run.results] == [("ESP-001", "I"), ("ESP-001", "R")]
    assert set(run.cases) == {"ESP-001", "AH-001"}  # declared but not run: in the matrix
    assert not (tmp_path / ".results.d").exists()
    assert RunResults.load(tmp_path / "results.json") == run


def test_recording_twice_keeps_the_later_and_says_so(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    for reason in ("first", "second"):
        with rec.case(BY_ID["ESP-001"], "strongswan", "I") as cr:
            cr.failed(reason)
    run = _one(rec)
    assert [r.reason for r in run.results] == ["second"]
    assert any("recorded twice" in n for n in run.run.notes)


def test_evidence_is_stored_with_hash_and_unique_names(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    src = tmp_path / "capture.pcap"
    src.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(40))
    with rec.case(BY_ID["ESP-001"], "strongswan", "I") as cr:
        a = cr.attach_file(src, EvidenceKind.PCAP)
        b = cr.attach_file(src, "pcap", name="second capture")
    assert a.path == "evidence/ESP-001/strongswan-I/capture.pcap"
    assert b.path == "evidence/ESP-001/strongswan-I/capture-2.pcap"
    assert a.media_type == "application/vnd.tcpdump.pcap" and a.size == 44
    import hashlib

    assert a.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (tmp_path / b.path).read_bytes() == src.read_bytes()


def test_keys_only_with_export_keys_and_secrets_always_out(tmp_path: Path) -> None:
    for export in (False, True):
        out = tmp_path / str(export)
        rec = _recorder(out, export_keys=export)
        with rec.case(BY_ID["ESP-001"], "strongswan", "I", parameters={"psk": PSK}) as cr:
            keys = cr.attach_text("esp_sa", f'"0x{SA_KEY_HEX}"\n', EvidenceKind.KEYS)
            dump = cr.attach_text(
                "xfrm",
                f"\tenc cbc(aes) 0x{SA_KEY_HEX}\n\tauth-trunc hmac(sha256) 0x{SA_KEY_HEX} 128\n",
                EvidenceKind.SA_DUMP,
            )
            conf = cr.attach_text(
                "swanctl.conf",
                f"secrets {{\n  ike-1 {{\n    secret = {PSK}\n  }}\n}}\n" + PEM_KEY,
                EvidenceKind.CONFIG,
            )
            blob = cr.attach_bytes("blob", b"\x00\x01" + PSK.encode(), "other", filename="b.bin")
            cr.failed(f"PSK {PSK} rejected")
        run = rec.finish()
        (r,) = run.results
        assert r.parameters["psk"] == MARK and PSK not in r.reason
        assert blob.withheld and blob.note == SECRET_WITHHELD
        conf_text = (out / str(conf.path)).read_text()
        assert (
            PSK not in conf_text and "MIIEv" not in conf_text and "secret = «redacted»" in conf_text
        )
        if export:
            assert keys.path and SA_KEY_HEX in (out / keys.path).read_text()
            assert SA_KEY_HEX in (out / str(dump.path)).read_text()
        else:
            assert keys.withheld and keys.path is None and keys.note == KEYS_WITHHELD
            assert SA_KEY_HEX not in (out / str(dump.path)).read_text()
            assert dump.redacted


def test_no_secret_anywhere_in_a_written_report(run_dir: Path) -> None:
    """Every file of a full report (JSON, HTML, JUnit, Allure, evidence) is free of secrets."""
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 100
    for path in files:
        data = path.read_bytes()
        assert PSK.encode() not in data, path
        assert b"MIIEv" not in data, path
        assert b"00112233445566778899aabbccddeeff" not in data, path


def test_export_keys_defaults_on_only_for_reference_against_reference() -> None:
    ref = PeerInfo(name="reference", implementation="reference")
    ss = PeerInfo(name="strongswan", implementation="strongSwan")
    assert new_run_info(topology="local", peers=[ref]).export_keys is True
    assert new_run_info(topology="local", peers=[ref, ss]).export_keys is False
    assert new_run_info(topology="local", peers=[ss], export_keys=True).export_keys is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (': PSK "hunter22"', ": PSK «redacted»"),
        ("  psk: hunter22", "  psk: «redacted»"),
        ('  "pre_shared_key": "hunter22",', '  "pre_shared_key": «redacted»,'),
        ("sk_ei: 0x00112233445566778899", "sk_ei: «redacted»"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redaction_patterns(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


def test_synthetic_run_covers_every_verdict(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    assert {r.verdict for r in run.results} == set(Verdict)
    assert run.cases["ESP-005"].level is Level.MUST


@pytest.mark.parametrize(("strict", "verdict"), [(False, "warning"), (True, "fail")])
def test_a_should_part_of_a_must_case(tmp_path: Path, strict: bool, verdict: str) -> None:
    """A "MUST / SHOULD" row: its SHOULD part is graded as a SHOULD (warning, or fail
    with --strict), its MUST part still fails."""
    rec = _recorder(tmp_path, strict=strict)
    case = info("X-010", "esp", "4303 §2.4", "MUST", "R", "padding")
    with rec.case(case, "strongswan", "R") as cr:
        cr.warning("wrong padding values accepted")
    with rec.case(case, "strongswan", "I") as cr:
        cr.not_met("pad length ignored", level=Level.MAY)
    run = _one(rec)
    got = {r.role.value: r.verdict.value for r in run.results}
    assert got == {"R": verdict, "I": "recorded"}


def test_appendix_sections_link_to_their_anchor() -> None:
    from harness.report.rfc import RfcRef

    assert RfcRef("4303", "A2.2").url.endswith("#appendix-A.2.2")
    assert RfcRef("4303", "A.2.2").url.endswith("#appendix-A.2.2")
    assert RfcRef("4302", "A").url.endswith("#appendix-A")
    assert RfcRef("4303", "3.4.3").url.endswith("#section-3.4.3")
