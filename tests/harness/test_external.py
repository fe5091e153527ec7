"""The external device without a device: its declaration, the scenario it is configured with,
the ``host`` topology on loopback with unprivileged ports, the run command's usage errors, and
a run of a small suite through the external bench (no root needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.exitcodes import ExitCode
from harness.peers.base import (
    AH,
    ESP,
    IKEV1,
    INITIATE,
    RAW_ESP,
    NotApplicable,
    Proposal,
    Retransmit,
)
from harness.peers.external import DeclarationError, DeviceDeclaration, ExternalPeer
from harness.topology.base import TopologyError, TopologySpec, Unsupported
from harness.topology.host import HostTarget, HostTopology, HostUnsupported

IKE = "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"
CBC = "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _decl(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "address": "127.0.0.2",
        "identity": "@dev.example",
        "psk_env": "EXT_TEST_PSK",
        "subnets": ["10.20.0.0/24"],
        "ike_proposals": [IKE],
        "esp_proposals": ["AES_GCM_16_128"],
        "features": ["child_sa", "esp", "mode.tunnel", "nat_t"],
        "tester": {
            "subnets": ["10.30.0.1/32"],
            "ike_port": _free_port(),
            "natt_port": _free_port(),
        },
    }
    data.update(over)
    return data


@pytest.fixture(autouse=True)
def _psk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXT_TEST_PSK", "a-secret-psk-42")


# --- the declaration -------------------------------------------------------------------------


def test_declaration_reads_every_field() -> None:
    d = DeviceDeclaration.from_mapping(_decl(inner_address="10.20.0.9"))
    assert d.address == "127.0.0.2" and d.identity == "@dev.example"
    assert d.psk == "a-secret-psk-42" and "a-secret" not in repr(d)
    assert d.ike_proposals == (Proposal.parse(IKE),)
    assert d.tester.subnets == ("10.30.0.1/32",)
    t = d.host_target()
    assert (t.address, t.inner, t.local_inner) == ("127.0.0.2", "10.20.0.9", "10.30.0.1")
    # --target supplies or overrides the address
    assert DeviceDeclaration.from_mapping(_decl(), address="127.0.0.3").address == "127.0.0.3"
    no_addr = _decl()
    del no_addr["address"]
    assert DeviceDeclaration.from_mapping(no_addr, address="127.0.0.4").address == "127.0.0.4"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": None}, r"needs an 'address' \(or give --target ADDRESS\)"),
        ({"features": ["esp", "teleport"]}, r"unknown features \['teleport'\]"),
        ({"psk_env": "EXT_TEST_NO_SUCH_VAR"}, "environment variable EXT_TEST_NO_SUCH_VAR"),
        ({"psk_env": None}, "auth psk needs 'psk_env'"),
        ({"auth": "pubkey"}, "only psk is supported"),
        ({"address": "2001:db8::1"}, "only IPv4 devices"),
        ({"address": "vpn.example"}, "'vpn.example' is not an IP address"),
        ({"colour": "blue"}, r"unknown keys \['colour'\]"),
        ({"ike_proposals": ["AES_CBC_999"]}, r"ike_proposals\[0\] 'AES_CBC_999'"),
        ({"subnets": "10.0.0.0/8"}, "subnets: a list of prefixes"),
        ({"mode": "beet"}, "mode: 'beet'"),
        ({"ike_versions": [3]}, "ike_versions"),
        ({"tester": {"port": 500}}, r"tester: unknown keys \['port'\]"),
        ({"tester": {"ike_port": 70000}}, "tester.ike_port: 70000 is not a port"),
        ({"replay_window": -1}, "replay_window: -1"),
    ],
)
def test_declaration_errors_name_the_problem(change: dict[str, Any], message: str) -> None:
    data = _decl()
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(DeclarationError, match=message):
        DeviceDeclaration.from_mapping(data)


def test_declaration_file_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "device.yaml"
    f.write_text("address: [unclosed\n")
    with pytest.raises(DeclarationError, match=r"device\.yaml: not YAML"):
        DeviceDeclaration.load(f)
    f.write_text("address: 127.0.0.2\npsk_env: EXT_TEST_UNSET\n")
    with pytest.raises(
        DeclarationError, match=r"device\.yaml: environment variable EXT_TEST_UNSET"
    ):
        DeviceDeclaration.load(f)


# --- the scenario the device is configured with ----------------------------------------------


@pytest.fixture
def host() -> Iterator[HostTopology]:
    d = DeviceDeclaration.from_mapping(_decl())
    topo = HostTopology(TopologySpec.pair("put", "tester"), target=d.host_target())
    with topo:
        yield topo


def test_declared_scenario_and_what_needs_reconfiguring(host: HostTopology) -> None:
    peer = ExternalPeer(DeviceDeclaration.from_mapping(_decl()))
    tester = host.node("tester")
    sc = peer.scenario_for(tester)
    dev, me = sc.local("put"), sc.remote("put")
    assert (dev.address, dev.identity, dev.subnets) == (
        "127.0.0.2",
        "@dev.example",
        ("10.20.0.0/24",),
    )
    assert (me.address, me.identity, me.subnets) == ("127.0.0.1", "127.0.0.1", ("10.30.0.1/32",))
    assert me.ike_port == tester.addresses.ike_port != 500
    assert sc.ike_proposals == (Proposal.parse(IKE),) and sc.psk == "a-secret-psk-42"
    assert sc.force_encap  # the tester's api data plane sends ESP in UDP only
    peer.configure(sc)
    assert peer.scenario is sc
    # Our end's own timers are ours to choose; the device's configuration is not.
    peer.scenario_for(
        tester, retransmit=Retransmit(1.0, 1.5, 2), ike_proposals=(Proposal.parse(IKE),)
    )
    with pytest.raises(
        NotApplicable, match=r"reconfigure: the case needs ike_proposals \['AES_CBC_128"
    ):
        peer.scenario_for(tester, ike_proposals=(Proposal.parse(CBC),))
    with pytest.raises(NotApplicable, match="needs mode='transport'") as info:
        peer.scenario_for(tester, mode="transport", psk="other")
    assert "another PSK than the device's" in str(info.value)
    assert "other" not in str(info.value).replace("another", "")
    with pytest.raises(NotApplicable, match="ipv6: the device is declared at an IPv4 address"):
        peer.scenario_for(tester, family=6)
    # ESP is in UDP from our tester whatever a case asks; a replay window is declared or not
    assert peer.scenario_for(tester, force_encap=False).force_encap
    assert peer.scenario_for(tester, replay_window=None).replay_window is None
    with pytest.raises(NotApplicable, match="needs replay_window=64; it is declared with None"):
        peer.scenario_for(tester, replay_window=64)
    windowed = ExternalPeer(DeviceDeclaration.from_mapping(_decl(replay_window=64)))
    assert windowed.scenario_for(tester, replay_window=None).replay_window == 64
    assert windowed.scenario_for(tester, replay_window=64).replay_window == 64
    # configure() refuses what a case changed after ctx.scenario(): identities, subnets, PSK
    other_id = sc.with_(endpoints=(replace(dev, identity="@x.example"), me))
    with pytest.raises(NotApplicable, match=r"needs the device's identity '@x\.example'"):
        peer.configure(other_id)
    with pytest.raises(NotApplicable, match="another PSK"):
        peer.configure(sc.with_(psk="wrong"))
    with pytest.raises(NotApplicable, match="device's peer subnets"):
        peer.configure(sc.with_(endpoints=(dev, replace(me, subnets=("10.9.0.0/16",)))))


def test_device_capabilities_and_refusals() -> None:
    peer = ExternalPeer(DeviceDeclaration.from_mapping(_decl(features=["esp", "raw_esp"])))
    # the class's manifest is generic; a device's is what it declared (suites ask ctx.put)
    assert not ExternalPeer.capabilities().has(ESP)
    assert peer.capabilities().has(ESP) and peer.capabilities() == peer.device_capabilities()
    # raw ESP is never applicable: our tester's api data plane sends ESP in UDP only
    assert not peer.capabilities().has(RAW_ESP)
    with pytest.raises(NotApplicable, match="raw_esp: the tester's api data plane"):
        peer.check([RAW_ESP])
    ah = ExternalPeer(DeviceDeclaration.from_mapping(_decl(features=["ah"])))
    with pytest.raises(NotApplicable, match="ah: AH cannot be UDP-encapsulated"):
        ah.check([AH])
    with pytest.raises(NotApplicable, match="initiate: the harness cannot make an external device"):
        peer.check([INITIATE])
    with pytest.raises(NotApplicable, match="ikev1: not declared by the device"):
        peer.check([IKEV1])
    for call, reason in (
        (peer.list_sas, "list_sas: the SAs of an external device cannot be listed"),
        (peer.keys, "keys: the keys of an external device cannot be read"),
        (peer.rekey_child, "rekey: the harness cannot make an external device rekey"),
        (peer.terminate, "initiate: "),
    ):
        with pytest.raises(NotApplicable, match=reason):
            call()


# --- the host topology -------------------------------------------------------------------------


def test_host_topology_on_loopback(host: HostTopology) -> None:
    tester, device = host.node("tester"), host.node("put")
    assert tester.addresses.v4 == "127.0.0.1" and device.addresses.v4 == "127.0.0.2"
    assert getattr(tester, "iface", None) == "lo"
    assert tester.exec(["true"]).ok
    with pytest.raises(HostUnsupported, match="not run by the harness") as info:
        device.exec(["true"])
    assert isinstance(info.value, NotApplicable)  # the case runner makes it "not applicable"
    with pytest.raises(NotApplicable, match="firewall"):
        tester.close_udp((500,), how="drop")
    with pytest.raises(NotApplicable, match="loss"):
        tester.set_loss(10)
    assert tester.firewall.closed == {}
    assert host.features <= HostTopology.features
    assert "ports.standard" not in host.features  # the tester has unprivileged ports here


def test_host_topology_refuses_a_busy_port_and_cleans_up(tmp_path: Path) -> None:
    d = DeviceDeclaration.from_mapping(_decl())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", d.tester.ike_port))
        topo = HostTopology(TopologySpec.pair("put", "tester"), target=d.host_target())
        with pytest.raises(TopologyError, match=f"UDP 127.0.0.1:{d.tester.ike_port} is in use"):
            topo.start()
    assert not topo.workdir.exists()
    with pytest.raises(TopologyError, match="needs the device's address"):
        HostTopology(TopologySpec.pair("put", "tester")).start()
    target = HostTarget("127.0.0.2", device_node="put")
    with pytest.raises(Unsupported, match="pair"):
        HostTopology(TopologySpec.routed("put", "tester"), target=target).start()


def test_host_topology_needs_root_for_ports_below_1024(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ok, why = HostTopology.available_for(500, 4500)
    assert not ok and "binding UDP 500 on this host needs root" in why
    assert HostTopology.available_for(40500, 44500) == (True, "")


# --- ipsec-interop run: usage errors ---------------------------------------------------------

DEMO = textwrap.dedent(
    """
    from harness.cases import case
    from harness.peers.base import AH, Proposal


    @case("EXT-001", suite="extdemo", rfc="7296 §2", level="MUST", roles="IR",
          title="the declared scenario, our tester configured with it")
    def test_ext_001(ctx):
        sc = ctx.scenario()
        assert sc.local("put").identity == "@dev.example"
        assert sc.remote("put").address == ctx.topology.node("tester").addresses.v4
        ctx.put.configure(sc)
        ctx.tester.configure(sc)
        assert ctx.tester.list_sas() == []


    @case("EXT-002", suite="extdemo", rfc="7296 §2", level="MUST", roles="R",
          title="reads the device's SAs")
    def test_ext_002(ctx):
        ctx.put.list_sas()


    @case("EXT-003", suite="extdemo", rfc="7296 §2", level="MUST", roles="R",
          title="needs other proposals")
    def test_ext_003(ctx):
        ctx.scenario(ike_proposals=(Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/"
                                                   "PRF_HMAC_SHA2_256/MODP_2048"),))


    @case("EXT-004", suite="extdemo", rfc="7296 §2", level="MUST", roles="R",
          title="runs a command on the device")
    def test_ext_004(ctx):
        ctx.topology.node("put").exec(["true"])


    @case("EXT-005", suite="extdemo", rfc="4302 §2", level="MUST", roles="R",
          title="needs AH", needs=(AH,))
    def test_ext_005(ctx):
        raise AssertionError("must not run")
    """
)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "extdemosuites"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "conftest.py").write_text('pytest_plugins = ["harness.pytest_plugin"]\n')
    (pkg / "test_extdemo.py").write_text(DEMO)
    monkeypatch.setenv("IPSEC_INTEROP_SUITES", "extdemosuites")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _peer_file(root: Path, **over: Any) -> Path:
    f = root / "device.yaml"
    f.write_text(json.dumps(_decl(**over)))  # JSON is YAML
    return f


def _usage(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", "--reports", str(root / "r"), *args])
    return result.exit_code, result.output


def test_run_usage_errors(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = str(_peer_file(demo))
    cases = [
        (["--peer", "external"], "needs --peer-file FILE"),
        (["--peer", "external", "--peer-file", f, "--topology", "netns"], "on --topology host"),
        (["--peer", "external", "--peer", "reference", "--peer-file", f], "runs alone"),
        (["--peer", "external", "--peer-file", f, "--jobs", "2"], "one job"),
        (["--topology", "host"], "--topology host is for --peer external"),
        (["--target", "127.0.0.2"], "--target is for --peer external"),
        (["--peer-file", f], "--peer-file is for --peer external"),
        (["--peer", "external", "--peer-file", f, "--target", "nowhere"], "'nowhere' is not an IP"),
        (["--peer", "external", "--peer-file", str(demo / "nope.yaml")], "does not exist"),
    ]  # fmt: skip
    for args, message in cases:
        code, out = _usage(demo, *args)
        assert code == ExitCode.USAGE_ERROR, (args, out)
        assert message in " ".join(out.split()), (args, out)
    monkeypatch.delenv("EXT_TEST_PSK")
    code, out = _usage(demo, "--peer", "external", "--peer-file", f)
    assert code == ExitCode.USAGE_ERROR and "environment variable EXT_TEST_PSK" in out
    monkeypatch.setenv("EXT_TEST_PSK", "x")
    bad = _peer_file(demo, features=["warp"])
    code, out = _usage(demo, "--peer", "external", "--peer-file", str(bad))
    assert code == ExitCode.USAGE_ERROR and "unknown features ['warp']" in out
    assert "--psk" not in _usage(demo, "--help")[1]  # a PSK never comes from the command line


def test_run_environment_error_when_the_tester_port_is_taken(demo: Path) -> None:
    f = _peer_file(demo)
    port = json.loads(f.read_text())["tester"]["ike_port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        code, out = _usage(demo, "--peer", "external", "--peer-file", str(f))
    assert code == ExitCode.ENVIRONMENT_ERROR, out
    assert f"UDP 127.0.0.1:{port} is in use" in " ".join(out.split())


# --- a run through the external bench -------------------------------------------------------


def test_run_through_the_external_bench(demo: Path) -> None:
    f = _peer_file(demo)
    del_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env = {**del_env, "PYTHONPATH": f"{demo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--reports", str(demo / "reports"),
         "--no-progress", "--peer", "external", "--peer-file", str(f), "--target", "127.0.0.2"],
        capture_output=True, text=True, timeout=240, env=env, cwd=demo,
    )  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    data = json.loads((demo / "reports" / "results.json").read_text())
    got = {(r["case"], r["role"]): (r["verdict"], r["reason"]) for r in data["results"]}
    assert got[("EXT-001", "R")] == ("pass", "")
    assert got[("EXT-001", "I")][0] == "not_applicable"
    assert got[("EXT-001", "I")][1].startswith("initiate: the harness cannot make an external")
    assert got[("EXT-002", "R")] == (
        "not_applicable", "list_sas: the SAs of an external device cannot be listed"
    )  # fmt: skip
    assert got[("EXT-003", "R")][0] == "not_applicable"
    assert got[("EXT-003", "R")][1].startswith("reconfigure: the case needs ike_proposals")
    assert got[("EXT-004", "R")][0] == "not_applicable"
    assert "the device at 127.0.0.2 is not run by the harness" in got[("EXT-004", "R")][1]
    assert got[("EXT-005", "R")][0] == "not_applicable"
    assert "ah: AH cannot be UDP-encapsulated" in got[("EXT-005", "R")][1]
    assert data["run"]["topology"] == "host"
    ext = next(p for p in data["run"]["peers"] if p["name"] == "external")
    assert ext["address"] == "127.0.0.2"
    rerun = next(r["rerun"] for r in data["results"] if r["case"] == "EXT-001")
    assert f"--target 127.0.0.2 --peer-file {f}" in rerun
    assert "a-secret-psk-42" not in (demo / "reports" / "results.json").read_text()
    # the tester node was started and stopped: its log is there, its temp dir gone
    assert list((demo / "reports" / "lab" / "external" / "tester").glob("node.log"))
    assert host_leftovers() == []


def host_leftovers() -> list[str]:
    """Temp dirs and processes of ``host`` topologies whose run has ended (a live run's,
    e.g. another test worker's, are not leftovers)."""
    from harness.topology.run import is_alive, labelled_processes

    found = [
        str(d)
        for d in Path(tempfile.gettempdir()).glob("ipsec-interop-*-host-*")
        if not is_alive(d.name.split("-")[2])
    ]
    for pid, _rid in labelled_processes(lambda rid: not is_alive(rid)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "-host-" in cmd:
            found.append(f"{pid}: {cmd}")
    return found
