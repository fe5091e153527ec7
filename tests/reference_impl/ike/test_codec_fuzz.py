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
