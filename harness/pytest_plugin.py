"""The pytest plugin that turns the suites into conformance runs.

It is loaded by ``ipsec-interop run`` (and by ``suites/conftest.py`` when the suites are run
with plain pytest). It

* adds the run options (``--ipsec-peer``, ``--ipsec-role``, ``--ipsec-topology``, ...);
* parametrizes every case (a test marked by :func:`harness.cases.case`) over the peers under
  test and the roles the case allows, so one case yields one result per peer x role;
* runs each case body inside a recording of the results model (``harness.report``): an
  ``AssertionError`` is graded by the case's level, a :class:`~harness.peers.base.NotApplicable`
  becomes "not applicable" with its reason, anything else is a harness error;
* begins the run on the controller and joins it on pytest-xdist workers, and writes the
  reports at the end of the session;
* shows progress with rich on the controller.

The case body receives a :class:`~harness.lab.CaseContext` as its ``ctx`` argument.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from harness.cases import REGISTRY, CaseInfo, Role, case_selected

if TYPE_CHECKING:
    from harness.lab import CaseContext

DEFAULT_REPORTS = "reports"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipsec-interop", "IPsec conformance run")
    group.addoption(
        "--ipsec-peer",
        action="append",
        default=[],
        metavar="PEER",
        help="peer under test (repeatable): reference, strongswan, libreswan, external",
    )
    group.addoption(
        "--ipsec-role",
        action="append",
        default=[],
        choices=["I", "R"],
        help="role of the peer under test (repeatable; default: every role a case allows)",
    )
    group.addoption("--ipsec-topology", default="local", help="local, netns or docker")
    group.addoption(
        "--ipsec-case",
        action="append",
        default=[],
        metavar="ID",
        help="only these case IDs (repeatable; globs allowed)",
    )
    group.addoption(
        "--ipsec-suite",
        action="append",
        default=[],
        metavar="SUITE",
        help="only these suites (repeatable)",
    )
    group.addoption("--ipsec-target", default=None, help="address of an external device")
    group.addoption(
        "--ipsec-peer-file", default=None, help="YAML file describing an external device"
    )
    group.addoption("--ipsec-strict", action="store_true", help="a SHOULD not met is a failure")
    group.addoption("--ipsec-reports", default=DEFAULT_REPORTS, help="report folder")
    group.addoption(
        "--ipsec-export-keys",
        default=None,
        choices=["yes", "no"],
        help="write SA keys (Wireshark tables); default yes only when every peer is the reference",
    )
    group.addoption("--ipsec-progress", action="store_true", help="rich progress display")
    group.addoption(
        "--ipsec-put-misbehave",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a deliberate misbehaviour of a reference peer under test (sensitivity checks)",
    )
    group.addoption("--ipsec-rerun", default="ipsec-interop run", help=argparse_suppress())


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _peers(config: pytest.Config) -> list[str]:
    peers: list[str] = list(config.getoption("--ipsec-peer")) or ["reference"]
    return list(dict.fromkeys(peers))


MARKERS = (
    "case(id): a conformance case of the catalogue, by its ID",
    "suite(name): the conformance suite a case belongs to",
)


def pytest_configure(config: pytest.Config) -> None:
    from harness.lab import LabOptions

    for line in MARKERS:
        config.addinivalue_line("markers", line)
    options = LabOptions(
        peers=tuple(_peers(config)),
        roles=tuple(config.getoption("--ipsec-role")),
        topology=config.getoption("--ipsec-topology"),
        target=config.getoption("--ipsec-target"),
        peer_file=config.getoption("--ipsec-peer-file"),
        strict=bool(config.getoption("--ipsec-strict")),
        reports=Path(config.getoption("--ipsec-reports")),
        rerun=config.getoption("--ipsec-rerun"),
        misbehaviours=tuple(config.getoption("--ipsec-put-misbehave")),
    )
    config.stash[_OPTIONS] = options
    _interrupt_on_termination()
    if _is_worker(config):
        from harness.report import Recorder

        config.stash[_RECORDER] = Recorder.join(options.reports, pytest_outcomes=True)
    elif not config.option.collectonly:
        config.stash[_RECORDER] = _begin(config, options)
    if config.getoption("--ipsec-progress") and not _is_worker(config):
        from harness.progress import Progress

        progress = Progress()
        config.stash[_PROGRESS] = progress
        config.pluginmanager.register(progress, "ipsec-interop-progress")


def _begin(config: pytest.Config, options: Any) -> Any:
    from harness.lab import peer_infos
    from harness.report import Recorder, new_run_info

    export = config.getoption("--ipsec-export-keys")
    info = new_run_info(
        topology=options.topology,
        peers=peer_infos(options),
        strict=options.strict,
        export_keys=None if export is None else export == "yes",
        command=os.environ.get("IPSEC_INTEROP_COMMAND") or shlex.join(sys.argv),
    )
    return Recorder.begin(options.reports, info, pytest_outcomes=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("case")
    if marker is None or "ctx" not in metafunc.fixturenames:
        return
    info = REGISTRY[marker.args[0]]
    options = metafunc.config.stash[_OPTIONS]
    wanted_roles = set(options.roles) or {r.value for r in Role}
    params = [
        pytest.param((peer, role.value), id=f"{peer}-{role.value}")
        for peer in options.peers
        for role in info.roles
        if role.value in wanted_roles
    ]
    if params:
        metafunc.parametrize("_peer_role", params, scope="function")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Case tests with no selected peer x role are deselected; the rest are declared."""
    keep: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    wanted_cases = config.getoption("--ipsec-case")
    wanted_suites = set(config.getoption("--ipsec-suite"))
    for item in items:
        callspec = getattr(item, "callspec", None)
        marker = item.get_closest_marker("case")
        if marker is not None and (
            callspec is None
            or "_peer_role" not in callspec.params
            or not case_selected(REGISTRY[marker.args[0]], wanted_cases, wanted_suites)
        ):
            deselected.append(item)
        else:
            keep.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep
    recorder = config.stash.get(_RECORDER, None)
    if recorder is not None and not _is_worker(config):
        ids = sorted({m.args[0] for it in items if (m := it.get_closest_marker("case"))})
        recorder.declare_cases([REGISTRY[i] for i in ids])


