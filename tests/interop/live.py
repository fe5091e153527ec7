"""One live interop case: the reference node against a third-party peer on a topology, with the
link captured from before the first packet and the capture checked by the wire oracle.

:class:`Live` is what every test of this package drives:

* ``configure(scenario)`` loads the scenario into both ends;
* ``ping_both_ways()`` sends real pings between the inner addresses (through the tunnel only:
  the reference node runs its ``tun`` data plane, strongSwan kernel-libipsec) and takes a
  snapshot of the reference node's keys (``list_sas`` with keys): SAs deleted later in the
  case (rekeys, deletes, a killed node) are still on the wire, so their keys are kept;
* ``finish()`` deletes what is left (the Delete is checked on the wire too), stops the
  capture and runs the oracle **twice**, once with only our node's keys and once with only
  the peer's (strongSwan's log at ``ike=4, chd=4``): each set alone must open and verify every
  IKE message and every ESP packet (ICV good, sequence numbers 1, 2, 3, ... in order, no
  replay, inner addresses inside the negotiated selectors). Then the two key sets are compared
  SA by SA (IKE SA secrets by SPIs, Child SA keys by SPI), and tshark cross-checks the oracle
  where Wireshark 4.0 knows the algorithms (not ChaCha20-Poly1305). The evidence
  (``oracle.json``, ``keys.json``, ``wireshark-keys.txt``) is written per case.

Against libreswan (IKE only on this kernel, its keys are not read) the oracle runs with our
node's keys alone.
"""

from __future__ import annotations

import contextlib
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.peers.base import IkeSaState, Peer, PeerError, Scenario, wait_for_sa
from harness.peers.libreswan import LibreswanPeer
from harness.peers.reference import ReferencePeer
from harness.peers.strongswan import StrongSwanPeer
from harness.probes import tshark
from harness.probes.keys import IkeSaEntry, KeySet, wireshark_table
from harness.probes.oracle import (
    ICV_GOOD,
    IkeMessageRecord,
    OracleReport,
    check_pcap,
    save_evidence,
)
from harness.topology import Topology
from harness.topology.base import Capture, Node

PING = ["ping", "-c", "3", "-i", "0.05", "-W", "2"]
"""Three echo requests 50 ms apart (root may go below 0.2 s); each must be answered (through
the tunnel)."""

_V2_SECRETS = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
_V1_SECRETS = ("skeyid", "skeyid_d", "skeyid_a", "skeyid_e", "enc_key")
_REQUIRED = {2: ("sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"), 1: ("skeyid_d", "enc_key")}


def up(sas: list[IkeSaState], child: bool = True) -> bool:
    """An established IKE SA (with an installed Child SA when ``child``)."""
    return any(
        sa.established and (not child or any(c.state == "INSTALLED" for c in sa.children))
        for sa in sas
    )


def none(sas: list[IkeSaState]) -> bool:
    return not sas


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "case"


@dataclass
class Verdict:
    """The oracle's reports on one case: with our node's keys, and with the peer's keys."""

    reference: OracleReport
    peer: OracleReport | None
    pcap: Path
    tshark_problems: list[str] = field(default_factory=list)
    tshark_lines: int = 0
    """ESP and IKE key-table lines tshark was given (0: nothing it could check)."""

    def messages(self) -> list[IkeMessageRecord]:
        """The IKE messages on the wire, retransmissions left out (a loaded machine may
        answer later than a retransmission timer)."""
        return [m for m in self.reference.ike_messages if not m.retransmission]

    def exchanges(self) -> list[str]:
        return [m.exchange for m in self.messages()]


