"""The oracle on live strongSwan <-> strongSwan traffic in network namespaces (root).

Both charons log every key (ike=4, chd=4); the capture of the link goes through the oracle
with the keys of both logs: every IKE message verifies (including after a Child SA rekey from
the responder and an IKE SA rekey, whose keys the oracle binds to the new SPIs by trial), every
ESP packet's ICV is good, sequence numbers start at 1 and never repeat, inner addresses are
inside the negotiated selectors, and tshark agrees.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.peers.base import Proposal, Scenario, wait_for_sa
from harness.peers.strongswan import StrongSwanPeer
from harness.probes import tshark
from harness.probes.keys import KeySet, wireshark_table
from harness.probes.oracle import ICV_GOOD, OracleReport, check_pcap, save_evidence
from harness.topology import Topology
from harness.topology.base import Node

pytestmark = [pytest.mark.needs_root, pytest.mark.peer("strongswan")]


@pytest.fixture
def swans(pair: Topology) -> Iterator[tuple[StrongSwanPeer, StrongSwanPeer]]:
    avail = StrongSwanPeer.availability()
    if not avail.available:
        pytest.skip(avail.detail)
    a, b = StrongSwanPeer(pair.node("a")), StrongSwanPeer(pair.node("b"))
    with a, b:
        yield a, b


def _ping(src: Node, dst: Node) -> bool:
    argv = ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", src.addresses.inner_v4]
    return src.exec([*argv, dst.addresses.inner_v4]).ok


def _keys(*peers: StrongSwanPeer) -> KeySet:
    out = KeySet()
    for p in peers:
        out = out.merge(
            KeySet.from_charon_log(p.log_path.read_text(), source=f"strongswan:{p.node.name}")
        )  # type: ignore[union-attr]
    return out


def _verified(report: OracleReport, a: Node, b: Node) -> None:
    assert report.ok, report.summary() + "\n" + "\n".join(map(str, report.problems))
    encrypted = [m for m in report.ike_messages if m.encrypted]
    assert encrypted and all(m.integrity == ICV_GOOD for m in encrypted)
    assert all(s.keys.startswith("strongswan") for s in report.ike_sas)
    inner = {
        f"{a.addresses.inner_v4} > {b.addresses.inner_v4}",
        f"{b.addresses.inner_v4} > {a.addresses.inner_v4}",
    }
    for sa in report.ipsec_sas:
        assert sa.icv_good == sa.packets > 0 and sa.seq_first == 1 and sa.replays == 0
        assert sa.encapsulated  # libipsec forces ESP in UDP (peers.md §0)
        assert set(sa.inner_flows) <= inner and sa.outside_selectors == 0
        assert sa.padding_other == 0


def test_ikev2_with_child_and_ike_rekeys(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer], tmp_path: object
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(a, b)
    ini.configure(scenario)
    resp.configure(scenario)
    cap = pair.capture()
    ini.initiate(timeout=10)
    assert _ping(a, b) and _ping(b, a)
    resp.rekey_child()
    ini.rekey_ike()
    wait_for_sa(ini, lambda sas: len(sas) == 1 and sas[0].established, 5, "the old IKE SA to go")
    assert _ping(a, b)
    ini.terminate()
    wait_for_sa(resp, lambda sas: sas == [], 5, "the responder to delete its SAs")
    pcap = cap.stop()
    report = check_pcap(pcap, _keys(ini, resp))
    _verified(report, a, b)
    assert len(report.ike_sas) == 2  # the first IKE SA and its replacement
    assert {s.parent for s in report.ike_sas} - {""}, "the rekeyed SA knows its parent"
    assert len(report.ipsec_sas) >= 4  # two Child SAs (before and after the rekey), both ways
    exchanges = [m.exchange for m in report.ike_messages]
    assert exchanges.count("CREATE_CHILD_SA") == 4 and "INFORMATIONAL" in exchanges
    assert report.key_mismatches == []
    assert report.resolved_keys is not None
    save_evidence(pair.artifacts / "oracle", report, report.resolved_keys)  # type: ignore[operator]
    if tshark.available():
        table = wireshark_table(report.resolved_keys)
        assert tshark.cross_check(pcap, report, table) == []


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_ikev1(
    pair: Topology, swans: tuple[StrongSwanPeer, StrongSwanPeer], aggressive: bool
) -> None:
    a, b = pair.node("a"), pair.node("b")
    ini, resp = swans
    scenario = Scenario.between(
        a,
        b,
        ike_version=1,
        aggressive=aggressive,
        esp_proposals=(Proposal.parse("AES_CBC_128/HMAC_SHA2_256_128/MODP_2048"),),
    )
    ini.configure(scenario)
    resp.configure(scenario)
    cap = pair.capture()
    ini.initiate(timeout=10)
    assert _ping(a, b) and _ping(b, a)
    pcap = cap.stop()
    report = check_pcap(pcap, _keys(ini, resp))
    _verified(report, a, b)
    exchanges = {m.exchange for m in report.ike_messages}
    assert exchanges >= {"AGGRESSIVE" if aggressive else "IDENTITY_PROTECTION", "QUICK_MODE"}
    # Quick Mode had PFS: the keys come from the logs, not from the exchange
    assert {s.keys for s in report.ipsec_sas} <= {"strongswan:a", "strongswan:b"}
    if tshark.available():
        assert report.resolved_keys is not None
        table = wireshark_table(report.resolved_keys)
        assert tshark.cross_check(pcap, report, table) == []
