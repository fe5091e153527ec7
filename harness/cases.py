"""The registry of conformance cases, filled by the suites themselves.

A suite module declares each case with :func:`case`, which both registers its metadata here
and marks the pytest test (``case``, ``suite`` markers). ``ipsec-interop cases`` and the reports
read this registry; there is no second copy of the catalogue anywhere.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])


class Level(StrEnum):
    """RFC 2119 requirement level of the requirement a case tests."""

    MUST = "MUST"
    MUST_NOT = "MUST NOT"
    SHOULD = "SHOULD"
    SHOULD_NOT = "SHOULD NOT"
    MAY = "MAY"

    @property
    def is_mandatory(self) -> bool:
        return self in (Level.MUST, Level.MUST_NOT)


class Role(StrEnum):
    """Role of the peer under test."""

    INITIATOR = "I"
    RESPONDER = "R"


@dataclass(frozen=True)
class CaseInfo:
    """Metadata of one conformance case (catalogue ID, RFC section, level, roles)."""

    id: str
    suite: str
    rfc: str
    """RFC and section, as the catalogue writes it: ``"4303 §3.4.3"``."""
    level: Level
    roles: tuple[Role, ...]
    title: str
    needs: tuple[str, ...] = field(default=())
    """Capabilities the peer under test must declare (see the peers' capability manifests)."""

    @property
    def rfc_number(self) -> str:
        return self.rfc.split()[0]

    @property
    def section(self) -> str:
        parts = self.rfc.split(maxsplit=1)
        return parts[1] if len(parts) > 1 else ""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "suite": self.suite,
            "rfc": self.rfc,
            "level": self.level.value,
            "roles": [r.value for r in self.roles],
            "title": self.title,
            "needs": list(self.needs),
        }


REGISTRY: dict[str, CaseInfo] = {}


def case(
    case_id: str,
    *,
    suite: str,
    rfc: str,
    level: Level | str,
    roles: str = "IR",
    title: str,
    needs: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Declare a conformance case: register it and mark the pytest test."""
    info = CaseInfo(
        id=case_id,
        suite=suite,
        rfc=rfc,
        level=Level(level),
        roles=tuple(Role(r) for r in roles),
        title=title,
        needs=needs,
    )
    existing = REGISTRY.get(case_id)
    if existing is not None and existing != info:
        raise ValueError(f"case {case_id} declared twice with different metadata")
    REGISTRY[case_id] = info

    def mark(func: F) -> F:
        func = pytest.mark.case(case_id)(func)
        func = pytest.mark.suite(suite)(func)
        return func

    return mark


def suites_package() -> str:
    """The package holding the suites: ``suites``, or ``$IPSEC_INTEROP_SUITES`` (a custom
    suites package on ``sys.path``, e.g. a vendor's own cases written with :func:`case`)."""
    return os.environ.get("IPSEC_INTEROP_SUITES", "suites")


def load_suites(package: str | None = None) -> list[CaseInfo]:
    """Import every suite module so its cases register; return them sorted by suite and ID."""
    package = package or suites_package()
    pkg = importlib.import_module(package)
    for module in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        if module.name.rsplit(".", 1)[-1].startswith("test_"):
            importlib.import_module(module.name)
    return sorted(REGISTRY.values(), key=lambda c: (c.suite, c.id))


def case_selected(info: CaseInfo, cases: list[str], suites: set[str]) -> bool:
    """Whether a case is in the selection (IDs or globs, suites); empty selects everything."""
    import fnmatch

    if suites and info.suite not in suites:
        return False
    return not cases or any(fnmatch.fnmatchcase(info.id, pattern.upper()) for pattern in cases)
