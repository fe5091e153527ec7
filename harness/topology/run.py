"""Run labels: every resource a harness run creates carries its run id, so a killed run's
leftovers can be told from a live run's and swept.

A run is alive while its process holds an exclusive ``flock`` on ``RUNS_DIR/<id>.lock``; the
kernel drops the lock when the process dies, however it dies (SIGKILL included). Sweeping looks
at everything named with :data:`LABEL_PREFIX` (network namespaces, Docker containers and
networks, temporary directories, processes whose environment has :data:`RUN_ENV`) and removes
what belongs to a run that is no longer alive. Live runs of other users of the machine (other
pytest workers, other engineers) are never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LABEL_PREFIX = "ipsec-interop-"
"""Prefix of every named resource: ``ipsec-interop-<run id>-...``."""
NFT_PREFIX = "ipsec_interop_"
"""Prefix of nft table names (nft identifiers take no dashes): ``ipsec_interop_<run id>``."""
RUN_ENV = "IPSEC_INTEROP_RUN"
"""Environment variable set to the run id in every process a topology starts."""
DOCKER_LABEL = "ipsec-interop.run"
"""Docker label (key) carrying the run id on containers and networks."""
RUNS_DIR = Path(os.environ.get("IPSEC_INTEROP_RUNS", tempfile.gettempdir())) / "ipsec-interop-runs"

_RUN_ID = re.compile(r"^[0-9a-f]{8}$")
_LABELLED = re.compile(r"^ipsec-interop-([0-9a-f]{8})(?:-|$)")
_PROBE = re.compile(r"^ipsec-interop-probe-(\d+)$")


def run_id_of(name: str) -> str | None:
    """The run id in a labelled resource name, or ``None`` if it carries no run label."""
    m = _LABELLED.match(name)
    return m.group(1) if m else None


class Run:
    """One harness run: an id, a lock saying it is alive, and the label for its resources."""

    def __init__(self) -> None:
        RUNS_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            RUNS_DIR.chmod(0o1777)  # shared by every user's runs, like /tmp
        # Lock a private file, then rename it into place: a sweeper never sees the lock file
        # unlocked while this run is alive.
        while True:
            self.id = secrets.token_hex(4)
            self.lock_path = RUNS_DIR / f"{self.id}.lock"
            if self.lock_path.exists():
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{self.id}.", dir=RUNS_DIR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                os.rename(tmp, self.lock_path)
            except FileNotFoundError:  # a sweeper took it in the instant before our lock
                os.close(fd)
                continue
            break
        self._fd: int | None = fd
        self.label = f"{LABEL_PREFIX}{self.id}"
        self.nft_table = f"{NFT_PREFIX}{self.id}"

    def mkdtemp(self, what: str) -> Path:
        """A labelled temporary directory (removed by its owner, or swept if the run dies)."""
        return Path(tempfile.mkdtemp(prefix=f"{self.label}-{what}-"))

    @property
    def env(self) -> dict[str, str]:
        return {RUN_ENV: self.id}

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"Run({self.id})"


_current: Run | None = None
_current_lock = threading.Lock()


def current_run() -> Run:
    """The run of this process (created on first use; its lock is released at exit)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Run()
            atexit.register(_current.close)
        return _current


def is_alive(run_id: str) -> bool:
    """Whether the run with this id still holds its lock."""
    if _current is not None and run_id == _current.id:
        return True
    if not _RUN_ID.match(run_id):
        return False
    try:
        fd = os.open(RUNS_DIR / f"{run_id}.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def is_stale_name(name: str) -> bool:
    """Whether a labelled resource name belongs to a dead run (or a dead doctor probe)."""
    run_id = run_id_of(name)
    if run_id is not None:
        return not is_alive(run_id)
    m = _PROBE.match(name)
    if m:
        return not _pid_alive(int(m.group(1)))
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SweepReport:
    """What a sweep removed (``kind: names``) and what it could not remove."""

    removed: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        self.removed.setdefault(kind, []).append(name)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def to_json(self) -> dict[str, object]:
        return {"removed": self.removed, "errors": self.errors}


def labelled_processes(run_ids: Callable[[str], bool] | None = None) -> Iterator[tuple[int, str]]:
    """``(pid, run id)`` of every process whose environment carries :data:`RUN_ENV`.

    ``run_ids`` filters by run id. Processes we may not read are skipped.
    """
    marker = f"{RUN_ENV}=".encode()
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(marker):
                rid = var[len(marker) :].decode(errors="replace")
                if run_ids is None or run_ids(rid):
                    yield int(entry.name), rid
                break


def sweep_processes(report: SweepReport) -> None:
    """SIGKILL every labelled process of a dead run."""
    for pid, rid in labelled_processes(lambda rid: not is_alive(rid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except OSError as exc:
            report.errors.append(f"process {pid} (run {rid}): {exc.strerror}")
            continue
        report.add("processes", f"{pid} (run {rid})")


def sweep_tempdirs(report: SweepReport) -> None:
    """Remove the labelled temporary directories and lock files of dead runs."""
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{LABEL_PREFIX}*"):
        rid = run_id_of(path.name)
        if rid is None or is_alive(rid):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            report.errors.append(f"{path}: {exc.strerror}")
            continue
        report.add("directories", str(path))
    if RUNS_DIR.is_dir():
        for lock in RUNS_DIR.glob("*.lock"):
            rid = lock.stem
            if not is_alive(rid):
                with contextlib.suppress(OSError):
                    lock.unlink()
        for leftover in RUNS_DIR.glob(".*.*"):
            # a half-made lock file of a run killed while starting
            with contextlib.suppress(OSError):
                fd = os.open(leftover, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    leftover.unlink()
                except OSError:
                    pass
                finally:
                    os.close(fd)
