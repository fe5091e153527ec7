"""What a run left behind: namespaces, processes, nft tables and temp dirs with its label."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from harness import system
from harness.topology.run import RUNS_DIR, Run, current_run, labelled_processes


def leftovers(run: Run | None = None) -> dict[str, list[str]]:
    """Everything still carrying ``run``'s label (this process's run by default)."""
    run = run or current_run()
    found: dict[str, list[str]] = {}
    procs = [f"{pid}" for pid, _ in labelled_processes(lambda rid: rid == run.id)]
    if procs:
        found["processes"] = procs
    dirs = [str(p) for p in Path(tempfile.gettempdir()).glob(f"{run.label}-*")]
    if dirs:
        found["directories"] = dirs
    if os.geteuid() == 0 and system.which("ip"):
        ns = system.run(["ip", "netns", "list"]).stdout
        names = [line.split()[0] for line in ns.splitlines() if line.startswith(run.label)]
        if names:
            found["namespaces"] = names
    if os.geteuid() == 0 and system.which("nft"):
        tables = system.run(["nft", "list", "tables"]).stdout
        mine = [t for t in tables.splitlines() if run.nft_table in t]
        if mine:
            found["nft tables"] = mine
    return found


@contextlib.contextmanager
def kept_alive(run_id: str) -> Iterator[threading.Event]:
    """Keep another process's run looking alive after it dies, until the block ends.

    A thread waits for the run's lock and takes it the moment its owner dies, so concurrent
    sweeps (the other pytest worker's, another engineer's) leave the dead run's leftovers for
    the test to see. The event is set once the lock is ours.
    """
    fd = os.open(RUNS_DIR / f"{run_id}.lock", os.O_RDONLY)
    taken = threading.Event()

    def take() -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        taken.set()

    threading.Thread(target=take, daemon=True).start()
    try:
        yield taken
    finally:
        if taken.is_set():
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
