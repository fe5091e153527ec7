"""``ipsec-interop report``: render, merge, baseline, compare and validate results files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import click

from harness.exitcodes import ExitCode

if TYPE_CHECKING:
    from harness.report.model import RunResults

ALLURE_HOWTO = (
    "The Allure command line is not installed. It needs Java 8 or newer, then:\n"
    "  npm install -g allure-commandline\n"
    "(or download a release from the Allure project and put its bin/ on PATH).\n"
    "The Allure results are in {results}; the HTML matrix in reports/index.html needs nothing."
)


def _load(path: Path) -> RunResults:
    from harness.report.model import ResultsFileError, RunResults

    try:
        return RunResults.load(path)
    except ResultsFileError as exc:
        raise click.UsageError(str(exc)) from exc


def _echo_err(text: str) -> None:
    click.echo(text, err=True)


@click.group()
def report() -> None:
    """Conformance reports: HTML matrix, JUnit, Allure, baselines, merging CI jobs.

    Every command reads results files (results.json, one per run, schema in
    `ipsec-interop report schema`).
    """


@report.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into (default: the results file's directory).",
)
@click.option(
    "--allure",
    "allure_mode",
    type=click.Choice(["offline", "metadata", "none"]),
    default="offline",
    show_default=True,
    help="offline: Allure results from the model; metadata: only environment and categories "
    "(allure-pytest wrote the results); none.",
)
def render(results: Path, out: Path | None, allure_mode: str) -> None:
    """Write index.html, junit.xml and allure-results/ from RESULTS.

    Evidence paths are relative to the results file; with --out elsewhere, the HTML links
    to evidence only work if the evidence directory is copied along (use `report merge`
    with one file to copy it).
    """
    from harness.report.outputs import write_reports

    run = _load(results)
    target = out or results.parent
    same = target.resolve() == results.parent.resolve()
    mode = cast(Literal["offline", "metadata", "none"], allure_mode)
    written = write_reports(run, target, allure_mode=mode, write_results=not same)
    click.echo(f"matrix: {written.html}")
    click.echo(f"junit:  {written.junit}")
    if written.allure:
        click.echo(f"allure: {written.allure}")


@report.command("allure")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/allure-results"),
    show_default=True,
    help="The allure-results directory.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/allure-report"),
    show_default=True,
    help="Where to write the Allure HTML report.",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to allow Allure.")
def allure_cmd(results_dir: Path, out: Path, timeout: float) -> None:
    """Render the Allure HTML report with the Allure command line (if installed)."""
    from harness.system import run, which

    if not results_dir.is_dir() or not any(results_dir.glob("*-result.json")):
        raise click.UsageError(f"no Allure results in {results_dir} (run the suites first)")
    allure = which("allure")
    if allure is None:
        _echo_err(ALLURE_HOWTO.format(results=results_dir))
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    if which("java") is None:
        _echo_err("Allure needs Java 8 or newer on PATH (Debian: apt install default-jre-headless)")
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    done = run([allure, "generate", str(results_dir), "-o", str(out), "--clean"], timeout=timeout)
    if not done.ok:
        _echo_err(f"allure generate failed ({done.returncode}): {done.first_line()}")
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    click.echo(f"Allure report: {out / 'index.html'} (serve it: allure open {out})")


@report.command()
@click.option(
    "--from",
    "from_",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The results file whose verdicts become the expected results.",
)
@click.option("--peer", "peers", multiple=True, help="Only this peer (repeatable).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout."
)
def baseline(from_: Path, peers: tuple[str, ...], output: Path | None) -> None:
    """Write the verdicts of a run as expected results (expected.yaml) for `run --baseline`."""
    from harness.report import baseline as bl

    run = _load(from_)
    known = {r.peer for r in run.results}
    unknown = [p for p in peers if p not in known]
    if unknown:
        raise click.UsageError(
            f"no results for peer {', '.join(unknown)}; the run has: {', '.join(sorted(known))}"
        )
    text = bl.dump(run, peers or None)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        _echo_err(f"baseline written to {output}")


@report.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    "baseline_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--json", "as_json", is_flag=True, help="Print the deviations as JSON.")
def compare(results: Path, baseline_path: Path, as_json: bool) -> None:
    """Compare a run with a baseline; the exit code comes from the deviations only."""
    from rich.console import Console

    from harness.report import baseline as bl
    from harness.report.summary import deviations_table

    run = _load(results)
    try:
        expected = bl.load(baseline_path)
    except bl.BaselineError as exc:
        raise click.UsageError(str(exc)) from exc
    comparison = bl.compare(run, expected)
    code = bl.exit_code(comparison)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "matched": comparison.matched,
                    "errors": comparison.errors,
                    "exit_code": int(code),
                    "deviations": [
                        {
                            "kind": d.kind.value,
                            "case": d.case,
                            "peer": d.peer,
                            "role": d.role,
                            "expected": d.expected.value if d.expected else None,
                            "actual": d.actual.value if d.actual else None,
                            "reason": d.reason,
                        }
                        for d in comparison.deviations
                    ],
                },
                indent=2,
            )
        )
    else:
        console = Console()
        if comparison.deviations:
            console.print(deviations_table(comparison))
        console.print(
            f"{comparison.matched} as expected, {len(comparison.deviations)} deviations "
            f"({len(comparison.blocking)} new failures or new passes), "
            f"{comparison.errors} harness errors"
        )
    sys.exit(code)


@report.command()
@click.argument(
    "results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--on-conflict",
    type=click.Choice(["worst", "latest", "error"]),
    default="worst",
    show_default=True,
    help="Same case x peer x role in two runs: keep the worse verdict, the later one, or fail.",
)
@click.option(
    "--allure/--no-allure", default=True, show_default=True, help="Write allure-results too."
)
def merge(results: tuple[Path, ...], out: Path, on_conflict: str, allure: bool) -> None:
    """Combine runs from parallel CI jobs into one results.json, matrix, JUnit and Allure."""
    from harness.report.merge import MergeError, merge_files
    from harness.report.model import ResultsFileError
    from harness.report.outputs import write_reports

    try:
        policy = cast(Literal["worst", "latest", "error"], on_conflict)
        merged = merge_files(list(results), out, on_conflict=policy)
    except (MergeError, ResultsFileError) as exc:
        raise click.UsageError(str(exc)) from exc
    write_reports(merged, out, allure_mode="offline" if allure else "none", write_results=False)
    for note in merged.run.notes:
        _echo_err(f"note: {note}")
    click.echo(
        f"merged {len(results)} runs: {len(merged.results)} results, "
        f"{len(merged.peers_under_test())} peers -> {out / 'index.html'}"
    )


@report.command()
@click.argument(
    "results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def validate(results: tuple[Path, ...]) -> None:
    """Check results files against the schema and the model's consistency rules."""
    for path in results:
        run = _load(path)
        click.echo(
            f"{path}: valid, schema version {run.schema_version}, {len(run.results)} results"
        )


@report.command()
def schema() -> None:
    """Print the JSON Schema of results files."""
    from harness.report.model import json_schema

    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


@report.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def summary(results: Path) -> None:
    """Print the per-suite and per-level summary of a run; exit code as `run` would give."""
    from rich.console import Console

    from harness.report.baseline import run_exit_code
    from harness.report.summary import summary_tables

    run = _load(results)
    console = Console()
    for table in summary_tables(run):
        console.print(table)
    sys.exit(run_exit_code(run))


def register(cli: click.Group) -> None:
    cli.add_command(report)
