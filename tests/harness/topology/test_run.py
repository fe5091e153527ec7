"""Run labels: a live run is never swept; a killed run's leftovers are, by the next sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.topology import sweep
from harness.topology.base import wait_until
from harness.topology.run import (
    RUNS_DIR,
    current_run,
    is_alive,
    is_stale_name,
    labelled_processes,
    run_id_of,
)
from tests.harness.topology.leftovers import kept_alive

# A run in another process: makes a labelled temp dir and a labelled long-lived process that
# does not die with it (as if it had escaped), prints both, then waits to be killed.
_CHILD = """
import os, sys, time
from harness import system
from harness.topology.run import current_run
run = current_run()
d = run.mkdtemp("test")
p = system.spawn(["sleep", "600"], log_path=d / "sleep.log", env=run.env, die_with_parent=False)
print(run.id, d, p.pid, flush=True)
time.sleep(600)
"""


def _start_child() -> tuple[subprocess.Popen[str], str, Path, int]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id, tmp, pid = proc.stdout.readline().split()
    return proc, run_id, Path(tmp), int(pid)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of a reaped-late parent counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_names_carry_the_run_id() -> None:
    run = current_run()
    assert run.label == f"ipsec-interop-{run.id}"
    assert run_id_of(f"{run.label}-a") == run.id
    assert run_id_of("ipsec-interop-probe-12") is None
    assert run_id_of("something-else") is None
    assert is_alive(run.id)
    assert not is_stale_name(f"{run.label}-a")
    assert not is_stale_name("unrelated-namespace")
    # a doctor probe namespace is stale when its pid is gone
    assert not is_stale_name(f"ipsec-interop-probe-{os.getpid()}")


def test_a_killed_runs_leftovers_are_swept_and_a_live_run_is_spared() -> None:
    mine = current_run().mkdtemp("spared")
    proc, run_id, tmp, pid = _start_child()
    try:
        assert is_alive(run_id)
        assert tmp.is_dir()
        assert (RUNS_DIR / f"{run_id}.lock").exists()
        assert (pid, run_id) in list(labelled_processes(lambda rid: rid == run_id))
        # while the child run lives, a sweep leaves everything of it alone
        sweep()
        assert tmp.is_dir() and not _gone(pid)
        with kept_alive(run_id) as ours:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert ours.wait(5)
            assert tmp.is_dir() and not _gone(pid)  # SIGKILL left them behind
        assert not is_alive(run_id)
        sweep()  # (the other worker's sweep may get there first: check the effect)
        assert not tmp.exists()
        wait_until(lambda: _gone(pid), 5, "the escaped process to be killed")
        assert not (RUNS_DIR / f"{run_id}.lock").exists()
        assert mine.is_dir(), "the live run's directory was swept"
    finally:
        proc.kill()
        proc.wait(10)
        mine.rmdir()
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_spawned_processes_die_with_the_harness(tmp_path: Path) -> None:
    code = (
        "import time; from harness import system;"
        f"p = system.spawn(['sleep', '600'], log_path='{tmp_path}/s.log');"
        "print(p.pid, flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert not _gone(pid)
    proc.kill()
    proc.wait(10)
    wait_until(lambda: _gone(pid), 5, "the child to die with its parent (PR_SET_PDEATHSIG)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_tear_a_topology_down(sig: int) -> None:
    code = (
        "import signal, time\n"
        # a shell's background job starts with SIGINT ignored; Ctrl-C is what we test
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from harness.topology import open_topology, TopologySpec\n"
        "with open_topology('local', TopologySpec.pair()) as topo:\n"
        "    p = topo.node('a').spawn('sleep', ['sleep', '600'])\n"
        "    print(topo.workdir, p.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    workdir, pid = proc.stdout.readline().split()
    assert Path(workdir).is_dir()
    proc.send_signal(sig)
    proc.wait(15)
    assert proc.returncode != 0
    assert not Path(workdir).exists(), "the scratch directory outlived the run"
    assert _gone(int(pid)), "the node's process outlived the run"
