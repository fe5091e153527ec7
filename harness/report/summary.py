"""The console summary of a run: per suite and per requirement level (rich tables)."""

from __future__ import annotations

from rich.table import Table

from harness.report.baseline import Comparison
from harness.report.model import RunResults, Verdict, level_group

_COLUMNS = (
    (Verdict.PASS, "pass", "green"),
    (Verdict.FAIL, "fail", "red"),
    (Verdict.WARNING, "warning", "yellow"),
    (Verdict.NOT_APPLICABLE, "n/a", "dim"),
    (Verdict.RECORDED, "recorded", "blue"),
    (Verdict.ERROR, "error", "magenta"),
)


def _table(title: str, first: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for _, name, style in _COLUMNS:
        table.add_column(name, justify="right", style=style)
    return table


def _row(counts: dict[Verdict, int]) -> list[str]:
    return [str(counts[v]) if counts[v] else "·" for v, _, _ in _COLUMNS]


def summary_tables(run: RunResults) -> list[Table]:
    """Per suite, and per peer and level: pass / fail / warning / n/a / recorded / error."""
    by_suite = _table("Results per suite", "suite")
    for suite in sorted({m.suite for m in run.cases.values()}):
        results = [r for r in run.results if run.cases[r.case].suite == suite]
        by_suite.add_row(suite, *_row(run.counts(results)))
    by_suite.add_row("[b]all[/b]", *_row(run.counts()), end_section=True)
    by_level = _table("Results per peer and requirement level", "peer / level")
    for peer in run.peers_under_test():
        for group in ("MUST", "SHOULD", "MAY"):
            results = [
                r for r in run.results if r.peer == peer.name and level_group(r.level) == group
            ]
            if results:
                by_level.add_row(f"{peer.name} {group}", *_row(run.counts(results)))
    return [by_suite, by_level]


def deviations_table(comparison: Comparison) -> Table:
    table = Table(title="Deviations from the baseline", title_justify="left")
    for col in ("kind", "case", "peer", "role", "expected", "got", "reason"):
        table.add_column(col)
    for d in comparison.deviations:
        style = "red" if d.sets_exit_code else None
        table.add_row(
            d.kind.value,
            d.case,
            d.peer,
            d.role,
            d.expected.value if d.expected else "—",
            d.actual.value if d.actual else "—",
            d.reason,
            style=style,
        )
    return table
