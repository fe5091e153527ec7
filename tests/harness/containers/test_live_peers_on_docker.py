"""The live peer tests of the topology issue, run again on the docker backend.

They run on ``netns`` in the normal suite; here the same test file runs in a child pytest with
``IPSEC_INTEROP_TOPOLOGY=docker`` (its own switch), so every case of it (strongSwan <-> strongSwan
IKEv2/IKEv1/certificates/rekey/IPv6, strongSwan <-> libreswan IKE only) also passes with the
peers in containers, captured and keyed the same way. One test per file: a renamed case needs
no change here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.needs_docker,
    pytest.mark.needs_root,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
]

LIVE_FILES = ["tests/harness/peers/test_strongswan_live.py"]


def _log_tails(folder: Path, lines: int = 25) -> str:
    """The ends of the daemons' logs the child kept, for a failure message."""
    parts = []
    for log in sorted(folder.rglob("*.log")):
        if log.name.startswith(("charon", "pluto", "node")) and log.stat().st_size:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.relative_to(folder)}\n" + "\n".join(text))
    return "\n".join(parts[-6:])


@pytest.mark.parametrize("path", LIVE_FILES)
def test_live_peer_file_passes_on_docker(
    path: str, built_images: dict[str, str], tmp_path: Path
) -> None:
    if not (ROOT / path).is_file():
        pytest.skip(f"{path} is not in this tree")
    # Rebuild (cached) an image the working tree made stale meanwhile (people editing it).
    env = dict(os.environ, IPSEC_INTEROP_TOPOLOGY="docker", IPSEC_INTEROP_DOCKER_BUILD="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs"),
            *("--basetemp", str(tmp_path / "live"), path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, (
        f"{path} on docker:\n{tail}\n{proc.stderr[-2000:]}\n{_log_tails(tmp_path / 'live')}"
    )
    assert " passed" in tail
