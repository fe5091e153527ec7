"""The HTML matrix, checked as a document (the browser test is test_browser.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from harness.report import RunResults
from harness.report.html import render, summaries


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))
        if a.get("src"):
            self.srcs.append(str(a["src"]))
        if tag == "link":
            self.links.append(a)


def _parse(run_dir: Path) -> tuple[str, _Collector]:
    html = (run_dir / "index.html").read_text()
    c = _Collector()
    c.feed(html)
    return html, c


def test_matrix_is_self_contained_and_every_link_resolves(run_dir: Path, run: RunResults) -> None:
    html, c = _parse(run_dir)
    assert not c.srcs and not c.links  # no external script, style sheet or font
    for href in c.hrefs:
        if href.startswith("#"):
            assert href[1:] in c.ids, href
        elif href.startswith("https://www.rfc-editor.org/rfc/rfc"):
            pass
        else:
            assert (run_dir / href).is_file(), href  # evidence, relative to the report
    # one cell link and one detail panel per result
    for r in run.results:
        assert f'href="#{r.anchor}"' in html
        assert r.anchor in c.ids


def test_rows_grouped_by_suite_then_section(run_dir: Path, run: RunResults) -> None:
    html, _ = _parse(run_dir)
    suites = re.findall(r'<tbody class="suite" data-suite="([^"]+)"', html)
    assert suites == sorted({m.suite for m in run.cases.values()})
    esp_rows = re.findall(r'id="case-(ESP-\d+)"[^>]*data-section="([^"]+)"', html)
    assert [cid for cid, _ in esp_rows] == ["ESP-001", "ESP-011", "ESP-002", "ESP-005"]
    assert dict(esp_rows)["ESP-005"] == "RFC 4303 §3.4.3"


def test_per_peer_summary(run: RunResults, run_dir: Path) -> None:
    by_peer = {s.peer.name: {lv: (p, n) for lv, p, n in s.levels} for s in summaries(run)}
    # strongswan: 11 MUST results evaluated (2 n/a, 1 recorded left out), one failed
    assert by_peer["strongswan"]["MUST"] == (10, 11)
    assert by_peer["strongswan"]["SHOULD"] == (1, 2)
    assert by_peer["reference"]["MAY"] == (1, 2)  # the harness error counts as not passed
    html, _ = _parse(run_dir)
    assert re.search(r'data-peer="strongswan".*?MUST.*?10/11', html, re.S)


def test_escaping_and_empty_run(run: RunResults) -> None:
    evil = run.model_copy(deep=True)
    evil.results[0].reason = '<script>alert("x")</script>'
    html = render(evil)
    assert '<script>alert("x")' not in html and "&lt;script&gt;alert" in html
    empty = run.model_copy(update={"results": [], "cases": {}})
    assert "This run has no results." in render(empty)
