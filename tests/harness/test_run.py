"""``ipsec-interop run`` end to end on a small custom suites package (no peers needed):
selection, verdict grading, parallel workers, reports and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.exitcodes import ExitCode

SUITE = textwrap.dedent(
    """
    from harness.cases import case
    from harness.peers.base import NotApplicable


    @case("DEMO-001", suite="demo", rfc="4303 §3.4.3", level="MUST", roles="IR",
          title="always met")
    def test_demo_001(ctx):
        with ctx.step("look"):
            assert ctx.info.id == "DEMO-001"


    @case("DEMO-002", suite="demo", rfc="4303 §2.4", level="MUST", roles="R",
          title="never met")
    def test_demo_002(ctx):
        assert 1 + 1 == 3, "arithmetic is broken"


    @case("DEMO-003", suite="demo", rfc="4303 §2.4", level="SHOULD", roles="R",
          title="a SHOULD not met")
    def test_demo_003(ctx):
        assert False, "padding not checked"


    @case("DEMO-004", suite="demo", rfc="4302 §2", level="MUST", roles="I",
          title="needs something the peer lacks")
    def test_demo_004(ctx):
        raise NotApplicable(["ah: protocol not supported"])
    """
)


def _suite_package(root: Path, suite: str) -> Path:
    """``root/demosuites``: a suites package with ``suite`` as its one test module."""
    pkg = root / "demosuites"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "conftest.py").write_text('pytest_plugins = ["harness.pytest_plugin"]\n')
    (pkg / "test_demo.py").write_text(suite)
    return root


@pytest.fixture
def suites_pkg(tmp_path: Path) -> Path:
    return _suite_package(tmp_path, SUITE)


def run_cli(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **(env or {}),
        "IPSEC_INTEROP_SUITES": "demosuites",
        "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "COLUMNS": "160",
    }
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--reports", str(root / "reports"), *args],
        capture_output=True, text=True, timeout=240, env=env, cwd=root,
    )  # fmt: skip


def verdicts(root: Path) -> dict[tuple[str, str], str]:
    data = json.loads((root / "reports" / "results.json").read_text())
    return {(r["case"], r["role"]): r["verdict"] for r in data["results"]}


def test_full_run_grades_and_reports(suites_pkg: Path) -> None:
    proc = run_cli(suites_pkg, "--no-progress")
    assert proc.returncode == ExitCode.CONFORMANCE_FAILURE, proc.stdout + proc.stderr
    assert verdicts(suites_pkg) == {
        ("DEMO-001", "I"): "pass",
        ("DEMO-001", "R"): "pass",
        ("DEMO-002", "R"): "fail",
        ("DEMO-003", "R"): "warning",
        ("DEMO-004", "I"): "not_applicable",
    }
    reports = suites_pkg / "reports"
    for name in ("index.html", "junit.xml", "results.json"):
        assert (reports / name).is_file(), name
    assert any((reports / "allure-results").glob("*-result.json"))
    data = json.loads((reports / "results.json").read_text())
    failing = next(r for r in data["results"] if r["case"] == "DEMO-002")
    assert "arithmetic is broken" in failing["reason"]
    assert "--case DEMO-002 --peer reference --role R" in failing["rerun"]


def test_selection_and_strict(suites_pkg: Path) -> None:
    ok = run_cli(suites_pkg, "--case", "DEMO-001", "--no-progress")
    assert ok.returncode == ExitCode.OK, ok.stdout + ok.stderr
    assert set(verdicts(suites_pkg)) == {("DEMO-001", "I"), ("DEMO-001", "R")}
    role = run_cli(suites_pkg, "--case", "demo-00[13]", "--role", "R", "--no-progress")
    assert role.returncode == ExitCode.OK, "a SHOULD not met is only a warning"
    assert set(verdicts(suites_pkg)) == {("DEMO-001", "R"), ("DEMO-003", "R")}
    strict = run_cli(suites_pkg, "--case", "DEMO-003", "--strict", "--no-progress")
    assert strict.returncode == ExitCode.CONFORMANCE_FAILURE
    assert verdicts(suites_pkg) == {("DEMO-003", "R"): "fail"}


def test_nothing_selected_and_usage_errors(suites_pkg: Path) -> None:
    assert run_cli(suites_pkg, "--case", "NOPE-*").returncode == ExitCode.NOTHING_SELECTED
    assert run_cli(suites_pkg, "--suite", "nosuch").returncode == ExitCode.USAGE_ERROR
    assert run_cli(suites_pkg, "--peer", "nosuch").returncode == ExitCode.USAGE_ERROR
    assert run_cli(suites_pkg, "--peer", "external").returncode == ExitCode.USAGE_ERROR
    # A peer that cannot run on the topology would make every case "not applicable": a run
    # that tested nothing and exits 0. It is a usage error instead.
    local = run_cli(suites_pkg, "--peer", "strongswan")
    assert local.returncode == ExitCode.USAGE_ERROR
    assert "--peer strongswan needs --topology netns or docker" in local.stderr


def test_parallel_workers_give_the_same_verdicts(suites_pkg: Path) -> None:
    proc = run_cli(suites_pkg, "--jobs", "2")
    assert proc.returncode == ExitCode.CONFORMANCE_FAILURE, proc.stdout + proc.stderr
    assert verdicts(suites_pkg)[("DEMO-002", "R")] == "fail"
    assert len(verdicts(suites_pkg)) == 5


def test_a_backend_that_cannot_run_here_is_one_error_before_anything_starts(
    suites_pkg: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "no-such-docker.sock"
    env = {"DOCKER_HOST": f"unix://{gone}"}
    proc = run_cli(suites_pkg, "--topology", "docker", "--no-progress", env=env)
    assert proc.returncode == ExitCode.ENVIRONMENT_ERROR, proc.stdout + proc.stderr
    assert "--topology docker cannot run here: no Docker engine answers" in proc.stderr
    assert str(gone) in proc.stderr
    assert not (suites_pkg / "reports" / "results.json").exists()  # no case was started


BLOCKING = textwrap.dedent(
    """
    import os, threading
    from pathlib import Path
    from harness.cases import case


    @case("DEMO-101", suite="demo", rfc="4303 §2", level="MUST", roles="R", title="quick")
    def test_demo_101(ctx):
        pass


    @case("DEMO-102", suite="demo", rfc="4303 §2", level="MUST", roles="R", title="blocks")
    def test_demo_102(ctx):
        Path(os.environ["DEMO_STARTED"]).write_text("started")
        threading.Event().wait(120)  # until the run is stopped
    """
)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_run_ends_at_once_and_keeps_what_finished(tmp_path: Path, sig: str) -> None:
    """SIGTERM (a cancelled CI job) ends the run like Ctrl-C: not only the case running at
    the time. The reports hold the results that finished; the exit code is 3."""
    import signal
    import time

    _suite_package(tmp_path, BLOCKING)
    started = tmp_path / "started"
    env = {
        **os.environ,
        "IPSEC_INTEROP_SUITES": "demosuites",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "DEMO_STARTED": str(started),
    }
    argv = [sys.executable, "-m", "harness.cli", "run", "--reports", str(tmp_path / "reports"),
            "--jobs", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the blocking case never started"
            time.sleep(0.05)
        proc.send_signal(signal.Signals[sig])
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.ENVIRONMENT_ERROR, out
    assert "run interrupted" in out
    data = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert [(r["case"], r["verdict"]) for r in data["results"]] == [("DEMO-101", "pass")]


def test_docker_images_a_run_needs_are_built_first_unless_no_build(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness import images
    from harness.commands import run as run_command

    def require(name: str) -> str:
        if name == "strongswan":
            raise images.StaleImage("image ipsec-interop/strongswan:1 is stale: its build-hash ...")
        return f"ipsec-interop/{name}:1"

    built: list[list[str]] = []
    monkeypatch.setattr(images, "require_image", require)
    monkeypatch.setattr(images, "build", lambda names, log: built.append(list(names)) or [])
    run_command._docker_images(("strongswan", "libreswan"), build=True)
    assert built == [["strongswan"]]  # the reference image (the tester) is current
    assert "strongswan:1 is stale" in capsys.readouterr().err

    with pytest.raises(SystemExit) as stop:
        run_command._docker_images(("strongswan",), build=False)
    assert stop.value.code == ExitCode.ENVIRONMENT_ERROR
    assert built == [["strongswan"]]
    assert "Error: image ipsec-interop/strongswan:1 is stale" in capsys.readouterr().err

    def failing(names: list[str], log: object) -> None:
        raise images.ImageError("building ipsec-interop/strongswan:1 failed (log: x)")

    monkeypatch.setattr(images, "build", failing)
    with pytest.raises(SystemExit) as stop:
        run_command._docker_images(("strongswan",), build=True)
    assert stop.value.code == ExitCode.ENVIRONMENT_ERROR
    assert "building ipsec-interop/strongswan:1 failed" in capsys.readouterr().err


SAME_REASON = textwrap.dedent(
    """
    from harness.cases import case


    @case("DEMO-201", suite="demo", rfc="4303 §2", level="MUST", roles="IR", title="a")
    def test_demo_201(ctx):
        assert False, "the peer did not start"


    @case("DEMO-202", suite="demo", rfc="4303 §2", level="MUST", roles="IR", title="b")
    def test_demo_202(ctx):
        assert False, "the peer did not start"


    @case("DEMO-203", suite="demo", rfc="4303 §2", level="MUST", roles="R", title="c")
    def test_demo_203(ctx):
        assert False, "its own reason"
    """
)


def test_results_failing_for_one_reason_are_listed_once(tmp_path: Path) -> None:
    _suite_package(tmp_path, SAME_REASON)
    proc = run_cli(tmp_path, "--no-progress")
    assert proc.returncode == ExitCode.CONFORMANCE_FAILURE, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())  # rich wraps long lines
    assert out.count("the peer did not start") == 1, out
    assert "FAIL 4 results (DEMO-201 reference I, DEMO-201 reference R, DEMO-202" in out
    assert "FAIL DEMO-203 reference R: its own reason" in out
    assert "rerun: ipsec-interop run --case DEMO-203 --peer reference --role R" in out