class Live:
    """One case between ``ref`` (node ``a``) and ``peer`` (node ``b``) on ``topo``."""

    def __init__(
        self, topo: Topology, ref: ReferencePeer, peer: Peer, name: str, directory: Path
    ) -> None:
        self.topo = topo
        self.ref = ref
        self.peer = peer
        self.a: Node = ref.node
        assert peer.node is not None
        self.b: Node = peer.node
        self.name = name
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_keys = KeySet()
        self.scenario: Scenario | None = None
        self._log_start = self._peer_log_size()
        self.capture: Capture | None = self._capture()
        self.verdict: Verdict | None = None

    # set-up ------------------------------------------------------------------------------

    def _capture(self) -> Capture:
        """Capture the link from node ``a``'s end into ``<artifacts>/<case>.pcap``."""
        link = next(iter(self.topo.links.values()))
        node_name, iface = link.ends[0]
        node = self.topo.node(node_name)
        # The reference node sends runs of datagrams to one peer with one system call (UDP
        # GSO: e.g. two IKE fragments). A veth hands such a super-packet on unsegmented, and
        # tcpdump would record it as one datagram; with at most one segment per packet the
        # kernel segments before the capture point, so the pcap shows what a wire carries.
        result = node.exec(["ip", "link", "set", "dev", iface, "gso_max_segs", "1"])
        assert result.ok, f"gso_max_segs on {node_name}/{iface}: {result.stderr}"
        return node.capture(f"{self.name}", interface=iface)

    def _peer_log_size(self) -> int:
        if isinstance(self.peer, StrongSwanPeer) and self.peer.log_path.exists():
            return self.peer.log_path.stat().st_size
        return 0

    def scenario_between(self, **kwargs: Any) -> Scenario:
        """The scenario between ``a`` (us) and ``b`` (the peer), addresses as identities."""
        return Scenario.between(self.a, self.b, **kwargs)

    def configure(self, scenario: Scenario) -> None:
        self.ref.configure(scenario)
        self.peer.configure(scenario)
        self.scenario = scenario

    def initiator(self, who: str) -> Peer:
        return self.ref if who == "reference" else self.peer

    def establish(self, who: str, *, child: bool = True, timeout: float = 15.0) -> None:
        """``who`` (``reference`` or the peer's kind) initiates; both ends must list the SA."""
        self.initiator(who).initiate(timeout=timeout)
        wait_for_sa(self.ref, lambda s: up(s, child), 10, "the reference node's SAs")
        wait_for_sa(self.peer, lambda s: up(s, child), 10, f"{self.peer.kind}'s SAs")
        self.snapshot()

    # during the case ---------------------------------------------------------------------

    def snapshot(self) -> None:
        """Keep the reference node's current keys (merged with earlier snapshots)."""
        if self.ref.process is not None and self.ref.process.running:
            dump = self.ref.sa_dump(keys=True)
            self.node_keys = self.node_keys.merge(
                KeySet.from_node_sas(dump, source=f"reference:{self.a.name}")
            )

    def ping(self, src: Node, dst: Node) -> None:
        argv = [*PING, "-I", src.addresses.inner_v4, dst.addresses.inner_v4]
        result = src.exec(argv, timeout=20)
        assert result.ok, (
            f"ping {src.addresses.inner_v4} -> {dst.addresses.inner_v4} through the tunnel "
            f"failed:\n{result.stdout}\n{result.stderr}"
        )

    def ping_both_ways(self) -> None:
        self.ping(self.a, self.b)
        self.ping(self.b, self.a)
        self.snapshot()

    def current_child(self) -> tuple[int, int]:
        """(inbound SPI, outbound SPI) of the reference node's newest Child SA."""
        sas = self.ref.list_sas()
        children = [c for sa in sas for c in sa.children]
        assert children, f"the reference node has no Child SA: {sas}"
        return children[-1].spi_in, children[-1].spi_out

    def peer_log(self) -> str:
        """The peer's log written since the case began (libreswan's: all of it)."""
        if isinstance(self.peer, StrongSwanPeer):
            with self.peer.log_path.open("rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        if isinstance(self.peer, LibreswanPeer):
            return "\n".join(p.read_text(errors="replace") for p in self.peer.logs())
        return ""

    def kill_peer(self) -> None:
        """SIGKILL the peer's daemon: no Delete, no goodbye (for dead peer detection)."""
        if isinstance(self.peer, StrongSwanPeer | LibreswanPeer):
            proc = self.peer.process
            assert proc is not None and proc.running
            proc.stop(timeout=0.1, sig=signal.SIGKILL)
            self.peer.stop()
        else:
            raise AssertionError(f"cannot kill {self.peer.kind}")

    def kill_reference(self) -> None:
        self.snapshot()
        self.ref.kill()

    # the end -----------------------------------------------------------------------------

    def close_sas(self, timeout: float = 10.0) -> None:
        """Delete whatever is left from the reference side (or the peer's, if ours is gone)
        and wait until neither end lists an SA."""
        self.snapshot()
        ref_alive = self.ref.process is not None and self.ref.process.running
        if ref_alive and self.ref.list_sas():
            self.ref.terminate(timeout=timeout)
            if self._peer_alive():
                # our Delete reaches the peer; only what it still holds after that is its own
                with contextlib.suppress(PeerError):
                    wait_for_sa(self.peer, none, 2.0, f"{self.peer.kind} to take our Delete")
        if self._peer_alive() and self.peer.list_sas():
            try:
                self.peer.terminate(timeout=timeout)
            except PeerError:
                if self.peer.list_sas():  # not "nothing left to terminate" after all
                    raise
        if self._peer_alive():
            wait_for_sa(self.peer, none, timeout, f"{self.peer.kind} to delete its SAs")
        if ref_alive:
            wait_for_sa(self.ref, none, timeout, "the reference node to delete its SAs")

    def _peer_alive(self) -> bool:
        proc = getattr(self.peer, "process", None)
        return proc is not None and proc.running

    def finish(
        self,
        *,
        terminate: bool = True,
        expect_flows: bool = True,
        cross_check: bool = True,
    ) -> Verdict:
        """Delete what is left, stop the capture, run the oracle with each end's keys and
        compare the keys (see the module doc). Failures are assertions with the evidence."""
        if terminate:
            self.close_sas()
        assert self.capture is not None
        pcap = self.capture.stop()
        self.capture = None
        ref_report = check_pcap(pcap, self.node_keys)
        self._save("oracle-reference", ref_report)
        verify(ref_report, "reference", self.a, self.b, encapsulated=self._encapsulated())
        peer_report = None
        if isinstance(self.peer, StrongSwanPeer):
            peer_keys = KeySet.from_charon_log(self.peer_log(), source=f"strongswan:{self.b.name}")
            peer_report = check_pcap(pcap, peer_keys)
            self._save("oracle-strongswan", peer_report)
            verify(peer_report, "strongswan", self.a, self.b, encapsulated=True)
            assert peer_report.resolved_keys is not None
            problems = key_differences(self.node_keys, peer_report.resolved_keys, "strongswan")
            assert problems == [], "our node's keys differ from strongSwan's:\n" + "\n".join(
                problems
            )
            assert _spis(ref_report) == _spis(peer_report)
        verdict = Verdict(ref_report, peer_report, pcap)
        if expect_flows:
            assert any(s.packets for s in ref_report.ipsec_sas), "no ESP on the wire"
        if cross_check and tshark.available() and ref_report.resolved_keys is not None:
            table = wireshark_table(ref_report.resolved_keys)
            verdict.tshark_lines = len(table.lines)
            verdict.tshark_problems = tshark.cross_check(pcap, ref_report, table)
            assert verdict.tshark_problems == [], verdict.tshark_problems
        self.verdict = verdict
        return verdict

    def _encapsulated(self) -> bool | None:
        # kernel-libipsec fakes a NAT: ESP is always in UDP 4500 (peers.md §0)
        return True if isinstance(self.peer, StrongSwanPeer) else None

    def _save(self, name: str, report: OracleReport) -> None:
        assert report.resolved_keys is not None
        save_evidence(self.dir / name, report, report.resolved_keys)

    def abort(self) -> None:
        """After a failure: stop the capture (the pcap is kept)."""
        if self.capture is not None:
            self.capture.stop()
            self.capture = None


def _spis(report: OracleReport) -> set[str]:
    return {s.spi for s in report.ipsec_sas if s.packets}


def verify(
    report: OracleReport,
    source: str,
    a: Node,
    b: Node,
    *,
    encapsulated: bool | None = None,
) -> None:
    """Every packet on the wire verified with the keys of ``source`` alone."""
    problems = "\n".join(str(p) for p in report.problems[:20])
    assert report.ok, f"{source} keys: {report.summary()}\n{problems}"
    encrypted = [m for m in report.ike_messages if m.encrypted]
    assert encrypted, "no encrypted IKE message on the wire"
    bad = [m.summary() for m in encrypted if m.integrity != ICV_GOOD]
    assert bad == [], f"{source} keys: IKE messages not verified:\n" + "\n".join(bad)
    for ike in report.ike_sas:
        if ike.messages:
            assert ike.keys.startswith(source), f"IKE SA {ike.spi_i}: keys from {ike.keys}"
    inner = {
        f"{a.addresses.inner_v4} > {b.addresses.inner_v4}",
        f"{b.addresses.inner_v4} > {a.addresses.inner_v4}",
    }
    assert report.key_mismatches == []
    for sa in report.ipsec_sas:
        if not sa.packets:
            continue
        what = f"{source} keys: {sa.summary()}"
        assert sa.keys.startswith(source), f"{what}: keys from {sa.keys}"
        assert sa.icv_good == sa.packets and sa.icv_bad == 0, what
        # 1, 2, 3, ... in order: nothing replayed, reordered or skipped (RFC 4303 §3.3.3)
        assert sa.seq_first == 1 and sa.seq_last == sa.seq_max == sa.packets, what
        assert sa.replays == sa.out_of_order == sa.gaps == 0, what
        assert sa.outside_selectors == 0 and set(sa.inner_flows) <= inner, what
        assert sa.padding_other == 0, what
        if encapsulated is not None:
            assert sa.encapsulated == encapsulated, what


def _ike_secrets(e: IkeSaEntry) -> tuple[str, ...]:
    return _V2_SECRETS if e.version == 2 else _V1_SECRETS


def key_differences(ours: KeySet, theirs: KeySet, source: str) -> list[str]:
    """Where our node's keys and the peer's keys (entries whose source starts with
    ``source``; IKE SAs bound to SPIs by the oracle) disagree, or an SA one has the other
    lacks."""
    out: list[str] = []
    peer_ike = [e for e in theirs.ike if e.source.startswith(source) and e.spi_i]
    peer_ipsec = [e for e in theirs.ipsec if e.source.startswith(source)]
    for ike in ours.ike:
        assert ike.spi_i is not None
        label = f"IKEv{ike.version} SA {ike.spi_i.hex()}"
        match = next((p for p in peer_ike if (p.spi_i, p.spi_r) == (ike.spi_i, ike.spi_r)), None)
        if match is None:
            out.append(f"{label}: not in {source}'s keys")
            continue
        for name in _REQUIRED[ike.version]:
            if not getattr(ike, name) or not getattr(match, name):
                out.append(f"{label}: {name} missing (ours {bool(getattr(ike, name))})")
        for name in _ike_secrets(ike):
            mine, other = getattr(ike, name), getattr(match, name)
            if mine and other and mine != other:
                out.append(f"{label}: {name} differs: {mine.hex()} vs {other.hex()}")
    for sa in ours.ipsec:
        label = f"{sa.protocol.name} SA 0x{sa.spi:08x}"
        twin = next((p for p in peer_ipsec if (p.protocol, p.spi) == (sa.protocol, sa.spi)), None)
        if twin is None:
            out.append(f"{label}: not in {source}'s keys")
        elif (twin.encr_key, twin.integ_key) != (sa.encr_key, sa.integ_key):
            out.append(f"{label}: keys differ")
    for p in peer_ipsec:
        if not any((sa.protocol, sa.spi) == (p.protocol, p.spi) for sa in ours.ipsec):
            out.append(f"{p.protocol.name} SA 0x{p.spi:08x}: {source} has keys, our node none")
    return out
