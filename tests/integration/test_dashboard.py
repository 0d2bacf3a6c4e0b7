"""The inspection dashboard in a real browser: `steelqc.dashboard.server.run` serves the Streamlit app over the
session's tiny champion, and Playwright drives Debian's chromium (never a browser Playwright downloads).

Upload a real Severstal image and see the decision and its Grad-CAM overlay; open the Models page and see the
champion's version and alias. On the Review page (a dashboard over a home of its own: the champion's stays
read-only), label a queued image with one click and find it in the reviewed source on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from steelqc.monitoring.review import open_review_queue
from steelqc.tasks.config import Settings
from tests.helpers import STEELQC, Champion, free_port, shared_path, wait_for_http, write_image

pytestmark = pytest.mark.slow

# as infra/ui_screenshots.sh starts chromium (Playwright adds --headless)
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip
RENDER_TIMEOUT_MS = 180_000  # the first decision imports torch, loads the model and runs Grad-CAM on a busy CPU


def shots(tmp_path: Path) -> Path:
    """Where the pages' screenshots go: ``DASHBOARD_SCREENSHOTS`` (e.g. docs/images, to refresh the README's), else
    the test's tmp folder."""
    folder = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium() -> str:
    """Debian's chromium, or skip the test saying how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install -y chromium`; `make venv` tries it)")
    return found


@contextmanager
def serve(home: Path, tmp_path: Path) -> Iterator[str]:
    """`steelqc dashboard --port P --json` over ``home`` (no other STEELQC_* setting) on a free loopback port; its
    URL, once it answers. Its stdout is the one JSON object naming that URL (Streamlit's own output goes to
    stderr)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEELQC_") or k == "STEELQC_SHARED_DATA"}
    env["STEELQC_HOME"] = str(home)
    log_path, out_path = tmp_path / "dashboard.log", tmp_path / "dashboard.out"
    with log_path.open("w") as log, out_path.open("w") as out:
        proc = subprocess.Popen(
            [*STEELQC, "dashboard", "--port", str(port), "--json"],
            env=env, stdout=out, stderr=log, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/_stcore/health", proc, log_path, "the dashboard", 120)
        assert [json.loads(line) for line in out_path.read_text().splitlines()] == [
            {"url": url, "host": "127.0.0.1", "port": port}
        ]
        yield url
    finally:
        proc.terminate()  # run() stops Streamlit on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def dashboard(champion: Champion, tmp_path: Path) -> Iterator[str]:
    """The dashboard over the champion's STEELQC_HOME (read-only: nothing here labels or queues)."""
    with serve(champion.home, tmp_path) as url:
        yield url


@pytest.fixture
def review_dashboard(steelqc_home: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The dashboard over a home of its own whose review queue holds one small PNG, queued by the drift monitor's
    own queue code; its URL and the image's SHA-256."""
    settings = Settings()
    image = write_image(tmp_path / "inbox" / "queued.png", (32, 48), "PNG", seed=7)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    row = {"uri": str(image), "sha256": sha, "predicted": "scratch", "confidence": 0.42, "critical_proba": 0.3,
           "novel": False, "reasons": ["least-confident"]}  # fmt: skip
    assert open_review_queue(settings.review_queue, settings).add(pd.DataFrame([row]), run_id="run-1") == 1
    with serve(steelqc_home, tmp_path) as url:
        yield url, sha


def test_inspect_and_models_pages_in_a_browser(dashboard: str, champion: Champion, tmp_path: Path) -> None:
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    images = sorted(shared_path("severstal-sample", "train_images").glob("*.jpg"))
    if not images:
        pytest.skip("no image in ../shared/data/severstal-sample/train_images")
    image = images[0]
    version = str(champion.summary["model_version"])
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(dashboard, wait_until="domcontentloaded")
            expect(page.get_by_text("Inspect an image")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(image))

            predicted = page.get_by_text("Predicted:")
            expect(predicted).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            label = predicted.inner_text().split(":", 1)[1].strip()
            assert label in champion.summary["metrics"]["per_class"], label
            overlay = page.get_by_alt_text("Grad-CAM overlay")
            expect(overlay).to_be_visible(timeout=60_000)
            expect(page.get_by_text(f"Grad-CAM overlay ({label})")).to_be_visible()
            width = overlay.evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width > 0, "the Grad-CAM overlay did not load"
            expect(page.get_by_text("threshold", exact=False).first).to_be_visible()
            expect(page.get_by_text(f"version {version}", exact=False).first).to_be_visible()
            page.screenshot(path=str(shots(tmp_path) / "dashboard-inspect.png"), full_page=True)

            page.goto(f"{dashboard}/models", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Models")).to_be_visible(timeout=60_000)
            row = page.locator("table tr", has_text="champion").first
            expect(row).to_be_visible(timeout=60_000)
            assert row.locator("td").first.inner_text().strip() == version
            expect(page.get_by_text("Audit trail")).to_be_visible()
            promoted = page.locator("table tr", has_text="promote").filter(has_text="champion").first
            expect(promoted).to_be_visible(timeout=60_000)  # the audit trail: who moved the alias to which version
            expect(promoted).to_contain_text(str(champion.summary["aliases"]["champion"]))
            # the champion's model card, as the registry holds it (its run's card/model_card.md)
            card_title = f"Model card: {Settings.model_fields['registered_model'].default} v{version}"
            expect(page.get_by_role("heading", name=card_title)).to_be_visible(timeout=60_000)
            expect(page.get_by_role("heading", name="Intended use")).to_be_visible()
            expect(page.get_by_role("heading", name="Critical class")).to_be_visible()
            page.screenshot(path=str(shots(tmp_path) / "dashboard-models.png"), full_page=True)

            page.goto(f"{dashboard}/monitoring", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Monitoring")).to_be_visible(timeout=60_000)
            decisions = page.get_by_text("Recent drift decisions").or_(page.get_by_text("No monitoring run yet"))
            expect(decisions.first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(shots(tmp_path) / "dashboard-monitoring.png"), full_page=True)
        finally:
            browser.close()


def test_review_page_labels_a_queued_image_with_one_click(
    review_dashboard: tuple[str, str], steelqc_home: Path, tmp_path: Path
) -> None:
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    url, sha = review_dashboard
    expect = sync_api.expect
    target = steelqc_home / "reviewed" / "crack" / f"{sha}.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/review", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Review")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("model's guess: scratch", exact=False)).to_be_visible(timeout=60_000)
            queued = page.get_by_alt_text("Queued image")
            expect(queued).to_be_visible(timeout=60_000)
            assert queued.evaluate("img => img.complete ? img.naturalWidth : 0") == 48
            page.screenshot(path=str(shots(tmp_path) / "dashboard-review.png"), full_page=True)

            page.get_by_role("button", name="crack", exact=True).click()

            expect(page.get_by_text(f"reviewed as crack: moved to {target}")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Nothing waits for your label", exact=False)).to_be_visible(timeout=60_000)
        finally:
            browser.close()
    deadline = time.monotonic() + 10
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert not any((steelqc_home / "review" / "images").iterdir())
