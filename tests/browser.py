"""Start the app in-process and drive it in Debian's headless Chromium through Playwright.

Used by the browser tests, and run as a script to save the screenshots in docs/::

    python tests/browser.py --out docs/screenshots --tracking-dir /tmp/app-store

The script fills ``--tracking-dir`` with a small baseline multirun when it has no runs.
Chromium comes from ``apt-get install chromium``; ``playwright install`` is never needed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Every host name except the app's resolves to nothing, so the page cannot reach the internet.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
#: Milliseconds a page step may wait for the app; model and MLflow calls on 2 CPU cores take seconds.
STEP_TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(settings) -> Iterator[str]:
    """Serve the app on a free 127.0.0.1 port in this process; yields its URL."""
    from ecdna_exp.app import build_app
    from ecdna_exp.app.layout import launch_app
    from ecdna_exp.app.settings import ModelCache

    cache = ModelCache()
    demo = build_app(settings, cache=cache)
    url = launch_app(demo, port=free_port(), block=False)
    try:
        yield url
    finally:
        demo.close()
        cache.close()


@contextlib.contextmanager
def chromium_page(width: int = 1500, height: int = 1100) -> Iterator:
    """Open a Playwright page in Debian's Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def choose_option(page, elem_id: str, label: str) -> None:
    """Pick ``label`` in the Gradio dropdown with ``elem_id`` as a user would: type, then click the option."""
    field = page.locator(f"#{elem_id} input")
    field.click()
    field.fill(label)
    page.get_by_role("option", name=label, exact=True).click()


def upload_and_ask(page, url: str, image_path: Path) -> str:
    """Upload a patch on the Inspect tab, ask the default model, and return the parsed count shown."""
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(image_path))
    page.locator("#inspect-counts table").wait_for()
    page.locator("#ask-button").click()
    page.locator("#ask-status", has_text="Done").wait_for()
    return page.locator("#ask-count input").input_value()


def open_worst_prediction(page, url: str, run_label: str) -> str:
    """Open a run on the Browse tab, select the first predictions row, and return the selection text."""
    page.goto(url)
    page.get_by_role("tab", name="Browse a run").click()
    choose_option(page, "run-run", run_label)
    first_cell = page.locator("#run-predictions").get_by_role("gridcell").first
    first_cell.wait_for()
    first_cell.click()
    selection = page.locator("#run-selection")
    selection.locator("strong").first.wait_for()
    return selection.inner_text()


def run_baseline_sweep(dataset_root: Path, tracking_dir: Path, sweep_dir: Path, limit: int = 12) -> None:
    """Run ``python -m ecdna_exp -m model=constant,classical`` on ``limit`` patches into ``tracking_dir``."""
    command = [sys.executable, "-m", "ecdna_exp", "-m", "model=constant,classical", "dataset=ecseg",
               f"dataset.root={dataset_root}", f"dataset.limit={limit}", f"tracking.dir={tracking_dir}",
               "metrics.bootstrap_resamples=200", f"hydra.sweep.dir={sweep_dir}"]
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)


def save_screenshots(out_dir: Path, dataset_root: Path, tracking_dir: Path) -> None:
    from ecdna_exp.app.run_store import RunStore
    from ecdna_exp.app.settings import AppSettings

    store = RunStore(tracking_dir)
    if not (tracking_dir / "mlflow.db").exists():
        run_baseline_sweep(dataset_root, tracking_dir, tracking_dir / "multirun")
    experiment_id = store.experiments()[0][1]
    run_label = next(label for label, _ in store.runs(experiment_id) if "model=classical" in label)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = AppSettings(dataset_root=dataset_root, tracking_dir=tracking_dir)
    with running_app(settings) as url, chromium_page() as page:
        upload_and_ask(page, url, dataset_root / "images" / "1790.tif")
        page.screenshot(path=str(out_dir / "inspect.png"), full_page=True)
        open_worst_prediction(page, url, run_label)
        page.screenshot(path=str(out_dir / "run.png"), full_page=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Save screenshots of the Inspect and Browse tabs.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--dataset-root", type=Path,
                        default=REPO_ROOT / ".." / "shared" / "data" / "ecseg_sample")
    parser.add_argument("--tracking-dir", type=Path, required=True,
                        help="MLflow store to show; a baseline sweep is run into it when it has none")
    arguments = parser.parse_args()
    save_screenshots(arguments.out, arguments.dataset_root.resolve(), arguments.tracking_dir.resolve())
