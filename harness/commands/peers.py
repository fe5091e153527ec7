"""``ipsec-interop peers``: the peers this host can run, with their capability manifests."""

from __future__ import annotations

import json

import click


def register(cli: click.Group) -> None:
    cli.add_command(peers)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the peers as JSON.")
def peers(as_json: bool) -> None:
    """List the peer adapters, whether each can run here, and what each can do.

    A case needing a capability a peer lacks is reported "not applicable" with the reason
    shown here. Always exits 0.
    """
    from rich.console import Console
    from rich.table import Table

    from harness.peers.base import ALL_FEATURES
    from harness.peers.registry import describe_peers

    reports = describe_peers()
    if as_json:
        click.echo(json.dumps({"peers": [r.to_json() for r in reports]}, indent=2))
        return
    console = Console()
    table = Table(title="peers on this host")
    table.add_column("peer")
    table.add_column("")
    table.add_column("detail")
    table.add_column("can")
    table.add_column("cannot (why)", style="dim")
    for r in reports:
        mark = "[green]yes[/green]" if r.availability.available else "[red]no[/red]"
        can = cannot = ""
        if r.capabilities is not None:
            caps = r.capabilities
            can = ", ".join(f for f in ALL_FEATURES if caps.has(f))
            by_reason: dict[str, list[str]] = {}
            for f in ALL_FEATURES:
                if not caps.has(f):
                    by_reason.setdefault(caps.reason(f), []).append(f)
            cannot = "\n".join(f"{', '.join(fs)}: {why}" for why, fs in by_reason.items())
        table.add_row(r.kind, mark, r.availability.detail, can, cannot)
    console.print(table)
