"""The ``strongswan`` peer: charon with kernel-libipsec, driven through vici.

Recipe and limits: ../shared/design/peers.md §0-§3, §5, §6. Each node runs its own charon with
its whole configuration in the node's scratch directory (``STRONGSWAN_CONF``; nothing under
``/etc``), a private ``/run``, its vici socket in the scratch directory, and a file log at
``ike = 4, chd = 4`` (the level that prints every key) in the node's kept log directory.

On this host's Debian 12 packages (5.9.8) kernel-libipsec is the data plane: ESP in tunnel mode
only, always UDP-encapsulated (it fakes a NAT), no AH, no ESN, no AES-GMAC, no transport mode.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import system
from harness.doctor import CHARON_PATHS, LIBIPSEC_PLUGIN_PATHS
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
    ChildSaState,
    IkeSaState,
    NotApplicable,
    Peer,
    PeerError,
    Proposal,
    Retransmit,
    SaKeys,
    Scenario,
    ts_str,
    wait_for_sa,
)
from harness.peers.charon_log import parse_keys
from harness.topology.base import FEATURE_ROOT, Node, NodeProcess, wait_until

PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
PLUGINS = (
    "random", "nonce", "openssl", "aes", "sha1", "sha2", "md5", "hmac", "xcbc", "cmac", "ctr",
    "ccm", "gcm", "chapoly", "gmp", "curve25519", "pem", "pkcs1", "pkcs8", "x509", "pubkey",
    "constraints", "kdf", "kernel-libipsec", "kernel-netlink", "socket-default", "vici",
)  # fmt: skip

_ESP_ENCR = {
    "AES_CBC_128", "AES_CBC_192", "AES_CBC_256", "AES_CTR_128", "AES_CTR_256",
    "AES_GCM_8_128", "AES_GCM_12_128", "AES_GCM_16_128", "AES_GCM_16_192", "AES_GCM_16_256",
    "AES_CCM_16_128", "CHACHA20_POLY1305", "3DES_CBC", "NULL",
}  # fmt: skip
_IKE_ENCR = _ESP_ENCR - {"NULL"}


def charon_path() -> str | None:
    for path in CHARON_PATHS:
        if os.path.exists(path):
            return path
    return None


def _kw(name: str) -> str:
    keyword = algorithms.get(name).strongswan
    if keyword is None:
        raise NotApplicable([f"transform {name}: strongSwan has no keyword for it"])
    return keyword


def ike_proposal(p: Proposal, version: int) -> str:
    """strongSwan's spelling: ``aes256-sha256-prfsha256-modp2048``."""
    parts = [*p.encr, *p.integ, *(p.prf if version == 2 else ()), *p.groups]
    return "-".join(_kw(n) for n in parts)


def child_proposal(p: Proposal) -> str:
    """``aes128gcm16-modp2048-noesn`` (PFS groups, ESN as proposed)."""
    parts = [_kw(n) for n in (*p.encr, *p.integ, *p.groups)]
    if True in p.esn:
        parts += ["esn"] if p.esn == (True,) else ["esn", "noesn"]
    return "-".join(parts)


_DOS = {"cookie_threshold": "10000", "cookie_threshold_ip": "10000", "block_threshold": "10000"}
"""Raised DoS thresholds (charon's defaults are 30, 3 and 5: setup-rate cases would meet
COOKIEs and blocked half-open SAs; peers.md §6)."""


def _hard(rekey: float | None, life: float | None) -> float | None:
    """The hard lifetime: as given, else 10 % (at least 1 s) after the rekey time, so the SA is
    rekeyed before it expires (vici's default with rand_time = 0 is the rekey time itself)."""
    if life is not None or rekey is None:
        return life
    return max(rekey * 1.1, rekey + 1)


def _secs(value: float | None) -> str | None:
    return None if value is None else f"{max(0, round(value))}s"


