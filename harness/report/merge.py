"""Merging runs from parallel CI jobs (one per peer, say) into one run.

Results are keyed by case x peer x role. When two runs hold the same key, ``on_conflict``
decides: ``worst`` (default) keeps the worse verdict (error > fail > warning > recorded >
pass > n/a), so a failure in any job shows; ``latest`` keeps the one that started last (a
retried job); ``error`` refuses to merge. Every conflict is listed in ``run.notes``.

Evidence files are copied into the output directory; their paths stay relative to it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from harness import __version__
from harness.report.model import (
    RESULTS_FILE,
    CaseMeta,
    CaseResult,
    HostInfo,
    PeerInfo,
    RunInfo,
    RunResults,
    SourceRun,
)

OnConflict = Literal["worst", "latest", "error"]


class MergeError(ValueError):
    """Runs that cannot be merged."""


def _source(run: RunResults, file: str | None) -> list[SourceRun]:
    if run.run.sources:  # a merged run merged again: keep its sources
        return list(run.run.sources)
    info = run.run
    return [
        SourceRun(
            id=info.id,
            harness_version=info.harness_version,
            topology=info.topology,
            host=info.host,
            started=info.started,
            finished=info.finished,
            job=info.job,
            file=file,
        )
    ]


def merge(
    runs: Sequence[RunResults],
    *,
    on_conflict: OnConflict = "worst",
    files: Sequence[str | None] | None = None,
) -> tuple[RunResults, list[tuple[int, CaseResult]]]:
    """Merge ``runs``; returns the merged run and the kept results with their run's index.

    The index tells where each kept result's evidence lives (see :func:`merge_files`).
    """
    if not runs:
        raise MergeError("nothing to merge")
    files = list(files) if files is not None else [None] * len(runs)
    notes: list[str] = []
    cases: dict[str, CaseMeta] = {}
    peers: dict[str, PeerInfo] = {}
    kept: dict[tuple[str, str, str], tuple[int, CaseResult]] = {}
    for i, run in enumerate(runs):
        label = files[i] or run.run.id
        for note in run.run.notes:
            notes.append(f"{label}: {note}")
        for cid, meta in run.cases.items():
            old_meta = cases.get(cid)
            if old_meta is not None and old_meta != meta:
                notes.append(f"{cid}: case metadata differs between runs; {label}'s is kept")
            cases[cid] = meta
        for p in run.run.peers:
            old_peer = peers.get(p.name)
            if old_peer is None:
                peers[p.name] = p
            elif old_peer.version != p.version or old_peer.implementation != p.implementation:
                notes.append(
                    f"peer {p.name}: {old_peer.implementation} {old_peer.version} and "
                    f"{p.implementation} {p.version} in different runs"
                )
                if p.under_test and not old_peer.under_test:
                    peers[p.name] = p
            elif p.under_test and not old_peer.under_test:
                peers[p.name] = p
        for r in run.results:
            prev = kept.get(r.key)
            if prev is None:
                kept[r.key] = (i, r)
                continue
            j, other = prev
            where = f"{'/'.join(r.key)}: {files[j] or runs[j].run.id} says {other.verdict.value}, "
            where += f"{label} says {r.verdict.value}"
            if on_conflict == "error" and other.verdict != r.verdict:
                raise MergeError(f"conflict: {where}")
            if on_conflict == "latest":
                keep_new = r.start >= other.start
            else:
                keep_new = r.verdict.rank > other.verdict.rank
            chosen = r if keep_new else other
            if other.verdict != r.verdict:
                notes.append(f"conflict {where}; kept {chosen.verdict.value} ({on_conflict})")
            if keep_new:
                kept[r.key] = (i, r)
    versions = sorted({r.run.harness_version for r in runs})
    if len(versions) > 1:
        notes.append(f"runs from different harness versions: {', '.join(versions)}")
    topologies = sorted({r.run.topology for r in runs})
    sources = [s for i, r in enumerate(runs) for s in _source(r, files[i])]
    started = min(r.run.started for r in runs)
    finished_all = [r.run.finished for r in runs if r.run.finished is not None]
    info = RunInfo(
        id=RunInfo.new_id(started) + "-merged",
        harness_version=__version__,
        started=started,
        finished=max(finished_all) if finished_all else None,
        topology=topologies[0] if len(topologies) == 1 else "+".join(topologies),
        host=HostInfo.current(),
        peers=list(peers.values()),
        command="ipsec-interop report merge",
        strict=any(r.run.strict for r in runs),
        export_keys=all(r.run.export_keys for r in runs),
        job=None,
        sources=sources,
        notes=notes,
    )
    results = [r for _, r in kept.values()]
    merged = RunResults(run=info, cases=dict(sorted(cases.items())), results=results)
    merged.results = merged.sorted_results()
    return merged, list(kept.values())


def merge_files(
    paths: Sequence[Path], out_dir: Path, *, on_conflict: OnConflict = "worst"
) -> RunResults:
    """Merge results files into ``out_dir``: results.json plus the kept results' evidence."""
    runs = [RunResults.load(p) for p in paths]
    merged, kept = merge(runs, on_conflict=on_conflict, files=[str(p) for p in paths])
    out_dir.mkdir(parents=True, exist_ok=True)
    out_abs = out_dir.resolve()
    for i, result in kept:
        src_dir = paths[i].parent.resolve()
        for ev in result.evidence:
            if ev.path is None:
                continue
            src = src_dir / ev.path
            dest = out_abs / ev.path
            if not src.is_file() or src.resolve() == dest.resolve():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    merged.write(out_dir / RESULTS_FILE)
    return merged
