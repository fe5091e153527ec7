"""The ``reference`` peer: our own node (``python -m reference_impl.node``), driven only through
its control API (:class:`harness.node_client.NodeClient`).

The neutral :class:`~harness.peers.base.Scenario` becomes a policy (one ``negotiate`` rule per
direction in tunnel mode, one mirrored host rule in transport mode) and a node configuration
(addresses, ports, credentials, and the scenario's exact proposals, lifetimes, DPD and
retransmission as node-level IKE settings, which win over the policy's).

Data plane: ``tun`` when the topology gives root (``netns``, ``docker``): real kernel traffic
between the nodes' inner addresses goes through the tunnel, ESP as IP protocol 50 (or in UDP
behind a NAT / with ``force_encap``). ``api`` otherwise (``local``): the harness injects
packets and reads what was delivered; clear and raw ESP/AH packets travel between reference
nodes over their *clear links* (a UDP port per node, registered in the topology's scratch
directory so the two adapters find each other's; see :mod:`reference_impl.node.dataplane`).

A configuration change that only touches the policy, credentials or IKE settings is pushed to
the running node (no restart); addresses, ports and the data plane need a restart.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from harness.node_client import NodeClient, NodeError, NodeUnreachable
from harness.peers import algorithms
from harness.peers.base import (
    ALL_FEATURES,
    Availability,
    Capabilities,
    ChildSaKeys,
    ChildSaState,
    IkeSaKeys,
    IkeSaState,
    Peer,
    PeerError,
    Proposal,
    SaKeys,
    Scenario,
    ts_str,
)
from harness.topology.base import FEATURE_ROOT, Node, NodeProcess, TopologyError, wait_until

_IKEV2_SECRET_NAMES = {
    "sk_d": "SK_d",
    "sk_ai": "SK_ai",
    "sk_ar": "SK_ar",
    "sk_ei": "SK_ei",
    "sk_er": "SK_er",
    "sk_pi": "SK_pi",
    "sk_pr": "SK_pr",
}
_IKEV1_SECRET_NAMES = {
    "skeyid": "SKEYID",
    "skeyid_d": "SKEYID_d",
    "skeyid_a": "SKEYID_a",
    "skeyid_e": "SKEYID_e",
    "encryption_key": "Ka",
}


def _sw(name: str) -> str:
    kw = algorithms.get(name).strongswan
    if kw is None:
        raise PeerError(f"transform {name} has no strongSwan-syntax name")
    return kw


def ike_proposal(p: Proposal) -> str:
    """The node's (strongSwan) syntax for an IKE proposal: ``aes128gcm16-prfsha256-x25519``."""
    return "-".join(_sw(n) for n in (*p.encr, *p.integ, *p.prf, *p.groups))


def child_proposal(p: Proposal) -> str:
    parts = [_sw(n) for n in (*p.encr, *p.integ, *p.groups)]
    if True in p.esn:
        parts += ["esn"] if p.esn == (True,) else ["esn", "noesn"]
    return "-".join(parts)


def _supported(kind: str) -> frozenset[str]:
    """Transforms of ``kind`` the crypto registry can run (probed, not listed by hand)."""
    from reference_impl.crypto import dh, encr, integ, prf

    out = set()
    for a in algorithms.ALGORITHMS.values():
        if a.kind != kind:
            continue
        try:
            if kind == "encr":
                if not encr(a.iana, a.key_bits).supported:
                    continue
            elif kind == "integ":
                integ(a.iana)
            elif kind == "prf":
                prf(a.iana)
            elif kind == "dh":
                dh(a.iana)
        except Exception:
            continue
        out.add(a.name)
    return frozenset(out)


def _free_udp_port(address: str) -> int:
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


