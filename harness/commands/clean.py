"""``ipsec-interop clean``: remove what killed runs left behind."""

from __future__ import annotations

import json

import click


def register(cli: click.Group) -> None:
    cli.add_command(clean)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def clean(as_json: bool) -> None:
    """Sweep resources of runs that are no longer alive.

    Every network namespace, container, network, process and temporary directory a run
    creates carries its run label; a run that ended normally removed them itself, one that
    was killed left them. This removes those of dead runs (and of dead doctor probes) and
    leaves live runs alone, and the step containers and untagged images of an image build
    that was interrupted (unless a build is running). Exits 0, or 1 if something could not
    be removed.
    """
    from harness.topology import sweep

    report = sweep()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        if not report.count and not report.errors:
            click.echo("nothing to clean")
        for kind, names in report.removed.items():
            click.echo(f"removed {len(names)} {kind}:")
            for name in names:
                click.echo(f"  {name}")
        for error in report.errors:
            click.echo(f"could not remove: {error}", err=True)
    if report.errors:
        raise SystemExit(1)
