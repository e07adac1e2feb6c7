"""Benchmark: the playground's library choice — Gradio mounted in the FastAPI app against tuneforge's static page.

Measured in one invocation, each side in fresh Python processes so imports are not shared:
- install size: the files of the distributions a side adds to tuneforge's environment (Gradio: gradio and every
  package `pip install gradio` adds or changes in .venv, from pip's dry-run report; the static page: its three files);
- start-up: seconds to import the side and build the app (a FastAPI app with the page mounted), and the RSS it adds
  over the same FastAPI app without it;
- offline behaviour: the page is served on loopback and opened in headless Chromium (Playwright, as the tests drive
  it) with every request to another origin refused, as with the network off: the origins it tried (fonts, CDNs,
  telemetry), its console errors, its size and the seconds until the network is idle.

Gradio is not a dependency of tuneforge: give a Python that has it (`--gradio-python`; make one with
`python3 -m venv /tmp/gr && /tmp/gr/bin/pip install "gradio>=6,<7"`).

    .venv/bin/python bench/ui_choice.py --gradio-python /tmp/gr/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs in the side's own Python: builds the app (timing and memory against the same FastAPI app without the page),
# serves it on loopback, prints its numbers, and serves until its stdin closes.
CHILD = r'''
import json, sys, threading, time
def rss_mb(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
side, port = sys.argv[1], int(sys.argv[2])
import fastapi, uvicorn
if side == "static":
    from tuneforge.serve.api import build_app
    from tuneforge.serve.engines import Engines
    build_app(Engines(), ui=False)  # the server alone, imports included
    base_rss, started = rss_mb(), time.perf_counter()
    app = build_app(Engines(), ui=True)
else:
    fastapi.FastAPI()
    base_rss, started = rss_mb(), time.perf_counter()
    import gradio as gr
    with gr.Blocks() as demo:
        gr.CheckboxGroup(["run", "base"], label="models")
        gr.Chatbot()
        gr.Textbox(label="message")
        gr.Button("Send")
        gr.Label(label="classes")
        gr.HighlightedText(label="entities")
    app = gr.mount_gradio_app(fastapi.FastAPI(), demo, path="/")
build_s, added = time.perf_counter() - started, rss_mb() - base_rss
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started: time.sleep(0.05)
print(json.dumps({"build_s": build_s, "rss_added_mb": added}), flush=True)
sys.stdin.read()
'''

SIZE_OF_DISTS = r'''
import json, sys
from importlib.metadata import distribution
total = 0
for name in json.loads(sys.argv[1]):
    dist = distribution(name)
    total += sum((dist.locate_file(f).stat().st_size for f in dist.files or [] if dist.locate_file(f).exists()))
print(total)
'''


def run_side(python: str, side: str) -> dict:
    """The side's start-up numbers, then its page opened in headless Chromium with every request to another origin
    refused (the network off): those requests, the console errors, and the seconds until the page has loaded."""
    import shutil

    from playwright.sync_api import sync_playwright
    from serve_load import free_port

    port = free_port()
    child = subprocess.Popen([python, "-c", CHILD, side, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        line = child.stdout.readline()
        if not line:
            sys.exit(f"{side} side failed to start: run it by hand ({python})")
        measured = json.loads(line)
        url = f"http://127.0.0.1:{port}"
        outside, errors = set(), []
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            tab = browser.new_page()
            tab.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                      else (outside.add(route.request.url.split("/")[2]), route.abort()))
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            began = time.perf_counter()
            tab.goto(url + "/", wait_until="networkidle")
            measured["page_load_s"] = time.perf_counter() - began
            measured["page_kb"] = tab.evaluate(
                "performance.getEntries().reduce((s, e) => s + (e.decodedBodySize || 0), 0)") / 1024
            browser.close()
        measured["refused_origins"], measured["console_errors"] = sorted(outside), len(errors)
        return measured
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def gradio_install_mb(gradio_python: str) -> tuple[float, list[str]]:
    """MB of the distributions `pip install gradio` would add or change in this environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report),
                        "gradio>=6,<7"], check=True, capture_output=True)
        added = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    size = subprocess.run([gradio_python, "-c", SIZE_OF_DISTS, json.dumps(added)], capture_output=True, text=True,
                          check=True)
    return int(size.stdout) / 2**20, added


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradio-python", required=True, help="a Python with gradio 6 installed")
    args = parser.parse_args()
    from tuneforge.serve.playground import PAGE_FILES, UI_DIR

    static_mb = sum((UI_DIR / name).stat().st_size for name in PAGE_FILES.values()) / 2**20
    gradio_mb, added = gradio_install_mb(args.gradio_python)
    version = subprocess.run([args.gradio_python, "-c", "import gradio; print(gradio.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    sides = {"static page": (static_mb, run_side(sys.executable, "static")),
             f"gradio {version}": (gradio_mb, run_side(args.gradio_python, "gradio"))}
    print(f"{'':14} {'install MB':>10} {'import+build s':>14} {'RSS added MB':>12} {'page KB':>8} {'load s':>6} "
          f"{'console errors':>14}  requests elsewhere (refused)")
    for name, (size, m) in sides.items():
        print(f"{name:14} {size:10.2f} {m['build_s']:14.2f} {m['rss_added_mb']:12.1f} {m['page_kb']:8.0f} "
              f"{m['page_load_s']:6.2f} {m['console_errors']:14}  {', '.join(m['refused_origins']) or 'none'}")
    print(f"gradio adds or changes {len(added)} distributions here: {', '.join(added)}")


if __name__ == "__main__":
    main()
