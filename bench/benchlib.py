"""Shared helpers for the benchmarks in ``bench/``: timing loops and output.

Every benchmark compares against a named baseline measured in the same run, prints a table by
default and one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any


def rate(func: Callable[[], object], *, seconds: float = 1.0, batch: int = 100) -> float:
    """Calls of ``func`` per second, measured for at least ``seconds`` after a short warm-up."""
    for _ in range(batch):
        func()
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(batch):
            func()
        calls += batch
        now = time.perf_counter()
    return calls / (now - start)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    return p


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine()}


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:40s} {value:14,.2f}")
        else:
            print(f"{key:40s} {value}")
