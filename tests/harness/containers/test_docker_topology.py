"""The docker topology backend: the netns backend's contract on containers (addresses, firewall,
loss, NAT, capture, processes, cleanup and sweeping), images chosen per node, copy mode for
remote engines, and strongSwan <-> strongSwan through the topology."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import images, system
from harness.topology import TopologySpec, Unsupported, open_topology, sweep
from harness.topology.base import FEATURE_BINDS, TopologyError
from harness.topology.docker import DockerNode, DockerTopology
from harness.topology.run import DOCKER_LABEL
from tests.harness.topology.udp import echo as _echo
from tests.harness.topology.udp import ping as _ping
from tests.harness.topology.udp import probe as _probe

pytestmark = [
    pytest.mark.needs_docker,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("built_images", "docker_build_on_demand", "no_leftovers"),
]


def _containers(client: Any, label: str) -> list[str]:
    names = [n.lstrip("/") for c in client.api.containers(all=True) for n in c["Names"]]
    return sorted(n for n in names if n.startswith(label))


def test_direct_pair_on_an_internal_network(tmp_path: Path, docker_client: Any) -> None:
    with open_topology("docker", TopologySpec.pair(), artifacts=tmp_path) as topo:
        assert isinstance(topo, DockerTopology)
        a, b = topo.node("a"), topo.node("b")
        link = topo.links["a-b"]
        assert link.subnet_v4.startswith("198.18.") and link.subnet_v4.endswith(".0/24")
        assert link.subnet_v6 is not None and link.subnet_v6.startswith("2001:db8:d0:")
        assert a.addresses.v4.endswith(".1") and b.addresses.v4.endswith(".2")
        assert (a.addresses.inner_v4, b.addresses.inner_v4) == ("198.19.1.1", "198.19.2.1")
        assert _ping(a, b.addresses.v4) and _ping(b, a.addresses.v4)
        assert b.addresses.v6 is not None and _ping(a, b.addresses.v6)
        assert a.exec(["ip", "-o", "addr", "show", "dev", "lo"]).stdout.count("198.19.1.1") == 1
        net = docker_client.networks.get(f"{topo.run.label}-a-b")
        assert net.attrs["Internal"] is True
        assert net.attrs["Labels"][DOCKER_LABEL] == topo.run.id
        for node in (a, b):
            assert isinstance(node, DockerNode)
            host = docker_client.api.inspect_container(node.container)["HostConfig"]
            assert not host["Privileged"]
            assert host["CapDrop"] == ["ALL"]
            assert set(host["CapAdd"]) == {"NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"}
            assert [d["PathOnHost"] for d in host["Devices"]] == ["/dev/net/tun"]
        # A node's files are the same on both sides (bind-mounted at the same path).
        (a.workdir / "hello").write_text("from the host")
        assert a.exec(["cat", str(a.workdir / "hello")]).stdout == "from the host"
        with pytest.raises(Unsupported) as exc:
            a.spawn("x", ["true"], binds={"/usr/lib": "/usr/lib"})
        assert exc.value.feature == FEATURE_BINDS and "use_image" in exc.value.reason
        label = topo.run.label
        assert len(_containers(docker_client, label)) == 2
        # Packets between the inner addresses cross the bridge (Docker's isolation would drop
        # their out-of-subnet sources): one DOCKER-USER rule for the link, gone afterwards.
        assert len(_docker_user_rules(label)) == 1
        a.exec(["ip", "route", "replace", "198.19.2.1/32", "via", b.addresses.v4])
        b.exec(["ip", "route", "replace", "198.19.1.1/32", "via", a.addresses.v4])
        assert a.exec(["ping", "-c", "1", "-W", "2", "-I", "198.19.1.1", "198.19.2.1"]).ok
    assert _containers(docker_client, label) == []
    assert _docker_user_rules(label) == []


def test_exec_reports_status_output_and_timeouts() -> None:
    with open_topology("docker", TopologySpec.pair()) as topo:
        a = topo.node("a")
        got = a.exec(["sh", "-c", "echo out; echo err >&2; exit 7"], env={"X": "1"})
        assert (got.returncode, got.stdout, got.stderr) == (7, "out\n", "err\n")
        assert a.exec(["sh", "-c", 'test "$X" = yes'], env={"X": "yes"}).ok
        start = time.monotonic()
        slow = a.exec(["sleep", "30"], timeout=1)
        assert slow.returncode == 124 and "timed out" in slow.stderr
        assert time.monotonic() - start < 10
        assert a.exec(["no-such-program"]).returncode == 127


def test_spawned_process_gets_signals_and_logs(tmp_path: Path) -> None:
    script = 'trap "echo got-TERM; exit 0" TERM; echo ready; while :; do sleep 0.1; done'
    with open_topology("docker", TopologySpec.pair(), artifacts=tmp_path) as topo:
        a = topo.node("a")
        proc = a.spawn("trapper", ["sh", "-c", script])
        proc.wait_for_log("ready", timeout=20)
        assert proc.running
        assert proc.stop(timeout=10) == 0
        assert "got-TERM" in proc.log_text()
        assert proc.log_path == tmp_path / "a" / "trapper.log"
        # One that ignores SIGTERM is killed after the timeout.
        stubborn = a.spawn("stubborn", ["sh", "-c", "trap '' TERM; echo ready; sleep 600"])
        stubborn.wait_for_log("ready", timeout=20)
        stubborn.stop(timeout=1)
        assert not stubborn.running
        assert "sleep 600" not in a.exec(["ps", "-eo", "args"]).stdout


def test_udp_closed_by_drop_is_silent_and_by_reject_is_refused() -> None:
    with open_topology("docker", TopologySpec.pair()) as topo:
        a, b = topo.node("a"), topo.node("b")
        _echo(b, 500)
        assert _probe(a, b.addresses.v4) == a.addresses.v4
        b.close_udp((500, 4500), how="drop")
        assert _probe(a, b.addresses.v4) == "silence"
        b.close_udp((500,), how="reject")
        assert _probe(a, b.addresses.v4) == "refused"
        assert b.addresses.v6 is not None
        assert _probe(a, b.addresses.v6) == "refused"
        b.open_udp()
        assert _probe(a, b.addresses.v4) == a.addresses.v4
        assert isinstance(b, DockerNode)
        assert topo.run.nft_table not in b.tools_exec(["nft", "list", "tables"]).stdout


def test_outbound_close_and_random_loss() -> None:
    with open_topology("docker", TopologySpec.pair()) as topo:
        a, b = topo.node("a"), topo.node("b")
        _echo(b, 500)
        a.close_udp((500,), how="drop", direction="out")
        assert _probe(a, b.addresses.v4) == "blocked"
        a.open_udp()
        b.set_loss(100)
        assert not _ping(a, b.addresses.v4)
        b.set_loss(30)
        assert isinstance(b, DockerNode)
        assert "numgen random mod 10000 < 3000" in b.tools_exec(["nft", "list", "ruleset"]).stdout
        b.set_loss(0)
        assert _ping(a, b.addresses.v4)


def test_router_masquerades_nodes_behind_nat() -> None:
    spec = TopologySpec.routed("a", "b", behind_nat=["a"])
    with open_topology("docker", spec) as topo:
        a, b = topo.node("a"), topo.node("b")
        router = topo.router
        assert router is not None
        a_link, b_link = topo.links["a-router"], topo.links["b-router"]
        assert a_link.subnet_v4 != b_link.subnet_v4
        assert a.addresses.v4.endswith(".2") and b.addresses.v4.endswith(".2")
        assert (a.addresses.inner_v4, b.addresses.inner_v4) == ("198.19.1.1", "198.19.2.1")
        b_router_v4 = b_link.subnet_v4.replace(".0/24", ".1")
        _echo(b, 500)
        _echo(a, 500)
        # b sees a's datagram from the router's address on b's link.
        assert _probe(a, b.addresses.v4) == b_router_v4
        assert b.addresses.v6 is not None and b_link.subnet_v6 is not None
        _echo(b, 4500, family=6)
        assert _probe(a, b.addresses.v6, 4500) == b_link.subnet_v6.replace("::/64", "::1")
        # Nothing new reaches a node behind NAT.
        assert _probe(b, a.addresses.v4) == "silence"
        assert set(topo.links) == {"a-router", "b-router"}
        assert topo.links["b-router"].ends[1][0] == "router"


def test_capture_writes_the_links_packets(tmp_path: Path) -> None:
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    with open_topology("docker", TopologySpec.pair(), artifacts=tmp_path) as topo:
        a, b = topo.node("a"), topo.node("b")
        cap = topo.capture()
        assert _ping(a, b.addresses.v4)
        path = cap.stop()
    assert path == tmp_path / "a-b.pcap"
    icmp = [p for p in rdpcap(str(path)) if ICMP in p]
    assert [p[ICMP].type for p in icmp] == [8, 0]


def test_copy_mode_for_remote_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: Any
) -> None:
    """Without shared files (DOCKER_HOST on another machine): copied in and back out."""
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    monkeypatch.setenv("IPSEC_INTEROP_DOCKER_COPY", "1")
    with open_topology("docker", TopologySpec.pair(), artifacts=tmp_path) as topo:
        assert isinstance(topo, DockerTopology) and topo.copy_mode
        a, b = topo.node("a"), topo.node("b")
        assert isinstance(a, DockerNode)
        assert docker_client.api.inspect_container(a.container)["HostConfig"]["Binds"] in (None, [])
        (a.workdir / "conf.txt").write_text("copied in")
        assert a.exec(["cat", str(a.workdir / "conf.txt")]).stdout == "copied in"
        a.exec(["sh", "-c", f"mkdir -p {a.log_dir} && echo daemon-log > {a.log_dir}/d.log"])
        cap = topo.capture()
        assert _ping(a, b.addresses.v4)
        path = cap.stop()
        assert [p[ICMP].type for p in rdpcap(str(path)) if ICMP in p] == [8, 0]
    assert (tmp_path / "a" / "d.log").read_text() == "daemon-log\n"


def test_strongswan_pair_through_the_topology(tmp_path: Path) -> None:
    """use_image: both nodes run charon (kernel-libipsec) and ping through the tunnel; the
    capture shows only UDP-encapsulated ESP between the outer addresses."""
    from scapy.layers.inet import ICMP, UDP
    from scapy.utils import rdpcap

    spec = TopologySpec.pair("a", "b", ipv6=False)
    with open_topology("docker", spec, artifacts=tmp_path) as topo:
        nodes = [topo.node("a"), topo.node("b")]
        for node, peer in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            assert isinstance(node, DockerNode)
            node.use_image("strongswan")
            assert node.image == "strongswan"
            me, other = node.addresses, peer.addresses
            (node.workdir / "swanctl.conf").write_text(
                f"""connections {{ t {{
  local_addrs = {me.v4}
  remote_addrs = {other.v4}
  proposals = aes128gcm16-prfsha256-x25519
  local {{ auth = psk
           id = {me.v4} }}
  remote {{ auth = psk
            id = {other.v4} }}
  children {{ c {{ local_ts = {me.inner_v4}/32
                  remote_ts = {other.inner_v4}/32
                  esp_proposals = aes128gcm16 }} }}
}} }}
secrets {{ ike {{ secret = "docker-topology-psk-0123456789" }} }}
"""
            )
            proc = node.spawn("charon", ["/usr/lib/ipsec/charon"])
            loaded = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.running:
                loaded = node.exec(
                    ["swanctl", "--load-all", "--file", str(node.workdir / "swanctl.conf")]
                )
                if loaded.ok and "loaded connection 't'" in loaded.stdout:
                    break
                time.sleep(0.2)
            assert loaded is not None and "loaded connection 't'" in loaded.stdout, loaded
        a, b = nodes
        # The inner addresses survived the change of image.
        assert "198.19.1.1" in a.exec(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        cap = topo.capture()
        up = a.exec(["swanctl", "--initiate", "--child", "c"], timeout=30)
        assert up.ok, up.stdout + up.stderr
        ping = a.exec(
            ["ping", "-c", "2", "-W", "2", "-I", a.addresses.inner_v4, b.addresses.inner_v4]
        )
        assert ping.ok, ping.stdout
        path = cap.stop()
    packets = rdpcap(str(path))
    esp_in_udp = [
        p for p in packets if UDP in p and p[UDP].dport == 4500 and len(p[UDP].payload) > 100
    ]
    assert len(esp_in_udp) >= 4  # 2 requests + 2 replies, encapsulated
    assert not [p for p in packets if ICMP in p and p[ICMP].type in (0, 8)]  # no clear pings


def test_use_image_refuses_while_processes_run() -> None:
    with open_topology("docker", TopologySpec.pair()) as topo:
        a = topo.node("a")
        assert isinstance(a, DockerNode)
        a.spawn("sleeper", ["sleep", "600"])
        with pytest.raises(TopologyError, match="stop its processes"):
            a.use_image("strongswan")
        with pytest.raises(ValueError, match="unknown image"):
            a.use_image("nosuch")


def test_a_stale_image_is_refused_with_the_rebuild_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPSEC_INTEROP_DOCKER_BUILD", raising=False)
    monkeypatch.setattr(images, "build_hash", lambda name, root=None: "0" * 16)
    with pytest.raises(TopologyError) as exc:
        open_topology("docker", TopologySpec.pair()).start()
    text = str(exc.value)
    assert "is stale" in text and "ipsec-interop images build" in text


def test_unreachable_engine_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    ok, why = DockerTopology.available()
    assert not ok
    assert "unix:///nonexistent/docker.sock" in why and "scripts/docker-engine start" in why


def _docker_user_rules(label: str) -> list[str]:
    listing = system.run(["iptables", "-w", "10", "-S", "DOCKER-USER"], timeout=20).stdout
    return [line for line in listing.splitlines() if label in line]


def test_a_sigkilled_runs_containers_networks_and_rules_are_swept(docker_client: Any) -> None:
    code = (
        "import time\n"
        "from harness.topology import open_topology, TopologySpec\n"
        "topo = open_topology('docker', TopologySpec.routed('a', 'b')).start()\n"
        "topo.node('a').spawn('sleep', ['sleep', '600'])\n"
        "print(topo.run.label, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    label = proc.stdout.readline().strip()
    assert label, "the child did not start its topology"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # Any process's first topology sweeps dead runs, so another test session on this machine
    # may sweep these first: what our sweep removes is what was still left.
    left = _containers(docker_client, label)
    rules = _docker_user_rules(label)
    assert len(left) in (0, 3), left
    report = sweep()
    assert _containers(docker_client, label) == []
    assert _docker_user_rules(label) == []
    nets = [n["Name"] for n in docker_client.api.networks() if n["Name"].startswith(label)]
    assert nets == []
    removed = set(report.removed.get("containers", []))
    if left and set(left) <= removed:  # ours did it all: it says so
        assert len(rules) == 2
        # (Rules another sweeper took between our listing and our sweep are not ours to list.)
        ours = [r for r in report.removed.get("iptables rules", []) if r.startswith(label)]
        assert len(ours) <= 2, ours
        assert {f"{label}-a-router", f"{label}-b-router"} <= set(report.removed["networks"])


def test_building_is_fast_enough() -> None:
    start = time.monotonic()
    with open_topology("docker", TopologySpec.routed("a", "b", "c", behind_nat=["a"])) as topo:
        built = time.monotonic() - start
        assert len(_docker_user_rules(topo.run.label)) == 3
    assert built < 30.0, f"a routed topology of 4 containers took {built:.1f} s"
    assert _docker_user_rules(topo.run.label) == []


def test_an_interrupted_builds_step_containers_and_images_are_swept(docker_client: Any) -> None:
    """What a build killed mid-way leaves (the legacy builder's step container, created from
    the previous step's bare image ID, and that untagged image) goes; the tagged base and a
    container someone started from a tagged image stay; nothing is touched while a build
    holds the build lock."""
    api = docker_client.api
    base = images.resolve_base(None)
    base_id = api.inspect_image(base)["Id"]
    assert "org.ipsec-interop.base" in (api.inspect_image(base)["Config"]["Labels"] or {}), (
        "the bootstrapped base carries our labels"
    )
    step = ["/bin/sh", "-c", "#(nop) ", "LABEL step=1"]
    made: list[str] = []
    untagged = ""
    try:
        # A step that ran: its container committed to an untagged image, then the next step's
        # container created from that image's ID and left behind by the interrupted build.
        first = api.create_container(base_id, command=step)["Id"]
        made.append(first)
        untagged = api.commit(first)["Id"]
        api.remove_container(first)
        made.remove(first)
        leftover = api.create_container(untagged, command=step)["Id"]
        at_first_step = api.create_container(base_id, command=step)["Id"]
        users = api.create_container(base, command=["true"])["Id"]
        made += [leftover, at_first_step, users]
        with images.no_build_running() as idle:  # a build is running: nothing is swept
            assert idle
            report = sweep()
            assert "build containers" not in report.removed
        report = sweep()
        removed = set(report.removed.get("build containers", []))
        assert {leftover[:12], at_first_step[:12]} <= removed
        assert users[:12] not in removed
        assert untagged.removeprefix("sha256:")[:12] in report.removed["build images"]
        assert api.containers(all=True, filters={"id": users})
        assert api.inspect_image(base)["Id"] == base_id
        with pytest.raises(Exception, match="No such image"):
            api.inspect_image(untagged)
    finally:
        for cid in made:
            try:
                api.remove_container(cid, force=True)
            except Exception:
                pass
        if untagged:
            try:
                api.remove_image(untagged)
            except Exception:
                pass
