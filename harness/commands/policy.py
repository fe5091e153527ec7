"""``ipsec-interop policy check FILE.yaml``: validate a policy and print its compiled SPD.

The SPD is printed in evaluation order (policy-spec §2.2): step-0 IKE bypass, outbound
entries, the outbound default, inbound entries, the inbound default; then the PAD. An invalid
policy prints every problem with file, line and field, and exits 2.
"""

from __future__ import annotations

import json
import sys

import click

DEFAULT_ME = ("192.0.2.1",)


def register(cli: click.Group) -> None:
    cli.add_command(policy)


@click.group()
def policy() -> None:
    """Policies of the reference policy agent (YAML, policy-spec §1)."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--me",
    "me",
    multiple=True,
    metavar="ADDR",
    help="A local address of the node the policy is for (repeatable); resolves 'me' and "
    f"tells which side of a tunnel rule is ours. Default: {', '.join(DEFAULT_ME)}.",
)
@click.option(
    "--dynamic",
    "dynamic",
    multiple=True,
    metavar="NAME=ADDR[,ADDR]",
    help="Addresses of a dynamic list (dns_servers, wins_servers, dhcp, default_gateway).",
)
def check(file: str, as_json: bool, me: tuple[str, ...], dynamic: tuple[str, ...]) -> None:
    """Validate FILE and print the compiled SPD as a table in evaluation order.

    Exit code 0 when the policy is valid, 2 when it is not (every problem is listed with
    its file, line and field).
    """
    import ipaddress

    from harness.exitcodes import ExitCode
    from reference_impl.policy import (
        CompileEnv,
        PolicyValidationError,
        compile_policy,
        load_policy_file,
    )

    local = me or DEFAULT_ME
    for addr in local:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise click.BadParameter(f"{addr!r} is not an IP address", param_hint="--me") from None
    dyn: dict[str, tuple[str, ...]] = {}
    for item in dynamic:
        name, sep, values = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: write NAME=ADDR[,ADDR]", param_hint="--dynamic")
        dyn[name.strip()] = tuple(v.strip() for v in values.split(",") if v.strip())
    try:
        compiled = compile_policy(
            load_policy_file(file),
            CompileEnv(local_addresses=local, dynamic=dyn, resolve_dns=_resolve),
        )
    except PolicyValidationError as exc:
        if as_json:
            click.echo(
                json.dumps(
                    {"file": file, "valid": False, "issues": [i.to_json() for i in exc.issues]},
                    indent=2,
                )
            )
        else:
            click.echo(f"{file}: policy rejected ({len(exc.issues)} problem(s)):", err=True)
            for issue in exc.issues:
                click.echo(f"  {issue}", err=True)
        sys.exit(ExitCode.USAGE_ERROR)
    if as_json:
        click.echo(json.dumps({"file": file, "valid": True, **compiled.to_json()}, indent=2))
        return
    _print_table(compiled, file, bool(me))


def _resolve(name: str) -> list[str]:
    import socket

    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_UDP)
    return sorted({str(info[4][0]) for info in infos})


def _print_table(compiled: object, file: str, me_given: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from reference_impl.policy import CompiledPolicy

    assert isinstance(compiled, CompiledPolicy)
    # Piped output (CI logs) gets a wide fixed width instead of rich's 80-column fallback.
    console = Console(width=None if sys.stdout.isatty() else 200)
    pol = compiled.policy
    me = ", ".join(compiled.local_addresses)
    console.print(
        f"[bold]{pol.name}[/bold] ({file}): valid. ordering {compiled.spd.ordering}, "
        f"profile {pol.profile.name}, IKEv{pol.ike.version}, default {pol.default_action.value}; "
        f"me = {me}" + ("" if me_given else " (default; pass --me ADDR)")
    )
    table = Table(title="SPD in evaluation order")
    for col in ("#", "dir", "local", "l-port", "remote", "r-port", "proto", "action", "rule"):
        table.add_column(col)
    for e in compiled.spd.entries():
        d = e.to_json()
        table.add_row(
            str(e.position),
            e.direction.value,
            str(d["local"]),
            str(d["local_ports"]),
            str(d["remote"]),
            str(d["remote_ports"]),
            "any" if e.proto == 0 else str(e.proto),
            escape(e.describe_action()),
            escape(e.rule_name),
        )
    console.print(table)
    pad = Table(title="PAD")
    for col in ("peer", "auth methods", "rule", "note"):
        pad.add_column(col)
    for p in compiled.pad.entries:
        pad.add_row(
            ", ".join(str(r) for r in p.remote),
            f"{p.auth_set}: " + ", ".join(m.kind for m in p.auth_methods),
            escape(p.rule),
            "responder only"
            if p.responder_only
            else (f"tunnel {p.tunnel_peer}" if p.tunnel_peer else ""),
        )
    console.print(pad)
    for w in compiled.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
