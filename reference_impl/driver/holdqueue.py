"""A small bounded queue for packets waiting for an SA (policy-spec §3.3 E2, ``hold``).

The policy agent owns the policy (length, ``keep_last``/``keep_first``, when to flush or
discard); this is only the container. ``keep_last`` evicts the oldest packet when full
(Windows: "only the last packet sent is saved"); ``keep_first`` refuses the newcomer.
``put`` returns how many packets were lost, for the caller's ``drops.hold_overflow``.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from reference_impl.errors import LocalProtocolError

HoldPolicy = Literal["keep_last", "keep_first"]


class HoldQueue:
    __slots__ = ("_q", "length", "policy")

    def __init__(self, length: int = 1, policy: HoldPolicy = "keep_last") -> None:
        if length < 0:
            raise LocalProtocolError(f"hold queue length must be >= 0, got {length}")
        if policy not in ("keep_last", "keep_first"):
            raise LocalProtocolError(f"unknown hold queue policy {policy!r}")
        self.length = length
        self.policy: HoldPolicy = policy
        self._q: deque[bytes] = deque()

    def put(self, packet: bytes) -> int:
        """Queue ``packet``; return the number of packets dropped to respect the bound (0/1)."""
        if len(self._q) < self.length:
            self._q.append(packet)
            return 0
        if self.policy == "keep_first" or self.length == 0:
            return 1
        self._q.popleft()
        self._q.append(packet)
        return 1

    def drain(self) -> list[bytes]:
        """Take every held packet, oldest first (to protect or send after the negotiation)."""
        out = list(self._q)
        self._q.clear()
        return out

    def clear(self) -> int:
        """Discard every held packet; return how many."""
        n = len(self._q)
        self._q.clear()
        return n

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)
