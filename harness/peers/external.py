"""The ``external`` peer: a device at an address that the harness did not start.

The harness knows only what the person running it declares: the device's address, its
identity and credentials, the configuration it already has (as a :class:`Scenario` seen from
the device), and the capabilities it claims. It cannot reconfigure the device, make it
initiate, rekey or delete, list its SAs or read its keys: cases that need any of that are
"not applicable", with the reason. Cases where the harness's own end drives (the device as
responder) and judges from the wire and from our own node are what it can run.

A declaration is a small YAML/JSON mapping (``ipsec-interop run --peer external --peer-file
device.yaml [--target ADDRESS]``; ``--target`` supplies or overrides ``address``)::

    address: 198.51.100.10           # IPv4
    identity: vpn.example.com        # the device's IKE identity; default: its address
    ike_versions: [2]
    auth: psk                        # only PSK so far
    psk_env: DEVICE_PSK              # the PSK comes from this environment variable
    subnets: [10.20.0.0/24]          # what the device protects (its local traffic selectors)
    inner_address: 10.20.0.1         # a host there that answers ping (default: in subnets)
    mode: tunnel                     # or transport
    ike_proposals: ["AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_256"]
    esp_proposals: ["AES_GCM_16_256"]
    features: [nat_t, mode.tunnel, esp, child_sa, ike_fragmentation, dpd]
    ike_port: 500                    # where the device listens
    natt_port: 4500
    replay_window: 64                # its anti-replay window (packets); default: not declared
    tester:                          # our end, as the device is configured for its peer
      identity: 198.51.100.20        # default: our address
      subnets: [10.30.0.1/32]        # the device's remote traffic selectors; default: our
                                     #   address/32
      address: 198.51.100.20         # default: the source of the route to the device
      ike_port: 500                  # our IKE ports (below 1024: root)
      natt_port: 4500

The tester (our reference node) runs on the ``host`` topology (:mod:`harness.topology.host`)
with its ``api`` data plane: IKE and ESP in UDP go on the wire from its own sockets; it
installs no TUN device, route or rule on the host. So its ESP is always UDP-encapsulated
(``force_encap``; the device must declare ``nat_t`` to carry traffic): ESP as IP protocol 50
would need the ``tun`` data plane, which this adapter does not use on a user's host.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.peers import algorithms
from harness.peers.base import (
    AH,
    ALL_FEATURES,
    ESP_DEFAULT,
    FRAGMENTATION,
    IKE_DEFAULT,
    INITIATE,
    KEYS,
    LIST_SAS,
    PSK,
    RAW_ESP,
    RECONFIGURE,
    REKEY,
    Availability,
    Capabilities,
    Endpoint,
    IkeSaState,
    NotApplicable,
    Peer,
    Proposal,
    SaKeys,
    Scenario,
    ts_str,
)

if TYPE_CHECKING:
    from harness.peers.reference import ReferencePeer
    from harness.topology.base import Node, TopologySpec
    from harness.topology.host import HostTopology
    from harness.topology.run import Run

_NEVER = {
    RECONFIGURE: "an external device keeps the configuration it has; the harness cannot load one",
    INITIATE: "the harness cannot make an external device initiate, rekey or delete",
    REKEY: "the harness cannot make an external device rekey",
    KEYS: "the keys of an external device cannot be read",
    LIST_SAS: "the SAs of an external device cannot be listed",
}

_RAW_ESP = (
    "the tester's api data plane sends ESP in UDP only (it installs no TUN device on the host)"
)
_AH = "AH cannot be UDP-encapsulated, and the tester's api data plane sends nothing as raw IP"

DEVICE_NODE = "put"
TESTER_NODE = "tester"

_KEYS = {
    "address", "identity", "ike_versions", "auth", "psk", "psk_env", "subnets",
    "inner_address", "mode", "ike_proposals", "esp_proposals", "features", "ike_port",
    "natt_port", "tester", "replay_window",
}  # fmt: skip
_TESTER_KEYS = {"identity", "subnets", "address", "ike_port", "natt_port"}


class DeclarationError(ValueError):
    """The device's declaration (peer file) is wrong; the message says what to fix."""


