"""A rich progress display for ``ipsec-interop run`` (registered on the xdist controller)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Counts outcomes as test reports arrive and shows the running case."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.counts: Counter[str] = Counter()
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            console=self.console,
            transient=True,
        )
        self._task: Any = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("cases", total=len(session.items), counts="")

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=location[2][:60])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._task is None:
            return
        done = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
        if not done:
            return
        self.counts[report.outcome] += 1
        text = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        self._bar.update(self._task, advance=1, counts=text)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._task is not None:
            self._bar.stop()
            self._task = None
