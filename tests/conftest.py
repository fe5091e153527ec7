"""Shared fixtures and the skip rules for tests that need root or Docker."""

from __future__ import annotations

import os

import pytest


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    docker_ok: bool | None = None
    for item in items:
        if "needs_root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root (namespaces, TUN, nftables)"))
        if "needs_docker" in item.keywords:
            if docker_ok is None:
                docker_ok = _docker_reachable()
            if not docker_ok:
                item.add_marker(pytest.mark.skip(reason="needs a reachable Docker engine"))