class ReferencePeer(Peer):
    kind = "reference"

    def __init__(
        self,
        node: Node,
        *,
        dataplane: str | None = None,
        clock: str = "real",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(node)
        self.node: Node = node
        topo = node.topology
        if dataplane is None:
            dataplane = "tun" if FEATURE_ROOT in topo.features else "api"
        self.dataplane = dataplane
        self.clock = clock
        self.extra = dict(extra or {})
        """Extra node-configuration keys (merged into the generated file)."""
        self.conf_dir = node.workdir / "reference"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.conf_dir / "node.yaml"
        self.policy_path = self.conf_dir / "policy.yaml"
        self.socket_path = self.conf_dir / "control.sock"
        self.log_path = node.log_dir / "node.log"
        self.process: NodeProcess | None = None
        self.client = NodeClient(str(self.socket_path), timeout=30.0)
        self._static: dict[str, Any] | None = None
        self.policy_text: str | None = None
        self.node_config: dict[str, Any] | None = None
        self.clear_port = (
            _clear_port(node, node.name, node.addresses.v4) if dataplane == "api" else 0
        )

    # availability and capabilities ---------------------------------------------------------

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, f"reference node (Python {sys.version.split()[0]})")

    @classmethod
    def capabilities(cls) -> Capabilities:
        features = set(ALL_FEATURES)
        esp = _supported("encr") | _supported("integ")
        return Capabilities(
            features=frozenset(features),
            algorithms={
                "ike": (_supported("encr") - {"NULL", "NULL_AES_GMAC_128"})
                | _supported("integ")
                | _supported("prf")
                | _supported("dh"),
                "esp": esp,
                "ah": _supported("integ"),
                "pfs": _supported("dh"),
            },
            missing={},
            notes=(
                "tun data plane (real kernel traffic) needs root: netns or docker topology",
                "api data plane on the local topology: packets injected and collected through "
                "the control API; raw ESP/AH travel over the nodes' clear links",
                "IKEv1 has no IKE SA rekey on request (its ISAKMP SA is rekeyed by lifetime)",
            ),
        )

    # life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.process is not None and self.process.running:
            return
        if self.node_config is None:
            self._write({}, None)
        if self.dataplane == "tun":
            self.node.topology.require(FEATURE_ROOT)
        with self.log_path.open("a") as log:
            log.write(f"--- node start {time.strftime('%H:%M:%S')} ---\n")
        argv = [sys.executable, "-m", "reference_impl.node", "--config", str(self.config_path)]
        env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": _project_root()}
        if self.node.topology.backend == "docker":
            # Programs come from the node's image (the reference image has the project
            # installed in the interpreter on its PATH); the host's do not exist there.
            self.node.use_image("reference")
            argv[0] = "python3"
            del env["PYTHONPATH"]
        self.process = self.node.spawn("node", argv, env=env, private_run=False)
        proc = self.process
        try:
            self.client.wait_ready(20.0, alive=lambda: proc.running)
        except NodeUnreachable as exc:
            raise PeerError(f"{self.kind} on {self.node.name}: {exc}", self._tail(proc)) from None

    def _tail(self, proc: NodeProcess | None, n: int = 20) -> list[str]:
        if proc is None:
            return []
        return proc.log_text().splitlines()[-n:]

    def stop(self) -> None:
        if self.process is not None:
            if self.process.running:
                self.client.shutdown()
            self.process.stop(timeout=5.0)
            self.process = None
        self.client.close()

    def restart(self) -> None:
        """Stop (gracefully) and start again with the same configuration."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the node (no Delete sent), for restart and DPD cases."""
        import signal

        if self.process is not None:
            self.process.stop(timeout=0.1, sig=signal.SIGKILL)
            self.process = None
        self.client.close()
        self.socket_path.unlink(missing_ok=True)

    def logs(self) -> list[Path]:
        return [p for p in (self.log_path, self.node.log_dir / "node.log") if p.exists()]

    # configuration -------------------------------------------------------------------------

    def configure(self, scenario: Scenario) -> None:
        self.check(scenario=scenario)
        local = scenario.local(self.node.name)
        remote = scenario.remote(self.node.name)
        policy = scenario_policy(scenario, self.node.name)
        ike = scenario_ike(scenario)
        creds = scenario_credentials(scenario, self.node.name)
        static = self._static_config(scenario)
        running = self.process is not None and self.process.running
        self.scenario = scenario
        if running and static == self._static:
            self.policy_path.write_text(policy)
            self._write(ike, creds)
            try:
                self.client.set_credentials(**creds)
                self.client.set_ike(**ike)
                self.client.load_policy(text=policy)
            except NodeError as exc:
                raise PeerError(f"{self.kind} on {self.node.name}: {exc}") from None
            return
        self._static = static
        self.policy_path.write_text(policy)
        self._write(ike, creds)
        del local, remote
        if running:
            self.restart()
        else:
            self.start()

    def _static_config(self, scenario: Scenario) -> dict[str, Any]:
        local = scenario.local(self.node.name)
        remote = scenario.remote(self.node.name)
        inner = [
            str(ipaddress.ip_network(s, strict=False).network_address)
            for s in local.subnets
            if ipaddress.ip_network(s, strict=False).num_addresses == 1
        ]
        peers: dict[str, list[int]] = {}
        if (remote.ike_port, remote.natt_port) != (500, 4500):
            peers[remote.address] = [remote.ike_port, remote.natt_port]
        listen = ["ike", "natt"]
        policy_of = getattr(self.node, "udp_policy", None)
        if policy_of is not None:  # local topology: a closed port must stay unbound
            listen = [n for n, p in (("ike", 500), ("natt", 4500)) if policy_of(p) == "open"]
        dp: dict[str, Any] = {"mode": self.dataplane}
        if self.dataplane == "tun" and getattr(self.node.topology, "backend", "") == "host":
            # The node shares the host's network stack: its inbound check (an NFQUEUE of every
            # clear packet for a local address) would take in the host's own traffic.
            dp["inbound_clear_check"] = False
        if self.dataplane == "api":
            dp["clear_port"] = self.clear_port
            other = scenario.remote(self.node.name)
            port = _clear_port(self.node, other.node, other.address)
            fam_any = "::/0" if ":" in other.address else "0.0.0.0/0"
            dp["clear_peers"] = {fam_any: _endpoint(other.address, port)}
        return {
            "name": self.node.name,
            "addresses": [local.address],
            "inner_addresses": [a for a in inner if a != local.address],
            "ike_ports": {
                "port": local.ike_port,
                "natt_port": local.natt_port,
                "listen": listen,
                "peers": peers,
            },
            "dataplane": dp,
        }

    def _write(self, ike: dict[str, Any], creds: dict[str, Any] | None) -> None:
        static = self._static or {
            "name": self.node.name,
            "addresses": [self.node.addresses.v4],
            "inner_addresses": [],
            "ike_ports": {
                "port": self.node.addresses.ike_port,
                "natt_port": self.node.addresses.natt_port,
            },
            "dataplane": {"mode": self.dataplane, "clear_port": self.clear_port},
        }
        cfg: dict[str, Any] = {
            "name": static["name"],
            "addresses": static["addresses"],
            "inner_addresses": static["inner_addresses"],
            "ike": {**static["ike_ports"], **ike},
            "dataplane": static["dataplane"],
            "control": {"socket": str(self.socket_path)},
            # stderr goes to the node's log (Node.spawn): JSON lines, one per event
            "logging": {"level": "info", "format": "json"},
            "clock": self.clock,
        }
        if creds:
            cfg["credentials"] = creds
        if self.policy_path.exists():
            cfg["policy"] = str(self.policy_path)
        for k, v in self.extra.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        self.node_config = cfg
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.config_path.chmod(0o600)

    # control -------------------------------------------------------------------------------

    def _scenario(self) -> Scenario:
        if self.scenario is None:
            raise PeerError(f"{self.kind} on {self.node.name}: configure() first")
        return self.scenario

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NodeError, NodeUnreachable) as exc:
            raise PeerError(f"{self.kind} on {self.node.name}: {what}: {exc}") from None

    def initiate(self, *, timeout: float = 30.0) -> None:
        sc = self._scenario()
        rule = f"{sc.name}-out" if sc.mode == "tunnel" else sc.name
        self._call("initiate", self.client.initiate, rule)
        self._wait(
            lambda sas: any(sa.established and (not sc.child or sa.children) for sa in sas),
            timeout,
            "an established IKE SA" + (" with a Child SA" if sc.child else ""),
        )

    def _wait(self, predicate: Any, timeout: float, what: str) -> list[IkeSaState]:
        last: list[IkeSaState] = []

        def probe() -> tuple[list[IkeSaState]] | None:
            nonlocal last
            last = self.list_sas()
            return (last,) if predicate(last) else None

        try:
            return wait_until(probe, timeout, what, interval=0.05)[0]
        except TopologyError as exc:
            events = self._call("events", self.client.events)[-15:]
            raise PeerError(
                f"{self.kind} on {self.node.name}: {exc}; SAs now: {last}",
                [json.dumps(e) for e in events],
            ) from None

    def terminate(self, *, timeout: float = 10.0) -> None:
        self._call("terminate", self.client.terminate)
        self._wait(lambda sas: not any(sa.established for sa in sas), timeout, "no IKE SA")

    def rekey_child(self, *, timeout: float = 10.0) -> None:
        dump = self._call("list_sas", self.client.list_sas)
        if not dump["child_sas"]:
            raise PeerError(f"{self.kind} on {self.node.name}: no Child SA to rekey")
        child = dump["child_sas"][-1]
        before = {c["inbound"]["spi"] for c in dump["child_sas"]}
        self._call("rekey_child", self.client.rekey_child, child["inbound"]["spi"])
        self._wait(
            lambda sas: any(c.spi_in not in before for sa in sas for c in sa.children),
            timeout,
            "a rekeyed Child SA",
        )

    def rekey_ike(self, *, timeout: float = 10.0) -> None:
        dump = self._call("list_sas", self.client.list_sas)
        ikes = [s for s in dump["ike_sas"] if s["established"]]
        if not ikes:
            raise PeerError(f"{self.kind} on {self.node.name}: no IKE SA to rekey")
        before = {s["spi_i"] for s in dump["ike_sas"]}
        self._call("rekey_ike", self.client.rekey_ike, ikes[-1]["ike_sa_id"])
        self._wait(
            lambda sas: any(sa.spi_i.hex() not in before and sa.established for sa in sas),
            timeout,
            "a rekeyed IKE SA",
        )

    def list_sas(self) -> list[IkeSaState]:
        dump = self._call("list_sas", self.client.list_sas)
        name = self.scenario.name if self.scenario is not None else ""
        out = []
        for sa in dump["ike_sas"]:
            children = tuple(_child_state(c) for c in sa.get("child_sas", []))
            out.append(
                IkeSaState(
                    name=name,
                    state=sa["state"],
                    version=sa["version"],
                    initiator=sa["initiator"],
                    spi_i=bytes.fromhex(sa["spi_i"]),
                    spi_r=bytes.fromhex(sa["spi_r"]),
                    local=sa["local"].rsplit(":", 1)[0].strip("[]"),
                    remote=sa["remote"].rsplit(":", 1)[0].strip("[]"),
                    proposal=sa.get("proposal") or "",
                    children=children,
                    unique_id=sa["ike_sa_id"],
                    nat=bool(sa.get("nat_local") or sa.get("nat_remote")),
                )
            )
        return out

    def keys(self) -> SaKeys:
        dump = self._call("list_sas", self.client.list_sas, keys=True)
        ike = []
        for sa in dump["ike_sas"]:
            k = sa.get("keys")
            if not k:
                continue
            names = _IKEV2_SECRET_NAMES if sa["version"] == 2 else _IKEV1_SECRET_NAMES
            ike.append(
                IkeSaKeys(
                    version=sa["version"],
                    secrets={names[n]: bytes.fromhex(v) for n, v in k.items() if n in names},
                    unique_id=sa["ike_sa_id"],
                    spi_i=bytes.fromhex(sa["spi_i"]),
                    spi_r=bytes.fromhex(sa["spi_r"]),
                )
            )
        child = []
        for c in dump["child_sas"]:
            i, o = c["inbound"], c["outbound"]
            ini = bool(c.get("initiator"))
            out_e, out_a = (
                bytes.fromhex(o.get("encr_key", "")),
                bytes.fromhex(o.get("integ_key", "")),
            )
            in_e, in_a = bytes.fromhex(i.get("encr_key", "")), bytes.fromhex(i.get("integ_key", ""))
            child.append(
                ChildSaKeys(
                    name=c["name"],
                    spi_in=i["spi"],
                    spi_out=o["spi"],
                    initiator=ini,
                    encr_i=out_e if ini else in_e,
                    encr_r=in_e if ini else out_e,
                    integ_i=out_a if ini else in_a,
                    integ_r=in_a if ini else out_a,
                    unique_id=i["spi_hex"],
                    ike_unique_id=c["ike_sa_id"],
                )
            )
        return SaKeys(tuple(ike), tuple(child))

    def sa_dump(self, keys: bool = True) -> dict[str, Any]:
        """The node's ``list_sas`` answer (for :meth:`harness.probes.keys.KeySet.from_node_sas`)."""
        result: dict[str, Any] = self._call("list_sas", self.client.list_sas, keys=keys)
        return result

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("counters", self.client.counters)
        return result

    def impair(self, name: str, value: Any = True) -> None:
        """A deliberate misbehaviour of the node (``misbehaviours()`` lists them)."""
        self._call("misbehave", self.client.misbehave, name, value)


