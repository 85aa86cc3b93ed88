"""The README's screenshots, made from a demo run so they never go stale: runs ``vlmsteer demo``
(or takes a finished demo folder) and photographs its page in headless Chromium — the top
(baseline VQA and concepts) and the fine-tuning shift section.

    python scripts/demo_screenshots.py [--demo runs/demo] [--out docs]

Needs Chromium (Debian's ``chromium``) and Playwright (a dev dependency).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SHOTS = (("demo-page.png", None, 1500), ("demo-shift.png", "shift", 1390))  # (file, section id, height)
WIDTH = 1100


def screenshots(page_file: Path, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            for name, section, height in SHOTS:
                page = browser.new_page(viewport={"width": WIDTH, "height": height})
                page.goto(page_file.resolve().as_uri(), wait_until="load")
                if section is not None:
                    page.locator(f"#{section}").scroll_into_view_if_needed()
                    page.evaluate(f"document.getElementById('{section}').scrollIntoView()")
                path = out / name
                page.screenshot(path=str(path.with_suffix(".partial.png")), full_page=False)
                path.with_suffix(".partial.png").replace(path)
                written.append(path)
                page.close()
        finally:
            browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="demo folder (run if missing)")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    index = args.demo / "index.html"
    if not index.is_file():
        subprocess.run([sys.executable, "-m", "vlmsteer", "demo", "--out", str(args.demo)], check=True)
    for path in screenshots(index, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
