"""The example policies of ``reference_impl/policy/examples/`` load, compile and mean what their
comments say (policy-spec §1.5 "What the example means"), and ``policy check`` accepts them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import reference_impl.policy as pkg
from harness.cli import cli
from reference_impl.events import ChildSaEstablished
from reference_impl.policy import (
    Acquire,
    CompileEnv,
    PolicyAgent,
    SaState,
    Verdict,
    compile_policy,
    load_policy_file,
)
from reference_impl.policy.packet import PacketMeta, build_ipv4_udp

from .sim import FakeDriver, ScriptedIke, World

EXAMPLES = Path(pkg.__file__).parent / "examples"
ALL = sorted(EXAMPLES.glob("*.yaml"))


def agent_for(name: str, *local: str) -> tuple[PolicyAgent, FakeDriver]:
    driver = FakeDriver()
    agent = PolicyAgent(driver, CompileEnv(local_addresses=local))
    agent.load_policy(EXAMPLES / name, 0.0)
    return agent, driver


def acquires(agent: PolicyAgent) -> list[Acquire]:
    out = []
    while (req := agent.next_request()) is not None:
        if isinstance(req, Acquire):
            out.append(req)
    return out


def test_the_expected_examples_exist() -> None:
    names = {p.name for p in ALL}
    assert {
        "host-to-host-require.yaml",
        "request-with-fallback.yaml",
        "server-isolation.yaml",
        "tunnel-pair.yaml",
    } <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_example_validates_and_compiles(path: Path) -> None:
    policy = load_policy_file(path)
    compiled = compile_policy(policy, CompileEnv(local_addresses=("192.0.2.1",)))
    assert compiled.spd.outbound or compiled.warnings
    assert policy.warnings == ()


def test_server_isolation_means_what_section_1_5_says() -> None:
    me = "198.51.100.2"
    agent, _ = agent_for("server-isolation.yaml", me)
    tcp445 = PacketMeta.make(me, "10.1.0.10", 6, 40000, 445)
    assert agent.outbound(b"x", 0.0, tcp445) is Verdict.HELD  # protected, no fallback
    (acq,) = acquires(agent)
    assert acq.rule == "file-servers" and acq.peer == ("10.1.0.10", 500)
    machine = agent.machines()[0]
    assert machine.params.allow_fallback is False
    ping = PacketMeta.icmp(me, "10.1.0.10", 8)
    assert agent.outbound(b"x", 0.0, ping) is Verdict.BYPASS  # ICMP anywhere is in clear
    quarantine = PacketMeta.make(me, "10.66.3.4", 17, 1, 2)
    assert agent.outbound(b"x", 0.0, quarantine) is Verdict.DISCARDED
    http = PacketMeta.make(me, "10.1.0.10", 6, 40000, 80)
    assert agent.outbound(b"x", 0.0, http) is Verdict.HELD
    (acq2,) = acquires(agent)
    assert acq2.rule == "everything"
    assert agent.state_for(me, "10.1.0.10", 6, 40000, 80) is SaState.ACQUIRING
    agent.handle_timer(3.0)
    assert agent.state_for(me, "10.1.0.10", 6, 40000, 80) is SaState.SOFT  # falls back at 3 s
    assert agent.state_for(me, "10.1.0.10", 6, 40000, 445) is SaState.ACQUIRING  # never
    tunnel = PacketMeta.make("10.2.0.5", "10.9.1.1", 6, 1234, 80)
    assert agent.outbound(b"x", 3.0, tunnel) is Verdict.HELD
    (acq3,) = acquires(agent)
    assert acq3.rule == "hq-tunnel-out" and acq3.peer == ("203.0.113.9", 500)
    assert acq3.child.mode == "tunnel"
    assert str(acq3.sa_selectors[0]) == "10.2.0.0-10.2.255.255"


def test_tunnel_pair_one_file_two_gateways() -> None:
    gw1, gw2 = "198.51.100.2", "203.0.113.9"
    a1, d1 = agent_for("tunnel-pair.yaml", gw1)
    a2, d2 = agent_for("tunnel-pair.yaml", gw2)
    pkt = build_ipv4_udp("10.2.0.5", "10.9.0.7", 1000, 2000, b"data")
    assert a1.outbound(pkt, 0.0) is Verdict.DISCARDED  # negotiation_shunt: drop
    (acq,) = acquires(a1)
    assert acq.local == (gw1, 500) and acq.peer == (gw2, 500) and acq.ike_version == 2
    assert acq.rule == "to-site9"
    # gw2, as responder, accepts exactly these selectors through its inbound rule
    local_ts, remote_ts = acq.sa_selectors
    pol = a2.responder_policy(gw1, [remote_ts], [local_ts], 0.1)
    assert pol is not None and pol.rule in ("to-site2", "to-site9") and pol.mode == "tunnel"
    assert pol.tunnel == (gw2, gw1)
    # both sides install; traffic flows protected both ways
    ike = ScriptedIke.__new__(ScriptedIke)
    ike._spi = 0x5000
    pair1 = ike.make_pair(acq, b"A" * 8)
    d1.install(pair1)
    a1.handle_event(ChildSaEstablished(pair1), 0.2)
    pair2 = ike.make_pair(
        None, b"A" * 8, local_ts=pol.local, remote_ts=pol.remote, local=gw2, peer=gw1
    )
    d2.install(pair2)
    a2.handle_event(ChildSaEstablished(pair2), 0.2)
    assert a1.outbound(pkt, 0.3) is Verdict.PROTECTED
    back = build_ipv4_udp("10.9.0.7", "10.2.0.5", 2000, 1000, b"back")
    assert a2.outbound(back, 0.3) is Verdict.PROTECTED
    assert acquires(a2) == []


def test_host_to_host_require_on_both_hosts() -> None:
    for me, peer in (("192.0.2.10", "192.0.2.20"), ("192.0.2.20", "192.0.2.10")):
        agent, _ = agent_for("host-to-host-require.yaml", me)
        assert agent.outbound(build_ipv4_udp(me, peer, 1, 2, b"x"), 0.0) is Verdict.HELD
        (acq,) = acquires(agent)
        assert acq.ike_version == 2 and acq.child.pfs is True and acq.peer == (peer, 500)
        inbound = build_ipv4_udp(peer, me, 2, 1, b"clear")
        assert agent.inbound_clear(inbound, 0.1) is Verdict.DISCARDED  # require
        other = build_ipv4_udp(me, "192.0.2.99", 1, 2, b"x")
        assert agent.outbound(other, 0.0) is Verdict.BYPASS  # default_action bypass


def test_request_with_fallback_falls_back_at_3s() -> None:
    text = (EXAMPLES / "request-with-fallback.yaml").read_text()
    w = World(text)
    w.set_path("10.7.7.7", "filtered")
    w.probes(0.0, 4.0, dst="10.7.7.7")
    w.run_until(4.0)
    assert w.ike_times("10.7.7.7") == [0.0, 0.5, 1.0, 2.0]
    assert w.clear("10.7.7.7")[0].t == 3.0
    assert w.agent.policy is not None and w.agent.policy.policy.default_response_rule


def test_negotiation_discovery_inbound_modes() -> None:
    me = "10.1.0.1"
    agent, _ = agent_for("negotiation-discovery.yaml", me)
    server_in = build_ipv4_udp("10.1.0.9", me, 5000, 6000, b"x")
    assert agent.inbound_clear(server_in, 0.0) is Verdict.ACCEPTED  # boundary: new flow ok
    mgmt_in = build_ipv4_udp("10.200.0.9", me, 5000, 6000, b"x")
    assert agent.inbound_clear(mgmt_in, 0.0) is Verdict.DISCARDED  # secure: new flow refused
    dhcp = build_ipv4_udp(me, "255.255.255.255", 68, 67, b"x")
    assert agent.outbound(dhcp, 0.0) is Verdict.BYPASS
    # an outbound flow to the management net goes clear at once (ND) ...
    assert agent.outbound(build_ipv4_udp(me, "10.200.0.9", 6000, 5000, b"x"), 0.0) is (
        Verdict.BYPASS
    )
    # ... so its replies are accepted (existing flow, not secure)
    assert agent.inbound_clear(mgmt_in, 0.1) is Verdict.ACCEPTED


# ------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_cli_policy_check_examples(path: Path) -> None:
    result = CliRunner().invoke(cli, ["policy", "check", str(path), "--me", "198.51.100.2"])
    assert result.exit_code == 0, result.output
    assert "SPD in evaluation order" in result.output
    assert "<ike bypass>" in result.output


def test_cli_policy_check_json_lists_entries_in_order() -> None:
    path = EXAMPLES / "server-isolation.yaml"
    result = CliRunner().invoke(
        cli, ["policy", "check", str(path), "--json", "--me", "198.51.100.2"]
    )
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["valid"] is True
    spd = data["spd"]
    assert [e["position"] for e in spd] == list(range(len(spd)))
    assert spd[0]["rule"] == "<ike bypass>"
    outbound_rules = [e["rule"] for e in spd if e["direction"] == "out" and e["origin"] == "rule"]
    assert outbound_rules[0] == "file-servers"
    assert data["pad"][-1]["responder_only"] is True


def test_cli_policy_check_invalid_exits_2_with_issues(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "server-isolation.yaml")
        .read_text()
        .replace("        icmp_fast_fallback: false\n", "        icmp_fast_fallback: maybe\n")
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(cli, ["policy", "check", str(bad), "--json"])
    assert result.exit_code == 2
    (issue,) = json.loads(result.output)["issues"]
    assert issue["field"] == "icmp_fast_fallback" and issue["file"] == str(bad)
    assert issue["line"] == text.splitlines().index("        icmp_fast_fallback: maybe") + 1
    result = CliRunner().invoke(cli, ["policy", "check", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:{issue['line']}:" in result.output


def test_cli_entry_point() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "policy",
            "check",
            str(EXAMPLES / "tunnel-pair.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "neither tunnel endpoint" in proc.stdout  # default --me is not a gateway
