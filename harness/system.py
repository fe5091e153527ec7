"""The one place the harness runs subprocesses and looks up programs.

Every probe, topology and peer adapter goes through :func:`run` and :func:`which`, so tests
can fake a missing program or a failing command in one place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# sbin directories are not on a normal user's PATH, but ip, nft and charon live there.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


@dataclass(frozen=True)
class Completed:
    """The result of a finished command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_line(self) -> str:
        """The first non-empty line of stdout, else of stderr (for messages)."""
        for text in (self.stdout, self.stderr):
            for line in text.splitlines():
                if line.strip():
                    return line.strip()
        return ""


def which(program: str) -> str | None:
    """Where ``program`` is, looking in the sbin directories too."""
    found = shutil.which(program)
    if found:
        return found
    path = os.pathsep.join(_EXTRA_PATH)
    return shutil.which(program, path=path)


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> Completed:
    """Run ``argv`` to completion and capture its output.

    A missing program or a timeout is reported as a failed :class:`Completed` (returncode 127
    or 124, as a shell would), never as an exception, unless ``check`` is set.
    """
    args = tuple(argv)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=full_env,
            check=False,
        )
    except FileNotFoundError:
        result = Completed(args, 127, "", f"{args[0]}: not found")
    except subprocess.TimeoutExpired:
        result = Completed(args, 124, "", f"{args[0]}: timed out after {timeout:g} s")
    else:
        result = Completed(args, proc.returncode, proc.stdout, proc.stderr)
    if check and not result.ok:
        raise CommandError(result)
    return result


def spawn(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start a long-running program (a daemon, tcpdump) with stdout and stderr to ``log_path``.

    It runs in its own session, so a Ctrl-C in the terminal reaches the harness only and the
    harness stops its children in order. With ``die_with_parent`` the kernel sends it SIGKILL
    if the harness dies (``PR_SET_PDEATHSIG``, kept across exec). The caller owns the handle
    and must stop it.
    """
    full_env = dict(os.environ)
    if env is not None:
        full_env.update(env)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            tuple(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def _die_with_parent() -> None:
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


class CommandError(RuntimeError):
    """A command that had to succeed failed."""

    def __init__(self, result: Completed) -> None:
        super().__init__(
            f"command failed ({result.returncode}): {' '.join(result.argv)}: {result.first_line()}"
        )
        self.result = result
