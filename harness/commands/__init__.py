"""Subcommands of ``ipsec-interop`` beyond doctor/cases/version, one module each.

Each module defines ``register(cli: click.Group) -> None`` that adds its command or group.
``harness.cli`` imports every module here, so a new command is a new file, not an edit of the
CLI module. Keep module-level imports light (import heavy things inside the command).
"""
