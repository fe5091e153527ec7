"""Structured audit log and counters of the policy agent (RFC 4301 §5.1.1, §5.2 audit SHOULDs).

Records carry a timestamp, a kind (``fallback``, ``negotiation_failed``, ``discard``,
``clear_inbound_discarded``, ``unknown_spi``, ``icmp_error``, ...), the selectors involved
and kind-specific fields. Per-packet kinds are rate limited per (kind, selector) to one
record per second, with the number of suppressed records carried by the next one; counters
are always exact. Both are JSON-ready for the node's control API.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: float
    kind: str
    selectors: str
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "selectors": self.selectors, **self.fields}


class AuditLog:
    """A bounded log of :class:`AuditRecord` (oldest dropped first, counted)."""

    RATE_LIMIT_S = 1.0

    def __init__(self, capacity: int = 10000) -> None:
        self._records: deque[AuditRecord] = deque(maxlen=capacity)
        self._last: dict[tuple[str, object], float] = {}
        self._suppressed: dict[tuple[str, object], int] = {}
        self.dropped = 0
        self.total = 0

    def record(self, now: float, kind: str, selectors: str = "", **fields: Any) -> AuditRecord:
        rec = AuditRecord(now, kind, selectors, fields)
        if len(self._records) == self._records.maxlen:
            self.dropped += 1
        self._records.append(rec)
        self.total += 1
        return rec

    def allow(self, now: float, kind: str, key: object) -> int | None:
        """Rate limit for per-packet kinds: ``None`` if a ``kind`` record for ``key`` was made
        less than a second ago (the caller then formats nothing), else the number of records
        suppressed since the last one. Check this before building the record's fields."""
        k = (kind, key)
        last = self._last.get(k)
        if last is not None and now - last < self.RATE_LIMIT_S:
            self._suppressed[k] = self._suppressed.get(k, 0) + 1
            return None
        if len(self._last) > 4096:
            self._last.clear()
            self._suppressed.clear()
        self._last[k] = now
        return self._suppressed.pop(k, 0)

    def record_limited(
        self, now: float, kind: str, key: object, selectors: str = "", **fields: Any
    ) -> bool:
        """Record at most one ``kind`` per ``key`` per second; False if suppressed."""
        suppressed = self.allow(now, kind, key)
        if suppressed is None:
            return False
        if suppressed:
            fields["suppressed"] = suppressed
        self.record(now, kind, selectors, **fields)
        return True

    def __iter__(self) -> Iterator[AuditRecord]:
        return iter(tuple(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def of_kind(self, kind: str) -> list[AuditRecord]:
        return [r for r in self._records if r.kind == kind]

    def since(self, time: float) -> list[AuditRecord]:
        return [r for r in self._records if r.time >= time]

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self._records]


class Counters(dict[str, int]):
    """Named counters (``drops.hold_overflow``, ``icmp_errors.3.3``, ``acquires``, ...)."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n

    def __missing__(self, key: str) -> int:
        return 0  # so ``counters[name] += 1`` works on the hot path (no method call)

    def icmp(self, icmp_type: int, icmp_code: int) -> int:
        return self[f"icmp_errors.{icmp_type}.{icmp_code}"]

    def to_json(self) -> dict[str, int]:
        return dict(sorted(self.items()))
