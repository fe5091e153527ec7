"""The ``external`` peer: a device at an address that the harness did not start.

The harness knows only what the person running it declares: the device's address, its
identity and credentials, the configuration it already has (as a :class:`Scenario` seen from
the device), and the capabilities it claims. It cannot reconfigure the device, make it
initiate, rekey or delete, list its SAs or read its keys: cases that need any of that are
"not applicable", with the reason. Cases where the harness's own end drives (the device as
responder) and judges from the wire and from our own node are what it can run.

A declaration is a small YAML/JSON mapping::

    address: 203.0.113.10
    identity: vpn.example.com        # default: the address
    ike_versions: [2]
    auth: psk                        # or pubkey
    psk_env: DEVICE_PSK              # the PSK comes from this environment variable
    subnets: [10.20.0.0/24]          # what the device protects
    ike_proposals: ["AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_256"]
    esp_proposals: ["AES_GCM_16_256"]
    features: [nat_t, esn, mode.tunnel, esp, child_sa, ike_fragmentation, dpd]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.peers import algorithms
from harness.peers.base import (
    ALL_FEATURES,
    CHILD_SA,
    INITIATE,
    KEYS,
    LIST_SAS,
    PSK,
    RECONFIGURE,
    REKEY,
    Availability,
    Capabilities,
    IkeSaState,
    NotApplicable,
    Peer,
    Proposal,
    SaKeys,
    Scenario,
)

_NEVER = {
    RECONFIGURE: "an external device keeps the configuration it has; the harness cannot load one",
    INITIATE: "the harness cannot make an external device initiate, rekey or delete",
    REKEY: "the harness cannot make an external device rekey",
    KEYS: "the keys of an external device cannot be read",
    LIST_SAS: "the SAs of an external device cannot be listed",
}


@dataclass(frozen=True)
class DeviceDeclaration:
    """What is known about an external device (from its declaration file)."""

    address: str
    identity: str = ""
    ike_versions: tuple[int, ...] = (2,)
    auth: str = "psk"
    psk: str = ""
    subnets: tuple[str, ...] = ()
    ike_proposals: tuple[Proposal, ...] = ()
    esp_proposals: tuple[Proposal, ...] = ()
    features: frozenset[str] = field(default_factory=frozenset)
    ike_port: int = 500
    natt_port: int = 4500

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeviceDeclaration:
        if "address" not in data:
            raise ValueError("an external device declaration needs an 'address'")
        psk = str(data.get("psk", ""))
        if "psk_env" in data:
            psk = os.environ.get(str(data["psk_env"]), "")
            if not psk:
                raise ValueError(f"environment variable {data['psk_env']} (the PSK) is not set")
        features = frozenset(str(f) for f in data.get("features", ()))
        unknown = features - set(ALL_FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {list(ALL_FEATURES)}")
        versions = tuple(int(v) for v in data.get("ike_versions", (2,)))
        return cls(
            address=str(data["address"]),
            identity=str(data.get("identity", data["address"])),
            ike_versions=versions,
            auth=str(data.get("auth", "psk")),
            psk=psk,
            subnets=tuple(str(s) for s in data.get("subnets", ())),
            ike_proposals=tuple(Proposal.parse(p) for p in data.get("ike_proposals", ())),
            esp_proposals=tuple(Proposal.parse(p) for p in data.get("esp_proposals", ())),
            features=features,
            ike_port=int(data.get("ike_port", 500)),
            natt_port=int(data.get("natt_port", 4500)),
        )

    @classmethod
    def load(cls, path: Path) -> DeviceDeclaration:
        import yaml

        return cls.from_mapping(yaml.safe_load(path.read_text()) or {})


class ExternalPeer(Peer):
    kind = "external"

    def __init__(self, device: DeviceDeclaration) -> None:
        super().__init__(None)
        self.device = device

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "a device at an address, with declared capabilities")

    @classmethod
    def capabilities(cls) -> Capabilities:
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

    def device_capabilities(self) -> Capabilities:
        d = self.device
        features = set(d.features) - set(_NEVER)
        features |= {f"ikev{v}" for v in d.ike_versions}
        if d.auth == "psk":
            features.add(PSK)
        ike = {t for p in d.ike_proposals for t in p.transforms()}
        esp = {t for p in d.esp_proposals for t in (*p.encr, *p.integ)}
        pfs = {t for p in d.esp_proposals for t in p.groups}
        return Capabilities(
            features=frozenset(features),
            algorithms={
                "ike": frozenset(ike) if ike else algorithms.names("encr") | _ike_rest(),
                "esp": frozenset(esp),
                "ah": frozenset(),
                "pfs": frozenset(pfs),
            },
            missing={**_NEVER, CHILD_SA: "not declared by the device"},
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

    def start(self) -> None:
        """Nothing to start: the device runs on its own."""

    def stop(self) -> None:
        """Nothing to stop."""

    def configure(self, scenario: Scenario) -> None:
        """Only records the scenario after checking the device can take part as declared."""
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


def _ike_rest() -> frozenset[str]:
    return algorithms.names("integ") | algorithms.names("prf") | algorithms.names("dh")
