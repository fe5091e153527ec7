"""An IKE service and its SAs form no reference cycle: dropping the service frees it and every
SA at once, without the cyclic garbage collector (which would otherwise have to traverse all
of them, bench/ike_handshakes.py)."""

from __future__ import annotations

import gc
import weakref

from reference_impl.events import ChildSaEstablished
from reference_impl.ike.service import IkeService

from .net import pair


def test_dropped_service_and_its_sas_need_no_cycle_collection() -> None:
    net, a, b = pair()
    a.service.initiate("ab", net.now)
    net.run(2)
    assert a.of(ChildSaEstablished) and b.of(ChildSaEstablished)
    services = [a.service, b.service]
    assert all(len(s.ike_sas()) == 1 for s in services)
    del net, a, b
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        refs = [weakref.ref(s) for s in services]
        del services
        assert [r() for r in refs] == [None, None]  # freed by reference counting alone
        assert not [o for o in gc.get_objects() if type(o) is IkeService]
    finally:
        if enabled:
            gc.enable()
