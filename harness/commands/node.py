"""``ipsec-interop node``: run a reference IPsec node (also ``python -m reference_impl.node``)."""

from __future__ import annotations

import sys

import click


def register(cli: click.Group) -> None:
    cli.add_command(node)


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Node configuration (YAML): addresses, ports, policy, credentials, data plane, "
    "logging, control socket.",
)
@click.option("--check", is_flag=True, help="Validate the configuration and policy, then exit.")
def node(config_path: str, check: bool) -> None:
    """Run a reference IPsec node: the policy agent, the ESP/AH driver and IKEv2/IKEv1 on real
    sockets, with a TUN device (``tun`` data plane, root) or without (``api``: the harness
    injects and collects packets through the control API).

    Exit codes: 0 stopped (SIGTERM/SIGINT, Deletes sent), 2 invalid configuration or policy
    (nothing was bound), 3 the environment refused (a port in use, no TUN, no privilege).
    """
    from reference_impl.node.runtime import run_node

    sys.exit(run_node(config_path, check=check))
