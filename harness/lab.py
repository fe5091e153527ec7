"""The lab a conformance run works in: one topology per worker, the peer under test, and the
reference node that plays the other side (the "tester").

Topologies and peers are expensive to start, so a :class:`Lab` starts them on first use and
keeps them for the whole pytest session of one worker; each case reconfigures them through
its :class:`CaseContext`. With pytest-xdist every worker has its own lab and so its own
isolated topology (run labels keep their resource names apart).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cases import CaseInfo, Role

if TYPE_CHECKING:
    from harness.peers.base import Peer, Scenario
    from harness.peers.external import DeviceDeclaration
    from harness.report import CaseRecording, PeerInfo
    from harness.topology.base import Topology

LOG_EVIDENCE_LIMIT = 200_000
"""At most this many octets of a peer's log are attached to one case (the end of it)."""

PUT_NODE = "put"
TESTER_NODE = "tester"
TESTER_NAME = "tester"
"""Column name of the reference node playing the other side in the report."""

NEEDS_NODE = {
    "strongswan": "needs --topology netns or docker (charon runs in a namespace)",
    "libreswan": "needs --topology netns or docker (pluto runs in a namespace)",
}


@dataclass(frozen=True)
class LabOptions:
    peers: tuple[str, ...] = ("reference",)
    roles: tuple[str, ...] = ()
    topology: str = "local"
    target: str | None = None
    peer_file: str | None = None
    strict: bool = False
    reports: Path = Path("reports")
    rerun: str = "ipsec-interop run"
    misbehaviours: tuple[str, ...] = ()
    """``NAME`` or ``NAME=VALUE``: deliberate misbehaviours switched on in a reference peer
    under test (for the suites' sensitivity checks; see ``reference_impl/node/host.py``)."""

    def misbehaviour_values(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for item in self.misbehaviours:
            name, sep, value = item.partition("=")
            if not sep:
                out.append((name, True))
            elif value.isdigit():
                out.append((name, int(value)))
            else:
                out.append((name, value))
        return out


IMPLEMENTATIONS = {
    "reference": "reference",  # the recorder keys the export-keys default on this name
    "strongswan": "strongSwan",
    "libreswan": "libreswan",
    "external": "external device",
}


def peer_infos(options: LabOptions) -> list[PeerInfo]:
    """The report's peer list: each peer under test, then the tester."""
    from harness import __version__
    from harness.peers.registry import AdapterMissing, peer_class
    from harness.report import PeerInfo

    infos = []
    for kind in options.peers:
        version = None
        if kind == "reference":
            version = __version__
        else:
            try:
                avail = peer_class(kind).availability()
            except (AdapterMissing, ValueError):
                pass
            else:
                # "strongSwan 5.9.8, charon at ...", "Libreswan 4.10 at ...": the release.
                found = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", avail.detail)
                if avail.available and found:
                    version = found.group(1)
        infos.append(
            PeerInfo(
                name=kind,
                implementation=IMPLEMENTATIONS.get(kind, kind),
                version=version,
                under_test=True,
                address=_external_address(options) if kind == "external" else None,
            )
        )
    infos.append(
        PeerInfo(
            name=TESTER_NAME,
            implementation=IMPLEMENTATIONS["reference"],
            version=__version__,
            under_test=False,
        )
    )
    return infos


def _external_address(options: LabOptions) -> str | None:
    """The external device's address for the report: ``--target``, else the peer file's."""
    if options.target or not options.peer_file:
        return options.target
    try:
        import yaml

        data = yaml.safe_load(Path(options.peer_file).read_text())
        return str(data["address"])
    except Exception:
        return None


class Bench:
    """One peer under test and the tester on a topology of their own (nodes "put" and
    "tester"), started lazily. Peers under test of different kinds never share a node: each
    needs the standard IKE ports and its own data plane.

    ``external``: the PUT is a device the harness did not start (``ExternalPeer``, from the
    peer file); the tester runs on the ``host`` topology, where node "put" is only the
    device's address (``harness.peers.external``, ``harness.topology.host``)."""

    def __init__(self, lab: Lab, kind: str) -> None:
        self.lab = lab
        self.kind = kind
        self._topology: Topology | None = None
        self.peers: dict[str, Peer] = {}
        self._device: DeviceDeclaration | None = None

    @property
    def device(self) -> DeviceDeclaration:
        """The external device's declaration (``--peer-file``, ``--target``)."""
        if self._device is None:
            from harness.peers.base import NotApplicable
            from harness.peers.external import DeviceDeclaration

            opts = self.lab.options
            if not opts.peer_file:
                raise NotApplicable(["external: needs --peer-file (the device's declaration)"])
            self._device = DeviceDeclaration.load(Path(opts.peer_file), address=opts.target)
        return self._device

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            from harness.topology import TopologySpec, open_topology
            from harness.topology.run import Run

            spec = TopologySpec.pair(PUT_NODE, TESTER_NODE)
            artifacts = self.lab.options.reports / "lab" / self.kind
            # A run (label) per bench: resource names are label + node name, and every bench
            # has nodes "put" and "tester".
            run = Run()
            self.lab.stack.callback(run.close)
            if self.kind == "external":
                from harness.peers.external import device_topology

                topo: Topology = device_topology(self.device, spec, artifacts=artifacts, run=run)
            else:
                topo = open_topology(self.lab.options.topology, spec, artifacts=artifacts, run=run)
            self._topology = self.lab.stack.enter_context(topo)
        return self._topology

    @property
    def put(self) -> Peer:
        return self._peer(self.kind, PUT_NODE)

    @property
    def tester(self) -> Peer:
        return self._peer("reference", TESTER_NODE)

    def _peer(self, kind: str, node_name: str) -> Peer:
        """The started adapter of ``kind`` on ``node_name``."""
        peer = self.peers.get(node_name)
        if peer is None:
            from harness.peers.base import NotApplicable
            from harness.peers.registry import AdapterMissing, peer_class

            options = self.lab.options
            if kind in NEEDS_NODE and options.topology == "local":
                raise NotApplicable([f"{kind}: {NEEDS_NODE[kind]}"])
            try:
                cls = peer_class(kind)
            except AdapterMissing as exc:
                raise NotApplicable([str(exc)]) from None
            if options.topology != "docker":  # on docker the peer's image is its installation
                avail = cls.availability()
                if not avail.available:
                    raise NotApplicable([f"{kind}: {avail.detail}"])
            if kind == "external":
                from harness.peers.external import ExternalPeer

                peer = ExternalPeer(self.device)
            elif self.kind == "external":
                from harness.peers.external import tester_peer

                peer = tester_peer(self.topology.node(node_name), self.put)
            else:
                peer = cls(self.topology.node(node_name))
            peer.start()
            self.lab.stack.callback(peer.stop)
            if node_name == PUT_NODE and kind == "reference":
                for name, value in options.misbehaviour_values():
                    peer.impair(name, value)  # type: ignore[attr-defined]
            self.peers[node_name] = peer
        return peer


class Lab:
    """Per-worker benches (one per peer under test), started lazily, closed at the end."""

    def __init__(self, options: LabOptions) -> None:
        self.options = options
        self.stack = contextlib.ExitStack()
        self._benches: dict[str, Bench] = {}

    def bench(self, kind: str) -> Bench:
        bench = self._benches.get(kind)
        if bench is None:
            bench = self._benches[kind] = Bench(self, kind)
        return bench

    def context(self, info: CaseInfo, peer: str, role: Role, nodeid: str) -> CaseContext:
        return CaseContext(self, info, peer, role, nodeid)

    def close(self) -> None:
        self.stack.close()
        self._benches.clear()


@dataclass
class CaseContext:
    """What a case body works with: ``ctx.put`` (peer under test), ``ctx.tester`` (our
    reference node on the other side), the topology, the recording and evidence helpers."""

    lab: Lab
    info: CaseInfo
    peer_name: str
    role: Role
    nodeid: str
    parameters: dict[str, str] = field(default_factory=dict)
    recording: CaseRecording | None = None
    started: float = field(default_factory=time.monotonic)
    _logs_at_start: dict[Path, int] = field(default_factory=dict)

    # -- the parts -------------------------------------------------------------------------

    @property
    def bench(self) -> Bench:
        return self.lab.bench(self.peer_name)

    @property
    def put(self) -> Peer:
        return self.bench.put

    @property
    def tester(self) -> Peer:
        return self.bench.tester

    @property
    def topology(self) -> Topology:
        return self.bench.topology

    @property
    def put_initiates(self) -> bool:
        return self.role is Role.INITIATOR

    def check_needs(self) -> None:
        """Raise NotApplicable when the peer under test lacks a capability the case needs."""
        from harness.peers.base import NotApplicable
        from harness.peers.registry import AdapterMissing, peer_class

        if self.peer_name in NEEDS_NODE and self.lab.options.topology == "local":
            raise NotApplicable([f"{self.peer_name}: {NEEDS_NODE[self.peer_name]}"])
        if self.peer_name == "external":
            # The device's own declaration decides; it never initiates for the harness.
            from harness.peers.base import INITIATE
            from harness.peers.external import ExternalPeer

            put = self.put
            assert isinstance(put, ExternalPeer)
            put.check((*self.info.needs, *((INITIATE,) if self.put_initiates else ())))
            return
        if not self.info.needs:
            return
        try:
            cls = peer_class(self.peer_name)
        except AdapterMissing as exc:
            raise NotApplicable([str(exc)]) from None
        cls.capabilities().require(self.info.needs)

    # -- scenarios ---------------------------------------------------------------------------

    def scenario(self, **kwargs: Any) -> Scenario:
        """A scenario between the peer under test and the tester (outer addresses as IDs)."""
        from harness.peers.base import Scenario

        topo = self.topology
        if self.peer_name == "external":  # as the device is configured, where it can be
            from harness.peers.external import ExternalPeer

            put = self.put
            assert isinstance(put, ExternalPeer)
            return put.scenario_for(topo.node(TESTER_NODE), **kwargs)
        scenario = Scenario.between(topo.node(PUT_NODE), topo.node(TESTER_NODE), **kwargs)
        self.put.capabilities().require((), scenario)
        return scenario

    def establish(
        self,
        scenario: Scenario,
        timeout: float = 30.0,
        *,
        fresh: bool = True,
        before_initiate: Callable[[], None] | None = None,
    ) -> None:
        """Configure both ends and let the side the role names initiate.

        ``fresh``: first delete any IKE SA left by an earlier case, so this case negotiates
        its own. The run's ``--put-misbehave`` switches are applied again after configuring
        (a configuration change that restarts the reference node would lose them), then
        ``before_initiate`` runs (a case's own switches for the SA about to be made).
        """
        put, tester = self.put, self.tester
        if fresh:
            self.clear_sas()
        with self.step("configure both peers"):
            put.configure(scenario)
            tester.configure(scenario)
        self.apply_misbehaviours()
        if before_initiate is not None:
            before_initiate()
        initiator = put if self.put_initiates else tester
        with self.step(f"{initiator.kind} initiates"):
            initiator.initiate(timeout=timeout)

    def apply_misbehaviours(self) -> None:
        """Switch the run's ``--put-misbehave`` misbehaviours on in a reference PUT."""
        put = self.put
        if put.kind == "reference":
            for name, value in self.lab.options.misbehaviour_values():
                put.impair(name, value)  # type: ignore[attr-defined]

    def clear_sas(self, timeout: float = 5.0) -> None:
        """No IKE SA left at either end (each case negotiates its own)."""
        from harness.peers.base import NotApplicable, PeerError, wait_for_sa

        tester, put = self.tester, self.put
        try:
            if tester.list_sas():
                tester.terminate(timeout=timeout)
        except PeerError:
            pass
        try:
            if any(sa.established for sa in put.list_sas()) and put.scenario is not None:
                put.terminate(timeout=timeout)
            wait_for_sa(put, lambda sas: not sas, timeout, "no IKE SA left")
        except (PeerError, NotApplicable):  # NotApplicable: its SAs cannot be listed
            pass

    # -- recording ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.recording is None:
            yield
            return
        with self.recording.step(name):
            yield

    def rerun_command(self) -> str:
        opts = self.lab.options
        parts = [opts.rerun, "--case", self.info.id, "--peer", self.peer_name,
                 "--role", self.role.value, "--topology", opts.topology]  # fmt: skip
        if opts.target:
            parts += ["--target", opts.target]
        if opts.peer_file and self.peer_name == "external":
            parts += ["--peer-file", opts.peer_file]
        return " ".join(parts)

    def mark_logs(self) -> None:
        """Remember how long the peers' logs are, so only this case's part is attached."""
        for peer in list(self.lab.bench(self.peer_name).peers.values()):
            for path in peer.logs():
                try:
                    self._logs_at_start[path] = path.stat().st_size
                except OSError:
                    pass

    def attach_evidence(self) -> None:
        """Attach what the peers logged during this case to the recording."""
        if self.recording is None:
            return
        from harness.report import EvidenceKind

        seen: set[Path] = set()
        for key, peer in list(self.bench.peers.items()):
            for path in peer.logs():
                if path.resolve() in seen:
                    continue
                seen.add(path.resolve())
                try:
                    with path.open("rb") as f:
                        start = self._logs_at_start.get(path, 0)
                        size = f.seek(0, 2)
                        if size < start:  # the log was rotated or rewritten: take it all
                            start = 0
                        f.seek(max(start, size - LOG_EVIDENCE_LIMIT))
                        text = f.read().decode(errors="replace")
                except OSError:
                    continue
                if text:
                    self.recording.attach_text(
                        f"{key} {path.name}", text, EvidenceKind.LOG, filename=f"{key}-{path.name}"
                    )

    def close(self) -> None:
        pass
