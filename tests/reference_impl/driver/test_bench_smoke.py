"""The throughput and memory benchmarks run (tiny durations): not a timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def test_esp_throughput_runs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "esp_throughput.py"),
            "--json",
            "--quick",
            "--passes",
            "2",
            "--sas",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    for key in (
        "protect_vs_scapy",
        "unprotect_vs_scapy",
        "protect_vs_aead",
        "unprotect_vs_aead",
        "skeleton_protect_vs_aead",
        "skeleton_unprotect_vs_aead",
        "protect_vs_skeleton",
        "unprotect_vs_skeleton",
    ):
        assert result[key] > 0, key
    row = result["results"][0]
    assert (row["suite"], row["size"], row["mode"]) == ("aes-gcm-128", 1400, "tunnel")
    assert row["protect_pps"] > 0 and row["unprotect_MBps"] > 0
    assert result["sad_memory_sas"] == 500 and result["sad_memory_mb"] > 0
