"""Each doctor probe, present and faked absent; the table and JSON never fail."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from harness import doctor, system
from harness.doctor import ProbeNamespace


class _NoNamespace(ProbeNamespace):
    """A namespace that cannot be made (as for a user without root)."""

    def ensure(self) -> bool:
        self.error = "needs root"
        return False


@pytest.fixture
def no_ns() -> ProbeNamespace:
    return _NoNamespace()


@pytest.fixture
def no_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "which", lambda program: None)


@pytest.fixture
def no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.os.path, "exists", lambda path: False)


def test_root_probe_reports_uid(monkeypatch: pytest.MonkeyPatch, no_ns: ProbeNamespace) -> None:
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
    result = doctor.probe_root(no_ns)
    assert not result.available
    assert "uid 1000" in result.detail
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 0)
    assert doctor.probe_root(no_ns).available


def test_namespace_probes_without_namespace(no_ns: ProbeNamespace) -> None:
    for probe in (doctor.probe_netns, doctor.probe_veth, doctor.probe_xfrm):
        result = probe(no_ns)
        assert not result.available, probe.__name__
        assert "needs root" in result.detail
        assert result.disables


def test_nftables_missing(no_programs: None, no_ns: ProbeNamespace) -> None:
    result = doctor.probe_nftables(no_ns)
    assert not result.available
    assert "apt-get install nftables" in result.detail


def test_nfqueue_missing(no_programs: None, no_ns: ProbeNamespace) -> None:
    result = doctor.probe_nfqueue(no_ns)
    assert not result.available
    assert "apt-get install iptables" in result.detail
    assert "SPD-004" in result.disables


@pytest.mark.parametrize("probe", [doctor.probe_tcpdump, doctor.probe_tshark, doctor.probe_allure])
def test_version_probes_missing(
    probe: doctor.Probe, no_programs: None, no_ns: ProbeNamespace
) -> None:
    result = probe(no_ns)
    assert not result.available
    assert "not found" in result.detail


def test_version_probe_present(monkeypatch: pytest.MonkeyPatch, no_ns: ProbeNamespace) -> None:
    monkeypatch.setattr(system, "which", lambda program: "/usr/bin/tcpdump")
    monkeypatch.setattr(
        system,
        "run",
        lambda argv, **kw: system.Completed(tuple(argv), 0, "tcpdump version 4.99.3\n", ""),
    )
    result = doctor.probe_tcpdump(no_ns)
    assert result.available
    assert result.detail == "tcpdump version 4.99.3"


@pytest.mark.parametrize(
    "probe", [doctor.probe_charon, doctor.probe_libipsec, doctor.probe_pluto, doctor.probe_tun]
)
def test_file_probes_missing(probe: doctor.Probe, no_files: None, no_ns: ProbeNamespace) -> None:
    result = probe(no_ns)
    assert not result.available
    assert result.disables


def test_tun_unopenable(monkeypatch: pytest.MonkeyPatch, no_ns: ProbeNamespace) -> None:
    def deny(path: str, flags: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(doctor.os, "open", deny)
    result = doctor.probe_tun(no_ns)
    assert not result.available
    assert "Operation not permitted" in result.detail


def test_raw_socket_denied(monkeypatch: pytest.MonkeyPatch, no_ns: ProbeNamespace) -> None:
    def deny(*args: object) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(doctor.socket, "socket", deny)
    result = doctor.probe_raw_sockets(no_ns)
    assert not result.available
    assert "Operation not permitted" in result.detail


def test_docker_unreachable(monkeypatch: pytest.MonkeyPatch, no_ns: ProbeNamespace) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = doctor.probe_docker(no_ns)
    assert not result.available
    assert "/nonexistent/docker.sock" in result.detail


def test_xfrm_reports_esp_and_ah(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel whose XFRM refuses ESP and AH states: present, with both marked 'no'."""

    class FakeNs(ProbeNamespace):
        def ensure(self) -> bool:
            return True

        def run(self, argv: list[str], timeout: float = 15.0) -> system.Completed:
            if "add" in argv:
                return system.Completed(tuple(argv), 2, "", "Error: Requested type not found.")
            return system.Completed(tuple(argv), 0, "", "")

    result = doctor.probe_xfrm(FakeNs())
    assert result.available
    assert "ESP: no" in result.detail and "AH: no" in result.detail


def test_broken_probe_does_not_hide_others() -> None:
    def broken(ns: ProbeNamespace) -> doctor.ProbeResult:
        raise RuntimeError("boom")

    results = doctor.run_probes((broken, doctor.probe_root))
    assert next(r.available for r in results) is False
    assert "boom" in results[0].detail
    assert results[1].name == "root"


@pytest.mark.needs_root
def test_namespace_probes_leave_nothing_behind() -> None:
    results = {r.name: r for r in doctor.run_probes()}
    assert results["network namespaces"].available
    assert results["veth"].available
    listing = system.run(["ip", "netns", "list"]).stdout
    assert doctor.PROBE_NS_PREFIX not in listing


def test_doctor_json_is_valid_and_exits_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = [p["name"] for p in data["probes"]]
    for expected in (
        "root",
        "network namespaces",
        "TUN",
        "nftables",
        "iptables NFQUEUE",
        "Docker engine",
        "strongSwan charon",
        "libreswan pluto",
        "kernel XFRM",
        "Allure CLI",
    ):
        assert expected in names