# --- scenario -> policy and node settings ------------------------------------------------------


def scenario_policy(sc: Scenario, node: str) -> str:
    """The policy YAML for ``node``'s side of ``sc``."""
    local = sc.local(node)
    remote = sc.remote(node)
    lt = sc.lifetimes
    life = int(lt.child_life or 3600)
    if sc.ah_proposals:
        methods = [{"protocol": "ah", "integrity": "sha256", "lifetime": {"seconds": life}}]
    else:
        methods = [{"protocol": "esp", "encryption": "aes128gcm16", "lifetime": {"seconds": life}}]
    action = {
        "name": "protect",
        "type": "negotiate",
        "security_methods": methods,
        "allow_fallback": False,
        "negotiation_shunt": "hold",
    }
    base: dict[str, Any] = {
        "name": f"scenario-{sc.name}",
        "settings": {
            "ordering": "explicit",
            "default_action": "bypass",
            "ike": {"version": "ikev2" if sc.ike_version == 2 else "ikev1"},
        },
        "default_response_rule": {"enabled": False},
        "auth_method_sets": [
            {
                "name": "auth",
                "methods": [
                    {"preshared_key": {"secret_ref": sc.name}}
                    if sc.auth == "psk"
                    else {"certificate": {"ca": _ca_name(sc.ca_cert)}}
                ],
            }
        ],
        "filter_actions": [action],
    }
    if sc.mode == "tunnel":
        ls, rs = ts_str(local.subnets), ts_str(remote.subnets)
        base["filter_lists"] = [
            {
                "name": "out",
                "filters": [{"src": a, "dst": b, "mirrored": False} for a in ls for b in rs],
            },
            {
                "name": "in",
                "filters": [{"src": b, "dst": a, "mirrored": False} for a in ls for b in rs],
            },
        ]
        base["rules"] = [
            {
                "name": f"{sc.name}-out",
                "filter_list": "out",
                "filter_action": "protect",
                "auth_methods": "auth",
                "tunnel": {"local_endpoint": local.address, "remote_endpoint": remote.address},
            },
            {
                "name": f"{sc.name}-in",
                "filter_list": "in",
                "filter_action": "protect",
                "auth_methods": "auth",
                "tunnel": {"local_endpoint": remote.address, "remote_endpoint": local.address},
            },
        ]
    else:
        base["filter_lists"] = [
            {
                "name": "hosts",
                "filters": [
                    {"src": local.address, "dst": remote.address, "proto": "any",
                     "mirrored": True}
                ],
            }
        ]  # fmt: skip
        base["rules"] = [
            {
                "name": sc.name,
                "filter_list": "hosts",
                "filter_action": "protect",
                "auth_methods": "auth",
            }
        ]
    return yaml.safe_dump({"policy": base}, sort_keys=False)


