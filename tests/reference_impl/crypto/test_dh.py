"""Key exchange methods: RFC 3526 parameters, RFC 5903 / RFC 7748 / RFC 8031 examples, RFC 6989."""

from __future__ import annotations

import pytest

from reference_impl.crypto import DhId, dh
from reference_impl.crypto.modp_groups import MODP_PRIMES
from reference_impl.errors import LocalProtocolError, RemoteProtocolError
from tests.reference_impl.crypto import vectors as v

H = bytes.fromhex


def _pi_fixed(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula in integers."""
    guard = 64
    one = 1 << (bits + guard)

    def atan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> guard


# RFC 2409 §6.1/§6.2 and RFC 3526 §2-§7: p = 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k)
RFC3526_K = {
    1: (768, 149686),
    2: (1024, 129093),
    5: (1536, 741804),
    14: (2048, 124476),
    15: (3072, 1690314),
    16: (4096, 240904),
    17: (6144, 929484),
    18: (8192, 4743158),
}


@pytest.mark.parametrize("group", sorted(RFC3526_K))
def test_modp_primes_match_the_rfc_formula(group: int) -> None:
    n, k = RFC3526_K[group]
    p = 2**n - 2 ** (n - 64) - 1 + 2**64 * (_pi_fixed(n - 130) + k)
    assert MODP_PRIMES[group] == p
    assert dh(group).public_len == n // 8


# Every vector through OpenSSL; the MODP ones also through the pure-Python fallback.
_KE_CASES = [(x, True) for x in v.KE] + [(x, False) for x in v.KE if x.dh_id <= DhId.MODP_8192]


@pytest.mark.parametrize(
    ("vec", "openssl"), _KE_CASES, ids=[f"{x.name}-{'ossl' if o else 'pure'}" for x, o in _KE_CASES]
)
def test_key_exchange_vectors(vec: v.KeVec, openssl: bool) -> None:
    group = dh(vec.dh_id)
    i = group._make(H(vec.priv_i), use_openssl=openssl)
    r = group._make(H(vec.priv_r), use_openssl=openssl)
    assert i.public_value.hex() == vec.pub_i
    assert r.public_value.hex() == vec.pub_r
    assert len(i.public_value) == group.public_len
    assert i.shared_secret(r.public_value).hex() == vec.shared
    assert r.shared_secret(i.public_value).hex() == vec.shared


# RFC 5903 §8.1-§8.3: i, g^i = (gix, giy), r, g^r, girx. The KE payload data is gix || giy
# (no 0x04 prefix) and g^ir is girx alone (RFC 5903 §7, §9 as corrected by errata 9).
RFC5903 = {
    DhId.ECP_256: dict(
        i="C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        gi="DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        r="C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        gr="D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
        "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        girx="D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    ),
    DhId.ECP_384: dict(
        i="099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655"
        "E35B538041E649EE3FAEF896783AB194",
        gi="667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6"
        "DE3AC808ACB4BDB4C88732AEE95F41AA9482ED1FC0EEB9CAFC4984625CCFC23F"
        "65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        r="41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942"
        "E0308312916B8ED2960E4BD55A7448FC",
        gr="E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D"
        "0D1AC43A0336DEF96FDA41D0774A3571DCFBEC7AACF3196472169E838430367F"
        "66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        girx="11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4"
        "D603135569B9E9D09CF5D4A270F59746",
    ),
    DhId.ECP_521: dict(
        i="0037ADE9319A89F4DABDB3EF411AACCCA5123C61ACAB57B5393DCE47608172A0"
        "95AA85A30FE1C2952C6771D937BA9777F5957B2639BAB072462F68C27A57382D4A52",
        gi="0015417E84DBF28C0AD3C278713349DC7DF153C897A1891BD98BAB4357C9ECBE"
        "E1E3BF42E00B8E380AEAE57C2D10756494188594"
        "2AF5A7F4601723C4195D176CED3E"
        "017CAE20B6641D2EEB695786D8C946146239D099E18E1D5A514C739D7CB4A10A"
        "D8A788015AC405D7799DC75E7B7D5B6CF2261A6A7F1507438BF01BEB6CA3926F9582",
        r="0145BA99A847AF43793FDD0E872E7CDFA16BE30FDC780F97BCCC3F078380201E"
        "9C677D600B343757A3BDBF2A3163E4C2F869CCA7458AA4A4EFFC311F5CB151685EB9",
        gr="00D0B3975AC4B799F5BEA16D5E13E9AF971D5E9B984C9F39728B5E5739735A21"
        "9B97C356436ADC6E95BB0352F6BE64A6C2912D4EF2D0433CED2B6171640012D9460F"
        "015C68226383956E3BD066E797B623C27CE0EAC2F551A10C2C724D9852077B87"
        "220B6536C5C408A1D2AEBB8E86D678AE49CB57091F4732296579AB44FCD17F0FC56A",
        girx="01144C7D79AE6956BC8EDB8E7C787C4521CB086FA64407F97894E5E6B2D79B04"
        "D1427E73CA4BAA240A34786859810C06B3C715A3A8CC3151F2BEE417996D19F3DDEA",
    ),
}


@pytest.mark.parametrize("group", sorted(RFC5903))
def test_rfc5903_examples(group: DhId) -> None:
    ex = RFC5903[group]
    g = dh(group)
    i = g.load_private(H(ex["i"]))
    r = g.load_private(H(ex["r"]))
    assert i.public_value == H(ex["gi"])
    assert r.public_value == H(ex["gr"])
    assert len(i.public_value) == g.public_len
    assert i.shared_secret(r.public_value) == H(ex["girx"])
    assert r.shared_secret(i.public_value) == H(ex["girx"])


@pytest.mark.parametrize("group", [g for g in DhId if g is not DhId.NONE])
def test_fresh_exchanges_agree(group: DhId) -> None:
    g = dh(group)
    a, b = g.generate(), g.generate()
    assert len(a.public_value) == g.public_len
    assert a.public_value != b.public_value
    z = a.shared_secret(b.public_value)
    assert z == b.shared_secret(a.public_value)
    if group <= DhId.MODP_8192:
        assert len(z) == g.public_len  # padded to the modulus length (RFC 7296 §2.14)


@pytest.mark.parametrize("group", [DhId.MODP_1024, DhId.MODP_2048])
def test_modp_pure_and_openssl_agree(group: DhId) -> None:
    g = dh(group)
    a = g._make(bytes.fromhex("1234567890abcdef" * 4), use_openssl=True)
    b = g._make(bytes.fromhex("fedcba0987654321" * 4), use_openssl=False)
    assert a.shared_secret(b.public_value) == b.shared_secret(a.public_value)


# RFC 6989 §2.1: for the MODP groups, 1 < y < p-1; anything else must be refused.
@pytest.mark.parametrize("group", [DhId.MODP_768, DhId.MODP_2048, DhId.MODP_8192])
def test_modp_rejects_degenerate_public_values(group: DhId) -> None:
    g = dh(group)
    a = g.generate()
    p = MODP_PRIMES[group]
    for bad in (0, 1, p - 1, p, p + 1, 2**(8 * g.public_len) - 1):  # fmt: skip
        with pytest.raises(RemoteProtocolError) as e:
            a.shared_secret(bad.to_bytes(g.public_len))
        assert e.value.notify == 7  # INVALID_SYNTAX
    with pytest.raises(RemoteProtocolError):
        a.shared_secret(b"\x02" * (g.public_len - 1))  # wrong length


# RFC 6989 §2.3: an ECP public value must be a point on the curve.
@pytest.mark.parametrize("group", [DhId.ECP_256, DhId.ECP_384, DhId.ECP_521])
def test_ecp_rejects_points_off_the_curve(group: DhId) -> None:
    g = dh(group)
    a, b = g.generate(), g.generate()
    pub = bytearray(b.public_value)
    pub[-1] ^= 1  # y changed: (x, y') is not on the curve
    with pytest.raises(RemoteProtocolError):
        a.shared_secret(bytes(pub))
    with pytest.raises(RemoteProtocolError):
        a.shared_secret(bytes(g.public_len))  # (0, 0)
    with pytest.raises(RemoteProtocolError):
        a.shared_secret(b"\x04" + b.public_value)  # the SEC1 prefix must not be sent
    with pytest.raises(RemoteProtocolError):
        a.shared_secret(b.public_value[:-1])


# RFC 8031 §2.3 / RFC 7748 §6: small-order points give an all-zero secret, which is refused.
@pytest.mark.parametrize("group", [DhId.CURVE25519, DhId.CURVE448])
def test_x_curves_reject_small_order_points(group: DhId) -> None:
    g = dh(group)
    a = g.generate()
    for bad in (bytes(g.public_len), b"\x01" + bytes(g.public_len - 1)):
        with pytest.raises(RemoteProtocolError):
            a.shared_secret(bad)
    with pytest.raises(RemoteProtocolError):
        a.shared_secret(a.public_value + b"\x00")


def test_unknown_and_none_groups() -> None:
    with pytest.raises(LocalProtocolError):
        dh(0)
    with pytest.raises(LocalProtocolError):
        dh(22)
    assert dh(31).name == "CURVE_25519"
    assert dh(14).name == "MODP_2048"
