"""The receive anti-replay window with Extended Sequence Number inference (RFC 4303 §3.4.3 and
Appendix A; RFC 4302 §3.4.3 for AH).

The window is an integer bitmask: bit ``i`` is set when sequence number ``top - i`` has been
received and verified, so sliding the window is one shift and one mask, whatever its size
(any size works; 32 is the RFC minimum, 64 the default, 0 disables the check). ``top`` is the
highest verified sequence number, a full 64-bit value when ESN is on.

Use it in this order for every packet (the window must never move for a packet whose ICV
fails, §3.4.3)::

    seq = window.infer(seq_low)        # full sequence number (ESN: Appendix A2.2)
    reason = window.check(seq)         # None, or Verdict.REPLAY / OUTSIDE_WINDOW
    ... verify the ICV with seq ...
    window.update(seq)                 # only after the ICV verified
"""

from __future__ import annotations

from reference_impl.driver.verdict import Verdict
from reference_impl.errors import LocalProtocolError

_M32 = 0xFFFFFFFF
_DISABLED_INFERENCE_WINDOW = 1 << 31
"""With anti-replay disabled ESN still needs Seqh: infer as if the window were half the
sequence space, i.e. pick the subspace that puts the packet nearest the highest seen."""


class ReplayWindow:
    """Anti-replay state of one inbound SA (RFC 4303 §3.4.3, Appendix A)."""

    __slots__ = ("_infer_w", "esn", "replay_bits", "replay_mask", "replay_size", "replay_top")

    def __init__(self, size: int = 64, esn: bool = False) -> None:
        if size < 0:
            raise LocalProtocolError(f"replay window size must be >= 0, got {size}")
        self.replay_size = size
        """Window size W in packets; 0 disables the replay check."""
        self.esn = esn
        self.replay_top = 0
        """Highest sequence number verified so far (T); 0 before the first packet."""
        self.replay_bits = 0
        """Bit i set: sequence number ``replay_top - i`` was received."""
        self.replay_mask = (1 << size) - 1
        self._infer_w = size if size else _DISABLED_INFERENCE_WINDOW

    def infer(self, seql: int) -> int:
        """The full sequence number for the transmitted low 32 bits (RFC 4303 Appendix A2.2).

        Without ESN this is ``seql``. With ESN, returns -1 when the packet would belong to the
        subspace before the very first one (it can only be a replay from before the SA existed).
        """
        if not self.esn:
            return seql
        top = self.replay_top
        tl = top & _M32
        th = top >> 32
        w = self._infer_w
        if tl >= w - 1:  # Case A: the window lies in one subspace
            seqh = th if seql >= tl - w + 1 else th + 1
        else:  # Case B: the window spans two subspaces
            seqh = th - 1 if seql >= (tl - w + 1) & _M32 else th
        if seqh < 0:
            return -1
        return (seqh << 32) | seql

    def check(self, seq: int) -> Verdict | None:
        """None when ``seq`` may be accepted (pending the ICV), else why not."""
        size = self.replay_size
        if not size:
            return None if seq >= 0 else Verdict.OUTSIDE_WINDOW
        top = self.replay_top
        if seq > top:
            return None
        if seq <= 0:
            return Verdict.OUTSIDE_WINDOW
        diff = top - seq
        if diff >= size:
            return Verdict.OUTSIDE_WINDOW
        if (self.replay_bits >> diff) & 1:
            return Verdict.REPLAY
        return None

    def update(self, seq: int) -> None:
        """Record a verified ``seq``; slides the window when it is right of ``replay_top``."""
        top = self.replay_top
        if seq == top + 1 and self.replay_bits == self.replay_mask:
            self.replay_top = seq  # in order with a full window: the bitmap stays all ones
        elif seq > top:
            if self.replay_size:
                shift = seq - top
                # A jump past the whole window (ESN: up to 2^64) leaves only seq in it; never
                # build the shifted integer (2^31 bits is 256 MiB and half a second).
                if shift >= self.replay_size:
                    self.replay_bits = 1
                else:
                    self.replay_bits = ((self.replay_bits << shift) | 1) & self.replay_mask
            self.replay_top = seq
        elif self.replay_size:
            self.replay_bits |= 1 << (top - seq)

    def seen(self, seq: int) -> bool:
        """Whether ``seq`` is recorded as received (inside the window)."""
        diff = self.replay_top - seq
        if diff < 0 or diff >= self.replay_size:
            return False
        return bool((self.replay_bits >> diff) & 1)

    def reset_window(self, top: int = 0) -> None:
        """Forget every received number and set the right edge (tests, conformance probes and
        the RFC 4303 Appendix A3 resynchronisation)."""
        self.replay_top = top
        self.replay_bits = 1 if top and self.replay_size else 0