class StrongSwanPeer(Peer):
    kind = "strongswan"

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.node: Node = node
        self.conf_dir = node.workdir / "strongswan"
        self.conf_path = self.conf_dir / "strongswan.conf"
        self.vici_path = self.conf_dir / "charon.vici"
        self.log_path = node.log_dir / "charon.log"
        self.process: NodeProcess | None = None
        self._session: Any = None
        self._retransmit: Retransmit | None = None
        self._aggressive_psk = False
        self._loaded: set[str] = set()
        self.charon_options: dict[str, str] = {}
        """charon settings that replace the adapter's (see :meth:`set_charon_options`)."""

    # availability and capabilities

    @classmethod
    def availability(cls) -> Availability:
        path = charon_path()
        if path is None:
            return Availability(False, "charon is not installed (scripts/install-system-deps)")
        if os.geteuid() != 0:
            return Availability(False, "charon needs root (netns or docker topology)")
        # swanctl prints "strongSwan 5.9.8 swanctl" (and complains that no daemon answers).
        out = system.run(["swanctl", "--version"], timeout=10)
        found = re.search(r"strongSwan (\d+\.\d+\.\d+)", out.stdout + out.stderr)
        release = f"strongSwan {found.group(1)}" if found else "strongSwan"
        return Availability(True, f"{release}, charon at {path}")

    @classmethod
    def capabilities(cls) -> Capabilities:
        libipsec = any(os.path.exists(p) for p in LIBIPSEC_PLUGIN_PATHS)
        tun = os.path.exists("/dev/net/tun")
        features = {
            IKEV1, IKEV2, AGGRESSIVE, CHILDLESS, TUNNEL, NAT_T, FRAGMENTATION, PSK, CERT_RSA,
            CERT_ECDSA, DPD, REKEY, IPV6, RECONFIGURE, INITIATE, KEYS, LIST_SAS,
        }  # fmt: skip
        if libipsec and tun:
            features |= {CHILD_SA, ESP}
        missing = {
            AH: "kernel-libipsec implements no AH and this kernel has none (peers.md §3)",
            ESN: "kernel-libipsec: 'ESN not supported' (peers.md §3)",
            TRANSPORT: "kernel-libipsec: 'unsupported mode' for transport (peers.md §3)",
            RAW_ESP: "strongSwan 5.9.8 kernel-libipsec always UDP-encapsulates ESP "
            "(raw_esp needs >= 5.9.11; peers.md §1)",
            FALLBACK_TO_CLEAR: "charon has no per-flow fallback to clear on IKE failure",
            IMPAIR: "charon has no impairment switches",
            CHILD_SA: "needs the kernel-libipsec plugin and /dev/net/tun",
            ESP: "needs the kernel-libipsec plugin and /dev/net/tun",
        }
        esp = frozenset(_ESP_ENCR) | algorithms.names("integ")
        return Capabilities(
            features=frozenset(features),
            algorithms={
                "ike": frozenset(_IKE_ENCR)
                | algorithms.names("integ")
                | algorithms.names("prf")
                | algorithms.names("dh"),
                "esp": esp if CHILD_SA in features else frozenset(),
                "ah": frozenset(),
                "pfs": algorithms.names("dh"),
            },
            missing=missing,
            notes=(
                "ESP is UDP-encapsulated on 4500 always: kernel-libipsec fakes a NAT",
                "AES-GMAC ESP fails ('unsupported AEAD algorithm')",
                "charon ignores ICMP port unreachable: drop and reject fail alike",
            ),
        )

    # life cycle

    def start(self) -> None:
        if self.process is not None and self.process.running:
            return
        topo = self.node.topology
        topo.require(FEATURE_ROOT)
        path = charon_path()
        if path is None:
            raise NotApplicable([f"{self.kind}: charon is not installed"])
        self.node.use_image("strongswan")
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        with self.log_path.open("a") as log:
            log.write(f"--- charon start {time.strftime('%H:%M:%S')} ---\n")
        self.process = self.node.spawn(
            "charon.out", [path], env={"STRONGSWAN_CONF": str(self.conf_path)}
        )
        proc = self.process
        self._session = wait_until(
            self._connect, 15.0, f"charon vici at {self.vici_path}", alive=lambda: proc.running
        )

    def _connect(self) -> Any:
        import vici

        if not self.vici_path.exists():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.vici_path))
        except OSError:
            sock.close()
            return None
        sock.settimeout(60.0)
        return vici.Session(sock)

    def stop(self) -> None:
        if self._session is not None:
            try:
                self._session.transport.close()
            except OSError:
                pass
            self._session = None
        if self.process is not None:
            self.process.stop(timeout=5.0)
            self.process = None

    @property
    def session(self) -> Any:
        if self._session is None:
            raise PeerError(f"{self.kind} on {self.node.name} is not running")
        return self._session

    def logs(self) -> list[Path]:
        return [p for p in (self.log_path, self.node.log_dir / "charon.out.log") if p.exists()]

    # configuration

    def _write_conf(self) -> None:
        rt = self._retransmit or Retransmit()
        available = [p for p in PLUGINS if (PLUGIN_DIR / f"libstrongswan-{p}.so").exists()]
        local_ports = ""
        if self.node.addresses.ike_port != 500:
            local_ports = (
                f"  port = {self.node.addresses.ike_port}\n"
                f"  port_nat_t = {self.node.addresses.natt_port}\n"
            )
        aggressive = (
            "  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n"
            if self._aggressive_psk
            else ""
        )
        self.conf_path.write_text(
            "charon {\n"
            "  load_modular = no\n"
            f"  load = {' '.join(available)}\n"
            f"{local_ports}"
            "  install_routes = yes\n"
            "  threads = 32\n"
            f"  retransmit_timeout = {rt.timeout}\n"
            f"  retransmit_base = {rt.base}\n"
            f"  retransmit_tries = {rt.tries}\n"
            "  retransmit_jitter = 0\n"
            + "".join(f"  {k} = {v}\n" for k, v in {**_DOS, **self.charon_options}.items())
            + f"{aggressive}"
            f"  plugins {{\n    vici {{\n      socket = unix://{self.vici_path}\n    }}\n  }}\n"
            "  syslog {\n    daemon {\n      default = -1\n    }\n  }\n"
            "  filelog {\n    main {\n"
            f"      path = {self.log_path}\n"
            "      time_format = %H:%M:%S\n"
            "      ike_name = yes\n"
            "      append = yes\n"
            "      flush_line = yes\n"
            "      default = 1\n"
            "      ike = 4\n"
            "      chd = 4\n"
            "      knl = 2\n"
            "      cfg = 2\n"
            "      esp = 1\n"
            "    }\n  }\n"
            "}\n"
        )

    def set_charon_options(self, **options: str | int | None) -> None:
        """Override charon settings of the adapter's strongswan.conf (``None`` restores the
        adapter's value), e.g. the DoS thresholds for the cookie cases (RFC 7296 §2.6). charon
        reads some of them only at start, so a running charon is restarted when they change
        (connections must be configured again)."""
        new = dict(self.charon_options)
        for key, value in options.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = str(value)
        if new == self.charon_options:
            return
        self.charon_options = new
        running = self.process is not None and self.process.running
        self.stop()
        self._loaded = set()
        self.scenario = None
        if running:
            self.start()

    def configure(self, scenario: Scenario) -> None:
        """Load the connection and credentials; retransmission timers and the Aggressive Mode
        PSK switch are global (``strongswan.conf``) and reloaded when they change."""
        local = scenario.local(self.node.name)
        remote = scenario.remote(self.node.name)
        self.check(scenario=scenario)
        aggressive_psk = scenario.aggressive and scenario.auth == "psk"
        if scenario.retransmit != self._retransmit or aggressive_psk != self._aggressive_psk:
            self._retransmit = scenario.retransmit
            self._aggressive_psk = aggressive_psk
            self._write_conf()
            if self._session is not None:
                self.session.reload_settings()
        if self._session is None:
            self.start()
        s = self.session
        for name in self._loaded - {scenario.name}:
            s.unload_conn({"name": name})
        self._loaded = {scenario.name}

        auth: dict[str, Any] = {"auth": scenario.auth}
        local_auth = {**auth, "id": local.identity}
        remote_auth = {**auth, "id": remote.identity}
        if scenario.auth == "psk":
            s.load_shared(
                {
                    "id": f"ike-{scenario.name}",
                    "type": "IKE",
                    "data": scenario.psk,
                    "owners": [local.identity, remote.identity],
                }
            )
        else:
            assert local.cert is not None and local.key is not None
            if scenario.ca_cert is not None:
                s.load_cert({"type": "X509", "flag": "CA", "data": scenario.ca_cert.read_text()})
                remote_auth["cacerts"] = [scenario.ca_cert.read_text()]
            s.load_key({"type": "any", "data": local.key.read_text()})
            local_auth["certs"] = [local.cert.read_text()]

        lt = scenario.lifetimes
        conn: dict[str, Any] = {
            "version": str(scenario.ike_version),
            "local_addrs": [local.address],
            "remote_addrs": [remote.address],
            "local_port": str(local.ike_port),
            "remote_port": str(remote.ike_port),
            "proposals": [ike_proposal(p, scenario.ike_version) for p in scenario.ike_proposals],
            "aggressive": "yes" if scenario.aggressive else "no",
            "unique": "never",
            "keyingtries": "1",
            "local": local_auth,
            "remote": remote_auth,
        }
        if scenario.force_encap:
            conn["encap"] = "yes"
        if scenario.fragmentation is not None:
            conn["fragmentation"] = "yes" if scenario.fragmentation else "no"
        if scenario.ike_version == 2:
            conn["childless"] = "allow" if scenario.child else "force"
        for key, value in (
            ("rekey_time", _secs(lt.ike_rekey)),
            (
                "over_time",
                _secs(lt.ike_life - lt.ike_rekey) if lt.ike_life and lt.ike_rekey else None,
            ),
            ("rand_time", _secs(lt.jitter)),
        ):
            if value is not None:
                conn[key] = value
        if scenario.dpd is not None:
            conn["dpd_delay"] = _secs(scenario.dpd.delay)
            if scenario.ike_version == 1:
                conn["dpd_timeout"] = _secs(scenario.dpd.timeout)
        if scenario.child:
            child: dict[str, Any] = {
                "local_ts": ts_str(local.subnets),
                "remote_ts": ts_str(remote.subnets),
                "mode": scenario.mode,
                "start_action": "none",
            }
            if scenario.ah_proposals:
                child["ah_proposals"] = [child_proposal(p) for p in scenario.ah_proposals]
            else:
                child["esp_proposals"] = [child_proposal(p) for p in scenario.esp_proposals]
            child_times: tuple[tuple[str, object], ...] = (
                ("rekey_time", _secs(lt.child_rekey)),
                ("life_time", _secs(_hard(lt.child_rekey, lt.child_life))),
                ("rand_time", _secs(lt.jitter)),
                ("rekey_bytes", lt.child_rekey_bytes),
                ("rekey_packets", lt.child_rekey_packets),
            )
            for key, setting in child_times:
                if setting is not None:
                    child[key] = str(setting)
            if scenario.dpd is not None:
                child["dpd_action"] = scenario.dpd.action
            if scenario.replay_window is not None:
                child["replay_window"] = str(scenario.replay_window)
            conn["children"] = {scenario.child_name: child}
        try:
            s.load_conn({scenario.name: conn})
        except Exception as exc:
            raise PeerError(f"{self.kind}: load-conn {scenario.name}: {exc}") from None
        self.scenario = scenario

    # control

    def _scenario(self) -> Scenario:
        if self.scenario is None:
            raise PeerError(f"{self.kind} on {self.node.name}: configure() first")
        return self.scenario

    def initiate(self, *, timeout: float = 30.0) -> None:
        sc = self._scenario()
        request: dict[str, Any] = {"ike": sc.name, "timeout": str(int(timeout * 1000))}
        if sc.child:
            request["child"] = sc.child_name
        request["init-limits"] = "no"
        log = self._stream(self.session.initiate(request), timeout, "initiate")
        del log

    def _stream(self, events: Iterator[Mapping[str, Any]], timeout: float, what: str) -> list[str]:
        """Consume a streamed vici command, keeping its log; PeerError if it failed."""
        lines: list[str] = []
        self.session.transport.socket.settimeout(timeout + 10)
        try:
            for event in events:
                msg = event.get("msg", b"")
                lines.append(msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg))
        except Exception as exc:
            raise PeerError(
                f"{self.kind} on {self.node.name}: {what} failed: {exc}", lines
            ) from None
        finally:
            self.session.transport.socket.settimeout(60.0)
        return lines

    def terminate(self, *, timeout: float = 10.0) -> None:
        sc = self._scenario()
        request = {"ike": sc.name, "timeout": str(int(timeout * 1000))}
        self._stream(self.session.terminate(request), timeout, "terminate")

    def rekey_child(self, *, timeout: float = 10.0) -> None:
        """Rekey the Child SA and wait until a new one is installed."""
        sc = self._scenario()
        before = {c.spi_in for sa in self.list_sas() for c in sa.children}
        self.session.rekey({"child": sc.child_name})
        wait_for_sa(
            self,
            lambda sas: any(
                c.spi_in not in before and c.state == "INSTALLED" for sa in sas for c in sa.children
            ),
            timeout,
            "a rekeyed Child SA",
        )

    def rekey_ike(self, *, timeout: float = 10.0) -> None:
        """Rekey the IKE SA (not reauthenticate) and wait for the new one."""
        sc = self._scenario()
        before = {sa.spi_i for sa in self.list_sas()}
        self.session.rekey({"ike": sc.name, "reauth": "no"})
        wait_for_sa(
            self,
            lambda sas: any(sa.spi_i not in before and sa.established for sa in sas),
            timeout,
            "a rekeyed IKE SA",
        )

    def list_sas(self) -> list[IkeSaState]:
        result: list[IkeSaState] = []
        for entry in self.session.list_sas():
            for name, sa in entry.items():
                result.append(_ike_state(name, sa))
        return result

    def keys(self) -> SaKeys:
        """Every key set in the log (IKE SA SPIs filled in for SAs charon still lists)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return SaKeys((), ())
        keys = parse_keys(text)
        spis = (
            {sa.unique_id: (sa.spi_i, sa.spi_r) for sa in self.list_sas()} if self._session else {}
        )
        ike = tuple(
            replace(k, spi_i=spis[k.unique_id][0], spi_r=spis[k.unique_id][1])
            if k.unique_id in spis
            else k
            for k in keys.ike
        )
        return SaKeys(ike, keys.child)

    def counters(self) -> dict[str, int]:
        """Global IKE counters (retransmissions and the like)."""
        raw = self.session.get_counters().get("counters", {})
        return {k: int(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _spi8(value: Any) -> bytes:
    text = _text(value)
    return bytes.fromhex(text.zfill(16)) if text else b""


def _proposal(sa: Mapping[str, Any]) -> str:
    parts = []
    encr = _text(sa.get("encr-alg"))
    if encr:
        parts.append(algorithms.canonical(encr, _text(sa.get("encr-keysize"))))
    for key in ("integ-alg", "prf-alg", "dh-group"):
        if sa.get(key):
            parts.append(_text(sa[key]))
    if _text(sa.get("esn")) == "1":
        parts.append("EXT_SEQ")
    return "/".join(parts)


def _ike_state(name: str, sa: Mapping[str, Any]) -> IkeSaState:
    children = []
    for child in (sa.get("child-sas") or {}).values():
        children.append(
            ChildSaState(
                name=_text(child.get("name")),
                state=_text(child.get("state")),
                protocol=_text(child.get("protocol")),
                mode=_text(child.get("mode")),
                spi_in=int(_text(child.get("spi-in")) or "0", 16),
                spi_out=int(_text(child.get("spi-out")) or "0", 16),
                encap=_text(child.get("encap")) == "yes",
                proposal=_proposal(child),
                local_ts=tuple(_text(t) for t in child.get("local-ts", [])),
                remote_ts=tuple(_text(t) for t in child.get("remote-ts", [])),
                packets_in=int(_text(child.get("packets-in")) or 0),
                packets_out=int(_text(child.get("packets-out")) or 0),
                unique_id=_text(child.get("uniqueid")),
            )
        )
    return IkeSaState(
        name=name,
        state=_text(sa.get("state")),
        version=int(_text(sa.get("version")) or 0),
        initiator=_text(sa.get("initiator")) == "yes",
        spi_i=_spi8(sa.get("initiator-spi")),
        spi_r=_spi8(sa.get("responder-spi")),
        local=_text(sa.get("local-host")),
        remote=_text(sa.get("remote-host")),
        proposal=_proposal(sa),
        children=tuple(children),
        unique_id=_text(sa.get("uniqueid")),
        nat=any(
            _text(sa.get(k)) == "yes" for k in ("nat-local", "nat-remote", "nat-fake", "nat-any")
        ),
    )
