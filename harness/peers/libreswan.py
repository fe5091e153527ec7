"""The ``libreswan`` peer: pluto + whack, from the package ``scripts/install-peers`` extracts.

Recipe: ../shared/design/peers.md §4. libreswan's package conflicts with strongSwan's, so it is
extracted into the project cache, never installed. pluto hard-codes
``/usr/libexec/ipsec/addconn``, so it runs with the extracted ``usr/libexec`` bind-mounted over
``/usr/libexec`` in its own private mount namespace (the host is untouched), with a private
``/run``, its config, NSS database, secrets and control socket in the node's scratch directory
and its log (``--stderrlog``) in the node's kept log directory. whack and addconn run in the
node (``Node.exec``) and talk to pluto over the control socket. A node that has libreswan
installed (its container image) runs its own pluto without any bind mount.

On a kernel without ESP/AH (this project's CI) every IPsec SA install fails with errno 38:
libreswan is then an IKE-only peer (childless IKEv2 SAs, IKE rekey, informational exchanges,
impairments), and its capability manifest says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness import system
from harness.doctor import LIBRESWAN_ROOT
from harness.peers import algorithms
from harness.peers.base import (
    AGGRESSIVE,
    AH,
    CERT_ECDSA,
    CERT_RSA,
    CHILD_SA,
    CHILDLESS,
    DPD,
    ESN,
    ESP,
    FALLBACK_TO_CLEAR,
    FRAGMENTATION,
    IKEV1,
    IKEV2,
    IMPAIR,
    INITIATE,
    IPV6,
    KEYS,
    LIST_SAS,
    NAT_T,
    PSK,
    RAW_ESP,
    RECONFIGURE,
    REKEY,
    TRANSPORT,
    TUNNEL,
    Availability,
    Capabilities,
    IkeSaState,
    NotApplicable,
    Peer,
    PeerError,
    Proposal,
    Scenario,
    ts_str,
    wait_for_sa,
)
from harness.topology.base import FEATURE_BINDS, FEATURE_ROOT, Node, NodeProcess, wait_until

EXTRACTED = LIBRESWAN_ROOT / "libreswan"
"""Where ``scripts/install-peers`` extracts the libreswan package."""
SYSTEM_LIBEXEC = Path("/usr/libexec")


def libexec_dir() -> Path | None:
    """The ``usr/libexec`` holding ``ipsec/pluto``: the extracted package, else the system's."""
    for base in (EXTRACTED / "usr/libexec", SYSTEM_LIBEXEC):
        if (base / "ipsec/pluto").exists():
            return base
    return None


def _kw(name: str) -> str:
    keyword = algorithms.get(name).libreswan
    if keyword is None:
        raise NotApplicable([f"transform {name}: libreswan has no keyword for it"])
    return keyword


def ike_proposal(p: Proposal, version: int) -> str:
    """libreswan's ``ike=`` spelling: ``aes256-sha2_256-modp2048``, ``aes_gcm_c128-sha2_256-dh31``.

    Without AEAD the PRF is the integrity algorithm's hash, so a different PRF cannot be said.
    """
    if p.aead:
        parts = [*p.encr, *p.prf, *p.groups]
        return "-".join(_kw(n) for n in parts)
    prfs = {_kw(n) for n in p.prf}
    integs = {_kw(n) for n in p.integ}
    if prfs and prfs != integs:
        raise NotApplicable([f"IKE proposal {p}: libreswan ties the PRF to the integrity hash"])
    return "-".join(_kw(n) for n in (*p.encr, *p.integ, *p.groups))


def _hard(rekey: float, life: float | None) -> float:
    return life if life is not None else max(rekey * 1.1, rekey + 1)


def child_proposal(p: Proposal) -> str:
    return "-".join(_kw(n) for n in (*p.encr, *p.integ, *p.groups))


_CODE = re.compile(r"^\d{3} ")
_STATE = re.compile(r'^#(\d+): "([^"]+)"\S* (STATE_\S+) \(([^)]*)\)(.*)$')
_ESTABLISHED_IKE = {
    "STATE_V2_ESTABLISHED_IKE_SA", "STATE_MAIN_I4", "STATE_MAIN_R3", "STATE_AGGR_I2",
    "STATE_AGGR_R2",
}  # fmt: skip
_ESTABLISHED_CHILD = {"STATE_V2_ESTABLISHED_CHILD_SA", "STATE_QUICK_I2", "STATE_QUICK_R2"}