def _ipv4(value: object, what: str) -> str:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        raise DeclarationError(f"{what}: {value!r} is not an IP address") from None
    if addr.version != 4:
        raise DeclarationError(f"{what}: {value}: only IPv4 devices are supported so far")
    return str(addr)


def _subnets(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise DeclarationError(f"{what}: a list of prefixes, e.g. [10.20.0.0/24]")
    out = []
    for s in value:
        try:
            out.append(str(ipaddress.ip_network(str(s), strict=False)))
        except ValueError:
            raise DeclarationError(f"{what}: {s!r} is not a prefix") from None
    return tuple(out)


def _port(value: object, what: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise DeclarationError(f"{what}: {value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise DeclarationError(f"{what}: {port} is not a port number (1..65535)")
    return port


def _proposals(value: object, what: str) -> tuple[Proposal, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise DeclarationError(f"{what}: a list of proposals, e.g. [AES_GCM_16_256/...]")
    out = []
    for i, text in enumerate(value):
        try:
            out.append(Proposal.parse(str(text)))
        except (ValueError, KeyError) as exc:
            raise DeclarationError(f"{what}[{i}] {text!r}: {exc}") from None
    return tuple(out)


def _host_in(subnets: tuple[str, ...]) -> str | None:
    """A host address in the first subnet (the address itself for a /32)."""
    if not subnets:
        return None
    net = ipaddress.ip_network(subnets[0])
    return str(net.network_address if net.num_addresses <= 2 else net.network_address + 1)


@dataclass(frozen=True)
class TesterDeclaration:
    """Our end as the device is configured for its peer."""

    identity: str | None = None
    subnets: tuple[str, ...] = ()
    address: str | None = None
    ike_port: int = 500
    natt_port: int = 4500

    @classmethod
    def from_mapping(cls, data: object) -> TesterDeclaration:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise DeclarationError("tester: a mapping (identity, subnets, address, ports)")
        unknown = set(data) - _TESTER_KEYS
        if unknown:
            raise DeclarationError(
                f"tester: unknown keys {sorted(unknown)}; known: {sorted(_TESTER_KEYS)}"
            )
        return cls(
            identity=str(data["identity"]) if "identity" in data else None,
            subnets=_subnets(data["subnets"], "tester.subnets") if "subnets" in data else (),
            address=_ipv4(data["address"], "tester.address") if "address" in data else None,
            ike_port=_port(data.get("ike_port", 500), "tester.ike_port"),
            natt_port=_port(data.get("natt_port", 4500), "tester.natt_port"),
        )


@dataclass(frozen=True)
class DeviceDeclaration:
    """What is known about an external device (from its declaration file)."""

    address: str
    identity: str = ""
    ike_versions: tuple[int, ...] = (2,)
    auth: str = "psk"
    psk: str = field(default="", repr=False)
    subnets: tuple[str, ...] = ()
    ike_proposals: tuple[Proposal, ...] = ()
    esp_proposals: tuple[Proposal, ...] = ()
    features: frozenset[str] = field(default_factory=frozenset)
    ike_port: int = 500
    natt_port: int = 4500
    mode: str = "tunnel"
    inner_address: str | None = None
    tester: TesterDeclaration = field(default_factory=TesterDeclaration)
    replay_window: int | None = None
    """The anti-replay window of its Child SAs in packets (0: off; None: not declared)."""

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, address: str | None = None
    ) -> DeviceDeclaration:
        """Validate a declaration; ``address`` (``--target``) supplies or overrides its
        ``address``. :class:`DeclarationError` names the first problem."""
        if not isinstance(data, Mapping):
            raise DeclarationError("a device declaration is a mapping (address, identity, ...)")
        unknown = set(data) - _KEYS
        if unknown:
            raise DeclarationError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        features = frozenset(str(f) for f in data.get("features", ()))
        bad = features - set(ALL_FEATURES)
        if bad:
            raise DeclarationError(f"unknown features {sorted(bad)}; known: {list(ALL_FEATURES)}")
        if address is None and "address" not in data:
            raise DeclarationError(
                "an external device declaration needs an 'address' (or give --target ADDRESS)"
            )
        addr = _ipv4(address if address is not None else data["address"], "address")
        auth = str(data.get("auth", "psk"))
        if auth != "psk":
            raise DeclarationError(
                f"auth {auth!r}: only psk is supported for external devices so far"
            )
        psk = str(data.get("psk", ""))
        if "psk_env" in data:
            var = str(data["psk_env"])
            psk = os.environ.get(var, "")
            if not psk:
                raise DeclarationError(f"environment variable {var} (the PSK) is not set")
        elif not psk:
            raise DeclarationError(
                "auth psk needs 'psk_env': the environment variable that holds the PSK"
            )
        versions = tuple(sorted({int(v) for v in data.get("ike_versions", (2,))}))
        if not versions or set(versions) - {1, 2}:
            raise DeclarationError(f"ike_versions: {list(versions)} (1, 2 or both)")
        mode = str(data.get("mode", "tunnel"))
        if mode not in ("tunnel", "transport"):
            raise DeclarationError(f"mode: {mode!r} (tunnel or transport)")
        subnets = _subnets(data["subnets"], "subnets") if "subnets" in data else ()
        inner = data.get("inner_address")
        window = data.get("replay_window")
        if window is not None and (not isinstance(window, int) or window < 0):
            raise DeclarationError(f"replay_window: {window!r} (packets, 0 = off)")
        return cls(
            address=addr,
            identity=str(data.get("identity", addr)),
            ike_versions=versions,
            auth=auth,
            psk=psk,
            subnets=subnets,
            ike_proposals=_proposals(data.get("ike_proposals", []), "ike_proposals"),
            esp_proposals=_proposals(data.get("esp_proposals", []), "esp_proposals"),
            features=features,
            ike_port=_port(data.get("ike_port", 500), "ike_port"),
            natt_port=_port(data.get("natt_port", 4500), "natt_port"),
            mode=mode,
            inner_address=_ipv4(inner, "inner_address") if inner is not None else None,
            tester=TesterDeclaration.from_mapping(data.get("tester")),
            replay_window=window,
        )

    @classmethod
    def load(cls, path: Path, *, address: str | None = None) -> DeviceDeclaration:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise DeclarationError(f"{path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise DeclarationError(f"{path}: not YAML: {exc}") from None
        try:
            return cls.from_mapping(data or {}, address=address)
        except DeclarationError as exc:
            raise DeclarationError(f"{path}: {exc}") from None

    # -- where the device is, where our end is -------------------------------------------------

    def host_target(self) -> Any:
        """The :class:`harness.topology.host.HostTarget` for this device."""
        from harness.topology.host import HostTarget

        t = self.tester
        return HostTarget(
            address=self.address,
            ike_port=self.ike_port,
            natt_port=self.natt_port,
            inner=self.inner_address or _host_in(self.subnets),
            local_address=t.address,
            local_ike_port=t.ike_port,
            local_natt_port=t.natt_port,
            local_inner=_host_in(t.subnets),
            device_node=DEVICE_NODE,
        )


def device_topology(
    device: DeviceDeclaration, spec: TopologySpec, *, artifacts: Path | None, run: Run | None
) -> HostTopology:
    """The ``host`` topology for this device (not started; use it as a context manager)."""
    from harness.topology.base import Unsupported
    from harness.topology.host import HostTopology

    ok, why = HostTopology.available_for(device.tester.ike_port, device.tester.natt_port)
    if not ok:
        raise Unsupported("host", why)
    return HostTopology(spec, artifacts=artifacts, run=run, target=device.host_target())


def tester_peer(node: Node, device: Peer | None = None) -> ReferencePeer:
    """Our reference node as the device's peer, on the host topology: ``api`` data plane and
    no clear link (nothing but IKE and ESP in UDP leaves it; a packet that would have to go
    as raw IP is dropped and counted). With ``device`` (an :class:`ExternalPeer`) it is
    configured with the device's declared scenario, so that it starts once with the
    addresses and ports the cases use (``start()`` is then a no-op)."""
    from harness.peers.reference import ReferencePeer

    # The adapter allocates clear-link ports through this registry; port 0 = no clear link
    # (and no attempt to bind a port on the device's address).
    registry = node.topology.workdir / "reference-clear-links.json"
    registry.write_text(json.dumps({DEVICE_NODE: 0, TESTER_NODE: 0}))
    # ESP always in UDP (whatever a scenario says): the api data plane has no raw socket.
    peer = ReferencePeer(
        node,
        dataplane="api",
        extra={"dataplane": {"clear_port": 0, "clear_peers": {}}, "ike": {"force_encap": True}},
    )
    if isinstance(device, ExternalPeer):
        peer.configure(device.declared_scenario(node))
    return peer


class _PerDevice:
    """``capabilities``: a class method on the class, the device's manifest on an instance."""

    def __get__(self, obj: ExternalPeer | None, owner: type[ExternalPeer]) -> Any:
        if obj is None:
            return owner.generic_capabilities
        return obj.device_capabilities


class ExternalPeer(Peer):
    kind = "external"

    def __init__(self, device: DeviceDeclaration) -> None:
        super().__init__(None)
        self.device = device
        self._base: Scenario | None = None
        """The declared scenario of the last :meth:`scenario_for`."""

    @classmethod
    def from_file(cls, path: str | Path, *, address: str | None = None) -> ExternalPeer:
        return cls(DeviceDeclaration.load(Path(path), address=address))

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "a device at an address, with declared capabilities")

    @classmethod
    def generic_capabilities(cls) -> Capabilities:
        """The generic manifest: nothing is claimed until a device declares it."""
        return Capabilities(
            features=frozenset(),
            algorithms={},
            missing={
                **{f: "only what a device's declaration lists" for f in ALL_FEATURES},
                **_NEVER,
            },
            notes=("capabilities come from the device's declaration",),
        )

    capabilities = _PerDevice()
    """``ExternalPeer.capabilities()``: the generic manifest (``ipsec-interop peers``);
    ``peer.capabilities()`` of a device: what its declaration says (suites ask the PUT)."""

    def device_capabilities(self) -> Capabilities:
        """What the device declared, less what the harness can never do with it, less raw
        ESP and AH (our tester sends ESP in UDP only)."""
        d = self.device
        features = set(d.features) - set(_NEVER) - {RAW_ESP, AH}
        features |= {f"ikev{v}" for v in d.ike_versions}
        if d.auth == "psk":
            features.add(PSK)
        ike = {t for p in d.ike_proposals for t in p.transforms()}
        esp = {t for p in d.esp_proposals for t in (*p.encr, *p.integ)}
        pfs = {t for p in d.esp_proposals for t in p.groups}
        undeclared = "not declared by the device (its peer file's 'features')"
        return Capabilities(
            features=frozenset(features),
            algorithms={
                "ike": frozenset(ike) if ike else algorithms.names("encr") | _ike_rest(),
                "esp": frozenset(esp),
                "ah": frozenset(),
                "pfs": frozenset(pfs),
            },
            missing={**{f: undeclared for f in ALL_FEATURES}, **_NEVER, RAW_ESP: _RAW_ESP, AH: _AH},
            notes=(f"declared device at {d.address}",),
        )

    def check(self, needs: Iterable[str] = (), scenario: Scenario | None = None) -> None:
        """Not applicable unless the device declared every need; a scenario must involve the
        device's address and may only use what it declared (it cannot be reconfigured)."""
        caps = self.device_capabilities()
        wanted = set(needs)
        reasons = []
        if scenario is not None:
            wanted |= scenario.needs() - {RECONFIGURE}
            if all(e.address != self.device.address for e in scenario.endpoints):
                reasons.append(f"the scenario does not involve the device at {self.device.address}")
            reasons += caps.check_transforms(scenario)
        reasons = caps.check(wanted) + reasons
        if reasons:
            raise NotApplicable(reasons)

    # -- the scenario as the device is configured ------------------------------------------------

    def declared_scenario(self, tester: Node) -> Scenario:
        """The device's configuration as a scenario between it (node ``put``) and our
        ``tester`` node: its identities, subnets, proposals, mode and PSK."""
        ours = tester.addresses
        return self._declared(tester.name, ours.v4, ours.ike_port, ours.natt_port, ours.inner_v4)

    def _declared(
        self, name: str, address: str, ike_port: int, natt_port: int, inner: str
    ) -> Scenario:
        d, t = self.device, self.device.tester
        device = Endpoint(
            node=DEVICE_NODE,
            address=d.address,
            identity=d.identity,
            subnets=d.subnets or (f"{d.address}/32",),
            ike_port=d.ike_port,
            natt_port=d.natt_port,
        )
        tester_end = Endpoint(
            node=name,
            address=address,
            identity=t.identity or address,
            subnets=t.subnets or (f"{inner}/32",),
            ike_port=ike_port,
            natt_port=natt_port,
        )
        return Scenario(
            (device, tester_end),
            ike_version=2 if 2 in d.ike_versions else 1,
            ike_proposals=d.ike_proposals or (IKE_DEFAULT,),
            esp_proposals=d.esp_proposals or (ESP_DEFAULT,),
            auth="psk",
            psk=d.psk,
            mode="transport" if d.mode == "transport" else "tunnel",
            replay_window=d.replay_window,
            # Our api data plane sends ESP in UDP only (module docstring).
            force_encap=True,
        )

    def scenario_for(self, tester: Node, **changes: Any) -> Scenario:
        """The declared scenario with a case's ``changes`` where the device, as declared,
        takes them; :class:`NotApplicable` (reconfigure) naming each change it cannot."""
        family = int(changes.pop("family", 4))
        base = self.declared_scenario(tester)
        reasons = []
        if family != 4:
            reasons.append(
                f"ipv6: the device is declared at an IPv4 address ({self.device.address})"
            )
        known = {f.name for f in fields(Scenario)}
        accepted: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise TypeError(f"Scenario has no field {key!r}")
            why = self._why_not(base, key, value)
            if why is None:
                if not _keeps_declared(key, value):
                    accepted[key] = value
            else:
                reasons.append(f"{RECONFIGURE}: the case needs {why} ({_NEVER[RECONFIGURE]})")
        if reasons:
            raise NotApplicable(reasons)
        self._base = base
        scenario = base.with_(**accepted)
        self.check(scenario=scenario)
        return scenario

    def differences(self, scenario: Scenario) -> list[str]:
        """Why the device, configured as declared, is not configured with ``scenario``
        (empty: it is). Cases that change identities, subnets, PSK, proposals, mode... of a
        scenario would need the device reconfigured."""
        reasons: list[str] = []
        mine = [e for e in scenario.endpoints if e.node == DEVICE_NODE]
        others = [e for e in scenario.endpoints if e.node != DEVICE_NODE]
        if len(mine) != 1 or len(others) != 1:
            return [f"the scenario does not involve the device (node {DEVICE_NODE!r})"]
        dev, peer = mine[0], others[0]
        base = self._base
        if base is None or base.remote(DEVICE_NODE).node != peer.node:
            inner = (
                str(ipaddress.ip_network(peer.subnets[0]).network_address)
                if peer.subnets
                else peer.address
            )
            base = self._declared(peer.node, peer.address, peer.ike_port, peer.natt_port, inner)
        want_dev, want_peer = base.local(DEVICE_NODE), base.remote(DEVICE_NODE)
        for whose, got, want, names in (
            ("device's", dev, want_dev, ("address", "identity", "subnets", "ike_port",
                                         "natt_port", "cert", "key")),
            ("device's peer", peer, want_peer, ("address", "identity", "subnets")),
        ):  # fmt: skip
            for name in names:
                value, declared = getattr(got, name), getattr(want, name)
                if name == "subnets":
                    value, declared = set(ts_str(value)), set(ts_str(declared))
                if value != declared:
                    reasons.append(
                        f"{RECONFIGURE}: the case needs the {whose} {name} {_show(value)}; it "
                        f"is declared with {_show(declared)} ({_NEVER[RECONFIGURE]})"
                    )
        for f in fields(Scenario):
            if f.name == "endpoints":
                continue
            value = getattr(scenario, f.name)
            if value == getattr(base, f.name):
                continue
            why = self._why_not(base, f.name, value)
            if why is not None:
                reasons.append(f"{RECONFIGURE}: the case needs {why} ({_NEVER[RECONFIGURE]})")
        return reasons

    def _why_not(self, base: Scenario, key: str, value: Any) -> str | None:
        """Why the device, as declared, does not take ``key=value`` (None: it does)."""
        d = self.device
        declared = getattr(base, key)
        if key in ("name", "child_name", "retransmit"):
            return None  # only our end's business
        if key in ("ike_proposals", "esp_proposals"):
            listed = d.ike_proposals if key == "ike_proposals" else d.esp_proposals
            if not listed:
                return None  # not declared: the device's capabilities decide (check())
            # Exactly the declared set: a device configured with more would accept offers the
            # case expects to be refused, one with fewer would refuse offers it expects taken.
            if set(value) != set(listed):
                return f"{key} {[str(p) for p in value]}; it is declared with " + str(
                    [str(p) for p in listed]
                )
            return None
        if key == "ike_version":
            return None if value in d.ike_versions else f"IKEv{value}; it declares {d.ike_versions}"
        if key == "replay_window" and value is None:
            return None  # "the implementation's default": the device's window stands for it
        if key == "fragmentation":
            if value is None or (value and FRAGMENTATION in d.features):
                return None
            return f"fragmentation={value}; the device declares {FRAGMENTATION}: " + (
                "yes" if FRAGMENTATION in d.features else "no"
            )
        if key == "force_encap":
            # True is what our tester does anyway; False ("not forced") cannot be honoured,
            # which only matters to a case about raw ESP (RAW_ESP: not applicable).
            return None
        if value == declared:
            return None
        if key == "psk":
            return "another PSK than the device's"
        return f"{key}={value!r}; it is declared with {declared!r}"

    # -- life cycle: nothing to drive ------------------------------------------------------------

    def start(self) -> None:
        """Nothing to start: the device runs on its own."""

    def stop(self) -> None:
        """Nothing to stop."""

    def configure(self, scenario: Scenario) -> None:
        """Nothing is loaded: checks that the device, as declared, is configured with
        ``scenario`` (else "not applicable": it would need reconfiguring) and records it."""
        reasons = self.differences(scenario)
        if reasons:
            raise NotApplicable(reasons)
        self.check(scenario=scenario)
        self.scenario = scenario

    def _refuse(self, feature: str) -> NotApplicable:
        return NotApplicable([f"{feature}: {_NEVER[feature]}"])

    def initiate(self, *, timeout: float = 30.0) -> None:
        raise self._refuse(INITIATE)

    def terminate(self, *, timeout: float = 10.0) -> None:
        raise self._refuse(INITIATE)

    def rekey_child(self, *, timeout: float = 10.0) -> None:
        raise self._refuse(REKEY)

    def rekey_ike(self, *, timeout: float = 10.0) -> None:
        raise self._refuse(REKEY)

    def list_sas(self) -> list[IkeSaState]:
        raise self._refuse(LIST_SAS)

    def keys(self) -> SaKeys:
        raise self._refuse(KEYS)


def _keeps_declared(key: str, value: object) -> bool:
    """A case's value the device takes, but which the scenario does not adopt: ESP is always
    in UDP from our tester; "the default" replay window is the device's own."""
    return key == "force_encap" or (key == "replay_window" and value is None)


def _show(value: object) -> str:
    if isinstance(value, set):
        return str(sorted(value))
    return repr(value)


def _ike_rest() -> frozenset[str]:
    return algorithms.names("integ") | algorithms.names("prf") | algorithms.names("dh")
