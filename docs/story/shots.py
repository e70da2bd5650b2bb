"""Screenshots of every Story step on the demo, in headless Chromium (how docs/story/*.png are made).

    python docs/story/shots.py [OUT_FOLDER]   (default: docs/story)

Starts `streamlit run dashboard/app.py` (the demo, the cache folder of $CLIP_ICM_CACHE), opens
/?step=N for each step in one browser page, waits until no spinner and no "in the background"
status is left, and saves step-N-<slug>.png (the window: what a reader sees first) for each.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dashboard import texts  # noqa: E402
from tests.test_browser import CHROMIUM, _free_port, _wait_http  # noqa: E402

NOT_DONE = ("document.querySelectorAll('[data-testid=\"stSpinner\"]').length === 0 && "
            "!document.body.innerText.includes('in the background')")


def main() -> None:
    from playwright.sync_api import sync_playwright

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "story")
    out.mkdir(parents=True, exist_ok=True)
    port, log = _free_port(), open(out / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                        "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            for step, (slug, _, heading) in enumerate(texts.STORY_STEPS, 1):
                page.goto(f"{url}/?step={step}")  # the Story is the page at "/"
                page.get_by_text(heading).first.wait_for(timeout=600_000)
                page.get_by_text("← Back").first.wait_for(timeout=600_000)  # drawn last: the step is all there
                page.wait_for_function(NOT_DONE, timeout=600_000)
                page.wait_for_timeout(2500)  # plotly draws after the element appears
                errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
                if errors.count():
                    raise SystemExit(f"step {step}: {errors.all_inner_texts()}")
                page.screenshot(path=str(out / f"step-{step}-{slug}.png"))
                print(f"step {step}: {heading}", flush=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
        (out / "streamlit.log").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
