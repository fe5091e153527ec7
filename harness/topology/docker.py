"""The ``docker`` backend: a container per node on internal Docker networks (Docker SDK).

Same shape as ``netns`` (:mod:`harness.topology.netns`):

- direct: both nodes on one internal network, ``eth0`` on both;
- routed: each node alone on its own internal network with a router container (``.1``) that
  forwards between them and masquerades (nftables) the nodes behind NAT; nodes route through
  it (``.2``, default route via ``.1``). Docker's isolation of internal networks would drop
  the routed packets on the bridges: see :func:`routing_unavailable` for the iptables rule
  this adds (local engine, root) and removes.

Networks are ``internal`` (no route off the machine) with explicit subnets from
198.18.0.0/15 and 2001:db8::/32. One engine may run several topologies at once (parallel test
workers, several CI jobs on one engine), and Docker refuses overlapping subnets, so each link
gets the first free /24 from 198.18.64.0-198.18.255.0 (and a matching
``2001:db8:d0:<n>::/64``); the host parts follow the plan of :mod:`harness.topology.base`
(direct: ``.1``/``.2``; routed: node ``.2``, router ``.1``) and the inner (protected) host
addresses are exactly the plan's. Read addresses from ``node.addresses``, never hard-code them.
The bridge itself takes ``.254``.

Each node runs an image of ``containers/`` (:mod:`harness.images`; ``reference`` unless the
topology is given ``images={"b": "strongswan"}`` or a peer adapter calls
:meth:`DockerNode.use_image`) in its ``idle`` mode: the harness starts daemons itself with
:meth:`Node.spawn` (``docker exec``). Containers get only ``NET_ADMIN``, ``NET_RAW``,
``NET_BIND_SERVICE`` (and ``AUDIT_WRITE`` for pluto) and ``/dev/net/tun``; never
``--privileged``. Images older than the working tree are refused with the command that
rebuilds them (``IPSEC_INTEROP_DOCKER_BUILD=1`` builds them instead, cached).

Captures and the packet filter run in a *tools sidecar* (the reference image: tcpdump, nft)
that shares the node's network namespace, so the node's own container keeps its few
capabilities and peer images stay as their packages made them; the sidecar alone also has
``SETUID``/``SETGID``, which tcpdump needs. The router is its own tools container.

Files: the topology's scratch directory and its artifacts folder are bind-mounted into every
container at the same paths, so configuration a peer adapter writes under ``node.workdir``,
sockets its daemon opens there and logs under ``node.log_dir`` are the same files on both
sides. When ``DOCKER_HOST`` names a remote engine (``tcp://``, ``ssh://``) there is nothing to
bind: files under the scratch directory are copied in before each ``exec``/``spawn``, and logs
and pcaps are copied back when a capture stops and when the topology closes (Unix sockets do
not cross machines: adapters must then talk to their daemon through ``node.exec``).
``IPSEC_INTEROP_DOCKER_COPY=1`` forces this copy mode on a local engine.

Every container and network is named ``ipsec-interop-<run id>-...`` and labelled with the run
id and this host's id; :meth:`DockerTopology.sweep` removes those of dead runs of this host
only (a shared engine may hold live runs of other machines).

Per-process bind mounts (``binds``) are not offered: a container's programs come from its
image. A private ``/run`` is implied: each node is its own container.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import itertools
import os
import re
import shlex
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import images, system
from harness.topology.base import (
    FEATURE_BINDS,
    FEATURE_CAPTURE,
    FEATURE_DROP,
    FEATURE_IPV6,
    FEATURE_LOSS,
    FEATURE_NAT,
    FEATURE_REJECT,
    FEATURE_ROOT,
    FEATURE_STANDARD_PORTS,
    TCPDUMP,
    Addresses,
    Capture,
    Link,
    Node,
    NodeProcess,
    Topology,
    TopologyError,
    TopologySpec,
    Unsupported,
    direct_link_addresses,
    routed_link_addresses,
    wait_until,
)
from harness.topology.run import DOCKER_LABEL, Run, SweepReport, is_alive

LABEL_HOST = "ipsec-interop.host"
"""Label: which machine's run made the resource (only that machine sweeps it)."""
LABEL_NODE = "ipsec-interop.node"
LABEL_ROLE = "ipsec-interop.role"
"""Label: ``node``, ``router`` or ``tools``."""

DEFAULT_IMAGE = "reference"
TOOLS_IMAGE = "reference"
"""Has tcpdump and nft: the router and every sidecar run it."""
_TOOLS_CAPS = ("NET_ADMIN", "NET_RAW", "SETUID", "SETGID")
"""The sidecar's and router's: tcpdump's ``-Z root`` sets its uid and groups even to root's."""
_SUBNETS = [ipaddress.IPv4Network(f"198.18.{n}.0/24") for n in range(64, 256)]
_V6_PREFIX = "2001:db8:d0"
_GATEWAY_HOST = 254
_RUN_DIR = "/run/ipsec-interop"
_COPY_ENV = "IPSEC_INTEROP_DOCKER_COPY"
_BUILD_ENV = "IPSEC_INTEROP_DOCKER_BUILD"


