"""Where nodes run: one interface, three backends (``local``, ``netns``, ``docker``).

A :class:`Topology` is built from a :class:`TopologySpec` (which nodes, a direct link or a
router between them, which nodes sit behind NAT) and gives a :class:`Node` per name. A node has
addresses, runs commands (:meth:`Node.exec`) and long-lived processes (:meth:`Node.spawn`),
closes UDP ports by drop or reject, drops packets at random, and captures its link to pcap.
Everything a topology creates carries the run label (:mod:`harness.topology.run`) and is
removed by :meth:`Topology.close`; the context manager, an ``atexit`` hook and a SIGTERM
handler make sure close runs on a normal end, a failure, Ctrl-C and SIGTERM; a SIGKILLed run's
leftovers are swept by the next run's start or by ``ipsec-interop clean``.

A backend that cannot do something raises :class:`Unsupported` with the reason (the case is then
"not applicable"); :attr:`Topology.features` says up front what a backend offers.

The contract is written up for backend authors in ``/work/notes/topology-api.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import ipaddress
import re
import shutil
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, TypeVar

from harness import system
from harness.topology.run import Run, SweepReport, current_run

BACKENDS: dict[str, str] = {
    "local": "harness.topology.local:LocalTopology",
    "netns": "harness.topology.netns:NetnsTopology",
    "docker": "harness.topology.docker:DockerTopology",
    "host": "harness.topology.host:HostTopology",
}
"""Backend name -> ``module:class``, imported only when chosen."""

How = Literal["drop", "reject"]
Direction = Literal["in", "out", "both"]

# Feature names a backend may offer (Topology.features) and a case may need.
FEATURE_ROOT = "root"  # processes run with root in their node (TUN, raw sockets, daemons)
FEATURE_DROP = "firewall.drop"  # UDP ports closed silently
FEATURE_REJECT = "firewall.reject"  # UDP ports closed with ICMP port unreachable
FEATURE_LOSS = "loss"  # random packet loss on a node's link
FEATURE_CAPTURE = "capture"  # pcap of a link
FEATURE_NAT = "nat"  # a router that masquerades nodes behind it
FEATURE_IPV6 = "ipv6"  # IPv6 outer addresses
FEATURE_STANDARD_PORTS = "ports.standard"  # every node has its own UDP 500/4500
FEATURE_BINDS = "binds"  # per-process bind mounts and a private /run (Node.spawn)

T = TypeVar("T")

TCPDUMP = ("tcpdump", "-n", "--immediate-mode", "-U", "-s", "0", "-Z", "root")
"""tcpdump for captures: ``--immediate-mode`` and ``-U`` hand over and write each packet at
once (nothing is lost in a ring-buffer block at stop, and a killed run still leaves a
readable pcap); ``-Z root``: do not drop to the tcpdump user, who cannot write our dirs."""

_NODE_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class TopologyError(RuntimeError):
    """A topology could not be built, changed or torn down."""


class Unsupported(TopologyError):
    """The backend cannot do this; ``reason`` says why (the case is "not applicable")."""

    def __init__(self, feature: str, reason: str) -> None:
        super().__init__(f"{feature}: {reason}")
        self.feature = feature
        self.reason = reason


@dataclass(frozen=True)
class NodeSpec:
    """One node. ``behind_nat``: its traffic to other nodes is masqueraded by the router."""

    name: str
    behind_nat: bool = False

    def __post_init__(self) -> None:
        if not _NODE_NAME.match(self.name):
            raise ValueError(f"node name {self.name!r}: 1-8 of [a-z0-9], starting with a letter")


@dataclass(frozen=True)
class TopologySpec:
    """The shape: nodes, and either one direct link (two nodes) or a router between all."""

    nodes: tuple[NodeSpec, ...]
    router: bool = False
    ipv6: bool = True

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate node names in {names}")
        if "router" in names:
            raise ValueError("'router' is the name of the router node")
        if not self.router:
            if len(self.nodes) != 2:
                raise ValueError("a direct link joins exactly two nodes; use router=True for more")
            if any(n.behind_nat for n in self.nodes):
                raise ValueError("NAT needs a router (router=True)")
        if not 1 <= len(self.nodes) <= 200:
            raise ValueError("1 to 200 nodes")

    @classmethod
    def pair(cls, a: str = "a", b: str = "b", *, ipv6: bool = True) -> TopologySpec:
        """Two nodes on one direct link."""
        return cls((NodeSpec(a), NodeSpec(b)), ipv6=ipv6)

    @classmethod
    def routed(cls, *names: str, behind_nat: Iterable[str] = (), ipv6: bool = True) -> TopologySpec:
        """Nodes each on their own link to a router; ``behind_nat`` ones are masqueraded."""
        nat = set(behind_nat)
        unknown = nat - set(names)
        if unknown:
            raise ValueError(f"behind_nat names unknown nodes: {sorted(unknown)}")
        return cls(tuple(NodeSpec(n, n in nat) for n in names), router=True, ipv6=ipv6)


@dataclass(frozen=True)
class Addresses:
    """A node's addresses.

    ``v4``/``v6`` are on its link (IKE and ESP go between these); ``inner_v4``/``inner_v6`` are
    host addresses on its loopback, the protected networks for tunnel-mode traffic
    selectors. ``ike_port``/``natt_port`` are 500/4500 except on ``local``, where nodes share
    one network stack and get distinct ports.
    """

    v4: str
    v6: str | None
    inner_v4: str
    inner_v6: str | None
    ike_port: int = 500
    natt_port: int = 4500

    def outer(self, family: int = 4) -> str:
        if family == 6:
            if self.v6 is None:
                raise Unsupported(FEATURE_IPV6, "this topology has no IPv6 addresses")
            return self.v6
        return self.v4

    def inner(self, family: int = 4) -> str:
        if family == 6:
            if self.inner_v6 is None:
                raise Unsupported(FEATURE_IPV6, "this topology has no IPv6 addresses")
            return self.inner_v6
        return self.inner_v4


@dataclass(frozen=True)
class Link:
    """A link between two nodes (``ends`` are ``(node name, interface name)``)."""

    name: str
    ends: tuple[tuple[str, str], tuple[str, str]]
    subnet_v4: str
    subnet_v6: str | None


@dataclass
class FirewallState:
    """What a node's firewall does now (backends render it; tests may read it)."""

    closed: dict[int, tuple[How, Direction]] = field(default_factory=dict)
    """UDP port -> (drop or reject, direction)."""
    loss_percent: float = 0.0
    loss_direction: Direction = "both"


