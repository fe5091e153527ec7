"""Proposal selection (RFC 7296 §2.7, §3.3.6) and traffic selector narrowing (§2.9).

The responder picks one proposal and, in it, one transform of each type; the initiator checks
that the answer is a subset of something it offered. Selectors are intersected range by range.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from reference_impl.crypto import TransformType
from reference_impl.ike.config import ProposalConfig, is_aead
from reference_impl.ike.payloads import Proposal, Transform
from reference_impl.sa import TrafficSelector

_ENCR = TransformType.ENCR
_PRF = TransformType.PRF
_INTEG = TransformType.INTEG
_DH = TransformType.DH
_ESN = TransformType.ESN
_TYPES = (_ENCR, _PRF, _INTEG, _DH, _ESN)


class Selected(NamedTuple):
    """The negotiated transforms of one SA (0 = none for INTEG/PRF/DH). A named tuple: it is
    made for every negotiation, and tuples are the cheapest immutable records."""

    num: int
    protocol: int
    spi: bytes
    encr_id: int
    encr_bits: int | None
    integ_id: int = 0
    prf_id: int = 0
    dh_id: int = 0
    esn: bool = False

    def to_proposal(self, spi: bytes | None = None) -> Proposal:
        """The one-proposal answer (RFC 7296 §3.3.6: same number, one transform per type)."""
        key = (*self[3:], self.protocol)
        hit = _ANSWERS.get(key)
        if hit is None:
            hit = _ANSWERS[key] = self._transforms()
            if len(_ANSWERS) > 256:
                _ANSWERS.clear()
        return Proposal(
            self.num, self.protocol, self.spi if spi is None else spi, list(hit[0]), hit[1]
        )

    def _transforms(self) -> tuple[tuple[Transform, ...], bytes]:
        ts = [Transform(_ENCR, self.encr_id, self.encr_bits)] if self.encr_id else []  # AH: none
        if self.prf_id:
            ts.append(Transform(_PRF, self.prf_id))
        if self.integ_id:
            ts.append(Transform(_INTEG, self.integ_id))
        if self.dh_id:
            ts.append(Transform(_DH, self.dh_id))
        if self.protocol != 1:
            ts.append(Transform(_ESN, int(self.esn)))
        n = len(ts)
        return tuple(ts), b"".join(t.encode(i == n - 1) for i, t in enumerate(ts))

    def name(self) -> str:
        """strongSwan-like: ``AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519``."""
        return _suite_name(
            self.protocol,
            self.encr_id,
            self.encr_bits,
            self.integ_id,
            self.prf_id,
            self.dh_id,
            self.esn,
        )


@lru_cache(maxsize=256)
def _suite_name(
    protocol: int,
    encr_id: int,
    encr_bits: int | None,
    integ_id: int,
    prf_id: int,
    dh_id: int,
    esn: bool,
) -> str:
    from reference_impl.crypto import dh, encr, integ, prf

    parts = []
    try:
        if encr_id:
            parts.append(encr(encr_id, encr_bits).name)
        if integ_id:
            parts.append(integ(integ_id).name)
        if prf_id:
            parts.append(prf(prf_id).name)
        if dh_id:
            parts.append(dh(dh_id).name)
    except Exception:
        return f"{encr_id}/{integ_id}/{prf_id}/{dh_id}"
    if protocol != 1:
        parts.append("EXT_SEQ" if esn else "NO_EXT_SEQ")
    return "/".join(parts)


_ANSWERS: dict[tuple[object, ...], tuple[tuple[Transform, ...], bytes]] = {}
"""Encoded answers by negotiated transforms (a handful per configuration)."""


def _offered(p: Proposal) -> dict[int, list[Transform]]:
    by: dict[int, list[Transform]] = {}
    for t in p.transforms:
        if t.unknown_attributes:
            continue  # RFC 7296 §3.3.6: a transform with an unknown attribute is rejected
        by.setdefault(t.type, []).append(t)
    return by


def _ours(cfg: ProposalConfig, ignore_dh: bool) -> dict[int, list[tuple[int, int | None]]]:
    return {
        _ENCR: list(cfg.encr),
        _PRF: [(p, None) for p in cfg.prf],
        _INTEG: [(i, None) for i in cfg.integ],
        _DH: [] if ignore_dh else [(d, None) for d in cfg.dh],
        _ESN: [(e, None) for e in cfg.esn],
    }


def _match(
    cfg: ProposalConfig, p: Proposal, ignore_dh: bool, prefer_local: bool
) -> Selected | None:
    if p.protocol_id != cfg.protocol:
        return None
    offered = _offered(p)
    if any(t not in _TYPES for t in offered):
        return None  # a transform type we do not know: the proposal is not acceptable
    ours = _ours(cfg, ignore_dh)
    chosen: dict[int, tuple[int, int | None]] = {}
    for ttype in _TYPES:
        mine = ours[ttype]
        theirs = [(t.id, t.key_length) for t in offered.get(ttype, [])]
        if ttype == _DH and ignore_dh:
            continue
        if ttype == _INTEG and theirs == [(0, None)]:
            theirs = []  # INTEG NONE with an AEAD (RFC 5282 §8)
        if ttype == _DH and (0, None) in theirs and not mine:
            theirs = []  # they accept no PFS, and we want none
        if not theirs and not mine:
            continue
        if ttype == _ESN and not theirs and (0, None) in mine:
            chosen[ttype] = (0, None)  # a missing ESN transform means no ESN
            continue
        if not theirs or not mine:
            return None
        pick = None
        if prefer_local:
            pick = next((m for m in mine if m in theirs), None)
        else:
            pick = next((t for t in theirs if t in mine), None)
        if pick is None:
            return None
        chosen[ttype] = pick
    encr_id, bits = chosen.get(_ENCR, (0, None))
    integ_id = chosen.get(_INTEG, (0, None))[0]
    if p.protocol_id == 2:  # AH: integrity only
        if _ENCR in chosen or not integ_id:
            return None
    elif _ENCR not in chosen or is_aead(encr_id) == bool(integ_id):
        return None  # no cipher, an AEAD with INTEG, or a plain cipher without INTEG
    return Selected(
        p.num,
        p.protocol_id,
        p.spi,
        encr_id,
        bits,
        integ_id,
        chosen.get(_PRF, (0, None))[0],
        chosen.get(_DH, (0, None))[0],
        bool(chosen.get(_ESN, (0, None))[0]),
    )


_SELECT_CACHE: dict[
    tuple[object, ...], tuple[tuple[ProposalConfig, ...], int, Selected | None]
] = {}


def select(
    configs: tuple[ProposalConfig, ...] | list[ProposalConfig],
    offered: list[Proposal],
    *,
    ignore_dh: bool = False,
    prefer_local: bool = True,
) -> Selected | None:
    """The responder's choice (RFC 7296 §2.7): the first acceptable pair, by our order of
    preference (``prefer_local``, strongSwan's default) or by the peer's.

    ``ignore_dh``: the SA of IKE_AUTH, which has no key exchange (§1.2).

    The choice depends only on our configuration and the offered transforms (not on SPIs),
    so offers we decoded (they carry their raw octets) are answered from a cache.
    """
    key: tuple[object, ...] | None = None
    if offered and all(p.raw for p in offered):
        key = (
            tuple(map(id, configs)),
            ignore_dh,
            prefer_local,
            *[(p.num, p.protocol_id, p.raw) for p in offered],
        )
        hit = _SELECT_CACHE.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], configs, strict=True)):
            t = hit[2]
            if t is None:
                return None
            return Selected(
                t.num,
                t.protocol,
                offered[hit[1]].spi,
                t.encr_id,
                t.encr_bits,
                t.integ_id,
                t.prf_id,
                t.dh_id,
                t.esn,
            )
    result = _select(configs, offered, ignore_dh, prefer_local)
    if key is not None:
        if len(_SELECT_CACHE) > 256:
            _SELECT_CACHE.clear()
        index = 0
        if result is not None:
            index = next(
                i for i, p in enumerate(offered) if p.num == result.num and p.spi == result.spi
            )
        _SELECT_CACHE[key] = (tuple(configs), index, result)
    return result


def _select(
    configs: tuple[ProposalConfig, ...] | list[ProposalConfig],
    offered: list[Proposal],
    ignore_dh: bool,
    prefer_local: bool,
) -> Selected | None:
    if prefer_local:
        for cfg in configs:
            for p in offered:
                s = _match(cfg, p, ignore_dh, True)
                if s is not None:
                    return s
        return None
    for p in offered:
        for cfg in configs:
            s = _match(cfg, p, ignore_dh, False)
            if s is not None:
                return s
    return None


_CHECK_CACHE: dict[tuple[object, ...], Selected | None] = {}


def check_answer(
    offered: list[Proposal], answer: list[Proposal], *, ignore_dh: bool = False
) -> Selected | None:
    """The initiator's check of the responder's choice (RFC 7296 §2.7): exactly one proposal,
    numbered like one we sent, with one transform of each type we offered, all from it."""
    if len(answer) != 1:
        return None
    a = answer[0]
    key: tuple[object, ...] | None = None
    if a.raw and all(p.encoded_transforms for p in offered):
        key = (
            ignore_dh,
            a.num,
            a.protocol_id,
            a.raw,
            *[(p.num, p.protocol_id, p.encoded_transforms) for p in offered],
        )
        if key in _CHECK_CACHE:
            t = _CHECK_CACHE[key]
            if t is None:
                return None
            return Selected(
                t.num,
                t.protocol,
                a.spi,
                t.encr_id,
                t.encr_bits,
                t.integ_id,
                t.prf_id,
                t.dh_id,
                t.esn,
            )
    result = _check_answer(offered, a, ignore_dh)
    if key is not None:
        if len(_CHECK_CACHE) > 256:
            _CHECK_CACHE.clear()
        _CHECK_CACHE[key] = result
    return result


def _check_answer(offered: list[Proposal], a: Proposal, ignore_dh: bool) -> Selected | None:
    ours = next((p for p in offered if p.num == a.num and p.protocol_id == a.protocol_id), None)
    if ours is None:
        return None
    got = _offered(a)
    if len(got) != len({t.type for t in a.transforms}) or any(len(v) != 1 for v in got.values()):
        return None
    mine = _offered(ours)
    for ttype, ts in got.items():
        if ttype == _DH and ignore_dh:
            continue
        t = ts[0]
        if ttype == _INTEG and t.id == 0 and ttype not in mine:
            continue
        if all((m.id, m.key_length) != (t.id, t.key_length) for m in mine.get(ttype, [])):
            return None
    for ttype in mine:
        if ttype not in got and not (ttype == _DH and ignore_dh):
            if ttype == _DH and any(t.id == 0 for t in mine[ttype]):
                continue
            if ttype == _ESN and any(t.id == 0 for t in mine[ttype]):
                continue
            return None
    one = {k: v[0] for k, v in got.items()}
    encr_t = one.get(_ENCR)
    if encr_t is None and a.protocol_id != 2:
        return None
    return Selected(
        a.num,
        a.protocol_id,
        a.spi,
        encr_t.id if encr_t else 0,
        encr_t.key_length if encr_t else None,
        one[_INTEG].id if _INTEG in one else 0,
        one[_PRF].id if _PRF in one else 0,
        0 if ignore_dh else (one[_DH].id if _DH in one else 0),
        bool(one[_ESN].id) if _ESN in one else False,
    )


# --- traffic selectors (RFC 7296 §2.9) ---------------------------------------------------------


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector covering what both ``a`` and ``b`` cover, or ``None``."""
    if a == b:
        return a
    if a.start_addr.version != b.start_addr.version:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start = a.start_addr if a.start_addr >= b.start_addr else b.start_addr  # type: ignore[operator]
    end = a.end_addr if a.end_addr <= b.end_addr else b.end_addr  # type: ignore[operator]
    if start > end:  # type: ignore[operator]
        return None
    if a.start_port > a.end_port or b.start_port > b.end_port:  # OPAQUE ports
        any_a = (a.start_port, a.end_port) == (0, 65535)
        any_b = (b.start_port, b.end_port) == (0, 65535)
        if (a.start_port, a.end_port) != (b.start_port, b.end_port) and not (any_a or any_b):
            return None
        sport, eport = (
            (a.start_port, a.end_port) if a.start_port > a.end_port else (b.start_port, b.end_port)
        )
    else:
        sport, eport = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
        if sport > eport:
            return None
    return TrafficSelector(start, end, a.ip_protocol or b.ip_protocol, sport, eport)


def narrow(
    proposed: list[TrafficSelector], allowed: tuple[TrafficSelector, ...] | list[TrafficSelector]
) -> list[TrafficSelector]:
    """Narrow the peer's selectors to our policy: every non-empty intersection, in the
    peer's order, without duplicates (RFC 7296 §2.9)."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            r = intersect(p, a)
            if r is not None and r not in out:
                out.append(r)
    return out


def covered(ts: TrafficSelector, by: list[TrafficSelector] | tuple[TrafficSelector, ...]) -> bool:
    """Whether ``ts`` lies within one of ``by`` (the initiator's check of a narrowed answer)."""
    return any(intersect(ts, b) == ts for b in by)