def host_id() -> str:
    """This machine's id (``/etc/machine-id``, else the host name)."""
    with contextlib.suppress(OSError):
        text = Path("/etc/machine-id").read_text().strip()
        if text:
            return text[:32]
    return socket.gethostname()


def engine_is_remote() -> bool:
    """Whether the engine cannot see this machine's files (copy mode instead of binds)."""
    if os.environ.get(_COPY_ENV, "") not in ("", "0"):
        return True
    host = os.environ.get("DOCKER_HOST", "")
    return bool(host) and not host.startswith(("unix://", "npipe://"))


def routing_unavailable() -> str:
    """Why a routed topology cannot be built here ("" if it can).

    Docker isolates an internal network with iptables rules that drop what enters its bridge
    for an address outside its subnet, and the engine turns on ``bridge-nf-call-iptables``,
    so those rules see frames bridged between a node and its router too: a packet routed to
    another link is dropped on the way to the router. A routed topology therefore adds, per
    link, an ACCEPT rule in ``DOCKER-USER`` for frames that enter and leave the same bridge
    (they stay inside that network, so the isolation from everything else holds). That needs
    the engine's host to be this one, and root.
    """
    if engine_is_remote():
        return (
            "a router between internal Docker networks needs iptables rules on the engine's "
            "host (DOCKER-USER), which a remote engine's host does not let us add"
        )
    if os.geteuid() != 0:
        return "a router between internal Docker networks needs root here (iptables DOCKER-USER)"
    if system.which("iptables") is None:
        return "a router between internal Docker networks needs iptables on this host"
    return ""


def _sweep_rules(report: SweepReport) -> None:
    """Remove the DOCKER-USER rules of dead runs."""
    if os.geteuid() != 0 or system.which("iptables") is None:
        return
    listing = system.run(["iptables", "-w", "10", "-S", "DOCKER-USER"], timeout=20)
    for line in listing.stdout.splitlines():
        m = re.search(r'--comment "?(ipsec-interop-([0-9a-f]{8})-[^" ]*)"?', line)
        if not m or not line.startswith("-A DOCKER-USER ") or is_alive(m.group(2)):
            continue
        got = system.run(["iptables", "-w", "10", "-D", *shlex.split(line)[1:]], timeout=20)
        if got.ok:
            report.add("iptables rules", m.group(1))
        else:
            report.errors.append(f"iptables rule {m.group(1)}: {got.first_line()}")


def _client(timeout: int = 300) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


