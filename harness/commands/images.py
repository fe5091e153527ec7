"""``ipsec-interop images``: build and list the container images (see :mod:`harness.images`)."""

from __future__ import annotations

import json
import sys
import time

import click

from harness.exitcodes import ExitCode


@click.group()
def images() -> None:
    """The container images: reference node, strongSwan and libreswan.

    Built from containers/ in this checkout. When debian:bookworm-slim cannot be pulled (no
    registry reachable), the base image is created locally with debootstrap (root, about
    40 s). The Docker topology refuses images older than the working tree.
    """


@images.command("build")
@click.argument("names", nargs=-1)
@click.option("--base", help="Base image (default debian:bookworm-slim, else bootstrapped).")
@click.option("--pull", is_flag=True, help="Try pulling debian:bookworm-slim before a local base.")
@click.option("-v", "--verbose", is_flag=True, help="Show docker build's output.")
@click.option("--no-cache", is_flag=True, help="Build every layer again (as on a fresh machine).")
def build_cmd(
    names: tuple[str, ...], base: str | None, pull: bool, verbose: bool, no_cache: bool
) -> None:
    """Build the images (all three by default); an unchanged rebuild takes seconds."""
    from harness import images as img

    unknown = [n for n in names if n not in img.SPECS]
    if unknown:
        raise click.UsageError(
            f"unknown image {', '.join(unknown)}; images are {', '.join(img.IMAGE_NAMES)}"
        )
    start = time.monotonic()
    try:
        img.build(
            names or img.IMAGE_NAMES,
            base=base,
            pull=pull,
            verbose=verbose,
            no_cache=no_cache,
            log=click.echo,
        )
    except img.ImageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    click.echo(f"done in {time.monotonic() - start:.1f} s")


@images.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the images as JSON.")
def list_cmd(as_json: bool) -> None:
    """The images, their versions, and whether they match the working tree."""
    from rich.console import Console
    from rich.table import Table

    from harness import images as img

    try:
        states = img.list_images()
    except img.ImageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.ENVIRONMENT_ERROR)
    if as_json:
        click.echo(json.dumps({"images": [s.to_json() for s in states]}, indent=2))
        return
    table = Table(title="ipsec-interop images")
    for col in ("image", "id", "peer version", "size", "status"):
        table.add_column(col)
    for s in states:
        data = s.to_json()
        status = s.status
        if status == "current":
            status = "[green]current[/green]"
        elif status == "missing":
            status = "[red]missing[/red]"
        else:
            status = "[yellow]stale[/yellow]"
        size = f"{s.size_mb:.0f} MB" if s.present else ""
        table.add_row(s.tag, s.image_id, str(data["peer_version"] or ""), size, status)
    Console().print(table)
    for s in states:
        if s.status.startswith("stale"):
            click.echo(f"{s.tag}: {s.status}")
    if any(s.status != "current" for s in states):
        click.echo("Build or rebuild with: ipsec-interop images build")


def register(cli: click.Group) -> None:
    cli.add_command(images)
