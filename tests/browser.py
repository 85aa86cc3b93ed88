"""Open HTML files in headless Chromium (Debian's, driven by Playwright) and report what a
reader would see broken: script and console errors, images that did not decode, local links.

Skips where Chromium or Playwright is missing, unless ``VLMSTEER_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs both), where that is a failure."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@dataclass
class PageCheck:
    path: Path
    errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    local_links: list[str] = field(default_factory=list)
    screenshot_std: float = 0.0


def _require(what: str) -> None:
    if os.environ.get("VLMSTEER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} is required here (VLMSTEER_REQUIRE_BROWSER=1)")
    pytest.skip(f"{what} is not installed (.ci/run installs it)")


def open_pages(paths: list[Path], tmp_path: Path) -> list[PageCheck]:
    import io

    import numpy as np
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        _require("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("playwright")
    checks = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            for path in paths:
                check = PageCheck(Path(path))
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("pageerror", lambda exc, c=check: c.errors.append(f"script: {exc}"))
                page.on("console", lambda msg, c=check: c.errors.append(f"console: {msg.text}")
                        if msg.type == "error" else None)
                page.goto(Path(path).resolve().as_uri(), wait_until="load")
                check.broken_images = page.evaluate(
                    "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                    ".map(i => i.getAttribute('src').slice(0, 80))")
                check.images = page.evaluate("document.images.length")
                check.local_links = [h for h in page.evaluate(
                    "Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
                    if not h.startswith(("#", "http:", "https:", "mailto:", "data:"))]
                shot = page.screenshot(full_page=False)
                check.screenshot_std = float(np.asarray(Image.open(io.BytesIO(shot)).convert("L")).std())
                page.close()
                checks.append(check)
        finally:
            browser.close()
    return checks