class NodeProcess:
    """A long-running process started in a node (a daemon, tcpdump).

    ``pid`` is the program's own pid (backends exec through their wrappers). Its stdout and
    stderr go to ``log_path``, which is kept.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end; ``subprocess.TimeoutExpired`` after ``timeout``."""
        return self.popen.wait(timeout)

    def send_signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        """Stop it: ``sig``, then SIGKILL after ``timeout`` seconds. Returns the exit status."""
        if self.running:
            self.send_signal(sig)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
        return self.popen.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the log; :class:`TopologyError` if it
        does not within ``timeout`` or the process ends first."""
        rx = re.compile(pattern, re.MULTILINE)
        return wait_until(
            lambda: rx.search(self.log_text()),
            timeout,
            f"{self.name}: {pattern!r} in {self.log_path}",
            alive=lambda: self.running,
        )

    def __repr__(self) -> str:
        return f"NodeProcess({self.name}, pid={self.pid}, running={self.running})"


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something truthy; :class:`TopologyError` on timeout.

    ``alive`` ends the wait early when it turns false (the process we wait on died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if alive is not None and not alive():
            value = probe()
            if value:
                return value
            raise TopologyError(f"gave up waiting for {what}: the process ended")
        if time.monotonic() >= deadline:
            raise TopologyError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Capture:
    """A running packet capture of one link or interface, written to ``path`` (pcap)."""

    def __init__(self, path: Path, process: NodeProcess | None) -> None:
        self.path = path
        self.process = process

    def stop(self) -> Path:
        """Stop capturing (after tcpdump has written what it already saw) and return the
        pcap's path."""
        if self.process is not None and self.process.running:
            self._drain(self.process)
            self.process.stop(timeout=5.0, sig=signal.SIGTERM)
        return self.path

    @staticmethod
    def _drain(proc: NodeProcess, timeout: float = 3.0) -> None:
        """Wait until tcpdump's "packets captured" count stops growing.

        On SIGINT tcpdump leaves packets still in its ring buffer unwritten, so a packet sent
        just before stop() could be lost. Its SIGUSR1 statistics ("N packets captured") show
        how far it got; two equal readings in a row mean it has caught up. A tcpdump that does
        not answer SIGUSR1 (e.g. behind a proxy that does not forward it) is not waited for.
        """
        # "tcpdump: N packets captured, ..." on SIGUSR1; "N packets captured" lines at exit
        counts = re.compile(r"(\d+) packets? captured")
        deadline = time.monotonic() + timeout
        last: int | None = None
        while proc.running and time.monotonic() < deadline:
            seen = len(counts.findall(proc.log_text()))
            proc.send_signal(signal.SIGUSR1)
            try:
                wait_until(
                    lambda seen=seen: len(counts.findall(proc.log_text())) > seen,  # type: ignore[misc]
                    0.5,
                    "tcpdump statistics",
                    alive=lambda: proc.running,
                    interval=0.01,
                )
            except TopologyError:
                return
            now = int(counts.findall(proc.log_text())[-1])
            if now == last:
                return
            last = now
            time.sleep(0.05)


