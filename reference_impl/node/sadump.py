"""IKE and Child SAs of a :class:`~reference_impl.node.host.Host` as JSON, keys included.

The shape is the contract with the harness's oracle and its Wireshark key tables, written up
in ``/work/notes/oracle-keys.md``. Octet strings are lower-case hex; ports are the real UDP
ports on the wire (the host's logical 500/4500 translated), so packets in a capture match.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from reference_impl.crypto import encr, integ
from reference_impl.sa import ChildSaParams, IpsecProtocol

if TYPE_CHECKING:
    from reference_impl.node.host import Host

SCHEMA_VERSION = 1


def _alg_encr(p: ChildSaParams, keys: bool) -> dict[str, Any] | None:
    if p.encr_id is None:
        return None
    a = encr(p.encr_id, p.encr_key_bits)
    out: dict[str, Any] = {
        "id": int(p.encr_id),
        "key_bits": p.encr_key_bits,
        "name": a.name,
        "aead": a.aead,
        "icv_len": a.icv_len if a.aead else None,
        "key_len": a.key_len,
    }
    if keys:
        out["key"] = p.encr_key.hex()
    return out


def _alg_integ(p: ChildSaParams, keys: bool) -> dict[str, Any] | None:
    if p.integ_id in (None, 0):
        return None
    assert p.integ_id is not None
    a = integ(p.integ_id)
    out: dict[str, Any] = {"id": int(p.integ_id), "name": a.name, "icv_len": a.icv_len}
    if keys:
        out["key"] = p.integ_key.hex()
    return out


def _sa(
    host: Host,
    p: ChildSaParams,
    sa: Any,
    inbound: bool,
    keys: bool,
    negotiated: ChildSaParams | None = None,
) -> dict[str, Any]:
    encap = None
    if negotiated is not None:
        p = dataclasses.replace(p, encap=negotiated.encap)  # the driver may send it raw
    if p.encap is not None:
        if inbound:  # (peer port, our port)
            encap = [host.ports.peer_real(p.src, p.encap[0]), host.ports.local_real(p.encap[1])]
        else:
            encap = [host.ports.local_real(p.encap[0]), host.ports.peer_real(p.dst, p.encap[1])]
    out: dict[str, Any] = {
        "spi": p.spi,
        "spi_hex": f"{p.spi:08x}",
        "direction": "in" if inbound else "out",
        "src": p.src,
        "dst": p.dst,
        "encap": encap,
        "encr": _alg_encr(p, keys),
        "integ": _alg_integ(p, keys),
        "esn": p.esn,
        "ts_src": [str(t) for t in p.ts_src],
        "ts_dst": [str(t) for t in p.ts_dst],
        "replay_window": p.replay_window,
        "packets": sa.packets if sa is not None else 0,
        "octets": sa.octets if sa is not None else 0,
    }
    if keys:
        out["encr_key"] = p.encr_key.hex()
        out["integ_key"] = p.integ_key.hex()
    if not inbound:
        # False: the peer sent ESP_TFC_PADDING_NOT_SUPPORTED (RFC 7296 §3.10.1, RFC 4303 §2.7)
        out["tfc_padding"] = p.tfc_padding
    if not inbound and sa is not None:
        out["seq"] = sa.seq
    if sa is not None:
        out["expired"] = sa.expired.value if sa.expired is not None else None
        out["drops"] = {v.name.lower(): n for v, n in sa.drops.items()}
    return out


def _initiators(host: Host) -> dict[int, bool]:
    """Inbound SPI -> whether we initiated the exchange that made the Child SA (its keys:
    "initiator" keys protect traffic from that exchange's initiator, RFC 7296 §2.17)."""
    out: dict[int, bool] = {}
    for sa in host.ike2.ike_sas():
        for c in sa.children:
            out[c.inbound_spi] = c.we_initiated
    for p1 in list(host.ike1._sas.values()):
        for ch in p1.children:
            out[ch.in_spi] = ch.initiator
    return out


def child_sas(host: Host, keys: bool = True) -> list[dict[str, Any]]:
    out = []
    initiators = _initiators(host)
    for child in host.child_sas():
        pair = child.pair
        inbound = child.inbound.params
        out.append(
            {
                "version": child.version,
                "ike_sa_id": pair.ike_sa_id.hex(),
                "name": pair.name,
                "protocol": "esp" if inbound.protocol == IpsecProtocol.ESP else "ah",
                "mode": str(inbound.mode),
                "esn": inbound.esn,
                "encap": pair.inbound.encap is not None,
                "encr": _alg_encr(inbound, False),
                "integ": _alg_integ(inbound, False),
                "acquire_id": pair.acquire_id,
                "initiator": initiators.get(inbound.spi, child.initiator),
                "installed_at": child.installed,
                "inbound": _sa(host, inbound, child.inbound, True, keys, pair.inbound),
                "outbound": _sa(
                    host, child.outbound.params, child.outbound, False, keys, pair.outbound
                ),
            }
        )
    return out


def _addr(host: Host, local: bool, a: tuple[str, int]) -> str:
    port = host.ports.local_real(a[1]) if local else host.ports.peer_real(a[0], a[1])
    return f"[{a[0]}]:{port}" if ":" in a[0] else f"{a[0]}:{port}"


def ike_sas(host: Host, keys: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sa in host.ike2.ike_sas():
        entry: dict[str, Any] = {
            "version": 2,
            "ike_sa_id": sa.ike_sa_id.hex(),
            "spi_i": sa.spi_i.hex(),
            "spi_r": sa.spi_r.hex(),
            "initiator": sa.initiator,
            "state": sa.state.name,
            "established": sa.established,
            "local": _addr(host, True, sa.local),
            "remote": _addr(host, False, sa.remote),
            "nat_local": sa.nat_local,
            "nat_remote": sa.nat_remote,
            "config": sa.config.name if sa.config is not None else None,
            "proposal": sa.selected.name() if sa.selected is not None else None,
            "children": [f"{c.inbound_spi:08x}" for c in sa.children],
        }
        sel = sa.selected
        if sel is not None:
            e = encr(sel.encr_id, sel.encr_bits)
            entry["encr"] = {"id": sel.encr_id, "key_bits": sel.encr_bits, "name": e.name}
            entry["integ"] = (
                {"id": sel.integ_id, "name": integ(sel.integ_id).name} if sel.integ_id else None
            )
            entry["prf"] = {"id": sel.prf_id} if sel.prf_id else None
            entry["dh"] = {"id": sel.dh_id} if sel.dh_id else None
        if keys and sa.keys is not None:
            k = sa.keys
            entry["keys"] = {
                "sk_d": k.sk_d.hex(),
                "sk_ai": k.sk_ai.hex(),
                "sk_ar": k.sk_ar.hex(),
                "sk_ei": k.sk_ei.hex(),
                "sk_er": k.sk_er.hex(),
                "sk_pi": k.sk_pi.hex(),
                "sk_pr": k.sk_pr.hex(),
            }
        out.append(entry)
    # IKEv1: the service keeps its ISAKMP SAs privately; read them without changing them.
    for ike_sa_id, p1 in list(host.ike1._sas.items()):
        entry = {
            "version": 1,
            "ike_sa_id": ike_sa_id.hex(),
            "spi_i": p1.icookie.hex(),
            "spi_r": p1.rcookie.hex(),
            "initiator": p1.initiator,
            "state": p1.state.value,
            "established": p1.established,
            "local": _addr(host, True, (p1.local_addr, p1.local_port)),
            "remote": _addr(host, False, p1.peer),
            "nat_local": p1.nat_local,
            "nat_remote": p1.nat_peer,
            "config": p1.conn.name,
            "proposal": p1.chosen.algorithms() if p1.chosen is not None else None,
            "aggressive": p1.aggressive,
            "children": [f"{c.in_spi:08x}" for c in p1.children],
        }
        if p1.chosen is not None:
            c = p1.chosen
            entry["encr"] = {
                "id": int(c.encr_id),
                "key_bits": c.key_bits,
                "name": encr(c.encr_id, c.key_bits).name,
                "ikev1_id": c.encryption,
            }
            entry["hash_id"] = c.hash
            entry["prf"] = {"id": int(c.prf_id)}
            entry["dh"] = {"id": c.group}
        if keys and p1.chosen is not None and p1.skeyid:
            k1 = {k: v.hex() for k, v in host.ike1.phase1_keys(ike_sa_id).items()}
            k1["enc_key"] = k1.get("encryption_key", "")
            entry["keys"] = k1
        out.append(entry)
    return out


def dump(host: Host, keys: bool = True) -> dict[str, Any]:
    """Every IKE SA with its Child SAs nested (``child_sas``), and every Child SA the driver
    holds in a flat list too (an IKEv2 Child SA moves to the new IKE SA on an IKE rekey; one
    whose IKE SA is gone is only in the flat list)."""
    ikes = ike_sas(host, keys)
    children = child_sas(host, keys)
    by_spi = {c["inbound"]["spi_hex"]: c for c in children}
    for entry in ikes:
        entry["child_sas"] = [by_spi[s] for s in entry["children"] if s in by_spi]
    return {"schema": SCHEMA_VERSION, "ike_sas": ikes, "child_sas": children}