def _ca_name(path: Path | None) -> str:
    """The CA's subject for the policy's ``certificate.ca`` (the trust anchors themselves are
    node credentials)."""
    if path is None:
        return "any"
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


def scenario_ike(sc: Scenario) -> dict[str, Any]:
    """Node-level IKE settings carrying the scenario's exact choices."""
    lt = sc.lifetimes
    ike: dict[str, Any] = {
        "version": sc.ike_version,
        "versions": [sc.ike_version],
        "proposals": [ike_proposal(p) for p in sc.ike_proposals],
        "esp_proposals": [] if sc.ah_proposals else [child_proposal(p) for p in sc.esp_proposals],
        "ah_proposals": [child_proposal(p) for p in sc.ah_proposals],
        "aggressive": sc.aggressive,
        "allow_aggressive_psk": sc.aggressive and sc.auth == "psk",
        "childless": not sc.child,
        "force_encap": sc.force_encap,
        "packet_selectors": False,
    }
    if sc.replay_window is not None:
        ike["replay_window"] = sc.replay_window
    if sc.fragmentation is not None:
        ike["fragmentation"] = sc.fragmentation
    if sc.retransmit is not None:
        r = sc.retransmit
        ike["retransmit"] = {"timeout": r.timeout, "base": r.base, "tries": r.tries}
    for key, value in (
        ("ike_rekey_s", lt.ike_rekey),
        ("child_rekey_s", lt.child_rekey),
        ("child_life_s", lt.child_life),
    ):
        if value is not None:
            ike[key] = value
    # Byte and packet limits: the node rekeys at 90 % of the hard limit; none unless asked
    # (the policy language always has one, strongSwan by default none).
    ike["child_life_bytes"] = -(-lt.child_rekey_bytes * 10 // 9) if lt.child_rekey_bytes else 0
    ike["child_life_packets"] = (
        -(-lt.child_rekey_packets * 10 // 9) if lt.child_rekey_packets else 0
    )
    if lt.ike_life is not None and lt.ike_rekey is not None:
        ike["ike_over_s"] = max(0.0, lt.ike_life - lt.ike_rekey)
    if lt.child_rekey is not None and lt.child_life is None:
        ike["child_life_s"] = lt.child_rekey * 1.1
    if sc.dpd is not None:
        ike["dpd_delay_s"] = sc.dpd.delay
    return ike


def scenario_credentials(sc: Scenario, node: str) -> dict[str, Any]:
    local = sc.local(node)
    remote = sc.remote(node)
    creds: dict[str, Any] = {
        "identity": local.identity,
        "remote_identities": {remote.address: remote.identity},
    }
    if sc.auth == "psk":
        creds["psk"] = {sc.name: {"value": sc.psk}}
    else:
        creds["certificate"] = str(local.cert)
        creds["private_key"] = str(local.key)
        if sc.ca_cert is not None:
            creds["trust_anchors"] = [str(sc.ca_cert)]
    return creds


def _child_state(c: dict[str, Any]) -> ChildSaState:
    i, o = c["inbound"], c["outbound"]
    parts = [x["name"] for x in (c.get("encr"), c.get("integ")) if x]
    if c.get("esn"):
        parts.append("EXT_SEQ")
    return ChildSaState(
        name=c["name"],
        state="INSTALLED",
        protocol=c["protocol"].upper(),
        mode=c["mode"].upper(),
        spi_in=i["spi"],
        spi_out=o["spi"],
        encap=bool(c.get("encap")),
        proposal="/".join(parts),
        local_ts=tuple(o["ts_src"]),
        remote_ts=tuple(o["ts_dst"]),
        packets_in=i.get("packets", 0),
        packets_out=o.get("packets", 0),
        unique_id=i["spi_hex"],
    )


def _hex(v: str | None) -> bytes:
    return bytes.fromhex(v) if v else b""


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _clear_port(node: Node, name: str, address: str) -> int:
    """The clear-link port of reference node ``name`` in this topology (allocated once, kept in
    a small registry in the topology's scratch directory so both adapters agree)."""
    reg = node.topology.workdir / "reference-clear-links.json"
    data: dict[str, int] = json.loads(reg.read_text()) if reg.exists() else {}
    if name not in data:
        data[name] = _free_udp_port(address)
        reg.write_text(json.dumps(data))
    return int(data[name])


def _project_root() -> str:
    import reference_impl

    root = Path(reference_impl.__file__).resolve().parent.parent
    existing = os.environ.get("PYTHONPATH", "")
    return f"{root}{os.pathsep}{existing}" if existing else str(root)