class Node(ABC):
    """One node of a topology: addresses, commands, processes, firewall, capture."""

    def __init__(self, topology: Topology, name: str, addresses: Addresses) -> None:
        self.topology = topology
        self.name = name
        self.addresses = addresses
        self.workdir = topology.workdir / name
        """Scratch space for this node (configs, sockets, pid files); removed at close."""
        self.log_dir = (topology.artifacts or topology.workdir) / name
        """Where this node's process logs go; kept when the topology has ``artifacts``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.firewall = FirewallState()
        self.processes: list[NodeProcess] = []

    # commands and processes

    @abstractmethod
    def exec(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> system.Completed:
        """Run a command in the node to completion (in its network namespace/container)."""

    @abstractmethod
    def _spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        private_run: bool,
        binds: Mapping[str, str],
    ) -> subprocess.Popen[bytes]: ...

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        private_run: bool = True,
        binds: Mapping[str, str] | None = None,
    ) -> NodeProcess:
        """Start a long-running process in the node; output to ``log_dir/<name>.log``.

        ``private_run``: the process sees an empty private ``/run`` (daemons write pid files
        and sockets there; several daemons of one kind on one host must not collide).
        ``binds``: host path -> path in the node, bind-mounted for this process only (e.g.
        an extracted package over ``/usr/libexec``). The process carries the run label in
        its environment. It is stopped by :meth:`Topology.close` if still running.
        """
        log_path = self.log_dir / f"{name}.log"
        full_env = dict(env or {})
        full_env.update(self.topology.run.env)
        popen = self._spawn(argv, log_path, full_env, private_run, dict(binds or {}))
        proc = NodeProcess(f"{self.name}/{name}", popen, log_path)
        self.processes.append(proc)
        return proc

    def netns_path(self) -> str | None:
        """A path to this node's network namespace that ``setns(2)`` accepts, so the harness
        can open sockets inside the node (crafted traffic from the node's own address); None
        when the node shares the harness's namespace (``local``, ``host``)."""
        return None

    def use_image(self, image: str) -> None:
        """Run this node from the image of a peer (``strongswan``, ``libreswan``,
        ``reference``) where nodes are containers; a no-op where nodes share the host's
        programs (local, netns). Peer adapters call it before starting their daemon."""
        return None

    # firewall

    def close_udp(
        self, ports: Iterable[int] = (500, 4500), how: How = "drop", direction: Direction = "in"
    ) -> None:
        """Close UDP ports: ``drop`` silently, or ``reject`` with ICMP port unreachable."""
        self.topology.require(FEATURE_DROP if how == "drop" else FEATURE_REJECT)
        for port in ports:
            self.firewall.closed[int(port)] = (how, direction)
        self._apply_firewall()

    def open_udp(self, ports: Iterable[int] | None = None) -> None:
        """Reopen UDP ports closed by :meth:`close_udp` (all of them by default)."""
        if ports is None:
            self.firewall.closed.clear()
        else:
            for port in ports:
                self.firewall.closed.pop(int(port), None)
        self._apply_firewall()

    def set_loss(self, percent: float, direction: Direction = "both") -> None:
        """Drop this share of the packets on the node's link at random (0 turns it off)."""
        if not 0 <= percent <= 100:
            raise ValueError("loss percent must be within 0..100")
        if percent:
            self.topology.require(FEATURE_LOSS)
        self.firewall.loss_percent = percent
        self.firewall.loss_direction = direction
        self._apply_firewall()

    @abstractmethod
    def _apply_firewall(self) -> None:
        """Make the node's packet filter match :attr:`firewall`."""

    # capture

    @abstractmethod
    def capture(self, name: str | None = None, *, interface: str | None = None) -> Capture:
        """Start capturing the node's link (or ``interface``) to ``<artifacts>/<name>.pcap``."""

    def stop_processes(self) -> None:
        """Stop every process started here (the last started first); errors at the end."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:
                errors.append(f"{proc.name}: {exc}")
        if errors:
            raise TopologyError("; ".join(errors))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.addresses.v4})"


class HostProcessNode(Node):
    """A node whose processes are plain processes of this host: no namespace of their own,
    no mounts (the ``local`` and ``host`` backends)."""

    def exec(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> system.Completed:
        return system.run(argv, timeout=timeout, env=env)

    def _spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        private_run: bool,
        binds: Mapping[str, str],
    ) -> subprocess.Popen[bytes]:
        if binds:
            raise self._no_binds()
        # private_run is a no-op: the processes share the host's /run (a program that needs
        # its own /run, like charon, needs the netns or docker backend).
        return system.spawn(argv, log_path=log_path, env=env)

    def _no_binds(self) -> Unsupported:
        return Unsupported(
            FEATURE_BINDS, f"the {self.topology.backend} backend has no private mount namespace"
        )


_open_topologies: set[Topology] = set()
"""Started and not yet closed (strong references: atexit must find even forgotten ones)."""
_hooks_installed = False
_hooks_lock = threading.Lock()


def _close_all() -> None:
    for topo in list(_open_topologies):
        with contextlib.suppress(Exception):
            topo.close()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _install_hooks() -> None:
    """atexit closes every open topology; SIGTERM/SIGHUP become SystemExit so ``with`` blocks
    and ``finally`` clauses run (Ctrl-C already raises KeyboardInterrupt)."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _on_sigterm)


_swept_once = False


class Topology(ABC):
    """A set of nodes and links of one backend; a context manager that tears it all down."""

    backend: ClassVar[str]
    features: ClassVar[frozenset[str]]

    def __init__(
        self,
        spec: TopologySpec,
        *,
        artifacts: Path | None = None,
        run: Run | None = None,
    ) -> None:
        self.spec = spec
        self.run = run or current_run()
        self.artifacts = Path(artifacts) if artifacts is not None else None
        """Kept output (logs, pcaps); ``None`` keeps them in the scratch dir (removed)."""
        if self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
        self.workdir = self.run.mkdtemp(self.backend)
        self.nodes: dict[str, Node] = {}
        self.router: Node | None = None
        self.links: dict[str, Link] = {}
        self.captures: list[Capture] = []
        self._closed = False
        self._started = False

    # construction

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether this backend can run here, and why not."""
        return True, ""

    @classmethod
    def sweep(cls, report: SweepReport) -> None:
        """Remove this backend's resources left by dead runs (processes and temp dirs are
        swept generically by :func:`harness.topology.sweep`)."""
        return None

    def start(self) -> Topology:
        """Create every node and link. Partial failure tears down what was made."""
        if self._started:
            return self
        self._started = True
        _install_hooks()
        global _swept_once
        if not _swept_once:
            _swept_once = True
            from harness.topology import sweep

            sweep()
        _open_topologies.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    @abstractmethod
    def _build(self) -> None:
        """Create nodes, links, addresses, router and NAT (fills nodes/links/router)."""

    @abstractmethod
    def _teardown(self) -> None:
        """Remove every node, link and filter (processes are already stopped)."""

    # use

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r}; nodes are {sorted(self.nodes)}") from None

    def require(self, feature: str) -> None:
        """Raise :class:`Unsupported` unless this backend offers ``feature``."""
        if feature not in self.features:
            raise Unsupported(feature, self.why_not(feature))

    def why_not(self, feature: str) -> str:
        return f"the {self.backend} backend does not offer it"

    def capture(self, link: str | None = None) -> Capture:
        """Capture a link (by name; the only or first link by default) to pcap."""
        self.require(FEATURE_CAPTURE)
        if not self.links:
            raise TopologyError("this topology has no links")
        chosen = self.links[link] if link is not None else next(iter(self.links.values()))
        node_name, iface = chosen.ends[0]
        owner = self.router if node_name == "router" else self.nodes[node_name]
        assert owner is not None
        return owner.capture(chosen.name, interface=iface)

    def pcap_path(self, name: str) -> Path:
        base = self.artifacts if self.artifacts is not None else self.workdir
        return base / f"{name}.pcap"

    # teardown

    def close(self) -> None:
        """Stop every process and capture, remove every node and link, delete the scratch
        directory. Idempotent; errors are collected and raised at the end as one."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for cap in self.captures:
            try:
                cap.stop()
            except Exception as exc:
                errors.append(f"capture {cap.path}: {exc}")
        everyone = [*self.nodes.values(), *([self.router] if self.router else [])]
        for node in everyone:
            try:
                node.stop_processes()
            except Exception as exc:
                errors.append(f"processes of {node.name}: {exc}")
        try:
            self._teardown()
        except Exception as exc:
            errors.append(f"teardown: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        _open_topologies.discard(self)
        if errors:
            raise TopologyError("; ".join(errors))

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except TopologyError:
            if exc is None:
                raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.run.id}, nodes={sorted(self.nodes)})"


