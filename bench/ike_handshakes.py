"""Complete IKEv2 handshakes per second, both ends ours, in memory.

One handshake is IKE_SA_INIT + IKE_AUTH with PSK authentication and the first Child SA
(AES-GCM-16-128 ESP), initiator and responder each an ``IkeService``, datagrams handed from
one to the other without sockets. Measured for X25519 (IKE AES-GCM-16-128/PRF-SHA256) and
MODP-2048 (IKE AES-CBC-256/HMAC-SHA2-256). The baseline, measured in the same run, is the
crypto alone that a handshake needs for both ends (key pairs and shared secrets, SKEYSEED and
SK_*, four AUTH values, the Child SA KEYMAT, four SK seals and opens) through the registry.

``vs_crypto_only_*`` is the ratio of the two per CPU second of this process (the steadiest
figure on a shared machine); the ``*_per_s_*`` figures are wall-clock. Each figure is the best
of ``--rounds`` interleaved rounds of ``--seconds`` / 6 each (the machine is shared: the least
disturbed round is the one that measures the code; with only a few rounds a burst of load
on all of them halved the wall figure from one run to the next).

    python bench/ike_handshakes.py [--json] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from benchlib import emit, machine, parser

from reference_impl.crypto import dh as dh_group
from reference_impl.crypto import (
    encr,
    ikev2_child_keymat,
    ikev2_ike_keys,
    ikev2_psk_auth,
    ikev2_signed_octets,
    ikev2_skeyseed,
    integ,
    prf,
)
from reference_impl.events import ChildSaEstablished
from reference_impl.ike.config import (
    AuthClass,
    ChildConfig,
    Identity,
    LocalAuth,
    PeerConfig,
    RemoteAuth,
    ServiceSettings,
    esp_proposals,
    ike_proposals,
)
from reference_impl.ike.service import IkeService
from reference_impl.sa import TrafficSelector

PSK = b"bench-psk-0123456789"
A, B = "198.51.100.1", "198.51.100.2"
SUITES = {
    "x25519": ("aes128gcm16-prfsha256-x25519", (20, 128, 5, 0, 31)),
    "modp2048": ("aes256-sha256-modp2048", (12, 256, 5, 12, 14)),
}
BATCH = 200
"""Handshakes per pair of services (fresh services per batch keep the SA tables small)."""


def services(proposal: str) -> tuple[IkeService, IkeService]:
    def conf(name: str, me: str, peer: str, lts: str, rts: str) -> PeerConfig:
        return PeerConfig(
            name=name,
            local=LocalAuth(Identity.parse(me), AuthClass.PSK, PSK),
            remote=RemoteAuth(Identity.parse(peer), AuthClass.PSK),
            remote_addrs=(peer,),
            proposals=ike_proposals(proposal),
            send_initial_contact=False,  # independent peers: nothing to replace
            children=(
                ChildConfig(
                    "c",
                    (TrafficSelector.from_network(lts),),
                    (TrafficSelector.from_network(rts),),
                    esp_proposals("aes128gcm16"),
                ),
            ),
        )

    a = IkeService(
        ServiceSettings(
            connections=(conf("ab", A, B, "10.1.0.0/24", "10.2.0.0/24"),), local_address=A
        )
    )
    b = IkeService(
        ServiceSettings(
            connections=(conf("ba", B, A, "10.2.0.0/24", "10.1.0.0/24"),),
            local_address=B,
            cookie_threshold=1 << 30,
        )
    )
    return a, b


def handshakes(proposal: str, n: int) -> int:
    """Run ``n`` handshakes; return how many established a Child SA on both ends."""
    done = 0
    a, b = services(proposal)
    now = 0.0
    for i in range(n):
        if i and i % BATCH == 0:
            a, b = services(proposal)
        a.initiate("ab", now, reuse=False)
        while True:
            out = a.datagrams_to_send(now)
            if not out:
                break
            for d in out:
                b.receive_datagram(d.data, d.src, now, d.dst)
            for d in b.datagrams_to_send(now):
                a.receive_datagram(d.data, d.src, now, d.dst)
        got = 0
        for svc in (a, b):
            while (ev := svc.next_event()) is not None:
                got += isinstance(ev, ChildSaEstablished)
        done += got == 2
    return done


def crypto_only(suite: tuple[int, int, int, int, int]) -> Callable[[], None]:
    """The registry calls one handshake needs, for both ends."""
    encr_id, bits, prf_id, integ_id, group = suite
    p, e = prf(prf_id), encr(encr_id, bits)
    i = integ(integ_id) if integ_id else None
    g = dh_group(group)
    child_e = encr(20, 128)
    msg = os.urandom(300)
    ident = b"\x01\0\0\0" + bytes(4)
    plain = os.urandom(208)
    aad = os.urandom(32)

    def run() -> None:
        ni, nr, spi_i, spi_r = os.urandom(32), os.urandom(32), os.urandom(8), os.urandom(8)
        ki, kr = g.generate(), g.generate()
        for mine, theirs in ((ki, kr), (kr, ki)):
            g_ir = mine.shared_secret(theirs.public_value)
            seed = ikev2_skeyseed(p, ni, nr, g_ir)
            keys = ikev2_ike_keys(p, seed, ni, nr, spi_i, spi_r, e.key_len, i.key_len if i else 0)
            for sk_p in (keys.sk_pi, keys.sk_pr):  # our AUTH and the check of the peer's
                ikev2_psk_auth(p, PSK, ikev2_signed_octets(p, msg, nr, sk_p, ident))
            ikev2_child_keymat(p, keys.sk_d, ni, nr, child_e.key_len, 0)
            out = e.prepare(keys.sk_ei)
            inn = e.prepare(keys.sk_er)
            mac = i.prepare(keys.sk_ai) if i else None
            for c in (out, inn):  # one message each way, sealed by one end, opened by the other
                if e.aead:
                    ct = c.seal(b"\0" * 8, plain, aad)  # type: ignore[union-attr]
                    c.open(b"\0" * 8, ct, aad)  # type: ignore[union-attr]
                else:
                    ct = c.encrypt(b"\0" * 16, plain)  # type: ignore[union-attr]
                    c.decrypt(b"\0" * 16, ct)  # type: ignore[union-attr]
                    if mac is not None:
                        mac.verify(ct, mac.compute(ct))

    return run


def measure(func: Callable[[int], object], seconds: float) -> tuple[float, float]:
    """(operations per wall-clock second, per CPU second of this process): batches of growing
    size until ``seconds`` have passed. The CPU figure is the steadier one when the machine
    is shared."""
    func(5)  # warm-up
    count, n = 0, 20
    start, cpu0 = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        func(n)
        count += n
        n = min(n * 2, 2000)
    cpu = time.process_time() - cpu0
    return count / elapsed, count / max(cpu, 1e-9)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds per figure")
    args = p.parse_args()
    out: dict[str, object] = {"bench": "ike_handshakes", **machine()}
    for name, (proposal, suite) in SUITES.items():
        assert handshakes(proposal, 3) == 3, f"{name}: handshakes do not complete"
        base = crypto_only(suite)

        def crypto_run(n: int, base: Callable[[], None] = base) -> None:
            for _ in range(n):
                base()

        def handshake_run(n: int, proposal: str = proposal) -> int:
            return handshakes(proposal, n)

        best = crypto = best_cpu = crypto_cpu = 0.0
        for _ in range(max(1, args.rounds)):  # interleaved: the machine is shared
            wall, cpu = measure(crypto_run, args.seconds / 6)
            crypto, crypto_cpu = max(crypto, wall), max(crypto_cpu, cpu)
            wall, cpu = measure(handshake_run, args.seconds / 6)
            best, best_cpu = max(best, wall), max(best_cpu, cpu)
        out[f"handshakes_per_s_{name}"] = best
        out[f"crypto_only_per_s_{name}"] = crypto
        out[f"handshakes_per_cpu_s_{name}"] = best_cpu
        out[f"crypto_only_per_cpu_s_{name}"] = crypto_cpu
        out[f"vs_crypto_only_{name}"] = best_cpu / crypto_cpu
        out[f"us_cpu_per_handshake_{name}"] = 1e6 / best_cpu
    out["target_handshakes_per_s_x25519"] = 2000
    emit(out, args.json)


if __name__ == "__main__":
    main()