class LibreswanPeer(Peer):
    kind = "libreswan"

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.node: Node = node
        self.conf_dir = node.workdir / "libreswan"
        self.run_dir = self.conf_dir / "run"
        self.nss_dir = self.conf_dir / "nss"
        self.conf_path = self.conf_dir / "ipsec.conf"
        self.secrets_path = self.conf_dir / "ipsec.secrets"
        self.ctl = self.run_dir / "pluto.ctl"
        self.process: NodeProcess | None = None
        self._loaded: set[str] = set()
        self._libexec = SYSTEM_LIBEXEC
        """``usr/libexec`` holding libreswan's programs, as the node sees it."""

    # availability and capabilities

    @classmethod
    def availability(cls) -> Availability:
        libexec = libexec_dir()
        if libexec is None:
            return Availability(False, "pluto not found (run scripts/install-peers as root)")
        if os.geteuid() != 0:
            return Availability(False, "pluto needs root (netns or docker topology)")
        if system.which("certutil") is None:
            return Availability(False, "certutil (libnss3-tools) is missing: scripts/install-peers")
        pluto = libexec / "ipsec/pluto"
        version = system.run([str(pluto), "--version"], timeout=10)
        if not version.ok:
            return Availability(False, f"{pluto} --version failed: {version.first_line()}")
        return Availability(True, f"{' '.join(version.first_line().split()[:2])} at {pluto}")

    @classmethod
    def capabilities(cls) -> Capabilities:
        from harness.peers.host import kernel_ipsec

        esp, ah, _ = kernel_ipsec() if os.geteuid() == 0 else (False, False, "not root")
        features = {
            IKEV1, IKEV2, AGGRESSIVE, CHILDLESS, NAT_T, FRAGMENTATION, PSK, DPD, REKEY, IPV6,
            RECONFIGURE, INITIATE, LIST_SAS, IMPAIR,
        }  # fmt: skip
        no_kernel = (
            "this kernel cannot install ESP/AH states (probed) and libreswan 4.10 has no "
            "userspace data plane (peers.md §4: errno 38)"
        )
        if esp:
            features |= {CHILD_SA, ESP, TUNNEL, TRANSPORT, ESN, RAW_ESP}
        if ah:
            features.add(AH)
        missing = {
            CHILD_SA: no_kernel,
            ESP: no_kernel,
            AH: no_kernel,
            ESN: no_kernel,
            TUNNEL: no_kernel,
            TRANSPORT: no_kernel,
            RAW_ESP: no_kernel,
            KEYS: "pluto's keys are not read (its private debug log is not parsed yet)",
            CERT_RSA: "certificate authentication (NSS database import) is not wired yet",
            CERT_ECDSA: "certificate authentication (NSS database import) is not wired yet",
            FALLBACK_TO_CLEAR: "not wired (needs kernel policies: negotiationshunt=passthrough)",
        }
        ike = (
            (algorithms.names("encr") - {"NULL", "NULL_AES_GMAC_128"})
            | algorithms.names("integ")
            | algorithms.names("prf")
            | algorithms.names("dh")
        )
        child = (algorithms.names("encr") | algorithms.names("integ")) - {"AES_CMAC_96"}
        return Capabilities(
            features=frozenset(features),
            algorithms={
                "ike": frozenset(ike - {"AES_CMAC_96", "PRF_AES128_CMAC"}),
                "esp": frozenset(child) if esp else frozenset(),
                "ah": frozenset(algorithms.names("integ")) if ah else frozenset(),
                "pfs": algorithms.names("dh"),
            },
            missing=missing,
            notes=(
                "as IKEv2 initiator with a Child SA it fails after IKE_AUTH and re-initiates "
                "every ~5 s (impair 'revival' stops that)",
                "as responder it answers a Child SA request with TS_UNACCEPTABLE",
                "IKE fragmentation, DPD and impairments via whack --impair",
            ),
        )

    # life cycle

    def _tool(self, name: str) -> str:
        """Path of a libreswan program as the node sees it (for node.exec)."""
        return str(self._libexec / "ipsec" / name)

    def _whack(self, *args: str, timeout: float = 15.0) -> system.Completed:
        argv = [self._tool("whack"), "--ctlsocket", str(self.ctl), *args]
        return self.node.exec(argv, timeout=timeout)

    def start(self) -> None:
        """Start pluto in the node: the node's own libreswan if it has one (a libreswan
        container), else the extracted package bind-mounted over ``/usr/libexec`` (netns)."""
        if self.process is not None and self.process.running:
            return
        topo = self.node.topology
        topo.require(FEATURE_ROOT)
        self.node.use_image("libreswan")
        binds: dict[str, str] = {}
        if self.node.exec(["test", "-x", str(SYSTEM_LIBEXEC / "ipsec/pluto")]).ok:
            self._libexec = SYSTEM_LIBEXEC
        elif (EXTRACTED / "usr/libexec/ipsec/pluto").exists():
            topo.require(FEATURE_BINDS)
            self._libexec = EXTRACTED / "usr/libexec"
            binds = {str(self._libexec): str(SYSTEM_LIBEXEC)}
        else:
            raise NotApplicable([f"{self.kind}: pluto is not installed (scripts/install-peers)"])
        for d in (self.conf_dir, self.run_dir, self.nss_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not (self.nss_dir / "cert9.db").exists():
            result = self.node.exec(
                ["certutil", "-N", "-d", f"sql:{self.nss_dir}", "--empty-password"], timeout=30
            )
            if not result.ok:
                raise PeerError(f"libreswan: certutil: {result.first_line()}")
        if not self.conf_path.exists():
            self._write_conf(None)
        self.process = self.node.spawn(
            "pluto",
            [
                "/usr/libexec/ipsec/pluto",
                "--config",
                str(self.conf_path),
                "--rundir",
                str(self.run_dir),
                "--nofork",
                "--stderrlog",
            ],
            binds=binds,
        )
        proc = self.process
        wait_until(
            lambda: self.ctl.exists() and self._whack("--status", timeout=5).ok,
            20.0,
            f"pluto control socket {self.ctl}",
            alive=lambda: proc.running,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5.0)
            self.process = None

    def logs(self) -> list[Path]:
        path = self.node.log_dir / "pluto.log"
        return [path] if path.exists() else []

    # configuration

    def _write_conf(self, scenario: Scenario | None) -> None:
        lines = [
            "config setup",
            f"    nssdir={self.nss_dir}",
            f"    ipsecdir={self.conf_dir}",
            f"    secretsfile={self.secrets_path}",
            f"    dumpdir={self.run_dir}",
            "    protostack=xfrm",
            "    uniqueids=no",
            "    ikev1-policy=accept",
            "    plutodebug=none",
            "",
        ]
        secrets = ""
        if scenario is not None:
            lines += self._conn(scenario)
            local = scenario.local(self.node.name)
            remote = scenario.remote(self.node.name)
            psk = scenario.psk.replace('"', '\\"')
            secrets = f'{local.identity} {remote.identity} : PSK "{psk}"\n'
        self.conf_path.write_text("\n".join(lines) + "\n")
        self.secrets_path.write_text(secrets)
        self.secrets_path.chmod(0o600)

    def _conn(self, sc: Scenario) -> list[str]:
        local = sc.local(self.node.name)
        remote = sc.remote(self.node.name)
        lt = sc.lifetimes
        conn = [
            f"conn {sc.name}",
            f"    ikev2={'yes' if sc.ike_version == 2 else 'no'}",
            "    authby=secret",
            f"    left={local.address}",
            f"    leftid={local.identity}",
            f"    right={remote.address}",
            f"    rightid={remote.identity}",
            f"    ike={','.join(ike_proposal(p, sc.ike_version) for p in sc.ike_proposals)}",
            "    auto=add",
        ]
        if local.ike_port != 500:
            conn.append(f"    leftikeport={local.ike_port}")
        if remote.ike_port != 500:
            conn.append(f"    rightikeport={remote.ike_port}")
        if len(local.subnets) == 1 and len(remote.subnets) == 1:
            conn += [
                f"    leftsubnet={ts_str(local.subnets)[0]}",
                f"    rightsubnet={ts_str(remote.subnets)[0]}",
            ]
        else:
            conn += [
                f"    leftsubnets={{{' '.join(ts_str(local.subnets))}}}",
                f"    rightsubnets={{{' '.join(ts_str(remote.subnets))}}}",
            ]
        proposals = sc.ah_proposals or sc.esp_proposals
        kind = "ah" if sc.ah_proposals else "esp"
        conn.append(f"    {kind}=" + ",".join(child_proposal(p) for p in proposals))
        conn.append(f"    pfs={'yes' if any(p.groups for p in proposals) else 'no'}")
        conn.append(f"    type={sc.mode}")
        if sc.aggressive:
            conn.append("    aggressive=yes")
        if sc.force_encap:
            conn.append("    encapsulation=yes")
        if sc.replay_window is not None:
            conn.append(f"    replay-window={sc.replay_window}")
        if sc.fragmentation is not None:
            conn.append(f"    fragmentation={'yes' if sc.fragmentation else 'no'}")
        # libreswan rekeys "rekeymargin" before the hard lifetime (one margin for both SAs)
        margin = None
        if lt.ike_rekey is not None:
            ike_life = _hard(lt.ike_rekey, lt.ike_life)
            conn.append(f"    ikelifetime={round(ike_life)}s")
            margin = ike_life - lt.ike_rekey
        if lt.child_rekey is not None:
            child_life = _hard(lt.child_rekey, lt.child_life)
            conn.append(f"    salifetime={round(child_life)}s")
            margin = child_life - lt.child_rekey
        if margin is not None:
            conn.append(f"    rekeymargin={max(1, round(margin))}s")
        if lt.jitter == 0:
            conn.append("    rekeyfuzz=0%")
        if sc.dpd is not None:
            conn += [
                f"    dpddelay={round(sc.dpd.delay)}s",
                f"    dpdtimeout={round(sc.dpd.timeout)}s",
                f"    dpdaction={sc.dpd.action}",
            ]
        if sc.retransmit is not None:
            # libreswan doubles from retransmit-interval up to retransmit-timeout in total.
            conn += [
                f"    retransmit-interval={round(sc.retransmit.timeout * 1000)}",
                f"    retransmit-timeout={max(1, round(sc.retransmit.give_up_after()))}s",
            ]
        return conn

    def configure(self, scenario: Scenario) -> None:
        self.check(scenario=scenario.with_(child=False) if not scenario.child else scenario)
        if scenario.auth != "psk":
            raise NotApplicable([f"{CERT_RSA}: certificate authentication is not wired yet"])
        self._write_conf(scenario)
        if self.process is None:
            self.start()
        for name in self._loaded:
            self._whack("--delete", "--name", name)
        addconn = [self._tool("addconn"), "--config", str(self.conf_path)]
        result = self.node.exec([*addconn, "--ctlsocket", str(self.ctl), scenario.name], timeout=30)
        if not result.ok:
            raise PeerError(f"libreswan: addconn {scenario.name}: {result.stderr or result.stdout}")
        self._whack("--rereadsecrets")
        self._loaded = {scenario.name}
        self.scenario = scenario

    # control

    def _scenario(self) -> Scenario:
        if self.scenario is None:
            raise PeerError(f"{self.kind} on {self.node.name}: configure() first")
        return self.scenario

    def impair(self, *behaviours: str) -> None:
        """``whack --impair`` each behaviour (e.g. ``revival``, ``suppress-retransmits``)."""
        for b in behaviours:
            result = self._whack("--impair", b)
            if not result.ok:
                raise PeerError(f"libreswan: --impair {b}: {result.stdout or result.stderr}")

    def initiate(self, *, timeout: float = 30.0) -> None:
        sc = self._scenario()
        result = self._whack("--name", sc.name, "--initiate", timeout=timeout)
        if not result.ok:
            raise PeerError(
                f"libreswan: initiate {sc.name} failed ({result.returncode})",
                (result.stdout + result.stderr).splitlines(),
            )

    def terminate(self, *, timeout: float = 10.0) -> None:
        sc = self._scenario()
        self._whack("--name", sc.name, "--terminate", timeout=timeout)

    def rekey_ike(self, *, timeout: float = 10.0) -> None:
        sc = self._scenario()
        before = {sa.unique_id for sa in self.list_sas()}
        result = self._whack("--name", sc.name, "--rekey-ike", timeout=timeout)
        if not result.ok:
            raise PeerError(f"libreswan: rekey-ike failed: {result.stdout or result.stderr}")
        wait_for_sa(
            self,
            lambda sas: any(sa.unique_id not in before and sa.established for sa in sas),
            timeout,
            "a rekeyed IKE SA",
        )

    def list_sas(self) -> list[IkeSaState]:
        """IKE SAs from ``whack --showstates``: pluto's state serial as ``unique_id``, its
        state name (``STATE_V2_ESTABLISHED_IKE_SA`` becomes ``ESTABLISHED``), no SPIs (whack
        does not show them), addresses from the scenario."""
        result = self._whack("--showstates")
        sas = []
        local = remote = ""
        if self.scenario is not None:
            local = self.scenario.local(self.node.name).address
            remote = self.scenario.remote(self.node.name).address
        for line in result.stdout.splitlines():
            m = _STATE.match(_CODE.sub("", line))
            if not m:
                continue
            serial, name, state, _desc, _rest = m.groups()
            if state in _ESTABLISHED_IKE:
                shown = "ESTABLISHED"
            elif "CHILD" in state or "QUICK" in state or state in _ESTABLISHED_CHILD:
                continue
            else:
                shown = state
            sas.append(
                IkeSaState(
                    name=name,
                    state=shown,
                    version=2 if state.startswith("STATE_V2_") else 1,
                    initiator=state.startswith(
                        ("STATE_MAIN_I", "STATE_AGGR_I", "STATE_V2_PARENT_I")
                    ),
                    spi_i=b"",
                    spi_r=b"",
                    local=local,
                    remote=remote,
                    proposal="",
                    unique_id=serial,
                )
            )
        return sas

    def status(self) -> str:
        return self._whack("--status").stdout
