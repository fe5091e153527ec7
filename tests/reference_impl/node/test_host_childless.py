"""``childless`` initiation on two sans-I/O hosts (virtual clock): only the IKE SA comes up,
for IKEv2 (RFC 6023: IKE_AUTH without SA/TSi/TSr) and for IKEv1 (phase 1 alone, no Quick
Mode: what an IKE-only peer such as libreswan on a kernel without ESP can take; found by
tests/interop/test_libreswan.py, where our node started a Quick Mode anyway)."""

from __future__ import annotations

import pytest

from reference_impl.node import sadump
from reference_impl.node.ikeconf import IkeOverrides
from tests.reference_impl.node.hostnet import A, B, Net, host, transport_policy

ISAKMP_QUICK_MODE = 32  # RFC 2409 §9 exchange type
IKEV2_IKE_AUTH = 35  # RFC 7296 §3.1


@pytest.mark.parametrize("version", ["ikev2", "ikev1"])
def test_childless_initiate_brings_up_the_ike_sa_alone(version: str) -> None:
    net = Net()
    a = net.add(A, host(A, overrides=IkeOverrides(childless=True)))
    b = net.add(B, host(B))
    a.load_policy(transport_policy(B, version=version), 0.0, text=True)
    b.load_policy(transport_policy(A, version=version), 0.0, text=True)
    a.initiate("to-peer", net.now)
    net.run(2.0)
    for h in (a, b):
        dump = sadump.dump(h)
        (sa,) = dump["ike_sas"]
        assert sa["established"] and sa["version"] == (2 if version == "ikev2" else 1)
        assert dump["child_sas"] == []
    exchanges = [w.data[18] for w in net.ike()]
    assert ISAKMP_QUICK_MODE not in exchanges
    if version == "ikev2":
        assert exchanges.count(IKEV2_IKE_AUTH) == 2
    else:
        assert len(exchanges) == 6  # Main Mode, nothing after it
