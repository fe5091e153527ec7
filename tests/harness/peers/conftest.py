"""Fixtures for live peer tests: a netns pair per test, and nothing left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.topology import Topology, TopologySpec, open_topology
from tests.harness.topology.leftovers import leftovers


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Assert, after the test, that nothing labelled with this process's run remains."""
    yield
    assert leftovers() == {}


BACKEND = os.environ.get("IPSEC_INTEROP_TOPOLOGY", "netns")
"""Backend of the live peer tests: ``IPSEC_INTEROP_TOPOLOGY=docker`` runs them on containers."""


@pytest.fixture
def pair(tmp_path: Path, no_leftovers: None) -> Iterator[Topology]:
    """Two nodes on a direct link (netns unless IPSEC_INTEROP_TOPOLOGY says otherwise); logs
    and pcaps kept in the test's tmp_path."""
    with open_topology(BACKEND, TopologySpec.pair(), artifacts=tmp_path) as topo:
        yield topo
