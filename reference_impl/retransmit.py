"""Request retransmission, shared by IKEv2 and IKEv1 (one implementation, not two).

RFC 7296 §2.1 and §2.4: a request is retransmitted, byte-identical, on an exponential
schedule until a reply arrives or the exchange is declared failed. The default schedule is
the ``reference`` timing profile of ../shared/design/policy-spec.md §3.5: transmissions at
t = 0, 0.5, 1, 2, 4, 8, 16, 32 and failure at t = 64.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class RetransmitSchedule:
    """Gaps between transmissions: transmission k+1 is sent ``gaps[k]`` after transmission k.

    The last gap is the wait after the last transmission before the exchange fails, so a
    schedule of n gaps sends n transmissions and fails at ``sum(gaps)`` (spec §3.3, E3).
    """

    gaps: tuple[float, ...] = (0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

    def __post_init__(self) -> None:
        if not self.gaps:
            raise LocalProtocolError("a retransmission schedule needs at least one gap")
        if any(g <= 0 for g in self.gaps):
            raise LocalProtocolError("retransmission gaps must be positive")

    @classmethod
    def exponential(cls, timeout: float, base: float, tries: int) -> RetransmitSchedule:
        """strongSwan's form: ``timeout * base**n`` for n = 0..tries (charon ``retransmit_*``)."""
        return cls(tuple(timeout * base**n for n in range(tries + 1)))

    @property
    def failure_after(self) -> float:
        return sum(self.gaps)

    @property
    def transmissions(self) -> int:
        return len(self.gaps)

    def send_times(self) -> tuple[float, ...]:
        """Offsets of every transmission from the first one."""
        times = [0.0]
        for gap in self.gaps[:-1]:
            times.append(times[-1] + gap)
        return tuple(times)


REFERENCE_SCHEDULE = RetransmitSchedule()


class Retransmitter:
    """Tracks one outstanding request: when to resend it and when the exchange has failed.

    The owner sends the request itself at ``start``; afterwards it calls :meth:`handle_timer`
    at (or after) :meth:`get_timer` and resends the stored datagrams when it returns
    ``"resend"``, or fails the exchange on ``"failed"``.
    """

    __slots__ = ("_deadline", "_index", "_last_sent", "datagrams", "schedule", "started_at")

    def __init__(self, schedule: RetransmitSchedule = REFERENCE_SCHEDULE) -> None:
        self.schedule = schedule
        self.datagrams: tuple[bytes, ...] = ()
        self.started_at: float | None = None
        self._index = 0
        self._last_sent = 0.0
        self._deadline: float | None = None

    @property
    def active(self) -> bool:
        return self._deadline is not None

    @property
    def transmissions(self) -> int:
        """How many times the current request has been sent."""
        return self._index

    def start(self, datagrams: tuple[bytes, ...], now: float) -> None:
        """A new request (one or more fragments) was sent for the first time at ``now``."""
        self.datagrams = datagrams
        self.started_at = now
        self._index = 1
        self._last_sent = now
        self._deadline = now + self.schedule.gaps[0]

    def stop(self) -> None:
        """The reply arrived (or the exchange was abandoned)."""
        self._deadline = None

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> str | None:
        """``"resend"``, ``"failed"``, or ``None`` if nothing is due yet."""
        if self._deadline is None or now < self._deadline:
            return None
        if self._index >= self.schedule.transmissions:
            self._deadline = None
            return "failed"
        # Scheduled from the planned time, not `now`, so late timer calls do not drift.
        self._last_sent = self._deadline
        self._deadline = self._last_sent + self.schedule.gaps[self._index]
        self._index += 1
        return "resend"
