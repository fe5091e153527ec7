"""``ipsec-interop doctor``: what this machine offers, probed rather than guessed.

Each probe is a small function that returns a :class:`ProbeResult`. Probes that need a network
namespace share one scratch namespace (named with :data:`PROBE_NS_PREFIX`, removed at the end,
and swept by ``ipsec-interop clean`` if a probe was killed half-way). Nothing a probe creates
outlives it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import system

PROBE_NS_PREFIX = "ipsec-interop-probe-"

CHARON_PATHS = ("/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon")
LIBIPSEC_PLUGIN_PATHS = (
    "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so",
    "/usr/lib/x86_64-linux-gnu/ipsec/plugins/libstrongswan-kernel-libipsec.so",
)
# libreswan conflicts with strongSwan's packages, so scripts/install-peers extracts its .deb
# into the project's cache rather than installing it (../shared/design/peers.md §4).
LIBRESWAN_ROOT = Path(os.environ.get("IPSEC_INTEROP_CACHE", "~/.cache/ipsec-interop")).expanduser()
PLUTO_PATHS = (
    "/usr/libexec/ipsec/pluto",
    str(LIBRESWAN_ROOT / "libreswan/usr/libexec/ipsec/pluto"),
)


@dataclass(frozen=True)
class ProbeResult:
    """One line of the doctor table."""

    name: str
    available: bool
    detail: str
    disables: str
    """What cannot run without it (shown only when it is missing)."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class ProbeNamespace:
    """A scratch network namespace, created on first use and deleted on close."""

    def __init__(self) -> None:
        self.name = f"{PROBE_NS_PREFIX}{os.getpid()}"
        self._created: bool | None = None
        self.error = ""

    def ensure(self) -> bool:
        if self._created is None:
            if os.geteuid() != 0:
                self._created = False
                self.error = "needs root"
            else:
                result = system.run(["ip", "netns", "add", self.name], timeout=10)
                self._created = result.ok
                self.error = "" if result.ok else result.first_line()
                if result.ok:
                    system.run(["ip", "-n", self.name, "link", "set", "lo", "up"], timeout=10)
        return self._created

    def run(self, argv: list[str], timeout: float = 15.0) -> system.Completed:
        return system.run(["ip", "netns", "exec", self.name, *argv], timeout=timeout)

    def close(self) -> None:
        if self._created:
            system.run(["ip", "netns", "delete", self.name], timeout=10)
            self._created = None


Probe = Callable[[ProbeNamespace], ProbeResult]


def _first_existing(paths: tuple[str, ...]) -> str | None:
    for path in paths:
        if os.path.exists(path):
            return path
    return None


def probe_root(ns: ProbeNamespace) -> ProbeResult:
    is_root = os.geteuid() == 0
    return ProbeResult(
        "root",
        is_root,
        "running as root" if is_root else f"running as uid {os.geteuid()}",
        "netns topology, TUN data plane, raw ESP/AH sockets, strongSwan and libreswan peers",
    )


def probe_netns(ns: ProbeNamespace) -> ProbeResult:
    ok = ns.ensure()
    return ProbeResult(
        "network namespaces",
        ok,
        "ip netns add works" if ok else (ns.error or "ip netns add failed"),
        "--topology netns; strongSwan and libreswan peers",
    )


