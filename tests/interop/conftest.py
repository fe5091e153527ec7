"""Fixtures of the live interop tests (issue 9, "Proof: the first live interop").

One topology per test module and backend (two nodes on a direct link: ``a`` runs the reference
node, ``b`` the third-party peer), the peers started once per module and reconfigured by each
case; each case gets a :class:`~tests.interop.live.Live` with its own capture. A case that
fails leaves both daemons restarted for the next one (no SA of a failed case can leak into
it), and at the end of the module nothing of the run may remain: no namespace, process, nft
table, scratch directory, container or Docker network.

Backends: ``netns`` (root) and ``docker`` (root and a Docker engine; the images are built or
rebuilt, cached, when the working tree made them stale).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from harness.peers.libreswan import LibreswanPeer
from harness.peers.pki import Pki, make_pki
from harness.peers.reference import ReferencePeer
from harness.peers.strongswan import StrongSwanPeer
from harness.topology import Topology, TopologySpec, open_topology
from harness.topology.run import DOCKER_LABEL, current_run
from tests.harness.topology.leftovers import leftovers
from tests.interop.live import Live, safe_name

BACKENDS = [
    pytest.param("netns", id="netns"),
    pytest.param("docker", id="docker", marks=[pytest.mark.needs_docker, pytest.mark.slow]),
]
_only = os.environ.get("IPSEC_INTEROP_INTEROP_BACKENDS", "netns,docker")
"""Comma-separated backends to run (both by default; docker skips without an engine)."""
BACKENDS = [p for p in BACKENDS if p.values[0] in _only.split(",")]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's outcome on the item (the ``live`` fixture restarts the peers
    after a failed case)."""
    report = yield
    setattr(item, f"interop_{report.when}", report)
    return report


def docker_leftovers() -> list[str]:
    """Containers and networks of this run still in the engine."""
    import docker

    client = docker.from_env(timeout=30)
    try:
        run_filter = {"label": f"{DOCKER_LABEL}={current_run().id}"}
        found = [
            f"container {c.name}" for c in client.containers.list(all=True, filters=run_filter)
        ]
        found += [f"network {n.name}" for n in client.networks.list(filters=run_filter)]
    finally:
        client.close()
    return found


@pytest.fixture(scope="module", params=BACKENDS)
def topo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Topology]:
    """Nodes ``a`` and ``b`` on a direct link, for the whole module; afterwards nothing of
    the run is left."""
    backend: str = request.param
    module = safe_name(request.module.__name__.rsplit(".", 1)[-1])
    artifacts = tmp_path_factory.mktemp(f"{module}-{backend}")
    with pytest.MonkeyPatch.context() as mp:
        if backend == "docker":
            # other people edit the tree while tests run: rebuild a stale image (cached)
            mp.setenv("IPSEC_INTEROP_DOCKER_BUILD", "1")
        with open_topology(backend, TopologySpec.pair(), artifacts=artifacts) as t:
            yield t
    assert leftovers() == {}, "the module left resources of its run behind"
    if backend == "docker":
        assert docker_leftovers() == []


@pytest.fixture(scope="module")
def ref(topo: Topology) -> Iterator[ReferencePeer]:
    """Our node on ``a`` (tun data plane: real kernel traffic), started by its first
    ``configure``."""
    peer = ReferencePeer(topo.node("a"))
    try:
        yield peer
    finally:
        peer.stop()


_Started = TypeVar("_Started", StrongSwanPeer, LibreswanPeer)


def _started(cls: type[_Started], topo: Topology) -> Iterator[_Started]:
    """The peer ``cls`` started on ``b`` (skips when it cannot run here), stopped afterwards."""
    avail = cls.availability()
    if not avail.available:
        pytest.skip(avail.detail)
    peer = cls(topo.node("b"))
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def strongswan(topo: Topology) -> Iterator[StrongSwanPeer]:
    yield from _started(StrongSwanPeer, topo)


@pytest.fixture(scope="module")
def libreswan(topo: Topology) -> Iterator[LibreswanPeer]:
    yield from _started(LibreswanPeer, topo)


@pytest.fixture(scope="module")
def pkis(topo: Topology) -> Callable[[str], Pki]:
    """``pkis("rsa")`` / ``pkis("ecdsa")``: a CA and certificates for both nodes' addresses,
    made once per module, in the artifacts folder (the nodes see it at the same path: the
    docker backend bind-mounts it)."""
    made: dict[str, Pki] = {}
    a, b = topo.node("a"), topo.node("b")
    assert topo.artifacts is not None

    def get(kind: str) -> Pki:
        if kind not in made:
            folder: Path = topo.artifacts / f"pki-{kind}"  # type: ignore[operator]
            made[kind] = make_pki(folder, [a.addresses.v4, b.addresses.v4], kind)  # type: ignore[arg-type]
        return made[kind]

    return get


@pytest.fixture
def live(
    request: pytest.FixtureRequest, topo: Topology, ref: ReferencePeer, peer: StrongSwanPeer
) -> Iterator[Live]:
    """One case (``peer`` is the module's third-party peer fixture). After it, both ends hold
    no SA; after a failure both daemons are stopped (the next case starts them afresh)."""
    name = safe_name(request.node.name)
    assert topo.artifacts is not None
    case = Live(topo, ref, peer, name, topo.artifacts / name)
    yield case
    case.abort()
    call = getattr(request.node, "interop_call", None)
    clean = call is not None and call.passed
    if clean:
        try:
            case.close_sas()
        except Exception:
            clean = False
    if not clean:
        ref.stop()
        peer.stop()
