"""Bad input is a counted drop, never a crash: random and mutated datagrams through
``unprotect`` and random packets through ``protect``, for every kind of SA."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.driver import OutboundSa, Sad, Verdict
from reference_impl.sa import Mode

from .helpers import (
    AH_SUITES,
    ESP_SUITES,
    V4_INNER,
    V4_OUTER,
    V6_INNER,
    V6_OUTER,
    inner_packet,
    keys_for,
    params,
)

CONFIGS = [
    (ESP_SUITES[0], Mode.TUNNEL, V4_OUTER, V4_INNER, False, None),
    (ESP_SUITES[0], Mode.TRANSPORT, V4_OUTER, V4_OUTER, False, None),
    (ESP_SUITES[8], Mode.TUNNEL, V6_OUTER, V6_INNER, True, None),
    (ESP_SUITES[6], Mode.TRANSPORT, V6_OUTER, V6_OUTER, True, None),
    (ESP_SUITES[0], Mode.TUNNEL, V4_OUTER, V4_INNER, False, (4500, 4500)),
    (AH_SUITES[1], Mode.TUNNEL, V4_OUTER, V4_INNER, False, None),
    (AH_SUITES[1], Mode.TRANSPORT, V6_OUTER, V6_OUTER, True, None),
]


def _build() -> tuple[Sad, list[OutboundSa], list[bytes]]:
    sad = Sad()
    outs = []
    samples = []
    rng = random.Random(1)
    for i, (suite, mode, outer, inner, esn, encap) in enumerate(CONFIGS):
        keys = keys_for(suite, rng)
        p = params(
            suite, keys, spi=0x1000 + i, mode=mode, outer=outer, inner=inner, esn=esn, encap=encap
        )
        out = sad.install(p, inbound=False, now=0.0)
        sad.install(p, inbound=True, now=0.0)
        assert isinstance(out, OutboundSa)
        outs.append(out)
        for size in (0, 40):
            samples.append(out.protect(inner_packet(*inner, size), 0.0)[1])
    return sad, outs, samples


SAD, OUTS, SAMPLES = _build()

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255)),
)


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(0, len(SAMPLES) - 1),
    mutations=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_datagrams_never_crash(index: int, mutations: list[tuple[str, int, int]]) -> None:
    d = bytearray(SAMPLES[index])
    for kind, a, b in mutations:
        if not d:
            break
        if kind == "flip":
            d[a % len(d)] ^= 1 << b
        elif kind == "truncate":
            del d[a % len(d) :]
        elif kind == "set":
            d[a % len(d)] = b
        else:
            d += bytes([b]) * a
    verdict, data, _ = SAD.unprotect(bytes(d), 0.0)
    assert isinstance(verdict, Verdict)
    assert verdict is Verdict.DELIVERED or data == b"" or verdict is Verdict.IKE


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_random_bytes_never_crash(data: bytes) -> None:
    for first in (b"", b"\x45", b"\x60"):
        verdict, _, _ = SAD.unprotect(first + data, 0.0)
        assert verdict is not Verdict.DELIVERED


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, len(CONFIGS) - 1), data=st.binary(max_size=80))
def test_protect_garbage_never_crashes(index: int, data: bytes) -> None:
    for first in (b"", b"\x45", b"\x60"):
        verdict, out = OUTS[index].protect(first + data, 0.0)
        assert isinstance(verdict, Verdict)
        assert (verdict is Verdict.DELIVERED) == bool(out)