def probe_veth(ns: ProbeNamespace) -> ProbeResult:
    if not ns.ensure():
        return ProbeResult(
            "veth", False, f"no namespace to try in ({ns.error})", "--topology netns"
        )
    result = system.run(
        ["ip", "-n", ns.name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"]
    )
    return ProbeResult(
        "veth",
        result.ok,
        "veth pair created and removed" if result.ok else result.first_line(),
        "--topology netns",
    )


_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def probe_tun(ns: ProbeNamespace) -> ProbeResult:
    disables = "tun data plane of the reference node (real kernel traffic through the tunnel)"
    if not os.path.exists("/dev/net/tun"):
        return ProbeResult("TUN", False, "/dev/net/tun is missing", disables)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return ProbeResult("TUN", False, f"cannot open /dev/net/tun: {exc.strerror}", disables)
    try:
        # A non-persistent device: it disappears when the descriptor is closed.
        ifr = struct.pack("16sH", b"iiprobe%d", _IFF_TUN | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except OSError as exc:
        return ProbeResult("TUN", False, f"TUNSETIFF failed: {exc.strerror}", disables)
    finally:
        os.close(fd)
    return ProbeResult("TUN", True, "TUN device created and removed", disables)


def probe_raw_sockets(ns: ProbeNamespace) -> ProbeResult:
    disables = "raw ESP (IP protocol 50) and AH (51) without UDP encapsulation; crafted packets"
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    except OSError as exc:
        return ProbeResult("raw sockets", False, f"raw socket for ESP: {exc.strerror}", disables)
    sock.close()
    return ProbeResult("raw sockets", True, "raw socket for IP protocol 50 opened", disables)


def probe_nftables(ns: ProbeNamespace) -> ProbeResult:
    disables = "closing UDP 500 by drop/reject in netns, NAT router, random loss"
    if system.which("nft") is None:
        return ProbeResult("nftables", False, "nft not found (apt-get install nftables)", disables)
    if not ns.ensure():
        return ProbeResult("nftables", False, f"nft present, untested ({ns.error})", disables)
    result = ns.run(["nft", "add", "table", "inet", "ipsec_interop_probe"])
    return ProbeResult(
        "nftables",
        result.ok,
        "nft table created in a scratch namespace" if result.ok else result.first_line(),
        disables,
    )


def probe_nfqueue(ns: ProbeNamespace) -> ProbeResult:
    disables = (
        "the reference node's check of inbound clear packets in the tun data plane "
        "(policy-spec §4.2, SPD-004: the kernel delivers them unchecked)"
    )
    if system.which("iptables") is None:
        return ProbeResult(
            "iptables NFQUEUE", False, "iptables not found (apt-get install iptables)", disables
        )
    if not ns.ensure():
        return ProbeResult("iptables NFQUEUE", False, f"untested ({ns.error})", disables)
    result = ns.run(
        ["iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "NFQUEUE",
         "--queue-num", "1", "--queue-bypass"]
    )  # fmt: skip
    return ProbeResult(
        "iptables NFQUEUE",
        result.ok,
        "NFQUEUE rule added in a scratch namespace" if result.ok else result.first_line(),
        disables,
    )


def _version_probe(
    name: str, program: str, argv: list[str], disables: str, hint: str
) -> ProbeResult:
    path = system.which(program)
    if path is None:
        return ProbeResult(name, False, f"{program} not found ({hint})", disables)
    result = system.run([path, *argv], timeout=15)
    line = result.first_line() or path
    return ProbeResult(name, True, line, disables)


def probe_tcpdump(ns: ProbeNamespace) -> ProbeResult:
    return _version_probe(
        "tcpdump",
        "tcpdump",
        ["--version"],
        "packet captures (pcap evidence)",
        "apt-get install tcpdump",
    )


def probe_tshark(ns: ProbeNamespace) -> ProbeResult:
    return _version_probe(
        "tshark",
        "tshark",
        ["--version"],
        "the tshark cross-check of the wire oracle",
        "apt-get install tshark",
    )


def probe_docker(ns: ProbeNamespace) -> ProbeResult:
    disables = "--topology docker and the container images"
    try:
        import docker
    except ImportError:
        return ProbeResult("Docker engine", False, "docker SDK not installed", disables)
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        engine = client.version().get("Version", "?")
        client.close()
    except Exception as exc:  # the SDK raises many kinds; all mean "not reachable"
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        text = str(exc)
        if "FileNotFoundError" in text or "No such file" in text:
            reason = "no engine socket"
        elif "Connection refused" in text:
            reason = "connection refused"
        else:
            reason = (text.splitlines()[0] if text else type(exc).__name__)[:80]
        return ProbeResult("Docker engine", False, f"not reachable at {where}: {reason}", disables)
    return ProbeResult("Docker engine", True, f"engine {engine} reachable", disables)


def probe_charon(ns: ProbeNamespace) -> ProbeResult:
    disables = "the strongswan peer"
    path = _first_existing(CHARON_PATHS)
    if path is None:
        return ProbeResult(
            "strongSwan charon",
            False,
            "charon not found (apt-get install strongswan-charon strongswan-swanctl)",
            disables,
        )
    version = system.run(["swanctl", "--version"], timeout=10)
    detail = version.first_line() if version.ok else path
    return ProbeResult("strongSwan charon", True, f"{detail} ({path})", disables)


def probe_libipsec(ns: ProbeNamespace) -> ProbeResult:
    path = _first_existing(LIBIPSEC_PLUGIN_PATHS)
    return ProbeResult(
        "strongSwan kernel-libipsec",
        path is not None,
        path or "plugin not found (apt-get install libcharon-extra-plugins)",
        "strongSwan data plane (ESP) on a kernel without ESP",
    )


def probe_pluto(ns: ProbeNamespace) -> ProbeResult:
    disables = "the libreswan peer"
    path = _first_existing(PLUTO_PATHS)
    if path is None:
        return ProbeResult(
            "libreswan pluto",
            False,
            "pluto not found (scripts/install-peers extracts it)",
            disables,
        )
    version = system.run([path, "--version"], timeout=10)
    return ProbeResult("libreswan pluto", True, f"{version.first_line()} ({path})", disables)


_KEY16 = "0x" + "00" * 16
_KEY32 = "0x" + "00" * 32


def probe_xfrm(ns: ProbeNamespace) -> ProbeResult:
    """Kernel XFRM, and whether it can install ESP and AH states (tried, not read from config)."""
    disables = "kernel data planes of peers (strongSwan falls back to kernel-libipsec)"
    if not ns.ensure():
        return ProbeResult("kernel XFRM", False, f"untested ({ns.error})", disables)
    listing = ns.run(["ip", "xfrm", "state", "list"])
    if not listing.ok:
        return ProbeResult("kernel XFRM", False, f"no XFRM: {listing.first_line()}", disables)
    common = ["ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2"]
    esp = ns.run(
        [
            *common,
            "proto",
            "esp",
            "spi",
            "0x1000",
            "mode",
            "tunnel",
            "enc",
            "cbc(aes)",
            _KEY16,
            "auth",
            "hmac(sha256)",
            _KEY32,
        ]
    )
    ah = ns.run(
        [*common, "proto", "ah", "spi", "0x1001", "mode", "tunnel", "auth", "hmac(sha256)", _KEY32]
    )
    parts = [
        "ESP: yes" if esp.ok else f"ESP: no ({esp.first_line()})",
        "AH: yes" if ah.ok else f"AH: no ({ah.first_line()})",
    ]
    # XFRM itself is there; the table shows what it can do rather than failing the line.
    return ProbeResult("kernel XFRM", True, "XFRM present; " + "; ".join(parts), disables)


def probe_allure(ns: ProbeNamespace) -> ProbeResult:
    return _version_probe(
        "Allure CLI",
        "allure",
        ["--version"],
        "rendering Allure HTML (`ipsec-interop report allure`); results are still written",
        "npm install -g allure-commandline; needs Java",
    )


PROBES: tuple[Probe, ...] = (
    probe_root,
    probe_netns,
    probe_veth,
    probe_tun,
    probe_raw_sockets,
    probe_nftables,
    probe_nfqueue,
    probe_tcpdump,
    probe_tshark,
    probe_docker,
    probe_charon,
    probe_libipsec,
    probe_pluto,
    probe_xfrm,
    probe_allure,
)


@contextlib.contextmanager
def probe_namespace() -> Iterator[ProbeNamespace]:
    ns = ProbeNamespace()
    try:
        yield ns
    finally:
        ns.close()


def run_probes(probes: tuple[Probe, ...] = PROBES) -> list[ProbeResult]:
    """Run every probe; a probe that raises is reported as unavailable, never propagated."""
    results: list[ProbeResult] = []
    with probe_namespace() as ns:
        for probe in probes:
            try:
                results.append(probe(ns))
            except Exception as exc:  # a broken probe must not hide the others
                name = probe.__name__.removeprefix("probe_")
                results.append(ProbeResult(name, False, f"probe error: {exc}", "unknown"))
    return results