@pytest.fixture
def _peer_role() -> tuple[str, str]:  # replaced by parametrization
    raise pytest.UsageError("case tests need --ipsec-peer parametrization")


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Any:
    """The per-worker lab: topologies and peers, started once and reconfigured per case."""
    from harness.lab import Lab

    the_lab = Lab(request.config.stash[_OPTIONS])
    yield the_lab
    the_lab.close()


@pytest.fixture
def ctx(request: pytest.FixtureRequest, lab: Any, _peer_role: tuple[str, str]) -> Any:
    """The context a case body works with (peer under test, tester, recording, evidence)."""
    marker = request.node.get_closest_marker("case")
    info: CaseInfo = REGISTRY[marker.args[0]]
    peer, role = _peer_role
    context = lab.context(info, peer, Role(role), request.node.nodeid)
    yield context
    context.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a case body inside its recording (the verdict comes from how the body ends)."""
    marker = pyfuncitem.get_closest_marker("case")
    if marker is None or "ctx" not in pyfuncitem.funcargs:
        return None
    from harness.peers.base import NotApplicable

    context = cast("CaseContext", pyfuncitem.funcargs["ctx"])
    recorder = pyfuncitem.config.stash[_RECORDER]
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    with recorder.case(
        context.info,
        context.peer_name,
        context.role,
        parameters=context.parameters,
        rerun=context.rerun_command(),
    ) as recording:
        context.recording = recording
        context.mark_logs()
        try:
            context.check_needs()
            pyfuncitem.obj(**args)
        except NotApplicable as exc:
            recording.not_applicable(str(exc))
        finally:
            context.attach_evidence()
    return True


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP (a CI job cancelled, a terminal closed) stop the run as Ctrl-C
    does: pytest's interrupt path tears down the lab (topologies, peers) and writes the
    reports of the cases that finished. Were they ``SystemExit``, as outside pytest, the case
    running at the time would only fail and the run would go on."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config):
        return
    recorder = config.stash.get(_RECORDER, None)
    if recorder is None:
        return
    from harness.report import write_reports

    results = recorder.finish()
    if not results.results and not results.cases:
        return
    allure_dir = config.getoption("allure_report_dir", None)
    write_reports(
        results,
        config.stash[_OPTIONS].reports,
        allure_mode="metadata" if allure_dir else "offline",
    )


_OPTIONS = pytest.StashKey[Any]()
_RECORDER = pytest.StashKey[Any]()
_PROGRESS = pytest.StashKey[Any]()
