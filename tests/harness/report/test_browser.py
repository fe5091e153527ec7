"""The HTML matrix in a real browser: Debian's headless Chromium driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (scripts/install-report-tools)"
)


def test_matrix_in_chromium(run_dir: Path) -> None:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto((run_dir / "index.html").as_uri())

            # the matrix: 13 case rows, 4 columns (2 peers x 2 roles), cells coloured by verdict
            assert page.locator("tr.case").count() == 13
            assert page.locator("thead tr.roles th").count() == 4
            fail_cell = page.locator(
                'tr#case-ESP-005 td.cell[data-peer="strongswan"][data-role="R"] a'
            )
            assert fail_cell.inner_text().strip() == "✗ FAIL"
            bg = fail_cell.evaluate("e => getComputedStyle(e).backgroundColor")
            assert bg == "rgb(207, 34, 46)"
            pass_bg = page.locator(
                'tr#case-ESP-001 td.cell[data-peer="strongswan"][data-role="I"] a'
            ).evaluate("e => getComputedStyle(e).backgroundColor")
            assert pass_bg == "rgb(211, 242, 220)"
            summary = page.locator('.card[data-peer="strongswan"] [data-level="MUST"] .num')
            assert summary.inner_text() == "10/11"
            page.screenshot(path=str(run_dir / "matrix.png"), full_page=True)

            # the failing cell opens its evidence panel; its log link leads to the log
            panel = page.locator("#r-ESP-005--strongswan--R")
            assert not panel.is_visible()
            fail_cell.click()
            assert panel.is_visible()
            assert "seq 500 with a bad ICV" in panel.locator(".reason").inner_text()
            log = panel.locator('a.evidence-link[data-kind="log"]')
            assert log.get_attribute("href") == "evidence/ESP-005/strongswan-R/strongswan.log"
            withheld = panel.locator(".withheld").inner_text()
            assert "--export-keys" in withheld
            page.screenshot(path=str(run_dir / "matrix-panel.png"))
            page.keyboard.press("Escape")
            assert not panel.is_visible()

            # filters: suite, level, problems only
            page.select_option("#f-suite", "esp")
            assert page.locator("tr.case:visible").count() == 4
            page.uncheck('.f-level[value="MUST"]')
            assert page.locator("tr.case:visible").count() == 1  # ESP-011 (MAY)
            page.check('.f-level[value="MUST"]')
            page.select_option("#f-suite", "")
            page.select_option("#f-verdict", "problems")
            visible = set(
                page.locator("tr.case:visible").evaluate_all(
                    "rows => rows.map(r => r.dataset.case)"
                )
            )
            assert visible == {"ESP-005", "ESP-011", "IKEV2-NEG-009"}
            assert page.locator("#f-count").inner_text() == "3 of 13 cases"

            log.evaluate("e => e.click()")  # follow the evidence link (panel is hidden now)
            page.wait_for_load_state()
            body = page.locator("body").inner_text()
            assert "seq 500 with a bad ICV" in body and "«redacted»" in body
        finally:
            browser.close()
