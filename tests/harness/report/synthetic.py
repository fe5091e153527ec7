"""Synthetic runs built through the recording API, for the report tests and screenshots.

The cases and their metadata are the catalogue's (IDs, RFC sections, levels, roles); the
verdicts, reasons and evidence are invented to cover every verdict and evidence kind.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from harness.cases import CaseInfo, Level, Role
from harness.report import EvidenceKind, PeerInfo, Recorder, RunResults, new_run_info

PSK = "correct-horse-battery-staple-0042"

PEM_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    "-----END PRIVATE KEY-----\n"
)


def info(case_id: str, suite: str, rfc: str, level: str, roles: str, title: str) -> CaseInfo:
    return CaseInfo(
        id=case_id,
        suite=suite,
        rfc=rfc,
        level=Level(level),
        roles=tuple(Role(r) for r in roles),
        title=title,
    )


CASES = [
    info(
        "IKEV2-NEG-001",
        "ikev2-negotiation",
        "7296 §2.7, §3.3.6",
        "MUST",
        "R",
        "Responder selects exactly one proposal and one transform of each type",
    ),
    info(
        "IKEV2-NEG-003",
        "ikev2-negotiation",
        "7296 §2.7, §2.21.1",
        "MUST",
        "R",
        "No acceptable proposal: NO_PROPOSAL_CHOSEN",
    ),
    info(
        "IKEV2-NEG-009",
        "ikev2-negotiation",
        "7296 §1.2, §3.3.6",
        "SHOULD",
        "I",
        "Initiator retries with the KE group named in INVALID_KE_PAYLOAD",
    ),
    info(
        "IKEV2-NEG-017",
        "ikev2-negotiation",
        "7296 §3.1, §2.6",
        "MUST",
        "IR",
        "Responder SPI is zero in the first IKE_SA_INIT message",
    ),
    info(
        "IKEV2-AUTH-001",
        "ikev2-auth",
        "7296 §2.15",
        "MUST",
        "IR",
        'PSK AUTH = prf(prf(PSK, "Key Pad for IKEv2"), SignedOctets)',
    ),
    info(
        "IKEV2-AUTH-003",
        "ikev2-auth",
        "7296 §2.21.2",
        "SHOULD",
        "R",
        "Failed authentication gives AUTHENTICATION_FAILED",
    ),
    info(
        "ESP-001",
        "esp",
        "4303 §2.2, §3.3.3",
        "MUST",
        "IR",
        "First packet on a new SA has sequence number 1, then +1 per packet",
    ),
    info(
        "ESP-002",
        "esp",
        "4303 §3.4.3",
        "MUST",
        "IR",
        "Anti-replay: a duplicate sequence number inside the window is discarded",
    ),
    info(
        "ESP-005",
        "esp",
        "4303 §3.4.3",
        "MUST",
        "R",
        "The window is updated only after successful integrity verification",
    ),
    info("ESP-011", "esp", "4303 §2.7", "MAY", "I", "Dummy packets (next header 59)"),
    info(
        "AH-001",
        "ah",
        "4302 §3.3.3.1.1.1",
        "MUST",
        "IR",
        "IPv4 mutable fields are zeroed for the ICV",
    ),
    info(
        "FB-03",
        "fallback",
        "4301 §4.4.1; 7296 §2.23",
        "MUST",
        "I",
        "UDP 500 closed by drop: fallback to clear after the configured time",
    ),
    info(
        "NATT-009",
        "nat-t",
        "7296 §2.23",
        "MAY",
        "I",
        "Initiator falls back to 4500 when 500 gets no answer",
    ),
]
BY_ID = {c.id: c for c in CASES}

# verdict plan: (case, peer, role) -> (action, reason)
PLAN: dict[tuple[str, str, str], tuple[str, str]] = {
    ("IKEV2-NEG-009", "strongswan", "I"): ("not_met", "retry used group 14, not 31"),
    ("IKEV2-AUTH-003", "strongswan", "R"): ("pass", ""),
    ("ESP-005", "strongswan", "R"): (
        "fail",
        "seq 500 with a bad ICV moved the replay window: later seq 6 was dropped",
    ),
    ("AH-001", "strongswan", "I"): ("na", "kernel-libipsec has no AH"),
    ("AH-001", "strongswan", "R"): ("na", "kernel-libipsec has no AH"),
    ("FB-03", "strongswan", "I"): ("recorded", "no fallback: blocked for 165 s"),
    ("NATT-009", "strongswan", "I"): ("not_met", "no retry on 4500 (unsupported)"),
    ("ESP-011", "reference", "I"): ("error", "peer did not start: charon exited with 1"),
}


def build_run(
    out_dir: Path,
    *,
    peers: tuple[str, ...] = ("reference", "strongswan"),
    export_keys: bool = False,
    job: str | None = None,
    plan: dict[tuple[str, str, str], tuple[str, str]] | None = None,
    cases: list[CaseInfo] | None = None,
) -> RunResults:
    """Record a run into ``out_dir`` through the public API and return its results."""
    plan = PLAN if plan is None else plan
    peer_infos = []
    for p in peers:
        if p == "strongswan":
            peer_infos.append(PeerInfo(name=p, implementation="strongSwan", version="5.9.8"))
        elif p == "libreswan":
            peer_infos.append(PeerInfo(name=p, implementation="libreswan", version="4.10"))
        else:
            peer_infos.append(PeerInfo(name=p, implementation="reference", version="0.1.0"))
    run = new_run_info(
        topology="netns",
        peers=peer_infos,
        export_keys=export_keys,
        command="ipsec-interop run --peer " + " --peer ".join(peers),
        job=job,
        started=datetime(2025, 6, 2, 9, 30, tzinfo=UTC),
    )
    rec = Recorder.begin(out_dir, run, secrets=[PSK])
    for case in cases or CASES:
        for peer in peers:
            for role in case.roles:
                action, reason = plan.get((case.id, peer, role.value), ("pass", ""))
                rerun = f"ipsec-interop run --case {case.id} --peer {peer} --role {role.value}"
                with rec.case(
                    case,
                    peer,
                    role,
                    parameters={"proposal": "aes128-sha256-modp2048"},
                    rerun=rerun,
                ) as cr:
                    with cr.step("IKE_SA_INIT"):
                        pass
                    with cr.step("IKE_AUTH"):
                        pass
                    cr.attach_bytes(
                        "capture",
                        b"\xd4\xc3\xb2\xa1" + bytes(20),
                        EvidenceKind.PCAP,
                        filename="capture.pcap",
                    )
                    cr.attach_text(
                        "charon log",
                        f"09:30:01 [IKE] authentication of 'peer' with PSK {PSK} ok\n"
                        f"09:30:01 [CFG] loaded key\n{PEM_KEY}"
                        f"09:30:02 [IKE] {reason or 'CHILD_SA established'}\n",
                        EvidenceKind.LOG,
                        filename=f"{peer}.log",
                    )
                    cr.attach_text(
                        "ESP SAs (ip xfrm state)",
                        "src 198.18.0.1 dst 198.18.0.2\n\tproto esp spi 0xc1a2b3c4 reqid 1 "
                        "mode tunnel\n\tenc cbc(aes) 0x00112233445566778899aabbccddeeff\n",
                        EvidenceKind.SA_DUMP,
                        filename="xfrm-state.txt",
                    )
                    cr.attach_text(
                        "Wireshark ESP SA table",
                        '"IPv4","198.18.0.1","198.18.0.2",'
                        '"0xc1a2b3c4","AES-CBC [RFC3602]","0x0011","HMAC-SHA-256-128","0x22"\n',
                        EvidenceKind.KEYS,
                        filename="esp_sa",
                    )
                    if action in ("fail", "not_met"):
                        cr.attach_text(
                            "oracle findings",
                            f"packet 7: {reason}\n",
                            EvidenceKind.ORACLE,
                            filename="oracle.txt",
                        )
                    if action == "pass":
                        cr.passed(reason)
                    elif action == "fail":
                        cr.failed(reason)
                    elif action == "not_met":
                        cr.not_met(reason)
                    elif action == "na":
                        cr.not_applicable(reason)
                    elif action == "recorded":
                        cr.recorded(reason)
                        cr.known_behaviour("strongswan-no-fallback")
                    elif action == "error":
                        cr.error(reason)
    return rec.finish(finished=datetime(2025, 6, 2, 9, 31, 12, tzinfo=UTC))
