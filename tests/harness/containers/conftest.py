"""Fixtures of the container tests: the images, built once per session (cached by the engine;
parallel workers wait for each other's build), and a check that a test leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from harness import images
from harness.topology.run import DOCKER_LABEL, current_run


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=300)
    yield client
    client.close()


@pytest.fixture(scope="session")
def built_images(docker_client: Any) -> dict[str, str]:
    """Image name -> tag of the three images, built (or found cached) for this session."""
    results = images.build(images.IMAGE_NAMES, log=lambda line: print(line, flush=True))
    return {r.name: r.tag for r in results}


@pytest.fixture
def docker_build_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuild (cached) an image the working tree made stale since the session's build: other
    people may edit the sources while the tests run."""
    monkeypatch.setenv("IPSEC_INTEROP_DOCKER_BUILD", "1")


@pytest.fixture
def no_leftovers(docker_client: Any) -> Iterator[None]:
    """After the test: no container or network of this run remains."""
    yield
    run_filter = {"label": f"{DOCKER_LABEL}={current_run().id}"}
    containers = [c.name for c in docker_client.containers.list(all=True, filters=run_filter)]
    networks = [n.name for n in docker_client.networks.list(filters=run_filter)]
    assert containers == [], f"containers left behind: {containers}"
    assert networks == [], f"networks left behind: {networks}"


def free_subnet(client: Any) -> str:
    """A /24 of 198.18.64.0-198.18.255.0 that no network of the engine uses."""
    import ipaddress

    used = []
    for net in client.networks.list():
        for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
            if "Subnet" in pool:
                used.append(ipaddress.ip_network(pool["Subnet"], strict=False))
    for third in range(255, 63, -1):
        candidate = ipaddress.ip_network(f"198.18.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise RuntimeError("no free subnet")


def in_ci() -> bool:
    return os.environ.get("CI", "") == "true"