def _v6_network(v4: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    third = int(v4.network_address.packed[2])
    return ipaddress.IPv6Network(f"{_V6_PREFIX}:{third:x}::/64")


def _host(net: ipaddress.IPv4Network | ipaddress.IPv6Network, n: int) -> str:
    return str(net.network_address + n)


class DockerExecProcess(subprocess.Popen[bytes]):
    """``docker exec`` of a long-running program, whose signals reach the program itself.

    The docker CLI does not forward signals to what it runs, so :meth:`send_signal` signals
    the program by its pid inside the container (written by a ``sh`` wrapper before it
    ``exec``\\ s the program) and SIGKILL also ends the CLI. ``pid`` is the CLI's pid on this
    host; :attr:`inner_pid` is the program's pid in the container.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        topology: DockerTopology,
        container: str,
        pidfile: str,
        log_path: Path,
        env: Mapping[str, str],
    ) -> None:
        self._topology = topology
        self._container = container
        self._pidfile = pidfile
        self._inner_pid: int | None = None
        with open(log_path, "ab") as log:
            super().__init__(
                tuple(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=system._die_with_parent,
            )

    @property
    def inner_pid(self) -> int | None:
        if self._inner_pid is None:
            deadline = time.monotonic() + 5.0
            while self._inner_pid is None and time.monotonic() < deadline:
                got = self._topology._exec(self._container, ["cat", self._pidfile], 10.0, None)
                if got.ok and got.stdout.strip().isdigit():
                    self._inner_pid = int(got.stdout.strip())
                elif self.poll() is not None:
                    break
                else:
                    time.sleep(0.02)
        return self._inner_pid

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        pid = self.inner_pid
        if pid is not None:
            if sig == signal.SIGKILL:
                # Its children too: nothing of it may outlive a kill (a shell's sleep, say).
                script = "t() { for c in $(pgrep -P $1); do t $c; done; kill -9 $1; }; t $0"
                argv = ["sh", "-c", script, str(pid)]
            else:
                argv = ["kill", f"-{int(sig)}", str(pid)]
            self._topology._exec(self._container, argv, 10.0, None)
        if pid is None or sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                super().send_signal(sig)


class DockerCapture(Capture):
    """A capture whose pcap is copied back from the engine at stop (copy mode)."""

    def __init__(self, path: Path, process: NodeProcess | None, node: DockerNode) -> None:
        super().__init__(path, process)
        self._node = node

    def stop(self) -> Path:
        super().stop()
        topo = self._node.topology
        if topo.copy_mode and self._node.tools_container is not None:
            topo._pull(self._node.tools_container, self.path)
        return self.path


class DockerNode(Node):
    """A node that is a container (plus, when needed, a tools sidecar in its namespace)."""

    topology: DockerTopology

    def __init__(
        self,
        topology: DockerTopology,
        name: str,
        addresses: Addresses,
        image: str,
        *,
        role: str = "node",
    ) -> None:
        super().__init__(topology, name, addresses)
        self.image = image
        """Which image of :data:`harness.images.SPECS` the node runs."""
        self.role = role
        self.iface = "eth0"
        self.interfaces: list[str] = []
        self.container: str | None = None
        """The container's name (set once created)."""
        self.tools_container: str | None = None
        self._sidecar: str | None = None
        self._endpoints: list[tuple[Any, str, str | None]] = []
        """(network, v4, v6) the container is attached to, in order."""
        self._routes: list[tuple[str, str]] = []
        """(family flag, gateway) default routes set after start."""
        self._spawned = itertools.count(1)

    @property
    def container_name(self) -> str:
        return f"{self.topology.run.label}-{self.name}"

    def netns_path(self) -> str | None:
        """The container's namespace through its init process (a local engine only: a remote
        engine's processes are not ours to enter)."""
        if self.topology.copy_mode or self.container is None:
            raise Unsupported(
                "netns", "sockets inside a container need a local Docker engine (not DOCKER_HOST)"
            )
        pid = self.topology.client.api.inspect_container(self.container)["State"].get("Pid")
        if not pid:
            raise Unsupported("netns", f"container {self.container} is not running")
        return f"/proc/{pid}/ns/net"

    # commands and processes

    def exec(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> system.Completed:
        if self.container is None:
            raise TopologyError(f"node {self.name} has no container")
        if self.topology.copy_mode:
            self.topology._push(self.container, self.workdir)
        return self.topology._exec(self.container, argv, timeout, env)

    def tools_exec(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> system.Completed:
        """Run a probe tool (nft, tcpdump, ike-scan, python with scapy) in the node's network
        namespace, from the tools sidecar (made on first use)."""
        return self.topology._exec(self._tools(), argv, timeout, env)

    def _spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        private_run: bool,
        binds: Mapping[str, str],
    ) -> subprocess.Popen[bytes]:
        if binds:
            raise Unsupported(FEATURE_BINDS, self.topology.why_not(FEATURE_BINDS))
        if self.container is None:
            raise TopologyError(f"node {self.name} has no container")
        if self.topology.copy_mode:
            self.topology._push(self.container, self.workdir)
        # private_run needs nothing: the container's /run is the node's alone.
        return self.topology._spawn_in(self.container, argv, log_path, env, next(self._spawned))

    def _spawn_tools(self, name: str, argv: Sequence[str]) -> NodeProcess:
        """Like :meth:`spawn`, in the tools container."""
        log_path = self.log_dir / f"{name}.log"
        popen = self.topology._spawn_in(
            self._tools(), argv, log_path, self.topology.run.env, next(self._spawned)
        )
        proc = NodeProcess(f"{self.name}/{name}", popen, log_path)
        self.processes.append(proc)
        return proc

    # firewall and capture (in the tools container, which shares the node's namespace)

    def _apply_firewall(self) -> None:
        from harness.topology.netns import NetnsNode

        table = self.topology.run.nft_table
        # The same ruleset as the netns backend renders (it reads only firewall and the table).
        rules = NetnsNode._ruleset(self)  # type: ignore[arg-type]
        script = "\n".join([f"table inet {table} {{}}", f"delete table inet {table}", rules])
        result = self.topology._exec(
            self._tools(), ["sh", "-c", 'printf "%s\\n" "$1" | nft -f -', "sh", script], 15, None
        )
        if not result.ok:
            raise TopologyError(f"nft in {self.name}: {result.stderr.strip() or result.stdout}")

    def capture(self, name: str | None = None, *, interface: str | None = None) -> Capture:
        iface = interface or self.iface
        name = name or f"{self.name}-{iface}"
        path = self.topology.pcap_path(name)
        if self.topology.copy_mode:
            self.topology._exec(self._tools(), ["mkdir", "-p", str(path.parent)], 10.0, None)
        proc = self._spawn_tools(f"tcpdump-{name}", [*TCPDUMP, "-i", iface, "-w", str(path)])
        proc.wait_for_log(r"listening on ", timeout=15)
        cap = DockerCapture(path, proc, self)
        self.topology.captures.append(cap)
        return cap

    def _tools(self) -> str:
        if self.container is None:
            raise TopologyError(f"node {self.name} has no container")
        if self.role == "router":
            self.tools_container = self.container
        elif self._sidecar is None:
            self._sidecar = self.topology._create_sidecar(self)
            self.tools_container = self._sidecar
        return self.tools_container or self.container

    # changing the image

    def use_image(self, image: str) -> None:
        """Run this node from another image (``reference``, ``strongswan``, ``libreswan``).

        The container is replaced by one of ``image`` with the same name, addresses, routes and
        packet filter; nothing may run in the node (stop its processes first). Peer adapters
        call this before starting their daemon on a docker topology.
        """
        if image == self.image and self.container is not None:
            return
        if image not in images.SPECS:
            raise ValueError(f"unknown image {image!r}; images are {', '.join(images.SPECS)}")
        if any(p.running for p in self.processes):
            raise TopologyError(f"node {self.name}: stop its processes before changing its image")
        topo = self.topology
        topo._require_image(image)
        topo._remove_node_containers(self)
        self.image = image
        topo._create_node_container(self)
        topo._configure_node(self)
        if self.firewall.closed or self.firewall.loss_percent:
            self._apply_firewall()


def _sweep_build_leftovers(client: Any, report: SweepReport) -> None:
    """Remove what an interrupted image build left: its last step's container and, with it,
    the untagged images of its steps (``docker rmi`` takes untagged parents along). Skipped
    while a build runs on this machine (its step containers are in use)."""
    import docker

    with images.no_build_running() as idle:
        if not idle:
            return
        listing = client.api.containers(
            all=True,
            filters={"label": f"{images.LABEL}base", "status": ["created", "exited", "dead"]},
        )
        for ctr in listing:
            if not images.is_build_leftover(ctr, DOCKER_LABEL):
                continue
            cid = ctr["Id"]
            try:
                client.api.remove_container(cid, force=True)
            except docker.errors.NotFound:
                continue
            except Exception as exc:
                report.errors.append(f"build container {cid[:12]}: {exc}")
                continue
            report.add("build containers", cid[:12])
            image = str(ctr["Image"])
            try:
                # A build stopped at its first step ran on the (tagged) base image: keep it.
                if client.api.inspect_image(image).get("RepoTags"):
                    continue
                client.api.remove_image(image)
            except docker.errors.APIError:
                continue  # gone, or still used by another container or image
            report.add("build images", image.removeprefix("sha256:")[:12])


class DockerTopology(Topology):
    backend = "docker"
    features = frozenset(
        {
            FEATURE_ROOT,
            FEATURE_DROP,
            FEATURE_REJECT,
            FEATURE_LOSS,
            FEATURE_CAPTURE,
            FEATURE_NAT,
            FEATURE_IPV6,
            FEATURE_STANDARD_PORTS,
        }
    )

    nodes: dict[str, DockerNode]  # type: ignore[assignment]
    router: DockerNode | None

    def __init__(
        self,
        spec: TopologySpec,
        *,
        artifacts: Path | None = None,
        run: Run | None = None,
        images: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(spec, artifacts=artifacts, run=run)
        self.node_images = dict(images or {})
        """Node name -> image name; nodes not named run :data:`DEFAULT_IMAGE`."""
        unknown = set(self.node_images) - {n.name for n in spec.nodes}
        if unknown:
            raise ValueError(f"images names unknown nodes: {sorted(unknown)}")
        self.copy_mode = engine_is_remote()
        self.client: Any = None
        self._tags: dict[str, str] = {}
        self._containers: list[str] = []
        self._networks: list[Any] = []
        self._rules: list[list[str]] = []
        self._lock = threading.Lock()

    # availability and sweeping

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import docker  # noqa: F401
        except ImportError:
            return False, "the docker Python package is not installed"
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            client = _client(timeout=10)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # the SDK raises many kinds; all mean "not reachable"
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            return False, (
                f"no Docker engine answers at {where} ({reason}); as root, "
                "`scripts/docker-engine start` installs and starts one"
            )
        return True, ""

    def why_not(self, feature: str) -> str:
        if feature == FEATURE_BINDS:
            return (
                "docker nodes get their programs from their image, not from host folders "
                "bound per process; use node.use_image(...)"
            )
        return super().why_not(feature)

    @classmethod
    def sweep(cls, report: SweepReport) -> None:
        import docker

        client = _client(timeout=60)
        me = host_id()
        filters = {"label": [DOCKER_LABEL, f"{LABEL_HOST}={me}"]}
        try:
            # The low-level listings: no inspect per item, which would race with another
            # process sweeping (or closing) at the same time.
            for ctr in client.api.containers(all=True, filters=filters):
                rid = (ctr.get("Labels") or {}).get(DOCKER_LABEL, "")
                name = (ctr.get("Names") or [ctr["Id"][:12]])[0].lstrip("/")
                if is_alive(rid):
                    continue
                try:
                    client.api.remove_container(ctr["Id"], force=True)
                except docker.errors.NotFound:
                    continue
                except Exception as exc:
                    report.errors.append(f"container {name}: {exc}")
                else:
                    report.add("containers", name)
            _sweep_rules(report)
            _sweep_build_leftovers(client, report)
            for net in client.api.networks(filters=filters):
                rid = (net.get("Labels") or {}).get(DOCKER_LABEL, "")
                if is_alive(rid):
                    continue
                try:
                    client.api.remove_network(net["Id"])
                except docker.errors.NotFound:
                    continue
                except Exception as exc:
                    report.errors.append(f"network {net.get('Name')}: {exc}")
                else:
                    report.add("networks", str(net.get("Name")))
        finally:
            client.close()

    # building

    def _labels(self, role: str, node: str | None = None) -> dict[str, str]:
        labels = {DOCKER_LABEL: self.run.id, LABEL_HOST: host_id(), LABEL_ROLE: role}
        if node is not None:
            labels[LABEL_NODE] = node
        return labels

    def _require_image(self, name: str) -> str:
        """The tag of a current image ``name``; :class:`TopologyError` saying how to build it.

        With ``IPSEC_INTEROP_DOCKER_BUILD=1`` a missing or stale image is built (cached) instead.
        """
        if name in self._tags:
            return self._tags[name]
        try:
            tag = self._current_image(name)
        except TopologyError:
            if os.environ.get(_BUILD_ENV, "") in ("", "0"):
                raise
            try:
                images.build([name], log=lambda line: None)
            except images.ImageError as exc:
                raise TopologyError(str(exc)) from None
            tag = self._current_image(name)
        self._tags[name] = tag
        return tag

    def _current_image(self, name: str) -> str:
        import docker

        root = images.repo_root()
        tag = images.SPECS[name].tag(images.project_version(root))
        try:
            image = self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise TopologyError(
                f"image {tag} is missing; build it with `{images.REBUILD_HINT}` "
                "(or containers/build.sh)"
            ) from None
        try:
            images.check_labels(name, image.labels or {}, root)
        except images.StaleImage as exc:
            raise TopologyError(str(exc)) from None
        return tag

    def _build(self) -> None:
        self.client = _client()
        for name in {
            TOOLS_IMAGE,
            *(self.node_images.get(n.name, DEFAULT_IMAGE) for n in self.spec.nodes),
        }:
            self._require_image(name)
        if self.spec.router:
            self._build_routed()
        else:
            self._build_direct()
        everyone = [*self.nodes.values(), *([self.router] if self.router else [])]
        for node in everyone:
            self._configure_node(node)
        if self.spec.router:
            self._install_nat()
        if self.spec.ipv6:
            self._wait_ipv6_ready(everyone)

    def _build_direct(self) -> None:
        a, b = self.spec.nodes
        link = f"{a.name}-{b.name}"
        net, v4net, v6net = self._create_network(link)
        if not routing_unavailable():
            # Packets between the nodes' inner addresses (a cleartext packet of a protected
            # flow, sent past the sender's IPsec: SPD-004) have sources outside the link's
            # subnet, which Docker's isolation of the internal network drops on the bridge.
            # Where we cannot add the rule, only such crafted packets are lost.
            self._allow_routing(net, link)
        for i, spec in enumerate((a, b)):
            _, _, in4, in6 = direct_link_addresses(i)
            v4 = _host(v4net, i + 1)
            v6 = _host(v6net, i + 1) if v6net else None
            addrs = Addresses(v4, v6, in4, in6 if v6net else None)
            node = DockerNode(
                self, spec.name, addrs, self.node_images.get(spec.name, DEFAULT_IMAGE)
            )
            node._endpoints = [(net, v4, v6)]
            self.nodes[spec.name] = node
            self._create_node_container(node)
        self.links[link] = Link(
            link, ((a.name, "eth0"), (b.name, "eth0")), str(v4net), str(v6net) if v6net else None
        )

    def _build_routed(self) -> None:
        ipv6 = self.spec.ipv6
        why = routing_unavailable()
        if why:
            raise Unsupported("router", why)
        nets = []
        for spec in self.spec.nodes:
            nets.append(self._create_network(f"{spec.name}-router"))
            self._allow_routing(nets[-1][0], f"{spec.name}-router")
        first_v4 = _host(nets[0][1], 1)
        first_v6 = _host(nets[0][2], 1) if nets[0][2] else None
        router = DockerNode(
            self,
            "router",
            Addresses(first_v4, first_v6, first_v4, None),
            TOOLS_IMAGE,
            role="router",
        )
        router.iface = ""
        self.router = router
        for i, (spec, (net, v4net, v6net)) in enumerate(zip(self.spec.nodes, nets, strict=True)):
            _, _, _, _, in4, in6 = routed_link_addresses(i)
            v4, r4 = _host(v4net, 2), _host(v4net, 1)
            v6 = _host(v6net, 2) if v6net else None
            r6 = _host(v6net, 1) if v6net else None
            addrs = Addresses(v4, v6, in4, in6 if ipv6 else None)
            node = DockerNode(
                self, spec.name, addrs, self.node_images.get(spec.name, DEFAULT_IMAGE)
            )
            node._endpoints = [(net, v4, v6)]
            node._routes = [("-4", r4), *([("-6", r6)] if r6 else [])]
            router._endpoints.append((net, r4, r6))
            self.nodes[spec.name] = node
        self._create_node_container(router)
        for node in self.nodes.values():
            self._create_node_container(node)
        # Docker names a container's interfaces in no promised order: find each by address.
        for spec, (_net, v4net, v6net) in zip(self.spec.nodes, nets, strict=True):
            riface = self._iface_with(router, _host(v4net, 1))
            router.interfaces.append(riface)
            self.links[f"{spec.name}-router"] = Link(
                f"{spec.name}-router",
                ((spec.name, "eth0"), ("router", riface)),
                str(v4net),
                str(v6net) if v6net else None,
            )

    def _allow_routing(self, net: Any, link: str) -> None:
        """Let routed packets cross this link's bridge (see :func:`routing_unavailable`)."""
        bridge = f"br-{net.id[:12]}"
        rule = [
            "DOCKER-USER", "-i", bridge, "-o", bridge,
            "-m", "comment", "--comment", f"{self.run.label}-{link}", "-j", "ACCEPT",
        ]  # fmt: skip
        got = system.run(["iptables", "-w", "10", "-I", *rule], timeout=20)
        if not got.ok:
            raise TopologyError(f"iptables DOCKER-USER rule for {link}: {got.first_line()}")
        self._rules.append(rule)

    def _create_network(
        self, link: str
    ) -> tuple[Any, ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
        """An internal network with the first free /24 of the pool (and its /64)."""
        import docker

        name = f"{self.run.label}-{link}"
        with self._lock:
            for _ in range(len(_SUBNETS)):
                used = self._used_subnets()
                free = [n for n in _SUBNETS if not any(n.overlaps(u) for u in used)]
                if not free:
                    raise TopologyError(
                        "no free /24 left in 198.18.64.0-198.18.255.0 on the engine"
                    )
                v4net = free[0]
                v6net = _v6_network(v4net) if self.spec.ipv6 else None
                pools = [
                    docker.types.IPAMPool(subnet=str(v4net), gateway=_host(v4net, _GATEWAY_HOST))
                ]
                if v6net is not None:
                    pools.append(
                        docker.types.IPAMPool(
                            subnet=str(v6net), gateway=_host(v6net, _GATEWAY_HOST)
                        )
                    )
                try:
                    net = self.client.networks.create(
                        name,
                        driver="bridge",
                        internal=True,
                        enable_ipv6=v6net is not None,
                        ipam=docker.types.IPAMConfig(pool_configs=pools),
                        labels=self._labels("link"),
                        check_duplicate=True,
                    )
                except docker.errors.APIError as exc:
                    if "overlap" in str(exc).lower():
                        continue  # another topology took it in the meantime: next one
                    raise TopologyError(f"cannot create network {name}: {exc}") from exc
                self._networks.append(net)
                return net, v4net, v6net
        raise TopologyError(f"cannot find a free subnet for network {name}")

    def _used_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for net in self.client.networks.list():
            for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    used.append(ipaddress.ip_network(pool["Subnet"], strict=False))
        return used

    def _mounts(self) -> list[str]:
        if self.copy_mode:
            return []
        dirs = [self.workdir, *([self.artifacts] if self.artifacts is not None else [])]
        return [f"{d}:{d}:rw" for d in dirs]

    def _create_node_container(self, node: DockerNode) -> None:
        api = self.client.api
        spec = images.SPECS[node.image]
        tag = self._require_image(node.image)
        name = node.container_name
        cap_add = list(spec.cap_add)
        sysctls = {"net.ipv6.conf.all.disable_ipv6": "0" if self.spec.ipv6 else "1"}
        if self.spec.ipv6:
            sysctls["net.ipv6.conf.all.accept_dad"] = "0"
            sysctls["net.ipv6.conf.default.accept_dad"] = "0"
        if node.role == "router":
            cap_add = list(_TOOLS_CAPS)
            sysctls["net.ipv4.ip_forward"] = "1"
            if self.spec.ipv6:
                sysctls["net.ipv6.conf.all.forwarding"] = "1"
        first_net, first_v4, first_v6 = node._endpoints[0]
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            cap_add=cap_add,
            devices=[f"{d}:{d}:rwm" for d in spec.devices] if node.role != "router" else [],
            binds=self._mounts(),
            sysctls=sysctls,
            network_mode=first_net.name,
        )
        networking = api.create_networking_config(
            {
                first_net.name: api.create_endpoint_config(
                    ipv4_address=first_v4, ipv6_address=first_v6
                )
            }
        )
        created = api.create_container(
            tag,
            command=["idle"],
            name=name,
            hostname=node.name,
            labels=self._labels(node.role, node.name),
            host_config=host_config,
            networking_config=networking,
            detach=True,
        )
        self._containers.append(name)
        for net, v4, v6 in node._endpoints[1:]:
            api.connect_container_to_network(
                created["Id"], net.id, ipv4_address=v4, ipv6_address=v6
            )
        api.start(created["Id"])
        node.container = name
        node.tools_container = None
        self._wait_idle(name)
        if node.role != "router":
            node.interfaces = ["eth0"]

    def _create_sidecar(self, node: DockerNode) -> str:
        """The tools container of ``node``: the reference image in ``node``'s namespace."""
        api = self.client.api
        assert node.container is not None
        name = f"{node.container_name}-tools"
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            cap_add=list(_TOOLS_CAPS),
            binds=self._mounts(),
            network_mode=f"container:{node.container}",
        )
        created = api.create_container(
            self._require_image(TOOLS_IMAGE),
            command=["idle"],
            name=name,
            labels=self._labels("tools", node.name),
            host_config=host_config,
            detach=True,
        )
        self._containers.append(name)
        api.start(created["Id"])
        self._wait_idle(name)
        return name

    def _wait_idle(self, container: str) -> None:
        def ready() -> bool:
            got = self._exec(container, ["test", "-e", f"{_RUN_DIR}/idle"], 5.0, None)
            return got.ok

        def alive() -> bool:
            state = self.client.api.inspect_container(container)["State"]
            return bool(state.get("Running"))

        try:
            wait_until(ready, 30.0, f"container {container} to start", alive=alive)
        except TopologyError as exc:
            logs = self.client.api.logs(container, tail=20).decode(errors="replace").strip()
            raise TopologyError(f"{exc}: {logs}") from None

    def _configure_node(self, node: DockerNode) -> None:
        """Inner addresses on loopback, default routes via the router, in a fresh container."""
        assert node.container is not None
        if self.copy_mode:
            # What is bind-mounted otherwise: daemons may write logs and sockets there.
            folders = [str(node.workdir), str(node.log_dir)]
            self._exec(node.container, ["mkdir", "-p", *folders], 10.0, None)
        if node.role == "router":
            return
        a = node.addresses
        steps = [f"ip addr add {a.inner_v4}/32 dev lo"]
        if a.inner_v6:
            steps.append(f"ip addr add {a.inner_v6}/128 dev lo nodad")
        for family, gateway in node._routes:
            steps.append(f"ip {family} route replace default via {gateway}")
        got = self._exec(node.container, ["sh", "-ec", "; ".join(steps)], 15.0, None)
        if not got.ok:
            raise TopologyError(f"addresses of {node.name}: {got.stderr.strip() or got.stdout}")

    def _iface_with(self, node: DockerNode, address: str) -> str:
        assert node.container is not None
        got = self._exec(node.container, ["ip", "-o", "-4", "addr", "show"], 10.0, None)
        for line in got.stdout.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3].split("/")[0] == address:
                return fields[1].split("@")[0]
        raise TopologyError(f"no interface with {address} in {node.name}: {got.stdout}")

    def _install_nat(self) -> None:
        router = self.router
        assert router is not None and router.container is not None
        rules: list[str] = []
        for i, spec in enumerate(self.spec.nodes):
            if not spec.behind_nat:
                continue
            link = self.links[f"{spec.name}-router"]
            riface = router.interfaces[i]
            rules.append(f'ip saddr {link.subnet_v4} oifname != "{riface}" masquerade')
            if link.subnet_v6:
                rules.append(f'ip6 saddr {link.subnet_v6} oifname != "{riface}" masquerade')
        fwd = [
            f'oifname "{router.interfaces[i]}" ct state new drop'
            for i, spec in enumerate(self.spec.nodes)
            if spec.behind_nat
        ]
        if not rules:
            return
        table = f"{self.run.nft_table}_nat"
        text = "\n".join(
            [
                f"table inet {table} {{",
                "  chain postrouting {",
                "    type nat hook postrouting priority srcnat; policy accept;",
                *(f"    {r}" for r in rules),
                "  }",
                "  chain forward {",
                "    type filter hook forward priority 0; policy accept;",
                *(f"    {r}" for r in fwd),
                "  }",
                "}",
            ]
        )
        got = self._exec(
            router.container, ["sh", "-c", 'printf "%s\\n" "$1" | nft -f -', "sh", text], 15, None
        )
        if not got.ok:
            raise TopologyError(f"nft NAT in the router: {got.stderr.strip()}")

    def _wait_ipv6_ready(self, nodes: Sequence[DockerNode]) -> None:
        """Every link interface has its link-local address (none tentative)."""

        def ready() -> bool:
            for node in nodes:
                assert node.container is not None
                out = self._exec(
                    node.container, ["ip", "-6", "-o", "addr", "show", "scope", "link"], 10.0, None
                ).stdout
                ready_ifaces = {
                    ln.split()[1].split("@")[0]
                    for ln in out.splitlines()
                    if len(ln.split()) > 3 and "fe80" in ln and "tentative" not in ln
                }
                if not set(node.interfaces or ["eth0"]) <= ready_ifaces:
                    return False
            return True

        wait_until(ready, 10.0, "IPv6 link-local addresses on the links")

    # commands in containers

    def _exec(
        self,
        container: str,
        argv: Sequence[str],
        timeout: float,
        env: Mapping[str, str] | None,
    ) -> system.Completed:
        """Run ``argv`` in ``container`` to completion (bounded by ``timeout`` inside it)."""
        import docker

        args = tuple(argv)
        cmd = ["timeout", "-k", "2", f"{max(timeout, 0.1):g}", *args]
        try:
            result = self.client.api.exec_create(container, cmd, environment=dict(env or {}))
            output = self.client.api.exec_start(result["Id"], demux=True)
            code = self.client.api.exec_inspect(result["Id"]).get("ExitCode")
        except docker.errors.APIError as exc:
            return system.Completed(args, 126, "", f"docker exec in {container}: {exc}")
        out, err = output if isinstance(output, tuple) else (output, b"")
        stdout = (out or b"").decode(errors="replace")
        stderr = (err or b"").decode(errors="replace")
        rc = int(code) if code is not None else 1
        if rc in (124, 137) and "timed out" not in stderr:
            stderr += f"{args[0]}: timed out after {timeout:g} s"
        return system.Completed(args, rc, stdout, stderr)

    def _spawn_in(
        self,
        container: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        serial: int,
    ) -> subprocess.Popen[bytes]:
        exe = system.which("docker")
        if exe is None:
            raise TopologyError("the docker CLI is not installed (scripts/docker-engine start)")
        pidfile = f"{_RUN_DIR}/spawn-{serial}-{os.getpid()}.pid"
        wrapper = f'echo $$ > {shlex.quote(pidfile)} && exec "$@"'
        full = [exe, "exec"]
        for key, value in env.items():
            full += ["--env", f"{key}={value}"]
        full += [container, "sh", "-c", wrapper, "sh", *argv]
        return DockerExecProcess(
            full,
            topology=self,
            container=container,
            pidfile=pidfile,
            log_path=log_path,
            env={**os.environ, **env},  # the CLI carries the run label too (swept if orphaned)
        )

    # copy mode: files in and out when the engine cannot see ours

    def _push(self, container: str, folder: Path) -> None:
        if not folder.is_dir():
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(folder, arcname=folder.name)
        self._exec(container, ["mkdir", "-p", str(folder.parent)], 10.0, None)
        self.client.api.put_archive(container, str(folder.parent), buf.getvalue())

    def _pull(self, container: str, path: Path) -> None:
        """Copy ``path`` (a file or folder) from the container to the same path here."""
        import docker

        try:
            stream, _ = self.client.api.get_archive(container, str(path))
        except docker.errors.NotFound:
            return
        data = b"".join(stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(path.parent, filter="data")

    # teardown

    def _remove_node_containers(self, node: DockerNode) -> None:
        for name in (node._sidecar, node.container):
            if name is None:
                continue
            self._remove_container(name)
        node._sidecar = None
        node.tools_container = None
        node.container = None

    def _remove_container(self, name: str) -> None:
        import docker

        try:
            self.client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
        if name in self._containers:
            self._containers.remove(name)

    def _teardown(self) -> None:
        if self.client is None:
            return
        errors: list[str] = []
        everyone = [*self.nodes.values(), *([self.router] if self.router else [])]
        if self.copy_mode:
            for node in everyone:
                if node.container is not None:
                    with contextlib.suppress(Exception):
                        self._pull(node.container, node.log_dir)
        for name in reversed(list(self._containers)):
            try:
                self._remove_container(name)
            except Exception as exc:
                errors.append(f"container {name}: {exc}")
        for rule in self._rules:
            got = system.run(["iptables", "-w", "10", "-D", *rule], timeout=20)
            if not got.ok:
                errors.append(f"iptables rule {rule[7]}: {got.first_line()}")
        self._rules.clear()
        import docker

        for net in reversed(self._networks):
            try:
                net.remove()
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(f"network {net.name}: {exc}")
        self._networks.clear()
        with contextlib.suppress(Exception):
            self.client.close()
        if errors:
            raise TopologyError("; ".join(errors))
