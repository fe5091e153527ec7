"""``python -m harness.probes PCAP [key sources] [--out DIR]``: run the wire oracle by hand.

Key sources (any number, merged): ``--charon-log FILE`` (strongSwan at ike=4, chd=4),
``--node-dump FILE`` (a reference node's ``list_sas`` answer with keys, JSON),
``--keys FILE`` (a ``keys.json`` written by the oracle), ``--wireshark FILE`` (Wireshark 4.0
``uat:`` lines). Prints the one-line summary and each problem; ``--out DIR`` writes
``oracle.json``, ``keys.json`` and ``wireshark-keys.txt`` (open the capture decrypted with
``WIRESHARK_CONFIG_DIR=DIR/wireshark wireshark PCAP``). Exit status 0 when the oracle is
satisfied, 1 when it reports a problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.probes.keys import KeySet, parse_wireshark, wireshark_table
from harness.probes.oracle import check_pcap, save_evidence


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.probes", description=__doc__.split("\n")[0]
    )
    ap.add_argument("pcap", type=Path)
    ap.add_argument("--charon-log", type=Path, action="append", default=[])
    ap.add_argument("--node-dump", type=Path, action="append", default=[])
    ap.add_argument("--keys", type=Path, action="append", default=[])
    ap.add_argument("--wireshark", type=Path, action="append", default=[])
    ap.add_argument("--ike-port", type=int, action="append", default=[500])
    ap.add_argument("--natt-port", type=int, action="append", default=[4500])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = ap.parse_args(argv)
    keys = KeySet()
    for f in args.charon_log:
        keys = keys.merge(
            KeySet.from_charon_log(f.read_text(errors="replace"), source=f"strongswan:{f.name}")
        )
    for f in args.node_dump:
        keys = keys.merge(
            KeySet.from_node_sas(json.loads(f.read_text()), source=f"reference:{f.name}")
        )
    for f in args.keys:
        keys = keys.merge(KeySet.load(f))
    for f in args.wireshark:
        keys = keys.merge(parse_wireshark(f.read_text()))
    report = check_pcap(args.pcap, keys, ike_ports=args.ike_port, natt_ports=args.natt_port)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.summary())
        for m in report.ike_messages:
            print("  ", m.summary())
        for s in report.ipsec_sas:
            print("  ", s.summary())
        for p in report.problems:
            print("   problem:", p.to_json())
        for s in report.ipsec_sas:
            for p in s.problems:
                print(f"   {s.spi} problem:", p.to_json())
    if args.out is not None and report.resolved_keys is not None:
        save_evidence(args.out, report, report.resolved_keys)
        wireshark_table(report.resolved_keys).write_profile(args.out / "wireshark")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
