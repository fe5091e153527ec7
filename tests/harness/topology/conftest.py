"""Fixtures for topology tests: every test must leave nothing of its run behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.topology.leftovers import leftovers


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Assert, after the test, that nothing labelled with this process's run remains."""
    yield
    assert leftovers() == {}
