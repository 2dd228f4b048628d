"""One real-browser check: ``python app.py`` in Chromium (driven by Playwright), the bits
slider changed through its number box, the readout and the compressed image follow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nerfcomp import scenes

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium; never `playwright "
        "install`)",
    ),
    pytest.mark.skipif(
        not scenes.get_scene("primitives").checkpoint.exists(), reason="no primitives checkpoint"
    ),
]


@pytest.fixture(scope="module")
def url(free_port):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env)
    address = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(address, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("python app.py did not start serving") from None
                time.sleep(0.25)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _readout(page) -> str:
    return page.locator("#nc-readout").inner_text()


def _bits(text: str) -> int | None:
    found = re.search(r'"?bits"?\s*:\s*(\d+)', text)
    return int(found.group(1)) if found else None


def test_bits_slider_changes_readout_and_image(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function(
            "document.querySelector('#nc-readout')?.innerText.includes('psnr_test')",
            timeout=240_000,
        )
        before = _readout(page)
        images = page.locator("#nc-views img")
        src_before = [images.nth(i).get_attribute("src") for i in range(images.count())]
        assert _bits(before) == 4

        box = page.get_by_label("number input for Bits")
        box.fill("2")
        box.press("Tab")  # fires the slider's .release
        page.wait_for_function(
            "document.querySelector('#nc-readout').innerText.match(/bits\\W+2\\b/)",
            timeout=240_000,
        )
        after = _readout(page)
        src_after = [images.nth(i).get_attribute("src") for i in range(images.count())]
        assert re.search(r"psnr_test\W+([\d.]+)", after).group(1) != re.search(
            r"psnr_test\W+([\d.]+)", before
        ).group(1)
        assert src_after != src_before  # the compressed render changed
        out = ROOT / "artifacts"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / "browser.png"), full_page=True)
        browser.close()


def test_auto_button_fills_the_allocation_table(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("button", name="Find allocation").click()
        page.wait_for_function(
            "document.querySelector('#nc-auto')?.innerText.includes('psnr_percent')",
            timeout=240_000,
        )
        table = page.locator("#nc-alloc").inner_text()
        assert "trunk.0" in table and "rgb" in table
        percent = float(
            re.search(r"psnr_percent\W+([\d.]+)", page.locator("#nc-auto").inner_text()).group(1)
        )
        assert percent >= 99.0
        page.locator("#nc-alloc").scroll_into_view_if_needed()
        out = ROOT / "artifacts"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / "browser-auto.png"), full_page=False)
        browser.close()
