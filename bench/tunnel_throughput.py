"""TCP throughput through an IPsec tunnel: two reference nodes vs two strongSwan charons.

Both pairs run in two network namespaces joined by a veth (``harness.topology`` netns
backend), tunnel mode between the nodes' inner addresses, ESP with AES-GCM-128, one iperf3
TCP stream for ``--seconds`` (default 5). Reference nodes use the ``tun`` data plane (TUN
device, raw ESP); strongSwan 5.9.8 uses kernel-libipsec (its userspace ESP, always
UDP-encapsulated: ../shared/design/peers.md §0, §7). The two are measured in the same run,
interleaved, ``--rounds`` times each; the key result is ``vs_strongswan_libipsec`` = best
reference Mbit/s / best strongSwan Mbit/s.

Needs root, iperf3 and (for the baseline) charon with kernel-libipsec.

    python bench/tunnel_throughput.py --json
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import emit, machine, parser


def iperf(topo: Any, seconds: float) -> dict[str, float]:
    """One iperf3 TCP transfer from a's inner address to b's; receiver-side Mbit/s."""
    from harness.topology.base import wait_until

    a, b = topo.node("a"), topo.node("b")
    log = b.log_dir / "iperf3-server.log"
    seen = log.stat().st_size if log.exists() else 0  # the log is appended to: skip old runs
    server = b.spawn(
        "iperf3-server", ["iperf3", "-s", "-1", "--forceflush", "-B", b.addresses.inner_v4]
    )
    try:
        wait_until(
            lambda: "Server listening" in server.log_text()[seen:],
            10,
            "iperf3 server",
            alive=lambda: server.running,
        )
        res = a.exec(
            [
                "iperf3", "-c", b.addresses.inner_v4, "-B", a.addresses.inner_v4,
                "-t", str(seconds), "-J",
            ],
            timeout=seconds + 30,
        )  # fmt: skip
        data = json.loads(res.stdout)
        if "error" in data:
            raise RuntimeError(f"iperf3: {data['error']}")
        end = data["end"]
        return {
            "mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": float(end["sum_sent"].get("retransmits", 0)),
        }
    finally:
        server.stop(timeout=2)


def scenario(topo: Any) -> Any:
    from harness.peers.base import Proposal, Scenario

    return Scenario.between(
        topo.node("a"),
        topo.node("b"),
        ike_proposals=(Proposal.parse("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),),
        esp_proposals=(Proposal.parse("AES_GCM_16_128"),),
    )


def run_reference(seconds: float, encap: bool, artifacts: Path) -> dict[str, Any]:
    from harness.peers.reference import ReferencePeer
    from harness.topology import TopologySpec, open_topology

    with open_topology("netns", TopologySpec.pair(ipv6=False), artifacts=artifacts) as topo:
        peers = [ReferencePeer(topo.node(n)) for n in ("a", "b")]
        try:
            sc = scenario(topo).with_(force_encap=encap)
            for p in peers:
                p.configure(sc)
            peers[0].initiate()
            result = iperf(topo, seconds)
            sas = peers[0].list_sas()
            child = sas[0].children[0]
            result["esp_in_udp"] = float(child.encap)
            result["packets_out"] = float(child.packets_out)
            return result
        finally:
            for p in peers:
                p.stop()


def run_strongswan(seconds: float, artifacts: Path) -> dict[str, Any]:
    from harness.peers.strongswan import StrongSwanPeer
    from harness.topology import TopologySpec, open_topology

    with open_topology("netns", TopologySpec.pair(ipv6=False), artifacts=artifacts) as topo:
        peers = [StrongSwanPeer(topo.node(n)) for n in ("a", "b")]
        try:
            for p in peers:
                p.start()
            sc = scenario(topo)
            for p in peers:
                p.configure(sc)
            peers[0].initiate()
            return iperf(topo, seconds)
        finally:
            for p in peers:
                p.stop()


def main() -> None:
    p = parser(__doc__ or "")
    p.set_defaults(seconds=5.0)
    p.add_argument("--rounds", type=int, default=2, help="measurements of each (interleaved)")
    p.add_argument("--no-baseline", action="store_true", help="skip strongSwan")
    p.add_argument("--encap", action="store_true", help="also measure ESP-in-UDP (reference)")
    args = p.parse_args()
    result: dict[str, Any] = {"benchmark": "tunnel_throughput", **machine()}
    result["load_average_start"] = round(os.getloadavg()[0], 2)
    if os.geteuid() != 0:
        result["skipped"] = "needs root (network namespaces, TUN, raw sockets)"
        emit(result, args.json)
        return
    from harness.peers.strongswan import StrongSwanPeer

    baseline = not args.no_baseline and StrongSwanPeer.availability().available
    ref: list[dict[str, Any]] = []
    ref_encap: list[dict[str, Any]] = []
    sw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        art = Path(tmp)
        for i in range(args.rounds):
            ref.append(run_reference(args.seconds, False, art / f"ref{i}"))
            if args.encap:
                ref_encap.append(run_reference(args.seconds, True, art / f"refu{i}"))
            if baseline:
                sw.append(run_strongswan(args.seconds, art / f"sw{i}"))
            time.sleep(0.5)
    best_ref = max(r["mbit_s"] for r in ref)
    result.update(
        {
            "seconds": args.seconds,
            "cipher": "AES_GCM_16_128",
            "reference_mbit_s": round(best_ref, 1),
            "reference_rounds_mbit_s": [round(r["mbit_s"], 1) for r in ref],
            "reference_retransmits": [int(r["retransmits"]) for r in ref],
        }
    )
    if ref_encap:
        result["reference_esp_in_udp_mbit_s"] = round(max(r["mbit_s"] for r in ref_encap), 1)
        result["reference_esp_in_udp_rounds_mbit_s"] = [round(r["mbit_s"], 1) for r in ref_encap]
    if sw:
        best_sw = max(r["mbit_s"] for r in sw)
        result["strongswan_libipsec_mbit_s"] = round(best_sw, 1)
        result["strongswan_rounds_mbit_s"] = [round(r["mbit_s"], 1) for r in sw]
        result["strongswan_retransmits"] = [int(r["retransmits"]) for r in sw]
        result["vs_strongswan_libipsec"] = round(best_ref / best_sw, 3)
        if ref_encap:  # like for like: libipsec always UDP-encapsulates
            best_udp = max(r["mbit_s"] for r in ref_encap)
            result["vs_strongswan_libipsec_esp_in_udp"] = round(best_udp / best_sw, 3)
    else:
        result["vs_strongswan_libipsec"] = None
        result["baseline"] = "strongSwan with kernel-libipsec is not available here"
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    emit(result, args.json)


if __name__ == "__main__":
    main()