def backend_class(name: str) -> type[Topology]:
    """The Topology class of a backend, by name (``local``, ``netns``, ``docker``)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown topology {name!r}; choose one of {sorted(BACKENDS)}") from None
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise Unsupported(name, f"the {name} backend is not built yet") from None
        raise
    cls: type[Topology] = getattr(mod, attr)
    return cls


def open_topology(
    backend: str, spec: TopologySpec, *, artifacts: Path | None = None, run: Run | None = None
) -> Topology:
    """Make (not yet start) a topology: use it as ``with open_topology(...) as topo:``."""
    cls = backend_class(backend)
    ok, why = cls.available()
    if not ok:
        raise Unsupported(backend, why)
    return cls(spec, artifacts=artifacts, run=run)


# Addressing plan, shared by the netns and docker backends (ARCHITECTURE.md "Addresses").


def direct_link_addresses(index: int) -> tuple[str, str, str, str]:
    """Node ``index`` (0 or 1) of a direct link: (v4/prefix, v6/prefix, inner v4, inner v6)."""
    return (
        f"198.18.0.{index + 1}/24",
        f"2001:db8::{index + 1}/64",
        f"198.19.{index + 1}.1",
        f"2001:db8:ff:{index + 1}::1",
    )


def routed_link_addresses(index: int) -> tuple[str, str, str, str, str, str]:
    """Node ``index`` behind the router: (node v4/prefix, node v6/prefix, router v4/prefix,
    router v6/prefix, inner v4, inner v6); node ``i`` is on 198.18.(i+1).0/24."""
    net = index + 1
    return (
        f"198.18.{net}.2/24",
        f"2001:db8:{net:x}::2/64",
        f"198.18.{net}.1/24",
        f"2001:db8:{net:x}::1/64",
        f"198.19.{net}.1",
        f"2001:db8:ff:{net:x}::1",
    )


def bare(addr_with_prefix: str) -> str:
    return str(ipaddress.ip_interface(addr_with_prefix).ip)


def network_of(addr_with_prefix: str) -> str:
    return str(ipaddress.ip_interface(addr_with_prefix).network)
