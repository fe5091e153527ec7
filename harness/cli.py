"""The ``ipsec-interop`` command."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness import __version__
from harness.exitcodes import EXIT_CODES_HELP, ExitCode

EPILOG = "\b\nExit codes:\n" + EXIT_CODES_HELP

console = Console()
err_console = Console(stderr=True)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
def cli() -> None:
    """IPsec interop and conformance harness.

    Runs conformance suites (IKEv2, IKEv1, ESP, AH, policy fallback when UDP 500 is
    closed) against our reference implementation and third-party peers (strongSwan,
    libreswan, a device at an address), and writes conformance reports.
    """


@cli.command(epilog=EPILOG)
def version() -> None:
    """Print the harness version."""
    click.echo(f"ipsec-interop {__version__}")


@cli.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def doctor(as_json: bool) -> None:
    """Probe what this machine offers and what each missing piece disables.

    Probes are tried, not guessed: a scratch network namespace is created (and removed)
    to test veth, nftables and kernel XFRM with ESP and AH. Always exits 0.
    """
    from harness.doctor import run_probes

    results = run_probes()
    if as_json:
        _print_json({"version": __version__, "probes": [r.to_json() for r in results]})
        return
    table = Table(title=f"ipsec-interop {__version__}: what this machine offers")
    table.add_column("piece")
    table.add_column("")
    table.add_column("detail")
    table.add_column("missing, it disables", style="dim")
    for r in results:
        mark = "[green]yes[/green]" if r.available else "[red]no[/red]"
        table.add_row(r.name, mark, r.detail, "" if r.available else r.disables)
    console.print(table)


@cli.command(epilog=EPILOG)
@click.option("--suite", "suites", multiple=True, help="Only this suite (repeatable).")
@click.option(
    "--level",
    "levels",
    multiple=True,
    type=click.Choice(["MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY"], case_sensitive=False),
    help="Only this requirement level (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the cases as JSON.")
def cases(suites: tuple[str, ...], levels: tuple[str, ...], as_json: bool) -> None:
    """List the conformance cases the suites contain (read from the suites themselves)."""
    from harness.cases import load_suites

    found = load_suites()
    known_suites = sorted({c.suite for c in found})
    unknown = [s for s in suites if s not in known_suites]
    if unknown and found:
        raise click.UsageError(
            f"unknown suite {', '.join(unknown)}; suites are: {', '.join(known_suites)}"
        )
    wanted_levels = {lv.upper() for lv in levels}
    selected = [
        c
        for c in found
        if (not suites or c.suite in suites) and (not levels or c.level.value in wanted_levels)
    ]
    if as_json:
        _print_json({"cases": [c.to_json() for c in selected]})
    elif not found:
        err_console.print("No conformance cases yet: the suites contain none.")
        return
    else:
        table = Table(title=f"{len(selected)} of {len(found)} conformance cases")
        for col in ("ID", "suite", "RFC §", "level", "roles", "requirement"):
            table.add_column(col)
        for c in selected:
            roles = ",".join(r.value for r in c.roles)
            table.add_row(c.id, c.suite, c.rfc, c.level.value, roles, c.title)
        console.print(table)
    if found and not selected:
        sys.exit(ExitCode.NOTHING_SELECTED)


def _register_commands() -> None:
    import importlib
    import pkgutil

    from harness import commands

    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"harness.commands.{module.name}")
        mod.register(cli)


_register_commands()


def main() -> None:
    """Entry point: run the CLI, turning unexpected errors into exit code 3 with a message."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE_ERROR)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(ExitCode.ENVIRONMENT_ERROR)


if __name__ == "__main__":
    main()
