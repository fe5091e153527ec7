"""Topologies: where the nodes of a run live (``local``, ``netns``, ``docker``).

Use :func:`open_topology` with a backend name and a :class:`TopologySpec`; see
:mod:`harness.topology.base` for the interface and ``/work/notes/topology-api.md`` for the
contract backends follow.
"""

from __future__ import annotations

from harness.topology.base import (
    BACKENDS,
    Addresses,
    Capture,
    Link,
    Node,
    NodeProcess,
    NodeSpec,
    Topology,
    TopologyError,
    TopologySpec,
    Unsupported,
    backend_class,
    open_topology,
    wait_until,
)
from harness.topology.run import Run, SweepReport, current_run, sweep_processes, sweep_tempdirs

__all__ = [
    "BACKENDS",
    "Addresses",
    "Capture",
    "Link",
    "Node",
    "NodeProcess",
    "NodeSpec",
    "Run",
    "SweepReport",
    "Topology",
    "TopologyError",
    "TopologySpec",
    "Unsupported",
    "backend_class",
    "current_run",
    "open_topology",
    "sweep",
    "wait_until",
]


def sweep() -> SweepReport:
    """Remove everything left by dead runs: processes, then each backend's resources
    (namespaces, containers, networks), then temporary directories. Live runs are untouched."""
    report = SweepReport()
    sweep_processes(report)
    for name in BACKENDS:
        try:
            cls = backend_class(name)
        except Exception:  # a backend not built yet, or whose SDK is missing
            continue
        try:
            ok, _ = cls.available()
        except Exception:
            ok = False
        if not ok:
            continue
        try:
            cls.sweep(report)
        except Exception as exc:
            report.errors.append(f"{name}: {exc}")
    sweep_tempdirs(report)
    return report
