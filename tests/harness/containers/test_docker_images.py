"""The images on a real engine: cached rebuilds, the entrypoint contract (configuration copied
to /etc/ipsec-interop, logs in /var/log/ipsec-interop, exit codes, health check), and two
strongSwan containers that bring up an IKEv2 PSK tunnel over an internal network and ping
through kernel-libipsec with nothing but NET_ADMIN (+ NET_RAW, NET_BIND_SERVICE) and
/dev/net/tun; libreswan <-> strongSwan IKE only (shared/design/peers.md §4)."""

from __future__ import annotations

import io
import ipaddress
import re
import tarfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from harness import images
from harness.topology.run import DOCKER_LABEL, current_run
from tests.harness.containers.conftest import free_subnet

# Slow: the first test of a session builds the images (minutes on a fresh machine, seconds when
# cached), and each test starts containers.
pytestmark = [pytest.mark.needs_docker, pytest.mark.slow, pytest.mark.timeout(900)]

PSK = "containers-test-psk-0123456789"


def _tar(files: Mapping[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Lab:
    """Containers and a network made by one test, labelled with the run, removed at the end."""

    def __init__(self, client: Any, tags: Mapping[str, str]) -> None:
        self.client = client
        self.tags = tags
        self.run = current_run()
        self.containers: list[str] = []
        self.network: Any = None
        self.subnet: ipaddress.IPv4Network | None = None

    def labels(self) -> dict[str, str]:
        return {DOCKER_LABEL: self.run.id}

    def make_network(self) -> ipaddress.IPv4Network:
        import docker

        for _ in range(5):
            subnet = ipaddress.IPv4Network(free_subnet(self.client))
            try:
                suffix = time.monotonic_ns() % 10**6
                self.network = self.client.networks.create(
                    f"{self.run.label}-imgtest-{suffix}",
                    driver="bridge",
                    internal=True,
                    ipam=docker.types.IPAMConfig(
                        pool_configs=[
                            docker.types.IPAMPool(
                                subnet=str(subnet), gateway=str(subnet.network_address + 254)
                            )
                        ]
                    ),
                    labels=self.labels(),
                )
            except docker.errors.APIError as exc:
                if "overlap" in str(exc).lower():
                    continue
                raise
            self.subnet = subnet
            return subnet
        raise RuntimeError("no free subnet")

    def create(
        self,
        image: str,
        name: str,
        *,
        config: Mapping[str, str] | None = None,
        ip: str | None = None,
        tun: bool = True,
        command: list[str] | None = None,
        cap_add: tuple[str, ...] | None = None,
    ) -> str:
        api = self.client.api
        spec = images.SPECS[image]
        full = f"{self.run.label}-{name}-{time.monotonic_ns() % 10**6}"
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            cap_add=list(cap_add if cap_add is not None else spec.cap_add),
            devices=[f"{d}:{d}:rwm" for d in spec.devices] if tun else [],
            network_mode=self.network.name if self.network is not None else "none",
        )
        networking = None
        if self.network is not None and ip is not None:
            networking = api.create_networking_config(
                {self.network.name: api.create_endpoint_config(ipv4_address=ip)}
            )
        api.create_container(
            self.tags[image],
            command=command,
            name=full,
            labels=self.labels(),
            host_config=host_config,
            networking_config=networking,
            detach=True,
        )
        self.containers.append(full)
        if config:
            # The remote-safe way in: copied before the start, no bind mount needed.
            assert api.put_archive(full, "/etc/ipsec-interop", _tar(config))
        return full

    def start(self, name: str) -> None:
        self.client.api.start(name)

    def wait_exit(self, name: str, timeout: float = 60.0) -> int:
        return int(self.client.api.wait(name, timeout=timeout)["StatusCode"])

    def exec(self, name: str, *argv: str, timeout: float = 60.0) -> tuple[int, str]:
        cmd = ["timeout", str(int(timeout)), *argv]
        res = self.client.containers.get(name).exec_run(cmd)
        return int(res.exit_code), res.output.decode(errors="replace")

    def wait_file(self, name: str, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.client.api.inspect_container(name)["State"]
            if not state["Running"]:
                logs = self.client.api.logs(name).decode(errors="replace")
                raise AssertionError(f"{name} exited ({state['ExitCode']}): {logs}")
            if self.exec(name, "test", "-e", path)[0] == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"{path} did not appear in {name} within {timeout} s")

    def read(self, name: str, path: str) -> str:
        stream, _ = self.client.api.get_archive(name, path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            f = tar.extractfile(member)
            assert f is not None
            return f.read().decode(errors="replace")

    def close(self) -> None:
        for name in reversed(self.containers):
            self.client.api.remove_container(name, force=True)
        if self.network is not None:
            self.network.remove()


@pytest.fixture
def lab(docker_client: Any, built_images: dict[str, str], no_leftovers: None) -> Iterator[Lab]:
    lab = Lab(docker_client, built_images)
    try:
        yield lab
    finally:
        lab.close()


def swanctl_conf(
    me: str,
    peer: str,
    inner_me: str,
    inner_peer: str,
    *,
    childless: bool = False,
    version: int = 2,
    aggressive: bool = False,
) -> str:
    return f"""connections {{ t {{
  version = {version}
  aggressive = {"yes" if aggressive else "no"}
  local_addrs = {me}
  remote_addrs = {peer}
  proposals = {"aes128gcm16-prfsha256-x25519, " if version == 2 else ""}aes256-sha256-modp2048
  {"childless = force" if childless else ""}
  local {{ auth = psk
           id = {me} }}
  remote {{ auth = psk
            id = {peer} }}
  children {{ c {{ local_ts = {inner_me}/32
                  remote_ts = {inner_peer}/32
                  esp_proposals = aes128gcm16-modp2048, aes128gcm16 }} }}
}} }}
secrets {{ ike-t {{ id-a = {me}
                   id-b = {peer}
                   secret = "{PSK}" }} }}
"""


def test_an_unchanged_rebuild_is_cached(built_images: dict[str, str]) -> None:
    """A second build with nothing changed reuses every layer: seconds, the same images."""
    before = {n: (images.inspect_image(t) or {}).get("Id") for n, t in built_images.items()}
    results = images.build(["strongswan", "libreswan"], log=lambda line: None)
    assert {r.name: r.image_id for r in results} == {
        "strongswan": before["strongswan"],
        "libreswan": before["libreswan"],
    }
    # Per image, from the start of its docker build (not waiting for another worker's build).
    slowest = max(r.seconds for r in results)
    assert slowest < 15, f"a cached rebuild took {slowest:.1f} s"


def test_images_carry_their_labels(built_images: dict[str, str]) -> None:
    for name, tag in built_images.items():
        info = images.inspect_image(tag)
        assert info is not None
        labels = images.image_labels(info)
        assert labels[f"{images.LABEL}image"] == name
        assert labels[f"{images.LABEL}version"] == images.project_version(images.repo_root())
        assert labels[f"{images.LABEL}base-image"] in (images.DEFAULT_BASE, images.LOCAL_BASE)
    assert (
        images.image_labels(images.inspect_image(built_images["strongswan"]) or {})[
            f"{images.LABEL}peer-version"
        ]
        == "5.9.8"
    )


def test_images_list_says_current_or_stale(built_images: dict[str, str]) -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "images", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    states = {i["name"]: i for i in json.loads(proc.stdout)["images"]}
    assert set(states) == set(images.IMAGE_NAMES)
    # The peers' images do not depend on the Python sources: current right after the build.
    assert states["strongswan"]["status"] == "current"
    assert states["libreswan"]["peer_version"] == "4.10"


def test_missing_configuration_exits_2(lab: Lab) -> None:
    for image in ("strongswan", "libreswan", "reference"):
        name = lab.create(image, f"noconf-{image}")
        lab.start(name)
        assert lab.wait_exit(name) == 2, image
        logs = lab.client.api.logs(name).decode()
        assert "missing /etc/ipsec-interop/" in logs


def test_invalid_configuration_exits_2(lab: Lab) -> None:
    sw = lab.create("strongswan", "badsw", config={"swanctl.conf": "connections { t { version = "})
    lsw = lab.create("libreswan", "badlsw", config={"ipsec.conf": "conn t\n    nosuchkey=1\n"})
    lab.start(sw)
    lab.start(lsw)
    assert lab.wait_exit(sw) == 2
    assert "swanctl could not load" in lab.client.api.logs(sw).decode()
    assert lab.wait_exit(lsw) == 2
    assert "invalid /etc/ipsec-interop/ipsec.conf" in lab.client.api.logs(lsw).decode()


def test_no_tun_device_exits_3(lab: Lab) -> None:
    conf = swanctl_conf("192.0.2.1", "192.0.2.2", "198.19.1.1", "198.19.2.1")
    name = lab.create("strongswan", "notun", config={"swanctl.conf": conf}, tun=False)
    lab.start(name)
    assert lab.wait_exit(name) == 3
    assert "no /dev/net/tun" in lab.client.api.logs(name).decode()


def test_no_net_admin_exits_3(lab: Lab) -> None:
    name = lab.create("libreswan", "noadmin", config={"ipsec.conf": "config setup\n"}, cap_add=())
    lab.start(name)
    assert lab.wait_exit(name) == 3
    assert "no CAP_NET_ADMIN" in lab.client.api.logs(name).decode()


@pytest.mark.parametrize(
    ("version", "aggressive"),
    [(2, False), (1, False), (1, True)],
    ids=["ikev2", "ikev1-main", "ikev1-aggressive"],
)
def test_strongswan_pair_pings_through_libipsec(lab: Lab, version: int, aggressive: bool) -> None:
    """IKEv2; IKEv1 Main + Quick Mode with PFS; Aggressive Mode PSK, which the image allows as
    responder (peers.md §2)."""
    subnet = lab.make_network()
    a_ip, b_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
    assert ipaddress.ip_address(a_ip) in ipaddress.ip_network("198.18.0.0/15")
    a = lab.create(
        "strongswan",
        "swa",
        ip=a_ip,
        config={
            "swanctl.conf": swanctl_conf(
                a_ip, b_ip, "198.19.1.1", "198.19.2.1", version=version, aggressive=aggressive
            )
        },
    )
    b = lab.create(
        "strongswan",
        "swb",
        ip=b_ip,
        config={
            "swanctl.conf": swanctl_conf(
                b_ip, a_ip, "198.19.2.1", "198.19.1.1", version=version, aggressive=aggressive
            )
        },
    )
    for name in (a, b):
        info = lab.client.api.inspect_container(name)["HostConfig"]
        assert not info["Privileged"]
        assert info["CapDrop"] == ["ALL"]
        assert set(info["CapAdd"]) == {"NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"}
        lab.start(name)
    for name in (a, b):
        lab.wait_file(name, "/run/ipsec-interop/ready")
        assert lab.exec(name, "/usr/local/bin/ipsec-interop-healthcheck")[0] == 0
    assert lab.exec(a, "ip", "addr", "add", "198.19.1.1/32", "dev", "lo")[0] == 0
    assert lab.exec(b, "ip", "addr", "add", "198.19.2.1/32", "dev", "lo")[0] == 0

    rc, out = lab.exec(a, "swanctl", "--initiate", "--child", "c")
    assert rc == 0, out
    assert "CHILD_SA c{1} established" in out
    mode = {2: "IKE_SA_INIT", 1: "Aggressive Mode" if aggressive else "Main Mode"}[version]
    assert mode in out
    rc, out = lab.exec(a, "ping", "-c", "3", "-W", "2", "-I", "198.19.1.1", "198.19.2.1")
    assert rc == 0, out
    assert "3 received" in out
    rc, sas = lab.exec(b, "swanctl", "--list-sas")
    assert "TUNNEL-in-UDP" in sas  # libipsec always encapsulates (peers.md §0)
    packets_in = re.search(r"in\s+\w+,\s+\d+ bytes,\s+(\d+) packets", sas)
    assert packets_in is not None and int(packets_in.group(1)) >= 3

    # Logs in the mounted-or-not log folder, at the level that prints keys (for the oracle).
    log = lab.read(a, "/var/log/ipsec-interop/charon.log")
    assert ("Sk_ei secret" if version == 2 else "encryption key Ka") in log
    assert "encryption initiator key" in log

    lab.client.api.stop(a, timeout=10)
    assert lab.wait_exit(a) == 0
    assert "stopped on request" in lab.read(a, "/var/log/ipsec-interop/entrypoint.log")


def test_libreswan_and_strongswan_establish_a_childless_ike_sa(lab: Lab) -> None:
    """IKE only: libreswan cannot install ESP here (peers.md §4 C)."""
    subnet = lab.make_network()
    sw_ip, lsw_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
    sw = lab.create(
        "strongswan",
        "sw",
        ip=sw_ip,
        config={
            "swanctl.conf": swanctl_conf(sw_ip, lsw_ip, "198.19.1.1", "198.19.2.1", childless=True)
        },
    )
    ipsec_conf = f"""config setup
    plutodebug=none
    protostack=xfrm
    ikev1-policy=accept
conn t
    ikev2=yes
    authby=secret
    left={lsw_ip}
    leftid={lsw_ip}
    leftsubnet=198.19.2.1/32
    right={sw_ip}
    rightid={sw_ip}
    rightsubnet=198.19.1.1/32
    ike=aes256-sha2_256-modp2048
    esp=aes_gcm128
    auto=add
"""
    lsw = lab.create(
        "libreswan",
        "lsw",
        ip=lsw_ip,
        config={"ipsec.conf": ipsec_conf, "ipsec.secrets": f'{lsw_ip} {sw_ip} : PSK "{PSK}"\n'},
    )
    info = lab.client.api.inspect_container(lsw)["HostConfig"]
    assert "AUDIT_WRITE" in info["CapAdd"] and not info["Privileged"]
    for name in (sw, lsw):
        lab.start(name)
    for name in (sw, lsw):
        lab.wait_file(name, "/run/ipsec-interop/ready")
    assert lab.exec(lsw, "/usr/local/bin/ipsec-interop-healthcheck")[0] == 0

    rc, out = lab.exec(sw, "swanctl", "--initiate", "--ike", "t")
    assert rc == 0, out
    rc, states = lab.exec(lsw, "ipsec", "whack", "--showstates")
    assert "STATE_V2_ESTABLISHED_IKE_SA" in states, states
    rc, out = lab.exec(sw, "swanctl", "--rekey", "--ike", "t")
    assert rc == 0, out
    log = lab.read(lsw, "/var/log/ipsec-interop/pluto.log")
    assert "established IKE SA" in log
    for name in (sw, lsw):
        lab.client.api.stop(name, timeout=10)
        assert lab.wait_exit(name) == 0
