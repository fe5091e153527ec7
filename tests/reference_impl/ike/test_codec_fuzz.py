"""Fuzzing the decoder: random bytes and mutated valid messages only ever give a decoded
message or a RemoteProtocolError (issue 5, "nothing else ever escapes the decoder")."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_impl.errors import RemoteProtocolError
from reference_impl.ike.messages import decode_message, encode_message

from .captures import IKEV2_CAPTURES, load
from .test_codec import ALL_PAYLOADS, msg

SEEDS: list[bytes] = [encode_message(msg(*ALL_PAYLOADS))]
for _name in IKEV2_CAPTURES:
    SEEDS += [d.ike for d in load(_name).ike]

FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def decode_or_remote_error(data: bytes) -> None:
    try:
        m = decode_message(data)
    except RemoteProtocolError as exc:
        assert exc.notify is None or isinstance(exc.notify, int)
        return
    # Whatever decodes must re-encode (and the result decode again).
    decode_message(encode_message(m))


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    decode_or_remote_error(data)


@FUZZ
@given(st.binary(min_size=4, max_size=400))
def test_random_payload_chains_behind_a_valid_header(body: bytes) -> None:
    first = body[0] % 60
    header = SEEDS[0][:16] + bytes((first, 0x20, 34, 0x08)) + b"\0\0\0\0"
    decode_or_remote_error(header + struct.pack("!I", 28 + len(body) - 1) + body[1:])


@FUZZ
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from("xdit")),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_mutated_valid_messages(seed: int, edits: list[tuple[int, int, str]], fix: bool) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value, kind in edits:
        p = pos % (len(data) + 1)
        if kind == "x" and p < len(data):
            data[p] ^= value or 1
        elif kind == "d" and p < len(data):
            del data[p]
        elif kind == "i":
            data[p:p] = bytes((value,))
        else:
            del data[p:]
    if fix and len(data) >= 28:  # keep the header length right so the payloads get parsed
        struct.pack_into("!I", data, 24, len(data))
    decode_or_remote_error(bytes(data))


class _Live:
    """One established pair of services, shared by the examples below."""

    def __init__(self) -> None:
        from .net import pair

        self.net, self.a, self.b = pair()
        self.a.service.initiate("ab", self.net.now)
        self.net.run(2)
        (self.sa_a,) = self.a.service.ike_sas()
        (self.sa_b,) = self.b.service.ike_sas()
        # some valid traffic of this very SA to mutate: a child rekey and a DPD
        self.a.service.rekey_child(self.sa_a.children[0].inbound_spi, self.net.now)
        self.a.service.liveness_check(self.sa_a.ike_sa_id, self.net.now)
        self.net.run(2)
        self.seeds = [s.d for s in self.net.wire]


_LIVE: list[_Live] = []


def live() -> _Live:
    if not _LIVE:
        _LIVE.append(_Live())
    return _LIVE[0]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.integers(0, 10**6),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), min_size=1, max_size=4),
    st.booleans(),
)
def test_an_ike_sa_fed_garbage_keeps_answering(
    seed: int, flips: list[tuple[int, int]], fix: bool
) -> None:
    """Mutated copies of this SA's own datagrams (valid SPIs, broken contents) are dropped
    or answered with an error; a real request afterwards is still answered."""
    lv = live()
    d = lv.seeds[seed % len(lv.seeds)]
    data = bytearray(d.data)
    for pos, x in flips:
        data[pos % len(data)] ^= x
    if fix and len(data) >= 28:
        struct.pack_into("!I", data, 24, len(data))
    target = lv.b if d.dst[0] == lv.b.ip else lv.a
    target.service.receive_datagram(bytes(data), d.src, lv.net.now, local=d.dst)
    assert target.service.stats.get("internal_errors", 0) == 0
    lv.net.settle()
    n0 = len(lv.net.wire)
    lv.a.service.liveness_check(lv.sa_a.ike_sa_id, lv.net.now)
    lv.net.run(1)
    answers = [s for s in lv.net.wire[n0:] if s.d.src[0] == lv.b.ip]
    assert answers, "B stopped answering"
    assert lv.sa_a.state.name == "ESTABLISHED" and lv.sa_b.state.name == "ESTABLISHED"
