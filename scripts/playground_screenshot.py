"""The README's playground screenshot, taken from a real session: `tuneforge serve RUN` (started here unless --url
names a running server), the page opened in headless Chromium, the run and `base` ticked, a held-out meeting request
sent to both with the run's schema constraint on, and the page captured once both answers are in.

    .venv/bin/python scripts/playground_screenshot.py [--run runs/demo] [--url http://127.0.0.1:8000] [--out docs/playground.png]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROMPT = "Could we meet in Lisbon on March 3 with Priya to go over the vendor contract?"


def wait_ready(url: str, server: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/", timeout=2).read()
            return
        except OSError:
            if (server is not None and server.poll() is not None) or time.time() > deadline:
                sys.exit(f"no playground at {url}/")
            time.sleep(0.5)


def capture(url: str, run_id: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=shutil.which("chromium"),
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        tab.goto(f"{url}/")
        tab.wait_for_selector("#models input")
        for box in tab.query_selector_all("#models input:not([disabled])"):
            box.set_checked(box.get_attribute("value") in (run_id, "base"))
        tab.fill("#prompt", PROMPT)
        tab.fill("#max-tokens", "64")
        tab.select_option("#constrain", "run")
        tab.click("#send")
        expect(tab.locator("#answers [data-state=done]")).to_have_count(2, timeout=300_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--url", help="a playground already running (default: start `tuneforge serve RUN` here)")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "serve", str(args.run), "--port",
                                   str(args.port)], start_new_session=True)
    try:
        wait_ready(url, server)
        capture(url, args.run.name, args.out)
        print(f"wrote {args.out}")
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=90)


if __name__ == "__main__":
    main()
