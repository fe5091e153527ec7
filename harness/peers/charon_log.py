"""Keys from a charon log written at ``ike = 4`` and ``chd = 4`` (level "private").

strongSwan 5.9.8 on Debian has no save-keys plugin; at level 4 charon prints every derived
secret as a hex dump (../shared/design/peers.md §5)::

    15:22:51 12[IKE] <t|1> Sk_d secret => 32 bytes @ 0x7f03b400d0f0
    15:22:51 12[IKE] <t|1>    0: FF 8D 36 E1 5E DE 7B 7D 71 99 FA CC B1 30 2C 6D  ..6.^.{}q....0,m
    15:22:51 12[IKE] <t|1>   16: 13 E9 03 80 23 97 08 3D CA AC BE 0F 5D 18 C7 6D  ....#..=....]..m

A dump continues on lines of the same thread (the number before ``[``), so dumps of SAs handled
at the same time by different threads are told apart. IKEv2 IKE SA keys are ``Sk_d secret`` ..
``Sk_pr secret`` (RFC 7296 §2.14), IKEv1 ``SKEYID``, ``SKEYID_d/a/e`` and ``encryption key Ka``
(RFC 2409 §5); Child SA keys are ``encryption|integrity initiator|responder key`` (RFC 7296
§2.17), closed by ``[inbound ]CHILD_SA <name>{<id>} established with SPIs <in>_i <out>_o``
(a rekey logs "inbound" and "outbound" lines). The keys of a rekeyed IKE SA are derived in the
old SA's context by the rekey initiator (the new SA's by the responder) and are assigned to
the new SA at ``IKE_SA <name>[<id>] rekeyed``. Which end
initiated the exchange that made a Child SA is read from the last ``parsed <EXCHANGE>
request|response`` of that IKE SA: keys computed after parsing a response were computed by the
exchange's initiator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from harness.peers.base import ChildSaKeys, IkeSaKeys, SaKeys

_LINE = re.compile(r"^\S+ (\d+)\[(\w+)\] (?:<(?:([^>|]*)\|)?(\d+)> )?(.*)$")
_HEADER = re.compile(r"^(.+?) => (\d+) bytes @ 0x[0-9a-fA-F]+$")
_DUMP = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} )+)")
_PARSED = re.compile(r"^parsed (\S+) (request|response) \d+")
_ESTABLISHED = re.compile(
    r"^(?:inbound |outbound )?CHILD_SA (\S+)\{(\d+)\} established with SPIs "
    r"([0-9a-f]+)_i ([0-9a-f]+)_o"
)
_IKE_REKEYED = re.compile(r"^IKE_SA \S+\[(\d+)\] rekeyed between")

_IKEV2 = {
    "Sk_d secret": "SK_d",
    "Sk_ai secret": "SK_ai",
    "Sk_ar secret": "SK_ar",
    "Sk_ei secret": "SK_ei",
    "Sk_er secret": "SK_er",
    "Sk_pi secret": "SK_pi",
    "Sk_pr secret": "SK_pr",
}
_IKEV1 = {
    "SKEYID": "SKEYID",
    "SKEYID_d": "SKEYID_d",
    "SKEYID_a": "SKEYID_a",
    "SKEYID_e": "SKEYID_e",
    "encryption key Ka": "Ka",
}
_CHILD = {
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}


@dataclass
class _Dump:
    name: str
    context: str
    length: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Context:
    """Per IKE SA (``<name|unique id>``, or ``<unique id>`` before it has a config)."""

    ike_version: int | None = None
    ike: dict[str, bytes] = field(default_factory=dict)
    child: dict[str, bytes] = field(default_factory=dict)
    last_parsed: str = ""
    ike_sets: list[int] = field(default_factory=list)
    """Indexes in the result of the IKE key sets derived in this context: the SA's own
    first, then those of the SAs that replace it when this end initiates the rekey."""


def parse_keys(text: str) -> SaKeys:
    """Every IKE SA and Child SA key set in a charon log, in the order they were derived."""
    dumps: dict[str, _Dump] = {}  # by thread
    contexts: dict[str, _Context] = {}  # by IKE SA unique id
    ike_keys: list[IkeSaKeys] = []
    child_keys: list[ChildSaKeys] = []

    def finish(dump: _Dump) -> None:
        ctx = contexts.setdefault(dump.context, _Context())
        value = bytes(dump.data)
        if dump.name in _IKEV2:
            if dump.name == "Sk_d secret":
                ctx.ike = {}
            ctx.ike[_IKEV2[dump.name]] = value
            if dump.name == "Sk_pr secret":
                ctx.ike_sets.append(len(ike_keys))
                ike_keys.append(IkeSaKeys(2, dict(ctx.ike), unique_id=dump.context))
                ctx.ike = {}
        elif dump.name in _IKEV1:
            if dump.name == "SKEYID":
                ctx.ike = {}
            ctx.ike[_IKEV1[dump.name]] = value
            if dump.name == "encryption key Ka":
                ctx.ike_sets.append(len(ike_keys))
                ike_keys.append(IkeSaKeys(1, dict(ctx.ike), unique_id=dump.context))
                ctx.ike = {}
        elif dump.name in _CHILD:
            if dump.name == "encryption initiator key":
                ctx.child = {}
            ctx.child[_CHILD[dump.name]] = value

    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        thread, _group, _name, uid, msg = m.groups()
        context = uid or ""
        pending = dumps.get(thread)
        if pending is not None:
            d = _DUMP.match(msg)
            if d:
                pending.data.extend(bytes.fromhex(d.group(1)))
                if len(pending.data) >= pending.length:
                    del pending.data[pending.length :]
                    finish(dumps.pop(thread))
                continue
            dumps.pop(thread)  # a dump cut short: ignore it
        h = _HEADER.match(msg)
        if h:
            label, length = h.group(1), int(h.group(2))
            if label in _IKEV2 or label in _IKEV1 or label in _CHILD:
                dump = _Dump(label, context, length)
                if length == 0:
                    finish(dump)
                else:
                    dumps[thread] = dump
            continue
        p = _PARSED.match(msg)
        if p:
            contexts.setdefault(context, _Context()).last_parsed = p.group(2)
            continue
        r = _IKE_REKEYED.match(msg)
        if r:
            # As rekey initiator, charon derives the new IKE SA's keys in the old one's context
            # (as responder, in the new one's): a second key set here is the new SA's.
            ctx = contexts.setdefault(context, _Context())
            if len(ctx.ike_sets) >= 2:
                i = ctx.ike_sets.pop()
                ike_keys[i] = replace(ike_keys[i], unique_id=r.group(1))
            continue
        e = _ESTABLISHED.match(msg)
        if e:
            ctx = contexts.setdefault(context, _Context())
            keys = ctx.child
            ctx.child = {}
            if "encr_i" not in keys:
                continue
            child_keys.append(
                ChildSaKeys(
                    name=e.group(1),
                    spi_in=int(e.group(3), 16),
                    spi_out=int(e.group(4), 16),
                    initiator=ctx.last_parsed == "response",
                    encr_i=keys.get("encr_i", b""),
                    encr_r=keys.get("encr_r", b""),
                    integ_i=keys.get("integ_i", b""),
                    integ_r=keys.get("integ_r", b""),
                    unique_id=e.group(2),
                    ike_unique_id=context,
                )
            )
    return SaKeys(tuple(ike_keys), tuple(child_keys))
