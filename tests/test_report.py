"""`tuneforge report`: one self-contained HTML page per run or per group of runs, read from run directories only,
and checked in a real headless Chromium where one is installed (scripts/ensure_test_tools.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import tuneforge_here
from tuneforge.report import write_report
from tuneforge.rundir import RunDir


def line_points(svg_html: str) -> list[int]:
    """How many vertices each drawn line of the page's SVG charts has."""
    return [len(re.findall(r"[ML]\s*-?[\d.]+\s+-?[\d.]+", d)) for d in re.findall(r'<path d="([^"]+)"', svg_html)]


def test_a_run_report_shows_config_plan_curves_best_and_metrics_and_needs_no_network(tiny_lora_run, tmp_path):
    page_path = write_report([tiny_lora_run], tmp_path / "report.html")
    page = page_path.read_text(encoding="utf-8")
    run = RunDir(tiny_lora_run)
    steps = [row for row in run.metrics() if row["type"] == "step"]
    for heading in ("Config (changed from the defaults)", "Plan", "Training", "Metrics"):
        assert f"<h3>{heading}</h3>" in page
    assert "<td>lora_config</td>" in page and "<td>learning_rate</td>" in page  # changed keys; defaults left out
    assert "<td>num_devices</td>" not in page
    assert page.count("<svg") == 2  # loss (train line, eval points, events, best) and tokens/s
    assert max(line_points(page)) >= len(steps)  # the train loss line has a vertex per logged step
    best_step = run.results()["best_metrics"]["step"]
    assert f"best (step {best_step})" in page
    assert "data:image/png;base64," in page  # the learning-rate plot, inlined
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from a network


def test_an_evaluated_run_shows_its_scores_against_the_base_and_its_answers(tiny_lora_run, tiny_chat_data, tmp_path):
    from tuneforge.tasks import get_task

    run = tmp_path / "evaluated"
    shutil.copytree(tiny_lora_run, run)
    get_task("causal_lm").evaluate(run, tiny_chat_data["valid"], name="held-out", max_generate=4, max_new_tokens=6,
                                   compare_base=True)
    page = write_report([run], tmp_path / "evaluated.html").read_text(encoding="utf-8")
    section = page[page.index("<h3>Evaluations</h3>"):]
    assert "<h4>held-out</h4>" in section
    assert "<th>fine-tuned</th><th>base model</th>" in section and "<td>eval_loss</td>" in section
    assert "<th>base model&#x27;s answer</th>" in section
    assert section.count("<td>Say ") >= 4  # every answered prompt, with its answers


def test_a_run_with_nothing_logged_yet_or_failed_gets_a_page_that_says_so(tmp_path, tiny_lora_run):
    fresh = RunDir(tmp_path / "fresh")
    fresh.path.mkdir()
    shutil.copy(RunDir(tiny_lora_run).config_file, fresh.config_file)
    fresh.state_file.write_text('{"status": "failed", "error": "worker 0: CUDA out of memory"}')
    page = write_report([fresh.path], tmp_path / "fresh.html").read_text(encoding="utf-8")
    assert "no metrics yet: the run has not logged a training step" in page
    assert "no plan.json" in page
    assert "the run failed: worker 0: CUDA out of memory" in page
    assert "no validation yet" in page


def test_several_runs_are_overlaid_side_by_side_with_config_differences_marked(tiny_lora_run, tiny_full_run, tmp_path):
    page = write_report([tiny_lora_run, tiny_full_run], tmp_path / "both.html").read_text(encoding="utf-8")
    assert "<h2>Runs side by side</h2>" in page
    assert f"<th>{tiny_lora_run.name}</th>" in page and f"<th>{tiny_full_run.name}</th>" in page
    differing = re.findall(r'<tr class="differs"><td>([^<]+)</td>', page)
    assert "lora_config" in differing and "model_id" not in differing
    overlay = page[page.index("Runs side by side"):page.index("Config differences")]
    assert f"{tiny_lora_run.name} train" in overlay and f"{tiny_full_run.name} train" in overlay


def test_the_command_writes_the_report_and_refuses_what_is_not_a_run(tiny_lora_run, tmp_path, wide_terminal):
    out = tmp_path / "r.html"
    done = tuneforge_here("report", str(tiny_lora_run), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert out.is_file() and str(out) in done.stdout
    refused = tuneforge_here("report", str(tmp_path))
    assert refused.returncode == 2
    assert f"{tmp_path}: not a tuneforge run or search (no config.yaml, no tune_config.yaml)" in refused.stderr
    assert "Traceback" not in refused.stderr


BROWSER = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", "--window-size=1200,3000"]
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="no chromium (scripts/ensure_test_tools.sh installs it)")


def open_in_chromium(page: Path, screenshot: Path) -> tuple[list[str], str]:
    """The console messages of loading `page` in headless Chromium (taking a screenshot), and its loaded DOM."""
    loaded = subprocess.run([*BROWSER, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True,
                            timeout=120)
    console = [line for line in loaded.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    dom = subprocess.run([*BROWSER, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    return console, dom


@needs_chromium
def test_the_report_loads_in_headless_chromium_without_errors_and_draws(tiny_lora_run, tiny_full_run, tmp_path):
    from PIL import Image

    page = write_report([tiny_lora_run, tiny_full_run], tmp_path / "both.html")
    shot = tmp_path / "shot.png"
    console, dom = open_in_chromium(page, shot)
    assert console == []  # no console message at all: no script errors, no failed loads
    charts = dom.count("<svg")
    assert charts == 1 + 2 * 2  # the overlay, then loss and tokens/s per run
    assert sum(1 for count in line_points(dom) if count >= 4) >= charts  # every chart drew a line of points
    image = Image.open(shot).convert("L")
    drawn = sum(1 for value in image.getdata() if value < 200)
    assert drawn > 0.02 * image.width * image.height  # text, tables and charts: far from a blank page


@needs_chromium
def test_clicking_a_trials_column_sorts_it_in_a_real_browser(tmp_path):
    """The search page's one script: a click sorts by the column (numbers as numbers), a second click reverses."""
    from tuneforge.report import SORT_SCRIPT, html_page, trials_table

    trials = [{"run_id": f"trial_{name}", "status": "done", "best_objective": value, "param.learning_rate": lr}
              for name, value, lr in (("a", "3.5", "1e-3"), ("b", "10.25", "1e-4"), ("c", "2", "1e-2"))]
    clicks = ("var th = document.querySelectorAll('table.sortable th')[3];"
              "th.click(); document.body.dataset.once = Array.from(document.querySelectorAll('tbody tr'))"
              ".map(function (row) { return row.cells[0].textContent; }).join(',');"
              "th.click(); document.body.dataset.twice = Array.from(document.querySelectorAll('tbody tr'))"
              ".map(function (row) { return row.cells[0].textContent; }).join(',');")
    page = tmp_path / "sort.html"
    page.write_text(html_page("sort", [trials_table(trials)], SORT_SCRIPT + clicks))
    console, dom = open_in_chromium(page, tmp_path / "sort.png")
    assert console == []
    assert 'data-once="trial_c,trial_a,trial_b"' in dom  # 2 < 3.5 < 10.25, not "10.25" < "2" < "3.5"
    assert 'data-twice="trial_b,trial_a,trial_c"' in dom
