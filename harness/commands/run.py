"""``ipsec-interop run``: the conformance run, the main job."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from pathlib import Path

import click

from harness.exitcodes import EXIT_CODES_HELP, ExitCode

TOPOLOGIES = ("local", "netns", "docker", "host")


def register(cli: click.Group) -> None:
    cli.add_command(run)


@click.command(epilog="\b\nExit codes:\n" + EXIT_CODES_HELP)
@click.option("--suite", "suites", multiple=True, help="Only this suite (repeatable).")
@click.option(
    "--case", "cases", multiple=True, help="Only these case IDs; globs allowed (repeatable)."
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    help="Peer under test (repeatable): reference, strongswan, libreswan, external. "
    "The reference node plays the other side. Default: reference.",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["I", "R"]),
    help="Role of the peer under test: I (initiator) or R (responder). Default: both.",
)
@click.option(
    "--topology",
    type=click.Choice(TOPOLOGIES),
    default=None,
    help="Where the peers run: processes on loopback (local, the default), network "
    "namespaces (netns, root), Docker; host: the tester on this host, facing an external "
    "device (the default and only choice with --peer external).",
)
@click.option(
    "--target",
    default=None,
    help="Address of an external device (with --peer external; overrides the peer file's).",
)
@click.option(
    "--peer-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML declaration of the external device (identity, PSK variable, subnets, "
    "proposals, features); see docs/external-device.md.",
)
@click.option("--strict", is_flag=True, help="A SHOULD that is not met fails the run.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Parallel workers, each with its own isolated topology.",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Expected results: only deviations decide the exit code.",
)
@click.option(
    "--reports",
    "reports_dir",
    type=click.Path(file_okay=False),
    default="reports",
    show_default=True,
    help="Where reports and evidence are written.",
)
@click.option(
    "--export-keys/--no-export-keys",
    default=None,
    help="Write SA keys (Wireshark tables). Default: only when every peer is ours.",
)
@click.option(
    "--put-misbehave",
    "misbehave",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Switch on a deliberate misbehaviour of a reference peer under test "
    "(to check that the suites notice it).",
)
@click.option(
    "--no-build",
    is_flag=True,
    help="With --topology docker: fail when an image is missing or older than the working "
    "tree, instead of building it (see `ipsec-interop images`).",
)
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option("-v", "--verbose", is_flag=True, help="Show pytest's own output.")
def run(
    suites: tuple[str, ...],
    cases: tuple[str, ...],
    peers: tuple[str, ...],
    roles: tuple[str, ...],
    topology: str | None,
    target: str | None,
    peer_file: str | None,
    strict: bool,
    jobs: str,
    baseline: str | None,
    reports_dir: str,
    export_keys: bool | None,
    misbehave: tuple[str, ...],
    no_build: bool,
    no_progress: bool,
    verbose: bool,
) -> None:
    """Run the conformance suites and write the reports.

    With no arguments: every suite, our reference implementation against itself on the
    local topology (no root, no Docker), reports in ./reports (index.html, results.json,
    junit.xml, allure-results/).
    """
    from harness.cases import case_selected, load_suites, suites_package
    from harness.peers.registry import ADAPTERS

    package = suites_package()
    all_cases = load_suites(package)
    known_suites = sorted({c.suite for c in all_cases})
    for s in suites:
        if s not in known_suites:
            raise click.UsageError(f"unknown suite {s!r}; suites are: {', '.join(known_suites)}")
    for p in peers:
        if p not in ADAPTERS:
            raise click.UsageError(f"unknown peer {p!r}; peers are: {', '.join(ADAPTERS)}")
    workers = _workers(jobs)
    topology = _external_checks(peers, topology, target, peer_file, workers)
    _topology_checks(topology, peers, build=not no_build)
    selected = [c for c in all_cases if case_selected(c, list(cases), set(suites))]
    if not selected:
        click.echo("No case matches the selection.", err=True)
        sys.exit(ExitCode.NOTHING_SELECTED)

    reports = Path(reports_dir)
    suites_dir = Path(importlib.import_module(package).__path__[0])
    ini = Path(__file__).resolve().parent.parent / "suites.ini"
    args = [str(suites_dir), "-c", str(ini), "--rootdir", str(suites_dir.parent),
            "-p", "no:cacheprovider", "--ipsec-topology", topology,
            "--ipsec-reports", str(reports), "--ipsec-rerun", "ipsec-interop run",
            "--alluredir", str(reports / "allure-results"), "--clean-alluredir",
            "-o", "console_output_style=classic"]  # fmt: skip
    for p in peers:
        args += ["--ipsec-peer", p]
    for r in roles:
        args += ["--ipsec-role", r]
    for c in cases:
        args += ["--ipsec-case", c]
    for s in suites:
        args += ["--ipsec-suite", s]
    if target:
        args += ["--ipsec-target", target]
    if peer_file:
        args += ["--ipsec-peer-file", peer_file]
    if strict:
        args.append("--ipsec-strict")
    if export_keys is not None:
        args += ["--ipsec-export-keys", "yes" if export_keys else "no"]
    for m in misbehave:
        args += ["--ipsec-put-misbehave", m]
    if workers > 1:
        args += ["-n", str(workers)]
    if not no_progress and not verbose:
        args += ["--ipsec-progress", "-p", "no:terminal"]
    elif not verbose:
        args += ["-q", "--no-header", "--tb=no", "-rN"]  # our summary follows

    os.environ["IPSEC_INTEROP_COMMAND"] = shlex.join(["ipsec-interop", *sys.argv[1:]])
    results_file = reports / "results.json"
    if results_file.exists():
        results_file.unlink()

    import pytest

    status = pytest.main(args)
    sys.exit(_finish(int(status), reports, baseline))


def _topology_checks(topology: str, peers: tuple[str, ...], *, build: bool) -> None:
    """A backend that cannot run here (netns without root, docker without an engine) is one
    clear error and exit 3 before anything starts, not an error in every case. On docker, the
    images the run needs are built first when missing or older than the working tree
    (cached layers: seconds; a first build: minutes), unless ``build`` is off."""
    from harness.topology.base import Unsupported, backend_class

    try:
        ok, why = backend_class(topology).available()
    except (ValueError, Unsupported) as exc:
        ok, why = False, str(exc)
    if not ok:
        click.echo(f"Error: --topology {topology} cannot run here: {why}", err=True)
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    if topology == "docker":
        _docker_images(peers or ("reference",), build=build)
    else:
        _host_peers(topology, peers)


def _host_peers(topology: str, peers: tuple[str, ...]) -> None:
    """Peers that run from this host's installation: each must be able to run here. A peer
    that cannot would make every case "not applicable", and a run that tested nothing would
    look green."""
    from harness.lab import NEEDS_NODE
    from harness.peers.registry import AdapterMissing, peer_class

    for kind in peers:
        if kind == "external":
            continue
        if kind in NEEDS_NODE and topology == "local":
            raise click.UsageError(f"--peer {kind} {NEEDS_NODE[kind]}")
        try:
            avail = peer_class(kind).availability()
        except AdapterMissing as exc:
            avail_ok, detail = False, str(exc)
        else:
            avail_ok, detail = avail.available, avail.detail
        if not avail_ok:
            click.echo(f"Error: peer {kind} cannot run here: {detail}", err=True)
            sys.exit(ExitCode.ENVIRONMENT_ERROR)


def _docker_images(peers: tuple[str, ...], *, build: bool) -> None:
    from harness import images

    wanted = ["reference", *(p for p in peers if p in images.SPECS and p != "reference")]
    problems: dict[str, str] = {}
    for name in wanted:
        try:
            images.require_image(name)
        except images.ImageError as exc:
            problems[name] = str(exc)
    if not problems:
        return
    if not build:
        for why in problems.values():
            click.echo(f"Error: {why}", err=True)
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    for why in problems.values():
        click.echo(f"{why.split(';')[0]}: building it now", err=True)
    try:
        images.build(list(problems), log=lambda line: click.echo(f"  {line}", err=True))
    except images.ImageError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(ExitCode.ENVIRONMENT_ERROR)


def _external_checks(
    peers: tuple[str, ...],
    topology: str | None,
    target: str | None,
    peer_file: str | None,
    workers: int,
) -> str:
    """Validate the options of an external device (usage errors, exit 2; an environment
    that cannot reach it: exit 3) and return the topology to use."""
    if "external" not in peers:
        if topology == "host":
            raise click.UsageError("--topology host is for --peer external (a device elsewhere)")
        for name, value in (("--target", target), ("--peer-file", peer_file)):
            if value:
                raise click.UsageError(f"{name} is for --peer external")
        return topology or "local"
    if len(peers) > 1:
        raise click.UsageError("--peer external runs alone (its tester is this host)")
    if topology not in (None, "host"):
        raise click.UsageError(
            f"--peer external runs on --topology host (the device is not in a {topology} topology)"
        )
    if not peer_file:
        raise click.UsageError(
            "--peer external needs --peer-file FILE: the device's declaration (identity, "
            "PSK variable, subnets, proposals, features; see docs/external-device.md)"
        )
    if workers > 1:
        raise click.UsageError("--peer external runs with one job (one tester on UDP 500/4500)")
    from harness.peers.external import DeclarationError, DeviceDeclaration
    from harness.topology.base import TopologyError
    from harness.topology.host import HostTopology, check_udp_free, route_to

    try:
        device = DeviceDeclaration.load(Path(peer_file), address=target)
    except DeclarationError as exc:
        raise click.UsageError(str(exc)) from None
    ports = (device.tester.ike_port, device.tester.natt_port)
    ok, why = HostTopology.available_for(*ports)
    problem = None if ok else why
    if problem is None:
        try:
            _dev, src = route_to(device.address)
            for port in ports:
                check_udp_free(device.tester.address or src, port)
        except TopologyError as exc:
            problem = str(exc)
    if problem is not None:
        click.echo(f"Error: the device at {device.address}: {problem}", err=True)
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    return "host"


def _workers(jobs: str) -> int:
    if jobs == "auto":
        return max(1, min(os.cpu_count() or 1, 4))
    try:
        value = int(jobs)
    except ValueError:
        raise click.BadParameter(
            f"{jobs!r} is not a number or 'auto'", param_hint="--jobs"
        ) from None
    if value < 1:
        raise click.BadParameter("must be at least 1", param_hint="--jobs")
    return value


def _finish(status: int, reports: Path, baseline: str | None) -> int:
    """Print the summary and work out the exit code from the results (not from pytest)."""
    import pytest
    from rich.console import Console

    from harness.report import CaseResult, RunResults, run_exit_code
    from harness.report.summary import summary_tables

    console = Console()
    results_file = reports / "results.json"
    if status == pytest.ExitCode.INTERRUPTED:
        done = ""
        if results_file.exists():
            n = len(RunResults.load(results_file).results)
            done = f"; the reports hold the {n} results that finished: {reports / 'index.html'}"
        console.print(f"[red]run interrupted[/red]{done}")
        return ExitCode.ENVIRONMENT_ERROR
    if status == pytest.ExitCode.USAGE_ERROR:
        return ExitCode.USAGE_ERROR
    if not results_file.exists():
        console.print(f"[red]no results were written ({results_file}); pytest exit {status}[/red]")
        return ExitCode.ENVIRONMENT_ERROR
    results = RunResults.load(results_file)
    for table in summary_tables(results):
        console.print(table)
    problems = [r for r in results.results if r.verdict.value in ("fail", "error")]
    # One line per reason: a peer that cannot start fails every case the same way.
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in problems:
        groups.setdefault((r.verdict.value, r.reason or ""), []).append(r)
    for (verdict, reason), group in list(groups.items())[:50]:
        head = f"[red]{verdict.upper()}[/red]"
        if len(group) == 1:
            r = group[0]
            console.print(f"{head} {r.case} {r.peer} {r.role.value}: {reason}")
            if r.rerun:
                console.print(f"    rerun: {r.rerun}", style="dim")
            continue
        names = ", ".join(f"{r.case} {r.peer} {r.role.value}" for r in group[:6])
        more = f" and {len(group) - 6} more" if len(group) > 6 else ""
        console.print(f"{head} {len(group)} results ({names}{more}): {reason}")
    if len(groups) > 50:
        console.print(f"... and {len(groups) - 50} more reasons in the report")
    if baseline:
        from harness.report.baseline import compare, exit_code, load
        from harness.report.summary import deviations_table

        comparison = compare(results, load(Path(baseline)))
        console.print(deviations_table(comparison))
        code = exit_code(comparison)
    else:
        code = run_exit_code(results)
    console.print(f"reports: {reports / 'index.html'}  ({results_file})")
    if not results.results:
        return ExitCode.NOTHING_SELECTED
    return int(code)
