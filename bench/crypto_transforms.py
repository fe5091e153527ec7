"""Per-packet cost of the crypto registry's prepared objects against the bare library calls.

Baselines measured in the same run: ``AESGCM(key).encrypt/decrypt`` (built once) for the AEAD
path, a fresh ``Cipher(AES, CBC(iv))`` per packet for CBC, and a keyed HMAC ``copy()`` for
integrity. Reports calls/s and the ratio to the baseline (1.0 = as fast as the bare call).

    python bench/crypto_transforms.py [--json] [--seconds S] [--size N]
"""

from __future__ import annotations

import os
from collections.abc import Callable

from benchlib import emit, machine, parser, rate
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reference_impl.crypto import EncrId, IntegId, encr, integ


def pair(
    base: Callable[[], object], ours: Callable[[], object], secs: float, rounds: int = 3
) -> tuple[float, float]:
    """Best rate of each over ``rounds`` interleaved measurements (the machine is shared:
    interleaving keeps load changes from favouring one side)."""
    b = o = 0.0
    for _ in range(rounds):
        b = max(b, rate(base, seconds=secs / rounds))
        o = max(o, rate(ours, seconds=secs / rounds))
    return b, o


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--size", type=int, default=1400, help="payload octets per packet")
    args = p.parse_args()
    secs, n = args.seconds, args.size - args.size % 16
    data, aad, iv8, iv16 = os.urandom(n), os.urandom(8), os.urandom(8), os.urandom(16)
    out: dict[str, object] = {"bench": "crypto_transforms", "payload_octets": n, **machine()}

    # AES-GCM-16-128: prepared seal/open vs the bare AESGCM call with a prebuilt nonce.
    key = os.urandom(20)
    bare = AESGCM(key[:16])
    nonce = key[16:] + iv8
    sealed = bare.encrypt(nonce, data, aad)
    gcm = encr(EncrId.ENCR_AES_GCM_16, 128).prepare_aead(key)
    assert gcm.seal(iv8, data, aad) == sealed
    r_bare_enc, r_seal = pair(
        lambda: bare.encrypt(nonce, data, aad), lambda: gcm.seal(iv8, data, aad), secs
    )
    r_bare_dec, r_open = pair(
        lambda: bare.decrypt(nonce, sealed, aad), lambda: gcm.open(iv8, sealed, aad), secs
    )
    out |= {
        "gcm_bare_encrypt_per_s": r_bare_enc,
        "gcm_seal_per_s": r_seal,
        "gcm_seal_vs_bare": r_seal / r_bare_enc,
        "gcm_seal_overhead_us": 1e6 / r_seal - 1e6 / r_bare_enc,
        "gcm_bare_decrypt_per_s": r_bare_dec,
        "gcm_open_per_s": r_open,
        "gcm_open_vs_bare": r_open / r_bare_dec,
        "gcm_open_overhead_us": 1e6 / r_open - 1e6 / r_bare_dec,
    }

    # AES-CBC-128: persistent contexts vs a fresh Cipher per packet.
    ckey = os.urandom(16)
    alg = algorithms.AES(ckey)
    cbc = encr(EncrId.ENCR_AES_CBC, 128).prepare_block(ckey)

    def fresh_enc() -> bytes:
        e = Cipher(alg, modes.CBC(iv16)).encryptor()
        return e.update(data) + e.finalize()

    ct = fresh_enc()

    def fresh_dec() -> bytes:
        d = Cipher(alg, modes.CBC(iv16)).decryptor()
        return d.update(ct) + d.finalize()

    assert cbc.encrypt(iv16, data) == ct and cbc.decrypt(iv16, ct) == data
    r_fe, r_e = pair(fresh_enc, lambda: cbc.encrypt(iv16, data), secs)
    r_fd, r_d = pair(fresh_dec, lambda: cbc.decrypt(iv16, ct), secs)
    out |= {
        "cbc_fresh_encrypt_per_s": r_fe,
        "cbc_encrypt_per_s": r_e,
        "cbc_encrypt_vs_fresh": r_e / r_fe,
        "cbc_fresh_decrypt_per_s": r_fd,
        "cbc_decrypt_per_s": r_d,
        "cbc_decrypt_vs_fresh": r_d / r_fd,
    }

    # HMAC-SHA2-256-128: prepared Mac vs a bare keyed-HMAC copy.
    mkey = os.urandom(32)
    base = hmac.HMAC(mkey, hashes.SHA256())

    def bare_mac() -> bytes:
        h = base.copy()
        h.update(data)
        return h.finalize()[:16]

    mac = integ(IntegId.AUTH_HMAC_SHA2_256_128).prepare(mkey)
    assert mac.compute(data) == bare_mac()
    r_bm, r_m = pair(bare_mac, lambda: mac.compute(data), secs)
    icv = mac.compute(data)
    r_v = rate(lambda: mac.verify(data, icv), seconds=secs)
    out |= {
        "hmac256_bare_per_s": r_bm,
        "hmac256_compute_per_s": r_m,
        "hmac256_compute_vs_bare": r_m / r_bm,
        "hmac256_verify_per_s": r_v,
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
