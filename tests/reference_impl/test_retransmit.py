"""The shared retransmission schedule (policy-spec §3.3 E3, §3.5 reference profile)."""

from __future__ import annotations

import pytest

from reference_impl.errors import LocalProtocolError
from reference_impl.retransmit import REFERENCE_SCHEDULE, RetransmitSchedule, Retransmitter


def drive(r: Retransmitter, until: float) -> tuple[list[float], float | None]:
    sends = [r.started_at or 0.0]
    failed_at = None
    while (t := r.get_timer()) is not None and t <= until:
        verdict = r.handle_timer(t)
        if verdict == "resend":
            sends.append(t)
        elif verdict == "failed":
            failed_at = t
    return sends, failed_at


def test_reference_schedule_matches_spec() -> None:
    r = Retransmitter()
    r.start((b"x",), now=0.0)
    sends, failed_at = drive(r, 1000)
    assert sends == [0, 0.5, 1, 2, 4, 8, 16, 32]
    assert failed_at == 64
    assert REFERENCE_SCHEDULE.send_times() == tuple(sends)
    assert REFERENCE_SCHEDULE.failure_after == 64


def test_strongswan_schedule() -> None:
    s = RetransmitSchedule.exponential(4.0, 1.8, 5)
    assert s.failure_after == pytest.approx(165.06, abs=0.01)
    assert [round(t, 2) for t in s.send_times()] == [0, 4, 11.2, 24.16, 47.49, 89.48]


def test_no_early_fire_and_stop() -> None:
    r = Retransmitter()
    r.start((b"x",), now=10.0)
    assert r.handle_timer(10.49) is None
    assert r.handle_timer(10.5) == "resend"
    r.stop()
    assert r.get_timer() is None and not r.active


def test_invalid_schedules() -> None:
    with pytest.raises(LocalProtocolError):
        RetransmitSchedule(())
    with pytest.raises(LocalProtocolError):
        RetransmitSchedule((1.0, 0.0))
