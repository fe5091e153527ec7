"""Memory of a large SAD: install N SAs (half inbound, half outbound, AES-GCM-128 tunnel
mode with one selector pair each, as IKE would hand them over) and report the growth of the
process's resident set.

    python bench/sad_memory.py [--json] [--sas 100000] [--active N]

``--active`` also sends one packet through the first N SAs, which prepares their crypto
contexts (about 2.5 KB each in ``cryptography``): the SAD prepares crypto lazily.
Run it in a fresh interpreter (``esp_throughput.py`` does) so that the figure is the SAD's.
"""

from __future__ import annotations

import gc
import os
import time

from benchlib import emit, machine, parser

from reference_impl.driver import OutboundSa, Sad
from reference_impl.sa import ChildSaParams, IpsecProtocol, Mode, TrafficSelector

TARGET_MB = 200.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(count: int, active: int) -> dict[str, float | int]:
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    sad = Sad()
    rng = os.urandom
    packet = bytes.fromhex("4500001c000100004011" + "0000" + "0a000001" + "0a010001") + bytes(8)
    for i in range(count):
        a, b = divmod(i, 250)
        params = ChildSaParams(
            spi=0x10000 + i,
            protocol=IpsecProtocol.ESP,
            mode=Mode.TUNNEL,
            src=f"198.18.{a % 256}.{b + 1}",
            dst="198.19.0.1",
            encr_id=20,
            encr_key_bits=128,
            encr_key=rng(20),
            ts_src=(TrafficSelector.from_network(f"10.{a % 256}.{b}.0/24"),),
            ts_dst=(TrafficSelector.from_network("10.255.0.0/16"),),
        )
        sa = sad.install(params, inbound=bool(i & 1), now=0.0)
        if i < active and isinstance(sa, OutboundSa):
            sa.protect(packet, 0.0)
    elapsed = time.perf_counter() - start
    gc.collect()
    grown = rss_bytes() - before
    assert len(sad) == count
    return {
        "sas": count,
        "active": active,
        "rss_growth_mb": grown / 1e6,
        "bytes_per_sa": grown / count if count else 0.0,
        "install_per_s": count / elapsed if elapsed else 0.0,
        "target_mb": TARGET_MB * count / 100_000,
    }


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    p = parser((__doc__ or "").splitlines()[0])
    p.add_argument("--sas", type=int, default=100_000)
    p.add_argument("--active", type=int, default=0)
    args = p.parse_args(argv)
    result = build(args.sas, args.active)
    emit({**machine(), **result}, args.json)
    return result


if __name__ == "__main__":
    main()
