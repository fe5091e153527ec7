"""The anti-replay window (RFC 4303 §3.4.3, Appendix A) against a plain model, and ESN
inference (Appendix A2.2) around the 2^32 boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.driver import ReplayWindow, Verdict
from reference_impl.errors import LocalProtocolError

M32 = 0xFFFFFFFF


class Model:
    """The window as the RFC describes it: a set of received numbers and the right edge."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = 0

    def accepts(self, seq: int) -> bool:
        if self.size == 0:
            return True
        if seq <= 0 or seq in self.seen:
            return False
        return seq > self.top - self.size

    def record(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = max(self.top, seq)


def _step(w: ReplayWindow, seq: int, icv_ok: bool) -> bool:
    reason = w.check(seq)
    if reason is not None:
        return False
    if icv_ok:
        w.update(seq)
    return True


sizes = st.sampled_from([0, 1, 32, 64, 65, 100, 128, 1024, 4096, 5000])


@settings(max_examples=300, deadline=None)
@given(
    size=sizes,
    ops=st.lists(st.tuples(st.integers(min_value=0, max_value=12000), st.booleans()), max_size=300),
)
def test_window_matches_model(size: int, ops: list[tuple[int, bool]]) -> None:
    """Random sequence numbers, some with a failing ICV (which must never move the window)."""
    w = ReplayWindow(size)
    m = Model(size)
    for seq, icv_ok in ops:
        expected = m.accepts(seq)
        assert _step(w, seq, icv_ok) == expected, (seq, icv_ok)
        if expected and icv_ok:
            m.record(seq)
        assert w.replay_top == m.top


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([32, 64, 1024, 4096]),
    start=st.integers(min_value=1, max_value=(1 << 40)),
    deltas=st.lists(st.integers(min_value=-5000, max_value=5000), min_size=1, max_size=200),
)
def test_esn_window_matches_model(size: int, start: int, deltas: list[int]) -> None:
    """With ESN only the low 32 bits travel; inference plus the window must still behave like
    the model on full 64-bit numbers as long as packets stay near the right edge."""
    w = ReplayWindow(size, esn=True)
    w.reset_window(start)
    m = Model(size)
    m.record(start)
    for d in deltas:
        seq = m.top + d
        if seq <= 0:
            continue
        inferred = w.infer(seq & M32)
        if seq > m.top - size:
            assert inferred == seq
        ok = inferred == seq and w.check(inferred) is None
        assert ok == m.accepts(seq)
        if ok:
            w.update(seq)
            m.record(seq)


@pytest.mark.parametrize("size", [32, 64, 4096])
def test_esn_inference_case_a_and_b(size: int) -> None:
    w = ReplayWindow(size, esn=True)
    # Case A: the window inside subspace 0, close to its end; low numbers belong to subspace 1.
    w.reset_window(M32 - 5)
    assert w.infer(M32 - 5 - size + 1) == M32 - 5 - size + 1
    assert w.infer(3) == (1 << 32) | 3
    assert w.infer(M32) == M32
    # Case B: the right edge just crossed into subspace 1; old high numbers are subspace 0.
    w.reset_window((1 << 32) | 2)
    assert w.infer(M32 - 1) == M32 - 1
    assert w.infer(5) == (1 << 32) | 5
    # The left edge is 2^32 + 3 - W, i.e. low M32 - W + 4 in subspace 0. One below it is
    # read as far ahead in subspace 1 (Appendix A2.2), where the sender's ICV will fail.
    assert w.infer(M32 - size + 4) == M32 - size + 4
    assert w.check(M32 - size + 4) is None
    assert w.infer(M32 - size + 3) == (1 << 32) | (M32 - size + 3)


def test_esn_before_first_subspace_is_refused() -> None:
    w = ReplayWindow(64, esn=True)
    assert w.infer(M32 - 3) == -1  # would be subspace -1
    assert w.check(-1) is Verdict.OUTSIDE_WINDOW
    assert w.infer(1) == 1


def test_catalogue_esp_003_004() -> None:
    """ESP-003/ESP-004 (RFC 4303 §3.4.3) with W = 64."""
    w = ReplayWindow(64)
    for seq, ok in [
        (100, True),
        (40, True),
        (36, False),
        (1000, True),
        (999, True),
        (937, True),
        (936, False),
        (999, False),
    ]:
        assert _step(w, seq, True) == ok, seq


def test_catalogue_esp_005_icv_failure_does_not_move_window() -> None:
    w = ReplayWindow(64)
    for seq in range(1, 6):
        assert _step(w, seq, True)
    assert _step(w, 500, False)  # passes the replay check, then the ICV fails
    assert w.replay_top == 5
    assert _step(w, 6, True)
    assert _step(w, 500, True)


def test_catalogue_esp_006_default_window() -> None:
    w = ReplayWindow()
    assert w.replay_size == 64
    _step(w, 200, True)
    assert _step(w, 169, True)
    assert _step(w, 137, True)
    assert not _step(w, 73, True)


def test_disabled_window_accepts_replays() -> None:
    w = ReplayWindow(0)
    for _ in range(3):
        assert _step(w, 7, True)
    assert w.replay_top == 7
    assert not w.seen(7)


def test_sequence_zero_is_never_valid() -> None:
    w = ReplayWindow(64)
    assert w.check(0) is Verdict.OUTSIDE_WINDOW
    assert w.check(1) is None


def test_negative_size_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ReplayWindow(-1)


def test_large_jump_clears_window() -> None:
    w = ReplayWindow(32)
    for s in range(1, 33):
        w.update(s)
    w.update(10_000)
    assert w.replay_bits == 1
    assert w.check(9_999) is None
    assert w.check(10_000 - 32) is Verdict.OUTSIDE_WINDOW
