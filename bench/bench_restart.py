"""Where a warm restart of the demo goes: server, websocket and the browser's CPU by kind.

    python -m bench.bench_restart [--runs 5] [--store DIR] [--screenshot PNG] [--against REV]

A restart (bench_dashboard's "restart (store kept, fresh process) -> accuracy chart") is a fresh
`streamlit run` on a store that already holds the demo's first page, opened in a fresh page of
headless Chromium (started for each restart, before the clock). This fills such a store once (a cold first page, then the server's background
work left to finish), unless ``--store`` names one, then restarts the server ``--runs`` times on a
copy of it and prints, per run, seconds from ``page.goto`` (the clock of bench_dashboard: the
browser is already started, the server already answers its health check):

- the page's ``load`` event (Streamlit's HTML and bundle fetched and run),
- the first websocket frame from the server and the first one that carries the accuracy chart's figure
  (the server's side: its script run reaching the chart; both timed in the page, from the navigation's start),
- the accuracy chart drawn, and every plot drawn;

and the renderer's CPU by kind to the chart (Chrome DevTools Protocol ``Performance.getMetrics``:
ScriptDuration, LayoutDuration, RecalcStyleDuration, TaskDuration, in seconds), the CPU seconds of
the server and of every Chromium process to the chart (as bench_dashboard), and what the page
holds once every plot is drawn (plotly charts, their traces and points, SVG and WebGL traces,
images, dataframes, DOM elements). With ``--against REV`` the restarts alternate between this
checkout and git revision REV (a temporary worktree), on the same store, and the table gives both.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_dashboard import _cpu_seconds, _serve, _settle, _stop  # noqa: E402
from tests.test_browser import CHROMIUM, PLOT_TITLES  # noqa: E402

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
# the times (ms after the navigation started) of the server's first websocket frame and of the first one
# that carries the accuracy chart's figure, read in the page (a Python listener copying every frame out
# of the browser cost this 2-core machine a core)
FRAMES_JS = """(() => {
  const Native = window.WebSocket, marker = 'Accuracy per domain (';
  window.WebSocket = function (...args) {
    const ws = new Native(...args);
    ws.addEventListener('message', event => {
      window.__firstFrame ??= performance.now();
      if (window.__chartFrame === undefined && event.data instanceof ArrayBuffer
          && new TextDecoder().decode(event.data).includes(marker)) window.__chartFrame = performance.now();
    });
    return ws;
  };
  Object.assign(window.WebSocket, Native);
  window.WebSocket.prototype = Native.prototype;
})();"""
# what the page holds, counted in the browser once every plot is drawn
COUNT_JS = """() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const traces = plots.flatMap(p => p._fullData || []);
  const points = t => t._length || (t.z ? t.z.flat().length : 0);
  return {
    "plotly charts": plots.length,
    "traces": traces.length,
    "points": traces.reduce((n, t) => n + points(t), 0),
    "SVG scatter traces": traces.filter(t => t.type === 'scatter').length,
    "WebGL traces": traces.filter(t => (t.type || '').endsWith('gl')).length,
    "SVG point paths": document.querySelectorAll('.js-plotly-plot path.point').length,
    "images": document.querySelectorAll('img').length,
    "dataframes": document.querySelectorAll('[data-testid="stDataFrame"]').length,
    "DOM elements": document.querySelectorAll('*').length,
  };
}"""


def fill_store(cache: str, root: Path = ROOT) -> None:
    """A cold first page of the demo into ``cache``, its background work left to finish."""
    from playwright.sync_api import sync_playwright

    proc, url = _serve(cache, root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            page.goto(url + "/explorer")
            for title in PLOT_TITLES:
                page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for(timeout=600_000)
            browser.close()
        _settle(proc.pid)
    finally:
        _stop(proc)


def restart(cache: str, screenshot: str | None = None, root: Path = ROOT) -> tuple[dict[str, float], dict[str, int]]:
    """One restart on ``cache``: the timings and CPU figures of the module docstring, and the counts."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        proc, url = _serve(cache, root)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            page.add_init_script(FRAMES_JS)
            before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            cpu_before = _cpu_seconds(proc.pid)
            start = time.monotonic()
            page.goto(url + "/explorer", wait_until="load")
            loaded = time.monotonic() - start
            page.locator(".js-plotly-plot .gtitle", has_text="Accuracy per domain").first.wait_for(timeout=120_000)
            chart = time.monotonic() - start
            server, chromium = (a - b for a, b in zip(_cpu_seconds(proc.pid), cpu_before))
            at_chart = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            for title in PLOT_TITLES:
                page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for(timeout=120_000)
            every = time.monotonic() - start
            counts = page.evaluate(COUNT_JS)
            if screenshot:
                page.wait_for_timeout(1000)
                page.screenshot(path=screenshot, full_page=True)
            first_frame, chart_frame = page.evaluate("() => [window.__firstFrame, window.__chartFrame]")
        finally:
            _stop(proc)
        browser.close()
    figures = {"page load event": loaded, "first websocket frame": first_frame / 1000,
               "frame with the accuracy chart": chart_frame / 1000, "accuracy chart drawn": chart, "every plot drawn": every,
               "CPU s to the chart: server": server, "CPU s to the chart: every Chromium process": chromium}
    figures.update({f"renderer to the chart: {m}": at_chart[m] - before.get(m, 0.0) for m in METRICS})
    return figures, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--store", metavar="DIR", help="a store that holds the demo's first page (else one is filled)")
    parser.add_argument("--screenshot", metavar="PNG", help="a full-page screenshot of the last restart (this checkout's)")
    parser.add_argument("--against", metavar="REV", help="alternate the restarts with this git revision's")
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        roots = {"this": ROOT}
        if args.against:
            roots[args.against] = Path(scratch) / "other"
            subprocess.run(["git", "worktree", "add", "--detach", str(roots[args.against]), args.against], cwd=ROOT,
                           check=True, capture_output=True)
        try:
            cache = str(Path(scratch) / "store")
            if args.store:
                shutil.copytree(args.store, cache)
            else:
                os.mkdir(cache)
                fill_store(cache)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
            for i in range(args.runs):
                for name, root in roots.items():
                    shot = args.screenshot if name == "this" and i == args.runs - 1 else None
                    figures, counts = restart(cache, shot, root)
                    runs[name].append(figures)
                    print(f"{name}, run {i + 1} (load average {os.getloadavg()[0]:.1f} after it): "
                          + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
                    print(f"{name}: page holds " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(roots[args.against])], cwd=ROOT,
                               capture_output=True)
    print(f"\n| restart: {args.runs} runs each, seconds from page.goto | "
          + " | ".join(f"{name}: median (min-max)" for name in roots) + " |\n|---|" + "---|" * len(roots))
    for key in runs["this"][0]:
        cells = []
        for name in roots:
            values = [r[key] for r in runs[name]]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
