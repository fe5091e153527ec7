"""Fixtures for live peer tests: a netns pair per test, and nothing left behind."""

from __future__ import annotations

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


@pytest.fixture
def pair(tmp_path: Path, no_leftovers: None) -> Iterator[Topology]:
    """Two namespaces on a direct link; logs and pcaps kept in the test's tmp_path."""
    with open_topology("netns", TopologySpec.pair(), artifacts=tmp_path) as topo:
        yield topo
