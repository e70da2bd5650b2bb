"""How many points a map can draw in headless Chromium: the WebGL limit behind service.MAP_POINTS.

    python -m bench.bench_webgl [--points 10000 25000 50000 100000] [--rounds 3]

The Explorer's own map (figures.scatter_layout: 7 classes x 2 roles, one Scattergl trace each, with
its hover data) of N random points, in a plain HTML page with plotly.js (the copy plotly.py ships)
in headless Chromium (Debian's, /usr/bin/chromium, flags as tests/test_browser.py: no GPU, so WebGL
is Chromium's software renderer, as on a server or in CI). Printed per N, medians of the rounds:
- "draw": Plotly.newPlot of the figure's JSON until the second animation frame after it resolves;
- "zoom": Plotly.relayout to half the x range (the redraw of a pan or zoom);
- "hover": a hover event on a point until plotly answers it (the picking that hover and lasso use);
- the figure's JSON size (what the dashboard sends to the browser per map);
- whether the page had a WebGL context and the plot's canvas holds drawn pixels.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_browser import CHROMIUM  # noqa: E402

# Hover: the mouse moved onto a point (by playwright, after DRAW), until plotly's hover event (or 5 s).
HOVER = "() => Promise.race([window.hovered.then(t => (t - window.moved) / 1000), new Promise(r => setTimeout(() => r(NaN), 5000))])"

DRAW = """async (spec) => {
  const fig = JSON.parse(spec);
  const div = document.getElementById('plot');
  Plotly.purge(div);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const t0 = performance.now();
  await Plotly.newPlot(div, fig.data, fig.layout);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const draw = performance.now() - t0;
  const range = div._fullLayout.xaxis.range;
  const t1 = performance.now();
  await Plotly.relayout(div, {'xaxis.range': [range[0], (range[0] + range[1]) / 2]});
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const zoom = performance.now() - t1;
  await Plotly.relayout(div, {'xaxis.autorange': true});
  const xa = div._fullLayout.xaxis, ya = div._fullLayout.yaxis, box = div.getBoundingClientRect();
  const at = [box.left + xa._offset + xa.l2p(div._fullData[0].x[0]), box.top + ya._offset + ya.l2p(div._fullData[0].y[0])];
  window.hovered = new Promise(r => div.once('plotly_hover', () => r(performance.now())));
  const canvas = div.querySelector('canvas.gl-canvas-context') || div.querySelector('canvas');
  let drawn = div.querySelectorAll('.scatterlayer path.point').length > 0;  // SVG (below WEBGL_ABOVE)
  if (canvas && !drawn) {
    const copy = document.createElement('canvas');
    copy.width = canvas.width; copy.height = canvas.height;
    const ctx = copy.getContext('2d');
    ctx.drawImage(canvas, 0, 0);
    const pixels = ctx.getImageData(0, 0, copy.width, copy.height).data;
    for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) { drawn = true; break; } }
  }
  return {draw, zoom, drawn, at};
}"""


def figure_json(n: int) -> str:
    """The Explorer's map of ``n`` points (7 classes, 4 domains, target one of them), as the page receives it."""
    from clip_icm import figures

    gen = np.random.default_rng(0)
    classes, domains = [f"class {i}" for i in range(7)], ["photo", "art", "cartoon", "sketch"]
    label, domain = gen.integers(0, 7, n), gen.integers(0, 4, n)
    points = pd.DataFrame({"id": np.arange(n), "class": np.take(classes, label), "domain": np.take(domains, domain),
                           "role": np.where(domain == 3, "target", "source"),
                           "prediction": np.take(classes, gen.integers(0, 7, n)), "correct": gen.random(n) < 0.7})
    xy = (gen.normal(size=(n, 2)) + 3 * gen.normal(size=(7, 2))[label]).astype(np.float32)
    return figures.scatter_layout(xy, points, "class", f"{n:,} points").to_json()


def _round(page, spec: str) -> dict:
    run = page.evaluate(DRAW, spec)
    page.mouse.move(0, 0)
    page.evaluate("() => { window.moved = performance.now(); }")
    page.mouse.move(*run["at"])
    return {"draw": run["draw"] / 1000, "zoom": run["zoom"] / 1000, "hover": page.evaluate(HOVER), "drawn": run["drawn"]}


def measure(sizes: list[int], rounds: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    plotly_js = Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js"
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_content('<div id="plot" style="width:760px;height:460px"></div>')
        page.add_script_tag(path=str(plotly_js))
        webgl = page.evaluate("() => !!document.createElement('canvas').getContext('webgl')")
        for n in sizes:
            spec = figure_json(n)
            runs = [_round(page, spec) for _ in range(rounds)]
            rows.append({"n": n, "json_mb": len(spec) / 1e6, "webgl": webgl, "drawn": all(r["drawn"] for r in runs),
                         **{key: statistics.median(r[key] for r in runs) for key in ("draw", "zoom", "hover")}})
            print(rows[-1], flush=True)
        browser.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 25_000, 50_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{CHROMIUM}, headless, --disable-gpu; medians of {args.rounds}")
    rows = measure(args.points, args.rounds)
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| points | draw (s) | zoom (s) | hover (s) | JSON (MB) | WebGL context | pixels drawn |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['draw']:.2f} | {r['zoom']:.2f} | {r['hover']:.2f} | {r['json_mb']:.1f} | "
              f"{'yes' if r['webgl'] else 'no'} | {'yes' if r['drawn'] else 'no'} |")


if __name__ == "__main__":
    main()
