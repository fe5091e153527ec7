"""An IKE service and its SAs form no reference cycle: dropping the service frees it and every
SA at once, without the cyclic garbage collector (which would otherwise have to traverse all
of them, bench/ike_handshakes.py)."""

from __future__ import annotations

import gc
import weakref

from reference_impl.events import ChildSaEstablished
from reference_impl.ike.ike_sa import IkeSa
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
        # Other tests in this worker may have left services alive: count, do not expect none.
        before = _count()
        refs = [weakref.ref(s) for s in services]
        del services
        assert [r() for r in refs] == [None, None]  # freed by reference counting alone
        assert _count() == (before[0] - 2, before[1] - 2)  # and both ends' IKE SAs with them
    finally:
        if enabled:
            gc.enable()


def _count() -> tuple[int, int]:
    """(IkeService, IkeSa) objects the cyclic collector tracks."""
    objects = gc.get_objects()
    return (
        sum(type(o) is IkeService for o in objects),
        sum(type(o) is IkeSa for o in objects),
    )
